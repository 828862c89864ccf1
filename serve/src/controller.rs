//! The controller: an actor that keeps the running replicas equal to the
//! declared state. Its event loop reacts to replicas starting, health checks
//! and stops, and on every tick reconciles each deployment: starts missing
//! replicas (backing off after failures), replaces dead or unhealthy ones,
//! follows the autoscaling target, rolls a changed deployment one replica at
//! a time (a new replica is running before an old one stops) and drains
//! replicas it stops (their requests finish first). Callers follow the route
//! table through a long poll ([`ControllerHandle::routes`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rayforge::{FnRef, Json};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::config::DeploymentConfig;
use crate::error::{Error, Result};
use crate::replica::{BuildFn, Replica, ReplicaHandle, ReplicaHealth, ReplicaSpec, STOP_SLACK};
use crate::router::{key, AbortOnDrop, DeploymentRoute, RouteTable};

/// The controller actor's name in the cluster.
pub(crate) const CONTROLLER_NAME: &str = "rayforge-serve-controller";

/// One deployment as declared (crosses to the controller).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct DeploymentDecl {
    pub(crate) name: String,
    pub(crate) build: FnRef<BuildFn>,
    /// Its config (self-describing, for the user config inside).
    pub(crate) config: Json<DeploymentConfig>,
}

/// One application as declared.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct AppDecl {
    pub(crate) name: String,
    pub(crate) route_prefix: String,
    pub(crate) ingress: String,
    pub(crate) deployments: Vec<DeploymentDecl>,
}

/// Where a replica is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReplicaState {
    /// Its actor is being created or its constructor runs.
    Starting,
    /// It takes requests.
    Running,
    /// It drains the requests it has and then ends.
    Stopping,
}

/// Where a deployment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentState {
    /// Its target number of replicas runs its current version.
    Healthy,
    /// Replicas are starting, scaling or rolling to a new version.
    Updating,
    /// Its replicas keep failing to start.
    Unhealthy,
}

impl std::fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReplicaState::Starting => "STARTING",
            ReplicaState::Running => "RUNNING",
            ReplicaState::Stopping => "STOPPING",
        })
    }
}

impl std::fmt::Display for DeploymentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeploymentState::Healthy => "HEALTHY",
            DeploymentState::Updating => "UPDATING",
            DeploymentState::Unhealthy => "UNHEALTHY",
        })
    }
}

/// The state of one replica, as `serve status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReplicaStatus {
    /// Its id.
    pub id: String,
    /// Where it is in its life.
    pub state: ReplicaState,
    /// Requests it was running at its last health check.
    pub ongoing: usize,
    /// Requests it has finished.
    pub served: u64,
}

/// The state of one deployment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeploymentStatus {
    /// Its application.
    pub app: String,
    /// Its name.
    pub name: String,
    /// Where it stands.
    pub status: DeploymentState,
    /// How many replicas it should have now.
    pub target_replicas: usize,
    /// What went wrong last, if anything.
    pub message: String,
    /// Its replicas.
    pub replicas: Vec<ReplicaStatus>,
}

/// The state of every application, as `serve status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ServeStatus {
    /// Applications: `(name, route prefix)`.
    pub applications: Vec<(String, String)>,
    /// Deployments.
    pub deployments: Vec<DeploymentStatus>,
}

impl ServeStatus {
    /// Whether every deployment is `HEALTHY`.
    pub fn healthy(&self) -> bool {
        self.deployments.iter().all(|d| d.status == DeploymentState::Healthy)
    }

    /// A deployment's status.
    pub fn deployment(&self, app: &str, name: &str) -> Option<&DeploymentStatus> {
        self.deployments.iter().find(|d| d.app == app && d.name == name)
    }
}

struct Rep {
    id: String,
    handle: Option<ReplicaHandle>,
    version: u64,
    state: ReplicaState,
    failures: u32,
    checking: bool,
    last_check: Instant,
    ongoing: usize,
    served: u64,
    /// The user config it was started with: one changed while it started
    /// is sent to it once it runs.
    user_config: Option<serde_json::Value>,
}

struct Dep {
    app: String,
    name: String,
    build: FnRef<BuildFn>,
    config: DeploymentConfig,
    /// Grows when a change needs new replicas (anything but user config).
    version: u64,
    removed: bool,
    replicas: Vec<Rep>,
    target: usize,
    up_since: Option<Instant>,
    down_since: Option<Instant>,
    start_failures: u32,
    retry_at: Option<Instant>,
    message: String,
    /// Requests waiting for a replica, as each process's router last
    /// reported them (by reporter), and when: demand the replicas' own
    /// counts cannot show (queued past `max_ongoing_requests`, or with no
    /// replica at all).
    waiting: HashMap<String, (usize, Instant)>,
}

/// How long a router's report of waiting requests counts.
const WAITING_TTL: Duration = Duration::from_secs(2);

impl Dep {
    /// Requests waiting for a replica, over every router that reported
    /// within [`WAITING_TTL`].
    fn waiting(&self, now: Instant) -> usize {
        self.waiting
            .values()
            .filter(|(_, at)| now.duration_since(*at) < WAITING_TTL)
            .map(|(n, _)| n)
            .sum()
    }
}

#[derive(Default)]
struct State {
    version: u64,
    apps: Vec<(String, String, String)>,
    deps: BTreeMap<String, Dep>,
    next_replica: u64,
}

enum Event {
    Started {
        key: String,
        id: String,
        result: Result<ReplicaHandle>,
    },
    Health {
        key: String,
        id: String,
        /// The health, or why the check failed and whether the replica is dead.
        result: std::result::Result<ReplicaHealth, (String, bool)>,
    },
    Stopped {
        key: String,
        id: String,
    },
    Reconfigured {
        key: String,
        id: String,
        error: Option<String>,
    },
}

impl Event {
    fn name(&self) -> &'static str {
        match self {
            Event::Started { .. } => "started",
            Event::Health { .. } => "health",
            Event::Stopped { .. } => "stopped",
            Event::Reconfigured { .. } => "reconfigured",
        }
    }
}

/// Where the controller keeps the declared applications (namespace, key
/// of the cluster's key-value store): a controller restarted after its
/// process died declares them again.
const SAVED: (&str, &str) = ("serve", "controller/applications");

/// A route-table version above any an earlier instance of the controller
/// published (microseconds since the epoch), so routers take a restarted
/// controller's tables.
fn first_version() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

struct Inner {
    /// Whether the saved applications were looked for (once, on the first
    /// call: a restarted controller redeclares them).
    restored: tokio::sync::OnceCell<()>,
    state: Mutex<State>,
    routes: watch::Sender<Arc<RouteTable>>,
    events: mpsc::UnboundedSender<Event>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    event_loop: Mutex<Option<AbortOnDrop>>,
}

/// Serve's controller actor.
#[rayforge::actor]
pub(crate) struct Controller {
    inner: Arc<Inner>,
}

#[rayforge::actor]
impl Controller {
    fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let version = first_version();
        let (routes, _) = watch::channel(Arc::new(RouteTable {
            version,
            ..Default::default()
        }));
        Controller {
            inner: Arc::new(Inner {
                restored: tokio::sync::OnceCell::new(),
                state: Mutex::new(State {
                    version,
                    ..Default::default()
                }),
                routes,
                events: tx,
                rx: Mutex::new(Some(rx)),
                event_loop: Mutex::new(None),
            }),
        }
    }

    /// Declares the applications (replacing what was declared before) and
    /// saves them in the cluster's key-value store.
    async fn deploy(&self, apps: Vec<AppDecl>) -> Result<()> {
        // A declaration supersedes whatever an earlier instance saved.
        let _ = self.inner.restored.set(());
        self.start_loop();
        self.inner.deploy(apps.clone())?;
        let saved = serde_json::to_vec(&apps).map_err(|e| Error::internal(format!("saving the applications: {e}")))?;
        if let Err(e) = rayforge::kv::put_async(SAVED.0, SAVED.1, &saved, true).await {
            tracing::warn!("the applications are not saved; a restarted controller will not know them: {e}");
        }
        Ok(())
    }

    /// The route table once its version is above `since` (or after a while).
    async fn routes(&self, since: u64) -> RouteTable {
        self.restore().await;
        let mut rx = self.inner.routes.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|t| t.version > since)).await;
        let t = rx.borrow().clone();
        (*t).clone()
    }

    /// A router's requests waiting for a replica, by deployment key
    /// (`reporter` names the process): autoscaling demand, and what wakes
    /// a deployment scaled to zero.
    async fn report_waiting(&self, reporter: String, waiting: BTreeMap<String, usize>) {
        self.restore().await;
        self.start_loop();
        self.inner.report_waiting(&reporter, waiting);
    }

    /// Every application's and deployment's state.
    async fn status(&self) -> ServeStatus {
        self.restore().await;
        self.inner.status()
    }

    /// Declares nothing: every replica drains and stops. Returns once all
    /// have stopped (or their graceful timeouts passed).
    async fn shutdown(&self) -> bool {
        let _ = self.inner.restored.set(());
        self.start_loop();
        if self.inner.deploy(Vec::new()).is_err() {
            return false;
        }
        if let Err(e) = rayforge::kv::delete_async(SAVED.0, SAVED.1).await {
            tracing::warn!("cannot forget the saved applications: {e}");
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if self.inner.state.lock().deps.is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

impl Controller {
    /// On a controller restarted after its process died (the first call
    /// it gets that is not a declaration): declares the applications the
    /// previous instance saved.
    async fn restore(&self) {
        self.inner
            .restored
            .get_or_init(|| async {
                let saved = match rayforge::kv::get_async(SAVED.0, SAVED.1).await {
                    Ok(Some(b)) => b,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!("cannot read the saved applications: {e}");
                        return;
                    }
                };
                match serde_json::from_slice::<Vec<AppDecl>>(&saved) {
                    Ok(apps) => {
                        tracing::warn!(
                            applications = apps.len(),
                            "the serve controller restarted: declaring its applications again"
                        );
                        self.start_loop();
                        if let Err(e) = self.inner.deploy(apps) {
                            tracing::error!("the saved applications do not deploy: {e}");
                        }
                    }
                    Err(e) => tracing::error!("the saved applications do not parse: {e}"),
                }
            })
            .await;
    }

    fn start_loop(&self) {
        let mut l = self.inner.event_loop.lock();
        if l.is_none() {
            if let Some(rx) = self.inner.rx.lock().take() {
                let inner = self.inner.clone();
                *l = Some(AbortOnDrop(tokio::spawn(inner.run(rx))));
            }
        }
    }
}

fn is_dead(e: &rayforge::Error) -> bool {
    matches!(
        e,
        rayforge::Error::ActorDied { .. } | rayforge::Error::WorkerDied { .. }
    )
}

impl Inner {
    async fn run(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Event>) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut publish = tokio::time::interval(Duration::from_secs(1));
        publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut published = BTreeMap::new();
        tracing::info!("serve controller running");
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => {
                        tracing::trace!(event = ev.name(), "controller event");
                        self.on_event(ev);
                    }
                    None => return,
                },
                _ = tick.tick() => self.reconcile(),
                _ = publish.tick() => self.publish_status(&mut published),
            }
        }
    }

    /// Publishes each application's status for the dashboard's Serve page
    /// when it changed (and removes deleted applications'); fire and forget.
    fn publish_status(&self, last: &mut BTreeMap<String, serde_json::Value>) {
        let status = self.status();
        let mut now = BTreeMap::new();
        for (app, prefix) in &status.applications {
            let deployments: Vec<&DeploymentStatus> = status.deployments.iter().filter(|d| &d.app == app).collect();
            let healthy = deployments.iter().all(|d| d.status == DeploymentState::Healthy);
            now.insert(
                app.clone(),
                serde_json::json!({
                    "status": if healthy { "RUNNING" } else { "DEPLOYING" },
                    "route_prefix": prefix,
                    "deployments": deployments.iter().map(|d| serde_json::json!({
                        "name": d.name,
                        "status": d.status,
                        "target_replicas": d.target_replicas,
                        "replicas": d.replicas.len(),
                        "message": d.message,
                    })).collect::<Vec<_>>(),
                    "replicas": deployments.iter().flat_map(|d| d.replicas.iter().map(move |r| serde_json::json!({
                        "deployment": d.name,
                        "id": r.id,
                        "state": r.state,
                        "ongoing": r.ongoing,
                        "served": r.served,
                    }))).collect::<Vec<_>>(),
                }),
            );
        }
        let changed: Vec<(String, serde_json::Value)> = now
            .iter()
            .filter(|(k, v)| last.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let gone: Vec<String> = last.keys().filter(|k| !now.contains_key(*k)).cloned().collect();
        *last = now;
        if changed.is_empty() && gone.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for (app, v) in changed {
                if let Err(e) = rayforge::state::publish_async("serve", &app, &v).await {
                    tracing::debug!("publishing application {app} for the dashboard: {e}");
                }
            }
            for app in gone {
                let _ = rayforge::state::unpublish_async("serve", &app).await;
            }
        });
    }

    fn deploy(&self, apps: Vec<AppDecl>) -> Result<()> {
        let mut decls = Vec::new();
        for app in &apps {
            for d in &app.deployments {
                let config = d.config.0.clone();
                config.validate(&d.name)?;
                decls.push((app.name.clone(), d.clone(), config));
            }
        }
        let mut s = self.state.lock();
        let mut keep = std::collections::HashSet::new();
        for (app, d, config) in decls {
            let k = key(&app, &d.name);
            keep.insert(k.clone());
            match s.deps.get_mut(&k) {
                Some(dep) => {
                    dep.removed = false;
                    if dep.build != d.build || !dep.config.same_but_user_config(&config) {
                        tracing::info!(deployment = %k, "deployment changed: rolling its replicas");
                        dep.version += 1;
                        dep.start_failures = 0;
                        dep.retry_at = None;
                    } else if dep.config.user_config != config.user_config {
                        tracing::info!(deployment = %k, "user config changed: reconfiguring replicas in place");
                        self.reconfigure_all(&k, dep, &config);
                    }
                    dep.build = d.build;
                    dep.config = config;
                }
                None => {
                    let target = match &config.autoscaling {
                        Some(a) => a.min_replicas.max(1).min(a.max_replicas),
                        None => config.num_replicas,
                    };
                    s.deps.insert(
                        k,
                        Dep {
                            app: app.clone(),
                            name: d.name.clone(),
                            build: d.build,
                            config,
                            version: 1,
                            removed: false,
                            replicas: Vec::new(),
                            target,
                            up_since: None,
                            down_since: None,
                            start_failures: 0,
                            retry_at: None,
                            message: String::new(),
                            waiting: HashMap::new(),
                        },
                    );
                }
            }
        }
        for (k, dep) in s.deps.iter_mut() {
            if !keep.contains(k) {
                dep.removed = true;
            }
        }
        s.apps = apps
            .iter()
            .map(|a| (a.name.clone(), a.route_prefix.clone(), key(&a.name, &a.ingress)))
            .collect();
        self.publish(&mut s);
        Ok(())
    }

    /// Records a router's waiting requests; a deployment with none running
    /// and requests waiting is reconciled at once (a cold start).
    fn report_waiting(&self, reporter: &str, waiting: BTreeMap<String, usize>) {
        let now = Instant::now();
        let mut s = self.state.lock();
        let mut cold = false;
        for (k, dep) in s.deps.iter_mut() {
            let n = waiting.get(k).copied().unwrap_or(0);
            if n == 0 {
                dep.waiting.remove(reporter);
                continue;
            }
            cold |= !dep.replicas.iter().any(|r| r.state == ReplicaState::Running);
            dep.waiting.insert(reporter.to_string(), (n, now));
        }
        drop(s);
        if cold {
            self.reconcile();
        }
    }

    /// Sends the new user config to every replica, one after another.
    fn reconfigure_all(&self, k: &str, dep: &Dep, config: &DeploymentConfig) {
        let handles: Vec<(String, ReplicaHandle)> = dep
            .replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Running)
            .filter_map(|r| Some((r.id.clone(), r.handle.clone()?)))
            .collect();
        let user_config = config.user_config.clone().map(Json);
        let (k, tx) = (k.to_string(), self.events.clone());
        tokio::spawn(async move {
            for (id, h) in handles {
                let error = match h.reconfigure(user_config.clone()).await {
                    Ok(()) => None,
                    Err(e) => Some(Error::from(e).to_string()),
                };
                let _ = tx.send(Event::Reconfigured {
                    key: k.clone(),
                    id,
                    error,
                });
            }
        });
    }

    /// Publishes the route table after a change.
    fn publish(&self, s: &mut State) {
        s.version += 1;
        let mut t = RouteTable {
            version: s.version,
            apps: s.apps.clone(),
            deployments: BTreeMap::new(),
        };
        for (k, dep) in &s.deps {
            t.deployments.insert(
                k.clone(),
                DeploymentRoute {
                    max_ongoing: dep.config.max_ongoing_requests,
                    max_queued: dep.config.max_queued_requests,
                    replicas: dep
                        .replicas
                        .iter()
                        .filter(|r| r.state == ReplicaState::Running)
                        .filter_map(|r| Some((r.id.clone(), r.handle.clone()?)))
                        .collect(),
                    failing: (dep.start_failures > 0).then(|| dep.message.clone()),
                },
            );
        }
        self.routes.send_replace(Arc::new(t));
    }

    fn on_event(&self, ev: Event) {
        let mut s = self.state.lock();
        let mut changed = false;
        match ev {
            Event::Started { key: k, id, result } => {
                let Some(dep) = s.deps.get_mut(&k) else { return };
                let Some(i) = dep.replicas.iter().position(|r| r.id == id) else {
                    return;
                };
                match result {
                    Ok(h) => {
                        tracing::info!(deployment = %k, replica = %id, "replica running");
                        let r = &mut dep.replicas[i];
                        if r.user_config != dep.config.user_config {
                            // Changed while it started (the running ones got
                            // it then): it takes the config before any
                            // request, and counts as started once it has (a
                            // replica refusing it is replaced by one started
                            // with it).
                            tracing::info!(deployment = %k, replica = %id, "sending the user config changed while it started");
                            r.user_config = dep.config.user_config.clone();
                            let (c, tx) = (r.user_config.clone().map(Json), self.events.clone());
                            tokio::spawn(async move {
                                let result = match h.reconfigure(c).await {
                                    Ok(()) => Ok(h),
                                    Err(e) => {
                                        let _ = rayforge::kill_async(&h).await;
                                        Err(Error::from(e))
                                    }
                                };
                                let _ = tx.send(Event::Started { key: k, id, result });
                            });
                            return;
                        }
                        r.handle = Some(h);
                        if r.state == ReplicaState::Starting {
                            r.state = ReplicaState::Running;
                            r.last_check = Instant::now();
                        }
                        changed = true;
                        dep.start_failures = 0;
                    }
                    Err(e) => {
                        tracing::warn!(deployment = %k, replica = %id, "replica failed to start: {e}");
                        dep.replicas.remove(i);
                        dep.start_failures += 1;
                        let backoff = Duration::from_millis(100 << dep.start_failures.min(6));
                        dep.retry_at = Some(Instant::now() + backoff);
                        dep.message = format!("a replica failed to start: {e}");
                        changed = true;
                    }
                }
            }
            Event::Health { key: k, id, result } => {
                let Some(dep) = s.deps.get_mut(&k) else { return };
                let Some(i) = dep.replicas.iter().position(|r| r.id == id) else {
                    return;
                };
                let r = &mut dep.replicas[i];
                r.checking = false;
                r.last_check = Instant::now();
                let failure = match result {
                    Ok(h) => {
                        r.ongoing = h.ongoing;
                        r.served = h.served;
                        h.error.map(|e| (e.to_string(), false))
                    }
                    Err(why) => Some(why),
                };
                match failure {
                    None => r.failures = 0,
                    Some((why, dead)) => {
                        r.failures += 1;
                        if dead || r.failures >= 3 {
                            tracing::warn!(deployment = %k, replica = %id, "replacing a replica: {why}");
                            dep.message = format!("replica {id} replaced: {why}");
                            let r = dep.replicas.remove(i);
                            if let Some(h) = r.handle {
                                tokio::spawn(rayforge::kill_async(&h));
                            }
                            changed = true;
                        }
                    }
                }
            }
            Event::Reconfigured { key: k, id, error } => {
                let Some(dep) = s.deps.get_mut(&k) else { return };
                match error {
                    None => tracing::info!(deployment = %k, replica = %id, "reconfigured"),
                    Some(e) => {
                        tracing::warn!(deployment = %k, replica = %id, "reconfigure failed: {e}");
                        dep.message = format!("replica {id} kept its old user config: {e}");
                    }
                }
            }
            Event::Stopped { key: k, id } => {
                if let Some(dep) = s.deps.get_mut(&k) {
                    dep.replicas.retain(|r| r.id != id);
                }
            }
        }
        if changed {
            self.publish(&mut s);
        }
    }

    fn reconcile(&self) {
        let mut s = self.state.lock();
        let now = Instant::now();
        let mut changed = false;
        let mut next_replica = s.next_replica;
        let keys: Vec<String> = s.deps.keys().cloned().collect();
        for k in keys {
            let Some(dep) = s.deps.get_mut(&k) else { continue };
            // Health checks (also the autoscaler's load figures).
            let period = Duration::from_secs_f64(dep.config.health_check_period_s.max(0.05));
            let timeout = Duration::from_secs_f64(dep.config.health_check_timeout_s.max(0.1));
            for r in dep.replicas.iter_mut() {
                if r.state == ReplicaState::Running && !r.checking && now.duration_since(r.last_check) >= period {
                    if let Some(h) = r.handle.clone() {
                        r.checking = true;
                        let (tx, k, id) = (self.events.clone(), k.clone(), r.id.clone());
                        tokio::spawn(async move {
                            let result = match tokio::time::timeout(timeout, h.health()).await {
                                Ok(Ok(h)) => Ok(h),
                                Ok(Err(e)) => Err((e.to_string(), is_dead(&e))),
                                Err(_) => Err((format!("health check timed out after {timeout:?}"), false)),
                            };
                            let _ = tx.send(Event::Health { key: k, id, result });
                        });
                    }
                }
            }
            dep.target = if dep.removed { 0 } else { target_of(dep, now) };
            let cur = dep.version;
            let new_live = dep
                .replicas
                .iter()
                .filter(|r| r.version == cur && r.state != ReplicaState::Stopping)
                .count();
            let starting = dep
                .replicas
                .iter()
                .filter(|r| r.state == ReplicaState::Starting)
                .count();
            let running = dep.replicas.iter().filter(|r| r.state == ReplicaState::Running).count();
            let old_running: Vec<usize> = (0..dep.replicas.len())
                .filter(|&i| dep.replicas[i].version != cur && dep.replicas[i].state == ReplicaState::Running)
                .collect();
            let may_start = !matches!(dep.retry_at, Some(t) if now < t);
            let mut to_start = 0;
            let mut to_stop: Vec<usize> = Vec::new();
            // Old-version replicas still starting are not worth waiting for.
            to_stop.extend(
                (0..dep.replicas.len())
                    .filter(|&i| dep.replicas[i].version != cur && dep.replicas[i].state == ReplicaState::Starting),
            );
            if old_running.is_empty() {
                if new_live < dep.target && may_start {
                    to_start = dep.target - new_live;
                } else if new_live > dep.target {
                    // Stop the idlest running ones (starting ones first).
                    let mut cand: Vec<usize> = (0..dep.replicas.len())
                        .filter(|&i| dep.replicas[i].state != ReplicaState::Stopping)
                        .collect();
                    cand.sort_by_key(|&i| (dep.replicas[i].state == ReplicaState::Running, dep.replicas[i].ongoing));
                    to_stop.extend(cand.into_iter().take(new_live - dep.target));
                }
            } else if starting == 0 {
                // Rolling: one new replica up, then one old replica down.
                if running > dep.target || new_live >= dep.target {
                    to_stop.push(old_running[0]);
                } else if may_start {
                    to_start = 1;
                }
            }
            for _ in 0..to_start {
                next_replica += 1;
                let id = format!("{}#{}", dep.name, next_replica);
                self.start_replica(&k, dep, id.clone());
                dep.replicas.push(Rep {
                    id,
                    handle: None,
                    version: cur,
                    state: ReplicaState::Starting,
                    failures: 0,
                    checking: false,
                    last_check: now,
                    ongoing: 0,
                    served: 0,
                    user_config: dep.config.user_config.clone(),
                });
            }
            to_stop.sort_unstable();
            to_stop.dedup();
            for i in to_stop {
                let r = &mut dep.replicas[i];
                if r.state == ReplicaState::Running {
                    changed = true;
                }
                r.state = ReplicaState::Stopping;
                let grace = Duration::from_secs_f64(dep.config.graceful_shutdown_timeout_s);
                let (tx, k, id, h) = (self.events.clone(), k.clone(), r.id.clone(), r.handle.clone());
                tracing::info!(deployment = %k, replica = %id, "stopping a replica");
                tokio::spawn(async move {
                    if let Some(h) = h {
                        // Routers stop sending first; then the replica drains
                        // (its streamed responses too, which `stop` would cut).
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let drained = async {
                            let _ = h.drain().await;
                            h.stop().await
                        };
                        if tokio::time::timeout(grace + STOP_SLACK, drained).await.is_err() {
                            tracing::warn!(replica = %id, "requests still running after the graceful timeout");
                        }
                        let _ = rayforge::kill_async(&h).await;
                    }
                    let _ = tx.send(Event::Stopped { key: k, id });
                });
            }
        }
        s.next_replica = next_replica;
        // Removed deployments go once their last replica has stopped.
        let before = s.deps.len();
        s.deps.retain(|_, d| !(d.removed && d.replicas.is_empty()));
        if changed || s.deps.len() != before {
            self.publish(&mut s);
        }
    }

    fn start_replica(&self, k: &str, dep: &Dep, id: String) {
        let spec = ReplicaSpec {
            build: dep.build,
            app: dep.app.clone(),
            deployment: dep.name.clone(),
            replica: id.clone(),
            user_config: dep.config.user_config.clone().map(Json),
        };
        let c = dep.config.clone();
        let (tx, k) = (self.events.clone(), k.to_string());
        tracing::info!(deployment = %k, replica = %id, "starting a replica");
        tokio::spawn(async move {
            let mut o = Replica::options()
                .num_cpus(c.num_cpus)
                .max_restarts(0)
                .max_concurrency((c.max_ongoing_requests + 16).min(u32::MAX as usize) as u32);
            if c.num_gpus > 0.0 {
                o = o.num_gpus(c.num_gpus);
            }
            for (r, n) in &c.resources {
                o = o.resource(r, *n);
            }
            let result = match o.remote_async(spec).await {
                Err(e) => Err(Error::from(e)),
                Ok(h) => match h.ready().await {
                    Ok(()) => Ok(h),
                    Err(e) => {
                        let _ = rayforge::kill_async(&h).await;
                        Err(Error::from(e))
                    }
                },
            };
            let _ = tx.send(Event::Started { key: k, id, result });
        });
    }

    fn status(&self) -> ServeStatus {
        let s = self.state.lock();
        ServeStatus {
            applications: s.apps.iter().map(|(n, p, _)| (n.clone(), p.clone())).collect(),
            deployments: s
                .deps
                .values()
                .map(|d| {
                    let running_current = d
                        .replicas
                        .iter()
                        .filter(|r| r.state == ReplicaState::Running && r.version == d.version)
                        .count();
                    let settled = running_current == d.target && d.replicas.len() == d.target;
                    let status = if d.start_failures >= 3 {
                        DeploymentState::Unhealthy
                    } else if settled {
                        DeploymentState::Healthy
                    } else {
                        DeploymentState::Updating
                    };
                    DeploymentStatus {
                        app: d.app.clone(),
                        name: d.name.clone(),
                        status,
                        target_replicas: d.target,
                        message: d.message.clone(),
                        replicas: d
                            .replicas
                            .iter()
                            .map(|r| ReplicaStatus {
                                id: r.id.clone(),
                                state: r.state,
                                ongoing: r.ongoing,
                                served: r.served,
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }
}

/// The replica count a deployment wants now (autoscaling with its delays).
fn target_of(dep: &mut Dep, now: Instant) -> usize {
    let Some(a) = dep.config.autoscaling.clone() else {
        return dep.config.num_replicas;
    };
    let running: Vec<&Rep> = dep
        .replicas
        .iter()
        .filter(|r| r.state == ReplicaState::Running)
        .collect();
    let current = dep.target.clamp(a.min_replicas, a.max_replicas);
    let waiting = dep.waiting(now);
    if running.is_empty() {
        // Scaled to zero (or all starting): a waiting request starts one
        // at once, without the upscale delay.
        if waiting > 0 && current == 0 && a.max_replicas > 0 {
            tracing::info!(deployment = %dep.name, waiting, "a request arrived: scaling up from zero");
            return 1;
        }
        return current.max(a.min_replicas);
    }
    // Demand: requests on the replicas and requests queued for one.
    let ongoing: usize = running.iter().map(|r| r.ongoing).sum::<usize>() + waiting;
    let want = ((ongoing as f64 / a.target_ongoing_requests).ceil() as usize).clamp(a.min_replicas, a.max_replicas);
    if want > current {
        dep.down_since = None;
        let since = *dep.up_since.get_or_insert(now);
        if now.duration_since(since).as_secs_f64() >= a.upscale_delay_s {
            dep.up_since = None;
            tracing::info!(deployment = %dep.name, from = current, to = want, ongoing, "scaling up");
            return want;
        }
    } else if want < current {
        dep.up_since = None;
        let since = *dep.down_since.get_or_insert(now);
        if now.duration_since(since).as_secs_f64() >= a.downscale_delay_s {
            dep.down_since = None;
            tracing::info!(deployment = %dep.name, from = current, to = want, ongoing, "scaling down");
            return want;
        }
    } else {
        dep.up_since = None;
        dep.down_since = None;
    }
    current
}
