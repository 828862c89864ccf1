//! The HTTP side of a cluster: the head's port (the jobs API, the
//! dashboard's pages) and each node's metrics port share one way in.
//!
//! - Every path needs a token, as `Authorization: Bearer <token>` or the
//!   [`SESSION_COOKIE`] the login page sets, except `/healthz` and
//!   `/readyz` (for load balancers and Kubernetes probes) and the login
//!   page itself.
//! - Two tokens: the cluster token may do everything; the optional viewer
//!   token (`rayforge start --viewer-token-file`, `$RAYFORGE_VIEWER_TOKEN`)
//!   only reads (GET and HEAD: the dashboard, `/metrics` for a scraper)
//!   and is never accepted between nodes.
//! - The login page keeps no token in the browser: it sets a random session
//!   id (HttpOnly, SameSite=Strict) that ends after [`SESSION_TTL`] or at
//!   `/logout`; sessions live in the server's memory.
//! - A browser asking for a page without the token is sent to `/login`;
//!   an API call gets `401` and a JSON error naming what is missing.
//! - A call that changes state (any method but GET, HEAD and OPTIONS)
//!   carrying the token only in the cookie must come from this origin
//!   (`Sec-Fetch-Site: same-origin`, or an `Origin` naming this host), and
//!   a body must be `application/json` (or the package upload's
//!   `application/octet-stream`): a form posted from another site, or
//!   another port of this machine, gets `403`.
//! - [`HttpRoutes`] is how a program adds pages to the head's port (the
//!   `rayforge` binary adds the dashboard's); added routes sit behind the
//!   token like the rest.
//!
//! ```no_run
//! // What `rayforge start --head` does to serve the dashboard on 8265:
//! let routes = rayforge::http::HttpRoutes::new(|head: &rayforge::http::HeadHttp| {
//!     let address = head.address.clone();
//!     axum::Router::new().route("/hello", axum::routing::get(move || async move { address }))
//! });
//! let opts = rayforge::cluster::StartOptions { head: true, http_routes: Some(routes), ..Default::default() };
//! rayforge::cluster::run_daemon(&opts, |_| {}).unwrap();
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Json, Router};
use serde::Deserialize;

/// The cookie the login page sets: a session id (HttpOnly, SameSite=Strict).
pub const SESSION_COOKIE: &str = "rayforge_session";

/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Sessions one server keeps at most: past it, logins push out the oldest.
const MAX_SESSIONS: usize = 10_000;

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Everything (the cluster token).
    Admin,
    /// Only read (the viewer token).
    Viewer,
}

/// The tokens an HTTP port accepts and the sessions its login made.
#[derive(Clone)]
pub(crate) struct Access(Arc<AccessInner>);

struct AccessInner {
    admin: String,
    viewer: Option<String>,
    sessions: parking_lot::Mutex<HashMap<String, (Role, Instant)>>,
}

impl Access {
    /// Accepts the cluster token `admin`, and `viewer` for reading.
    pub(crate) fn new(admin: String, viewer: Option<String>) -> Access {
        Access(Arc::new(AccessInner {
            admin,
            viewer: viewer.filter(|v| !v.is_empty()),
            sessions: parking_lot::Mutex::new(HashMap::new()),
        }))
    }

    /// The cluster token.
    pub(crate) fn admin_token(&self) -> &str {
        &self.0.admin
    }

    /// The role a token gives, if any.
    fn role_of_token(&self, given: &str) -> Option<Role> {
        if same(given, &self.0.admin) {
            return Some(Role::Admin);
        }
        self.0
            .viewer
            .as_deref()
            .is_some_and(|v| same(given, v))
            .then_some(Role::Viewer)
    }

    /// A new session for `role`; returns its id.
    fn open_session(&self, role: Role) -> crate::Result<String> {
        let id = crate::util::random_secret()?;
        let now = Instant::now();
        let mut s = self.0.sessions.lock();
        s.retain(|_, (_, expires)| *expires > now);
        if s.len() >= MAX_SESSIONS {
            if let Some(oldest) = s.iter().min_by_key(|(_, (_, e))| *e).map(|(k, _)| k.clone()) {
                s.remove(&oldest);
            }
        }
        s.insert(id.clone(), (role, now + SESSION_TTL));
        Ok(id)
    }

    /// The role of a live session.
    fn session(&self, id: &str) -> Option<Role> {
        let mut s = self.0.sessions.lock();
        match s.get(id) {
            Some((role, expires)) if *expires > Instant::now() => Some(*role),
            Some(_) => {
                s.remove(id);
                None
            }
            None => None,
        }
    }

    fn close_session(&self, id: &str) {
        self.0.sessions.lock().remove(id);
    }

    /// Who the request is, and whether it proved it with a header (which
    /// no page of another site can set) rather than the cookie.
    fn identify(&self, req: &Request) -> Option<(Role, bool)> {
        if let Some(t) = bearer(req) {
            return self.role_of_token(t).map(|r| (r, true));
        }
        session_cookie(req).and_then(|id| self.session(&id)).map(|r| (r, false))
    }
}

/// Paths served without the token.
const PUBLIC: [&str; 4] = ["/healthz", "/readyz", "/login", "/logout"];

/// What routes added to the head's port know of the head.
#[derive(Debug, Clone)]
pub struct HeadHttp {
    /// The head's control service (`host:port`), for a
    /// [`HeadClient`](crate::cluster::HeadClient).
    pub address: String,
    /// The cluster token.
    pub token: String,
    /// The head's HTTP address (`http://host:port`).
    pub http_address: String,
}

/// Builds routes served on the head's HTTP port (see the module's docs).
#[derive(Clone)]
pub struct HttpRoutes(Arc<dyn Fn(&HeadHttp) -> Router + Send + Sync>);

impl HttpRoutes {
    /// Routes built by `f` once the head knows its addresses and token.
    pub fn new(f: impl Fn(&HeadHttp) -> Router + Send + Sync + 'static) -> HttpRoutes {
        HttpRoutes(Arc::new(f))
    }

    pub(crate) fn build(&self, head: &HeadHttp) -> Router {
        (self.0)(head)
    }
}

impl std::fmt::Debug for HttpRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpRoutes(..)")
    }
}

/// Limits every HTTP port of the cluster and of Serve holds its clients
/// to, so that slow or idle clients (slowloris) cannot take a port from
/// the others. Request bodies are limited per route (axum's
/// `DefaultBodyLimit`: 2 MB unless a route says otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// How long a client has to send a request's line and headers, counted
    /// from when its connection opens or its previous response went out: a
    /// connection that sends nothing, or its headers a byte at a time, is
    /// closed when it runs out.
    pub header_read_timeout: Duration,
    /// Connections served at once; past it, a new connection is closed as
    /// it is accepted (and said in the log) rather than left waiting.
    pub max_connections: usize,
    /// The most bytes a request's line and headers may take (at least
    /// 8 KiB): larger ones get `431`.
    pub max_header_bytes: usize,
    /// Whether the port speaks TLS when this process has a certificate
    /// ([`crate::tls`]); off for ports only the machine itself reaches
    /// (Serve's admin port, on loopback).
    pub tls: bool,
}

impl Default for HttpLimits {
    /// 10 s for headers, 4,096 connections, 64 KiB of headers, TLS when
    /// configured.
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_header_bytes: 64 << 10,
            tls: true,
        }
    }
}

/// Serves `app` on `listener` within `limits` (HTTP/1.1) until `shutdown`
/// completes, then lets the requests in progress finish. Every HTTP server
/// of the cluster and of Serve runs this way: connections send small
/// writes at once (TCP_NODELAY; without it a response's last segment waits
/// for the client's delayed ACK, 40 ms per call), and a failed accept (out
/// of file descriptors) is logged and retried, not fatal.
///
/// ```no_run
/// # async fn f() {
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
/// let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// rayforge::http::serve(l, app, rayforge::http::HttpLimits::default(), std::future::pending()).await;
/// # }
/// ```
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    // A certificate this process could not load was refused when the
    // daemon started; here it only decides whether to speak TLS.
    let tls = crate::tls::settings()
        .ok()
        .flatten()
        .filter(|t| limits.tls && t.identity_pem().is_some())
        .and_then(|t| t.server_config().ok())
        .map(tokio_rustls::TlsAcceptor::from);
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut refused = Throttled::default();
    let mut accept_failed = Throttled::default();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE/ENFILE, or a connection reset before it was
                // accepted: wait a moment (descriptors free as idle
                // connections time out) and go on.
                if let Some(n) = accept_failed.count() {
                    tracing::warn!("accepting HTTP connections failed {n} time(s): {e}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            if let Some(n) = refused.count() {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "closed {n} HTTP connection(s) over the cap as they arrived"
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8 << 10));
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let ended = match tls {
                // The handshake, too, must finish within the header timeout.
                Some(tls) => match tokio::time::timeout(limits.header_read_timeout, tls.accept(stream)).await {
                    Ok(Ok(s)) => watcher.watch(http.serve_connection(TokioIo::new(s), service)).await,
                    Ok(Err(e)) => {
                        tracing::debug!("TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => return,
                },
                None => {
                    watcher
                        .watch(http.serve_connection(TokioIo::new(stream), service))
                        .await
                }
            };
            if let Err(e) = ended {
                tracing::debug!("HTTP connection ended: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Counts events said in the log at most once every 10 s.
#[derive(Default)]
struct Throttled {
    since_said: u64,
    said: Option<Instant>,
}

impl Throttled {
    /// One more; the count to say, when it is time to say it.
    fn count(&mut self) -> Option<u64> {
        self.since_said += 1;
        if self.said.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
            return None;
        }
        self.said = Some(Instant::now());
        Some(std::mem::take(&mut self.since_said))
    }
}

/// Whether `given` is the token, in time that does not depend on where
/// they first differ.
fn same(given: &str, token: &str) -> bool {
    same_bytes(given.trim().as_bytes(), token.as_bytes())
}

/// Whether `given` (trimmed) is `expected`, in time that does not depend
/// on where they first differ; an empty `expected` matches nothing. For
/// servers of other crates that check a token (Serve's admin port).
///
/// ```
/// assert!(rayforge::http::token_matches(" abc\n", "abc"));
/// assert!(!rayforge::http::token_matches("", ""));
/// ```
pub fn token_matches(given: &str, expected: &str) -> bool {
    same(given, expected)
}

/// Whether two byte strings are equal, in time that depends only on their
/// lengths (the token checks of HTTP and gRPC). An empty token matches
/// nothing.
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    !b.is_empty() && a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer` header.
fn bearer(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// The session id of the login cookie.
fn session_cookie(req: &Request) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

/// A `Cookie` header's value without the cluster's login cookie (`None`
/// when nothing else is left): what Serve passes on to user code, which
/// has no business holding a dashboard session.
pub fn without_session_cookie(cookie: &str) -> Option<String> {
    let rest: Vec<&str> = cookie
        .split(';')
        .map(str::trim)
        .filter(|kv| !kv.is_empty() && kv.split_once('=').is_none_or(|(k, _)| k != SESSION_COOKIE))
        .collect();
    (!rest.is_empty()).then(|| rest.join("; "))
}

fn reads_only(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The token check every HTTP port of the cluster runs (see the module's
/// docs).
pub(crate) async fn require_token(State(access): State<Access>, req: Request, next: Next) -> Response {
    if PUBLIC.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    if let Some((role, by_header)) = access.identify(&req) {
        let refused = if role == Role::Viewer && !reads_only(req.method()) {
            Some(format!(
                "the viewer token only reads: {} {} needs the cluster token",
                req.method(),
                req.uri().path()
            ))
        } else if by_header {
            None
        } else {
            cross_site(&req)
        };
        if let Some(why) = refused {
            tracing::warn!(uri = %req.uri(), "HTTP call refused: {why}");
            return (StatusCode::FORBIDDEN, Json(serde_json::json!({ "error": why }))).into_response();
        }
        return next.run(req).await;
    }
    let wants_page = req.method() == Method::GET
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
    tracing::warn!(uri = %req.uri(), "HTTP call refused: missing or wrong token, or an ended session");
    if wants_page {
        let next = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        return Redirect::to(&format!("/login?next={}", percent_encode(next))).into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({
            "error": "missing or wrong cluster token: send 'Authorization: Bearer <token>' \
                      (`rayforge token` prints it) or log in at /login"
        })),
    )
        .into_response()
}

/// Why a state-changing call authenticated by the cookie alone is refused
/// as cross-site (see the module's docs), if it is.
fn cross_site(req: &Request) -> Option<String> {
    if reads_only(req.method()) {
        return None;
    }
    let h = req.headers();
    let text = |name: header::HeaderName| h.get(name).and_then(|v| v.to_str().ok());
    // A body of another type is what an HTML form (or a no-CORS fetch)
    // can send cross-site without asking: only JSON (and a package's
    // bytes) is read.
    let has_body = text(header::CONTENT_LENGTH).is_some_and(|l| l != "0") || h.contains_key(header::TRANSFER_ENCODING);
    if has_body {
        let ty = text(header::CONTENT_TYPE).unwrap_or("");
        let ty = ty.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if ty != "application/json" && ty != "application/octet-stream" {
            return Some(format!(
                "a body of type `{ty}`: calls that change state take application/json"
            ));
        }
    }
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        return (site != "same-origin")
            .then(|| format!("a cross-site request (Sec-Fetch-Site: {site}) carrying the login cookie"));
    }
    let host = text(header::HOST).unwrap_or("");
    match text(header::ORIGIN) {
        Some(origin) => {
            let authority = origin.split_once("://").map_or(origin, |(_, a)| a);
            (authority != host).then(|| format!("a request from origin {origin} carrying the login cookie"))
        }
        None => Some("a request with the login cookie but no Origin: send the token as a header".into()),
    }
}

fn percent_encode(s: &str) -> String {
    percent_encode_but(s, b"-_.~/")
}

/// `s` with every byte percent-encoded except ASCII letters, digits and
/// `keep`.
pub(crate) fn percent_encode_but(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where a login may send the browser next: a path on this server only.
fn safe_next(next: Option<&str>) -> String {
    match next {
        // Browsers drop tabs and newlines from a URL (`/\t/evil` becomes
        // `//evil`, another host): no control characters or spaces at all.
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(|c| c.is_control() || c.is_whitespace()) =>
        {
            n.to_string()
        }
        _ => "/".into(),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn login_page(next: &str, error: Option<&str>) -> Html<String> {
    let error = error
        .map(|e| format!("<p class=\"error\" id=\"login-error\">{}</p>", escape(e)))
        .unwrap_or_default();
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>rayforge: log in</title>\
         <link rel=\"icon\" href=\"data:,\">\
         <style>body{{font-family:system-ui,sans-serif;background:#f4f5f7;display:flex;justify-content:center;\
         padding-top:12vh}}form{{background:#fff;padding:2em;border-radius:8px;box-shadow:0 1px 4px #0002;\
         min-width:22em}}input{{width:100%;padding:.5em;margin:.5em 0 1em;box-sizing:border-box}}\
         button{{padding:.5em 1.2em}}.error{{color:#b00020}}</style></head><body>\
         <form method=\"post\" action=\"/login\"><h2>rayforge</h2>{error}\
         <label for=\"token\">Cluster or viewer token (<code>rayforge token</code> prints the cluster's)</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autofocus autocomplete=\"off\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\"><button type=\"submit\">Log in</button></form>\
         </body></html>",
        escape(next)
    ))
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

/// `/login` (the form, and its post opening a session) and `/logout`.
pub(crate) fn login_routes(access: Access) -> Router {
    let out = access.clone();
    Router::new()
        .route(
            "/login",
            get(|Query(q): Query<LoginQuery>| async move { login_page(&safe_next(q.next.as_deref()), None) }).post(
                move |Form(f): Form<LoginForm>| async move {
                    let next = safe_next(f.next.as_deref());
                    let Some(role) = access.role_of_token(&f.token) else {
                        tracing::warn!("dashboard login refused: wrong token");
                        return (StatusCode::UNAUTHORIZED, login_page(&next, Some("Wrong token."))).into_response();
                    };
                    let id = match access.open_session(role) {
                        Ok(id) => id,
                        Err(e) => {
                            tracing::error!("dashboard login failed: {e}");
                            let page = login_page(&next, Some("The server could not open a session; see its log."));
                            return (StatusCode::INTERNAL_SERVER_ERROR, page).into_response();
                        }
                    };
                    tracing::info!(?role, "dashboard login");
                    let cookie = format!(
                        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
                        SESSION_TTL.as_secs()
                    );
                    ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
                },
            ),
        )
        .route(
            "/logout",
            get(move |req: Request| async move {
                if let Some(id) = session_cookie(&req) {
                    out.close_session(&id);
                }
                let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
                ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(headers: &[(&str, &str)], body: &str) -> Request {
        let mut b = Request::builder().method(Method::POST).uri("/api/jobs/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b = b.header(header::CONTENT_LENGTH, body.len().to_string());
        b.body(axum::body::Body::from(body.to_string())).unwrap()
    }

    #[test]
    fn cookie_calls_that_change_state_must_come_from_this_origin() {
        let cookie = format!("{SESSION_COOKIE}=0123456789abcdef0123");
        let json = ("content-type", "application/json");
        let host = ("host", "127.0.0.1:8265");
        // A form posted from another port of this machine.
        let form = post(
            &[
                ("cookie", &cookie),
                host,
                ("origin", "http://127.0.0.1:9999"),
                ("content-type", "text/plain"),
            ],
            "{\"entrypoint\": \"id\"}",
        );
        assert!(cross_site(&form).unwrap().contains("text/plain"));
        let other_port = post(
            &[("cookie", &cookie), host, ("origin", "http://127.0.0.1:9999"), json],
            "{}",
        );
        assert!(cross_site(&other_port).unwrap().contains("127.0.0.1:9999"));
        let same_site = post(
            &[("cookie", &cookie), host, ("sec-fetch-site", "same-site"), json],
            "{}",
        );
        assert!(cross_site(&same_site).is_some());
        let no_origin = post(&[("cookie", &cookie), host, json], "{}");
        assert!(cross_site(&no_origin).is_some());
        // The dashboard's own calls, and any call with the token header.
        let page = post(
            &[("cookie", &cookie), host, ("sec-fetch-site", "same-origin"), json],
            "{}",
        );
        assert_eq!(cross_site(&page), None);
        let origin = post(
            &[("cookie", &cookie), host, ("origin", "http://127.0.0.1:8265"), json],
            "{}",
        );
        assert_eq!(cross_site(&origin), None);
        let get = Request::builder()
            .uri("/api/jobs/")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(cross_site(&get), None);
    }

    fn get_with(headers: &[(&str, &str)], method: Method) -> Request {
        let mut b = Request::builder().method(method).uri("/api/jobs/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn the_viewer_token_and_sessions_give_their_role_and_nothing_else() {
        let admin = "admin-token-0123456789";
        let viewer = "viewer-token-0123456789";
        let a = Access::new(admin.into(), Some(viewer.into()));
        let who = |h: &[(&str, &str)]| a.identify(&get_with(h, Method::GET));
        assert_eq!(
            who(&[("authorization", &format!("Bearer {admin}"))]),
            Some((Role::Admin, true))
        );
        assert_eq!(
            who(&[("authorization", &format!("Bearer {viewer}"))]),
            Some((Role::Viewer, true))
        );
        assert_eq!(who(&[("authorization", "Bearer nope")]), None);
        // The raw token in a cookie proves nothing: only a session id does.
        assert_eq!(who(&[("cookie", &format!("{SESSION_COOKIE}={admin}"))]), None);
        let id = a.open_session(Role::Viewer).unwrap();
        assert_ne!(id, viewer);
        let cookie = format!("other=1; {SESSION_COOKIE}={id}");
        assert_eq!(who(&[("cookie", &cookie)]), Some((Role::Viewer, false)));
        a.close_session(&id);
        assert_eq!(who(&[("cookie", &cookie)]), None, "a closed session still works");
        // An expired session is refused and forgotten.
        let id = a.open_session(Role::Admin).unwrap();
        a.0.sessions.lock().get_mut(&id).unwrap().1 = Instant::now() - Duration::from_secs(1);
        assert_eq!(a.session(&id), None);
        assert!(a.0.sessions.lock().is_empty());
        // No viewer token configured: none is accepted, the empty one least.
        let only_admin = Access::new(admin.into(), Some(String::new()));
        assert_eq!(only_admin.role_of_token(viewer), None);
        assert_eq!(only_admin.role_of_token(""), None);
    }

    #[test]
    fn serve_drops_only_the_login_cookie() {
        let c = format!("a=1; {SESSION_COOKIE}=secret; b=2");
        assert_eq!(without_session_cookie(&c).as_deref(), Some("a=1; b=2"));
        assert_eq!(without_session_cookie(&format!("{SESSION_COOKIE}=x")), None);
        assert_eq!(without_session_cookie("theme=dark").as_deref(), Some("theme=dark"));
    }

    #[test]
    fn tokens_compare_whole_and_logins_stay_on_this_server() {
        assert!(same("abc", "abc") && same(" abc\n", "abc"));
        assert!(!same("abd", "abc") && !same("ab", "abc") && !same("", "abc"));
        // An empty token guards nothing: `Bearer ` never matches it.
        assert!(!same("", "") && !same_bytes(b"", b""));
        assert_eq!(safe_next(Some("/actors?x=1")), "/actors?x=1");
        assert_eq!(safe_next(Some("//evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example")), "/");
        // `next=/%09/evil.example`, decoded: a tab the browser drops.
        assert_eq!(safe_next(Some("/\t/evil.example")), "/");
        assert_eq!(safe_next(Some("/\n/evil.example")), "/");
        assert_eq!(safe_next(Some("/ /evil.example")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
        assert_eq!(percent_encode("/a b?x=1&y"), "/a%20b%3Fx%3D1%26y");
        assert_eq!(escape("<a href='x'>"), "&lt;a href=&#39;x&#39;&gt;");
    }
}
