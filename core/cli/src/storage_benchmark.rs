//! `rayforge storage-benchmark`: checkpoint upload (commit) and download
//! (a cold node cache) throughput to a storage URI, beside writing and
//! reading the same files on local disk, each the best of a few rounds.
//! `cluster://` needs a running cluster (`--address`), `s3://` the usual
//! `AWS_*` variables.

use std::time::Instant;

use rayforge::checkpoint::{CheckpointDir, CheckpointWriter};
use rayforge::storage::StorageUri;

/// What to measure.
pub(crate) struct Settings {
    pub(crate) uri: String,
    pub(crate) bytes: u64,
    pub(crate) rounds: usize,
}

fn gbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs.max(1e-9) / 1e9
}

/// Runs the rounds and prints one line per operation.
pub(crate) fn run(s: &Settings) -> rayforge::Result<()> {
    let storage = StorageUri::from(s.uri.as_str()).open()?;
    storage.check_writable()?;
    let run = storage.join(&format!("storage-benchmark-{}", std::process::id()))?;
    let dir = CheckpointDir::new(run.clone());
    let data: Vec<u8> = (0..s.bytes).map(|i| (i % 251) as u8).collect();
    let local = std::env::temp_dir().join(format!("rayforge-storage-bench-{}", std::process::id()));
    let io = |e: std::io::Error| rayforge::Error::io("writing the local copy", e);
    let (mut up, mut down, mut disk_w, mut disk_r) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
    for round in 0..s.rounds.max(1) {
        // Local disk: write (fsync) and read the same bytes.
        let t = Instant::now();
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&local).map_err(io)?;
            f.write_all(&data).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        disk_w = disk_w.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let n = std::fs::read(&local).map_err(io)?.len();
        disk_r = disk_r.min(t.elapsed().as_secs_f64());
        assert_eq!(n as u64, s.bytes);
        // A checkpoint of one file: written into its scratch directory by
        // the caller (not timed), committed to storage (timed).
        let mut w = CheckpointWriter::new().map_err(|e| rayforge::Error::io("checkpoint", e))?;
        w.write("model.bin", &data)
            .map_err(|e| rayforge::Error::io("checkpoint", e))?;
        let t = Instant::now();
        let c = dir
            .commit(w, round as u64 + 1, &Default::default(), "storage-benchmark")
            .map_err(|e| rayforge::Error::io("committing", e))?;
        up = up.min(t.elapsed().as_secs_f64());
        // Another node's cold cache: drop the writer's copy, then read.
        if c.uri().is_some() {
            let _ = std::fs::remove_dir_all(c.path());
        }
        let t = Instant::now();
        let got = c.to_local().map_err(|e| rayforge::Error::io("downloading", e))?;
        let n = std::fs::metadata(got.file("model.bin")).map(|m| m.len()).unwrap_or(0);
        down = down.min(t.elapsed().as_secs_f64());
        assert_eq!(n, s.bytes);
    }
    let mb = s.bytes as f64 / 1e6;
    println!(
        "checkpoint of {mb:.0} MB, best of {} round(s), to {}",
        s.rounds.max(1),
        storage.uri()
    );
    println!("  local disk write+fsync   {:.3} GB/s", gbps(s.bytes, disk_w));
    println!("  local disk read          {:.3} GB/s", gbps(s.bytes, disk_r));
    println!(
        "  upload (commit)          {:.3} GB/s  ({:.2}x local write)",
        gbps(s.bytes, up),
        disk_w / up
    );
    if storage.local_path().is_some() {
        println!("  download                 none: a local path is read in place");
    } else {
        println!(
            "  download (cold cache)    {:.3} GB/s  ({:.2}x local read)",
            gbps(s.bytes, down),
            disk_r / down
        );
    }
    let _ = std::fs::remove_file(&local);
    let _ = run.delete("");
    Ok(())
}
