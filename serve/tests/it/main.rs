//! Integration tests of rayforge-serve, as modules of one test binary: each binary
//! is a link of about 190 MB, and CI's disk and two cores pay for every one.
mod cli;
mod private_disk;
mod serve;
mod torch;
