//! Shipping plain functions to other processes of the same program.
//!
//! Every worker runs the driver's own binary, so a plain function (or a
//! closure that captures nothing) is the same code at the same offset from
//! any other function of the binary in every process. A [`FnRef`] carries
//! that offset, the binary's build id and its function-pointer type; a
//! process whose binary differs, or that asks for it as another type,
//! refuses to call it instead of jumping to the wrong code. Libraries use it
//! to run user functions inside generic tasks and actors (rayforge-data's
//! `map_batches`, rayforge-serve's deployments): a function of a type known
//! only to the library's generic code travels as an [`AnyFnRef`] and is
//! turned back into its type where that type is known again.

use std::marker::PhantomData;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A function-pointer type ([`FnRef`] carries only these: a function
/// pointer names code of the binary, at the same offset in every process).
///
/// Implemented for `fn(A, B, ..) -> R` with up to four arguments, and for
/// those whose first argument is a reference (`fn(&A, ..) -> R`,
/// `fn(&mut A, ..) -> R`) with up to two more.
///
/// # Safety
///
/// Implemented only for function-pointer types: a value of the type must be
/// the address of a function of this binary.
pub unsafe trait FnPtr: Copy + Send + Sync + 'static {
    /// The address of the function.
    fn to_addr(self) -> usize {
        // SAFETY: function pointers are address-sized (the trait's
        // contract), so the copy reads exactly the address.
        unsafe { std::mem::transmute_copy::<Self, usize>(&self) }
    }

    /// The function at `addr`.
    ///
    /// # Safety
    ///
    /// `addr` must be the address of a function of this type.
    unsafe fn from_addr(addr: usize) -> Self {
        // SAFETY: address-sized, and the caller vouches for the type.
        unsafe { std::mem::transmute_copy::<usize, Self>(&addr) }
    }
}

macro_rules! fn_ptr_impls {
    ($($arg:ident),*) => {
        // SAFETY: a function-pointer type.
        unsafe impl<R: 'static, $($arg: 'static),*> FnPtr for fn($($arg),*) -> R {}
    };
}
fn_ptr_impls!();
fn_ptr_impls!(A);
fn_ptr_impls!(A, B);
fn_ptr_impls!(A, B, C);
fn_ptr_impls!(A, B, C, D);

macro_rules! fn_ptr_ref_impls {
    ($($arg:ident),*) => {
        // SAFETY: function-pointer types (higher-ranked over the
        // reference's lifetime).
        #[allow(coherence_leak_check)]
        unsafe impl<R: 'static, F: ?Sized + 'static, $($arg: 'static),*> FnPtr for fn(&F, $($arg),*) -> R {}
        // SAFETY: as above.
        #[allow(coherence_leak_check)]
        unsafe impl<R: 'static, F: ?Sized + 'static, $($arg: 'static),*> FnPtr for fn(&mut F, $($arg),*) -> R {}
    };
}
fn_ptr_ref_impls!();
fn_ptr_ref_impls!(A);
fn_ptr_ref_impls!(A, B);

/// A function of this binary, of type `F`, that any process running the
/// same binary can call.
///
/// ```
/// use rayforge::FnRef;
///
/// fn double(x: i64) -> i64 { x * 2 }
///
/// let r = FnRef::new(double as fn(i64) -> i64);
/// // In any process of this program (r serializes with serde):
/// let f = r.get().unwrap();
/// assert_eq!(f(21), 42);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct FnRef<F> {
    at: AnyFnRef,
    _f: PhantomData<fn() -> F>,
}

impl<F: FnPtr> FnRef<F> {
    /// Refers to `f`.
    pub fn new(f: F) -> FnRef<F> {
        let base = anchor as *const () as usize;
        FnRef {
            at: AnyFnRef {
                offset: f.to_addr() as i64 - base as i64,
                build: build_id(),
                ty: type_hash::<F>(),
            },
            _f: PhantomData,
        }
    }

    /// The function, in this process. Fails when this process runs another
    /// binary than the one the reference was made in, or when it was made
    /// for another function type (a reference deserialized as the wrong
    /// `FnRef<F>`).
    pub fn get(&self) -> Result<F> {
        let addr = self.at.addr_for(type_hash::<F>())?;
        // SAFETY: `addr_for` checked that this reference was made by
        // `FnRef::<F>::new` (same type) in this same binary (same build
        // id), from a value of `F`: the address of a function of type `F`,
        // at the same offset from `anchor` here.
        Ok(unsafe { F::from_addr(addr) })
    }

    /// Forgets the type, to carry functions of several types in one field;
    /// [`AnyFnRef::typed`] brings it back.
    pub fn erase(self) -> AnyFnRef {
        self.at
    }
}

/// A [`FnRef`] whose function type is known to its maker and its user but
/// not to the code carrying it between them.
///
/// ```
/// use rayforge::{AnyFnRef, FnRef};
///
/// fn len(s: String) -> usize { s.len() }
///
/// let any: AnyFnRef = FnRef::new(len as fn(String) -> usize).erase();
/// assert_eq!(any.typed::<fn(String) -> usize>().unwrap().get().unwrap()("abc".into()), 3);
/// assert!(any.typed::<fn(String) -> u8>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnyFnRef {
    offset: i64,
    build: u64,
    /// Which function-pointer type it was made from.
    ty: u64,
}

impl AnyFnRef {
    /// The reference as a `FnRef<F>`, if it was made from an `F`.
    pub fn typed<F: FnPtr>(&self) -> Result<FnRef<F>> {
        if self.ty != type_hash::<F>() {
            return Err(Error::InvalidArgument(format!(
                "a function reference is used as a `{}`, which is not the type it was made from",
                std::any::type_name::<F>()
            )));
        }
        Ok(FnRef {
            at: *self,
            _f: PhantomData,
        })
    }

    fn addr_for(&self, ty: u64) -> Result<usize> {
        if self.build != build_id() {
            return Err(Error::Runtime(
                "a function was sent to a process running a different binary (build ids differ)".into(),
            ));
        }
        if self.ty != ty {
            return Err(Error::InvalidArgument(
                "a function reference is used as another function type than it was made from".into(),
            ));
        }
        let base = anchor as *const () as usize;
        Ok((base as i64 + self.offset) as usize)
    }
}

/// A number naming type `F`, the same in every process of this binary.
fn type_hash<F: 'static>() -> u64 {
    use std::hash::{Hash, Hasher};
    // `DefaultHasher::new` has fixed keys, and a type's id is fixed within
    // one build.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::any::TypeId::of::<F>().hash(&mut h);
    h.finish()
}

#[inline(never)]
fn anchor() -> u64 {
    // A body of its own so the function is never merged with another.
    std::hint::black_box(0x7261_7966_6f72_6765)
}

/// This binary's GNU build id (hashed), or a hash of the executable's size
/// and code layout when it has none.
fn build_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        // /proc/self/exe opens the running program even when its file was
        // replaced since it started (a node's binary cache renaming a fresh
        // copy over it); its path would then name the new file, or none.
        let own = read_build_id(std::path::Path::new("/proc/self/exe"))
            .or_else(|| std::env::current_exe().ok().and_then(|p| read_build_id(&p)));
        match own {
            Some(id) => id.hash(&mut h),
            None => {
                let len = std::env::current_exe()
                    .and_then(std::fs::metadata)
                    .map(|m| m.len())
                    .unwrap_or(0);
                len.hash(&mut h);
                ((anchor as *const () as usize).wrapping_sub(crate::init as *const () as usize)).hash(&mut h);
            }
        }
        h.finish()
    })
}

/// Reads the NT_GNU_BUILD_ID note from the program headers of an ELF64
/// little-endian executable.
fn read_build_id(path: &std::path::Path) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let mut head = vec![0u8; 64];
    f.read_exact(&mut head).ok()?;
    if &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4])) as u64;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let (phoff, phentsize, phnum) = (u64_at(&head, 32), u16_at(&head, 54), u16_at(&head, 56));
    if phentsize < 56 || phnum > 4096 {
        return None;
    }
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    f.seek(SeekFrom::Start(phoff)).ok()?;
    f.read_exact(&mut ph).ok()?;
    for i in 0..phnum as usize {
        let p = &ph[i * phentsize as usize..];
        if u32_at(p, 0) != 4 {
            continue; // not PT_NOTE
        }
        let (off, size) = (u64_at(p, 8), u64_at(p, 32));
        if size > 1 << 20 {
            continue;
        }
        let mut notes = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(off)).ok()?;
        f.read_exact(&mut notes).ok()?;
        let mut at = 0usize;
        while at + 12 <= notes.len() {
            let (namesz, descsz, kind) = (
                u32_at(&notes, at) as usize,
                u32_at(&notes, at + 4) as usize,
                u32_at(&notes, at + 8),
            );
            let name_at = at + 12;
            let desc_at = name_at + namesz.div_ceil(4) * 4;
            let end = desc_at + descsz.div_ceil(4) * 4;
            if end > notes.len() {
                break;
            }
            if kind == 3 && notes[name_at..name_at + namesz].starts_with(b"GNU") {
                return Some(notes[desc_at..desc_at + descsz].to_vec());
            }
            at = end;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(x: i64) -> i64 {
        x * 2
    }

    #[test]
    fn a_function_survives_the_round_trip_through_an_offset() -> Result<()> {
        let r = FnRef::new(double as fn(i64) -> i64);
        let wire = serde_json::to_string(&r).unwrap();
        let back: FnRef<fn(i64) -> i64> = serde_json::from_str(&wire).unwrap();
        assert_eq!(back.get()?(21), 42);
        // The same bytes read as another function type are refused.
        let wrong: FnRef<fn(u8) -> u8> = serde_json::from_str(&wire).unwrap();
        assert!(matches!(wrong.get(), Err(Error::InvalidArgument(_))));
        assert!(r.erase().typed::<fn(i64) -> u64>().is_err());
        let by_ref = FnRef::new(first as fn(&[u8]) -> u8);
        assert_eq!(by_ref.erase().typed::<fn(&[u8]) -> u8>()?.get()?(&[7]), 7);
        let other = AnyFnRef {
            build: r.at.build ^ 1,
            ..r.at
        };
        assert!(matches!(other.typed::<fn(i64) -> i64>()?.get(), Err(Error::Runtime(_))));
        Ok(())
    }

    fn first(v: &[u8]) -> u8 {
        v[0]
    }

    #[test]
    fn this_test_binary_has_a_build_id() {
        let exe = std::env::current_exe().unwrap();
        let id = read_build_id(&exe).expect("build id note");
        assert!(id.len() >= 8);
    }
}
