//! The controller: the loop of an experiment, owning its searcher,
//! scheduler and stoppers — trials started while there is room, their
//! reports recorded and shown to the scheduler and stoppers, their ends
//! and failures handled, the journal and the lease kept, the status table
//! drawn and published.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayforge::checkpoint::{Checkpoint, CheckpointDir, CheckpointWriter};
use rayforge::storage::{SharedCheck, Storage};
use rayforge::tracking::{RunEnd, RunInfo, RunKind};
use rayforge::{AnyFnRef, FnRef, Json, ObjectRef, PlacementGroup};

use crate::error::{Error, Result};
use crate::schedulers::{Decision, Scheduler};
use crate::searchers::Searcher;
use crate::space::Config;
use crate::stoppers::Stopper;
use crate::tuner::journal::{differences, Event, Journal, Lease};
use crate::tuner::results::{best_of, record, rewrite_files, ResultGrid, TrialResult, TrialStatus};
use crate::tuner::table::Table;
use crate::tuner::trial::{
    local_dir, DirSync, TrialActor, TrialActorHandle, TrialReport, TrialSpec, TrialTramp, WRITTEN_BY,
};
use crate::tuner::{TuneConfig, TRAINING_ITERATION};

/// How often the driver's files of a remote experiment (each trial's
/// `result.jsonl`, `progress.csv`, `params.json`) are uploaded.
const FILES_SYNC_EVERY: Duration = Duration::from_secs(2);

/// What runs an experiment: the trainable, the searcher, the scheduler,
/// the stoppers and the settings.
pub(crate) struct Controller {
    pub(crate) tramp: FnRef<TrialTramp>,
    pub(crate) user: AnyFnRef,
    pub(crate) command: Option<Vec<String>>,
    pub(crate) searcher: Box<dyn Searcher>,
    pub(crate) scheduler: Box<dyn Scheduler>,
    pub(crate) stoppers: Vec<Box<dyn Stopper>>,
    pub(crate) config: TuneConfig,
}

/// A running trial's process.
struct Running {
    actor: TrialActorHandle,
    done: ObjectRef<()>,
    placement_group: Option<PlacementGroup>,
}

impl Running {
    /// Ends the trial's process (and releases its placement group).
    fn kill(self) {
        let _ = rayforge::kill(&self.actor);
        if let Some(pg) = &self.placement_group {
            let _ = rayforge::remove_placement_group(pg);
        }
    }

    /// Ends the process of trial `t`, which the driver ended at its last
    /// recorded report while it ran on: once the process is gone, the
    /// checkpoints it committed past that report are deleted, so the
    /// trial's latest checkpoint matches its results (and a paused trial
    /// resumes from where its results end).
    fn kill_at_last_report(self, t: &TrialResult) {
        let done = self.done.clone();
        self.kill();
        let gone = rayforge::wait(&[done], 1, Some(Duration::from_secs(60)));
        if !gone.is_ok_and(|(ready, _)| !ready.is_empty()) {
            tracing::warn!("{}: its process did not end within 60 s of being killed", t.trial);
        }
        let last = t.last.get(TRAINING_ITERATION).map_or(0, |i| *i as u64);
        match CheckpointDir::new(t.storage.clone()).remove_after(last) {
            Ok(0) => {}
            Ok(n) => tracing::debug!("{}: removed {n} checkpoints committed after its last result", t.trial),
            Err(e) => tracing::warn!("{}: removing checkpoints committed after its last result: {e}", t.trial),
        }
    }
}

/// An experiment in progress.
struct Run {
    trials: Vec<TrialResult>,
    running: BTreeMap<String, Running>,
    /// Trials to start again (from their latest checkpoint), first first.
    restart: VecDeque<usize>,
    journal: Journal,
    lease: Lease,
    /// The experiment's directory in storage.
    storage: Storage,
    /// The driver's directory of the experiment: the storage's own on a
    /// local path, else a directory in this node's cache mirrored into
    /// storage.
    dir: PathBuf,
    /// The driver's files synced to remote storage (`None`: local).
    files: Option<DirSync>,
    /// When they were last synced.
    synced: Option<Instant>,
    /// For storage on a local path: the marker each trial's node reads
    /// back before it starts (on a cluster every node running trials must
    /// share the path).
    shared: Option<SharedCheck>,
    table: Table,
    /// When the status was last published for the dashboard.
    published: Option<Instant>,
    /// How long earlier drivers ran the experiment (from the journal).
    ran_before: Duration,
    /// When the run time was last journaled.
    clocked: Option<Instant>,
}

/// How often the run time goes into the journal.
const CLOCK_EVERY: Duration = Duration::from_secs(10);

impl Run {
    fn index(&self, trial: &str) -> Option<usize> {
        self.trials.iter().position(|t| t.trial == trial)
    }

    /// Makes the journal durable (a batch: the events of one pass) and,
    /// for remote storage, uploads the driver's changed files every few
    /// seconds (`force`: now, and the journal too).
    fn sync(&mut self, force: bool) -> Result<()> {
        self.journal.sync(force)?;
        let Some(files) = &mut self.files else { return Ok(()) };
        if !force && self.synced.is_some_and(|t| t.elapsed() < FILES_SYNC_EVERY) {
            return Ok(());
        }
        self.synced = Some(Instant::now());
        if !self.trials.iter().any(|t| t.dirty) && !force {
            return Ok(());
        }
        match files.sync() {
            Ok(()) => {
                for t in &mut self.trials {
                    t.dirty = false;
                }
                Ok(())
            }
            Err(e) if !force => {
                tracing::warn!("syncing the experiment's files (retried): {e}");
                Ok(())
            }
            Err(e) => Err(Error::Runtime(format!("syncing the experiment's files: {e}"))),
        }
    }
}

impl Controller {
    /// Publishes the experiment's status for the dashboard's Tune page
    /// (a failure to is logged, never fatal).
    fn publish(&self, trials: &[TrialResult], elapsed: Duration, done: bool) {
        let c = &self.config;
        let best_trial = best_of(trials, &c.metric, c.mode, c.best_scope);
        let status = serde_json::json!({
            "status": if done { "FINISHED" } else { "RUNNING" },
            "metric": c.metric,
            "mode": c.mode,
            "scheduler": self.scheduler.name(),
            "elapsed_s": (elapsed.as_secs_f64() * 10.0).round() / 10.0,
            "path": c.storage_path.join(&c.name).to_string(),
            "best": best_trial.map(|t| serde_json::json!({
                "trial": t.trial, "config": t.config, c.metric.clone(): t.last.get(&c.metric),
            })),
            "params": trials.iter().flat_map(|t| t.config.keys()).collect::<std::collections::BTreeSet<_>>(),
            "trials": trials.iter().map(|t| serde_json::json!({
                "trial": t.trial,
                "status": t.status_label(),
                "iterations": t.history.len(),
                c.metric.clone(): t.last.get(&c.metric),
                "failures": t.failures,
                "config": t.config,
                "curve": trial_curve(t, &c.metric),
            })).collect::<Vec<_>>(),
        });
        if let Err(e) = rayforge::state::publish("tune", &c.name, &status) {
            tracing::debug!("publishing the experiment for the dashboard: {e}");
        }
    }

    /// Runs the experiment to its end (see [`crate::Tuner::fit`]).
    pub(crate) fn run(mut self) -> Result<ResultGrid> {
        if self.config.tensorboard {
            self.config
                .callbacks
                .push(std::sync::Arc::new(rayforge::tracking::TensorBoard::new()));
        }
        let storage = self
            .config
            .storage_path
            .join(&self.config.name)
            .open()
            .map_err(|e| Error::Runtime(e.to_string()))?;
        // A storage that is malformed, unreachable or not writable fails
        // here, before anything runs.
        storage.check_writable().map_err(|e| Error::Runtime(e.to_string()))?;
        let lease = Lease::acquire(&storage, &self.config.name)?;
        let mut ex = self.open(storage, lease)?;
        let result = self.run_loop(&mut ex);
        if let Some(s) = &ex.shared {
            s.remove();
        }
        let synced = ex.sync(true);
        ex.lease.release();
        let grid = result?;
        synced?;
        Ok(grid)
    }

    /// Opens the experiment: its journal (replayed on a resume), its
    /// directories.
    fn open(&mut self, storage: Storage, lease: Lease) -> Result<Run> {
        let resume = self.config.resume;
        // On an error below, the lease is dropped, which releases it.
        let (journal, events) = Journal::open(&storage, !resume, self.config.journal_fsync)?;
        let (dir, files) = match storage.local_path() {
            Some(p) => (p.to_path_buf(), None),
            None => {
                let dir = local_dir("tune-driver", &storage);
                // Rebuilt from the journal: whatever an earlier driver on
                // this node left is stale.
                let _ = std::fs::remove_dir_all(&dir);
                let sync = DirSync {
                    dir: dir.clone(),
                    storage: storage.clone(),
                    sent: Default::default(),
                };
                (dir, Some(sync))
            }
        };
        let shared = match storage.local_path() {
            Some(_) => Some(storage.shared_check().map_err(|e| Error::Runtime(e.to_string()))?),
            None => None,
        };
        let mut ex = Run {
            shared,
            trials: Vec::new(),
            running: BTreeMap::new(),
            restart: VecDeque::new(),
            journal,
            lease,
            storage,
            dir,
            files,
            synced: None,
            table: Table::new(),
            published: None,
            ran_before: Duration::ZERO,
            clocked: None,
        };
        let result = if resume {
            self.replay(events, &mut ex)
        } else {
            match &self.config.definition {
                Some(d) => ex.journal.append(&Event::Experiment { definition: d.clone() }),
                None => Ok(()),
            }
        };
        result?;
        // The time budget counts the earlier drivers' time too.
        for s in &mut self.stoppers {
            s.resume_after(ex.ran_before);
        }
        if resume && self.config.verbose {
            println!(
                "resuming {}: {} trials ended, {} to go on",
                ex.storage.uri(),
                ex.trials.len() - ex.restart.len(),
                ex.restart.len()
            );
        }
        Ok(ex)
    }

    /// The experiment's loop, to its end.
    fn run_loop(&mut self, ex: &mut Run) -> Result<ResultGrid> {
        let reports = rayforge::util::Queue::<TrialReport>::new(0).map_err(|e| Error::Runtime(e.to_string()))?;
        let mut exhausted = false;
        let start = Instant::now();
        let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
        loop {
            if self.stoppers.iter_mut().any(|s| s.stop_all()) {
                self.stop_everything(ex)?;
                break;
            }
            // Paused trials the scheduler resumes or stops.
            if ex.trials.iter().any(|t| t.status == TrialStatus::Paused) {
                self.decide_paused(ex, !exhausted)?;
            }
            // Start trials while there is room: those to go on first, then
            // new configs.
            while ex.running.len() < self.config.max_concurrent_trials {
                let i = if let Some(i) = ex.restart.pop_front() {
                    i
                } else if !exhausted {
                    let name = format!("trial_{:05}", ex.trials.len());
                    let Some(config) = self.searcher.suggest(&name) else {
                        exhausted = true;
                        break;
                    };
                    ex.journal.append(&Event::Suggested {
                        trial: name.clone(),
                        config: config.clone(),
                    })?;
                    self.scheduler.on_trial_add(&name, &config);
                    ex.trials.push(TrialResult::new(name, config, &ex.storage, &ex.dir)?);
                    ex.trials.len() - 1
                } else {
                    break;
                };
                self.start_trial(ex, i, &reports, &cwd)?;
            }
            if ex.running.is_empty() {
                let paused: Vec<usize> = (0..ex.trials.len())
                    .filter(|i| ex.trials[*i].status == TrialStatus::Paused)
                    .collect();
                if paused.is_empty() {
                    break;
                }
                // Nothing runs and the scheduler keeps them paused: they
                // go on rather than wait forever.
                self.decide_paused(ex, false)?;
                if ex.restart.is_empty() {
                    tracing::warn!(
                        "the {} scheduler left {} trials paused with nothing running: resuming them",
                        self.scheduler.name(),
                        paused.len()
                    );
                    for i in paused {
                        ex.trials[i].status = TrialStatus::Pending;
                        ex.journal.append(&Event::Unpaused {
                            trial: ex.trials[i].trial.clone(),
                        })?;
                        ex.restart.push_back(i);
                    }
                }
                continue;
            }
            // Results as they come.
            while let Ok(r) = reports.get_timeout(Duration::from_millis(20)) {
                self.on_report(r, ex)?;
            }
            // Trials that ended on their own.
            let pending: Vec<ObjectRef<()>> = ex.running.values().map(|r| r.done.clone()).collect();
            if let Ok((ready, _)) = rayforge::wait(&pending, pending.len(), Some(Duration::ZERO)) {
                for r in ready {
                    self.on_trial_end(ex, r, &reports)?;
                }
            }
            if self.config.verbose {
                ex.table
                    .show(&ex.trials, &self.config, self.scheduler.name(), start.elapsed(), false);
            }
            if ex.published.is_none_or(|t| t.elapsed() > Duration::from_secs(2)) {
                ex.published = Some(Instant::now());
                self.publish(&ex.trials, start.elapsed(), false);
            }
            if ex.clocked.is_none_or(|t| t.elapsed() >= CLOCK_EVERY) {
                ex.clocked = Some(Instant::now());
                let elapsed_s = (ex.ran_before + start.elapsed()).as_secs_f64();
                ex.journal.append(&Event::Clock { elapsed_s })?;
            }
            ex.sync(false)?;
            ex.lease.renew(&self.config.name)?;
        }
        let elapsed_s = (ex.ran_before + start.elapsed()).as_secs_f64();
        ex.journal.append(&Event::Clock { elapsed_s })?;
        self.publish(&ex.trials, start.elapsed(), true);
        if let Err(e) = ex
            .storage
            .put("results.csv", results_csv(&ex.trials, &self.config).as_bytes())
        {
            tracing::warn!("writing results.csv: {e}");
        }
        ex.sync(true)?;
        let grid = ResultGrid {
            trials: ex.trials.clone(),
            metric: self.config.metric.clone(),
            mode: self.config.mode,
            scope: self.config.best_scope,
        };
        if self.config.verbose {
            ex.table
                .show(&grid.trials, &self.config, self.scheduler.name(), start.elapsed(), true);
            if let Some(b) = grid.best() {
                println!(
                    "best trial {}: {} = {} with {}",
                    b.trial,
                    self.config.metric,
                    b.last.get(&self.config.metric).copied().unwrap_or(f64::NAN),
                    serde_json::to_string(&b.config).unwrap_or_default()
                );
            }
        }
        Ok(grid)
    }
}

impl Controller {
    /// Starts trial `i` (again): its files, its process (in a placement
    /// group when it runs a gang), from its latest checkpoint if any.
    fn start_trial(
        &mut self,
        ex: &mut Run,
        i: usize,
        reports: &rayforge::util::Queue<TrialReport>,
        cwd: &Path,
    ) -> Result<()> {
        let t = &mut ex.trials[i];
        let path = t.path.clone();
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        rewrite_params(&path, &t.config)?;
        t.dirty = true;
        if t.checkpoint.is_none() && t.history.is_empty() {
            // A trial starting from scratch starts its files over too.
            let _ = std::fs::remove_file(path.join("result.jsonl"));
            let _ = std::fs::remove_file(path.join("progress.csv"));
            if ex.files.is_some() {
                let _ = t.storage.delete("result.jsonl");
                let _ = t.storage.delete("progress.csv");
            }
            // Its TensorBoard curves too.
            let _ = t.storage.delete("events.out.tfevents.");
        }
        let c = &self.config;
        let mut o = TrialActor::options().num_cpus(c.cpus_per_trial);
        if c.gpus_per_trial > 0.0 {
            o = o.num_gpus(c.gpus_per_trial);
        }
        for (name, amount) in &c.custom_resources_per_trial {
            o = o.resource(name, *amount);
        }
        let placement_group = if c.worker_bundles.is_empty() {
            None
        } else {
            let mut head = BTreeMap::new();
            head.insert("CPU".to_string(), c.cpus_per_trial);
            if c.gpus_per_trial > 0.0 {
                head.insert("GPU".to_string(), c.gpus_per_trial);
            }
            head.extend(c.custom_resources_per_trial.clone());
            let mut bundles = vec![head];
            bundles.extend(c.worker_bundles.iter().cloned());
            let pg = rayforge::placement_group(bundles, c.placement_strategy)
                .create()
                .map_err(|e| Error::Runtime(e.to_string()))?;
            o = o.placement_group(&pg, Some(0));
            Some(pg)
        };
        let actor = o.remote().map_err(|e| Error::Runtime(e.to_string()))?;
        let done = actor.run(TrialSpec {
            tramp: self.tramp,
            user: self.user,
            command: self.command.clone(),
            storage: t.storage.clone(),
            cwd: cwd.to_path_buf(),
            trial: t.trial.clone(),
            config: Json(t.config.clone()),
            reports: reports.clone(),
            restore: t.checkpoint.clone(),
            placement_group: placement_group.clone(),
            shared: ex.shared.clone(),
        });
        t.status = TrialStatus::Running;
        self.config.callbacks.start(&run_info(&self.config, t));
        ex.running.insert(
            t.trial.clone(),
            Running {
                actor,
                done,
                placement_group,
            },
        );
        Ok(())
    }

    /// A trial's process ended (its function returned, failed or died):
    /// reports it sent first, then its status, or a retry.
    fn on_trial_end(
        &mut self,
        ex: &mut Run,
        done: ObjectRef<()>,
        reports: &rayforge::util::Queue<TrialReport>,
    ) -> Result<()> {
        let Some(name) = ex.running.iter().find(|(_, x)| x.done == done).map(|(n, _)| n.clone()) else {
            return Ok(());
        };
        // Reports it sent before its end are queued: take them first.
        while let Ok(rep) = reports.get_timeout(Duration::from_millis(1)) {
            self.on_report(rep, ex)?;
        }
        let Some(run) = ex.running.remove(&name) else {
            return Ok(()); // one of those reports stopped it
        };
        run.kill();
        let Some(i) = ex.index(&name) else {
            return Ok(());
        };
        let t = &mut ex.trials[i];
        let status = match done.get() {
            // A trial that never reported the metric cannot be ranked: say
            // so (Ray fails a trial whose result lacks it).
            Ok(()) => match lacks_metric(t, &self.config.metric) {
                Some(why) => TrialStatus::Error(why),
                None => TrialStatus::Terminated,
            },
            // The trainable's own message when it failed; the runtime's
            // account when its process died.
            Err(e) => TrialStatus::Error(e.user_error::<String>().unwrap_or_else(|| e.to_string())),
        };
        match status {
            TrialStatus::Error(e) if t.failures < self.config.max_failures => {
                t.failures += 1;
                if self.config.verbose {
                    ex.table.detach();
                    println!(
                        "{} failed ({e}); going on from {} ({} of {})",
                        t.trial,
                        t.checkpoint.as_ref().map_or("the start".to_string(), |c| c.location()),
                        t.failures,
                        self.config.max_failures
                    );
                }
                ex.journal.append(&Event::Retried {
                    trial: t.trial.clone(),
                    error: e,
                })?;
                t.rewind();
                t.status = TrialStatus::Pending;
                ex.restart.push_front(i);
            }
            status => self.end(ex, i, status, false)?,
        }
        Ok(())
    }

    /// A trial's report: recorded, journaled, shown to the scheduler and
    /// the stoppers; the trial is stopped, paused or restarted from another
    /// trial's checkpoint when they say so.
    fn on_report(&mut self, r: TrialReport, ex: &mut Run) -> Result<()> {
        let Some(i) = ex.index(&r.trial) else {
            return Ok(());
        };
        let t = &mut ex.trials[i];
        if t.status != TrialStatus::Running {
            return Ok(()); // stopped already; a report was in flight
        }
        let location = r.checkpoint.as_ref().map(|c| c.location());
        let run = run_info(&self.config, t);
        let step = r
            .metrics
            .get(TRAINING_ITERATION)
            .map_or(t.history.len() as u64 + 1, |i| *i as u64);
        self.config.callbacks.report(&run, step, &r.metrics);
        if let Some(c) = &r.checkpoint {
            self.config.callbacks.checkpoint(&run, step, c);
        }
        record(t, &r.metrics, r.checkpoint);
        if location.is_some() && self.config.checkpoint.num_to_keep.is_some() {
            if let Err(e) = CheckpointDir::new(t.storage.clone()).prune(&self.config.checkpoint) {
                tracing::warn!("pruning the checkpoints of {}: {e}", t.trial);
            }
        }
        ex.journal.append(&Event::Result {
            trial: t.trial.clone(),
            metrics: r.metrics.clone(),
            checkpoint: location,
        })?;
        let iteration = r.metrics.get(TRAINING_ITERATION).copied().unwrap_or(0.0);
        let hit_limit = self.config.max_iterations.is_some_and(|m| iteration >= m as f64);
        let decision = self.scheduler.on_result(&t.trial, &r.metrics);
        let mut stopped = false;
        for s in &mut self.stoppers {
            // Every stopper sees every result (their windows stay whole).
            stopped |= s.stop_trial(&t.trial, &r.metrics);
        }
        match decision {
            _ if hit_limit || stopped => self.stop(ex, i, TrialStatus::Terminated, stopped && !hit_limit),
            Decision::Continue => Ok(()),
            Decision::Stop => self.stop(ex, i, TrialStatus::Terminated, true),
            Decision::Complete => self.stop(ex, i, TrialStatus::Terminated, false),
            Decision::Pause => {
                let t = &mut ex.trials[i];
                t.status = TrialStatus::Paused;
                ex.journal.append(&Event::Paused { trial: t.trial.clone() })?;
                if let Some(run) = ex.running.remove(&t.trial) {
                    run.kill_at_last_report(t);
                }
                Ok(())
            }
            Decision::Exploit { from, config } => self.exploit(ex, i, &from, config),
        }
    }

    /// Stops a running trial: its process killed, its end recorded.
    fn stop(&mut self, ex: &mut Run, i: usize, status: TrialStatus, early: bool) -> Result<()> {
        if let Some(run) = ex.running.remove(&ex.trials[i].trial) {
            run.kill_at_last_report(&ex.trials[i]);
        }
        self.end(ex, i, status, early)
    }

    /// PBT's exploit: trial `i` restarts from `from`'s latest checkpoint
    /// (copied into its own directory, its own checkpoints dropped) with
    /// `config`. Without a checkpoint of `from`, it goes on as it was.
    fn exploit(&mut self, ex: &mut Run, i: usize, from: &str, config: Config) -> Result<()> {
        let Some(src) = ex.index(from).and_then(|j| ex.trials[j].checkpoint.clone()) else {
            return Ok(());
        };
        let src = src.to_local()?;
        let manifest = src.manifest()?;
        let iteration = manifest.iteration;
        let copy = CheckpointWriter::copy_of(&src)?;
        let t = &mut ex.trials[i];
        if let Some(run) = ex.running.remove(&t.trial) {
            run.kill();
        }
        let own = CheckpointDir::new(t.storage.clone());
        own.clear()?;
        let metrics = manifest.metrics;
        let c = own.commit(copy, iteration, &metrics, WRITTEN_BY)?;
        rewrite_params(&t.path, &config)?;
        t.dirty = true;
        if self.config.verbose {
            ex.table.detach();
            println!(
                "{} takes over {from}'s checkpoint (iteration {iteration}) with {}",
                t.trial,
                serde_json::to_string(&config).unwrap_or_default()
            );
        }
        ex.journal.append(&Event::Exploited {
            trial: t.trial.clone(),
            from: from.to_string(),
            config: config.clone(),
            checkpoint: c.location(),
            iteration: Some(iteration),
        })?;
        self.scheduler.on_trial_add(&t.trial, &config);
        t.config = config;
        // Until it reports again, it stands where the checkpoint it took
        // stood.
        t.last = metrics;
        t.set_checkpoint(Some(c), iteration);
        t.status = TrialStatus::Pending;
        ex.restart.push_front(i);
        Ok(())
    }

    /// Asks the scheduler about the paused trials: those it resumes are
    /// queued to go on from their checkpoints, those it stops end.
    fn decide_paused(&mut self, ex: &mut Run, more_trials_coming: bool) -> Result<()> {
        let decisions = self.scheduler.decide_paused(more_trials_coming);
        if decisions.is_empty() {
            return Ok(());
        }
        ex.journal.append(&Event::Decided { more_trials_coming })?;
        for (trial, d) in decisions {
            let Some(i) = ex.index(&trial).filter(|i| ex.trials[*i].status == TrialStatus::Paused) else {
                continue;
            };
            match d {
                Decision::Continue => {
                    ex.trials[i].status = TrialStatus::Pending;
                    ex.trials[i].rewind();
                    ex.restart.push_back(i);
                }
                Decision::Stop => self.end(ex, i, TrialStatus::Terminated, true)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// A stopper ended the experiment: running and paused trials stop, no
    /// new ones start.
    fn stop_everything(&mut self, ex: &mut Run) -> Result<()> {
        if self.config.verbose {
            ex.table.detach();
            println!("a stopper ended the experiment");
        }
        for i in 0..ex.trials.len() {
            let s = &ex.trials[i].status;
            if matches!(s, TrialStatus::Running | TrialStatus::Paused | TrialStatus::Pending) {
                self.stop(ex, i, TrialStatus::Terminated, true)?;
            }
        }
        ex.restart.clear();
        Ok(())
    }

    /// A trial ended: its status, the journal, the scheduler and searcher told.
    fn end(&mut self, ex: &mut Run, i: usize, status: TrialStatus, early: bool) -> Result<()> {
        let t = &mut ex.trials[i];
        t.status = status;
        t.stopped_early = early;
        let end = match &t.status {
            TrialStatus::Error(e) => RunEnd::Failed(e.clone()),
            _ if early => RunEnd::Stopped,
            _ => RunEnd::Finished,
        };
        self.config.callbacks.end(&run_info(&self.config, t), &end);
        let t = &mut ex.trials[i];
        ex.journal.append(&Event::Ended {
            trial: t.trial.clone(),
            status: t.status.clone(),
            stopped_early: early,
        })?;
        self.scheduler.on_trial_complete(&t.trial);
        self.searcher
            .on_trial_complete(&t.trial, t.last.get(&self.config.metric).copied());
        Ok(())
    }

    /// Rebuilds an experiment from its journal: the searcher, scheduler and
    /// stoppers are called again as they were, in order; trials that had
    /// not ended (nor were paused) are queued to go on from their latest
    /// checkpoints; failed ones too on request.
    fn replay(&mut self, events: Vec<Event>, ex: &mut Run) -> Result<()> {
        // Each trial's latest checkpoint, by location: opened once at the
        // end (the ones in between may have been pruned since).
        let mut latest: BTreeMap<usize, String> = BTreeMap::new();
        for e in events {
            match e {
                Event::Experiment { definition } => {
                    let Some(now) = &self.config.definition else { continue };
                    let changed = differences(&definition, now);
                    if !changed.is_empty() {
                        return Err(Error::config(
                            "resume",
                            None,
                            format!(
                                "the experiment changed since it started ({}); resume it with the \
                                 definition it started with, or run it under another name",
                                changed.join("; ")
                            ),
                        ));
                    }
                }
                Event::Suggested { trial, config } => {
                    let _ = self.searcher.suggest(&trial);
                    self.scheduler.on_trial_add(&trial, &config);
                    let mut t = TrialResult::new(trial, config, &ex.storage, &ex.dir)?;
                    t.status = TrialStatus::Running;
                    ex.trials.push(t);
                }
                Event::Result {
                    trial,
                    metrics,
                    checkpoint,
                } => {
                    let Some(i) = ex.index(&trial) else { continue };
                    let t = &mut ex.trials[i];
                    t.history.push(metrics.clone());
                    t.last = metrics.clone();
                    if let Some(c) = checkpoint {
                        t.checkpoint_iteration = metrics.get(TRAINING_ITERATION).copied().unwrap_or(0.0) as u64;
                        latest.insert(i, c);
                    }
                    let _ = self.scheduler.on_result(&trial, &metrics);
                    for s in &mut self.stoppers {
                        let _ = s.stop_trial(&trial, &metrics);
                    }
                }
                Event::Retried { trial, .. } => {
                    let Some(i) = ex.index(&trial) else { continue };
                    let t = &mut ex.trials[i];
                    t.failures += 1;
                    t.rewind();
                }
                Event::Paused { trial } => {
                    if let Some(i) = ex.index(&trial) {
                        ex.trials[i].status = TrialStatus::Paused;
                    }
                }
                Event::Unpaused { trial } => {
                    if let Some(i) = ex.index(&trial) {
                        ex.trials[i].status = TrialStatus::Running;
                    }
                }
                Event::Decided { more_trials_coming } => {
                    for (trial, d) in self.scheduler.decide_paused(more_trials_coming) {
                        // A trial it stopped has its `ended` line next.
                        if let (Some(i), Decision::Continue) = (ex.index(&trial), d) {
                            ex.trials[i].status = TrialStatus::Running;
                        }
                    }
                }
                Event::Exploited {
                    trial,
                    config,
                    checkpoint,
                    iteration,
                    ..
                } => {
                    let Some(i) = ex.index(&trial) else { continue };
                    self.scheduler.on_trial_add(&trial, &config);
                    let t = &mut ex.trials[i];
                    t.config = config;
                    // Journals before the iteration was recorded: from the
                    // checkpoint's manifest.
                    let manifest = Checkpoint::at(&checkpoint).and_then(|c| c.manifest()).ok();
                    if let Some(m) = &manifest {
                        t.last = m.metrics.clone();
                    }
                    t.checkpoint_iteration = iteration.or(manifest.map(|m| m.iteration)).unwrap_or(0);
                    latest.insert(i, checkpoint);
                }
                Event::Reopened { trial, from_checkpoint } => {
                    let Some(i) = ex.index(&trial) else { continue };
                    if !from_checkpoint {
                        latest.remove(&i);
                        ex.trials[i].checkpoint_iteration = 0;
                    }
                    reopen(&mut ex.trials[i], from_checkpoint);
                }
                Event::Clock { elapsed_s } => {
                    ex.ran_before = Duration::try_from_secs_f64(elapsed_s).unwrap_or(ex.ran_before);
                }
                Event::Ended {
                    trial,
                    status,
                    stopped_early,
                } => {
                    let Some(i) = ex.index(&trial) else { continue };
                    let t = &mut ex.trials[i];
                    t.status = status;
                    t.stopped_early = stopped_early;
                    self.scheduler.on_trial_complete(&trial);
                    self.searcher
                        .on_trial_complete(&trial, t.last.get(&self.config.metric).copied());
                }
            }
        }
        for (i, location) in latest {
            let t = &mut ex.trials[i];
            match Checkpoint::at(&location) {
                Ok(c) => t.checkpoint = Some(c),
                Err(e) => {
                    // Gone (deleted by hand): the newest one left, if any.
                    let left = CheckpointDir::new(t.storage.clone()).latest().ok().flatten();
                    let at = left.as_ref().and_then(|c| c.manifest().ok()).map_or(0, |m| m.iteration);
                    tracing::warn!(
                        "{}: its latest checkpoint {location} cannot be read ({e}); going on from {}",
                        t.trial,
                        left.as_ref().map_or("the start".to_string(), |c| c.location())
                    );
                    t.set_checkpoint(left, at);
                }
            }
        }
        for i in 0..ex.trials.len() {
            let t = &mut ex.trials[i];
            let reopen_it = matches!(t.status, TrialStatus::Error(_))
                && (self.config.resume_errored || self.config.restart_errored);
            if reopen_it {
                let from_checkpoint = !self.config.restart_errored;
                ex.journal.append(&Event::Reopened {
                    trial: t.trial.clone(),
                    from_checkpoint,
                })?;
                if !from_checkpoint {
                    CheckpointDir::new(t.storage.clone()).clear()?;
                }
                reopen(t, from_checkpoint);
            }
            if t.status == TrialStatus::Running {
                t.rewind();
                t.status = TrialStatus::Pending;
                ex.restart.push_back(i);
            }
        }
        // The driver's files of every trial, from the journal (for remote
        // storage they are in a fresh directory on this node).
        for t in &mut ex.trials {
            std::fs::create_dir_all(&t.path).map_err(|e| Error::io(&t.path, e))?;
            rewrite_params(&t.path, &t.config)?;
            rewrite_files(t);
        }
        Ok(())
    }
}

/// How many points of each trial's curve the dashboard gets at most.
const TRIAL_CURVE_POINTS: usize = 200;

/// A trial's metric against its iteration for the dashboard, at most
/// `TRIAL_CURVE_POINTS` evenly spaced reports and its latest:
/// `{"steps": [..], "values": [..]}`.
fn trial_curve(t: &TrialResult, metric: &str) -> serde_json::Value {
    let n = t.history.len();
    let every = n.div_ceil(TRIAL_CURVE_POINTS).max(1);
    let picked = (0..n).filter(|i| i % every == 0 || *i + 1 == n);
    let (steps, values): (Vec<_>, Vec<_>) = picked
        .map(|i| {
            let m = &t.history[i];
            let step = m.get(TRAINING_ITERATION).copied().unwrap_or((i + 1) as f64);
            (step, m.get(metric).copied().filter(|v| v.is_finite()))
        })
        .unzip();
    serde_json::json!({ "steps": steps, "values": values })
}

/// A trial as [`rayforge::tracking`] callbacks see it.
fn run_info(c: &TuneConfig, t: &TrialResult) -> RunInfo {
    RunInfo::new(RunKind::Tune, &c.name, &t.trial)
        .params(serde_json::to_value(&t.config).unwrap_or_default())
        .storage(t.storage.clone())
}

/// Writes a trial's `params.json`.
fn rewrite_params(dir: &Path, config: &Config) -> Result<()> {
    let params = serde_json::to_vec_pretty(config).map_err(|e| Error::Runtime(e.to_string()))?;
    std::fs::write(dir.join("params.json"), params).map_err(|e| Error::io(dir, e))
}

/// A failed trial made to run again: from its latest checkpoint, or from
/// scratch (its checkpoints forgotten — the caller deletes them — and its
/// results dropped).
fn reopen(t: &mut TrialResult, from_checkpoint: bool) {
    if !from_checkpoint {
        t.set_checkpoint(None, 0);
        t.failures = 0;
    }
    t.rewind();
    t.stopped_early = false;
    t.status = TrialStatus::Running;
}

/// `results.csv`: every trial's config and last result.
fn results_csv(trials: &[TrialResult], c: &TuneConfig) -> String {
    ResultGrid {
        trials: trials.to_vec(),
        metric: c.metric.clone(),
        mode: c.mode,
        scope: c.best_scope,
    }
    .to_csv()
}

/// Why a trial that ended cannot be ranked by `metric`: none of its
/// results had it (`None` when one did).
fn lacks_metric(t: &crate::tuner::results::TrialResult, metric: &str) -> Option<String> {
    if t.history.iter().any(|m| m.contains_key(metric)) {
        return None;
    }
    let mut keys: Vec<&String> = t.history.iter().flat_map(|m| m.keys()).collect();
    keys.sort();
    keys.dedup();
    Some(if t.history.is_empty() {
        format!("the trial ended without reporting any result, so it has no `{metric}` (the experiment's metric)")
    } else {
        format!(
            "none of the trial's {} results has `{metric}`, the experiment's metric (it reported {})",
            t.history.len(),
            keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
        )
    })
}
