//! The head's dashboard: web pages over the cluster's state, served on the
//! head's HTTP port (8265, beside the jobs API) behind the cluster token —
//! a login page takes the token and keeps it in a cookie. Its assets are
//! compiled into the binary: no npm or Node at build or run time.
//!
//! Every page reads JSON endpoints under `/api/v0/` that scripts and the
//! CLI may use as well (with `Authorization: Bearer <token>`):
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /api/v0/cluster` | overview: nodes, resources used/total, jobs, Serve applications, recent events, the autoscaler's nodes and reasons (`null` without one) |
//! | `GET /api/v0/nodes`, `/api/v0/nodes/{id}` | logical resources and the machine (CPU, memory, disk, object store), workers with pid, RSS and CPU |
//! | `GET /api/v0/actors`, `/api/v0/actors/{id}` | class, name, state, node, pid, restarts, death cause (one actor: with its log's tail) |
//! | `POST /api/v0/actors/{id}/kill` | kills an actor (`?no_restart=true` keeps it dead) |
//! | `GET /api/v0/tasks?page=&per_page=&state=&name=` | counts by name and state, a page of tasks, why each waiting task waits |
//! | `GET /api/v0/jobs`, `/api/v0/jobs/{id}`, `/api/v0/jobs/{id}/logs/stream` | jobs; a job's output as server-sent events, following it live |
//! | `GET /api/v0/placement_groups`, `/api/v0/objects`, `/api/v0/events` | placement groups, objects per node, the events feed |
//! | `GET /api/v0/logs?pid=&tail=`, `/api/v0/logs/stream?pid=` | worker logs of every node (the last `tail` bytes of each, default 16 KiB, at most 4 MiB; `tail=0`: the listing without text); one worker's log followed live |
//! | `GET /api/v0/timeline` | the Chrome trace of recent tasks, as a download |
//! | `GET /api/v0/serve`, `/api/v0/train`, `/api/v0/tune`, `/api/v0/rllib` | what Serve, Train, Tune and RLlib published ([`rayforge::state::publish`]), with the bounded curves ([`rayforge::tracking::Curve`]) the pages chart |
//! | `GET /api/v0/cluster/history` | the cluster's last hour (CPU, memory, object store, running tasks, alive actors), sampled by the head every 5 s |
//!
//! ```no_run
//! // What `rayforge start --head` does:
//! let opts = rayforge::cluster::StartOptions {
//!     head: true,
//!     http_routes: Some(rayforge_dashboard::routes()),
//!     ..Default::default()
//! };
//! rayforge::cluster::run_daemon(&opts, |ready| println!("dashboard at {}", ready.jobs_address))?;
//! # Ok::<(), rayforge::Error>(())
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use rayforge::cluster::{ActorStatus, HeadClient, NodeStatus};
use rayforge::http::{HeadHttp, HttpRoutes};
use rayforge::jobs::JobClient;
use rayforge::state::NodeStats;
use serde::{Deserialize, Serialize};

mod backend;
mod follow;
mod history;
mod tasks;

use backend::Backend;
use follow::{Polls, Seen, Window};

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE: &str = include_str!("../assets/style.css");

/// The page paths (each serves the same shell; the script draws the page).
const PAGES: [&str; 16] = [
    "/",
    "/nodes",
    "/nodes/{id}",
    "/actors",
    "/actors/{id}",
    "/tasks",
    "/jobs",
    "/jobs/{id}",
    "/placement-groups",
    "/objects",
    "/logs",
    "/events",
    "/serve",
    "/train",
    "/tune",
    "/rllib",
];

/// The dashboard's routes, for
/// [`StartOptions::http_routes`](rayforge::cluster::StartOptions::http_routes).
pub fn routes() -> HttpRoutes {
    HttpRoutes::new(|head: &HeadHttp| router(head.clone()))
}

/// The dashboard's pages and endpoints for the head `head`.
pub fn router(head: HeadHttp) -> Router {
    let dash = Arc::new(Dash::new(head));
    history::start(&dash);
    let mut r = Router::new();
    for p in PAGES {
        r = r.route(p, get(page));
    }
    r.route(
        "/assets/app.js",
        get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], APP_JS) }),
    )
    .route(
        "/assets/style.css",
        get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLE) }),
    )
    .route("/api/v0/cluster", get(cluster))
    .route("/api/v0/nodes", get(nodes))
    .route("/api/v0/nodes/{id}", get(node))
    .route("/api/v0/actors", get(actors))
    .route("/api/v0/actors/{id}", get(actor))
    .route("/api/v0/actors/{id}/kill", post(kill_actor))
    .route("/api/v0/tasks", get(tasks::tasks))
    .route("/api/v0/jobs", get(jobs))
    .route("/api/v0/jobs/{id}", get(job))
    .route("/api/v0/jobs/{id}/logs/stream", get(job_logs_stream))
    .route("/api/v0/placement_groups", get(placement_groups))
    .route("/api/v0/objects", get(objects))
    .route("/api/v0/events", get(events))
    .route("/api/v0/logs", get(logs))
    .route("/api/v0/logs/stream", get(logs_stream))
    .route("/api/v0/timeline", get(timeline))
    .route("/api/v0/serve", get(|s| published(s, "serve")))
    .route("/api/v0/train", get(|s| published(s, "train")))
    .route("/api/v0/tune", get(|s| published(s, "tune")))
    .route("/api/v0/rllib", get(|s| published(s, "rllib")))
    .route("/api/v0/cluster/history", get(history::endpoint))
    .with_state(dash)
}

async fn page() -> Html<&'static str> {
    Html(INDEX)
}

/// The dashboard's state: the clients (on a thread of their own) and an
/// HTTP client for the nodes' `/api/node`.
pub(crate) struct Dash {
    head: HeadHttp,
    backend: Backend,
    /// The cluster's last hour, sampled.
    history: history::ClusterHistory,
    /// Shared polls of followed job logs, by job id.
    job_logs: Arc<Polls<String, Result<Window, String>>>,
    /// Shared polls of followed worker logs, by pid: the log's latest
    /// tail, `None` once it is gone.
    worker_logs: Arc<Polls<u32, Result<Option<rayforge::state::WorkerLog>, String>>>,
    http: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Empty<bytes::Bytes>,
    >,
}

/// An endpoint's error: a status and a message, as JSON `{"error": ...}`.
#[derive(Debug)]
pub(crate) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<rayforge::Error> for ApiError {
    fn from(e: rayforge::Error) -> ApiError {
        let code = match e {
            rayforge::Error::NotFound(_) => StatusCode::NOT_FOUND,
            rayforge::Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            rayforge::Error::Io { .. } => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

pub(crate) type ApiResult<T> = Result<Json<T>, ApiError>;

/// A node with what its daemon reads of its machine (`stats` is absent
/// when the node is dead or did not answer; `error` says why).
#[derive(Debug, Serialize)]
struct NodeView {
    #[serde(flatten)]
    status: NodeStatus,
    stats: Option<NodeStats>,
    error: Option<String>,
}

impl Dash {
    fn new(head: HeadHttp) -> Dash {
        Dash {
            backend: Backend::start(head.clone()),
            history: Default::default(),
            job_logs: Polls::new(),
            worker_logs: Polls::new(),
            head,
            http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(rayforge::tls::https_connector()),
        }
    }

    /// Runs `f` with the head's client, off the async threads.
    pub(crate) async fn head<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut HeadClient) -> rayforge::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.backend.head(f).await
    }

    /// Runs `f` with the jobs API's client, off the async threads.
    async fn jobs<T: Send + 'static>(
        &self,
        f: impl FnOnce(&JobClient) -> rayforge::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.backend.jobs(f).await
    }

    /// A node's `/api/node`.
    async fn node_stats(&self, http_address: &str) -> Result<NodeStats, String> {
        use http_body_util::BodyExt;
        let req = axum::http::Request::get(format!("{}://{http_address}/api/node", rayforge::tls::http_scheme()))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.head.token))
            .body(http_body_util::Empty::new())
            .map_err(|e| e.to_string())?;
        let call = async {
            let resp = self.http.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            if !status.is_success() {
                return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
            serde_json::from_slice(&body).map_err(|e| e.to_string())
        };
        tokio::time::timeout(Duration::from_secs(3), call)
            .await
            .map_err(|_| format!("{http_address} did not answer within 3 s"))?
    }

    /// Every node with its machine's figures (asked of every alive node at
    /// once).
    async fn node_views(&self) -> Result<Vec<NodeView>, ApiError> {
        let nodes = self.head(|h| h.nodes()).await?;
        let views = nodes.into_iter().map(|n| async move {
            let (stats, error) = if !n.alive {
                (None, Some(format!("dead: {}", n.death_cause)))
            } else if n.http_address.is_empty() {
                (None, Some("the node serves no HTTP endpoints".to_string()))
            } else {
                match self.node_stats(&n.http_address).await {
                    Ok(s) => (Some(s), None),
                    Err(e) => (None, Some(e)),
                }
            };
            NodeView {
                status: n,
                stats,
                error,
            }
        });
        Ok(futures::future::join_all(views).await)
    }
}

/// Sums of logical resources over alive nodes.
#[derive(Debug, Default, Serialize)]
struct Totals {
    total: BTreeMap<String, f64>,
    used: BTreeMap<String, f64>,
}

fn totals(nodes: &[NodeStatus]) -> Totals {
    let mut t = Totals::default();
    for n in nodes.iter().filter(|n| n.alive) {
        for (k, v) in &n.total {
            *t.total.entry(k.clone()).or_default() += v;
            let free = n.available.get(k).copied().unwrap_or(0.0);
            *t.used.entry(k.clone()).or_default() += (v - free).max(0.0);
        }
    }
    t
}

async fn cluster(State(d): State<Arc<Dash>>) -> ApiResult<serde_json::Value> {
    let (nodes, jobs, events, serve, actors, autoscaler) = d
        .head(|h| {
            Ok((
                h.nodes()?,
                h.jobs()?,
                h.events()?,
                h.published("serve")?,
                h.actors()?,
                h.autoscaler_status()?,
            ))
        })
        .await?;
    let mut actor_states: BTreeMap<String, usize> = BTreeMap::new();
    for a in &actors {
        *actor_states.entry(a.state.clone()).or_default() += 1;
    }
    let recent: Vec<_> = events.iter().rev().take(20).cloned().collect();
    Ok(Json(serde_json::json!({
        "head": d.head.address,
        "resources": totals(&nodes),
        "nodes": nodes,
        "jobs": jobs,
        "actors": actor_states,
        "serve": serve.into_iter().map(|(name, status)| serde_json::json!({"name": name, "status": status})).collect::<Vec<_>>(),
        "events": recent,
        "autoscaler": autoscaler,
    })))
}

async fn nodes(State(d): State<Arc<Dash>>) -> ApiResult<Vec<NodeView>> {
    Ok(Json(d.node_views().await?))
}

async fn node(State(d): State<Arc<Dash>>, Path(id): Path<String>) -> ApiResult<NodeView> {
    d.node_views()
        .await?
        .into_iter()
        .find(|n| n.status.node_id == id)
        .map(Json)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no node `{id}`")))
}

/// An actor with the pid of its process (when its node answered).
#[derive(Debug, Serialize)]
struct ActorView {
    #[serde(flatten)]
    status: ActorStatus,
    pid: Option<u32>,
    node_id: String,
}

async fn actor_views(d: &Dash) -> Result<Vec<ActorView>, ApiError> {
    let actors = d.head(|h| h.actors()).await?;
    let nodes = d.node_views().await?;
    Ok(actors
        .into_iter()
        .map(|a| {
            let host = nodes.iter().find(|n| n.status.address == a.node && !a.node.is_empty());
            let pid = host
                .and_then(|n| n.stats.as_ref())
                .and_then(|s| {
                    s.workers
                        .iter()
                        .find(|w| w.actor_id == a.actor_id || (a.worker_id != 0 && w.worker_id == a.worker_id))
                })
                .map(|w| w.pid)
                .filter(|_| a.state == "ALIVE");
            ActorView {
                node_id: host.map(|n| n.status.node_id.clone()).unwrap_or_default(),
                pid,
                status: a,
            }
        })
        .collect())
}

async fn actors(State(d): State<Arc<Dash>>) -> ApiResult<Vec<ActorView>> {
    Ok(Json(actor_views(&d).await?))
}

async fn actor(State(d): State<Arc<Dash>>, Path(id): Path<String>) -> ApiResult<serde_json::Value> {
    let id = id.to_ascii_lowercase();
    let view = actor_views(&d)
        .await?
        .into_iter()
        .find(|a| a.status.actor_id == id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no actor `{id}`")))?;
    let logs = match view.pid {
        Some(pid) => d.head(move |h| h.worker_logs(Some(pid), Some(64 << 10))).await?.items,
        None => Vec::new(),
    };
    Ok(Json(serde_json::json!({ "actor": view, "logs": logs })))
}

#[derive(Deserialize)]
struct KillQuery {
    #[serde(default)]
    no_restart: bool,
}

async fn kill_actor(
    State(d): State<Arc<Dash>>,
    Path(id): Path<String>,
    Query(q): Query<KillQuery>,
) -> ApiResult<serde_json::Value> {
    let a = id.clone();
    d.head(move |h| h.kill_actor(&a, q.no_restart)).await?;
    tracing::info!(actor = %id, no_restart = q.no_restart, "actor killed from the dashboard");
    Ok(Json(serde_json::json!({ "killed": id })))
}

async fn jobs(State(d): State<Arc<Dash>>) -> ApiResult<Vec<rayforge::jobs::JobDetails>> {
    Ok(Json(d.jobs(|j| j.list()).await?))
}

async fn job(State(d): State<Arc<Dash>>, Path(id): Path<String>) -> ApiResult<serde_json::Value> {
    let i = id.clone();
    let details = d.jobs(move |j| j.status(&i)).await?;
    let logs = d.jobs(move |j| j.logs(&id, 0)).await?;
    Ok(Json(
        serde_json::json!({ "job": details, "logs": logs.logs, "next_offset": logs.next_offset }),
    ))
}

/// Output as server-sent events: `data` events carry text (one per line),
/// an `end` event says the source ended, an `error` event why it cannot
/// go on.
fn sse(s: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(s).keep_alive(KeepAlive::default()).into_response()
}

/// A text chunk as `data` events, one per line (SSE data cannot hold a
/// bare newline).
fn text_events(text: &str) -> Vec<Event> {
    text.split_inclusive('\n')
        .map(|l| Event::default().event("data").data(l.trim_end_matches(['\n', '\r'])))
        .collect()
}

#[derive(Deserialize)]
struct OffsetQuery {
    #[serde(default)]
    offset: u64,
}

async fn job_logs_stream(
    State(d): State<Arc<Dash>>,
    Path(id): Path<String>,
    Query(q): Query<OffsetQuery>,
) -> Result<Response, ApiError> {
    let i = id.clone();
    d.jobs(move |j| j.status(&i)).await?;
    let rx = d.job_logs.follow(id.clone(), || {
        let (d, id) = (d.clone(), id.clone());
        let window = Arc::new(parking_lot::Mutex::new(None::<Window>));
        move || {
            let (d, id, window) = (d.clone(), id.clone(), window.clone());
            async move {
                // The shared poll starts at the log's end; followers read
                // what came before on their own.
                let from = window.lock().as_ref().map_or(u64::MAX, Window::end);
                let read = d.jobs(move |j| j.logs(&id, from)).await;
                let mut w = window.lock();
                match read {
                    Ok(c) => {
                        let w = w.get_or_insert_with(|| Window {
                            start: c.next_offset - c.logs.len() as u64,
                            ..Window::default()
                        });
                        w.push(c.logs.as_bytes());
                        w.finished = c.finished;
                        Seen {
                            value: Ok(w.clone()),
                            last: c.finished,
                        }
                    }
                    Err(e) => Seen {
                        value: Err(e.1),
                        last: true,
                    },
                }
            }
        }
    });
    let stream = futures::stream::unfold(Some((q.offset, rx)), move |state| {
        let (d, id) = (d.clone(), id.clone());
        async move {
            let (mut at, mut rx) = state?;
            loop {
                let seen = rx.borrow_and_update().clone();
                if let Some(seen) = seen {
                    match &seen.value {
                        Err(e) => return Some((vec![Event::default().event("error").data(e.clone())], None)),
                        Ok(w) if at < w.start => {
                            // Behind the shared window: catch up alone.
                            let i = id.clone();
                            return match d.jobs(move |j| j.logs(&i, at)).await {
                                Ok(c) if c.finished => {
                                    let mut evs = text_events(&c.logs);
                                    evs.push(Event::default().event("end").data("the job ended"));
                                    Some((evs, None))
                                }
                                Ok(c) => Some((text_events(&c.logs), Some((c.next_offset, rx)))),
                                Err(e) => Some((vec![Event::default().event("error").data(e.1)], None)),
                            };
                        }
                        Ok(w) => {
                            let new = String::from_utf8_lossy(w.from(at).unwrap_or_default()).into_owned();
                            at = at.max(w.end());
                            let mut evs = text_events(&new);
                            if seen.last {
                                evs.push(Event::default().event("end").data("the job ended"));
                                return Some((evs, None));
                            }
                            if !evs.is_empty() {
                                return Some((evs, Some((at, rx))));
                            }
                        }
                    }
                }
                if rx.changed().await.is_err() {
                    return Some((vec![Event::default().event("end").data("the job ended")], None));
                }
            }
        }
    });
    Ok(sse(futures::StreamExt::flat_map(stream, |evs| {
        futures::stream::iter(evs.into_iter().map(Ok))
    })))
}

async fn placement_groups(State(d): State<Arc<Dash>>) -> ApiResult<Vec<rayforge::cluster::PlacementGroupStatus>> {
    Ok(Json(d.head(|h| h.placement_groups()).await?))
}

async fn objects(State(d): State<Arc<Dash>>) -> ApiResult<serde_json::Value> {
    let listing = d.head(|h| h.objects()).await?;
    let mut by_node: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for o in &listing.items {
        let e = by_node.entry(o.node_id.clone()).or_default();
        e.0 += 1;
        if o.spilled {
            e.2 += o.size;
        } else {
            e.1 += o.size;
        }
    }
    let summary: Vec<_> = by_node
        .into_iter()
        .map(|(node, (n, mem, spilled))| {
            serde_json::json!({"node_id": node, "objects": n, "memory_bytes": mem, "spilled_bytes": spilled})
        })
        .collect();
    let mut items = listing.items;
    items.sort_by_key(|o| std::cmp::Reverse(o.size));
    items.truncate(1000);
    Ok(Json(serde_json::json!({
        "summary": summary,
        "largest": items,
        "unreachable": listing.unreachable,
    })))
}

async fn events(State(d): State<Arc<Dash>>) -> ApiResult<Vec<rayforge::cluster::ClusterEvent>> {
    let mut ev = d.head(|h| h.events()).await?;
    ev.reverse();
    Ok(Json(ev))
}

#[derive(Deserialize)]
struct LogsQuery {
    pid: Option<u32>,
    tail: Option<u64>,
}

async fn logs(State(d): State<Arc<Dash>>, Query(q): Query<LogsQuery>) -> ApiResult<serde_json::Value> {
    // tail=0: the listing alone (ids and sizes, no text); else at most the
    // last 4 MiB of each log (the nodes cap what they send too).
    let tail = q.tail.unwrap_or(16 << 10).min(rayforge::state::MAX_LOG_TEXT);
    let listing = d.head(move |h| h.worker_logs(q.pid, Some(tail))).await?;
    if q.pid.is_some() && listing.items.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no worker log of pid {}", q.pid.unwrap_or_default()),
        ));
    }
    Ok(Json(
        serde_json::json!({ "logs": listing.items, "unreachable": listing.unreachable }),
    ))
}

#[derive(Deserialize)]
struct FollowQuery {
    pid: u32,
}

/// One worker's log, its tail first and then what it writes (read by a
/// poll shared with every other follower of the log).
async fn logs_stream(State(d): State<Arc<Dash>>, Query(q): Query<FollowQuery>) -> Result<Response, ApiError> {
    let pid = q.pid;
    let first = d.head(move |h| h.worker_logs(Some(pid), Some(16 << 10))).await?;
    let Some(log) = first.items.into_iter().next() else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no worker log of pid {pid}")));
    };
    let rx = d.worker_logs.follow(pid, || {
        let d = d.clone();
        move || {
            let d = d.clone();
            async move {
                match d.head(move |h| h.worker_logs(Some(pid), Some(1 << 20))).await {
                    Ok(l) => {
                        let log = l.items.into_iter().next();
                        let last = log.as_ref().is_none_or(|l| !l.alive);
                        Seen { value: Ok(log), last }
                    }
                    Err(e) => Seen {
                        value: Err(e.1),
                        last: true,
                    },
                }
            }
        }
    });
    let start = (text_events(&log.text), log.size, log.alive, rx);
    let stream = futures::stream::unfold(Some(start), move |state| async move {
        let (evs, mut size, alive, mut rx) = state?;
        if !evs.is_empty() {
            return Some((evs, Some((Vec::new(), size, alive, rx))));
        }
        if !alive {
            return Some((vec![Event::default().event("end").data("the process exited")], None));
        }
        loop {
            if rx.changed().await.is_err() {
                return Some((vec![Event::default().event("end").data("the log is gone")], None));
            }
            let Some(seen) = rx.borrow_and_update().clone() else {
                continue;
            };
            match &seen.value {
                Err(e) => return Some((vec![Event::default().event("error").data(e.clone())], None)),
                Ok(None) => return Some((vec![Event::default().event("end").data("the log is gone")], None)),
                Ok(Some(log)) if log.size > size || !log.alive => {
                    // The tail holds the last min(1 MiB, size) bytes: keep
                    // what is new.
                    let new = (log.size - size.min(log.size)) as usize;
                    let mut at = log.text.len().saturating_sub(new);
                    while !log.text.is_char_boundary(at) {
                        at += 1;
                    }
                    size = size.max(log.size);
                    let evs = text_events(&log.text[at..]);
                    return Some((evs, Some((Vec::new(), size, log.alive, rx))));
                }
                Ok(Some(_)) => {}
            }
        }
    });
    Ok(sse(futures::StreamExt::flat_map(stream, |evs| {
        futures::stream::iter(evs.into_iter().map(Ok))
    })))
}

async fn timeline(State(d): State<Arc<Dash>>) -> Result<Response, ApiError> {
    let tasks = d.head(|h| h.tasks()).await?;
    let trace = rayforge::state::chrome_trace(&tasks.items);
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"rayforge-timeline.json\"",
            ),
        ],
        trace.to_string(),
    )
        .into_response())
}

async fn published(State(d): State<Arc<Dash>>, kind: &'static str) -> ApiResult<Vec<serde_json::Value>> {
    let items = d.head(move |h| h.published(kind)).await?;
    Ok(Json(
        items
            .into_iter()
            .map(|(name, status)| serde_json::json!({"name": name, "status": status}))
            .collect(),
    ))
}
