//! The driver side of a run: the gang of worker actors in a placement
//! group, the reports they send, checkpoints kept and pruned, and restarts
//! from the latest checkpoint when a rank fails.
//!
//! The decisions (which rank's failure caused the others', whether the
//! budget allows another attempt) are plain functions of what the attempt
//! saw, tested on their own; [`Trainer::fit`] does the I/O around them.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use rayforge::{AnyFnRef, FnRef, Json, ObjectRef, PlacementStrategy};
use serde::{Deserialize, Serialize};

use crate::context::{Report, TrainContext};
use crate::error::{Error, Result};
use crate::worker::{t_train, RankSpec, TrainTramp, TrainWorker, TrainWorkerHandle};
use rayforge::checkpoint::{Checkpoint, CheckpointConfig, CheckpointDir};
use rayforge::storage::{SharedCheck, Storage, StorageUri};
use rayforge::tracking::{Callbacks, Curve, RunEnd, RunInfo, RunKind, TensorBoard};

/// How many workers, and what each holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingConfig {
    /// The number of ranks (default 1); with `min_workers`, the most.
    pub num_workers: usize,
    /// An elastic gang (Ray Train's `num_workers=(min, max)`): a gang that
    /// loses ranks (a node gone) goes on from the latest checkpoint with as
    /// many as the cluster can place now, down to `min_workers`, instead of
    /// waiting for all `num_workers`; and when there is room for more,
    /// after the next checkpoint it restarts from that checkpoint with more,
    /// up to `num_workers`. `None` (the default): always `num_workers`.
    pub min_workers: Option<usize>,
    /// Whether each rank holds a GPU.
    pub use_gpu: bool,
    /// CPUs each rank holds (default 1).
    pub cpus_per_worker: f64,
    /// Other resources each rank holds.
    pub resources_per_worker: BTreeMap<String, f64>,
    /// How the ranks spread over nodes: `Pack` (default) or `Spread`.
    pub placement_strategy: PlacementStrategy,
}

impl Default for ScalingConfig {
    fn default() -> Self {
        ScalingConfig {
            num_workers: 1,
            min_workers: None,
            use_gpu: false,
            cpus_per_worker: 1.0,
            resources_per_worker: BTreeMap::new(),
            placement_strategy: PlacementStrategy::Pack,
        }
    }
}

/// How often a run may fail and still go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureConfig {
    /// Restarts from the latest checkpoint after a rank fails (default 0;
    /// -1: without limit).
    pub max_failures: i32,
}

/// Where a run keeps its results, and its policies.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    /// The run's name: its directory under `storage_path`. Running again
    /// under the same name (from any machine that reaches the same
    /// storage) resumes from its latest checkpoint.
    pub name: String,
    /// Where runs keep their directories: a [`rayforge::storage`] URI —
    /// a path (on a cluster, one every node shares: checked before the
    /// run starts), `cluster://prefix` (the head's store, no shared disk
    /// needed) or `s3://bucket/prefix`. Default: `~/rayforge_results` on
    /// the embedded cluster, `cluster://rayforge_results` on a multi-node
    /// one. Rank 0 commits checkpoints there from whichever node it runs
    /// on.
    pub storage_path: StorageUri,
    /// Which checkpoints to keep.
    pub checkpoint: CheckpointConfig,
    /// How many failures to survive.
    pub failure: FailureConfig,
    /// How long a collective may wait on a peer before it fails (default
    /// 300 s): a hung rank fails the run instead of hanging it.
    pub collective_timeout: Duration,
    /// Print a line per report (default on).
    pub verbose: bool,
    /// Told of the run's start, reports, checkpoints and end, on the
    /// driver ([`rayforge::tracking`]: MLflow, or a user's own).
    pub callbacks: Callbacks,
    /// Write a TensorBoard event file into the run's directory (default
    /// on): `tensorboard --logdir <storage_path>` shows its curves.
    pub tensorboard: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            name: "train".into(),
            storage_path: StorageUri::default(),
            checkpoint: CheckpointConfig::default(),
            failure: FailureConfig { max_failures: 0 },
            collective_timeout: Duration::from_secs(300),
            verbose: true,
            callbacks: Callbacks::new(),
            tensorboard: true,
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct TrainResult {
    /// The last report's metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Every report, in order (of every attempt: a restarted run reports
    /// the iterations after its checkpoint again).
    pub history: Vec<Report>,
    /// The newest checkpoint.
    pub latest_checkpoint: Option<Checkpoint>,
    /// The best checkpoint by the run's checkpoint config.
    pub best_checkpoint: Option<Checkpoint>,
    /// Why the run failed, if it did.
    pub error: Option<Error>,
    /// How many times a rank failed (each failure within the budget
    /// restarted the gang).
    pub failures: u32,
    /// The run's directory (checkpoints, `progress.csv`), in its storage.
    pub storage: Storage,
}

impl TrainResult {
    /// The metrics history as CSV: a column per metric, a row per report.
    pub fn history_csv(&self) -> String {
        rows_csv(&self.history.iter().map(CsvRow::of).collect::<Vec<_>>())
    }

    /// The metrics history as an Arrow record batch: `iteration` (UInt64),
    /// a Float64 column per metric (null where a report lacked it), and
    /// `checkpoint` (the committed checkpoint's path, or null).
    pub fn history_batch(&self) -> Result<arrow::record_batch::RecordBatch> {
        history_batch(&self.history)
    }

    /// `Ok(self)` if the run finished, its error otherwise.
    pub fn into_result(self) -> Result<TrainResult> {
        match self.error.clone() {
            Some(e) => Err(e),
            None => Ok(self),
        }
    }
}

/// Runs a training function on a gang of workers (as Ray's
/// `TorchTrainer(train_loop, scaling_config, run_config).fit()`).
#[derive(Clone)]
pub struct Trainer {
    tramp: FnRef<TrainTramp>,
    user: AnyFnRef,
    scaling: ScalingConfig,
    run: RunConfig,
    config: serde_json::Value,
    datasets: Vec<(String, rayforge_data::Dataset)>,
    /// A placement group the gang runs in (its bundles from the index
    /// given), instead of one of its own.
    placement: Option<(rayforge::PlacementGroup, usize)>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("scaling", &self.scaling)
            .field("run", &self.run)
            .field("config", &self.config)
            .field("datasets", &self.datasets.iter().map(|d| &d.0).collect::<Vec<_>>())
            .finish()
    }
}

impl Trainer {
    /// A trainer running `train_loop` on every rank.
    pub fn new<E: std::fmt::Display + 'static>(
        train_loop: fn(&mut TrainContext) -> std::result::Result<(), E>,
    ) -> Self {
        let tramp: TrainTramp = t_train::<E>;
        Trainer {
            tramp: FnRef::new(tramp),
            user: FnRef::new(train_loop).erase(),
            scaling: ScalingConfig::default(),
            run: RunConfig::default(),
            config: serde_json::Value::Null,
            datasets: Vec::new(),
            placement: None,
        }
    }

    /// Runs the gang in bundles `first_bundle..first_bundle + num_workers`
    /// of a placement group someone else holds (a Tune trial's) instead of
    /// reserving one of its own; the group is left in place at the end.
    /// Each bundle must hold what a worker asks for.
    pub fn placement_group(mut self, pg: &rayforge::PlacementGroup, first_bundle: usize) -> Self {
        self.placement = Some((pg.clone(), first_bundle));
        self
    }

    /// A dataset the ranks read as `name` ([`TrainContext::dataset_shard`],
    /// [`TrainContext::iter_torch_batches`]): split across the ranks with
    /// `streaming_split`, every rank getting the same number of rows, one
    /// pass per epoch. Giving a name again replaces its dataset. The
    /// dataset's own tasks (a `map_batches`, say) need CPUs beside the
    /// gang's: leave some free (or give the ranks fractional CPUs), as
    /// with Ray Train.
    pub fn dataset(mut self, name: &str, ds: rayforge_data::Dataset) -> Self {
        self.datasets.retain(|d| d.0 != name);
        self.datasets.push((name.to_string(), ds));
        self
    }

    /// How many workers and what each holds.
    pub fn scaling(mut self, s: ScalingConfig) -> Self {
        self.scaling = s;
        self
    }

    /// Name, storage, checkpoint and failure policies.
    pub fn run_config(mut self, r: RunConfig) -> Self {
        self.run = r;
        self
    }

    /// The config every rank reads with [`TrainContext::config`].
    pub fn config(mut self, c: serde_json::Value) -> Self {
        self.config = c;
        self
    }

    fn validate(&self) -> Result<()> {
        let s = &self.scaling;
        if s.num_workers == 0 {
            return Err(Error::InvalidArgument("scaling: num_workers must be at least 1".into()));
        }
        if !(s.cpus_per_worker.is_finite() && s.cpus_per_worker >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "scaling: cpus_per_worker must be a non-negative number, got {}",
                s.cpus_per_worker
            )));
        }
        if let Some(min) = s.min_workers {
            if min == 0 || min > s.num_workers {
                return Err(Error::InvalidArgument(format!(
                    "scaling: min_workers must be from 1 to num_workers ({}), got {min}",
                    s.num_workers
                )));
            }
            if self.placement.is_some() {
                return Err(Error::InvalidArgument(
                    "scaling: an elastic gang (min_workers) reserves its own placement group; \
                     it cannot run in one given with Trainer::placement_group"
                        .into(),
                ));
            }
        }
        if let Some((pg, first)) = &self.placement {
            if first + s.num_workers > pg.bundle_count() {
                return Err(Error::InvalidArgument(format!(
                    "scaling: {} workers from bundle {first} need {} bundles, the placement group has {}",
                    s.num_workers,
                    first + s.num_workers,
                    pg.bundle_count()
                )));
            }
        }
        let name = &self.run.name;
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
            return Err(Error::InvalidArgument(format!(
                "run_config: name `{name}` must be a plain directory name"
            )));
        }
        Ok(())
    }

    /// Runs the gang to the end: a rank that fails tears the gang down and
    /// a new one starts from the latest checkpoint, while the failure budget
    /// lasts. An error here means the run could not start (bad config,
    /// unwritable storage); a run that failed returns its result with
    /// [`TrainResult::error`] set.
    pub fn fit(&self) -> Result<TrainResult> {
        self.fit_with(|_| {})
    }

    /// [`Trainer::fit`], calling `on_report` with each report as it comes
    /// (rank 0's metrics and the committed checkpoint): a Tune trial
    /// passes them on as its own results this way.
    pub fn fit_with(&self, mut on_report: impl FnMut(&Report)) -> Result<TrainResult> {
        self.validate()?;
        // A storage that is malformed, unreachable or not writable fails
        // here, before any rank starts.
        let storage = self.run.storage_path.join(&self.run.name).open()?;
        storage.check_writable()?;
        let shared = storage.shared_check()?;
        let run_dir = CheckpointDir::new(storage.clone());
        let result = self.fit_in(&run_dir, &shared, &mut on_report);
        shared.remove();
        result
    }

    fn fit_in(
        &self,
        run_dir: &CheckpointDir,
        shared: &SharedCheck,
        on_report: &mut dyn FnMut(&Report),
    ) -> Result<TrainResult> {
        let run_id = format!("{}-{:x}", self.run.name, unique());
        // A run resumed by name goes on with the history it had: its
        // progress.csv keeps the earlier rows.
        let prior = match run_dir.storage().read("progress.csv") {
            Ok(Some(bytes)) => parse_progress_csv(&String::from_utf8_lossy(&bytes)),
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::warn!(run = %self.run.name, "reading the earlier progress.csv: {e}");
                Vec::new()
            }
        };
        let mut callbacks = self.run.callbacks.clone();
        if self.run.tensorboard {
            callbacks.push(std::sync::Arc::new(TensorBoard::new()));
        }
        let params = if self.config.is_null() {
            serde_json::json!({})
        } else {
            self.config.clone()
        };
        let mut history = History {
            curve: Curve::default(),
            checkpoints: Vec::new(),
            restarts: Vec::new(),
            run: RunInfo::new(RunKind::Train, &self.run.name, &self.run.name)
                .params(params)
                .storage(run_dir.storage().clone()),
            callbacks,
            prior,
            reports: Vec::new(),
            grew_from: None,
            hold_growth_until: None,
            ranks: self.scaling.num_workers,
            failures: 0,
        };
        // A resumed run's dashboard curve starts at its first report.
        for r in history.prior.clone() {
            history.curve.push(r.iteration as f64, &r.metrics);
            if !r.checkpoint.is_empty() {
                history.checkpointed(r.iteration);
            }
        }
        history.callbacks.start(&history.run);
        let mut failures = 0u32;
        // Failures in a row with no new checkpoint between them: each waits
        // longer before the next attempt (a failure that recurs at once, with
        // `max_failures = -1`, would otherwise restart in a tight loop).
        let mut stuck = 0u32;
        let mut error = None;
        for attempt in 0.. {
            let resume = run_dir.latest()?;
            // A rank killed between committing a checkpoint and handing over
            // its report leaves a checkpoint the history lacks: its report
            // comes from the checkpoint's manifest, so the history has every
            // iteration the restarted gang goes on from.
            if attempt > 0 {
                if let Some(c) = &resume {
                    let last = history.last_iteration();
                    let m = c.manifest()?;
                    if m.iteration > last {
                        let r = Report {
                            iteration: m.iteration,
                            metrics: m.metrics,
                            checkpoint: Some(c.clone()),
                        };
                        history.record(r, on_report);
                    }
                }
            }
            let resumed_at = resume.as_ref().map(|c| c.location());
            let ring = format!("{run_id}/attempt{attempt}");
            // A gang that cannot be placed is no rank's failure, and trying
            // again cannot place it: the run ends with the reason.
            let place = match &self.placement {
                Some((pg, first)) => Ok((pg.clone(), *first, false, self.scaling.num_workers)),
                None => self.gang_group().map(|(pg, n)| (pg, 0, true, n)),
            };
            let place = match place {
                Ok(place) => {
                    // A restart to grow that found no more room than before
                    // holds off growing for a minute rather than restart at
                    // every checkpoint.
                    if history.grew_from.take().is_some_and(|before| place.3 <= before) {
                        history.hold_growth_until = Some(Instant::now() + Duration::from_secs(60));
                    }
                    history.ranks = place.3;
                    place
                }
                Err(e) => {
                    tracing::warn!(run = %self.run.name, "{e}");
                    error = Some(e);
                    break;
                }
            };
            match self.attempt(place, &ring, run_dir, shared, resume, &mut history, on_report) {
                Ok(()) => break,
                // Storage some rank's node cannot use: another attempt
                // would meet the same.
                Err(Failure { fatal: Some(e), .. }) => {
                    tracing::warn!(run = %self.run.name, "{e}");
                    error = Some(*e);
                    break;
                }
                // An elastic gang with room to grow: not a failure.
                Err(Failure { grow: true, .. }) => {
                    stuck = 0;
                    history.restarted("restarted to grow the gang".into());
                }
                Err(Failure { rank, node, cause, .. }) => {
                    failures += 1;
                    history.failures = failures;
                    tracing::warn!(run = %self.run.name, rank, node = %node, failures, "a rank failed: {cause}");
                    if !may_retry(failures, self.run.failure.max_failures) {
                        error = Some(Error::RankFailed {
                            rank,
                            node,
                            cause,
                            failures,
                            max_failures: self.run.failure.max_failures,
                        });
                        break;
                    }
                    history.restarted(format!("rank {rank} failed: {cause}"));
                    let progressed = run_dir.latest()?.map(|c| c.location()) != resumed_at;
                    stuck = if progressed { 0 } else { stuck + 1 };
                    let wait = restart_backoff(stuck);
                    if self.run.verbose {
                        println!(
                            "[{}] rank {rank} failed ({cause}); restarting from the latest checkpoint ({failures} of {}){}",
                            self.run.name,
                            budget(self.run.failure.max_failures),
                            if wait.is_zero() {
                                String::new()
                            } else {
                                format!(
                                    " in {:.0} s: {stuck} failures in a row without a new checkpoint",
                                    wait.as_secs_f64()
                                )
                            }
                        );
                    }
                    if !wait.is_zero() {
                        tracing::warn!(run = %self.run.name, stuck, "waiting {wait:?} before restarting");
                        std::thread::sleep(wait);
                    }
                }
            }
        }
        let all = run_dir.list()?;
        let state = if error.is_some() { "FAILED" } else { "FINISHED" };
        let message = error.as_ref().map(|e| e.to_string()).unwrap_or_default();
        history.failures = failures;
        self.publish(run_dir, &history, state, &message);
        let end = match &error {
            Some(e) => RunEnd::Failed(e.to_string()),
            None => RunEnd::Finished,
        };
        history.callbacks.end(&history.run, &end);
        let history = history.reports;
        Ok(TrainResult {
            metrics: history.last().map(|r| r.metrics.clone()).unwrap_or_default(),
            latest_checkpoint: all.last().cloned(),
            best_checkpoint: self.run.checkpoint.best(&all),
            history,
            error,
            failures,
            storage: run_dir.storage().clone(),
        })
    }

    /// Publishes the run's status for the dashboard's Train page (a
    /// failure to is logged, never fatal).
    fn publish(&self, run_dir: &CheckpointDir, history: &History, state: &str, message: &str) {
        let last = history.reports.last();
        let latest = history.reports.iter().rev().find_map(|r| r.checkpoint.as_ref());
        let failures = history.failures;
        let status = serde_json::json!({
            "status": state,
            "workers": history.ranks,
            "max_workers": self.scaling.num_workers,
            "min_workers": self.scaling.min_workers,
            "use_gpu": self.scaling.use_gpu,
            "iteration": last.map(|r| r.iteration),
            "metrics": last.map(|r| r.metrics.clone()),
            "latest_checkpoint": latest.map(|c| c.location()),
            "failures": failures,
            "error": message,
            "path": run_dir.storage().uri(),
            "history": history.curve.to_json(),
            "checkpoints": history.checkpoints,
            "restarts": history.restarts,
        });
        if let Err(e) = rayforge::state::publish("train", &self.run.name, &status) {
            tracing::debug!("publishing the run for the dashboard: {e}");
        }
    }

    /// One gang of `n` ranks from start to end, on the placement group
    /// `pg` (from bundle `first`; removed at the end when `owned`). `Err`
    /// names the rank whose failure ended it, or says an elastic gang
    /// stopped to grow.
    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        (pg, first, owned, n): (rayforge::PlacementGroup, usize, bool, usize),
        ring: &str,
        run_dir: &CheckpointDir,
        shared: &SharedCheck,
        resume: Option<Checkpoint>,
        history: &mut History,
        on_report: &mut dyn FnMut(&Report),
    ) -> std::result::Result<(), Failure> {
        let setup = |e: Error| Failure {
            fatal: is_storage_refusal(&e).then(|| Box::new(e.clone())),
            ..Failure::of(0, String::new(), e.to_string())
        };
        let release = |pg: &rayforge::PlacementGroup| {
            if owned {
                let _ = rayforge::remove_placement_group(pg);
            }
        };
        let gang = Gang::start(self, &pg, first, n, shared).map_err(|e| {
            release(&pg);
            setup(e)
        });
        let gang = gang?;
        let result = self.run_gang(&gang, ring, run_dir, resume, history, on_report);
        gang.stop();
        release(&pg);
        for r in 0..n {
            let _ = rayforge::kv::delete("train", &format!("{ring}/rank{r}"));
        }
        result
    }

    /// What each rank's bundle holds.
    fn bundle(&self) -> BTreeMap<String, f64> {
        let s = &self.scaling;
        let mut bundle = s.resources_per_worker.clone();
        if s.cpus_per_worker > 0.0 {
            bundle.insert("CPU".into(), s.cpus_per_worker);
        }
        if s.use_gpu {
            bundle.insert("GPU".into(), 1.0);
        }
        bundle
    }

    /// The gang's placement group and its size: `num_workers` bundles, or
    /// for an elastic gang as many as the cluster can place now (trying
    /// the most first), from `min_workers` up.
    fn gang_group(&self) -> Result<(rayforge::PlacementGroup, usize)> {
        let s = &self.scaling;
        let Some(min) = s.min_workers else {
            return Ok((self.group_of(s.num_workers)?, s.num_workers));
        };
        let bundle = self.bundle();
        // All of them first (the resources a stopped gang gave back reach
        // the head's view with the next heartbeats, so the free estimate
        // can be short), then as many as the free resources suggest, then
        // the fewest.
        let most = bundles_free(&bundle)?.clamp(min, s.num_workers);
        let mut sizes = vec![s.num_workers, most, min];
        sizes.dedup();
        for (i, n) in sizes.into_iter().enumerate() {
            let pg = rayforge::placement_group(vec![bundle.clone(); n], s.placement_strategy).create()?;
            let wait = Duration::from_secs(if i == 0 { 10 } else { 3 });
            if pg.wait(wait)? {
                if n < s.num_workers {
                    tracing::info!(run = %self.run.name, ranks = n, most = s.num_workers, "an elastic gang starts smaller");
                    if self.run.verbose {
                        println!(
                            "[{}] room for {n} of {} ranks: starting with {n}",
                            self.run.name, s.num_workers
                        );
                    }
                }
                return Ok((pg, n));
            }
            let _ = rayforge::remove_placement_group(&pg);
        }
        Ok((self.group_of(min)?, min))
    }

    /// How many ranks an elastic gang of `n` could grow to now: the free
    /// resources' estimate, checked by placing (and removing) a placement
    /// group of the extra bundles; `None` when there is no room.
    fn room_for_more(&self, n: usize) -> Result<Option<usize>> {
        let bundle = self.bundle();
        let extra = bundles_free(&bundle)?.min(self.scaling.num_workers.saturating_sub(n));
        if extra == 0 {
            return Ok(None);
        }
        let probe = rayforge::placement_group(vec![bundle; extra], self.scaling.placement_strategy).create()?;
        let placed = probe.wait(Duration::from_secs(2));
        let _ = rayforge::remove_placement_group(&probe);
        Ok(placed?.then_some(n + extra))
    }

    /// A placement group of `n` ranks' bundles, once placed (waiting for
    /// nodes to join, up to ten minutes; one the cluster could never hold
    /// fails after half a minute).
    fn group_of(&self, n: usize) -> Result<rayforge::PlacementGroup> {
        let s = &self.scaling;
        let bundle = self.bundle();
        let pg = rayforge::placement_group(vec![bundle.clone(); n], s.placement_strategy).create()?;
        let state = |pg: &rayforge::PlacementGroup| match pg.state() {
            Ok(st) => format!("{st:?}"),
            Err(e) => e.to_string(),
        };
        let started = Instant::now();
        let mut told = false;
        loop {
            if pg.wait(Duration::from_secs(1))? {
                return Ok(pg);
            }
            let waited = started.elapsed();
            // Nodes joining or restarting get half a minute; then a gang the whole
            // cluster could never hold fails now rather than after the
            // timeout (rayforge has no autoscaler to add nodes).
            let short = if waited >= Duration::from_secs(30) {
                short_of(&bundle, n)?
            } else {
                None
            };
            if short.is_some() || waited >= Duration::from_secs(600) {
                let why = short.unwrap_or_else(|| state(&pg));
                let _ = rayforge::remove_placement_group(&pg);
                return Err(Error::InvalidArgument(format!(
                    "the gang's {n} bundles could not be placed: {why}"
                )));
            }
            if !told && waited >= Duration::from_secs(5) {
                told = true;
                let state = state(&pg);
                tracing::info!(run = %self.run.name, %state, "waiting for resources for the gang's placement group");
                if self.run.verbose {
                    println!("waiting for resources for {n} rank(s): {state}");
                }
            }
        }
    }

    fn run_gang(
        &self,
        gang: &Gang,
        ring: &str,
        run_dir: &CheckpointDir,
        resume: Option<Checkpoint>,
        history: &mut History,
        on_report: &mut dyn FnMut(&Report),
    ) -> std::result::Result<(), Failure> {
        let n = gang.workers.len();
        let reports =
            rayforge::util::Queue::<Report>::new(0).map_err(|e| Failure::of(0, String::new(), e.to_string()))?;
        let places = local_ranks(&gang.nodes);
        // A fresh secret per attempt: the ranks prove their ring links with it.
        let ring_secret = rayforge::util::random_secret().map_err(|e| Failure::of(0, String::new(), e.to_string()))?;
        let mut splits: Vec<(String, Vec<rayforge_data::DataIterator>)> = Vec::new();
        for (name, ds) in &self.datasets {
            match ds.streaming_split(n, true) {
                Ok(its) => splits.push((name.clone(), its)),
                Err(e) => {
                    close_splits(&splits);
                    return Err(Failure::of(
                        0,
                        String::new(),
                        format!("splitting dataset `{name}`: {e}"),
                    ));
                }
            }
        }
        let runs: Vec<ObjectRef<()>> = gang
            .workers
            .iter()
            .enumerate()
            .map(|(rank, w)| {
                w.run(RankSpec {
                    tramp: self.tramp,
                    user: self.user,
                    ring: ring.to_string(),
                    ring_secret: ring_secret.clone(),
                    world_rank: rank,
                    world_size: n,
                    local_rank: places[rank].0,
                    local_size: places[rank].1,
                    node_rank: places[rank].2,
                    use_gpu: self.scaling.use_gpu,
                    config: Json(self.config.clone()),
                    checkpoint: resume.clone(),
                    reports: reports.clone(),
                    run_dir: run_dir.clone(),
                    timeout_ms: self.run.collective_timeout.as_millis() as u64,
                    shards: splits
                        .iter()
                        .map(|(name, its)| (name.clone(), its[rank].clone()))
                        .collect(),
                    threads: self.scaling.cpus_per_worker.floor().max(1.0) as usize,
                })
            })
            .collect();
        let start = Instant::now();
        let mut outcomes: Vec<Option<std::result::Result<(), Error>>> = vec![None; n];
        let mut first_failure: Option<Instant> = None;
        // An elastic gang below its most looks for room for more ranks
        // after each checkpoint.
        let may_grow = self.scaling.min_workers.is_some() && n < self.scaling.num_workers;
        // Not at once: a node that just died may still count as free
        // until the head misses its heartbeats.
        let mut next_look = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = history.reports.len();
            self.drain(&reports, run_dir, history, start, on_report);
            let checkpointed = history.reports[seen..].iter().any(|r| r.checkpoint.is_some());
            let held = history.hold_growth_until.is_some_and(|t| Instant::now() < t);
            if may_grow && checkpointed && !held && first_failure.is_none() && Instant::now() >= next_look {
                next_look = Instant::now() + Duration::from_secs(5);
                match self.room_for_more(n) {
                    Ok(Some(more)) => {
                        tracing::info!(run = %self.run.name, ranks = n, more, "room for more ranks: restarting from the checkpoint");
                        if self.run.verbose {
                            println!(
                                "[{}] room for {more} of {} ranks: restarting from the latest checkpoint",
                                self.run.name, self.scaling.num_workers
                            );
                        }
                        // Stopped first, so that a report sent meanwhile
                        // (and its checkpoint) is recorded before the
                        // next gang resumes from the latest checkpoint.
                        gang.stop();
                        self.drain(&reports, run_dir, history, start, on_report);
                        close_splits(&splits);
                        history.grew_from = Some(n);
                        return Err(Failure {
                            grow: true,
                            ..Failure::of(0, String::new(), format!("growing from {n} ranks"))
                        });
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!("looking for room for more ranks: {e}"),
                }
            }
            let pending: Vec<ObjectRef<()>> = (0..n)
                .filter(|i| outcomes[*i].is_none())
                .map(|i| runs[i].clone())
                .collect();
            if pending.is_empty() {
                break;
            }
            if let Ok((ready, _)) = rayforge::wait(&pending, 1, Some(Duration::from_millis(200))) {
                for r in ready {
                    if let Some(i) = runs.iter().position(|x| *x == r) {
                        outcomes[i] = Some(r.get().map_err(Error::from));
                    }
                }
            }
            let failed = outcomes.iter().any(|o| matches!(o, Some(Err(_))));
            if failed && first_failure.is_none() {
                first_failure = Some(Instant::now());
            }
            // Once a rank failed, the others fail at their next collective;
            // give them a moment to say why, then stop waiting.
            if first_failure.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
                break;
            }
        }
        self.drain(&reports, run_dir, history, start, on_report);
        close_splits(&splits);
        match cause_of(&outcomes) {
            None => Ok(()),
            Some((rank, cause)) => Err(Failure::of(
                rank,
                gang.nodes.get(rank).cloned().unwrap_or_default(),
                cause,
            )),
        }
    }

    /// Takes the reports waiting in the queue: records them, prints a line
    /// each, rewrites `progress.csv`, prunes checkpoints.
    fn drain(
        &self,
        reports: &rayforge::util::Queue<Report>,
        run_dir: &CheckpointDir,
        history: &mut History,
        start: Instant,
        on_report: &mut dyn FnMut(&Report),
    ) {
        let mut got = false;
        while let Ok(r) = reports.get_timeout(Duration::from_millis(1)) {
            if self.run.verbose {
                let metrics: Vec<String> = r.metrics.iter().map(|(k, v)| format!("{k}={v:.6}")).collect();
                println!(
                    "[{}] iteration {} ({:.1} s): {}{}",
                    self.run.name,
                    r.iteration,
                    start.elapsed().as_secs_f64(),
                    metrics.join(" "),
                    if r.checkpoint.is_some() { " [checkpoint]" } else { "" }
                );
                let _ = std::io::stdout().flush();
            }
            history.record(r, on_report);
            got = true;
        }
        if got {
            self.publish(run_dir, history, "RUNNING", "");
            let mut rows = history.prior.clone();
            rows.extend(history.reports.iter().map(CsvRow::of));
            if let Err(e) = run_dir.storage().put("progress.csv", rows_csv(&rows).as_bytes()) {
                tracing::warn!("writing progress.csv: {e}");
            }
            if let Err(e) = run_dir.prune(&self.run.checkpoint) {
                tracing::warn!("pruning checkpoints: {e}");
            }
        }
    }
}

/// Ends the dataset splits of an attempt (their coordinators stop).
fn close_splits(splits: &[(String, Vec<rayforge_data::DataIterator>)]) {
    for (name, its) in splits {
        if let Some(it) = its.first() {
            if let Err(e) = it.close() {
                tracing::debug!("closing the split of dataset `{name}`: {e}");
            }
        }
    }
}

/// A rank's failure that ended an attempt.
struct Failure {
    rank: usize,
    node: String,
    cause: String,
    /// An error that ends the run whatever its failure budget (storage a
    /// rank's node cannot use).
    fatal: Option<Box<Error>>,
    /// Not a failure: an elastic gang stopped after a checkpoint to start
    /// again with more ranks.
    grow: bool,
}

impl Failure {
    fn of(rank: usize, node: String, cause: String) -> Failure {
        Failure {
            rank,
            node,
            cause,
            fatal: None,
            grow: false,
        }
    }
}

/// Whether `e` is storage refusing a node for good (a path it does not
/// share, a permission), which no restart mends.
fn is_storage_refusal(e: &Error) -> bool {
    matches!(e, Error::Runtime(rayforge::Error::Storage { retriable: false, .. }))
}

/// The workers of one attempt and the node each runs on.
struct Gang {
    workers: Vec<TrainWorkerHandle>,
    nodes: Vec<String>,
}

impl Gang {
    /// Starts the ranks and checks that each one's node reads the run's
    /// storage (`shared`, the driver's marker).
    fn start(
        t: &Trainer,
        pg: &rayforge::PlacementGroup,
        first_bundle: usize,
        n: usize,
        shared: &SharedCheck,
    ) -> Result<Gang> {
        let s = &t.scaling;
        let mut workers = Vec::with_capacity(n);
        for rank in 0..n {
            let mut o = TrainWorker::options()
                .placement_group(pg, Some(first_bundle + rank))
                .num_cpus(s.cpus_per_worker)
                .env("RANK", &rank.to_string())
                .env(
                    "OMP_NUM_THREADS",
                    &(s.cpus_per_worker.floor().max(1.0) as usize).to_string(),
                )
                .env("WORLD_SIZE", &n.to_string());
            if s.use_gpu {
                o = o.num_gpus(1.0);
            }
            for (k, v) in &s.resources_per_worker {
                o = o.resource(k, *v);
            }
            workers.push(o.remote()?);
        }
        let nodes: Vec<ObjectRef<String>> = workers.iter().map(|w| w.node()).collect();
        let nodes = rayforge::get_all(&nodes)?;
        let gang = Gang { workers, nodes };
        let checks: Vec<ObjectRef<()>> = gang.workers.iter().map(|w| w.check_storage(shared.clone())).collect();
        if let Err(e) = rayforge::get_all(&checks) {
            gang.stop();
            return Err(e.into());
        }
        Ok(gang)
    }

    fn stop(&self) {
        for w in &self.workers {
            let _ = rayforge::kill(w);
        }
    }
}

/// Each rank's `(local rank, local world size, node rank)`, from the nodes
/// the ranks run on (nodes numbered in order of their first rank).
fn local_ranks(nodes: &[String]) -> Vec<(usize, usize, usize)> {
    let mut order: Vec<&String> = Vec::new();
    for n in nodes {
        if !order.contains(&n) {
            order.push(n);
        }
    }
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let local = nodes[..i].iter().filter(|m| *m == n).count();
            let size = nodes.iter().filter(|m| *m == n).count();
            let node_rank = order.iter().position(|m| *m == n).unwrap_or(0);
            (local, size, node_rank)
        })
        .collect()
}

/// The rank whose failure ended an attempt, and why: a rank that died or
/// whose function failed is the cause; the collective errors of the ranks
/// left waiting on it are its consequences. `None` when every rank
/// finished.
fn cause_of(outcomes: &[Option<std::result::Result<(), Error>>]) -> Option<(usize, String)> {
    let failed: Vec<(usize, &Error)> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Some(Err(e)) => Some((i, e)),
            _ => None,
        })
        .collect();
    let root = failed
        .iter()
        .find(|(_, e)| !matches!(e, Error::Collective { .. }))
        .or(failed.first())?;
    Some((root.0, root.1.to_string()))
}

/// Whether a run that has failed `failures` times may start again.
fn may_retry(failures: u32, max_failures: i32) -> bool {
    max_failures < 0 || failures as i64 <= max_failures as i64
}

/// How long to wait before restarting after `stuck` failures in a row
/// that made no new checkpoint: none after the first (or after progress),
/// then 1 s doubling up to a minute.
fn restart_backoff(stuck: u32) -> Duration {
    if stuck <= 1 {
        Duration::ZERO
    } else {
        Duration::from_secs(1u64 << (stuck - 2).min(6)).min(Duration::from_secs(60))
    }
}

fn budget(max_failures: i32) -> String {
    if max_failures < 0 {
        "unlimited".into()
    } else {
        max_failures.to_string()
    }
}

/// The reports of this fit and of the earlier runs under the same name.
struct History {
    /// The reports for the dashboard's charts (bounded).
    curve: Curve,
    /// Iterations that committed a checkpoint (bounded: every other one
    /// dropped when past `Curve::DEFAULT_CAP`).
    checkpoints: Vec<u64>,
    /// Where the gang restarted: `{iteration, cause}` (the latest
    /// `MAX_RESTART_MARKS`).
    restarts: Vec<serde_json::Value>,
    /// The run as [`rayforge::tracking`] callbacks see it.
    run: RunInfo,
    /// The run's callbacks (the user's and TensorBoard).
    callbacks: Callbacks,
    /// `progress.csv`'s rows from before this fit (a run resumed by name).
    prior: Vec<CsvRow>,
    /// This fit's reports.
    reports: Vec<Report>,
    /// An elastic gang's last restart to grow: the ranks it had.
    grew_from: Option<usize>,
    /// No growing before this (a restart to grow found no more room).
    hold_growth_until: Option<Instant>,
    /// The current gang's ranks (an elastic gang's change).
    ranks: usize,
    /// Restarts after a rank failed, so far.
    failures: u32,
}

/// How many restarts the dashboard marks at most (the latest).
const MAX_RESTART_MARKS: usize = 100;

impl History {
    /// Records a report: passes it on (`on_report`, the callbacks) and
    /// keeps it.
    fn record(&mut self, r: Report, on_report: &mut dyn FnMut(&Report)) {
        on_report(&r);
        self.callbacks.report(&self.run, r.iteration, &r.metrics);
        if let Some(c) = &r.checkpoint {
            self.callbacks.checkpoint(&self.run, r.iteration, c);
            self.checkpointed(r.iteration);
        }
        self.curve.push(r.iteration as f64, &r.metrics);
        self.reports.push(r);
    }

    fn checkpointed(&mut self, iteration: u64) {
        self.checkpoints.push(iteration);
        if self.checkpoints.len() > Curve::DEFAULT_CAP {
            self.checkpoints = self.checkpoints.iter().step_by(2).copied().collect();
        }
    }

    /// The latest report's iteration, this fit's or an earlier run's (0:
    /// none yet).
    fn last_iteration(&self) -> u64 {
        self.reports
            .last()
            .map(|r| r.iteration)
            .or_else(|| self.prior.last().map(|r| r.iteration))
            .unwrap_or(0)
    }

    /// Marks a restart of the gang after the latest report.
    fn restarted(&mut self, cause: String) {
        let iteration = self.last_iteration();
        self.restarts
            .push(serde_json::json!({"iteration": iteration, "cause": cause}));
        if self.restarts.len() > MAX_RESTART_MARKS {
            self.restarts.remove(0);
        }
    }
}

/// One row of `progress.csv`.
#[derive(Debug, Clone, PartialEq)]
struct CsvRow {
    iteration: u64,
    metrics: BTreeMap<String, f64>,
    /// The checkpoint's location, or empty.
    checkpoint: String,
}

impl CsvRow {
    fn of(r: &Report) -> CsvRow {
        CsvRow {
            iteration: r.iteration,
            metrics: r.metrics.clone(),
            checkpoint: r.checkpoint.as_ref().map(|c| c.location()).unwrap_or_default(),
        }
    }
}

/// A CSV field, quoted when it needs to be.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The fields of one CSV line (quotes as [`csv_field`] writes them).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                if let Some(f) = out.last_mut() {
                    f.push('"');
                }
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => {
                if let Some(f) = out.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    out
}

fn rows_csv(rows: &[CsvRow]) -> String {
    let mut keys: Vec<&String> = Vec::new();
    for r in rows {
        for k in r.metrics.keys() {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let mut out = String::from("iteration");
    for k in &keys {
        out.push(',');
        out.push_str(&csv_field(k));
    }
    out.push_str(",checkpoint\n");
    for r in rows {
        out.push_str(&r.iteration.to_string());
        for k in &keys {
            out.push(',');
            if let Some(v) = r.metrics.get(*k) {
                out.push_str(&v.to_string());
            }
        }
        out.push(',');
        out.push_str(&csv_field(&r.checkpoint));
        out.push('\n');
    }
    out
}

/// The rows of a `progress.csv` this crate wrote (a line it cannot read is
/// skipped with a warning: the new rows still get written).
fn parse_progress_csv(text: &str) -> Vec<CsvRow> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else { return Vec::new() };
    let header = csv_fields(header);
    if header.len() < 2 || header[0] != "iteration" || header[header.len() - 1] != "checkpoint" {
        tracing::warn!("the earlier progress.csv has an unknown header; its rows are not carried on");
        return Vec::new();
    }
    let keys = &header[1..header.len() - 1];
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        let f = csv_fields(line);
        let iteration = f.first().and_then(|v| v.parse::<u64>().ok());
        let (Some(iteration), true) = (iteration, f.len() == header.len()) else {
            tracing::warn!(
                line = i + 2,
                "skipping a row of the earlier progress.csv it cannot read"
            );
            continue;
        };
        let metrics = keys
            .iter()
            .zip(&f[1..f.len() - 1])
            .filter_map(|(k, v)| v.parse::<f64>().ok().map(|v| (k.clone(), v)))
            .collect();
        rows.push(CsvRow {
            iteration,
            metrics,
            checkpoint: f[f.len() - 1].clone(),
        });
    }
    rows
}

fn history_batch(history: &[Report]) -> Result<arrow::record_batch::RecordBatch> {
    use arrow::array::{ArrayRef, Float64Array, StringArray, UInt64Array};
    use std::sync::Arc;
    let mut keys: Vec<&String> = Vec::new();
    for r in history {
        for k in r.metrics.keys() {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let mut cols: Vec<(String, ArrayRef)> = vec![(
        "iteration".into(),
        Arc::new(UInt64Array::from_iter_values(history.iter().map(|r| r.iteration))),
    )];
    for k in &keys {
        let v: Float64Array = history.iter().map(|r| r.metrics.get(*k).copied()).collect();
        cols.push(((*k).clone(), Arc::new(v)));
    }
    let ck: StringArray = history
        .iter()
        .map(|r| r.checkpoint.as_ref().map(|c| c.location()))
        .collect();
    cols.push(("checkpoint".into(), Arc::new(ck)));
    arrow::record_batch::RecordBatch::try_from_iter(cols)
        .map_err(|e| Error::InvalidArgument(format!("the metrics history as a table: {e}")))
}

fn unique() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

/// Why the whole cluster could never hold `n` bundles of `bundle`, if it
/// could not: a resource whose total over every alive node falls short.
/// How many more bundles like `bundle` the cluster's free resources hold
/// (summed over its nodes: a first estimate, which placing checks).
fn bundles_free(bundle: &BTreeMap<String, f64>) -> Result<usize> {
    let free = rayforge::cluster_resources()?.available;
    Ok(bundle
        .iter()
        .filter(|(_, per)| **per > 0.0)
        .map(|(name, per)| (free.get(name).copied().unwrap_or(0.0) / per + 1e-9).floor() as usize)
        .min()
        .unwrap_or(usize::MAX))
}

fn short_of(bundle: &BTreeMap<String, f64>, n: usize) -> Result<Option<String>> {
    let total = rayforge::cluster_resources()?.total;
    Ok(bundle.iter().find_map(|(name, per)| {
        let (need, have) = (per * n as f64, total.get(name).copied().unwrap_or(0.0));
        (have + 1e-9 < need).then(|| {
            let hint = if name == "GPU" {
                "; without GPUs, set ScalingConfig::use_gpu to false"
            } else {
                ""
            };
            format!("the ranks need {need} {name} ({per} each) and the cluster has {have} in all{hint}")
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_are_numbered_within_their_nodes() {
        let nodes: Vec<String> = ["a", "b", "a", "c", "b"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            local_ranks(&nodes),
            vec![(0, 2, 0), (0, 2, 1), (1, 2, 0), (0, 1, 2), (1, 2, 1)]
        );
    }

    #[test]
    fn the_rank_that_died_is_the_cause_not_the_ones_left_waiting() {
        let collective = |rank| {
            Some(Err(Error::Collective {
                rank,
                message: "peer closed".into(),
            }))
        };
        let died = Some(Err(Error::Runtime(rayforge::Error::ActorDied {
            actor: "TrainWorker".into(),
            cause: "signal 9".into(),
        })));
        let (rank, cause) = cause_of(&[collective(0), died, collective(2)]).unwrap();
        assert_eq!(rank, 1);
        assert!(cause.contains("signal 9"), "{cause}");
        assert_eq!(cause_of(&[Some(Ok(())), Some(Ok(()))]), None);
        assert_eq!(cause_of(&[collective(0), Some(Ok(()))]).map(|c| c.0), Some(0));
    }

    #[test]
    fn the_failure_budget_counts_restarts() {
        assert!(!may_retry(1, 0));
        assert!(may_retry(1, 1) && !may_retry(2, 1));
        assert!(may_retry(100, -1));
    }

    #[test]
    fn restarts_without_progress_back_off_to_a_minute() {
        let waits: Vec<u64> = (0..10).map(|n| restart_backoff(n).as_secs()).collect();
        assert_eq!(waits, vec![0, 0, 1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn the_history_is_a_csv_with_a_column_per_metric() {
        let r = |i, pairs: &[(&str, f64)]| Report {
            iteration: i,
            metrics: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            checkpoint: None,
        };
        let rows: Vec<CsvRow> = [r(1, &[("loss", 0.5)]), r(2, &[("loss", 0.25), ("acc", 0.9)])]
            .iter()
            .map(CsvRow::of)
            .collect();
        let csv = rows_csv(&rows);
        assert_eq!(csv, "iteration,loss,acc,checkpoint\n1,0.5,,\n2,0.25,0.9,\n");
        // Read back (a resumed run carries these rows on), odd names too.
        assert_eq!(parse_progress_csv(&csv), rows);
        let odd = vec![CsvRow {
            iteration: 3,
            metrics: [("a,\"b\"".to_string(), 1.0), ("inf".to_string(), f64::INFINITY)].into(),
            checkpoint: "s3://x/checkpoint_000003".into(),
        }];
        assert_eq!(parse_progress_csv(&rows_csv(&odd)), odd);
        assert!(parse_progress_csv("garbage\n1,2\n").is_empty());
        let skipped = parse_progress_csv("iteration,loss,checkpoint\n1,0.5,\nnot-a-number,1,\n2,0.25,\n");
        assert_eq!(skipped.iter().map(|r| r.iteration).collect::<Vec<_>>(), vec![1, 2]);
        let b = history_batch(&[r(1, &[("loss", 0.5)]), r(2, &[("loss", 0.25), ("acc", 0.9)])]).unwrap();
        let names: Vec<String> = b.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, vec!["iteration", "loss", "acc", "checkpoint"]);
        assert_eq!(b.num_rows(), 2);
        use arrow::array::{Array, AsArray};
        let acc = b.column(2).as_primitive::<arrow::datatypes::Float64Type>();
        assert!(acc.is_null(0) && acc.value(1) == 0.9);
    }
}
