//! `rayforge microbenchmark`: the cases of `ray microbenchmark`, with the
//! same names and method (each case runs a body repeatedly for a fixed time,
//! several rounds, and reports operations per second ± standard deviation),
//! so the two outputs compare line by line.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rayforge::{Buffer, Config, Error, ObjectRef, Result};

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Where to write `{"case name": ops_per_second}`.
    pub(crate) json: Option<PathBuf>,
    /// Only cases whose name contains this.
    pub(crate) filter: Option<String>,
    /// Seconds per round.
    pub(crate) seconds: f64,
}

/// A small task result.
#[rayforge::remote]
fn small_value() -> u8 {
    0
}

/// A task taking a small argument.
#[rayforge::remote]
fn small_value_arg(x: u8) -> u8 {
    x
}

/// Puts `n` small objects from inside a task (multi-client puts).
#[rayforge::remote]
fn do_put_small(n: u32) -> u32 {
    for _ in 0..n {
        drop(rayforge::put(0u8).expect("put"));
    }
    n
}

/// Puts ten large arrays from inside a task (multi-client put gigabytes; as
/// Ray's case, a new zeroed array each time, `np.zeros` there).
#[rayforge::remote]
fn do_put_large(len: usize) -> u64 {
    for _ in 0..10 {
        let r = rayforge::put(Buffer::<i64>::zeros(len)).expect("put");
        drop(r);
    }
    (10 * len * 8) as u64
}

/// Gets a large object inside a task and reports how long the get took.
#[rayforge::remote]
fn time_get(r: Vec<ObjectRef<Buffer<u8>>>) -> (u64, f64) {
    let start = Instant::now();
    let b = r[0].get().expect("get");
    let took = start.elapsed().as_secs_f64();
    (b.len() as u64, took * 1e6)
}

/// Submits `n` tasks and waits for them (multi-client tasks).
#[rayforge::remote]
fn do_tasks(n: u32) -> u32 {
    let refs: Vec<ObjectRef<u8>> = (0..n).map(|_| small_value::remote()).collect();
    rayforge::get_all(&refs).expect("tasks");
    n
}

/// The callee of the actor cases.
#[rayforge::actor]
pub(crate) struct Server;

#[rayforge::actor]
impl Server {
    fn new() -> Self {
        Server
    }

    fn small_value(&self) -> u8 {
        0
    }

    fn small_value_arg(&self, x: u8) -> u8 {
        x
    }
}

/// The async callee of the async-actor cases.
#[rayforge::actor]
pub(crate) struct AsyncServer;

#[rayforge::actor]
impl AsyncServer {
    fn new() -> Self {
        AsyncServer
    }

    async fn small_value(&self) -> u8 {
        0
    }

    async fn small_value_arg(&self, x: u8) -> u8 {
        x
    }
}

/// A client actor calling a set of servers (n:n cases).
#[rayforge::actor]
pub(crate) struct Client {
    servers: Vec<ServerHandle>,
    async_servers: Vec<AsyncServerHandle>,
}

#[rayforge::actor]
impl Client {
    fn new(servers: Vec<ServerHandle>, async_servers: Vec<AsyncServerHandle>) -> Self {
        Client { servers, async_servers }
    }

    fn call(&self, n: u32, with_arg: bool) -> u32 {
        let refs: Vec<ObjectRef<u8>> = (0..n as usize)
            .map(|i| {
                let s = &self.servers[i % self.servers.len()];
                if with_arg {
                    s.small_value_arg(1u8)
                } else {
                    s.small_value()
                }
            })
            .collect();
        rayforge::get_all(&refs).expect("calls");
        n
    }

    fn call_async(&self, n: u32) -> u32 {
        let refs: Vec<ObjectRef<u8>> = (0..n as usize)
            .map(|i| self.async_servers[i % self.async_servers.len()].small_value())
            .collect();
        rayforge::get_all(&refs).expect("calls");
        n
    }
}

/// Groups created (then removed) per round of the placement-group case, as
/// in Ray's suite.
const PLACEMENT_GROUPS: usize = 100;

struct Runner {
    settings: Settings,
    results: BTreeMap<String, f64>,
}

impl Runner {
    /// Times `body`, which performs `multiplier` operations per call.
    fn timeit(&mut self, name: &str, multiplier: f64, mut body: impl FnMut() -> Result<()>) -> Result<()> {
        if let Some(f) = &self.settings.filter {
            if !name.contains(f.as_str()) {
                return Ok(());
            }
        }
        let round = Duration::from_secs_f64(self.settings.seconds);
        // Warm up (workers started, connections made).
        let start = Instant::now();
        while start.elapsed() < round / 4 {
            body()?;
        }
        let mut rates = Vec::new();
        for _ in 0..4 {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < round {
                body()?;
                n += 1;
            }
            rates.push(n as f64 * multiplier / start.elapsed().as_secs_f64());
        }
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64;
        println!("{name} per second {:.2} +- {:.2}", mean, var.sqrt());
        self.results.insert(name.to_string(), mean);
        Ok(())
    }
}

fn check(n: u32, want: u32) -> Result<()> {
    if n == want {
        Ok(())
    } else {
        Err(Error::Internal(format!("benchmark body did {n} of {want} operations")))
    }
}

/// Runs the suite on an embedded cluster and prints one line per case.
pub(crate) fn run(settings: &Settings) -> Result<()> {
    if !(settings.seconds.is_finite() && settings.seconds > 0.0) {
        return Err(Error::InvalidArgument(format!(
            "--seconds must be positive, got {}",
            settings.seconds
        )));
    }
    // Ray's suite starts with `resources={"custom": 100}` for its
    // placement-group case.
    rayforge::init(Config::default().resource("custom", 100.0))?;
    let mut r = Runner {
        settings: settings.clone(),
        results: BTreeMap::new(),
    };
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);

    let value = rayforge::put(0u8)?;
    r.timeit("single client get calls (Plasma Store)", 1.0, || value.get().map(drop))?;
    r.timeit("single client put calls (Plasma Store)", 1.0, || {
        rayforge::put(0u8).map(drop)
    })?;
    r.timeit("multi client put calls (Plasma Store)", 1000.0, || {
        let refs: Vec<_> = (0..10).map(|_| do_put_small::remote(100u32)).collect();
        check(rayforge::get_all(&refs)?.iter().sum(), 1000)
    })?;
    let big = Buffer::<i64>::zeros(100 * 1024 * 1024);
    // Ray counts each 800 MiB put as 0.8 "gigabytes"; so do we, to compare
    // like with like.
    r.timeit("single client put gigabytes", 0.8, || {
        rayforge::put(big.clone()).map(drop)
    })?;
    drop(big);
    // The same with the plain `Vec` a new user writes (not in Ray's suite;
    // compare it with the line above): it travels as one copy of its
    // memory, like a NumPy array in Ray. Each round puts a fresh zeroed
    // vector, as Ray's case puts `np.zeros`.
    r.timeit("single client put gigabytes (Vec<i64>)", 0.8, || {
        rayforge::put(vec![0i64; 100 * 1024 * 1024]).map(drop)
    })?;
    r.timeit("single client tasks and get batch", 1.0, || {
        let refs: Vec<_> = (0..1000).map(|_| small_value::remote()).collect();
        rayforge::get_all(&refs).map(drop)
    })?;
    r.timeit("multi client put gigabytes", 10.0 * 0.8, || {
        let refs: Vec<_> = (0..10).map(|_| do_put_large::remote(10 * 1024 * 1024usize)).collect();
        rayforge::get_all(&refs).map(drop)
    })?;
    let refs10k: Vec<ObjectRef<u8>> = (0..10_000).map(|_| rayforge::put(0u8)).collect::<Result<_>>()?;
    let holder = rayforge::put(refs10k)?;
    r.timeit("single client get object containing 10k refs", 1.0, || {
        holder.get().map(drop)
    })?;
    drop(holder);
    r.timeit("single client wait 1k refs", 1.0, || {
        let refs: Vec<_> = (0..1000).map(|_| small_value::remote()).collect();
        let (ready, _) = rayforge::wait(&refs, 1000, None)?;
        check(ready.len() as u32, 1000)
    })?;
    r.timeit("single client tasks sync", 1.0, || {
        small_value::remote().get().map(drop)
    })?;
    r.timeit("single client tasks async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| small_value::remote()).collect();
        rayforge::get_all(&refs).map(drop)
    })?;
    r.timeit("multi client tasks async", 10_000.0, || {
        let refs: Vec<_> = (0..cpus)
            .map(|_| do_tasks::options().num_cpus(0.0).remote(10_000 / cpus as u32))
            .collect();
        rayforge::get_all(&refs).map(drop)
    })?;

    let a = Server::remote()?;
    r.timeit("1:1 actor calls sync", 1.0, || a.small_value().get().map(drop))?;
    r.timeit("1:1 actor calls async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| a.small_value()).collect();
        rayforge::get_all(&refs).map(drop)
    })?;
    let conc = Server::options().max_concurrency(16).remote()?;
    r.timeit("1:1 actor calls concurrent", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| conc.small_value()).collect();
        rayforge::get_all(&refs).map(drop)
    })?;
    let n = cpus;
    let servers: Vec<ServerHandle> = (0..n).map(|_| Server::remote()).collect::<Result<_>>()?;
    r.timeit("1:n actor calls async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|i| servers[i % n].small_value()).collect();
        rayforge::get_all(&refs).map(drop)
    })?;
    let async_servers: Vec<AsyncServerHandle> = (0..n).map(|_| AsyncServer::remote()).collect::<Result<_>>()?;
    let clients: Vec<ClientHandle> = (0..n)
        .map(|_| Client::remote(servers.clone(), async_servers.clone()))
        .collect::<Result<_>>()?;
    r.timeit("n:n actor calls async", 1000.0 * n as f64, || {
        let refs: Vec<_> = clients.iter().map(|c| c.call(1000u32, false)).collect();
        rayforge::get_all(&refs).map(drop)
    })?;
    r.timeit("n:n actor calls with arg async", 1000.0 * n as f64, || {
        let refs: Vec<_> = clients.iter().map(|c| c.call(1000u32, true)).collect();
        rayforge::get_all(&refs).map(drop)
    })?;
    let aa = AsyncServer::remote()?;
    r.timeit("1:1 async-actor calls sync", 1.0, || aa.small_value().get().map(drop))?;
    r.timeit("1:1 async-actor calls async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| aa.small_value()).collect();
        rayforge::get_all(&refs).map(drop)
    })?;
    r.timeit("1:1 async-actor calls with args async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| aa.small_value_arg(1u8)).collect();
        rayforge::get_all(&refs).map(drop)
    })?;
    r.timeit("1:n async-actor calls async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|i| async_servers[i % n].small_value()).collect();
        rayforge::get_all(&refs).map(drop)
    })?;
    r.timeit("n:n async-actor calls async", 1000.0 * n as f64, || {
        let refs: Vec<_> = clients.iter().map(|c| c.call_async(1000u32)).collect();
        rayforge::get_all(&refs).map(drop)
    })?;

    r.timeit("placement group create/removal", PLACEMENT_GROUPS as f64, || {
        let custom: BTreeMap<String, f64> = [("custom".to_string(), 0.001)].into_iter().collect();
        let groups: Vec<_> = (0..PLACEMENT_GROUPS)
            .map(|_| rayforge::placement_group(vec![custom.clone()], rayforge::PlacementStrategy::Pack).create())
            .collect::<Result<_>>()?;
        for g in &groups {
            if !g.wait(Duration::from_secs(30))? {
                return Err(Error::Internal(format!("placement group {} was not placed", g.id())));
            }
        }
        groups.iter().try_for_each(rayforge::remove_placement_group)
    })?;

    if settings
        .filter
        .as_deref()
        .is_none_or(|f| "1 GiB".contains(f) || f.contains("GiB"))
    {
        let gib = rayforge::put(Buffer::from(vec![1u8; 1 << 30]))?;
        let (len, micros) = time_get::remote(vec![gib]).get()?;
        println!("get of a 1 GiB object in another process: {micros:.0} us ({len} bytes, zero-copy mapping)");
    }

    if let Some(path) = &settings.json {
        let text = serde_json::to_string_pretty(&r.results).map_err(|e| Error::Internal(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    rayforge::shutdown();
    Ok(())
}
