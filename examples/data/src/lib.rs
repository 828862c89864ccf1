//! Runnable data pipelines on rayforge-data (see `src/bin/`): the reference
//! talk's preprocessing stage, and batch inference on an actor pool.
//!
//! ```no_run
//! // cargo run --release -p rayforge-data-examples --bin preprocess
//! ```
