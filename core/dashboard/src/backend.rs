//! The dashboard's clients of the head (gRPC) and of the jobs API (HTTP)
//! are blocking; they live on a thread of their own, and each request
//! hands it a closure and awaits the answer. The queue to that thread is
//! bounded: past [`QUEUE`] waiting requests, more get `503` at once
//! instead of piling up behind a slow head.

use std::sync::mpsc;

use axum::http::StatusCode;
use rayforge::cluster::HeadClient;
use rayforge::http::HeadHttp;
use rayforge::jobs::JobClient;

use crate::ApiError;

type Job = Box<dyn FnOnce(&mut Clients) + Send>;

/// Requests that may wait for the client thread.
pub(crate) const QUEUE: usize = 256;

/// The clients, connected on first use and again after a failed call.
struct Clients {
    head: HeadHttp,
    client: Option<HeadClient>,
    jobs: Option<JobClient>,
}

impl Clients {
    fn head(&mut self) -> rayforge::Result<&mut HeadClient> {
        if self.client.is_none() {
            self.client = Some(HeadClient::connect(&self.head.address, Some(&self.head.token))?);
        }
        // The branch above filled it.
        self.client
            .as_mut()
            .ok_or_else(|| rayforge::Error::Internal("no head client".into()))
    }

    fn jobs(&mut self) -> rayforge::Result<&JobClient> {
        if self.jobs.is_none() {
            self.jobs = Some(JobClient::connect(&self.head.http_address, Some(&self.head.token))?);
        }
        self.jobs
            .as_ref()
            .ok_or_else(|| rayforge::Error::Internal("no jobs client".into()))
    }
}

/// The thread holding the clients.
pub(crate) struct Backend {
    tx: std::sync::Mutex<mpsc::SyncSender<Job>>,
}

fn gone() -> ApiError {
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the dashboard's client thread stopped".into(),
    )
}

impl Backend {
    pub(crate) fn start(head: HeadHttp) -> Backend {
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("rayforge-dashboard".into())
            .spawn(move || {
                let mut c = Clients {
                    head,
                    client: None,
                    jobs: None,
                };
                while let Ok(job) = rx.recv() {
                    job(&mut c);
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the dashboard's client thread: {e}");
        }
        Backend {
            tx: std::sync::Mutex::new(tx),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Clients) -> rayforge::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |c| {
            let r = f(c);
            if matches!(r, Err(rayforge::Error::Io { .. })) {
                // Reconnect next time: the head may have restarted.
                c.client = None;
                c.jobs = None;
            }
            let _ = tx.send(r);
        });
        match self.tx.lock().map_err(|_| gone())?.try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                return Err(ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the dashboard is busy ({QUEUE} requests wait for the head); try again"),
                ))
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(gone()),
        }
        Ok(rx.await.map_err(|_| gone())??)
    }

    pub(crate) async fn head<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut HeadClient) -> rayforge::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.run(move |c| f(c.head()?)).await
    }

    pub(crate) async fn jobs<T: Send + 'static>(
        &self,
        f: impl FnOnce(&JobClient) -> rayforge::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.run(move |c| f(c.jobs()?)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// With the client thread stuck, the queue fills and the next request
    /// is refused at once (503), not queued without end.
    #[test]
    fn a_full_queue_refuses_at_once() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let b = Backend::start(HeadHttp {
                address: "127.0.0.1:1".into(),
                token: "t".repeat(32),
                http_address: "http://127.0.0.1:1".into(),
            });
            let (release, stuck) = std::sync::mpsc::channel::<()>();
            let (started_tx, started) = std::sync::mpsc::channel::<()>();
            let first = b.run(move |_| {
                let _ = started_tx.send(());
                let _ = stuck.recv();
                Ok(7)
            });
            let mut first = Box::pin(first);
            assert!((&mut first).now_or_never().is_none());
            started.recv().unwrap();
            // The thread is busy: each of these waits in the queue (its
            // first poll queues it; its answer is not awaited).
            for _ in 0..QUEUE {
                assert!(
                    b.run(|_| Ok(0)).now_or_never().is_none(),
                    "refused before the queue was full"
                );
            }
            let refused = b.run(|_| Ok(0)).now_or_never().expect("answered at once").unwrap_err();
            assert_eq!(refused.0, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.1);
            release.send(()).unwrap();
            assert_eq!(first.await.unwrap(), 7);
        });
    }
}
