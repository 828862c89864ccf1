//! A running serve instance: the controller actor, the HTTP proxy and the
//! admin API (`serve status`, `serve deploy`, `serve shutdown`), driven from
//! the process that started it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tokio::sync::Notify;

use crate::config::{HttpOptions, ServeConfig};
use crate::controller::{Controller, ControllerHandle, ServeStatus, CONTROLLER_NAME};
use crate::error::{Error, Result};
use crate::router::{AbortOnDrop, Hub};
use crate::{Application, Deployment, DeploymentHandle, Registry};

/// A running serve instance. Dropping it without [`Serve::shutdown`] stops
/// the proxy but leaves replicas to end with the driver.
pub struct Serve {
    rt: tokio::runtime::Runtime,
    controller: ControllerHandle,
    http_addr: SocketAddr,
    admin_addr: SocketAddr,
    stop: Arc<Notify>,
    /// The proxy's task, then the admin API's.
    servers: Vec<AbortOnDrop>,
    _admin_token: RemoveOnDrop,
}

/// Starts serving `apps`: creates the controller (one per cluster), declares
/// the applications, and starts the HTTP proxy and the admin API. Needs
/// `rayforge::init` first. Returns at once; see [`Serve::wait_healthy`].
pub fn start(apps: Vec<Application>, http: HttpOptions) -> Result<Serve> {
    start_with(apps, http, None)
}

struct AdminState {
    controller: ControllerHandle,
    registry: Option<Registry>,
    stop: Arc<Notify>,
}

/// Where a server on admin port `port` keeps its admin token: a file only
/// this user can read, in this user's private directory
/// ([`rayforge::util::rayforge_tmp`]), which the `serve` commands read.
pub fn admin_token_path(port: u16) -> Result<std::path::PathBuf> {
    let dir = rayforge::util::private_dir(&rayforge::util::rayforge_tmp()?.join("serve"))?;
    Ok(dir.join(format!("admin-{port}.token")))
}

/// Makes a token for the admin API and writes it (mode 0600) where
/// [`admin_token_path`] says.
fn write_admin_token(port: u16) -> Result<(String, std::path::PathBuf)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token = rayforge::util::random_secret()?;
    let path = admin_token_path(port)?;
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    f.write_all(token.as_bytes())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok((token, path))
}

/// Removes the admin token's file when the server goes.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(crate) fn start_with(apps: Vec<Application>, http: HttpOptions, registry: Option<Registry>) -> Result<Serve> {
    if !rayforge::is_initialized() {
        return Err(Error::Invalid(
            "rayforge is not initialized: call rayforge::init before serve::start".into(),
        ));
    }
    let decls = apps.iter().map(Application::decl).collect::<Result<Vec<_>>>()?;
    // Every client connection is a descriptor: the usual soft limit of 1,024
    // would let a thousand idle clients shut the proxy.
    if let Err(e) = rayforge::util::raise_open_files_limit() {
        tracing::warn!("{e}");
    }
    if rayforge::get_actor::<ControllerHandle>(CONTROLLER_NAME).is_ok() {
        return Err(Error::Invalid(format!(
            "serve is already running in this cluster (actor `{CONTROLLER_NAME}` exists)"
        )));
    }
    // Restarted when its process dies: it declares the applications it
    // saved again (its replicas, which shared its fate, start anew).
    let controller = Controller::options()
        .name(CONTROLLER_NAME)
        .num_cpus(0.0)
        .max_concurrency(100_000)
        .max_restarts(-1)
        .remote()?;
    if let Err(e) = controller.deploy(decls).get() {
        let _ = rayforge::kill(&controller);
        return Err(e.into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("serve-proxy")
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the proxy's runtime", e))?;
    let stop = Arc::new(Notify::new());
    let started = rt.block_on(async {
        let hub = Hub::get().await?;
        let addr = format!("{}:{}", http.host, http.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::io(format!("listening on {addr} (the HTTP port)"), e))?;
        let admin = tokio::net::TcpListener::bind(("127.0.0.1", http.admin_port))
            .await
            .map_err(|e| {
                Error::io(
                    format!("listening on 127.0.0.1:{} (the admin port)", http.admin_port),
                    e,
                )
            })?;
        let http_addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the HTTP address", e))?;
        let admin_addr = admin
            .local_addr()
            .map_err(|e| Error::io("reading the admin address", e))?;
        let app = crate::proxy::app(hub, &http);
        let s = stop.clone();
        let proxy = tokio::spawn(async move {
            let limits = rayforge::http::HttpLimits::default();
            rayforge::http::serve(listener, app, limits, async move { s.notified().await }).await;
        });
        let state = Arc::new(AdminState {
            controller: controller.clone(),
            registry,
            stop: stop.clone(),
        });
        let (token, token_path) = write_admin_token(admin_addr.port())?;
        let admin_app = axum::Router::new()
            .route("/api/serve/status", get(admin_status))
            .route("/api/serve/applications", put(admin_deploy))
            .route("/api/serve/shutdown", post(admin_shutdown))
            .with_state(state)
            .layer(axum::middleware::from_fn_with_state(Arc::new(token), admin_token))
            .layer(axum::middleware::from_fn(no_browsers));
        let admin_task = tokio::spawn(async move {
            // Loopback only, behind its token: plain HTTP for `serve` commands.
            let limits = rayforge::http::HttpLimits {
                tls: false,
                ..Default::default()
            };
            rayforge::http::serve(admin, admin_app, limits, std::future::pending()).await;
        });
        tracing::info!(%http_addr, %admin_addr, "serve proxy listening");
        let servers = vec![AbortOnDrop(proxy), AbortOnDrop(admin_task)];
        Ok::<_, Error>((http_addr, admin_addr, servers, RemoveOnDrop(token_path)))
    });
    let (http_addr, admin_addr, servers, token_file) = match started {
        Ok(x) => x,
        Err(e) => {
            let _ = rayforge::kill(&controller);
            rt.block_on(Hub::reset());
            return Err(e);
        }
    };
    Ok(Serve {
        rt,
        controller,
        http_addr,
        admin_addr,
        stop,
        servers,
        _admin_token: token_file,
    })
}

/// Every admin call carries the server's admin token (`Authorization:
/// Bearer`, from [`admin_token_path`]): the port is on the loopback, where
/// every user of the machine could otherwise deploy or shut down.
async fn admin_token(
    State(token): State<Arc<String>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| rayforge::http::token_matches(g, &token)) {
        return next.run(req).await;
    }
    tracing::warn!(uri = %req.uri(), "admin API call refused: missing or wrong admin token");
    (
        StatusCode::UNAUTHORIZED,
        "missing or wrong admin token: the `serve` commands read it from the file `serve run` writes \
         (readable by its user only)\n",
    )
        .into_response()
}

/// The admin API serves the `serve` command line, never a web page: a
/// request a browser sends on a page's behalf (it carries `Origin` or a
/// cross-site `Sec-Fetch-Site`), or one for a host name other than the
/// loopback's (DNS rebinding), is refused with 403 — otherwise any web page
/// could shut the server down with a form posted to 127.0.0.1:52365.
async fn no_browsers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if let Some(why) = browser_request(req.headers()) {
        tracing::warn!(uri = %req.uri(), "admin API call refused: {why}");
        return (StatusCode::FORBIDDEN, format!("refused: {why}\n")).into_response();
    }
    next.run(req).await
}

/// Why a request to the admin API looks like a web page's, if it does.
fn browser_request(h: &axum::http::HeaderMap) -> Option<String> {
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    if let Some(origin) = text("origin") {
        return Some(format!("a request from a web page ({origin})"));
    }
    if let Some(site) = text("sec-fetch-site").filter(|s| *s != "none") {
        return Some(format!("a request from a web page (Sec-Fetch-Site: {site})"));
    }
    let host = text("host").unwrap_or("");
    let name = host
        .strip_prefix('[')
        .and_then(|h| h.split_once(']').map(|(a, _)| a))
        .unwrap_or_else(|| host.rsplit_once(':').map_or(host, |(a, _)| a));
    let loopback = name.is_empty()
        || name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| format!("the host name `{host}` (the admin API answers on the loopback only)"))
}

async fn admin_status(State(s): State<Arc<AdminState>>) -> Response {
    match s.controller.status().await {
        Ok(st) => axum::Json(st).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn admin_deploy(State(s): State<Arc<AdminState>>, body: Bytes) -> Response {
    let Some(registry) = &s.registry else {
        return (
            StatusCode::BAD_REQUEST,
            "this server was started from code, without a registry of deployments: it cannot take a config\n",
        )
            .into_response();
    };
    let text = String::from_utf8_lossy(&body);
    let decls = ServeConfig::parse(&text, "the config sent")
        .and_then(|c| registry.applications(&c))
        .and_then(|apps| apps.iter().map(Application::decl).collect::<Result<Vec<_>>>());
    let decls = match decls {
        Ok(d) => d,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    match s.controller.deploy(decls).await.map_err(Error::from) {
        Ok(()) => (StatusCode::OK, "deployed\n").into_response(),
        Err(e @ Error::Runtime(_)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn admin_shutdown(State(s): State<Arc<AdminState>>) -> Response {
    s.stop.notify_waiters();
    s.stop.notify_one();
    (StatusCode::OK, "shutting down\n").into_response()
}

impl Serve {
    /// Where the HTTP proxy listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the admin API listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Declares `apps` in place of what runs now: new deployments start,
    /// changed ones roll (or reconfigure in place when only their user
    /// config changed), missing ones drain and stop.
    pub fn deploy(&self, apps: Vec<Application>) -> Result<()> {
        let decls = apps.iter().map(Application::decl).collect::<Result<Vec<_>>>()?;
        Ok(self.controller.deploy(decls).get()?)
    }

    /// Every application's and deployment's state.
    pub fn status(&self) -> Result<ServeStatus> {
        Ok(self.controller.status().get()?)
    }

    /// Waits until every deployment runs its target replica count, printing
    /// progress; fails early when one cannot start its replicas.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<ServeStatus> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let st = self.status()?;
            if st.healthy() {
                return Ok(st);
            }
            let line = st
                .deployments
                .iter()
                .map(|d| {
                    let running = d
                        .replicas
                        .iter()
                        .filter(|r| r.state == crate::ReplicaState::Running)
                        .count();
                    format!("{}/{} {}/{} {}", d.app, d.name, running, d.target_replicas, d.status)
                })
                .collect::<Vec<_>>()
                .join(", ");
            if line != last {
                eprintln!("serve: waiting for deployments: {line}");
                last = line;
            }
            if let Some(d) = st
                .deployments
                .iter()
                .find(|d| d.status == crate::DeploymentState::Unhealthy)
            {
                return Err(Error::Unavailable(format!(
                    "deployment `{}/{}`: {}",
                    d.app, d.name, d.message
                )));
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "deployments not healthy after {timeout:?}: {last}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A handle to a deployment, for calls from this (driver) process; use
    /// it inside [`Serve::block_on`] or any tokio runtime.
    pub fn handle<D: Deployment>(&self, app: &str, deployment: &str) -> DeploymentHandle<D> {
        DeploymentHandle::new(app, deployment)
    }

    /// Runs async code (handle calls) on the proxy's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Blocks until Ctrl-C, SIGTERM (what `rayforge job stop` and
    /// Kubernetes send) or `serve shutdown` (the admin API); then call
    /// [`Serve::shutdown`], which drains the same way for each.
    pub fn wait_for_shutdown(&self) {
        self.wait_for_shutdown_with(|| {});
    }

    /// [`Serve::wait_for_shutdown`], calling `ready` once the signals are
    /// caught: a SIGTERM or Ctrl-C that follows what `ready` prints drains
    /// too, instead of ending the process by the default action.
    pub fn wait_for_shutdown_with(&self, ready: impl FnOnce()) {
        use tokio::signal::unix::SignalKind;
        self.rt.block_on(async {
            // Both handlers are installed here, before `ready`: a signal
            // handler registered only when first polled (as
            // `tokio::signal::ctrl_c` is) leaves a window in which the
            // signal kills the process undrained.
            let mut interrupt = watch_signal(SignalKind::interrupt(), "SIGINT");
            let mut term = watch_signal(SignalKind::terminate(), "SIGTERM");
            ready();
            tokio::select! {
                _ = next_signal(&mut interrupt) => eprintln!("serve: interrupted; draining, then shutting down"),
                _ = next_signal(&mut term) => eprintln!("serve: terminated (SIGTERM); draining, then shutting down"),
                _ = self.stop.notified() => eprintln!("serve: shutdown requested"),
            }
        });
    }

    /// Drains, then stops: the proxy first — it takes no new connection,
    /// and the requests it has in flight are answered and written out
    /// while every replica still runs (for at most 30 s) — then
    /// every replica (each finishes what it still has: requests from
    /// other deployments' handles) and the controller.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop.notify_waiters();
        self.stop.notify_one();
        // Stopping replicas first would race the proxy: a replica killed
        // just after its last request returned may take that answer down
        // with it, and the proxy, finding it dead, would send the request
        // again into a route table with no replica left.
        if let Some(proxy) = self.servers.first_mut() {
            let drained = self
                .rt
                .block_on(async { tokio::time::timeout(PROXY_DRAIN, &mut proxy.0).await });
            if drained.is_err() {
                tracing::warn!(
                    "the HTTP proxy still had requests in flight after {PROXY_DRAIN:?}; stopping regardless"
                );
            }
        }
        let done = self.controller.shutdown().get();
        let _ = rayforge::kill(&self.controller);
        self.rt.block_on(Hub::reset());
        self.rt.shutdown_timeout(Duration::from_secs(5));
        match done {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::internal("replicas were still stopping when shutdown gave up")),
            Err(e) => Err(e.into()),
        }
    }
}

/// How long [`Serve::shutdown`] waits for the proxy's requests in flight
/// (their answers written out) before it stops the replicas regardless.
const PROXY_DRAIN: Duration = Duration::from_secs(30);

/// A handler for signal `kind` (`name` in the log), installed now; `None`
/// (said in the log) when it cannot be.
fn watch_signal(kind: tokio::signal::unix::SignalKind, name: &str) -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot watch for {name}: {e}");
            None
        }
    }
}

/// The next delivery of a watched signal (never, for one not watched).
async fn next_signal(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

#[cfg(test)]
mod admin_tests {
    use super::browser_request;
    use axum::http::HeaderMap;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn web_pages_and_rebound_host_names_are_refused() {
        // The `serve` command line.
        assert_eq!(browser_request(&headers(&[("host", "127.0.0.1:52365")])), None);
        assert_eq!(browser_request(&headers(&[("host", "localhost:52365")])), None);
        assert_eq!(browser_request(&headers(&[("host", "[::1]:52365")])), None);
        // A form posted from any web page, and DNS rebinding.
        let form = headers(&[("host", "127.0.0.1:52365"), ("origin", "https://evil.example")]);
        assert!(browser_request(&form).unwrap().contains("evil.example"));
        let fetch = headers(&[("host", "127.0.0.1:52365"), ("sec-fetch-site", "cross-site")]);
        assert!(browser_request(&fetch).is_some());
        let rebound = headers(&[("host", "evil.example:52365")]);
        assert!(browser_request(&rebound).unwrap().contains("evil.example"));
    }
}
