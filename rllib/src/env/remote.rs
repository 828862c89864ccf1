//! Environments in another process: [`ProcessEnv`] steps a batch of N
//! environments that live in a child process, such as any Gymnasium
//! environment served by `rllib/python/gym_server.py`
//! ([`ProcessEnv::gymnasium`]). It is a [`BatchEnv`], so env runners
//! drive it as they drive a [`VectorEnv`](super::VectorEnv).
//!
//! # Protocol
//!
//! JSON lines: the parent writes one request a line on the child's stdin,
//! the child answers each with one reply a line on its stdout (anything
//! else it has to say goes to stderr). Every reply carries `"ok"`; a
//! refused request gets `{"ok": false, "error": "..."}` and the child goes
//! on serving.
//!
//! | request | reply (besides `"ok": true`) |
//! |---|---|
//! | `{"cmd": "spaces"}` | `"num_envs": N, "observation_space": SPACE, "action_space": SPACE` |
//! | `{"cmd": "reset", "seed": S}` | `"obs": [[f, ...], ...]` (N observations) |
//! | `{"cmd": "step", "actions": [A, ...]}` | `"obs"`, `"rewards"`, `"terminated"`, `"truncated"`, `"final_obs"` (N each) |
//! | `{"cmd": "close"}` | nothing; the child then exits |
//!
//! - `SPACE` is `{"type": "discrete", "n": n}`, `{"type": "box", "low":
//!   [...], "high": [...]}` (flattened; an infinite bound is `null`),
//!   `{"type": "multi_discrete", "nvec": [n, ...]}` or `{"type": "mixed",
//!   "nvec": [...], "low": [...], "high": [...]}`. `gym_server.py` serves
//!   any observation space other than a box flattened to one (Gymnasium's
//!   `flatten_space`: a discrete one one-hot, a `Dict` or `Tuple` the
//!   concatenation of its parts), a `MultiDiscrete`, `MultiBinary`, or
//!   `Tuple`/`Dict` of discrete spaces as actions as `multi_discrete`, and a
//!   `Tuple`/`Dict` that also holds boxes as `mixed`.
//! - `S` is an integer or `null`; environment `i` is reset with `S + i`.
//! - `A` is an integer for a discrete space, a list of numbers for a box, a
//!   list of integers for a multi-discrete space, `{"discrete": [...],
//!   "continuous": [...]}` for a mixed one.
//! - An environment whose episode ends at a step is reset in that step (as
//!   Gymnasium's `autoreset_mode=SAME_STEP`): its `obs` is the new
//!   episode's first and `final_obs` the ended one's last (else `null`).
//! - The child exits at the end of its input too.
//!
//! Every reply is awaited for at most a timeout (60 s unless set with
//! [`ProcessEnvBuilder::timeout`]). A child that dies, a reply that does
//! not parse, one that answers something else, or no reply in time is an
//! [`EnvError::Remote`] that says which and what the child last wrote on
//! stderr; after it the environment refuses further calls (its child may
//! be out of step), and dropping it kills the child.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::vector::{check_actions, BatchEnv, EpisodeTracker, VectorStep};
use super::{Action, EnvError, Space, Step};

/// `rllib/python/gym_server.py`, which [`ProcessEnv::gymnasium`] runs
/// with `python -c`: a deployed binary needs no copy of the file.
pub const GYM_SERVER_PY: &str = include_str!("../../python/gym_server.py");

/// How long a reply is awaited unless set otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How much of the child's stderr errors quote.
const STDERR_TAIL: usize = 2000;

/// How to start a [`ProcessEnv`].
#[derive(Debug)]
pub struct ProcessEnvBuilder {
    command: Command,
    timeout: Duration,
}

impl ProcessEnvBuilder {
    /// How long each reply (the first included: the child's start-up) is
    /// awaited.
    pub fn timeout(mut self, timeout: Duration) -> ProcessEnvBuilder {
        self.timeout = timeout;
        self
    }

    /// Starts the child and asks for its spaces.
    pub fn spawn(mut self) -> Result<ProcessEnv, EnvError> {
        let name = describe(&self.command);
        let mut child = self
            .command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| EnvError::Remote(format!("could not start {name}: {e}")))?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(EnvError::Remote(format!("{name} started without its pipes")));
        };
        let (requests, writer) = spawn_writer(stdin);
        let (replies, reader) = spawn_reader(stdout);
        let (stderr_tail, stderr_reader) = spawn_stderr_reader(stderr);
        let mut env = ProcessEnv {
            name,
            child,
            requests: Some(requests),
            replies,
            stderr_tail,
            writer: Some(writer),
            reader: Some(reader),
            stderr_reader: Some(stderr_reader),
            timeout: self.timeout,
            broken: None,
            num_envs: 0,
            observation_space: Space::Discrete(0),
            action_space: Space::Discrete(0),
            episodes: EpisodeTracker::new(0),
            started: false,
        };
        let spaces: SpacesReply = env.request("spaces", json!({"cmd": "spaces"}))?;
        env.num_envs = spaces.num_envs;
        env.observation_space = spaces.observation_space.into();
        env.action_space = spaces.action_space.into();
        env.episodes = EpisodeTracker::new(spaces.num_envs);
        Ok(env)
    }
}

/// A batch of environments in a child process, driven over the JSON-lines
/// protocol of this module's docs.
///
/// ```no_run
/// use rayforge_rllib::env::{Action, BatchEnv, ProcessEnv};
///
/// // Four Gymnasium Acrobots in a Python process.
/// let mut envs = ProcessEnv::gymnasium("python3", "Acrobot-v1", 4).spawn()?;
/// let obs = envs.reset(Some(0))?;
/// let step = envs.step(&vec![Action::Discrete(2); 4])?;
/// assert_eq!(step.steps.len(), 4);
/// # Ok::<(), rayforge_rllib::env::EnvError>(())
/// ```
pub struct ProcessEnv {
    /// The command, for messages.
    name: String,
    child: Child,
    /// Lines for the writer thread; dropped to close the child's stdin.
    requests: Option<Sender<String>>,
    /// The child's stdout, a line at a time; disconnected at its end.
    replies: Receiver<std::io::Result<String>>,
    stderr_tail: Arc<Mutex<VecDeque<u8>>>,
    /// The writer and the two readers: each ends when its pipe does.
    writer: Option<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
    stderr_reader: Option<JoinHandle<()>>,
    timeout: Duration,
    /// Why the environment refuses calls, after a failure.
    broken: Option<String>,
    num_envs: usize,
    observation_space: Space,
    action_space: Space,
    episodes: EpisodeTracker,
    started: bool,
}

impl std::fmt::Debug for ProcessEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessEnv")
            .field("command", &self.name)
            .field("pid", &self.child.id())
            .field("num_envs", &self.num_envs)
            .field("broken", &self.broken)
            .finish()
    }
}

impl ProcessEnv {
    /// A batch served by `command` (which must speak this module's
    /// protocol).
    pub fn builder(command: Command) -> ProcessEnvBuilder {
        ProcessEnvBuilder {
            command,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// `num_envs` copies of Gymnasium's `env_id`, served by
    /// [`GYM_SERVER_PY`] in `python` (which must have `gymnasium`).
    pub fn gymnasium(python: impl AsRef<OsStr>, env_id: &str, num_envs: usize) -> ProcessEnvBuilder {
        let mut command = Command::new(python);
        command
            .arg("-u")
            .arg("-c")
            .arg(GYM_SERVER_PY)
            .arg(env_id)
            .arg("--num-envs")
            .arg(num_envs.to_string());
        ProcessEnv::builder(command)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the child to close and waits for it to exit (killing it if it
    /// does not within the timeout).
    pub fn close(mut self) -> Result<(), EnvError> {
        let reply = self.request::<Value>("close", json!({"cmd": "close"})).map(|_| ());
        self.requests = None;
        self.reap(self.timeout);
        reply
    }

    /// Sends `request` and parses the reply as `T`, or says what went
    /// wrong (marking the environment broken when the child may be out of
    /// step with us).
    fn request<T: DeserializeOwned>(&mut self, cmd: &str, request: Value) -> Result<T, EnvError> {
        if let Some(why) = &self.broken {
            return Err(EnvError::Remote(format!(
                "{} cannot take `{cmd}`: it failed earlier ({why}); start a new one",
                self.name
            )));
        }
        match self.exchange(cmd, request) {
            Ok(reply) => Ok(reply),
            Err(Failure::Refused(why)) => Err(EnvError::Remote(format!("{} refused `{cmd}`: {why}", self.name))),
            Err(Failure::Broken(why)) => Err(self.break_with(why)),
        }
    }

    fn exchange<T: DeserializeOwned>(&mut self, cmd: &str, request: Value) -> Result<T, Failure> {
        let sent = self
            .requests
            .as_ref()
            .is_some_and(|tx| tx.send(request.to_string()).is_ok());
        if !sent {
            return Err(Failure::Broken(self.died(cmd)));
        }
        let line = match self.replies.recv_timeout(self.timeout) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(Failure::Broken(format!("reading its reply to `{cmd}` failed: {e}"))),
            Err(RecvTimeoutError::Disconnected) => return Err(Failure::Broken(self.died(cmd))),
            Err(RecvTimeoutError::Timeout) => {
                return Err(Failure::Broken(format!(
                    "no reply to `{cmd}` within {:?}{}",
                    self.timeout,
                    self.stderr_note()
                )))
            }
        };
        let malformed = |what: String| Failure::Broken(format!("its reply to `{cmd}` {what}: {}", excerpt(&line)));
        let reply: Value = serde_json::from_str(&line).map_err(|e| malformed(format!("is not JSON ({e})")))?;
        match reply.get("ok") {
            Some(Value::Bool(true)) => {
                serde_json::from_value(reply).map_err(|e| malformed(format!("is malformed ({e})")))
            }
            Some(Value::Bool(false)) => Err(Failure::Refused(
                reply
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
                    .to_string(),
            )),
            _ => Err(malformed("has no boolean \"ok\"".to_string())),
        }
    }

    /// Marks the environment broken for `why` and says so.
    fn break_with(&mut self, why: String) -> EnvError {
        let e = EnvError::Remote(format!("{}: {why}", self.name));
        self.broken = Some(why);
        e
    }

    /// What to say when the child's stdout ended: its exit status (waited
    /// for briefly) and the end of its stderr.
    fn died(&mut self, cmd: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(2);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break format!("exited ({status})"),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => break "closed its stdout".to_string(),
                Err(e) => break format!("cannot be waited for ({e})"),
            }
        };
        // Let the stderr reader drain the last lines.
        while self.stderr_reader.as_ref().is_some_and(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        format!("{status} before replying to `{cmd}`{}", self.stderr_note())
    }

    fn stderr_note(&self) -> String {
        let tail = match self.stderr_tail.lock() {
            Ok(t) => t.iter().copied().collect::<Vec<u8>>(),
            Err(poisoned) => poisoned.into_inner().iter().copied().collect(),
        };
        let text = String::from_utf8_lossy(&tail);
        let text = text.trim();
        if text.is_empty() {
            String::new()
        } else {
            format!("; its stderr ended with:\n{text}")
        }
    }

    /// Waits up to `grace` for the child to exit, then kills it; joins the
    /// threads that have ended (one blocked on a pipe that a grandchild
    /// keeps open ends with that grandchild).
    fn reap(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // The pipes close with the child: give the threads a moment to see it.
        let deadline = Instant::now() + Duration::from_millis(200);
        let running = |t: &Option<JoinHandle<()>>| t.as_ref().is_some_and(|t| !t.is_finished());
        while (running(&self.writer) || running(&self.reader) || running(&self.stderr_reader))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in [self.writer.take(), self.reader.take(), self.stderr_reader.take()] {
            if let Some(t) = t.filter(|t| t.is_finished()) {
                let _ = t.join();
            }
        }
    }
}

impl Drop for ProcessEnv {
    fn drop(&mut self) {
        if self.requests.is_some() && self.broken.is_none() {
            // Closing stdin ends the server's input: it exits on its own.
            self.requests = None;
            self.reap(Duration::from_secs(1));
        } else {
            self.requests = None;
            self.reap(Duration::ZERO);
        }
    }
}

impl BatchEnv for ProcessEnv {
    fn num_envs(&self) -> usize {
        self.num_envs
    }

    fn observation_space(&self) -> Space {
        self.observation_space.clone()
    }

    fn action_space(&self) -> Space {
        self.action_space.clone()
    }

    fn reset(&mut self, seed: Option<u64>) -> Result<Vec<Vec<f32>>, EnvError> {
        let reply: ResetReply = self.request("reset", json!({"cmd": "reset", "seed": seed}))?;
        if reply.obs.len() != self.num_envs {
            let what = format!(
                "its reply to `reset` has {} observations for {} envs",
                reply.obs.len(),
                self.num_envs
            );
            return Err(self.break_with(what));
        }
        self.episodes.reset();
        self.started = true;
        Ok(reply.obs)
    }

    fn step(&mut self, actions: &[Action]) -> Result<VectorStep, EnvError> {
        check_actions(actions, self.num_envs, &self.action_space)?;
        if !self.started {
            return Err(EnvError::NeedsReset("before reset"));
        }
        let wire: Vec<Value> = actions
            .iter()
            .map(|a| match a {
                Action::Discrete(i) => json!(i),
                Action::Continuous(v) => json!(v),
                Action::MultiDiscrete(v) => json!(v),
                Action::Mixed { discrete, continuous } => json!({"discrete": discrete, "continuous": continuous}),
            })
            .collect();
        let reply: StepReply = self.request("step", json!({"cmd": "step", "actions": wire}))?;
        let n = self.num_envs;
        let lengths = [
            reply.obs.len(),
            reply.rewards.len(),
            reply.terminated.len(),
            reply.truncated.len(),
            reply.final_obs.len(),
        ];
        if lengths.iter().any(|l| *l != n) {
            return Err(self.break_with(format!(
                "its reply to `step` has lists of lengths {lengths:?} for {n} envs"
            )));
        }
        let mut out = VectorStep {
            steps: Vec::with_capacity(n),
            final_obs: reply.final_obs,
            episodes: Vec::new(),
        };
        for (i, (((obs, reward), terminated), truncated)) in reply
            .obs
            .into_iter()
            .zip(reply.rewards)
            .zip(reply.terminated)
            .zip(reply.truncated)
            .enumerate()
        {
            let step = Step {
                obs,
                reward,
                terminated,
                truncated,
            };
            if (terminated || truncated) != out.final_obs[i].is_some() {
                let what = format!("its reply to `step` ends env {i}'s episode without a final_obs, or the reverse");
                return Err(self.break_with(what));
            }
            out.episodes.extend(self.episodes.record(i, &step));
            out.steps.push(step);
        }
        Ok(out)
    }
}

/// Why a request failed.
enum Failure {
    /// The child answered `"ok": false`: it is still in step.
    Refused(String),
    /// The child died, timed out or broke the protocol.
    Broken(String),
}

/// A space on the wire.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum WireSpace {
    Discrete {
        n: usize,
    },
    Box {
        low: Vec<Option<f32>>,
        high: Vec<Option<f32>>,
    },
    #[serde(rename = "multi_discrete")]
    MultiDiscrete {
        nvec: Vec<usize>,
    },
    Mixed {
        nvec: Vec<usize>,
        low: Vec<Option<f32>>,
        high: Vec<Option<f32>>,
    },
}

impl From<WireSpace> for Space {
    fn from(w: WireSpace) -> Space {
        match w {
            WireSpace::Discrete { n } => Space::Discrete(n),
            WireSpace::MultiDiscrete { nvec } => Space::MultiDiscrete(nvec),
            WireSpace::Box { low, high } => Space::Box {
                low: low.into_iter().map(|x| x.unwrap_or(f32::NEG_INFINITY)).collect(),
                high: high.into_iter().map(|x| x.unwrap_or(f32::INFINITY)).collect(),
            },
            WireSpace::Mixed { nvec, low, high } => Space::Mixed {
                discrete: nvec,
                low: low.into_iter().map(|x| x.unwrap_or(f32::NEG_INFINITY)).collect(),
                high: high.into_iter().map(|x| x.unwrap_or(f32::INFINITY)).collect(),
            },
        }
    }
}

#[derive(Debug, Deserialize)]
struct SpacesReply {
    num_envs: usize,
    observation_space: WireSpace,
    action_space: WireSpace,
}

#[derive(Debug, Deserialize)]
struct ResetReply {
    obs: Vec<Vec<f32>>,
}

#[derive(Debug, Deserialize)]
struct StepReply {
    obs: Vec<Vec<f32>>,
    rewards: Vec<f64>,
    terminated: Vec<bool>,
    truncated: Vec<bool>,
    final_obs: Vec<Option<Vec<f32>>>,
}

/// The command as a user would type it (the `-c` script elided).
fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    let mut skip = false;
    for a in command.get_args() {
        let a = a.to_string_lossy();
        words.push(if skip {
            "<script>".into()
        } else {
            a.clone().into_owned()
        });
        skip = a == "-c";
    }
    format!("`{}`", words.join(" "))
}

fn excerpt(line: &str) -> String {
    const MAX: usize = 200;
    match line.char_indices().nth(MAX) {
        Some((i, _)) => format!("`{}...`", &line[..i]),
        None => format!("`{line}`"),
    }
}

/// The thread that writes request lines into the child's stdin; it ends
/// (closing stdin) when the sender is dropped or the child stops reading.
fn spawn_writer(mut stdin: ChildStdin) -> (Sender<String>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<String>();
    let handle = std::thread::spawn(move || {
        for line in rx {
            if writeln!(stdin, "{line}").and_then(|_| stdin.flush()).is_err() {
                // The child is gone: the reader sees its stdout end.
                return;
            }
        }
    });
    (tx, handle)
}

/// The thread that reads the child's stdout a line at a time.
fn spawn_reader(stdout: impl Read + Send + 'static) -> (Receiver<std::io::Result<String>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let failed = line.is_err();
            if tx.send(line).is_err() || failed {
                return;
            }
        }
    });
    (rx, handle)
}

/// The thread that keeps the end of the child's stderr (for error
/// messages) and passes its lines to `tracing`.
fn spawn_stderr_reader(stderr: impl Read + Send + 'static) -> (Arc<Mutex<VecDeque<u8>>>, JoinHandle<()>) {
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
    let keep = tail.clone();
    let handle = std::thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            tracing::debug!(target: "rayforge_rllib::env::remote", "child stderr: {}", String::from_utf8_lossy(&line).trim_end());
            let mut t = match keep.lock() {
                Ok(t) => t,
                Err(poisoned) => poisoned.into_inner(),
            };
            t.extend(line.iter().copied());
            let excess = t.len().saturating_sub(STDERR_TAIL);
            t.drain(..excess);
            line.clear();
        }
    });
    (tail, handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> ProcessEnvBuilder {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        ProcessEnv::builder(c).timeout(Duration::from_secs(5))
    }

    const SPACES: &str = r#"{"ok":true,"num_envs":2,"observation_space":{"type":"box","low":[null,-1],"high":[null,1]},"action_space":{"type":"discrete","n":2}}"#;

    fn remote_error(r: Result<impl std::fmt::Debug, EnvError>) -> String {
        match r {
            Err(EnvError::Remote(m)) => m,
            other => panic!("expected a Remote error, got {other:?}"),
        }
    }

    #[test]
    fn a_child_that_dies_at_once_is_a_remote_error_with_its_status_and_stderr() {
        let m = remote_error(sh("echo 'gymnasium is not installed' >&2; exit 3").spawn());
        assert!(m.contains("exited (exit status: 3)"), "{m}");
        assert!(m.contains("before replying to `spaces`"), "{m}");
        assert!(m.contains("gymnasium is not installed"), "{m}");
        let m = remote_error(ProcessEnv::builder(Command::new("/nonexistent/python")).spawn());
        assert!(m.contains("could not start `/nonexistent/python`"), "{m}");
    }

    #[test]
    fn a_child_that_dies_mid_episode_is_a_remote_error_and_then_refused() {
        // Answers `spaces` and `reset`, then dies on the first step.
        let script =
            format!(r#"read l; echo '{SPACES}'; read l; echo '{{"ok":true,"obs":[[0,0],[1,1]]}}'; read l; exit 9"#);
        let mut env = sh(&script).spawn().unwrap();
        assert_eq!(env.num_envs(), 2);
        assert_eq!(
            env.observation_space(),
            Space::Box {
                low: vec![f32::NEG_INFINITY, -1.0],
                high: vec![f32::INFINITY, 1.0]
            }
        );
        assert_eq!(env.reset(Some(0)).unwrap(), vec![vec![0.0, 0.0], vec![1.0, 1.0]]);
        // Checked here, before anything is sent.
        assert_eq!(
            env.step(&[Action::Discrete(0)]),
            Err(EnvError::BatchSize { expected: 2, got: 1 })
        );
        let m = remote_error(env.step(&[Action::Discrete(0), Action::Discrete(1)]));
        assert!(m.contains("exited (exit status: 9) before replying to `step`"), "{m}");
        let m = remote_error(env.reset(None));
        assert!(m.contains("cannot take `reset`: it failed earlier"), "{m}");
    }

    #[test]
    fn a_malformed_or_wrong_sized_reply_is_a_remote_error() {
        let m = remote_error(sh("read l; echo 'Traceback (most recent call last):'; sleep 5").spawn());
        assert!(m.contains("reply to `spaces` is not JSON"), "{m}");
        assert!(m.contains("Traceback"), "{m}");
        let m = remote_error(sh(r#"read l; echo '{"ok":true,"num_envs":"two"}'; sleep 5"#).spawn());
        assert!(m.contains("reply to `spaces` is malformed"), "{m}");
        let script = format!(r#"read l; echo '{SPACES}'; read l; echo '{{"ok":true,"obs":[[0,0]]}}'; sleep 5"#);
        let mut env = sh(&script).spawn().unwrap();
        let m = remote_error(env.reset(None));
        assert!(m.contains("1 observations for 2 envs"), "{m}");
    }

    #[test]
    fn a_refusal_is_reported_and_the_child_keeps_serving() {
        let script = format!(
            r#"read l; echo '{SPACES}'; read l; echo '{{"ok":false,"error":"ValueError: bad seed"}}'; read l; echo '{{"ok":true,"obs":[[0,0],[1,1]]}}'; sleep 5"#
        );
        let mut env = sh(&script).spawn().unwrap();
        let m = remote_error(env.reset(Some(1)));
        assert!(m.contains("refused `reset`: ValueError: bad seed"), "{m}");
        assert!(env.reset(Some(1)).is_ok());
    }

    #[test]
    fn a_silent_child_times_out_instead_of_hanging() {
        let start = Instant::now();
        let m = remote_error(sh("sleep 30").timeout(Duration::from_millis(300)).spawn());
        assert!(m.contains("no reply to `spaces` within 300ms"), "{m}");
        // Dropping it killed the child rather than waiting for it.
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
