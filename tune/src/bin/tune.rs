//! `tune run search.toml`: runs the experiment a search.toml describes on
//! an embedded cluster (or the cluster `RAYFORGE_ADDRESS` names), with a
//! status table while it runs and the best trial at the end.

use std::process::ExitCode;

use rayforge_tune::{Experiment, Tuner};

const USAGE: &str = "usage: tune run SEARCH.TOML";

fn run(path: &str) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let (exp, space) = Experiment::load(std::path::Path::new(path))?;
    let searcher = exp.searcher(space, 0)?;
    let scheduler = exp.scheduler()?;
    rayforge::init(rayforge::Config::default())?;
    let grid = Tuner::command(exp.trainable.command.clone(), searcher, exp.tune_config())
        .scheduler(scheduler)
        .fit()?;
    let errors = grid.errors();
    for (trial, e) in &errors {
        eprintln!("{trial} failed: {e}");
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("{} of {} trials failed", errors.len(), grid.trials.len());
        ExitCode::from(1)
    })
}

#[rayforge::main]
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.as_slice() {
        [cmd, path] if cmd == "run" => run(path),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match code {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tune: {e}");
            ExitCode::from(2)
        }
    }
}
