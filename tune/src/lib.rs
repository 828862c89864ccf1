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
//! the random / grid searcher and univariate TPE, and the FIFO, ASHA and
//! median-stopping schedulers (as state machines over results), and the
//! [`Tuner`] running a registered Rust trainable's trials as actors with a
//! status table and a [`ResultGrid`]. HyperBand and PBT, checkpoints,
//! retries, the journal and `--resume`, executable trainables and the
//! `tune` binary come next.

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
