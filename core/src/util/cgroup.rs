//! A cgroup (v2) of its own for a child's whole process tree, where this
//! process may make one: what a process group cannot hold, such as a
//! daemon that left the group with `setsid`, stays in the cgroup and ends
//! with it.
//!
//! A cgroup is made under this process's own cgroup, named by the caller
//! (`rayforge-job-<id>`), so a restarted supervisor finds it again by name.
//! Where cgroup v2 is not mounted or not writable (most containers, a
//! process that is not root nor delegated a subtree), [`Cgroup::create`]
//! returns `None` and the caller relies on its process group alone.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A cgroup v2 directory this process made (or found) for a process tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    dir: PathBuf,
}

/// Where this process's own cgroup v2 is: the cgroup2 mount (from
/// `/proc/self/mountinfo`) joined with the process's path in it (the
/// `0::` line of `/proc/self/cgroup`).
fn own_cgroup_dir() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|l| {
        let (before, after) = l.split_once(" - ")?;
        (after.split_whitespace().next() == Some("cgroup2")).then(|| before.split_whitespace().nth(4))?
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(Path::new(mount).join(path.trim_start_matches('/')))
}

impl Cgroup {
    /// Makes the cgroup `name` under this process's own; `None` where
    /// cgroup v2 is not available to this process, or where a cgroup of
    /// that name exists already (never shared: ending one would end the
    /// other's processes).
    pub fn create(name: &str) -> Option<Cgroup> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return None;
        }
        let dir = own_cgroup_dir()?.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) => {
                tracing::debug!(cgroup = %dir.display(), "no cgroup of its own for a process tree: {e}");
                return None;
            }
        }
        dir.join("cgroup.procs").exists().then_some(Cgroup { dir })
    }

    /// The cgroup `name` under this process's own, if it exists (what a
    /// supervisor that restarted finds of its predecessor's children).
    pub fn existing(name: &str) -> Option<Cgroup> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return None;
        }
        let dir = own_cgroup_dir()?.join(name);
        dir.join("cgroup.procs").exists().then_some(Cgroup { dir })
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `cgroup.procs` as a C string, for a child to write "0" to between
    /// fork and exec ([`enter_from_pre_exec`]).
    pub fn procs_path(&self) -> CString {
        // A path from the kernel's own files and a checked name: no NUL.
        CString::new(self.dir.join("cgroup.procs").as_os_str().as_bytes()).unwrap_or_default()
    }

    /// Makes the process `cmd` spawns start in this cgroup (its children
    /// stay there, whatever process group or session they move to).
    pub fn enter_on_spawn(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let procs = self.procs_path();
        // SAFETY: enter_from_pre_exec makes only async-signal-safe calls
        // (open, write, close) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                enter_from_pre_exec(&procs);
                Ok(())
            });
        }
    }

    /// The processes in it.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Sends `signal` to every process in it.
    pub fn signal(&self, signal: i32) {
        for pid in self.pids() {
            // SAFETY: kill(2) on a process of a cgroup this process made.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    /// SIGKILLs every process in it (through `cgroup.kill` where the kernel
    /// has it, which also catches processes forking meanwhile) and returns
    /// how many there were.
    pub fn kill(&self) -> usize {
        let n = self.pids().len();
        if n > 0 && std::fs::write(self.dir.join("cgroup.kill"), "1").is_err() {
            for _ in 0..10 {
                self.signal(libc::SIGKILL);
                if self.pids().is_empty() {
                    break;
                }
            }
        }
        n
    }

    /// Kills what is left in it and removes it, waiting up to `wait` for
    /// its processes to be gone (a cgroup with processes cannot be
    /// removed). Returns how many processes were left.
    pub fn end(&self, wait: Duration) -> usize {
        let n = self.kill();
        let until = Instant::now() + wait;
        loop {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return n,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return n,
                Err(e) if Instant::now() >= until => {
                    tracing::warn!(cgroup = %self.dir.display(), "could not remove the cgroup: {e}");
                    return n;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is
/// `procs`: for `Command::pre_exec` (only open, write and close, which are
/// async-signal-safe). A failure leaves the process where it is.
pub fn enter_from_pre_exec(procs: &CString) {
    // SAFETY: plain syscalls on a NUL-terminated path; no allocation.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// A daemon that leaves its process group with `setsid` stays in the
    /// cgroup and ends with it. Skipped where cgroup v2 is not writable
    /// (unless RAYFORGE_REQUIRE_CGROUPS=1, as the test script sets as root).
    #[test]
    fn a_process_that_left_its_group_ends_with_the_cgroup() {
        let name = format!("rayforge-test-{}", std::process::id());
        let Some(cg) = Cgroup::create(&name) else {
            assert!(
                std::env::var("RAYFORGE_REQUIRE_CGROUPS").as_deref() != Ok("1"),
                "cgroup v2 is not writable here"
            );
            eprintln!("skipped: cgroup v2 is not writable here");
            return;
        };
        assert_eq!(Cgroup::existing(&name), Some(cg.clone()));
        assert_eq!(Cgroup::create(&name), None, "a cgroup is never shared");
        let dir = std::env::temp_dir().join(format!("rf-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("daemon");
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "setsid sleep 600 & echo $! > \"$1\"; wait", "sh"])
            .arg(&pidfile)
            .process_group(0);
        cg.enter_on_spawn(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let end = Instant::now() + Duration::from_secs(30);
        let mut daemon = 0u32;
        while daemon == 0 && Instant::now() < end {
            daemon = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(daemon > 0, "the daemon never started");
        let mut pids = cg.pids();
        pids.sort();
        assert!(pids.contains(&child.id()) && pids.contains(&daemon), "{pids:?}");
        // Out of the child's process group, as `setsid` makes it.
        // SAFETY: getpgid(2) on a pid just read.
        assert_ne!(unsafe { libc::getpgid(daemon as i32) }, child.id() as i32);
        assert_eq!(cg.end(Duration::from_secs(10)), 2);
        let _ = child.wait();
        let end = Instant::now() + Duration::from_secs(30);
        while crate::util::process_alive(daemon) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!crate::util::process_alive(daemon), "the daemon outlived its cgroup");
        assert!(!cg.dir().exists(), "the cgroup was not removed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn names_that_are_not_one_directory_are_refused() {
        for bad in ["", "a/b", "..", ".hidden"] {
            assert_eq!(Cgroup::create(bad), None, "{bad}");
        }
    }
}
