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
//! That directory may be anywhere [`crate::storage`] reaches
//! ([`CheckpointDir`]): on a local path the commit is the rename above; on
//! the cluster's store or an object store the files are uploaded first and
//! the manifest last, so a checkpoint without a manifest does not exist
//! for readers. A checkpoint read on another node is downloaded into that
//! node's cache ([`Checkpoint::to_local`]) once.
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
    /// The storage holding the checkpoints failed (names the URI; the
    /// checkpoints already committed stay readable).
    #[error("checkpoint storage: {0}")]
    Storage(#[source] crate::Error),
}

impl From<crate::Error> for CheckpointError {
    fn from(e: crate::Error) -> Self {
        CheckpointError::Storage(e)
    }
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
    /// Tells one commit from another of the same iteration (a rerun), so
    /// a node's cached copy of the older one is not taken for it.
    #[serde(default)]
    pub id: String,
}

/// A committed checkpoint: a directory with a manifest, on this node's
/// disk, and — for one held by the cluster's store or an object store —
/// the URI it lives at (its local directory is then this node's cached
/// copy, filled by [`Checkpoint::to_local`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    path: PathBuf,
    #[serde(default)]
    uri: Option<String>,
}

impl Checkpoint {
    /// Opens the checkpoint in `dir`, checking its manifest.
    pub fn open(dir: impl AsRef<Path>) -> Result<Checkpoint> {
        let c = Checkpoint {
            path: dir.as_ref().to_path_buf(),
            uri: None,
        };
        c.manifest()?;
        Ok(c)
    }

    /// The checkpoint at `location` — a local path (or `file:///path`), or
    /// the storage URI of a checkpoint directory (`cluster://runs/x/
    /// checkpoint_000010`, `s3://bucket/run/checkpoint_000010`) — with its
    /// files on this node (downloaded into its cache when remote). What
    /// Serve, `rllib evaluate` and restores take from a user.
    pub fn load(location: &str) -> Result<Checkpoint> {
        Checkpoint::at(location)?.to_local()
    }

    /// The checkpoint at `location` (as [`Checkpoint::load`] takes it)
    /// with only its manifest read: its files stay in storage until
    /// [`Checkpoint::to_local`] or [`Checkpoint::read`]. What a driver
    /// that only needs a checkpoint's iteration and metrics opens.
    pub fn at(location: &str) -> Result<Checkpoint> {
        let storage = crate::storage::StorageUri::from(location).open()?;
        let Some(path) = storage.local_path() else {
            let text = storage.read(MANIFEST)?.ok_or_else(|| {
                CheckpointError::Storage(crate::Error::Storage {
                    uri: storage.uri_of(MANIFEST),
                    message: "no checkpoint here (never committed, pruned or deleted)".into(),
                    retriable: false,
                })
            })?;
            parse_manifest(&storage.uri_of(MANIFEST), &text)?;
            let uri = storage.uri().to_string();
            let path = cache_path(&uri);
            refresh_cache(&path, &text)?;
            return Ok(Checkpoint { path, uri: Some(uri) });
        };
        Checkpoint::open(path)
    }

    /// Its directory on this node (for a checkpoint in remote storage, the
    /// cached copy: call [`Checkpoint::to_local`] first on another node).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where it lives in storage, for one held by the cluster's store or an
    /// object store (`None` for one on a local path).
    pub fn uri(&self) -> Option<&str> {
        self.uri.as_deref()
    }

    /// Its URI, or its path when it is on a local one: what to show a user
    /// or give back to [`CheckpointDir`].
    pub fn location(&self) -> String {
        self.uri.clone().unwrap_or_else(|| self.path.display().to_string())
    }

    /// One of its files (on this node: see [`Checkpoint::path`]).
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Reads one of its files (downloading the checkpoint to this node
    /// first when it is in remote storage and not here yet).
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let p = self.file(name);
        match std::fs::read(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.uri.is_some() => {
                let local = self.to_local()?;
                let p = local.file(name);
                std::fs::read(&p).map_err(|e| CheckpointError::io(&p, e))
            }
            r => r.map_err(|e| CheckpointError::io(&p, e)),
        }
    }

    /// This checkpoint with every file on this node's disk: one in remote
    /// storage is downloaded into the node's cache (once: a cached copy of
    /// the same commit is reused); one on a local path must be readable
    /// here, else the error says the path is not on this node.
    pub fn to_local(&self) -> Result<Checkpoint> {
        let Some(uri) = &self.uri else {
            return match self.manifest() {
                Ok(_) => Ok(self.clone()),
                Err(e) => Err(CheckpointError::io(
                    &self.path,
                    format!(
                        "not readable on this node ({e}): its storage is a local path this node does not \
                         share; use cluster:// or s3:// storage"
                    ),
                )),
            };
        };
        let storage = crate::storage::StorageUri::from(uri.as_str()).open()?;
        let text = storage.read(MANIFEST)?.ok_or_else(|| {
            CheckpointError::Storage(crate::Error::Storage {
                uri: storage.uri_of(MANIFEST),
                message: "the checkpoint is gone (pruned, or deleted)".into(),
                retriable: false,
            })
        })?;
        let manifest = parse_manifest(&storage.uri_of(MANIFEST), &text)?;
        let dir = cache_path(uri);
        refresh_cache(&dir, &text)?;
        for f in &manifest.files {
            let to = dir.join(f);
            if to.exists() {
                continue;
            }
            if !storage.download(f, &to)? {
                return Err(CheckpointError::Storage(crate::Error::Storage {
                    uri: storage.uri_of(f),
                    message: "a file its manifest lists is missing".into(),
                    retriable: false,
                }));
            }
        }
        Ok(Checkpoint {
            path: dir,
            uri: Some(uri.clone()),
        })
    }

    /// Its manifest.
    pub fn manifest(&self) -> Result<Manifest> {
        let p = self.path.join(MANIFEST);
        let text = std::fs::read(&p).map_err(|e| CheckpointError::io(&p, e))?;
        parse_manifest(&p.display().to_string(), &text)
    }
}

fn parse_manifest(at: &str, text: &[u8]) -> Result<Manifest> {
    let m: Manifest = serde_json::from_slice(text).map_err(|e| CheckpointError::io(at, format!("malformed: {e}")))?;
    if m.format_version > FORMAT_VERSION {
        return Err(CheckpointError::io(
            at,
            format!(
                "format version {} is newer than this build reads ({FORMAT_VERSION})",
                m.format_version
            ),
        ));
    }
    Ok(m)
}

/// This node's cache directory for the checkpoint at `uri`.
fn cache_path(uri: &str) -> PathBuf {
    use sha2::Digest;
    let h = sha2::Sha256::digest(uri.as_bytes());
    let name = uri.rsplit('/').next().unwrap_or("checkpoint");
    crate::storage::cache_dir()
        .join("checkpoints")
        .join(format!("{}-{name}", crate::ids::hex(&h[..8])))
}

/// Makes `dir` hold the commit whose manifest is `manifest`: a cached copy
/// of another commit (a rerun of the same iteration) is dropped first. The
/// manifest is written into the cache; files are fetched beside it.
fn refresh_cache(dir: &Path, manifest: &[u8]) -> Result<()> {
    let mp = dir.join(MANIFEST);
    if std::fs::read(&mp).ok().as_deref() != Some(manifest) {
        let _ = std::fs::remove_dir_all(dir);
    }
    std::fs::create_dir_all(dir).map_err(|e| CheckpointError::io(dir, e))?;
    std::fs::write(&mp, manifest).map_err(|e| CheckpointError::io(&mp, e))
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
        let dir = std::env::temp_dir().join(format!(
            "rayforge-ckpt-{}-{:x}",
            std::process::id(),
            crate::storage::random_u64()
        ));
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
        let manifest = self.manifest(iteration, metrics, written_by)?;
        let files = manifest.files.clone();
        let dest = run_dir.join(format!("{PREFIX}{iteration:06}"));
        let tmp = run_dir.join(format!(
            ".{PREFIX}{iteration:06}.tmp-{:x}",
            crate::storage::random_u64()
        ));
        let result = (|| -> Result<()> {
            std::fs::create_dir_all(&tmp).map_err(|e| CheckpointError::io(&tmp, e))?;
            for f in &files {
                let to = tmp.join(f);
                std::fs::copy(self.dir.join(f), &to).map_err(|e| CheckpointError::io(&to, e))?;
                // On disk before the rename commits it.
                std::fs::File::open(&to)
                    .and_then(|file| file.sync_all())
                    .map_err(|e| CheckpointError::io(&to, e))?;
            }
            let text = serde_json::to_vec_pretty(&manifest).map_err(|e| CheckpointError::io(&tmp, e))?;
            let mp = tmp.join(MANIFEST);
            std::fs::write(&mp, text)
                .and_then(|()| std::fs::File::open(&mp)?.sync_all())
                .map_err(|e| CheckpointError::io(&mp, e))?;
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
        Ok(Checkpoint { path: dest, uri: None })
    }

    /// The manifest of the files written so far.
    fn manifest(&self, iteration: u64, metrics: &BTreeMap<String, f64>, written_by: &str) -> Result<Manifest> {
        let mut files: Vec<String> = std::fs::read_dir(&self.dir)
            .map_err(|e| CheckpointError::io(&self.dir, e))?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != MANIFEST)
            .collect();
        files.sort();
        Ok(Manifest {
            format_version: FORMAT_VERSION,
            written_by: written_by.into(),
            iteration,
            metrics: metrics.clone(),
            files,
            id: format!("{:x}", crate::storage::random_u64()),
        })
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

/// A run's checkpoints wherever its storage is (a local path, the
/// cluster's store, an object store): committed, listed, pruned and read
/// the same way. Serializes as its URI, so a rank on another node opens
/// the same directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointDir {
    storage: crate::storage::Storage,
}

impl CheckpointDir {
    /// The checkpoints kept in `storage` (a run's directory).
    pub fn new(storage: crate::storage::Storage) -> CheckpointDir {
        CheckpointDir { storage }
    }

    /// Its storage.
    pub fn storage(&self) -> &crate::storage::Storage {
        &self.storage
    }

    /// Commits `w`'s files as `checkpoint_{iteration:06}`. On a local path
    /// this is [`CheckpointWriter::commit`]; elsewhere each file is
    /// uploaded, then the manifest: a commit cut short leaves no manifest,
    /// so readers never see it, and earlier checkpoints stay as they were.
    /// The writer's files become this node's cached copy.
    pub fn commit(
        &self,
        w: CheckpointWriter,
        iteration: u64,
        metrics: &BTreeMap<String, f64>,
        written_by: &str,
    ) -> Result<Checkpoint> {
        if let Some(dir) = self.storage.local_path() {
            std::fs::create_dir_all(dir).map_err(|e| CheckpointError::io(dir, e))?;
            return w.commit(dir, iteration, metrics, written_by);
        }
        let name = format!("{PREFIX}{iteration:06}");
        let manifest = w.manifest(iteration, metrics, written_by)?;
        // A rerun of the same iteration replaces it: its manifest goes first.
        self.storage.delete(&format!("{name}/{MANIFEST}"))?;
        self.storage.delete(&format!("{name}/"))?;
        for f in &manifest.files {
            self.storage.put_file(&format!("{name}/{f}"), &w.dir.join(f))?;
        }
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| CheckpointError::io(&name, e))?;
        self.storage.put(&format!("{name}/{MANIFEST}"), &text)?;
        let uri = self.storage.uri_of(&name);
        // Keep the files as this node's cached copy (best effort: a reader
        // downloads whatever is missing).
        let cache = cache_path(&uri);
        let _ = std::fs::remove_dir_all(&cache);
        if let Some(parent) = cache.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if std::fs::rename(&w.dir, &cache).is_ok() {
            let _ = std::fs::write(cache.join(MANIFEST), &text);
        } else {
            refresh_cache(&cache, &text)?;
        }
        Ok(Checkpoint {
            path: cache,
            uri: Some(uri),
        })
    }

    /// The committed checkpoints, oldest first (their manifests read; the
    /// files stay where they are until [`Checkpoint::to_local`]).
    pub fn list(&self) -> Result<Vec<Checkpoint>> {
        if let Some(dir) = self.storage.local_path() {
            return Ok(list(dir));
        }
        let mut out = Vec::new();
        for e in self.storage.list(PREFIX)? {
            let Some((name, file)) = e.key.split_once('/') else {
                continue;
            };
            if file != MANIFEST || name.strip_prefix(PREFIX).and_then(|n| n.parse::<u64>().ok()).is_none() {
                continue;
            }
            // Pruned between the listing and the read: not there any more.
            let Some(text) = self.storage.read(&e.key)? else {
                continue;
            };
            let at = self.storage.uri_of(&e.key);
            if let Err(err) = parse_manifest(&at, &text) {
                tracing::warn!("skipping checkpoint {at}: {err}");
                continue;
            }
            let uri = self.storage.uri_of(name);
            let cache = cache_path(&uri);
            refresh_cache(&cache, &text)?;
            out.push(Checkpoint {
                path: cache,
                uri: Some(uri),
            });
        }
        // Keys list in order, and the iteration is zero-padded.
        Ok(out)
    }

    /// Deletes every checkpoint (each manifest first, so none is ever seen
    /// half deleted): a run that starts over from scratch.
    pub fn clear(&self) -> Result<()> {
        for c in self.list()? {
            self.remove(&c)?;
        }
        Ok(())
    }

    /// Deletes the checkpoints of iterations after `iteration`, returning
    /// how many: what a run's driver does when it ended the run at
    /// `iteration` while the run, not yet stopped, committed more.
    pub fn remove_after(&self, iteration: u64) -> Result<usize> {
        let mut n = 0;
        for c in self.list()? {
            if c.manifest()?.iteration > iteration {
                self.remove(&c)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Deletes one checkpoint, its manifest first.
    fn remove(&self, c: &Checkpoint) -> Result<()> {
        match c.uri() {
            Some(uri) => {
                let name = uri.rsplit('/').next().unwrap_or_default();
                self.storage.delete(&format!("{name}/{MANIFEST}"))?;
                self.storage.delete(&format!("{name}/"))?;
            }
            None => {
                let _ = std::fs::remove_file(c.path().join(MANIFEST));
                std::fs::remove_dir_all(c.path()).map_err(|e| CheckpointError::io(c.path(), e))?;
            }
        }
        let _ = std::fs::remove_dir_all(c.path());
        Ok(())
    }

    /// The newest committed checkpoint.
    pub fn latest(&self) -> Result<Option<Checkpoint>> {
        Ok(self.list()?.pop())
    }

    /// Deletes the checkpoints `config` does not keep (never the latest).
    pub fn prune(&self, config: &CheckpointConfig) -> Result<()> {
        if let Some(dir) = self.storage.local_path() {
            return config.prune(dir);
        }
        for c in config.to_drop(&self.list()?) {
            if c.uri().is_some() {
                self.remove(&c)?;
            }
        }
        Ok(())
    }
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
        for c in self.to_drop(&list(run_dir)) {
            std::fs::remove_dir_all(c.path()).map_err(|e| CheckpointError::io(c.path(), e))?;
        }
        Ok(())
    }

    /// The checkpoints of `all` (oldest first) this config does not keep.
    fn to_drop(&self, all: &[Checkpoint]) -> Vec<Checkpoint> {
        let Some(k) = self.num_to_keep else { return Vec::new() };
        let latest = all.last().cloned();
        self.ranked(all)
            .into_iter()
            .enumerate()
            .filter(|(i, c)| *i >= k.max(1) && Some(c) != latest.as_ref())
            .map(|(_, c)| c)
            .collect()
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
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

    /// A checkpoint directory in remote storage (the in-memory object
    /// store here; the cluster's store and S3 in the integration tests):
    /// committed files then manifest, listed by manifest, pruned, and read
    /// on a node that never had it through its cache.
    #[test]
    fn remote_checkpoints_commit_manifest_last_and_download_once() {
        let storage = crate::storage::StorageUri::from("memory://ckpt-test/run")
            .open()
            .unwrap();
        let dir = CheckpointDir::new(storage.clone());
        for (i, loss) in [(1u64, 0.9), (2, 0.3), (3, 0.5)] {
            let mut w = CheckpointWriter::new().unwrap();
            w.write("weights.bin", &i.to_le_bytes()).unwrap();
            let metrics = [("loss".to_string(), loss)].into_iter().collect();
            let c = dir.commit(w, i, &metrics, "test").unwrap();
            assert_eq!(
                c.uri(),
                Some(format!("memory://ckpt-test/run/checkpoint_{i:06}").as_str())
            );
            assert_eq!(
                c.read("weights.bin").unwrap(),
                i.to_le_bytes(),
                "the writer's node keeps a copy"
            );
        }
        // Files without a manifest (an upload cut short) are no checkpoint.
        storage.put("checkpoint_000004/weights.bin", b"half").unwrap();
        let all = dir.list().unwrap();
        let iterations: Vec<u64> = all.iter().map(|c| c.manifest().unwrap().iteration).collect();
        assert_eq!(iterations, vec![1, 2, 3]);
        // Another node: nothing cached; to_local downloads the files.
        let latest = dir.latest().unwrap().unwrap();
        std::fs::remove_dir_all(latest.path()).unwrap();
        let local = latest.to_local().unwrap();
        assert_eq!(std::fs::read(local.file("weights.bin")).unwrap(), 3u64.to_le_bytes());
        // A rerun of iteration 3 replaces it, and the stale cached copy is not used.
        let mut w = CheckpointWriter::new().unwrap();
        w.write("weights.bin", b"rerun").unwrap();
        dir.commit(w, 3, &BTreeMap::new(), "test").unwrap();
        let mut stale = local.clone();
        stale.path = local.path().to_path_buf();
        std::fs::write(stale.file("weights.bin"), b"stale").unwrap();
        std::fs::write(stale.file(MANIFEST), b"{}").unwrap();
        assert_eq!(
            dir.latest()
                .unwrap()
                .unwrap()
                .to_local()
                .unwrap()
                .read("weights.bin")
                .unwrap(),
            b"rerun"
        );
        let cfg = CheckpointConfig {
            num_to_keep: Some(1),
            score_attribute: Some("loss".into()),
            higher_is_better: false,
        };
        dir.prune(&cfg).unwrap();
        let kept: Vec<u64> = dir
            .list()
            .unwrap()
            .iter()
            .map(|c| c.manifest().unwrap().iteration)
            .collect();
        assert_eq!(kept, vec![2, 3], "the best by loss and the latest");
        assert!(
            storage.list("checkpoint_000001/").unwrap().is_empty(),
            "pruned files are deleted"
        );
        let gone = Checkpoint {
            path: std::env::temp_dir().join("rayforge-no-such-ckpt"),
            uri: Some("memory://ckpt-test/run/checkpoint_000001".into()),
        };
        assert!(matches!(gone.to_local(), Err(CheckpointError::Storage(_))));
        // By URI, as a user names one.
        let loaded = Checkpoint::load("memory://ckpt-test/run/checkpoint_000003").unwrap();
        assert_eq!(loaded.read("weights.bin").unwrap(), b"rerun");
        assert!(Checkpoint::load("memory://ckpt-test/run/checkpoint_000009").is_err());
    }
}
