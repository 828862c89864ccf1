//! Datasets in files on any storage (`rayforge::storage`: a path, the
//! cluster's store, S3): how a write commits and how a reader finds the
//! files.
//!
//! A write is all or nothing: its parts get names of their own
//! (`part-00000-<write id>.parquet`), and the write commits last by writing
//! `_SUCCESS` — a JSON list of the directory's data files. A reader of a
//! directory with `_SUCCESS` reads exactly those files; without one, every
//! data file except the parts of writes that never finished. So a failed
//! write, or one still running, changes nothing a reader sees. Modes say
//! what happens to what the directory already holds: [`WriteMode::Error`]
//! (refuse a directory that holds files), [`WriteMode::Overwrite`]
//! (replace them once the new write committed) or [`WriteMode::Append`].
//!
//! On a multi-node cluster a local path (or `file://` URI) must be one
//! every node shares (NFS, a mounted volume): the driver leaves a marker
//! in the directory ([`rayforge::storage::SharedCheck`]) and each task
//! that writes a part reads it first, so a node that does not see the
//! directory fails the write with [`Error::PathNotShared`] instead of
//! writing its part on its own disk, where no reader finds it. (On the
//! embedded cluster every task runs on the driver's machine and the check
//! always passes.)
//!
//! Files in remote storage are downloaded into the node's cache
//! (`rayforge::storage::cache_dir()`) by the task that reads them; files
//! are taken to be immutable once written (as a write's parts are).

use rayforge::storage::{SharedCheck, Storage, StorageUri};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The marker a committed write leaves in its directory.
pub(crate) const SUCCESS: &str = "_SUCCESS";

/// What a write does with the files its directory already holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteMode {
    /// Refuse a directory that already holds files (the default): the
    /// error names it.
    #[default]
    Error,
    /// Replace the directory's files: they are deleted once the new ones
    /// are committed (a failed write leaves them as they were).
    Overwrite,
    /// Add to the directory's files.
    Append,
}

/// How [`crate::Dataset::write_parquet_with`] (and the CSV and JSON
/// writers) write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// What to do with the files already there.
    pub mode: WriteMode,
}

/// The content of `_SUCCESS`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Success {
    /// The directory's data files (keys relative to it).
    files: Vec<String>,
}

/// Whether `path` names remote storage (a URI other than `file://`).
pub(crate) fn is_remote(path: &str) -> bool {
    path.split_once("://").is_some_and(|(scheme, _)| scheme != "file")
}

fn data_file(key: &str, ext: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    !name.starts_with(['.', '_']) && name.ends_with(ext) && !key.split('/').any(|p| p.starts_with(['.', '_']))
}

/// The files a reader of the directory `storage` reads: those its
/// `_SUCCESS` lists, or every data file ending in `ext` but unfinished
/// writes' parts. Keys, relative to the directory.
pub(crate) fn committed_files(storage: &Storage, ext: &str) -> Result<Vec<String>> {
    if let Some(text) = storage.read(SUCCESS)? {
        let s: Success = serde_json::from_slice(&text)
            .map_err(|e| Error::InvalidArgument(format!("{} is not a success marker: {e}", storage.uri_of(SUCCESS))))?;
        return Ok(s.files.into_iter().filter(|f| f.ends_with(ext)).collect());
    }
    Ok(storage
        .list("")?
        .into_iter()
        .map(|e| e.key)
        .filter(|k| data_file(k, ext) && !crate::ops::is_write_part(k.rsplit('/').next().unwrap_or(k)))
        .collect())
}

/// A write about to start in `dir`: checks the mode against what is there.
pub(crate) struct PendingWrite {
    pub(crate) storage: Storage,
    pub(crate) write_id: String,
    mode: WriteMode,
    /// The data files the directory held (every kind).
    before: Vec<String>,
    /// For a local path: the marker each task reads before it writes its
    /// part (removed when the write ends, however it ends).
    pub(crate) shared: Option<SharedCheck>,
}

impl PendingWrite {
    pub(crate) fn start(dir: &str, mode: WriteMode) -> Result<PendingWrite> {
        let storage = StorageUri::from(dir).open()?;
        storage.check_writable()?;
        let before: Vec<String> = match storage.read(SUCCESS)? {
            Some(text) => serde_json::from_slice::<Success>(&text)
                .map(|s| s.files)
                .unwrap_or_default(),
            None => storage
                .list("")?
                .into_iter()
                .map(|e| e.key)
                .filter(|k| data_file(k, ""))
                .collect(),
        };
        if mode == WriteMode::Error && !before.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{dir} already holds {} file(s) (e.g. {}): write with WriteMode::Overwrite to replace them or \
                 WriteMode::Append to add to them",
                before.len(),
                before[0]
            )));
        }
        // Written after the mode check, so a refused write leaves nothing.
        let shared = match storage.local_path() {
            Some(_) => Some(storage.shared_check()?),
            None => None,
        };
        Ok(PendingWrite {
            storage,
            write_id: format!("{:016x}", rand::random::<u64>()),
            mode,
            before,
            shared,
        })
    }

    /// Commits the parts `written` (keys): the marker lists them (and, for
    /// an append, what was there); an overwrite then deletes the old files.
    pub(crate) fn commit(self, written: &[String]) -> Result<()> {
        let mut files: Vec<String> = written.to_vec();
        if self.mode == WriteMode::Append {
            files.extend(self.before.iter().cloned());
        }
        files.sort();
        let text = serde_json::to_vec_pretty(&Success { files: files.clone() })
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.storage.put(SUCCESS, &text)?;
        if self.mode == WriteMode::Overwrite {
            for old in self.before.iter().filter(|k| !files.contains(k)) {
                self.storage.delete(old)?;
            }
        }
        Ok(())
    }

    /// Removes the parts of a write that failed (best effort: readers skip
    /// them anyway).
    pub(crate) fn abort(self, written: &[String]) {
        for k in written {
            let _ = self.storage.delete(k);
        }
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.remove();
        }
    }
}

/// Fails with [`Error::PathNotShared`] when this node cannot see the
/// marker the driver left in `dir` (the write's directory, a local path).
pub(crate) fn verify_shared(shared: &SharedCheck, dir: &str) -> Result<()> {
    shared.verify().map_err(|source| Error::PathNotShared {
        node: rayforge::node_id().unwrap_or_else(|_| "(unknown)".into()),
        path: dir.to_string(),
        what: "the directory this write goes to".into(),
        hint: String::new(),
        source: Box::new(source),
    })
}

/// A file to read on this node: a local path as it is; a file in remote
/// storage downloaded into the node's cache first (once).
pub(crate) fn localize(path: &str) -> Result<std::path::PathBuf> {
    if !is_remote(path) {
        return Ok(std::path::PathBuf::from(path.strip_prefix("file://").unwrap_or(path)));
    }
    let (dir, name) = path
        .rsplit_once('/')
        .ok_or_else(|| Error::InvalidArgument(format!("{path}: not a file in storage")))?;
    let local = rayforge::storage::cache_dir()
        .join("data")
        .join(format!("{}-{name}", cache_key(path)));
    if local.is_file() {
        return Ok(local);
    }
    let storage = StorageUri::from(dir).open()?;
    if !storage.download(name, &local)? {
        return Err(Error::NotFound(path.to_string()));
    }
    Ok(local)
}

/// A short, stable name for a URI's cached copy (FNV-1a: it names cache
/// files, it guards nothing).
fn cache_key(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
