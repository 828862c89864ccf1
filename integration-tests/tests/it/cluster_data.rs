//! Datasets on a real multi-node cluster: a head with no CPUs and two nodes,
//! so every block is made, sorted, shuffled and aggregated on the nodes and
//! moves between them.

use std::collections::BTreeSet;
use std::sync::Arc;

use rayforge_data::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use rayforge_data::Agg;
use rayforge_integration_tests::LocalCluster;

/// Tags each row with the node that made its block.
fn tag_node(b: RecordBatch) -> Result<RecordBatch, rayforge_data::Error> {
    let node = rayforge::node_id()?;
    let n = b.num_rows();
    let key: ArrayRef = Arc::new(Int64Array::from_iter_values(
        b.column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or("id is not i64")?
            .values()
            .iter()
            .map(|v| v % 7),
    ));
    Ok(RecordBatch::try_from_iter([
        ("id", b.column(0).clone()),
        ("key", key),
        ("node", Arc::new(StringArray::from(vec![node; n])) as ArrayRef),
    ])?)
}

fn i64s(b: &RecordBatch, name: &str) -> Vec<i64> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .map(|a| a.values().to_vec())
        .unwrap_or_else(|| panic!("no i64 column {name}"))
}

#[test]
fn sort_shuffle_and_group_by_run_across_nodes() {
    rayforge_integration_tests::own_process!();
    let mut cluster = LocalCluster::start(&["--num-cpus", "0"], 10_000);
    let b = cluster.add_node(&["--num-cpus", "1"]);
    let c = cluster.add_node(&["--num-cpus", "1"]);
    rayforge::init(cluster.config()).expect("join the cluster");
    // The driver's node has no CPUs; the cluster has the two nodes' CPUs.
    assert_eq!(
        rayforge::node_resources()
            .unwrap()
            .total
            .get("CPU")
            .copied()
            .unwrap_or(0.0),
        0.0
    );
    assert!(rayforge_integration_tests::wait_until(
        std::time::Duration::from_secs(60),
        || { rayforge::cluster_resources().unwrap().total.get("CPU") == Some(&2.0) }
    ));

    let n = 200_000i64;
    let ds = rayforge_data::range_with_blocks(n as u64, 8)
        .map_batches(tag_node)
        .materialize()
        .unwrap();
    let tagged = ds.take_batch(n as usize).unwrap();
    let nodes: BTreeSet<String> = {
        let col = tagged.column_by_name("node").unwrap();
        let s = col.as_any().downcast_ref::<StringArray>().unwrap();
        (0..s.len()).map(|i| s.value(i).to_string()).collect()
    };
    assert_eq!(
        nodes,
        BTreeSet::from([b.clone(), c.clone()]),
        "blocks were made on both nodes"
    );

    let sorted = ds.sort("id", true).take_batch(n as usize).unwrap();
    assert_eq!(i64s(&sorted, "id"), (0..n).rev().collect::<Vec<_>>());

    let shuffled = i64s(&ds.random_shuffle(Some(1)).take_batch(n as usize).unwrap(), "id");
    assert_ne!(shuffled, (0..n).collect::<Vec<_>>());
    let mut s = shuffled.clone();
    s.sort();
    assert_eq!(s, (0..n).collect::<Vec<_>>());

    let g = ds
        .groupby(&["key"])
        .aggregate(&[Agg::Count, Agg::Sum("id".into())])
        .take_batch(10)
        .unwrap();
    assert_eq!(i64s(&g, "key"), (0..7).collect::<Vec<_>>());
    for k in 0..7i64 {
        let ids: Vec<i64> = (0..n).filter(|i| i % 7 == k).collect();
        assert_eq!(i64s(&g, "count()")[k as usize], ids.len() as i64);
        assert_eq!(i64s(&g, "sum(id)")[k as usize], ids.iter().sum::<i64>());
    }
    rayforge::shutdown();
}
