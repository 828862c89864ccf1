//! Utilities users reach for on top of tasks and actors: a
//! multiprocessing-style [`Pool`], an [`ActorPool`] and a distributed
//! [`Queue`]; and the helpers the project's own parts share
//! ([`private_dir`], [`prometheus_label`]).

mod actor_pool;
mod pool;
mod private_dir;
mod queue;

pub use actor_pool::ActorPool;
pub use pool::Pool;
pub(crate) use private_dir::fresh_private_dir;
pub use private_dir::{private_dir, rayforge_tmp};
pub use queue::Queue;

/// 128 random bits as hex, from the kernel: tokens a head makes, login
/// session ids, Serve's admin token.
///
/// ```
/// let t = rayforge::util::random_secret().unwrap();
/// assert_eq!(t.len(), 32);
/// ```
pub fn random_secret() -> crate::Result<String> {
    let mut b = [0u8; 16];
    // SAFETY: getrandom(2) writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .map_err(|e| crate::Error::io("reading random bytes (getrandom and /dev/urandom)", e))?;
    }
    Ok(crate::ids::hex(&b))
}

/// A Prometheus label value escaped for the text format (`\` `"` and
/// newlines, which `prometheus-client` writes as they are): what every
/// `/metrics` endpoint of the project passes for values that a user chose
/// (actor, task and deployment names), so none can break the exposition or
/// forge a series.
///
/// ```
/// assert_eq!(rayforge::util::prometheus_label(r#"a"b\c"#), r#"a\"b\\c"#);
/// assert_eq!(rayforge::util::prometheus_label("x\ny"), "x\\ny");
/// ```
pub fn prometheus_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}
