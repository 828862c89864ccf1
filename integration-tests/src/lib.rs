//! Shared helpers for rayforge's cross-process tests: starting the embedded
//! cluster once per test process and waiting on conditions with generous
//! deadlines (never fixed sleeps).

use std::sync::Once;
use std::time::{Duration, Instant};

use rayforge::Config;

pub mod tracking;

/// Starts an embedded 2-CPU cluster once for this test process.
pub fn cluster() {
    cluster_with(|c| c);
}

/// Starts the embedded cluster once, with a custom configuration.
pub fn cluster_with(f: impl FnOnce(Config) -> Config) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        rayforge::init(f(Config::default().num_cpus(2.0))).expect("start embedded cluster");
    });
}

/// Runs the calling test in a process of its own when the harness runs many
/// tests in one process (`cargo test`), and returns from the test once that
/// process has passed; under nextest, which already gives each test its own
/// process, it does nothing. For tests that join a cluster of their own, start
/// one with another configuration, or watch process-wide state: everything
/// else shares the one embedded cluster of [`cluster`].
///
/// ```ignore
/// #[test]
/// fn joins_a_local_cluster() {
///     rayforge_integration_tests::own_process!();
///     let cluster = LocalCluster::start(&[], 200);
///     rayforge::init(cluster.config()).unwrap();
/// }
/// ```
#[macro_export]
macro_rules! own_process {
    () => {
        $crate::own_process!(())
    };
    ($passed:expr) => {{
        fn here() {}
        if $crate::ran_in_own_process(::std::any::type_name_of_val(&here)) {
            return $passed;
        }
    }};
}

/// Set in the process [`own_process!`] starts for one test.
const OWN_PROCESS_ENV: &str = "RAYFORGE_TEST_OWN_PROCESS";

/// What [`own_process!`] calls with the path of a function inside the test
/// (`it::module::test_name::here`): whether the test already ran, and passed,
/// in a child process. Panics with the child's output when it failed.
pub fn ran_in_own_process(here: &str) -> bool {
    // nextest runs each test in a process of its own; the child started below
    // is one too.
    if std::env::var_os("NEXTEST_EXECUTION_MODE").is_some() || std::env::var_os(OWN_PROCESS_ENV).is_some() {
        return false;
    }
    // The harness names a test by its path without the crate's name; an async
    // test's body is a closure inside it (`name::{{closure}}::here`).
    let path: Vec<&str> = here.split("::").filter(|s| !s.starts_with("{{")).collect();
    let test = path[1.min(path.len())..path.len().saturating_sub(1)].join("::");
    let test = test.as_str();
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1", "--include-ignored"])
        .env(OWN_PROCESS_ENV, "1")
        .output()
        .expect("start the test binary again for one test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A name the harness does not know runs nothing and exits 0: check that
    // exactly this test ran and passed.
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{test} in its own process: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    true
}

/// Polls `cond` until it holds or `deadline` passes; returns whether it held.
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    cond()
}

/// Whether process `pid` is running (a zombie, exited but not yet reaped,
/// counts as gone).
pub fn process_running(pid: u32) -> bool {
    rayforge::util::process_alive(pid)
}

/// A response of [`http`].
pub struct Resp {
    /// The status code (0: no status line).
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    /// The body, de-chunked.
    pub body: String,
}

/// One HTTP/1.1 request to `base` + `path` (plain TCP; the body read to the
/// end, de-chunked).
pub fn http(base: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(host).expect("connect to the HTTP port");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_string()
    };
    Resp {
        status,
        head: head.to_string(),
        body,
    }
}

/// A marker file unique to one test run, for "fail the first attempt only".
pub fn marker(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("rayforge-test-markers-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir.join(name).to_string_lossy().into_owned()
}

/// Kills the calling process with SIGKILL (used inside tasks to simulate a
/// crashed worker).
pub fn kill_self() -> ! {
    // SAFETY: plain syscalls on our own pid.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

/// A multi-node cluster of real daemons on this machine: a head and nodes,
/// each a `rayforge start --block` process on its own loopback ports. Every
/// daemon is killed when this is dropped.
pub struct LocalCluster {
    /// The head's control-service address.
    pub address: String,
    /// The cluster token.
    pub token: String,
    /// Where the head persists its state.
    pub state_dir: std::path::PathBuf,
    /// The head's HTTP jobs API (`http://host:port`).
    pub jobs_address: String,
    cluster_file: std::path::PathBuf,
    /// Daemon processes and their node ids (the head first).
    pub daemons: Vec<(std::process::Child, String)>,
}

/// The `rayforge` CLI binary of this build, built on demand.
pub fn rayforge_bin() -> std::path::PathBuf {
    workspace_bin("rayforge", "rayforge-cli")
}

/// A binary `name` of workspace package `package`, built on demand.
pub fn workspace_bin(name: &str, package: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("own path");
    // A test runs from target/PROFILE/deps, a binary from target/PROFILE.
    let dir = exe
        .parent()
        .map(|d| {
            if d.ends_with("deps") {
                d.parent().unwrap_or(d)
            } else {
                d
            }
        })
        .expect("target dir");
    let bin = dir.join(name);
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = std::process::Command::new(cargo)
            .args(["build", "-p", package, "--bin", name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok && bin.exists(),
            "cannot build the rayforge binary at {}",
            bin.display()
        );
    }
    bin
}

/// Starts `rayforge start ARGS --block`, the token (for a node) in its
/// environment, as users are told to (arguments are readable by anyone).
fn start_daemon(args: &[String], cluster_file: &std::path::Path, token: Option<&str>) -> (std::process::Child, String) {
    let mut cmd = std::process::Command::new(rayforge_bin());
    cmd.arg("start").args(args).arg("--block");
    match token {
        Some(t) => cmd.env("RAYFORGE_TOKEN", t),
        None => cmd.env_remove("RAYFORGE_TOKEN"),
    };
    spawn_daemon(cmd, args, cluster_file)
}

fn spawn_daemon(
    mut cmd: std::process::Command,
    args: &[String],
    cluster_file: &std::path::Path,
) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = cmd
        .env("RAYFORGE_CLUSTER_FILE", cluster_file)
        .env_remove("RAYFORGE_ADDRESS")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start a rayforge daemon");
    let out = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    std::io::BufReader::new(out)
        .read_line(&mut line)
        .expect("daemon output");
    assert!(
        line.contains("started"),
        "daemon did not start: {line:?} (args {args:?})"
    );
    let node_id = line
        .split("started: node ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("node id in the start line")
        .to_string();
    (child, node_id)
}

impl LocalCluster {
    /// What `rayforge status` prints for this cluster.
    pub fn status(&self) -> String {
        let out = std::process::Command::new(rayforge_bin())
            .args(["status", "--address", &self.address])
            .env("RAYFORGE_TOKEN", &self.token)
            .output()
            .expect("run rayforge status");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `rayforge list WHAT` against this cluster and parses its JSON.
    pub fn list(&self, what: &str) -> serde_json::Value {
        let out = std::process::Command::new(rayforge_bin())
            .args(["list", what, "--address", &self.address])
            .env("RAYFORGE_TOKEN", &self.token)
            .output()
            .expect("run rayforge list");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("rayforge list prints JSON")
    }

    /// Starts a head (`head_args`, e.g. `--num-cpus 1`) with a heartbeat
    /// timeout of `heartbeat_ms`.
    pub fn start(head_args: &[&str], heartbeat_ms: u64) -> LocalCluster {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("rayforge-test-cluster-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&base).expect("test dir");
        let state_dir = base.join("head");
        let cluster_file = base.join("cluster.json");
        let mut c = LocalCluster {
            address: String::new(),
            token: String::new(),
            jobs_address: String::new(),
            state_dir,
            cluster_file,
            daemons: Vec::new(),
        };
        c.start_head(head_args, heartbeat_ms, 0);
        c
    }

    /// Starts (or restarts) the head on `port` (0: any).
    pub fn start_head(&mut self, head_args: &[&str], heartbeat_ms: u64, port: u16) {
        let mut args: Vec<String> = vec![
            "--head".into(),
            "--port".into(),
            port.to_string(),
            "--state-dir".into(),
            self.state_dir.to_string_lossy().into(),
            "--heartbeat-timeout-ms".into(),
            heartbeat_ms.to_string(),
        ];
        // Any free port for the jobs API, unless the test names one.
        if !head_args.contains(&"--jobs-port") {
            args.extend(["--jobs-port".into(), "0".into()]);
        }
        args.extend(head_args.iter().map(|s| s.to_string()));
        let d = start_daemon(&args, &self.cluster_file, None);
        let text = std::fs::read_to_string(&self.cluster_file).expect("cluster file written by the head");
        let v: serde_json::Value = serde_json::from_str(&text).expect("cluster file is JSON");
        self.address = v["address"].as_str().expect("address").to_string();
        self.token = v["token"].as_str().expect("token").to_string();
        self.jobs_address = v["jobs_address"].as_str().expect("jobs address").to_string();
        self.daemons.insert(0, d);
    }

    /// Adds a node with these extra arguments; returns its node id.
    pub fn add_node(&mut self, args: &[&str]) -> String {
        let a = self.node_args(args);
        let d = start_daemon(&a, &self.cluster_file, Some(&self.token));
        let id = d.1.clone();
        self.daemons.push(d);
        id
    }

    /// `rayforge start` arguments of a node joining this cluster.
    fn node_args(&self, args: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec!["--address".into(), self.address.clone()];
        a.extend(args.iter().map(|s| s.to_string()));
        a
    }

    /// The directory this cluster's files live under (the head's state,
    /// and whatever a test puts there): the root a private-disk node
    /// cannot see.
    pub fn base_dir(&self) -> std::path::PathBuf {
        self.state_dir.parent().map(|p| p.to_path_buf()).unwrap_or_default()
    }

    /// Adds a node with a disk of its own, as a second machine has: the
    /// daemon (and every worker it starts) runs in a mount namespace where
    /// a fresh tmpfs covers [`LocalCluster::base_dir`], and its temporary
    /// directory (checkpoint scratch, the storage cache) is on that tmpfs.
    /// So it cannot read what the head or another node wrote there, and
    /// they cannot read what it writes. Needs root (`unshare --mount`).
    pub fn add_private_disk_node(&mut self, args: &[&str]) -> String {
        let base = self.base_dir();
        let a = self.node_args(args);
        let script = r#"set -e
mount -t tmpfs -o size=4g rayforge-private "$RF_BASE"
mkdir -p "$RF_BASE/tmp"
export TMPDIR="$RF_BASE/tmp"
exec "$RF_BIN" start "$@" --block"#;
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"])
            .args(&a)
            .env("RF_BASE", &base)
            .env("RF_BIN", rayforge_bin())
            .env("RAYFORGE_TOKEN", &self.token);
        let d = spawn_daemon(cmd, &a, &self.cluster_file);
        let id = d.1.clone();
        self.daemons.push(d);
        id
    }

    /// Takes the daemon of node `node_id` out of this cluster's list.
    fn take_daemon(&mut self, node_id: &str) -> std::process::Child {
        let i = self
            .daemons
            .iter()
            .position(|(_, id)| id == node_id)
            .expect("a node of this cluster");
        self.daemons.remove(i).0
    }

    /// SIGKILLs the daemon of node `node_id` (its workers die with it).
    pub fn kill_node(&mut self, node_id: &str) {
        let mut child = self.take_daemon(node_id);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops the daemon of node `node_id` as `rayforge stop` does (SIGTERM)
    /// and waits for it to exit.
    pub fn stop_node(&mut self, node_id: &str) {
        let mut child = self.take_daemon(node_id);
        // SAFETY: kill(2) on the pid of a child not yet waited for.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    }

    /// A rayforge config joining this cluster.
    pub fn config(&self) -> Config {
        Config::address(&self.address).token(&self.token)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (c, _) in &mut self.daemons {
            // SAFETY: plain syscall on our child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
        for (c, _) in &mut self.daemons {
            let _ = c.wait();
        }
        if let Some(base) = self.state_dir.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

/// Points this process's S3 client at an endpoint nothing listens on (a
/// local port just freed), with credentials, so that only the connection
/// can fail: for tests of storage that cannot be reached. Sets the `AWS_*`
/// variables of the whole process.
pub fn point_s3_at_a_dead_endpoint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port();
    std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    std::env::set_var("AWS_REGION", "us-east-1");
}
