//! `tune run search.toml`: runs the experiment a search.toml describes
//! (an executable trainable) on an embedded cluster (or the cluster
//! `RAYFORGE_ADDRESS` names), with a status table while it runs and the
//! best trial at the end. `--resume` goes on with an experiment whose
//! driver died, from its journal. Binaries with Rust trainables of their
//! own use [`rayforge_tune::cli::Cli`] the same way.

use std::process::ExitCode;

#[rayforge::main]
fn main() -> ExitCode {
    rayforge_tune::cli::Cli::new("tune").main()
}
