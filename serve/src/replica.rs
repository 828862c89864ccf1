//! A replica: one actor of the core runtime running one instance of a
//! deployment. The actor type is generic over nothing: the deployment's
//! concrete type travels as a typed [`FnRef`] to a builder monomorphized for it,
//! and the instance sits behind the object-safe [`Erased`] trait.
//!
//! Requests run concurrently (`&self` methods of an async actor take a read
//! lock); `reconfigure` and `stop` take `&mut self`, so they wait for the
//! requests in flight and hold new ones back until they are done.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use rayforge::{FnRef, Json};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::http::{FromHttp, HttpReply, HttpRequest, HttpResponse, IntoHttp};
use crate::{Context, Deployment};

/// A deployment instance behind a vtable.
pub(crate) trait Erased: Send + Sync {
    fn http(&self, req: HttpRequest) -> BoxFuture<'_, Result<HttpResponse>>;
    fn call(&self, arg: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>>>;
    fn reconfigure(&mut self, user_config: Option<&serde_json::Value>) -> Result<()>;
    fn check_health(&self) -> Result<()>;
    fn shutdown(&mut self);
}

struct Wrap<D>(D);

impl<D: Deployment> Erased for Wrap<D> {
    fn http(&self, req: HttpRequest) -> BoxFuture<'_, Result<HttpResponse>> {
        Box::pin(async move {
            let r = D::Request::from_http(req)?;
            Ok(match self.0.handle(r).await?.into_reply() {
                HttpReply::Full(mut r) => {
                    // The stream header is the proxy's: one set by the
                    // handler would make the proxy pull another
                    // request's stream.
                    r.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(streams::HEADER));
                    r
                }
                HttpReply::Stream(s) => {
                    let mut head = s.head();
                    let id = streams::open(s.body);
                    head.headers.push((streams::HEADER.into(), id.to_string()));
                    head
                }
            })
        })
    }

    fn call(&self, arg: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(async move {
            let r: D::Request = decode(&arg)?;
            encode(&self.0.handle(r).await?)
        })
    }

    fn reconfigure(&mut self, user_config: Option<&serde_json::Value>) -> Result<()> {
        self.0.reconfigure(user_config_of::<D::Config>(user_config)?)
    }

    fn check_health(&self) -> Result<()> {
        self.0.check_health()
    }

    fn shutdown(&mut self) {
        self.0.shutdown()
    }
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    bincode::serialize(v).map_err(|e| Error::BadRequest(format!("encoding a value: {e}")))
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    bincode::deserialize(b).map_err(|e| Error::BadRequest(format!("decoding a value: {e}")))
}

/// The deployment's typed user config (its default when none is given).
fn user_config_of<C: DeserializeOwned + Default>(v: Option<&serde_json::Value>) -> Result<C> {
    match v {
        None => Ok(C::default()),
        Some(v) => {
            serde_json::from_value(v.clone()).map_err(|e| Error::Invalid(format!("user_config does not fit: {e}")))
        }
    }
}

/// Builds an instance: `(context, user config) -> instance`.
pub(crate) type BuildFn = fn(&Context, Option<serde_json::Value>) -> Result<Box<dyn Erased>>;

pub(crate) fn t_build<D: Deployment>(ctx: &Context, cfg: Option<serde_json::Value>) -> Result<Box<dyn Erased>> {
    let config = user_config_of::<D::Config>(cfg.as_ref())?;
    Ok(Box::new(Wrap(D::new(ctx, config)?)))
}

/// What a replica runs and as whom (crosses to the replica's process).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ReplicaSpec {
    pub(crate) build: FnRef<BuildFn>,
    pub(crate) app: String,
    pub(crate) deployment: String,
    pub(crate) replica: String,
    /// The user config (self-describing: it travels as JSON).
    pub(crate) user_config: Option<Json<serde_json::Value>>,
}

/// A replica's health and load.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ReplicaHealth {
    /// Requests running now.
    pub(crate) ongoing: usize,
    /// Requests finished so far.
    pub(crate) served: u64,
    /// Why the deployment's own health check failed, if it did.
    pub(crate) error: Option<Error>,
}

/// One replica of a deployment.
#[rayforge::actor]
pub(crate) struct Replica {
    inner: std::result::Result<Box<dyn Erased>, Error>,
    name: String,
    ongoing: AtomicUsize,
    served: AtomicU64,
    stopped: AtomicBool,
}

/// Counts a request as ongoing until dropped.
struct Ongoing<'a>(&'a Replica);

impl Drop for Ongoing<'_> {
    fn drop(&mut self) {
        self.0.ongoing.fetch_sub(1, Ordering::Relaxed);
        self.0.served.fetch_add(1, Ordering::Relaxed);
    }
}

#[rayforge::actor]
impl Replica {
    fn new(spec: ReplicaSpec) -> Self {
        let ctx = Context {
            app: spec.app.clone(),
            deployment: spec.deployment.clone(),
            replica: spec.replica.clone(),
        };
        let name = format!("{}/{}", spec.app, spec.deployment);
        let inner = (|| -> Result<Box<dyn Erased>> {
            let cfg = spec.user_config.map(|c| c.0);
            let build = spec.build.get()?;
            match std::panic::catch_unwind(AssertUnwindSafe(|| build(&ctx, cfg))) {
                Ok(r) => r,
                Err(p) => Err(Error::User {
                    deployment: name.clone(),
                    message: format!("its constructor panicked: {}", panic_message(&p)),
                }),
            }
        })()
        .map_err(|e| match e {
            Error::User { .. } => e,
            e => Error::User {
                deployment: name.clone(),
                message: format!("its constructor failed: {e}"),
            },
        });
        if let Err(e) = &inner {
            tracing::warn!(replica = %spec.replica, "replica failed to start: {e}");
        }
        Replica {
            inner,
            name,
            ongoing: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        }
    }

    /// Whether the constructor succeeded (its error if not).
    async fn ready(&self) -> Result<()> {
        self.inner.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// Serves an HTTP request (ingress deployments). A failure comes back
    /// as the error itself: the proxy makes the response (and logs what the
    /// client must not see) in one place. `request` is the caller's id for
    /// it, for [`Replica::cancel`].
    async fn http(&self, req: HttpRequest, request: u64) -> Result<HttpResponse> {
        cancels::cancellable(request, &self.name, self.run(|d| d.http(req))).await
    }

    /// Serves a handle call: the argument and result are bincode.
    async fn call(&self, arg: Vec<u8>, request: u64) -> Result<Vec<u8>> {
        cancels::cancellable(request, &self.name, self.run(|d| d.call(arg))).await
    }

    /// Cancels the request with the caller's id `request`, which its caller
    /// abandoned (the proxy's timeout, a client gone, a handle call's future
    /// dropped): the handler's future is dropped at its next `.await`, so
    /// its slot and its work end there. A handler that never yields (a
    /// blocking loop) runs to its end; its reply is dropped.
    async fn cancel(&self, request: u64) {
        cancels::cancel(request)
    }

    /// Applies a new user config in place (after the requests in flight).
    async fn reconfigure(&mut self, user_config: Option<Json<serde_json::Value>>) -> Result<()> {
        let inner = self.inner.as_mut().map_err(|e| e.clone())?;
        inner.reconfigure(user_config.map(|c| c.0).as_ref())
    }

    /// The next chunks of a streamed response: waits for one, then takes
    /// whatever else is ready (up to 64 KiB).
    async fn next_chunks(&self, stream: u64) -> streams::Chunk {
        streams::next(stream).await
    }

    /// Drops a streamed response its client went away from.
    async fn close_stream(&self, stream: u64) {
        streams::close(stream)
    }

    /// Load and the deployment's own health check.
    async fn health(&self) -> ReplicaHealth {
        let error = match &self.inner {
            Err(e) => Some(e.clone()),
            Ok(i) => match std::panic::catch_unwind(AssertUnwindSafe(|| i.check_health())) {
                Ok(r) => r.err().map(|e| match e {
                    Error::User { message, .. } => Error::User {
                        deployment: self.name.clone(),
                        message,
                    },
                    e => e,
                }),
                Err(p) => Some(Error::User {
                    deployment: self.name.clone(),
                    message: format!("health check panicked: {}", panic_message(&p)),
                }),
            },
        };
        ReplicaHealth {
            // Streamed responses still being pulled count as requests.
            ongoing: self.ongoing.load(Ordering::Relaxed) + streams::open_count(),
            served: self.served.load(Ordering::Relaxed),
            error,
        }
    }

    /// Takes no new request, then waits until the streamed responses
    /// still being pulled have ended (they need `&self` calls, which
    /// [`Replica::stop`] would hold back). The caller bounds the wait with
    /// the graceful timeout, then calls `stop`.
    async fn drain(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        while streams::open_count() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs the deployment's shutdown hook once the requests in flight are
    /// done (`&mut self` waits for them: they hold the read side of the
    /// actor's lock); the caller bounds the wait with the graceful timeout.
    /// Returns the requests still counted as running (0 when drained).
    async fn stop(&mut self) -> usize {
        self.stopped.store(true, Ordering::Relaxed);
        if let Ok(i) = self.inner.as_mut() {
            i.shutdown();
        }
        self.ongoing.load(Ordering::Relaxed)
    }
}

impl Replica {
    async fn run<'a, T>(&'a self, f: impl FnOnce(&'a dyn Erased) -> BoxFuture<'a, Result<T>>) -> Result<T> {
        let inner = self.inner.as_ref().map_err(|e| e.clone())?;
        if self.stopped.load(Ordering::Relaxed) {
            return Err(Error::Unavailable(self.name.clone()));
        }
        self.ongoing.fetch_add(1, Ordering::Relaxed);
        let _g = Ongoing(self);
        match AssertUnwindSafe(f(inner.as_ref())).catch_unwind().await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Error::User { message, .. })) => Err(Error::User {
                deployment: self.name.clone(),
                message,
            }),
            Ok(Err(e)) => Err(e),
            Err(p) => Err(Error::Panicked {
                deployment: self.name.clone(),
                message: panic_message(&p),
            }),
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Requests in flight by their caller's id, so that an abandoned one can be
/// cancelled (a replica is one process: the maps are the process's).
pub(crate) mod cancels {
    use std::collections::{HashMap, VecDeque};
    use std::future::Future;
    use std::sync::LazyLock;
    use std::time::{Duration, Instant};

    use futures::future::{AbortHandle, Abortable};

    use crate::error::{Error, Result};

    static RUNNING: LazyLock<parking_lot::Mutex<HashMap<u64, AbortHandle>>> = LazyLock::new(Default::default);
    /// Cancels that came before their request (the two calls race): the
    /// request is refused when it arrives. Kept a minute, at most 4096.
    static EARLY: LazyLock<parking_lot::Mutex<VecDeque<(u64, Instant)>>> = LazyLock::new(Default::default);
    const EARLY_KEEP: Duration = Duration::from_secs(60);
    const EARLY_MAX: usize = 4096;

    /// Forgets a request when its future ends or is dropped.
    struct Running(u64);

    impl Drop for Running {
        fn drop(&mut self) {
            RUNNING.lock().remove(&self.0);
        }
    }

    /// Runs `work` unless the request was cancelled, until it ends or is
    /// cancelled.
    pub(crate) async fn cancellable<T>(request: u64, name: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
        let cancelled = || Error::Cancelled(name.to_string());
        {
            let mut early = EARLY.lock();
            if let Some(pos) = early.iter().position(|(id, _)| *id == request) {
                early.remove(pos);
                return Err(cancelled());
            }
        }
        let (handle, registration) = AbortHandle::new_pair();
        RUNNING.lock().insert(request, handle);
        let _running = Running(request);
        Abortable::new(work, registration).await.unwrap_or_else(|_| {
            tracing::debug!(request, "request cancelled by its caller");
            Err(cancelled())
        })
    }

    /// Cancels a request running here, or refuses it if it has not come yet.
    pub(crate) fn cancel(request: u64) {
        if let Some(h) = RUNNING.lock().remove(&request) {
            h.abort();
            return;
        }
        let mut early = EARLY.lock();
        let now = Instant::now();
        while early
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) > EARLY_KEEP || early.len() >= EARLY_MAX)
        {
            early.pop_front();
        }
        early.push_back((request, now));
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[tokio::test]
        async fn a_cancelled_request_stops_at_its_next_await_and_an_early_cancel_refuses_it() {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let running = tokio::spawn(cancellable(11, "app/D", async move {
                let _ = rx.await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(1)
            }));
            while !RUNNING.lock().contains_key(&11) {
                tokio::task::yield_now().await;
            }
            let _ = tx.send(());
            cancel(11);
            let r = tokio::time::timeout(Duration::from_secs(10), running)
                .await
                .unwrap()
                .unwrap();
            assert!(matches!(&r, Err(Error::Cancelled(d)) if d == "app/D"), "{r:?}");
            assert!(!RUNNING.lock().contains_key(&11));
            // A cancel that overtakes its request: the request never runs.
            cancel(12);
            let ran = std::sync::atomic::AtomicBool::new(false);
            let r = cancellable(12, "app/D", async {
                ran.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(2)
            })
            .await;
            assert!(matches!(r, Err(Error::Cancelled(_))) && !ran.load(std::sync::atomic::Ordering::SeqCst));
            // Finished requests are forgotten; a request not cancelled runs.
            assert_eq!(cancellable(13, "app/D", async { Ok(3) }).await.unwrap(), 3);
            assert!(RUNNING.lock().is_empty());
        }
    }
}

/// How long a stop may take beyond the graceful timeout before the replica
/// is killed regardless.
pub(crate) const STOP_SLACK: Duration = Duration::from_secs(2);

/// Streamed response bodies waiting to be pulled by the proxy, by id.
pub(crate) mod streams {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, LazyLock};

    use futures::stream::BoxStream;
    use futures::{FutureExt, StreamExt};
    use serde::{Deserialize, Serialize};

    use crate::error::{Error, Result};

    /// The response header that carries a stream's id from replica to proxy.
    pub(crate) const HEADER: &str = "x-rayforge-stream";
    const MAX_PULL: usize = 64 << 10;

    struct Open {
        body: futures::stream::Fuse<BoxStream<'static, Result<Vec<u8>>>>,
        /// An error met while taking extra chunks: the next pull reports it.
        failed: Option<Error>,
    }

    type Body = Arc<tokio::sync::Mutex<Open>>;

    static OPEN: LazyLock<parking_lot::Mutex<HashMap<u64, Body>>> = LazyLock::new(Default::default);
    static NEXT: AtomicU64 = AtomicU64::new(1);

    /// What one pull gives.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub(crate) enum Chunk {
        /// More body.
        Data(Vec<u8>),
        /// The end.
        End,
        /// The stream failed (or is unknown).
        Failed(Error),
    }

    pub(crate) fn open(body: BoxStream<'static, Result<Vec<u8>>>) -> u64 {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let open = Open {
            body: body.fuse(),
            failed: None,
        };
        OPEN.lock().insert(id, Arc::new(tokio::sync::Mutex::new(open)));
        id
    }

    pub(crate) fn close(id: u64) {
        OPEN.lock().remove(&id);
    }

    /// Streams still open (being pulled).
    pub(crate) fn open_count() -> usize {
        OPEN.lock().len()
    }

    pub(crate) async fn next(id: u64) -> Chunk {
        let Some(body) = OPEN.lock().get(&id).cloned() else {
            return Chunk::Failed(Error::NotFound(format!("response stream {id}")));
        };
        let mut open = body.lock().await;
        if let Some(e) = open.failed.take() {
            close(id);
            return Chunk::Failed(e);
        }
        let mut out = match open.body.next().await {
            None => {
                close(id);
                return Chunk::End;
            }
            Some(Err(e)) => {
                close(id);
                return Chunk::Failed(e);
            }
            Some(Ok(b)) => b,
        };
        while out.len() < MAX_PULL {
            match open.body.next().now_or_never() {
                Some(Some(Ok(b))) => out.extend_from_slice(&b),
                Some(Some(Err(e))) => {
                    open.failed = Some(e);
                    break;
                }
                // Not ready, or the end (the fused stream says so again next time).
                _ => break,
            }
        }
        Chunk::Data(out)
    }
}
