//! Process groups that end with whoever started them, however it ends.

use std::io;
use std::process::{Child, ChildStdin, Command, Stdio};

/// Ends a process group (SIGKILL to every process in it) when dropped, and
/// when this process dies, even by SIGKILL. A child the project starts
/// (a submitted job's entrypoint, a Tune trial's program) leads a group of
/// its own, and whatever it starts stays in that group: a wrapper script's
/// grandchild ends with it instead of living on as an orphan, which
/// `PR_SET_PDEATHSIG` alone (one process, and only when the forking thread
/// ends) cannot do.
///
/// How: a small watchdog (`sh`, in a session of its own so a terminal's
/// Ctrl-C does not reach it) blocks reading a pipe whose only writer is
/// this process. The pipe ends when the guard is dropped or this process
/// exits for any reason; the watchdog then kills the group.
///
/// ```no_run
/// use std::os::unix::process::CommandExt;
/// let mut cmd = std::process::Command::new("sh");
/// cmd.args(["-c", "sleep 600 & sleep 600"]).process_group(0);
/// let child = cmd.spawn().unwrap();
/// let guard = rayforge::util::GroupGuard::new(child.id()).unwrap();
/// drop(guard); // both sleeps end
/// ```
#[derive(Debug)]
pub struct GroupGuard {
    pgid: u32,
    /// The tree's cgroup, when it has one ([`GroupGuard::with_cgroup`]).
    cgroup: Option<super::Cgroup>,
    /// The pipe's write end: closing it tells the watchdog.
    pipe: Option<ChildStdin>,
    watchdog: Option<Child>,
}

impl GroupGuard {
    /// Guards the process group `pgid` (the pid of a child started with
    /// `process_group(0)` or `setsid`).
    pub fn new(pgid: u32) -> crate::Result<GroupGuard> {
        GroupGuard::with_cgroup(pgid, None)
    }

    /// Guards the process group `pgid` and the cgroup the child was put in
    /// ([`super::Cgroup`]; see [`super::cgroup::enter_from_pre_exec`]): the
    /// watchdog also kills everything in the cgroup (a daemon that left
    /// the group with `setsid` included) and removes it.
    pub fn with_cgroup(pgid: u32, cgroup: Option<super::Cgroup>) -> crate::Result<GroupGuard> {
        if pgid <= 1 || pgid > i32::MAX as u32 {
            return Err(crate::Error::InvalidArgument(format!(
                "{pgid} is not a process group to guard"
            )));
        }
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("sh");
        // `read` returns at the pipe's end; then the group is killed, and
        // the cgroup's processes, and the cgroup is removed once empty.
        cmd.args([
            "-c",
            "read _ignored; kill -9 -\"$1\" 2>/dev/null; \
             if [ -n \"$2\" ]; then echo 1 > \"$2/cgroup.kill\" 2>/dev/null; i=0; \
             while [ $i -lt 50 ] && ! rmdir \"$2\" 2>/dev/null; do sleep 0.1; i=$((i+1)); done; fi; exit 0",
        ])
        .arg("rayforge-group-watch")
        .arg(pgid.to_string())
        .arg(
            cgroup
                .as_ref()
                .map(|c| c.dir().as_os_str().to_owned())
                .unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
        let mut watchdog = cmd
            .spawn()
            .map_err(|e| crate::Error::io(format!("starting the watchdog of process group {pgid}"), e))?;
        let pipe = watchdog.stdin.take();
        Ok(GroupGuard {
            pgid,
            cgroup,
            pipe,
            watchdog: Some(watchdog),
        })
    }

    /// The guarded group.
    pub fn pgid(&self) -> u32 {
        self.pgid
    }

    /// The cgroup it guards too, if any.
    pub fn cgroup(&self) -> Option<&super::Cgroup> {
        self.cgroup.as_ref()
    }

    /// Whether any process of the group (or of its cgroup) is left.
    pub fn alive(&self) -> bool {
        group_alive(self.pgid) || self.cgroup.as_ref().is_some_and(|c| !c.pids().is_empty())
    }

    /// Sends `signal` to every process of the group (and of its cgroup).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        if let Some(c) = &self.cgroup {
            c.signal(signal);
        }
        // SAFETY: kill(2) on a process group this guard watches.
        if unsafe { libc::kill(-(self.pgid as i32), signal) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        drop(self.pipe.take());
        if let Some(mut w) = self.watchdog.take() {
            // It exits as soon as it has read the pipe's end: reaped off
            // the caller's thread, which may be an async one.
            let _ = std::thread::Builder::new()
                .name("rayforge-group-reap".into())
                .spawn(move || w.wait());
        }
    }
}

/// Whether process `pid` of this machine is running (a zombie, exited but
/// not yet reaped by its parent, counts as gone).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether any process of group `pgid` is left.
pub fn group_alive(pgid: u32) -> bool {
    // SAFETY: signal 0 only checks that the group exists.
    pgid > 1 && unsafe { libc::kill(-(pgid as i32), 0) } == 0
}

/// The processes of group `pgid` whose environment holds `marker`
/// (`NAME=value`): what a restarted supervisor can safely end, since a
/// group id may have been reused by an unrelated program.
pub fn group_members_marked(pgid: u32, marker: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let want = marker.as_bytes();
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the command name (which may hold spaces):
            // state, ppid, pgrp.
            let pgrp = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(2))
                .and_then(|p| p.parse::<u32>().ok());
            pgrp == Some(pgid)
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == want))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};

    fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn dropping_the_guard_ends_the_grandchildren_too() {
        let dir = std::env::temp_dir().join(format!("rf-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("grandchild");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 600 & echo $! > \"$1\"; wait", "sh"])
            .arg(&pidfile)
            .env("RF_GROUP_TEST", "yes")
            .process_group(0);
        let mut child = cmd.spawn().unwrap();
        let guard = GroupGuard::new(child.id()).unwrap();
        let mut grandchild = 0u32;
        assert!(wait_for(|| {
            grandchild = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            grandchild > 0
        }));
        assert!(guard.alive());
        let mut marked = group_members_marked(child.id(), "RF_GROUP_TEST=yes");
        marked.sort();
        let mut want = vec![child.id(), grandchild];
        want.sort();
        assert_eq!(marked, want);
        assert!(group_members_marked(child.id(), "RF_GROUP_TEST=no").is_empty());
        drop(guard);
        let _ = child.wait();
        // Gone, or a zombie its new parent has not reaped yet.
        assert!(
            wait_for(|| !process_alive(grandchild)),
            "the grandchild outlived the guard"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn nothing_to_guard_is_an_error() {
        assert!(GroupGuard::new(0).is_err());
        assert!(GroupGuard::new(1).is_err());
    }
}
