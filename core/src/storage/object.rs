//! Object stores through the `object_store` crate: S3 and S3-compatible
//! servers, Google Cloud Storage, Azure Blob Storage (each configured by
//! its usual environment variables), and an in-memory store for tests.
//!
//! A put is atomic on every object store; files larger than one part go up
//! as a multipart upload, which the store only makes visible once it
//! completes (an upload that fails is aborted).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt;

use super::Entry;
use crate::error::{Error, Result};

/// Part size of multipart uploads (S3's minimum is 5 MiB).
const PART: usize = 8 << 20;
/// Parts in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// A bucket (or container) and a prefix in it.
#[derive(Clone)]
pub(super) struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    /// The URI of the bucket, without the prefix (`s3://bucket`).
    base: String,
    /// '/'-separated, no leading or trailing slash; may be empty.
    prefix: String,
}

/// Retries stop after a few attempts and 30 s: a server that is down fails
/// the call in seconds, naming the object, rather than after minutes.
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

/// Plain HTTP to a store's endpoint when asked for (`AWS_ALLOW_HTTP`,
/// `GOOGLE_ALLOW_HTTP` or `AZURE_ALLOW_HTTP` = `true`) or when the endpoint
/// given is an `http://` URL (a local S3-compatible server, a GCS
/// emulator): naming it is the user's choice of it. `prefix` is the
/// variables' prefix (`AWS`, `GOOGLE`, `AZURE`).
fn allows_http(prefix: &str) -> bool {
    let var = |k: &str| std::env::var(format!("{prefix}_{k}")).unwrap_or_default();
    var("ALLOW_HTTP").eq_ignore_ascii_case("true")
        || ["ENDPOINT_URL", "ENDPOINT", "BASE_URL"]
            .iter()
            .any(|k| var(k).starts_with("http://"))
}

fn client_options() -> object_store::ClientOptions {
    object_store::ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(120))
}

/// In-memory stores by name, so that `memory://x` opened twice in one
/// process is the same store.
fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: parking_lot::Mutex<Vec<(String, Arc<dyn ObjectStore>)>> = parking_lot::Mutex::new(Vec::new());
    let mut stores = STORES.lock();
    if let Some((_, s)) = stores.iter().find(|(n, _)| n == name) {
        return s.clone();
    }
    let s: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    stores.push((name.to_string(), s.clone()));
    s
}

impl ObjectBackend {
    /// Opens `raw` (`scheme://bucket/prefix`); returns the backend and its
    /// normalized URI.
    pub(super) fn open(raw: &str, scheme: &str, rest: &str) -> Result<(ObjectBackend, String)> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = super::clean_prefix(raw, prefix)?;
        let what = match scheme {
            "s3" => "bucket",
            "az" => "container",
            "gs" => "bucket",
            _ => "name",
        };
        if bucket.is_empty() && scheme != "memory" {
            return Err(super::bad_uri(raw, format!("no {what} named")));
        }
        let base = format!("{scheme}://{bucket}");
        let built: std::result::Result<Arc<dyn ObjectStore>, object_store::Error> = match scheme {
            "s3" => object_store::aws::AmazonS3Builder::from_env()
                .with_url(&base)
                .with_retry(retry())
                .with_client_options(client_options().with_allow_http(allows_http("AWS")))
                .build()
                .map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
            "gs" => object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(&base)
                .with_retry(retry())
                .with_client_options(client_options().with_allow_http(allows_http("GOOGLE")))
                .build()
                .map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
            "az" => object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(&base)
                .with_retry(retry())
                .with_client_options(client_options().with_allow_http(allows_http("AZURE")))
                .build()
                .map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
            _ => Ok(memory_store(bucket)),
        };
        let store = built.map_err(|e| super::bad_uri(raw, format!("cannot set up its client: {e}")))?;
        let uri = if prefix.is_empty() {
            base.clone()
        } else {
            format!("{base}/{prefix}")
        };
        Ok((ObjectBackend { store, base, prefix }, uri))
    }

    pub(super) fn join(&self, name: &str) -> ObjectBackend {
        ObjectBackend {
            store: self.store.clone(),
            base: self.base.clone(),
            prefix: super::join_key(&self.prefix, name),
        }
    }

    fn full(&self, key: &str) -> String {
        super::join_key(&self.prefix, key)
    }

    fn path(&self, key: &str) -> ObjectPath {
        ObjectPath::from(self.full(key))
    }

    fn uri(&self, key: &str) -> String {
        format!("{}/{}", self.base, self.full(key))
    }

    /// An object store's error on `key`, classified: a server that did not
    /// answer may on retry, a refusal will not.
    fn err(&self, key: &str, what: &str, e: object_store::Error) -> Error {
        use object_store::Error as E;
        let retriable = matches!(e, E::Generic { .. } | E::JoinError { .. });
        // The causes underneath ("connection refused") are what a user
        // acts on; object_store's message stops above them.
        let mut message = format!("{what}: {e}");
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            let text = c.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            cause = c.source();
        }
        Error::Storage {
            uri: self.uri(key),
            message,
            retriable,
        }
    }

    pub(super) async fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        self.store
            .put_opts(&self.path(key), PutPayload::from(bytes.to_vec()), Default::default())
            .await
            .map_err(|e| self.err(key, "uploading", e))?;
        Ok(())
    }

    /// Takes its backend and key by value: the future then borrows
    /// nothing (a borrowed `self` across the multipart upload's awaits
    /// made the future not `Send` for every lifetime).
    pub(super) async fn put_file(self, key: String, from: std::path::PathBuf) -> Result<()> {
        let key = key.as_str();
        let from_text = from.display().to_string();
        let mut f = match tokio::fs::File::open(&from).await {
            Ok(f) => f,
            Err(e) => return Err(self.read_err(key, &from_text, e)),
        };
        let size = match f.metadata().await {
            Ok(m) => m.len(),
            Err(e) => return Err(self.read_err(key, &from_text, e)),
        };
        if size <= PART as u64 {
            let mut buf = Vec::with_capacity(size as usize);
            if let Err(e) = f.read_to_end(&mut buf).await {
                return Err(self.read_err(key, &from_text, e));
            }
            return self
                .store
                .put_opts(&self.path(key), PutPayload::from(buf), Default::default())
                .await
                .map(|_| ())
                .map_err(|e| self.err(key, "uploading", e));
        }
        let upload = self
            .store
            .put_multipart_opts(&self.path(key), Default::default())
            .await
            .map_err(|e| self.err(key, "starting a multipart upload", e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut buf = vec![0u8; PART];
        let mut failed = None;
        loop {
            let n = match f.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    failed = Some(self.read_err(key, &from_text, e));
                    break;
                }
            };
            if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await {
                failed = Some(self.err(key, "uploading a part", e));
                break;
            }
            w.write(&buf[..n]);
        }
        if let Some(e) = failed {
            let _ = w.abort().await;
            return Err(e);
        }
        w.finish()
            .await
            .map_err(|e| self.err(key, "completing the upload", e))?;
        Ok(())
    }

    fn read_err(&self, key: &str, from: &str, e: std::io::Error) -> Error {
        Error::Storage {
            uri: self.uri(key),
            message: format!("reading {from} to upload it: {e}"),
            retriable: false,
        }
    }

    pub(super) async fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.store.get(&self.path(key)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| self.err(key, "reading", e))?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(key, "reading", e)),
        }
    }

    pub(super) async fn download(&self, key: &str, to: &Path) -> Result<bool> {
        let r = match self.store.get(&self.path(key)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(self.err(key, "reading", e)),
        };
        let this = self.clone();
        let owned_key = key.to_string();
        let chunks = r
            .into_stream()
            .map(move |c| c.map_err(|e| this.err(&owned_key, "reading", e)));
        super::download_to(&self.uri(key), to, chunks).await?;
        Ok(true)
    }

    pub(super) async fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        // Object stores list by whole path segments: list the deepest
        // directory the prefix names and keep the keys that match.
        let dir = prefix.rsplit_once('/').map_or("", |(d, _)| d);
        let full_dir = self.full(dir);
        let listing = if full_dir.is_empty() {
            None
        } else {
            Some(ObjectPath::from(full_dir))
        };
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut out = Vec::new();
        let mut s = self.store.list(listing.as_ref());
        while let Some(meta) = s.next().await {
            let meta = meta.map_err(|e| self.err(prefix, "listing", e))?;
            let full = meta.location.to_string();
            let Some(key) = full.get(strip..) else { continue };
            if key.starts_with(prefix) {
                out.push(Entry {
                    key: key.to_string(),
                    size: meta.size,
                });
            }
        }
        Ok(out)
    }

    pub(super) async fn delete(&self, prefix: &str) -> Result<u64> {
        let entries = self.list(prefix).await?;
        for e in &entries {
            match self.store.delete(&self.path(&e.key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(err) => return Err(self.err(&e.key, "deleting", err)),
            }
        }
        Ok(entries.len() as u64)
    }
}
