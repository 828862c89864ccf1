//! Task events: what a worker process records about the tasks it runs (name,
//! start, end, outcome) and reports to its node in batches, for
//! `rayforge list tasks` and the timeline.
//!
//! Recording costs a lock and a push per task; the batch goes to the node
//! [`BATCH_DELAY`] after a task ends (and every [`FLUSH_EVERY`] for tasks
//! still running), so the hot path never waits on an RPC and little is lost
//! when a worker is killed. A burst beyond [`MAX_BATCH`] events between two
//! flushes keeps only the newest.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;

use crate::clock::now_us;
use crate::proto::{self, node_service_client::NodeServiceClient};
use crate::rpc::Chan;
use crate::session::QUEUED_FRESH;

/// How often a worker sends its events to the node while tasks run.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// How long after a task ends its event waits for others to share a flush.
pub(crate) const BATCH_DELAY: Duration = Duration::from_millis(20);
/// Most events kept between two flushes.
const MAX_BATCH: usize = 5000;

/// Most queued tasks one process reports (the oldest).
const MAX_QUEUED_REPORT: usize = 1000;
/// How often a process with queued tasks reports them (also when unchanged:
/// a node forgets a report older than [`QUEUED_FRESH`](crate::session::QUEUED_FRESH)).
const QUEUED_EVERY: Duration = Duration::from_millis(500);

/// The tasks a process submitted that have not reached a worker yet, for
/// `list tasks` (state PENDING). Costs a lock and a map entry per task.
#[derive(Default)]
pub(crate) struct QueuedTasks {
    inner: Mutex<QueuedInner>,
}

/// A queued task's name, kind, submission time (microseconds since the
/// epoch), resource request, and whether its arguments are ready.
type Queued = (String, i32, u64, crate::resources::Resources, bool);

#[derive(Default)]
struct QueuedInner {
    /// By task id.
    tasks: HashMap<Vec<u8>, Queued>,
    changed: bool,
}

impl QueuedTasks {
    /// A task was submitted (`args_ready`: it has no arguments of its
    /// owner's still to compute).
    pub(crate) fn add(&self, spec: &proto::TaskSpec, resources: &crate::resources::Resources, args_ready: bool) {
        let mut g = self.inner.lock();
        g.tasks.insert(
            spec.task_id.clone(),
            (
                spec.display_name.clone(),
                spec.kind,
                now_us(),
                resources.clone(),
                args_ready,
            ),
        );
        g.changed = true;
    }

    /// A queued task's arguments are ready: it now waits for a worker.
    pub(crate) fn args_ready(&self, task_id: &[u8]) {
        let mut g = self.inner.lock();
        if let Some(t) = g.tasks.get_mut(task_id) {
            t.4 = true;
            g.changed = true;
        }
    }

    /// A task reached a worker, or failed before it could.
    pub(crate) fn remove(&self, task_id: &[u8]) {
        let mut g = self.inner.lock();
        if g.tasks.remove(task_id).is_some() {
            g.changed = true;
        }
    }

    /// The report to send now, if any: the oldest queued tasks as PENDING
    /// events (an empty list clears the node's view once).
    fn report(&self, worker_id: u64, job_id: &str, force: bool) -> Option<Vec<proto::TaskEvent>> {
        let mut g = self.inner.lock();
        // Unchanged and not due for a refresh (an empty list needs none).
        let refresh = force && !g.tasks.is_empty();
        if !g.changed && !refresh {
            return None;
        }
        g.changed = false;
        let mut all: Vec<(&Vec<u8>, &Queued)> = g.tasks.iter().collect();
        if all.len() > MAX_QUEUED_REPORT {
            all.select_nth_unstable_by_key(MAX_QUEUED_REPORT, |(_, (_, _, at, _, _))| *at);
            all.truncate(MAX_QUEUED_REPORT);
        }
        let pid = std::process::id();
        Some(
            all.into_iter()
                .map(|(id, (name, kind, at, resources, args_ready))| proto::TaskEvent {
                    task_id: id.clone(),
                    name: name.clone(),
                    kind: *kind,
                    worker_id,
                    pid,
                    job_id: job_id.to_string(),
                    start_us: *at,
                    state: proto::TaskEventState::Pending as i32,
                    wait_reason: if *args_ready {
                        String::new()
                    } else {
                        "ARGS_NOT_READY: waiting for its arguments to be computed".into()
                    },
                    resources: resources.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    ..Default::default()
                })
                .collect(),
        )
    }

    /// Reports this process's queued tasks to its node while it lives.
    pub(crate) async fn report_loop(cw: std::sync::Weak<crate::worker::CoreWorker>, mut node: NodeServiceClient<Chan>) {
        let mut since_full = std::time::Instant::now();
        loop {
            tokio::time::sleep(QUEUED_EVERY).await;
            let Some(cw) = cw.upgrade() else { return };
            let force = since_full.elapsed() >= QUEUED_FRESH / 3;
            let Some(queued) = cw.queued.report(cw.worker_id, &cw.job_id, force) else {
                continue;
            };
            since_full = std::time::Instant::now();
            let req = proto::ReportTaskEventsRequest {
                events: Vec::new(),
                reporter: cw.addr.clone(),
                has_queued: true,
                queued,
            };
            drop(cw);
            if let Err(s) = node.report_task_events(req).await {
                tracing::debug!("reporting queued tasks to the node failed: {}", s.message());
            }
        }
    }
}

/// The events of one worker process not yet sent to its node.
pub(crate) struct TaskRecorder {
    worker_id: u64,
    job_id: String,
    inner: Mutex<Pending>,
    /// Woken when a task ends.
    ended: tokio::sync::Notify,
}

#[derive(Default)]
struct Pending {
    /// Tasks started and not finished, by task id.
    running: HashMap<Vec<u8>, proto::TaskEvent>,
    /// Whether a running task was already reported as running.
    reported: HashSet<Vec<u8>>,
    done: VecDeque<proto::TaskEvent>,
}

impl TaskRecorder {
    pub(crate) fn new(worker_id: u64, job_id: String) -> TaskRecorder {
        TaskRecorder {
            worker_id,
            job_id,
            inner: Mutex::new(Pending::default()),
            ended: tokio::sync::Notify::new(),
        }
    }

    /// A task starts running here.
    pub(crate) fn started(&self, spec: &proto::TaskSpec) {
        let ev = proto::TaskEvent {
            task_id: spec.task_id.clone(),
            name: spec.display_name.clone(),
            kind: spec.kind,
            worker_id: self.worker_id,
            pid: std::process::id(),
            job_id: self.job_id.clone(),
            start_us: now_us(),
            end_us: 0,
            state: proto::TaskEventState::Running as i32,
            error: String::new(),
            node_id: String::new(),
            ..Default::default()
        };
        self.inner.lock().running.insert(spec.task_id.clone(), ev);
    }

    /// A task ended; `reply` says how.
    pub(crate) fn finished(&self, spec: &proto::TaskSpec, reply: &proto::PushTaskReply) {
        let mut p = self.inner.lock();
        let Some(mut ev) = p.running.remove(&spec.task_id) else {
            return;
        };
        p.reported.remove(&spec.task_id);
        ev.end_us = now_us();
        match &reply.error {
            None => ev.state = proto::TaskEventState::Finished as i32,
            Some(e) => {
                ev.state = proto::TaskEventState::Failed as i32;
                ev.error = crate::error::Error::from_proto(e).to_string();
            }
        }
        if p.done.len() >= MAX_BATCH {
            p.done.pop_front();
        }
        p.done.push_back(ev);
        drop(p);
        self.ended.notify_one();
    }

    /// What to send now: finished tasks, and running ones not yet reported.
    fn take(&self) -> Vec<proto::TaskEvent> {
        let mut p = self.inner.lock();
        let mut out: Vec<proto::TaskEvent> = p.done.drain(..).collect();
        let fresh: Vec<proto::TaskEvent> = p
            .running
            .iter()
            .filter(|(id, _)| !p.reported.contains(*id))
            .map(|(_, ev)| ev.clone())
            .collect();
        for ev in &fresh {
            p.reported.insert(ev.task_id.clone());
        }
        out.extend(fresh);
        out
    }

    /// Sends the events to the node shortly after tasks end (and every
    /// [`FLUSH_EVERY`]) until the process ends.
    pub(crate) async fn flush_loop(self: std::sync::Arc<Self>, mut node: NodeServiceClient<Chan>) {
        loop {
            let _ = tokio::time::timeout(FLUSH_EVERY, self.ended.notified()).await;
            tokio::time::sleep(BATCH_DELAY).await;
            let events = self.take();
            if events.is_empty() {
                continue;
            }
            let req = proto::ReportTaskEventsRequest {
                events,
                ..Default::default()
            };
            if let Err(s) = node.report_task_events(req).await {
                tracing::debug!("reporting task events to the node failed: {}", s.message());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_tasks_are_reported_when_they_change_and_refreshed_while_queued() {
        let q = QueuedTasks::default();
        assert!(q.report(1, "", true).is_none(), "nothing queued, nothing to say");
        let cpu: crate::resources::Resources = [("CPU".to_string(), 1.0)].into_iter().collect();
        q.add(&spec(1), &cpu, true);
        q.add(&spec(2), &cpu, false);
        let first = q.report(1, "j", false).unwrap();
        assert_eq!(first.len(), 2);
        assert!(first
            .iter()
            .all(|e| e.state == proto::TaskEventState::Pending as i32 && e.job_id == "j" && e.resources["CPU"] == 1.0));
        let waits_args = |r: &[proto::TaskEvent]| r.iter().find(|e| e.task_id == [2]).unwrap().wait_reason.clone();
        assert!(waits_args(&first).starts_with("ARGS_NOT_READY"));
        q.args_ready(&[2]);
        assert_eq!(
            waits_args(&q.report(1, "j", false).unwrap()),
            "",
            "now it waits for a worker"
        );
        assert!(q.report(1, "j", false).is_none(), "unchanged");
        assert_eq!(q.report(1, "j", true).unwrap().len(), 2, "refreshed on demand");
        q.remove(&[1]);
        q.remove(&[2]);
        assert_eq!(
            q.report(1, "j", false),
            Some(Vec::new()),
            "an empty list clears the node's view"
        );
        assert!(q.report(1, "j", true).is_none());
        for i in 0..(MAX_QUEUED_REPORT as u64 + 50) {
            q.add(
                &proto::TaskSpec {
                    task_id: i.to_le_bytes().to_vec(),
                    ..Default::default()
                },
                &Default::default(),
                true,
            );
        }
        assert_eq!(q.report(1, "", false).unwrap().len(), MAX_QUEUED_REPORT);
    }

    fn spec(id: u8) -> proto::TaskSpec {
        proto::TaskSpec {
            task_id: vec![id],
            display_name: format!("m::f{id}"),
            ..Default::default()
        }
    }

    #[test]
    fn a_running_task_is_reported_once_then_its_end() {
        let r = TaskRecorder::new(7, "job".into());
        r.started(&spec(1));
        let first = r.take();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].state, proto::TaskEventState::Running as i32);
        assert_eq!(first[0].name, "m::f1");
        assert!(r.take().is_empty(), "a running task is reported once");
        r.finished(&spec(1), &proto::PushTaskReply::default());
        let second = r.take();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].state, proto::TaskEventState::Finished as i32);
        assert!(second[0].end_us >= second[0].start_us);
    }

    #[test]
    fn a_failed_task_carries_its_error_and_a_burst_keeps_the_newest() {
        let r = TaskRecorder::new(7, String::new());
        r.started(&spec(2));
        let reply = proto::PushTaskReply {
            error: Some(crate::error::Error::Runtime("boom".into()).to_proto()),
            ..Default::default()
        };
        r.finished(&spec(2), &reply);
        let evs = r.take();
        assert_eq!(evs[0].state, proto::TaskEventState::Failed as i32);
        assert!(evs[0].error.contains("boom"), "{}", evs[0].error);

        for i in 0..(MAX_BATCH + 10) {
            let s = proto::TaskSpec {
                task_id: (i as u64).to_le_bytes().to_vec(),
                ..Default::default()
            };
            r.started(&s);
            r.finished(&s, &proto::PushTaskReply::default());
        }
        let evs = r.take();
        assert_eq!(evs.len(), MAX_BATCH);
        assert_eq!(
            evs.last().map(|e| e.task_id.clone()),
            Some(((MAX_BATCH + 9) as u64).to_le_bytes().to_vec())
        );
    }
}
