//! Benchmark: how fast the dashboard answers with 100k tasks and 10k
//! actors in the cluster.
//!
//! It starts a cluster of real daemons on this machine (a head and 9 nodes
//! by default, one CPU each), runs 10,000 tasks pinned to each node (a
//! node keeps its newest 10,000 task records, so 10 nodes hold 100k), and
//! creates 10,000 actors in batches (each pinged, then killed: their
//! records stay in the actor table). Then it times each JSON endpoint the
//! pages read (the median and worst of 5 calls), and, when Chromium and
//! playwright-core are installed, each page in the browser from navigation
//! to drawn (`core/dashboard/tests/browser/bench.mjs`).
//!
//! ```text
//! cargo build --release -p rayforge-cli -p rayforge-integration-tests --bins
//! target/release/dashboard_bench [--nodes 10] [--tasks-per-node 10000] [--actors 10000]
//! ```

use std::time::{Duration, Instant};

use rayforge_integration_tests::{http, wait_until, LocalCluster};

/// A task that does nothing.
#[rayforge::remote]
fn noop(i: u64) -> u64 {
    i
}

/// An actor that only answers.
#[rayforge::actor]
pub struct Blip;

#[rayforge::actor]
impl Blip {
    fn new() -> Self {
        Blip
    }

    fn ping(&self) -> u32 {
        1
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run() -> rayforge::Result<()> {
    let nodes = arg("--nodes", 10).max(1);
    let per_node = arg("--tasks-per-node", 10_000);
    let actors = arg("--actors", 10_000);
    let mut cluster = LocalCluster::start(&["--num-cpus", "1"], 20_000);
    for _ in 1..nodes {
        cluster.add_node(&["--num-cpus", "1"]);
    }
    rayforge::init(cluster.config())?;
    let ids: Vec<String> = rayforge::state::list_nodes()?
        .into_iter()
        .filter(|n| n.alive)
        .map(|n| n.node_id)
        .collect();
    println!("cluster: {} nodes", ids.len());

    let t = Instant::now();
    for id in &ids {
        let refs: Vec<_> = (0..per_node as u64)
            .map(|i| {
                noop::options()
                    .scheduling_strategy(rayforge::SchedulingStrategy::NodeAffinity {
                        node_id: id.clone(),
                        soft: false,
                    })
                    .remote(i)
            })
            .collect();
        rayforge::get_all(&refs)?;
    }
    println!("{} tasks in {:.1} s", per_node * ids.len(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    let mut made = 0;
    while made < actors {
        let batch = (actors - made).min(250);
        let handles = (0..batch)
            .map(|_| Blip::options().num_cpus(0.0).remote())
            .collect::<rayforge::Result<Vec<_>>>()?;
        let pings: Vec<_> = handles.iter().map(|h| h.ping()).collect();
        rayforge::get_all(&pings)?;
        for h in &handles {
            rayforge::kill(h)?;
        }
        made += batch;
        if made % 2000 == 0 || made == actors {
            println!("{made} actors created and killed ({:.1} s)", t.elapsed().as_secs_f64());
        }
    }

    let base = cluster.jobs_address.clone();
    let auth = format!("Bearer {}", cluster.token);
    let count = |path: &str, field: &str| -> usize {
        let r = http(&base, "GET", path, &[("Authorization", &auth)], "");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        if field.is_empty() {
            v.as_array().map_or(0, |a| a.len())
        } else {
            v[field].as_u64().unwrap_or(0) as usize
        }
    };
    // Let the task records settle (workers report in batches).
    let mut tasks = 0;
    wait_until(Duration::from_secs(60), || {
        let n = count("/api/v0/tasks?per_page=1", "total");
        let settled = n == tasks;
        tasks = n;
        settled && n > 0
    });
    let actor_rows = count("/api/v0/actors", "");
    println!("the dashboard sees {tasks} tasks and {actor_rows} actors\n");
    println!(
        "{:<40} {:>10} {:>10} {:>12}",
        "endpoint", "median ms", "worst ms", "bytes"
    );
    let mut rows = Vec::new();
    for path in [
        "/",
        "/api/v0/cluster",
        "/api/v0/nodes",
        "/api/v0/actors",
        "/api/v0/tasks?page=1&per_page=100",
        "/api/v0/tasks?state=FINISHED&page=50&per_page=100",
        "/api/v0/events",
        "/api/v0/placement_groups",
        "/api/v0/objects",
        "/api/v0/jobs",
    ] {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let r = http(&base, "GET", path, &[("Authorization", &auth)], "");
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            if r.status != 200 {
                return Err(rayforge::Error::Runtime(format!("{path}: {} {}", r.status, r.body)));
            }
            bytes = r.body.len();
        }
        times.sort_by(f64::total_cmp);
        println!("{path:<40} {:>10.1} {:>10.1} {bytes:>12}", times[2], times[4]);
        rows.push(serde_json::json!({"endpoint": path, "median_ms": times[2], "worst_ms": times[4], "bytes": bytes}));
    }
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/dashboard/tests/browser");
    let chromium = std::env::var("RAYFORGE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if browser_dir.join("node_modules/playwright-core").exists() && std::path::Path::new(&chromium).exists() {
        println!("\nin Chromium (navigation to drawn):");
        let out = std::process::Command::new("node")
            .arg(browser_dir.join("bench.mjs"))
            .env("BASE", &base)
            .env("TOKEN", &cluster.token)
            .env("CHROMIUM", &chromium)
            .output()
            .map_err(|e| rayforge::Error::Runtime(format!("running node: {e}")))?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    println!(
        "{}",
        serde_json::json!({"bench": "dashboard", "nodes": ids.len(), "tasks": tasks, "actors": actor_rows, "endpoints": rows})
    );
    rayforge::shutdown();
    Ok(())
}

#[rayforge::main]
fn main() {
    if let Err(e) = run() {
        eprintln!("dashboard_bench: {e}");
        std::process::exit(1);
    }
}
