//! The `rayforge` command line: start and stop cluster daemons, inspect a
//! cluster, and run the core microbenchmarks.
//!
//! ```text
//! rayforge start --head --num-cpus 4        # head: control service + a node
//! rayforge start --address 127.0.0.1:6379   # another node joining it
//! rayforge status                           # nodes, resources, pending demands
//! rayforge list nodes|jobs|actors
//! rayforge stop                             # every daemon on this machine
//! rayforge microbenchmark [--json FILE]
//! ```

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use rayforge::cluster::{HeadClient, StartOptions};

#[derive(Parser)]
#[command(name = "rayforge", version, about = "rayforge: a distributed runtime for Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

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
        /// Cluster token (head: generated when absent; node: read from this
        /// machine's cluster file or $RAYFORGE_TOKEN when absent).
        #[arg(long)]
        token: Option<String>,
        /// Milliseconds without heartbeats before a node is declared dead.
        #[arg(long)]
        heartbeat_timeout_ms: Option<u64>,
        /// Where the head persists its state.
        #[arg(long)]
        state_dir: Option<std::path::PathBuf>,
        /// Stay in the foreground (logs to stderr) instead of daemonizing.
        #[arg(long)]
        block: bool,
    },
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
        /// Cluster token (default: $RAYFORGE_TOKEN or this machine's cluster file).
        #[arg(long)]
        token: Option<String>,
    },
    /// List cluster state as JSON.
    List {
        /// What to list.
        what: ListWhat,
        /// The head (host:port); default: this machine's cluster.
        #[arg(long, default_value = "auto")]
        address: String,
        /// Cluster token.
        #[arg(long)]
        token: Option<String>,
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
}

#[derive(Clone, Copy, ValueEnum)]
enum ListWhat {
    Nodes,
    Jobs,
    Actors,
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
fn daemonize() -> rayforge::Result<()> {
    let exe = std::env::current_exe().map_err(|e| rayforge::Error::Runtime(format!("locating rayforge: {e}")))?;
    let logs = std::env::temp_dir().join("rayforge").join("logs");
    std::fs::create_dir_all(&logs)
        .map_err(|e| rayforge::Error::Runtime(format!("creating {}: {e}", logs.display())))?;
    let log_path = logs.join(format!("daemon-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| rayforge::Error::Runtime(format!("creating {}: {e}", log_path.display())))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .arg("--block")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log);
    if std::env::var_os("RAYFORGE_LOG").is_none() {
        cmd.env("RAYFORGE_LOG", "info");
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
            token,
            heartbeat_timeout_ms,
            state_dir,
            block,
        } => {
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
                token,
                heartbeat_timeout_ms,
                state_dir,
            };
            if !block {
                return daemonize();
            }
            rayforge::cluster::run_daemon(&opts, |ready| {
                // One line on stdout tells `start` (or a test) we serve.
                let what = if opts.head { "head" } else { "node" };
                println!(
                    "rayforge {what} started: node {} at {}; head {}; token {}; connect with \
                     Config::address(\"{}\") or `rayforge start --address {} --token {}`",
                    ready.node_id,
                    ready.node_address,
                    ready.address,
                    ready.token,
                    ready.address,
                    ready.address,
                    ready.token
                );
                let _ = std::io::stdout().flush();
            })
        }
        Command::Stop { grace } => {
            let n = rayforge::cluster::stop_all(Duration::from_secs_f64(grace.max(0.0)));
            out(&format!("stopped {n} rayforge daemon(s)\n"));
            Ok(())
        }
        Command::Status { address, token } => {
            let mut c = HeadClient::connect(&address, token.as_deref())?;
            out(&c.status_report()?);
            Ok(())
        }
        Command::List { what, address, token } => {
            let mut c = HeadClient::connect(&address, token.as_deref())?;
            let json = match what {
                ListWhat::Nodes => serde_json::to_string_pretty(&c.nodes()?),
                ListWhat::Jobs => serde_json::to_string_pretty(&c.jobs()?),
                ListWhat::Actors => serde_json::to_string_pretty(&c.actors()?),
            }
            .map_err(|e| rayforge::Error::Runtime(e.to_string()))?;
            out(&format!("{json}\n"));
            Ok(())
        }
        Command::Microbenchmark { json, filter, seconds } => {
            rayforge::microbenchmark::run(&rayforge::microbenchmark::Settings { json, filter, seconds })
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
