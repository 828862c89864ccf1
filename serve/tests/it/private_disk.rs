//! Serving a model on a node that shares no disk with the driver or the
//! head, as a second machine does: the replica is pinned to a private-disk
//! node (a tmpfs over the cluster's directory, in a mount namespace of its
//! own) and finds its model only through the checkpoint's storage URI.
//!
//! (Run with the test script: private-disk nodes need root for
//! `unshare --mount`.)
#![cfg(feature = "torch")]

use std::time::Duration;

use rayforge_integration_tests::{wait_until, LocalCluster};
use rayforge_serve::torch::TorchScript;
use rayforge_serve::{deployment, Application, Error};

use crate::torch::{commit_model_to_store, make_model, serve_and_check_model};

/// The custom resource only the private-disk node has: a replica that asks
/// for it runs there.
const PRIVATE: &str = "private_disk";

/// A head with one CPU and a private-disk node offering [`PRIVATE`]; this
/// process joins as the driver.
fn cluster() -> LocalCluster {
    let mut cluster = LocalCluster::start(&["--num-cpus", "1"], 10_000);
    let resources = format!(r#"{{"{PRIVATE}": 2}}"#);
    cluster.add_private_disk_node(&["--num-cpus", "1", "--resources", &resources]);
    rayforge::init(cluster.config()).expect("join the cluster");
    assert!(wait_until(Duration::from_secs(60), || {
        rayforge::cluster_resources().unwrap().total.get(PRIVATE) == Some(&2.0)
    }));
    cluster
}

/// A model committed to the cluster's own store answers over HTTP from a
/// replica on a node that cannot see the store's disk: the replica
/// downloads the checkpoint to its node. The same model by a plain path on
/// the driver's side of the disk fails there, naming the path.
#[test]
fn a_replica_on_a_private_disk_node_serves_a_checkpoint_from_the_cluster_store() {
    rayforge_integration_tests::own_process!();
    let cluster = cluster();
    // Only the head's store (under the cluster's directory, hidden from
    // the private node) holds it.
    let uri = commit_model_to_store("cluster://serve-private/run");
    assert!(cluster
        .state_dir
        .join("storage/serve-private/run/checkpoint_000001/model.pt")
        .is_file());

    let model = |name: &str, user_config: serde_json::Value| {
        deployment::<TorchScript>(name)
            .resource(PRIVATE, 1.0)
            .user_config(user_config)
    };
    let app = Application::new("m").ingress(model(
        "Model",
        serde_json::json!({ "checkpoint": uri, "device": "cpu" }),
    ));
    let s = serve_and_check_model(app.clone());

    // The control: the same model as a file on the driver's disk, under
    // the directory the private node's tmpfs covers. A replica there
    // cannot see it, so only the download above made the model reachable.
    let local = cluster.base_dir().join("model.pt");
    make_model(&local);
    let local = local.to_str().unwrap().to_string();
    s.deploy(vec![
        app,
        Application::new("local").route_prefix("/local").ingress(model(
            "Local",
            serde_json::json!({ "model_path": local, "device": "cpu" }),
        )),
    ])
    .unwrap();
    let e = s.wait_healthy(Duration::from_secs(180));
    assert!(matches!(&e, Err(Error::Unavailable(m)) if m.contains(&local)), "{e:?}");
    s.shutdown().unwrap();
}
