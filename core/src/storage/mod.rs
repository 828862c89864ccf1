//! One storage layer for everything that must outlive a process or be read
//! on another node — checkpoints, Tune's journal and trial files, Train's
//! progress, Data's outputs — addressed by URI, so that nothing assumes the
//! nodes of a cluster share a disk:
//!
//! | URI | where the files are |
//! |---|---|
//! | `/path` or `file:///path` | a path on this machine; on a cluster, one every node must share (NFS, a mounted volume): checked with a [`SharedCheck`], never assumed |
//! | `cluster://prefix` | the cluster's own store: files held by the head under its `--state-dir` and streamed over the cluster's connections behind its token, within the head's `--storage-budget` (no NFS, no external service) |
//! | `s3://bucket/prefix` | an S3-compatible object store, configured by the usual variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`) |
//! | `gs://bucket/prefix`, `az://container/prefix` | Google Cloud Storage and Azure Blob Storage, configured by their usual variables |
//! | `memory://prefix` | this process's memory (tests) |
//!
//! An empty URI means the default: a local path (`~/rayforge_results`) on
//! the embedded cluster, `cluster://rayforge_results` on a multi-node one.
//!
//! Every file is written whole or not at all (a local file through a
//! temporary name and a rename, fsynced; an upload that is cut off is never
//! taken for a shorter file). Larger structures commit last: a checkpoint's
//! manifest is written after its files (see [`crate::checkpoint`]).
//!
//! Every call has an async form (`*_async`) for async code; the blocking
//! form wraps it.
//!
//! ```
//! use rayforge::storage::StorageUri;
//!
//! let dir = std::env::temp_dir().join(format!("storage-doc-{}", std::process::id()));
//! let store = StorageUri::from(dir.as_path()).open()?;
//! store.check_writable()?;
//! store.put("run/progress.csv", b"iteration,loss\n1,0.5\n")?;
//! assert_eq!(store.read("run/progress.csv")?.as_deref(), Some(&b"iteration,loss\n1,0.5\n"[..]));
//! assert_eq!(store.list("run/")?.len(), 1);
//! assert_eq!(store.delete("run/")?, 1);
//! // A URI that cannot work is refused before anything is written.
//! assert!(StorageUri::from("ftp://host/x").open().is_err());
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), rayforge::Error>(())
//! ```

mod cluster;
pub(crate) mod file_store;
mod local;
mod object;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use file_store::DEFAULT_BUDGET;

/// Chunk size of the cluster store's transfers.
pub(crate) const CHUNK: usize = 1 << 20;

/// Where something is stored, as the user wrote it (a URI or a plain path):
/// the value of a `storage_path` setting. Parsed by [`StorageUri::open`],
/// which says what is wrong with a bad one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StorageUri(String);

impl StorageUri {
    /// The URI as given (empty: the default, see the module docs).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URI with `name` appended as a sub-directory (or sub-prefix).
    pub fn join(&self, name: &str) -> StorageUri {
        let base = if self.0.is_empty() {
            default_uri()
        } else {
            self.0.clone()
        };
        if base.ends_with('/') || base.ends_with("://") {
            StorageUri(format!("{base}{name}"))
        } else {
            StorageUri(format!("{base}/{name}"))
        }
    }

    /// Parses the URI and opens its storage (no I/O but setting up a
    /// client): a malformed URI or an unknown scheme is an error naming it.
    pub fn open(&self) -> Result<Storage> {
        Storage::open(self)
    }
}

impl std::fmt::Display for StorageUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            write!(f, "{}", default_uri())
        } else {
            f.write_str(&self.0)
        }
    }
}

impl From<&str> for StorageUri {
    fn from(s: &str) -> Self {
        StorageUri(s.to_string())
    }
}

impl From<String> for StorageUri {
    fn from(s: String) -> Self {
        StorageUri(s)
    }
}

impl From<&Path> for StorageUri {
    fn from(p: &Path) -> Self {
        StorageUri(p.to_string_lossy().into_owned())
    }
}

impl From<PathBuf> for StorageUri {
    fn from(p: PathBuf) -> Self {
        StorageUri::from(p.as_path())
    }
}

impl From<&PathBuf> for StorageUri {
    fn from(p: &PathBuf) -> Self {
        StorageUri::from(p.as_path())
    }
}

/// The default storage: `~/rayforge_results` (or the temporary directory
/// without a home) on the embedded cluster and before `init`;
/// `cluster://rayforge_results` when this process is part of a multi-node
/// cluster.
pub fn default_uri() -> String {
    let on_cluster = crate::worker::try_current().is_some_and(|w| !w.node_addr.is_empty());
    if on_cluster {
        return "cluster://rayforge_results".into();
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join("rayforge_results"))
        .unwrap_or_else(|| std::env::temp_dir().join("rayforge_results"))
        .to_string_lossy()
        .into_owned()
}

/// This node's cache of files read from storage (checkpoints downloaded
/// for a rank or a replica): `$RAYFORGE_STORAGE_CACHE`, else
/// `rayforge/storage-cache` under the temporary directory (this user's
/// private directory, which every node daemon checks at start:
/// [`crate::util::rayforge_tmp`]).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("RAYFORGE_STORAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("rayforge").join("storage-cache"))
}

/// A file in storage, as [`Storage::list`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its key, relative to the storage's root ('/'-separated).
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

#[derive(Clone)]
enum Backend {
    Local(PathBuf),
    Cluster(String),
    Object(object::ObjectBackend),
}

/// Opened storage: a root (a directory, a prefix of the cluster's store, a
/// bucket's prefix) that files are put in, read from, listed and deleted by
/// key ('/'-separated, relative to the root). Cheap to clone; serializes as
/// its URI, so it can be sent to a task and opened again there.
#[derive(Clone)]
pub struct Storage {
    uri: String,
    backend: Backend,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Storage").field(&self.uri).finish()
    }
}

impl Serialize for Storage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

impl<'de> Deserialize<'de> for Storage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let uri = String::deserialize(d)?;
        Storage::open(&StorageUri(uri)).map_err(serde::de::Error::custom)
    }
}

impl PartialEq for Storage {
    fn eq(&self, other: &Self) -> bool {
        self.uri == other.uri
    }
}

fn bad_uri(uri: &str, why: impl std::fmt::Display) -> Error {
    Error::Storage {
        uri: uri.to_string(),
        message: format!(
            "{why} (a storage URI is a path, file:///path, cluster://prefix, s3://bucket/prefix, \
             gs://bucket/prefix or az://container/prefix)"
        ),
        retriable: false,
    }
}

/// `prefix` trimmed of slashes and checked to be plain '/'-separated names.
fn clean_prefix(uri: &str, prefix: &str) -> Result<String> {
    let p = prefix.trim_matches('/');
    if !p.is_empty() {
        file_store::check_key(p).map_err(|e| bad_uri(uri, e))?;
    }
    Ok(p.to_string())
}

impl Storage {
    /// Opens the storage `uri` names (see the module docs for the schemes).
    pub fn open(uri: &StorageUri) -> Result<Storage> {
        let given = if uri.0.is_empty() { default_uri() } else { uri.0.clone() };
        let raw = given.trim();
        let Some((scheme, rest)) = raw.split_once("://") else {
            if raw.is_empty() {
                return Err(bad_uri(raw, "empty"));
            }
            let path = std::path::absolute(raw).map_err(|e| bad_uri(raw, e))?;
            return Ok(Storage::local(path));
        };
        match scheme {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(bad_uri(raw, "a file:// URI names an absolute path (file:///path)"));
                }
                Ok(Storage::local(PathBuf::from(rest)))
            }
            "cluster" => {
                let prefix = clean_prefix(raw, rest)?;
                Ok(Storage {
                    uri: format!("cluster://{prefix}"),
                    backend: Backend::Cluster(prefix),
                })
            }
            "s3" | "gs" | "az" | "memory" => {
                let (backend, uri) = object::ObjectBackend::open(raw, scheme, rest)?;
                Ok(Storage {
                    uri,
                    backend: Backend::Object(backend),
                })
            }
            other => Err(bad_uri(raw, format!("unknown scheme `{other}`"))),
        }
    }

    fn local(path: PathBuf) -> Storage {
        Storage {
            uri: path.to_string_lossy().into_owned(),
            backend: Backend::Local(path),
        }
    }

    /// Its URI (a path for local storage).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The URI of `key` in it.
    pub fn uri_of(&self, key: &str) -> String {
        if key.is_empty() {
            self.uri.clone()
        } else if self.uri.ends_with('/') || self.uri.ends_with("://") {
            format!("{}{key}", self.uri)
        } else {
            format!("{}/{key}", self.uri)
        }
    }

    /// The directory of a local storage (`None` for the others).
    pub fn local_path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Local(p) => Some(p),
            _ => None,
        }
    }

    /// The storage rooted at `name` under this one.
    pub fn join(&self, name: &str) -> Result<Storage> {
        let name = clean_prefix(&self.uri, name)?;
        if name.is_empty() {
            return Ok(self.clone());
        }
        let uri = self.uri_of(&name);
        let backend = match &self.backend {
            Backend::Local(p) => Backend::Local(p.join(&name)),
            Backend::Cluster(prefix) => Backend::Cluster(join_key(prefix, &name)),
            Backend::Object(o) => Backend::Object(o.join(&name)),
        };
        Ok(Storage { uri, backend })
    }

    fn key_error(&self, key: &str) -> Result<()> {
        file_store::check_key(key).map_err(|e| Error::Storage {
            uri: self.uri_of(key),
            message: e.to_string(),
            retriable: false,
        })
    }

    /// Writes `bytes` as the file `key`, whole or not at all.
    pub async fn put_async(&self, key: &str, bytes: &[u8]) -> Result<()> {
        self.key_error(key)?;
        match &self.backend {
            Backend::Local(root) => local::put(&self.uri_of(key), &root.join(key), bytes).await,
            Backend::Cluster(prefix) => cluster::put(&join_key(prefix, key), bytes).await,
            Backend::Object(o) => o.put(key, bytes).await,
        }
    }

    /// Uploads the local file `from` as `key` (streamed: the file is never
    /// held in memory whole), whole or not at all.
    pub async fn put_file_async(&self, key: &str, from: &Path) -> Result<()> {
        self.key_error(key)?;
        let from = from.to_path_buf();
        match &self.backend {
            Backend::Local(root) => local::put_file(&self.uri_of(key), &root.join(key), from).await,
            Backend::Cluster(prefix) => cluster::put_file(&join_key(prefix, key), from).await,
            Backend::Object(o) => o.clone().put_file(key.to_string(), from).await,
        }
    }

    /// Reads the file `key`; `None` when there is none.
    pub async fn read_async(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.key_error(key)?;
        match &self.backend {
            Backend::Local(root) => local::read(&self.uri_of(key), &root.join(key)).await,
            Backend::Cluster(prefix) => cluster::read(&join_key(prefix, key)).await,
            Backend::Object(o) => o.read(key).await,
        }
    }

    /// Downloads the file `key` to the local path `to` (streamed, written
    /// under a temporary name and renamed, so `to` is whole or absent).
    /// Returns `false` when there is no such file.
    pub async fn download_async(&self, key: &str, to: &Path) -> Result<bool> {
        self.key_error(key)?;
        match &self.backend {
            Backend::Local(root) => local::download(&self.uri_of(key), &root.join(key), to).await,
            Backend::Cluster(prefix) => cluster::download(&join_key(prefix, key), to).await,
            Backend::Object(o) => o.download(key, to).await,
        }
    }

    /// Checks the directory part of a listing prefix (`run/check` lists
    /// `run/`'s keys starting with `check`).
    fn prefix_error(&self, prefix: &str) -> Result<()> {
        match prefix
            .trim_end_matches('/')
            .rsplit_once('/')
            .map_or(prefix.trim_end_matches('/'), |(d, _)| d)
        {
            "" => Ok(()),
            dir => self.key_error(dir),
        }
    }

    /// The files whose keys start with `prefix` (every file when empty),
    /// in key order.
    pub async fn list_async(&self, prefix: &str) -> Result<Vec<Entry>> {
        self.prefix_error(prefix)?;
        let mut out = match &self.backend {
            Backend::Local(root) => local::list(&self.uri, root, prefix).await?,
            Backend::Cluster(p) => {
                let full = if p.is_empty() {
                    prefix.to_string()
                } else {
                    format!("{p}/{prefix}")
                };
                let strip = if p.is_empty() { 0 } else { p.len() + 1 };
                cluster::list(&full)
                    .await?
                    .into_iter()
                    .map(|e| Entry {
                        key: e.key[strip..].to_string(),
                        size: e.size,
                    })
                    .collect()
            }
            Backend::Object(o) => o.list(prefix).await?,
        };
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Deletes every file whose key starts with `prefix`; returns how many.
    pub async fn delete_async(&self, prefix: &str) -> Result<u64> {
        self.prefix_error(prefix)?;
        match &self.backend {
            Backend::Local(root) => local::delete(&self.uri, root, prefix).await,
            Backend::Cluster(p) => {
                let full = if p.is_empty() {
                    prefix.to_string()
                } else {
                    format!("{p}/{prefix}")
                };
                if full.is_empty() {
                    return Err(Error::InvalidArgument(
                        "deleting the whole cluster store: name a prefix".into(),
                    ));
                }
                cluster::delete(&full).await
            }
            Backend::Object(o) => o.delete(prefix).await,
        }
    }

    /// Checks that files can be written, read back and deleted here: what
    /// a run does before it starts, so an unreachable server, a missing
    /// permission or a bad path fails at once, naming the URI.
    pub async fn check_writable_async(&self) -> Result<()> {
        let key = format!(".rayforge-probe-{:x}", random_u64());
        let context = |e: Error| match e {
            Error::Storage {
                uri,
                message,
                retriable,
            } => Error::Storage {
                uri,
                message: format!("cannot write here: {message}"),
                retriable,
            },
            other => Error::Storage {
                uri: self.uri.clone(),
                message: format!("cannot write here: {other}"),
                retriable: other.is_retriable(),
            },
        };
        self.put_async(&key, b"probe").await.map_err(context)?;
        let back = self.read_async(&key).await.map_err(context)?;
        self.delete_async(&key).await.map_err(context)?;
        if back.as_deref() != Some(&b"probe"[..]) {
            return Err(Error::Storage {
                uri: self.uri_of(&key),
                message: "a file written here could not be read back".into(),
                retriable: false,
            });
        }
        Ok(())
    }

    /// Writes a marker that every node using this storage must be able to
    /// read: a local path is only usable on a cluster if every node shares
    /// it. The driver makes the check; each node's task calls
    /// [`SharedCheck::verify`].
    pub async fn shared_check_async(&self) -> Result<SharedCheck> {
        let key = format!(".rayforge-shared/{:x}", random_u64());
        let token = format!("{:x}{:x}", random_u64(), random_u64());
        self.put_async(&key, token.as_bytes()).await?;
        Ok(SharedCheck {
            storage: self.clone(),
            key,
            token,
        })
    }

    /// Blocking form of [`Storage::put_async`].
    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        block_on(self.put_async(key, bytes))?
    }

    /// Blocking form of [`Storage::put_file_async`].
    pub fn put_file(&self, key: &str, from: &Path) -> Result<()> {
        block_on(self.put_file_async(key, from))?
    }

    /// Blocking form of [`Storage::read_async`].
    pub fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        block_on(self.read_async(key))?
    }

    /// Blocking form of [`Storage::download_async`].
    pub fn download(&self, key: &str, to: &Path) -> Result<bool> {
        block_on(self.download_async(key, to))?
    }

    /// Blocking form of [`Storage::list_async`].
    pub fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        block_on(self.list_async(prefix))?
    }

    /// Blocking form of [`Storage::delete_async`].
    pub fn delete(&self, prefix: &str) -> Result<u64> {
        block_on(self.delete_async(prefix))?
    }

    /// Blocking form of [`Storage::check_writable_async`].
    pub fn check_writable(&self) -> Result<()> {
        block_on(self.check_writable_async())?
    }

    /// Blocking form of [`Storage::shared_check_async`].
    pub fn shared_check(&self) -> Result<SharedCheck> {
        block_on(self.shared_check_async())?
    }
}

/// A marker the driver wrote to storage, for every node that will use the
/// storage to read back ([`Storage::shared_check`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedCheck {
    storage: Storage,
    key: String,
    token: String,
}

impl SharedCheck {
    /// Reads the marker on this node: an error naming the node when it
    /// cannot (the storage is a local path this node does not share).
    pub fn verify(&self) -> Result<()> {
        let seen = self.storage.read(&self.key);
        if matches!(&seen, Ok(Some(t)) if *t == self.token.as_bytes()) {
            return Ok(());
        }
        let node = crate::node_id().unwrap_or_else(|_| "(unknown)".into());
        let what = match seen {
            Ok(None) => "cannot see".to_string(),
            Ok(Some(_)) => "sees another file at".to_string(),
            Err(e) => format!("cannot read ({e})"),
        };
        Err(Error::Storage {
            uri: self.storage.uri.clone(),
            message: format!(
                "node {node} {what} the marker {} that the driver wrote: this path is not shared by \
                 every node. Mount the same volume on every node, or use cluster:// (the head's store) \
                 or s3://",
                self.key
            ),
            retriable: false,
        })
    }

    /// Removes the marker (best effort).
    pub fn remove(&self) {
        let _ = self.storage.delete(&self.key);
    }
}

/// Writes a download to `to` whole or not at all: the chunks go to a
/// temporary file beside it, which is fsynced and renamed into place (and
/// removed when a chunk fails). Errors name `uri` and the local path.
pub(crate) async fn download_to<S, B>(uri: &str, to: &Path, mut chunks: S) -> Result<()>
where
    S: futures::Stream<Item = Result<B>> + Unpin,
    B: AsRef<[u8]>,
{
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let local = |e: std::io::Error, what: &str| Error::Storage {
        uri: uri.to_string(),
        message: format!("{what} {}: {e}", to.display()),
        retriable: false,
    };
    if let Some(dir) = to.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| local(e, "creating the directory of"))?;
    }
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = to.with_file_name(format!(".{name}.tmp-{:x}", random_u64()));
    let result = async {
        let mut f = tokio::fs::File::create(&tmp).await.map_err(|e| local(e, "creating"))?;
        while let Some(chunk) = chunks.next().await {
            f.write_all(chunk?.as_ref()).await.map_err(|e| local(e, "writing"))?;
        }
        f.sync_all().await.map_err(|e| local(e, "syncing"))?;
        tokio::fs::rename(&tmp, to).await.map_err(|e| local(e, "renaming into"))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}/{key}")
    }
}

/// Runs a storage future to completion from blocking code: on this
/// process's runtime once rayforge is initialized, else on a small runtime
/// of the storage layer's own (storage works before `init` for local paths
/// and object stores).
pub(crate) fn block_on<F>(f: F) -> Result<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    if let Some(w) = crate::worker::try_current() {
        return w.block_on(f);
    }
    static RT: std::sync::OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = std::sync::OnceLock::new();
    let rt = RT
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("rayforge-storage")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::io("starting the storage runtime", e))?;
    if let Ok(h) = tokio::runtime::Handle::try_current() {
        if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
            return Ok(tokio::task::block_in_place(|| rt.block_on(f)));
        }
        return std::thread::scope(|s| {
            s.spawn(|| rt.block_on(f))
                .join()
                .map_err(|_| Error::Internal("storage helper thread panicked".into()))
        });
    }
    Ok(rt.block_on(f))
}

/// A random number for temporary names.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_to_their_backends_and_bad_ones_are_named() {
        let s = StorageUri::from("file:///data/runs").open().unwrap();
        assert_eq!(s.local_path(), Some(Path::new("/data/runs")));
        let s = StorageUri::from("cluster:///runs/").open().unwrap();
        assert_eq!(s.uri(), "cluster://runs");
        assert_eq!(s.join("exp").unwrap().uri_of("a/b"), "cluster://runs/exp/a/b");
        assert_eq!(
            StorageUri::from("cluster://").open().unwrap().uri_of("x"),
            "cluster://x"
        );
        let s = StorageUri::from("s3://bucket/pre/fix").open().unwrap();
        assert_eq!(s.uri_of("k"), "s3://bucket/pre/fix/k");
        for (bad, why) in [
            ("ftp://host/x", "unknown scheme `ftp`"),
            ("file://host/x", "absolute path"),
            ("cluster://a/../b", "plain name"),
            ("s3:///no-bucket", "bucket"),
        ] {
            let err = StorageUri::from(bad).open().unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(&err, Error::Storage { retriable: false, .. }) && text.contains(bad) && text.contains(why),
                "{bad}: {text}"
            );
        }
        assert_eq!(StorageUri::from("/a/b").join("c").as_str(), "/a/b/c");
        assert_eq!(StorageUri::from("s3://b/").join("c").as_str(), "s3://b/c");
    }

    /// The same calls behave alike on a local directory and an object
    /// store (the in-memory one; S3 itself is tested against a server).
    #[test]
    fn local_and_object_storage_agree() {
        let dir = std::env::temp_dir().join(format!("rayforge-storage-agree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for uri in [dir.to_string_lossy().into_owned(), "memory://agree".to_string()] {
            let s = StorageUri::from(uri.as_str()).open().unwrap();
            s.check_writable().unwrap();
            assert_eq!(s.read("missing").unwrap(), None);
            s.put("run/a/x", b"1").unwrap();
            s.put("run/ab", b"22").unwrap();
            s.put("other", b"333").unwrap();
            let big = dir.with_extension("big");
            let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
            std::fs::write(&big, &data).unwrap();
            s.put_file("run/big", &big).unwrap();
            let keys = |p: &str| s.list(p).unwrap().into_iter().map(|e| e.key).collect::<Vec<_>>();
            assert_eq!(keys("run/a"), vec!["run/a/x", "run/ab"], "{uri}");
            assert_eq!(keys(""), vec!["other", "run/a/x", "run/ab", "run/big"], "{uri}");
            let back = dir.with_extension("back");
            assert!(s.download("run/big", &back).unwrap());
            assert_eq!(std::fs::read(&back).unwrap(), data, "{uri}");
            assert!(!s.download("run/none", &back.with_extension("none")).unwrap());
            let sub = s.join("run").unwrap();
            assert_eq!(sub.read("ab").unwrap().as_deref(), Some(&b"22"[..]), "{uri}");
            assert_eq!(s.delete("run/").unwrap(), 3, "{uri}");
            assert_eq!(keys(""), vec!["other"], "{uri}");
            assert!(s.put("../escape", b"x").is_err());
            let check = s.shared_check().unwrap();
            check.verify().unwrap();
            check.remove();
            let _ = std::fs::remove_file(&big);
            let _ = std::fs::remove_file(&back);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwritable_path_is_refused_naming_it() {
        let err = StorageUri::from("/proc/rayforge-cannot-write-here")
            .open()
            .unwrap()
            .check_writable()
            .unwrap_err();
        assert!(
            matches!(&err, Error::Storage { uri, message, .. }
                if uri.starts_with("/proc/rayforge-cannot-write-here") && message.contains("cannot write here")),
            "{err}"
        );
    }
}
