//! The `rayforge` command line.
//!
//! `rayforge microbenchmark [--json FILE]` runs the core microbenchmarks with
//! the same case names as `ray microbenchmark`.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rayforge", version, about = "rayforge: a distributed runtime for Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

#[rayforge::main]
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Microbenchmark { json, filter, seconds } => {
            rayforge::microbenchmark::run(&rayforge::microbenchmark::Settings { json, filter, seconds })
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
