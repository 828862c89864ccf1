//! The cluster's key-value store, for libraries and programs: small values
//! that other processes must find (a training gang's rendezvous address, the
//! latest checkpoint of a run, a registry of experiments).
//!
//! In a cluster the store is the head's, persisted with the rest of its
//! state, so a restarted head keeps every key; on the embedded cluster it is
//! the node's own and lives as long as the cluster. Drivers and workers reach
//! it the same way, through their node. Keys live in namespaces (a library
//! uses its own, e.g. `"train"`), so two libraries never read each other's.
//!
//! Every call has an async form (`*_async`) for async code; the blocking
//! form wraps it.
//!
//! ```no_run
//! rayforge::init(rayforge::Config::default())?;
//! assert!(rayforge::kv::put("train", "run-1/rank0", b"10.0.0.5:29500", false)?);
//! // Not overwritten unless asked.
//! assert!(!rayforge::kv::put("train", "run-1/rank0", b"other", false)?);
//! assert_eq!(rayforge::kv::get("train", "run-1/rank0")?.as_deref(), Some(&b"10.0.0.5:29500"[..]));
//! assert_eq!(rayforge::kv::list("train", "run-1/")?, vec!["run-1/rank0".to_string()]);
//! assert!(rayforge::kv::delete("train", "run-1/rank0")?);
//! # Ok::<(), rayforge::Error>(())
//! ```

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::proto;
use crate::worker;

/// Separates a namespace from its keys in the stored key; namespaces may
/// not contain it.
const SEP: char = '\u{1f}';

/// The stored key of `key` in `namespace`.
pub(crate) fn full_key(namespace: &str, key: &str) -> Result<String> {
    if namespace.contains(SEP) {
        return Err(Error::InvalidArgument(format!(
            "key-value namespace {namespace:?} contains the reserved character U+001F"
        )));
    }
    Ok(format!("{namespace}{SEP}{key}"))
}

/// Stores `value` under `key` in `namespace`. Returns whether it was
/// written: `false` when the key exists and `overwrite` is off (so the first
/// of several writers wins, as a rendezvous needs).
pub async fn put_async(namespace: &str, key: &str, value: &[u8], overwrite: bool) -> Result<bool> {
    let req = proto::KvPutRequest {
        key: full_key(namespace, key)?,
        value: value.to_vec(),
        overwrite,
    };
    let mut node = worker::current()?.node.clone();
    let r = node.kv_put(req).await.map_err(|s| Error::rpc("writing a key", s))?;
    Ok(r.into_inner().written)
}

/// Reads `key` of `namespace`; `None` when it is not there.
pub async fn get_async(namespace: &str, key: &str) -> Result<Option<Vec<u8>>> {
    let req = proto::KvGetRequest {
        key: full_key(namespace, key)?,
    };
    let mut node = worker::current()?.node.clone();
    let r = node
        .kv_get(req)
        .await
        .map_err(|s| Error::rpc("reading a key", s))?
        .into_inner();
    Ok(r.found.then_some(r.value))
}

/// Deletes `key` of `namespace`; returns whether it was there.
pub async fn delete_async(namespace: &str, key: &str) -> Result<bool> {
    let req = proto::KvGetRequest {
        key: full_key(namespace, key)?,
    };
    let mut node = worker::current()?.node.clone();
    let r = node.kv_delete(req).await.map_err(|s| Error::rpc("deleting a key", s))?;
    Ok(r.into_inner().deleted)
}

/// The keys of `namespace` that start with `prefix`, in order.
pub async fn list_async(namespace: &str, prefix: &str) -> Result<Vec<String>> {
    let full = full_key(namespace, prefix)?;
    let strip = full.len() - prefix.len();
    let req = proto::KvListRequest { prefix: full };
    let mut node = worker::current()?.node.clone();
    let r = node.kv_list(req).await.map_err(|s| Error::rpc("listing keys", s))?;
    Ok(r.into_inner()
        .keys
        .into_iter()
        .map(|k| k[strip..].to_string())
        .collect())
}

/// Blocking form of [`put_async`].
pub fn put(namespace: &str, key: &str, value: &[u8], overwrite: bool) -> Result<bool> {
    worker::current()?.block_on(put_async(namespace, key, value, overwrite))?
}

/// Blocking form of [`get_async`].
pub fn get(namespace: &str, key: &str) -> Result<Option<Vec<u8>>> {
    worker::current()?.block_on(get_async(namespace, key))?
}

/// Blocking form of [`delete_async`].
pub fn delete(namespace: &str, key: &str) -> Result<bool> {
    worker::current()?.block_on(delete_async(namespace, key))?
}

/// Blocking form of [`list_async`].
pub fn list(namespace: &str, prefix: &str) -> Result<Vec<String>> {
    worker::current()?.block_on(list_async(namespace, prefix))?
}

/// The store's table, shared by the head's control service (which persists
/// it) and the embedded node (which keeps it in memory). Each call says
/// whether it changed the table.
#[derive(Default)]
pub(crate) struct KvTable(pub(crate) BTreeMap<String, Vec<u8>>);

impl KvTable {
    pub(crate) fn put(&mut self, r: proto::KvPutRequest) -> proto::KvPutReply {
        if !r.overwrite && self.0.contains_key(&r.key) {
            return proto::KvPutReply { written: false };
        }
        self.0.insert(r.key, r.value);
        proto::KvPutReply { written: true }
    }

    pub(crate) fn get(&self, r: &proto::KvGetRequest) -> proto::KvGetReply {
        match self.0.get(&r.key) {
            Some(v) => proto::KvGetReply {
                found: true,
                value: v.clone(),
            },
            None => proto::KvGetReply::default(),
        }
    }

    pub(crate) fn delete(&mut self, r: &proto::KvGetRequest) -> proto::KvDeleteReply {
        proto::KvDeleteReply {
            deleted: self.0.remove(&r.key).is_some(),
        }
    }

    pub(crate) fn list(&self, r: &proto::KvListRequest) -> proto::KvListReply {
        proto::KvListReply {
            keys: self
                .0
                .range(r.prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&r.prefix))
                .map(|(k, _)| k.clone())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_keep_keys_apart_and_list_by_prefix() {
        let mut t = KvTable::default();
        let put = |ns: &str, k: &str, v: &[u8], overwrite| proto::KvPutRequest {
            key: full_key(ns, k).unwrap(),
            value: v.to_vec(),
            overwrite,
        };
        assert!(t.put(put("a", "x/1", b"1", false)).written);
        assert!(!t.put(put("a", "x/1", b"2", false)).written);
        assert!(t.put(put("a", "x/1", b"3", true)).written);
        assert!(t.put(put("a", "x/2", b"4", false)).written);
        assert!(t.put(put("ab", "x/3", b"5", false)).written);
        assert!(t.put(put("b", "x/1", b"6", false)).written);
        let list = |ns: &str, p: &str| {
            let full = full_key(ns, p).unwrap();
            let strip = full.len() - p.len();
            t.list(&proto::KvListRequest { prefix: full })
                .keys
                .into_iter()
                .map(|k| k[strip..].to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(list("a", "x/"), vec!["x/1", "x/2"]);
        assert_eq!(list("a", ""), vec!["x/1", "x/2"]);
        assert_eq!(list("b", "x"), vec!["x/1"]);
        let get = |ns: &str, k: &str| {
            t.get(&proto::KvGetRequest {
                key: full_key(ns, k).unwrap(),
            })
        };
        assert_eq!(get("a", "x/1").value, b"3");
        assert_eq!(get("b", "x/1").value, b"6");
        assert!(!get("c", "x/1").found);
        assert!(
            t.delete(&proto::KvGetRequest {
                key: full_key("a", "x/1").unwrap()
            })
            .deleted
        );
        assert!(
            !t.delete(&proto::KvGetRequest {
                key: full_key("a", "x/1").unwrap()
            })
            .deleted
        );
        assert!(matches!(full_key("a\u{1f}b", "k"), Err(Error::InvalidArgument(_))));
    }
}
