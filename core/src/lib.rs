//! # rayforge
//!
//! A distributed runtime for Rust: remote **tasks** (functions run in worker
//! processes), **actors** (stateful workers whose methods are called
//! remotely, in order) and a per-node **shared-memory object store** holding
//! their results, readable without copies. One binary is both the driver and
//! its workers: `init` starts an embedded cluster whose worker processes are
//! this same program.
//!
//! ```no_run
//! use rayforge::{Config, ObjectRef};
//!
//! #[rayforge::remote]
//! fn add(a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
//!     a.iter().zip(&b).map(|(x, y)| x + y).collect()
//! }
//!
//! #[rayforge::actor]
//! struct Counter { value: i64 }
//!
//! #[rayforge::actor]
//! impl Counter {
//!     fn new() -> Self { Counter { value: 0 } }
//!     fn inc(&mut self) -> i64 { self.value += 1; self.value }
//! }
//!
//! #[rayforge::main]
//! fn main() -> rayforge::Result<()> {
//!     rayforge::init(Config::default())?;
//!     let a = rayforge::put(vec![1.0; 1000])?;          // stored once
//!     let s: ObjectRef<Vec<f64>> = add::remote(&a, &a); // runs in a worker process
//!     assert_eq!(s.get()?[0], 2.0);
//!     let c = Counter::options().name("c").max_restarts(2).remote()?;
//!     c.inc();
//!     assert_eq!(c.inc().get()?, 2);                     // calls run in order
//!     Ok(())
//! }
//! ```
//!
//! Values are any `serde` type. Large numeric arrays belong in a [`Buffer`]:
//! it is stored out of band and read zero-copy from shared memory (a plain
//! `Vec` of numbers travels out of band too, as one copy of its memory).
//! Self-describing values (`serde_json::Value`, untagged enums) travel
//! wrapped in [`Json`].
//!
//! Actor classes are registered by name before `main`, so an actor type
//! cannot be generic; the macro says so at compile time:
//!
//! ```compile_fail
//! #[rayforge::actor]
//! struct Trainer<M> { model: M }
//! ```
//!
//! An async `main` puts `#[tokio::main]` above `#[rayforge::main]` (tokio
//! turns it into a plain `main` first, which rayforge then wraps; the
//! other order puts an `.await` outside async code, error E0728). `init`
//! may run on any thread, also one that ends: the workers it starts live on.
//!
//! ```no_run
//! #[rayforge::remote]
//! fn double(x: u64) -> u64 { x * 2 }
//!
//! #[tokio::main]
//! #[rayforge::main]
//! async fn main() -> rayforge::Result<()> {
//!     rayforge::init(rayforge::Config::default())?;
//!     assert_eq!(double::remote(21).await?, 42);
//!     Ok(())
//! }
//! ```

#![warn(missing_docs)]

extern crate self as rayforge;

mod actor;
pub mod autoscaler;
pub mod checkpoint;
mod clock;
pub mod cluster;
mod codec;
mod config;
mod context;
mod error;
mod fn_ref;
mod gcs;
mod generator;
pub mod http;
mod ids;
pub mod jobs;
mod json;
pub mod kv;
mod node;
mod object_ref;
mod object_store;
mod options;
mod placement_group;
mod registry;
mod resources;
mod rpc;
mod session;
pub mod state;
pub mod storage;
pub mod tls;
pub mod tracking;
pub mod util;
mod worker;

#[allow(missing_docs, unreachable_pub, clippy::all)]
pub(crate) mod proto {
    tonic::include_proto!("rayforge");
}

use std::time::Duration;

pub use actor::{ActorHandle, ActorHandleType, ActorState};
pub use codec::{Buffer, Concat, Value};
pub use config::Config;
pub use context::{runtime_context, runtime_context_async, RuntimeContext};
pub use error::{Error, ErrorPayload, Result};
pub use fn_ref::{AnyFnRef, FnPtr, FnRef};
pub use generator::ObjectRefGenerator;
pub use ids::{ActorId, ObjectId, TaskId};
pub use json::Json;
pub use object_ref::{Arg, IntoArg, ObjectRef};
pub use object_store::StoreStats;
pub use options::{ActorOptions, BundleTarget, SchedulingStrategy, TaskOptions};
pub use placement_group::{
    get_placement_group, get_placement_group_async, placement_group, remove_placement_group,
    remove_placement_group_async, PlacementGroup, PlacementGroupBuilder, PlacementGroupState, PlacementStrategy,
};
pub use rayforge_macros::{actor, main, method, remote};

use parking_lot::Mutex;

struct Driver {
    rt: tokio::runtime::Runtime,
    /// The embedded cluster's node (None when joined to a cluster).
    daemon: Option<node::NodeDaemon>,
    /// The job this driver runs in a cluster.
    job: Option<cluster::DriverJob>,
}

static DRIVER: Mutex<Option<Driver>> = Mutex::new(None);

/// Starts logging to stderr, filtered by `RAYFORGE_LOG` (default: warnings).
pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAYFORGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs `f` outside any tokio runtime: on a helper thread when called from
/// async code (where starting, blocking on or dropping a runtime panics),
/// else right here.
fn outside_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> Result<R> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(f());
    }
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .map_err(|_| Error::Internal("a rayforge start-up or shut-down thread panicked".into()))
    })
}

/// Starts an embedded single-node cluster in this process (the node daemon
/// and a pool of worker processes started from this binary) and connects
/// this process to it as the driver — or, with [`Config::address`], joins a
/// running cluster: this program's binary is shipped to the cluster and its
/// tasks run on the cluster's nodes.
///
/// It may be called from async code too (`#[tokio::main]`, `#[tokio::test]`):
/// rayforge runs its own runtime beside the caller's.
pub fn init(config: Config) -> Result<()> {
    outside_runtime(|| init_here(config))?
}

fn init_here(mut config: Config) -> Result<()> {
    config.validate()?;
    if config.address.is_none() {
        // Like RAY_ADDRESS: the same program joins a cluster when told to.
        config.address = std::env::var("RAYFORGE_ADDRESS").ok().filter(|a| !a.is_empty());
    }
    let mut driver = DRIVER.lock();
    if driver.is_some() || worker::try_current().is_some() {
        if config.ignore_reinit_error {
            tracing::info!("rayforge is already initialized in this process; this init's config is ignored");
            return Ok(());
        }
        return Err(Error::Runtime(
            "rayforge is already initialized in this process (Config::reinit_ok makes a second init keep the first's cluster)"
                .into(),
        ));
    }
    init_logging();
    // One runtime thread: a call's round trip is a chain of thread wake-ups
    // (driver -> worker -> driver), and a second runtime thread only adds
    // hand-offs between the two; with one, synchronous calls run 13-32%
    // faster and nothing measured slower but pipelined actor calls (which
    // stay far ahead). Blocking work goes to tokio's blocking pool.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("rayforge-driver")
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the driver's runtime", e))?;
    // This process's submitter pipelines as configured, and so do the
    // workers (nested tasks).
    let (depth, short_us) = (config.max_tasks_in_flight_per_worker, config.short_task_us);
    if let Some(n) = depth {
        let k = worker::submitter::ENV_MAX_IN_FLIGHT.to_string();
        config.worker_env.insert(k, n.to_string());
    }
    if let Some(us) = short_us {
        let k = worker::submitter::ENV_SHORT_TASK_US.to_string();
        config.worker_env.insert(k, us.to_string());
    }
    if config.address.is_some() {
        let (cw, job) = rt.block_on(cluster::join_as_driver(&config, rt.handle().clone()))?;
        cw.submitter.set_pipelining(depth, short_us);
        worker::install(cw)?;
        *driver = Some(Driver {
            rt,
            daemon: None,
            job: Some(job),
        });
        return Ok(());
    }
    let daemon = rt.block_on(node::NodeDaemon::start(config, None))?;
    let paths = daemon.state.paths.clone();
    let worker_id = ids::new_worker_id();
    let addr = session::SessionPaths::worker_sock(&paths.dir, worker_id);
    let started = rt.block_on(async {
        let addr = worker::executor::serve(&addr, None).await?;
        let ch = rpc::connect(&paths.node_sock.to_string_lossy()).await?;
        Ok::<_, Error>((addr, ch))
    });
    let (addr, ch) = match started {
        Ok(x) => x,
        Err(e) => {
            daemon.shutdown();
            return Err(e);
        }
    };
    let cw = worker::CoreWorker::new(
        worker_id,
        addr,
        true,
        rt.handle().clone(),
        crate::rpc::node_client(ch),
        worker::NodePlace {
            store_dir: paths.store.clone(),
            ..Default::default()
        },
        None,
    );
    cw.submitter.set_pipelining(depth, short_us);
    cw.set_embedded_node(daemon.clone());
    worker::install(cw)?;
    *driver = Some(Driver {
        rt,
        daemon: Some(daemon),
        job: None,
    });
    Ok(())
}

/// Whether `init` has run in this process (or this is a worker).
pub fn is_initialized() -> bool {
    worker::try_current().is_some()
}

/// Stops the embedded cluster: ends every worker process and frees the
/// shared memory. Safe to call more than once, and from async code.
pub fn shutdown() {
    // Only a panic inside the shut-down itself could fail this; it is
    // reported by the thread, and there is nothing left to undo.
    let _ = outside_runtime(shutdown_here);
}

fn shutdown_here() {
    let driver = DRIVER.lock().take();
    if let Some(d) = driver {
        worker::uninstall();
        if let Some(job) = d.job {
            d.rt.block_on(job.finish("SUCCEEDED", ""));
        }
        if let Some(daemon) = d.daemon {
            daemon.shutdown();
        }
        d.rt.shutdown_timeout(Duration::from_secs(2));
    }
}

/// Stores a value in the object store once; pass the returned reference to
/// as many tasks as you like without copying the value again.
pub fn put<T: Value>(value: T) -> Result<ObjectRef<T>> {
    let cw = worker::current()?;
    let enc = codec::encode_value(value)?;
    Ok(ObjectRef::from_handle(cw.put_encoded(enc)?))
}

/// [`put`] from async code: a large value is copied into the store on a
/// blocking thread, not on the caller's runtime.
pub async fn put_async<T: Value>(value: T) -> Result<ObjectRef<T>> {
    let cw = worker::current()?;
    let enc = codec::encode_value(value)?;
    Ok(ObjectRef::from_handle(cw.put_encoded_async(enc).await?))
}

/// Gets a value (see [`ObjectRef::get`]).
pub fn get<T: Value>(r: &ObjectRef<T>) -> Result<T> {
    r.get()
}

/// Gets several values, in order, waiting for all of them.
pub fn get_all<T: Value>(refs: &[ObjectRef<T>]) -> Result<Vec<T>> {
    let handles: Vec<_> = refs.iter().map(|r| r.handle.clone()).collect();
    worker::get_blocking(&handles, None)?
        .iter()
        .map(worker::decode_value)
        .collect()
}

/// [`get_all`] from async code.
pub async fn get_all_async<T: Value>(refs: &[ObjectRef<T>]) -> Result<Vec<T>> {
    futures::future::try_join_all(refs.iter().cloned().map(std::future::IntoFuture::into_future)).await
}

/// The `(ready, not_ready)` split returned by [`wait`].
pub type WaitResult<T> = (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>);

/// Waits until `num_returns` of `refs` are ready (or `timeout` passes).
/// Returns `(ready, not_ready)`, each in the order of `refs`.
pub fn wait<T>(refs: &[ObjectRef<T>], num_returns: usize, timeout: Option<Duration>) -> Result<WaitResult<T>> {
    worker::current()?.block_on(wait_async(refs, num_returns, timeout))?
}

/// [`wait`] from async code.
pub async fn wait_async<T>(
    refs: &[ObjectRef<T>],
    num_returns: usize,
    timeout: Option<Duration>,
) -> Result<WaitResult<T>> {
    use futures::stream::{FuturesUnordered, StreamExt};
    if num_returns > refs.len() {
        return Err(Error::InvalidArgument(format!(
            "wait: num_returns ({num_returns}) exceeds the number of references ({})",
            refs.len()
        )));
    }
    let cw = worker::current()?;
    let mut is_ready = vec![false; refs.len()];
    if num_returns > 0 {
        let mut futs: FuturesUnordered<_> = refs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (cw, id, owner) = (cw.clone(), r.handle.id, r.handle.owner.clone());
                async move {
                    worker::wait_ready(&cw, id, &owner).await;
                    i
                }
            })
            .collect();
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut ready = 0;
        while ready < num_returns {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, futs.next()).await {
                    Ok(n) => n,
                    Err(_) => break,
                },
                None => futs.next().await,
            };
            let Some(i) = next else { break };
            is_ready[i] = true;
            ready += 1;
        }
    }
    let (mut r, mut n) = (Vec::new(), Vec::new());
    for (i, x) in refs.iter().enumerate() {
        if is_ready[i] {
            r.push(x.clone());
        } else {
            n.push(x.clone());
        }
    }
    Ok((r, n))
}

/// Cancels the task producing `r`: a queued task never runs; a running one
/// is interrupted by ending the worker process that runs it (as Ray's
/// `cancel(force=True)`; a fresh worker takes its place). `get` then fails
/// with [`Error::Cancelled`]. Calls to actors are not cancelled this way:
/// end the actor with [`kill`].
pub fn cancel<T>(r: &ObjectRef<T>) -> Result<()> {
    let cw = worker::current()?;
    if worker::submitter::TaskSubmitter::cancel(&cw, &r.handle.id) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "object {} is not the result of a pending task",
            r.handle.id
        )))
    }
}

/// Kills an actor at once; it is not restarted. Pending and later calls fail
/// with [`Error::ActorDied`].
pub fn kill<H: ActorHandleType>(actor: &H) -> Result<()> {
    worker::current()?.block_on(kill_by_id(actor.raw().id))?
}

/// [`kill`] from async code.
pub fn kill_async<H: ActorHandleType>(actor: &H) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
    kill_by_id(actor.raw().id)
}

async fn kill_by_id(id: ActorId) -> Result<()> {
    let cw = worker::current()?;
    let r = cw
        .node
        .clone()
        .kill_actor(proto::KillActorRequest {
            actor_id: id.0.to_vec(),
            no_restart: true,
            cause: String::new(),
        })
        .await
        .map_err(|s| Error::rpc("killing an actor", s))?
        .into_inner();
    match r.error {
        Some(e) => Err(Error::from_proto(&e)),
        None => {
            cw.release_actor_args(id);
            Ok(())
        }
    }
}

/// Finds a live named actor.
pub fn get_actor<H: ActorHandleType>(name: &str) -> Result<H> {
    let raw = worker::current()?.block_on(find_actor(name, H::CLASS))??;
    Ok(H::from_raw(raw))
}

/// [`get_actor`] from async code.
pub async fn get_actor_async<H: ActorHandleType>(name: &str) -> Result<H> {
    Ok(H::from_raw(find_actor(name, H::CLASS).await?))
}

/// The live actor named `name`, checked to be of class `class`.
async fn find_actor(name: &str, class: &'static str) -> Result<ActorHandle> {
    let cw = worker::current()?;
    let req = proto::GetActorInfoRequest {
        name: name.to_string(),
        ..Default::default()
    };
    let r = cw
        .node
        .clone()
        .get_actor_info(req)
        .await
        .map_err(|s| Error::rpc("looking up an actor", s))?
        .into_inner();
    if let Some(e) = r.error {
        return Err(Error::from_proto(&e));
    }
    if r.state == proto::ActorState::Dead as i32 {
        return Err(Error::NotFound(format!("actor `{name}` is dead: {}", r.death_cause)));
    }
    let id = ActorId::from_bytes(&r.actor_id).ok_or_else(|| Error::Internal("bad actor id".into()))?;
    if !r.class_name.ends_with(class) && !r.class_name.contains(&format!("({class})")) {
        return Err(Error::InvalidArgument(format!(
            "actor `{name}` is a {}, not a {class}",
            r.class_name
        )));
    }
    Ok(ActorHandle {
        id,
        class: class.to_string(),
        max_task_retries: r.max_task_retries,
        // A looked-up handle does not extend the actor's life (as in Ray).
        lifetime: None,
    })
}

/// The id of the node this process runs on (where a task ran, when called
/// inside one).
pub fn node_id() -> Result<String> {
    let cw = worker::current()?;
    cw.block_on(node_id_async())?
}

/// Async form of [`node_id`].
pub async fn node_id_async() -> Result<String> {
    Ok(worker::current()?.node_identity().await?.0)
}

/// Usage of this node's object store.
pub fn store_stats() -> Result<StoreStats> {
    worker::current()?.block_on(store_stats_async())?
}

/// [`store_stats`] from async code.
pub async fn store_stats_async() -> Result<StoreStats> {
    let s = worker::current()?
        .node
        .clone()
        .store_stats(proto::StoreStatsRequest {})
        .await
        .map_err(|s| Error::rpc("reading store stats", s))?
        .into_inner();
    Ok(StoreStats {
        used_bytes: s.used_bytes,
        capacity_bytes: s.capacity_bytes,
        num_objects: s.num_objects,
        spilled_bytes: s.spilled_bytes,
        num_spilled: s.num_spilled,
        spilled_total: s.spilled_total,
        restored_total: s.restored_total,
        transfers_sent: s.transfers_sent,
        reads_redirected: s.reads_redirected,
        pooled_bytes: s.pooled_bytes,
        reused_total: s.reused_total,
    })
}

/// Resources of this node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeResources {
    /// What the node offers.
    pub total: std::collections::HashMap<String, f64>,
    /// What is free now.
    pub available: std::collections::HashMap<String, f64>,
    /// Live worker processes.
    pub num_workers: u32,
    /// Worker lease requests this node has received since it started (a
    /// burst of tasks should cost a handful, not one per task).
    pub lease_requests: u64,
}

/// Resources of this node: total, available, and live worker processes.
pub fn node_resources() -> Result<NodeResources> {
    worker::current()?.block_on(resources_async(false))?
}

/// [`node_resources`] from async code.
pub async fn node_resources_async() -> Result<NodeResources> {
    resources_async(false).await
}

/// Resources of the whole cluster (as Ray's `ray.cluster_resources()` and
/// `ray.available_resources()`): totals and what is free now, summed over
/// every alive node; on the embedded cluster, this node's. `num_workers` is
/// this node's.
///
/// ```no_run
/// rayforge::init(rayforge::Config::default())?;
/// let cpus = rayforge::cluster_resources()?.total.get("CPU").copied().unwrap_or(0.0);
/// assert!(cpus >= 1.0);
/// # Ok::<(), rayforge::Error>(())
/// ```
pub fn cluster_resources() -> Result<NodeResources> {
    worker::current()?.block_on(resources_async(true))?
}

/// [`cluster_resources`] from async code.
pub async fn cluster_resources_async() -> Result<NodeResources> {
    resources_async(true).await
}

async fn resources_async(cluster: bool) -> Result<NodeResources> {
    let r = worker::current()?
        .node
        .clone()
        .node_info(proto::NodeInfoRequest { cluster })
        .await
        .map_err(|s| Error::rpc("reading node info", s))?
        .into_inner();
    Ok(NodeResources {
        total: r.total,
        available: r.available,
        num_workers: r.num_workers,
        lease_requests: r.lease_requests,
    })
}

/// Number of objects this process owns that are still alive (for tests of
/// reference counting).
pub fn owned_object_count() -> Result<usize> {
    Ok(worker::current()?.num_owned())
}

/// Support code for the macros. Not a public API.
#[doc(hidden)]
#[path = "macro_support.rs"]
pub mod __private;

/// A worker process is this same binary started with `RAYFORGE_WORKER` set:
/// take over before `main` (or a test harness) runs.
#[ctor::ctor]
fn rayforge_worker_hook() {
    __private::worker_entry_if_worker();
}
