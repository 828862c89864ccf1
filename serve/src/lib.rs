//! # rayforge-serve
//!
//! HTTP model serving on rayforge, as Ray Serve: a **deployment** is a Rust
//! type with an async handler; its **replicas** are actors of the core
//! runtime (each in a worker process); a **controller** actor keeps the
//! running replicas equal to what was declared (replacing dead ones,
//! autoscaling on ongoing requests, rolling changes one replica at a time,
//! reconfiguring user config in place); an **HTTP proxy** on axum routes
//! requests by path prefix to each application's ingress deployment.
//! Deployments call each other through typed [`DeploymentHandle`]s, and
//! [`Batcher`] gathers concurrent requests into batches.
//!
//! ```no_run
//! use rayforge_serve::{deployment, Application, Context, Deployment, HttpOptions, Json, Result};
//!
//! struct Greeter { greeting: String }
//!
//! #[derive(serde::Deserialize, Default)]
//! struct GreeterConfig { greeting: Option<String> }
//!
//! impl Deployment for Greeter {
//!     type Config = GreeterConfig;          // the live-changeable user config
//!     type Request = Json<String>;          // a JSON string body
//!     type Response = String;               // a text response
//!     fn new(_ctx: &Context, c: GreeterConfig) -> Result<Self> {
//!         Ok(Greeter { greeting: c.greeting.unwrap_or_else(|| "hello".into()) })
//!     }
//!     async fn handle(&self, Json(name): Json<String>) -> Result<String> {
//!         Ok(format!("{} {name}", self.greeting))
//!     }
//! }
//!
//! #[rayforge::main]
//! fn main() -> Result<()> {
//!     rayforge::init(rayforge::Config::default())?;
//!     let app = Application::new("greet")
//!         .route_prefix("/greet")
//!         .ingress(deployment::<Greeter>("Greeter").num_replicas(2));
//!     let serve = rayforge_serve::start(vec![app], HttpOptions::default())?;
//!     serve.wait_healthy(std::time::Duration::from_secs(30))?;
//!     // curl -d '"world"' http://127.0.0.1:8000/greet  ->  hello world
//!     serve.wait_for_shutdown(); // Ctrl-C, or `serve shutdown`
//!     serve.shutdown()
//! }
//! ```
//!
//! The `serve` binary runs applications declared in a `serve.toml` (see
//! [`ServeConfig`]) from deployments compiled into a program: a program
//! makes its own with [`cli::main`] and a [`Registry`].

mod batching;
pub mod cli;
pub mod client;
mod config;
mod controller;
mod error;
mod http;
mod metrics;
mod proxy;
mod replica;
mod router;
mod server;
#[cfg(feature = "torch")]
pub mod torch;

use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use batching::Batcher;
pub use config::{
    AppConfig, Autoscaling, DeploymentConfig, DeploymentEntry, HttpOptions, ServeConfig, DEFAULT_ADMIN_PORT,
};
pub use controller::{DeploymentState, DeploymentStatus, ReplicaState, ReplicaStatus, ServeStatus};
pub use error::{Error, Result};
pub use http::{FromHttp, HttpReply, HttpRequest, HttpResponse, IntoHttp, Json, Streaming};
pub use server::{admin_token_path, start, Serve};

use controller::{AppDecl, DeploymentDecl};
use replica::{decode, encode};
use router::{Hub, Router};

/// A deployment: a type whose instances (replicas) serve requests.
///
/// `handle` runs concurrently on one replica (up to the deployment's
/// `max_ongoing_requests`); `reconfigure` runs alone, after the requests in
/// flight, whenever the user config changes.
pub trait Deployment: Sized + Send + Sync + 'static {
    /// The user config (`user_config` in `serve.toml`, JSON); `Default`
    /// when none is given.
    type Config: DeserializeOwned + Default + Send;
    /// What a request carries: decoded from HTTP at the ingress
    /// ([`Json<T>`], `String`, `Vec<u8>`, numbers, or the raw [`HttpRequest`]),
    /// or sent as is through a [`DeploymentHandle`].
    type Request: FromHttp + Serialize + DeserializeOwned + Send + 'static;
    /// What a response carries (see `Request`).
    type Response: IntoHttp + Serialize + DeserializeOwned + Send + 'static;

    /// Builds a replica (load the model here); runs in the replica's process.
    fn new(ctx: &Context, config: Self::Config) -> Result<Self>;

    /// Serves one request.
    fn handle(&self, req: Self::Request) -> impl Future<Output = Result<Self::Response>> + Send;

    /// Applies a changed user config without a restart.
    fn reconfigure(&mut self, config: Self::Config) -> Result<()> {
        let _ = config;
        Ok(())
    }

    /// Says whether the replica is healthy; three failures in a row and the
    /// controller replaces it.
    fn check_health(&self) -> Result<()> {
        Ok(())
    }

    /// Runs once when the replica stops, after its requests finished.
    fn shutdown(&mut self) {}
}

/// Where a replica runs: its application, deployment and id; makes handles
/// to the application's other deployments.
#[derive(Clone, Debug)]
pub struct Context {
    app: String,
    deployment: String,
    replica: String,
}

impl Context {
    /// The application's name.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The deployment's name.
    pub fn deployment(&self) -> &str {
        &self.deployment
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// A handle to deployment `name` of the same application.
    pub fn handle<D: Deployment>(&self, name: &str) -> DeploymentHandle<D> {
        DeploymentHandle::new(&self.app, name)
    }
}

/// A typed, cloneable way to call a deployment from anywhere in the cluster
/// (another deployment, a task, the driver): requests go to its replicas
/// with the same routing, limits and retries as HTTP requests.
pub struct DeploymentHandle<D> {
    key: String,
    router: Arc<OnceLock<Arc<Router>>>,
    _d: PhantomData<fn() -> D>,
}

impl<D> Clone for DeploymentHandle<D> {
    fn clone(&self) -> Self {
        DeploymentHandle {
            key: self.key.clone(),
            router: self.router.clone(),
            _d: PhantomData,
        }
    }
}

impl<D: Deployment> DeploymentHandle<D> {
    /// A handle to deployment `deployment` of application `app`.
    pub fn new(app: &str, deployment: &str) -> Self {
        DeploymentHandle {
            key: router::key(app, deployment),
            router: Arc::new(OnceLock::new()),
            _d: PhantomData,
        }
    }

    /// Sends `req` to a replica and awaits its response. A replica that dies
    /// under the call is replaced by another for it.
    pub async fn call(&self, req: D::Request) -> Result<D::Response> {
        let router = match self.router.get() {
            Some(r) => r.clone(),
            None => {
                let r = Hub::get().await?.router(&self.key);
                self.router.get_or_init(|| r).clone()
            }
        };
        let arg = encode(&req)?;
        let (reply, _) = router
            .send(|h, request| {
                let arg = arg.clone();
                async move { h.call(arg, request).await }
            })
            .await?;
        decode(&reply)
    }
}

/// A deployment as declared: its type (by a reference to its builder),
/// name and config. Made by [`deployment`].
#[derive(Clone, Debug)]
pub struct DeploymentSpec {
    name: String,
    build: rayforge::FnRef<replica::BuildFn>,
    config: DeploymentConfig,
}

/// Declares deployment `name` running type `D`.
pub fn deployment<D: Deployment>(name: &str) -> DeploymentSpec {
    DeploymentSpec {
        name: name.to_string(),
        build: rayforge::FnRef::new(replica::t_build::<D> as replica::BuildFn),
        config: DeploymentConfig::default(),
    }
}

impl DeploymentSpec {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `n` replicas.
    pub fn num_replicas(mut self, n: usize) -> Self {
        self.config.num_replicas = n;
        self
    }

    /// Scales with load instead of a fixed count.
    pub fn autoscaling(mut self, a: Autoscaling) -> Self {
        self.config.autoscaling = Some(a);
        self
    }

    /// Requests one replica runs at once.
    pub fn max_ongoing_requests(mut self, n: usize) -> Self {
        self.config.max_ongoing_requests = n;
        self
    }

    /// Requests each caller queues before refusing with 503.
    pub fn max_queued_requests(mut self, n: usize) -> Self {
        self.config.max_queued_requests = n;
        self
    }

    /// CPUs per replica.
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.config.num_cpus = n;
        self
    }

    /// GPUs per replica.
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.config.num_gpus = n;
        self
    }

    /// A custom resource per replica.
    pub fn resource(mut self, name: &str, n: f64) -> Self {
        self.config.resources.insert(name.to_string(), n);
        self
    }

    /// The user config given to `Deployment::new` and `reconfigure`.
    pub fn user_config(mut self, v: serde_json::Value) -> Self {
        self.config.user_config = Some(v);
        self
    }

    /// Seconds between health checks.
    pub fn health_check_period_s(mut self, s: f64) -> Self {
        self.config.health_check_period_s = s;
        self
    }

    /// How long a stopping replica may take to finish its requests.
    pub fn graceful_shutdown_timeout_s(mut self, s: f64) -> Self {
        self.config.graceful_shutdown_timeout_s = s;
        self
    }

    /// Replaces the whole config.
    pub fn config(mut self, c: DeploymentConfig) -> Self {
        self.config = c;
        self
    }

    fn decl(&self) -> Result<DeploymentDecl> {
        self.config.validate(&self.name)?;
        Ok(DeploymentDecl {
            name: self.name.clone(),
            build: self.build,
            config: rayforge::Json(self.config.clone()),
        })
    }
}

/// An application: deployments, the one that takes its HTTP requests, and
/// the path prefix it serves.
#[derive(Clone, Debug)]
pub struct Application {
    name: String,
    route_prefix: String,
    ingress: Option<String>,
    deployments: Vec<DeploymentSpec>,
}

impl Application {
    /// An application named `name` at route prefix `/`.
    pub fn new(name: &str) -> Self {
        Application {
            name: name.to_string(),
            route_prefix: "/".into(),
            ingress: None,
            deployments: Vec::new(),
        }
    }

    /// Serves paths starting with `prefix`.
    pub fn route_prefix(mut self, prefix: &str) -> Self {
        self.route_prefix = prefix.to_string();
        self
    }

    /// Adds the deployment that takes HTTP requests.
    pub fn ingress(mut self, d: DeploymentSpec) -> Self {
        self.ingress = Some(d.name.clone());
        self.deployments.push(d);
        self
    }

    /// Adds a deployment reached through handles.
    pub fn deployment(mut self, d: DeploymentSpec) -> Self {
        self.deployments.push(d);
        self
    }

    fn decl(&self) -> Result<AppDecl> {
        let ingress = self
            .ingress
            .clone()
            .ok_or_else(|| Error::Invalid(format!("application `{}` has no ingress deployment", self.name)))?;
        if !self.route_prefix.starts_with('/') {
            return Err(Error::Invalid(format!(
                "application `{}`: route prefix `{}` must start with `/`",
                self.name, self.route_prefix
            )));
        }
        Ok(AppDecl {
            name: self.name.clone(),
            route_prefix: self.route_prefix.clone(),
            ingress,
            deployments: self
                .deployments
                .iter()
                .map(DeploymentSpec::decl)
                .collect::<Result<_>>()?,
        })
    }
}

/// Deployment types compiled into a program, by the names `serve.toml`
/// uses for them.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    kinds: std::collections::BTreeMap<String, rayforge::FnRef<replica::BuildFn>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers type `D` as `name`.
    pub fn deployment<D: Deployment>(mut self, name: &str) -> Self {
        self.kinds.insert(name.to_string(), deployment::<D>(name).build);
        self
    }

    /// The registered names.
    pub fn names(&self) -> Vec<&str> {
        self.kinds.keys().map(String::as_str).collect()
    }

    /// The applications a config declares; an unknown deployment type is an
    /// error listing the known ones.
    pub fn applications(&self, c: &ServeConfig) -> Result<Vec<Application>> {
        c.validate()?;
        c.applications
            .iter()
            .map(|a| {
                let mut app = Application::new(&a.name).route_prefix(&a.route_prefix);
                app.ingress = Some(a.ingress.clone());
                for d in &a.deployments {
                    let kind = d.deployment.as_deref().unwrap_or(&d.name);
                    let build = *self.kinds.get(kind).ok_or_else(|| {
                        Error::Config(format!(
                            "application `{}`: deployment `{}` runs `{kind}`, which this program does not have (it has: {})",
                            a.name,
                            d.name,
                            self.names().join(", ")
                        ))
                    })?;
                    app.deployments.push(DeploymentSpec {
                        name: d.name.clone(),
                        build,
                        config: d.config(),
                    });
                }
                Ok(app)
            })
            .collect()
    }
}
