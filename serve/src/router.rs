//! Routing requests to replicas, in every process that sends them (the HTTP
//! proxy and any replica holding a handle).
//!
//! A process keeps one [`Hub`]: the latest route table, long-polled from the
//! controller, and a [`Router`] per deployment. A router counts the requests
//! it has in flight on each replica, sends a new one to the less busy of two
//! replicas picked at random (power of two choices) as long as that replica
//! is below `max_ongoing_requests`, queues up to `max_queued_requests`
//! otherwise, and refuses beyond that ([`Error::Overloaded`]: a 503). A call
//! that finds its replica dead is sent again to another one.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::controller::{ControllerHandle, CONTROLLER_NAME};
use crate::error::{Error, Result};
use crate::replica::ReplicaHandle;

/// Where requests go: applications by route prefix, replicas by deployment.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct RouteTable {
    /// Grows with every change.
    pub(crate) version: u64,
    /// Applications: `(name, route prefix, ingress deployment key)`.
    pub(crate) apps: Vec<(String, String, String)>,
    /// Deployments by key (`app/deployment`).
    pub(crate) deployments: BTreeMap<String, DeploymentRoute>,
}

/// The running replicas of one deployment and its limits.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct DeploymentRoute {
    pub(crate) max_ongoing: usize,
    pub(crate) max_queued: usize,
    pub(crate) replicas: Vec<(String, ReplicaHandle)>,
    /// Why it has no replica, when its replicas fail to start: requests
    /// fail at once instead of waiting.
    pub(crate) failing: Option<String>,
}

impl RouteTable {
    /// The application serving `path` (longest matching prefix) and its
    /// ingress deployment key.
    pub(crate) fn app_for(&self, path: &str) -> Option<(&str, &str)> {
        self.apps
            .iter()
            .filter(|(_, prefix, _)| {
                let p = prefix.trim_end_matches('/');
                p.is_empty() || (path.starts_with(p) && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            })
            .max_by_key(|(_, prefix, _)| prefix.trim_end_matches('/').len())
            .map(|(name, _, key)| (name.as_str(), key.as_str()))
    }
}

/// The deployment key used in route tables.
pub(crate) fn key(app: &str, deployment: &str) -> String {
    format!("{app}/{deployment}")
}

/// This process's view of the routes.
pub(crate) struct Hub {
    table: watch::Sender<Arc<RouteTable>>,
    routers: Mutex<HashMap<String, Arc<Router>>>,
    /// Ends the poller with the hub.
    _poller: AbortOnDrop,
    /// Ends the reporter of waiting requests with the hub.
    _reporter: AbortOnDrop,
}

/// Aborts a spawned task when dropped: every task has an owner.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// This process's hub (reset when the serve instance that made it stops).
static HUB: tokio::sync::Mutex<Option<Arc<Hub>>> = tokio::sync::Mutex::const_new(None);

/// How long a request waits for a deployment that has no running replica.
const NO_REPLICA_WAIT: Duration = Duration::from_secs(30);
/// How long a deployment missing from the route table may take to appear
/// (a table a little behind a deploy) before calls to it fail as not found.
const UNKNOWN_WAIT: Duration = Duration::from_secs(2);
/// Attempts of a call whose replica died under it.
const ATTEMPTS: usize = 3;

impl Hub {
    /// This process's hub, made on first use (needs a tokio runtime).
    pub(crate) async fn get() -> Result<Arc<Hub>> {
        let mut g = HUB.lock().await;
        if let Some(h) = &*g {
            return Ok(h.clone());
        }
        let controller = rayforge::get_actor_async::<ControllerHandle>(CONTROLLER_NAME)
            .await
            .map_err(|e| {
                Error::Unavailable(format!(
                    "no serve controller is running ({e}); start one with serve::start"
                ))
            })?;
        let first = controller.routes(0).await?;
        let (tx, _) = watch::channel(Arc::new(first));
        let poller = {
            let (controller, tx) = (controller.clone(), tx.clone());
            tokio::spawn(async move { poll_routes(controller, tx).await })
        };
        let hub = Arc::new_cyclic(|me: &std::sync::Weak<Hub>| {
            let reporter = tokio::spawn(report_waiting(controller, me.clone()));
            Hub {
                table: tx,
                routers: Mutex::new(HashMap::new()),
                _poller: AbortOnDrop(poller),
                _reporter: AbortOnDrop(reporter),
            }
        });
        *g = Some(hub.clone());
        Ok(hub)
    }

    /// Forgets this process's hub (its serve instance stopped).
    pub(crate) async fn reset() {
        HUB.lock().await.take();
    }

    /// The current route table.
    pub(crate) fn table(&self) -> Arc<RouteTable> {
        self.table.borrow().clone()
    }

    /// The router of deployment `key`.
    pub(crate) fn router(self: &Arc<Self>, key: &str) -> Arc<Router> {
        let mut routers = self.routers.lock();
        routers
            .entry(key.to_string())
            .or_insert_with(|| {
                let r = Arc::new(Router {
                    key: key.to_string(),
                    state: Mutex::new(RState::default()),
                    freed: Notify::new(),
                    table: self.table.subscribe(),
                });
                r.apply(&self.table.borrow());
                r
            })
            .clone()
    }
}

/// How often a process tells the controller how many of its requests wait
/// for a replica (while any do, and once more when none do).
const REPORT_PERIOD: Duration = Duration::from_millis(250);

/// Tells the controller, every [`REPORT_PERIOD`], the requests of this
/// process's routers that wait for a replica: the demand autoscaling counts
/// beyond what replicas run, and what starts a deployment scaled to zero.
async fn report_waiting(controller: ControllerHandle, hub: std::sync::Weak<Hub>) {
    let me = format!("{}/{}", rayforge::node_id().unwrap_or_default(), std::process::id());
    let mut said_some = false;
    loop {
        tokio::time::sleep(REPORT_PERIOD).await;
        let Some(hub) = hub.upgrade() else { return };
        let waiting: BTreeMap<String, usize> = hub
            .routers
            .lock()
            .iter()
            .map(|(k, r)| (k.clone(), r.state.lock().waiting))
            .filter(|(_, n)| *n > 0)
            .collect();
        drop(hub);
        if waiting.is_empty() && !said_some {
            continue;
        }
        said_some = !waiting.is_empty();
        if let Err(e) = controller.report_waiting(me.clone(), waiting).await {
            tracing::debug!("reporting waiting requests failed: {e}");
        }
    }
}

/// Long-polls the controller for route changes and fans them out.
async fn poll_routes(controller: ControllerHandle, tx: watch::Sender<Arc<RouteTable>>) {
    loop {
        let since = tx.borrow().version;
        match controller.routes(since).await {
            Ok(t) if t.version > since => {
                tracing::debug!(version = t.version, "route table changed");
                tx.send_replace(Arc::new(t));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("polling routes failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[derive(Default)]
struct RState {
    version: u64,
    /// Whether the route table has this deployment at all.
    known: bool,
    failing: Option<String>,
    max_ongoing: usize,
    max_queued: usize,
    slots: Vec<Slot>,
    queued: usize,
    /// Requests waiting for a replica: queued, or with none to go to.
    waiting: usize,
}

struct Slot {
    id: String,
    handle: ReplicaHandle,
    inflight: usize,
    dead: bool,
}

/// Sends one deployment's requests to its replicas.
pub(crate) struct Router {
    key: String,
    state: Mutex<RState>,
    freed: Notify,
    table: watch::Receiver<Arc<RouteTable>>,
}

impl Router {
    /// Takes in a new route table, keeping in-flight counts of replicas that stay.
    fn apply(&self, t: &RouteTable) {
        let mut s = self.state.lock();
        if t.version <= s.version && s.version != 0 {
            return;
        }
        s.version = t.version;
        s.known = t.deployments.contains_key(&self.key);
        let route = t.deployments.get(&self.key).cloned().unwrap_or_default();
        s.failing = route.failing.clone();
        s.max_ongoing = route.max_ongoing.max(1);
        s.max_queued = route.max_queued;
        let old: HashMap<String, (usize, bool)> = s.slots.drain(..).map(|x| (x.id, (x.inflight, x.dead))).collect();
        s.slots = route
            .replicas
            .into_iter()
            .map(|(id, handle)| {
                let (inflight, dead) = old.get(&id).copied().unwrap_or((0, false));
                Slot {
                    id,
                    handle,
                    inflight,
                    dead,
                }
            })
            .collect();
        drop(s);
        self.freed.notify_waiters();
    }

    /// Takes a replica with room (waiting in the queue when all are busy).
    async fn acquire(&self) -> Result<(String, ReplicaHandle)> {
        let mut table = self.table.clone();
        // Its place in the queue is given back however this ends, also when
        // the request is abandoned while it waits (a timeout, a client
        // gone), which drops this future.
        let mut queued = QueuePlace {
            router: self,
            held: false,
        };
        self.state.lock().waiting += 1;
        let _waiting = Waiting(self);
        let start = tokio::time::Instant::now();
        let deadline = start + NO_REPLICA_WAIT;
        let result = loop {
            // Always the latest table (`changed()` below marks it seen).
            let t = table.borrow_and_update().clone();
            self.apply(&t);
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let live = {
                let mut s = self.state.lock();
                let max = s.max_ongoing;
                let open: Vec<usize> = (0..s.slots.len())
                    .filter(|&i| !s.slots[i].dead && s.slots[i].inflight < max)
                    .collect();
                if !open.is_empty() {
                    let mut rng = rand::rng();
                    let a = open[rng.random_range(0..open.len())];
                    let b = open[rng.random_range(0..open.len())];
                    let pick = if s.slots[b].inflight < s.slots[a].inflight {
                        b
                    } else {
                        a
                    };
                    s.slots[pick].inflight += 1;
                    if queued.held {
                        s.queued -= 1;
                        queued.held = false;
                    }
                    break Ok((s.slots[pick].id.clone(), s.slots[pick].handle.clone()));
                }
                let live = s.slots.iter().any(|x| !x.dead);
                if !live {
                    if let Some(why) = &s.failing {
                        break Err(Error::Unavailable(format!("deployment `{}`: {why}", self.key)));
                    }
                    // A table that lacks it after a while: there is no such deployment.
                    if !s.known && start.elapsed() >= UNKNOWN_WAIT {
                        break Err(Error::NotFound(format!("deployment `{}`", self.key)));
                    }
                }
                if live && !queued.held {
                    if s.queued >= s.max_queued {
                        break Err(Error::Overloaded(self.key.clone()));
                    }
                    s.queued += 1;
                    queued.held = true;
                }
                live
            };
            if !live && tokio::time::Instant::now() >= deadline {
                break Err(Error::Unavailable(format!(
                    "deployment `{}` (none started within {NO_REPLICA_WAIT:?})",
                    self.key
                )));
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = table.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(if live { 1000 } else { 100 })) => {}
            }
        };
        drop(queued);
        result
    }

    fn release(&self, id: &str, dead: bool) {
        let mut s = self.state.lock();
        if let Some(x) = s.slots.iter_mut().find(|x| x.id == id) {
            x.inflight = x.inflight.saturating_sub(1);
            x.dead |= dead;
        }
        drop(s);
        self.freed.notify_one();
    }

    /// Runs `op` on a replica (given the replica and the request's id for
    /// [`crate::replica::Replica`]'s cancel); when the replica turns out
    /// dead, on another. Returns the result and the replica that gave it.
    /// Dropped before the reply, it cancels the request on the replica.
    pub(crate) async fn send<T, F, Fut>(self: &Arc<Self>, op: F) -> Result<(T, ReplicaHandle)>
    where
        F: Fn(ReplicaHandle, u64) -> Fut,
        Fut: Future<Output = rayforge::Result<T>>,
    {
        self.send_holding(op).await.map(|(v, h, _slot)| (v, h))
    }

    /// [`Router::send`], and the replica's slot, taken until the returned
    /// guard is dropped: a streamed response keeps it until its body ends,
    /// so streams count against `max_ongoing_requests`.
    pub(crate) async fn send_holding<T, F, Fut>(self: &Arc<Self>, op: F) -> Result<(T, ReplicaHandle, SlotGuard)>
    where
        F: Fn(ReplicaHandle, u64) -> Fut,
        Fut: Future<Output = rayforge::Result<T>>,
    {
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let (id, handle) = self.acquire().await?;
            // Released when the caller is done with the reply, and also
            // when the request is abandoned mid-call (the proxy's timeout or
            // a client gone drop this future): otherwise its slot stays
            // taken for good.
            let mut slot = SlotGuard {
                router: self.clone(),
                id: id.clone(),
                dead: false,
            };
            // The replica's id for this attempt: if this future is dropped
            // before the reply (the request abandoned), the replica is told
            // to cancel the handler's work, not only the slot.
            let request: u64 = rand::random();
            let mut cancel = CancelOnDrop {
                replica: handle.clone(),
                request,
                done: false,
            };
            let r = op(handle.clone(), request).await;
            cancel.done = true;
            let dead = matches!(
                r,
                Err(rayforge::Error::ActorDied { .. } | rayforge::Error::WorkerDied { .. })
            );
            slot.dead = dead;
            match r {
                Ok(v) => return Ok((v, handle, slot)),
                Err(e) if dead => {
                    tracing::info!(deployment = %self.key, replica = %id, "replica died under a request; sending it again: {e}");
                    last = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last
            .map(Error::from)
            .unwrap_or_else(|| Error::Unavailable(self.key.clone())))
    }
}

/// Counts a request as waiting for a replica while it is in `acquire`.
struct Waiting<'a>(&'a Router);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock();
        s.waiting = s.waiting.saturating_sub(1);
    }
}

/// A request's place in a deployment's queue, given back when dropped.
struct QueuePlace<'a> {
    router: &'a Router,
    held: bool,
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        if self.held {
            let mut s = self.router.state.lock();
            s.queued = s.queued.saturating_sub(1);
        }
    }
}

/// Tells a replica to cancel a request whose caller dropped it before the
/// reply came.
struct CancelOnDrop {
    replica: ReplicaHandle,
    request: u64,
    done: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.done {
            // The reply is not needed: fire and forget.
            let _ = self.replica.cancel(self.request);
        }
    }
}

/// A request's slot on a replica, given back when dropped.
pub(crate) struct SlotGuard {
    router: Arc<Router>,
    id: String,
    /// The replica died under the request.
    dead: bool,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.router.release(&self.id, self.dead);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_matching_prefix_takes_a_path() {
        let t = RouteTable {
            apps: [("root", "/"), ("shop", "/shop"), ("cart", "/shop/cart/")]
                .iter()
                .map(|(n, p)| (n.to_string(), p.to_string(), key(n, "Ingress")))
                .collect(),
            ..Default::default()
        };
        let app = |path: &str| t.app_for(path).map(|(name, _)| name.to_string());
        assert_eq!(app("/shop").as_deref(), Some("shop"));
        assert_eq!(app("/shop/x").as_deref(), Some("shop"));
        assert_eq!(app("/shopping").as_deref(), Some("root"));
        assert_eq!(app("/shop/cart").as_deref(), Some("cart"));
        assert_eq!(app("/shop/cart/1").as_deref(), Some("cart"));
        assert_eq!(t.app_for("/shop").map(|(_, k)| k), Some("shop/Ingress"));
        let no_root = RouteTable {
            apps: vec![("shop".into(), "/shop".into(), key("shop", "I"))],
            ..Default::default()
        };
        assert!(no_root.app_for("/other").is_none());
    }
}
