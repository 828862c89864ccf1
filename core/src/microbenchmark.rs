//! Microbenchmark.
