//! Keeps what jobs leave on the head (binaries, working-directory
//! packages, logs) within a budget: past it, the oldest files that no
//! running job needs go first.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::gcs::Gcs;

/// Bytes of binaries, packages and job logs the head keeps by default.
pub const DEFAULT_ARTIFACT_BUDGET: u64 = 10 << 30;

/// A file younger than this is never removed: a package or binary just
/// uploaded is about to be named by the job that uploaded it.
const GRACE: Duration = Duration::from_secs(600);

/// A file the janitor may remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Artifact {
    pub(crate) path: PathBuf,
    pub(crate) bytes: u64,
    pub(crate) modified: SystemTime,
}

/// Which of `files` to remove so that they fit in `budget` bytes: the
/// oldest first, never one in `keep` nor one modified after `now - GRACE`.
/// What is kept may still exceed the budget (when too much is in use).
pub(crate) fn plan(mut files: Vec<Artifact>, keep: &HashSet<PathBuf>, budget: u64, now: SystemTime) -> Vec<PathBuf> {
    let mut total: u64 = files.iter().map(|f| f.bytes).sum();
    files.sort_by_key(|f| f.modified);
    let mut out = Vec::new();
    for f in files {
        if total <= budget {
            break;
        }
        let young = now.duration_since(f.modified).map_or(true, |age| age < GRACE);
        if young || keep.contains(&f.path) {
            continue;
        }
        total -= f.bytes;
        out.push(f.path);
    }
    out
}

/// The plain files of `dir` (temporary ones being written excluded).
fn artifacts(dir: &Path) -> Vec<Artifact> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
        .filter_map(|e| {
            let m = e.metadata().ok().filter(|m| m.is_file())?;
            Some(Artifact {
                path: e.path(),
                bytes: m.len(),
                modified: m.modified().ok()?,
            })
        })
        .collect()
}

/// Removes the oldest binaries, packages and logs past `budget` bytes,
/// keeping those of running jobs; returns (files, bytes) removed.
pub(crate) fn prune(gcs: &Gcs, logs: &Path, budget: u64) -> (usize, u64) {
    let blobs = gcs.dir().join("binaries");
    let mut keep = HashSet::new();
    for j in gcs.jobs().into_iter().filter(|j| j.state == "RUNNING") {
        keep.insert(logs.join(format!("{}.log", j.job_id)));
        for hash in [Some(j.binary_hash.as_str()), super::package_hash(&j.working_dir)]
            .into_iter()
            .flatten()
            .filter(|h| !h.is_empty())
        {
            keep.insert(blobs.join(hash));
        }
    }
    let mut files = artifacts(&blobs);
    files.extend(artifacts(logs));
    let sizes: std::collections::HashMap<PathBuf, u64> = files.iter().map(|f| (f.path.clone(), f.bytes)).collect();
    let (mut n, mut bytes) = (0, 0);
    for path in plan(files, &keep, budget, SystemTime::now()) {
        match std::fs::remove_file(&path) {
            Ok(()) => {
                n += 1;
                bytes += sizes.get(&path).copied().unwrap_or(0);
            }
            Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
        }
    }
    if n > 0 {
        tracing::info!(
            files = n,
            bytes,
            budget,
            "removed old job binaries, packages and logs past the budget"
        );
    }
    (n, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, bytes: u64, age_s: u64, now: SystemTime) -> Artifact {
        Artifact {
            path: PathBuf::from(name),
            bytes,
            modified: now - Duration::from_secs(age_s),
        }
    }

    #[test]
    fn the_oldest_files_no_job_needs_go_first_until_the_rest_fit() {
        let now = SystemTime::now();
        let files = vec![
            file("new-upload", 500, 5, now),
            file("old-running-job", 400, 9000, now),
            file("oldest", 300, 8000, now),
            file("older", 200, 7000, now),
            file("recent", 100, 700, now),
        ];
        let keep: HashSet<PathBuf> = [PathBuf::from("old-running-job")].into_iter().collect();
        // 1,500 bytes; a budget of 1,000 takes the two oldest removable.
        assert_eq!(
            plan(files.clone(), &keep, 1000, now),
            vec![PathBuf::from("oldest"), PathBuf::from("older")]
        );
        // Within budget: nothing goes.
        assert!(plan(files.clone(), &keep, 1500, now).is_empty());
        // A budget nothing can meet removes all it may, never the young
        // upload nor the running job's file.
        assert_eq!(
            plan(files, &keep, 0, now),
            vec![PathBuf::from("oldest"), PathBuf::from("older"), PathBuf::from("recent")]
        );
    }
}
