//! A node's HTTP endpoints: `/healthz` and `/readyz` (no token), and
//! behind the token `/metrics` (Prometheus, with Ray's metric names so
//! Ray's Grafana dashboards work) and `/api/node` (the machine as `/proc`
//! shows it: [`NodeStats`]). Every node serves them on its metrics port;
//! the head also serves them on its HTTP port (8265).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::Mutex;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::scheduler::WorkerState;
use super::NodeDaemon;
use crate::proto;
use crate::state::{NodeStats, WorkerStats};

/// What a node's HTTP endpoints read; the node is set once it has started.
pub(crate) struct NodeHttp {
    node: OnceLock<NodeDaemon>,
    sampler: Mutex<Sampler>,
    /// The latest reading (taken at most once a second).
    latest: Mutex<Option<(Instant, NodeStats)>>,
}

impl NodeHttp {
    pub(crate) fn new() -> Arc<NodeHttp> {
        Arc::new(NodeHttp {
            node: OnceLock::new(),
            sampler: Mutex::new(Sampler::default()),
            latest: Mutex::new(None),
        })
    }

    /// Starts answering for `node`.
    pub(crate) fn set_node(&self, node: NodeDaemon) {
        let _ = self.node.set(node);
    }

    /// Why the node is not ready, if it is not: starting, stopping, or (on
    /// the head) unable to write the cluster's state.
    fn not_ready(&self) -> Option<String> {
        let Some(n) = self.node.get() else {
            return Some("the node is starting".into());
        };
        if n.state.shutting_down.load(Ordering::Relaxed) {
            return Some("the node is stopping".into());
        }
        n.link().and_then(|l| l.role.gcs.as_ref()).and_then(|g| g.write_error())
    }

    /// The node's stats, read afresh when the last reading is over a
    /// second old.
    pub(crate) fn stats(&self) -> Option<NodeStats> {
        let node = self.node.get()?;
        let mut latest = self.latest.lock();
        if let Some((at, s)) = latest.as_ref() {
            if at.elapsed() < Duration::from_secs(1) {
                return Some(s.clone());
            }
        }
        let s = self.sampler.lock().read(node);
        *latest = Some((Instant::now(), s.clone()));
        Some(s)
    }
}

/// `/healthz`, `/readyz`, `/metrics` and `/api/node` (the token layer is
/// the caller's).
pub(crate) fn routes(h: Arc<NodeHttp>) -> Router {
    let ready = h.clone();
    let metrics = h.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || async move {
                match ready.not_ready() {
                    None => (StatusCode::OK, "ready\n").into_response(),
                    Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                let m = metrics.clone();
                match tokio::task::spawn_blocking(move || render(&m)).await {
                    Ok(Some(text)) => (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response(),
                    _ => unavailable(),
                }
            }),
        )
        .route("/api/node", get(api_node))
        .with_state(h)
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({"error": "the node is still starting"})),
    )
        .into_response()
}

async fn api_node(State(h): State<Arc<NodeHttp>>) -> Response {
    match tokio::task::spawn_blocking(move || h.stats()).await {
        Ok(Some(s)) => Json(s).into_response(),
        _ => unavailable(),
    }
}

/// Serves [`routes`] behind the token on `listener`.
pub(crate) fn serve(listener: tokio::net::TcpListener, h: Arc<NodeHttp>, access: crate::http::Access) {
    let app = routes(h).layer(axum::middleware::from_fn_with_state(access, crate::http::require_token));
    tokio::spawn(async move {
        crate::http::serve(
            listener,
            app,
            crate::http::HttpLimits::default(),
            std::future::pending(),
        )
        .await;
    });
}

/// Reads `/proc` between calls: CPU shares are over the time since the
/// previous reading.
#[derive(Default)]
struct Sampler {
    /// The machine's (busy, total) jiffies at the previous reading.
    machine: Option<(u64, u64)>,
    /// Each worker's CPU jiffies at the previous reading.
    procs: HashMap<u32, (Instant, u64)>,
}

fn clock_ticks() -> f64 {
    // SAFETY: plain libc call.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (busy, total) jiffies of every core, from `/proc/stat`.
fn machine_jiffies() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// (CPU jiffies, resident bytes) of a process.
fn process_usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line (11 and 12 here).
    let cpu = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: plain libc call.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let rss_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some((cpu, rss_pages * page))
}

fn disk_usage(path: &std::path::Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return (0, 0);
    };
    // SAFETY: statvfs writes into the zeroed struct; the path is a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return (0, 0);
    }
    let frsize = s.f_frsize as u64;
    let total = s.f_blocks as u64 * frsize;
    let free = s.f_bavail as u64 * frsize;
    (total, total.saturating_sub(free))
}

impl Sampler {
    fn read(&mut self, node: &NodeDaemon) -> NodeStats {
        let st = &node.state;
        let cpu_percent = match (machine_jiffies(), self.machine) {
            (Some((busy, total)), Some((b0, t0))) if total > t0 => {
                self.machine = Some((busy, total));
                (busy.saturating_sub(b0)) as f64 * 100.0 / (total - t0) as f64
            }
            (now, _) => {
                self.machine = now;
                0.0
            }
        };
        let mem = super::memory_monitor::read_meminfo();
        let (disk_total, disk_used) = disk_usage(&std::env::temp_dir());
        let store = st.store.lock().stats();
        let by_worker: HashMap<u64, String> = st
            .actors
            .lock()
            .by_worker
            .iter()
            .map(|(w, a)| (*w, crate::ids::hex(&a.0)))
            .collect();
        let (total, available, workers) = {
            let s = st.sched.lock();
            let workers: Vec<(u64, u32, String, String)> = s
                .workers
                .iter()
                .filter(|(_, w)| !matches!(w.state, WorkerState::Dead))
                .map(|(id, w)| {
                    let state = match w.state {
                        WorkerState::Starting => "STARTING",
                        WorkerState::Idle(_) => "IDLE",
                        WorkerState::Leased(_) => "LEASED",
                        WorkerState::Dead => "DEAD",
                    };
                    (*id, w.pid, w.job.clone(), state.to_string())
                })
                .collect();
            let total: BTreeMap<String, f64> = s.total.iter().map(|(k, v)| (k.clone(), *v)).collect();
            let available: BTreeMap<String, f64> = s.available.iter().map(|(k, v)| (k.clone(), *v)).collect();
            (total, available, workers)
        };
        let ticks = clock_ticks();
        let now = Instant::now();
        let mut seen = HashMap::new();
        let workers = workers
            .into_iter()
            .map(|(worker_id, pid, job_id, state)| {
                let (cpu, rss) = process_usage(pid).unwrap_or((0, 0));
                let cpu_percent = match self.procs.get(&pid) {
                    Some((at, c0)) if now > *at => {
                        cpu.saturating_sub(*c0) as f64 / ticks / now.duration_since(*at).as_secs_f64() * 100.0
                    }
                    _ => 0.0,
                };
                seen.insert(pid, (now, cpu));
                WorkerStats {
                    worker_id,
                    pid,
                    job_id,
                    state,
                    rss_bytes: rss,
                    cpu_percent,
                    actor_id: by_worker.get(&worker_id).cloned().unwrap_or_default(),
                }
            })
            .collect();
        self.procs = seen;
        NodeStats {
            node_id: st.node_id.clone(),
            address: st.tcp_addr.clone(),
            hostname: super::cluster::hostname(),
            is_head: node.link().is_some_and(|l| l.role.is_head),
            cpu_percent,
            num_cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            mem_total_bytes: mem.as_ref().map_or(0, |m| m.total),
            mem_used_bytes: mem.as_ref().map_or(0, |m| m.total.saturating_sub(m.available)),
            disk_total_bytes: disk_total,
            disk_used_bytes: disk_used,
            store_used_bytes: store.used_bytes,
            store_capacity_bytes: store.capacity_bytes,
            store_num_objects: store.num_objects,
            store_spilled_bytes: store.spilled_bytes,
            resources_total: total,
            resources_available: available,
            workers,
        }
    }
}

type Labels = Vec<(String, String)>;

/// Registers a gauge family called `name` (after the `ray_` prefix) with
/// one series per row.
fn gauges(reg: &mut Registry, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, f64)>) {
    let fam = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for (labels, v) in rows {
        // Names are the user's (tasks, actors): escaped, so none breaks
        // the exposition or forges a series.
        let labels: Labels = labels
            .into_iter()
            .map(|(k, v)| (k, crate::util::prometheus_label(&v)))
            .collect();
        fam.get_or_create(&labels).set(v);
    }
    reg.register(name, help, fam);
}

/// Registers an unlabelled gauge.
fn gauge(reg: &mut Registry, name: &str, help: &str, v: f64) {
    let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    g.set(v);
    reg.register(name, help, g);
}

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

/// The node's metrics in Prometheus' text format; the head's add the
/// cluster's actors, placement groups, nodes and jobs.
fn render(h: &NodeHttp) -> Option<String> {
    let node = h.node.get()?;
    let stats = h.stats()?;
    let mut reg = Registry::with_prefix("ray");
    // Tasks this node knows of, by state and function.
    let mut tasks: BTreeMap<(String, String), f64> = BTreeMap::new();
    for e in node.state.task_events.lock().list() {
        let state = proto::TaskEventState::try_from(e.state)
            .map(|s| s.as_str_name().to_string())
            .unwrap_or_else(|_| "UNKNOWN".into());
        *tasks.entry((state, e.name)).or_default() += 1.0;
    }
    gauges(
        &mut reg,
        "tasks",
        "Tasks this node holds records of, by state and name (the newest 10,000)",
        tasks
            .into_iter()
            .map(|((s, n), v)| (vec![("State".into(), s), ("Name".into(), n)], v)),
    );
    let mut res = Vec::new();
    for (name, total) in &stats.resources_total {
        let avail = stats.resources_available.get(name).copied().unwrap_or(0.0);
        res.push((
            vec![("Name".into(), name.clone()), ("State".into(), "USED".into())],
            total - avail,
        ));
        res.push((
            vec![("Name".into(), name.clone()), ("State".into(), "AVAILABLE".into())],
            avail,
        ));
    }
    gauges(
        &mut reg,
        "resources",
        "Logical resources of this node, used and available",
        res,
    );
    gauges(
        &mut reg,
        "object_store_memory",
        "Object store bytes, in shared memory (MMAP_SHM) and spilled to disk (SPILLED)",
        [
            (label("Location", "MMAP_SHM"), stats.store_used_bytes as f64),
            (label("Location", "SPILLED"), stats.store_spilled_bytes as f64),
        ],
    );
    gauge(
        &mut reg,
        "object_store_available_memory",
        "Object store bytes free in shared memory",
        stats.store_capacity_bytes.saturating_sub(stats.store_used_bytes) as f64,
    );
    gauge(
        &mut reg,
        "object_store_num_local_objects",
        "Objects held by this node's store",
        stats.store_num_objects as f64,
    );
    gauge(
        &mut reg,
        "node_cpu_utilization",
        "Busy share of the machine's cores, percent",
        stats.cpu_percent,
    );
    gauge(
        &mut reg,
        "node_cpu_cores",
        "Logical cores of the machine (Ray: ray_node_cpu_count)",
        stats.num_cores as f64,
    );
    gauge(
        &mut reg,
        "node_mem_used",
        "Memory in use on the machine, bytes",
        stats.mem_used_bytes as f64,
    );
    gauge(
        &mut reg,
        "node_mem_capacity",
        "Memory of the machine, bytes (Ray: ray_node_mem_total)",
        stats.mem_total_bytes as f64,
    );
    gauge(
        &mut reg,
        "node_disk_usage",
        "Bytes used on the node's temporary disk",
        stats.disk_used_bytes as f64,
    );
    gauge(
        &mut reg,
        "node_disk_free",
        "Bytes free on the node's temporary disk",
        stats.disk_total_bytes.saturating_sub(stats.disk_used_bytes) as f64,
    );
    let mut states: BTreeMap<String, f64> = BTreeMap::new();
    for w in &stats.workers {
        *states.entry(w.state.clone()).or_default() += 1.0;
    }
    gauges(
        &mut reg,
        "workers",
        "Worker processes of this node, by state",
        states.into_iter().map(|(s, v)| (label("State", &s), v)),
    );
    if let Some(gcs) = node.link().and_then(|l| l.role.gcs.clone()) {
        let mut actors: BTreeMap<String, f64> = BTreeMap::new();
        for a in gcs.actors() {
            let s = proto::ActorState::try_from(a.state)
                .map(|s| s.as_str_name().to_string())
                .unwrap_or_else(|_| "UNKNOWN".into());
            *actors.entry(s).or_default() += 1.0;
        }
        gauges(
            &mut reg,
            "actors",
            "Actors of the cluster, by state",
            actors.into_iter().map(|(s, v)| (label("State", &s), v)),
        );
        let mut groups: BTreeMap<String, f64> = BTreeMap::new();
        for g in gcs.groups() {
            let s = g.state().as_str_name().trim_start_matches("GROUP_STATE_").to_string();
            *groups.entry(s).or_default() += 1.0;
        }
        gauges(
            &mut reg,
            "placement_groups",
            "Placement groups of the cluster, by state",
            groups.into_iter().map(|(s, v)| (label("State", &s), v)),
        );
        let (alive, dead) = gcs.nodes_alive_dead();
        gauges(
            &mut reg,
            "cluster_active_nodes",
            "Alive nodes of the cluster",
            [(label("node_type", "node"), alive as f64)],
        );
        gauges(
            &mut reg,
            "cluster_dead_nodes",
            "Nodes of the cluster declared dead",
            [(label("node_type", "node"), dead as f64)],
        );
        let mut jobs: BTreeMap<String, f64> = BTreeMap::new();
        for j in gcs.jobs() {
            *jobs.entry(j.state).or_default() += 1.0;
        }
        gauges(
            &mut reg,
            "jobs",
            "Jobs of the cluster, by state",
            jobs.into_iter().map(|(s, v)| (label("State", &s), v)),
        );
    }
    let mut out = String::new();
    encode(&mut out, &reg).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_a_user_chose_cannot_break_the_exposition() {
        let mut reg = Registry::with_prefix("ray");
        gauges(
            &mut reg,
            "tasks",
            "Tasks",
            [(label("Name", "f\"} 1\nray_forged{x=\"y"), 1.0)],
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(!text.lines().any(|l| l.starts_with("ray_forged")), "{text}");
        assert!(text.contains(r#"Name="f\"} 1\nray_forged{x=\"y"} 1"#), "{text}");
    }
}
