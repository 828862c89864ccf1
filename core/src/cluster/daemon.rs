//! Running a node daemon in the foreground (`rayforge start`): the head's
//! control service and jobs API when it is the head, the node itself, the
//! cluster file others find it by; and stopping every daemon of this
//! machine (`rayforge stop`).
use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::node::cluster::ClusterRole;
use crate::node::NodeDaemon;

use super::*;

/// Runs a head or node daemon in this process until SIGTERM or SIGINT;
/// `on_ready` is called once it serves.
pub fn run_daemon(opts: &StartOptions, on_ready: impl FnOnce(&Ready)) -> Result<()> {
    crate::init_logging();
    match crate::util::raise_open_files_limit() {
        Ok(n) if n < 4096 => {
            tracing::warn!("this daemon may open only {n} files (RLIMIT_NOFILE): every connection takes one")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("{e}"),
    }
    if let Some(host) = opts.advertise_address.as_deref().filter(|h| !h.trim().is_empty()) {
        if host.contains(':') || host.contains('/') {
            return Err(Error::InvalidArgument(format!(
                "--advertise-address `{host}` should be a host name or IP address, without a port"
            )));
        }
        // Before any thread starts: workers inherit it, and every listener
        // of this process advertises it.
        std::env::set_var(crate::session::ENV_ADVERTISE_HOST, host.trim());
    }
    if let Some(t) = &opts.tls {
        // Before any thread starts, as above: workers and jobs inherit it.
        t.export();
    }
    // A certificate or key that does not load stops the start, naming it.
    if let Some(t) = crate::tls::settings()? {
        if t.identity_pem().is_none() {
            return Err(Error::InvalidArgument(format!(
                "TLS: a node serves, so it needs a certificate and key (--tls-cert, --tls-key, or ${} and ${})",
                crate::tls::ENV_CERT,
                crate::tls::ENV_KEY
            )));
        }
        tracing::info!("TLS on every port");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rayforge-daemon")
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the daemon's runtime", e))?;
    rt.block_on(async {
        // Where the cluster file, pid files and the head's default state
        // live: refused if another user made it.
        let private = crate::util::rayforge_tmp()?;
        let bind = opts.bind.clone().unwrap_or_else(|| "127.0.0.1".into());
        let cfg = Config {
            num_cpus: opts.num_cpus,
            num_gpus: opts.num_gpus,
            resources: opts.resources.clone(),
            object_store_memory: opts.object_store_memory,
            memory_usage_threshold: opts.memory_usage_threshold,
            ..Config::default()
        };
        cfg.validate()?;
        let mut jobs_address = String::new();
        let node_http = crate::node::http::NodeHttp::new();
        let metrics_port = opts.metrics_port.unwrap_or(0);
        let metrics = tokio::net::TcpListener::bind((bind.as_str(), metrics_port))
            .await
            .map_err(|e| Error::io(format!("binding the metrics port {bind}:{metrics_port}"), e))?;
        let metrics_addr = crate::rpc::advertised(
            metrics
                .local_addr()
                .map_err(|e| Error::io("reading the metrics port's address", e))?,
        );
        // The read-only token of the HTTP ports: given, else
        // $RAYFORGE_VIEWER_TOKEN; held to the cluster token's rules.
        let viewer = opts
            .viewer_token
            .clone()
            .or_else(|| std::env::var("RAYFORGE_VIEWER_TOKEN").ok())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        if let Some(v) = &viewer {
            check_token("viewer token", v)?;
        }
        let (head_addr, token, gcs) = if opts.head {
            let port = opts.port.unwrap_or(DEFAULT_PORT);
            let dir = opts
                .state_dir
                .clone()
                .unwrap_or_else(|| private.join(format!("head-{port}")));
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            // Given, else $RAYFORGE_TOKEN (a Kubernetes Secret), else the
            // one this state directory had, else a new one.
            let from_env = std::env::var("RAYFORGE_TOKEN").ok().filter(|t| !t.trim().is_empty());
            let token = match opts.token.clone().or(from_env) {
                Some(t) => t.trim().to_string(),
                None => match std::fs::read_to_string(dir.join("token")) {
                    Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
                    _ => crate::util::random_secret()?,
                },
            };
            check_token("cluster token", &token)?;
            not_the_viewer(&token, viewer.as_deref())?;
            write_private(&dir.join("token"), &token)?;
            crate::rpc::set_token(&token)?;
            let timeout = Duration::from_millis(opts.heartbeat_timeout_ms.unwrap_or(10_000));
            let gcs = crate::gcs::Gcs::open(
                &dir,
                timeout,
                opts.storage_budget.unwrap_or(crate::storage::DEFAULT_BUDGET),
            )?;
            let (incoming, local) = crate::rpc::bind_tcp(&format!("{bind}:{port}")).await?;
            gcs.serve(incoming)?;
            let local = crate::rpc::advertised(local);
            tracing::info!(addr = %local, state = %dir.display(), "head control service started");
            let jobs_port = opts.jobs_port.unwrap_or(crate::jobs::DEFAULT_JOBS_PORT);
            let more = crate::jobs::HeadPort {
                node: node_http.clone(),
                extra: opts.http_routes.clone(),
                artifact_budget: opts.artifact_budget.unwrap_or(crate::jobs::DEFAULT_ARTIFACT_BUDGET),
            };
            let access = crate::http::Access::new(token.clone(), viewer.clone());
            let jobs = crate::jobs::serve(gcs.clone(), local.clone(), access, &bind, jobs_port, more).await?;
            jobs_address = format!("{}://{}", crate::tls::http_scheme(), crate::rpc::advertised(jobs));
            (local, token, Some(gcs))
        } else {
            let address = opts
                .address
                .as_deref()
                .ok_or_else(|| Error::InvalidArgument("a node needs --address of the head (or --head)".into()))?;
            let (addr, token) = resolve(address, opts.token.as_deref())?;
            let token = token.ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "no token for the cluster at {addr}: set RAYFORGE_TOKEN or pass --token-file \
                     (`rayforge token` on the head's machine prints it)"
                ))
            })?;
            not_the_viewer(&token, viewer.as_deref())?;
            crate::rpc::set_token(&token)?;
            (addr, token, None)
        };
        let autoscaled = gcs.clone();
        let role = ClusterRole {
            head_addr: head_addr.clone(),
            bind_host: bind,
            port: opts.node_port.unwrap_or(0),
            is_head: opts.head,
            gcs,
            http_addr: metrics_addr.clone(),
        };
        let node = NodeDaemon::start(cfg, Some(role)).await?;
        if let (Some(cluster), Some(gcs)) = (&opts.autoscaler, autoscaled) {
            start_autoscaler(cluster, opts.autoscaler_path.clone(), gcs, &head_addr, &token)?;
        }
        node_http.set_node(node.clone());
        crate::node::http::serve(
            metrics,
            node_http,
            crate::http::Access::new(token.clone(), viewer.clone()),
        );
        tracing::info!(addr = %metrics_addr, "node HTTP endpoints (/metrics, /healthz, /readyz) started");
        let ready = Ready {
            address: head_addr,
            token,
            node_address: node.state.tcp_addr.clone(),
            node_id: node.state.node_id.clone(),
            jobs_address,
            metrics_address: format!("{}://{metrics_addr}", crate::tls::http_scheme()),
        };
        if opts.head {
            let text = serde_json::to_string(&ready).map_err(|e| Error::Internal(e.to_string()))?;
            let path = cluster_file();
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            write_private(&path, &text)?;
        }
        let pidfile = daemons_dir().join(std::process::id().to_string());
        let _ = std::fs::create_dir_all(daemons_dir());
        let _ = std::fs::write(&pidfile, &ready.node_address);
        // Handlers first: a SIGTERM right after the ready line must stop
        // this node cleanly, not kill it by the default action.
        let signals = signals();
        on_ready(&ready);
        wait_for_signal(signals).await;
        tracing::info!("stopping the node");
        // Recorded as stopped (a head records its own node in its state),
        // not as alive until a heartbeat timeout.
        node.say_stopping().await;
        node.shutdown();
        let _ = std::fs::remove_file(&pidfile);
        if opts.head {
            // Leave the state for a restarted head; forget the address.
            if local_cluster().is_ok_and(|c| c.address == ready.address) {
                let _ = std::fs::remove_file(cluster_file());
            }
        }
        Ok(())
    })
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let res = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        std::fs::rename(&tmp, path)
    })();
    res.map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

type Signals = Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>;

/// SIGTERM and SIGINT, caught from now on.
fn signals() -> Signals {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(term), Ok(int)) => Some((term, int)),
        _ => None,
    }
}

async fn wait_for_signal(signals: Signals) {
    let Some((mut term, mut int)) = signals else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Stops every daemon started on this machine (SIGTERM, then SIGKILL after
/// `grace`); returns how many were stopped.
pub fn stop_all(grace: Duration) -> Result<usize> {
    // Pid files are only believed in this user's own directory.
    crate::util::rayforge_tmp()?;
    let Ok(rd) = std::fs::read_dir(daemons_dir()) else {
        return Ok(0);
    };
    let mut pids = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if is_daemon(pid) {
            // SAFETY: plain syscall.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            pids.push(pid);
        } else {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline && pids.iter().any(|p| Path::new(&format!("/proc/{p}")).exists()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in &pids {
        if Path::new(&format!("/proc/{p}")).exists() {
            // SAFETY: plain syscall.
            unsafe {
                libc::kill(*p, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(daemons_dir().join(p.to_string()));
    }
    Ok(pids.len())
}

/// Whether `pid` is a running daemon (`... start ...`), not a process that
/// took the pid of one that ended without removing its pid file.
fn is_daemon(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|raw| raw.split(|b| *b == 0).nth(1) == Some(b"start".as_slice()))
}

/// The shortest token a head accepts.
pub(crate) const MIN_TOKEN_LEN: usize = 16;

/// Refuses a viewer token that is the cluster token: it would give
/// viewers everything.
fn not_the_viewer(token: &str, viewer: Option<&str>) -> Result<()> {
    if viewer == Some(token) {
        return Err(Error::InvalidArgument(
            "the viewer token is the cluster token: viewers would get everything; give another one".into(),
        ));
    }
    Ok(())
}

/// Refuses a token that guards nothing: empty, shorter than
/// [`MIN_TOKEN_LEN`], or a placeholder left in a manifest.
fn check_token(what: &str, token: &str) -> Result<()> {
    let t = token.trim();
    let why = if t.is_empty() {
        Some("is empty".to_string())
    } else if t.len() < MIN_TOKEN_LEN {
        Some(format!("has {} characters, fewer than {MIN_TOKEN_LEN}", t.len()))
    } else if ["replace-me", "changeme", "change-me", "placeholder"]
        .iter()
        .any(|p| t.to_ascii_lowercase().contains(p))
    {
        Some("is a placeholder".to_string())
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(Error::InvalidArgument(format!(
            "the {what} {why}: give a random one of at least {MIN_TOKEN_LEN} characters \
             (`openssl rand -hex 16`), or start the head without one to have one made"
        ))),
    }
}

/// Starts the autoscaler of `cluster` in the head, its provider's files
/// under the head's state directory.
fn start_autoscaler(
    cluster: &crate::autoscaler::config::ClusterConfig,
    path: Option<std::path::PathBuf>,
    gcs: std::sync::Arc<crate::gcs::Gcs>,
    head_addr: &str,
    token: &str,
) -> Result<()> {
    use crate::autoscaler::config::ProviderConfig;
    let provider: std::sync::Arc<dyn crate::autoscaler::provider::NodeProvider> = match &cluster.provider {
        ProviderConfig::Local { wrapper } => {
            let exe = std::env::current_exe().map_err(|e| Error::io("finding the rayforge binary", e))?;
            std::sync::Arc::new(crate::autoscaler::provider::LocalProvider::new(
                &cluster.cluster_name,
                head_addr,
                token,
                exe,
                wrapper.clone(),
                gcs.dir().join("autoscaler"),
            )?)
        }
        ProviderConfig::Ssh {
            worker_ips,
            ssh_user,
            ssh_private_key,
            ssh_port,
            remote_dir,
            ..
        } => {
            let dir = gcs.dir().join("autoscaler");
            let exe = std::env::current_exe().map_err(|e| Error::io("finding the rayforge binary", e))?;
            let settings = crate::autoscaler::provider::SshSettings {
                cluster: cluster.cluster_name.clone(),
                head_addr: head_addr.to_string(),
                token: token.to_string(),
                hosts: worker_ips.clone(),
                login: crate::autoscaler::hosts::SshLogin {
                    user: ssh_user.clone(),
                    key: ssh_private_key.clone(),
                    port: *ssh_port,
                    known_hosts: dir.join("known_hosts"),
                },
                remote_dir: crate::autoscaler::launcher::remote_dir(cluster, remote_dir.as_deref()),
                exe,
                file_mounts: cluster.file_mounts.clone(),
                setup_commands: cluster.setup_commands.clone(),
            };
            std::sync::Arc::new(crate::autoscaler::provider::SshProvider::new(settings, dir)?)
        }
    };
    tokio::spawn(crate::autoscaler::monitor::run(gcs, cluster.clone(), path, provider));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_token_must_be_long_and_not_a_placeholder() {
        for (t, why) in [
            ("", "is empty"),
            ("   ", "is empty"),
            ("short-token", "fewer than 16"),
            ("replace-me-with-a-random-token", "placeholder"),
        ] {
            let e = check_token("cluster token", t).unwrap_err().to_string();
            assert!(e.contains(why), "{t:?}: {e}");
        }
        check_token("cluster token", &crate::util::random_secret().unwrap()).unwrap();
        assert!(crate::util::random_secret().unwrap().len() >= MIN_TOKEN_LEN);
        assert_ne!(
            crate::util::random_secret().unwrap(),
            crate::util::random_secret().unwrap()
        );
    }
}
