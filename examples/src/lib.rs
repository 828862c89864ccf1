//! Runnable end-to-end programs for rayforge; each is a binary in `src/bin/`
//! checked by `tests/examples.rs`:
//!
//! ```text
//! cargo run --release -p rayforge-examples --bin quickstart
//! cargo run --release -p rayforge-examples --bin put_once
//! cargo run --release -p rayforge-examples --bin fan_out
//! cargo run --release -p rayforge-examples --bin train_linear
//! cargo run --release -p rayforge-examples --bin train_mlp
//! cargo run --release -p rayforge-examples --bin pipeline
//! ```
//!
//! The library holds what `train_mlp` and `pipeline` share: the handwritten
//! digits data set that ships in `examples/datasets/`, turned into features
//! by rayforge-data, and the MLP rayforge-train fits to it.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! rayforge::init(rayforge::Config::default())?;
//! let ds = rayforge_data::read_csv(rayforge_examples::digits::CSV)?
//!     .map_batches(rayforge_examples::digits::to_features);
//! assert_eq!(ds.count()?, 1797);
//! # Ok(()) }
//! ```

pub mod digits;
