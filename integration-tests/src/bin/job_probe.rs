//! A driver the jobs tests submit with `rayforge job submit`: it joins the
//! cluster named by its environment (the head sets `RAYFORGE_ADDRESS`),
//! runs tasks on the nodes offering resource "x" and prints what each saw of
//! the job's runtime env (an environment variable, the working directory).
//!
//! The ungated tasks print a line, which the driver shows as it comes.
//!
//! Usage: `job_probe GATE_FILE` — the first task writes its node id to
//! `GATE_FILE.at`, then waits for GATE_FILE to exist, so a test can kill its
//! node while it runs.
//!
//! `job_probe --hold-actors` instead creates a named actor `held` and a
//! detached named actor `held-detached`, prints `ready`, and waits forever
//! without calling `shutdown` (a test then kills it).

use std::time::Duration;

/// Where the task ran, `$PROBE_VAR`, and `data.txt` of its working directory.
#[rayforge::remote]
fn probe(gate: String) -> (String, String, String) {
    if !gate.is_empty() {
        let _ = std::fs::write(format!("{gate}.at"), rayforge::node_id().unwrap_or_default());
    }
    if gate.is_empty() {
        // Shown by the driver, prefixed with this worker's pid and node.
        println!("probe task says hi");
    }
    while !gate.is_empty() && !std::path::Path::new(&gate).exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    (
        rayforge::node_id().unwrap_or_default(),
        std::env::var("PROBE_VAR").unwrap_or_default(),
        std::fs::read_to_string("data.txt").unwrap_or_default(),
    )
}

/// An actor that only answers where it runs.
#[rayforge::actor]
pub struct Holder;

#[rayforge::actor]
impl Holder {
    fn new() -> Self {
        Holder
    }

    fn node(&self) -> String {
        rayforge::node_id().unwrap_or_default()
    }
}

/// Creates the two actors, says so, and waits to be killed.
fn hold_actors() -> rayforge::Result<()> {
    let held = Holder::options().name("held").num_cpus(0.0).remote()?;
    let kept = Holder::options()
        .name("held-detached")
        .detached()
        .num_cpus(0.0)
        .remote()?;
    held.node().get()?;
    kept.node().get()?;
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[rayforge::main]
fn main() {
    let gate = std::env::args().nth(1).unwrap_or_default();
    if let Err(e) = rayforge::init(rayforge::Config::default()) {
        eprintln!("cannot join the cluster: {e}");
        std::process::exit(2);
    }
    if gate == "--hold-actors" {
        if let Err(e) = hold_actors() {
            eprintln!("holding actors failed: {e}");
            std::process::exit(1);
        }
    }
    println!(
        "driver var={} data={}",
        std::env::var("PROBE_VAR").unwrap_or_default(),
        std::fs::read_to_string("data.txt").unwrap_or_default()
    );
    let gated = probe::options().resource("x", 1.0).max_retries(3).remote(gate);
    let mut refs = vec![gated];
    refs.extend((0..3).map(|_| probe::options().resource("x", 1.0).remote(String::new())));
    for (i, r) in refs.into_iter().enumerate() {
        let what = if i == 0 { "gated" } else { "probe" };
        match r.get() {
            Ok((node, var, data)) => println!("{what} node={node} var={var} data={data}"),
            Err(e) => {
                eprintln!("probe failed: {e}");
                rayforge::shutdown();
                std::process::exit(1);
            }
        }
    }
    rayforge::shutdown();
}
