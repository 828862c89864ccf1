//! `rayforge cluster-benchmark`: the scale cases of a multi-node cluster, run
//! on one machine with real node daemons (each a `rayforge start` process on
//! its own loopback ports), this process joining as the driver:
//!
//! - many tasks: tiny tasks spread over three worker nodes (tasks/s);
//! - cross-node actor calls: sync round trips to an actor on another node;
//! - broadcast: one large object read on three other nodes (GiB/s of
//!   delivered copies, and how many times the owner's node sent it);
//! - many actors: actors created over three worker nodes, each called once
//!   (actors/s);
//! - control plane: many lightweight node daemons join, then one task runs
//!   on each (nodes/s joined, tasks/s placed across them).
//!
//! `core/bench/compare-ray-cluster` runs Ray 2.60's equivalents
//! (`core/bench/ray_cluster_bench.py`) side by side and prints the ratios.

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rayforge::{Buffer, Config, Error, Result};

/// What to run (also the options of `rayforge cluster-benchmark`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Settings {
    /// Write `{"case name": value}` to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Only run cases whose name contains this text.
    #[arg(long)]
    pub(crate) filter: Option<String>,
    /// Tiny tasks of the many-tasks case.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) tasks: usize,
    /// Actors of the many-actors case.
    #[arg(long, default_value_t = 1000)]
    pub(crate) actors: usize,
    /// Size of the broadcast object in MiB.
    #[arg(long, default_value_t = 1024)]
    pub(crate) broadcast_mib: usize,
    /// Node daemons of the control-plane case (0: skip it).
    #[arg(long, default_value_t = 100)]
    pub(crate) scale_nodes: usize,
}

#[rayforge::remote]
fn noop() -> u8 {
    0
}

/// Sums a byte buffer (touching every page) on whichever node runs it.
#[rayforge::remote]
fn read_all(b: Buffer<u8>) -> (String, u64) {
    let sum: u64 = b.iter().step_by(4096).map(|&x| x as u64).sum();
    (rayforge::node_id().unwrap_or_default(), sum + b.len() as u64)
}

/// The node a task ran on.
#[rayforge::remote]
fn where_am_i() -> String {
    rayforge::node_id().unwrap_or_default()
}

/// The callee of the actor cases.
#[rayforge::actor]
pub(crate) struct Pinger;

#[rayforge::actor]
impl Pinger {
    fn new() -> Self {
        Pinger
    }

    fn ping(&self) -> u8 {
        0
    }

    fn node(&self) -> String {
        rayforge::node_id().unwrap_or_default()
    }
}

/// Daemons started for the benchmark; stopped when dropped.
struct Daemons {
    dir: PathBuf,
    address: String,
    token: String,
    children: Vec<Child>,
}

impl Daemons {
    fn exe() -> Result<PathBuf> {
        std::env::current_exe().map_err(|e| Error::io("locating the rayforge binary", e))
    }

    /// Starts a daemon with `args`; returns its node id.
    fn start(&mut self, args: &[String]) -> Result<String> {
        let mut cmd = Command::new(Self::exe()?);
        cmd.arg("start")
            .args(args)
            .arg("--block")
            .env("RAYFORGE_CLUSTER_FILE", self.dir.join("cluster.json"))
            .env_remove("RAYFORGE_ADDRESS")
            .env("RAYFORGE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; the daemon dies with the
        // benchmark, even when it is interrupted.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        // Nodes get the token in their environment (a head makes its own).
        if self.token.is_empty() {
            cmd.env_remove("RAYFORGE_TOKEN");
        } else {
            cmd.env("RAYFORGE_TOKEN", &self.token);
        }
        let mut child = cmd.spawn().map_err(|e| Error::io("starting a node daemon", e))?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| Error::Internal("no pipe to the daemon".into()))?;
        self.children.push(child);
        let mut line = String::new();
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| Error::io("reading the daemon's start line", e))?;
        line.split("started: node ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .map(str::to_string)
            .ok_or_else(|| Error::Runtime(format!("a node daemon did not start: {line:?}")))
    }

    fn head(dir: PathBuf) -> Result<Daemons> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut d = Daemons {
            dir: dir.clone(),
            address: String::new(),
            token: String::new(),
            children: Vec::new(),
        };
        let state = dir.join("head").to_string_lossy().into_owned();
        let args = [
            "--head",
            "--port",
            "0",
            "--jobs-port",
            "0",
            "--num-cpus",
            "1",
            "--state-dir",
            &state,
        ];
        d.start(&args.map(String::from))?;
        let text = std::fs::read_to_string(dir.join("cluster.json"))
            .map_err(|e| Error::io("reading the benchmark cluster's file", e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::Runtime(format!("cluster file: {e}")))?;
        d.address = v["address"].as_str().unwrap_or_default().to_string();
        d.token = v["token"].as_str().unwrap_or_default().to_string();
        Ok(d)
    }

    fn add_node(&mut self, cpus: f64, resources: &str) -> Result<String> {
        let args = [
            "--address",
            &self.address.clone(),
            "--num-cpus",
            &cpus.to_string(),
            "--resources",
            resources,
            "--object-store-memory",
            &(2u64 << 30).to_string(),
        ]
        .map(String::from);
        self.start(&args)
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &self.children {
            // SAFETY: a plain signal to a child we started.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Report {
    filter: Option<String>,
    results: BTreeMap<String, f64>,
}

impl Report {
    fn wants(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f))
    }

    fn record(&mut self, name: &str, value: f64, unit: &str, note: &str) {
        println!("{name:<45} {value:>14.2} {unit:<10} {note}");
        self.results.insert(name.to_string(), value);
    }
}

fn progress(what: &str) {
    eprintln!("-- {what}");
}

/// Runs the cluster cases; prints one line per measure.
pub(crate) fn run(settings: &Settings) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("rayforge-cluster-bench-{}", std::process::id()));
    progress("starting a head and three worker nodes");
    let mut d = Daemons::head(dir)?;
    let mut workers = Vec::new();
    for i in 0..3 {
        workers.push(d.add_node(2.0, &format!(r#"{{"worker_node": 1000, "n{i}": 1}}"#))?);
    }
    rayforge::init(Config::address(&d.address).token(&d.token))?;
    let mut r = Report {
        filter: settings.filter.clone(),
        results: BTreeMap::new(),
    };
    let result = run_cases(settings, &mut r, &mut d, &workers);
    rayforge::shutdown();
    result?;
    if let Some(path) = &settings.json {
        let text = serde_json::to_string_pretty(&r.results).map_err(|e| Error::Runtime(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    Ok(())
}

fn run_cases(settings: &Settings, r: &mut Report, d: &mut Daemons, workers: &[String]) -> Result<()> {
    let on_workers = || noop::options().resource("worker_node", 0.001);
    // Warm up: a worker process on each node.
    let warm: Vec<_> = (0..6).map(|_| on_workers().remote()).collect();
    rayforge::get_all(&warm)?;

    let name = "many tasks (3 nodes)";
    if r.wants(name) {
        progress(&format!("{name}: {} tasks", settings.tasks));
        let start = Instant::now();
        let mut nodes = HashSet::new();
        let batch = 10_000;
        let mut done = 0;
        while done < settings.tasks {
            let n = batch.min(settings.tasks - done);
            let refs: Vec<_> = (0..n)
                .map(|_| where_am_i::options().resource("worker_node", 0.001).remote())
                .collect();
            nodes.extend(rayforge::get_all(&refs)?);
            done += n;
        }
        let secs = start.elapsed().as_secs_f64();
        r.record(
            name,
            settings.tasks as f64 / secs,
            "tasks/s",
            &format!("{} tasks in {secs:.2} s on {} nodes", settings.tasks, nodes.len()),
        );
    }

    let name = "cross-node actor calls sync";
    if r.wants(name) {
        progress(name);
        let a = Pinger::options().num_cpus(0.0).resource("n0", 0.001).remote()?;
        let node = a.node().get()?;
        if node != workers[0] || node == rayforge::node_id()? {
            return Err(Error::Runtime("the actor is not on another node".into()));
        }
        let n = 5000;
        let start = Instant::now();
        for _ in 0..n {
            a.ping().get()?;
        }
        let secs = start.elapsed().as_secs_f64();
        r.record(
            name,
            n as f64 / secs,
            "calls/s",
            &format!("{:.1} us per round trip", secs * 1e6 / n as f64),
        );
        rayforge::kill(&a)?;
    }

    let name = "object broadcast (3 nodes)";
    if r.wants(name) {
        let bytes = settings.broadcast_mib << 20;
        progress(&format!("{name}: {} MiB", settings.broadcast_mib));
        let obj = rayforge::put(Buffer::from(vec![1u8; bytes]))?;
        let before = rayforge::store_stats()?.transfers_sent;
        let start = Instant::now();
        let reads: Vec<_> = (0..3)
            .map(|i| read_all::options().resource(&format!("n{i}"), 0.5).remote(&obj))
            .collect();
        let got = rayforge::get_all(&reads)?;
        let secs = start.elapsed().as_secs_f64();
        let sent = rayforge::store_stats()?.transfers_sent - before;
        let on: HashSet<&String> = got.iter().map(|(n, _)| n).collect();
        if on.len() != 3 {
            return Err(Error::Runtime(format!("broadcast reached {} nodes, not 3", on.len())));
        }
        r.record(
            name,
            3.0 * bytes as f64 / (1u64 << 30) as f64 / secs,
            "GiB/s",
            &format!(
                "3 copies of {} MiB in {secs:.2} s; the owner's node sent it {sent} time(s)",
                settings.broadcast_mib
            ),
        );
    }

    let name = "many actors (3 nodes)";
    if r.wants(name) {
        progress(&format!("{name}: {} actors", settings.actors));
        let start = Instant::now();
        let actors = (0..settings.actors)
            .map(|i| {
                Pinger::options()
                    .num_cpus(0.0)
                    .resource(&format!("n{}", i % 3), 0.001)
                    .remote()
            })
            .collect::<Result<Vec<_>>>()?;
        let pings: Vec<_> = actors.iter().map(|a| a.ping()).collect();
        rayforge::get_all(&pings)?;
        let secs = start.elapsed().as_secs_f64();
        r.record(
            name,
            settings.actors as f64 / secs,
            "actors/s",
            &format!("{} actors created and called in {secs:.2} s", settings.actors),
        );
        for a in &actors {
            rayforge::kill(a)?;
        }
    }

    let name = "control plane: nodes joined";
    if settings.scale_nodes > 0 && r.wants("control plane") {
        progress(&format!(
            "control plane: starting {} node daemons",
            settings.scale_nodes
        ));
        let start = Instant::now();
        for i in 0..settings.scale_nodes {
            d.add_node(1.0, &format!(r#"{{"scale": 1, "s{i}": 1}}"#))?;
            if (i + 1) % 25 == 0 {
                progress(&format!("{} nodes up", i + 1));
            }
        }
        let mut head = rayforge::cluster::HeadClient::connect(&d.address, Some(&d.token))?;
        let want = settings.scale_nodes + 4;
        let deadline = Instant::now() + Duration::from_secs(300);
        while head.nodes()?.iter().filter(|n| n.alive).count() < want {
            if Instant::now() > deadline {
                return Err(Error::Runtime(format!("fewer than {want} nodes alive after 300 s")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let secs = start.elapsed().as_secs_f64();
        r.record(
            name,
            settings.scale_nodes as f64 / secs,
            "nodes/s",
            &format!("{want} nodes alive after {secs:.1} s"),
        );
        progress("control plane: one task on each node");
        let start = Instant::now();
        let refs: Vec<_> = (0..settings.scale_nodes)
            .map(|i| where_am_i::options().resource(&format!("s{i}"), 1.0).remote())
            .collect();
        let nodes: HashSet<String> = rayforge::get_all(&refs)?.into_iter().collect();
        let secs = start.elapsed().as_secs_f64();
        if nodes.len() != settings.scale_nodes {
            return Err(Error::Runtime(format!(
                "tasks ran on {} nodes, not {}",
                nodes.len(),
                settings.scale_nodes
            )));
        }
        r.record(
            "control plane: a task on every node",
            settings.scale_nodes as f64 / secs,
            "tasks/s",
            &format!(
                "{} tasks on {} nodes (each starting a worker) in {secs:.1} s",
                settings.scale_nodes,
                nodes.len()
            ),
        );
    }
    Ok(())
}
