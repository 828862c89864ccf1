//! [`JobClient`]: the jobs API's client (what `rayforge job ...` uses).

use std::path::Path;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::ids::hex;

use super::*;

/// A client of a cluster's jobs API.
pub struct JobClient {
    base: String,
    token: String,
    rt: tokio::runtime::Runtime,
    http: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Full<Bytes>,
    >,
}

impl JobClient {
    /// Connects to the jobs API at `address` (`http://host:port`,
    /// `https://host:port`, `host:port` (https when this process speaks
    /// TLS, see [`crate::tls`]), or "auto": this machine's cluster); the token defaults
    /// to `$RAYFORGE_TOKEN`, then this machine's cluster file.
    pub fn connect(address: &str, token: Option<&str>) -> Result<JobClient> {
        let local = crate::cluster::local_cluster().ok();
        let base = if address == "auto" {
            let c = local.as_ref().ok_or_else(|| {
                Error::NotFound(
                    "no cluster is running on this machine: start one with `rayforge start --head` or pass \
                     --address http://HOST:PORT of its jobs API"
                        .into(),
                )
            })?;
            if c.jobs_address.is_empty() {
                return Err(Error::NotFound("this machine's cluster runs no jobs API".into()));
            }
            c.jobs_address.clone()
        } else {
            address.to_string()
        };
        // `https://` when given, or when this process speaks TLS.
        let (scheme, hostport) = match base.split_once("://") {
            Some((scheme @ ("http" | "https"), rest)) => (scheme.to_string(), rest.to_string()),
            Some(_) => {
                return Err(Error::InvalidArgument(format!(
                    "jobs API address `{address}` is not of the form http(s)://host:port"
                )))
            }
            None => (crate::tls::http_scheme().to_string(), base.clone()),
        };
        let hostport = hostport.trim_end_matches('/').to_string();
        if !hostport.contains(':') || hostport.contains('/') {
            return Err(Error::InvalidArgument(format!(
                "jobs API address `{address}` is not of the form http(s)://host:port"
            )));
        }
        let base = format!("{scheme}://{hostport}");
        let token = token
            .map(str::to_string)
            .or_else(|| std::env::var("RAYFORGE_TOKEN").ok().filter(|t| !t.is_empty()))
            .or_else(|| local.filter(|c| c.jobs_address == base).map(|c| c.token))
            .unwrap_or_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting a runtime", e))?;
        let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(crate::tls::https_connector());
        Ok(JobClient { base, token, rt, http })
    }

    fn call<T: serde::de::DeserializeOwned>(&self, method: Method, path: &str, body: Vec<u8>) -> Result<T> {
        use http_body_util::BodyExt;
        let url = format!("{}{path}", self.base);
        let req = axum::http::Request::builder()
            .method(method.clone())
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .map_err(|e| Error::InvalidArgument(format!("bad request to {url}: {e}")))?;
        let unreachable = |why: String| Error::Io {
            context: format!("cannot reach the jobs API at {}", self.base),
            message: why,
        };
        let (status, bytes) = self.rt.block_on(async {
            let resp = tokio::time::timeout(Duration::from_secs(60), self.http.request(req))
                .await
                .map_err(|_| unreachable("no answer within 60 s".into()))?
                .map_err(|e| unreachable(format!("{e:?}")))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, Error>((status, bytes))
        })?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(match status {
                StatusCode::NOT_FOUND => Error::NotFound(msg),
                StatusCode::UNAUTHORIZED => {
                    Error::InvalidArgument(format!("the jobs API at {} refused the call: {msg}", self.base))
                }
                StatusCode::BAD_REQUEST => Error::InvalidArgument(msg),
                _ => Error::Runtime(format!("{method} {path}: {status}: {msg}")),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::Runtime(format!(
                "{method} {path}: unexpected answer ({e}): {}",
                String::from_utf8_lossy(&bytes)
            ))
        })
    }

    /// Submits `entrypoint` (a shell command run on the head); a local
    /// `working_dir` is packed and uploaded first. Returns the job id.
    pub fn submit(&self, entrypoint: &str, env: &RuntimeEnv) -> Result<String> {
        let mut env = env.clone();
        if let Some(dir) = env.working_dir.clone() {
            if package_hash(&dir).is_none() {
                let data = pack_dir(Path::new(&dir))?;
                let hash = hex(&Sha256::digest(&data));
                let have: serde_json::Value =
                    self.call(Method::GET, &format!("/api/packages/{}", segment(&hash)), Vec::new())?;
                if have["present"] != true {
                    let _: serde_json::Value =
                        self.call(Method::PUT, &format!("/api/packages/{}", segment(&hash)), data)?;
                }
                env.working_dir = Some(format!("{PACKAGE_SCHEME}{hash}"));
            }
        }
        let body = serde_json::to_vec(&JobSubmission {
            entrypoint: entrypoint.to_string(),
            runtime_env: env,
        })
        .map_err(|e| Error::Internal(e.to_string()))?;
        let r: serde_json::Value = self.call(Method::POST, "/api/jobs/", body)?;
        r["job_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::Runtime(format!("the jobs API answered without a job id: {r}")))
    }

    /// A job's details.
    pub fn status(&self, id: &str) -> Result<JobDetails> {
        self.call(Method::GET, &format!("/api/jobs/{}", segment(id)), Vec::new())
    }

    /// Every job of the cluster.
    pub fn list(&self) -> Result<Vec<JobDetails>> {
        self.call(Method::GET, "/api/jobs/", Vec::new())
    }

    /// A submitted job's output from byte `offset`.
    pub fn logs(&self, id: &str, offset: u64) -> Result<LogChunk> {
        self.call(
            Method::GET,
            &format!("/api/jobs/{}/logs?offset={offset}", segment(id)),
            Vec::new(),
        )
    }

    /// Stops a submitted job (SIGTERM to its entrypoint's process group,
    /// SIGKILL after 3 s); false if it was not running.
    pub fn stop(&self, id: &str) -> Result<bool> {
        let r: serde_json::Value = self.call(Method::POST, &format!("/api/jobs/{}/stop", segment(id)), Vec::new())?;
        Ok(r["stopped"] == true)
    }

    /// Waits for a job to end (polling), calling `on_output` with its
    /// output as it comes; returns its final details.
    pub fn follow(&self, id: &str, mut on_output: impl FnMut(&str)) -> Result<JobDetails> {
        let mut offset = 0;
        loop {
            let chunk = self.logs(id, offset)?;
            if !chunk.logs.is_empty() {
                on_output(&chunk.logs);
            }
            let moved = chunk.next_offset != offset;
            offset = chunk.next_offset;
            if chunk.finished {
                return self.status(id);
            }
            if !moved {
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
}

/// `s` as one path segment of a URL: everything but unreserved characters
/// percent-encoded, so an id holding `/`, `..`, `?` or `#` cannot reach
/// another endpoint.
fn segment(s: &str) -> String {
    crate::http::percent_encode_but(s, b"-_~")
}

#[cfg(test)]
mod segment_tests {
    #[test]
    fn ids_cannot_leave_their_path_segment() {
        assert_eq!(super::segment("raysubmit_12ab"), "raysubmit_12ab");
        assert_eq!(super::segment("../x/stop?y#z"), "%2E%2E%2Fx%2Fstop%3Fy%23z");
        assert_eq!(super::segment("a.b"), "a%2Eb");
    }
}
