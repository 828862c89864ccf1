//! Submitted jobs: the head's HTTP jobs API (on the port the dashboard
//! uses, 8265 by default), the supervisor that runs each submission's
//! entrypoint on the head, the working-directory packages a runtime env
//! ships to every node, and [`JobClient`], the API's client (what
//! `rayforge job ...` uses).
//!
//! ```no_run
//! use rayforge::jobs::{JobClient, RuntimeEnv};
//! let jobs = JobClient::connect("auto", None)?;
//! let id = jobs.submit("./my_pipeline --epochs 3", &RuntimeEnv::default())?;
//! println!("{:?}", jobs.status(&id)?);
//! # Ok::<(), rayforge::Error>(())
//! ```
//!
//! The API (every call needs `Authorization: Bearer <cluster token>`):
//! `POST /api/jobs/` (a [`JobSubmission`]), `GET /api/jobs/`,
//! `GET /api/jobs/{id}`, `GET /api/jobs/{id}/logs?offset=N`,
//! `POST /api/jobs/{id}/stop`, `PUT /api/packages/{sha256}` (a packed
//! working directory), `GET /api/packages/{sha256}`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::gcs::Gcs;
use crate::ids::hex;
use crate::proto;

/// Default port of the jobs API (Ray's dashboard port).
pub const DEFAULT_JOBS_PORT: u16 = 8265;
/// Set in a submitted entrypoint's environment: its driver takes over the
/// submission's job record.
pub(crate) const ENV_SUBMISSION_ID: &str = "RAYFORGE_SUBMISSION_ID";
/// Largest working directory a runtime env may ship.
pub const MAX_PACKAGE_BYTES: usize = 100 << 20;
const PACKAGE_SCHEME: &str = "package://";
/// Most log bytes one `logs` call returns.
const LOG_CHUNK: u64 = 4 << 20;

/// What a job's processes get on every node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeEnv {
    /// Environment variables of the entrypoint and every worker.
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    /// A local directory (on the submitting machine) shipped to every node
    /// and used as the working directory; over the API,
    /// `package://<sha256>` of an uploaded package.
    #[serde(default)]
    pub working_dir: Option<String>,
}

impl RuntimeEnv {
    /// Reads a runtime env file: JSON like
    /// `{"env_vars": {"MODE": "fast"}, "working_dir": "./data"}`; a relative
    /// working dir is relative to the file.
    pub fn from_file(path: &Path) -> Result<RuntimeEnv> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidArgument(format!("cannot read the runtime env file {}: {e}", path.display())))?;
        let mut env: RuntimeEnv = serde_json::from_str(&text).map_err(|e| {
            Error::InvalidArgument(format!(
                "the runtime env file {} is malformed ({e}); expected {{\"env_vars\": {{\"NAME\": \"value\"}}, \
                 \"working_dir\": \"path\"}}",
                path.display()
            ))
        })?;
        if let Some(dir) = &env.working_dir {
            let p = Path::new(dir);
            if p.is_relative() {
                let base = path.parent().unwrap_or(Path::new("."));
                env.working_dir = Some(base.join(p).to_string_lossy().into_owned());
            }
        }
        Ok(env)
    }
}

/// The body of `POST /api/jobs/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSubmission {
    /// A shell command run on the head (`sh -c`).
    pub entrypoint: String,
    /// Environment and working directory.
    #[serde(default)]
    pub runtime_env: RuntimeEnv,
}

/// A job as the jobs API reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDetails {
    /// The job's id.
    pub job_id: String,
    /// RUNNING, SUCCEEDED, FAILED or STOPPED.
    pub state: String,
    /// What runs (a command line).
    pub entrypoint: String,
    /// Why it ended the way it did.
    pub message: String,
    /// Submitted through the jobs API (otherwise a driver that joined).
    pub submitted: bool,
    /// Milliseconds since the epoch.
    pub start_ms: u64,
    /// Milliseconds since the epoch (0 while running).
    pub end_ms: u64,
}

impl From<proto::JobInfo> for JobDetails {
    fn from(j: proto::JobInfo) -> JobDetails {
        JobDetails {
            job_id: j.job_id,
            state: j.state,
            entrypoint: j.entrypoint,
            message: j.message,
            submitted: j.submitted,
            start_ms: j.start_ms,
            end_ms: j.end_ms,
        }
    }
}

/// A piece of a job's output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogChunk {
    /// The output from the requested offset (lossy UTF-8).
    pub logs: String,
    /// Where the next call should start.
    pub next_offset: u64,
    /// The job ended and this chunk reaches the end of its output.
    pub finished: bool,
}

// ---------- working-directory packages ----------

/// Packs a directory (files, recursively; symlinks are skipped).
pub(crate) fn pack_dir(dir: &Path) -> Result<Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<proto::PackageFile>, total: &mut usize) -> Result<()> {
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let meta =
                std::fs::symlink_metadata(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            if meta.is_dir() {
                walk(root, &path, out, total)?;
            } else if meta.is_file() {
                use std::os::unix::fs::PermissionsExt;
                *total += meta.len() as usize;
                if *total > MAX_PACKAGE_BYTES {
                    return Err(Error::InvalidArgument(format!(
                        "the working directory {} is larger than {} MiB",
                        root.display(),
                        MAX_PACKAGE_BYTES >> 20
                    )));
                }
                let data = std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                let rel = path.strip_prefix(root).unwrap_or(&path);
                out.push(proto::PackageFile {
                    path: rel.to_string_lossy().into_owned(),
                    mode: meta.permissions().mode() & 0o777,
                    data,
                });
            }
        }
        Ok(())
    }
    if !dir.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "the working directory {} does not exist or is not a directory",
            dir.display()
        )));
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files, &mut 0)?;
    Ok(proto::DirPackage { files }.encode_to_vec())
}

/// Where the package `hash` is unpacked on this machine.
pub(crate) fn package_dir(hash: &str) -> PathBuf {
    std::env::temp_dir().join("rayforge-packages").join(hash)
}

/// The package hash of a `package://<sha256>` working dir.
pub(crate) fn package_hash(working_dir: &str) -> Option<&str> {
    working_dir.strip_prefix(PACKAGE_SCHEME)
}

/// Unpacks a package into [`package_dir`] unless it is there already;
/// returns the directory.
pub(crate) fn unpack(hash: &str, data: &[u8]) -> Result<PathBuf> {
    let dest = package_dir(hash);
    if dest.is_dir() {
        return Ok(dest);
    }
    let pkg = proto::DirPackage::decode(data)
        .map_err(|e| Error::InvalidArgument(format!("package {hash} is not a packed directory: {e}")))?;
    let parent = dest.parent().unwrap_or(Path::new("/"));
    let tmp = parent.join(format!("{hash}.{}.tmp", std::process::id()));
    let write = || -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        for f in &pkg.files {
            let rel = Path::new(&f.path);
            let safe = rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
            if !safe || f.path.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "package {hash} holds a path outside its directory: `{}`",
                    f.path
                )));
            }
            let path = tmp.join(rel);
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p).map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
            }
            std::fs::write(&path, &f.data).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode | 0o400));
        }
        match std::fs::rename(&tmp, &dest) {
            Ok(()) => Ok(()),
            // Another process unpacked it first.
            Err(_) if dest.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => Err(Error::io(format!("storing {}", dest.display()), e)),
        }
    };
    let r = write();
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    r.map(|_| dest)
}

// ---------- the server ----------

struct JobsApi {
    gcs: Arc<Gcs>,
    head_addr: String,
    token: String,
    logs: PathBuf,
    /// Process groups of running entrypoints.
    running: Mutex<HashMap<String, i32>>,
    stopping: Mutex<HashSet<String>>,
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

/// Serves the jobs API on `bind:port` (port 0: any free one); returns the
/// address it listens on. Submitted jobs a previous head left running are
/// marked failed (their entrypoints ended with it).
pub(crate) async fn serve(
    gcs: Arc<Gcs>,
    head_addr: String,
    token: String,
    bind: &str,
    port: u16,
) -> Result<SocketAddr> {
    for j in gcs.jobs() {
        if j.submitted && j.state == "RUNNING" {
            gcs.end_job(&j.job_id, "FAILED", "the head stopped while the job ran");
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
    });
    let app = Router::new()
        .route("/api/jobs/", get(list_jobs).post(submit_job))
        .route("/api/jobs", get(list_jobs).post(submit_job))
        .route("/api/jobs/{id}", get(job_status))
        .route("/api/jobs/{id}/logs", get(job_logs))
        .route("/api/jobs/{id}/stop", post(stop_job))
        .route("/api/packages/{hash}", get(has_package).put(put_package))
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            ApiError(StatusCode::NOT_FOUND, format!("no such endpoint: {method} {uri}"))
        })
        .layer(DefaultBodyLimit::max(MAX_PACKAGE_BYTES + (1 << 20)))
        .layer(axum::middleware::from_fn_with_state(api.clone(), check_token))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind((bind, port))
        .await
        .map_err(|e| Error::io(format!("binding the jobs API to {bind}:{port}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("reading the jobs API's address", e))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("jobs API stopped: {e}");
        }
    });
    tracing::info!(addr = %local, "jobs API started");
    Ok(local)
}

async fn check_token(
    State(api): State<Arc<JobsApi>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let ok = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.trim() == api.token);
    if !ok {
        tracing::warn!(uri = %req.uri(), "jobs API call refused: missing or wrong token");
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong cluster token: send 'Authorization: Bearer <token>' (printed by `rayforge start --head`)"
                .into(),
        )
        .into_response();
    }
    next.run(req).await
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
    let (data, size) = tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<u8>, u64)> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(e),
        };
        let size = f.metadata()?.len();
        let from = q.offset.min(size);
        f.seek(SeekFrom::Start(from))?;
        let mut data = Vec::new();
        f.take(LOG_CHUNK).read_to_end(&mut data)?;
        Ok((data, size))
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the job's log: {e}")))?;
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

/// Runs a submission's entrypoint under `sh -c` in its own process group,
/// output to the job's log; its exit decides the job's state.
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
    // SAFETY: setsid and prctl are async-signal-safe: a process group to
    // stop as a whole, and an entrypoint that ends with the head.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io("starting the entrypoint with sh -c", e))?;
    let pid = child.id().unwrap_or(0) as i32;
    api.running.lock().insert(id.to_string(), pid);
    tracing::info!(job = %id, pid, entrypoint = %sub.entrypoint, "entrypoint started");
    let api = api.clone();
    let id = id.to_string();
    tokio::spawn(async move {
        let status = child.wait().await;
        api.running.lock().remove(&id);
        let stopped = api.stopping.lock().remove(&id);
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
    let Some(pgid) = api.running.lock().get(&id).copied() else {
        return Ok(Json(serde_json::json!({ "stopped": false })));
    };
    api.stopping.lock().insert(id.clone());
    tracing::info!(job = %id, "stopping the job");
    // SAFETY: plain syscalls on the entrypoint's process group.
    unsafe {
        libc::kill(-pgid, libc::SIGTERM);
    }
    let api2 = api.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        if api2.running.lock().get(&id) == Some(&pgid) {
            // SAFETY: as above.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    });
    Ok(Json(serde_json::json!({ "stopped": true })))
}

// ---------- the client ----------

/// A client of a cluster's jobs API.
pub struct JobClient {
    base: String,
    token: String,
    rt: tokio::runtime::Runtime,
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<Bytes>,
    >,
}

impl JobClient {
    /// Connects to the jobs API at `address` (`http://host:port`,
    /// `host:port`, or "auto": this machine's cluster); the token defaults
    /// to `$RAYFORGE_TOKEN`, then this machine's cluster file.
    pub fn connect(address: &str, token: Option<&str>) -> Result<JobClient> {
        let local = crate::cluster::local_cluster().ok();
        let base = if address == "auto" {
            let c = local.as_ref().ok_or_else(|| {
                Error::NotFound(
                    "no cluster is running on this machine: start one with `rayforge start --head` or pass \
                     --address http://HOST:PORT of its jobs API"
                        .into(),
                )
            })?;
            if c.jobs_address.is_empty() {
                return Err(Error::NotFound("this machine's cluster runs no jobs API".into()));
            }
            c.jobs_address.clone()
        } else {
            address.to_string()
        };
        let base = if base.starts_with("http://") {
            base
        } else {
            format!("http://{base}")
        };
        let hostport = base.trim_start_matches("http://").trim_end_matches('/');
        if !hostport.contains(':') || hostport.contains('/') {
            return Err(Error::InvalidArgument(format!(
                "jobs API address `{address}` is not of the form http://host:port"
            )));
        }
        let token = token
            .map(str::to_string)
            .or_else(|| std::env::var("RAYFORGE_TOKEN").ok().filter(|t| !t.is_empty()))
            .or_else(|| local.filter(|c| c.jobs_address == base).map(|c| c.token))
            .unwrap_or_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting a runtime", e))?;
        let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        Ok(JobClient {
            base: format!("http://{hostport}"),
            token,
            rt,
            http,
        })
    }

    fn call<T: serde::de::DeserializeOwned>(&self, method: Method, path: &str, body: Vec<u8>) -> Result<T> {
        use http_body_util::BodyExt;
        let url = format!("{}{path}", self.base);
        let req = axum::http::Request::builder()
            .method(method.clone())
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .map_err(|e| Error::InvalidArgument(format!("bad request to {url}: {e}")))?;
        let unreachable = |why: String| Error::Io {
            context: format!("cannot reach the jobs API at {}", self.base),
            message: why,
        };
        let (status, bytes) = self.rt.block_on(async {
            let resp = tokio::time::timeout(Duration::from_secs(60), self.http.request(req))
                .await
                .map_err(|_| unreachable("no answer within 60 s".into()))?
                .map_err(|e| unreachable(format!("{e:?}")))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, Error>((status, bytes))
        })?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(match status {
                StatusCode::NOT_FOUND => Error::NotFound(msg),
                StatusCode::UNAUTHORIZED => {
                    Error::InvalidArgument(format!("the jobs API at {} refused the call: {msg}", self.base))
                }
                StatusCode::BAD_REQUEST => Error::InvalidArgument(msg),
                _ => Error::Runtime(format!("{method} {path}: {status}: {msg}")),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::Runtime(format!(
                "{method} {path}: unexpected answer ({e}): {}",
                String::from_utf8_lossy(&bytes)
            ))
        })
    }

    /// Submits `entrypoint` (a shell command run on the head); a local
    /// `working_dir` is packed and uploaded first. Returns the job id.
    pub fn submit(&self, entrypoint: &str, env: &RuntimeEnv) -> Result<String> {
        let mut env = env.clone();
        if let Some(dir) = env.working_dir.clone() {
            if package_hash(&dir).is_none() {
                let data = pack_dir(Path::new(&dir))?;
                let hash = hex(&Sha256::digest(&data));
                let have: serde_json::Value = self.call(Method::GET, &format!("/api/packages/{hash}"), Vec::new())?;
                if have["present"] != true {
                    let _: serde_json::Value = self.call(Method::PUT, &format!("/api/packages/{hash}"), data)?;
                }
                env.working_dir = Some(format!("{PACKAGE_SCHEME}{hash}"));
            }
        }
        let body = serde_json::to_vec(&JobSubmission {
            entrypoint: entrypoint.to_string(),
            runtime_env: env,
        })
        .map_err(|e| Error::Internal(e.to_string()))?;
        let r: serde_json::Value = self.call(Method::POST, "/api/jobs/", body)?;
        r["job_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::Runtime(format!("the jobs API answered without a job id: {r}")))
    }

    /// A job's details.
    pub fn status(&self, id: &str) -> Result<JobDetails> {
        self.call(Method::GET, &format!("/api/jobs/{id}"), Vec::new())
    }

    /// Every job of the cluster.
    pub fn list(&self) -> Result<Vec<JobDetails>> {
        self.call(Method::GET, "/api/jobs/", Vec::new())
    }

    /// A submitted job's output from byte `offset`.
    pub fn logs(&self, id: &str, offset: u64) -> Result<LogChunk> {
        self.call(Method::GET, &format!("/api/jobs/{id}/logs?offset={offset}"), Vec::new())
    }

    /// Stops a submitted job (SIGTERM to its entrypoint's process group,
    /// SIGKILL after 3 s); false if it was not running.
    pub fn stop(&self, id: &str) -> Result<bool> {
        let r: serde_json::Value = self.call(Method::POST, &format!("/api/jobs/{id}/stop"), Vec::new())?;
        Ok(r["stopped"] == true)
    }

    /// Waits for a job to end (polling), calling `on_output` with its
    /// output as it comes; returns its final details.
    pub fn follow(&self, id: &str, mut on_output: impl FnMut(&str)) -> Result<JobDetails> {
        let mut offset = 0;
        loop {
            let chunk = self.logs(id, offset)?;
            if !chunk.logs.is_empty() {
                on_output(&chunk.logs);
            }
            let moved = chunk.next_offset != offset;
            offset = chunk.next_offset;
            if chunk.finished {
                return self.status(id);
            }
            if !moved {
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_round_trip_and_refuse_escaping_paths() {
        let src = std::env::temp_dir().join(format!("rayforge-pkg-src-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a.txt"), b"alpha").unwrap();
        std::fs::write(src.join("sub/b.txt"), b"beta").unwrap();
        let data = pack_dir(&src).unwrap();
        let hash = hex(&Sha256::digest(&data));
        let out = unpack(&hash, &data).unwrap();
        assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"alpha");
        assert_eq!(std::fs::read(out.join("sub/b.txt")).unwrap(), b"beta");
        let _ = std::fs::remove_dir_all(&out);

        let evil = proto::DirPackage {
            files: vec![proto::PackageFile {
                path: "../escape.txt".into(),
                mode: 0o644,
                data: b"x".to_vec(),
            }],
        }
        .encode_to_vec();
        let err = unpack("evil0", &evil).unwrap_err();
        assert!(err.to_string().contains("outside its directory"), "{err}");
        assert!(!package_dir("evil0").exists());
        assert!(pack_dir(&src.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&src);
    }

    #[test]
    fn runtime_env_files_are_checked() {
        let dir = std::env::temp_dir().join(format!("rayforge-renv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(&good, r#"{"env_vars": {"MODE": "fast"}, "working_dir": "data"}"#).unwrap();
        let env = RuntimeEnv::from_file(&good).unwrap();
        assert_eq!(env.env_vars["MODE"], "fast");
        assert_eq!(env.working_dir.as_deref(), Some(dir.join("data").to_str().unwrap()));
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"env": {"MODE": "fast"}}"#).unwrap();
        let err = RuntimeEnv::from_file(&bad).unwrap_err();
        assert!(
            err.to_string().contains("malformed") && err.to_string().contains("env"),
            "{err}"
        );
        let err = RuntimeEnv::from_file(&dir.join("missing.json")).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
