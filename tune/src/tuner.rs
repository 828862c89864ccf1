//! Running an experiment: trials as actors (each holding its resources,
//! or a placement group for a trial that runs a gang), at most
//! `max_concurrent_trials` at once, configs from a [`Searcher`], every
//! result shown to a [`Scheduler`] and the [`Stopper`]s (a trial they stop
//! is killed; one they pause or exploit restarts later from a checkpoint),
//! results written under `{storage}/{name}/{trial}/` (`params.json`,
//! `result.jsonl`, `progress.csv`, `checkpoint_NNNNNN/`), a status table
//! while it runs, and a [`ResultGrid`] at the end.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayforge::checkpoint::{self, Checkpoint, CheckpointConfig, CheckpointWriter};
use rayforge::{AnyFnRef, FnRef, Json, ObjectRef, PlacementGroup};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schedulers::{Decision, Fifo, Metrics, Mode, Scheduler};
use crate::searchers::Searcher;
use crate::space::Config;
use crate::stoppers::Stopper;

/// What a trial's checkpoint manifest says wrote it.
const WRITTEN_BY: &str = concat!("rayforge-tune ", env!("CARGO_PKG_VERSION"));

/// The metric every report carries: the number of the report (1, 2, ...).
pub const TRAINING_ITERATION: &str = "training_iteration";

/// What a trial's function sees: its config, the checkpoint to go on from,
/// and `report`.
pub struct TrialContext {
    trial: String,
    config: Config,
    iteration: u64,
    reports: rayforge::util::Queue<TrialReport>,
    dir: PathBuf,
    restore: Option<Checkpoint>,
    placement_group: Option<PlacementGroup>,
}

impl std::fmt::Debug for TrialContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrialContext").field("trial", &self.trial).finish()
    }
}

impl TrialContext {
    /// The trial's name (`trial_00003`).
    pub fn trial(&self) -> &str {
        &self.trial
    }

    /// The trial's parameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The trial's directory (`{storage}/{experiment}/{trial}`).
    pub fn trial_dir(&self) -> &Path {
        &self.dir
    }

    /// The checkpoint to go on from: the trial's latest, when it restarts
    /// after a failure, a pause or a resumed experiment, or the one it took
    /// over from a better trial (PBT). The next report's iteration follows
    /// the checkpoint's.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.restore.as_ref()
    }

    /// The placement group the trial holds when it runs a gang
    /// ([`TuneConfig::worker_bundles`]): the trial's own process is in
    /// bundle 0, the workers go in bundles 1 and up (for a Train run:
    /// `Trainer::placement_group(pg, 1)`).
    pub fn placement_group(&self) -> Option<&PlacementGroup> {
        self.placement_group.as_ref()
    }

    /// The number of reports so far (from the checkpoint's, on a restart).
    pub fn iteration(&self) -> u64 {
        self.iteration
    }

    /// One parameter as `T`.
    pub fn get<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T> {
        let v = self
            .config
            .get(name)
            .ok_or_else(|| Error::config(format!("param_space.{name}"), None, "no such parameter"))?;
        serde_json::from_value(v.clone())
            .map_err(|e| Error::config(format!("param_space.{name}"), None, format!("{v} does not fit: {e}")))
    }

    /// Reports this iteration's metrics (`training_iteration` is added).
    /// The trial may be stopped after any report: its process ends then.
    pub fn report<K: Into<String>>(&mut self, metrics: impl IntoIterator<Item = (K, f64)>) -> Result<()> {
        self.report_inner(metrics, None)
    }

    /// Reports this iteration's metrics with a checkpoint, committed into
    /// the trial's directory as `checkpoint_NNNNNN` first (a trial that
    /// restarts goes on from its latest).
    pub fn report_checkpoint<K: Into<String>>(
        &mut self,
        metrics: impl IntoIterator<Item = (K, f64)>,
        checkpoint: CheckpointWriter,
    ) -> Result<()> {
        self.report_inner(metrics, Some(checkpoint))
    }

    fn report_inner<K: Into<String>>(
        &mut self,
        metrics: impl IntoIterator<Item = (K, f64)>,
        checkpoint: Option<CheckpointWriter>,
    ) -> Result<()> {
        let mut m: Metrics = metrics.into_iter().map(|(k, v)| (k.into(), v)).collect();
        m.insert(TRAINING_ITERATION.into(), (self.iteration + 1) as f64);
        let checkpoint = match checkpoint {
            Some(w) => Some(
                w.commit(&self.dir, self.iteration + 1, &m, WRITTEN_BY)?
                    .path()
                    .to_path_buf(),
            ),
            None => None,
        };
        self.iteration += 1;
        self.reports
            .put(TrialReport {
                trial: self.trial.clone(),
                metrics: m,
                checkpoint,
            })
            .map_err(|e| Error::Runtime(e.to_string()))
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct TrialReport {
    trial: String,
    metrics: Metrics,
    /// The checkpoint committed with it.
    checkpoint: Option<PathBuf>,
}

/// Calls the user's trainable (of a type only this trampoline knows).
type TrialTramp = fn(&mut TrialContext, AnyFnRef) -> std::result::Result<(), String>;

fn t_trial<E: std::fmt::Display + 'static>(ctx: &mut TrialContext, user: AnyFnRef) -> std::result::Result<(), String> {
    let f = user
        .typed::<fn(&mut TrialContext) -> std::result::Result<(), E>>()
        .and_then(|f| f.get())
        .map_err(|e| e.to_string())?;
    f(ctx).map_err(|e| e.to_string())
}

#[derive(Clone, Serialize, Deserialize)]
struct TrialSpec {
    tramp: FnRef<TrialTramp>,
    user: AnyFnRef,
    /// An executable trainable instead of the function.
    command: Option<Vec<String>>,
    /// The trial's directory, and where the command runs from.
    dir: PathBuf,
    cwd: PathBuf,
    trial: String,
    config: Json<Config>,
    reports: rayforge::util::Queue<TrialReport>,
    /// The checkpoint to go on from.
    restore: Option<PathBuf>,
    placement_group: Option<PlacementGroup>,
    /// The driver's marker in the experiment's directory, read back before
    /// the trial starts (a node that cannot see it fails the trial, named).
    shared: rayforge::storage::SharedCheck,
}

/// One trial's process.
#[rayforge::actor]
pub(crate) struct TrialActor;

#[rayforge::actor]
impl TrialActor {
    fn new() -> Self {
        TrialActor
    }

    /// Runs the trial's function to its end.
    fn run(&mut self, spec: TrialSpec) -> std::result::Result<(), String> {
        // Otherwise the trial would write its files on this node's own disk,
        // where the driver never finds them.
        spec.shared.verify().map_err(|e| e.to_string())?;
        let restore = match &spec.restore {
            Some(p) => Some(Checkpoint::open(p).map_err(|e| e.to_string())?),
            None => None,
        };
        let iteration = match &restore {
            Some(c) => c.manifest().map_err(|e| e.to_string())?.iteration,
            None => 0,
        };
        let mut ctx = TrialContext {
            trial: spec.trial,
            config: spec.config.0,
            iteration,
            reports: spec.reports,
            dir: spec.dir.clone(),
            restore,
            placement_group: spec.placement_group,
        };
        if let Some(argv) = &spec.command {
            return run_command(&mut ctx, argv, &spec.dir, &spec.cwd);
        }
        let tramp = spec.tramp.get().map_err(|e| e.to_string())?;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tramp(&mut ctx, spec.user))) {
            Ok(r) => r,
            Err(p) => Err(format!(
                "panicked: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        }
    }
}

/// `arg` with each `{name}` replaced by the parameter's value (strings
/// without their quotes).
fn fill(arg: &str, config: &Config) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        let name = &rest[open + 1..open + close];
        let v = config
            .get(name)
            .ok_or_else(|| format!("the command's `{{{name}}}` names no parameter"))?;
        out.push_str(&rest[..open]);
        match v {
            serde_json::Value::String(s) => out.push_str(s),
            v => out.push_str(&v.to_string()),
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Runs an executable trial: parameters in (the argument template, the
/// environment, `params.json`), every JSON object of numbers it prints on a
/// line of stdout reported, the rest kept in `stdout.log`; stderr in
/// `stderr.log`. A line with `"should_checkpoint": true` commits what the
/// program wrote in `RAYFORGE_TUNE_CHECKPOINT_DIR` as the checkpoint of that
/// report (the directory is emptied for the next one); a restarted trial
/// finds its latest in `RAYFORGE_TUNE_RESTORE_FROM`. The program dies with
/// this worker (a stopped trial's worker is killed).
fn run_command(
    ctx: &mut TrialContext,
    argv: &[String],
    dir: &std::path::Path,
    cwd: &std::path::Path,
) -> std::result::Result<(), String> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let args: Vec<String> = argv
        .iter()
        .map(|a| fill(a, &ctx.config))
        .collect::<std::result::Result<_, _>>()?;
    let program = args.first().ok_or("the command is empty")?;
    let stderr_path = dir.join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).map_err(|e| format!("{}: {e}", stderr_path.display()))?;
    let scratch = dir.join(".checkpoint_scratch");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(&args[1..])
        .current_dir(cwd)
        .env(
            "RAYFORGE_TUNE_CONFIG",
            serde_json::to_string(&ctx.config).unwrap_or_default(),
        )
        .env("RAYFORGE_TUNE_TRIAL_DIR", dir)
        .env("RAYFORGE_TUNE_PARAMS_FILE", dir.join("params.json"))
        .env("RAYFORGE_TUNE_CHECKPOINT_DIR", &scratch)
        .env("RAYFORGE_TUNE_ITERATION", ctx.iteration.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(stderr);
    for (k, v) in &ctx.config {
        let name: String = k
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        cmd.env(format!("RAYFORGE_TUNE_PARAM_{name}"), v);
    }
    if let Some(c) = &ctx.restore {
        cmd.env("RAYFORGE_TUNE_RESTORE_FROM", c.path());
    }
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill
    // the child when this thread's process ends.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("starting `{program}`: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let log_path = dir.join("stdout.log");
    let mut log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    for line in std::io::BufReader::new(out).lines() {
        let line = line.map_err(|e| format!("reading the trial's output: {e}"))?;
        let _ = writeln!(log, "{line}");
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(&line) {
            let metrics: Vec<(String, f64)> = m
                .iter()
                .filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x)))
                .collect();
            let checkpoint = m.get("should_checkpoint").and_then(|v| v.as_bool()) == Some(true);
            if checkpoint {
                let w = take_scratch(&scratch).map_err(|e| e.to_string())?;
                ctx.report_checkpoint(metrics, w).map_err(|e| e.to_string())?;
            } else if !metrics.is_empty() {
                ctx.report(metrics).map_err(|e| e.to_string())?;
            }
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for `{program}`: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let tail: Vec<&str> = text
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(format!("`{program}` {status}; stderr ends with:\n{}", tail.join("\n")))
}

/// Moves the files an executable wrote into its checkpoint directory into
/// a checkpoint writer, leaving the directory empty for the next one.
fn take_scratch(scratch: &Path) -> Result<CheckpointWriter> {
    let w = CheckpointWriter::new()?;
    let entries = std::fs::read_dir(scratch).map_err(|e| Error::io(scratch, e))?;
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let to = w.file_path(&name)?;
        // A rename when the scratch directory and the writer's share a
        // file system, else a copy.
        if std::fs::rename(e.path(), &to).is_err() {
            std::fs::copy(e.path(), &to).map_err(|err| Error::io(&to, err))?;
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(w)
}

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
    /// Its latest checkpoint.
    pub checkpoint: Option<Checkpoint>,
    /// Its directory.
    pub path: PathBuf,
    /// The columns of its `progress.csv`.
    #[serde(skip)]
    csv_keys: Vec<String>,
}

impl TrialResult {
    fn new(trial: String, config: Config, dir: &Path) -> TrialResult {
        TrialResult {
            path: dir.join(&trial),
            trial,
            config,
            last: Metrics::new(),
            history: Vec::new(),
            status: TrialStatus::Pending,
            stopped_early: false,
            failures: 0,
            checkpoint: None,
            csv_keys: Vec::new(),
        }
    }

    /// Back to its checkpoint (or its start, without one): later reports
    /// are dropped (they will come again) and its files rewritten.
    fn rewind(&mut self) {
        let at = self
            .checkpoint
            .as_ref()
            .and_then(|c| c.manifest().ok())
            .map_or(0.0, |m| m.iteration as f64);
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
    metric: String,
    mode: Mode,
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

/// An experiment's settings.
#[derive(Debug, Clone)]
pub struct TuneConfig {
    /// The experiment's name: its directory under `storage_path`.
    pub name: String,
    /// Where experiments keep their directories.
    pub storage_path: PathBuf,
    /// The metric the best trial is chosen by.
    pub metric: String,
    /// Higher or lower is better.
    pub mode: Mode,
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
}

impl Default for TuneConfig {
    fn default() -> Self {
        TuneConfig {
            name: "tune".into(),
            storage_path: std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join("rayforge_results"))
                .unwrap_or_else(|| std::env::temp_dir().join("rayforge_results")),
            metric: "loss".into(),
            mode: Mode::Min,
            max_concurrent_trials: 4,
            cpus_per_trial: 1.0,
            gpus_per_trial: 0.0,
            worker_bundles: Vec::new(),
            placement_strategy: rayforge::PlacementStrategy::Pack,
            max_iterations: None,
            max_failures: 0,
            checkpoint: CheckpointConfig::default(),
            verbose: true,
            resume: false,
            resume_errored: false,
            restart_errored: false,
        }
    }
}

/// Runs a trainable over the configs of a searcher (as Ray's
/// `Tuner(trainable, param_space, tune_config).fit()`).
pub struct Tuner {
    tramp: FnRef<TrialTramp>,
    user: AnyFnRef,
    command: Option<Vec<String>>,
    searcher: Box<dyn Searcher>,
    scheduler: Box<dyn Scheduler>,
    stoppers: Vec<Box<dyn Stopper>>,
    config: TuneConfig,
}

impl std::fmt::Debug for Tuner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tuner").field("config", &self.config).finish()
    }
}

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
            tramp: FnRef::new(tramp),
            user: FnRef::new(trainable).erase(),
            command: None,
            searcher: Box::new(searcher),
            scheduler: Box::new(Fifo),
            stoppers: Vec::new(),
            config,
        }
    }

    /// A tuner running an executable per trial: `argv`'s `{name}` become
    /// the trial's parameters, which are also in the environment as
    /// `RAYFORGE_TUNE_CONFIG` (JSON, beside `RAYFORGE_TUNE_TRIAL_DIR`);
    /// each JSON object of numbers it prints on a line is a report; it is
    /// killed when the trial is stopped. It runs from this process's
    /// working directory.
    pub fn command(argv: Vec<String>, searcher: impl Searcher + 'static, config: TuneConfig) -> Tuner {
        fn none(_: &mut TrialContext) -> std::result::Result<(), String> {
            Err("an executable trial has no function".into())
        }
        let mut t = Tuner::new(none, searcher, config);
        t.command = Some(argv);
        t
    }

    /// Decides which trials go on after each result.
    pub fn scheduler(mut self, s: impl Scheduler + 'static) -> Tuner {
        self.scheduler = Box::new(s);
        self
    }

    /// Adds a stop criterion (any of them stops a trial, or the
    /// experiment).
    pub fn stopper(mut self, s: impl Stopper + 'static) -> Tuner {
        self.stoppers.push(Box::new(s));
        self
    }

    fn validate(&self) -> Result<()> {
        let c = &self.config;
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
        let n = &c.name;
        if self.command.as_ref().is_some_and(|c| c.is_empty()) {
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
    /// is appended to the experiment's `journal.jsonl`; with
    /// Publishes the experiment's status for the dashboard's Tune page
    /// (a failure to is logged, never fatal).
    fn publish(&self, trials: &[TrialResult], elapsed: Duration, done: bool) {
        let c = &self.config;
        let better = |a: f64, b: f64| match c.mode {
            Mode::Max => a > b,
            Mode::Min => a < b,
        };
        let mut best_trial: Option<&TrialResult> = None;
        for t in trials {
            if let Some(v) = t.last.get(&c.metric) {
                if best_trial
                    .and_then(|b| b.last.get(&c.metric))
                    .is_none_or(|bv| better(*v, *bv))
                {
                    best_trial = Some(t);
                }
            }
        }
        let status = serde_json::json!({
            "status": if done { "FINISHED" } else { "RUNNING" },
            "metric": c.metric,
            "mode": c.mode,
            "scheduler": self.scheduler.name(),
            "elapsed_s": (elapsed.as_secs_f64() * 10.0).round() / 10.0,
            "path": c.storage_path.join(&c.name),
            "best": best_trial.map(|t| serde_json::json!({
                "trial": t.trial, "config": t.config, c.metric.clone(): t.last.get(&c.metric),
            })),
            "trials": trials.iter().map(|t| serde_json::json!({
                "trial": t.trial,
                "status": t.status,
                "iterations": t.history.len(),
                c.metric.clone(): t.last.get(&c.metric),
                "failures": t.failures,
                "config": t.config,
            })).collect::<Vec<_>>(),
        });
        if let Err(e) = rayforge::state::publish("tune", &c.name, &status) {
            tracing::debug!("publishing the experiment for the dashboard: {e}");
        }
    }

    /// [`TuneConfig::resume`], an experiment whose driver died goes on from
    /// it (finished trials are not run again; the ones that were running go
    /// on from their latest checkpoint, or start over without one).
    pub fn fit(mut self) -> Result<ResultGrid> {
        self.validate()?;
        let dir = self.config.storage_path.join(&self.config.name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let journal_path = dir.join(JOURNAL);
        let shared = rayforge::storage::StorageUri::from(&dir)
            .open()
            .and_then(|s| s.shared_check())
            .map_err(|e| Error::Runtime(e.to_string()))?;
        let mut ex = Run {
            shared,
            trials: Vec::new(),
            running: BTreeMap::new(),
            restart: VecDeque::new(),
            journal: Journal::open(&journal_path, !self.config.resume)?,
            dir: dir.clone(),
            table: Table::new(),
            published: None,
        };
        if self.config.resume {
            self.replay(&journal_path, &mut ex)?;
            if self.config.verbose {
                println!(
                    "resuming {}: {} trials ended, {} to go on",
                    dir.display(),
                    ex.trials.len() - ex.restart.len(),
                    ex.restart.len()
                );
            }
        }
        let reports = rayforge::util::Queue::<TrialReport>::new(0).map_err(|e| Error::Runtime(e.to_string()))?;
        let mut exhausted = false;
        let start = Instant::now();
        let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
        loop {
            if self.stoppers.iter_mut().any(|s| s.stop_all()) {
                self.stop_everything(&mut ex)?;
                break;
            }
            // Paused trials the scheduler resumes or stops.
            if ex.trials.iter().any(|t| t.status == TrialStatus::Paused) {
                self.decide_paused(&mut ex, !exhausted)?;
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
                    ex.trials.push(TrialResult::new(name, config, &dir));
                    ex.trials.len() - 1
                } else {
                    break;
                };
                self.start_trial(&mut ex, i, &reports, &cwd)?;
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
                self.decide_paused(&mut ex, false)?;
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
                self.on_report(r, &mut ex)?;
            }
            // Trials that ended on their own.
            let pending: Vec<ObjectRef<()>> = ex.running.values().map(|r| r.done.clone()).collect();
            if let Ok((ready, _)) = rayforge::wait(&pending, pending.len(), Some(Duration::ZERO)) {
                for r in ready {
                    self.on_trial_end(&mut ex, r, &reports)?;
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
        }
        self.publish(&ex.trials, start.elapsed(), true);
        ex.shared.remove();
        let grid = ResultGrid {
            trials: std::mem::take(&mut ex.trials),
            metric: self.config.metric.clone(),
            mode: self.config.mode,
        };
        if let Err(e) = std::fs::write(dir.join("results.csv"), grid.to_csv()) {
            tracing::warn!("writing results.csv: {e}");
        }
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

/// An experiment in progress.
struct Run {
    trials: Vec<TrialResult>,
    running: BTreeMap<String, Running>,
    /// Trials to start again (from their latest checkpoint), first first.
    restart: VecDeque<usize>,
    journal: Journal,
    dir: PathBuf,
    /// The marker each trial's node reads back before it starts: the
    /// experiment's directory is a local path, which on a cluster every
    /// node running trials must share.
    shared: rayforge::storage::SharedCheck,
    table: Table,
    /// When the status was last published for the dashboard.
    published: Option<Instant>,
}

impl Run {
    fn index(&self, trial: &str) -> Option<usize> {
        self.trials.iter().position(|t| t.trial == trial)
    }
}

impl Tuner {
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
        if t.checkpoint.is_none() && t.history.is_empty() {
            // A trial starting from scratch starts its files over too.
            let _ = std::fs::remove_file(path.join("result.jsonl"));
            let _ = std::fs::remove_file(path.join("progress.csv"));
        }
        let c = &self.config;
        let mut o = TrialActor::options().num_cpus(c.cpus_per_trial);
        if c.gpus_per_trial > 0.0 {
            o = o.num_gpus(c.gpus_per_trial);
        }
        let placement_group = if c.worker_bundles.is_empty() {
            None
        } else {
            let mut head = BTreeMap::new();
            head.insert("CPU".to_string(), c.cpus_per_trial);
            if c.gpus_per_trial > 0.0 {
                head.insert("GPU".to_string(), c.gpus_per_trial);
            }
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
            dir: path,
            cwd: cwd.to_path_buf(),
            trial: t.trial.clone(),
            config: Json(t.config.clone()),
            reports: reports.clone(),
            restore: t.checkpoint.as_ref().map(|c| c.path().to_path_buf()),
            placement_group: placement_group.clone(),
            shared: ex.shared.clone(),
        });
        t.status = TrialStatus::Running;
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
        let status = match done.get() {
            Ok(()) => TrialStatus::Terminated,
            // The trainable's own message when it failed; the runtime's
            // account when its process died.
            Err(e) => TrialStatus::Error(e.user_error::<String>().unwrap_or_else(|| e.to_string())),
        };
        let Some(i) = ex.index(&name) else {
            return Ok(());
        };
        let t = &mut ex.trials[i];
        match status {
            TrialStatus::Error(e) if t.failures < self.config.max_failures => {
                t.failures += 1;
                if self.config.verbose {
                    ex.table.detach();
                    println!(
                        "{} failed ({e}); going on from {} ({} of {})",
                        t.trial,
                        t.checkpoint
                            .as_ref()
                            .map_or("the start".to_string(), |c| c.path().display().to_string()),
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
        let checkpoint = r.checkpoint.as_ref().and_then(|p| Checkpoint::open(p).ok());
        record(t, &r.metrics, checkpoint);
        if r.checkpoint.is_some() {
            if let Err(e) = self.config.checkpoint.prune(&t.path) {
                tracing::warn!("pruning the checkpoints of {}: {e}", t.trial);
            }
        }
        ex.journal.append(&Event::Result {
            trial: t.trial.clone(),
            metrics: r.metrics.clone(),
            checkpoint: r.checkpoint.clone(),
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
                    run.kill();
                }
                Ok(())
            }
            Decision::Exploit { from, config } => self.exploit(ex, i, &from, config),
        }
    }

    /// Stops a running trial: its process killed, its end recorded.
    fn stop(&mut self, ex: &mut Run, i: usize, status: TrialStatus, early: bool) -> Result<()> {
        if let Some(run) = ex.running.remove(&ex.trials[i].trial) {
            run.kill();
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
        let iteration = src.manifest()?.iteration;
        let copy = CheckpointWriter::copy_of(&src)?;
        let t = &mut ex.trials[i];
        if let Some(run) = ex.running.remove(&t.trial) {
            run.kill();
        }
        for c in checkpoint::list(&t.path) {
            std::fs::remove_dir_all(c.path()).map_err(|e| Error::io(c.path(), e))?;
        }
        let metrics = src.manifest()?.metrics;
        let c = copy.commit(&t.path, iteration, &metrics, WRITTEN_BY)?;
        rewrite_params(&t.path, &config)?;
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
            checkpoint: c.path().to_path_buf(),
        })?;
        self.scheduler.on_trial_add(&t.trial, &config);
        t.config = config;
        // Until it reports again, it stands where the checkpoint it took
        // stood.
        t.last = metrics;
        t.checkpoint = Some(c);
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
    fn replay(&mut self, path: &Path, ex: &mut Run) -> Result<()> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io(path, format!("no journal to resume from: {e}")))?;
        // A line cut short by a killed driver is the only one that may not
        // parse: it is dropped.
        let events: Vec<Event> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        for e in events {
            match e {
                Event::Suggested { trial, config } => {
                    let _ = self.searcher.suggest(&trial);
                    self.scheduler.on_trial_add(&trial, &config);
                    let mut t = TrialResult::new(trial, config, &ex.dir);
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
                    if let Some(c) = checkpoint.and_then(|p| Checkpoint::open(p).ok()) {
                        t.checkpoint = Some(c);
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
                    ..
                } => {
                    let Some(i) = ex.index(&trial) else { continue };
                    self.scheduler.on_trial_add(&trial, &config);
                    let t = &mut ex.trials[i];
                    t.config = config;
                    t.checkpoint = Checkpoint::open(&checkpoint).ok();
                    if let Some(m) = t.checkpoint.as_ref().and_then(|c| c.manifest().ok()) {
                        t.last = m.metrics;
                    }
                }
                Event::Reopened { trial, from_checkpoint } => {
                    let Some(i) = ex.index(&trial) else { continue };
                    reopen(&mut ex.trials[i], from_checkpoint);
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
                reopen(t, from_checkpoint);
            }
            if t.status == TrialStatus::Running {
                t.rewind();
                t.status = TrialStatus::Pending;
                ex.restart.push_back(i);
            }
        }
        Ok(())
    }
}

/// Writes a trial's `params.json`.
fn rewrite_params(dir: &Path, config: &Config) -> Result<()> {
    let params = serde_json::to_vec_pretty(config).map_err(|e| Error::Runtime(e.to_string()))?;
    std::fs::write(dir.join("params.json"), params).map_err(|e| Error::io(dir, e))
}

/// A failed trial made to run again: from its latest checkpoint, or from
/// scratch (its checkpoints and results dropped).
fn reopen(t: &mut TrialResult, from_checkpoint: bool) {
    if !from_checkpoint {
        for c in checkpoint::list(&t.path) {
            let _ = std::fs::remove_dir_all(c.path());
        }
        t.checkpoint = None;
        t.failures = 0;
    }
    t.rewind();
    t.stopped_early = false;
    t.status = TrialStatus::Running;
}

/// The experiment's journal, next to its trials' directories.
pub const JOURNAL: &str = "journal.jsonl";

/// One line of the journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    Suggested {
        trial: String,
        config: Config,
    },
    Result {
        trial: String,
        metrics: Metrics,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint: Option<PathBuf>,
    },
    Ended {
        trial: String,
        status: TrialStatus,
        stopped_early: bool,
    },
    /// It failed and goes on from its latest checkpoint (or the start);
    /// its later results are dropped.
    Retried {
        trial: String,
        error: String,
    },
    /// The scheduler paused it.
    Paused {
        trial: String,
    },
    /// It was resumed without the scheduler (nothing else could run).
    Unpaused {
        trial: String,
    },
    /// The scheduler decided about the paused trials.
    Decided {
        more_trials_coming: bool,
    },
    /// It took over `from`'s checkpoint with a new config (PBT).
    Exploited {
        trial: String,
        from: String,
        config: Config,
        checkpoint: PathBuf,
    },
    /// A failed trial runs again on a resume that asked for it.
    Reopened {
        trial: String,
        from_checkpoint: bool,
    },
}

/// The journal, appended a line per event (one `write` each, so a killed
/// driver leaves at most its last line cut short).
struct Journal {
    file: std::fs::File,
    path: PathBuf,
}

impl Journal {
    /// Opens the journal to append to; `fresh`: it must not hold an
    /// experiment yet.
    fn open(path: &Path, fresh: bool) -> Result<Journal> {
        if fresh && std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            let dir = path.parent().unwrap_or(path);
            return Err(Error::config(
                "name",
                None,
                format!(
                    "an experiment `{}` exists in {}: resume it (--resume) or choose another name",
                    dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
                    dir.display()
                ),
            ));
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Journal {
            file,
            path: path.to_path_buf(),
        })
    }

    fn append(&mut self, e: &Event) -> Result<()> {
        let mut line = serde_json::to_string(e).map_err(|e| Error::Runtime(e.to_string()))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Adds a report to a trial: its history, `result.jsonl`, `progress.csv`.
fn record(t: &mut TrialResult, metrics: &Metrics, checkpoint: Option<Checkpoint>) {
    t.history.push(metrics.clone());
    t.last = metrics.clone();
    if checkpoint.is_some() {
        t.checkpoint = checkpoint;
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
fn rewrite_files(t: &mut TrialResult) {
    if !t.path.exists() {
        return;
    }
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

/// The live status table: on a terminal it is redrawn in place (twice a
/// second at most); into a file or pipe a new copy is printed every few
/// seconds, so logs stay readable.
struct Table {
    terminal: bool,
    /// Lines drawn last time (to redraw over them).
    drawn: usize,
    last: Option<Instant>,
}

impl Table {
    fn new() -> Table {
        use std::io::IsTerminal;
        Table {
            terminal: std::io::stdout().is_terminal(),
            drawn: 0,
            last: None,
        }
    }

    /// Draws the table if its refresh interval has passed (`force`: now).
    fn show(&mut self, trials: &[TrialResult], c: &TuneConfig, scheduler: &str, elapsed: Duration, force: bool) {
        let every = if self.terminal {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        };
        if !force && self.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let lines = table_lines(trials, c, scheduler, elapsed);
        let mut out = String::new();
        if self.terminal && self.drawn > 0 {
            // Up over the last drawing, and clear from there down.
            out.push_str(&format!("\x1b[{}A\x1b[J", self.drawn));
        }
        for l in &lines {
            out.push_str(l);
            out.push('\n');
        }
        self.drawn = lines.len();
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }

    /// Other output is about to be printed: the next drawing starts below
    /// it instead of over it.
    fn detach(&mut self) {
        self.drawn = 0;
    }
}

/// The status table: counts by status and resources in use, then each
/// trial's status, parameters and latest metrics, best first.
fn table_lines(trials: &[TrialResult], c: &TuneConfig, scheduler: &str, elapsed: Duration) -> Vec<String> {
    let count = |f: &dyn Fn(&TrialStatus) -> bool| trials.iter().filter(|t| f(&t.status)).count();
    let running = count(&|s| *s == TrialStatus::Running);
    let worker_cpus: f64 = c.worker_bundles.iter().filter_map(|b| b.get("CPU")).sum();
    let mut lines = vec![format!(
        "== {:.0} s: {} running, {} pending, {} paused, {} terminated, {} errored | {} CPUs, {} GPUs in use | {scheduler} | {} by {:?}",
        elapsed.as_secs_f64(),
        running,
        count(&|s| *s == TrialStatus::Pending),
        count(&|s| *s == TrialStatus::Paused),
        count(&|s| *s == TrialStatus::Terminated),
        count(&|s| matches!(s, TrialStatus::Error(_))),
        running as f64 * (c.cpus_per_trial + worker_cpus),
        running as f64 * c.gpus_per_trial,
        c.metric,
        c.mode
    )];
    let mut rows: Vec<&TrialResult> = trials.iter().collect();
    rows.sort_by(|a, b| {
        let s = |t: &TrialResult| t.last.get(&c.metric).map(|v| c.mode.score(*v)).unwrap_or(f64::MIN);
        s(b).total_cmp(&s(a))
    });
    for t in rows.iter().take(20) {
        let status = match &t.status {
            TrialStatus::Error(_) => "ERROR".to_string(),
            TrialStatus::Terminated if t.stopped_early => "STOPPED".to_string(),
            s => format!("{s:?}").to_uppercase(),
        };
        // Up to two other metrics beside the experiment's.
        let others: Vec<String> = t
            .last
            .iter()
            .filter(|(k, _)| *k != &c.metric && k.as_str() != TRAINING_ITERATION)
            .take(2)
            .map(|(k, v)| format!("{k}={v:.4}"))
            .collect();
        lines.push(format!(
            "   {} {:<10} iter {:>4}  {} = {:<12} {} {}",
            t.trial,
            status,
            t.last.get(TRAINING_ITERATION).copied().unwrap_or(0.0),
            c.metric,
            t.last
                .get(&c.metric)
                .map(|v| format!("{v:.6}"))
                .unwrap_or_else(|| "-".into()),
            serde_json::to_string(&t.config).unwrap_or_default(),
            others.join(" ")
        ));
    }
    if rows.len() > 20 {
        lines.push(format!("   ... and {} more", rows.len() - 20));
    }
    lines
}
