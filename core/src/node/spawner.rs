//! Child processes started from one thread that lasts as long as the
//! process. A child's `PR_SET_PDEATHSIG` fires when the *thread* that
//! forked it exits, not the process: a worker forked on the thread that
//! called `init` (a helper thread under `#[tokio::main]`) or on a runtime's
//! blocking thread (which ends after idling) was SIGKILLed moments after it
//! started. Every child that should die with this process is forked here.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Request = (
    tokio::process::Command,
    tokio::runtime::Handle,
    mpsc::Sender<std::io::Result<tokio::process::Child>>,
);

static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();

/// Starts `cmd` from the lasting spawner thread (made on first use), in
/// the calling runtime's context (the child is reaped by that runtime).
/// Must be called from within a Tokio runtime.
pub(crate) fn spawn(cmd: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|e| std::io::Error::other(format!("starting a process outside a runtime: {e}")))?;
    let (reply, answer) = mpsc::channel();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        let started = std::thread::Builder::new()
            .name("rayforge-spawner".into())
            .spawn(move || {
                // Never ends while the process lives: the sender is static.
                for (mut cmd, handle, reply) in rx {
                    let _entered = handle.enter();
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = started {
            tracing::error!("cannot start the process spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    sender
        .lock()
        .map_err(|_| std::io::Error::other("the process spawner's lock is poisoned"))?
        .send((cmd, handle, reply))
        .map_err(|_| std::io::Error::other("the process spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the process spawner thread is gone"))?
}

#[cfg(test)]
mod tests {
    /// A child started from a thread that then ends lives on (forked
    /// directly there, PR_SET_PDEATHSIG would kill it at once).
    #[test]
    fn a_child_outlives_the_thread_that_asked_for_it() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let handle = rt.handle().clone();
        let mut child = std::thread::spawn(move || {
            let _g = handle.enter();
            let mut cmd = tokio::process::Command::new("sleep");
            cmd.arg("30");
            // SAFETY: prctl is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            super::spawn(cmd).unwrap()
        })
        .join()
        .unwrap();
        // The asking thread is gone; give a death signal time to land.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        while std::time::Instant::now() < deadline {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the child was killed with its thread"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        rt.block_on(async {
            child.kill().await.unwrap();
        });
    }
}
