//! Clusters that grow and shrink with their work: node types and limits
//! from a `cluster.yaml` ([`config`]), the decisions of what to launch and
//! what to remove as a pure function of the cluster, its demand, the
//! config and the time ([`policy::plan`]), and explicit requests for
//! capacity from programs ([`request_resources`], as Ray's SDK call).
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! rayforge::init(rayforge::Config::default())?;
//! // Hold room for four 2-CPU bundles, whether or not work waits for them.
//! let bundle: BTreeMap<String, f64> = [("CPU".to_string(), 2.0)].into();
//! rayforge::autoscaler::request_resources(&vec![bundle; 4])?;
//! // Withdraw the request.
//! rayforge::autoscaler::request_resources(&[])?;
//! # Ok::<(), rayforge::Error>(())
//! ```

pub mod config;
pub mod hosts;
pub mod launcher;
pub mod monitor;
pub mod policy;
pub mod provider;

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// The key-value namespace the autoscaler keeps its requests and status in.
pub const KV_NAMESPACE: &str = "autoscaler";
/// The key of the bundles [`request_resources`] asked for (JSON).
pub const REQUESTED_KEY: &str = "requested_resources";
/// The key of the autoscaler's last status (JSON, [`monitor::Status`]).
pub const STATUS_KEY: &str = "status";
/// Set by a provider on the node daemons it starts: the provider's id of
/// the node, which the node reports when it registers.
pub const PROVIDER_ID_ENV: &str = "RAYFORGE_PROVIDER_NODE_ID";
/// Set by a provider on the node daemons it starts: the node's type.
pub const NODE_TYPE_ENV: &str = "RAYFORGE_NODE_TYPE";

/// Asks the autoscaler to keep room for `bundles` in the cluster, busy or
/// not: it launches nodes until the cluster's capacity holds them all (as
/// Ray's `request_resources(bundles=...)`). Each call replaces the previous
/// request; an empty list withdraws it. A bundle no node type can hold is
/// reported as infeasible by the autoscaler, not here.
pub fn request_resources(bundles: &[BTreeMap<String, f64>]) -> Result<()> {
    let json = encode_request(bundles)?;
    crate::kv::put(KV_NAMESPACE, REQUESTED_KEY, &json, true).map(|_| ())
}

/// The async form of [`request_resources`].
pub async fn request_resources_async(bundles: &[BTreeMap<String, f64>]) -> Result<()> {
    let json = encode_request(bundles)?;
    crate::kv::put_async(KV_NAMESPACE, REQUESTED_KEY, &json, true)
        .await
        .map(|_| ())
}

fn encode_request(bundles: &[BTreeMap<String, f64>]) -> Result<Vec<u8>> {
    for (i, b) in bundles.iter().enumerate() {
        if let Some((k, v)) = b.iter().find(|(_, v)| !(v.is_finite() && **v >= 0.0)) {
            return Err(Error::InvalidArgument(format!(
                "request_resources: bundle {i} asks for {v} of {k:?}; amounts must be finite and 0 or more"
            )));
        }
    }
    serde_json::to_vec(bundles).map_err(|e| Error::Internal(format!("encoding the requested bundles: {e}")))
}

/// Reads the bundles [`request_resources`] stored; a malformed value is
/// an error naming the key.
pub fn decode_request(json: &[u8]) -> Result<Vec<BTreeMap<String, f64>>> {
    serde_json::from_slice(json)
        .map_err(|e| Error::InvalidArgument(format!("{KV_NAMESPACE}/{REQUESTED_KEY} is not a list of bundles: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_amounts_are_refused() {
        let b: BTreeMap<String, f64> = [("CPU".to_string(), 2.0), ("GPU".to_string(), 1.0)].into();
        let json = encode_request(&[b.clone(), b.clone()]).unwrap();
        assert_eq!(decode_request(&json).unwrap(), vec![b.clone(), b]);
        let bad: BTreeMap<String, f64> = [("CPU".to_string(), f64::NAN)].into();
        let m = encode_request(&[bad]).unwrap_err().to_string();
        assert!(m.contains("bundle 0") && m.contains("\"CPU\""), "{m}");
        assert!(decode_request(b"{}")
            .unwrap_err()
            .to_string()
            .contains("requested_resources"));
    }
}
