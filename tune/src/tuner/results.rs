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
    /// Its status as the table and the dashboard show it: PENDING,
    /// RUNNING, PAUSED, TERMINATED, STOPPED (ended early by a scheduler or
    /// stopper) or ERROR.
    pub fn status_label(&self) -> &'static str {
        match &self.status {
            TrialStatus::Pending => "PENDING",
            TrialStatus::Running => "RUNNING",
            TrialStatus::Paused => "PAUSED",
            TrialStatus::Terminated if self.stopped_early => "STOPPED",
            TrialStatus::Terminated => "TERMINATED",
            TrialStatus::Error(_) => "ERROR",
        }
    }

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

/// Which of a trial's results rank it (Ray's `get_best_result(scope=...)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Scope {
    /// Its last result (`"last"`, the default).
    #[default]
    Last,
    /// The mean over all its results (`"avg"`).
    Avg,
    /// The mean over its last `n` results (`"last-5-avg"`).
    LastAvg(usize),
    /// Its best result at any iteration (`"all"`).
    All,
}

impl std::str::FromStr for Scope {
    type Err = Error;

    fn from_str(s: &str) -> Result<Scope> {
        Scope::try_from(s.to_string()).map_err(|m| Error::config("best_scope", None, m))
    }
}

impl TryFrom<String> for Scope {
    type Error = String;

    /// Reads a scope; the error says what the string should have been.
    fn try_from(s: String) -> std::result::Result<Scope, String> {
        let n = s
            .strip_prefix("last-")
            .and_then(|r| r.strip_suffix("-avg"))
            .map(|n| n.parse::<usize>().ok().filter(|n| *n > 0));
        match (s.as_str(), n) {
            ("last", _) => Ok(Scope::Last),
            ("avg", _) => Ok(Scope::Avg),
            ("all", _) => Ok(Scope::All),
            (_, Some(Some(n))) => Ok(Scope::LastAvg(n)),
            _ => Err(format!(
                "`{s}` is not a scope: `last`, `avg`, `all` or `last-N-avg` (N at least 1)"
            )),
        }
    }
}

impl From<Scope> for String {
    fn from(s: Scope) -> String {
        match s {
            Scope::Last => "last".into(),
            Scope::Avg => "avg".into(),
            Scope::LastAvg(n) => format!("last-{n}-avg"),
            Scope::All => "all".into(),
        }
    }
}

impl Scope {
    /// A trial's score by `metric` in this scope (higher is better after
    /// `mode`), or `None` when it never reported the metric.
    fn score(self, t: &TrialResult, metric: &str, mode: Mode) -> Option<f64> {
        let values: Vec<f64> = t
            .history
            .iter()
            .filter_map(|m| m.get(metric).copied())
            .filter(|v| !v.is_nan())
            .collect();
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        let raw = match self {
            // `last` may hold a value a rewound history no longer does.
            Scope::Last => t.last.get(metric).copied().filter(|v| !v.is_nan()),
            Scope::Avg => mean(&values),
            Scope::LastAvg(n) => mean(&values[values.len().saturating_sub(n)..]),
            Scope::All => {
                return values.iter().map(|v| mode.score(*v)).max_by(f64::total_cmp);
            }
        };
        raw.map(|v| mode.score(v))
    }
}

/// The best of `trials` by `metric`, `mode` and `scope`, among those that
/// reported it (the first of equals).
pub(crate) fn best_of<'a>(
    trials: &'a [TrialResult],
    metric: &str,
    mode: Mode,
    scope: Scope,
) -> Option<&'a TrialResult> {
    let mut best: Option<(&TrialResult, f64)> = None;
    for t in trials {
        if let Some(s) = scope.score(t, metric, mode) {
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((t, s));
            }
        }
    }
    best.map(|(t, _)| t)
}

/// Every trial of an experiment.
#[derive(Debug, Clone)]
pub struct ResultGrid {
    /// The trials, in the order they started.
    pub trials: Vec<TrialResult>,
    pub(crate) metric: String,
    pub(crate) mode: Mode,
    pub(crate) scope: Scope,
}

impl ResultGrid {
    /// The best trial by the experiment's metric, mode and
    /// [`TuneConfig::best_scope`](crate::TuneConfig::best_scope) (its last
    /// result, by default), among the trials that reported the metric.
    pub fn best(&self) -> Option<&TrialResult> {
        self.best_by_scope(&self.metric, self.mode, self.scope)
    }

    /// The best trial by another metric or mode, by its last result.
    pub fn best_by(&self, metric: &str, mode: Mode) -> Option<&TrialResult> {
        self.best_by_scope(metric, mode, Scope::Last)
    }

    /// The best trial by `metric` and `mode`, ranking each trial by the
    /// results `scope` says (as Ray's `get_best_result(metric, mode,
    /// scope)`): its last, the mean of all or of its last N, or its best
    /// at any iteration.
    pub fn best_by_scope(&self, metric: &str, mode: Mode, scope: Scope) -> Option<&TrialResult> {
        best_of(&self.trials, metric, mode, scope)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A trial that reported `values` of `loss`, in order.
    fn trial(name: &str, values: &[f64]) -> TrialResult {
        let dir = std::env::temp_dir().join("rayforge-tune-scope-test");
        let storage = Storage::open(&dir.clone().into()).unwrap();
        let mut t = TrialResult::new(name.into(), Config::new(), &storage, &dir).unwrap();
        t.history = values
            .iter()
            .map(|v| Metrics::from([("loss".to_string(), *v)]))
            .collect();
        t.last = t.history.last().cloned().unwrap_or_default();
        t
    }

    #[test]
    fn each_scope_ranks_trials_by_its_own_results() {
        // a: steady; b: best once, then worse; c: good lately.
        let trials = vec![
            trial("a", &[0.5, 0.5, 0.5, 0.5]),
            trial("b", &[0.9, 0.1, 0.8, 0.8]),
            trial("c", &[0.9, 0.9, 0.45, 0.46]),
            trial("silent", &[]),
        ];
        let best = |scope: &str, mode| best_of(&trials, "loss", mode, scope.parse().unwrap()).map(|t| t.trial.as_str());
        assert_eq!(best("last", Mode::Min), Some("c"));
        assert_eq!(best("all", Mode::Min), Some("b"));
        assert_eq!(best("avg", Mode::Min), Some("a"), "a 0.5, b 0.65, c 0.6775");
        assert_eq!(best("last-2-avg", Mode::Min), Some("c"), "c 0.455, a 0.5");
        assert_eq!(best("last-3-avg", Mode::Min), Some("a"), "a 0.5, b 0.567, c 0.603");
        assert_eq!(best("all", Mode::Max), Some("b"), "0.9 first, in b before c");
        assert_eq!(best("last", Mode::Max), Some("b"));
        assert!(best_of(&trials[3..], "loss", Mode::Min, Scope::All).is_none());
        for s in ["last", "avg", "all", "last-5-avg"] {
            assert_eq!(String::from(s.parse::<Scope>().unwrap()), s);
        }
        for bad in ["first", "last-0-avg", "last-x-avg", "last--avg"] {
            let e = bad.parse::<Scope>().unwrap_err().to_string();
            assert!(e.contains("best_scope") && e.contains(bad), "{e}");
        }
    }
}
