//! Shipping user functions to worker processes: a [`FnRef`] (from the core
//! crate) names a function of this binary by position; [`resolve_fn!`] turns
//! it back into a typed function pointer.

pub(crate) use rayforge::FnRef;

/// Resolves `$r` to a function pointer of type `$t`.
macro_rules! resolve_fn {
    ($r:expr, $t:ty) => {{
        let addr = $r.addr()?;
        // SAFETY: `addr` was made by `FnRef::new` from a function of type
        // `$t` in a process running this same binary (build ids match), so
        // it is that function's address here too.
        unsafe { std::mem::transmute::<usize, $t>(addr) }
    }};
}
pub(crate) use resolve_fn;
