//! Declared state: how a deployment runs (replicas, autoscaling, limits,
//! resources, user config) and the `serve.toml` file that declares
//! applications. Every field has a default; an unknown or malformed field is
//! an error naming it and its line.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Autoscaling: the replica count follows the ongoing requests.
///
/// The target count is `ceil(ongoing / target_ongoing_requests)` clamped to
/// `[min_replicas, max_replicas]`; it must stay above (below) the current
/// count for `upscale_delay_s` (`downscale_delay_s`) before replicas are
/// added (removed), as in Ray Serve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Autoscaling {
    /// The fewest replicas (may be 0 only when `initial_replicas` > 0 is not needed).
    pub min_replicas: usize,
    /// The most replicas.
    pub max_replicas: usize,
    /// Ongoing requests per replica to aim for.
    pub target_ongoing_requests: f64,
    /// How long more replicas must be wanted before they are added.
    pub upscale_delay_s: f64,
    /// How long fewer replicas must be wanted before some are removed.
    pub downscale_delay_s: f64,
}

impl Default for Autoscaling {
    fn default() -> Self {
        Autoscaling {
            min_replicas: 1,
            max_replicas: 4,
            target_ongoing_requests: 2.0,
            upscale_delay_s: 1.0,
            downscale_delay_s: 10.0,
        }
    }
}

/// How one deployment runs. Build it with the setters on
/// [`DeploymentSpec`](crate::DeploymentSpec) or declare it in `serve.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeploymentConfig {
    /// Fixed replica count (ignored with `autoscaling`).
    pub num_replicas: usize,
    /// Replica count driven by load.
    pub autoscaling: Option<Autoscaling>,
    /// Requests a replica runs at once; more wait in the caller's queue.
    pub max_ongoing_requests: usize,
    /// Requests that may wait for a busy deployment per caller before new
    /// ones are refused with 503 (load shedding).
    pub max_queued_requests: usize,
    /// CPUs each replica reserves (default 0: handlers are async).
    pub num_cpus: f64,
    /// GPUs each replica reserves.
    pub num_gpus: f64,
    /// Custom resources each replica reserves.
    pub resources: BTreeMap<String, f64>,
    /// The deployment's own config (JSON); changing it reconfigures running
    /// replicas in place, without a restart.
    pub user_config: Option<serde_json::Value>,
    /// Seconds between health checks of a replica.
    pub health_check_period_s: f64,
    /// A health check slower than this counts as failed.
    pub health_check_timeout_s: f64,
    /// How long a stopping replica may take to finish its ongoing requests.
    pub graceful_shutdown_timeout_s: f64,
}

impl Default for DeploymentConfig {
    fn default() -> Self {
        DeploymentConfig {
            num_replicas: 1,
            autoscaling: None,
            max_ongoing_requests: 100,
            max_queued_requests: 1000,
            num_cpus: 0.0,
            num_gpus: 0.0,
            resources: BTreeMap::new(),
            user_config: None,
            health_check_period_s: 1.0,
            health_check_timeout_s: 10.0,
            graceful_shutdown_timeout_s: 10.0,
        }
    }
}

impl DeploymentConfig {
    /// Checks the numbers are usable; names the deployment and the field.
    pub fn validate(&self, name: &str) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("deployment `{name}`: {m}")));
        if self.max_ongoing_requests == 0 {
            return bad("max_ongoing_requests must be at least 1".into());
        }
        for (field, v) in [
            ("num_cpus", self.num_cpus),
            ("num_gpus", self.num_gpus),
            ("health_check_period_s", self.health_check_period_s),
            ("health_check_timeout_s", self.health_check_timeout_s),
            ("graceful_shutdown_timeout_s", self.graceful_shutdown_timeout_s),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{field} must be a number >= 0, not {v}"));
            }
        }
        if let Some(a) = &self.autoscaling {
            if a.max_replicas == 0 || a.min_replicas > a.max_replicas {
                return bad(format!(
                    "autoscaling needs 0 <= min_replicas <= max_replicas and max_replicas >= 1 (got {}..{})",
                    a.min_replicas, a.max_replicas
                ));
            }
            if !(a.target_ongoing_requests.is_finite() && a.target_ongoing_requests > 0.0) {
                return bad("autoscaling.target_ongoing_requests must be > 0".into());
            }
        } else if self.num_replicas == 0 {
            return bad("num_replicas must be at least 1".into());
        }
        Ok(())
    }

    /// Whether two configs differ only in `user_config` (then running
    /// replicas are reconfigured in place instead of replaced).
    pub(crate) fn same_but_user_config(&self, other: &DeploymentConfig) -> bool {
        let mut a = self.clone();
        a.user_config = other.user_config.clone();
        a.autoscaling = other.autoscaling.clone();
        a.num_replicas = other.num_replicas;
        a == *other
    }
}

/// The HTTP proxy's settings (`[http]` in `serve.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpOptions {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on (0: any free port).
    pub port: u16,
    /// A request not answered within this many seconds gets 408.
    pub request_timeout_s: f64,
    /// Requests the proxy handles at once; beyond, 503 at once (load shedding).
    pub max_concurrent_requests: usize,
    /// Larger bodies get 413.
    pub max_body_bytes: usize,
    /// Port of the admin API (`serve status`, `serve shutdown`, `serve deploy`)
    /// on 127.0.0.1 (default [`DEFAULT_ADMIN_PORT`]); 0: any free port.
    pub admin_port: u16,
}

/// The admin API's default port: Ray's dashboard-agent port, where Serve's
/// REST API used to live. Not 8265: a cluster head serves its jobs API
/// there, and `serve run` against that head must still bind.
pub const DEFAULT_ADMIN_PORT: u16 = 52365;

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            host: "127.0.0.1".into(),
            port: 8000,
            request_timeout_s: 60.0,
            max_concurrent_requests: 4096,
            max_body_bytes: 10 << 20,
            admin_port: DEFAULT_ADMIN_PORT,
        }
    }
}

/// One deployment in `serve.toml`: its name, the registered type it runs,
/// and any [`DeploymentConfig`] field (unset ones keep their defaults).
/// The fields are spelled out (not flattened) so that a wrong one is
/// reported with its own line.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentEntry {
    /// The deployment's name within its application (routes and handles use it).
    pub name: String,
    /// The registered deployment type it runs (default: `name`).
    pub deployment: Option<String>,
    /// See [`DeploymentConfig::num_replicas`].
    pub num_replicas: Option<usize>,
    /// See [`DeploymentConfig::autoscaling`].
    pub autoscaling: Option<Autoscaling>,
    /// See [`DeploymentConfig::max_ongoing_requests`].
    pub max_ongoing_requests: Option<usize>,
    /// See [`DeploymentConfig::max_queued_requests`].
    pub max_queued_requests: Option<usize>,
    /// See [`DeploymentConfig::num_cpus`].
    pub num_cpus: Option<f64>,
    /// See [`DeploymentConfig::num_gpus`].
    pub num_gpus: Option<f64>,
    /// See [`DeploymentConfig::resources`].
    pub resources: Option<BTreeMap<String, f64>>,
    /// See [`DeploymentConfig::user_config`].
    pub user_config: Option<serde_json::Value>,
    /// See [`DeploymentConfig::health_check_period_s`].
    pub health_check_period_s: Option<f64>,
    /// See [`DeploymentConfig::health_check_timeout_s`].
    pub health_check_timeout_s: Option<f64>,
    /// See [`DeploymentConfig::graceful_shutdown_timeout_s`].
    pub graceful_shutdown_timeout_s: Option<f64>,
}

impl DeploymentEntry {
    /// The config it declares, defaults filled in.
    pub fn config(&self) -> DeploymentConfig {
        let d = DeploymentConfig::default();
        DeploymentConfig {
            num_replicas: self.num_replicas.unwrap_or(d.num_replicas),
            autoscaling: self.autoscaling.clone(),
            max_ongoing_requests: self.max_ongoing_requests.unwrap_or(d.max_ongoing_requests),
            max_queued_requests: self.max_queued_requests.unwrap_or(d.max_queued_requests),
            num_cpus: self.num_cpus.unwrap_or(d.num_cpus),
            num_gpus: self.num_gpus.unwrap_or(d.num_gpus),
            resources: self.resources.clone().unwrap_or(d.resources),
            user_config: self.user_config.clone(),
            health_check_period_s: self.health_check_period_s.unwrap_or(d.health_check_period_s),
            health_check_timeout_s: self.health_check_timeout_s.unwrap_or(d.health_check_timeout_s),
            graceful_shutdown_timeout_s: self
                .graceful_shutdown_timeout_s
                .unwrap_or(d.graceful_shutdown_timeout_s),
        }
    }
}

/// One application in `serve.toml`: deployments and the one that takes HTTP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The application's name.
    pub name: String,
    /// Requests whose path starts with this go to the ingress (`/` by default).
    #[serde(default = "root")]
    pub route_prefix: String,
    /// The deployment that takes the application's HTTP requests.
    pub ingress: String,
    /// Its deployments.
    pub deployments: Vec<DeploymentEntry>,
}

fn root() -> String {
    "/".into()
}

/// A whole `serve.toml`.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Proxy settings.
    #[serde(default)]
    pub http: HttpOptions,
    /// Applications.
    #[serde(default)]
    pub applications: Vec<AppConfig>,
}

impl ServeConfig {
    /// Parses `serve.toml` text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<ServeConfig> {
        let c: ServeConfig = toml::from_str(text).map_err(|e| Error::Config(format!("{origin}: {e}")))?;
        c.validate().map_err(|e| Error::Config(format!("{origin}: {e}")))?;
        Ok(c)
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<ServeConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        ServeConfig::parse(&text, &path.display().to_string())
    }

    /// Checks names, prefixes and every deployment's numbers.
    pub fn validate(&self) -> Result<()> {
        let mut prefixes = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for app in &self.applications {
            if !names.insert(&app.name) {
                return Err(Error::Invalid(format!("two applications are named `{}`", app.name)));
            }
            if !app.route_prefix.starts_with('/') {
                return Err(Error::Invalid(format!(
                    "application `{}`: route_prefix `{}` must start with `/`",
                    app.name, app.route_prefix
                )));
            }
            if !prefixes.insert(app.route_prefix.trim_end_matches('/')) {
                return Err(Error::Invalid(format!(
                    "application `{}`: route_prefix `{}` is taken by another application",
                    app.name, app.route_prefix
                )));
            }
            if !app.deployments.iter().any(|d| d.name == app.ingress) {
                return Err(Error::Invalid(format!(
                    "application `{}`: ingress `{}` is not one of its deployments",
                    app.name, app.ingress
                )));
            }
            let mut dn = std::collections::HashSet::new();
            for d in &app.deployments {
                if !dn.insert(&d.name) {
                    return Err(Error::Invalid(format!(
                        "application `{}`: two deployments are named `{}`",
                        app.name, d.name
                    )));
                }
                d.config().validate(&d.name)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[http]
port = 0

[[applications]]
name = "shop"
route_prefix = "/shop"
ingress = "Front"

[[applications.deployments]]
name = "Front"
num_replicas = 2
user_config = { greeting = "hi" }

[[applications.deployments]]
name = "Model"
deployment = "Scorer"
autoscaling = { min_replicas = 1, max_replicas = 3, target_ongoing_requests = 4 }
"#;

    #[test]
    fn a_config_file_parses_with_defaults() {
        let c = ServeConfig::parse(GOOD, "serve.toml").unwrap();
        assert_eq!(c.http.port, 0);
        assert_eq!(c.http.host, "127.0.0.1");
        let app = &c.applications[0];
        assert_eq!(app.deployments[0].config().num_replicas, 2);
        assert_eq!(
            app.deployments[0].config().user_config,
            Some(serde_json::json!({"greeting": "hi"}))
        );
        assert_eq!(app.deployments[1].deployment.as_deref(), Some("Scorer"));
        let a = app.deployments[1].config().autoscaling.unwrap();
        assert_eq!((a.min_replicas, a.max_replicas, a.target_ongoing_requests), (1, 3, 4.0));
        assert_eq!(a.upscale_delay_s, 1.0);
    }

    #[test]
    fn an_unknown_field_is_named_with_its_line() {
        let text = GOOD.replace("num_replicas = 2", "num_replica = 2");
        let e = ServeConfig::parse(&text, "serve.toml").unwrap_err().to_string();
        assert!(e.contains("num_replica") && e.contains("line 12"), "{e}");
        let text = GOOD.replace("port = 0", "port = \"eighty\"");
        let e = ServeConfig::parse(&text, "serve.toml").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("port"), "{e}");
        let text = GOOD.replace("[http]", "[htp]");
        let e = ServeConfig::parse(&text, "serve.toml").unwrap_err().to_string();
        assert!(e.contains("htp") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn the_shipped_sample_config_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("serve.toml");
        let c = ServeConfig::load(&path).unwrap();
        assert_eq!(c.applications.len(), 3);
        assert_eq!(c.applications[1].deployments[1].deployment.as_deref(), Some("Stage"));
    }

    #[test]
    fn impossible_settings_are_refused() {
        let text = GOOD.replace(
            "min_replicas = 1, max_replicas = 3",
            "min_replicas = 5, max_replicas = 3",
        );
        let e = ServeConfig::parse(&text, "serve.toml").unwrap_err().to_string();
        assert!(e.contains("Model") && e.contains("min_replicas"), "{e}");
        let text = GOOD.replace("ingress = \"Front\"", "ingress = \"Back\"");
        let e = ServeConfig::parse(&text, "serve.toml").unwrap_err().to_string();
        assert!(e.contains("ingress `Back`"), "{e}");
        let text = GOOD.replace("route_prefix = \"/shop\"", "route_prefix = \"shop\"");
        assert!(ServeConfig::parse(&text, "x").is_err());
    }
}
