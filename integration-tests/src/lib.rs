//! Shared helpers for rayforge's cross-process tests: starting the embedded
//! cluster once per test process and waiting on conditions with generous
//! deadlines (never fixed sleeps).

use std::sync::Once;
use std::time::{Duration, Instant};

use rayforge::Config;

/// Starts an embedded 2-CPU cluster once for this test process.
pub fn cluster() {
    cluster_with(|c| c);
}

/// Starts the embedded cluster once, with a custom configuration.
pub fn cluster_with(f: impl FnOnce(Config) -> Config) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        rayforge::init(f(Config::default().num_cpus(2.0))).expect("start embedded cluster");
    });
}

/// Polls `cond` until it holds or `deadline` passes; returns whether it held.
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    cond()
}

/// A marker file unique to one test run, for "fail the first attempt only".
pub fn marker(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("rayforge-test-markers-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir.join(name).to_string_lossy().into_owned()
}

/// Kills the calling process with SIGKILL (used inside tasks to simulate a
/// crashed worker).
pub fn kill_self() -> ! {
    // SAFETY: plain syscalls on our own pid.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}
