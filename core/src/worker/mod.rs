//! The core worker: the part of the runtime inside every process that runs
//! user code — the driver and each worker process.
//!
//! It owns the objects this process created (their state, who borrows them,
//! when to free them), counts this process's references to others' objects,
//! submits tasks ([`submitter`]) and actor calls ([`actor_caller`]), and in
//! worker processes executes what is pushed to it ([`executor`]). It serves
//! `CoreWorkerService` on its own Unix socket.

pub(crate) mod actor_caller;
pub(crate) mod events;
pub(crate) mod executor;
pub(crate) mod submit;
pub(crate) mod submitter;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, watch};

use crate::codec::{self, ContainedRef, Encoded, ObjectBytes, Value};
use crate::error::{Error, Result};
use crate::ids::{ActorId, ObjectId};
use crate::object_ref::RefHandle;
use crate::object_store;
use crate::proto::{self, core_worker_service_client::CoreWorkerServiceClient, node_service_client::NodeServiceClient};
use crate::rpc::Chan;

/// Objects at most this large travel inline (in task specs, replies and the
/// owner's memory); larger ones go to the shared-memory store.
pub(crate) const INLINE_MAX: usize = 100 * 1024;
/// How long a thread about to wait for a reply that usually comes within
/// microseconds polls before parking (see `get_blocking`).
pub(crate) const SPIN: Duration = Duration::from_micros(200);

/// Where a ready object's bytes are.
#[derive(Clone)]
pub(crate) enum Location {
    Inline(ObjectBytes),
    /// In the shared-memory store of the node at this TCP address ("" in
    /// the embedded cluster).
    Store(String),
}

#[derive(Clone)]
pub(crate) enum ObjState {
    Pending,
    Ready(Location),
    Failed(Error),
}

/// An object this process owns.
pub(crate) struct Owned {
    pub(crate) state: watch::Sender<ObjState>,
    borrowers: HashSet<String>,
    /// Submitted tasks that take it as an argument.
    pins: usize,
    /// References inside the value, kept alive while it exists.
    contained: Vec<ContainedRef>,
    /// The task that made it, while its value sits in a node's store.
    lineage: Option<Arc<submitter::Lineage>>,
}

/// How many times one read rebuilds a lost object before giving up.
const MAX_REBUILDS_PER_READ: u32 = 3;

struct RefCount {
    local: usize,
    /// Borrowed references: told the owner we borrow it.
    registered: bool,
}

/// The per-process runtime state.
pub(crate) struct CoreWorker {
    pub(crate) worker_id: u64,
    pub(crate) addr: String,
    pub(crate) is_driver: bool,
    pub(crate) handle: tokio::runtime::Handle,
    pub(crate) node: NodeServiceClient<Chan>,
    /// TCP address of this process's node ("" in the embedded cluster).
    pub(crate) node_addr: String,
    /// The job this process belongs to ("" in the embedded cluster).
    pub(crate) job_id: String,
    pub(crate) store_dir: PathBuf,
    objects: Mutex<HashMap<ObjectId, Owned>>,
    refs: Mutex<HashMap<ObjectId, RefCount>>,
    /// Objects of ours that a task lent back to us inside a result still on
    /// its way here: each count is a local reference held until that result
    /// arrives (else the task dropping its own copy could free the object
    /// in between).
    self_lent: Mutex<HashMap<ObjectId, usize>>,
    peers: crate::rpc::ChannelCache,
    /// Live mappings of store objects, so repeated reads share one mapping.
    mapped: Mutex<HashMap<ObjectId, codec::WeakObjectBytes>>,
    pub(crate) submitter: submitter::TaskSubmitter,
    pub(crate) actors: actor_caller::ActorCaller,
    /// Store objects to free, waiting for the free loop or for this
    /// process's next reservation on the same node.
    frees: Arc<PendingFrees>,
    borrow_tx: mpsc::UnboundedSender<(String, ObjectId)>,
    pub(crate) executor: Option<Arc<executor::Executor>>,
    /// Tasks submitted here that have not reached a worker (for listings).
    pub(crate) queued: events::QueuedTasks,
    generators: Mutex<HashMap<crate::ids::TaskId, mpsc::UnboundedSender<crate::generator::GenEvent>>>,
    /// Lifetime objects of the actors this process created (see
    /// [`crate::actor`]): freeing one kills its actor.
    actor_lifetimes: Mutex<HashMap<ObjectId, ActorId>>,
    /// Objects passed to the constructors of actors this process created:
    /// kept while the actor may restart (re-running its constructor), freed
    /// when it ends for good.
    actor_args: Mutex<HashMap<ActorId, Vec<Arc<RefHandle>>>>,
    /// This process's node: its id and TCP address, asked once.
    node_identity: tokio::sync::OnceCell<(String, String)>,
    /// The embedded cluster's node, when it runs in this very process (the
    /// driver of an embedded cluster): calls it is the only one to serve
    /// go to it directly instead of over gRPC ([`CoreWorker::embedded_node`]).
    embedded_node: std::sync::OnceLock<crate::node::NodeDaemon>,
}

static CURRENT: RwLock<Option<Arc<CoreWorker>>> = RwLock::new(None);

/// The runtime of this process, or an error telling the user to call `init`.
pub(crate) fn current() -> Result<Arc<CoreWorker>> {
    CURRENT.read().clone().ok_or_else(|| {
        Error::Runtime("rayforge is not initialized: call rayforge::init(Config::default()) first".into())
    })
}

pub(crate) fn try_current() -> Option<Arc<CoreWorker>> {
    CURRENT.read().clone()
}

pub(crate) fn install(cw: Arc<CoreWorker>) -> Result<()> {
    let mut g = CURRENT.write();
    if g.is_some() {
        return Err(Error::Runtime("rayforge is already initialized in this process".into()));
    }
    *g = Some(cw);
    Ok(())
}

pub(crate) fn uninstall() -> Option<Arc<CoreWorker>> {
    CURRENT.write().take()
}

impl CoreWorker {
    pub(crate) fn new(
        worker_id: u64,
        addr: String,
        is_driver: bool,
        handle: tokio::runtime::Handle,
        node: NodeServiceClient<Chan>,
        place: NodePlace,
        executor: Option<Arc<executor::Executor>>,
    ) -> Arc<CoreWorker> {
        let frees = Arc::new(PendingFrees::default());
        let (borrow_tx, borrow_rx) = mpsc::unbounded_channel();
        let cw = Arc::new(CoreWorker {
            worker_id,
            addr,
            is_driver,
            handle: handle.clone(),
            node,
            node_addr: place.node_addr,
            job_id: place.job_id,
            store_dir: place.store_dir,
            objects: Mutex::new(HashMap::new()),
            refs: Mutex::new(HashMap::new()),
            self_lent: Mutex::new(HashMap::new()),
            peers: Default::default(),
            mapped: Mutex::new(HashMap::new()),
            submitter: submitter::TaskSubmitter::default(),
            actors: actor_caller::ActorCaller::default(),
            frees: frees.clone(),
            borrow_tx,
            executor,
            queued: events::QueuedTasks::default(),
            generators: Mutex::new(HashMap::new()),
            actor_lifetimes: Mutex::new(HashMap::new()),
            actor_args: Mutex::new(HashMap::new()),
            node_identity: tokio::sync::OnceCell::new(),
            embedded_node: std::sync::OnceLock::new(),
        });
        handle.spawn(free_loop(Arc::downgrade(&cw), frees));
        handle.spawn(borrower_reaper(Arc::downgrade(&cw)));
        handle.spawn(unborrow_loop(Arc::downgrade(&cw), borrow_rx));
        handle.spawn(events::QueuedTasks::report_loop(Arc::downgrade(&cw), cw.node.clone()));
        cw
    }

    /// A channel to another process's CoreWorkerService (cached).
    pub(crate) fn peer(&self, addr: &str) -> Result<CoreWorkerServiceClient<Chan>> {
        Ok(crate::rpc::worker_client(self.channel(addr)?))
    }

    /// A client of the node daemon at `addr` ("" or our own node's address:
    /// the local node).
    pub(crate) fn node_at(&self, addr: &str) -> Result<NodeServiceClient<Chan>> {
        if addr.is_empty() || addr == self.node_addr {
            return Ok(self.node.clone());
        }
        Ok(crate::rpc::node_client(self.channel(addr)?))
    }

    /// A cached channel to any address.
    fn channel(&self, addr: &str) -> Result<Chan> {
        // Callers may be outside the runtime (user threads).
        let _rt = self.handle.enter();
        self.peers.get(addr)
    }

    pub(crate) fn forget_peer(&self, addr: &str) {
        self.peers.forget(addr);
    }

    /// Registers a new object owned here, pending until its task finishes.
    pub(crate) fn own_pending(&self, id: ObjectId) -> Arc<RefHandle> {
        self.objects.lock().entry(id).or_insert_with(|| Owned {
            state: watch::channel(ObjState::Pending).0,
            borrowers: HashSet::new(),
            pins: 0,
            contained: Vec::new(),
            lineage: None,
        });
        RefHandle::new(id, self.addr.clone())
    }

    /// Marks an owned object ready or failed, waking every waiter.
    pub(crate) fn resolve(&self, id: ObjectId, st: ObjState, contained: Vec<ContainedRef>) {
        let mut objs = self.objects.lock();
        if let Some(o) = objs.get_mut(&id) {
            o.contained = contained;
            o.state.send_replace(st);
        } else if let ObjState::Ready(Location::Store(node)) = st {
            // Nobody references it any more: free the stored copy at once.
            self.frees.push(id, node);
        }
    }

    /// Stores a value as a new object owned by this process.
    pub(crate) fn put_encoded(&self, enc: Encoded) -> Result<Arc<RefHandle>> {
        let id = ObjectId::for_put();
        let handle = self.own_pending(id);
        let loc = self.store_value(id, &enc)?;
        self.resolve(id, ObjState::Ready(loc), enc.refs.clone());
        Ok(handle)
    }

    /// Puts an encoded value where it belongs: inline when small, else into
    /// the node's shared-memory store (reserving space first).
    pub(crate) fn store_value(&self, id: ObjectId, enc: &Encoded) -> Result<Location> {
        if enc.len() <= INLINE_MAX {
            return Ok(Location::Inline(ObjectBytes::from_vec(enc.to_vec())));
        }
        let reuse = self.block_on(self.reserve(id, enc.len() as u64))??;
        object_store::write_object(&self.store_dir, &id, enc, reuse.as_deref())?;
        Ok(Location::Store(self.node_addr.clone()))
    }

    /// [`CoreWorker::put_encoded`] from async code: a large value is copied
    /// into the store on a blocking thread, not on the caller's runtime.
    pub(crate) async fn put_encoded_async(&self, enc: Encoded) -> Result<Arc<RefHandle>> {
        let id = ObjectId::for_put();
        let handle = self.own_pending(id);
        let refs = enc.refs.clone();
        let loc = if enc.len() <= INLINE_MAX {
            Location::Inline(ObjectBytes::from_vec(enc.to_vec()))
        } else {
            let reuse = self.reserve(id, enc.len() as u64).await?;
            let dir = self.store_dir.clone();
            tokio::task::spawn_blocking(move || object_store::write_object(&dir, &id, &enc, reuse.as_deref()))
                .await
                .map_err(|e| Error::Internal(format!("the store writer thread failed: {e}")))??;
            Location::Store(self.node_addr.clone())
        };
        self.resolve(id, ObjState::Ready(loc), refs);
        Ok(handle)
    }

    /// Reserves `size` bytes of the node's store for object `id`, handing
    /// the node the frees this process has pending for it first; returns the
    /// pooled file to write over, if the node offers one.
    async fn reserve(&self, id: ObjectId, size: u64) -> Result<Option<String>> {
        let free = self.frees.take_for(&self.node_addr).await;
        let reply = self
            .node
            .clone()
            .create_object(proto::CreateObjectRequest {
                id: id.0.to_vec(),
                size,
                free: free.iter().map(|f| f.0.to_vec()).collect(),
            })
            .await;
        if reply.is_err() {
            // Not delivered: the free loop sends them later.
            for f in free {
                self.frees.push(f, self.node_addr.clone());
            }
        }
        let reply = reply
            .map_err(|s| Error::rpc("reserving object store space", s))?
            .into_inner();
        if let Some(e) = reply.error {
            return Err(Error::from_proto(&e));
        }
        Ok(Some(reply.reuse).filter(|r| !r.is_empty()))
    }

    /// Runs a future to completion from synchronous code.
    pub(crate) fn block_on<F: std::future::Future + Send>(&self, f: F) -> Result<F::Output>
    where
        F::Output: Send,
    {
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            // Inside async code (an async actor method): blocking this thread
            // must not starve the runtime. On a multi-thread runtime hand its
            // work to another thread; otherwise run on a helper thread.
            if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
                return Ok(tokio::task::block_in_place(|| self.handle.block_on(f)));
            }
            return std::thread::scope(|s| {
                s.spawn(|| self.handle.block_on(f))
                    .join()
                    .map_err(|_| Error::Internal("blocking helper thread panicked".into()))
            });
        }
        Ok(self.handle.block_on(f))
    }

    /// The node of the embedded cluster running in this process, if this is
    /// its driver.
    pub(crate) fn embedded_node(&self) -> Option<&crate::node::NodeDaemon> {
        self.embedded_node.get()
    }

    /// Records the embedded cluster's node this process runs (once, at
    /// `init`).
    pub(crate) fn set_embedded_node(&self, node: crate::node::NodeDaemon) {
        let _ = self.embedded_node.set(node);
    }

    /// The id and TCP address of this process's node (asked of the node
    /// the first time; a node keeps both for its life).
    pub(crate) async fn node_identity(&self) -> Result<(String, String)> {
        self.node_identity
            .get_or_try_init(|| async {
                let mut node = self.node.clone();
                let r = node
                    .node_info(proto::NodeInfoRequest::default())
                    .await
                    .map_err(|s| Error::rpc("asking the node for its id", s))?
                    .into_inner();
                Ok::<_, Error>((r.node_id, r.addr))
            })
            .await
            .cloned()
    }

    /// Reads an object of the local store, restoring it from disk if spilled.
    pub(crate) async fn read_store(&self, id: ObjectId) -> Result<ObjectBytes> {
        if let Some(b) = self.mapped.lock().get(&id).and_then(|w| w.upgrade()) {
            return Ok(b);
        }
        for _ in 0..3 {
            if let Some(b) = object_store::map_object(&self.store_dir, &id)? {
                let mut m = self.mapped.lock();
                if m.len() > 1024 {
                    m.retain(|_, w| w.upgrade().is_some());
                }
                m.insert(id, b.downgrade());
                return Ok(b);
            }
            let r = self
                .node
                .clone()
                .restore_object(proto::RestoreObjectRequest { id: id.0.to_vec() })
                .await
                .map_err(|s| Error::rpc("restoring a spilled object", s))?
                .into_inner();
            if let Some(e) = r.error {
                return Err(Error::from_proto(&e));
            }
        }
        Err(Error::ObjectLost {
            id: id.hex(),
            cause: "it vanished from the object store while being read".into(),
        })
    }

    /// Reads a stored object held by the node at `node` ("" or ours: the
    /// local store), pulling a copy to this node first when it is elsewhere.
    pub(crate) async fn read_store_at(&self, id: ObjectId, node: &str) -> Result<ObjectBytes> {
        if !node.is_empty() && node != self.node_addr {
            if let Some(b) = self.mapped.lock().get(&id).and_then(|w| w.upgrade()) {
                return Ok(b);
            }
            if object_store::map_object(&self.store_dir, &id)?.is_none() {
                let r = self
                    .node
                    .clone()
                    .pull_object(proto::PullObjectRequest {
                        id: id.0.to_vec(),
                        from_addr: node.to_string(),
                    })
                    .await
                    .map_err(|s| Error::rpc("pulling an object from another node", s))?
                    .into_inner();
                if let Some(e) = r.error {
                    return Err(Error::from_proto(&e));
                }
            }
        }
        self.read_store(id).await
    }

    /// Waits for an object and returns its bytes. A stored copy lost with
    /// its node is rebuilt from lineage by the owner, and read again.
    pub(crate) async fn fetch(&self, id: ObjectId, owner: &str) -> Result<ObjectBytes> {
        let mut rebuilds = 0;
        loop {
            let (node, read) = if owner == self.addr {
                self.fetch_owned(id).await?
            } else {
                self.fetch_borrowed(id, owner).await?
            };
            let loss = match read {
                Err(e @ Error::ObjectLost { .. }) if self.is_remote(&node) && rebuilds < MAX_REBUILDS_PER_READ => e,
                other => return other,
            };
            rebuilds += 1;
            tracing::info!(object = %id.hex(), node = %node, "stored copy lost; rebuilding it from lineage: {loss}");
            if owner == self.addr {
                self.rebuild(id, &node, &loss)?;
            } else {
                let reply = self
                    .peer(owner)?
                    .rebuild_object(proto::RebuildObjectRequest {
                        id: id.0.to_vec(),
                        lost_node: node.clone(),
                        loss: Some(loss.to_proto()),
                    })
                    .await
                    .map_err(|_| loss.clone())?
                    .into_inner();
                if let Some(e) = reply.error {
                    return Err(Error::from_proto(&e));
                }
            }
        }
    }

    /// Whether `node` is another node than ours.
    fn is_remote(&self, node: &str) -> bool {
        !node.is_empty() && node != self.node_addr
    }

    /// Waits for an object owned here; returns the node holding its stored
    /// copy ("" when inline) and the read.
    async fn fetch_owned(&self, id: ObjectId) -> Result<(String, Result<ObjectBytes>)> {
        let mut rx = {
            let objs = self.objects.lock();
            let o = objs.get(&id).ok_or_else(|| Error::ObjectLost {
                id: id.hex(),
                cause: "it was freed by its owner (no references were left)".into(),
            })?;
            o.state.subscribe()
        };
        let st = rx
            .wait_for(|s| !matches!(s, ObjState::Pending))
            .await
            .map_err(|_| Error::ObjectLost {
                id: id.hex(),
                cause: "freed while waiting".into(),
            })?
            .clone();
        Ok(match st {
            ObjState::Ready(Location::Inline(b)) => (String::new(), Ok(b)),
            ObjState::Ready(Location::Store(node)) => {
                let read = self.read_store_at(id, &node).await;
                (node, read)
            }
            ObjState::Failed(e) => (String::new(), Err(e)),
            ObjState::Pending => (String::new(), Err(Error::Internal("pending after wait".into()))),
        })
    }

    /// Asks the owner for an object; returns the node holding its stored
    /// copy ("" when inline) and the read.
    async fn fetch_borrowed(&self, id: ObjectId, owner: &str) -> Result<(String, Result<ObjectBytes>)> {
        if owner.is_empty() {
            return Err(Error::Runtime("this reference was made before rayforge::init".into()));
        }
        let mut client = self.peer(owner)?;
        let reply = client
            .get_object(proto::GetObjectRequest { id: id.0.to_vec() })
            .await
            .map_err(|s| {
                self.forget_peer(owner);
                Error::ObjectLost {
                    id: id.hex(),
                    cause: format!("its owner at {owner} is unreachable ({})", s.message()),
                }
            })?;
        let reply = reply.into_inner();
        Ok(match reply.result {
            Some(proto::get_object_reply::Result::Inline(b)) => (String::new(), Ok(ObjectBytes::from_vec(b))),
            Some(proto::get_object_reply::Result::InStore(_)) => {
                let read = self.read_store_at(id, &reply.node_addr).await;
                (reply.node_addr, read)
            }
            Some(proto::get_object_reply::Result::Error(e)) => (String::new(), Err(Error::from_proto(&e))),
            None => (String::new(), Err(Error::Internal("empty GetObject reply".into()))),
        })
    }

    /// Records the lineage of stored returns of a finished task.
    pub(crate) fn set_lineage(&self, ids: &[ObjectId], lineage: Arc<submitter::Lineage>) {
        let mut objs = self.objects.lock();
        for id in ids {
            if let Some(o) = objs.get_mut(id) {
                o.lineage = Some(lineage.clone());
            }
        }
    }

    /// The stored copy of owned object `id` on node `lost` could not be read
    /// (`loss`): re-run the task that made it, once for all of its returns
    /// lost with that node. Errors when it cannot be rebuilt (a `put`, an
    /// actor call's result, no retries left); `Ok` means "read it again".
    pub(crate) fn rebuild(&self, id: ObjectId, lost: &str, loss: &Error) -> Result<()> {
        let why = match loss {
            Error::ObjectLost { cause, .. } => cause.clone(),
            other => other.to_string(),
        };
        let (task, lost_ids) = {
            let mut objs = self.objects.lock();
            let Some(o) = objs.get(&id) else {
                return Err(loss.clone());
            };
            if !matches!(&*o.state.borrow(), ObjState::Ready(Location::Store(n)) if n == lost) {
                // Already rebuilt, being rebuilt, or failed: read it again.
                return Ok(());
            }
            let Some(lineage) = o.lineage.clone() else {
                return Err(loss.clone());
            };
            if !lineage.can_rerun() {
                return Err(Error::ObjectLost {
                    id: id.hex(),
                    cause: format!("{why}; its task `{}` has no retries left to rebuild it", lineage.name()),
                });
            }
            let mut lost_ids = Vec::new();
            for rid in lineage.return_ids() {
                if let Some(o) = objs.get_mut(&rid) {
                    if matches!(&*o.state.borrow(), ObjState::Ready(Location::Store(n)) if n == lost) {
                        o.state.send_replace(ObjState::Pending);
                        o.lineage = None;
                        lost_ids.push(rid);
                    }
                }
            }
            (lineage.rerun(why), lost_ids)
        };
        tracing::info!(task = %task.spec.display_name, node = %lost, "re-running a task to rebuild {} lost object(s)", lost_ids.len());
        for rid in lost_ids {
            // A node that only failed to send still holds its copy.
            self.frees.push(rid, lost.to_string());
        }
        submitter::TaskSubmitter::submit(&current()?, task);
        Ok(())
    }

    /// Serves GetObject for an owned object.
    pub(crate) async fn serve_object(&self, id: ObjectId) -> proto::GetObjectReply {
        let mut node_addr = String::new();
        let result = self.serve_object_result(id, &mut node_addr).await;
        proto::GetObjectReply {
            result: Some(result),
            node_addr,
        }
    }

    async fn serve_object_result(&self, id: ObjectId, node_addr: &mut String) -> proto::get_object_reply::Result {
        use proto::get_object_reply::Result as R;
        let rx = self.objects.lock().get(&id).map(|o| o.state.subscribe());
        let Some(mut rx) = rx else {
            return R::Error(
                Error::ObjectLost {
                    id: id.hex(),
                    cause: "its owner no longer has it (freed)".into(),
                }
                .to_proto(),
            );
        };
        let st = match rx.wait_for(|s| !matches!(s, ObjState::Pending)).await {
            Ok(s) => s.clone(),
            Err(_) => {
                return R::Error(
                    Error::ObjectLost {
                        id: id.hex(),
                        cause: "freed".into(),
                    }
                    .to_proto(),
                )
            }
        };
        match st {
            ObjState::Ready(Location::Inline(b)) => R::Inline(b.as_slice().to_vec()),
            ObjState::Ready(Location::Store(node)) => {
                *node_addr = node;
                R::InStore(0)
            }
            ObjState::Failed(e) => R::Error(e.to_proto()),
            ObjState::Pending => R::Error(Error::Internal("pending after wait".into()).to_proto()),
        }
    }

    /// Whether an owned object is ready (`None` when not owned here).
    pub(crate) fn owned_ready(&self, id: &ObjectId) -> Option<bool> {
        self.objects
            .lock()
            .get(id)
            .map(|o| !matches!(*o.state.borrow(), ObjState::Pending))
    }

    pub(crate) fn owned_state(&self, id: &ObjectId) -> Option<watch::Receiver<ObjState>> {
        self.objects.lock().get(id).map(|o| o.state.subscribe())
    }

    pub(crate) fn update_borrowers(&self, borrower: &str, add: &[ObjectId], remove: &[ObjectId]) {
        if borrower == self.addr {
            // An object of ours handed back inside a task's result: not a
            // borrow but a local reference, held from now until the result
            // arrives and `adopt_lent` takes it over.
            for id in add {
                if self.objects.lock().contains_key(id) {
                    self.acquire(id);
                    *self.self_lent.lock().entry(*id).or_insert(0) += 1;
                }
            }
            return;
        }
        {
            let mut objs = self.objects.lock();
            for id in add {
                if let Some(o) = objs.get_mut(id) {
                    o.borrowers.insert(borrower.to_string());
                }
            }
            for id in remove {
                if let Some(o) = objs.get_mut(id) {
                    o.borrowers.remove(borrower);
                }
            }
        }
        for id in remove {
            self.maybe_free(id);
        }
    }

    /// Borrowers that alone keep objects of ours alive (we hold no
    /// reference): the processes to check on.
    fn sole_borrowers(&self) -> HashSet<String> {
        // One lock at a time (other paths take these two in either order);
        // names are copied only for the few objects nobody here holds.
        let borrowed: Vec<ObjectId> = self
            .objects
            .lock()
            .iter()
            .filter(|(_, o)| !o.borrowers.is_empty())
            .map(|(id, _)| *id)
            .collect();
        let unheld: Vec<ObjectId> = {
            let refs = self.refs.lock();
            borrowed.into_iter().filter(|id| !refs.contains_key(id)).collect()
        };
        let objs = self.objects.lock();
        unheld
            .iter()
            .filter_map(|id| objs.get(id))
            .flat_map(|o| o.borrowers.iter().cloned())
            .collect()
    }

    /// A borrower process is gone: it holds nothing any more.
    fn forget_borrower(&self, borrower: &str) {
        let ids: Vec<ObjectId> = {
            let mut objs = self.objects.lock();
            objs.iter_mut()
                .filter_map(|(id, o)| o.borrowers.remove(borrower).then_some(*id))
                .collect()
        };
        tracing::debug!(
            borrower,
            objects = ids.len(),
            "a borrower died; dropping its references"
        );
        self.forget_peer(borrower);
        for id in &ids {
            self.maybe_free(id);
        }
    }

    fn maybe_free(&self, id: &ObjectId) {
        if self.refs.lock().contains_key(id) {
            return;
        }
        let removed = {
            let mut objs = self.objects.lock();
            match objs.get(id) {
                Some(o) if o.pins == 0 && o.borrowers.is_empty() => objs.remove(id),
                _ => None,
            }
        };
        let Some(o) = removed else { return };
        if let ObjState::Ready(Location::Store(node)) = &*o.state.borrow() {
            self.frees.push(*id, node.clone());
        }
        // Dropping `o` drops the references it contained.
        drop(o);
        // An actor's lifetime object is gone only when no borrower holds
        // it either: then the actor ends.
        let actor = self.actor_lifetimes.lock().remove(id);
        if let Some(actor) = actor {
            self.end_unreferenced_actor(actor);
        }
    }

    /// Makes the lifetime object of a new actor created by this process.
    pub(crate) fn actor_lifetime(&self, actor: ActorId) -> Result<Arc<RefHandle>> {
        let h = self.put_encoded(codec::encode(&())?)?;
        self.actor_lifetimes.lock().insert(h.id, actor);
        Ok(h)
    }

    /// Keeps an actor's constructor arguments alive while it may restart.
    pub(crate) fn pin_actor_args(&self, actor: ActorId, pins: Vec<Arc<RefHandle>>) {
        if !pins.is_empty() {
            self.actor_args.lock().insert(actor, pins);
        }
    }

    /// An actor this process created ended for good: its constructor
    /// arguments may go.
    pub(crate) fn release_actor_args(&self, actor: ActorId) {
        // Dropped outside the lock: freeing may take other locks.
        let pins = self.actor_args.lock().remove(&actor);
        drop(pins);
    }

    /// The last handle on an actor this process created is gone: end it.
    fn end_unreferenced_actor(&self, actor: ActorId) {
        tracing::debug!(%actor, "last handle dropped; ending the actor");
        self.release_actor_args(actor);
        let mut node = self.node.clone();
        self.handle.spawn(async move {
            let r = node
                .kill_actor(proto::KillActorRequest {
                    actor_id: actor.0.to_vec(),
                    no_restart: true,
                    cause: "all of its handles were dropped (an actor that is not detached ends with its last \
                            handle)"
                        .into(),
                })
                .await;
            match r.map(|r| r.into_inner().error) {
                Ok(None) => {}
                Ok(Some(e)) => tracing::debug!(%actor, "ending an unreferenced actor: {}", e.message),
                Err(s) => tracing::debug!(%actor, "ending an unreferenced actor: {}", s.message()),
            }
        });
    }

    /// Registers this process as borrower of references it just decoded, so
    /// their owners keep them while we hold them.
    pub(crate) async fn register_borrows(&self, refs: &[ContainedRef]) {
        let mut by_owner: HashMap<&str, Vec<Vec<u8>>> = HashMap::new();
        {
            let mut table = self.refs.lock();
            for r in refs {
                if r.owner_addr == self.addr || r.owner_addr.is_empty() {
                    continue;
                }
                if let Some(c) = table.get_mut(&r.id) {
                    if !c.registered {
                        c.registered = true;
                        by_owner.entry(&r.owner_addr).or_default().push(r.id.0.to_vec());
                    }
                }
            }
        }
        for (owner, ids) in by_owner {
            if let Ok(mut c) = self.peer(owner) {
                let _ = c
                    .update_borrowers(proto::UpdateBorrowersRequest {
                        borrower_addr: self.addr.clone(),
                        add: ids,
                        remove: Vec::new(),
                    })
                    .await;
            }
        }
    }

    /// Takes over the borrows a task registered for this process on the
    /// references inside a value it returned: they are held as long as the
    /// value's object is, and released with it, whether or not it was ever
    /// decoded. (Decoding adds references of its own; the owner hears of
    /// the release once the last of them goes.)
    pub(crate) fn adopt_lent(&self, refs: &[proto::ObjectRefProto]) -> Vec<ContainedRef> {
        refs.iter()
            .filter_map(|r| {
                let id = ObjectId::from_bytes(&r.id)?;
                let handle = RefHandle::new(id, r.owner_addr.clone());
                if r.owner_addr != self.addr {
                    if let Some(c) = self.refs.lock().get_mut(&id) {
                        c.registered = true; // the task registered us
                    }
                } else if self.take_self_lent(&id) {
                    // The hold taken when the task lent it back passes to `handle`.
                    self.release(&id, &r.owner_addr);
                }
                let handle: Arc<dyn Send + Sync> = handle;
                Some(ContainedRef {
                    id,
                    owner_addr: r.owner_addr.clone(),
                    handle: Some(handle),
                })
            })
            .collect()
    }

    /// Takes one hold from `self_lent`; whether there was one.
    fn take_self_lent(&self, id: &ObjectId) -> bool {
        let mut lent = self.self_lent.lock();
        let Some(n) = lent.get_mut(id) else { return false };
        *n -= 1;
        if *n == 0 {
            lent.remove(id);
        }
        true
    }

    /// Registers `borrower` with the owners of `refs` (used before handing a
    /// value containing references to another process).
    pub(crate) async fn lend(&self, borrower: &str, refs: &[ContainedRef]) {
        let mut by_owner: HashMap<&str, Vec<ObjectId>> = HashMap::new();
        for r in refs {
            by_owner.entry(&r.owner_addr).or_default().push(r.id);
        }
        for (owner, ids) in by_owner {
            if owner == self.addr {
                self.update_borrowers(borrower, &ids, &[]);
            } else if let Ok(mut c) = self.peer(owner) {
                let _ = c
                    .update_borrowers(proto::UpdateBorrowersRequest {
                        borrower_addr: borrower.to_string(),
                        add: ids.iter().map(|i| i.0.to_vec()).collect(),
                        remove: Vec::new(),
                    })
                    .await;
            }
        }
    }

    fn acquire(&self, id: &ObjectId) {
        self.refs
            .lock()
            .entry(*id)
            .or_insert(RefCount {
                local: 0,
                registered: false,
            })
            .local += 1;
    }

    fn release(&self, id: &ObjectId, owner: &str) {
        let gone = {
            let mut t = self.refs.lock();
            match t.get_mut(id) {
                Some(c) if c.local > 1 => {
                    c.local -= 1;
                    None
                }
                Some(_) => t.remove(id),
                None => None,
            }
        };
        let Some(c) = gone else { return };
        if owner == self.addr {
            self.maybe_free(id);
        } else if c.registered {
            let _ = self.borrow_tx.send((owner.to_string(), *id));
        }
    }

    /// Starts collecting the items of a generator task this process submits.
    pub(crate) fn register_generator(
        &self,
        task: crate::ids::TaskId,
    ) -> mpsc::UnboundedReceiver<crate::generator::GenEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.generators.lock().insert(task, tx);
        rx
    }

    /// A generator task reported an item: own it and hand it to the caller.
    pub(crate) fn generator_item(&self, task: crate::ids::TaskId, item: proto::ReturnObject) {
        let Some(id) = ObjectId::from_bytes(&item.id) else {
            return;
        };
        if item.kind.is_none() {
            return;
        }
        let contained = self.adopt_lent(&item.contained);
        let st = submitter::return_state(item);
        let handle = self.own_pending(id);
        self.resolve(id, st, contained);
        if let Some(tx) = self.generators.lock().get(&task) {
            let _ = tx.send(crate::generator::GenEvent::Item(handle));
        }
    }

    /// A generator task ended (successfully or not).
    pub(crate) fn generator_end(&self, task: crate::ids::TaskId, result: Result<()>) {
        if let Some(tx) = self.generators.lock().remove(&task) {
            let _ = tx.send(crate::generator::GenEvent::End(result));
        }
    }

    /// Number of objects this process owns (for tests and `status`).
    pub(crate) fn num_owned(&self) -> usize {
        self.objects.lock().len()
    }
}

/// Store objects this process no longer references, by the node holding
/// them. The free loop sends them in batches; a reservation of store space
/// on the same node takes them first, so that the freed memory is there to
/// reuse (a `put` in a loop would otherwise often outrun the free before it
/// and get fresh memory).
#[derive(Default)]
struct PendingFrees {
    by_node: Mutex<HashMap<String, Vec<ObjectId>>>,
    /// Per node, held while frees for it are taken and on their way: once a
    /// reservation holds it, every free pushed before has reached the node
    /// or is in its own hands.
    sending: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    wake: tokio::sync::Notify,
}

impl PendingFrees {
    fn push(&self, id: ObjectId, node: String) {
        self.by_node.lock().entry(node).or_default().push(id);
        self.wake.notify_one();
    }

    fn sending(&self, node: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.sending.lock().entry(node.to_string()).or_default().clone()
    }

    /// The frees waiting for one node, once no earlier batch for it is
    /// still on its way.
    async fn take_for(&self, node: &str) -> Vec<ObjectId> {
        let sending = self.sending(node);
        let _turn = sending.lock().await;
        self.by_node.lock().remove(node).unwrap_or_default()
    }
}

/// Sends store frees, in batches, to the nodes holding the objects.
async fn free_loop(cw: std::sync::Weak<CoreWorker>, frees: Arc<PendingFrees>) {
    loop {
        frees.wake.notified().await;
        let nodes: Vec<String> = frees.by_node.lock().keys().cloned().collect();
        let Some(cw) = cw.upgrade() else { return };
        for node in nodes {
            let sending = frees.sending(&node);
            let _turn = sending.lock().await;
            let ids: Vec<Vec<u8>> = match frees.by_node.lock().remove(&node) {
                Some(ids) => ids.iter().map(|id| id.0.to_vec()).collect(),
                None => continue, // a reservation took them along
            };
            if let Ok(mut client) = cw.node_at(&node) {
                let _ = client.free_objects(proto::FreeObjectsRequest { ids }).await;
            }
        }
    }
}

/// Where a process sits: its node and job.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodePlace {
    pub(crate) store_dir: PathBuf,
    pub(crate) node_addr: String,
    pub(crate) job_id: String,
}

/// How often an owner checks on processes that alone keep its objects.
const BORROWER_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Frees objects whose only remaining borrowers died without telling us (a
/// killed worker, a crashed node): each borrower that alone keeps an object
/// is asked a no-op; one that cannot be reached at all is forgotten. A slow
/// answer proves nothing and keeps the borrower.
async fn borrower_reaper(cw: std::sync::Weak<CoreWorker>) {
    // Unreachable borrowers and how many checks in a row found them so: a
    // blip of the network does not make a live borrower lose its objects.
    let mut strikes: HashMap<String, u32> = HashMap::new();
    loop {
        tokio::time::sleep(BORROWER_CHECK_EVERY).await;
        let Some(me) = cw.upgrade() else { return };
        let suspects = me.sole_borrowers();
        strikes.retain(|a, _| suspects.contains(a));
        for addr in suspects {
            let Ok(mut peer) = me.peer(&addr) else {
                continue;
            };
            let ping = proto::UpdateBorrowersRequest {
                borrower_addr: me.addr.clone(),
                add: Vec::new(),
                remove: Vec::new(),
            };
            let r = tokio::time::timeout(Duration::from_secs(5), peer.update_borrowers(ping)).await;
            match r {
                Ok(Err(s)) if s.code() == tonic::Code::Unavailable => {
                    let n = strikes.entry(addr.clone()).or_default();
                    *n += 1;
                    if *n >= 2 {
                        strikes.remove(&addr);
                        me.forget_borrower(&addr);
                    }
                }
                _ => {
                    strikes.remove(&addr);
                }
            }
        }
    }
}

/// Tells owners, in batches, that this process no longer borrows objects.
async fn unborrow_loop(cw: std::sync::Weak<CoreWorker>, mut rx: mpsc::UnboundedReceiver<(String, ObjectId)>) {
    while let Some(first) = rx.recv().await {
        let mut batch: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        batch.entry(first.0).or_default().push(first.1 .0.to_vec());
        while let Ok((o, id)) = rx.try_recv() {
            batch.entry(o).or_default().push(id.0.to_vec());
        }
        let Some(cw) = cw.upgrade() else { return };
        for (owner, ids) in batch {
            if let Ok(mut c) = cw.peer(&owner) {
                let _ = c
                    .update_borrowers(proto::UpdateBorrowersRequest {
                        borrower_addr: cw.addr.clone(),
                        add: Vec::new(),
                        remove: ids,
                    })
                    .await;
            }
        }
    }
}

// ---------- entry points used by ObjectRef and the public API ----------

pub(crate) fn ref_acquired(id: &ObjectId, _owner: &str) {
    if let Some(cw) = try_current() {
        cw.acquire(id);
    }
}

pub(crate) fn ref_released(id: &ObjectId, owner: &str) {
    if let Some(cw) = try_current() {
        cw.release(id, owner);
    }
}

/// Decodes a value and registers any references inside it.
pub(crate) fn decode_value<T: Value>(b: &ObjectBytes) -> Result<T> {
    let (v, refs) = codec::decode_value_with_refs::<T>(b)?;
    if !refs.is_empty() {
        if let Some(cw) = try_current() {
            let cw2 = cw.clone();
            cw.block_on(async move { cw2.register_borrows(&refs).await })?;
        }
    }
    Ok(v)
}

pub(crate) async fn decode_value_async<T: Value>(b: &ObjectBytes) -> Result<T> {
    let (v, refs) = codec::decode_value_with_refs::<T>(b)?;
    if !refs.is_empty() {
        if let Some(cw) = try_current() {
            cw.register_borrows(&refs).await;
        }
    }
    Ok(v)
}

/// Blocking get of several objects, in order. A worker blocked here lends its
/// CPU back to the node so nested tasks can run.
pub(crate) fn get_blocking(handles: &[Arc<RefHandle>], timeout: Option<Duration>) -> Result<Vec<ObjectBytes>> {
    let cw = current()?;
    let mut all_ready = handles.iter().all(|h| cw.owned_ready(&h.id) == Some(true));
    // A get right after a call (a synchronous call loop): the reply usually
    // comes within tens of microseconds, sooner than this thread could park
    // and be woken again, so poll for it briefly first. (Not ready yet, and
    // owned here: its reply comes to this process.)
    if !all_ready && handles.len() == 1 && handles[0].owner == cw.addr {
        let start = Instant::now();
        while start.elapsed() < SPIN {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            if cw.owned_ready(&handles[0].id) == Some(true) {
                all_ready = true;
                break;
            }
        }
    }
    let may_lend = !cw.is_driver && !all_ready;
    let cw2 = cw.clone();
    let hs: Vec<(ObjectId, String)> = handles.iter().map(|h| (h.id, h.owner.clone())).collect();
    let fut = async move {
        let mut out = Vec::with_capacity(hs.len());
        for (id, owner) in &hs {
            out.push(cw2.fetch(*id, owner).await?);
        }
        Ok::<_, Error>(out)
    };
    let mut node = cw.node.clone();
    let worker_id = cw.worker_id;
    let start = Instant::now();
    cw.block_on(async move {
        let mut fut = Box::pin(fut);
        if may_lend {
            // Objects that exist already (a reduce reading map outputs) come
            // back within a few milliseconds: lend the CPU only for a real
            // wait. Lending at once let the node start another task for every
            // such get, running far more tasks than CPUs.
            let grace = timeout.map_or(LEND_AFTER, |t| t.min(LEND_AFTER));
            if let Ok(r) = tokio::time::timeout(grace, &mut fut).await {
                return r;
            }
            tell_blocked(&mut node, worker_id, true).await;
        }
        let r = match timeout {
            Some(t) => {
                let left = t.saturating_sub(start.elapsed());
                tokio::time::timeout(left, fut)
                    .await
                    .unwrap_or(Err(Error::GetTimeout(t)))
            }
            None => fut.await,
        };
        if may_lend {
            // Past the grace period: the CPU was lent, take it back.
            tell_blocked(&mut node, worker_id, false).await;
        }
        r
    })?
}

/// How long a worker's `get` waits before lending its CPU back to the node.
const LEND_AFTER: Duration = Duration::from_millis(10);

/// Tells the node this worker is blocked (its CPU may go to another task) or
/// running again; best effort.
async fn tell_blocked(node: &mut NodeServiceClient<Chan>, worker_id: u64, blocked: bool) {
    let _ = node
        .notify_blocked(proto::NotifyBlockedRequest { worker_id, blocked })
        .await;
}

pub(crate) async fn get_async(h: &RefHandle) -> Result<ObjectBytes> {
    let cw = current()?;
    cw.fetch(h.id, &h.owner).await
}

/// Resolves when the object is ready (or failed).
pub(crate) async fn wait_ready(cw: &CoreWorker, id: ObjectId, owner: &str) {
    if owner == cw.addr {
        if let Some(mut rx) = cw.owned_state(&id) {
            let _ = rx.wait_for(|s| !matches!(s, ObjState::Pending)).await;
        }
        return;
    }
    let _ = cw.fetch(id, owner).await;
}
