//! Runnable end-to-end programs for rayforge; each is a binary in `src/bin/`
//! checked by `tests/examples.rs`:
//!
//! ```text
//! cargo run --release -p rayforge-examples --bin quickstart
//! cargo run --release -p rayforge-examples --bin put_once
//! cargo run --release -p rayforge-examples --bin fan_out
//! ```
