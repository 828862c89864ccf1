//! The services the experiment-tracking tests check against (set up by
//! `scripts/tracking-venv.sh`, which `scripts/test.sh` runs): TensorBoard's
//! own reader of event files and a real `mlflow server`.

use std::path::Path;
use std::time::Duration;

use crate::{http, wait_until};

/// Skips (`None`) where the test script's set-up has not run; under CI the
/// script always sets it up, so there a missing one is an error.
fn program(var: &str) -> Option<std::ffi::OsString> {
    let v = std::env::var_os(var);
    if v.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{var} is unset: scripts/test.sh sets it up through scripts/tracking-venv.sh"
        );
        eprintln!("skipped: {var} is unset (run scripts/tracking-venv.sh)");
    }
    v
}

/// Every scalar under `logdir` as TensorBoard reads it:
/// `{"RUN": {"TAG": [[step, value, wall_time], ..]}}` (RUN a folder with
/// event files, relative to `logdir`; "." for `logdir` itself), with
/// `__errors__` listing records the reader stopped at. `None`: no
/// TensorBoard here (the test skips).
pub fn tensorboard_scalars(logdir: &Path) -> Option<serde_json::Value> {
    let python = program("RAYFORGE_TRACKING_PYTHON")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/tb_scalars.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(logdir)
        .output()
        .expect("run tb_scalars.py");
    assert!(
        out.status.success(),
        "tb_scalars.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("tb_scalars.py prints JSON"))
}

/// The steps and values TensorBoard read for `tag` of `run`.
pub fn scalar_steps(scalars: &serde_json::Value, run: &str, tag: &str) -> Vec<(u64, f64)> {
    scalars[run][tag]
        .as_array()
        .unwrap_or_else(|| panic!("TensorBoard has no {tag} in run {run}: {scalars}"))
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

/// A real `mlflow server` (sqlite store, artifacts served through it) on a
/// free loopback port, stopped (its whole process group) when dropped.
pub struct MlflowServer {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub uri: String,
    _data: TempDir,
}

/// A scratch directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl MlflowServer {
    /// Starts one and waits until `/health` answers (within 120 s). `None`:
    /// no MLflow here (the test skips).
    pub fn start() -> Option<MlflowServer> {
        use std::os::unix::process::CommandExt;
        let bin = program("RAYFORGE_MLFLOW")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("rayforge-mlflow-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("artifacts")).unwrap();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let child = std::process::Command::new(bin)
            .args([
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--workers",
                "1",
            ])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(dir.join("artifacts"))
            .arg("--serve-artifacts")
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .env("MLFLOW_DISABLE_TELEMETRY", "true")
            .env("DO_NOT_TRACK", "true")
            .current_dir(&dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group: the server's workers stop with it.
            .process_group(0)
            .spawn()
            .expect("start mlflow server");
        let server = MlflowServer {
            child,
            uri: format!("http://127.0.0.1:{port}"),
            _data: TempDir(dir.clone()),
        };
        let ready = wait_until(Duration::from_secs(120), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http(&server.uri, "GET", "/health", &[], "").status == 200
        });
        assert!(
            ready,
            "mlflow server did not get ready within 120 s: {}",
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
        Some(server)
    }

    /// A REST call (`body` JSON, or empty for a GET): the answer as JSON.
    pub fn call(&self, method: &str, path: &str, body: &str) -> serde_json::Value {
        let r = http(&self.uri, method, path, &[("Content-Type", "application/json")], body);
        assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
        if r.body.trim().is_empty() {
            return serde_json::json!({});
        }
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.body))
    }

    /// The runs of experiment `name`, as `runs/search` returns them.
    pub fn runs(&self, name: &str) -> Vec<serde_json::Value> {
        let e = self.call(
            "GET",
            &format!("/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}"),
            "",
        );
        let id = e["experiment"]["experiment_id"]
            .as_str()
            .expect("the experiment")
            .to_string();
        let r = self.call(
            "POST",
            "/api/2.0/mlflow/runs/search",
            &serde_json::json!({"experiment_ids": [id], "max_results": 1000}).to_string(),
        );
        r["runs"].as_array().cloned().unwrap_or_default()
    }

    /// The value of param or tag `key` (`field`: "params" or "tags") of a
    /// run as [`MlflowServer::runs`] returns it.
    pub fn value(run: &serde_json::Value, field: &str, key: &str) -> Option<String> {
        run["data"][field]
            .as_array()?
            .iter()
            .find(|p| p["key"] == key)
            .and_then(|p| p["value"].as_str().map(str::to_string))
    }

    /// The steps and values of a run's metric `key`.
    pub fn metric_history(&self, run_id: &str, key: &str) -> Vec<(u64, f64)> {
        let r = self.call(
            "GET",
            &format!("/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key={key}&max_results=25000"),
            "",
        );
        let mut v: Vec<(u64, f64)> = r["metrics"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| (m["step"].as_u64().unwrap_or(0), m["value"].as_f64().unwrap_or(f64::NAN)))
            .collect();
        v.sort_by_key(|x| x.0);
        v
    }

    /// The paths of a run's artifacts under `path` ("" for the top).
    pub fn artifacts(&self, run_id: &str, path: &str) -> Vec<String> {
        let r = self.call(
            "GET",
            &format!("/api/2.0/mlflow/artifacts/list?run_id={run_id}&path={path}"),
            "",
        );
        r["files"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|f| f["path"].as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: kill(2) with a negative pid signals the process group
        // the child leads; no memory is involved.
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
        }
        let stopped = wait_until(Duration::from_secs(20), || matches!(self.child.try_wait(), Ok(Some(_))));
        if !stopped {
            // SAFETY: as above.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

/// Asserts `got` has `want`'s steps exactly and its values to a relative
/// `tolerance` (JSON text keeps a value to about its last digit;
/// TensorBoard's scalars are 32-bit floats).
pub fn assert_points(got: &[(u64, f64)], want: &[(u64, f64)], tolerance: f64, what: &str) {
    let steps = |v: &[(u64, f64)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
    assert_eq!(steps(got), steps(want), "{what}: steps");
    for ((s, g), (_, w)) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= tolerance * w.abs().max(f64::MIN_POSITIVE),
            "{what}: at step {s}, {g} is not {w}\n got: {got:?}\nwant: {want:?}"
        );
    }
}
