//! Idle workers are stopped after `idle_worker_timeout_s`, except those that
//! own objects someone still holds: stopping them would lose the objects.

use std::time::Duration;

use rayforge::state;
use rayforge::{Buffer, Config, ObjectRef};
use rayforge_integration_tests::{marker, wait_until};

/// Says it started (a file next to the gate), then waits for the gate.
fn wait_for_gate(gate: &str, who: &str) {
    let _ = std::fs::write(format!("{gate}.{who}"), b"started");
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while !std::path::Path::new(gate).exists() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Puts an object (so this worker owns it) and returns a reference to it.
#[rayforge::remote]
fn own_one(gate: String) -> (u32, Vec<ObjectRef<Buffer<u8>>>) {
    wait_for_gate(&gate, "owner");
    let r = rayforge::put(Buffer::from(vec![5u8; 1 << 20])).expect("put");
    (std::process::id(), vec![r])
}

/// Owns nothing.
#[rayforge::remote]
fn plain(gate: String) -> u32 {
    wait_for_gate(&gate, "plain");
    std::process::id()
}

fn alive(pid: u32) -> bool {
    state::worker_logs(Some(pid), Some(0))
        .expect("worker logs")
        .items
        .iter()
        .any(|w| w.pid == pid && w.alive)
}

#[test]
fn an_idle_worker_that_owns_objects_is_kept_until_they_are_freed() {
    rayforge_integration_tests::own_process!();
    let mut cfg = Config::default().num_cpus(2.0).prestart_workers(0);
    cfg.idle_worker_timeout_s = Some(0.3);
    rayforge::init(cfg).unwrap();
    // Both run at once, so on two workers.
    let gate = std::env::temp_dir().join(marker("idle-gate"));
    let g = gate.display().to_string();
    let (a, b) = (own_one::remote(g.clone()), plain::remote(g.clone()));
    let started = |who: &str| std::path::Path::new(&format!("{g}.{who}")).exists();
    assert!(wait_until(Duration::from_secs(60), || started("owner") && started("plain")));
    std::fs::write(&gate, b"go").unwrap();
    let (owner, refs) = a.get().unwrap();
    let other = b.get().unwrap();
    assert_ne!(owner, other);

    // The worker owning nothing is stopped; the owner is asked too (it has
    // been idle longer) but stays while the driver holds its object.
    assert!(
        wait_until(Duration::from_secs(60), || !alive(other)),
        "the idle worker was not stopped"
    );
    assert!(alive(owner), "an idle worker owning a held object was stopped");
    let b = refs[0].get().unwrap();
    assert!(b.len() == 1 << 20 && b.iter().all(|x| *x == 5));

    // Once nothing it owns is held (the result that held the reference
    // included), it goes too.
    drop((b, refs, a));
    assert!(
        wait_until(Duration::from_secs(60), || !alive(owner)),
        "the owner was not stopped once its objects were freed"
    );
    for f in [gate.clone(), format!("{g}.owner").into(), format!("{g}.plain").into()] {
        let _ = std::fs::remove_file(f);
    }
    rayforge::shutdown();
}

#[rayforge::remote]
fn pid_of_worker() -> u32 {
    std::process::id()
}

/// `init` on a thread that then ends (as under `#[tokio::main]`, where it
/// runs on a helper thread): the prestarted workers live on. They were
/// forked on that thread, and `PR_SET_PDEATHSIG` killed them as it ended.
#[test]
fn prestarted_workers_outlive_the_thread_that_called_init() {
    rayforge_integration_tests::own_process!();
    std::thread::spawn(|| {
        rayforge::init(Config::default().num_cpus(2.0).prestart_workers(2)).unwrap();
    })
    .join()
    .unwrap();
    let workers = || -> Vec<u32> {
        state::worker_logs(None, Some(1))
            .map(|l| l.items.iter().map(|w| w.pid).collect())
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(60), || workers().len() >= 2),
        "two workers prestarted"
    );
    let prestarted = workers();
    // Work runs, and afterwards every prestarted worker is still there.
    let pids: Vec<u32> = (0..20)
        .map(|_| pid_of_worker::remote())
        .collect::<Vec<_>>()
        .into_iter()
        .map(|r| r.get().unwrap())
        .collect();
    assert!(!pids.is_empty());
    for pid in &prestarted {
        assert!(
            rayforge_integration_tests::process_running(*pid) && alive(*pid),
            "prestarted worker {pid} died: {:?}",
            state::worker_logs(Some(*pid), Some(1)).map(|l| l.items)
        );
    }
    assert!(
        pids.iter().any(|p| prestarted.contains(p)),
        "tasks ran on the prestarted workers: {pids:?} vs {prestarted:?}"
    );
}

/// Kills a driver process on drop, so a failing test leaves none behind
/// (its workers die with it).
struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pids on the first line of `lines` that starts with `tag`, waiting
/// up to two minutes for it.
fn pids_after(lines: &std::sync::mpsc::Receiver<String>, tag: &str) -> Vec<u32> {
    let end = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("the driver printed no `{tag}` line: {e}"));
        if let Some(rest) = line.strip_prefix(tag) {
            return rest
                .split_whitespace()
                .map(|p| p.parse().unwrap_or_else(|_| panic!("not a pid in {line:?}")))
                .collect();
        }
    }
}

/// `init` in a `#[tokio::main]` driver (`async_main_driver`), where it runs
/// on a helper thread that ends when `init` returns: the prestarted
/// workers are not killed with that thread (`PR_SET_PDEATHSIG` fired a few
/// milliseconds after they started), and the driver's tasks run on them.
#[test]
fn prestarted_workers_outlive_init_in_a_tokio_main_driver() {
    rayforge_integration_tests::own_process!();
    use std::io::{BufRead, Write};
    let bin = rayforge_integration_tests::workspace_bin("async_main_driver", "rayforge-integration-tests");
    let mut child = std::process::Command::new(bin)
        .env_remove("RAYFORGE_ADDRESS")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the async driver");
    let mut input = child.stdin.take().expect("piped stdin");
    let out = child.stdout.take().expect("piped stdout");
    let driver = Driver(child);
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let prestarted = pids_after(&lines, "prestarted ");
    assert_eq!(prestarted.len(), 2, "{prestarted:?}");

    // A death signal lands within milliseconds: watch them for two seconds.
    let watch = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < watch {
        for pid in &prestarted {
            assert!(
                rayforge_integration_tests::process_running(*pid),
                "prestarted worker {pid} died after `init` returned"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // The driver's tasks run on them, and they are still there afterwards.
    writeln!(input, "run").expect("write to the driver");
    let ran = pids_after(&lines, "ran ");
    assert_eq!(ran.len(), 20, "{ran:?}");
    assert!(
        ran.iter().any(|p| prestarted.contains(p)),
        "no task ran on the prestarted workers: {ran:?} vs {prestarted:?}"
    );
    for pid in &prestarted {
        assert!(
            rayforge_integration_tests::process_running(*pid),
            "prestarted worker {pid} died"
        );
    }

    // At the end of its input the driver shuts down cleanly.
    drop(input);
    let mut driver = driver;
    let mut status = None;
    assert!(
        wait_until(Duration::from_secs(60), || {
            status = driver.0.try_wait().ok().flatten();
            status.is_some()
        }),
        "the driver did not exit at the end of its input"
    );
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}
