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
//! What is here so far: search spaces, the ask/tell [`Searcher`] trait with
//! the random / grid searcher and univariate TPE; the FIFO, ASHA and
//! median-stopping schedulers (state machines over results); the [`Tuner`]
//! running trials as actors (a Rust trainable or any executable that prints
//! JSON lines), with a status table, a [`ResultGrid`], and a journal that
//! `--resume` goes on from; the [`Experiment`] of a `search.toml` and the
//! `tune` binary (`tune run search.toml`). HyperBand, PBT, per-trial
//! checkpoints and retries come next.

#![warn(missing_docs)]

mod error;
pub mod experiment;
pub mod schedulers;
pub mod searchers;
pub mod space;
mod tuner;

pub use error::{Error, Result};
pub use experiment::Experiment;
pub use schedulers::{Asha, Decision, Fifo, MedianStopping, Metrics, Mode, Scheduler};
pub use searchers::{BasicVariant, Searcher, Tpe, TpeOptions};
pub use space::{Config, Domain, Param, SearchSpace};
pub use tuner::{ResultGrid, TrialContext, TrialResult, TrialStatus, TuneConfig, Tuner, JOURNAL, TRAINING_ITERATION};
