//! How writes commit, seen by readers: an overwrite replaces what an
//! earlier write committed, and the parts of a write that never committed
//! (no `_SUCCESS` entry) are never read.

use std::path::{Path, PathBuf};

use rayforge_data::{WriteMode, WriteOptions};
use rayforge_integration_tests::cluster;
use serde::{Deserialize, Serialize};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rayforge-data-writes-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Id {
    id: i64,
}

/// A dataset of the ids `ids` in `blocks` blocks.
fn ids(ids: std::ops::Range<i64>, blocks: usize) -> rayforge_data::Dataset {
    let items: Vec<Id> = ids.map(|id| Id { id }).collect();
    rayforge_data::from_items(&items).unwrap().repartition(blocks)
}

/// The ids a reader of `dir` sees, sorted.
fn read_ids(dir: &Path) -> Vec<i64> {
    let rows: Vec<Id> = rayforge_data::read_parquet(dir.to_str().unwrap())
        .unwrap()
        .take_all()
        .unwrap();
    let mut ids: Vec<i64> = rows.into_iter().map(|r| r.id).collect();
    ids.sort();
    ids
}

/// The names of the Parquet files in `dir` (on disk, committed or not).
fn parquet_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    names.sort();
    names
}

fn file_name(path: &str) -> String {
    path.rsplit('/').next().unwrap().to_string()
}

/// Moves the parts of a write to `scratch` into `dir` under their own
/// names, without touching `dir`'s `_SUCCESS`: what a write cut off before
/// its commit leaves behind. Returns their names.
fn leave_unfinished_write(scratch: &Path, dir: &Path, rows: std::ops::Range<i64>) -> Vec<String> {
    let done = ids(rows, 2).write_parquet(scratch.to_str().unwrap()).unwrap();
    let mut names = Vec::new();
    for f in &done.files {
        let name = file_name(f);
        std::fs::rename(f, dir.join(&name)).unwrap();
        names.push(name);
    }
    names
}

#[test]
fn an_overwrite_replaces_the_parts_of_the_earlier_write() {
    cluster();
    let dir = tmp("overwrite");
    let first = ids(0..100, 4).write_parquet(dir.to_str().unwrap()).unwrap();
    assert_eq!(first.files.len(), 4);
    assert_eq!(read_ids(&dir), (0..100).collect::<Vec<_>>());

    let overwrite = WriteOptions {
        mode: WriteMode::Overwrite,
    };
    let second = ids(1000..1010, 2)
        .write_parquet_with(dir.to_str().unwrap(), overwrite)
        .unwrap();
    assert_eq!(second.rows, 10);
    // The reader sees the new rows only, and the old parts are gone.
    assert_eq!(read_ids(&dir), (1000..1010).collect::<Vec<_>>());
    let mut new_parts: Vec<String> = second.files.iter().map(|f| file_name(f)).collect();
    new_parts.sort();
    assert_eq!(parquet_files(&dir), new_parts);
    for old in &first.files {
        assert!(!Path::new(old).exists(), "{old} outlived the overwrite");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_reader_skips_the_parts_of_an_unfinished_write_beside_committed_ones() {
    cluster();
    let dir = tmp("unfinished");
    let scratch = tmp("unfinished-scratch");
    let committed = ids(0..100, 4).write_parquet(dir.to_str().unwrap()).unwrap();
    let stray = leave_unfinished_write(&scratch, &dir, 500..510);
    assert_eq!(parquet_files(&dir).len(), committed.files.len() + stray.len());
    assert_eq!(read_ids(&dir), (0..100).collect::<Vec<_>>());
    // An append commits its own parts beside the committed ones; the
    // unfinished write's stay unread.
    let append = WriteOptions {
        mode: WriteMode::Append,
    };
    ids(200..205, 1)
        .write_parquet_with(dir.to_str().unwrap(), append)
        .unwrap();
    let want: Vec<i64> = (0..100).chain(200..205).collect();
    assert_eq!(read_ids(&dir), want);
    std::fs::remove_dir_all(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Without `_SUCCESS` (files put there by hand, or by another tool), a
/// reader takes every data file but the parts of rayforge writes, which
/// only a commit makes readable.
#[test]
fn a_reader_of_a_directory_without_a_marker_skips_unfinished_write_parts() {
    cluster();
    let dir = tmp("no-marker");
    let scratch = tmp("no-marker-scratch");
    let source = tmp("no-marker-source");
    let one = ids(0..50, 1).write_parquet(source.to_str().unwrap()).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&one.files[0], dir.join("by-hand.parquet")).unwrap();
    let stray = leave_unfinished_write(&scratch, &dir, 500..510);
    assert_eq!(stray.len(), 2);
    assert!(!dir.join("_SUCCESS").exists());
    assert_eq!(read_ids(&dir), (0..50).collect::<Vec<_>>());
    for d in [&dir, &scratch, &source] {
        let _ = std::fs::remove_dir_all(d);
    }
}
