//! The logical plan of a dataset: a tree of operators, built lazily by the
//! `Dataset` methods and run by the executor.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;

use crate::exec::BlockRef;
use crate::ops::MapOp;
use crate::source::ReadTask;

/// Resources each task of an operator holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Compute {
    pub(crate) num_cpus: Option<f64>,
    pub(crate) num_gpus: Option<f64>,
}

/// An operation that needs all of its input before it can emit a block.
#[derive(Clone, Debug)]
pub(crate) enum AllToAll {
    Repartition(usize),
    /// Rows `offset..offset + len`, keeping block boundaries.
    Slice {
        offset: u64,
        len: u64,
    },
    Shuffle(u64),
    /// By several keys: `(column, descending)`, the first deciding first.
    Sort {
        keys: Vec<(String, bool)>,
    },
    Sql {
        query: String,
    },
    /// Combines the partial aggregates every block of the input already is.
    Aggregate {
        combine: String,
    },
}

/// One operator of the plan.
pub(crate) enum Node {
    /// Read tasks, one block each.
    Read {
        tasks: Vec<ReadTask>,
        schema: SchemaRef,
    },
    /// Blocks already in the object store.
    Blocks {
        blocks: Vec<BlockRef>,
    },
    /// Per-block transforms, fused into one task per block.
    Map {
        input: Arc<Node>,
        ops: Vec<MapOp>,
        compute: Compute,
    },
    /// `map_batches` on an actor pool.
    ActorMap {
        input: Arc<Node>,
        spec: crate::pool::PoolSpec,
        size: crate::pool::PoolSize,
    },
    Limit {
        input: Arc<Node>,
        n: u64,
    },
    AllToAll {
        input: Arc<Node>,
        op: AllToAll,
    },
    Union(Vec<Arc<Node>>),
    Zip(Arc<Node>, Arc<Node>),
    /// A hash join on equal key columns.
    Join {
        left: Arc<Node>,
        right: Arc<Node>,
        on: Vec<String>,
        how: crate::JoinType,
    },
}

impl Node {
    /// When this node reads Parquet, the same read of only `columns` (in
    /// file order) when that drops any; the columns never leave the files.
    pub(crate) fn pruned_read(&self, columns: &[String]) -> Option<Arc<Node>> {
        let Node::Read { tasks, schema } = self else {
            return None;
        };
        let keep: Vec<usize> = (0..schema.fields().len())
            .filter(|i| columns.contains(schema.field(*i).name()))
            .collect();
        if keep.len() == schema.fields().len() || keep.len() != columns.len() {
            return None;
        }
        let names: Vec<String> = keep.iter().map(|i| schema.field(*i).name().clone()).collect();
        let mut out = Vec::new();
        for t in tasks {
            match t {
                ReadTask::Parquet {
                    path,
                    row_groups,
                    columns: _,
                    filter,
                } => out.push(ReadTask::Parquet {
                    path: path.clone(),
                    row_groups: row_groups.clone(),
                    columns: Some(names.clone()),
                    filter: filter.clone(),
                }),
                _ => return None,
            }
        }
        Some(Arc::new(Node::Read {
            tasks: out,
            schema: Arc::new(schema.project(&keep).ok()?),
        }))
    }

    /// Adds a per-block transform, fusing it with the transforms before it
    /// when they hold the same resources.
    pub(crate) fn then(self: &Arc<Node>, op: MapOp, compute: Compute) -> Arc<Node> {
        if let Node::Map { input, ops, compute: c } = self.as_ref() {
            if *c == compute {
                let mut ops = ops.clone();
                ops.push(op);
                return Arc::new(Node::Map {
                    input: input.clone(),
                    ops,
                    compute,
                });
            }
        }
        Arc::new(Node::Map {
            input: self.clone(),
            ops: vec![op],
            compute,
        })
    }
}
