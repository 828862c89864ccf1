//! The serving side of the cluster's own store (`cluster://`): files under
//! one directory (the head's `--state-dir/storage`, or the embedded node's
//! session directory), written through a temporary file and renamed into
//! place, so a reader sees a whole file or none, and held to a size budget
//! that fails a write clearly instead of filling the head's disk.
//!
//! The head's control service serves it; every node forwards its workers'
//! calls to the head over the cluster's connection, behind the cluster
//! token. The client side is in [`super::cluster`].

use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Status, Streaming};

use crate::error::{Error, Result};
use crate::proto;

/// Chunks of a stored file on their way out.
pub(crate) type StorageChunkStream =
    Pin<Box<dyn Stream<Item = std::result::Result<proto::StorageChunk, Status>> + Send>>;

/// Where uploads are written before they are renamed into place (not a key:
/// keys may not start with a dot-directory of ours).
const TMP: &str = ".tmp";

/// The default budget of the head's store: 20 GiB.
pub const DEFAULT_BUDGET: u64 = 20 << 30;

/// Files under a root directory, within a budget.
pub(crate) struct FileStore {
    root: PathBuf,
    budget: u64,
    /// Bytes held: committed files plus uploads in flight.
    used: Mutex<u64>,
}

impl FileStore {
    /// Opens (or creates) the store in `root`, counting what it holds.
    pub(crate) fn open(root: &Path, budget: u64) -> Result<Arc<FileStore>> {
        let tmp = root.join(TMP);
        // Uploads cut off by a crash are not files of the store.
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        let used = walk(root)?.iter().map(|(_, size)| size).sum();
        tracing::info!(root = %root.display(), used, budget, "cluster storage opened");
        Ok(Arc::new(FileStore {
            root: root.to_path_buf(),
            budget,
            used: Mutex::new(used),
        }))
    }

    /// The path of `key`, which must be relative, '/'-separated plain names.
    fn path_of(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn storage_error(&self, key: &str, message: impl Into<String>, retriable: bool) -> Error {
        Error::Storage {
            uri: format!("cluster://{key}"),
            message: message.into(),
            retriable,
        }
    }

    /// Takes `n` more bytes of the budget, or says why not.
    fn reserve(&self, key: &str, n: u64) -> Result<()> {
        let mut used = self.used.lock();
        if used.saturating_add(n) > self.budget {
            return Err(self.storage_error(
                key,
                format!(
                    "the cluster's storage is full: its budget is {} bytes and {} are held \
                     (raise the head's --storage-budget, delete old runs, or use s3://)",
                    self.budget, *used
                ),
                false,
            ));
        }
        *used += n;
        Ok(())
    }

    fn release(&self, n: u64) {
        let mut used = self.used.lock();
        *used = used.saturating_sub(n);
    }

    /// Stores an upload: the first chunk names the key, the last says so;
    /// the file replaces any earlier one only once it is whole.
    pub(crate) async fn put(&self, mut inbound: Streaming<proto::StorageChunk>) -> Result<()> {
        let first = inbound
            .message()
            .await
            .map_err(|s| Error::rpc("receiving an upload", s))?
            .ok_or_else(|| Error::InvalidArgument("an empty upload to the cluster's storage".into()))?;
        let key = first.key.clone();
        let dest = self.path_of(&key)?;
        let tmp = self.root.join(TMP).join(crate::ids::ObjectId::for_put().hex());
        let mut reserved = 0u64;
        let result = async {
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| self.storage_error(&key, format!("creating {}: {e}", tmp.display()), true))?;
            let mut chunk = first;
            loop {
                let n = chunk.data.len() as u64;
                self.reserve(&key, n)?;
                reserved += n;
                f.write_all(&chunk.data)
                    .await
                    .map_err(|e| self.storage_error(&key, format!("writing {}: {e}", tmp.display()), true))?;
                if chunk.last {
                    break;
                }
                chunk = match inbound.message().await {
                    Ok(Some(c)) => c,
                    Ok(None) => {
                        return Err(self.storage_error(&key, "the upload ended before its last chunk", true));
                    }
                    Err(s) => return Err(Error::rpc(&format!("receiving cluster://{key}"), s)),
                };
            }
            f.sync_all()
                .await
                .map_err(|e| self.storage_error(&key, format!("syncing {}: {e}", tmp.display()), true))?;
            drop(f);
            if let Some(dir) = dest.parent() {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| self.storage_error(&key, format!("creating {}: {e}", dir.display()), true))?;
            }
            let old = tokio::fs::metadata(&dest).await.map(|m| m.len()).unwrap_or(0);
            tokio::fs::rename(&tmp, &dest)
                .await
                .map_err(|e| self.storage_error(&key, format!("storing {}: {e}", dest.display()), true))?;
            self.release(old);
            if let Some(dir) = dest.parent() {
                sync_dir(dir);
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            self.release(reserved);
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Streams the file of `key` (its last chunk says so).
    pub(crate) async fn get(&self, key: &str) -> std::result::Result<StorageChunkStream, Status> {
        let path = self.path_of(key).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let f = tokio::fs::File::open(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Status::not_found(format!("cluster://{key} does not exist"))
            } else {
                Status::internal(format!("cluster://{key}: {e}"))
            }
        })?;
        let size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        let s = futures::stream::unfold(Some((f, 0u64)), move |state| async move {
            let (mut f, sent) = state?;
            let want = (size - sent.min(size)).min(super::CHUNK as u64) as usize;
            let mut buf = vec![0u8; want];
            match f.read_exact(&mut buf).await {
                Ok(_) => {
                    let sent = sent + want as u64;
                    let last = sent >= size;
                    let chunk = proto::StorageChunk {
                        key: String::new(),
                        data: buf,
                        last,
                    };
                    Some((Ok(chunk), (!last).then_some((f, sent))))
                }
                Err(e) => Some((Err(Status::internal(e.to_string())), None)),
            }
        });
        Ok(s.boxed())
    }

    /// The keys starting with `prefix`, with their sizes, in order.
    pub(crate) fn list(&self, prefix: &str) -> Result<Vec<proto::StorageEntry>> {
        // Walk the deepest directory the prefix names whole.
        let dir_part = prefix.rsplit_once('/').map_or("", |(d, _)| d);
        if !dir_part.is_empty() {
            check_key(dir_part)?;
        }
        let dir = self.root.join(dir_part);
        let mut out: Vec<proto::StorageEntry> = walk(&dir)?
            .into_iter()
            .map(|(rel, size)| {
                let key = if dir_part.is_empty() {
                    rel
                } else {
                    format!("{dir_part}/{rel}")
                };
                proto::StorageEntry { key, size }
            })
            .filter(|e| e.key.starts_with(prefix))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Deletes every key starting with `prefix`; returns how many.
    pub(crate) fn delete(&self, prefix: &str) -> Result<u64> {
        let entries = self.list(prefix)?;
        let mut n = 0;
        for e in &entries {
            let path = self.root.join(&e.key);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    self.release(e.size);
                    n += 1;
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(self.storage_error(&e.key, format!("deleting: {err}"), true)),
            }
            // Directories left empty go too (never the root).
            let mut dir = path.parent();
            while let Some(d) = dir {
                if d == self.root || std::fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
        }
        Ok(n)
    }
}

/// The replies of the store's four RPCs, shared by the head's control
/// service and the embedded node (errors travel in the reply, with their
/// kind).
impl FileStore {
    pub(crate) async fn serve_put(&self, inbound: Streaming<proto::StorageChunk>) -> proto::StoragePutReply {
        proto::StoragePutReply {
            error: self.put(inbound).await.err().map(|e| e.to_proto()),
        }
    }

    pub(crate) async fn serve_list(self: Arc<Self>, prefix: String) -> proto::StorageListReply {
        match tokio::task::spawn_blocking(move || self.list(&prefix)).await {
            Ok(Ok(entries)) => proto::StorageListReply { entries, error: None },
            Ok(Err(e)) => proto::StorageListReply {
                entries: Vec::new(),
                error: Some(e.to_proto()),
            },
            Err(e) => proto::StorageListReply {
                entries: Vec::new(),
                error: Some(Error::Internal(format!("listing the cluster's storage: {e}")).to_proto()),
            },
        }
    }

    pub(crate) async fn serve_delete(self: Arc<Self>, prefix: String) -> proto::StorageDeleteReply {
        match tokio::task::spawn_blocking(move || self.delete(&prefix)).await {
            Ok(Ok(deleted)) => proto::StorageDeleteReply { deleted, error: None },
            Ok(Err(e)) => proto::StorageDeleteReply {
                deleted: 0,
                error: Some(e.to_proto()),
            },
            Err(e) => proto::StorageDeleteReply {
                deleted: 0,
                error: Some(Error::Internal(format!("deleting from the cluster's storage: {e}")).to_proto()),
            },
        }
    }
}

/// An upload's chunks passed on to the head: a stream the caller cut off
/// ends without its last chunk, which the head refuses.
pub(crate) fn forward(inbound: Streaming<proto::StorageChunk>) -> impl Stream<Item = proto::StorageChunk> + Send {
    inbound
        .take_while(|r| futures::future::ready(r.is_ok()))
        .filter_map(|r| futures::future::ready(r.ok()))
}

/// Checks that `key` is relative and made of plain names (no `..`, no
/// empty parts, none of the store's own dot-directories).
pub(crate) fn check_key(key: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::InvalidArgument(format!("storage key {key:?}: {why}")));
    if key.is_empty() {
        return bad("empty");
    }
    if key.contains('\0') {
        return bad("contains a NUL byte");
    }
    if key.starts_with(TMP) && key[TMP.len()..].is_empty() || key.starts_with(&format!("{TMP}/")) {
        return bad("names the store's own temporary directory");
    }
    for part in key.split('/') {
        let plain = matches!(
            Path::new(part).components().collect::<Vec<_>>()[..],
            [Component::Normal(_)]
        );
        if part.is_empty() || !plain {
            return bad("each part between slashes must be a plain name (no empty parts, `.` or `..`)");
        }
    }
    Ok(())
}

/// Every file under `dir` (relative, '/'-separated) with its size, skipping
/// the store's temporary directory; a missing `dir` holds nothing.
fn walk(dir: &Path) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::NotADirectory => {
                continue
            }
            Err(e) => return Err(Error::io(format!("listing {}", d.display()), e)),
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if rel.is_empty() && d == dir && name == TMP {
                continue;
            }
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push((entry.path(), r)),
                Ok(t) if t.is_file() => out.push((r, entry.metadata().map(|m| m.len()).unwrap_or(0))),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// fsyncs a directory, so a rename in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_relative_plain_names() {
        for ok in ["a", "run/checkpoint_000001/model.pt", ".hidden/x", ".tmpfile"] {
            assert!(check_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/abs", "a//b", "a/../b", "..", "./a", "a/", ".tmp", ".tmp/x", "a\0b",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn listing_and_deleting_follow_the_prefix_and_free_the_budget() {
        let root = std::env::temp_dir().join(format!("rayforge-filestore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("run/a")).unwrap();
        std::fs::write(root.join("run/a/x"), b"12345").unwrap();
        std::fs::write(root.join("run/ab"), b"123").unwrap();
        std::fs::write(root.join("other"), b"1").unwrap();
        let s = FileStore::open(&root, 100).unwrap();
        assert_eq!(*s.used.lock(), 9);
        let keys = |p: &str| s.list(p).unwrap().into_iter().map(|e| e.key).collect::<Vec<_>>();
        assert_eq!(keys("run/a"), vec!["run/a/x", "run/ab"]);
        assert_eq!(keys("run/a/"), vec!["run/a/x"]);
        assert_eq!(keys(""), vec!["other", "run/a/x", "run/ab"]);
        assert!(s.list("../etc/").is_err());
        assert_eq!(s.delete("run/a/").unwrap(), 1);
        assert!(!root.join("run/a").exists(), "an emptied directory goes");
        assert_eq!(*s.used.lock(), 4);
        // The budget refuses what does not fit, and says so.
        let err = s.reserve("big", 97).unwrap_err();
        assert!(
            matches!(&err, Error::Storage { retriable: false, message, .. } if message.contains("budget is 100")),
            "{err}"
        );
        s.reserve("fits", 96).unwrap();
        let _ = std::fs::remove_dir_all(&root);
    }
}
