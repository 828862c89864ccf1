//! Requests and responses as they cross from the HTTP proxy to a replica,
//! and the conversions a deployment's request and response types go through.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// An HTTP request as a replica sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The full path (`/app/x`), route prefix included, as in Ray Serve.
    pub path: String,
    /// The query string without `?` (empty when none).
    pub query: String,
    /// Headers, lower-case names.
    pub headers: BTreeMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// Decodes the body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| Error::BadRequest(format!("malformed JSON body: {e}")))
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str> {
        std::str::from_utf8(&self.body).map_err(|_| Error::BadRequest("the body is not UTF-8 text".into()))
    }

    /// A query parameter's value (`?name=value`), undecoded.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// An HTTP response from a replica.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Headers to send.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response with this status and a plain-text body.
    pub fn text(status: u16, body: impl Into<String>) -> HttpResponse {
        HttpResponse {
            status,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: body.into().into_bytes(),
        }
    }

    /// A 200 response with a JSON body.
    pub fn json<T: Serialize>(value: &T) -> HttpResponse {
        match serde_json::to_vec(value) {
            Ok(body) => HttpResponse {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body,
            },
            Err(e) => HttpResponse::text(500, format!("the response could not be encoded as JSON: {e}")),
        }
    }

    /// The response for an error: 4xx for what the client sent, 503 for
    /// overload (with `Retry-After`), 500 with the message a deployment's
    /// own code gave ([`Error::User`]). Any other failure — a handler's
    /// panic, the runtime's, a file's — is a 500 that says only an error
    /// id: its text (paths, hosts, internals) goes to the log, not to the
    /// client.
    pub fn from_error(e: &Error) -> HttpResponse {
        let status = match e {
            Error::BadRequest(_) => 400,
            Error::NotFound(_) => 404,
            Error::Overloaded(_) | Error::Unavailable(_) => 503,
            _ => 500,
        };
        if status == 500 && !matches!(e, Error::User { .. }) {
            return HttpResponse::internal(e);
        }
        let mut r = HttpResponse::text(status, e.to_string());
        if status == 503 {
            r.headers.push(("retry-after".into(), "1".into()));
        }
        r
    }

    /// A 500 for a failure inside the server that says only an error id
    /// (`internal server error (error 7 in the server's log)`); `what`
    /// went wrong is logged at error level under that id (`error_id=7`),
    /// for whoever runs the server to find.
    pub(crate) fn internal(what: &dyn std::fmt::Display) -> HttpResponse {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(error_id = id, "a request failed inside the server: {what}");
        HttpResponse::text(500, format!("internal server error (error {id} in the server's log)"))
    }
}

/// JSON in and out: as a deployment's `Request` the body is decoded as JSON
/// (400 when malformed); as its `Response` the value is sent as JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Json<T>(pub T);

/// Builds a deployment's request from an HTTP request (at the ingress).
pub trait FromHttp: Sized {
    /// Decodes `req`; a [`Error::BadRequest`] becomes a 400.
    fn from_http(req: HttpRequest) -> Result<Self>;
}

/// Turns a deployment's response into an HTTP response (at the ingress).
pub trait IntoHttp {
    /// Encodes `self`.
    fn into_http(self) -> HttpResponse;

    /// A whole response or a stream; only [`Streaming`] streams.
    fn into_reply(self) -> HttpReply
    where
        Self: Sized,
    {
        HttpReply::Full(self.into_http())
    }
}

/// What a handler's response becomes at the ingress.
pub enum HttpReply {
    /// A whole response.
    Full(HttpResponse),
    /// A response whose body is sent as it is produced.
    Stream(Streaming),
}

/// A streamed response: the status and headers go out at once and the body
/// in chunks as the stream yields them (HTTP chunked transfer encoding), as
/// Ray Serve's `StreamingResponse`. HTTP only: a handle call to a
/// deployment answering `Streaming` fails with a clear error.
///
/// ```
/// use rayforge_serve::Streaming;
///
/// let tokens = futures::stream::iter((0..3).map(|i| Ok(format!("token {i}\n").into_bytes())));
/// let s = Streaming::new(tokens).header("content-type", "text/plain");
/// assert_eq!(s.status(), 200);
/// ```
pub struct Streaming {
    status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: futures::stream::BoxStream<'static, Result<Vec<u8>>>,
}

impl Streaming {
    /// A 200 response streaming `body`; an `Err` item ends the response early.
    pub fn new(body: impl futures::Stream<Item = Result<Vec<u8>>> + Send + 'static) -> Streaming {
        Streaming {
            status: 200,
            headers: Vec::new(),
            body: Box::pin(body),
        }
    }

    /// Sets the status code.
    pub fn status_code(mut self, status: u16) -> Streaming {
        self.status = status;
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Streaming {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The head of the response (the body travels separately).
    pub(crate) fn head(&self) -> HttpResponse {
        HttpResponse {
            status: self.status,
            headers: self.headers.clone(),
            body: Vec::new(),
        }
    }
}

impl std::fmt::Debug for Streaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl IntoHttp for Streaming {
    fn into_http(self) -> HttpResponse {
        HttpResponse::text(500, "a streaming response cannot be sent whole")
    }

    fn into_reply(self) -> HttpReply {
        HttpReply::Stream(self)
    }
}

const STREAM_OVER_HANDLE: &str = "a streaming response goes over HTTP only, not through a deployment handle";

impl Serialize for Streaming {
    fn serialize<S: serde::Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(STREAM_OVER_HANDLE))
    }
}

impl<'de> Deserialize<'de> for Streaming {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> std::result::Result<Self, D::Error> {
        Err(serde::de::Error::custom(STREAM_OVER_HANDLE))
    }
}

impl FromHttp for HttpRequest {
    fn from_http(req: HttpRequest) -> Result<Self> {
        Ok(req)
    }
}

impl IntoHttp for HttpResponse {
    fn into_http(self) -> HttpResponse {
        self
    }
}

impl<T: DeserializeOwned> FromHttp for Json<T> {
    fn from_http(req: HttpRequest) -> Result<Self> {
        req.json().map(Json)
    }
}

impl<T: Serialize> IntoHttp for Json<T> {
    fn into_http(self) -> HttpResponse {
        HttpResponse::json(&self.0)
    }
}

impl FromHttp for String {
    fn from_http(req: HttpRequest) -> Result<Self> {
        req.text().map(str::to_string)
    }
}

impl IntoHttp for String {
    fn into_http(self) -> HttpResponse {
        HttpResponse::text(200, self)
    }
}

impl FromHttp for Vec<u8> {
    fn from_http(req: HttpRequest) -> Result<Self> {
        Ok(req.body)
    }
}

impl IntoHttp for Vec<u8> {
    fn into_http(self) -> HttpResponse {
        HttpResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/octet-stream".into())],
            body: self,
        }
    }
}

impl FromHttp for () {
    fn from_http(_: HttpRequest) -> Result<Self> {
        Ok(())
    }
}

impl IntoHttp for () {
    fn into_http(self) -> HttpResponse {
        HttpResponse::text(200, "")
    }
}

/// Numbers and booleans: the body is their JSON text.
macro_rules! json_scalar {
    ($($t:ty),*) => {$(
        impl FromHttp for $t {
            fn from_http(req: HttpRequest) -> Result<Self> {
                req.json()
            }
        }
        impl IntoHttp for $t {
            fn into_http(self) -> HttpResponse {
                HttpResponse::text(200, self.to_string())
            }
        }
    )*};
}
json_scalar!(i32, i64, u32, u64, f32, f64, bool);

/// What a test's code logs, read back.
#[cfg(test)]
pub(crate) mod test_log {
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Sink(Arc<parking_lot::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs `f` on this thread with a subscriber of its own; returns its
    /// result and what it logged (plain text, no colours).
    pub(crate) fn capture<R>(f: impl FnOnce() -> R) -> (R, String) {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let r = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8_lossy(&sink.0.lock()).into_owned();
        (r, text)
    }

    /// The id an internal-error body names (`... (error 7 in the server's log)`).
    pub(crate) fn error_id(body: &str) -> Option<u64> {
        body.split("(error ").nth(1)?.split(' ').next()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::test_log::{capture, error_id};
    use super::*;

    #[test]
    fn internal_failures_are_500s_without_their_text() {
        let e = Error::Io {
            context: "reading /srv/secret/model.pt".into(),
            message: "permission denied".into(),
        };
        let (r, log) = capture(|| HttpResponse::from_error(&e));
        let body = String::from_utf8(r.body).unwrap();
        assert_eq!(r.status, 500);
        assert!(
            !body.contains("secret") && body.contains("internal server error"),
            "{body}"
        );
        // The text is in the log, under the id the client was given.
        let id = error_id(&body).unwrap_or_else(|| panic!("no error id in {body:?}"));
        assert!(
            log.contains(&format!("error_id={id}")) && log.contains("/srv/secret/model.pt"),
            "{log}"
        );
        let user = Error::User {
            deployment: "app/D".into(),
            message: "the input was odd".into(),
        };
        let body = String::from_utf8(HttpResponse::from_error(&user).body).unwrap();
        assert!(body.contains("the input was odd"), "{body}");
    }

    #[test]
    fn a_handlers_panic_is_a_500_with_only_an_error_id() {
        let e = Error::Panicked {
            deployment: "app/D".into(),
            message: "index out of bounds at /home/me/src/model.rs:7".into(),
        };
        let (r, log) = capture(|| HttpResponse::from_error(&e));
        let body = String::from_utf8(r.body).unwrap();
        assert_eq!(r.status, 500);
        assert!(!body.contains("out of bounds") && !body.contains("/home/me"), "{body}");
        let id = error_id(&body).unwrap_or_else(|| panic!("no error id in {body:?}"));
        assert!(
            log.contains(&format!("error_id={id}")) && log.contains("index out of bounds at /home/me/src/model.rs:7"),
            "{log}"
        );
        // Each failure has its own id.
        let again = String::from_utf8(HttpResponse::from_error(&e).body).unwrap();
        assert_ne!(error_id(&again), Some(id), "{again}");
    }

    fn req(body: &str) -> HttpRequest {
        HttpRequest {
            method: "POST".into(),
            path: "/".into(),
            query: "a=1&b=two".into(),
            body: body.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn json_bodies_decode_and_malformed_ones_are_bad_requests() {
        let Json(v): Json<Vec<i64>> = FromHttp::from_http(req("[1,2,3]")).unwrap();
        assert_eq!(v, vec![1, 2, 3]);
        let e = <Json<Vec<i64>>>::from_http(req("[1,2")).unwrap_err();
        assert!(
            matches!(e, Error::BadRequest(ref m) if m.contains("malformed JSON")),
            "{e}"
        );
        assert_eq!(HttpResponse::from_error(&e).status, 400);
        assert_eq!(i64::from_http(req("41")).unwrap(), 41);
        assert_eq!(req("").query_param("b"), Some("two"));
    }

    #[test]
    fn overload_is_a_503_with_retry_after() {
        let r = HttpResponse::from_error(&Error::Overloaded("d".into()));
        assert_eq!(r.status, 503);
        assert!(r.headers.iter().any(|(k, v)| k == "retry-after" && v == "1"));
        assert_eq!(Json(vec![1, 2]).into_http().body, b"[1,2]");
    }
}
