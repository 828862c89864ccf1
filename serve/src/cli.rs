//! The `serve` command line: `serve run serve.toml` runs the applications a
//! config declares (from the deployments a program registered), `serve
//! deploy serve.toml` changes a running server's applications live, `serve
//! status` and `serve shutdown` talk to a running server's admin API.
//!
//! A program with its own deployments gets the same command line with
//! [`main`]:
//!
//! ```no_run
//! # struct Model;
//! # impl rayforge_serve::Deployment for Model {
//! #     type Config = (); type Request = (); type Response = String;
//! #     fn new(_: &rayforge_serve::Context, _: ()) -> rayforge_serve::Result<Self> { Ok(Model) }
//! #     async fn handle(&self, _: ()) -> rayforge_serve::Result<String> { Ok("ok".into()) }
//! # }
//! fn main() -> std::process::ExitCode {
//!     rayforge_serve::cli::main(rayforge_serve::Registry::new().deployment::<Model>("Model"))
//! }
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::client;
use crate::config::ServeConfig;
use crate::controller::ServeStatus;
use crate::error::{Error, Result};
use crate::Registry;

#[derive(Parser)]
#[command(name = "serve", about = "HTTP model serving on rayforge")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the applications of a config until Ctrl-C or `serve shutdown`.
    Run {
        /// The config file (serve.toml).
        config: PathBuf,
        /// Join a running cluster (HEAD:PORT) instead of starting one here.
        #[arg(long)]
        address: Option<String>,
    },
    /// Sends a changed config to a running server (applied live).
    Deploy {
        /// The config file.
        config: PathBuf,
        /// The server's admin address.
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin: String,
    },
    /// Shows the applications, deployments and replicas of a running server.
    Status {
        /// The server's admin address.
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin: String,
    },
    /// Drains and stops a running server.
    Shutdown {
        /// The server's admin address.
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin: String,
    },
}

/// Parses the command line and runs it with `registry`'s deployments.
pub fn main(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd, registry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("serve: {e}");
            ExitCode::FAILURE
        }
    }
}

const ADMIN_TIMEOUT: Duration = Duration::from_secs(150);

/// Where the admin commands look by default: `serve run`'s default admin
/// port ([`crate::config::DEFAULT_ADMIN_PORT`]) on this machine.
const DEFAULT_ADMIN: &str = "127.0.0.1:52365";

/// Calls the admin API at `admin` with the token its server wrote on this
/// machine.
fn admin_call(admin: &str, method: &str, path: &str, body: &[u8]) -> Result<client::Reply> {
    let port = admin
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .ok_or_else(|| Error::BadRequest(format!("--admin {admin}: not host:port")))?;
    let file = crate::server::admin_token_path(port)?;
    let token = std::fs::read_to_string(&file).map_err(|e| {
        Error::BadRequest(format!(
            "no admin token for the server at {admin} ({}: {e}): is `serve run` running on this machine, \
             as this user, with that admin port?",
            file.display()
        ))
    })?;
    let auth = format!("Bearer {}", token.trim());
    let r = client::request_with(admin, method, path, &[("Authorization", &auth)], body, ADMIN_TIMEOUT)?;
    if r.status == 401 || r.status == 403 {
        return Err(Error::BadRequest(format!(
            "the server at {admin} refused: {}",
            r.text().trim()
        )));
    }
    Ok(r)
}

fn run(cmd: Cmd, registry: Registry) -> Result<()> {
    match cmd {
        Cmd::Run { config, address } => {
            let cfg = ServeConfig::load(&config)?;
            let apps = registry.applications(&cfg)?;
            rayforge::init(match address {
                Some(a) => rayforge::Config::address(&a),
                None => rayforge::Config::default(),
            })?;
            let serve = crate::server::start_with(apps, cfg.http.clone(), Some(registry))?;
            let st = match serve.wait_healthy(Duration::from_secs(300)) {
                Ok(st) => st,
                Err(e) => {
                    let _ = serve.shutdown();
                    return Err(e);
                }
            };
            print_status(&st);
            // The address is printed once SIGTERM is caught: whoever reads
            // it may stop us at once, and that drains too.
            serve.wait_for_shutdown_with(|| {
                eprintln!(
                    "serve: listening on http://{} (admin API on {})",
                    serve.http_addr(),
                    serve.admin_addr()
                )
            });
            let r = serve.shutdown();
            rayforge::shutdown();
            r
        }
        Cmd::Deploy { config, admin } => {
            let text =
                std::fs::read_to_string(&config).map_err(|e| Error::io(format!("reading {}", config.display()), e))?;
            // Check it here first so the error names this file.
            ServeConfig::parse(&text, &config.display().to_string())?;
            let r = admin_call(&admin, "PUT", "/api/serve/applications", text.as_bytes())?;
            if r.status != 200 {
                return Err(Error::Config(r.text().trim().to_string()));
            }
            println!("{}", r.text().trim());
            Ok(())
        }
        Cmd::Status { admin } => {
            let r = admin_call(&admin, "GET", "/api/serve/status", b"")?;
            let st: ServeStatus = serde_json::from_slice(&r.body)
                .map_err(|e| Error::BadRequest(format!("the server at {admin} answered something else: {e}")))?;
            print_status(&st);
            Ok(())
        }
        Cmd::Shutdown { admin } => {
            let r = admin_call(&admin, "POST", "/api/serve/shutdown", b"")?;
            println!("{}", r.text().trim());
            Ok(())
        }
    }
}

fn print_status(st: &ServeStatus) {
    for (name, prefix) in &st.applications {
        println!("application {name} at {prefix}");
        for d in st.deployments.iter().filter(|d| &d.app == name) {
            let running = d
                .replicas
                .iter()
                .filter(|r| r.state == crate::ReplicaState::Running)
                .count();
            println!(
                "  {} {}: {}/{} replicas running{}",
                d.name,
                d.status,
                running,
                d.target_replicas,
                if d.message.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", d.message)
                }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_admin_commands_look_where_serve_run_listens_and_not_on_the_jobs_port() {
        let port: u16 = super::DEFAULT_ADMIN
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0);
        assert_eq!(port, crate::config::DEFAULT_ADMIN_PORT);
        assert_eq!(crate::HttpOptions::default().admin_port, port);
        assert_ne!(port, rayforge::jobs::DEFAULT_JOBS_PORT);
    }
}
