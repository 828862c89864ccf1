//! Utilities users reach for on top of tasks and actors: a
//! multiprocessing-style [`Pool`], an [`ActorPool`] and a distributed
//! [`Queue`]; and the helpers the project's own parts share
//! ([`private_dir`], [`prometheus_label`], [`GroupGuard`], [`Cgroup`]).

mod actor_pool;
pub mod cgroup;
mod pool;
mod private_dir;
mod process_group;
mod queue;

pub use actor_pool::ActorPool;
pub use cgroup::Cgroup;
pub use pool::Pool;
pub(crate) use private_dir::fresh_private_dir;
pub use private_dir::{private_dir, rayforge_tmp};
pub use process_group::{group_alive, group_members_marked, process_alive, GroupGuard};
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

/// Raises this process's limit on open files (RLIMIT_NOFILE) from its soft
/// value to its hard one (at most 2^20), as servers do: every connection,
/// worker pipe and log is a descriptor, and at the usual soft limit of
/// 1,024 a thousand idle clients would stop a daemon from accepting anyone.
/// Daemons and `serve run` call it as they start; children inherit it.
/// Returns the limit now in force.
///
/// ```
/// assert!(rayforge::util::raise_open_files_limit().unwrap() >= 64);
/// ```
pub fn raise_open_files_limit() -> crate::Result<u64> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one `rlimit` into `l`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return Err(crate::Error::io(
            "reading RLIMIT_NOFILE",
            std::io::Error::last_os_error(),
        ));
    }
    let want = l.rlim_max.min(1 << 20);
    if l.rlim_cur >= want {
        return Ok(l.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: l.rlim_max,
    };
    // SAFETY: setrlimit(2) reads one `rlimit`; a soft limit up to the hard
    // one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(crate::Error::io(
            format!("raising RLIMIT_NOFILE from {} to {want}", l.rlim_cur),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(want)
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
