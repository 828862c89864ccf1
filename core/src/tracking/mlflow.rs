//! [`Mlflow`]: runs logged to an MLflow tracking server over its REST API.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::Method;
use parking_lot::Mutex;

use super::{Callback, RunEnd, RunInfo};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};

/// How long one call to the server may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the end of a run waits for what it logged to reach the server.
const END_TIMEOUT: Duration = Duration::from_secs(300);
/// MLflow's limits on one `log-batch`.
const MAX_METRICS: usize = 1000;
const MAX_PARAMS: usize = 100;
const MAX_PARAM_LEN: usize = 6000;

/// The callback that logs each run to an MLflow tracking server: an
/// MLflow run per Train run, Tune trial or RLlib run, in the experiment of
/// the same name (or [`Mlflow::experiment`]'s), with its parameters (a
/// nested config flattened to `a/b` keys), every report's metrics at their
/// steps, tags, its final checkpoint as artifacts under `checkpoint/`
/// (uploaded through the server: `mlflow server` serves artifacts by
/// default), and FINISHED, KILLED (stopped early) or FAILED at its end.
///
/// Logging happens on a thread of its own, so a slow server never slows
/// training; a run's end waits until what it logged reached the server. A
/// server that is down or refuses a call is one warning for the run, whose
/// further logging is dropped — never a failed run.
///
/// ```no_run
/// use rayforge::tracking::{Callbacks, Mlflow};
/// let callbacks = Callbacks::new().with(Mlflow::new("http://127.0.0.1:5000").tag("team", "vision"));
/// ```
pub struct Mlflow {
    uri: String,
    experiment: Option<String>,
    tags: BTreeMap<String, String>,
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
}

enum Msg {
    Start(RunInfo),
    Report(RunInfo, u64, BTreeMap<String, f64>, i64),
    Checkpoint(RunInfo, Checkpoint),
    End(RunInfo, RunEnd, mpsc::Sender<()>),
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Mlflow {
    /// [`Mlflow::new`], refusing a `uri` that is not `http(s)://host[:port]`
    /// (what a command line or config file hands over is checked here).
    pub fn try_new(uri: &str) -> Result<Mlflow> {
        let rest = uri.strip_prefix("http://").or_else(|| uri.strip_prefix("https://"));
        let host = rest.map(|r| r.split('/').next().unwrap_or_default());
        if !host.is_some_and(|h| !h.is_empty() && !h.starts_with(':') && !h.contains(char::is_whitespace)) {
            return Err(Error::InvalidArgument(format!(
                "`{uri}` is not an MLflow tracking server's http://host:port"
            )));
        }
        Ok(Mlflow::new(uri))
    }

    /// Logs to the tracking server at `uri` (`http://host:port`).
    pub fn new(uri: &str) -> Mlflow {
        Mlflow {
            uri: uri.trim_end_matches('/').to_string(),
            experiment: None,
            tags: BTreeMap::new(),
            tx: Mutex::new(None),
        }
    }

    /// Logs every run into the experiment `name` (default: the run's own
    /// experiment — a Train run's or RLlib run's name, a Tune experiment's).
    pub fn experiment(mut self, name: &str) -> Mlflow {
        self.experiment = Some(name.into());
        self
    }

    /// Adds a tag to every run.
    pub fn tag(mut self, key: &str, value: &str) -> Mlflow {
        self.tags.insert(key.into(), value.into());
        self
    }

    fn send(&self, msg: Msg) {
        let mut tx = self.tx.lock();
        if tx.is_none() {
            let (t, rx) = mpsc::channel();
            let server = Server::new(&self.uri, self.experiment.clone(), self.tags.clone());
            let spawned = std::thread::Builder::new()
                .name("rayforge-mlflow".into())
                .spawn(move || server.run(rx));
            if let Err(e) = spawned {
                tracing::warn!("starting the MLflow logging thread: {e}");
                return;
            }
            *tx = Some(t);
        }
        // The thread ends only when the sender is dropped.
        if let Some(t) = tx.as_ref() {
            let _ = t.send(msg);
        }
    }
}

impl Callback for Mlflow {
    fn name(&self) -> &str {
        "MLflow"
    }

    fn on_start(&self, run: &RunInfo) -> Result<()> {
        self.send(Msg::Start(run.clone()));
        Ok(())
    }

    fn on_report(&self, run: &RunInfo, step: u64, metrics: &BTreeMap<String, f64>) -> Result<()> {
        self.send(Msg::Report(run.clone(), step, metrics.clone(), now_ms()));
        Ok(())
    }

    fn on_checkpoint(&self, run: &RunInfo, _step: u64, checkpoint: &Checkpoint) -> Result<()> {
        self.send(Msg::Checkpoint(run.clone(), checkpoint.clone()));
        Ok(())
    }

    fn on_end(&self, run: &RunInfo, end: &RunEnd) -> Result<()> {
        let (done, wait) = mpsc::channel();
        self.send(Msg::End(run.clone(), end.clone(), done));
        match wait.recv_timeout(END_TIMEOUT) {
            Ok(()) => Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::Runtime(format!(
                "MLflow at {}: the run's logging did not finish within {END_TIMEOUT:?}",
                self.uri
            ))),
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(()),
        }
    }
}

/// One run on the server.
struct Logged {
    id: String,
    /// Where its artifacts are uploaded (`/api/2.0/mlflow-artifacts/artifacts/...`),
    /// when the server proxies its artifact store.
    artifacts: Option<String>,
    /// Metrics not sent yet: (key, value, timestamp ms, step).
    pending: Vec<(String, f64, i64, u64)>,
    checkpoint: Option<Checkpoint>,
}

/// The logging thread's side: the server's client and the runs it logs.
struct Server {
    base: String,
    experiment: Option<String>,
    tags: BTreeMap<String, String>,
    experiments: HashMap<String, String>,
    runs: HashMap<String, Logged>,
    /// Runs whose logging failed (warned once, then dropped).
    dead: std::collections::HashSet<String>,
    rt: Option<tokio::runtime::Runtime>,
    http: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Full<Bytes>,
    >,
}

impl Server {
    fn new(base: &str, experiment: Option<String>, tags: BTreeMap<String, String>) -> Server {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok();
        let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(crate::tls::https_connector());
        Server {
            base: base.into(),
            experiment,
            tags,
            experiments: HashMap::new(),
            runs: HashMap::new(),
            dead: Default::default(),
            rt,
            http,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        while let Ok(first) = rx.recv() {
            // What else is waiting goes in the same batches.
            let mut batch = vec![first];
            while let Ok(m) = rx.try_recv() {
                batch.push(m);
            }
            for m in batch {
                match m {
                    Msg::Start(run) => self.guard(&run, |s| s.start(&run)),
                    Msg::Report(run, step, metrics, ts) => self.guard(&run, |s| {
                        let logged = s.logged(&run)?;
                        logged
                            .pending
                            .extend(metrics.into_iter().map(|(k, v)| (k, v, ts, step)));
                        Ok(())
                    }),
                    Msg::Checkpoint(run, c) => self.guard(&run, |s| {
                        s.logged(&run)?.checkpoint = Some(c);
                        Ok(())
                    }),
                    Msg::End(run, end, done) => {
                        self.guard(&run, |s| s.end(&run, &end));
                        self.runs.remove(&run.key());
                        self.dead.remove(&run.key());
                        let _ = done.send(());
                    }
                }
            }
            let keys: Vec<String> = self.runs.keys().cloned().collect();
            for key in keys {
                if let Err(e) = self.flush(&key) {
                    self.died(&key, e);
                }
            }
        }
    }

    /// Does `f` for a run still logged; a failure warns and drops the run.
    fn guard(&mut self, run: &RunInfo, f: impl FnOnce(&mut Self) -> Result<()>) {
        let key = run.key();
        if self.dead.contains(&key) {
            return;
        }
        if let Err(e) = f(self) {
            self.died(&key, e);
        }
    }

    fn died(&mut self, key: &str, e: Error) {
        tracing::warn!(
            run = %key,
            "MLflow at {}: {e} — this run is not logged there from here on",
            self.base
        );
        self.runs.remove(key);
        self.dead.insert(key.to_string());
    }

    /// The run on the server, created on first use.
    fn logged(&mut self, run: &RunInfo) -> Result<&mut Logged> {
        let key = run.key();
        if !self.runs.contains_key(&key) {
            self.start(run)?;
        }
        // Inserted by `start` just above, which errs otherwise.
        Ok(self.runs.get_mut(&key).expect("the run just created"))
    }

    fn start(&mut self, run: &RunInfo) -> Result<()> {
        let key = run.key();
        if self.runs.contains_key(&key) {
            return Ok(());
        }
        let name = self.experiment.clone().unwrap_or_else(|| run.experiment.clone());
        let experiment_id = self.experiment_id(&name)?;
        let mut tags: Vec<serde_json::Value> = vec![
            tag("rayforge.kind", run.kind.as_str()),
            tag("rayforge.experiment", &run.experiment),
        ];
        tags.extend(self.tags.iter().map(|(k, v)| tag(k, v)));
        let created = self.call(
            Method::POST,
            "/api/2.0/mlflow/runs/create",
            serde_json::json!({
                "experiment_id": experiment_id,
                "run_name": run.run,
                "start_time": now_ms(),
                "tags": tags,
            }),
        )?;
        let info = &created["run"]["info"];
        let id = info["run_id"]
            .as_str()
            .ok_or_else(|| Error::Runtime(format!("runs/create answered no run id: {created}")))?
            .to_string();
        // A server that proxies artifacts hands out `mlflow-artifacts:/...`.
        let artifacts = info["artifact_uri"]
            .as_str()
            .and_then(|u| u.strip_prefix("mlflow-artifacts:"))
            .map(|p| format!("/api/2.0/mlflow-artifacts/artifacts/{}", p.trim_start_matches('/')));
        let mut params = Vec::new();
        flatten("", &run.params, &mut params);
        for chunk in params.chunks(MAX_PARAMS) {
            let params: Vec<_> = chunk
                .iter()
                .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
                .collect();
            self.call(
                Method::POST,
                "/api/2.0/mlflow/runs/log-batch",
                serde_json::json!({"run_id": id, "params": params}),
            )?;
        }
        self.runs.insert(
            key,
            Logged {
                id,
                artifacts,
                pending: Vec::new(),
                checkpoint: None,
            },
        );
        Ok(())
    }

    fn experiment_id(&mut self, name: &str) -> Result<String> {
        if let Some(id) = self.experiments.get(name) {
            return Ok(id.clone());
        }
        let path = format!(
            "/api/2.0/mlflow/experiments/get-by-name?experiment_name={}",
            percent_encode(name)
        );
        let id = match self.call(Method::GET, &path, serde_json::Value::Null) {
            Ok(v) => v["experiment"]["experiment_id"].as_str().map(str::to_string),
            Err(Error::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let id = match id {
            Some(id) => id,
            None => {
                let v = self.call(
                    Method::POST,
                    "/api/2.0/mlflow/experiments/create",
                    serde_json::json!({ "name": name }),
                );
                match v {
                    Ok(v) => v["experiment_id"].as_str().map(str::to_string),
                    // Perhaps created by another process meanwhile.
                    Err(e) => match self.call(Method::GET, &path, serde_json::Value::Null) {
                        Ok(v) => v["experiment"]["experiment_id"].as_str().map(str::to_string),
                        Err(_) => return Err(e),
                    },
                }
                .ok_or_else(|| Error::Runtime(format!("the server gave no id for experiment `{name}`")))?
            }
        };
        self.experiments.insert(name.to_string(), id.clone());
        Ok(id)
    }

    /// Sends a run's pending metrics.
    fn flush(&mut self, key: &str) -> Result<()> {
        let Some(logged) = self.runs.get_mut(key) else {
            return Ok(());
        };
        let pending = std::mem::take(&mut logged.pending);
        let id = logged.id.clone();
        // MLflow stores finite values only (JSON has no NaN).
        let metrics: Vec<_> = pending
            .into_iter()
            .filter(|m| m.1.is_finite())
            .map(|(k, v, ts, step)| serde_json::json!({"key": k, "value": v, "timestamp": ts, "step": step}))
            .collect();
        for chunk in metrics.chunks(MAX_METRICS) {
            self.call(
                Method::POST,
                "/api/2.0/mlflow/runs/log-batch",
                serde_json::json!({"run_id": id, "metrics": chunk}),
            )?;
        }
        Ok(())
    }

    fn end(&mut self, run: &RunInfo, end: &RunEnd) -> Result<()> {
        let key = run.key();
        if !self.runs.contains_key(&key) {
            return Ok(());
        }
        self.flush(&key)?;
        let Some(logged) = self.runs.get(&key) else {
            return Ok(());
        };
        let (id, artifacts, checkpoint) = (logged.id.clone(), logged.artifacts.clone(), logged.checkpoint.clone());
        if let Some(c) = checkpoint {
            match artifacts {
                Some(prefix) => self.upload(&prefix, &c)?,
                None => tracing::warn!(
                    run = %key,
                    "MLflow at {}: the run's artifact store is not served by the server (start it with \
                     artifact serving on, the default): its checkpoint is not uploaded",
                    self.base
                ),
            }
        }
        let (status, error) = match end {
            RunEnd::Finished => ("FINISHED", None),
            RunEnd::Stopped => ("KILLED", None),
            RunEnd::Failed(why) => ("FAILED", Some(why)),
        };
        if let Some(why) = error {
            self.call(
                Method::POST,
                "/api/2.0/mlflow/runs/set-tag",
                serde_json::json!({"run_id": id, "key": "rayforge.error", "value": truncate(why)}),
            )?;
        }
        self.call(
            Method::POST,
            "/api/2.0/mlflow/runs/update",
            serde_json::json!({"run_id": id, "status": status, "end_time": now_ms()}),
        )?;
        Ok(())
    }

    /// Uploads a checkpoint's manifest and files under `checkpoint/`.
    fn upload(&mut self, prefix: &str, c: &Checkpoint) -> Result<()> {
        let ckpt = |e: crate::checkpoint::CheckpointError| Error::Runtime(format!("reading the final checkpoint: {e}"));
        let c = c.to_local().map_err(ckpt)?;
        let mut files = vec!["manifest.json".to_string()];
        files.extend(c.manifest().map_err(ckpt)?.files);
        for f in files {
            let bytes = c.read(&f).map_err(ckpt)?;
            let path = format!(
                "{prefix}/checkpoint/{}",
                f.split('/').map(percent_encode).collect::<Vec<_>>().join("/")
            );
            self.request(Method::PUT, &path, bytes, "application/octet-stream")?;
        }
        Ok(())
    }

    fn call(&self, method: Method, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let body = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&body).map_err(|e| Error::Internal(e.to_string()))?
        };
        let bytes = self.request(method, path, body, "application/json")?;
        if bytes.is_empty() {
            return Ok(serde_json::json!({}));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Runtime(format!("{path}: the server's answer is not JSON: {e}")))
    }

    fn request(&self, method: Method, path: &str, body: Vec<u8>, content_type: &str) -> Result<Bytes> {
        use http_body_util::BodyExt;
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| Error::Runtime("no runtime for the MLflow client".into()))?;
        let url = format!("{}{path}", self.base);
        let req = axum::http::Request::builder()
            .method(method.clone())
            .uri(&url)
            .header("content-type", content_type)
            .body(http_body_util::Full::new(Bytes::from(body)))
            .map_err(|e| Error::InvalidArgument(format!("bad MLflow URI {url}: {e}")))?;
        let (status, bytes) = rt.block_on(async {
            let resp = tokio::time::timeout(CALL_TIMEOUT, self.http.request(req))
                .await
                .map_err(|_| Error::Runtime(format!("{method} {path}: no answer within {CALL_TIMEOUT:?}")))?
                .map_err(|e| Error::Runtime(format!("cannot reach the server: {e}")))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Error::Runtime(format!("{method} {path}: {e}")))?
                .to_bytes();
            Ok::<_, Error>((status, bytes))
        })?;
        if status.is_success() {
            return Ok(bytes);
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let code = v["error_code"].as_str().unwrap_or_default();
        let msg = format!(
            "{method} {path}: {status}: {}",
            v["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned())
        );
        Err(match code {
            "RESOURCE_DOES_NOT_EXIST" => Error::NotFound(msg),
            _ => Error::Runtime(msg),
        })
    }
}

fn tag(k: &str, v: &str) -> serde_json::Value {
    serde_json::json!({"key": k, "value": truncate(v)})
}

fn truncate(s: &str) -> String {
    if s.len() <= MAX_PARAM_LEN {
        return s.to_string();
    }
    let mut end = MAX_PARAM_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A config's leaves as MLflow params: nested keys joined with `/`.
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}/{k}")
                };
                flatten(&key, x, out);
            }
        }
        serde_json::Value::String(s) if !prefix.is_empty() => out.push((prefix.into(), truncate(s))),
        serde_json::Value::Null => {}
        x if !prefix.is_empty() => out.push((prefix.into(), truncate(&x.to_string()))),
        _ => {}
    }
}

/// A query value or path segment: only unreserved characters stay.
fn percent_encode(s: &str) -> String {
    crate::http::percent_encode_but(s, b"-_.~")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_configs_become_slash_joined_params() {
        let mut out = Vec::new();
        flatten(
            "",
            &serde_json::json!({"lr": 0.1, "model": {"layers": [64, 64], "act": "relu"}, "none": null}),
            &mut out,
        );
        out.sort();
        assert_eq!(
            out,
            vec![
                ("lr".to_string(), "0.1".to_string()),
                ("model/act".to_string(), "relu".to_string()),
                ("model/layers".to_string(), "[64,64]".to_string()),
            ]
        );
        assert_eq!(percent_encode("a b/é"), "a%20b%2F%C3%A9");
        for bad in ["localhost:5000", "http://", "http://:5000", "ftp://x:1", "http://a b:1"] {
            assert!(Mlflow::try_new(bad).is_err(), "{bad}");
        }
        assert!(Mlflow::try_new("https://mlflow.example.com/").is_ok());
        assert_eq!(truncate(&"x".repeat(7000)).len(), MAX_PARAM_LEN);
    }
}
