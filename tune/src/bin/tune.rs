//! `tune run search.toml`: runs the experiment a search.toml describes on
//! an embedded cluster (or the cluster `RAYFORGE_ADDRESS` names), with a
//! status table while it runs and the best trial at the end. `--resume`
//! goes on with an experiment whose driver died, from its journal.

use std::process::ExitCode;

use rayforge_tune::{Experiment, Tuner};

const USAGE: &str = "usage: tune run SEARCH.TOML [--resume]";

fn run(path: &str, resume: bool) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let (exp, space) = Experiment::load(std::path::Path::new(path))?;
    let searcher = exp.searcher(space, 0)?;
    let scheduler = exp.scheduler()?;
    rayforge::init(rayforge::Config::default())?;
    let mut config = exp.tune_config();
    config.resume = resume;
    let grid = Tuner::command(exp.trainable.command.clone(), searcher, config)
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
        [cmd, path] if cmd == "run" => run(path, false),
        [cmd, path, flag] if cmd == "run" && flag == "--resume" => run(path, true),
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
