//! A driver whose `main` is async, written as the README says:
//! `#[tokio::main]` above `#[rayforge::main]`. There `init` runs on a
//! helper thread that ends once it returns: the case where prestarted
//! workers, forked on that thread, were killed by `PR_SET_PDEATHSIG` a few
//! milliseconds after they started.
//!
//! It starts an embedded cluster (2 CPUs) with two prestarted workers and,
//! once both are up, prints `prestarted PID PID`. For each line `run` it
//! then reads on stdin it runs 20 tasks and prints `ran PID...`, the worker
//! each ran on. At the end of stdin it shuts down and exits.

use std::time::{Duration, Instant};

/// How many workers the cluster prestarts.
const PRESTARTED: usize = 2;

/// The pid of the worker it runs on.
#[rayforge::remote]
fn worker_pid() -> u32 {
    std::process::id()
}

/// The pids of the cluster's alive workers.
fn alive_workers() -> rayforge::Result<Vec<u32>> {
    Ok(rayforge::state::worker_logs(None, Some(0))?
        .items
        .into_iter()
        .filter(|w| w.alive)
        .map(|w| w.pid)
        .collect())
}

/// Space-separated pids.
fn pids(p: &[u32]) -> String {
    p.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
}

async fn run() -> rayforge::Result<()> {
    rayforge::init(rayforge::Config::default().num_cpus(2.0).prestart_workers(PRESTARTED))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut workers = alive_workers()?;
    while workers.len() < PRESTARTED {
        if Instant::now() > deadline {
            return Err(rayforge::Error::Runtime(format!(
                "{PRESTARTED} workers were prestarted, but after 60 s only these are alive: {workers:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        workers = alive_workers()?;
    }
    println!("prestarted {}", pids(&workers));
    // Stdin is read on a thread of its own, which hands the lines over.
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        if line.trim() != "run" {
            eprintln!("not understood: {line:?} (say `run`)");
            continue;
        }
        let refs: Vec<_> = (0..20).map(|_| worker_pid::remote()).collect();
        let mut ran = Vec::new();
        for r in refs {
            ran.push(r.await?);
        }
        println!("ran {}", pids(&ran));
    }
    rayforge::shutdown();
    Ok(())
}

#[tokio::main]
#[rayforge::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("async main driver failed: {e}");
        std::process::exit(1);
    }
}
