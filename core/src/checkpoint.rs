//! The project's one checkpoint format (Train, Tune, RLlib and Serve read
//! it): a directory holding a `manifest.json` — format version, what wrote
//! it, the metrics it was reported with, its files — and those files
//! (tensors, TorchScript, anything). A checkpoint is built in a scratch
//! directory and committed by a rename, so no reader ever sees half of one;
//! a commit that fails (a full or unwritable disk) leaves the checkpoints
//! already there as they were.
//!
//! A run (a Train run, a Tune trial) keeps its checkpoints in its directory
//! as `checkpoint_NNNNNN` (NNNNNN: the report's iteration).
//!
//! ```
//! use rayforge::checkpoint::{self, Checkpoint, CheckpointWriter};
//!
//! let run = std::env::temp_dir().join(format!("ckpt-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&run)?;
//! let mut w = CheckpointWriter::new()?;
//! w.write("state.json", br#"{"step": 3}"#)?;
//! let metrics = [("loss".to_string(), 0.25)].into_iter().collect();
//! let c: Checkpoint = w.commit(&run, 3, &metrics, "my-trainer 1.0")?;
//! assert_eq!(c.manifest()?.iteration, 3);
//! assert_eq!(checkpoint::latest(&run).unwrap().read("state.json")?, br#"{"step": 3}"#);
//! # std::fs::remove_dir_all(&run)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a checkpoint could not be written or read.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A file or directory could not be written or read, or a manifest is
    /// malformed: names the path (the checkpoints already committed stay
    /// intact).
    #[error("checkpoint {path}: {message}")]
    Io {
        /// The checkpoint's directory or file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A file name that is not a plain name (or is the manifest's).
    #[error("checkpoint file name `{0}`: a plain file name other than manifest.json")]
    BadName(String),
}

impl CheckpointError {
    fn io(path: impl AsRef<Path>, message: impl std::fmt::Display) -> CheckpointError {
        CheckpointError::Io {
            path: path.as_ref().display().to_string(),
            message: message.to_string(),
        }
    }
}

type Result<T> = std::result::Result<T, CheckpointError>;

/// The manifest's version this crate writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
const PREFIX: &str = "checkpoint_";

/// What a checkpoint's `manifest.json` says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The format's version ([`FORMAT_VERSION`] when written here).
    pub format_version: u32,
    /// What wrote it ("rayforge-train 0.1.0", ...).
    pub written_by: String,
    /// The report it came with: iteration number.
    pub iteration: u64,
    /// The metrics reported with it.
    pub metrics: BTreeMap<String, f64>,
    /// Its files, relative to its directory.
    pub files: Vec<String>,
}

/// A committed checkpoint: a directory with a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    path: PathBuf,
}

impl Checkpoint {
    /// Opens the checkpoint in `dir`, checking its manifest.
    pub fn open(dir: impl AsRef<Path>) -> Result<Checkpoint> {
        let c = Checkpoint {
            path: dir.as_ref().to_path_buf(),
        };
        c.manifest()?;
        Ok(c)
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One of its files.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Reads one of its files.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let p = self.file(name);
        std::fs::read(&p).map_err(|e| CheckpointError::io(&p, e))
    }

    /// Its manifest.
    pub fn manifest(&self) -> Result<Manifest> {
        let p = self.path.join(MANIFEST);
        let text = std::fs::read_to_string(&p).map_err(|e| CheckpointError::io(&p, e))?;
        let m: Manifest =
            serde_json::from_str(&text).map_err(|e| CheckpointError::io(&p, format!("malformed: {e}")))?;
        if m.format_version > FORMAT_VERSION {
            return Err(CheckpointError::io(
                &p,
                format!(
                    "format version {} is newer than this build reads ({FORMAT_VERSION})",
                    m.format_version
                ),
            ));
        }
        Ok(m)
    }
}

/// A checkpoint being written: put files in [`CheckpointWriter::dir`] (or
/// through [`CheckpointWriter::write`]), then report it; the run commits it.
#[derive(Debug)]
pub struct CheckpointWriter {
    dir: PathBuf,
}

impl CheckpointWriter {
    /// A fresh scratch directory for a checkpoint's files.
    pub fn new() -> Result<CheckpointWriter> {
        let dir = std::env::temp_dir().join(format!("rayforge-ckpt-{}-{:x}", std::process::id(), rand_u64()));
        std::fs::create_dir_all(&dir).map_err(|e| CheckpointError::io(&dir, e))?;
        Ok(CheckpointWriter { dir })
    }

    /// Where its files go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the file `name` goes (a plain file name other than the
    /// manifest's), for writers that take a path.
    pub fn file_path(&self, name: &str) -> Result<PathBuf> {
        let plain = matches!(
            Path::new(name).components().collect::<Vec<_>>()[..],
            [std::path::Component::Normal(_)]
        );
        if !plain || name == MANIFEST {
            return Err(CheckpointError::BadName(name.to_string()));
        }
        Ok(self.dir.join(name))
    }

    /// Writes one file.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let p = self.file_path(name)?;
        std::fs::write(&p, bytes).map_err(|e| CheckpointError::io(&p, e))
    }

    /// A scratch directory holding a copy of `from`'s files (to commit
    /// them elsewhere: a trial taking over another's checkpoint).
    pub fn copy_of(from: &Checkpoint) -> Result<CheckpointWriter> {
        let w = CheckpointWriter::new()?;
        for f in from.manifest()?.files {
            let to = w.file_path(&f)?;
            std::fs::copy(from.file(&f), &to).map_err(|e| CheckpointError::io(&to, e))?;
        }
        Ok(w)
    }

    /// Commits the files as `{run_dir}/checkpoint_{iteration:06}`, its
    /// manifest naming `written_by` ("rayforge-train 0.1.0"): manifest
    /// written, the directory copied beside its destination under a
    /// temporary name and renamed into place. On failure nothing is left
    /// half-written and earlier checkpoints are untouched.
    pub fn commit(
        self,
        run_dir: &Path,
        iteration: u64,
        metrics: &BTreeMap<String, f64>,
        written_by: &str,
    ) -> Result<Checkpoint> {
        let mut files: Vec<String> = std::fs::read_dir(&self.dir)
            .map_err(|e| CheckpointError::io(&self.dir, e))?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != MANIFEST)
            .collect();
        files.sort();
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            written_by: written_by.into(),
            iteration,
            metrics: metrics.clone(),
            files: files.clone(),
        };
        let dest = run_dir.join(format!("{PREFIX}{iteration:06}"));
        let tmp = run_dir.join(format!(".{PREFIX}{iteration:06}.tmp-{:x}", rand_u64()));
        let result = (|| -> Result<()> {
            std::fs::create_dir_all(&tmp).map_err(|e| CheckpointError::io(&tmp, e))?;
            for f in &files {
                let to = tmp.join(f);
                std::fs::copy(self.dir.join(f), &to).map_err(|e| CheckpointError::io(&to, e))?;
            }
            let text = serde_json::to_vec_pretty(&manifest).map_err(|e| CheckpointError::io(&tmp, e))?;
            let mp = tmp.join(MANIFEST);
            std::fs::write(&mp, text).map_err(|e| CheckpointError::io(&mp, e))?;
            sync_dir(&tmp);
            if dest.exists() {
                // A rerun of the same iteration (after a restart) replaces it.
                std::fs::remove_dir_all(&dest).map_err(|e| CheckpointError::io(&dest, e))?;
            }
            std::fs::rename(&tmp, &dest).map_err(|e| CheckpointError::io(&dest, e))?;
            sync_dir(run_dir);
            Ok(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Ok(Checkpoint { path: dest })
    }
}

/// The committed checkpoints of a run directory, oldest first (half-written
/// ones, under temporary names, are skipped).
pub fn list(run_dir: &Path) -> Vec<Checkpoint> {
    let Ok(rd) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, Checkpoint)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u64 = name.strip_prefix(PREFIX)?.parse().ok()?;
            let c = Checkpoint::open(e.path()).ok()?;
            Some((n, c))
        })
        .collect();
    out.sort_by_key(|(n, _)| *n);
    out.into_iter().map(|(_, c)| c).collect()
}

/// The newest committed checkpoint of a run directory.
pub fn latest(run_dir: &Path) -> Option<Checkpoint> {
    list(run_dir).pop()
}

impl Drop for CheckpointWriter {
    /// A writer dropped without a commit leaves no scratch files behind.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Which checkpoints a run keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointConfig {
    /// How many to keep (`None`: all). The latest is always kept too, to
    /// resume from.
    pub num_to_keep: Option<usize>,
    /// The metric ranking them (`None`: the newest are the best).
    pub score_attribute: Option<String>,
    /// Whether a higher score is better.
    pub higher_is_better: bool,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            num_to_keep: None,
            score_attribute: None,
            higher_is_better: true,
        }
    }
}

impl CheckpointConfig {
    /// The best of `ckpts` by this config's ranking (the newest without a
    /// score attribute).
    pub fn best(&self, ckpts: &[Checkpoint]) -> Option<Checkpoint> {
        self.ranked(ckpts).into_iter().next()
    }

    /// `ckpts` best first.
    pub fn ranked(&self, ckpts: &[Checkpoint]) -> Vec<Checkpoint> {
        let mut scored: Vec<(f64, usize, &Checkpoint)> = ckpts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let score = match &self.score_attribute {
                    None => i as f64,
                    Some(a) => {
                        let v = c.manifest().ok().and_then(|m| m.metrics.get(a).copied());
                        // A checkpoint without the metric ranks last.
                        let v = v.unwrap_or(f64::NAN);
                        if v.is_nan() {
                            f64::NEG_INFINITY
                        } else if self.higher_is_better {
                            v
                        } else {
                            -v
                        }
                    }
                };
                (score, i, c)
            })
            .collect();
        // Best first; ties go to the newer.
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        scored.into_iter().map(|(_, _, c)| c.clone()).collect()
    }

    /// Deletes the checkpoints of `run_dir` this config does not keep: all
    /// but the `num_to_keep` best, and never the latest.
    pub fn prune(&self, run_dir: &Path) -> Result<()> {
        let Some(k) = self.num_to_keep else { return Ok(()) };
        let all = list(run_dir);
        let latest = all.last().cloned();
        for (i, c) in self.ranked(&all).into_iter().enumerate() {
            if i >= k.max(1) && Some(&c) != latest.as_ref() {
                std::fs::remove_dir_all(c.path()).map_err(|e| CheckpointError::io(c.path(), e))?;
            }
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(run: &Path, iteration: u64, loss: f64) -> Checkpoint {
        let mut w = CheckpointWriter::new().unwrap();
        w.write("weights.bin", &iteration.to_le_bytes()).unwrap();
        let metrics = [("loss".to_string(), loss)].into_iter().collect();
        w.commit(run, iteration, &metrics, "test").unwrap()
    }

    #[test]
    fn checkpoints_commit_whole_and_keep_the_best_and_the_latest() {
        let run = std::env::temp_dir().join(format!("rayforge-ckpt-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(&run).unwrap();
        for (i, loss) in [(1, 0.9), (2, 0.3), (3, 0.5), (4, 0.7)] {
            commit(&run, i, loss);
        }
        let c = Checkpoint::open(run.join("checkpoint_000002")).unwrap();
        let m = c.manifest().unwrap();
        assert_eq!(
            (m.format_version, m.iteration, m.files.clone()),
            (1, 2, vec!["weights.bin".to_string()])
        );
        assert_eq!(c.read("weights.bin").unwrap(), 2u64.to_le_bytes());
        // A half-written one (a temporary name) is not a checkpoint.
        std::fs::create_dir_all(run.join(".checkpoint_000005.tmp-1")).unwrap();
        assert_eq!(list(&run).len(), 4);
        let cfg = CheckpointConfig {
            num_to_keep: Some(1),
            score_attribute: Some("loss".into()),
            higher_is_better: false,
        };
        assert_eq!(cfg.best(&list(&run)).unwrap().path(), run.join("checkpoint_000002"));
        cfg.prune(&run).unwrap();
        let kept: Vec<u64> = list(&run).iter().map(|c| c.manifest().unwrap().iteration).collect();
        assert_eq!(kept, vec![2, 4], "the best by loss and the latest");
        // Bad names and an unwritable destination are errors; nothing is lost.
        let mut w = CheckpointWriter::new().unwrap();
        assert!(matches!(w.write("../x", b""), Err(CheckpointError::BadName(_))));
        w.write("w.bin", b"x").unwrap();
        let err = w
            .commit(&run.join("missing/\0bad"), 9, &BTreeMap::new(), "test")
            .unwrap_err();
        assert!(matches!(err, CheckpointError::Io { .. }), "{err}");
        assert_eq!(list(&run).len(), 2);
        // A copy committed elsewhere has the same files.
        let other = run.join("other");
        std::fs::create_dir_all(&other).unwrap();
        let c = CheckpointWriter::copy_of(&latest(&run).unwrap())
            .unwrap()
            .commit(&other, 7, &BTreeMap::new(), "test")
            .unwrap();
        assert_eq!(c.read("weights.bin").unwrap(), 4u64.to_le_bytes());
        assert_eq!(latest(&other).unwrap().manifest().unwrap().iteration, 7);
        let _ = std::fs::remove_dir_all(&run);
    }
}
