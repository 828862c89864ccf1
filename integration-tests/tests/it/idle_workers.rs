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
