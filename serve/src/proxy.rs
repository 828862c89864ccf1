//! The HTTP ingress: an axum server that matches a request's path to an
//! application's route prefix and sends it to that application's ingress
//! deployment. Tower middleware bounds it: a request timeout (408), a
//! concurrency limit with load shedding (503 with `Retry-After` at once
//! instead of a growing queue), a body size limit (413) and a tracing span
//! per request. `/-/healthz`, `/-/routes` and `/-/metrics` (Prometheus,
//! Ray Serve's metric names) answer from the proxy itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, FromRef, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower::ServiceBuilder;

use crate::config::HttpOptions;
use crate::error::Error;
use crate::http::{HttpRequest, HttpResponse};
use crate::metrics::ServeMetrics;
use crate::replica::streams::{self, Chunk};
use crate::replica::ReplicaHandle;
use crate::router::{Hub, SlotGuard};

/// What the proxy's handlers share.
#[derive(Clone)]
struct Proxy {
    hub: Arc<Hub>,
    metrics: Arc<ServeMetrics>,
}

impl FromRef<Proxy> for Arc<Hub> {
    fn from_ref(p: &Proxy) -> Arc<Hub> {
        p.hub.clone()
    }
}

/// The proxy's axum app.
pub(crate) fn app(hub: Arc<Hub>, opts: &HttpOptions) -> Router {
    let timeout = Duration::from_secs_f64(opts.request_timeout_s.max(0.001));
    let proxy = Proxy {
        hub,
        metrics: Arc::new(ServeMetrics::new()),
    };
    Router::new()
        .route("/-/healthz", get(|| async { "success" }))
        .route("/-/routes", get(routes))
        .route(
            "/-/metrics",
            get(|State(p): State<Proxy>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    p.metrics.render(),
                )
            }),
        )
        .fallback(ingress)
        .with_state(proxy)
        .layer(DefaultBodyLimit::max(opts.max_body_bytes))
        .layer(
            ServiceBuilder::new()
                .layer(tower_http::trace::TraceLayer::new_for_http())
                .layer(HandleErrorLayer::new(middleware_error))
                .load_shed()
                .concurrency_limit(opts.max_concurrent_requests.max(1))
                .timeout(timeout),
        )
}

/// Turns the middleware's errors into responses.
async fn middleware_error(e: tower::BoxError) -> Response {
    if e.is::<tower::timeout::error::Elapsed>() {
        (StatusCode::REQUEST_TIMEOUT, "the request timed out\n").into_response()
    } else if e.is::<tower::load_shed::error::Overloaded>() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "1")],
            "the server is at its limit of concurrent requests; retry later\n",
        )
            .into_response()
    } else {
        // The middleware's own failure: its text stays in the log.
        to_response(HttpResponse::internal(&format_args!("in the proxy's middleware: {e}")))
    }
}

/// `/-/routes`: route prefix -> application.
async fn routes(State(hub): State<Arc<Hub>>) -> Response {
    let t = hub.table();
    let map: std::collections::BTreeMap<&str, &str> = t
        .apps
        .iter()
        .map(|(name, prefix, _)| (prefix.as_str(), name.as_str()))
        .collect();
    axum::Json(map).into_response()
}

/// Sends a request to its application's ingress and counts it.
async fn ingress(State(p): State<Proxy>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let start = Instant::now();
    let table = p.hub.table();
    let (app, route) = match table.app_for(uri.path()) {
        Some((name, _)) => {
            let prefix = table
                .apps
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, prefix, _)| prefix.clone())
                .unwrap_or_default();
            (name.to_string(), prefix)
        }
        None => (String::new(), String::new()),
    };
    let m = method.to_string();
    let resp = send(p.hub, method, uri, headers, body).await;
    p.metrics
        .observe(&route, &app, &m, resp.status().as_u16(), start.elapsed());
    resp
}

async fn send(hub: Arc<Hub>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let key = match hub.table().app_for(&path) {
        Some((_, key)) => key.to_string(),
        None => {
            return to_response(HttpResponse::from_error(&Error::NotFound(format!(
                "no application serves path `{path}` (see /-/routes)"
            ))))
        }
    };
    let req = HttpRequest {
        method: method.as_str().to_string(),
        path,
        query: uri.query().unwrap_or("").to_string(),
        headers: headers
            .iter()
            .filter_map(|(k, v)| {
                let v = v.to_str().ok()?;
                // The dashboard's login session is the cluster's, not the
                // application's: user code never sees it.
                let v = if k == axum::http::header::COOKIE {
                    rayforge::http::without_session_cookie(v)?
                } else {
                    v.to_string()
                };
                Some((k.as_str().to_string(), v))
            })
            .collect(),
        body: body.to_vec(),
    };
    let router = hub.router(&key);
    let r = router
        .send_holding(|h, request| {
            let req = req.clone();
            async move { h.http(req, request).await }
        })
        .await;
    match r {
        Ok((resp, replica, slot)) => match stream_id(&resp) {
            // The replica's slot stays taken until the body ends.
            Some(id) => streamed(resp, replica, id, slot),
            None => to_response(resp),
        },
        Err(e) => {
            tracing::debug!(deployment = %key, "request failed: {e}");
            to_response(HttpResponse::from_error(&e))
        }
    }
}

/// The id of the stream a replica holds for this response's body, if any.
fn stream_id(r: &HttpResponse) -> Option<u64> {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(streams::HEADER))
        .and_then(|(_, v)| v.parse().ok())
}

/// Closes a replica's stream when the client goes away before its end,
/// and holds the replica's slot until then.
struct CloseOnDrop {
    replica: ReplicaHandle,
    id: u64,
    done: bool,
    _slot: SlotGuard,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if !self.done {
            // The reply is not needed: fire and forget.
            let _ = self.replica.close_stream(self.id);
        }
    }
}

/// A response whose body is pulled from the replica chunk by chunk.
fn streamed(mut head: HttpResponse, replica: ReplicaHandle, id: u64, slot: SlotGuard) -> Response {
    head.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(streams::HEADER));
    let guard = CloseOnDrop {
        replica,
        id,
        done: false,
        _slot: slot,
    };
    let body = futures::stream::unfold(Some(guard), |guard| async move {
        let mut guard = guard?;
        match guard.replica.next_chunks(guard.id).await {
            Ok(Chunk::Data(b)) => Some((Ok::<_, std::io::Error>(Bytes::from(b)), Some(guard))),
            Ok(Chunk::End) => {
                guard.done = true;
                None
            }
            Ok(Chunk::Failed(e)) => {
                guard.done = true;
                tracing::debug!("a response stream failed: {e}");
                Some((Err(std::io::Error::other(e.to_string())), None))
            }
            Err(e) => {
                guard.done = true;
                Some((Err(std::io::Error::other(e.to_string())), None))
            }
        }
    });
    let mut resp = to_response(head);
    *resp.body_mut() = axum::body::Body::from_stream(body);
    resp
}

fn to_response(r: HttpResponse) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, r.body).into_response();
    for (k, v) in r.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_log::{capture, error_id};

    #[test]
    fn a_middleware_failure_is_a_500_with_only_an_error_id() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let e: tower::BoxError = "the inner service failed: connection to 10.0.0.7:6379 refused".into();
        let (resp, log) = capture(|| rt.block_on(middleware_error(e)));
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = rt.block_on(axum::body::to_bytes(resp.into_body(), 1 << 20)).unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains("10.0.0.7") && !body.contains("refused"), "{body}");
        let id = error_id(&body).unwrap_or_else(|| panic!("no error id in {body:?}"));
        assert!(
            log.contains(&format!("error_id={id}")) && log.contains("connection to 10.0.0.7:6379 refused"),
            "{log}"
        );
    }
}
