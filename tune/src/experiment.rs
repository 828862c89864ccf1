//! A `search.toml`: the experiment `tune run` runs. Every field is checked:
//! an unknown or malformed one is an error naming it and its line.
//!
//! ```toml
//! name = "quadratic"            # the experiment's directory under storage_path
//! storage_path = "/tmp/results" # or cluster://results, s3://bucket/results;
//!                               # default ~/rayforge_results (embedded),
//!                               # cluster://rayforge_results (multi-node)
//! metric = "loss"
//! mode = "min"                  # or "max"
//! best_scope = "last-5-avg"     # what ranks a trial: "last" (default), "avg",
//!                               #   "all" (its best result), "last-N-avg"
//! num_samples = 8               # each grid point this many times
//! max_concurrent_trials = 2
//! max_failures = 1              # a failed trial starts over once
//!
//! [trainable]                   # an executable: parameters in, JSON lines out
//! command = ["python3", "train.py", "--lr", "{lr}"]
//! # or: name = "mlp"            # a trainable registered in the binary (`cli`)
//!
//! [resources_per_trial]
//! cpu = 1
//! gpu = 0
//! worker_bundles = [{ CPU = 1 }, { CPU = 1 }]  # a gang: a placement group per trial
//! placement_strategy = "pack"   # or "spread", "strict_pack", "strict_spread"
//! TPU = 1                       # any other name: a custom resource
//!
//! [searcher]
//! type = "random"               # or "tpe" (n_startup_trials, n_ei_candidates,
//! seed = 0                      #   multivariate, constant_liar, rank_weights)
//! points_to_evaluate = [{ lr = 1e-3 }]   # configs to try first
//!
//! [scheduler]
//! type = "asha"                 # or "fifo", "median", "hyperband", "pbt"
//! time_attr = "training_iteration"
//! max_t = 20
//! grace_period = 1
//! reduction_factor = 3
//!
//! [stop]
//! training_iteration = 20
//! time_budget_s = 600           # the whole experiment
//! metric_threshold = 0.01       # a trial whose metric gets this good
//! plateau = { std = 0.001, num_results = 4, grace_period = 4 }
//!
//! [checkpoint]
//! num_to_keep = 2               # per trial (the latest is always kept)
//! score_attribute = "loss"
//! mode = "min"
//!
//! [tracking]
//! tensorboard = true            # an event file in each trial's directory (default)
//! mlflow = "http://127.0.0.1:5000"   # also log each trial to an MLflow server
//! mlflow_experiment = "search"  # its MLflow experiment (default: `name`)
//!
//! [param_space]
//! lr = { loguniform = [1e-4, 1e-1] }
//! ```
//!
//! PBT (`type = "pbt"`) takes `perturbation_interval`, `quantile_fraction`,
//! `resample_probability`, `seed`, and `mutate` (the parameters it
//! perturbs; default every parameter with a domain).

use std::path::Path;

use serde::Deserialize;

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::schedulers::{Asha, Fifo, HyperBand, MedianStopping, Mode, Pbt, Scheduler};
use crate::searchers::{BasicVariant, Searcher, Tpe, TpeOptions};
use crate::space::{line_in_table, line_of, Param, SearchSpace};
use crate::stoppers::{MetricThreshold, Plateau, Stopper, TimeBudget};
use crate::tuner::TuneConfig;

/// The file's fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// The experiment's name.
    pub name: String,
    /// The file as JSON, less `storage_path` and `max_concurrent_trials`:
    /// what [`TuneConfig::definition`] compares on a resume.
    #[serde(skip)]
    pub definition: serde_json::Value,
    /// Where experiments keep their directories: a path or a storage URI
    /// (`cluster://results`, `s3://bucket/results`; see
    /// [`rayforge::storage`]).
    pub storage_path: Option<rayforge::storage::StorageUri>,
    /// The metric that ranks trials.
    pub metric: String,
    /// `min` or `max`.
    pub mode: Mode,
    /// Which of a trial's results rank it (default `last`).
    #[serde(default)]
    pub best_scope: crate::tuner::Scope,
    /// Each grid point this many times (default 1).
    #[serde(default = "one")]
    pub num_samples: usize,
    /// Trials at once (default 4).
    pub max_concurrent_trials: Option<usize>,
    /// Times a failed trial starts over (default 0).
    #[serde(default)]
    pub max_failures: u32,
    /// What each trial runs.
    pub trainable: TrainableSpec,
    /// What each trial holds.
    #[serde(default)]
    pub resources_per_trial: Resources,
    /// Where configs come from.
    #[serde(default)]
    pub searcher: SearcherSpec,
    /// Which trials go on.
    #[serde(default)]
    pub scheduler: SchedulerSpec,
    /// When every trial stops.
    #[serde(default)]
    pub stop: Stop,
    /// Which of each trial's checkpoints are kept.
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    /// Where trials' results go beyond the experiment's files.
    #[serde(default)]
    pub tracking: TrackingSpec,
    /// The search space (read by [`SearchSpace::from_toml`]).
    #[serde(default)]
    pub param_space: toml::Table,
}

/// `[tracking]`: TensorBoard event files and an MLflow server
/// ([`rayforge::tracking`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackingSpec {
    /// Write a TensorBoard event file into each trial's directory (default
    /// true).
    #[serde(default = "yes")]
    pub tensorboard: bool,
    /// An MLflow tracking server (`http://host:port`) to log each trial to.
    pub mlflow: Option<String>,
    /// The MLflow experiment (default: the experiment's name).
    pub mlflow_experiment: Option<String>,
}

impl Default for TrackingSpec {
    fn default() -> Self {
        TrackingSpec {
            tensorboard: true,
            mlflow: None,
            mlflow_experiment: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn one() -> usize {
    1
}

/// What a trial runs: an executable, or a trainable registered by name in
/// the binary running the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainableSpec {
    /// The program and its arguments; `{name}` in an argument becomes the
    /// parameter's value. The parameters are also in the environment, as
    /// `RAYFORGE_TUNE_CONFIG` (JSON) and one `RAYFORGE_TUNE_PARAM_<NAME>`
    /// each, and in the file `RAYFORGE_TUNE_PARAMS_FILE` (`params.json` in
    /// the trial's directory, `RAYFORGE_TUNE_TRIAL_DIR`).
    #[serde(default)]
    pub command: Vec<String>,
    /// A trainable registered in the binary ([`crate::cli::Cli::register`]).
    pub name: Option<String>,
}

/// Resources per trial. Any name but the fields below is a custom resource
/// (`TPU = 1`), as Ray's `resources_per_trial={"TPU": 1}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Resources {
    /// CPUs (default 1).
    #[serde(default = "one_f")]
    pub cpu: f64,
    /// GPUs (default 0; fractions share a device).
    #[serde(default)]
    pub gpu: f64,
    /// Bundles for the trial's workers (a Train gang): each trial then
    /// holds a placement group, its own process in bundle 0.
    #[serde(default)]
    pub worker_bundles: Vec<BTreeMap<String, f64>>,
    /// How the bundles are spread (default `pack`).
    #[serde(default)]
    pub placement_strategy: Strategy,
    /// Custom resources each trial's own process holds (every other key of
    /// the table).
    #[serde(flatten)]
    pub custom: BTreeMap<String, f64>,
}

/// A placement strategy's name.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// As few nodes as possible.
    #[default]
    Pack,
    /// As many nodes as possible.
    Spread,
    /// One node or none.
    StrictPack,
    /// A node per bundle or none.
    StrictSpread,
}

impl From<Strategy> for rayforge::PlacementStrategy {
    fn from(s: Strategy) -> Self {
        match s {
            Strategy::Pack => rayforge::PlacementStrategy::Pack,
            Strategy::Spread => rayforge::PlacementStrategy::Spread,
            Strategy::StrictPack => rayforge::PlacementStrategy::StrictPack,
            Strategy::StrictSpread => rayforge::PlacementStrategy::StrictSpread,
        }
    }
}

/// Which checkpoints each trial keeps.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// How many (default all; the latest is always kept).
    pub num_to_keep: Option<usize>,
    /// The metric ranking them (default: the newest are best).
    pub score_attribute: Option<String>,
    /// Whether lower or higher scores are better (default `max`).
    pub mode: Option<Mode>,
}

fn one_f() -> f64 {
    1.0
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu: 1.0,
            gpu: 0.0,
            worker_bundles: Vec::new(),
            placement_strategy: Strategy::Pack,
            custom: BTreeMap::new(),
        }
    }
}

/// The searcher.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "SearcherTable")]
pub enum SearcherSpec {
    /// Grid points and random draws.
    Random {
        /// The seed.
        seed: Option<u64>,
        /// Configs to run first (partial ones completed at random), each
        /// in place of one of `num_samples`.
        points_to_evaluate: Option<Vec<crate::space::Config>>,
    },
    /// The tree-structured Parzen estimator.
    Tpe {
        /// Random trials first (default 10).
        n_startup_trials: Option<usize>,
        /// Candidates per suggestion (default 24).
        n_ei_candidates: Option<usize>,
        /// The seed.
        seed: Option<u64>,
        /// One joint model over all parameters (default false).
        multivariate: Option<bool>,
        /// Running trials count as bad observations, so parallel trials
        /// spread out (default: on when more than one trial runs at once).
        constant_liar: Option<bool>,
        /// Good trials weighted by rank (default true; false is Optuna's
        /// TPE exactly).
        rank_weights: Option<bool>,
        /// Configs to try first.
        points_to_evaluate: Option<Vec<crate::space::Config>>,
    },
}

impl Default for SearcherSpec {
    fn default() -> Self {
        SearcherSpec::Random {
            seed: None,
            points_to_evaluate: None,
        }
    }
}

/// The scheduler.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "SchedulerTable")]
pub enum SchedulerSpec {
    /// Every trial to its end.
    #[default]
    Fifo,
    /// Asynchronous successive halving.
    Asha {
        /// The time unit (default `training_iteration`).
        time_attr: Option<String>,
        /// The end (default 100).
        max_t: Option<f64>,
        /// The first rung (default 1).
        grace_period: Option<f64>,
        /// Default 4.
        reduction_factor: Option<f64>,
        /// Default 1.
        brackets: Option<usize>,
    },
    /// Synchronous HyperBand.
    Hyperband {
        /// The time unit (default `training_iteration`).
        time_attr: Option<String>,
        /// The end (default 81).
        max_t: Option<f64>,
        /// Default 3.
        reduction_factor: Option<f64>,
    },
    /// Population-based training.
    Pbt {
        /// The time unit (default `training_iteration`).
        time_attr: Option<String>,
        /// How often a trial may be exploited (default 4).
        perturbation_interval: Option<f64>,
        /// The top and bottom fraction (default 0.25).
        quantile_fraction: Option<f64>,
        /// The chance a parameter is drawn afresh (default 0.25).
        resample_probability: Option<f64>,
        /// The parameters perturbed (default: every one with a domain).
        mutate: Option<Vec<String>>,
        /// The seed.
        seed: Option<u64>,
    },
    /// The median stopping rule.
    Median {
        /// The time unit (default `training_iteration`).
        time_attr: Option<String>,
        /// Default 1.
        grace_period: Option<f64>,
        /// Default 3.
        min_samples_required: Option<usize>,
    },
}

/// `[searcher]` as written: every type's settings, read straight from the
/// file (so a wrong value's error keeps its line), then checked against
/// the chosen type's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearcherTable {
    #[serde(rename = "type")]
    kind: String,
    seed: Option<u64>,
    points_to_evaluate: Option<Vec<crate::space::Config>>,
    n_startup_trials: Option<usize>,
    n_ei_candidates: Option<usize>,
    multivariate: Option<bool>,
    constant_liar: Option<bool>,
    rank_weights: Option<bool>,
}

/// Refuses the settings in `set` that `kind` (a `what`) does not take.
fn only(what: &str, kind: &str, allowed: &[&str], set: &[(&str, bool)]) -> std::result::Result<(), String> {
    match set.iter().find(|(name, is_set)| *is_set && !allowed.contains(name)) {
        Some((name, _)) => Err(format!(
            "{what}.{name}: the {kind} {what} has no setting `{name}` (its settings: {})",
            if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join(", ")
            }
        )),
        None => Ok(()),
    }
}

impl TryFrom<SearcherTable> for SearcherSpec {
    type Error = String;

    fn try_from(t: SearcherTable) -> std::result::Result<Self, String> {
        let set = [
            ("seed", t.seed.is_some()),
            ("points_to_evaluate", t.points_to_evaluate.is_some()),
            ("n_startup_trials", t.n_startup_trials.is_some()),
            ("n_ei_candidates", t.n_ei_candidates.is_some()),
            ("multivariate", t.multivariate.is_some()),
            ("constant_liar", t.constant_liar.is_some()),
            ("rank_weights", t.rank_weights.is_some()),
        ];
        match t.kind.as_str() {
            "random" => {
                only("searcher", "random", &["seed", "points_to_evaluate"], &set)?;
                Ok(SearcherSpec::Random {
                    seed: t.seed,
                    points_to_evaluate: t.points_to_evaluate,
                })
            }
            "tpe" => Ok(SearcherSpec::Tpe {
                n_startup_trials: t.n_startup_trials,
                n_ei_candidates: t.n_ei_candidates,
                seed: t.seed,
                multivariate: t.multivariate,
                constant_liar: t.constant_liar,
                rank_weights: t.rank_weights,
                points_to_evaluate: t.points_to_evaluate,
            }),
            other => Err(format!(
                "searcher.type: unknown searcher `{other}`, expected `random` or `tpe`"
            )),
        }
    }
}

/// `[scheduler]` as written (see [`SearcherTable`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchedulerTable {
    #[serde(rename = "type")]
    kind: String,
    time_attr: Option<String>,
    max_t: Option<f64>,
    grace_period: Option<f64>,
    reduction_factor: Option<f64>,
    brackets: Option<usize>,
    perturbation_interval: Option<f64>,
    quantile_fraction: Option<f64>,
    resample_probability: Option<f64>,
    mutate: Option<Vec<String>>,
    seed: Option<u64>,
    min_samples_required: Option<usize>,
}

impl TryFrom<SchedulerTable> for SchedulerSpec {
    type Error = String;

    fn try_from(t: SchedulerTable) -> std::result::Result<Self, String> {
        let set = [
            ("time_attr", t.time_attr.is_some()),
            ("max_t", t.max_t.is_some()),
            ("grace_period", t.grace_period.is_some()),
            ("reduction_factor", t.reduction_factor.is_some()),
            ("brackets", t.brackets.is_some()),
            ("perturbation_interval", t.perturbation_interval.is_some()),
            ("quantile_fraction", t.quantile_fraction.is_some()),
            ("resample_probability", t.resample_probability.is_some()),
            ("mutate", t.mutate.is_some()),
            ("seed", t.seed.is_some()),
            ("min_samples_required", t.min_samples_required.is_some()),
        ];
        let check = |kind: &str, allowed: &[&str]| only("scheduler", kind, allowed, &set);
        match t.kind.as_str() {
            "fifo" => {
                check("fifo", &[])?;
                Ok(SchedulerSpec::Fifo)
            }
            "asha" => {
                check(
                    "asha",
                    &["time_attr", "max_t", "grace_period", "reduction_factor", "brackets"],
                )?;
                Ok(SchedulerSpec::Asha {
                    time_attr: t.time_attr,
                    max_t: t.max_t,
                    grace_period: t.grace_period,
                    reduction_factor: t.reduction_factor,
                    brackets: t.brackets,
                })
            }
            "hyperband" => {
                check("hyperband", &["time_attr", "max_t", "reduction_factor"])?;
                Ok(SchedulerSpec::Hyperband {
                    time_attr: t.time_attr,
                    max_t: t.max_t,
                    reduction_factor: t.reduction_factor,
                })
            }
            "pbt" => {
                check(
                    "pbt",
                    &[
                        "time_attr",
                        "perturbation_interval",
                        "quantile_fraction",
                        "resample_probability",
                        "mutate",
                        "seed",
                    ],
                )?;
                Ok(SchedulerSpec::Pbt {
                    time_attr: t.time_attr,
                    perturbation_interval: t.perturbation_interval,
                    quantile_fraction: t.quantile_fraction,
                    resample_probability: t.resample_probability,
                    mutate: t.mutate,
                    seed: t.seed,
                })
            }
            "median" => {
                check("median", &["time_attr", "grace_period", "min_samples_required"])?;
                Ok(SchedulerSpec::Median {
                    time_attr: t.time_attr,
                    grace_period: t.grace_period,
                    min_samples_required: t.min_samples_required,
                })
            }
            other => Err(format!(
                "scheduler.type: unknown scheduler `{other}`, expected `fifo`, `asha`, `hyperband`, `pbt` or `median`"
            )),
        }
    }
}

/// The field a TOML error at byte `at` of `text` is about, as
/// `table.key` (`scheduler.max_t`): the key on its line, under the
/// nearest table header above; the header's own name on a header line.
fn field_at(text: &str, at: usize) -> Option<String> {
    let at = at.min(text.len());
    let start = text[..at].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[start..].lines().next().unwrap_or("").trim();
    let header = |l: &str| {
        let l = l.trim();
        (l.starts_with('[') && !l.starts_with("[[")).then(|| {
            l.trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
    };
    if let Some(h) = header(line) {
        return Some(h);
    }
    let key = line.split('=').next()?.trim().trim_matches('"').to_string();
    if key.is_empty() || !line.contains('=') {
        return None;
    }
    let table = text[..start].lines().rev().find_map(header);
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key,
    })
}

/// Stop criteria for every trial.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stop {
    /// After this many reports.
    pub training_iteration: Option<u64>,
    /// The whole experiment stops after this many seconds.
    pub time_budget_s: Option<f64>,
    /// A trial stops once its metric is at least this good.
    pub metric_threshold: Option<f64>,
    /// A trial stops once its metric stops moving.
    pub plateau: Option<PlateauSpec>,
}

/// The plateau stopper's settings (Ray's `TrialPlateauStopper`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlateauSpec {
    /// The standard deviation under which it is flat (default 0.01).
    pub std: Option<f64>,
    /// Results compared (default 4).
    pub num_results: Option<usize>,
    /// Results before it may stop (default 4).
    pub grace_period: Option<usize>,
}

impl Experiment {
    /// Reads and checks `text` (from `path`, for messages).
    pub fn parse(text: &str) -> Result<(Experiment, SearchSpace)> {
        let mut e: Experiment = toml::from_str(text).map_err(|err| {
            let line = err.span().map(|s| line_of(text, s.start));
            // The field whose value is wrong (serde's message names only
            // unknown fields, not one of the wrong type).
            let field = err
                .span()
                .and_then(|s| field_at(text, s.start))
                .unwrap_or_else(|| "search.toml".into());
            let message = err.message().to_string();
            // A setting a table's type does not take (checked after the
            // table is read, so the error's place is the header): the
            // message names it; point at its own line.
            if let Some((named, rest)) = message.split_once(": ") {
                if let Some((table, key)) = named.split_once('.') {
                    if (table == "scheduler" || table == "searcher") && !key.contains(' ') {
                        let own = line_in_table(text, table, key).or(line);
                        return Error::config(named, own, rest);
                    }
                }
            }
            Error::config(field, line, message)
        })?;
        let space = SearchSpace::from_toml(text)?;
        let field_line = |key: &str| {
            text.lines()
                .position(|l| l.trim_start().starts_with(key))
                .map(|i| i + 1)
        };
        match (&e.trainable.name, e.trainable.command.is_empty()) {
            (None, true) => {
                return Err(Error::config(
                    "trainable",
                    field_line("[trainable]"),
                    "needs `command` (an executable) or `name` (a registered trainable)",
                ))
            }
            (Some(_), false) => {
                return Err(Error::config(
                    "trainable",
                    field_line("[trainable]"),
                    "takes `command` or `name`, not both",
                ))
            }
            _ => {}
        }
        if let Some(t) = e.stop.time_budget_s {
            if t.is_nan() || t <= 0.0 {
                return Err(Error::config(
                    "stop.time_budget_s",
                    line_in_table(text, "stop", "time_budget_s"),
                    "must be above 0",
                ));
            }
        }
        if e.num_samples == 0 {
            return Err(Error::config("num_samples", None, "must be at least 1"));
        }
        if let Some(uri) = &e.tracking.mlflow {
            if let Err(why) = rayforge::tracking::Mlflow::try_new(uri) {
                return Err(Error::config(
                    "tracking.mlflow",
                    line_in_table(text, "tracking", "mlflow"),
                    why.to_string(),
                ));
            }
        }
        for (name, amount) in &e.resources_per_trial.custom {
            let field = format!("resources_per_trial.{name}");
            let line = line_in_table(text, "resources_per_trial", name);
            // A misspelt `cpu`/`gpu` would otherwise be a custom resource
            // no node has, and every trial would fail as infeasible.
            let lower = name.to_ascii_lowercase();
            if ["cpus", "gpus", "num_cpus", "num_gpus", "cpu", "gpu"].contains(&lower.as_str()) {
                let meant = if lower.contains("gpu") { "gpu" } else { "cpu" };
                return Err(Error::config(
                    field,
                    line,
                    format!("not a field: CPUs and GPUs are `{meant}`"),
                ));
            }
            if !(amount.is_finite() && *amount > 0.0) {
                return Err(Error::config(
                    field,
                    line,
                    format!("a custom resource's amount must be above 0, not {amount}"),
                ));
            }
        }
        // What a resume must find unchanged: all but where the files are
        // and how many trials run at once (another machine may differ).
        let mut definition: serde_json::Value = toml::from_str::<toml::Table>(text)
            .ok()
            .and_then(|t| serde_json::to_value(t).ok())
            .unwrap_or_default();
        if let Some(m) = definition.as_object_mut() {
            m.remove("storage_path");
            m.remove("max_concurrent_trials");
            m.remove("tracking");
        }
        e.definition = definition;
        Ok((e, space))
    }

    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<(Experiment, SearchSpace)> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Experiment::parse(&text).map_err(|e| match e {
            Error::Config { field, line, message } => Error::Config {
                field: format!("{}: {field}", path.display()),
                line,
                message,
            },
            e => e,
        })
    }

    /// The run's settings.
    pub fn tune_config(&self) -> TuneConfig {
        let d = TuneConfig::default();
        TuneConfig {
            name: self.name.clone(),
            storage_path: self.storage_path.clone().unwrap_or(d.storage_path),
            metric: self.metric.clone(),
            mode: self.mode,
            best_scope: self.best_scope,
            max_concurrent_trials: self.max_concurrent_trials.unwrap_or(d.max_concurrent_trials),
            cpus_per_trial: self.resources_per_trial.cpu,
            gpus_per_trial: self.resources_per_trial.gpu,
            worker_bundles: self.resources_per_trial.worker_bundles.clone(),
            placement_strategy: self.resources_per_trial.placement_strategy.into(),
            custom_resources_per_trial: self.resources_per_trial.custom.clone(),
            max_iterations: self.stop.training_iteration,
            max_failures: self.max_failures,
            checkpoint: rayforge::checkpoint::CheckpointConfig {
                num_to_keep: self.checkpoint.num_to_keep,
                score_attribute: self.checkpoint.score_attribute.clone(),
                higher_is_better: self.checkpoint.mode != Some(Mode::Min),
            },
            definition: Some(self.definition.clone()),
            tensorboard: self.tracking.tensorboard,
            callbacks: match &self.tracking.mlflow {
                Some(uri) => {
                    let mut m = rayforge::tracking::Mlflow::new(uri);
                    if let Some(x) = &self.tracking.mlflow_experiment {
                        m = m.experiment(x);
                    }
                    rayforge::tracking::Callbacks::new().with(m)
                }
                None => rayforge::tracking::Callbacks::new(),
            },
            ..d
        }
    }

    /// The stop criteria beyond `training_iteration` (which
    /// [`Experiment::tune_config`] carries).
    pub fn stoppers(&self) -> Vec<Box<dyn Stopper>> {
        let mut out: Vec<Box<dyn Stopper>> = Vec::new();
        if let Some(t) = self.stop.time_budget_s {
            out.push(Box::new(TimeBudget::new(std::time::Duration::from_secs_f64(t))));
        }
        if let Some(v) = self.stop.metric_threshold {
            out.push(Box::new(MetricThreshold::new(&self.metric, self.mode, v)));
        }
        if let Some(p) = &self.stop.plateau {
            let mut s = Plateau::new(&self.metric);
            if let Some(x) = p.std {
                s = s.std(x);
            }
            if let Some(n) = p.num_results {
                s = s.num_results(n);
            }
            if let Some(n) = p.grace_period {
                s = s.grace_period(n);
            }
            out.push(Box::new(s));
        }
        out
    }

    /// The searcher over `space` (`seed` unless the file gives one).
    pub fn searcher(&self, space: SearchSpace, seed: u64) -> Result<Box<dyn Searcher>> {
        Ok(match &self.searcher {
            SearcherSpec::Random {
                seed: s,
                points_to_evaluate,
            } => Box::new(
                BasicVariant::new(&space, self.num_samples, s.unwrap_or(seed))?
                    .with_points(points_to_evaluate.clone().unwrap_or_default())?,
            ),
            SearcherSpec::Tpe {
                n_startup_trials,
                n_ei_candidates,
                seed: s,
                multivariate,
                constant_liar,
                rank_weights,
                points_to_evaluate,
            } => {
                let d = TpeOptions::default();
                let parallel = self
                    .max_concurrent_trials
                    .unwrap_or(TuneConfig::default().max_concurrent_trials)
                    > 1;
                let opts = TpeOptions {
                    n_startup_trials: n_startup_trials.unwrap_or(d.n_startup_trials),
                    n_ei_candidates: n_ei_candidates.unwrap_or(d.n_ei_candidates).max(1),
                    seed: s.unwrap_or(seed),
                    multivariate: multivariate.unwrap_or(d.multivariate),
                    constant_liar: constant_liar.unwrap_or(parallel),
                    rank_weights: rank_weights.unwrap_or(d.rank_weights),
                };
                Box::new(
                    Tpe::new(
                        space.clone(),
                        self.mode,
                        Some(self.num_samples * space.grid_size()),
                        opts,
                    )?
                    .with_points(points_to_evaluate.clone().unwrap_or_default())?,
                )
            }
        })
    }

    /// The scheduler (PBT mutates the domains of `space`).
    pub fn scheduler(&self, space: &SearchSpace) -> Result<Box<dyn Scheduler>> {
        let attr = |a: &Option<String>| a.clone().unwrap_or_else(|| crate::TRAINING_ITERATION.to_string());
        Ok(match &self.scheduler {
            SchedulerSpec::Fifo => Box::new(Fifo),
            SchedulerSpec::Asha {
                time_attr,
                max_t,
                grace_period,
                reduction_factor,
                brackets,
            } => Box::new(Asha::new(
                &attr(time_attr),
                &self.metric,
                self.mode,
                max_t.unwrap_or(100.0),
                grace_period.unwrap_or(1.0),
                reduction_factor.unwrap_or(4.0),
                brackets.unwrap_or(1),
            )?),
            SchedulerSpec::Hyperband {
                time_attr,
                max_t,
                reduction_factor,
            } => Box::new(HyperBand::new(
                &attr(time_attr),
                &self.metric,
                self.mode,
                max_t.unwrap_or(81.0),
                reduction_factor.unwrap_or(3.0),
            )?),
            SchedulerSpec::Pbt {
                time_attr,
                perturbation_interval,
                quantile_fraction,
                resample_probability,
                mutate,
                seed,
            } => {
                let mut mutations = SearchSpace::new();
                for (name, p) in space.params() {
                    if mutate.as_ref().is_none_or(|m| m.contains(name)) {
                        if let Param::Domain(d) = p {
                            mutations = mutations.domain(name, d.clone());
                        }
                    }
                }
                for m in mutate.iter().flatten() {
                    if !mutations.params().iter().any(|(n, _)| n == m) {
                        return Err(Error::config(
                            "scheduler.mutate",
                            None,
                            format!("`{m}` is not a parameter of param_space with a domain"),
                        ));
                    }
                }
                let mut p = Pbt::new(
                    &attr(time_attr),
                    &self.metric,
                    self.mode,
                    perturbation_interval.unwrap_or(4.0),
                    &mutations,
                    seed.unwrap_or(0),
                )?;
                if let Some(q) = quantile_fraction {
                    p = p.quantile_fraction(*q)?;
                }
                if let Some(r) = resample_probability {
                    p = p.resample_probability(*r)?;
                }
                Box::new(p)
            }
            SchedulerSpec::Median {
                time_attr,
                grace_period,
                min_samples_required,
            } => Box::new(MedianStopping::new(
                &attr(time_attr),
                &self.metric,
                self.mode,
                grace_period.unwrap_or(1.0),
                min_samples_required.unwrap_or(3),
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::Config;

    const GOOD: &str = r#"
name = "q"
metric = "loss"
mode = "min"
num_samples = 4

[trainable]
command = ["python3", "q.py", "--x", "{x}"]

[scheduler]
type = "asha"
max_t = 9
grace_period = 1
reduction_factor = 3

[searcher]
type = "tpe"
n_startup_trials = 2
multivariate = true
points_to_evaluate = [{ x = 0.5 }]

[param_space]
x = { uniform = [-2, 2] }
"#;

    #[test]
    fn a_good_file_reads_into_its_parts() {
        let (e, space) = Experiment::parse(GOOD).unwrap();
        assert_eq!(e.name, "q");
        assert_eq!(e.mode, Mode::Min);
        assert_eq!(space.params().len(), 1);
        assert_eq!(e.scheduler(&space).unwrap().name(), "ASHA");
        let mut s = e.searcher(space, 0).unwrap();
        let got: Vec<Config> = (0..10).filter_map(|i| s.suggest(&format!("t{i}"))).collect();
        assert_eq!(got.len(), 4, "num_samples bounds TPE");
        assert_eq!(got[0]["x"], 0.5, "the point to evaluate comes first");
        assert_eq!(e.tune_config().max_concurrent_trials, 4);
        // TensorBoard by default, no MLflow; [tracking] changes both.
        let c = e.tune_config();
        assert!(c.tensorboard && c.callbacks.is_empty());
        let text = GOOD.replace(
            "[searcher]",
            "[tracking]\ntensorboard = false\nmlflow = \"http://127.0.0.1:5000\"\n\n[searcher]",
        );
        let (e, _) = Experiment::parse(&text).unwrap();
        let c = e.tune_config();
        assert!(!c.tensorboard);
        assert_eq!(format!("{:?}", c.callbacks), "[\"MLflow\"]");
        // Tracking is not part of what a resume compares.
        assert_eq!(e.definition, Experiment::parse(GOOD).unwrap().0.definition);
    }

    #[test]
    fn unknown_or_malformed_fields_are_named_with_their_line() {
        let err = |t: &str| Experiment::parse(t).unwrap_err().to_string();
        let e = err(&GOOD.replace("num_samples = 4", "num_sample = 4"));
        assert!(e.contains("line 5") && e.contains("unknown field `num_sample`"), "{e}");
        let e = err(&GOOD.replace("mode = \"min\"", "mode = \"down\""));
        assert!(e.contains("line 4") && e.contains("down"), "{e}");
        let e = err(&GOOD.replace("reduction_factor = 3", "reduction_factor = 3\nrungs = 2"));
        assert!(e.contains("rungs"), "{e}");
        let (bad, space) = Experiment::parse(&GOOD.replace("[{ x = 0.5 }]", "[{ z = 0.5 }]")).unwrap();
        let e = bad.searcher(space, 0).err().unwrap().to_string();
        assert!(e.contains("points_to_evaluate[0]") && e.contains("z"), "{e}");
        let e = err(&GOOD.replace("type = \"tpe\"", "type = \"bayes\""));
        assert!(e.contains("bayes"), "{e}");
        let e = err(&GOOD.replace("x = { uniform = [-2, 2] }", "x = { uniform = [2, -2] }"));
        assert!(e.contains("param_space.x") && e.contains("line 23"), "{e}");
        let e = err(&GOOD.replace("command = [\"python3\", \"q.py\", \"--x\", \"{x}\"]", "command = []"));
        assert!(
            e.contains("trainable") && e.contains("`command`") && e.contains("line 7"),
            "{e}"
        );
        let e = err(&GOOD.replace("command = [", "name = \"mlp\"\ncommand = ["));
        assert!(e.contains("not both"), "{e}");
        let e = err(&GOOD.replace(
            "[searcher]",
            "[stop]\nplateau = { std = 0.1, window = 3 }\n\n[searcher]",
        ));
        assert!(e.contains("window") && e.contains("line 17"), "{e}");
        let e = err(&GOOD.replace("[searcher]", "[stop]\ntime_budget_s = -1\n\n[searcher]"));
        assert!(e.contains("stop.time_budget_s"), "{e}");
        let e = err(&GOOD.replace("[searcher]", "[tracking]\nmlflow = \"localhost:5000\"\n\n[searcher]"));
        assert!(e.contains("tracking.mlflow") && e.contains("localhost:5000"), "{e}");
        let e = err(&GOOD.replace("[searcher]", "[tracking]\nmlfow = \"http://x:1\"\n\n[searcher]"));
        assert!(e.contains("mlfow"), "{e}");
        let e = err("name = \"q\"\n");
        assert!(e.contains("missing field"), "{e}");
    }

    #[test]
    fn a_wrong_value_names_its_field_and_its_own_line_inside_every_table() {
        let err = |t: &str| Experiment::parse(t).unwrap_err().to_string();
        // Top level.
        let e = err(&GOOD.replace("num_samples = 4", "num_samples = \"ten\""));
        assert!(e.starts_with("line 5: num_samples:") && e.contains("\"ten\""), "{e}");
        // Inside [scheduler] and [searcher]: the field's own line, not the header's.
        let e = err(&GOOD.replace("max_t = 9", "max_t = \"ten\""));
        assert!(e.starts_with("line 12: scheduler.max_t:"), "{e}");
        let e = err(&GOOD.replace("n_startup_trials = 2", "n_startup_trials = -2"));
        assert!(e.starts_with("line 18: searcher.n_startup_trials:"), "{e}");
        let e = err(&GOOD.replace("multivariate = true", "multivariate = \"yes\""));
        assert!(e.starts_with("line 19: searcher.multivariate:"), "{e}");
        // A setting of another type of scheduler names itself, its line
        // and the type's settings.
        let e = err(&GOOD.replace("max_t = 9", "perturbation_interval = 2"));
        assert!(
            e.starts_with("line 12: scheduler.perturbation_interval:")
                && e.contains("asha")
                && e.contains("grace_period"),
            "{e}"
        );
        let e = err(&GOOD.replace("type = \"asha\"", "type = \"bohb\""));
        assert!(
            e.starts_with("line 11: scheduler.type:") && e.contains("bohb") && e.contains("`median`"),
            "{e}"
        );
        let e = err(&GOOD.replace("[searcher]", "[stop]\nmetric_threshold = \"low\"\n\n[searcher]"));
        assert!(e.starts_with("line 17: stop.metric_threshold:"), "{e}");
    }

    #[test]
    fn custom_resources_and_the_best_scope_are_read_and_checked() {
        let with = |table: &str| GOOD.replace("[scheduler]", &format!("[resources_per_trial]\n{table}\n\n[scheduler]"));
        let (e, _) = Experiment::parse(&with("cpu = 2\nTPU = 1\naccelerator_type_A100 = 0.5")).unwrap();
        let c = e.tune_config();
        assert_eq!(c.cpus_per_trial, 2.0);
        let custom: Vec<(&str, f64)> = c
            .custom_resources_per_trial
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(custom, vec![("TPU", 1.0), ("accelerator_type_A100", 0.5)]);
        let err = |t: &str| Experiment::parse(&with(t)).unwrap_err().to_string();
        // A misspelt `cpu` is not taken for a custom resource.
        let e = err("cpus = 2");
        assert!(
            e.starts_with("line 11: resources_per_trial.cpus:") && e.contains("`cpu`"),
            "{e}"
        );
        let e = err("num_gpus = 1");
        assert!(e.contains("resources_per_trial.num_gpus") && e.contains("`gpu`"), "{e}");
        let e = err("TPU = 0");
        assert!(
            e.starts_with("line 11: resources_per_trial.TPU:") && e.contains("above 0"),
            "{e}"
        );
        let e = Experiment::parse(&GOOD.replace("mode = \"min\"", "mode = \"min\"\nbest_scope = \"last-x-avg\""))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 5: best_scope:") && e.contains("last-N-avg"), "{e}");
        let (e, _) =
            Experiment::parse(&GOOD.replace("mode = \"min\"", "mode = \"min\"\nbest_scope = \"last-5-avg\"")).unwrap();
        assert_eq!(e.tune_config().best_scope, crate::Scope::LastAvg(5));
        let e = err("TPU = \"one\"");
        assert!(e.contains("line 1") && e.contains("\"one\""), "{e}");
    }
}
