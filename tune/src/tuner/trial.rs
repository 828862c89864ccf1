//! A trial's side: the [`TrialContext`] its function sees, the actor that
//! runs it (a Rust function, or an executable whose JSON lines are its
//! reports), and the sync of its directory to the experiment's storage.
//!
//! A trial writes where it runs: its directory is the experiment's own when
//! that is a local path every node shares, else a scratch directory on its
//! node whose files (logs, `params.json`, anything the trainable writes)
//! are uploaded to the trial's directory in storage every few seconds and
//! when it ends. Checkpoints are committed straight into storage.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rayforge::checkpoint::{Checkpoint, CheckpointDir, CheckpointWriter};
use rayforge::storage::{SharedCheck, Storage};
use rayforge::{AnyFnRef, FnRef, Json, PlacementGroup};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schedulers::Metrics;
use crate::space::Config;

/// What a trial's checkpoint manifest says wrote it.
pub(crate) const WRITTEN_BY: &str = concat!("rayforge-tune ", env!("CARGO_PKG_VERSION"));

/// The metric every report carries: the number of the report (1, 2, ...).
pub const TRAINING_ITERATION: &str = "training_iteration";

/// How often a trial's directory is uploaded to remote storage while it
/// runs (and once more when it ends).
const SYNC_EVERY: Duration = Duration::from_secs(3);

/// What a trial's function sees: its config, the checkpoint to go on from,
/// and `report`.
pub struct TrialContext {
    trial: String,
    config: Config,
    iteration: u64,
    reports: rayforge::util::Queue<TrialReport>,
    dir: PathBuf,
    checkpoints: CheckpointDir,
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

    /// The trial's directory on the node it runs on: the experiment's
    /// own (`{storage}/{experiment}/{trial}`) when its storage is a shared
    /// path, else a scratch directory whose files are uploaded to the
    /// trial's directory in storage while it runs and when it ends.
    pub fn trial_dir(&self) -> &Path {
        &self.dir
    }

    /// The trial's directory in the experiment's storage (where its
    /// checkpoints are committed and its files synced).
    pub fn storage(&self) -> &Storage {
        self.checkpoints.storage()
    }

    /// The checkpoint to go on from: the trial's latest, when it restarts
    /// after a failure, a pause or a resumed experiment, or the one it took
    /// over from a better trial (PBT). The next report's iteration follows
    /// the checkpoint's.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.restore.as_ref()
    }

    /// The placement group the trial holds when it runs a gang
    /// ([`crate::TuneConfig::worker_bundles`]): the trial's own process is in
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
    /// the trial's directory in storage as `checkpoint_NNNNNN` first (a
    /// trial that restarts, on whichever node, goes on from its latest).
    pub fn report_checkpoint<K: Into<String>>(
        &mut self,
        metrics: impl IntoIterator<Item = (K, f64)>,
        checkpoint: CheckpointWriter,
    ) -> Result<()> {
        self.report_inner(metrics, Some(checkpoint))
    }

    /// Reports this iteration's metrics with a copy of a checkpoint that
    /// already exists (another run's: a Train run's report, say), fetched to
    /// this node first, or without one. How a trial passes on the reports of
    /// a run it drives (`Trainer::fit_with`).
    pub fn report_copy<K: Into<String>>(
        &mut self,
        metrics: impl IntoIterator<Item = (K, f64)>,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<()> {
        let copy = checkpoint
            .map(|c| c.to_local().and_then(|c| CheckpointWriter::copy_of(&c)))
            .transpose()?;
        self.report_inner(metrics, copy)
    }

    fn report_inner<K: Into<String>>(
        &mut self,
        metrics: impl IntoIterator<Item = (K, f64)>,
        checkpoint: Option<CheckpointWriter>,
    ) -> Result<()> {
        let mut m: Metrics = metrics.into_iter().map(|(k, v)| (k.into(), v)).collect();
        m.insert(TRAINING_ITERATION.into(), (self.iteration + 1) as f64);
        let checkpoint = match checkpoint {
            Some(w) => Some(self.checkpoints.commit(w, self.iteration + 1, &m, WRITTEN_BY)?),
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

/// One report, on its way from the trial to the driver.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct TrialReport {
    pub(crate) trial: String,
    pub(crate) metrics: Metrics,
    /// The checkpoint committed with it.
    pub(crate) checkpoint: Option<Checkpoint>,
}

/// Calls the user's trainable (of a type only this trampoline knows).
pub(crate) type TrialTramp = fn(&mut TrialContext, AnyFnRef) -> std::result::Result<(), String>;

pub(crate) fn t_trial<E: std::fmt::Display + 'static>(
    ctx: &mut TrialContext,
    user: AnyFnRef,
) -> std::result::Result<(), String> {
    let f = user
        .typed::<fn(&mut TrialContext) -> std::result::Result<(), E>>()
        .and_then(|f| f.get())
        .map_err(|e| e.to_string())?;
    f(ctx).map_err(|e| e.to_string())
}

/// What a trial's actor is given to run.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct TrialSpec {
    pub(crate) tramp: FnRef<TrialTramp>,
    pub(crate) user: AnyFnRef,
    /// An executable trainable instead of the function.
    pub(crate) command: Option<Vec<String>>,
    /// The trial's directory in the experiment's storage.
    pub(crate) storage: Storage,
    /// Where the command runs from.
    pub(crate) cwd: PathBuf,
    pub(crate) trial: String,
    pub(crate) config: Json<Config>,
    pub(crate) reports: rayforge::util::Queue<TrialReport>,
    /// The checkpoint to go on from.
    pub(crate) restore: Option<Checkpoint>,
    pub(crate) placement_group: Option<PlacementGroup>,
    /// For storage on a local path: the driver's marker in the
    /// experiment's directory, read back before the trial starts (a node
    /// that cannot see it fails the trial, named).
    pub(crate) shared: Option<SharedCheck>,
}

/// One trial's process.
#[rayforge::actor]
pub(crate) struct TrialActor;

#[rayforge::actor]
impl TrialActor {
    fn new() -> Self {
        TrialActor
    }

    /// Runs the trial's function to its end, its directory synced to
    /// storage while it runs and once more when it ends.
    fn run(&mut self, spec: TrialSpec) -> std::result::Result<(), String> {
        if let Some(shared) = &spec.shared {
            // Otherwise the trial would write its files on this node's own
            // disk, where the driver never finds them.
            shared.verify().map_err(|e| e.to_string())?;
        }
        let dir = match spec.storage.local_path() {
            Some(p) => p.to_path_buf(),
            None => {
                // What an earlier attempt on this node left is in storage
                // already.
                let d = local_dir("tune", &spec.storage);
                let _ = std::fs::remove_dir_all(&d);
                d
            }
        };
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let params = serde_json::to_vec_pretty(&spec.config.0).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("params.json"), params).map_err(|e| format!("{}: {e}", dir.display()))?;
        // A restored checkpoint's files come to this node first.
        let restore = match &spec.restore {
            Some(c) => Some(c.to_local().map_err(|e| e.to_string())?),
            None => None,
        };
        let iteration = match &restore {
            Some(c) => c.manifest().map_err(|e| e.to_string())?.iteration,
            None => 0,
        };
        let syncer = (spec.storage.local_path().is_none()).then(|| Syncer::start(dir.clone(), spec.storage.clone()));
        let mut ctx = TrialContext {
            trial: spec.trial,
            config: spec.config.0,
            iteration,
            reports: spec.reports,
            dir: dir.clone(),
            checkpoints: CheckpointDir::new(spec.storage.clone()),
            restore,
            placement_group: spec.placement_group,
        };
        let result = match &spec.command {
            Some(argv) => run_command(&mut ctx, argv, &dir, &spec.cwd),
            None => match spec.tramp.get() {
                Err(e) => Err(e.to_string()),
                Ok(tramp) => {
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
            },
        };
        if let Some(s) = syncer {
            if let Err(e) = s.finish() {
                // The trial's result stands; its logs may be short.
                tracing::warn!("syncing the directory of {}: {e}", ctx.trial);
            }
        }
        result
    }
}

/// This node's directory for files of remote `storage` (a trial's
/// scratch, `kind` "tune"; a driver's mirror, "tune-driver"), in the
/// storage cache.
pub(crate) fn local_dir(kind: &str, storage: &Storage) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    storage.uri().hash(&mut h);
    let name = storage.uri().rsplit('/').next().unwrap_or("dir").to_string();
    rayforge::storage::cache_dir()
        .join(kind)
        .join(format!("{:016x}-{name}", h.finish()))
}

/// Uploads the files of a trial's scratch directory that changed since
/// the last upload, every [`SYNC_EVERY`] on a thread of its own.
struct Syncer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<DirSync>,
}

impl Syncer {
    fn start(dir: PathBuf, storage: Storage) -> Syncer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut sync = DirSync {
                dir,
                storage,
                sent: HashMap::new(),
            };
            let mut next = std::time::Instant::now() + SYNC_EVERY;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if std::time::Instant::now() >= next {
                    if let Err(e) = sync.sync() {
                        tracing::warn!("syncing {}: {e}", sync.dir.display());
                    }
                    next = std::time::Instant::now() + SYNC_EVERY;
                }
            }
            sync
        });
        Syncer { stop, thread }
    }

    /// Stops the thread and uploads what changed since its last pass.
    fn finish(self) -> rayforge::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(mut sync) => sync.sync(),
            Err(_) => Ok(()),
        }
    }
}

/// A directory mirrored into storage: each file whose size or
/// modification time changed since it was last sent is uploaded.
pub(crate) struct DirSync {
    pub(crate) dir: PathBuf,
    pub(crate) storage: Storage,
    pub(crate) sent: HashMap<PathBuf, (u64, SystemTime)>,
}

impl DirSync {
    /// Uploads what changed (skipping the executable's checkpoint scratch).
    pub(crate) fn sync(&mut self) -> rayforge::Result<()> {
        let mut todo = vec![self.dir.clone()];
        while let Some(d) = todo.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else { continue };
            for e in entries.flatten() {
                let path = e.path();
                let Ok(meta) = e.metadata() else { continue };
                if meta.is_dir() {
                    if e.file_name() != SCRATCH {
                        todo.push(path);
                    }
                    continue;
                }
                let stamp = (meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
                if self.sent.get(&path) == Some(&stamp) {
                    continue;
                }
                let Ok(rel) = path.strip_prefix(&self.dir) else {
                    continue;
                };
                let key = rel.to_string_lossy().replace('\\', "/");
                self.storage.put_file(&key, &path)?;
                self.sent.insert(path, stamp);
            }
        }
        Ok(())
    }
}

/// Where an executable writes the files of its next checkpoint, inside
/// its trial's directory.
const SCRATCH: &str = ".checkpoint_scratch";

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
/// report (the directory is emptied for the next one: its files are taken
/// when the line is read, so the program must not write the next
/// checkpoint there before its step's work is done); a line with
/// `"checkpoint_dir": "path"` commits the files of a directory of the
/// program's own (relative to the trial's directory, or absolute), one per
/// report, which is race-free whatever the program's pace. A restarted
/// trial finds its latest checkpoint in `RAYFORGE_TUNE_RESTORE_FROM`. The
/// program dies with this worker (a stopped trial's worker is killed).
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
    let scratch = dir.join(SCRATCH);
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    // The driver's working directory, where this node has it (the same
    // image, a shared volume); else the trial's directory.
    let cwd = if cwd.is_dir() { cwd } else { dir };
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
    // A group of its own, and a cgroup where one can be made, ended with
    // this trial however it ends (returns, fails, or its worker is killed
    // when the trial is stopped): a wrapper script's grandchildren end
    // too, and daemons that left the group with `setsid`.
    cmd.process_group(0);
    let cgroup = rayforge::util::Cgroup::create(&format!(
        "rayforge-trial-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    if let Some(c) = &cgroup {
        c.enter_on_spawn(&mut cmd);
    }
    let mut child = cmd.spawn().map_err(|e| format!("starting `{program}`: {e}"))?;
    let _group = rayforge::util::GroupGuard::with_cgroup(child.id(), cgroup).map_err(|e| e.to_string())?;
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
            if let Some(named) = m.get("checkpoint_dir").and_then(|v| v.as_str()) {
                let from = dir.join(named);
                let w = take_scratch(&from).map_err(|e| e.to_string())?;
                let _ = std::fs::remove_dir(&from);
                ctx.report_checkpoint(metrics, w).map_err(|e| e.to_string())?;
            } else if checkpoint {
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
pub(crate) fn take_scratch(scratch: &Path) -> Result<CheckpointWriter> {
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
