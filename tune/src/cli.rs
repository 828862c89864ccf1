//! The `tune` command line, for the `tune` binary and for binaries of your
//! own that register Rust trainables by name: `tune run search.toml` runs a
//! file whose `[trainable]` is a `command`; a binary built with
//! [`Cli::register`] also runs files whose `[trainable]` has a `name`.
//!
//! ```no_run
//! use rayforge_tune::{cli::Cli, TrialContext};
//!
//! fn curve(ctx: &mut TrialContext) -> Result<(), String> {
//!     let lr: f64 = ctx.get("lr").map_err(|e| e.to_string())?;
//!     for step in 1..=20 {
//!         ctx.report([("loss", 1.0 / (step as f64 * lr))]).map_err(|e| e.to_string())?;
//!     }
//!     Ok(())
//! }
//!
//! #[rayforge::main]
//! fn main() -> std::process::ExitCode {
//!     // `my-tune run search.toml` with `[trainable] name = "curve"`.
//!     Cli::new("my-tune").register("curve", curve).main()
//! }
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;

use crate::error::{Error, Result};
use crate::experiment::Experiment;
use crate::searchers::Searcher;
use crate::tuner::{TrialContext, TuneConfig, Tuner};

type MakeTuner = Box<dyn Fn(Box<dyn Searcher>, TuneConfig) -> Tuner>;

/// The command line, with the trainables this binary registers.
pub struct Cli {
    program: String,
    trainables: BTreeMap<String, MakeTuner>,
}

impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cli")
            .field("program", &self.program)
            .field("trainables", &self.trainables.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// How the command line is used.
pub fn usage(program: &str) -> String {
    format!(
        "usage: {program} run SEARCH.TOML [--resume [--resume-errored | --restart-errored]]\n\
         \n\
         Runs the experiment SEARCH.TOML describes on an embedded cluster (or the cluster\n\
         RAYFORGE_ADDRESS names), with a status table while it runs and the best trial at\n\
         the end. --resume goes on with an experiment whose driver died, from its journal;\n\
         with --resume-errored failed trials go on from their latest checkpoints, with\n\
         --restart-errored they start over."
    )
}

impl Cli {
    /// The command line of the binary `program` (for messages).
    pub fn new(program: &str) -> Cli {
        Cli {
            program: program.to_string(),
            trainables: BTreeMap::new(),
        }
    }

    /// Registers `trainable` as `name` (`[trainable] name = "..."`).
    pub fn register<E: std::fmt::Display + 'static>(
        mut self,
        name: &str,
        trainable: fn(&mut TrialContext) -> std::result::Result<(), E>,
    ) -> Cli {
        self.trainables.insert(
            name.to_string(),
            Box::new(move |searcher, config| Tuner::new(trainable, searcher, config)),
        );
        self
    }

    /// Runs the command line in `args` (without the program's name):
    /// 0 when every trial succeeded, 1 when some failed, 2 for a bad
    /// command or file.
    pub fn run(&self, args: &[String]) -> ExitCode {
        if args.iter().any(|a| a == "--help" || a == "-h") {
            println!("{}", usage(&self.program));
            return ExitCode::SUCCESS;
        }
        let (path, resume, resume_errored, restart_errored) = match args {
            [cmd, path] if cmd == "run" => (path, false, false, false),
            [cmd, path, flag] if cmd == "run" && flag == "--resume" => (path, true, false, false),
            [cmd, path, a, b] if cmd == "run" && a == "--resume" && b == "--resume-errored" => {
                (path, true, true, false)
            }
            [cmd, path, a, b] if cmd == "run" && a == "--resume" && b == "--restart-errored" => {
                (path, true, false, true)
            }
            _ => {
                eprintln!("{}", usage(&self.program));
                return ExitCode::from(2);
            }
        };
        match self.run_file(path, resume, resume_errored, restart_errored) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("{}: {e}", self.program);
                ExitCode::from(2)
            }
        }
    }

    /// Runs the command line of this process.
    pub fn main(&self) -> ExitCode {
        let args: Vec<String> = std::env::args().skip(1).collect();
        self.run(&args)
    }

    fn run_file(&self, path: &str, resume: bool, resume_errored: bool, restart_errored: bool) -> Result<ExitCode> {
        let (exp, space) = Experiment::load(std::path::Path::new(path))?;
        let searcher = exp.searcher(space.clone(), 0)?;
        let scheduler = exp.scheduler(&space)?;
        let mut config = exp.tune_config();
        config.resume = resume;
        config.resume_errored = resume_errored;
        config.restart_errored = restart_errored;
        let tuner = match &exp.trainable.name {
            Some(name) => {
                let make = self.trainables.get(name).ok_or_else(|| {
                    let known: Vec<&str> = self.trainables.keys().map(|k| k.as_str()).collect();
                    Error::config(
                        "trainable.name",
                        None,
                        format!(
                            "no trainable `{name}` is registered in {} (registered: {})",
                            self.program,
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    )
                })?;
                make(searcher, config)
            }
            None => Tuner::command(exp.trainable.command.clone(), searcher, config),
        };
        let mut tuner = tuner.scheduler(scheduler);
        for s in exp.stoppers() {
            tuner = tuner.stopper(s);
        }
        rayforge::init(rayforge::Config::default().reinit_ok()).map_err(|e| Error::Runtime(e.to_string()))?;
        let grid = tuner.fit()?;
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
}
