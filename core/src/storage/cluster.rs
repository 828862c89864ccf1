//! The client side of the cluster's own store (`cluster://`): calls to this
//! process's node, which forwards them to the head (or, on the embedded
//! cluster, serves them itself). Files go in chunks of [`super::CHUNK`],
//! the last marked, so a cut connection never commits a shorter file.

use std::path::Path;

use tokio::io::AsyncReadExt;

use super::Entry;
use crate::error::{Error, Result};
use crate::proto;

fn uri(key: &str) -> String {
    format!("cluster://{key}")
}

fn node() -> Result<crate::proto::node_service_client::NodeServiceClient<crate::rpc::Chan>> {
    let w = crate::worker::current().map_err(|_| Error::Storage {
        uri: "cluster://".into(),
        message: "the cluster's storage is reached through a running cluster: call rayforge::init first".into(),
        retriable: false,
    })?;
    Ok(w.node.clone())
}

/// An RPC failure as a storage error on `key`: the transport's own
/// failures may pass on retry, a refusal (a full budget) may not.
fn rpc_err(key: &str, what: &str, s: tonic::Status) -> Error {
    let retriable = matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled
    );
    Error::Storage {
        uri: uri(key),
        message: format!("{what}: {}", s.message()),
        retriable,
    }
}

fn reply_err(e: Option<proto::ErrorProto>) -> Result<()> {
    match e {
        Some(e) => Err(Error::from_proto(&e)),
        None => Ok(()),
    }
}

pub(super) async fn put(key: &str, bytes: &[u8]) -> Result<()> {
    let mut chunks: Vec<proto::StorageChunk> = bytes
        .chunks(super::CHUNK)
        .map(|c| proto::StorageChunk {
            key: String::new(),
            data: c.to_vec(),
            last: false,
        })
        .collect();
    if chunks.is_empty() {
        chunks.push(proto::StorageChunk::default());
    }
    chunks[0].key = key.to_string();
    if let Some(c) = chunks.last_mut() {
        c.last = true;
    }
    let r = node()?
        .storage_put(futures::stream::iter(chunks))
        .await
        .map_err(|s| rpc_err(key, "uploading", s))?;
    reply_err(r.into_inner().error)
}

/// Streams `from` to `key` in chunks read as they are sent (a reader
/// task feeds a small channel, so at most a few chunks are in memory).
pub(super) async fn put_file(key: &str, from: std::path::PathBuf) -> Result<()> {
    let mut f = tokio::fs::File::open(&from).await.map_err(|e| Error::Storage {
        uri: uri(key),
        message: format!("opening {} to upload it: {e}", from.display()),
        retriable: false,
    })?;
    let size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let (tx, rx) = tokio::sync::mpsc::channel::<proto::StorageChunk>(4);
    let first_key = key.to_string();
    let reader = tokio::spawn(async move {
        let mut sent = 0u64;
        loop {
            let want = (size - sent.min(size)).min(super::CHUNK as u64) as usize;
            let mut buf = vec![0u8; want];
            // A read that fails ends the stream without its last chunk,
            // which makes the store drop the upload.
            f.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            let chunk = proto::StorageChunk {
                key: if sent == 0 { first_key.clone() } else { String::new() },
                data: buf,
                last: sent + want as u64 >= size,
            };
            sent += want as u64;
            let last = chunk.last;
            if tx.send(chunk).await.is_err() || last {
                return Ok::<(), String>(());
            }
        }
    });
    let _owner = AbortOnDrop(reader.abort_handle());
    let r = node()?
        .storage_put(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    if let Ok(Err(e)) = reader.await {
        return Err(Error::Storage {
            uri: uri(key),
            message: format!("reading {} to upload it: {e}", from.display()),
            retriable: false,
        });
    }
    let r = r.map_err(|s| rpc_err(key, "uploading", s))?;
    reply_err(r.into_inner().error)
}

/// Aborts a spawned task when its owner goes.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens the stream of `key`'s chunks; `None` when it does not exist.
async fn open(key: &str) -> Result<Option<tonic::Streaming<proto::StorageChunk>>> {
    let req = proto::StorageGetRequest { key: key.to_string() };
    match node()?.storage_get(req).await {
        Ok(r) => Ok(Some(r.into_inner())),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(rpc_err(key, "reading", s)),
    }
}

/// The next chunk, or an error when the stream ends before the last one.
async fn next(key: &str, s: &mut tonic::Streaming<proto::StorageChunk>) -> Result<proto::StorageChunk> {
    match s.message().await {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(Error::Storage {
            uri: uri(key),
            message: "the download ended before its last chunk".into(),
            retriable: true,
        }),
        Err(st) if st.code() == tonic::Code::NotFound => Err(Error::Storage {
            uri: uri(key),
            message: "deleted while it was being read".into(),
            retriable: false,
        }),
        Err(st) => Err(rpc_err(key, "reading", st)),
    }
}

pub(super) async fn read(key: &str) -> Result<Option<Vec<u8>>> {
    let Some(mut s) = open(key).await? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    loop {
        let c = next(key, &mut s).await?;
        out.extend_from_slice(&c.data);
        if c.last {
            return Ok(Some(out));
        }
    }
}

pub(super) async fn download(key: &str, to: &Path) -> Result<bool> {
    let Some(s) = open(key).await? else {
        return Ok(false);
    };
    // The chunks up to the one marked last; a stream that ends before it
    // is an error, never a shorter file.
    let owned_key = key.to_string();
    let chunks = futures::stream::unfold(Some(s), move |state| {
        let key = owned_key.clone();
        async move {
            let mut s = state?;
            match next(&key, &mut s).await {
                Ok(c) => {
                    let last = c.last;
                    Some((Ok(c.data), (!last).then_some(s)))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    });
    super::download_to(&uri(key), to, Box::pin(chunks)).await?;
    Ok(true)
}

pub(super) async fn list(prefix: &str) -> Result<Vec<Entry>> {
    let r = node()?
        .storage_list(proto::StorageListRequest {
            prefix: prefix.to_string(),
        })
        .await
        .map_err(|s| rpc_err(prefix, "listing", s))?
        .into_inner();
    reply_err(r.error)?;
    Ok(r.entries
        .into_iter()
        .map(|e| Entry {
            key: e.key,
            size: e.size,
        })
        .collect())
}

pub(super) async fn delete(prefix: &str) -> Result<u64> {
    let r = node()?
        .storage_delete(proto::StorageListRequest {
            prefix: prefix.to_string(),
        })
        .await
        .map_err(|s| rpc_err(prefix, "deleting", s))?
        .into_inner();
    reply_err(r.error)?;
    Ok(r.deleted)
}
