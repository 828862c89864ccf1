//! Running an experiment: trials as actors (each holding its resources),
//! at most `max_concurrent_trials` at once, configs from a [`Searcher`],
//! every result shown to a [`Scheduler`] (a trial it stops is killed),
//! results written under `{storage}/{name}/{trial}/` (`params.json`,
//! `result.jsonl`, `progress.csv`), a status table while it runs, and a
//! [`ResultGrid`] at the end.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rayforge::{AnyFnRef, FnRef, Json, ObjectRef};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schedulers::{Decision, Fifo, Metrics, Mode, Scheduler};
use crate::searchers::Searcher;
use crate::space::Config;

/// The metric every report carries: the number of the report (1, 2, ...).
pub const TRAINING_ITERATION: &str = "training_iteration";

/// What a trial's function sees: its config, and `report`.
pub struct TrialContext {
    trial: String,
    config: Config,
    iteration: u64,
    reports: rayforge::util::Queue<TrialReport>,
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
        self.iteration += 1;
        let mut m: Metrics = metrics.into_iter().map(|(k, v)| (k.into(), v)).collect();
        m.insert(TRAINING_ITERATION.into(), self.iteration as f64);
        self.reports
            .put(TrialReport {
                trial: self.trial.clone(),
                metrics: m,
            })
            .map_err(|e| Error::Runtime(e.to_string()))
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct TrialReport {
    trial: String,
    metrics: Metrics,
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
        let mut ctx = TrialContext {
            trial: spec.trial,
            config: spec.config.0,
            iteration: 0,
            reports: spec.reports,
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
/// environment), every JSON object of numbers it prints on a line of
/// stdout reported, the rest kept in `stdout.log`; stderr in `stderr.log`.
/// The program dies with this worker (a stopped trial's worker is killed).
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
    let mut cmd = std::process::Command::new(program);
    cmd.args(&args[1..])
        .current_dir(cwd)
        .env(
            "RAYFORGE_TUNE_CONFIG",
            serde_json::to_string(&ctx.config).unwrap_or_default(),
        )
        .env("RAYFORGE_TUNE_TRIAL_DIR", dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(stderr);
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
            if !metrics.is_empty() {
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

/// How a trial ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrialStatus {
    /// Waiting for resources.
    Pending,
    /// Running.
    Running,
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
    /// Its directory.
    pub path: PathBuf,
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
    /// Stop every trial after this many reports.
    pub max_iterations: Option<u64>,
    /// A trial that fails starts over (from the beginning) up to this many
    /// times (default 0).
    pub max_failures: u32,
    /// Print the status table while it runs (default on).
    pub verbose: bool,
    /// Go on with the experiment of this name from its journal.
    pub resume: bool,
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
            max_iterations: None,
            max_failures: 0,
            verbose: true,
            resume: false,
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
    /// [`TuneConfig::resume`], an experiment whose driver died goes on from
    /// it (finished trials are not run again; the ones that were running
    /// start over).
    pub fn fit(mut self) -> Result<ResultGrid> {
        self.validate()?;
        let dir = self.config.storage_path.join(&self.config.name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let journal_path = dir.join(JOURNAL);
        let mut trials: Vec<TrialResult> = Vec::new();
        let mut restart: std::collections::VecDeque<usize> = Default::default();
        let journaled = std::fs::metadata(&journal_path).is_ok_and(|m| m.len() > 0);
        if self.config.resume {
            self.replay(&journal_path, &dir, &mut trials, &mut restart)?;
            if self.config.verbose {
                println!(
                    "resuming {}: {} trials ended, {} to start over",
                    dir.display(),
                    trials.len() - restart.len(),
                    restart.len()
                );
            }
        } else if journaled {
            return Err(Error::config(
                "name",
                None,
                format!(
                    "an experiment `{}` exists in {}: resume it (--resume) or choose another name",
                    self.config.name,
                    dir.display()
                ),
            ));
        }
        let mut journal = Journal::open(&journal_path)?;
        let reports = rayforge::util::Queue::<TrialReport>::new(0).map_err(|e| Error::Runtime(e.to_string()))?;
        let mut running: BTreeMap<String, Running> = BTreeMap::new();
        let mut exhausted = false;
        let start = Instant::now();
        let mut last_table = Instant::now();
        let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
        loop {
            // Start trials while there is room: those to start over first,
            // then new configs.
            while running.len() < self.config.max_concurrent_trials {
                let i = if let Some(i) = restart.pop_front() {
                    i
                } else if !exhausted {
                    let name = format!("trial_{:05}", trials.len());
                    let Some(config) = self.searcher.suggest(&name) else {
                        exhausted = true;
                        break;
                    };
                    journal.append(&Event::Suggested {
                        trial: name.clone(),
                        config: config.clone(),
                    })?;
                    trials.push(TrialResult {
                        path: dir.join(&name),
                        trial: name,
                        config,
                        last: Metrics::new(),
                        history: Vec::new(),
                        status: TrialStatus::Pending,
                        stopped_early: false,
                        failures: 0,
                    });
                    trials.len() - 1
                } else {
                    break;
                };
                let t = &mut trials[i];
                let path = t.path.clone();
                std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
                let params = serde_json::to_vec_pretty(&t.config).map_err(|e| Error::Runtime(e.to_string()))?;
                std::fs::write(path.join("params.json"), params).map_err(|e| Error::io(&path, e))?;
                // A trial starting over starts its files over too.
                let _ = std::fs::remove_file(path.join("result.jsonl"));
                let _ = std::fs::remove_file(path.join("progress.csv"));
                let mut o = TrialActor::options().num_cpus(self.config.cpus_per_trial);
                if self.config.gpus_per_trial > 0.0 {
                    o = o.num_gpus(self.config.gpus_per_trial);
                }
                let actor = o.remote().map_err(|e| Error::Runtime(e.to_string()))?;
                let done = actor.run(TrialSpec {
                    tramp: self.tramp,
                    user: self.user,
                    command: self.command.clone(),
                    dir: path.clone(),
                    cwd: cwd.clone(),
                    trial: t.trial.clone(),
                    config: Json(t.config.clone()),
                    reports: reports.clone(),
                });
                t.status = TrialStatus::Running;
                running.insert(t.trial.clone(), Running { actor, done });
            }
            if running.is_empty() {
                break;
            }
            // Results as they come.
            while let Ok(r) = reports.get_timeout(Duration::from_millis(20)) {
                self.on_report(r, &mut trials, &mut running, &mut journal)?;
            }
            // Trials that ended on their own.
            let pending: Vec<ObjectRef<()>> = running.values().map(|r| r.done.clone()).collect();
            if let Ok((ready, _)) = rayforge::wait(&pending, pending.len(), Some(Duration::ZERO)) {
                for r in ready {
                    let Some(name) = running.iter().find(|(_, x)| x.done == r).map(|(n, _)| n.clone()) else {
                        continue;
                    };
                    // Reports it sent before its end are queued: take them first.
                    while let Ok(rep) = reports.get_timeout(Duration::from_millis(1)) {
                        self.on_report(rep, &mut trials, &mut running, &mut journal)?;
                    }
                    let Some(run) = running.remove(&name) else {
                        continue; // one of those reports stopped it
                    };
                    // Its process is not needed any more.
                    let _ = rayforge::kill(&run.actor);
                    let status = match r.get() {
                        Ok(()) => TrialStatus::Terminated,
                        // The trainable's own message when it failed; the
                        // runtime's account when its process died.
                        Err(e) => TrialStatus::Error(e.user_error::<String>().unwrap_or_else(|| e.to_string())),
                    };
                    let Some(i) = trials.iter().position(|t| t.trial == name) else {
                        continue;
                    };
                    let t = &mut trials[i];
                    match status {
                        TrialStatus::Error(e) if t.failures < self.config.max_failures => {
                            t.failures += 1;
                            if self.config.verbose {
                                println!(
                                    "{} failed ({e}); starting it over ({} of {})",
                                    t.trial, t.failures, self.config.max_failures
                                );
                            }
                            journal.append(&Event::Retried {
                                trial: t.trial.clone(),
                                error: e,
                            })?;
                            t.history.clear();
                            t.last.clear();
                            t.status = TrialStatus::Pending;
                            restart.push_front(i);
                        }
                        status => self.end(t, status, false, &mut journal)?,
                    }
                }
            }
            if self.config.verbose && last_table.elapsed() > Duration::from_secs(2) {
                print_table(&trials, &self.config, start.elapsed());
                last_table = Instant::now();
            }
        }
        let grid = ResultGrid {
            trials,
            metric: self.config.metric.clone(),
            mode: self.config.mode,
        };
        if self.config.verbose {
            print_table(&grid.trials, &self.config, start.elapsed());
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

impl Tuner {
    /// A trial's report: recorded, journaled, shown to the scheduler; the
    /// trial is stopped (its process killed) when the scheduler or a stop
    /// criterion says so.
    fn on_report(
        &mut self,
        r: TrialReport,
        trials: &mut [TrialResult],
        running: &mut BTreeMap<String, Running>,
        journal: &mut Journal,
    ) -> Result<()> {
        let Some(t) = trials.iter_mut().find(|t| t.trial == r.trial) else {
            return Ok(());
        };
        if t.status != TrialStatus::Running {
            return Ok(()); // stopped already; a report was in flight
        }
        record(t, &r.metrics);
        journal.append(&Event::Result {
            trial: t.trial.clone(),
            metrics: r.metrics.clone(),
        })?;
        let iteration = r.metrics.get(TRAINING_ITERATION).copied().unwrap_or(0.0);
        let hit_limit = self.config.max_iterations.is_some_and(|m| iteration >= m as f64);
        let decision = self.scheduler.on_result(&t.trial, &r.metrics);
        if hit_limit || decision != Decision::Continue {
            if let Some(run) = running.remove(&t.trial) {
                let _ = rayforge::kill(&run.actor);
            }
            self.end(t, TrialStatus::Terminated, decision == Decision::Stop, journal)?;
        }
        Ok(())
    }

    /// A trial ended: its status, the journal, the scheduler and searcher told.
    fn end(&mut self, t: &mut TrialResult, status: TrialStatus, early: bool, journal: &mut Journal) -> Result<()> {
        t.status = status;
        t.stopped_early = early;
        journal.append(&Event::Ended {
            trial: t.trial.clone(),
            status: t.status.clone(),
            stopped_early: early,
        })?;
        self.scheduler.on_trial_complete(&t.trial);
        self.searcher
            .on_trial_complete(&t.trial, t.last.get(&self.config.metric).copied());
        Ok(())
    }

    /// Rebuilds an experiment from its journal: the searcher and scheduler
    /// see again what they saw, in order; trials that had not ended are
    /// queued to start over.
    fn replay(
        &mut self,
        path: &std::path::Path,
        dir: &std::path::Path,
        trials: &mut Vec<TrialResult>,
        restart: &mut std::collections::VecDeque<usize>,
    ) -> Result<()> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io(path, format!("no journal to resume from: {e}")))?;
        // A line cut short by a killed driver is the only one that may not
        // parse: it is dropped.
        let events: Vec<Event> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let ended: std::collections::BTreeSet<&str> = events
            .iter()
            .filter_map(|e| match e {
                Event::Ended { trial, .. } => Some(trial.as_str()),
                _ => None,
            })
            .collect();
        for e in &events {
            match e {
                Event::Suggested { trial, config } => {
                    let _ = self.searcher.suggest(trial);
                    trials.push(TrialResult {
                        trial: trial.clone(),
                        config: config.clone(),
                        last: Metrics::new(),
                        history: Vec::new(),
                        status: TrialStatus::Pending,
                        stopped_early: false,
                        failures: 0,
                        path: dir.join(trial),
                    });
                }
                Event::Result { trial, metrics } if ended.contains(trial.as_str()) => {
                    if let Some(t) = trials.iter_mut().find(|t| &t.trial == trial) {
                        t.history.push(metrics.clone());
                        t.last = metrics.clone();
                    }
                    let _ = self.scheduler.on_result(trial, metrics);
                }
                Event::Result { .. } => {}
                Event::Retried { trial, .. } => {
                    if let Some(t) = trials.iter_mut().find(|t| &t.trial == trial) {
                        t.failures += 1;
                        t.history.clear();
                        t.last.clear();
                    }
                }
                Event::Ended {
                    trial,
                    status,
                    stopped_early,
                } => {
                    if let Some(t) = trials.iter_mut().find(|t| &t.trial == trial) {
                        t.status = status.clone();
                        t.stopped_early = *stopped_early;
                        self.scheduler.on_trial_complete(trial);
                        self.searcher
                            .on_trial_complete(trial, t.last.get(&self.config.metric).copied());
                    }
                }
            }
        }
        for (i, t) in trials.iter().enumerate() {
            if t.status == TrialStatus::Pending {
                restart.push_back(i);
            }
        }
        Ok(())
    }
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
    },
    Ended {
        trial: String,
        status: TrialStatus,
        stopped_early: bool,
    },
    /// It failed and starts over (its results so far are dropped).
    Retried {
        trial: String,
        error: String,
    },
}

/// The journal, appended a line per event (one `write` each, so a killed
/// driver leaves at most its last line cut short).
struct Journal {
    file: std::fs::File,
    path: PathBuf,
}

impl Journal {
    fn open(path: &std::path::Path) -> Result<Journal> {
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
fn record(t: &mut TrialResult, metrics: &Metrics) {
    t.history.push(metrics.clone());
    t.last = metrics.clone();
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
    let mut keys: Vec<&String> = Vec::new();
    for m in &t.history {
        for k in m.keys() {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let mut csv = keys.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(",");
    csv.push('\n');
    for m in &t.history {
        let row: Vec<String> = keys
            .iter()
            .map(|k| m.get(*k).map(|v| v.to_string()).unwrap_or_default())
            .collect();
        csv.push_str(&row.join(","));
        csv.push('\n');
    }
    if let Err(e) = std::fs::write(t.path.join("progress.csv"), csv) {
        tracing::warn!("writing progress.csv of {}: {e}", t.trial);
    }
}

/// The status table: counts by status, then each trial's parameters and
/// latest metric, best first.
fn print_table(trials: &[TrialResult], c: &TuneConfig, elapsed: Duration) {
    let count = |f: &dyn Fn(&TrialStatus) -> bool| trials.iter().filter(|t| f(&t.status)).count();
    let running = count(&|s| *s == TrialStatus::Running);
    println!(
        "== {:.0} s: {} running, {} terminated, {} errored | {} CPUs in use | {} by {:?}",
        elapsed.as_secs_f64(),
        running,
        count(&|s| *s == TrialStatus::Terminated),
        count(&|s| matches!(s, TrialStatus::Error(_))),
        running as f64 * c.cpus_per_trial,
        c.metric,
        c.mode
    );
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
        println!(
            "   {} {:<10} iter {:>4}  {} = {:<12} {}",
            t.trial,
            status,
            t.last.get(TRAINING_ITERATION).copied().unwrap_or(0.0),
            c.metric,
            t.last
                .get(&c.metric)
                .map(|v| format!("{v:.6}"))
                .unwrap_or_else(|| "-".into()),
            serde_json::to_string(&t.config).unwrap_or_default()
        );
    }
    if rows.len() > 20 {
        println!("   ... and {} more", rows.len() - 20);
    }
    let _ = std::io::stdout().flush();
}
