//! The cluster launcher: `rayforge up cluster.yaml` starts a head (on
//! this machine for the local provider, on `head_ip` over SSH for the ssh
//! provider) whose autoscaler brings up `min_workers` and follows demand;
//! `down` removes everything `up` and the autoscaler made; `exec`,
//! `submit`, `attach`, `rsync-up`/`rsync-down` and `monitor` work on the
//! head, as Ray's cluster CLI does.
//!
//! What `up` creates is recorded as it is created, in a ledger on the
//! machine that ran it (`$RAYFORGE_HOME/clusters/<name>.json`, default
//! `~/.rayforge`), and the autoscaler keeps its own of the nodes it
//! launched in the head's state; `down` reads both, stops and removes each
//! thing and prints it, and a second `down` finds nothing.
//!
//! On the head's host the cluster keeps everything under one directory
//! (the binary, the token, the config, `head.log`, the head's state and
//! the daemons' temporary files), so removing it leaves nothing behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::config::{ClusterConfig, ProviderConfig};
use super::hosts::{sh_quote, Host, SshLogin};
use super::provider::{
    mount_target, prepare_host, remote_dir_on, start_args, stop_and_clean_script, stop_script, write_ledger_file,
};
use crate::error::{Error, Result};

/// What `up` created, as the ledger records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ledger {
    /// The cluster's name.
    pub cluster: String,
    /// `local` or the head's SSH host.
    pub head_host: String,
    /// The cluster's directory on the head's host.
    pub head_dir: String,
    /// The head daemon's pid there.
    pub head_pid: u32,
    /// The head's control-service address.
    pub address: String,
    /// The head's HTTP address (jobs API, dashboard).
    pub jobs_address: String,
    /// When it was brought up, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// The directory where the launcher keeps its ledgers.
pub fn launcher_home() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("RAYFORGE_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| Error::InvalidArgument("neither $RAYFORGE_HOME nor $HOME is set".into()))?;
    Ok(PathBuf::from(home).join(".rayforge"))
}

/// The cluster's directory on SSH hosts: `remote_dir` when given, else
/// `rayforge/<cluster>` under the login's home.
pub fn remote_dir(cfg: &ClusterConfig, given: Option<&str>) -> String {
    given
        .map(str::to_string)
        .unwrap_or_else(|| format!("rayforge/{}", cfg.cluster_name))
}

/// A cluster.yaml, and what the launcher knows of the cluster it names.
pub struct Launcher {
    /// The checked config.
    pub cfg: ClusterConfig,
    home: PathBuf,
}

impl Launcher {
    /// Loads and checks `config` (every field, before anything is done).
    pub fn open(config: &Path) -> Result<Launcher> {
        let cfg = ClusterConfig::load(config)?;
        let home = launcher_home()?.join("clusters");
        Ok(Launcher { cfg, home })
    }

    fn ledger_path(&self) -> PathBuf {
        self.home.join(format!("{}.json", self.cfg.cluster_name))
    }

    /// The ledger of this cluster, if `up` created it from this machine.
    pub fn ledger(&self) -> Result<Option<Ledger>> {
        match std::fs::read(self.ledger_path()) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                Error::Runtime(format!(
                    "the launcher's ledger {} is corrupt: {e}",
                    self.ledger_path().display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", self.ledger_path().display()), e)),
        }
    }

    fn write_ledger(&self, l: &Ledger) -> Result<()> {
        std::fs::create_dir_all(&self.home).map_err(|e| Error::io(format!("creating {}", self.home.display()), e))?;
        write_ledger_file(&self.ledger_path(), l)
    }

    fn login(&self) -> Option<SshLogin> {
        match &self.cfg.provider {
            ProviderConfig::Local { .. } => None,
            ProviderConfig::Ssh {
                ssh_user,
                ssh_private_key,
                ssh_port,
                ..
            } => Some(SshLogin {
                user: ssh_user.clone(),
                key: ssh_private_key.clone(),
                port: *ssh_port,
                known_hosts: self.home.join(format!("{}.known_hosts", self.cfg.cluster_name)),
            }),
        }
    }

    fn head_host(&self) -> Host {
        match (&self.cfg.provider, self.login()) {
            (ProviderConfig::Ssh { head_ip, .. }, Some(login)) => Host::Ssh {
                addr: head_ip.clone(),
                login,
            },
            _ => Host::Local,
        }
    }

    /// The cluster's directory on the head's host.
    fn head_dir(&self, host: &Host) -> Result<String> {
        match &self.cfg.provider {
            ProviderConfig::Local { .. } => Ok(self.home.join(&self.cfg.cluster_name).to_string_lossy().into_owned()),
            ProviderConfig::Ssh { remote_dir: d, .. } => remote_dir_on(host, &remote_dir(&self.cfg, d.as_deref())),
        }
    }

    /// Checks what `up` needs before it creates anything: the tools, the
    /// key, every host answering over SSH, the head's ports free.
    fn check_prerequisites(&self, out: &mut dyn Write) -> Result<()> {
        let mut problems = Vec::new();
        if let ProviderConfig::Ssh {
            head_ip,
            worker_ips,
            ssh_private_key,
            ..
        } = &self.cfg.provider
        {
            for tool in ["ssh", "scp"] {
                let found = std::process::Command::new(tool)
                    .arg("-V")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok();
                if !found {
                    problems.push(format!("`{tool}` is not installed (Debian: openssh-client)"));
                }
            }
            if let Err(e) = std::fs::File::open(ssh_private_key) {
                problems.push(format!("provider.ssh_private_key {}: {e}", ssh_private_key.display()));
            }
            if problems.is_empty() {
                let login = self
                    .login()
                    .ok_or_else(|| Error::Internal("ssh provider without a login".into()))?;
                std::fs::create_dir_all(&self.home)
                    .map_err(|e| Error::io(format!("creating {}", self.home.display()), e))?;
                for ip in std::iter::once(head_ip).chain(worker_ips) {
                    let host = Host::Ssh {
                        addr: ip.clone(),
                        login: login.clone(),
                    };
                    let _ = writeln!(out, "  checking {ip} over SSH");
                    if let Err(e) = host.run("true") {
                        problems.push(format!("host {ip} is unreachable: {e}"));
                    }
                }
            }
        }
        for (what, port) in [
            ("head.port", self.cfg.head.port),
            ("head.jobs_port", self.cfg.head.jobs_port),
        ] {
            if port == 0 {
                continue;
            }
            let in_use = match &self.head_host() {
                Host::Local => std::net::TcpListener::bind(("127.0.0.1", port)).is_err(),
                host => host
                    .run(&format!(
                        "(command -v ss >/dev/null && ss -ltn 'sport = :{port}' | grep -q LISTEN) && echo used || true"
                    ))
                    .map(|o| o.trim() == "used")
                    .unwrap_or(false),
            };
            if in_use {
                problems.push(format!("{what} {port} is in use on the head's host"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "cannot bring up cluster {}: {}",
                self.cfg.cluster_name,
                problems.join("; ")
            )))
        }
    }

    /// Whether the head the ledger names answers.
    fn head_alive(&self, l: &Ledger) -> bool {
        let Ok(token) = self.token(l) else { return false };
        crate::cluster::HeadClient::connect(&l.address, Some(&token))
            .and_then(|mut c| c.nodes())
            .is_ok()
    }

    /// The cluster's token (kept on the head's host).
    pub fn token(&self, l: &Ledger) -> Result<String> {
        let host = self.head_host();
        Ok(host
            .run(&format!("cat {}/token", sh_quote(&l.head_dir)))?
            .trim()
            .to_string())
    }

    /// The config as the head reads it: for the ssh provider, the key and
    /// the file mounts at the places `up` copied them to on the head.
    fn head_config(&self, dir: &str) -> Result<String> {
        let mut cfg = self.cfg.clone();
        if let ProviderConfig::Ssh { ssh_private_key, .. } = &mut cfg.provider {
            *ssh_private_key = PathBuf::from(format!("{dir}/ssh_key"));
            for (remote, local) in cfg.file_mounts.iter_mut() {
                *local = PathBuf::from(mount_target(dir, remote));
            }
        }
        serde_yaml::to_string(&cfg).map_err(|e| Error::Internal(format!("writing the head's cluster.yaml: {e}")))
    }

    /// Brings the cluster up, or applies a changed config to the running
    /// one without restarting it.
    pub fn up(&self, out: &mut dyn Write) -> Result<Ledger> {
        let c = &self.cfg;
        let host = self.head_host();
        if let Some(l) = self.ledger()? {
            if self.head_alive(&l) {
                let yaml = self.head_config(&l.head_dir)?;
                host.run_with_input(
                    &format!(
                        "cat > {d}/cluster.yaml.new && mv {d}/cluster.yaml.new {d}/cluster.yaml",
                        d = sh_quote(&l.head_dir)
                    ),
                    yaml.as_bytes(),
                )?;
                let _ = writeln!(
                    out,
                    "cluster {} is up (head at {}): its cluster.yaml is updated and the autoscaler applies it \
                     within seconds; nothing was restarted (head settings take effect after down and up)",
                    c.cluster_name, l.address
                );
                return Ok(l);
            }
            let _ = writeln!(
                out,
                "cluster {}: the head recorded at {} does not answer; removing what is left before starting again",
                c.cluster_name, l.address
            );
            self.down(out)?;
        }
        let _ = writeln!(out, "cluster {}: checking prerequisites", c.cluster_name);
        self.check_prerequisites(out)?;
        let head_ip = match &c.provider {
            ProviderConfig::Ssh { head_ip, .. } => head_ip.clone(),
            ProviderConfig::Local { .. } => "127.0.0.1".to_string(),
        };
        let _ = writeln!(
            out,
            "cluster {}: will start the head on {} (port {}), then the autoscaler launches:",
            c.cluster_name,
            host.name(),
            c.head.port
        );
        for (name, t) in &c.available_node_types {
            let _ = writeln!(
                out,
                "  {name} {}: {} to {} nodes",
                super::policy::shape(&t.resources),
                t.min_workers,
                t.max_workers
            );
        }
        let dir = self.head_dir(&host)?;
        let q = sh_quote(&dir);
        host.run(&format!("mkdir -p {q}/bin {q}/tmp {q}/jobs && chmod 700 {q}"))?;
        // Recorded before the head exists, so a failure below is undone by
        // `down`.
        let mut ledger = Ledger {
            cluster: c.cluster_name.clone(),
            head_host: host.name().to_string(),
            head_dir: dir.clone(),
            head_pid: 0,
            address: format!("{head_ip}:{}", c.head.port),
            jobs_address: String::new(),
            created_ms: crate::clock::now_ms(),
        };
        self.write_ledger(&ledger)?;
        let exe = std::env::current_exe().map_err(|e| Error::io("finding the rayforge binary", e))?;
        let exe_sha = crate::gcs::file_sha256(&exe)?;
        let mut log = |step: String| {
            let _ = writeln!(out, "  {step}");
        };
        prepare_host(&host, &dir, &exe, &exe_sha, &c.file_mounts, &c.setup_commands, &mut log)?;
        let bin = format!("{dir}/bin/rayforge");
        let token = crate::util::random_secret()?;
        host.run_with_input(&format!("umask 077 && cat > {q}/token"), token.as_bytes())?;
        if let ProviderConfig::Ssh { ssh_private_key, .. } = &c.provider {
            let key = std::fs::read(ssh_private_key)
                .map_err(|e| Error::io(format!("reading {}", ssh_private_key.display()), e))?;
            host.run_with_input(&format!("umask 077 && cat > {q}/ssh_key"), &key)?;
        }
        host.run_with_input(&format!("cat > {q}/cluster.yaml"), self.head_config(&dir)?.as_bytes())?;
        let mut args = vec![
            "start".to_string(),
            "--head".into(),
            "--port".into(),
            c.head.port.to_string(),
            "--jobs-port".into(),
            c.head.jobs_port.to_string(),
            "--state-dir".into(),
            format!("{dir}/head"),
            "--autoscaling-config".into(),
            format!("{dir}/cluster.yaml"),
            "--block".into(),
        ];
        if matches!(c.provider, ProviderConfig::Ssh { .. }) {
            args.extend([
                "--bind".into(),
                "0.0.0.0".into(),
                "--advertise-address".into(),
                head_ip.clone(),
            ]);
        }
        if let Some(r) = &c.head.resources {
            args.extend(start_args(r, false)?);
        }
        let args: Vec<String> = args.iter().map(|a| sh_quote(a)).collect();
        let script = format!(
            "cd {q} && RAYFORGE_TOKEN=\"$(cat token)\" TMPDIR={q}/tmp RAYFORGE_CLUSTER_FILE={q}/tmp/cluster.json \
             NO_COLOR=1 RAYFORGE_LOG=${{RAYFORGE_LOG:-info}} setsid nohup {} {} > head.log 2>&1 < /dev/null & echo $!",
            sh_quote(&bin),
            args.join(" ")
        );
        let pid = host.run(&script)?;
        ledger.head_pid = pid
            .trim()
            .parse()
            .map_err(|_| Error::Runtime(format!("starting the head printed {pid:?}, not its pid")))?;
        self.write_ledger(&ledger)?;
        // Wait for it to serve.
        let deadline = Instant::now() + Duration::from_secs(90);
        let ready = loop {
            let text = host
                .run(&format!("cat {q}/tmp/cluster.json 2>/dev/null || true"))
                .unwrap_or_default();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                if let (Some(a), Some(j)) = (v["address"].as_str(), v["jobs_address"].as_str()) {
                    break Some((a.to_string(), j.to_string()));
                }
            }
            let alive = host
                .run(&format!(
                    "kill -0 {} 2>/dev/null && echo yes || echo no",
                    ledger.head_pid
                ))
                .map(|o| o.trim() == "yes")
                .unwrap_or(true);
            if !alive || Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        let Some((address, jobs)) = ready else {
            let log = host.run(&format!("tail -n 20 {q}/head.log")).unwrap_or_default();
            return Err(Error::Runtime(format!(
                "the head on {} did not start (run `rayforge down` to clean up); the end of its log:\n{log}",
                host.name()
            )));
        };
        ledger.address = address;
        ledger.jobs_address = jobs;
        self.write_ledger(&ledger)?;
        let _ = writeln!(
            out,
            "cluster {} is up: head at {} (dashboard and jobs API at {}); its files are in {}:{dir}\n\
             run programs on it with `rayforge submit` or `rayforge exec`, watch it with `rayforge monitor`",
            c.cluster_name,
            ledger.address,
            ledger.jobs_address,
            host.name()
        );
        Ok(ledger)
    }

    /// Removes everything `up` and the autoscaler made: the nodes (their
    /// processes and directories), the head, its directory and the ledger.
    /// Returns what it removed, one line each (also printed to `out`).
    pub fn down(&self, out: &mut dyn Write) -> Result<Vec<String>> {
        let Some(l) = self.ledger()? else {
            let _ = writeln!(
                out,
                "cluster {}: nothing to remove (no ledger at {})",
                self.cfg.cluster_name,
                self.ledger_path().display()
            );
            return Ok(Vec::new());
        };
        let host = self.head_host();
        let q = sh_quote(&l.head_dir);
        let mut removed = Vec::new();
        // The head first, so its autoscaler launches nothing more.
        if l.head_pid > 0 {
            host.run(&stop_script(l.head_pid))?;
            removed.push(format!("head process {} on {}", l.head_pid, host.name()));
        }
        // Then each node its autoscaler's ledger lists.
        let nodes = host
            .run(&format!("cat {q}/head/autoscaler/ledger.json 2>/dev/null || echo []"))
            .unwrap_or_else(|_| "[]".into());
        let nodes: Vec<serde_json::Value> = serde_json::from_str(&nodes).unwrap_or_default();
        for n in nodes {
            let id = n["id"].as_str().unwrap_or("?");
            // 0: its start was under way (no process yet, maybe files).
            let pid = n["pid"].as_u64().unwrap_or(0) as u32;
            match (n["host"].as_str(), self.login()) {
                (Some(addr), Some(login)) => {
                    let node_host = Host::Ssh {
                        addr: addr.to_string(),
                        login,
                    };
                    let dir = n["remote_dir"].as_str().unwrap_or_default();
                    let dir = remote_dir_on(&node_host, dir)?;
                    node_host.run(&stop_and_clean_script(pid, &dir))?;
                    removed.push(format!("node {id}: process {pid} and {dir} on {addr}"));
                }
                _ if pid == 0 => {}
                _ => {
                    host.run(&stop_script(pid))?;
                    removed.push(format!("node {id}: process {pid}"));
                }
            }
        }
        host.run(&format!("rm -rf {q}"))?;
        removed.push(format!("{} on {}", l.head_dir, host.name()));
        let _ = std::fs::remove_file(self.ledger_path());
        let _ = std::fs::remove_file(self.home.join(format!("{}.known_hosts", self.cfg.cluster_name)));
        removed.push(format!("ledger {}", self.ledger_path().display()));
        for r in &removed {
            let _ = writeln!(out, "removed {r}");
        }
        let _ = writeln!(out, "cluster {} is down", self.cfg.cluster_name);
        Ok(removed)
    }

    fn running(&self) -> Result<Ledger> {
        self.ledger()?.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "cluster {} is not up (no ledger at {}): run `rayforge up` first",
                self.cfg.cluster_name,
                self.ledger_path().display()
            ))
        })
    }

    /// The command that runs `cmd` on the head, in the cluster's directory,
    /// with `RAYFORGE_ADDRESS` and `RAYFORGE_TOKEN` set for programs that
    /// join the cluster.
    pub fn exec_command(&self, cmd: &str, tty: bool) -> Result<std::process::Command> {
        let l = self.running()?;
        let script = format!(
            "cd {q} && RAYFORGE_ADDRESS={a} RAYFORGE_TOKEN=\"$(cat token)\" TMPDIR={q}/tmp \
             RAYFORGE_CLUSTER_FILE={q}/tmp/cluster.json PATH={q}/bin:\"$PATH\" sh -c {c}",
            q = sh_quote(&l.head_dir),
            a = sh_quote(&l.address),
            c = sh_quote(cmd)
        );
        Ok(self.head_host().command(&script, tty))
    }

    /// Copies `program` to the head and runs it there with `args` (the
    /// command to pass to [`std::process::Command::status`]).
    pub fn submit_command(&self, program: &Path, args: &[String]) -> Result<std::process::Command> {
        let l = self.running()?;
        let name = program
            .file_name()
            .ok_or_else(|| Error::InvalidArgument(format!("{} names no file", program.display())))?
            .to_string_lossy()
            .into_owned();
        let to = format!("{}/jobs/{name}", l.head_dir);
        self.head_host().copy_to(program, &to)?;
        self.head_host().run(&format!("chmod 755 {}", sh_quote(&to)))?;
        let mut cmd = format!("jobs/{}", sh_quote(&name));
        for a in args {
            cmd.push(' ');
            cmd.push_str(&sh_quote(a));
        }
        self.exec_command(&cmd, false)
    }

    /// An interactive shell on the head (in the cluster's directory).
    pub fn attach_command(&self) -> Result<std::process::Command> {
        self.exec_command("exec ${SHELL:-sh} -i", true)
    }

    /// Copies the local `from` to `to` on the head (relative: under the
    /// cluster's directory).
    pub fn rsync_up(&self, from: &Path, to: &str) -> Result<()> {
        let l = self.running()?;
        self.head_host().copy_to(from, &mount_target(&l.head_dir, to))
    }

    /// Copies `from` on the head (relative: under the cluster's
    /// directory) to the local `to`.
    pub fn rsync_down(&self, from: &str, to: &Path) -> Result<()> {
        let l = self.running()?;
        self.head_host().copy_from(&mount_target(&l.head_dir, from), to)
    }

    /// The command that shows the head's log (the autoscaler's decisions
    /// among it): its last `lines`, then what follows when `follow`.
    pub fn monitor_command(&self, lines: u32, follow: bool) -> Result<std::process::Command> {
        let l = self.running()?;
        let script = format!(
            "tail -n {lines} {} {}/head.log",
            if follow { "-F" } else { "" },
            sh_quote(&l.head_dir)
        );
        Ok(self.head_host().command(&script, false))
    }
}
