//! Integration tests of rayforge-rllib, as modules of one test binary: each binary
//! is a link of about 190 MB, and CI's disk and two cores pay for every one.
mod algorithms;
mod cli;
mod gymnasium;
mod learners;
