//! Procedural macros of rayforge.
//!
//! - `#[remote]` on a function makes it a task: `f::remote(args)` runs it in a
//!   worker process and returns `ObjectRef`s; `f::options()` sets resources
//!   and retries. The function stays callable locally as `f(args)`.
//! - `#[actor]` on a struct and on its `impl` block makes it an actor class:
//!   `Counter::remote(args)` (or `Counter::options()...remote(args)`) runs
//!   `Counter::new(args)` in a dedicated worker process and returns a
//!   `CounterHandle` whose methods return `ObjectRef`s.
//!   `#[remote(num_returns = N)]` on a function returning an N-tuple gives a
//!   reference per element; `#[remote(split_returns)]` on one returning
//!   `Vec<T>` takes the count at each call (`f::remote(n, args)`, as Ray's
//!   `f.options(num_returns=n)`) and gives `Vec<ObjectRef<T>>`, one object
//!   per element, so each consumer fetches only its part (a task returning
//!   another count fails, naming both).
//! - `#[main]` lets one binary be both the driver and its workers.
//!
//! These macros expand to calls into `rayforge::__private`; use them through
//! the `rayforge` crate:
//!
//! ```ignore
//! #[rayforge::remote(num_returns = 2)]
//! fn split(x: i64) -> (i64, String) { (x, x.to_string()) }
//!
//! #[rayforge::main]
//! fn main() -> rayforge::Result<()> {
//!     rayforge::init(rayforge::Config::default())?;
//!     let (n, s) = split::remote(7i64);
//!     assert_eq!((n.get()?, s.get()?), (7, "7".to_string()));
//!     Ok(())
//! }
//! ```

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::{
    parse_macro_input, punctuated::Punctuated, spanned::Spanned, FnArg, ImplItem, ItemFn, ItemImpl, ItemStruct, Pat,
    ReturnType, Token, Type,
};

/// How a function's result maps to return objects.
struct RetInfo {
    /// Types of the return objects.
    types: Vec<Type>,
    /// Whether the function returns `Result<T, E>`.
    fallible: bool,
    /// `split_returns`: the function returns `Vec<T>` (`types` is `[T]`)
    /// and each element is its own object; the caller names how many.
    split: bool,
}

fn unit() -> Type {
    syn::parse_quote!(())
}

/// The `T` of a type `Name<T, ..>` (`Result<T, E>`, `Vec<T>`).
fn first_type_arg(ty: &Type, name: &str) -> Option<Type> {
    let Type::Path(p) = ty else { return None };
    let seg = p.path.segments.last()?;
    if seg.ident != name {
        return None;
    }
    let syn::PathArguments::AngleBracketed(a) = &seg.arguments else {
        return None;
    };
    match a.args.first()? {
        syn::GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    }
}

fn ret_info(out: &ReturnType, num_returns: usize, split: bool) -> syn::Result<RetInfo> {
    let ty = match out {
        ReturnType::Default => unit(),
        ReturnType::Type(_, t) => (**t).clone(),
    };
    let (inner, fallible) = match first_type_arg(&ty, "Result") {
        Some(t) => (t, true),
        None => (ty.clone(), false),
    };
    if split {
        let elem = first_type_arg(&inner, "Vec").ok_or_else(|| {
            syn::Error::new(
                inner.span(),
                "split_returns needs a `Vec<T>` (or `Result<Vec<T>, E>`) return type: each element is one return object",
            )
        })?;
        return Ok(RetInfo {
            types: vec![elem],
            fallible,
            split: true,
        });
    }
    if num_returns == 1 {
        return Ok(RetInfo {
            types: vec![inner],
            fallible,
            split: false,
        });
    }
    match &inner {
        Type::Tuple(t) if t.elems.len() == num_returns => Ok(RetInfo {
            types: t.elems.iter().cloned().collect(),
            fallible,
            split: false,
        }),
        other => Err(syn::Error::new(
            other.span(),
            format!("num_returns = {num_returns} needs a tuple return type with {num_returns} elements"),
        )),
    }
}

/// Argument names and types of a signature (receiver excluded).
fn args_of(inputs: &Punctuated<FnArg, Token![,]>) -> syn::Result<Vec<(syn::Ident, Type)>> {
    let mut out = Vec::new();
    for a in inputs {
        match a {
            FnArg::Receiver(_) => {}
            FnArg::Typed(pt) => {
                let Pat::Ident(id) = &*pt.pat else {
                    return Err(syn::Error::new(
                        pt.pat.span(),
                        "remote arguments must be plain identifiers",
                    ));
                };
                if let Type::Reference(r) = &*pt.ty {
                    return Err(syn::Error::new(
                        r.span(),
                        "remote arguments must be owned values (they travel between processes); use String, Vec<T>, ...",
                    ));
                }
                out.push((id.ident.clone(), (*pt.ty).clone()));
            }
        }
    }
    Ok(out)
}

fn decode_args(args: &[(syn::Ident, Type)]) -> TokenStream2 {
    let lets = args.iter().map(|(n, t)| {
        let s = n.to_string();
        quote! { let #n: #t = ::rayforge::__private::arg(&mut __it, #s)?; }
    });
    quote! { #(#lets)* }
}

/// Code turning `__out` into `Returns`.
fn encode_returns(r: &RetInfo) -> TokenStream2 {
    // A task's `Err` becomes the caller's error through `UserErr` (see its
    // docs): a rayforge::Error keeps its kind, a serializable type travels
    // as a payload, any other Display type as its message.
    let user_err = quote! {
        |e| {
            #[allow(unused_imports)]
            use ::rayforge::__private::{CarriesItsMessage, CarriesItsValue, KeepsItsKind};
            (&&&::rayforge::__private::UserErr(&e)).task_error()
        }
    };
    if r.split {
        let unwrap = if r.fallible {
            quote! { let __out = __out.map_err(#user_err)?; }
        } else {
            quote! {}
        };
        // The executor checks the count against the call's num_returns.
        return quote! {{
            #unwrap
            let mut __v = ::std::vec::Vec::new();
            for __x in __out {
                ::rayforge::__private::ret_part(&mut __v, __x)?;
            }
            Ok(__v)
        }};
    }
    if r.types.len() == 1 {
        if r.fallible {
            quote! { __out.map_err(#user_err).and_then(::rayforge::__private::ret) }
        } else {
            quote! { ::rayforge::__private::ret(__out) }
        }
    } else {
        let names: Vec<_> = (0..r.types.len()).map(|i| format_ident!("__r{}", i)).collect();
        let unwrap = if r.fallible {
            quote! { let __out = __out.map_err(#user_err)?; }
        } else {
            quote! {}
        };
        quote! {{
            #unwrap
            let (#(#names),*) = __out;
            let mut __v = ::std::vec::Vec::new();
            #( ::rayforge::__private::ret_part(&mut __v, #names)?; )*
            Ok(__v)
        }}
    }
}

/// The caller-side return type and how to build it from `Vec<ObjectRef<()>>`.
fn caller_returns(r: &RetInfo) -> (TokenStream2, TokenStream2, TokenStream2) {
    if r.split {
        let t = &r.types[0];
        return (
            quote! { ::std::vec::Vec<::rayforge::ObjectRef<#t>> },
            quote! { #t },
            quote! { __refs },
        );
    }
    if r.types.len() == 1 {
        let t = &r.types[0];
        (
            quote! { ::rayforge::ObjectRef<#t> },
            quote! { #t },
            quote! { ::rayforge::__private::single(__refs) },
        )
    } else {
        let ts = &r.types;
        let idx = 0..ts.len();
        (
            quote! { ( #( ::rayforge::ObjectRef<#ts> ),* ) },
            quote! { () },
            quote! { ( #( __refs[#idx].cast::<#ts>() ),* ) },
        )
    }
}

/// The `N` of a `num_returns = N` option (at least 1).
fn num_returns_of(meta: &syn::meta::ParseNestedMeta) -> syn::Result<usize> {
    let lit: syn::LitInt = meta.value()?.parse()?;
    let n = lit.base10_parse()?;
    if n == 0 {
        return Err(meta.error("num_returns must be at least 1"));
    }
    Ok(n)
}

/// The options of `#[remote(...)]`.
struct RemoteAttr {
    num_returns: usize,
    streaming: bool,
    split: bool,
}

fn parse_remote_attr(attr: TokenStream) -> syn::Result<RemoteAttr> {
    let mut a = RemoteAttr {
        num_returns: 1,
        streaming: false,
        split: false,
    };
    let mut fixed = false;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("streaming") {
            a.streaming = true;
            Ok(())
        } else if meta.path.is_ident("split_returns") {
            a.split = true;
            Ok(())
        } else if meta.path.is_ident("num_returns") {
            a.num_returns = num_returns_of(&meta)?;
            fixed = true;
            Ok(())
        } else {
            Err(meta.error("unknown option; supported: num_returns = N, split_returns, streaming"))
        }
    });
    parser.parse(attr)?;
    if a.split && (a.streaming || fixed) {
        return Err(syn::Error::new(
            Span::call_site(),
            "split_returns takes its number of returns at each call; it goes with neither num_returns nor streaming",
        ));
    }
    Ok(a)
}

/// The `T` of a return type `impl Iterator<Item = T>` (or any type with an
/// `Item = T` binding).
fn iterator_item(out: &ReturnType) -> Option<Type> {
    let ReturnType::Type(_, ty) = out else { return None };
    let bounds = match &**ty {
        Type::ImplTrait(t) => t.bounds.iter().collect::<Vec<_>>(),
        _ => return None,
    };
    for b in bounds {
        let syn::TypeParamBound::Trait(tb) = b else { continue };
        let seg = tb.path.segments.last()?;
        let syn::PathArguments::AngleBracketed(a) = &seg.arguments else {
            continue;
        };
        for arg in &a.args {
            if let syn::GenericArgument::AssocType(at) = arg {
                if at.ident == "Item" {
                    return Some(at.ty.clone());
                }
            }
        }
    }
    None
}

/// Makes a function a remote task. See the crate docs.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    let f = parse_macro_input!(item as ItemFn);
    match remote_impl(attr, f) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn remote_impl(attr: TokenStream, f: ItemFn) -> syn::Result<TokenStream2> {
    let RemoteAttr {
        num_returns,
        streaming,
        split,
    } = parse_remote_attr(attr)?;
    if !f.sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            f.sig.generics.span(),
            "remote functions cannot be generic",
        ));
    }
    if f.sig.asyncness.is_some() {
        return Err(syn::Error::new(
            f.sig.span(),
            "remote functions must be synchronous (use an async actor)",
        ));
    }
    let name = &f.sig.ident;
    let vis = &f.vis;
    let args = args_of(&f.sig.inputs)?;
    let item_ty = if streaming {
        Some(iterator_item(&f.sig.output).ok_or_else(|| {
            syn::Error::new(
                f.sig.output.span(),
                "a streaming remote function returns `impl Iterator<Item = T>`",
            )
        })?)
    } else {
        None
    };
    let r = if streaming {
        RetInfo {
            types: vec![unit()],
            fallible: false,
            split: false,
        }
    } else {
        ret_info(&f.sig.output, num_returns, split)?
    };
    let decode = decode_args(&args);
    let encode = encode_returns(&r);
    let arg_names: Vec<_> = args.iter().map(|(n, _)| n).collect();
    let arg_types: Vec<_> = args.iter().map(|(_, t)| t).collect();
    let (mut ret_ty, elem_ty, build) = caller_returns(&r);
    // A split_returns call names its number of returns first.
    let (n, count_param, count_arg) = if split {
        (
            quote! { u32::try_from(num_returns).unwrap_or(u32::MAX) },
            quote! { num_returns: usize, },
            quote! { num_returns, },
        )
    } else {
        let n = num_returns as u32;
        (quote! { #n }, quote! {}, quote! {})
    };
    let arg_names2 = arg_names.clone();
    let (invoke_fn, stream_fn, submit) = match &item_ty {
        None => (
            quote! {
                fn __invoke(__args: ::std::vec::Vec<::rayforge::__private::ObjectBytes>) -> ::rayforge::Result<::rayforge::__private::Returns> {
                    let mut __it = __args.into_iter();
                    #decode
                    let __out = super::#name(#(#arg_names),*);
                    #encode
                }
            },
            quote! { None },
            quote! {
                let __refs = ::rayforge::__private::submit_task::<#elem_ty>(
                    NAME,
                    &self.0,
                    ::std::vec![#(::rayforge::__private::prepare_arg::<#arg_types>(#arg_names2)),*],
                    #n,
                );
                #build
            },
        ),
        Some(item) => {
            ret_ty = quote! { ::rayforge::ObjectRefGenerator<#item> };
            (
                quote! {
                    use ::rayforge::__private::not_plain as __invoke;

                    fn __stream(
                        __args: ::std::vec::Vec<::rayforge::__private::ObjectBytes>,
                        __emit: &mut dyn FnMut(::rayforge::__private::Encoded) -> ::rayforge::Result<()>,
                    ) -> ::rayforge::Result<()> {
                        let mut __it = __args.into_iter();
                        #decode
                        ::rayforge::__private::emit_all::<#item>(super::#name(#(#arg_names),*), __emit)
                    }
                },
                quote! { Some(__stream) },
                quote! {
                    ::rayforge::__private::submit_streaming::<#item>(
                        NAME,
                        &self.0,
                        ::std::vec![#(::rayforge::__private::prepare_arg::<#arg_types>(#arg_names2)),*],
                    )
                },
            )
        }
    };
    let doc = format!("Remote task `{name}`: `{name}::remote(...)` runs it in a worker process.");
    Ok(quote! {
        #f

        #[doc = #doc]
        #[allow(non_snake_case, unused_imports, clippy::all)]
        #vis mod #name {
            use super::*;

            /// The name this function is registered under.
            pub const NAME: &str = module_path!();

            #invoke_fn

            static __TASK_FN: ::rayforge::__private::TaskFn =
                ::rayforge::__private::TaskFn { name: NAME, invoke: __invoke, stream: #stream_fn };

            /// Registers the function before `main` (see rayforge's registry).
            #[used]
            #[cfg_attr(any(target_os = "linux", target_os = "android", target_os = "freebsd"), link_section = ".init_array.00200")]
            #[cfg_attr(target_vendor = "apple", link_section = "__DATA,__mod_init_func")]
            #[doc(hidden)]
            pub static __RAYFORGE_REGISTER: extern "C" fn() = {
                extern "C" fn __register() {
                    ::rayforge::__private::register_task(&__TASK_FN);
                }
                __register
            };

            /// Options for one call (resources, retries).
            pub struct Options(pub ::rayforge::TaskOptions);
            ::rayforge::__impl_task_options!(Options);

            impl Options {
                /// Submits the call with these options.
                pub fn remote(self, #count_param #(#arg_names: impl ::rayforge::IntoArg<#arg_types>),*) -> #ret_ty {
                    ::rayforge::__private::keep(&__RAYFORGE_REGISTER);
                    #submit
                }
            }

            /// Starts an options builder.
            pub fn options() -> Options {
                Options(::std::default::Default::default())
            }

            /// Submits the call with default options.
            pub fn remote(#count_param #(#arg_names: impl ::rayforge::IntoArg<#arg_types>),*) -> #ret_ty {
                options().remote(#count_arg #(#arg_names),*)
            }
        }
    })
}

/// Makes a struct and its `impl` block an actor class. See the crate docs.
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            Span::call_site(),
            "#[actor] takes no options; set them with Type::options()",
        )
        .to_compile_error()
        .into();
    }
    let item2: TokenStream2 = item.clone().into();
    if let Ok(s) = syn::parse::<ItemStruct>(item.clone()) {
        return actor_struct(s).into();
    }
    match syn::parse::<ItemImpl>(item) {
        Ok(i) => match actor_impl(i) {
            Ok(t) => t.into(),
            Err(e) => e.to_compile_error().into(),
        },
        Err(_) => syn::Error::new(item2.span(), "#[actor] goes on a struct and on its impl block")
            .to_compile_error()
            .into(),
    }
}

/// Generic actors are refused: each actor class is registered once, by
/// name, before `main`, and a generic one would need a registration per
/// concrete type that the macro cannot see.
fn refuse_generics(generics: &syn::Generics, what: &str) -> syn::Result<()> {
    if generics.params.is_empty() {
        return Ok(());
    }
    Err(syn::Error::new(
        generics.span(),
        format!(
            "#[actor] does not support generic {what}s: every actor class is registered by name before \
             `main`, and the macro cannot know the concrete types. Wrap the concrete type you need in a \
             struct of its own (e.g. `struct MlpTrainer(Trainer<Mlp>)`) and make that the actor"
        ),
    ))
}

fn actor_struct(s: ItemStruct) -> TokenStream2 {
    if let Err(e) = refuse_generics(&s.generics, "type") {
        return e.to_compile_error();
    }
    let name = &s.ident;
    let vis = &s.vis;
    let handle = format_ident!("{}Handle", name);
    let options = format_ident!("{}Options", name);
    let name_s = name.to_string();
    let hdoc = format!("Handle on a `{name}` actor: its methods run in the actor's process, in call order.");
    let odoc = format!("Options for creating a `{name}` actor.");
    quote! {
        #s

        #[doc = #hdoc]
        #[derive(Clone, Debug, PartialEq)]
        #vis struct #handle(pub ::rayforge::ActorHandle);

        impl ::rayforge::ActorHandleType for #handle {
            const CLASS: &'static str = concat!(module_path!(), "::", #name_s);
            fn from_raw(raw: ::rayforge::ActorHandle) -> Self {
                #handle(raw)
            }
            fn raw(&self) -> &::rayforge::ActorHandle {
                &self.0
            }
        }

        impl ::rayforge::__private::serde::Serialize for #handle {
            fn serialize<S: ::rayforge::__private::serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                ::rayforge::__private::serde::Serialize::serialize(&self.0, s)
            }
        }

        impl<'de> ::rayforge::__private::serde::Deserialize<'de> for #handle {
            fn deserialize<D: ::rayforge::__private::serde::Deserializer<'de>>(d: D) -> ::std::result::Result<Self, D::Error> {
                <::rayforge::ActorHandle as ::rayforge::__private::serde::Deserialize>::deserialize(d).map(#handle)
            }
        }

        #[doc = #odoc]
        #vis struct #options(pub ::rayforge::ActorOptions);
        ::rayforge::__impl_actor_options!(#options);
    }
}

struct Method {
    name: syn::Ident,
    args: Vec<(syn::Ident, Type)>,
    ret: RetInfo,
    is_async: bool,
    mutable: bool,
    /// Returns `impl Iterator<Item = T>`: its items stream to the caller.
    streaming: bool,
}

/// `num_returns` of a `#[rayforge::method(num_returns = N)]` on a method (1
/// without one).
fn method_num_returns(attrs: &[syn::Attribute]) -> syn::Result<usize> {
    let mut n = 1usize;
    for a in attrs {
        if a.path().segments.last().is_some_and(|s| s.ident == "method") {
            a.parse_nested_meta(|meta| {
                if meta.path.is_ident("num_returns") {
                    n = num_returns_of(&meta)?;
                    Ok(())
                } else {
                    Err(meta.error("unknown option; supported: num_returns = N"))
                }
            })?;
        }
    }
    Ok(n)
}

/// Marks an actor method's options, read by `#[actor]` on its impl block:
/// `#[rayforge::method(num_returns = 2)]` on a method returning a 2-tuple
/// gives the caller a reference to each element (as Ray's
/// `@ray.method(num_returns=2)`). On its own it changes nothing.
#[proc_macro_attribute]
pub fn method(_attr: TokenStream, item: TokenStream) -> TokenStream {
    item
}

fn actor_impl(imp: ItemImpl) -> syn::Result<TokenStream2> {
    refuse_generics(&imp.generics, "impl block")?;
    if imp.trait_.is_some() {
        return Err(syn::Error::new(
            imp.span(),
            "#[actor] goes on the inherent impl block, not a trait impl",
        ));
    }
    let Type::Path(tp) = &*imp.self_ty else {
        return Err(syn::Error::new(
            imp.self_ty.span(),
            "#[actor] impl must be for a named struct",
        ));
    };
    let name = tp
        .path
        .segments
        .last()
        .map(|s| s.ident.clone())
        .ok_or_else(|| syn::Error::new(tp.span(), "no type"))?;
    let handle = format_ident!("{}Handle", name);
    let options = format_ident!("{}Options", name);
    let class_static = format_ident!("__RAYFORGE_CLASS_{}", name);
    let reg_static = format_ident!("__RAYFORGE_REGISTER_{}", name);
    let mut ctor_args = None;
    let mut methods = Vec::new();
    for it in &imp.items {
        let ImplItem::Fn(f) = it else { continue };
        let has_recv = matches!(f.sig.inputs.first(), Some(FnArg::Receiver(_)));
        if !has_recv {
            if f.sig.ident == "new" {
                ctor_args = Some(args_of(&f.sig.inputs)?);
            }
            continue;
        }
        if f.sig.ident.to_string().starts_with('_') {
            continue;
        }
        let mutable = match f.sig.inputs.first() {
            Some(FnArg::Receiver(r)) => {
                if r.reference.is_none() {
                    return Err(syn::Error::new(r.span(), "actor methods take &self or &mut self"));
                }
                r.mutability.is_some()
            }
            _ => false,
        };
        let num_returns = method_num_returns(&f.attrs)?;
        let item = iterator_item(&f.sig.output);
        if item.is_some() && num_returns != 1 {
            return Err(syn::Error::new(
                f.sig.output.span(),
                "a streaming method (returning `impl Iterator<Item = T>`) has one stream, not num_returns",
            ));
        }
        methods.push(Method {
            name: f.sig.ident.clone(),
            args: args_of(&f.sig.inputs)?,
            ret: match &item {
                Some(t) => RetInfo {
                    types: vec![t.clone()],
                    fallible: false,
                    split: false,
                },
                None => ret_info(&f.sig.output, num_returns, false)?,
            },
            is_async: f.sig.asyncness.is_some(),
            mutable,
            streaming: item.is_some(),
        });
    }
    let ctor_args = ctor_args.ok_or_else(|| {
        syn::Error::new(
            imp.span(),
            "an actor needs a constructor `fn new(...) -> Self` in its #[actor] impl block",
        )
    })?;
    let is_async = methods.iter().any(|m| m.is_async);
    let c_names: Vec<_> = ctor_args.iter().map(|(n, _)| n).collect();
    let c_types: Vec<_> = ctor_args.iter().map(|(_, t)| t).collect();
    let c_decode = decode_args(&ctor_args);

    let arms = methods.iter().map(|m| {
        let mname = &m.name;
        let ms = mname.to_string();
        let decode = decode_args(&m.args);
        let names: Vec<_> = m.args.iter().map(|(n, _)| n).collect();
        let encode = if m.streaming {
            let item = &m.ret.types[0];
            quote! { ::rayforge::__private::emit_each::<#item>(__out) }
        } else {
            encode_returns(&m.ret)
        };
        let call = if is_async {
            let lock = if m.mutable {
                quote! { __cell.write().await }
            } else {
                quote! { __cell.read().await }
            };
            let aw = if m.is_async {
                quote! { .await }
            } else {
                quote! {}
            };
            // A streaming method's items may borrow the actor: they are
            // sent while its lock is held.
            if m.streaming {
                return quote! {
                    #ms => {
                        #decode
                        let mut __g = #lock;
                        let __out = __g.#mname(#(#names),*) #aw;
                        #encode
                    }
                };
            }
            quote! {{ let mut __g = #lock; __g.#mname(#(#names),*) #aw }}
        } else {
            quote! { __self.#mname(#(#names),*) }
        };
        quote! {
            #ms => {
                #decode
                let __out = #call;
                #encode
            }
        }
    });
    let unknown = quote! {
        __other => Err(::rayforge::Error::NotFound(format!("actor method `{}` on `{}`", __other, stringify!(#name)))),
    };
    let dispatch = if is_async {
        quote! {
            #[doc(hidden)]
            fn __rayforge_dispatch(
                __cell: ::std::sync::Arc<::rayforge::__private::tokio::sync::RwLock<Self>>,
                __m: ::std::string::String,
                __args: ::std::vec::Vec<::rayforge::__private::ObjectBytes>,
            ) -> ::rayforge::__private::BoxFuture<::rayforge::Result<::rayforge::__private::Returns>> {
                ::std::boxed::Box::pin(async move {
                    let mut __it = __args.into_iter();
                    #[allow(unused_mut)]
                    match __m.as_str() {
                        #(#arms)*
                        #unknown
                    }
                })
            }
        }
    } else {
        quote! {
            #[doc(hidden)]
            fn __rayforge_dispatch(
                __self: &mut Self,
                __m: &str,
                __args: ::std::vec::Vec<::rayforge::__private::ObjectBytes>,
            ) -> ::rayforge::Result<::rayforge::__private::Returns> {
                let mut __it = __args.into_iter();
                match __m {
                    #(#arms)*
                    #unknown
                }
            }
        }
    };
    let instance = if is_async {
        quote! {
            let __cell = ::std::sync::Arc::new(::rayforge::__private::tokio::sync::RwLock::new(__inst));
            Ok(::rayforge::__private::ActorInstance::Async(::std::sync::Arc::new(
                move |__m: ::std::string::String, __a| Self::__rayforge_dispatch(__cell.clone(), __m, __a),
            )))
        }
    } else {
        quote! {
            let mut __inst = __inst;
            Ok(::rayforge::__private::ActorInstance::Sync(::std::boxed::Box::new(
                move |__m: &str, __a| Self::__rayforge_dispatch(&mut __inst, __m, __a),
            )))
        }
    };
    let handle_methods = methods.iter().map(|m| {
        let mname = &m.name;
        let ms = mname.to_string();
        let names: Vec<_> = m.args.iter().map(|(n, _)| n).collect();
        let types: Vec<_> = m.args.iter().map(|(_, t)| t).collect();
        if m.streaming {
            let item = &m.ret.types[0];
            let doc = format!(
                "Calls `{name}::{mname}` on the actor; its items arrive one by one, as the method produces them."
            );
            return quote! {
                #[doc = #doc]
                pub fn #mname(&self, #(#names: impl ::rayforge::IntoArg<#types>),*) -> ::rayforge::ObjectRefGenerator<#item> {
                    ::rayforge::__private::call_actor_streaming::<#item>(
                        &self.0,
                        #ms,
                        ::std::vec![#(::rayforge::__private::prepare_arg::<#types>(#names)),*],
                    )
                }
            };
        }
        let (ret_ty, ref_t, build) = caller_returns(&m.ret);
        let n = m.ret.types.len() as u32;
        let doc = if n == 1 {
            format!("Calls `{name}::{mname}` on the actor; returns a reference to its result.")
        } else {
            format!("Calls `{name}::{mname}` on the actor; returns a reference to each of its {n} results.")
        };
        quote! {
            #[doc = #doc]
            pub fn #mname(&self, #(#names: impl ::rayforge::IntoArg<#types>),*) -> #ret_ty {
                let __refs = ::rayforge::__private::call_actor::<#ref_t>(
                    &self.0,
                    #ms,
                    ::std::vec![#(::rayforge::__private::prepare_arg::<#types>(#names)),*],
                    #n,
                );
                #build
            }
        }
    });
    Ok(quote! {
        #imp

        #[allow(clippy::all)]
        impl #name {
            /// Starts an options builder for a new actor.
            pub fn options() -> #options {
                #options(::std::default::Default::default())
            }

            /// Creates the actor with default options.
            pub fn remote(#(#c_names: impl ::rayforge::IntoArg<#c_types>),*) -> ::rayforge::Result<#handle> {
                Self::options().remote(#(#c_names),*)
            }

            #[doc(hidden)]
            fn __rayforge_construct(
                __args: ::std::vec::Vec<::rayforge::__private::ObjectBytes>,
            ) -> ::rayforge::Result<::rayforge::__private::ActorInstance> {
                let mut __it = __args.into_iter();
                #c_decode
                let __inst = Self::new(#(#c_names),*);
                #instance
            }

            #dispatch
        }

        #[allow(non_upper_case_globals)]
        static #class_static: ::rayforge::__private::ActorClass = ::rayforge::__private::ActorClass {
            name: <#handle as ::rayforge::ActorHandleType>::CLASS,
            construct: #name::__rayforge_construct,
        };

        /// Registers the actor class before `main` (see rayforge's registry).
        #[used]
        #[allow(non_upper_case_globals)]
        #[cfg_attr(any(target_os = "linux", target_os = "android", target_os = "freebsd"), link_section = ".init_array.00200")]
        #[cfg_attr(target_vendor = "apple", link_section = "__DATA,__mod_init_func")]
        #[doc(hidden)]
        pub static #reg_static: extern "C" fn() = {
            extern "C" fn __register() {
                ::rayforge::__private::register_class(&#class_static);
            }
            __register
        };

        impl #options {
            /// Creates the actor with these options.
            pub fn remote(self, #(#c_names: impl ::rayforge::IntoArg<#c_types>),*) -> ::rayforge::Result<#handle> {
                ::rayforge::__private::keep(&#reg_static);
                ::rayforge::__private::create_actor(
                    <#handle as ::rayforge::ActorHandleType>::CLASS,
                    &self.0,
                    ::std::vec![#(::rayforge::__private::prepare_arg::<#c_types>(#c_names)),*],
                )
                .map(#handle)
            }

            /// Creates the actor with these options, from async code.
            pub async fn remote_async(self, #(#c_names: impl ::rayforge::IntoArg<#c_types>),*) -> ::rayforge::Result<#handle> {
                ::rayforge::__private::keep(&#reg_static);
                let __args = ::std::vec![#(::rayforge::__private::prepare_arg::<#c_types>(#c_names)),*];
                ::rayforge::__private::create_actor_async(
                    <#handle as ::rayforge::ActorHandleType>::CLASS,
                    &self.0,
                    __args,
                )
                .await
                .map(#handle)
            }
        }

        #[allow(clippy::all)]
        impl #handle {
            #(#handle_methods)*
        }
    })
}

/// Marks the program's `main`: in a worker process (the same binary started
/// by the runtime) it runs the worker loop instead; after `main` returns it
/// shuts the embedded cluster down. With `#[tokio::main]`, that goes first
/// (above this one): the other order fails with E0728.
#[proc_macro_attribute]
pub fn main(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let f = parse_macro_input!(item as ItemFn);
    let attrs = &f.attrs;
    let vis = &f.vis;
    let sig = &f.sig;
    let block = &f.block;
    let ret = match &sig.output {
        ReturnType::Default => quote! { () },
        ReturnType::Type(_, t) => quote! { #t },
    };
    quote! {
        #(#attrs)*
        #vis #sig {
            ::rayforge::__private::worker_entry_if_worker();
            let __result = (move || -> #ret #block)();
            ::rayforge::shutdown();
            __result
        }
    }
    .into()
}
