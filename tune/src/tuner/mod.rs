//! Running an experiment: trials as actors (each holding its resources,
//! or a placement group for a trial that runs a gang), at most
//! `max_concurrent_trials` at once, configs from a [`Searcher`], every
//! result shown to a [`Scheduler`] and the [`Stopper`]s (a trial they stop
//! is killed; one they pause or exploit restarts later from a checkpoint),
//! results written under `{storage}/{name}/{trial}/` (`params.json`,
//! `result.jsonl`, `progress.csv`, logs, `checkpoint_NNNNNN/`) in any
//! [`rayforge::storage`] (a shared path, the cluster's store, S3), a
//! status table while it runs, and a [`ResultGrid`] at the end.
//!
//! The parts: [`trial`] (a trial's process and its directory), [`journal`]
//! (the driver's durable record and its lease), [`results`] (what is kept
//! of each trial), [`table`] (the live status table) and [`controller`]
//! (the loop owning searcher, scheduler and stoppers).

mod controller;
mod journal;
mod results;
mod table;
mod trial;

use std::collections::BTreeMap;

use rayforge::checkpoint::CheckpointConfig;
use rayforge::storage::StorageUri;
use rayforge::FnRef;

use crate::error::{Error, Result};
use crate::schedulers::{Fifo, Mode, Scheduler};
use crate::searchers::Searcher;
use crate::stoppers::Stopper;
use controller::Controller;
use trial::{t_trial, TrialTramp};

pub use journal::JOURNAL;
pub use results::{ResultGrid, Scope, TrialResult, TrialStatus};
pub use trial::{TrialContext, TRAINING_ITERATION};

/// An experiment's settings.
#[derive(Debug, Clone)]
pub struct TuneConfig {
    /// The experiment's name: its directory under `storage_path`.
    pub name: String,
    /// Where experiments keep their directories: a [`rayforge::storage`]
    /// URI — a path (on a cluster, one every node shares, checked),
    /// `cluster://prefix` (the cluster's own store) or `s3://bucket/prefix`.
    /// Empty: `~/rayforge_results` on the embedded cluster,
    /// `cluster://rayforge_results` on a multi-node one.
    pub storage_path: StorageUri,
    /// The metric the best trial is chosen by.
    pub metric: String,
    /// Higher or lower is better.
    pub mode: Mode,
    /// Which of a trial's results rank it for [`ResultGrid::best`], the
    /// summary line and the dashboard (default its last).
    pub best_scope: Scope,
    /// Trials running at once (default 4).
    pub max_concurrent_trials: usize,
    /// CPUs each trial holds (default 1).
    pub cpus_per_trial: f64,
    /// GPUs each trial holds (fractions share a device).
    pub gpus_per_trial: f64,
    /// Bundles for a trial's workers (a Train gang): with any, each trial
    /// holds a placement group — its own process in bundle 0 (the CPUs and
    /// GPUs above), these after it (default none).
    pub worker_bundles: Vec<BTreeMap<String, f64>>,
    /// How a trial's bundles are spread over nodes.
    pub placement_strategy: rayforge::PlacementStrategy,
    /// Custom resources each trial's own process holds (`{"TPU": 1}`), as
    /// Ray's `resources_per_trial`; with worker bundles, they are in bundle
    /// 0 beside its CPUs. When no node could ever hold a trial, the
    /// experiment fails at once as infeasible, naming the resource.
    pub custom_resources_per_trial: BTreeMap<String, f64>,
    /// Stop every trial after this many reports.
    pub max_iterations: Option<u64>,
    /// A trial that fails starts over, from its latest checkpoint when it
    /// has one, up to this many times (default 0).
    pub max_failures: u32,
    /// Which of a trial's checkpoints are kept (default all).
    pub checkpoint: CheckpointConfig,
    /// Print the status table while it runs (default on).
    pub verbose: bool,
    /// Go on with the experiment of this name from its journal.
    pub resume: bool,
    /// On resume, trials that had failed go on from their latest
    /// checkpoint.
    pub resume_errored: bool,
    /// On resume, trials that had failed start over from scratch.
    pub restart_errored: bool,
    /// What defines the experiment (the `tune` command line puts its
    /// `search.toml` here): recorded in the journal when it starts, and a
    /// resume with a different one is refused naming the differences.
    pub definition: Option<serde_json::Value>,
    /// Fsync the journal after each batch of events (default on): off, a
    /// crash of the driver's machine (not of the driver) may lose the
    /// last results, which the resumed trials then report again.
    pub journal_fsync: bool,
    /// Told of each trial's start, reports, checkpoints and end, on the
    /// driver ([`rayforge::tracking`]: MLflow, or a user's own).
    pub callbacks: rayforge::tracking::Callbacks,
    /// Write a TensorBoard event file into each trial's directory (default
    /// on): `tensorboard --logdir <experiment>` shows a run per trial.
    pub tensorboard: bool,
}

impl Default for TuneConfig {
    fn default() -> Self {
        TuneConfig {
            name: "tune".into(),
            storage_path: StorageUri::default(),
            metric: "loss".into(),
            mode: Mode::Min,
            best_scope: Scope::Last,
            max_concurrent_trials: 4,
            cpus_per_trial: 1.0,
            gpus_per_trial: 0.0,
            worker_bundles: Vec::new(),
            placement_strategy: rayforge::PlacementStrategy::Pack,
            custom_resources_per_trial: BTreeMap::new(),
            max_iterations: None,
            max_failures: 0,
            checkpoint: CheckpointConfig::default(),
            verbose: true,
            resume: false,
            resume_errored: false,
            restart_errored: false,
            definition: None,
            journal_fsync: true,
            callbacks: rayforge::tracking::Callbacks::new(),
            tensorboard: true,
        }
    }
}

/// Runs a trainable over the configs of a searcher (as Ray's
/// `Tuner(trainable, param_space, tune_config).fit()`).
pub struct Tuner {
    c: Controller,
}

impl std::fmt::Debug for Tuner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tuner").field("config", &self.c.config).finish()
    }
}

impl Tuner {
    /// A tuner running `trainable` on the searcher's configs, FIFO
    /// scheduled.
    pub fn new<E: std::fmt::Display + 'static>(
        trainable: fn(&mut TrialContext) -> std::result::Result<(), E>,
        searcher: impl Searcher + 'static,
        config: TuneConfig,
    ) -> Tuner {
        let tramp: TrialTramp = t_trial::<E>;
        Tuner {
            c: Controller {
                tramp: FnRef::new(tramp),
                user: FnRef::new(trainable).erase(),
                command: None,
                searcher: Box::new(searcher),
                scheduler: Box::new(Fifo),
                stoppers: Vec::new(),
                config,
            },
        }
    }

    /// A tuner running an executable per trial: `argv`'s `{name}` become
    /// the trial's parameters, which are also in the environment as
    /// `RAYFORGE_TUNE_CONFIG` (JSON, beside `RAYFORGE_TUNE_TRIAL_DIR`, the
    /// trial's directory on its node); each JSON object of numbers it
    /// prints on a line is a report; it is killed when the trial is
    /// stopped. It runs from the driver's working directory's path (which
    /// must exist on the trial's node).
    pub fn command(argv: Vec<String>, searcher: impl Searcher + 'static, config: TuneConfig) -> Tuner {
        fn none(_: &mut TrialContext) -> std::result::Result<(), String> {
            Err("an executable trial has no function".into())
        }
        let mut t = Tuner::new(none, searcher, config);
        t.c.command = Some(argv);
        t
    }

    /// Decides which trials go on after each result.
    pub fn scheduler(mut self, s: impl Scheduler + 'static) -> Tuner {
        self.c.scheduler = Box::new(s);
        self
    }

    /// Adds a stop criterion (any of them stops a trial, or the
    /// experiment).
    pub fn stopper(mut self, s: impl Stopper + 'static) -> Tuner {
        self.c.stoppers.push(Box::new(s));
        self
    }

    fn validate(&self) -> Result<()> {
        let c = &self.c.config;
        if c.max_concurrent_trials == 0 {
            return Err(Error::config("max_concurrent_trials", None, "must be at least 1"));
        }
        if !(c.cpus_per_trial >= 0.0 && c.gpus_per_trial >= 0.0) {
            return Err(Error::config(
                "resources_per_trial",
                None,
                "CPUs and GPUs must be 0 or more",
            ));
        }
        for (name, amount) in &c.custom_resources_per_trial {
            if name.is_empty() || !(amount.is_finite() && *amount > 0.0) {
                return Err(Error::config(
                    format!("resources_per_trial.{name}"),
                    None,
                    format!("a custom resource needs a name and an amount above 0 (got {amount})"),
                ));
            }
        }
        let n = &c.name;
        if self.c.command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(Error::config("trainable.command", None, "needs at least the program"));
        }
        if n.is_empty() || n == "." || n == ".." || n.contains(['/', '\\', '\0']) {
            return Err(Error::config(
                "name",
                None,
                format!("`{n}` must be a plain directory name"),
            ));
        }
        Ok(())
    }

    /// Runs the experiment to its end: every config the searcher proposes,
    /// as trials, until each finishes, fails or is stopped. Every decision
    /// is appended to the experiment's journal in its storage; with
    /// [`TuneConfig::resume`], an experiment whose driver died goes on from
    /// it — on this machine or another given the same storage (finished
    /// trials are not run again; the ones that were running go on from
    /// their latest checkpoint, or start over without one). One driver at
    /// a time runs an experiment: a second is refused with
    /// [`Error::Locked`] while the first lives.
    pub fn fit(self) -> Result<ResultGrid> {
        self.validate()?;
        self.c.run()
    }
}
