//! The head's HTTP jobs API and the supervisor that runs each submitted
//! entrypoint as a process group on the head.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use prost::Message;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::gcs::Gcs;
use crate::ids::hex;
use crate::proto;

use super::*;

struct JobsApi {
    gcs: Arc<Gcs>,
    head_addr: String,
    token: String,
    logs: PathBuf,
    /// Running entrypoints: their process group and cgroup (where one
    /// could be made).
    running: Mutex<HashMap<String, (i32, Option<crate::util::Cgroup>)>>,
    stopping: Mutex<HashSet<String>>,
    /// Bytes of job binaries, packages and logs kept.
    artifact_budget: u64,
}

impl JobsApi {
    /// Removes old binaries, packages and logs past the budget, off the
    /// async threads.
    fn prune_soon(self: &Arc<Self>) {
        let api = self.clone();
        tokio::task::spawn_blocking(move || super::janitor::prune(&api.gcs, &api.logs, api.artifact_budget));
    }
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let code = match e {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// What the head's HTTP port serves besides the jobs API.
pub(crate) struct HeadPort {
    /// The head node's `/healthz`, `/readyz`, `/metrics`, `/api/node`.
    pub(crate) node: Arc<crate::node::http::NodeHttp>,
    /// Routes the program adds (the dashboard).
    pub(crate) extra: Option<crate::http::HttpRoutes>,
    /// Bytes of job binaries, packages and logs kept (see `janitor`).
    pub(crate) artifact_budget: u64,
}

/// Serves the head's HTTP port on `bind:port` (port 0: any free one): the
/// jobs API, the login page, the head node's health and metrics, and the
/// added routes, all behind the token; returns the address it listens on.
/// Submitted jobs a previous head left running are marked failed (their
/// entrypoints ended with it).
pub(crate) async fn serve(
    gcs: Arc<Gcs>,
    head_addr: String,
    access: crate::http::Access,
    bind: &str,
    port: u16,
    more: HeadPort,
) -> Result<SocketAddr> {
    let token = access.admin_token().to_string();
    for j in gcs.jobs() {
        if j.submitted && j.state == "RUNNING" {
            let left = end_leftovers(gcs.dir(), &j);
            let why = match left {
                0 => "the head stopped while the job ran".to_string(),
                n => format!("the head stopped while the job ran ({n} leftover process(es) of it were ended)"),
            };
            gcs.end_job(&j.job_id, "FAILED", &why);
        }
    }
    let logs = gcs.dir().join("job-logs");
    std::fs::create_dir_all(&logs).map_err(|e| Error::io(format!("creating {}", logs.display()), e))?;
    let api = Arc::new(JobsApi {
        gcs,
        head_addr,
        token,
        logs,
        running: Mutex::new(HashMap::new()),
        stopping: Mutex::new(HashSet::new()),
        artifact_budget: more.artifact_budget,
    });
    // Uploads and finished jobs prune at once; this catches binaries
    // uploaded over gRPC.
    let janitor = api.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            janitor.prune_soon();
        }
    });
    let listener = tokio::net::TcpListener::bind((bind, port))
        .await
        .map_err(|e| Error::io(format!("binding the head's HTTP port to {bind}:{port}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("reading the head's HTTP address", e))?;
    let extra = more
        .extra
        .map(|r| {
            r.build(&crate::http::HeadHttp {
                address: api.head_addr.clone(),
                token: api.token.clone(),
                http_address: format!("{}://{}", crate::tls::http_scheme(), crate::rpc::advertised(local)),
            })
        })
        .unwrap_or_default();
    let jobs = Router::new()
        .route("/api/jobs/", get(list_jobs).post(submit_job))
        .route("/api/jobs", get(list_jobs).post(submit_job))
        .route("/api/jobs/{id}", get(job_status))
        .route("/api/jobs/{id}/logs", get(job_logs))
        .route("/api/jobs/{id}/stop", post(stop_job))
        .route("/api/packages/{hash}", get(has_package).put(put_package))
        .layer(DefaultBodyLimit::max(MAX_PACKAGE_BYTES + (1 << 20)))
        .with_state(api.clone());
    let app = jobs
        .merge(crate::http::login_routes(access.clone()))
        .merge(crate::node::http::routes(more.node))
        .merge(extra)
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            ApiError(StatusCode::NOT_FOUND, format!("no such endpoint: {method} {uri}"))
        })
        .layer(axum::middleware::from_fn_with_state(access, crate::http::require_token));
    tokio::spawn(async move {
        crate::http::serve(
            listener,
            app,
            crate::http::HttpLimits::default(),
            std::future::pending(),
        )
        .await;
    });
    tracing::info!(addr = %local, "jobs API started");
    Ok(local)
}

fn find_job(api: &JobsApi, id: &str) -> ApiResult<proto::JobInfo> {
    api.gcs
        .job(id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no job `{id}`")))
}

async fn list_jobs(State(api): State<Arc<JobsApi>>) -> Json<Vec<JobDetails>> {
    Json(api.gcs.jobs().into_iter().map(JobDetails::from).collect())
}

async fn job_status(State(api): State<Arc<JobsApi>>, UrlPath(id): UrlPath<String>) -> ApiResult<Json<JobDetails>> {
    Ok(Json(find_job(&api, &id)?.into()))
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    offset: u64,
}

/// What a job's log reads once the janitor removed it.
const REMOVED_LOG: &str =
    "(this job's log was removed: the head keeps job binaries, packages and logs within --artifact-budget)\n";

async fn job_logs(
    State(api): State<Arc<JobsApi>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<LogChunk>> {
    let job = find_job(&api, &id)?;
    if !job.submitted {
        return Err(bad(format!(
            "job `{id}` was not submitted through the jobs API: its driver's output went to its own terminal"
        )));
    }
    let ended = job.state != "RUNNING";
    let path = api.logs.join(format!("{id}.log"));
    // `None`: no log file. It is made as the job starts, so an ended job
    // without one had it removed past the budget.
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<Option<(Vec<u8>, u64)>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let size = f.metadata()?.len();
        let from = q.offset.min(size);
        f.seek(SeekFrom::Start(from))?;
        let mut data = Vec::new();
        f.take(LOG_CHUNK).read_to_end(&mut data)?;
        Ok(Some((data, size)))
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the job's log: {e}")))?;
    let Some((data, size)) = read else {
        let removed = ended && q.offset == 0;
        return Ok(Json(LogChunk {
            logs: if removed {
                REMOVED_LOG.to_string()
            } else {
                String::new()
            },
            next_offset: if removed { REMOVED_LOG.len() as u64 } else { 0 },
            finished: ended,
        }));
    };
    let next_offset = q.offset.min(size) + data.len() as u64;
    Ok(Json(LogChunk {
        logs: String::from_utf8_lossy(&data).into_owned(),
        next_offset,
        finished: ended && next_offset >= size,
    }))
}

async fn has_package(State(api): State<Arc<JobsApi>>, UrlPath(hash): UrlPath<String>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "present": api.gcs.has_blob(&hash) }))
}

async fn put_package(
    State(api): State<Arc<JobsApi>>,
    UrlPath(hash): UrlPath<String>,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let actual = hex(&Sha256::digest(&body));
    if actual != hash {
        return Err(bad(format!(
            "the package's SHA-256 is {actual}, not {hash} as its URL says"
        )));
    }
    proto::DirPackage::decode(body.as_ref()).map_err(|e| bad(format!("the body is not a packed directory: {e}")))?;
    api.gcs.store_blob(&body)?;
    tracing::info!(package = %hash, bytes = body.len(), "working-directory package stored");
    api.prune_soon();
    Ok(Json(serde_json::json!({ "present": true })))
}

async fn submit_job(State(api): State<Arc<JobsApi>>, body: Bytes) -> ApiResult<Json<serde_json::Value>> {
    let sub: JobSubmission = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "the submission is malformed ({e}); expected {{\"entrypoint\": \"cmd\", \"runtime_env\": \
             {{\"env_vars\": {{..}}, \"working_dir\": \"package://<sha256>\"}}}}"
        ))
    })?;
    if sub.entrypoint.trim().is_empty() {
        return Err(bad("the entrypoint is empty"));
    }
    let mut cwd = None;
    if let Some(wd) = &sub.runtime_env.working_dir {
        let hash = package_hash(wd).ok_or_else(|| {
            bad(format!(
                "working_dir `{wd}` must name an uploaded package (package://<sha256>; the CLI uploads local \
                 directories)"
            ))
        })?;
        if !api.gcs.has_blob(hash) {
            return Err(bad(format!(
                "package {hash} was not uploaded (PUT /api/packages/{hash})"
            )));
        }
        let data = std::fs::read(api.gcs.blob_path(hash)?).map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading package {hash}: {e}"),
            )
        })?;
        cwd = Some(unpack(hash, &data)?);
    }
    let id = api.gcs.register_job(proto::JobInfo {
        entrypoint: sub.entrypoint.clone(),
        env: sub.runtime_env.env_vars.clone().into_iter().collect(),
        working_dir: sub.runtime_env.working_dir.clone().unwrap_or_default(),
        submitted: true,
        ..Default::default()
    });
    if let Err(e) = start_entrypoint(&api, &id, &sub, cwd) {
        api.gcs
            .end_job(&id, "FAILED", &format!("cannot start the entrypoint: {e}"));
        return Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("job {id}: {e}")));
    }
    Ok(Json(serde_json::json!({ "job_id": id })))
}

/// Ends what is left of a job's process group after the head that ran it
/// died (its watchdog, [`crate::util::GroupGuard`], was killed too): the
/// group's processes that carry the job's submission id, so a reused
/// group id never ends someone else's program, and whatever is in the
/// job's cgroup (then removed). Returns how many.
fn end_leftovers(state_dir: &std::path::Path, j: &proto::JobInfo) -> usize {
    let mut left: std::collections::BTreeSet<u32> = std::collections::BTreeSet::new();
    if j.entrypoint_pgid != 0 {
        let marker = format!("{ENV_SUBMISSION_ID}={}", j.job_id);
        left.extend(crate::util::group_members_marked(j.entrypoint_pgid, &marker));
    }
    // The job's cgroup (where it had one) holds what left the group too.
    let cgroup = crate::util::Cgroup::existing(&job_cgroup_name(state_dir, &j.job_id));
    if let Some(c) = &cgroup {
        left.extend(c.pids());
    }
    for pid in &left {
        // SAFETY: kill(2) on a process of the job's group that carries
        // the job's id, or of the job's own cgroup.
        unsafe {
            libc::kill(*pid as i32, libc::SIGKILL);
        }
    }
    if let Some(c) = cgroup {
        c.end(Duration::from_secs(5));
    }
    if !left.is_empty() {
        tracing::warn!(job = %j.job_id, pids = ?left, "ended what a previous head left of the job");
    }
    left.len()
}

/// The name of a submitted job's cgroup (under the head's own): job ids
/// count from 1 on every head, so the name also carries the head's state
/// directory (heads on one machine share the parent cgroup; a head
/// restarted on the same directory finds its predecessor's).
fn job_cgroup_name(state_dir: &std::path::Path, id: &str) -> String {
    // FNV-1a over the directory's path: stable across restarts.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in state_dir.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("rayforge-job-{h:016x}-{id}")
}

/// Runs a submission's entrypoint under `sh -c` in its own process group,
/// and in a cgroup of its own where the head can make one (what leaves the
/// group with `setsid` stays there), output to the job's log; its exit
/// decides the job's state. The whole group and cgroup end with the
/// entrypoint, on `job stop` (SIGTERM, then SIGKILL after 3 s), and with
/// the head however it dies (a [`crate::util::GroupGuard`]).
fn start_entrypoint(api: &Arc<JobsApi>, id: &str, sub: &JobSubmission, cwd: Option<PathBuf>) -> Result<()> {
    let log_path = api.logs.join(format!("{id}.log"));
    let log = std::fs::File::create(&log_path).map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(&sub.entrypoint)
        .envs(&sub.runtime_env.env_vars)
        .env("RAYFORGE_ADDRESS", &api.head_addr)
        .env("RAYFORGE_TOKEN", &api.token)
        .env(ENV_SUBMISSION_ID, id)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2);
    if let Some(dir) = &cwd {
        cmd.current_dir(dir);
    }
    let cgroup = crate::util::Cgroup::create(&job_cgroup_name(api.gcs.dir(), id));
    let procs = cgroup.as_ref().map(crate::util::Cgroup::procs_path);
    // SAFETY: setsid, prctl and enter_from_pre_exec are async-signal-safe:
    // a process group (and cgroup) to stop as a whole, and an entrypoint
    // that ends with the head.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(p) = &procs {
                crate::util::cgroup::enter_from_pre_exec(p);
            }
            Ok(())
        });
    }
    // From the lasting thread, so the parent-death signal is the head's.
    let mut child = crate::node::spawner::spawn(cmd).map_err(|e| Error::io("starting the entrypoint with sh -c", e))?;
    let pid = child.id().unwrap_or(0) as i32;
    let guard = match crate::util::GroupGuard::with_cgroup(pid as u32, cgroup.clone()) {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!(job = %id, "the job's processes may outlive a crashed head: {e}");
            None
        }
    };
    api.gcs.set_job_pgid(id, pid as u32);
    api.running.lock().insert(id.to_string(), (pid, cgroup.clone()));
    tracing::info!(job = %id, pid, cgroup = cgroup.is_some(), entrypoint = %sub.entrypoint, "entrypoint started");
    let api = api.clone();
    let id = id.to_string();
    tokio::spawn(async move {
        let status = child.wait().await;
        api.running.lock().remove(&id);
        let stopped = api.stopping.lock().remove(&id);
        // What the entrypoint left running ends with it; a stopped job's
        // processes first get the rest of their 3 s to exit on SIGTERM.
        let alive = || crate::util::group_alive(pid as u32) || cgroup.as_ref().is_some_and(|c| !c.pids().is_empty());
        if stopped {
            let until = tokio::time::Instant::now() + Duration::from_secs(3);
            while alive() && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // The guard's watchdog kills the group and the cgroup, and removes
        // the cgroup; without a guard, this does.
        if guard.is_none() {
            if let Some(c) = cgroup.clone() {
                let _ = tokio::task::spawn_blocking(move || c.end(Duration::from_secs(5))).await;
            }
        }
        drop(guard);
        let (state, msg) = match status {
            _ if stopped => ("STOPPED", "stopped with `rayforge job stop`".to_string()),
            Ok(s) if s.success() => ("SUCCEEDED", "the entrypoint exited with code 0".to_string()),
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                let why = match (s.code(), s.signal()) {
                    (Some(c), _) => format!("the entrypoint exited with code {c}"),
                    (_, Some(sig)) => format!("the entrypoint was killed by signal {sig}"),
                    _ => "the entrypoint failed".to_string(),
                };
                ("FAILED", why)
            }
            Err(e) => ("FAILED", format!("lost track of the entrypoint: {e}")),
        };
        api.gcs.end_job(&id, state, &msg);
        api.prune_soon();
    });
    Ok(())
}

async fn stop_job(State(api): State<Arc<JobsApi>>, UrlPath(id): UrlPath<String>) -> ApiResult<Json<serde_json::Value>> {
    let job = find_job(&api, &id)?;
    if !job.submitted {
        return Err(bad(format!(
            "job `{id}` was not submitted through the jobs API; stop its driver (pid {} on node {})",
            job.driver_pid, job.driver_node
        )));
    }
    let Some((pgid, cgroup)) = api.running.lock().get(&id).cloned() else {
        return Ok(Json(serde_json::json!({ "stopped": false })));
    };
    api.stopping.lock().insert(id.clone());
    tracing::info!(job = %id, "stopping the job");
    // SAFETY: plain syscalls on the entrypoint's process group.
    unsafe {
        libc::kill(-pgid, libc::SIGTERM);
    }
    if let Some(c) = &cgroup {
        c.signal(libc::SIGTERM);
    }
    let api2 = api.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        if api2.running.lock().get(&id).map(|(p, _)| *p) == Some(pgid) {
            // SAFETY: as above.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            if let Some(c) = &cgroup {
                c.kill();
            }
        }
    });
    Ok(Json(serde_json::json!({ "stopped": true })))
}
