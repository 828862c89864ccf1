//! What a node keeps so people can see what ran: the most recent task events
//! its workers reported, and each worker process's output in a log file
//! (echoed to the driver's terminal in the embedded cluster). With
//! `cluster: true` a listing asks every alive node and merges the answers,
//! naming the nodes that did not answer.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use super::NodeDaemon;
use crate::proto::{self, node_service_client::NodeServiceClient};
use crate::rpc::Chan;

/// Task events a node keeps (the newest).
pub(crate) const MAX_TASK_EVENTS: usize = 10_000;
/// A worker's log file stops growing here (a last line says so).
const MAX_LOG_BYTES: u64 = 256 << 20;
/// The longest line of a worker's output a node holds: a longer one (a
/// worker writing without newlines) goes on in pieces of this size, so each
/// of the lines kept for drivers (up to [`OUTPUT_BACKLOG`] and
/// [`OUTPUT_REPLAY`] of them) is at most this long.
const MAX_LINE_BYTES: u64 = 16 << 10;
/// How long a listing waits for another node.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// Log files of this many exited workers are kept (the newest); older ones
/// are deleted, so a long-lived node does not fill its disk.
const MAX_DEAD_WORKER_LOGS: usize = 256;

/// The log files to delete: those of exited workers beyond the newest
/// `keep` (files are listed oldest first).
fn stale_logs(files: &[LogFile], live: &HashMap<u64, u32>, keep: usize) -> Vec<usize> {
    let dead: Vec<usize> = files
        .iter()
        .enumerate()
        .filter(|(_, l)| live.get(&l.worker_id) != Some(&l.pid))
        .map(|(i, _)| i)
        .collect();
    let extra = dead.len().saturating_sub(keep);
    dead[..extra].to_vec()
}

/// The most recent task events, by task id.
#[derive(Default)]
pub(crate) struct TaskTable {
    by_id: HashMap<Vec<u8>, proto::TaskEvent>,
    /// Task ids, oldest first: the eviction order.
    order: VecDeque<Vec<u8>>,
    /// Each submitting process's tasks not yet on a worker, as it last
    /// reported them, and when.
    queued: HashMap<String, (std::time::Instant, Vec<proto::TaskEvent>)>,
}

impl TaskTable {
    /// Records an event; a later event of the same task replaces the earlier.
    pub(crate) fn record(&mut self, ev: proto::TaskEvent) {
        let id = ev.task_id.clone();
        if self.by_id.insert(id.clone(), ev).is_none() {
            self.order.push_back(id);
            while self.order.len() > MAX_TASK_EVENTS {
                if let Some(old) = self.order.pop_front() {
                    self.by_id.remove(&old);
                }
            }
        }
    }

    /// Marks the tasks a dead worker was running as failed with `cause`.
    pub(crate) fn worker_died(&mut self, worker_id: u64, cause: &str) {
        let now = crate::clock::now_us();
        for ev in self.by_id.values_mut() {
            if ev.worker_id == worker_id && ev.state == proto::TaskEventState::Running as i32 {
                ev.state = proto::TaskEventState::Failed as i32;
                ev.end_us = now;
                ev.error = format!("its worker died: {cause}");
            }
        }
    }

    /// A process's tasks not yet on a worker (replacing its last list).
    pub(crate) fn record_queued(&mut self, reporter: String, tasks: Vec<proto::TaskEvent>) {
        if tasks.is_empty() {
            self.queued.remove(&reporter);
        } else {
            self.queued.insert(reporter, (std::time::Instant::now(), tasks));
        }
    }

    /// Every kept event, and the queued tasks of processes that reported
    /// lately (a process that stopped reporting is gone), oldest start first.
    pub(crate) fn list(&self) -> Vec<proto::TaskEvent> {
        let mut v: Vec<proto::TaskEvent> = self.by_id.values().cloned().collect();
        let fresh = crate::session::QUEUED_FRESH;
        for (_, tasks) in self.queued.values().filter(|(at, _)| at.elapsed() < fresh) {
            v.extend(tasks.iter().filter(|t| !self.by_id.contains_key(&t.task_id)).cloned());
        }
        v.sort_by_key(|e| e.start_us);
        v
    }
}

/// Drops PENDING entries of tasks another entry shows further along (a
/// merged cluster listing: the submitter's node may not have heard yet that
/// the task started elsewhere).
fn drop_superseded_pending(tasks: &mut Vec<proto::TaskEvent>) {
    let pending = proto::TaskEventState::Pending as i32;
    let further: std::collections::HashSet<Vec<u8>> = tasks
        .iter()
        .filter(|t| t.state != pending)
        .map(|t| t.task_id.clone())
        .collect();
    tasks.retain(|t| t.state != pending || !further.contains(&t.task_id));
}

/// One worker process's log file.
#[derive(Clone)]
pub(crate) struct LogFile {
    pub(crate) worker_id: u64,
    pub(crate) pid: u32,
    pub(crate) job_id: String,
    pub(crate) path: PathBuf,
}

/// Where a worker's output goes besides its log file.
pub(crate) struct Echo {
    /// This process's terminal (stderr when true), in the embedded cluster.
    pub(crate) terminal: Option<bool>,
    /// The job's output for its driver (the flag: from stderr).
    pub(crate) forward: Option<(Arc<JobOutput>, bool)>,
}

/// Lines of a job's output kept for a slow driver before the oldest go.
const OUTPUT_BACKLOG: usize = 4096;
/// The newest lines of a job's output, replayed to a driver that starts
/// following this node late (a worker can print before it does).
const OUTPUT_REPLAY: usize = 1000;

/// One job's worker output on this node: the newest lines, and the live
/// stream to its driver.
pub(crate) struct JobOutput {
    /// The newest lines, and the number of the last line.
    recent: Mutex<(VecDeque<proto::WorkerOutputLine>, u64)>,
    tx: tokio::sync::broadcast::Sender<proto::WorkerOutputLine>,
}

impl JobOutput {
    fn new() -> JobOutput {
        JobOutput {
            recent: Mutex::new((VecDeque::new(), 0)),
            tx: tokio::sync::broadcast::channel(OUTPUT_BACKLOG).0,
        }
    }

    fn push(&self, mut line: proto::WorkerOutputLine) {
        // Under the lock, so a new follower sees each line exactly once.
        let mut g = self.recent.lock();
        let (recent, seq) = &mut *g;
        *seq += 1;
        line.seq = *seq;
        if recent.len() >= OUTPUT_REPLAY {
            recent.pop_front();
        }
        recent.push_back(line.clone());
        // No driver listening is fine: the line is in the log.
        let _ = self.tx.send(line);
    }

    /// The newest lines after line `after`, and the live stream from now on.
    fn follow(
        &self,
        after: u64,
    ) -> (
        Vec<proto::WorkerOutputLine>,
        tokio::sync::broadcast::Receiver<proto::WorkerOutputLine>,
    ) {
        let g = self.recent.lock();
        let replay = g.0.iter().filter(|l| l.seq > after).cloned().collect();
        (replay, self.tx.subscribe())
    }
}

/// Copies one output stream of a worker into its log file, line by line,
/// and (in the embedded cluster) to this process's stdout or stderr with a
/// `(pid=N)` prefix, so a driver sees what its tasks print. A line longer
/// than [`MAX_LINE_BYTES`] is passed on in pieces (the file gets every
/// byte; a piece's text may end or start in the middle of a character).
pub(crate) async fn pump_output(stream: impl AsyncRead + Unpin, file: Arc<Mutex<std::fs::File>>, pid: u32, echo: Echo) {
    let mut r = BufReader::new(stream);
    let mut line = Vec::new();
    let mut written = 0u64;
    // Whether the last piece passed on ended without a newline (a long
    // line cut): the newline that ends it is no line of its own.
    let mut cut = false;
    loop {
        line.clear();
        match (&mut r).take(MAX_LINE_BYTES).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let ends_cut_line = cut && line == b"\n";
        cut = !line.ends_with(b"\n");
        if written < MAX_LOG_BYTES {
            let mut f = file.lock();
            written += line.len() as u64;
            let _ = f.write_all(&line);
            if written >= MAX_LOG_BYTES {
                let _ = f.write_all(b"\n[rayforge: log truncated; the worker wrote more than 256 MiB]\n");
            }
        }
        if ends_cut_line {
            continue;
        }
        if let Some((out, stderr)) = &echo.forward {
            out.push(proto::WorkerOutputLine {
                pid,
                stderr: *stderr,
                text: String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line)).into_owned(),
                seq: 0, // numbered by `push`
            });
        }
        if let Some(to_stderr) = echo.terminal {
            let mut text = format!("(pid={pid}) ").into_bytes();
            text.extend_from_slice(&line);
            if !text.ends_with(b"\n") {
                text.push(b'\n');
            }
            // A closed terminal is not the worker's problem.
            let _ = if to_stderr {
                std::io::stderr().lock().write_all(&text)
            } else {
                std::io::stdout().lock().write_all(&text)
            };
        }
    }
}

/// Reads the last `tail` bytes of a log file (never more, however long it
/// grows meanwhile); its size too.
fn read_log(path: &std::path::Path, tail: u64) -> (u64, String) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return (0, String::new());
    };
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    if size > tail {
        let _ = f.seek(SeekFrom::Start(size - tail));
    }
    let mut buf = Vec::new();
    let _ = (&mut f).take(tail).read_to_end(&mut buf);
    (size, String::from_utf8_lossy(&buf).into_owned())
}

impl NodeDaemon {
    /// Job `job`'s worker output on this node.
    pub(crate) fn job_output(&self, job: &str) -> Arc<JobOutput> {
        self.state
            .job_output
            .lock()
            .entry(job.to_string())
            .or_insert_with(|| Arc::new(JobOutput::new()))
            .clone()
    }

    /// A stream of job `job`'s worker output: the newest lines so far, then
    /// (unless `until_now`) each line as it comes (lines a slow reader
    /// missed are skipped).
    pub(crate) fn subscribe_output(
        &self,
        job: &str,
        after_seq: u64,
        until_now: bool,
    ) -> impl futures::Stream<Item = std::result::Result<proto::WorkerOutputLine, tonic::Status>> + Send + 'static {
        use futures::StreamExt;
        let (recent, rx) = self.job_output(job).follow(after_seq);
        let live = futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(line) => return Some((Ok(line), rx)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        let live_lines = if until_now { 0 } else { usize::MAX };
        futures::stream::iter(recent.into_iter().map(Ok)).chain(live.take(live_lines))
    }

    /// Where this node keeps worker logs.
    pub(crate) fn logs_dir(&self) -> PathBuf {
        self.state.paths.logs.clone()
    }

    pub(crate) fn record_task_events(&self, events: Vec<proto::TaskEvent>) {
        let mut t = self.state.task_events.lock();
        for mut ev in events {
            ev.node_id = self.state.node_id.clone();
            t.record(ev);
        }
    }

    /// Deletes the log files of exited workers beyond the newest
    /// [`MAX_DEAD_WORKER_LOGS`].
    pub(crate) fn prune_worker_logs(&self) {
        let live = self.state.children.lock().clone();
        let stale: Vec<LogFile> = {
            let mut files = self.state.log_files.lock();
            let drop = stale_logs(&files, &live, MAX_DEAD_WORKER_LOGS);
            if drop.is_empty() {
                return;
            }
            let mut i = 0;
            let mut out = Vec::new();
            files.retain(|l| {
                let gone = drop.binary_search(&i).is_ok();
                i += 1;
                if gone {
                    out.push(l.clone());
                }
                !gone
            });
            out
        };
        for l in stale {
            let _ = std::fs::remove_file(&l.path);
        }
    }

    /// This node's worker logs: each one's last `tail` bytes (0: as much
    /// as may be sent), within [`crate::state::MAX_LOG_TEXT`] per log and
    /// [`crate::state::MAX_LOGS_REPLY`] in all; none with `listing_only`.
    fn local_logs(&self, pid: u32, tail: u64, listing_only: bool) -> Vec<proto::WorkerLog> {
        use crate::state::{MAX_LOGS_REPLY, MAX_LOG_TEXT};
        let tail = if tail == 0 {
            MAX_LOG_TEXT
        } else {
            tail.min(MAX_LOG_TEXT)
        };
        let mut budget = MAX_LOGS_REPLY;
        let files: Vec<LogFile> = self
            .state
            .log_files
            .lock()
            .iter()
            .filter(|l| pid == 0 || l.pid == pid)
            .cloned()
            .collect();
        let live = self.state.children.lock().clone();
        files
            .into_iter()
            .map(|l| {
                let want = if listing_only { 0 } else { tail.min(budget) };
                let (size, text) = if want == 0 {
                    (std::fs::metadata(&l.path).map_or(0, |m| m.len()), String::new())
                } else {
                    read_log(&l.path, want)
                };
                budget = budget.saturating_sub(text.len() as u64);
                proto::WorkerLog {
                    node_id: self.state.node_id.clone(),
                    worker_id: l.worker_id,
                    pid: l.pid,
                    job_id: l.job_id,
                    alive: live.get(&l.worker_id) == Some(&l.pid),
                    size,
                    text,
                }
            })
            .collect()
    }

    /// Completes a listing of this node with the answers of every other
    /// alive node of the cluster (when `cluster`), naming the nodes that did
    /// not answer ("address: why").
    async fn gather<R, F, Fut>(&self, mut mine: R, cluster: bool, ask: F) -> R
    where
        R: NodeListing,
        F: Fn(NodeServiceClient<Chan>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<R>, tonic::Status>>,
    {
        let Some(link) = self.link().filter(|_| cluster) else {
            return mine;
        };
        let others: Vec<String> = link
            .alive_nodes()
            .into_iter()
            .map(|n| n.addr)
            .filter(|a| *a != self.state.tcp_addr)
            .collect();
        let calls = others.into_iter().map(|addr| {
            let fut = link.node_client(&addr).map(&ask);
            async move {
                let r = match fut {
                    Ok(f) => match tokio::time::timeout(ASK_TIMEOUT, f).await {
                        Ok(Ok(r)) => Ok(r.into_inner()),
                        Ok(Err(s)) => Err(s.message().to_string()),
                        Err(_) => Err(format!("no answer within {ASK_TIMEOUT:?}")),
                    },
                    Err(e) => Err(e.to_string()),
                };
                r.map_err(|why| format!("{addr}: {why}"))
            }
        });
        for r in futures::future::join_all(calls).await {
            match r {
                Ok(theirs) => mine.absorb(theirs),
                Err(e) => mine.unreachable().push(e),
            }
        }
        mine
    }

    /// Why a queued task of this node's processes waits, when its
    /// submitter did not say (its arguments are ready).
    fn wait_reason(&self, ev: &proto::TaskEvent) -> String {
        if ev.kind == proto::TaskKind::ActorMethod as i32 {
            return "WAITING_FOR_ACTOR: its actor is starting, restarting or busy with earlier calls".into();
        }
        let res: crate::resources::Resources = ev.resources.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let totals: Vec<crate::resources::Resources> = match self.link() {
            Some(l) => l.totals().into_iter().map(|(_, t)| t).collect(),
            None => vec![self.state.sched.lock().total.clone()],
        };
        let feasible =
            |r: &crate::resources::Resources| totals.iter().any(|t| super::scheduler::infeasibility(t, r).is_none());
        if let Some(group) = res.keys().find_map(|k| crate::resources::group_of(k)) {
            let group_res: crate::resources::Resources = res
                .iter()
                .filter(|(k, _)| crate::resources::group_of(k).is_some())
                .map(|(k, _)| (k.clone(), 0.0))
                .collect();
            let placed = totals.iter().any(|t| group_res.keys().all(|k| t.contains_key(k)));
            if !placed {
                return format!("PLACEMENT_GROUP_PENDING: placement group {group} is not placed yet");
            }
        }
        if !feasible(&res) {
            let shape: Vec<String> = res.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            return format!("NO_NODE_HAS_RESOURCES: no alive node has {{{}}}", shape.join(", "));
        }
        "ALL_BUSY: waiting for resources to free up".into()
    }

    pub(crate) async fn list_tasks(&self, cluster: bool) -> proto::ListTasksReply {
        let mut tasks = self.state.task_events.lock().list();
        let pending = proto::TaskEventState::Pending as i32;
        for t in tasks
            .iter_mut()
            .filter(|t| t.state == pending && t.wait_reason.is_empty())
        {
            t.wait_reason = self.wait_reason(t);
        }
        let mine = proto::ListTasksReply {
            tasks,
            unreachable: Vec::new(),
        };
        let ask =
            |mut c: NodeServiceClient<Chan>| async move { c.list_tasks(proto::ListStateRequest::default()).await };
        let mut all = self.gather(mine, cluster, ask).await;
        drop_superseded_pending(&mut all.tasks);
        all.tasks.sort_by_key(|e| e.start_us);
        all
    }

    pub(crate) async fn list_objects(&self, cluster: bool) -> proto::ListObjectsReply {
        let objects = self
            .state
            .store
            .lock()
            .list()
            .into_iter()
            .map(|(id, size, spilled)| proto::ObjectEntry {
                object_id: id.0.to_vec(),
                size,
                spilled,
                node_id: self.state.node_id.clone(),
            })
            .collect();
        let mine = proto::ListObjectsReply {
            objects,
            unreachable: Vec::new(),
        };
        let ask =
            |mut c: NodeServiceClient<Chan>| async move { c.list_objects(proto::ListStateRequest::default()).await };
        self.gather(mine, cluster, ask).await
    }

    pub(crate) async fn worker_logs(&self, req: proto::WorkerLogsRequest) -> proto::WorkerLogsReply {
        // File reads, off the async threads.
        let me = self.clone();
        let (pid, tail, listing_only) = (req.pid, req.tail_bytes, req.listing_only);
        let logs = tokio::task::spawn_blocking(move || me.local_logs(pid, tail, listing_only))
            .await
            .unwrap_or_default();
        let mine = proto::WorkerLogsReply {
            logs,
            unreachable: Vec::new(),
        };
        let ask = |mut c: NodeServiceClient<Chan>| async move {
            c.worker_logs(proto::WorkerLogsRequest { cluster: false, ..req }).await
        };
        self.gather(mine, req.cluster, ask).await
    }
}

/// A listing one node answers, merged with other nodes' answers.
trait NodeListing {
    fn absorb(&mut self, other: Self);
    fn unreachable(&mut self) -> &mut Vec<String>;
}

impl NodeListing for proto::ListTasksReply {
    fn absorb(&mut self, other: Self) {
        self.tasks.extend(other.tasks);
    }
    fn unreachable(&mut self) -> &mut Vec<String> {
        &mut self.unreachable
    }
}

impl NodeListing for proto::ListObjectsReply {
    fn absorb(&mut self, other: Self) {
        self.objects.extend(other.objects);
    }
    fn unreachable(&mut self) -> &mut Vec<String> {
        &mut self.unreachable
    }
}

impl NodeListing for proto::WorkerLogsReply {
    fn absorb(&mut self, other: Self) {
        self.logs.extend(other.logs);
    }
    fn unreachable(&mut self) -> &mut Vec<String> {
        &mut self.unreachable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_tasks_show_until_they_start_and_only_while_reported() {
        let mut t = TaskTable::default();
        let mut q = ev(1, 9, 5);
        q.state = proto::TaskEventState::Pending as i32;
        t.record_queued("driver".into(), vec![q.clone(), ev_pending(2)]);
        assert_eq!(t.list().len(), 2);
        // Task 1 started on this node: its own event wins.
        t.record(ev(1, 3, 20));
        let l = t.list();
        assert_eq!(l.len(), 2);
        assert_eq!(l.iter().find(|e| e.task_id == vec![1]).map(|e| e.state), Some(0));
        // An empty report clears the process's queued tasks.
        t.record_queued("driver".into(), Vec::new());
        assert_eq!(t.list().len(), 1);

        // Across nodes: a PENDING entry gives way to any further state.
        let mut merged = vec![ev_pending(4), ev(4, 1, 30), ev_pending(5)];
        drop_superseded_pending(&mut merged);
        assert_eq!(merged.len(), 2);
        assert!(merged.iter().any(|e| e.task_id == vec![5]));
    }

    fn ev_pending(id: u8) -> proto::TaskEvent {
        proto::TaskEvent {
            task_id: vec![id],
            state: proto::TaskEventState::Pending as i32,
            ..Default::default()
        }
    }

    #[test]
    fn a_returning_follower_gets_only_the_lines_it_missed() {
        let out = JobOutput::new();
        let line = |t: &str| proto::WorkerOutputLine {
            pid: 7,
            text: t.into(),
            ..Default::default()
        };
        out.push(line("a"));
        out.push(line("b"));
        let (first, _rx) = out.follow(0);
        let texts = |v: &[proto::WorkerOutputLine]| v.iter().map(|l| (l.seq, l.text.clone())).collect::<Vec<_>>();
        assert_eq!(texts(&first), vec![(1, "a".into()), (2, "b".into())]);
        out.push(line("c"));
        let (again, _rx) = out.follow(2);
        assert_eq!(texts(&again), vec![(3, "c".into())]);
        for i in 0..OUTPUT_REPLAY + 5 {
            out.push(line(&i.to_string()));
        }
        let (all, _rx) = out.follow(0);
        assert_eq!(all.len(), OUTPUT_REPLAY, "only the newest lines are kept");
        assert_eq!(all.last().map(|l| l.seq), Some((OUTPUT_REPLAY + 8) as u64));
    }

    #[test]
    fn only_the_oldest_exited_workers_logs_are_dropped() {
        let files: Vec<LogFile> = (0..6u64)
            .map(|w| LogFile {
                worker_id: w,
                pid: 100 + w as u32,
                job_id: String::new(),
                path: PathBuf::from(format!("w{w}")),
            })
            .collect();
        // Workers 1 and 4 are alive; worker 3's id lives on with a new pid.
        let live: HashMap<u64, u32> = [(1, 101), (4, 104), (3, 999)].into_iter().collect();
        assert_eq!(stale_logs(&files, &live, 2), vec![0, 2]);
        assert_eq!(stale_logs(&files, &live, 4), Vec::<usize>::new());
        assert_eq!(stale_logs(&files, &live, 0), vec![0, 2, 3, 5]);
    }

    fn ev(id: u8, worker_id: u64, start_us: u64) -> proto::TaskEvent {
        proto::TaskEvent {
            task_id: vec![id],
            worker_id,
            start_us,
            state: proto::TaskEventState::Running as i32,
            ..Default::default()
        }
    }

    #[test]
    fn a_later_event_replaces_an_earlier_and_the_oldest_are_dropped() {
        let mut t = TaskTable::default();
        t.record(ev(1, 1, 10));
        let mut done = ev(1, 1, 10);
        done.state = proto::TaskEventState::Finished as i32;
        t.record(done);
        assert_eq!(t.list().len(), 1);
        assert_eq!(t.list()[0].state, proto::TaskEventState::Finished as i32);
        for i in 0..MAX_TASK_EVENTS as u64 + 5 {
            t.record(proto::TaskEvent {
                task_id: i.to_le_bytes().to_vec(),
                start_us: 100 + i,
                ..Default::default()
            });
        }
        let all = t.list();
        assert_eq!(all.len(), MAX_TASK_EVENTS);
        assert!(all.iter().all(|e| e.task_id != vec![1]), "the oldest task was dropped");
        assert_eq!(all[0].start_us, 105);
    }

    #[test]
    fn a_dead_worker_fails_the_tasks_it_was_running() {
        let mut t = TaskTable::default();
        t.record(ev(1, 7, 10));
        t.record(ev(2, 8, 11));
        t.worker_died(7, "killed by signal 9");
        let all = t.list();
        assert_eq!(all[0].state, proto::TaskEventState::Failed as i32);
        assert!(all[0].error.contains("killed by signal 9"));
        assert_eq!(all[1].state, proto::TaskEventState::Running as i32);
    }

    /// A worker writing 1 MiB without a newline: the log gets every byte,
    /// its driver the same text in pieces no longer than a line may be.
    #[tokio::test]
    async fn a_line_without_end_reaches_drivers_in_bounded_pieces() {
        let dir = std::env::temp_dir().join(format!("rayforge-pump-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let p = dir.join("w.log");
        let file = Arc::new(Mutex::new(std::fs::File::create(&p).expect("log file")));
        // A multiple of the piece size: the newline ending it adds no
        // empty line.
        let mut written = vec![b'y'; 1 << 20];
        written.extend_from_slice(b"\nlast\n");
        let out = Arc::new(JobOutput::new());
        let echo = Echo {
            terminal: None,
            forward: Some((out.clone(), false)),
        };
        pump_output(written.as_slice(), file, 7, echo).await;
        assert_eq!(std::fs::read(&p).expect("read the log"), written);
        let (lines, _rx) = out.follow(0);
        assert!(lines.iter().all(|l| l.text.len() as u64 <= MAX_LINE_BYTES));
        assert_eq!(lines.len() as u64, (1 << 20) / MAX_LINE_BYTES + 1);
        let text: String = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(text.len(), (1 << 20) + 4);
        assert!(text.ends_with("ylast"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_log_tail_is_the_end_of_the_file() {
        let dir = std::env::temp_dir().join(format!("rayforge-observe-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let p = dir.join("w.log");
        std::fs::write(&p, "first line\nsecond line\n").expect("write");
        assert_eq!(read_log(&p, 100), (23, "first line\nsecond line\n".into()));
        assert_eq!(read_log(&p, 12).1, "second line\n");
        assert_eq!(read_log(&p, 0), (23, String::new()));
        assert_eq!(read_log(&dir.join("missing"), 10), (0, String::new()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
