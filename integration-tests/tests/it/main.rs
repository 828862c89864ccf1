//! Cross-process tests of rayforge, linked into one test binary (one link
//! instead of one per file); nextest still runs each test in its own process.

pub mod actors;
pub mod autoscaler;
pub mod cluster;
pub mod cluster_actors;
pub mod cluster_benchmark;
pub mod cluster_data;
pub mod cluster_head;
pub mod cluster_jobs;
pub mod dashboard;
pub mod idle_workers;
pub mod launcher;
pub mod lifecycle;
pub mod memory_monitor;
pub mod objects;
pub mod observability;
pub mod pipelining;
pub mod placement_groups;
pub mod resources;
pub mod spilling;
pub mod storage;
pub mod tasks;
pub mod tls;
pub mod utilities;
