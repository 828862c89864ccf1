//! Trials on a node whose disk is its own (a private-disk node: a tmpfs
//! over the cluster's directory in a mount namespace, as a second machine
//! has): an experiment directory on the driver's local path cannot be
//! shared with it, so each trial fails at once, naming the node, instead of
//! writing its files and checkpoints where the driver never finds them.
//! (Storage URIs for Tune's files are the next step; see the README.)

use std::time::Duration;

use rayforge_integration_tests::{wait_until, LocalCluster};
use rayforge_tune::{BasicVariant, Domain, SearchSpace, TrialContext, TuneConfig, Tuner};

fn trainable(ctx: &mut TrialContext) -> Result<(), String> {
    ctx.report([("loss", 1.0)]).map_err(|e| e.to_string())
}

#[test]
fn trials_on_a_node_without_the_experiments_disk_fail_naming_it() {
    let mut cluster = LocalCluster::start(&["--num-cpus", "0"], 10_000);
    let node = cluster.add_private_disk_node(&["--num-cpus", "1"]);
    rayforge::init(cluster.config()).expect("join the cluster");
    assert!(wait_until(Duration::from_secs(60), || {
        rayforge::cluster_resources().unwrap().total.get("CPU") == Some(&1.0)
    }));
    let space = SearchSpace::new().domain("x", Domain::Grid(vec![1.into()]));
    let config = |name: &str| TuneConfig {
        name: name.into(),
        storage_path: cluster.base_dir().join("experiments").into(),
        metric: "loss".into(),
        verbose: false,
        ..Default::default()
    };
    let function = Tuner::new(trainable, BasicVariant::new(&space, 1, 0).unwrap(), config("function"))
        .fit()
        .unwrap();
    let command = Tuner::command(
        vec!["sh".into(), "-c".into(), "echo '{\"loss\": 1}'".into()],
        BasicVariant::new(&space, 1, 0).unwrap(),
        config("command"),
    )
    .fit()
    .unwrap();
    for grid in [function, command] {
        let errors = grid.errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let (_, why) = errors[0];
        assert!(
            why.contains("not shared by every node") && why.contains(node.as_str()),
            "{why}"
        );
    }
}
