//! The dashboard's clients of the head (gRPC) and of the jobs API (HTTP)
//! are blocking; they live on a thread of their own, and each request
//! hands it a closure and awaits the answer.

use std::sync::mpsc;

use axum::http::StatusCode;
use rayforge::cluster::HeadClient;
use rayforge::http::HeadHttp;
use rayforge::jobs::JobClient;

use crate::ApiError;

type Job = Box<dyn FnOnce(&mut Clients) + Send>;

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
    tx: std::sync::Mutex<mpsc::Sender<Job>>,
}

fn gone() -> ApiError {
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the dashboard's client thread stopped".into(),
    )
}

impl Backend {
    pub(crate) fn start(head: HeadHttp) -> Backend {
        let (tx, rx) = mpsc::channel::<Job>();
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
        self.tx.lock().map_err(|_| gone())?.send(job).map_err(|_| gone())?;
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
