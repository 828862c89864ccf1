//! A `search.toml`: the experiment `tune run` runs. Every field is checked:
//! an unknown or malformed one is an error naming it and its line.
//!
//! ```toml
//! name = "quadratic"            # the experiment's directory under storage_path
//! storage_path = "/tmp/results" # default ~/rayforge_results
//! metric = "loss"
//! mode = "min"                  # or "max"
//! num_samples = 8               # each grid point this many times
//! max_concurrent_trials = 2
//! max_failures = 1              # a failed trial starts over once
//!
//! [trainable]                   # an executable: parameters in, JSON lines out
//! command = ["python3", "train.py", "--lr", "{lr}"]
//!
//! [resources_per_trial]
//! cpu = 1
//! gpu = 0
//!
//! [searcher]
//! type = "random"               # or "tpe" (n_startup_trials, n_ei_candidates)
//! seed = 0
//!
//! [scheduler]
//! type = "asha"                 # or "fifo", "median"
//! time_attr = "training_iteration"
//! max_t = 20
//! grace_period = 1
//! reduction_factor = 3
//!
//! [stop]
//! training_iteration = 20
//!
//! [param_space]
//! lr = { loguniform = [1e-4, 1e-1] }
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::schedulers::{Asha, Fifo, MedianStopping, Mode, Scheduler};
use crate::searchers::{BasicVariant, Searcher, Tpe, TpeOptions};
use crate::space::{line_of, SearchSpace};
use crate::tuner::TuneConfig;

/// The file's fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// The experiment's name.
    pub name: String,
    /// Where experiments keep their directories.
    pub storage_path: Option<PathBuf>,
    /// The metric that ranks trials.
    pub metric: String,
    /// `min` or `max`.
    pub mode: Mode,
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
    /// The search space (read by [`SearchSpace::from_toml`]).
    #[serde(default)]
    pub param_space: toml::Table,
}

fn one() -> usize {
    1
}

/// An executable trial.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainableSpec {
    /// The program and its arguments; `{name}` in an argument becomes the
    /// parameter's value. The trial's parameters are also in the
    /// environment as `RAYFORGE_TUNE_CONFIG` (JSON), and its directory as
    /// `RAYFORGE_TUNE_TRIAL_DIR` (where `params.json` is).
    pub command: Vec<String>,
}

/// Resources per trial.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPUs (default 1).
    #[serde(default = "one_f")]
    pub cpu: f64,
    /// GPUs (default 0; fractions share a device).
    #[serde(default)]
    pub gpu: f64,
}

fn one_f() -> f64 {
    1.0
}

impl Default for Resources {
    fn default() -> Self {
        Resources { cpu: 1.0, gpu: 0.0 }
    }
}

/// The searcher.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase", tag = "type")]
pub enum SearcherSpec {
    /// Grid points and random draws.
    #[default]
    Random,
    /// The tree-structured Parzen estimator.
    Tpe {
        /// Random trials first (default 10).
        n_startup_trials: Option<usize>,
        /// Candidates per suggestion (default 24).
        n_ei_candidates: Option<usize>,
        /// The seed (also `searcher.seed` for random).
        seed: Option<u64>,
    },
}

/// The scheduler.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase", tag = "type")]
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

/// Stop criteria for every trial.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stop {
    /// After this many reports.
    pub training_iteration: Option<u64>,
}

impl Experiment {
    /// Reads and checks `text` (from `path`, for messages).
    pub fn parse(text: &str) -> Result<(Experiment, SearchSpace)> {
        let e: Experiment = toml::from_str(text).map_err(|err| {
            let line = err.span().map(|s| line_of(text, s.start));
            // serde's message names the field ("unknown field `x`").
            Error::config("search.toml", line, err.message().to_string())
        })?;
        let space = SearchSpace::from_toml(text)?;
        if e.trainable.command.is_empty() {
            return Err(Error::config("trainable.command", None, "needs at least the program"));
        }
        if e.num_samples == 0 {
            return Err(Error::config("num_samples", None, "must be at least 1"));
        }
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
            max_concurrent_trials: self.max_concurrent_trials.unwrap_or(d.max_concurrent_trials),
            cpus_per_trial: self.resources_per_trial.cpu,
            gpus_per_trial: self.resources_per_trial.gpu,
            max_iterations: self.stop.training_iteration,
            max_failures: self.max_failures,
            verbose: true,
            resume: false,
        }
    }

    /// The searcher over `space`.
    pub fn searcher(&self, space: SearchSpace, seed: u64) -> Result<Box<dyn Searcher>> {
        Ok(match &self.searcher {
            SearcherSpec::Random => Box::new(BasicVariant::new(&space, self.num_samples, seed)?),
            SearcherSpec::Tpe {
                n_startup_trials,
                n_ei_candidates,
                seed: s,
            } => {
                let d = TpeOptions::default();
                let opts = TpeOptions {
                    n_startup_trials: n_startup_trials.unwrap_or(d.n_startup_trials),
                    n_ei_candidates: n_ei_candidates.unwrap_or(d.n_ei_candidates).max(1),
                    seed: s.unwrap_or(seed),
                };
                Box::new(Tpe::new(
                    space.clone(),
                    self.mode,
                    Some(self.num_samples * space.grid_size()),
                    opts,
                )?)
            }
        })
    }

    /// The scheduler.
    pub fn scheduler(&self) -> Result<Box<dyn Scheduler>> {
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

[param_space]
x = { uniform = [-2, 2] }
"#;

    #[test]
    fn a_good_file_reads_into_its_parts() {
        let (e, space) = Experiment::parse(GOOD).unwrap();
        assert_eq!(e.name, "q");
        assert_eq!(e.mode, Mode::Min);
        assert_eq!(space.params().len(), 1);
        assert_eq!(e.scheduler().unwrap().name(), "ASHA");
        let mut s = e.searcher(space, 0).unwrap();
        let got = (0..10).filter_map(|i| s.suggest(&format!("t{i}"))).count();
        assert_eq!(got, 4, "num_samples bounds TPE");
        assert_eq!(e.tune_config().max_concurrent_trials, 4);
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
        let e = err(&GOOD.replace("type = \"tpe\"", "type = \"bayes\""));
        assert!(e.contains("bayes"), "{e}");
        let e = err(&GOOD.replace("x = { uniform = [-2, 2] }", "x = { uniform = [2, -2] }"));
        assert!(e.contains("param_space.x") && e.contains("line 21"), "{e}");
        let e = err(&GOOD.replace("command = [\"python3\", \"q.py\", \"--x\", \"{x}\"]", "command = []"));
        assert!(e.contains("trainable.command"), "{e}");
        let e = err("name = \"q\"\n");
        assert!(e.contains("missing field"), "{e}");
    }
}
