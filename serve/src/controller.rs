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

    /// One pass of the control loop: [`plan`] decides, then the actions
    /// are carried out (and the route table published when it changed).
    fn reconcile(&self) {
        let mut s = self.state.lock();
        let (actions, changed) = plan(&mut s, Instant::now());
        for a in actions {
            self.apply(&s, a);
        }
        if changed {
            self.publish(&mut s);
        }
    }

    /// Carries out one of [`plan`]'s actions: spawns the calls it needs,
    /// whose outcomes come back as events.
    fn apply(&self, s: &State, action: Action) {
        let find = |k: &str, id: &str| {
            let dep = s.deps.get(k)?;
            Some((dep, dep.replicas.iter().find(|r| r.id == id)?))
        };
        match action {
            Action::Check { key, id } => {
                let Some((dep, r)) = find(&key, &id) else { return };
                let Some(h) = r.handle.clone() else { return };
                let timeout = Duration::from_secs_f64(dep.config.health_check_timeout_s.max(0.1));
                let tx = self.events.clone();
                tokio::spawn(async move {
                    let result = match tokio::time::timeout(timeout, h.health()).await {
                        Ok(Ok(h)) => Ok(h),
                        Ok(Err(e)) => Err((e.to_string(), is_dead(&e))),
                        Err(_) => Err((format!("health check timed out after {timeout:?}"), false)),
                    };
                    let _ = tx.send(Event::Health { key, id, result });
                });
            }
            Action::Start { key, id } => {
                if let Some(dep) = s.deps.get(&key) {
                    self.start_replica(&key, dep, id);
                }
            }
            Action::Stop { key, id, handle } => {
                let grace = s.deps.get(&key).map_or(0.0, |d| d.config.graceful_shutdown_timeout_s);
                let grace = Duration::from_secs_f64(grace);
                let tx = self.events.clone();
                tracing::info!(deployment = %key, replica = %id, "stopping a replica");
                tokio::spawn(async move {
                    if let Some(h) = handle {
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
                    let _ = tx.send(Event::Stopped { key, id });
                });
            }
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

/// What the control loop does on one pass.
#[derive(Debug)]
enum Action {
    /// Ask a running replica for its health and load.
    Check { key: String, id: String },
    /// Start a replica (already recorded as starting).
    Start { key: String, id: String },
    /// Drain and stop a replica (already recorded as stopping).
    Stop {
        key: String,
        id: String,
        handle: Option<ReplicaHandle>,
    },
}

/// Decides one pass of the control loop from the state and the time,
/// without doing any of it: health checks that are due, each deployment's
/// target (autoscaling), replicas to start and to stop (one at a time while
/// a new version rolls out). Records its decisions in the state (replicas
/// starting and stopping, checks in flight, timers) and drops removed
/// deployments with no replica left. Returns the actions and whether the
/// route table changed.
fn plan(s: &mut State, now: Instant) -> (Vec<Action>, bool) {
    let mut actions = Vec::new();
    let mut changed = false;
    let mut next_replica = s.next_replica;
    for (k, dep) in s.deps.iter_mut() {
        // Health checks (also the autoscaler's load figures).
        let period = Duration::from_secs_f64(dep.config.health_check_period_s.max(0.05));
        for r in dep.replicas.iter_mut() {
            if r.state == ReplicaState::Running
                && !r.checking
                && r.handle.is_some()
                && now.duration_since(r.last_check) >= period
            {
                r.checking = true;
                actions.push(Action::Check {
                    key: k.clone(),
                    id: r.id.clone(),
                });
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
            dep.replicas.push(Rep {
                id: id.clone(),
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
            actions.push(Action::Start { key: k.clone(), id });
        }
        to_stop.sort_unstable();
        to_stop.dedup();
        for i in to_stop {
            let r = &mut dep.replicas[i];
            if r.state == ReplicaState::Running {
                changed = true;
            }
            r.state = ReplicaState::Stopping;
            actions.push(Action::Stop {
                key: k.clone(),
                id: r.id.clone(),
                handle: r.handle.clone(),
            });
        }
    }
    s.next_replica = next_replica;
    // Removed deployments go once their last replica has stopped.
    let before = s.deps.len();
    s.deps.retain(|_, d| !(d.removed && d.replicas.is_empty()));
    (actions, changed || s.deps.len() != before)
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

#[cfg(test)]
mod plan_tests {
    use super::*;
    use crate::config::Autoscaling;

    fn nothing(_: &crate::Context, _: Option<serde_json::Value>) -> Result<Box<dyn crate::replica::Erased>> {
        Err(Error::internal("not built in these tests"))
    }

    fn dep(config: DeploymentConfig) -> Dep {
        Dep {
            app: "app".into(),
            name: "D".into(),
            build: FnRef::new(nothing as BuildFn),
            config,
            version: 1,
            removed: false,
            replicas: Vec::new(),
            target: 0,
            up_since: None,
            down_since: None,
            start_failures: 0,
            retry_at: None,
            message: String::new(),
            waiting: HashMap::new(),
        }
    }

    fn state(d: Dep) -> State {
        let mut s = State::default();
        s.deps.insert("app/D".into(), d);
        s
    }

    fn states(s: &State) -> Vec<(String, ReplicaState, u64)> {
        s.deps["app/D"]
            .replicas
            .iter()
            .map(|r| (r.id.clone(), r.state, r.version))
            .collect()
    }

    /// The replicas that `actions` start (`true`) or stop (`false`).
    fn ids(actions: &[Action], starting: bool) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { id, .. } if starting => Some(id.as_str()),
                Action::Stop { id, .. } if !starting => Some(id.as_str()),
                _ => None,
            })
            .collect()
    }

    fn started(actions: &[Action]) -> Vec<&str> {
        ids(actions, true)
    }

    fn stopped(actions: &[Action]) -> Vec<&str> {
        ids(actions, false)
    }

    /// Marks every starting replica running (as its `Started` event does).
    fn all_run(s: &mut State) {
        for r in s.deps.get_mut("app/D").unwrap().replicas.iter_mut() {
            if r.state == ReplicaState::Starting {
                r.state = ReplicaState::Running;
            }
        }
    }

    #[test]
    fn a_new_deployment_starts_its_replicas_once() {
        let mut s = state(dep(DeploymentConfig {
            num_replicas: 2,
            ..Default::default()
        }));
        let now = Instant::now();
        let (a, _) = plan(&mut s, now);
        assert_eq!(started(&a), vec!["D#1", "D#2"]);
        // Already starting: nothing more to do.
        let (a, changed) = plan(&mut s, now);
        assert!(a.is_empty() && !changed, "{a:?}");
    }

    #[test]
    fn a_new_version_rolls_one_replica_at_a_time() {
        let mut s = state(dep(DeploymentConfig {
            num_replicas: 2,
            ..Default::default()
        }));
        let now = Instant::now();
        plan(&mut s, now);
        all_run(&mut s);
        s.deps.get_mut("app/D").unwrap().version = 2;
        // One new replica first; the old ones keep serving.
        let (a, _) = plan(&mut s, now);
        assert_eq!((started(&a), stopped(&a)), (vec!["D#3"], vec![]));
        assert!(plan(&mut s, now).0.is_empty(), "waits for the new one to run");
        all_run(&mut s);
        // It runs: one old one goes, then another new one comes.
        let (a, changed) = plan(&mut s, now);
        assert_eq!((started(&a), stopped(&a), changed), (vec![], vec!["D#1"], true));
        s.deps.get_mut("app/D").unwrap().replicas.retain(|r| r.id != "D#1");
        let (a, _) = plan(&mut s, now);
        assert_eq!(started(&a), vec!["D#4"]);
        all_run(&mut s);
        let (a, _) = plan(&mut s, now);
        assert_eq!(stopped(&a), vec!["D#2"]);
        s.deps.get_mut("app/D").unwrap().replicas.retain(|r| r.id != "D#2");
        assert!(plan(&mut s, now).0.is_empty());
        assert_eq!(
            states(&s),
            vec![
                ("D#3".into(), ReplicaState::Running, 2),
                ("D#4".into(), ReplicaState::Running, 2)
            ]
        );
    }

    #[test]
    fn waiting_requests_wake_a_deployment_at_zero_and_idle_ones_go_after_the_delay() {
        let mut d = dep(DeploymentConfig {
            autoscaling: Some(Autoscaling {
                min_replicas: 0,
                max_replicas: 3,
                target_ongoing_requests: 1.0,
                upscale_delay_s: 5.0,
                downscale_delay_s: 10.0,
            }),
            ..Default::default()
        });
        d.target = 0;
        let mut s = state(d);
        let t0 = Instant::now();
        assert!(plan(&mut s, t0).0.is_empty(), "nothing asked for, nothing runs");
        // A request waits: one replica at once, without the upscale delay.
        s.deps.get_mut("app/D").unwrap().waiting.insert("proxy".into(), (1, t0));
        assert_eq!(started(&plan(&mut s, t0).0), vec!["D#1"]);
        all_run(&mut s);
        // Four more waiting beside the one running: past the upscale delay,
        // five replicas' worth of demand, capped at three.
        s.deps.get_mut("app/D").unwrap().replicas[0].ongoing = 1;
        s.deps.get_mut("app/D").unwrap().waiting.insert("proxy".into(), (4, t0));
        assert!(started(&plan(&mut s, t0).0).is_empty(), "within the upscale delay");
        let t1 = t0 + Duration::from_secs(6);
        s.deps.get_mut("app/D").unwrap().waiting.insert("proxy".into(), (4, t1));
        assert_eq!(started(&plan(&mut s, t1).0), vec!["D#2", "D#3"]);
        all_run(&mut s);
        // Idle: after the downscale delay every replica goes.
        let d = s.deps.get_mut("app/D").unwrap();
        d.replicas[0].ongoing = 0;
        d.waiting.clear();
        let t2 = t1 + Duration::from_secs(1);
        assert!(stopped(&plan(&mut s, t2).0).is_empty());
        let t3 = t2 + Duration::from_secs(11);
        assert_eq!(stopped(&plan(&mut s, t3).0).len(), 3);
    }

    #[test]
    fn checks_come_due_with_the_period_and_removed_deployments_go_when_empty() {
        let mut s = state(dep(DeploymentConfig {
            health_check_period_s: 1.0,
            ..Default::default()
        }));
        let t0 = Instant::now();
        plan(&mut s, t0);
        all_run(&mut s);
        // Without a handle (not started for real) there is nothing to ask.
        assert!(plan(&mut s, t0 + Duration::from_secs(2)).0.is_empty());
        let d = s.deps.get_mut("app/D").unwrap();
        d.removed = true;
        let (a, _) = plan(&mut s, t0 + Duration::from_secs(2));
        assert_eq!(stopped(&a), vec!["D#1"]);
        s.deps.get_mut("app/D").unwrap().replicas.clear();
        let (_, changed) = plan(&mut s, t0 + Duration::from_secs(3));
        assert!(changed && s.deps.is_empty());
    }
}
