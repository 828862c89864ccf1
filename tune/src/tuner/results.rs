//! What an experiment keeps of its trials: each trial's record
//! ([`TrialResult`]: history, status, latest checkpoint), its
//! `result.jsonl` and `progress.csv` (written in the driver's directory of
//! the experiment, and synced to storage when that is remote), and the
//! [`ResultGrid`] `fit` returns.

use std::io::Write;
use std::path::{Path, PathBuf};

use rayforge::checkpoint::Checkpoint;
use rayforge::storage::Storage;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schedulers::{Metrics, Mode};
use crate::space::Config;
use crate::tuner::trial::TRAINING_ITERATION;

/// How a trial ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrialStatus {
    /// Waiting for resources.
    Pending,
    /// Running.
    Running,
    /// Stopped for now by the scheduler (HyperBand); it goes on from its
    /// latest checkpoint when resumed.
    Paused,
    /// Finished, or stopped by the scheduler or a stop criterion.
    Terminated,
    /// Failed: its error.
    Error(String),
}

/// One trial's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrialResult {
    /// Its name.
    pub trial: String,
    /// Its parameters.
    pub config: Config,
    /// Its last report.
    pub last: Metrics,
    /// Every report, in order.
    pub history: Vec<Metrics>,
    /// How it ended.
    pub status: TrialStatus,
    /// Whether the scheduler or a stop criterion stopped it early.
    pub stopped_early: bool,
    /// How many times it failed and was started over.
    pub failures: u32,
    /// Its latest checkpoint (in the trial's directory in storage; its
    /// files come to a node through [`Checkpoint::to_local`]).
    pub checkpoint: Option<Checkpoint>,
    /// Its directory in the experiment's storage: checkpoints, logs and
    /// whatever the trial wrote, `params.json`, `result.jsonl` and
    /// `progress.csv`.
    pub storage: Storage,
    /// Its directory on the driver's disk, holding `params.json`,
    /// `result.jsonl` and `progress.csv` (for storage on a local path, the
    /// same directory as [`TrialResult::storage`]).
    pub path: PathBuf,
    /// The iteration of `checkpoint` (0 without one).
    #[serde(skip)]
    pub(crate) checkpoint_iteration: u64,
    /// The columns of its `progress.csv`.
    #[serde(skip)]
    csv_keys: Vec<String>,
    /// Whether its files changed since they were last synced to storage.
    #[serde(skip)]
    pub(crate) dirty: bool,
}

impl TrialResult {
    /// A new trial of the experiment in `storage`, whose driver keeps its
    /// files under `dir`.
    pub(crate) fn new(trial: String, config: Config, storage: &Storage, dir: &Path) -> Result<TrialResult> {
        Ok(TrialResult {
            storage: storage.join(&trial).map_err(|e| Error::Runtime(e.to_string()))?,
            path: dir.join(&trial),
            checkpoint_iteration: 0,
            dirty: true,
            trial,
            config,
            last: Metrics::new(),
            history: Vec::new(),
            status: TrialStatus::Pending,
            stopped_early: false,
            failures: 0,
            checkpoint: None,
            csv_keys: Vec::new(),
        })
    }

    /// Sets its latest checkpoint, committed at `iteration`.
    pub(crate) fn set_checkpoint(&mut self, c: Option<Checkpoint>, iteration: u64) {
        self.checkpoint_iteration = if c.is_some() { iteration } else { 0 };
        self.checkpoint = c;
    }

    /// Back to its checkpoint (or its start, without one): later reports
    /// are dropped (they will come again) and its files rewritten.
    pub(crate) fn rewind(&mut self) {
        let at = self.checkpoint_iteration as f64;
        self.history
            .retain(|m| m.get(TRAINING_ITERATION).is_some_and(|i| *i <= at));
        self.last = self.history.last().cloned().unwrap_or_default();
        rewrite_files(self);
    }
}

/// Every trial of an experiment.
#[derive(Debug, Clone)]
pub struct ResultGrid {
    /// The trials, in the order they started.
    pub trials: Vec<TrialResult>,
    pub(crate) metric: String,
    pub(crate) mode: Mode,
}

impl ResultGrid {
    /// The trial whose last result is best by `metric` (`mode`), among the
    /// trials that reported it.
    pub fn best(&self) -> Option<&TrialResult> {
        self.best_by(&self.metric, self.mode)
    }

    /// The best trial by another metric or mode.
    pub fn best_by(&self, metric: &str, mode: Mode) -> Option<&TrialResult> {
        self.trials
            .iter()
            .filter_map(|t| t.last.get(metric).filter(|v| !v.is_nan()).map(|v| (t, mode.score(*v))))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(t, _)| t)
    }

    /// All trials' configs and last results as CSV: a row per trial
    /// (`trial`, `status`, `config/...`, then the metrics).
    pub fn to_csv(&self) -> String {
        let mut params: Vec<&String> = Vec::new();
        let mut metrics: Vec<&String> = Vec::new();
        for t in &self.trials {
            params.extend(t.config.keys().filter(|k| !params.contains(k)).collect::<Vec<_>>());
            metrics.extend(t.last.keys().filter(|k| !metrics.contains(k)).collect::<Vec<_>>());
        }
        let esc = |s: String| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s
            }
        };
        let mut out = vec!["trial".to_string(), "status".to_string()];
        out.extend(params.iter().map(|p| esc(format!("config/{p}"))));
        out.extend(metrics.iter().map(|m| esc(m.to_string())));
        let mut csv = out.join(",") + "\n";
        for t in &self.trials {
            let status = match &t.status {
                TrialStatus::Error(_) => "ERROR".to_string(),
                s => format!("{s:?}").to_uppercase(),
            };
            let mut row = vec![esc(t.trial.clone()), status];
            row.extend(params.iter().map(|p| {
                esc(match t.config.get(*p) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                })
            }));
            row.extend(
                metrics
                    .iter()
                    .map(|m| t.last.get(*m).map(|v| v.to_string()).unwrap_or_default()),
            );
            csv.push_str(&row.join(","));
            csv.push('\n');
        }
        csv
    }

    /// The trials that failed, with their errors.
    pub fn errors(&self) -> Vec<(&str, &str)> {
        self.trials
            .iter()
            .filter_map(|t| match &t.status {
                TrialStatus::Error(e) => Some((t.trial.as_str(), e.as_str())),
                _ => None,
            })
            .collect()
    }
}

/// Adds a report to a trial: its history, `result.jsonl`, `progress.csv`.
pub(crate) fn record(t: &mut TrialResult, metrics: &Metrics, checkpoint: Option<Checkpoint>) {
    t.history.push(metrics.clone());
    t.last = metrics.clone();
    t.dirty = true;
    if checkpoint.is_some() {
        let at = metrics.get(TRAINING_ITERATION).copied().unwrap_or(0.0) as u64;
        t.set_checkpoint(checkpoint, at);
    }
    let line = serde_json::to_string(metrics).unwrap_or_default();
    let jsonl = t.path.join("result.jsonl");
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&jsonl)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = appended {
        tracing::warn!("writing {}: {e}", jsonl.display());
    }
    write_progress(t);
}

/// Rewrites `result.jsonl` and `progress.csv` from a trial's history.
pub(crate) fn rewrite_files(t: &mut TrialResult) {
    if !t.path.exists() {
        return;
    }
    t.dirty = true;
    let mut text = String::new();
    for m in &t.history {
        text.push_str(&serde_json::to_string(m).unwrap_or_default());
        text.push('\n');
    }
    if let Err(e) = std::fs::write(t.path.join("result.jsonl"), text) {
        tracing::warn!("writing result.jsonl of {}: {e}", t.trial);
    }
    // Every row again.
    t.csv_keys.clear();
    write_progress(t);
}

/// `progress.csv`: a column per metric, a row per report. A report with
/// the columns already there is appended; one with a new metric rewrites
/// the file with the new column.
fn write_progress(t: &mut TrialResult) {
    let path = t.path.join("progress.csv");
    let Some(last) = t.history.last() else {
        let _ = std::fs::remove_file(&path);
        return;
    };
    let known = t.history.len() > 1 && last.keys().all(|k| t.csv_keys.contains(k)) && path.exists();
    let result = if known {
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{}", csv_row(&t.csv_keys, last)))
    } else {
        let mut keys: Vec<String> = Vec::new();
        for m in &t.history {
            for k in m.keys() {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
        let mut csv = keys.join(",");
        csv.push('\n');
        for m in &t.history {
            csv.push_str(&csv_row(&keys, m));
            csv.push('\n');
        }
        t.csv_keys = keys;
        std::fs::write(&path, csv)
    };
    if let Err(e) = result {
        tracing::warn!("writing progress.csv of {}: {e}", t.trial);
    }
}

/// One report's row under `keys` (empty where it lacks a metric).
fn csv_row(keys: &[String], m: &Metrics) -> String {
    keys.iter()
        .map(|k| m.get(k).map(|v| v.to_string()).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(",")
}
