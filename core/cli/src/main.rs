//! The `rayforge` command line: start and stop cluster daemons, inspect a
//! cluster, and run the core microbenchmarks.
//!
//! ```text
//! rayforge start --head --num-cpus 4        # head: control service + a node
//! rayforge start --address 127.0.0.1:6379   # another node joining it
//! rayforge status                           # nodes, resources, pending demands
//! rayforge list nodes|jobs|actors|placement-groups|tasks|objects
//! rayforge logs [--pid PID] [--tail BYTES]   # worker output, every node
//! rayforge timeline [--output trace.json]   # Chrome trace of recent tasks
//! rayforge job submit --working-dir . -- ./pipeline --epochs 3
//! rayforge job status|logs [--follow]|stop ID; rayforge job list
//! rayforge up cluster.yaml                  # a cluster that grows: head + autoscaler
//! rayforge submit|exec|attach|rsync-up|rsync-down|monitor cluster.yaml ...
//! rayforge down cluster.yaml                # removes everything `up` created
//! rayforge stop                             # every daemon on this machine
//! rayforge microbenchmark [--json FILE]
//! rayforge cluster-benchmark [--json FILE]  # many tasks/actors, broadcast, 100+ nodes
//! rayforge autoscaler-benchmark             # the autoscaler's decision on 1,000 nodes
//! ```

mod autoscaler_benchmark;
mod cluster_benchmark;
mod microbenchmark;
mod storage_benchmark;

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use rayforge::autoscaler::launcher::Launcher;
use rayforge::cluster::{HeadClient, StartOptions};

#[derive(Parser)]
#[command(name = "rayforge", version, about = "rayforge: a distributed runtime for Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of `start`'s many options costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Start a head (`--head`) or a node joining one (`--address`) in the background.
    Start {
        /// Start the head: the control service and a node.
        #[arg(long, conflicts_with = "address")]
        head: bool,
        /// The head to join (host:port, or "auto" for this machine's).
        #[arg(long, required_unless_present = "head")]
        address: Option<String>,
        /// Port of the head's control service.
        #[arg(long, default_value_t = rayforge::cluster::DEFAULT_PORT)]
        port: u16,
        /// Port of this node's service (default: any free port).
        #[arg(long)]
        node_port: Option<u16>,
        /// Interface to listen on (loopback unless told otherwise).
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        /// CPUs this node offers (default: detected cores).
        #[arg(long)]
        num_cpus: Option<f64>,
        /// GPUs this node offers (default: detected devices).
        #[arg(long)]
        num_gpus: Option<f64>,
        /// Custom resources as a JSON object, e.g. '{"TPU": 2}'.
        #[arg(long)]
        resources: Option<String>,
        /// Object store capacity in bytes.
        #[arg(long)]
        object_store_memory: Option<u64>,
        /// Node memory use (0-1) above which the memory monitor kills the
        /// newest retriable task (default 0.95; 1 turns it off).
        #[arg(long)]
        memory_usage_threshold: Option<f64>,
        #[command(flatten)]
        token: TokenArgs,
        /// A file holding a read-only token for the HTTP ports (the
        /// dashboard, /metrics for a scraper; default $RAYFORGE_VIEWER_TOKEN).
        #[arg(long)]
        viewer_token_file: Option<std::path::PathBuf>,
        /// Milliseconds without heartbeats before a node is declared dead.
        #[arg(long)]
        heartbeat_timeout_ms: Option<u64>,
        /// Where the head persists its state (and the cluster's storage,
        /// `cluster://`, under `storage/`).
        #[arg(long)]
        state_dir: Option<std::path::PathBuf>,
        /// Bytes the head's cluster storage may hold (checkpoints, trial
        /// files, results; default 20 GiB): writes past it fail, naming it.
        #[arg(long)]
        storage_budget: Option<u64>,
        /// Bytes of job binaries, working-directory packages and job logs
        /// the head keeps (default 10 GiB): past it, the oldest that no
        /// running job needs are removed.
        #[arg(long)]
        artifact_budget: Option<u64>,
        /// TLS on every port of this node: its certificate (PEM; with
        /// --tls-key). Clients trust --tls-ca, else this certificate; other
        /// programs set $RAYFORGE_TLS_CA to dial a TLS cluster.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<std::path::PathBuf>,
        /// The private key of --tls-cert (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<std::path::PathBuf>,
        /// The authority clients trust (PEM; default: --tls-cert).
        #[arg(long, requires = "tls_cert")]
        tls_ca: Option<std::path::PathBuf>,
        /// Port of the head's HTTP jobs API (0: any free port).
        #[arg(long, default_value_t = rayforge::jobs::DEFAULT_JOBS_PORT)]
        jobs_port: u16,
        /// Port of this node's /metrics, /healthz and /readyz (default: any
        /// free port; the head also serves them on its jobs port).
        #[arg(long)]
        metrics_port: Option<u16>,
        /// The host others should dial for this node (e.g. the pod IP when
        /// it binds 0.0.0.0).
        #[arg(long)]
        advertise_address: Option<String>,
        /// Do not serve the dashboard on the head's jobs port.
        #[arg(long)]
        no_dashboard: bool,
        /// Run an autoscaler in the head for this cluster.yaml: it launches
        /// nodes of its types for work that waits and removes idle ones.
        #[arg(long, requires = "head")]
        autoscaling_config: Option<std::path::PathBuf>,
        /// Stay in the foreground (logs to stderr) instead of daemonizing.
        #[arg(long)]
        block: bool,
    },
    /// Bring up the cluster of a cluster.yaml (or apply changes to it):
    /// checks the file and every prerequisite first, then starts the head,
    /// whose autoscaler launches min_workers and follows demand.
    Up {
        /// The cluster.yaml.
        config: std::path::PathBuf,
    },
    /// Remove everything `up` and the autoscaler created, printing each.
    Down {
        /// The cluster.yaml.
        config: std::path::PathBuf,
    },
    /// Open a shell on the cluster's head.
    Attach {
        /// The cluster.yaml.
        config: std::path::PathBuf,
    },
    /// Run a shell command on the head (RAYFORGE_ADDRESS and
    /// RAYFORGE_TOKEN set for programs that join the cluster).
    Exec {
        /// The cluster.yaml.
        config: std::path::PathBuf,
        /// The command.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Copy a program to the head and run it there as the cluster's driver.
    Submit {
        /// The cluster.yaml.
        config: std::path::PathBuf,
        /// The program (a binary built with rayforge).
        program: std::path::PathBuf,
        /// Its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Copy a local file or directory to the head (a relative target is
    /// under the cluster's directory there).
    RsyncUp {
        /// The cluster.yaml.
        config: std::path::PathBuf,
        /// The local source.
        source: std::path::PathBuf,
        /// The target on the head.
        target: String,
    },
    /// Copy a file or directory from the head to this machine.
    RsyncDown {
        /// The cluster.yaml.
        config: std::path::PathBuf,
        /// The source on the head (relative: under the cluster's directory).
        source: String,
        /// The local target.
        target: std::path::PathBuf,
    },
    /// Show the head's log, the autoscaler's decisions among it.
    Monitor {
        /// The cluster.yaml.
        config: std::path::PathBuf,
        /// How many of the last lines to show first.
        #[arg(long, default_value_t = 100)]
        lines: u32,
        /// Show them and return instead of following the log.
        #[arg(long)]
        no_follow: bool,
    },
    /// Print the token of the cluster started on this machine (for
    /// `RAYFORGE_TOKEN` on other machines, or the dashboard's login).
    Token,
    /// Stop every rayforge daemon started on this machine.
    Stop {
        /// Seconds to wait for a clean stop before killing.
        #[arg(long, default_value_t = 10.0)]
        grace: f64,
    },
    /// Show the cluster's nodes, resources, pending demands and jobs.
    Status {
        /// The head (host:port); default: this machine's cluster.
        #[arg(long, default_value = "auto")]
        address: String,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// List cluster state as JSON.
    List {
        /// What to list.
        what: ListWhat,
        /// The head (host:port); default: this machine's cluster.
        #[arg(long, default_value = "auto")]
        address: String,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Print the output of worker processes on every node.
    Logs {
        /// Only this worker process.
        #[arg(long)]
        pid: Option<u32>,
        /// Only the last BYTES of each log (0: list the logs without their
        /// text). Each node sends at most the last 4 MiB of a log and
        /// 16 MiB in all.
        #[arg(long)]
        tail: Option<u64>,
        /// The head (host:port); default: this machine's cluster.
        #[arg(long, default_value = "auto")]
        address: String,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Write a Chrome trace (chrome://tracing, ui.perfetto.dev) of recent tasks.
    Timeline {
        /// Where to write it.
        #[arg(long, short, default_value = "timeline.json")]
        output: std::path::PathBuf,
        /// The head (host:port); default: this machine's cluster.
        #[arg(long, default_value = "auto")]
        address: String,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Submit and manage jobs through the head's HTTP jobs API.
    Job {
        #[command(subcommand)]
        command: JobCommand,
        /// The jobs API (http://host:port); default: this machine's cluster.
        #[arg(long, default_value = "auto", global = true)]
        address: String,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Measure checkpoint upload and download throughput to a storage URI
    /// (a path, cluster://, s3://) beside local disk.
    StorageBenchmark {
        /// Where to (cluster:// joins the cluster of --address).
        #[arg(long)]
        uri: String,
        /// The checkpoint's size in bytes.
        #[arg(long, default_value_t = 10_000_000)]
        bytes: u64,
        /// Rounds (the best is reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// The cluster to join for cluster:// (`auto`: this machine's).
        #[arg(long)]
        address: Option<String>,
    },
    /// Time the autoscaler's decision (the pure policy) on a large cluster:
    /// nodes of four types, queued tasks of many shapes, pending placement
    /// groups and an explicit request.
    AutoscalerBenchmark {
        /// Nodes in the cluster.
        #[arg(long, default_value_t = 1_000)]
        nodes: usize,
        /// Queued tasks, spread over the shapes.
        #[arg(long, default_value_t = 100_000)]
        tasks: u32,
        /// Resource shapes of the queued tasks.
        #[arg(long, default_value_t = 20)]
        shapes: usize,
        /// Rounds (the median and the best are reported).
        #[arg(long, default_value_t = 21)]
        rounds: usize,
        /// Instead, time scaling with real processes this many times: a
        /// pending task to its start on a node launched for it, and an idle
        /// node to its removal (the local provider).
        #[arg(long)]
        scaling: Option<usize>,
    },
    /// Run the core microbenchmarks (same cases and names as `ray microbenchmark`).
    Microbenchmark {
        /// Write `{"case name": ops_per_second, ...}` to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// Only run cases whose name contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Seconds per measurement round (Ray uses about 2 s x 5 rounds).
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
    /// Run the multi-node scale cases on local node daemons (tasks, actors,
    /// broadcast, cross-node calls, 100+ nodes).
    ClusterBenchmark(cluster_benchmark::Settings),
}

/// Where a command finds the cluster token. Given none, a head reads
/// `$RAYFORGE_TOKEN`, then its state directory, and makes one otherwise;
/// everything else reads `$RAYFORGE_TOKEN`, then this machine's cluster
/// file.
#[derive(clap::Args)]
struct TokenArgs {
    /// The cluster token. Every user of this machine can read a command's
    /// arguments (`ps`): prefer $RAYFORGE_TOKEN or --token-file.
    #[arg(long, global = true)]
    token: Option<String>,
    /// A file holding the cluster token (as a Kubernetes Secret mounted as
    /// a file).
    #[arg(long, global = true, conflicts_with = "token")]
    token_file: Option<std::path::PathBuf>,
}

impl TokenArgs {
    /// The token given, if any; a file that cannot be read or holds
    /// nothing is an error naming it.
    fn get(&self) -> rayforge::Result<Option<String>> {
        if let Some(path) = &self.token_file {
            return read_token_file(path).map(Some);
        }
        if self.token.is_some() {
            eprintln!(
                "rayforge: warning: --token is visible to every user of this machine in the process list; \
                 prefer RAYFORGE_TOKEN or --token-file"
            );
        }
        Ok(self.token.clone())
    }
}

/// The token a file holds; a file that cannot be read or holds nothing
/// is an error naming it.
fn read_token_file(path: &std::path::Path) -> rayforge::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| rayforge::Error::InvalidArgument(format!("token file {}: {e}", path.display())))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(rayforge::Error::InvalidArgument(format!(
            "token file {} is empty",
            path.display()
        )));
    }
    Ok(t.to_string())
}

#[derive(Subcommand)]
enum JobCommand {
    /// Run a command on the head as a job (its output is kept as the job's log).
    Submit {
        /// A JSON file: {"env_vars": {"NAME": "value"}, "working_dir": "dir"}.
        #[arg(long)]
        runtime_env: Option<std::path::PathBuf>,
        /// A local directory shipped to every node as the job's working directory.
        #[arg(long)]
        working_dir: Option<std::path::PathBuf>,
        /// Return once submitted instead of following the output to the end.
        #[arg(long)]
        no_wait: bool,
        /// The command (after `--`).
        #[arg(last = true, required = true)]
        entrypoint: Vec<String>,
    },
    /// Show a job's state.
    Status {
        /// The job id.
        job_id: String,
    },
    /// Print a submitted job's output.
    Logs {
        /// The job id.
        job_id: String,
        /// Keep printing until the job ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Stop a submitted job.
    Stop {
        /// The job id.
        job_id: String,
    },
    /// List every job as JSON.
    List,
}

/// Joins argv into one shell command, quoting what the shell would split.
fn shell_join(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let plain = !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_job(command: JobCommand, address: &str, token: Option<&str>) -> rayforge::Result<()> {
    use rayforge::jobs::{JobClient, RuntimeEnv};
    let c = JobClient::connect(address, token)?;
    let json = |v: &dyn erased::Json| -> rayforge::Result<()> {
        out(&format!("{}\n", v.pretty()?));
        Ok(())
    };
    match command {
        JobCommand::Submit {
            runtime_env,
            working_dir,
            no_wait,
            entrypoint,
        } => {
            let mut env = match runtime_env {
                Some(p) => RuntimeEnv::from_file(&p)?,
                None => RuntimeEnv::default(),
            };
            if let Some(dir) = working_dir {
                env.working_dir = Some(dir.to_string_lossy().into_owned());
            }
            let id = c.submit(&shell_join(&entrypoint), &env)?;
            out(&format!("job {id} submitted\n"));
            if no_wait {
                out(&format!(
                    "follow it with `rayforge job logs --follow {id}`; see it with `rayforge job status {id}`\n"
                ));
                return Ok(());
            }
            let done = c.follow(&id, out)?;
            out(&format!("job {id} {}: {}\n", done.state, done.message));
            if done.state == "SUCCEEDED" {
                Ok(())
            } else {
                Err(rayforge::Error::Runtime(format!("job {id} {}", done.state)))
            }
        }
        JobCommand::Status { job_id } => json(&c.status(&job_id)?),
        JobCommand::Logs { job_id, follow } => {
            if follow {
                c.follow(&job_id, out)?;
            } else {
                let mut offset = 0;
                loop {
                    let chunk = c.logs(&job_id, offset)?;
                    out(&chunk.logs);
                    if chunk.next_offset == offset {
                        break;
                    }
                    offset = chunk.next_offset;
                }
            }
            Ok(())
        }
        JobCommand::Stop { job_id } => {
            if c.stop(&job_id)? {
                out(&format!("job {job_id} stopping\n"));
            } else {
                out(&format!("job {job_id} was not running\n"));
            }
            Ok(())
        }
        JobCommand::List => json(&c.list()?),
    }
}

/// Pretty JSON of any serializable value behind a `dyn`.
mod erased {
    pub(crate) trait Json {
        fn pretty(&self) -> rayforge::Result<String>;
    }
    impl<T: serde::Serialize> Json for T {
        fn pretty(&self) -> rayforge::Result<String> {
            serde_json::to_string_pretty(self).map_err(|e| rayforge::Error::Runtime(e.to_string()))
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ListWhat {
    Nodes,
    Jobs,
    Actors,
    PlacementGroups,
    Tasks,
    Objects,
}

/// Tells on stderr which nodes a listing lacks.
fn warn_unreachable(unreachable: &[String]) {
    for u in unreachable {
        eprintln!("warning: node {u} did not answer; what it holds is missing");
    }
}

fn parse_resources(text: &str) -> rayforge::Result<HashMap<String, f64>> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| rayforge::Error::InvalidArgument(format!("--resources is not valid JSON ({e}): {text}")))?;
    let obj = v.as_object().ok_or_else(|| {
        rayforge::Error::InvalidArgument(format!(
            "--resources must be a JSON object like {{\"TPU\": 2}}, got {text}"
        ))
    })?;
    let mut out = HashMap::new();
    for (k, v) in obj {
        let n = v.as_f64().filter(|n| n.is_finite() && *n >= 0.0).ok_or_else(|| {
            rayforge::Error::InvalidArgument(format!("--resources: `{k}` must be a non-negative number, got {v}"))
        })?;
        out.insert(k.clone(), n);
    }
    Ok(out)
}

/// Re-runs this command with `--block` in a new session, logging to a file,
/// and returns once the daemon reports it serves.
/// Starts this command again with `--block` as a detached daemon and
/// prints its first line. The token goes to it in the environment, not in
/// its arguments, where every user of the machine could read it.
fn daemonize(token: Option<&str>) -> rayforge::Result<()> {
    let exe = std::env::current_exe().map_err(|e| rayforge::Error::Runtime(format!("locating rayforge: {e}")))?;
    let logs = rayforge::util::rayforge_tmp()?.join("logs");
    std::fs::create_dir_all(&logs)
        .map_err(|e| rayforge::Error::Runtime(format!("creating {}: {e}", logs.display())))?;
    let log_path = logs.join(format!("daemon-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| rayforge::Error::Runtime(format!("creating {}: {e}", log_path.display())))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(without_token_args(std::env::args_os().skip(1)))
        .arg("--block")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log);
    if std::env::var_os("RAYFORGE_LOG").is_none() {
        cmd.env("RAYFORGE_LOG", "info");
    }
    if let Some(t) = token {
        cmd.env("RAYFORGE_TOKEN", t);
    }
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from our
    // terminal so it outlives this command.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| rayforge::Error::Runtime(format!("starting the daemon: {e}")))?;
    let Some(pipe) = child.stdout.take() else {
        return Err(rayforge::Error::Runtime("no pipe to the daemon".into()));
    };
    let mut line = String::new();
    let n = std::io::BufReader::new(pipe).read_line(&mut line).unwrap_or(0);
    if n == 0 {
        let status = child.wait().ok();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        return Err(rayforge::Error::Runtime(format!(
            "the daemon did not start ({}); its log {}:\n{}",
            status.map(|s| s.to_string()).unwrap_or_default(),
            log_path.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )));
    }
    out(&format!("{line}logs: {}\n", log_path.display()));
    Ok(())
}

/// The arguments without `--token`/`--token-file` and their values.
fn without_token_args(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        let text = a.to_string_lossy();
        if text == "--token" || text == "--token-file" {
            skip_value = true;
        } else if !(text.starts_with("--token=") || text.starts_with("--token-file=")) {
            out.push(a);
        }
    }
    out
}

/// Writes to stdout; a closed pipe (`rayforge list jobs | head`) is not an error.
fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes()).and_then(|_| o.flush());
}

fn run(cli: Cli) -> rayforge::Result<()> {
    match cli.command {
        Command::Start {
            head,
            address,
            port,
            node_port,
            bind,
            num_cpus,
            num_gpus,
            resources,
            object_store_memory,
            memory_usage_threshold,
            token,
            viewer_token_file,
            heartbeat_timeout_ms,
            state_dir,
            storage_budget,
            artifact_budget,
            tls_cert,
            tls_key,
            tls_ca,
            jobs_port,
            metrics_port,
            advertise_address,
            no_dashboard,
            autoscaling_config,
            block,
        } => {
            // Checked before anything starts (and before daemonizing, so
            // a mistake is printed where the user typed the command).
            let autoscaler = autoscaling_config
                .as_deref()
                .map(rayforge::autoscaler::config::ClusterConfig::load)
                .transpose()?;
            let resources = match resources {
                Some(r) => parse_resources(&r)?,
                None => HashMap::new(),
            };
            let opts = StartOptions {
                head,
                address,
                port: Some(port),
                node_port,
                bind: Some(bind),
                num_cpus,
                num_gpus,
                resources,
                object_store_memory,
                memory_usage_threshold,
                token: token.get()?,
                viewer_token: viewer_token_file.as_deref().map(read_token_file).transpose()?,
                heartbeat_timeout_ms,
                state_dir,
                storage_budget,
                artifact_budget,
                tls: match (tls_cert, tls_key) {
                    (Some(cert), Some(key)) => Some(rayforge::tls::TlsFiles { cert, key, ca: tls_ca }),
                    _ => None,
                },
                jobs_port: Some(jobs_port),
                metrics_port,
                advertise_address,
                http_routes: (head && !no_dashboard).then(rayforge_dashboard::routes),
                autoscaler,
                autoscaler_path: autoscaling_config
                    .as_deref()
                    .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())),
            };
            if !block {
                return daemonize(opts.token.as_deref());
            }
            rayforge::cluster::run_daemon(&opts, |ready| {
                // One line on stdout tells `start` (or a test) we serve.
                let what = if opts.head { "head" } else { "node" };
                let jobs = if ready.jobs_address.is_empty() {
                    String::new()
                } else if opts.http_routes.is_some() {
                    format!("; dashboard and jobs API at {}", ready.jobs_address)
                } else {
                    format!("; jobs API at {}", ready.jobs_address)
                };
                let jobs = format!("{jobs}; metrics at {}/metrics", ready.metrics_address);
                // The token is not printed: output ends up in logs and
                // terminals' scrollback. The head keeps it in this
                // machine's cluster file, readable by its user only.
                let join = if opts.head {
                    format!(
                        "connect with Config::address(\"{}\") or `rayforge start --address {}` (the token is in {}: \
                         `rayforge token` prints it)",
                        ready.address,
                        ready.address,
                        rayforge::cluster::cluster_file().display()
                    )
                } else {
                    format!("joined the head at {}", ready.address)
                };
                println!(
                    "rayforge {what} started: node {} at {}; head {}; {join}{jobs}",
                    ready.node_id, ready.node_address, ready.address,
                );
                let _ = std::io::stdout().flush();
            })
        }
        Command::Up { config } => {
            let l = Launcher::open(&config)?;
            l.up(&mut std::io::stdout())?;
            Ok(())
        }
        Command::Down { config } => {
            Launcher::open(&config)?.down(&mut std::io::stdout())?;
            Ok(())
        }
        Command::Attach { config } => exit_with(Launcher::open(&config)?.attach_command()?),
        Command::Exec { config, command } => {
            exit_with(Launcher::open(&config)?.exec_command(&command.join(" "), false)?)
        }
        Command::Submit { config, program, args } => {
            exit_with(Launcher::open(&config)?.submit_command(&program, &args)?)
        }
        Command::RsyncUp { config, source, target } => Launcher::open(&config)?.rsync_up(&source, &target),
        Command::RsyncDown { config, source, target } => Launcher::open(&config)?.rsync_down(&source, &target),
        Command::Monitor {
            config,
            lines,
            no_follow,
        } => exit_with(Launcher::open(&config)?.monitor_command(lines, !no_follow)?),
        Command::Token => {
            let c = rayforge::cluster::local_cluster()?;
            out(&format!("{}\n", c.token));
            Ok(())
        }
        Command::Stop { grace } => {
            let n = rayforge::cluster::stop_all(Duration::from_secs_f64(grace.max(0.0)))?;
            out(&format!("stopped {n} rayforge daemon(s)\n"));
            Ok(())
        }
        Command::Status { address, token } => {
            let mut c = HeadClient::connect(&address, token.get()?.as_deref())?;
            out(&c.status_report()?);
            Ok(())
        }
        Command::List { what, address, token } => {
            let mut c = HeadClient::connect(&address, token.get()?.as_deref())?;
            let json = match what {
                ListWhat::Nodes => serde_json::to_string_pretty(&c.nodes()?),
                ListWhat::Jobs => serde_json::to_string_pretty(&c.jobs()?),
                ListWhat::Actors => serde_json::to_string_pretty(&c.actors()?),
                ListWhat::PlacementGroups => serde_json::to_string_pretty(&c.placement_groups()?),
                ListWhat::Tasks => {
                    let l = c.tasks()?;
                    warn_unreachable(&l.unreachable);
                    serde_json::to_string_pretty(&l.items)
                }
                ListWhat::Objects => {
                    let l = c.objects()?;
                    warn_unreachable(&l.unreachable);
                    serde_json::to_string_pretty(&l.items)
                }
            }
            .map_err(|e| rayforge::Error::Runtime(e.to_string()))?;
            out(&format!("{json}\n"));
            Ok(())
        }
        Command::Logs {
            pid,
            tail,
            address,
            token,
        } => {
            let mut c = HeadClient::connect(&address, token.get()?.as_deref())?;
            let l = c.worker_logs(pid, tail)?;
            warn_unreachable(&l.unreachable);
            if l.items.is_empty() {
                return Err(match pid {
                    Some(p) => rayforge::Error::NotFound(format!("no worker process {p} on any node")),
                    None => rayforge::Error::NotFound("no worker has run on any node yet".into()),
                });
            }
            for log in l.items {
                let state = if log.alive { "running" } else { "exited" };
                let job = if log.job_id.is_empty() {
                    String::new()
                } else {
                    format!(", job {}", log.job_id)
                };
                out(&format!(
                    "==> worker pid {} on node {} ({state}{job}, {} bytes) <==\n",
                    log.pid, log.node_id, log.size
                ));
                out(&log.text);
                if !log.text.is_empty() && !log.text.ends_with('\n') {
                    out("\n");
                }
            }
            Ok(())
        }
        Command::Timeline { output, address, token } => {
            let mut c = HeadClient::connect(&address, token.get()?.as_deref())?;
            let l = c.tasks()?;
            warn_unreachable(&l.unreachable);
            rayforge::state::write_trace(&l.items, &output)?;
            out(&format!(
                "wrote {} tasks to {}; open it at chrome://tracing or https://ui.perfetto.dev\n",
                l.items.len(),
                output.display()
            ));
            Ok(())
        }
        Command::Job {
            command,
            address,
            token,
        } => run_job(command, &address, token.get()?.as_deref()),
        Command::ClusterBenchmark(settings) => cluster_benchmark::run(&settings),
        Command::StorageBenchmark {
            uri,
            bytes,
            rounds,
            address,
        } => {
            if let Some(a) = address {
                rayforge::init(rayforge::Config::address(&a))?;
            }
            storage_benchmark::run(&storage_benchmark::Settings { uri, bytes, rounds })
        }
        Command::AutoscalerBenchmark {
            scaling: Some(rounds), ..
        } => autoscaler_benchmark::run_scaling(rounds.max(1)),
        Command::AutoscalerBenchmark {
            nodes,
            tasks,
            shapes,
            rounds,
            scaling: None,
        } => autoscaler_benchmark::run(&autoscaler_benchmark::Settings {
            nodes,
            tasks,
            shapes,
            rounds,
        }),
        Command::Microbenchmark { json, filter, seconds } => {
            microbenchmark::run(&microbenchmark::Settings { json, filter, seconds })
        }
    }
}

#[rayforge::main]
fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `cmd` with this process's terminal and exits with its status.
fn exit_with(mut cmd: std::process::Command) -> rayforge::Result<()> {
    let status = cmd
        .status()
        .map_err(|e| rayforge::Error::Runtime(format!("running {cmd:?}: {e}")))?;
    std::process::exit(status.code().unwrap_or(1));
}
