//! Experiment tracking: the one callback trait through which Train, Tune
//! and RLlib tell what their runs report, and the callbacks that ship with
//! it — [`TensorBoard`] event files and [`Mlflow`] — plus [`Curve`], the
//! bounded history the libraries publish for the dashboard's charts.
//!
//! A library calls [`Callbacks`] from its driver: [`Callback::on_start`]
//! when a run (a Train run, a Tune trial, an RLlib run) starts,
//! [`Callback::on_report`] with each report, [`Callback::on_checkpoint`]
//! with each committed checkpoint and [`Callback::on_end`] when it ends. A
//! callback's error never fails the run: it is logged, once per run and
//! callback.
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use rayforge::tracking::{Callback, Callbacks, RunInfo, RunKind};
//!
//! /// Counts reports (a user's own callback).
//! #[derive(Default)]
//! struct Count(AtomicU64);
//! impl Callback for Count {
//!     fn on_report(&self, _run: &RunInfo, _step: u64, _m: &BTreeMap<String, f64>) -> rayforge::Result<()> {
//!         self.0.fetch_add(1, Ordering::Relaxed);
//!         Ok(())
//!     }
//! }
//!
//! let count = std::sync::Arc::new(Count::default());
//! let callbacks = Callbacks::new().with_arc(count.clone());
//! let run = RunInfo::new(RunKind::Train, "mnist", "mnist");
//! callbacks.start(&run);
//! callbacks.report(&run, 1, &BTreeMap::from([("loss".to_string(), 0.5)]));
//! assert_eq!(count.0.load(Ordering::Relaxed), 1);
//! ```

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::storage::Storage;

mod curve;
pub mod mlflow;
pub mod tensorboard;

pub use curve::Curve;
pub use mlflow::Mlflow;
pub use tensorboard::TensorBoard;

/// Which library a run belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunKind {
    /// A Train run.
    Train,
    /// A Tune trial.
    Tune,
    /// An RLlib run.
    Rllib,
}

impl RunKind {
    /// "train", "tune" or "rllib".
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Train => "train",
            RunKind::Tune => "tune",
            RunKind::Rllib => "rllib",
        }
    }
}

/// One run as callbacks see it.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// Which library runs it.
    pub kind: RunKind,
    /// The experiment: a Train run's name, a Tune experiment's, an RLlib
    /// run's (MLflow's experiment).
    pub experiment: String,
    /// The run: a Tune trial's id; the experiment's name for Train and
    /// RLlib.
    pub run: String,
    /// Its parameters: a Train run's config, a trial's sampled config, an
    /// algorithm's settings (a JSON object).
    pub params: serde_json::Value,
    /// Where its results are (TensorBoard writes its event file here), if
    /// anywhere.
    pub storage: Option<Storage>,
}

impl RunInfo {
    /// A run with no parameters and no results directory.
    pub fn new(kind: RunKind, experiment: &str, run: &str) -> RunInfo {
        RunInfo {
            kind,
            experiment: experiment.into(),
            run: run.into(),
            params: serde_json::json!({}),
            storage: None,
        }
    }

    /// With its parameters.
    pub fn params(mut self, params: serde_json::Value) -> RunInfo {
        self.params = params;
        self
    }

    /// With its results directory.
    pub fn storage(mut self, storage: Storage) -> RunInfo {
        self.storage = Some(storage);
        self
    }

    /// What tells this run from every other a callback sees.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.kind.as_str(), self.experiment, self.run)
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEnd {
    /// It ran to its end.
    Finished,
    /// A scheduler or stopper ended it early (or it was paused and did
    /// not come back).
    Stopped,
    /// It failed, for this reason.
    Failed(String),
}

/// What Train, Tune and RLlib call as their runs go. Every method but
/// [`Callback::on_report`] does nothing by default. Calls come from the
/// library's driver thread, in order for one run (a Tune experiment
/// interleaves its trials'). An `Err` is logged, never fails the run.
pub trait Callback: Send + Sync {
    /// Its name, in the warnings about its errors.
    fn name(&self) -> &str {
        "callback"
    }

    /// A run started (or resumed).
    fn on_start(&self, _run: &RunInfo) -> Result<()> {
        Ok(())
    }

    /// A report: `metrics` at `step` (Train's and Tune's iteration,
    /// RLlib's environment steps).
    fn on_report(&self, run: &RunInfo, step: u64, metrics: &BTreeMap<String, f64>) -> Result<()>;

    /// A checkpoint was committed with the report at `step`.
    fn on_checkpoint(&self, _run: &RunInfo, _step: u64, _checkpoint: &Checkpoint) -> Result<()> {
        Ok(())
    }

    /// The run ended.
    fn on_end(&self, _run: &RunInfo, _end: &RunEnd) -> Result<()> {
        Ok(())
    }
}

/// The callbacks a run reports to: calls each in turn, logging (never
/// passing on) their errors — once per run and callback, so a tracking
/// server that is down is one warning per run.
#[derive(Clone, Default)]
pub struct Callbacks {
    list: Vec<Arc<dyn Callback>>,
    warned: Arc<Mutex<HashSet<(usize, String)>>>,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.list.iter().map(|c| c.name())).finish()
    }
}

impl Callbacks {
    /// None.
    pub fn new() -> Callbacks {
        Callbacks::default()
    }

    /// With `callback` added.
    pub fn with(self, callback: impl Callback + 'static) -> Callbacks {
        self.with_arc(Arc::new(callback))
    }

    /// With a shared `callback` added (the caller keeps a handle).
    pub fn with_arc(mut self, callback: Arc<dyn Callback>) -> Callbacks {
        self.list.push(callback);
        self
    }

    /// Adds `callback`.
    pub fn push(&mut self, callback: Arc<dyn Callback>) {
        self.list.push(callback);
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn each(&self, run: &RunInfo, what: &str, f: impl Fn(&dyn Callback) -> Result<()>) {
        for (i, c) in self.list.iter().enumerate() {
            if let Err(e) = f(c.as_ref()) {
                if self.warned.lock().insert((i, run.key())) {
                    tracing::warn!(
                        run = %run.key(),
                        "the {} callback failed {what} (its further errors for this run are not logged): {e}",
                        c.name()
                    );
                }
            }
        }
    }

    /// [`Callback::on_start`] of each.
    pub fn start(&self, run: &RunInfo) {
        self.each(run, "at the run's start", |c| c.on_start(run));
    }

    /// [`Callback::on_report`] of each.
    pub fn report(&self, run: &RunInfo, step: u64, metrics: &BTreeMap<String, f64>) {
        self.each(run, "on a report", |c| c.on_report(run, step, metrics));
    }

    /// [`Callback::on_checkpoint`] of each.
    pub fn checkpoint(&self, run: &RunInfo, step: u64, checkpoint: &Checkpoint) {
        self.each(run, "on a checkpoint", |c| c.on_checkpoint(run, step, checkpoint));
    }

    /// [`Callback::on_end`] of each.
    pub fn end(&self, run: &RunInfo, end: &RunEnd) {
        self.each(run, "at the run's end", |c| c.on_end(run, end));
        self.warned.lock().retain(|(_, k)| *k != run.key());
    }
}

/// Lists are equal when they hold the same callbacks (by identity).
impl PartialEq for Callbacks {
    fn eq(&self, other: &Callbacks) -> bool {
        self.list.len() == other.list.len() && self.list.iter().zip(&other.list).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}
