//! GPUs (CUDA_VISIBLE_DEVICES per task) and custom resources, on a node
//! configured with 2 GPUs and 2 "TPU" units.

use std::time::Duration;

use rayforge_integration_tests::cluster_with;

/// Reports the GPUs this task was given, holding them for a moment so two
/// tasks overlap.
#[rayforge::remote]
fn visible_gpus() -> String {
    std::thread::sleep(Duration::from_millis(300));
    std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default()
}

#[rayforge::remote]
fn uses_tpu(x: u32) -> u32 {
    x + 1
}

#[test]
fn gpu_tasks_see_distinct_devices_and_custom_resources_schedule() {
    cluster_with(|c| c.num_gpus(2.0).resource("TPU", 2.0));
    let a = visible_gpus::options().num_gpus(1.0).remote();
    let b = visible_gpus::options().num_gpus(1.0).remote();
    let mut ids = vec![a.get().unwrap(), b.get().unwrap()];
    ids.sort();
    assert_eq!(ids, vec!["0".to_string(), "1".to_string()]);
    let both = visible_gpus::options().num_gpus(2.0).remote().get().unwrap();
    assert_eq!(both, "0,1");
    let refs: Vec<_> = (0..6u32)
        .map(|i| uses_tpu::options().resource("TPU", 1.0).remote(i))
        .collect();
    assert_eq!(rayforge::get_all(&refs).unwrap(), (1..=6).collect::<Vec<_>>());
    let res = rayforge::node_resources().unwrap();
    assert_eq!(res.total.get("TPU"), Some(&2.0));
    assert_eq!(res.total.get("GPU"), Some(&2.0));
    // One node: the cluster's totals are this node's.
    assert_eq!(rayforge::cluster_resources().unwrap().total, res.total);
}
