//! Streaming execution under a small object store, and a worker killed in
//! the middle of a dataset.

use std::sync::Arc;

use rayforge_data::Error;
use rayforge_data::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch};

const STORE: u64 = 24 << 20;

/// A cluster of its own (each test here runs in its own process): a store
/// far smaller than the default one.
fn cluster() {
    rayforge_integration_tests::cluster_with(|c| c.object_store_memory(STORE));
}

fn with_square(b: RecordBatch) -> Result<RecordBatch, Error> {
    let ids = b
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or("id is not i64")?;
    let sq: ArrayRef = Arc::new(Float64Array::from_iter_values(
        ids.values().iter().map(|v| (*v as f64).powi(2)),
    ));
    Ok(RecordBatch::try_from_iter([("id", b.column(0).clone()), ("sq", sq)])?)
}

#[test]
fn a_dataset_eight_times_the_store_streams_from_read_to_write() {
    rayforge_integration_tests::own_process!();
    cluster();
    let dir = std::env::temp_dir().join(format!("rayforge-data-stream-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // 12M rows of (i64, f64): 192 MB through a 24 MB store, a row-wise SQL
    // query on the way (run on each block, not over the whole dataset).
    let rows = 12_000_000u64;
    let out = rayforge_data::range_with_blocks(rows, 48)
        .map_batches(with_square)
        .sql("SELECT id, sq * 0.5 AS half FROM ds WHERE id >= 0")
        .unwrap()
        .write_parquet(dir.to_str().unwrap())
        .unwrap();
    assert_eq!(out.rows, rows);
    assert_eq!(out.files.len(), 48);
    let stats = rayforge::store_stats().unwrap();
    assert!(
        stats.spilled_total < STORE,
        "the pipeline spilled {} bytes through a {} byte store",
        stats.spilled_total,
        STORE
    );
    // What was written reads back whole.
    let back = rayforge_data::read_parquet(dir.to_str().unwrap()).unwrap();
    assert_eq!(back.count().unwrap(), rows);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_aggregate_query_over_eight_times_the_store_reads_it_block_by_block() {
    rayforge_integration_tests::own_process!();
    cluster();
    // The same 192 MB through a 24 MB store, grouped by SQL: the query runs
    // once over the whole dataset, reading one block at a time, so no
    // worker holds the dataset.
    let rows = 12_000_000i64;
    let ds = rayforge_data::range_with_blocks(rows as u64, 48)
        .map_batches(with_square)
        .sql("SELECT id % 10 AS k, count(*) AS n, sum(sq) AS s, max(id) AS top FROM ds GROUP BY id % 10 ORDER BY k")
        .unwrap();
    let out = ds.take_batch(100).unwrap();
    assert_eq!(out.num_rows(), 10);
    let col = |name: &str| rayforge_data::compute::f64_column(&out, name).unwrap();
    let (k, n, s, top) = (col("k"), col("n"), col("s"), col("top"));
    // Holding every block at once, the query's worker peaked at 270 MB
    // when tried (the dataset, its runtime and DataFusion's state);
    // block by block, at 86 MB.
    let peak = peak_descendant_rss();
    assert!(
        peak < rows as u64 * 16,
        "a worker held {peak} bytes at its peak: more than the whole 192 MB dataset"
    );
    for r in 0..10i64 {
        assert_eq!(k[r as usize], r as f64);
        assert_eq!(n[r as usize], (rows / 10) as f64, "every row counted once");
        assert_eq!(top[r as usize], (rows - 10 + r) as f64);
        let want: f64 = (0..rows / 10).map(|i| ((i * 10 + r) as f64).powi(2)).sum();
        assert!(
            (s[r as usize] - want).abs() <= want * 1e-9,
            "group {r}: {} vs {want}",
            s[r as usize]
        );
    }
}

/// The highest peak resident set (VmHWM) of this process's descendants:
/// the cluster's workers.
fn peak_descendant_rss() -> u64 {
    let field = |status: &str, name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let mut parents = std::collections::HashMap::new();
    let mut peaks = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        if let Some(ppid) = field(&status, "PPid:") {
            parents.insert(pid, ppid as u32);
        }
        peaks.insert(pid, field(&status, "VmHWM:").unwrap_or(0) * 1024);
    }
    let me = std::process::id();
    let descends = |mut pid: u32| {
        while let Some(&p) = parents.get(&pid) {
            if p == me {
                return true;
            }
            pid = p;
        }
        false
    };
    peaks
        .iter()
        .filter(|(pid, _)| descends(**pid))
        .map(|(_, peak)| *peak)
        .max()
        .unwrap_or(0)
}

fn dies_once(b: RecordBatch) -> Result<RecordBatch, Error> {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc_getppid() };
    let marker = std::env::temp_dir().join(format!("rayforge-data-dies-once-{parent}"));
    let first = b.column(0).as_any().downcast_ref::<Int64Array>().map(|a| a.value(0)) == Some(0);
    if first
        && std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
            .is_ok()
    {
        std::process::abort();
    }
    Ok(b)
}

unsafe extern "C" {
    #[link_name = "getppid"]
    fn libc_getppid() -> i32;
}

#[test]
fn a_task_whose_worker_dies_is_retried() {
    rayforge_integration_tests::own_process!();
    cluster();
    let ds = rayforge_data::range_with_blocks(1000, 4).map_batches(dies_once);
    let ids: Vec<i64> = ds
        .take_batch(1000)
        .unwrap()
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .values()
        .to_vec();
    assert_eq!(ids, (0..1000).collect::<Vec<_>>());
    let marker = std::env::temp_dir().join(format!("rayforge-data-dies-once-{}", std::process::id()));
    assert!(marker.exists(), "the first attempt ran and died");
    let _ = std::fs::remove_file(marker);
}
