//! What ran and what is held, across the whole cluster: recent tasks, the
//! objects in every node's store, every worker process's output, and a
//! Chrome trace of recent tasks (open it at `chrome://tracing` or
//! <https://ui.perfetto.dev>).
//!
//! ```no_run
//! #[rayforge::remote]
//! fn square(x: u64) -> u64 { println!("squaring {x}"); x * x }
//!
//! #[rayforge::main]
//! fn main() -> rayforge::Result<()> {
//!     rayforge::init(rayforge::Config::default())?;
//!     let refs: Vec<_> = (0..4).map(square::remote).collect();
//!     rayforge::get_all(&refs)?;
//!     let tasks = rayforge::state::list_tasks()?;        // may lag a moment
//!     println!("{} tasks seen", tasks.items.len());
//!     for log in rayforge::state::worker_logs(None, Some(4096))?.items {
//!         print!("{}", log.text);                         // "squaring 3" ...
//!     }
//!     rayforge::state::timeline("trace.json")?;
//!     Ok(())
//! }
//! ```
//!
//! Workers report task events to their node in batches, a few milliseconds
//! after tasks end (and every half second while they run), so a task that
//! just ended may show up a moment later. Each node keeps its newest
//! 10,000 tasks. The same listings are on the command line: `rayforge list
//! tasks|objects`, `rayforge logs`, `rayforge timeline`.

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::proto;

/// A listing gathered from the cluster's nodes.
#[derive(Debug, Clone, Serialize)]
pub struct Listing<T> {
    /// What the nodes that answered hold.
    pub items: Vec<T>,
    /// Nodes that did not answer, as "address: why" (the listing lacks
    /// what they hold).
    pub unreachable: Vec<String>,
}

/// One task execution, as the worker that ran it reported it; or a task
/// still waiting (PENDING), as the process that submitted it reported it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskInfo {
    /// The task's id (hex).
    pub task_id: String,
    /// The function (`module::function`), actor constructor (`module::Class`)
    /// or method (`module::Class.method`).
    pub name: String,
    /// NORMAL_TASK, ACTOR_CREATION_TASK or ACTOR_TASK.
    pub kind: String,
    /// PENDING (submitted, waiting for its arguments or a worker), RUNNING,
    /// FINISHED or FAILED.
    pub state: String,
    /// The node it ran on (PENDING: the submitter's node).
    pub node_id: String,
    /// The worker process that ran it (PENDING: the submitter).
    pub pid: u32,
    /// The job it belongs to ("" in the embedded cluster).
    pub job_id: String,
    /// When it started (PENDING: when it was submitted), in microseconds
    /// since the epoch.
    pub start_us: u64,
    /// When it ended (0 while running).
    pub end_us: u64,
    /// Why it failed.
    pub error: String,
    /// Why a PENDING task waits: `ARGS_NOT_READY`, `PLACEMENT_GROUP_PENDING`,
    /// `NO_NODE_HAS_RESOURCES`, `ALL_BUSY` or `WAITING_FOR_ACTOR`, then a
    /// colon and details ("" for tasks that do not wait).
    pub wait_reason: String,
}

/// One object in a node's store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectInfo {
    /// The object's id (hex).
    pub object_id: String,
    /// Its size in bytes.
    pub size: u64,
    /// Whether it is spilled to disk (else it is in shared memory).
    pub spilled: bool,
    /// The node holding it.
    pub node_id: String,
}

/// The output (stdout and stderr) of one worker process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerLog {
    /// The node it runs (or ran) on.
    pub node_id: String,
    /// The process id.
    pub pid: u32,
    /// The job whose code it runs ("" for the node's own program).
    pub job_id: String,
    /// Whether the process is still running.
    pub alive: bool,
    /// The log's full size in bytes.
    pub size: u64,
    /// The log's text (its tail, when a tail was asked for).
    pub text: String,
}

/// A node's machine as its daemon reads it from `/proc` (its `/api/node`
/// HTTP endpoint, which the dashboard's nodes page shows).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct NodeStats {
    /// The node's id.
    pub node_id: String,
    /// Its service address.
    pub address: String,
    /// The machine's host name.
    pub hostname: String,
    /// Whether it runs the head.
    pub is_head: bool,
    /// Busy share of every core since the previous reading, 0-100.
    pub cpu_percent: f64,
    /// Logical cores of the machine.
    pub num_cores: u32,
    /// Physical memory in bytes.
    pub mem_total_bytes: u64,
    /// Memory in use (total minus available) in bytes.
    pub mem_used_bytes: u64,
    /// Size of the disk holding the node's temporary files, in bytes.
    pub disk_total_bytes: u64,
    /// Bytes used on that disk.
    pub disk_used_bytes: u64,
    /// Object store bytes in shared memory.
    pub store_used_bytes: u64,
    /// Object store capacity in bytes.
    pub store_capacity_bytes: u64,
    /// Objects held.
    pub store_num_objects: u64,
    /// Bytes spilled to disk.
    pub store_spilled_bytes: u64,
    /// Logical resources the node offers.
    pub resources_total: std::collections::BTreeMap<String, f64>,
    /// Logical resources free now.
    pub resources_available: std::collections::BTreeMap<String, f64>,
    /// The node's worker processes.
    pub workers: Vec<WorkerStats>,
}

/// One worker process of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct WorkerStats {
    /// The node's id for it.
    pub worker_id: u64,
    /// Its process id.
    pub pid: u32,
    /// The job whose code it runs ("" for the node's own program).
    pub job_id: String,
    /// STARTING, IDLE or LEASED.
    pub state: String,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
    /// Its share of one core since the previous reading (100: a whole core).
    pub cpu_percent: f64,
    /// The actor it hosts (hex id), if any.
    pub actor_id: String,
}

/// The key-value namespace where libraries publish what the dashboard
/// shows of them: key `KIND/NAME`, value a JSON object.
pub const DASHBOARD_NAMESPACE: &str = "dashboard";

/// Publishes the status of a library object for the dashboard: a Serve
/// application (`kind` "serve"), a Train run ("train") or a Tune
/// experiment ("tune"), as a JSON object replacing the previous one.
pub fn publish(kind: &str, name: &str, status: &serde_json::Value) -> Result<()> {
    crate::worker::current()?.block_on(publish_async(kind, name, status))?
}

/// Async form of [`publish`].
pub async fn publish_async(kind: &str, name: &str, status: &serde_json::Value) -> Result<()> {
    let bytes = serde_json::to_vec(status).map_err(|e| Error::Internal(e.to_string()))?;
    crate::kv::put_async(DASHBOARD_NAMESPACE, &format!("{kind}/{name}"), &bytes, true)
        .await
        .map(|_| ())
}

/// Removes what was published under `kind/name` (an application deleted).
pub async fn unpublish_async(kind: &str, name: &str) -> Result<()> {
    crate::kv::delete_async(DASHBOARD_NAMESPACE, &format!("{kind}/{name}"))
        .await
        .map(|_| ())
}

fn task_info(e: proto::TaskEvent) -> TaskInfo {
    let kind = match proto::TaskKind::try_from(e.kind) {
        Ok(proto::TaskKind::Normal) => "NORMAL_TASK",
        Ok(proto::TaskKind::ActorCreation) => "ACTOR_CREATION_TASK",
        Ok(proto::TaskKind::ActorMethod) => "ACTOR_TASK",
        Err(_) => "UNKNOWN",
    };
    TaskInfo {
        task_id: crate::ids::hex(&e.task_id),
        name: e.name,
        kind: kind.into(),
        state: proto::TaskEventState::try_from(e.state)
            .map(|s| s.as_str_name().to_string())
            .unwrap_or_else(|_| "UNKNOWN".into()),
        node_id: e.node_id,
        pid: e.pid,
        job_id: e.job_id,
        start_us: e.start_us,
        end_us: e.end_us,
        error: e.error,
        wait_reason: e.wait_reason,
    }
}

fn object_info(o: proto::ObjectEntry) -> ObjectInfo {
    ObjectInfo {
        object_id: crate::ids::hex(&o.object_id),
        size: o.size,
        spilled: o.spilled,
        node_id: o.node_id,
    }
}

fn worker_log(l: proto::WorkerLog) -> WorkerLog {
    WorkerLog {
        node_id: l.node_id,
        pid: l.pid,
        job_id: l.job_id,
        alive: l.alive,
        size: l.size,
        text: l.text,
    }
}

pub use crate::cluster::{ActorStatus, NodeStatus, PlacementGroupStatus};

/// This process's node, which answers for the whole cluster.
fn my_node() -> Result<NodeClient> {
    Ok(crate::worker::current()?.node.clone())
}

/// Every actor of the cluster, dead ones included (what `rayforge list
/// actors` prints), from any driver or worker.
pub async fn list_actors_async() -> Result<Vec<ActorStatus>> {
    let r = my_node()?
        .list_actors(proto::ListActorsRequest {})
        .await
        .map_err(|s| Error::rpc("listing actors", s))?;
    Ok(r.into_inner().actors.into_iter().map(ActorStatus::from).collect())
}

/// Every node of the cluster, dead ones included (on the embedded cluster,
/// its one node).
pub async fn list_nodes_async() -> Result<Vec<NodeStatus>> {
    let r = my_node()?
        .list_nodes(proto::ListNodesRequest {})
        .await
        .map_err(|s| Error::rpc("listing nodes", s))?;
    Ok(r.into_inner().nodes.into_iter().map(NodeStatus::from).collect())
}

/// Every placement group of the cluster, removed ones included.
pub async fn list_placement_groups_async() -> Result<Vec<PlacementGroupStatus>> {
    let r = my_node()?
        .list_placement_groups(proto::ListPlacementGroupsRequest {})
        .await
        .map_err(|s| Error::rpc("listing placement groups", s))?;
    Ok(r.into_inner()
        .groups
        .into_iter()
        .map(PlacementGroupStatus::from)
        .collect())
}

/// Blocking form of [`list_actors_async`].
pub fn list_actors() -> Result<Vec<ActorStatus>> {
    crate::worker::current()?.block_on(list_actors_async())?
}

/// Blocking form of [`list_nodes_async`].
pub fn list_nodes() -> Result<Vec<NodeStatus>> {
    crate::worker::current()?.block_on(list_nodes_async())?
}

/// Blocking form of [`list_placement_groups_async`].
pub fn list_placement_groups() -> Result<Vec<PlacementGroupStatus>> {
    crate::worker::current()?.block_on(list_placement_groups_async())?
}

/// A node's service, asked for the whole cluster.
type NodeClient = proto::node_service_client::NodeServiceClient<crate::rpc::Chan>;

/// Asks `node` for the tasks of every node (shared by this module's calls
/// and the CLI's [`crate::cluster::HeadClient`]).
pub(crate) async fn fetch_tasks(mut node: NodeClient) -> std::result::Result<Listing<TaskInfo>, tonic::Status> {
    let r = node
        .list_tasks(proto::ListStateRequest { cluster: true })
        .await?
        .into_inner();
    Ok(Listing {
        items: r.tasks.into_iter().map(task_info).collect(),
        unreachable: r.unreachable,
    })
}

/// Asks `node` for the objects of every node's store.
pub(crate) async fn fetch_objects(mut node: NodeClient) -> std::result::Result<Listing<ObjectInfo>, tonic::Status> {
    let r = node
        .list_objects(proto::ListStateRequest { cluster: true })
        .await?
        .into_inner();
    Ok(Listing {
        items: r.objects.into_iter().map(object_info).collect(),
        unreachable: r.unreachable,
    })
}

/// Asks `node` for the worker logs of every node.
/// The most of one log's text a node sends (its end).
pub const MAX_LOG_TEXT: u64 = 4 << 20;

/// The most log text a node sends in one reply.
pub const MAX_LOGS_REPLY: u64 = 16 << 20;

pub(crate) async fn fetch_logs(
    mut node: NodeClient,
    pid: Option<u32>,
    tail_bytes: Option<u64>,
) -> std::result::Result<Listing<WorkerLog>, tonic::Status> {
    let req = proto::WorkerLogsRequest {
        cluster: true,
        pid: pid.unwrap_or(0),
        tail_bytes: tail_bytes.unwrap_or(0),
        listing_only: tail_bytes == Some(0),
    };
    let r = node.worker_logs(req).await?.into_inner();
    Ok(Listing {
        items: r.logs.into_iter().map(worker_log).collect(),
        unreachable: r.unreachable,
    })
}

/// Runs one of the `fetch_` calls against this process's node.
fn on_this_node<T, F>(what: &str, fetch: impl FnOnce(NodeClient) -> F) -> Result<T>
where
    F: std::future::Future<Output = std::result::Result<T, tonic::Status>> + Send,
    T: Send,
{
    let cw = crate::worker::current()?;
    let node = cw.node.clone();
    cw.block_on(fetch(node))?.map_err(|s| Error::rpc(what, s))
}

/// The tasks the cluster's nodes recorded, oldest first.
pub fn list_tasks() -> Result<Listing<TaskInfo>> {
    on_this_node("listing tasks", fetch_tasks)
}

/// The objects held in every node's store (inline objects live in their
/// owners' memory and are not listed).
pub fn list_objects() -> Result<Listing<ObjectInfo>> {
    on_this_node("listing objects", fetch_objects)
}

/// The output of the cluster's worker processes: only process `pid` when
/// given, and only the last `tail_bytes` of each log when given (`Some(0)`:
/// the logs' ids and sizes, no text). Each node sends at most the last
/// [`MAX_LOG_TEXT`] bytes of a log and [`MAX_LOGS_REPLY`] bytes in all
/// (logs past that come without their text; `size` says how long each is).
pub fn worker_logs(pid: Option<u32>, tail_bytes: Option<u64>) -> Result<Listing<WorkerLog>> {
    on_this_node("reading worker logs", |n| fetch_logs(n, pid, tail_bytes))
}

/// Writes a Chrome trace of the cluster's recent tasks to `path`; returns
/// how many tasks it holds.
pub fn timeline(path: impl AsRef<Path>) -> Result<usize> {
    let tasks = list_tasks()?.items;
    write_trace(&tasks, path.as_ref())?;
    Ok(tasks.len())
}

/// Writes `tasks` as a Chrome trace file.
pub fn write_trace(tasks: &[TaskInfo], path: &Path) -> Result<()> {
    let text = serde_json::to_string(&chrome_trace(tasks)).map_err(|e| Error::Runtime(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing the timeline {}", path.display()), e))
}

/// Tasks as Chrome trace events: one complete event ("X") per task, one
/// trace process per node and one thread per worker process. A task still
/// running ends at the newest time seen.
pub fn chrome_trace(tasks: &[TaskInfo]) -> serde_json::Value {
    use serde_json::json;
    // Only what ran: a queued task has no place on a worker's row yet.
    let ran: Vec<&TaskInfo> = tasks.iter().filter(|t| t.state != "PENDING").collect();
    let tasks = ran.as_slice();
    let mut nodes: Vec<&str> = tasks.iter().map(|t| t.node_id.as_str()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    let node_index = |n: &str| nodes.iter().position(|x| *x == n).unwrap_or(0) + 1;
    let now = tasks.iter().map(|t| t.end_us.max(t.start_us)).max().unwrap_or(0);
    let mut events: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| {
            json!({"name": "process_name", "ph": "M", "pid": node_index(n),
                   "args": {"name": format!("node {n}")}})
        })
        .collect();
    let mut workers: Vec<(usize, u32)> = tasks.iter().map(|t| (node_index(&t.node_id), t.pid)).collect();
    workers.sort_unstable();
    workers.dedup();
    for (node, pid) in workers {
        events.push(json!({"name": "thread_name", "ph": "M", "pid": node, "tid": pid,
                           "args": {"name": format!("worker pid {pid}")}}));
    }
    for t in tasks {
        let end = if t.end_us == 0 { now } else { t.end_us };
        events.push(json!({
            "name": t.name,
            "cat": t.kind,
            "ph": "X",
            "ts": t.start_us,
            "dur": end.saturating_sub(t.start_us),
            "pid": node_index(&t.node_id),
            "tid": t.pid,
            "args": {"task_id": t.task_id, "state": t.state, "job_id": t.job_id, "error": t.error},
        }));
    }
    json!({"traceEvents": events, "displayTimeUnit": "ms"})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, node: &str, pid: u32, start: u64, end: u64) -> TaskInfo {
        TaskInfo {
            task_id: "ab".into(),
            name: name.into(),
            kind: "NORMAL_TASK".into(),
            state: if end == 0 { "RUNNING" } else { "FINISHED" }.into(),
            node_id: node.into(),
            pid,
            job_id: String::new(),
            start_us: start,
            end_us: end,
            error: String::new(),
            wait_reason: String::new(),
        }
    }

    #[test]
    fn the_trace_has_a_process_per_node_and_a_span_per_task() {
        let tasks = [
            task("m::a", "n1", 10, 100, 150),
            task("m::b", "n2", 20, 120, 0),
            task("m::c", "n1", 11, 130, 200),
        ];
        let t = chrome_trace(&tasks);
        let evs = t["traceEvents"].as_array().expect("events");
        let names: Vec<&str> = evs
            .iter()
            .filter(|e| e["name"] == "process_name")
            .filter_map(|e| e["args"]["name"].as_str())
            .collect();
        assert_eq!(names, ["node n1", "node n2"]);
        let spans: Vec<&serde_json::Value> = evs.iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[0]["dur"], 50);
        assert_eq!(spans[0]["pid"], 1);
        assert_eq!(spans[1]["pid"], 2);
        assert_eq!(spans[1]["dur"], 80, "a running task ends at the newest time seen");
        assert_eq!(spans[2]["tid"], 11);
        assert_eq!(evs.iter().filter(|e| e["name"] == "thread_name").count(), 3);
    }

    #[test]
    fn task_events_convert_with_readable_kinds_and_states() {
        let info = task_info(proto::TaskEvent {
            task_id: vec![0xab, 0x01],
            kind: proto::TaskKind::ActorMethod as i32,
            state: proto::TaskEventState::Failed as i32,
            ..Default::default()
        });
        assert_eq!(info.task_id, "ab01");
        assert_eq!(info.kind, "ACTOR_TASK");
        assert_eq!(info.state, "FAILED");
    }
}
