//! Placement groups: gang-reserved bundles of resources.
//!
//! The node that manages actors (the embedded node, or the head's) manages
//! placement groups too, and the head persists them. Placing a group picks a
//! node per bundle by its strategy ([`plan`]) and asks each node to reserve
//! its bundles; a node that refuses (its free resources changed) undoes the
//! whole attempt, and the group stays `PENDING`, with the reason, until a
//! later attempt fits. A reserved bundle's resources are renamed for the
//! group on its node (`CPU_group_<i>_<id>`, `CPU_group_<id>`), so tasks and
//! actors scheduled into it ask for those. Removing a group releases its
//! bundles, which stops what ran in them; a group that lost a bundle with a
//! dead node is placed again whole.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::proto::{self, PlacementStrategy};

use super::scheduler::{bundle_index_of, fits, group_of, Resources};
use super::NodeDaemon;

pub(crate) use crate::proto::GroupState;

pub(crate) struct GroupEntry {
    pub(crate) rec: proto::PlacementGroupRecord,
    version: watch::Sender<u64>,
}

#[derive(Default)]
pub(crate) struct GroupTable {
    pub(crate) groups: HashMap<String, GroupEntry>,
    pub(crate) names: HashMap<String, String>,
    /// Groups with a placement attempt in flight.
    pub(crate) placing: HashSet<String>,
    /// Where changes are persisted (the head's control service).
    pub(crate) record: Option<Arc<crate::gcs::Gcs>>,
    /// Removed groups, oldest first: kept for `list placement-groups` up to
    /// [`KEEP_REMOVED`], then forgotten.
    pub(crate) removed: VecDeque<String>,
}

/// How many removed groups the table remembers.
const KEEP_REMOVED: usize = 1000;

impl GroupTable {
    /// Returns once the recorded groups are on the head's disk (a group
    /// reported created or removed must survive a head restart).
    fn durable(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let gcs = self.record.clone();
        async move {
            if let Some(gcs) = gcs {
                gcs.flush().await;
            }
        }
    }

    fn changed(&self, id: &str) {
        if let Some(g) = self.groups.get(id) {
            g.version.send_modify(|v| *v += 1);
            if let Some(gcs) = &self.record {
                gcs.save_group(g.rec.clone());
            }
        }
    }

    /// Remembers that `id` was removed, forgetting the oldest removed
    /// groups past [`KEEP_REMOVED`].
    fn note_removed(&mut self, id: &str) {
        self.removed.push_back(id.to_string());
        while self.removed.len() > KEEP_REMOVED {
            let Some(old) = self.removed.pop_front() else { break };
            self.groups.remove(&old);
            if let Some(gcs) = &self.record {
                gcs.forget_group(&old);
            }
        }
    }

    /// Loads the persisted groups (a restarted head).
    pub(crate) fn restore(&mut self, records: Vec<proto::PlacementGroupRecord>) {
        for rec in records {
            if rec.state() == GroupState::Removed {
                self.note_removed(&rec.id);
            } else if !rec.name.is_empty() {
                self.names.insert(rec.name.clone(), rec.id.clone());
            }
            self.groups.insert(
                rec.id.clone(),
                GroupEntry {
                    rec,
                    version: watch::channel(0).0,
                },
            );
        }
    }

    /// The group a resource demand refers to, if any, and its state (`None`
    /// when this table does not know the group).
    pub(crate) fn state_for(&self, res: &Resources) -> Option<(String, Option<GroupState>)> {
        let id = res.keys().find_map(|k| group_of(k))?;
        let state = self.groups.get(id).map(|g| g.rec.state());
        Some((id.to_string(), state))
    }

    /// The nodes holding the bundles a demand may use (the one bundle it
    /// names, or every placed bundle of its group); empty if it is not a
    /// group demand or its group is not placed.
    pub(crate) fn nodes_for(&self, res: &Resources) -> Vec<String> {
        let Some(id) = res.keys().find_map(|k| group_of(k)) else {
            return Vec::new();
        };
        let Some(g) = self.groups.get(id).filter(|g| g.rec.state() == GroupState::Created) else {
            return Vec::new();
        };
        let index = res.keys().find_map(|k| bundle_index_of(k));
        let mut out: Vec<String> = g
            .rec
            .bundles
            .iter()
            .enumerate()
            .filter(|(i, b)| b.placed && index.is_none_or(|want| *i as u32 == want))
            .map(|(_, b)| b.node_addr.clone())
            .collect();
        out.dedup();
        out
    }
}

fn to_res(m: &HashMap<String, f64>) -> Resources {
    m.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

/// Chooses a node (an index into `nodes`) for each bundle under
/// `strategy`, given what each node has free; or why it cannot. Bundles
/// with `placed[i] = Some(n)` already sit on node `n` (their resources are
/// not in `nodes`' free amounts): they keep it, and the others are chosen
/// around them (a group re-placing the bundles a dead node held).
pub(crate) fn plan(
    strategy: PlacementStrategy,
    bundles: &[Resources],
    placed: &[Option<usize>],
    nodes: &[Resources],
) -> std::result::Result<Vec<usize>, String> {
    let mut free: Vec<Resources> = nodes.to_vec();
    let take = |free: &mut Vec<Resources>, n: usize, b: &Resources| {
        for (k, v) in b {
            *free[n].entry(k.clone()).or_insert(0.0) -= v;
        }
    };
    let fixed = |i: usize| placed.get(i).copied().flatten().filter(|n| *n < nodes.len());
    let todo: Vec<usize> = (0..bundles.len()).filter(|i| fixed(*i).is_none()).collect();
    // Bundles per node so far, and the nodes in use, in order.
    let mut count = vec![0usize; free.len()];
    let mut used: Vec<usize> = Vec::new();
    for n in (0..bundles.len()).filter_map(fixed) {
        count[n] += 1;
        if !used.contains(&n) {
            used.push(n);
        }
    }
    let mut sum = Resources::new();
    for b in todo.iter().map(|i| &bundles[*i]) {
        for (k, v) in b {
            *sum.entry(k.clone()).or_insert(0.0) += v;
        }
    }
    let mut out: Vec<usize> = (0..bundles.len()).map(|i| fixed(i).unwrap_or(usize::MAX)).collect();
    let strict_spread = strategy == PlacementStrategy::StrictSpread;
    if strict_spread && bundles.len() > nodes.len() {
        return Err(format!(
            "STRICT_SPREAD needs {} nodes, the cluster has {}",
            bundles.len(),
            nodes.len()
        ));
    }
    // PACK and STRICT_PACK try one node for the rest first: the one already
    // in use, else any.
    if matches!(strategy, PlacementStrategy::Pack | PlacementStrategy::StrictPack) {
        let one_node = match used.first() {
            Some(n) => fits(&free[*n], &sum).then_some(*n),
            None => free.iter().position(|f| fits(f, &sum)),
        };
        match (one_node, strategy) {
            (Some(n), _) => {
                for i in &todo {
                    out[*i] = n;
                }
                return Ok(out);
            }
            (None, PlacementStrategy::StrictPack) => {
                return Err(match used.first() {
                    Some(n) => format!("node {n} holding the group has no room for {sum:?} (STRICT_PACK)"),
                    None => format!("no single node has {sum:?} for STRICT_PACK"),
                })
            }
            _ => {}
        }
    }
    for i in todo {
        let b = &bundles[i];
        let n = match strategy {
            PlacementStrategy::Pack | PlacementStrategy::StrictPack => used
                .iter()
                .copied()
                .find(|n| fits(&free[*n], b))
                .or_else(|| (0..free.len()).find(|n| fits(&free[*n], b))),
            PlacementStrategy::Spread | PlacementStrategy::StrictSpread => (0..free.len())
                .filter(|n| fits(&free[*n], b) && (!strict_spread || count[*n] == 0))
                .min_by_key(|n| count[*n]),
        }
        .ok_or_else(|| {
            if strict_spread {
                format!("bundle {i} {b:?} fits on no node not already holding a bundle (STRICT_SPREAD)")
            } else {
                format!("bundle {i} {b:?} fits on no node")
            }
        })?;
        take(&mut free, n, b);
        count[n] += 1;
        if !used.contains(&n) {
            used.push(n);
        }
        out[i] = n;
    }
    Ok(out)
}

impl NodeDaemon {
    /// `CreatePlacementGroup`: records the group and starts placing it.
    pub(crate) async fn create_group(
        &self,
        mut rec: proto::PlacementGroupRecord,
    ) -> Result<proto::PlacementGroupRecord> {
        if !self.is_actor_manager() {
            let r = self
                .on_manager("creating a placement group", |mut c| {
                    let rec = rec.clone();
                    async move { c.create_placement_group(rec).await }
                })
                .await?
                .into_inner();
            return record_of(r);
        }
        if rec.id.len() != 16 || !rec.id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::InvalidArgument(format!("bad placement group id `{}`", rec.id)));
        }
        if rec.bundles.is_empty() {
            return Err(Error::InvalidArgument(
                "a placement group needs at least one bundle".into(),
            ));
        }
        for (i, b) in rec.bundles.iter().enumerate() {
            if b.resources.values().all(|v| *v <= 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "bundle {i} of the placement group asks for no resources"
                )));
            }
            if let Some((k, v)) = b.resources.iter().find(|(_, v)| !v.is_finite() || **v < 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "bundle {i}: resource `{k}` must be a non-negative number, got {v}"
                )));
            }
        }
        let durable = {
            let mut t = self.state.groups.lock();
            if let Some(g) = t.groups.get(&rec.id) {
                return Ok(g.rec.clone());
            }
            if !rec.name.is_empty() {
                if t.names.contains_key(&rec.name) {
                    return Err(Error::InvalidArgument(format!(
                        "a placement group named `{}` already exists",
                        rec.name
                    )));
                }
                t.names.insert(rec.name.clone(), rec.id.clone());
            }
            rec.set_state(GroupState::Pending);
            rec.reason = "not placed yet".into();
            for b in &mut rec.bundles {
                b.placed = false;
                b.node_addr.clear();
            }
            t.groups.insert(
                rec.id.clone(),
                GroupEntry {
                    rec: rec.clone(),
                    version: watch::channel(0).0,
                },
            );
            t.changed(&rec.id);
            t.durable()
        };
        durable.await;
        self.place_group(rec.id.clone());
        Ok(rec)
    }

    /// `GetPlacementGroup`: a group by id or name, optionally waiting (at
    /// most `wait_ms`) until it is created or removed.
    pub(crate) async fn get_group(&self, req: proto::GetPlacementGroupRequest) -> Result<proto::PlacementGroupRecord> {
        if !self.is_actor_manager() {
            let r = self
                .on_manager("looking up a placement group", |mut c| {
                    let req = req.clone();
                    async move { c.get_placement_group(req).await }
                })
                .await?
                .into_inner();
            return record_of(r);
        }
        let id = if req.name.is_empty() {
            req.id.clone()
        } else {
            self.state
                .groups
                .lock()
                .names
                .get(&req.name)
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("no placement group is named `{}`", req.name)))?
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms);
        loop {
            let mut rx = {
                let t = self.state.groups.lock();
                let g = t
                    .groups
                    .get(&id)
                    .ok_or_else(|| Error::NotFound(format!("no placement group `{id}`")))?;
                if req.wait_ms == 0 || g.rec.state() != GroupState::Pending {
                    return Ok(g.rec.clone());
                }
                g.version.subscribe()
            };
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                let t = self.state.groups.lock();
                return t
                    .groups
                    .get(&id)
                    .map(|g| g.rec.clone())
                    .ok_or_else(|| Error::NotFound(format!("no placement group `{id}`")));
            }
        }
    }

    /// `RemovePlacementGroup`: releases its bundles (ending what ran in
    /// them) and kills its actors.
    pub(crate) async fn remove_group(
        &self,
        req: proto::GetPlacementGroupRequest,
    ) -> Result<proto::PlacementGroupRecord> {
        if !self.is_actor_manager() {
            let r = self
                .on_manager("removing a placement group", |mut c| {
                    let req = req.clone();
                    async move { c.remove_placement_group(req).await }
                })
                .await?
                .into_inner();
            return record_of(r);
        }
        let (rec, nodes, durable) = {
            let mut t = self.state.groups.lock();
            let g = t
                .groups
                .get_mut(&req.id)
                .ok_or_else(|| Error::NotFound(format!("no placement group `{}`", req.id)))?;
            if g.rec.state() == GroupState::Removed {
                return Ok(g.rec.clone());
            }
            g.rec.set_state(GroupState::Removed);
            g.rec.reason = "removed with remove_placement_group".into();
            let nodes: HashSet<String> = g
                .rec
                .bundles
                .iter()
                .filter(|b| b.placed)
                .map(|b| b.node_addr.clone())
                .collect();
            for b in &mut g.rec.bundles {
                b.placed = false;
            }
            let rec = g.rec.clone();
            if !rec.name.is_empty() {
                t.names.remove(&rec.name);
            }
            t.changed(&req.id);
            t.note_removed(&req.id);
            (rec, nodes, t.durable())
        };
        durable.await;
        tracing::info!(group = %rec.id, "placement group removed");
        self.end_group_actors(&rec.id);
        for n in nodes {
            self.release_on(&n, &rec.id).await;
        }
        Ok(rec)
    }

    /// Marks the actors of a removed group dead (before their processes go).
    fn end_group_actors(&self, id: &str) {
        let ids: Vec<_> = {
            let t = self.state.actors.lock();
            t.actors
                .iter()
                .filter(|(_, a)| a.resources.keys().any(|k| group_of(k) == Some(id)))
                .map(|(aid, _)| *aid)
                .collect()
        };
        let mut t = self.state.actors.lock();
        for aid in ids {
            if t.actors
                .get(&aid)
                .is_some_and(|a| a.state != super::actors::ActorState::Dead)
            {
                t.mark_dead(&aid, format!("its placement group {id} was removed"));
            }
        }
    }

    async fn release_on(&self, node: &str, id: &str) {
        if node.is_empty() || node == self.state.tcp_addr {
            let acts = self.state.sched.lock().release_bundles(id);
            self.apply(acts);
            return;
        }
        let Some(link) = self.link() else { return };
        let Ok(mut c) = link.node_client(node) else { return };
        let r = c
            .release_bundles(proto::ReleaseBundlesRequest {
                group_id: id.to_string(),
            })
            .await;
        if let Err(s) = r {
            tracing::debug!(node, group = id, "releasing bundles: {}", s.message());
        }
    }

    async fn reserve_on(
        &self,
        node: &str,
        id: &str,
        bundles: BTreeMap<u32, Resources>,
    ) -> std::result::Result<(), String> {
        if node.is_empty() || node == self.state.tcp_addr {
            let r = self.state.sched.lock().reserve_bundles(id, &bundles);
            if r.is_ok() {
                let acts = self.state.sched.lock().dispatch();
                self.apply(acts);
            }
            return r;
        }
        let link = self.link().ok_or("no cluster")?;
        let mut c = link.node_client(node).map_err(|e| e.to_string())?;
        let req = proto::ReserveBundlesRequest {
            group_id: id.to_string(),
            bundles: bundles
                .into_iter()
                .map(|(i, r)| {
                    (
                        i,
                        proto::Bundle {
                            resources: r.into_iter().collect(),
                            ..Default::default()
                        },
                    )
                })
                .collect(),
        };
        match c.reserve_bundles(req).await {
            Ok(r) if r.get_ref().refused.is_empty() => Ok(()),
            Ok(r) => Err(r.into_inner().refused),
            Err(s) => Err(format!("node {node} unreachable: {}", s.message())),
        }
    }

    /// Nodes a bundle may go to, this one first: (address, free, total),
    /// of the resources named in `keys` only (the bundles' own: a node's
    /// maps also hold every placement group's resources, so copying them
    /// whole would make each placement cost as much as there are groups).
    fn placement_candidates(&self, keys: &BTreeSet<String>) -> Vec<(String, Resources, Resources)> {
        let own = {
            let s = self.state.sched.lock();
            let pick = |m: &Resources| -> Resources {
                keys.iter().filter_map(|k| m.get(k).map(|v| (k.clone(), *v))).collect()
            };
            (self.state.tcp_addr.clone(), pick(&s.available), pick(&s.total))
        };
        let mut out = vec![own];
        if let Some(link) = self.link() {
            out.extend(
                link.resources_of(keys)
                    .into_iter()
                    .filter(|(addr, _, _)| *addr != self.state.tcp_addr),
            );
        }
        out
    }

    /// One attempt at placing a pending group (in the background).
    pub(crate) fn place_group(&self, id: String) {
        {
            let mut t = self.state.groups.lock();
            let pending = t.groups.get(&id).is_some_and(|g| g.rec.state() == GroupState::Pending);
            if !pending || !t.placing.insert(id.clone()) {
                return;
            }
        }
        let d = self.clone();
        self.spawn(async move {
            d.try_place(&id).await;
            d.state.groups.lock().placing.remove(&id);
        });
    }

    async fn try_place(&self, id: &str) {
        let Some(rec) = self.state.groups.lock().groups.get(id).map(|g| g.rec.clone()) else {
            return;
        };
        let strategy = PlacementStrategy::try_from(rec.strategy).unwrap_or(PlacementStrategy::Pack);
        let bundles: Vec<Resources> = rec.bundles.iter().map(|b| to_res(&b.resources)).collect();
        let keys: BTreeSet<String> = bundles.iter().flat_map(|b| b.keys().cloned()).collect();
        let nodes = self.placement_candidates(&keys);
        let placed: Vec<Option<usize>> = rec
            .bundles
            .iter()
            .map(|b| {
                b.placed
                    .then(|| nodes.iter().position(|n| n.0 == b.node_addr))
                    .flatten()
            })
            .collect();
        // A group placed for the first time is reserved all or nothing (two
        // half-placed groups must not starve each other); one re-placing the
        // bundles of a dead node keeps what it holds and adds what it gets.
        let first_time = placed.iter().all(Option::is_none);
        if rec.bundles.iter().zip(&placed).any(|(b, p)| b.placed && p.is_none()) {
            // A node holding a bundle is missing from this view: wait for
            // the next one rather than placing that bundle twice.
            return;
        }
        let free: Vec<Resources> = nodes.iter().map(|n| n.1.clone()).collect();
        let assignment = match plan(strategy, &bundles, &placed, &free) {
            Ok(a) => a,
            Err(why) => {
                let total: Vec<Resources> = nodes.iter().map(|n| n.2.clone()).collect();
                let reason = match plan(strategy, &bundles, &vec![None; bundles.len()], &total) {
                    Err(never) => format!("infeasible: {never}"),
                    Ok(_) => format!("waiting for resources: {why}"),
                };
                self.set_group_reason(id, reason);
                return;
            }
        };
        let mut by_node: BTreeMap<usize, BTreeMap<u32, Resources>> = BTreeMap::new();
        for (i, n) in assignment.iter().enumerate() {
            if placed[i].is_none() {
                by_node.entry(*n).or_default().insert(i as u32, bundles[i].clone());
            }
        }
        let mut done: Vec<(usize, Vec<u32>)> = Vec::new();
        let mut refused = None;
        for (n, bs) in by_node {
            let indexes: Vec<u32> = bs.keys().copied().collect();
            match self.reserve_on(&nodes[n].0, id, bs).await {
                Ok(()) => done.push((n, indexes)),
                Err(why) => {
                    refused = Some(why);
                    break;
                }
            }
        }
        let removed = self
            .state
            .groups
            .lock()
            .groups
            .get(id)
            .is_none_or(|g| g.rec.state() != GroupState::Pending);
        if removed || (refused.is_some() && first_time) {
            for (n, _) in done {
                self.release_on(&nodes[n].0, id).await;
            }
            if let Some(why) = refused {
                self.set_group_reason(id, format!("waiting for resources: {why}"));
            }
            return;
        }
        // The new placement reaches the head's disk before anyone is told.
        let placed_rec = {
            let t = self.state.groups.lock();
            let Some(g) = t.groups.get(id).filter(|g| g.rec.state() == GroupState::Pending) else {
                return;
            };
            let mut rec = g.rec.clone();
            for (n, indexes) in &done {
                for i in indexes {
                    if let Some(b) = rec.bundles.get_mut(*i as usize) {
                        b.placed = true;
                        b.node_addr = nodes[*n].0.clone();
                    }
                }
            }
            match refused {
                None => {
                    rec.set_state(GroupState::Created);
                    rec.reason.clear();
                }
                Some(why) => rec.reason = format!("waiting for resources: {why}"),
            }
            if let Some(gcs) = &t.record {
                gcs.save_group(rec.clone());
            }
            (rec, t.durable())
        };
        let (rec, durable) = placed_rec;
        durable.await;
        let applied = {
            let mut t = self.state.groups.lock();
            match t.groups.get_mut(id) {
                Some(g) if g.rec.state() == GroupState::Pending => {
                    if rec.state() == GroupState::Created {
                        tracing::info!(group = %id, ?strategy, "placement group created");
                    }
                    g.rec = rec;
                    t.changed(id);
                    true
                }
                _ => false,
            }
        };
        if !applied {
            // Removed meanwhile: give back what was just reserved.
            for (n, _) in done {
                self.release_on(&nodes[n].0, id).await;
            }
        }
    }

    /// A restarted head: reserves again the bundles its records place on
    /// this node (a node's reservations end with its process); a bundle
    /// that no longer fits is placed again.
    pub(crate) fn readopt_bundles(&self) {
        let own = self.state.tcp_addr.clone();
        let mine: Vec<(String, BTreeMap<u32, Resources>)> = {
            let t = self.state.groups.lock();
            t.groups
                .values()
                .filter(|g| g.rec.state() != GroupState::Removed)
                .map(|g| {
                    let bundles = g
                        .rec
                        .bundles
                        .iter()
                        .enumerate()
                        .filter(|(_, b)| b.placed && b.node_addr == own)
                        .map(|(i, b)| (i as u32, to_res(&b.resources)))
                        .collect();
                    (g.rec.id.clone(), bundles)
                })
                .filter(|(_, b): &(String, BTreeMap<u32, Resources>)| !b.is_empty())
                .collect()
        };
        for (id, bundles) in mine {
            let refused = self.state.sched.lock().reserve_bundles(&id, &bundles).err();
            let Some(why) = refused else { continue };
            let mut t = self.state.groups.lock();
            if let Some(g) = t.groups.get_mut(&id) {
                for i in bundles.keys() {
                    if let Some(b) = g.rec.bundles.get_mut(*i as usize) {
                        b.placed = false;
                        b.node_addr.clear();
                    }
                }
                g.rec.set_state(GroupState::Pending);
                g.rec.reason = format!("placing again after a head restart: {why}");
                t.changed(&id);
            }
        }
    }

    fn set_group_reason(&self, id: &str, reason: String) {
        let mut t = self.state.groups.lock();
        if let Some(g) = t.groups.get_mut(id) {
            if g.rec.reason != reason {
                tracing::debug!(group = %id, "placement group pending: {reason}");
                g.rec.reason = reason;
                t.changed(id);
            }
        }
    }

    /// Periodic work of the manager: place pending groups again; a group
    /// that lost a bundle with a dead node is placed again whole.
    pub(crate) fn check_groups(&self, alive_nodes: Option<&HashSet<String>>) {
        if !self.is_actor_manager() {
            return;
        }
        let pending: Vec<String> = {
            let mut t = self.state.groups.lock();
            let mut pending = Vec::new();
            let ids: Vec<String> = t.groups.keys().cloned().collect();
            for id in ids {
                let Some(g) = t.groups.get_mut(&id) else { continue };
                if g.rec.state() == GroupState::Pending {
                    pending.push(id);
                    continue;
                }
                let Some(alive) = alive_nodes else { continue };
                if g.rec.state() != GroupState::Created {
                    continue;
                }
                let lost: Vec<String> = g
                    .rec
                    .bundles
                    .iter()
                    .filter(|b| b.placed && !b.node_addr.is_empty() && !alive.contains(&b.node_addr))
                    .map(|b| b.node_addr.clone())
                    .collect();
                if lost.is_empty() {
                    continue;
                }
                for b in &mut g.rec.bundles {
                    if b.placed && !alive.contains(&b.node_addr) {
                        b.placed = false;
                        b.node_addr.clear();
                    }
                }
                g.rec.set_state(GroupState::Pending);
                g.rec.reason = format!("placing again the bundles its node at {} held", lost[0]);
                tracing::warn!(group = %id, "{}", g.rec.reason);
                t.changed(&id);
                pending.push(id);
            }
            pending
        };
        for id in pending {
            self.place_group(id);
        }
    }
}

/// The group a manager's reply carries, or its error.
pub(crate) fn record_of(r: proto::PlacementGroupReply) -> Result<proto::PlacementGroupRecord> {
    match (r.error, r.group) {
        (Some(e), _) => Err(Error::from_proto(&e)),
        (None, Some(g)) => Ok(g),
        (None, None) => Err(Error::Internal("placement group reply without a group".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(n: f64) -> Resources {
        [("CPU".to_string(), n)].into_iter().collect()
    }

    #[test]
    fn strategies_choose_nodes() {
        let nodes = vec![cpu(2.0), cpu(2.0), cpu(1.0)];
        let b = vec![cpu(1.0), cpu(1.0)];
        assert_eq!(
            plan(PlacementStrategy::StrictPack, &b, &[], &nodes).unwrap(),
            vec![0, 0]
        );
        assert_eq!(plan(PlacementStrategy::Pack, &b, &[], &nodes).unwrap(), vec![0, 0]);
        assert_eq!(plan(PlacementStrategy::Spread, &b, &[], &nodes).unwrap(), vec![0, 1]);
        assert_eq!(
            plan(PlacementStrategy::StrictSpread, &b, &[], &nodes).unwrap(),
            vec![0, 1]
        );
        // Too big for one node: PACK spills over, STRICT_PACK cannot.
        let big = vec![cpu(2.0), cpu(2.0)];
        assert_eq!(plan(PlacementStrategy::Pack, &big, &[], &nodes).unwrap(), vec![0, 1]);
        assert!(plan(PlacementStrategy::StrictPack, &big, &[], &nodes).is_err());
        // SPREAD reuses nodes when it must; STRICT_SPREAD never does.
        let four = vec![cpu(1.0); 4];
        let got = plan(PlacementStrategy::Spread, &four, &[], &nodes).unwrap();
        assert_eq!(got.iter().collect::<HashSet<_>>().len(), 3, "{got:?}");
        let err = plan(PlacementStrategy::StrictSpread, &four, &[], &nodes).unwrap_err();
        assert!(err.contains("needs 4 nodes"), "{err}");
        let err = plan(
            PlacementStrategy::StrictSpread,
            &[cpu(2.0), cpu(2.0), cpu(2.0)],
            &[],
            &nodes,
        )
        .unwrap_err();
        assert!(err.contains("STRICT_SPREAD"), "{err}");

        // Re-placing a lost bundle keeps the placed ones where they are.
        let three = vec![cpu(1.0); 3];
        let placed = [Some(1), None, Some(2)];
        assert_eq!(
            plan(PlacementStrategy::StrictSpread, &three, &placed, &nodes).unwrap(),
            vec![1, 0, 2]
        );
        let err = plan(
            PlacementStrategy::StrictSpread,
            &three,
            &placed,
            &[cpu(0.0), cpu(2.0), cpu(2.0)],
        )
        .unwrap_err();
        assert!(err.contains("bundle 1"), "{err}");
        assert_eq!(
            plan(PlacementStrategy::Pack, &b, &[Some(2), None], &nodes).unwrap(),
            vec![2, 2]
        );
        assert_eq!(
            plan(PlacementStrategy::Spread, &b, &[Some(0), None], &nodes).unwrap(),
            vec![0, 1]
        );
        let err = plan(PlacementStrategy::StrictPack, &big, &[Some(2), None], &nodes).unwrap_err();
        assert!(err.contains("STRICT_PACK"), "{err}");
    }
}
