//! The actor table: the control-service role for actors.
//!
//! An actor's lifecycle is an explicit state machine:
//! `PendingCreation -> Alive <-> Restarting -> Dead`. A process death moves an
//! alive actor to `Restarting` while its restart budget lasts (the constructor
//! runs again with the original arguments), else to `Dead` with the cause.
//! `kill` moves it straight to `Dead`. Callers long-poll for changes through
//! a per-actor version counter.

use std::collections::HashMap;

use tokio::sync::watch;

use crate::ids::ActorId;
use crate::proto;

use super::scheduler::Resources;

/// States of an actor (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActorState {
    PendingCreation,
    Alive,
    Restarting,
    Dead,
}

impl ActorState {
    pub(crate) fn to_proto(self) -> proto::ActorState {
        match self {
            ActorState::PendingCreation => proto::ActorState::PendingCreation,
            ActorState::Alive => proto::ActorState::Alive,
            ActorState::Restarting => proto::ActorState::Restarting,
            ActorState::Dead => proto::ActorState::Dead,
        }
    }
}

pub(crate) struct ActorEntry {
    pub(crate) class_name: String,
    /// The job whose program runs the actor ("" = the node's own).
    pub(crate) job: String,
    pub(crate) name: String,
    /// Recorded for the cluster control service; in the embedded cluster
    /// every actor ends with the driver.
    #[allow(dead_code)]
    pub(crate) detached: bool,
    pub(crate) state: ActorState,
    pub(crate) addr: String,
    pub(crate) incarnation: u64,
    pub(crate) worker_id: Option<u64>,
    pub(crate) lease_id: Option<u64>,
    pub(crate) death_cause: String,
    pub(crate) num_restarts: u32,
    pub(crate) max_restarts: i32,
    pub(crate) max_task_retries: i32,
    pub(crate) creation: proto::TaskSpec,
    pub(crate) resources: Resources,
    #[allow(dead_code)]
    pub(crate) owner_id: u64,
    pub(crate) version: watch::Sender<u64>,
}

impl ActorEntry {
    pub(crate) fn display(&self) -> String {
        if self.name.is_empty() {
            self.class_name.clone()
        } else {
            format!("{} ({})", self.name, self.class_name)
        }
    }

    pub(crate) fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    pub(crate) fn info(&self, id: &ActorId) -> proto::GetActorInfoReply {
        proto::GetActorInfoReply {
            error: None,
            actor_id: id.0.to_vec(),
            state: self.state.to_proto() as i32,
            addr: self.addr.clone(),
            incarnation: self.incarnation,
            death_cause: self.death_cause.clone(),
            num_restarts: self.num_restarts,
            max_restarts: self.max_restarts,
            class_name: self.display(),
            max_task_retries: self.max_task_retries,
        }
    }

    /// Whether the restart budget allows another restart.
    pub(crate) fn may_restart(&self) -> bool {
        self.max_restarts < 0 || (self.num_restarts as i64) < self.max_restarts as i64
    }
}

#[derive(Default)]
pub(crate) struct ActorTable {
    pub(crate) actors: HashMap<ActorId, ActorEntry>,
    pub(crate) names: HashMap<String, ActorId>,
    /// Which actor a worker process hosts.
    pub(crate) by_worker: HashMap<u64, ActorId>,
}

impl ActorTable {
    /// Marks an actor dead with a cause and releases its name.
    pub(crate) fn mark_dead(&mut self, id: &ActorId, cause: String) {
        if let Some(a) = self.actors.get_mut(id) {
            a.state = ActorState::Dead;
            a.death_cause = cause;
            a.addr.clear();
            if let Some(w) = a.worker_id.take() {
                self.by_worker.remove(&w);
            }
            if !a.name.is_empty() && self.names.get(&a.name) == Some(id) {
                self.names.remove(&a.name);
            }
            a.bump();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(max_restarts: i32) -> ActorEntry {
        ActorEntry {
            job: String::new(),
            class_name: "m::Counter".into(),
            name: "c".into(),
            detached: false,
            state: ActorState::Alive,
            addr: "a".into(),
            incarnation: 1,
            worker_id: Some(7),
            lease_id: Some(1),
            death_cause: String::new(),
            num_restarts: 0,
            max_restarts,
            max_task_retries: 0,
            creation: proto::TaskSpec::default(),
            resources: Resources::new(),
            owner_id: 1,
            version: watch::channel(0).0,
        }
    }

    #[test]
    fn restart_budget_and_death_release_the_name() {
        let mut e = entry(2);
        assert!(e.may_restart());
        e.num_restarts = 2;
        assert!(!e.may_restart());
        assert!(entry(-1).may_restart());
        assert!(!entry(0).may_restart());

        let mut t = ActorTable::default();
        let id = ActorId::new();
        t.names.insert("c".into(), id);
        t.by_worker.insert(7, id);
        t.actors.insert(id, entry(0));
        let rx = t.actors[&id].version.subscribe();
        t.mark_dead(&id, "killed".into());
        assert_eq!(t.actors[&id].state, ActorState::Dead);
        assert!(t.names.is_empty() && t.by_worker.is_empty());
        assert!(rx.has_changed().unwrap());
        assert_eq!(t.actors[&id].info(&id).death_cause, "killed");
    }
}
