//! # rayforge-tune
//!
//! Hyperparameter search on rayforge, as Ray Tune. It builds and runs
//! without libtorch. Search spaces
//! ([`SearchSpace`]: grid, choice, uniform, quniform, loguniform,
//! qloguniform, randint, qrandint, lograndint, randn and derived values),
//! read from the `[param_space]` table of a `search.toml` or built in Rust,
//! and turned into trial configs.
//!
//! ```
//! use rayforge_tune::SearchSpace;
//!
//! let space = SearchSpace::from_toml(r#"
//!     [param_space]
//!     lr = { loguniform = [1e-4, 1e-1] }
//!     layers = { grid = [1, 2] }
//! "#)?
//! .constant("epochs", 10);
//! let trials = space.variants(3, 42)?;    // each grid point 3 times
//! assert_eq!(trials.len(), 6);
//! assert!(trials.iter().all(|t| t["epochs"] == 10));
//! # Ok::<(), rayforge_tune::Error>(())
//! ```
//!
//! What is here: search spaces, the ask/tell [`Searcher`] trait with the
//! random / grid searcher and TPE; the FIFO, ASHA, HyperBand,
//! median-stopping and PBT schedulers (state machines over results);
//! [`Stopper`]s; the [`Tuner`] running trials as actors (a Rust trainable,
//! a Train run holding a placement group, or any executable that prints
//! JSON lines), with per-trial checkpoints in the project's format,
//! retries from the latest checkpoint, a status table, a [`ResultGrid`],
//! and a journal that `--resume` goes on from — all of it in any
//! [`rayforge::storage`] (a shared path, the cluster's store, S3), so
//! trials run on nodes that share no disk; the [`Experiment`] of a
//! `search.toml` and the `tune` binary (`tune run search.toml`), which
//! other binaries extend with their own registered trainables ([`cli`]).

#![warn(missing_docs)]

pub mod cli;
mod error;
pub mod experiment;
pub mod schedulers;
pub mod searchers;
pub mod space;
pub mod stoppers;
mod tuner;

pub use error::{Error, Result};
pub use experiment::Experiment;
pub use schedulers::{Asha, Decision, Fifo, HyperBand, MedianStopping, Metrics, Mode, Pbt, Scheduler};
pub use searchers::{BasicVariant, Searcher, Tpe, TpeOptions};
pub use space::{Config, Domain, Param, SearchSpace};
pub use stoppers::{MaxIterations, MetricThreshold, Plateau, Stopper, TimeBudget};
pub use tuner::{
    ResultGrid, Scope, TrialContext, TrialResult, TrialStatus, TuneConfig, Tuner, JOURNAL, TRAINING_ITERATION,
};
