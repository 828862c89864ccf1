//! rayforge-data: streaming distributed datasets on Arrow, DataFusion and
//! Parquet, built on the rayforge runtime's tasks and object store.
//!
//! A [`Dataset`] is a lazy plan over blocks (Arrow record batches held in the
//! shared-memory object store and read zero-copy by the tasks that use them).
//! Transforms add operators; consuming calls (`count`, `take`,
//! `iter_batches`, `write_parquet`, ...) run the plan with a streaming
//! executor: per-block transforms are fused into one task per block, every
//! operator keeps a bounded window of tasks in flight, and blocks flow
//! downstream as they finish, so a dataset larger than the object store
//! streams through `read -> map_batches -> write`.
//!
//! User functions run in worker processes. Pass plain functions (or closures
//! that capture nothing): every worker runs the same binary, so the function
//! is shipped by reference.
//!
//! ```no_run
//! use rayforge_data::expr::col;
//!
//! #[rayforge::main]
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     rayforge::init(rayforge::Config::default())?;
//!     let ds = rayforge_data::range(1000)
//!         .filter_expr(col("id").ge(10))
//!         .map_batches(|b| rayforge_data::compute::scale_column(b, "id", 2.0));
//!     assert_eq!(ds.count()?, 990);
//!     let top = ds.sort("id", true).take_batch(3)?;
//!     assert_eq!(top.num_rows(), 3);
//!     let by = ds.sql("SELECT count(*) AS n FROM ds WHERE id < 100")?.take_batch(1)?;
//!     assert_eq!(by.num_rows(), 1);
//!     Ok(())
//! }
//! ```

mod block;
pub mod compute;
mod error;
mod exec;
pub mod expr;
mod files;
mod ops;
mod plan;
mod pool;
mod source;
mod split;

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use arrow;
pub use block::Block;
pub use error::{Error, Result};
pub use files::{WriteMode, WriteOptions};
pub use source::{ParquetOptions, TextOptions};
pub use split::DataIterator;

use exec::{BlockRef, Ctx, ExecStats, Progress};
use ops::{Format, MapOp, Sink, Tramp, UserCall};
use plan::{AllToAll, Compute, Node};
use rayforge::{AnyFnRef, FnRef};

/// Paths accepted by the readers: a file, a directory (read recursively) or
/// a glob pattern, or a list of them.
pub trait Paths {
    /// The paths as strings.
    fn paths(self) -> Vec<String>;
}

impl Paths for &str {
    fn paths(self) -> Vec<String> {
        vec![self.to_string()]
    }
}
impl Paths for String {
    fn paths(self) -> Vec<String> {
        vec![self]
    }
}
impl Paths for &String {
    fn paths(self) -> Vec<String> {
        vec![self.clone()]
    }
}
impl Paths for &std::path::Path {
    fn paths(self) -> Vec<String> {
        vec![self.display().to_string()]
    }
}
impl Paths for std::path::PathBuf {
    fn paths(self) -> Vec<String> {
        vec![self.display().to_string()]
    }
}
impl Paths for &std::path::PathBuf {
    fn paths(self) -> Vec<String> {
        vec![self.display().to_string()]
    }
}
impl<S: AsRef<str>> Paths for Vec<S> {
    fn paths(self) -> Vec<String> {
        self.iter().map(|s| s.as_ref().to_string()).collect()
    }
}
impl<S: AsRef<str>> Paths for &[S] {
    fn paths(self) -> Vec<String> {
        self.iter().map(|s| s.as_ref().to_string()).collect()
    }
}

/// A lazy, distributed dataset of Arrow record batches.
#[derive(Clone)]
pub struct Dataset {
    node: Arc<Node>,
    last: Arc<Mutex<Option<Arc<ExecStats>>>>,
}

/// Options of [`Dataset::map_batches_with`].
#[derive(Clone, Debug, Default)]
pub struct MapOptions {
    /// Rows per call of the function (a block's rows in one call when `None`).
    pub batch_size: Option<usize>,
    /// CPUs each task holds (1 when `None`).
    pub num_cpus: Option<f64>,
    /// GPUs each task holds.
    pub num_gpus: Option<f64>,
}

/// Options of [`Dataset::map_batches_actors`].
#[derive(Clone, Debug)]
pub struct ActorPoolOptions {
    /// `(min, max)` actors: the pool starts with `min` and grows while input
    /// waits for a free actor.
    pub concurrency: (usize, usize),
    /// Rows per call of the method (a block's rows in one call when `None`).
    pub batch_size: Option<usize>,
    /// CPUs each actor holds.
    pub num_cpus: f64,
    /// GPUs each actor holds (its process sees them in `CUDA_VISIBLE_DEVICES`).
    pub num_gpus: f64,
}

impl Default for ActorPoolOptions {
    fn default() -> Self {
        ActorPoolOptions {
            concurrency: (1, 2),
            batch_size: None,
            num_cpus: 1.0,
            num_gpus: 0.0,
        }
    }
}

/// Options of [`Dataset::iter_batches`].
#[derive(Clone, Debug)]
pub struct IterOptions {
    /// Rows per batch (the blocks' own sizes when `None`); the last batch may
    /// be smaller.
    pub batch_size: Option<usize>,
    /// Blocks to keep in flight ahead of the consumer (at least 1).
    pub prefetch: usize,
}

impl Default for IterOptions {
    fn default() -> Self {
        IterOptions {
            batch_size: Some(256),
            prefetch: 2,
        }
    }
}

/// What a write produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteSummary {
    /// Files written, in block order.
    pub files: Vec<String>,
    /// Rows written.
    pub rows: u64,
}

/// An aggregate of [`GroupedData::aggregate`] and [`Dataset::aggregate`];
/// the output column is named like Ray's (`count()`, `sum(x)`, ...).
#[derive(Clone, Debug, PartialEq)]
pub enum Agg {
    /// Rows per group.
    Count,
    /// Sum of a column.
    Sum(String),
    /// Mean of a column.
    Mean(String),
    /// Minimum of a column.
    Min(String),
    /// Maximum of a column.
    Max(String),
    /// Sample standard deviation (ddof = 1) of a column.
    Std(String),
    /// The `q`-quantile (0 <= q <= 1) of a column from every value, sorted,
    /// interpolated linearly between the closest ranks (numpy's default);
    /// nulls ignored (Ray Data's `Quantile(on, q)`). DataFusion's
    /// `percentile_cont` computes it, with the interpolation weight rounded
    /// down to 6 decimals. Every value of a group meets in one task, as in
    /// Ray.
    Quantile(String, f64),
}

impl Agg {
    /// The output column's name.
    pub fn output_name(&self) -> String {
        match self {
            Agg::Count => "count()".into(),
            Agg::Sum(c) => format!("sum({c})"),
            Agg::Mean(c) => format!("mean({c})"),
            Agg::Min(c) => format!("min({c})"),
            Agg::Max(c) => format!("max({c})"),
            Agg::Std(c) => format!("std({c})"),
            Agg::Quantile(c, _) => format!("quantile({c})"),
        }
    }
}

/// A dataset grouped by key columns; see [`Dataset::groupby`].
#[derive(Clone)]
pub struct GroupedData {
    ds: Dataset,
    keys: Vec<String>,
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Which rows a [`Dataset::join`] keeps (Ray Data's `join_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinType {
    /// Rows whose keys are on both sides.
    Inner,
    /// Every left row; right columns null where no right row matches.
    LeftOuter,
    /// Every right row; left columns null where no left row matches.
    RightOuter,
    /// Every row of both sides.
    FullOuter,
}

/// The SQL of a join over tables `l` and `r` with schemas `ls`, `rs`: the
/// keys once (from whichever side has them, for outer joins), then the
/// left's other columns, then the right's (a name the left already has gets
/// the suffix `_1`, as [`Dataset::zip`]).
pub(crate) fn join_query(
    ls: &arrow::datatypes::SchemaRef,
    rs: &arrow::datatypes::SchemaRef,
    on: &[String],
    how: JoinType,
) -> String {
    let mut cols: Vec<String> = on
        .iter()
        .map(|k| {
            let k = quote(k);
            match how {
                JoinType::Inner | JoinType::LeftOuter => format!("l.{k} AS {k}"),
                JoinType::RightOuter => format!("r.{k} AS {k}"),
                JoinType::FullOuter => format!("COALESCE(l.{k}, r.{k}) AS {k}"),
            }
        })
        .collect();
    let mut names: Vec<String> = on.to_vec();
    for f in ls.fields().iter().filter(|f| !on.contains(f.name())) {
        cols.push(format!("l.{}", quote(f.name())));
        names.push(f.name().clone());
    }
    for f in rs.fields().iter().filter(|f| !on.contains(f.name())) {
        let mut name = f.name().clone();
        while names.contains(&name) {
            name.push_str("_1");
        }
        cols.push(format!("r.{} AS {}", quote(f.name()), quote(&name)));
        names.push(name);
    }
    let kind = match how {
        JoinType::Inner => "INNER JOIN",
        JoinType::LeftOuter => "LEFT JOIN",
        JoinType::RightOuter => "RIGHT JOIN",
        JoinType::FullOuter => "FULL JOIN",
    };
    let cond: Vec<String> = on.iter().map(|k| format!("l.{0} = r.{0}", quote(k))).collect();
    format!("SELECT {} FROM l {kind} r ON {}", cols.join(", "), cond.join(" AND "))
}

/// Whether a query's answer over a dataset is its answers over each block,
/// concatenated: one plain `SELECT` from `ds` (projection and `WHERE` only)
/// whose expressions call no aggregate or window function (DataFusion's own
/// lists) and hold no subquery.
fn row_wise(statements: &[datafusion::sql::sqlparser::ast::Statement]) -> bool {
    use datafusion::sql::sqlparser::ast::{Expr, GroupByExpr, SetExpr, Statement, TableFactor, visit_expressions};
    use std::ops::ControlFlow;
    let [Statement::Query(q)] = statements else {
        return false;
    };
    let plain_query = q.with.is_none()
        && q.order_by.is_none()
        && q.limit_clause.is_none()
        && q.fetch.is_none()
        && q.locks.is_empty()
        && q.for_clause.is_none()
        && q.settings.is_none()
        && q.format_clause.is_none()
        && q.pipe_operators.is_empty();
    let SetExpr::Select(sel) = q.body.as_ref() else {
        return false;
    };
    let no_groups = matches!(&sel.group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty());
    let from_ds = match sel.from.as_slice() {
        [t] => {
            t.joins.is_empty()
                && matches!(&t.relation, TableFactor::Table { name, args: None, .. }
                    if name.to_string().trim_matches('"').eq_ignore_ascii_case("ds"))
        }
        _ => false,
    };
    let plain_select = sel.distinct.is_none()
        && sel.top.is_none()
        && sel.into.is_none()
        && sel.lateral_views.is_empty()
        && sel.prewhere.is_none()
        && sel.connect_by.is_empty()
        && sel.cluster_by.is_empty()
        && sel.distribute_by.is_empty()
        && sel.sort_by.is_empty()
        && sel.having.is_none()
        && sel.named_window.is_empty()
        && sel.qualify.is_none();
    if !(plain_query && plain_select && no_groups && from_ds) {
        return false;
    }
    let state = datafusion::prelude::SessionContext::new().state();
    let (aggregates, windows) = (state.aggregate_functions(), state.window_functions());
    let found = visit_expressions(&statements[0], |e| match e {
        Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. } => ControlFlow::Break(()),
        Expr::Function(f) => {
            let name = f.name.to_string().trim_matches('"').to_lowercase();
            if f.over.is_some() || aggregates.contains_key(&name) || windows.contains_key(&name) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        _ => ControlFlow::Continue(()),
    });
    found.is_continue()
}

impl GroupedData {
    /// One row per group: the keys, then each aggregate, sorted by the keys.
    pub fn aggregate(&self, aggs: &[Agg]) -> Dataset {
        self.ds.aggregate_by(&self.keys, aggs)
    }

    /// Rows per group (column `count()`).
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// assert_eq!(rayforge_data::range(42).count()?, 42);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn count(&self) -> Dataset {
        self.aggregate(&[Agg::Count])
    }

    /// Sum of `column` per group.
    pub fn sum(&self, column: &str) -> Dataset {
        self.aggregate(&[Agg::Sum(column.into())])
    }

    /// Mean of `column` per group.
    pub fn mean(&self, column: &str) -> Dataset {
        self.aggregate(&[Agg::Mean(column.into())])
    }

    /// Minimum of `column` per group.
    pub fn min(&self, column: &str) -> Dataset {
        self.aggregate(&[Agg::Min(column.into())])
    }

    /// Maximum of `column` per group.
    pub fn max(&self, column: &str) -> Dataset {
        self.aggregate(&[Agg::Max(column.into())])
    }

    /// Sample standard deviation of `column` per group.
    pub fn std(&self, column: &str) -> Dataset {
        self.aggregate(&[Agg::Std(column.into())])
    }

    /// The exact `q`-quantile of `column` per group (see [`Agg::Quantile`]).
    pub fn quantile(&self, column: &str, q: f64) -> Dataset {
        self.aggregate(&[Agg::Quantile(column.into(), q)])
    }
}

fn new(node: Node) -> Dataset {
    Dataset {
        node: Arc::new(node),
        last: Arc::new(Mutex::new(None)),
    }
}

fn default_blocks() -> usize {
    let cpus = rayforge::cluster_resources()
        .ok()
        .and_then(|r| r.total.get("CPU").copied())
        .unwrap_or(2.0);
    ((cpus * 2.0) as usize).max(2)
}

/// The integers `0..n` in a column `id`, in about twice as many blocks as
/// the node has CPUs.
///
/// ```
/// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
/// let ds = rayforge_data::range(1000);
/// assert_eq!(ds.count()?, 1000);
/// assert_eq!(ds.schema()?.field(0).name(), "id");
/// # rayforge::shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn range(n: u64) -> Dataset {
    range_with_blocks(n, default_blocks())
}

/// The integers `0..n` in a column `id`, in `blocks` blocks.
pub fn range_with_blocks(n: u64, blocks: usize) -> Dataset {
    new(Node::Read {
        tasks: source::plan_range(n, blocks),
        schema: Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
            "id",
            arrow::datatypes::DataType::Int64,
            false,
        )])),
    })
}

/// A dataset of in-memory rows (structs or maps of named fields), in
/// blocks of at most 10,000 rows.
///
/// ```
/// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct Trip { city: String, km: f64 }
/// let trips = vec![Trip { city: "Oslo".into(), km: 3.5 }, Trip { city: "Rome".into(), km: 1.0 }];
/// let ds = rayforge_data::from_items(&trips)?;
/// assert_eq!(ds.take_all::<Trip>()?, trips);
/// # rayforge::shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn from_items<T: Serialize>(items: &[T]) -> Result<Dataset> {
    let mut batches = Vec::new();
    for chunk in items.chunks(10_000) {
        batches.push(ops::batch_of(chunk)?);
    }
    from_arrow(batches)
}

/// A dataset of record batches (one block each), put in the object store.
///
/// ```
/// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
/// use std::sync::Arc;
/// use rayforge_data::arrow::array::{ArrayRef, Int64Array, RecordBatch};
/// let col: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
/// let batch = RecordBatch::try_from_iter([("x", col)])?;
/// let ds = rayforge_data::from_arrow(vec![batch.clone(), batch])?;
/// assert_eq!(ds.count()?, 6);
/// # rayforge::shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn from_arrow(batches: Vec<RecordBatch>) -> Result<Dataset> {
    let mut blocks = Vec::new();
    let schema = batches.first().map(|b| b.schema());
    for b in batches {
        if let Some(s) = &schema {
            if s.fields() != b.schema().fields() {
                return Err(Error::SchemaMismatch {
                    what: "from_arrow batches".into(),
                    expected: expr::names(&RecordBatch::new_empty(s.clone())),
                    found: expr::names(&b),
                });
            }
        }
        let block = Block::new(b);
        let meta = block::BlockMeta::of(&block, 0.0);
        blocks.push(BlockRef {
            block: rayforge::put(block)?,
            meta,
        });
    }
    Ok(new(Node::Blocks { blocks }))
}

/// Reads Parquet files: one block per row group, read in parallel.
///
/// ```
/// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
/// let dir = std::env::temp_dir().join(format!("doc-read-parquet-{}", std::process::id()));
/// rayforge_data::range(500).write_parquet(dir.to_str().unwrap())?;
/// let ds = rayforge_data::read_parquet(&dir)?;            // a directory, a file or a glob
/// assert_eq!(ds.count()?, 500);
/// # std::fs::remove_dir_all(&dir)?;
/// # rayforge::shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_parquet(paths: impl Paths) -> Result<Dataset> {
    read_parquet_with(paths, ParquetOptions::default())
}

/// Reads Parquet files, only the columns asked for and only rows passing the
/// filter (pushed into the reader: row groups are skipped by their
/// statistics, rows dropped while decoding). Files must share one schema.
///
/// ```
/// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
/// use rayforge_data::{expr::col, ParquetOptions};
/// let dir = std::env::temp_dir().join(format!("doc-read-parquet-with-{}", std::process::id()));
/// rayforge_data::range(500).add_column("y", |b| Ok::<_, rayforge_data::Error>(b.column(0).clone()))
///     .write_parquet(dir.to_str().unwrap())?;
/// let opts = ParquetOptions { columns: Some(vec!["id".into()]), filter: Some(col("id").lt(100)) };
/// let ds = rayforge_data::read_parquet_with(&dir, opts)?;
/// assert_eq!(ds.count()?, 100);
/// assert_eq!(ds.schema()?.fields().len(), 1);
/// # std::fs::remove_dir_all(&dir)?;
/// # rayforge::shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_parquet_with(paths: impl Paths, opts: ParquetOptions) -> Result<Dataset> {
    let files = source::expand_paths(&paths.paths(), ".parquet")?;
    let (tasks, schema) = source::plan_parquet(&files, &opts)?;
    Ok(new(Node::Read { tasks, schema }))
}

/// Reads CSV files with a header row (one block per file, or per 64 MiB of a
/// larger one: see [`read_csv_with`]); column types are
/// inferred from the first rows and must agree between files.
///
/// ```
/// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
/// let dir = std::env::temp_dir().join(format!("doc-read-csv-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// std::fs::write(dir.join("a.csv"), "city,km\nOslo,3.5\nRome,1.0\n")?;
/// let ds = rayforge_data::read_csv(dir.join("*.csv").to_str().unwrap())?;
/// assert_eq!(ds.count()?, 2);
/// # std::fs::remove_dir_all(&dir)?;
/// # rayforge::shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_csv(paths: impl Paths) -> Result<Dataset> {
    read_csv_with(paths, TextOptions::default())
}

/// Reads CSV files with a header row, as [`read_csv`], in chunks of
/// `opts.chunk_bytes` cut at line ends: each chunk is a block read by a task
/// of its own, so one large file is read in parallel and streams through
/// the store a block at a time. Rows keep their order. With
/// `newlines_in_values` (quoted fields spanning lines) each file is read
/// whole.
///
/// ```
/// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
/// use rayforge_data::TextOptions;
/// let dir = std::env::temp_dir().join(format!("doc-read-csv-with-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let rows: String = (0..1000).map(|i| format!("{i},{}\n", i * 2)).collect();
/// std::fs::write(dir.join("a.csv"), format!("x,y\n{rows}"))?;
/// let opts = TextOptions { chunk_bytes: 1024, ..Default::default() };
/// let ds = rayforge_data::read_csv_with(&dir, opts)?.materialize()?;
/// assert_eq!(ds.count()?, 1000);
/// assert!(ds.num_blocks()? > 5);
/// # std::fs::remove_dir_all(&dir)?;
/// # rayforge::shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_csv_with(paths: impl Paths, opts: TextOptions) -> Result<Dataset> {
    let files = source::expand_paths(&paths.paths(), ".csv")?;
    let (tasks, schema) = source::plan_csv(&files, &opts)?;
    Ok(new(Node::Read { tasks, schema }))
}

/// Reads newline-delimited JSON files (one object per line; one block per
/// file, or per 64 MiB of a larger one: see [`read_json_with`]); types are inferred from the first rows and must agree between
/// files.
///
/// ```
/// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
/// let dir = std::env::temp_dir().join(format!("doc-read-json-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// std::fs::write(dir.join("a.json"), "{\"city\":\"Oslo\",\"km\":3.5}\n{\"city\":\"Rome\",\"km\":1.0}\n")?;
/// let ds = rayforge_data::read_json(&dir)?;
/// assert_eq!(ds.count()?, 2);
/// # std::fs::remove_dir_all(&dir)?;
/// # rayforge::shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_json(paths: impl Paths) -> Result<Dataset> {
    read_json_with(paths, TextOptions::default())
}

/// Reads newline-delimited JSON files, as [`read_json`], in chunks of
/// `opts.chunk_bytes` cut at line ends (see [`read_csv_with`]).
pub fn read_json_with(paths: impl Paths, opts: TextOptions) -> Result<Dataset> {
    let files = source::expand_paths(&paths.paths(), ".json")?;
    let (tasks, schema) = source::plan_json(&files, &opts)?;
    Ok(new(Node::Read { tasks, schema }))
}

impl Dataset {
    fn with(&self, node: Arc<Node>) -> Dataset {
        Dataset {
            node,
            last: Arc::new(Mutex::new(None)),
        }
    }

    fn then(&self, op: MapOp) -> Dataset {
        self.with(self.node.then(op, Compute::default()))
    }

    fn call(&self, name: &str, tramp: Tramp, user: AnyFnRef, arg: &str, o: &MapOptions) -> Dataset {
        let op = MapOp::Call {
            name: name.to_string(),
            tramp: FnRef::new(tramp),
            call: UserCall {
                user,
                arg: arg.to_string(),
            },
            batch_size: o.batch_size,
        };
        let c = Compute {
            num_cpus: o.num_cpus,
            num_gpus: o.num_gpus,
        };
        self.with(self.node.then(op, c))
    }

    /// Applies `f` to every block's record batch.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// use rayforge_data::arrow::array::RecordBatch;
    /// fn double(b: RecordBatch) -> rayforge_data::Result<RecordBatch> {
    ///     rayforge_data::compute::scale_column(b, "id", 2.0)
    /// }
    /// let ds = rayforge_data::range(10).map_batches(double);
    /// let ids = rayforge_data::compute::f64_column(&ds.take_batch(10)?, "id")?;
    /// assert_eq!(ids.iter().sum::<f64>(), 90.0);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_batches<E: Into<Error> + 'static>(&self, f: fn(RecordBatch) -> Result<RecordBatch, E>) -> Dataset {
        self.map_batches_with(f, MapOptions::default())
    }

    /// Applies `f` to batches of `opts.batch_size` rows, in tasks holding
    /// `opts.num_cpus` / `opts.num_gpus`.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// use rayforge_data::MapOptions;
    /// let opts = MapOptions { batch_size: Some(4), num_cpus: Some(1.0), ..Default::default() };
    /// // Each call sees at most 4 rows.
    /// let ds = rayforge_data::range(10).map_batches_with(
    ///     |b| if b.num_rows() <= 4 { Ok(b) } else { Err(rayforge_data::Error::User("too big".into())) },
    ///     opts,
    /// );
    /// assert_eq!(ds.count()?, 10);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_batches_with<E: Into<Error> + 'static>(
        &self,
        f: fn(RecordBatch) -> Result<RecordBatch, E>,
        opts: MapOptions,
    ) -> Dataset {
        self.call("MapBatches", ops::t_batches::<E>, FnRef::new(f).erase(), "", &opts)
    }

    /// Applies `f` to batches on a pool of actors, each holding a state
    /// built once by `init` (a model loaded once per actor, say).
    ///
    /// ```no_run
    /// use rayforge_data::arrow::array::RecordBatch;
    /// struct Model { bias: i64 }
    /// fn load() -> Model { Model { bias: 1 } }
    /// fn score(m: &mut Model, b: RecordBatch) -> Result<RecordBatch, rayforge_data::Error> {
    ///     Ok(rayforge_data::compute::scale_column(b, "id", m.bias as f64)?)
    /// }
    /// # fn main() -> rayforge_data::Result<()> {
    /// let opts = rayforge_data::ActorPoolOptions { concurrency: (1, 4), ..Default::default() };
    /// let n = rayforge_data::range(100).map_batches_actors(load, score, opts).count()?;
    /// # Ok(()) }
    /// ```
    pub fn map_batches_actors<S: Send + 'static, E: Into<Error> + 'static>(
        &self,
        init: fn() -> S,
        f: fn(&mut S, RecordBatch) -> Result<RecordBatch, E>,
        opts: ActorPoolOptions,
    ) -> Dataset {
        let init_tramp: pool::InitTramp = pool::t_init::<S>;
        let init_user: fn() -> S = init;
        self.actor_map(
            FnRef::new(init_tramp),
            FnRef::new(init_user).erase(),
            Ok(Vec::new()),
            f,
            opts,
        )
    }

    /// [`Dataset::map_batches_actors`] with an argument for `init` (Ray's
    /// `fn_constructor_kwargs`): each actor builds its state with
    /// `init(arg)` (a model loaded from the checkpoint `arg` names, say).
    /// `init` may fail: its error fails the blocks sent to that actor.
    ///
    /// ```no_run
    /// use rayforge_data::arrow::array::RecordBatch;
    /// struct Scale { by: f64 }
    /// fn load(by: f64) -> Result<Scale, rayforge_data::Error> { Ok(Scale { by }) }
    /// fn score(s: &mut Scale, b: RecordBatch) -> Result<RecordBatch, rayforge_data::Error> {
    ///     Ok(rayforge_data::compute::scale_column(b, "id", s.by)?)
    /// }
    /// # fn main() -> rayforge_data::Result<()> {
    /// let opts = rayforge_data::ActorPoolOptions::default();
    /// let n = rayforge_data::range(100).map_batches_actors_with(load, 2.5, score, opts).count()?;
    /// # Ok(()) }
    /// ```
    pub fn map_batches_actors_with<S, A, E1, E2>(
        &self,
        init: fn(A) -> Result<S, E1>,
        arg: A,
        f: fn(&mut S, RecordBatch) -> Result<RecordBatch, E2>,
        opts: ActorPoolOptions,
    ) -> Dataset
    where
        S: Send + 'static,
        A: Serialize + DeserializeOwned + 'static,
        E1: Into<Error> + 'static,
        E2: Into<Error> + 'static,
    {
        let init_tramp: pool::InitTramp = pool::t_init_with::<S, A, E1>;
        let arg = serde_json::to_vec(&arg).map_err(|e| format!("the actors' init argument does not encode: {e}"));
        self.actor_map(FnRef::new(init_tramp), FnRef::new(init).erase(), arg, f, opts)
    }

    fn actor_map<S: Send + 'static, E: Into<Error> + 'static>(
        &self,
        init_tramp: FnRef<pool::InitTramp>,
        init_user: AnyFnRef,
        init_arg: std::result::Result<Vec<u8>, String>,
        f: fn(&mut S, RecordBatch) -> Result<RecordBatch, E>,
        opts: ActorPoolOptions,
    ) -> Dataset {
        let call_tramp: pool::CallTramp = pool::t_call::<S, E>;
        let (min, max) = opts.concurrency;
        self.with(Arc::new(Node::ActorMap {
            input: self.node.clone(),
            spec: pool::PoolSpec {
                init_tramp,
                init_user,
                init_arg,
                call_tramp: FnRef::new(call_tramp),
                call_user: FnRef::new(f).erase(),
                batch_size: opts.batch_size,
            },
            size: pool::PoolSize {
                min: min.max(1),
                max: max.max(min).max(1),
                num_cpus: opts.num_cpus,
                num_gpus: opts.num_gpus,
            },
        }))
    }

    /// Applies `f` to every row (rows convert to and from `T`/`U` through
    /// their field names).
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Row { id: i64 }
    /// let ds = rayforge_data::range(5).map(|r: Row| Row { id: r.id * 10 });
    /// let ids: Vec<i64> = ds.take_all::<Row>()?.into_iter().map(|r| r.id).collect();
    /// assert_eq!(ids, vec![0, 10, 20, 30, 40]);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map<T: DeserializeOwned + 'static, U: Serialize + 'static>(&self, f: fn(T) -> U) -> Dataset {
        self.call(
            "Map",
            ops::t_map::<T, U>,
            FnRef::new(f).erase(),
            "",
            &MapOptions::default(),
        )
    }

    /// Maps every row to zero or more rows.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Row { id: i64 }
    /// let ds = rayforge_data::range(3).flat_map(|r: Row| vec![Row { id: r.id }, Row { id: -r.id }]);
    /// assert_eq!(ds.count()?, 6);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flat_map<T: DeserializeOwned + 'static, U: Serialize + 'static>(&self, f: fn(T) -> Vec<U>) -> Dataset {
        self.call(
            "FlatMap",
            ops::t_flat_map::<T, U>,
            FnRef::new(f).erase(),
            "",
            &MapOptions::default(),
        )
    }

    /// Keeps the rows for which `f` holds.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// #[derive(serde::Deserialize)]
    /// struct Row { id: i64 }
    /// let ds = rayforge_data::range(100).filter(|r: &Row| r.id % 10 == 0);
    /// assert_eq!(ds.count()?, 10);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn filter<T: DeserializeOwned + 'static>(&self, f: fn(&T) -> bool) -> Dataset {
        self.call(
            "Filter",
            ops::t_filter::<T>,
            FnRef::new(f).erase(),
            "",
            &MapOptions::default(),
        )
    }

    /// Keeps the rows where the expression holds (evaluated on whole columns).
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// use rayforge_data::expr::col;
    /// let ds = rayforge_data::range(100).filter_expr(col("id").ge(90).or(col("id").lt(5)));
    /// assert_eq!(ds.count()?, 15);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn filter_expr(&self, e: expr::Expr) -> Dataset {
        self.then(MapOp::Filter(e))
    }

    /// Adds (or replaces) column `name`, computed from each batch by `f`.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// use std::sync::Arc;
    /// use rayforge_data::arrow::array::{ArrayRef, Int64Array, RecordBatch};
    /// fn squares(b: &RecordBatch) -> rayforge_data::Result<ArrayRef> {
    ///     let ids = rayforge_data::compute::f64_column(b, "id")?;
    ///     Ok(Arc::new(Int64Array::from_iter_values(ids.iter().map(|x| (x * x) as i64))))
    /// }
    /// let ds = rayforge_data::range(4).add_column("sq", squares);
    /// let b = ds.take_batch(4)?;
    /// assert_eq!(rayforge_data::compute::f64_column(&b, "sq")?, vec![0.0, 1.0, 4.0, 9.0]);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_column<E: Into<Error> + 'static>(
        &self,
        name: &str,
        f: fn(&RecordBatch) -> Result<ArrayRef, E>,
    ) -> Dataset {
        self.call(
            "AddColumn",
            ops::t_add_column::<E>,
            FnRef::new(f).erase(),
            name,
            &MapOptions::default(),
        )
    }

    /// Drops columns.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let ds = rayforge_data::range(4).add_column("y", |b| Ok::<_, rayforge_data::Error>(b.column(0).clone()));
    /// assert_eq!(ds.drop_columns(&["id"]).schema()?.field(0).name(), "y");
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn drop_columns(&self, cols: &[&str]) -> Dataset {
        self.then(MapOp::Drop(cols.iter().map(|s| s.to_string()).collect()))
    }

    /// Keeps only these columns, in this order.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let ds = rayforge_data::range(4).add_column("y", |b| Ok::<_, rayforge_data::Error>(b.column(0).clone()));
    /// let names: Vec<String> = ds.select_columns(&["y", "id"]).schema()?.fields().iter().map(|f| f.name().clone()).collect();
    /// assert_eq!(names, ["y", "id"]);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn select_columns(&self, cols: &[&str]) -> Dataset {
        let cols: Vec<String> = cols.iter().map(|s| s.to_string()).collect();
        // Straight after a Parquet read, the reader skips the other columns.
        let base = match self.node.pruned_read(&cols) {
            Some(node) => self.with(node),
            None => self.clone(),
        };
        base.then(MapOp::Select(cols))
    }

    /// Renames columns (`(from, to)` pairs).
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let ds = rayforge_data::range(4).rename_columns(&[("id", "n")]);
    /// assert_eq!(ds.schema()?.field(0).name(), "n");
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn rename_columns(&self, pairs: &[(&str, &str)]) -> Dataset {
        self.then(MapOp::Rename(
            pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
        ))
    }

    /// The first `n` rows.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// assert_eq!(rayforge_data::range(1000).limit(7).count()?, 7);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn limit(&self, n: u64) -> Dataset {
        self.with(Arc::new(Node::Limit {
            input: self.node.clone(),
            n,
        }))
    }

    /// Groups rows by key columns, for [`GroupedData::aggregate`].
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// use rayforge_data::Agg;
    /// #[derive(serde::Serialize)]
    /// struct Sale { shop: String, amount: f64 }
    /// let sales = [("a", 1.0), ("b", 5.0), ("a", 3.0)].map(|(s, x)| Sale { shop: s.into(), amount: x });
    /// let ds = rayforge_data::from_items(&sales)?;
    /// let out = ds.groupby(&["shop"]).aggregate(&[Agg::Count, Agg::Mean("amount".into())]).take_batch(10)?;
    /// assert_eq!(rayforge_data::compute::f64_column(&out, "mean(amount)")?, vec![2.0, 5.0]);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn groupby(&self, keys: &[&str]) -> GroupedData {
        GroupedData {
            ds: self.clone(),
            keys: keys.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Aggregates over the whole dataset (one row).
    pub fn aggregate(&self, aggs: &[Agg]) -> Dataset {
        self.aggregate_by(&[], aggs)
    }

    fn aggregate_by(&self, keys: &[String], aggs: &[Agg]) -> Dataset {
        // Read only the columns the aggregates use.
        let mut used: Vec<String> = keys.to_vec();
        for a in aggs {
            if let Agg::Sum(c) | Agg::Mean(c) | Agg::Min(c) | Agg::Max(c) | Agg::Std(c) | Agg::Quantile(c, _) = a {
                if !used.contains(c) {
                    used.push(c.clone());
                }
            }
        }
        let input = if used.is_empty() {
            None
        } else {
            self.node.pruned_read(&used)
        };
        let input = input.unwrap_or_else(|| self.node.clone());
        if aggs.iter().any(|a| matches!(a, Agg::Quantile(..))) {
            return self.aggregate_whole(input, keys, &used, aggs);
        }
        // Each block is reduced to partial sums/counts/extremes per group;
        // one task combines them.
        let mut partial: Vec<String> = keys.iter().map(|k| quote(k)).collect();
        let mut combine: Vec<String> = keys.iter().map(|k| quote(k)).collect();
        for (i, a) in aggs.iter().enumerate() {
            let p = |what: &str| format!("p{i}_{what}");
            let out = quote(&a.output_name());
            match a {
                Agg::Count => {
                    partial.push(format!("count(*) AS {}", p("n")));
                    combine.push(format!("CAST(sum({}) AS BIGINT) AS {out}", p("n")));
                }
                Agg::Sum(c) => {
                    partial.push(format!("sum({}) AS {}", quote(c), p("s")));
                    combine.push(format!("sum({}) AS {out}", p("s")));
                }
                Agg::Mean(c) => {
                    partial.push(format!("sum(CAST({} AS DOUBLE)) AS {}", quote(c), p("s")));
                    partial.push(format!("count({}) AS {}", quote(c), p("n")));
                    combine.push(format!("sum({}) / CAST(sum({}) AS DOUBLE) AS {out}", p("s"), p("n")));
                }
                Agg::Min(c) => {
                    partial.push(format!("min({}) AS {}", quote(c), p("m")));
                    combine.push(format!("min({}) AS {out}", p("m")));
                }
                Agg::Max(c) => {
                    partial.push(format!("max({}) AS {}", quote(c), p("m")));
                    combine.push(format!("max({}) AS {out}", p("m")));
                }
                // aggregate_whole takes those with a quantile.
                Agg::Quantile(..) => {}
                Agg::Std(c) => {
                    let x = format!("CAST({} AS DOUBLE)", quote(c));
                    partial.push(format!("sum({x}) AS {}", p("s")));
                    partial.push(format!("sum({x} * {x}) AS {}", p("q")));
                    partial.push(format!("count({}) AS {}", quote(c), p("n")));
                    let (s, q, n) = (p("s"), p("q"), p("n"));
                    combine.push(format!(
                        "CASE WHEN sum({n}) > 1 THEN sqrt(greatest((sum({q}) - sum({s}) * sum({s}) / sum({n})) / (sum({n}) - 1), 0.0)) END AS {out}"
                    ));
                }
            }
        }
        let group = if keys.is_empty() {
            String::new()
        } else {
            let k: Vec<String> = keys.iter().map(|k| quote(k)).collect();
            format!(" GROUP BY {0} ORDER BY {0}", k.join(", "))
        };
        let partial_group = if keys.is_empty() {
            String::new()
        } else {
            format!(
                " GROUP BY {}",
                keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ")
            )
        };
        // The partial step runs in the task that makes each block (fused
        // with the read and transforms before it).
        let partial = MapOp::Sql {
            name: "PartialAggregate".into(),
            query: format!("SELECT {} FROM ds{partial_group}", partial.join(", ")),
        };
        self.with(Arc::new(Node::AllToAll {
            input: input.then(partial, Compute::default()),
            op: AllToAll::Aggregate {
                combine: format!("SELECT {} FROM partial{group}", combine.join(", ")),
            },
        }))
    }

    /// An aggregate with a quantile, which no partial result per block can
    /// stand for: the blocks keep only the columns used, and one task
    /// aggregates them all (DataFusion's exact `percentile_cont`).
    fn aggregate_whole(&self, input: Arc<Node>, keys: &[String], used: &[String], aggs: &[Agg]) -> Dataset {
        let mut select: Vec<String> = keys.iter().map(|k| quote(k)).collect();
        for a in aggs {
            let out = quote(&a.output_name());
            let x = |c: &str| format!("CAST({} AS DOUBLE)", quote(c));
            select.push(match a {
                Agg::Count => format!("CAST(count(*) AS BIGINT) AS {out}"),
                Agg::Sum(c) => format!("sum({}) AS {out}", quote(c)),
                Agg::Mean(c) => format!("avg({}) AS {out}", x(c)),
                Agg::Min(c) => format!("min({}) AS {out}", quote(c)),
                Agg::Max(c) => format!("max({}) AS {out}", quote(c)),
                Agg::Std(c) => format!("stddev_samp({}) AS {out}", x(c)),
                Agg::Quantile(c, q) => format!("percentile_cont({q:?}) WITHIN GROUP (ORDER BY {}) AS {out}", x(c)),
            });
        }
        let group = if keys.is_empty() {
            String::new()
        } else {
            let k: Vec<String> = keys.iter().map(|k| quote(k)).collect();
            format!(" GROUP BY {0} ORDER BY {0}", k.join(", "))
        };
        let cols: Vec<String> = used.iter().map(|c| quote(c)).collect();
        let project = if cols.is_empty() {
            "*".to_string()
        } else {
            cols.join(", ")
        };
        let partial = MapOp::Sql {
            name: "Project".into(),
            query: format!("SELECT {project} FROM ds"),
        };
        self.with(Arc::new(Node::AllToAll {
            input: input.then(partial, Compute::default()),
            op: AllToAll::Aggregate {
                combine: format!("SELECT {} FROM partial{group}", select.join(", ")),
            },
        }))
    }

    /// Sorts by a column (distributed: sampled boundaries, then a range
    /// partition and a sort of each range). Nulls go last.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let ds = rayforge_data::range(100).random_shuffle(Some(7)).sort("id", true);
    /// let ids = rayforge_data::compute::f64_column(&ds.take_batch(3)?, "id")?;
    /// assert_eq!(ids, vec![99.0, 98.0, 97.0]);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sort(&self, key: &str, descending: bool) -> Dataset {
        self.sort_by(&[(key, descending)])
    }

    /// Sorts by several columns, each ascending or descending
    /// (`(column, descending)`, the first deciding first; Ray Data's
    /// `sort(key=[..], descending=[..])`), distributed as [`Dataset::sort`].
    /// Nulls go last in each.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let ds = rayforge_data::range(6).sql("SELECT id % 2 AS odd, id FROM ds")?;
    /// let b = ds.sort_by(&[("odd", false), ("id", true)]).take_batch(6)?;
    /// assert_eq!(rayforge_data::compute::f64_column(&b, "id")?, vec![4.0, 2.0, 0.0, 5.0, 3.0, 1.0]);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sort_by(&self, keys: &[(&str, bool)]) -> Dataset {
        self.all_to_all(AllToAll::Sort {
            keys: keys.iter().map(|(k, d)| (k.to_string(), *d)).collect(),
        })
    }

    /// Puts the rows in a random order, the same one for the same seed
    /// (a fresh one when `None`).
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let a = rayforge_data::range(100).random_shuffle(Some(42)).take_batch(100)?;
    /// let b = rayforge_data::range(100).random_shuffle(Some(42)).take_batch(100)?;
    /// assert_eq!(a, b);                                     // same seed, same order
    /// let mut ids = rayforge_data::compute::f64_column(&a, "id")?;
    /// ids.sort_by(f64::total_cmp);
    /// assert_eq!(ids, (0..100).map(|i| i as f64).collect::<Vec<_>>());
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn random_shuffle(&self, seed: Option<u64>) -> Dataset {
        let seed = seed.unwrap_or_else(rand::random);
        self.all_to_all(AllToAll::Shuffle(seed))
    }

    /// Re-splits the rows into `n` blocks of (nearly) equal size, in order.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let ds = rayforge_data::range(100).repartition(4).materialize()?;
    /// assert_eq!(ds.count()?, 100);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn repartition(&self, n: usize) -> Dataset {
        self.all_to_all(AllToAll::Repartition(n.max(1)))
    }

    /// Splits into `(train, test)` with `test_fraction` of the rows in the
    /// test part, after a random shuffle with `seed` (rows keep their order
    /// when `seed` is `None`). Runs the plan once and keeps the result.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let (train, test) = rayforge_data::range(100).train_test_split(0.2, Some(1))?;
    /// assert_eq!((train.count()?, test.count()?), (80, 20));
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn train_test_split(&self, test_fraction: f64, seed: Option<u64>) -> Result<(Dataset, Dataset)> {
        if !(0.0..=1.0).contains(&test_fraction) {
            return Err(Error::InvalidArgument(format!(
                "test_fraction must be within [0, 1], got {test_fraction}"
            )));
        }
        let base = match seed {
            Some(s) => self.all_to_all(AllToAll::Shuffle(s)),
            None => self.clone(),
        }
        .materialize()?;
        let n = base.count()?;
        let test = (n as f64 * test_fraction).round() as u64;
        let train = base.all_to_all(AllToAll::Slice {
            offset: 0,
            len: n - test,
        });
        let test = base.all_to_all(AllToAll::Slice {
            offset: n - test,
            len: test,
        });
        Ok((train, test))
    }

    /// Runs a SQL query (DataFusion) over the dataset, which is table `ds`.
    /// A query that works row by row — one `SELECT .. FROM ds [WHERE ..]`
    /// with no aggregate, window, `GROUP BY`, `DISTINCT`, `ORDER BY`,
    /// `LIMIT`, join or subquery — runs on each block in the tasks that make
    /// it, so it streams over a dataset of any size; any other query runs
    /// once over the whole dataset, in one task that reads the blocks one
    /// at a time as DataFusion's execution asks for them (an aggregate
    /// holds its groups, not the rows; a sort or a join's build side holds
    /// what DataFusion keeps of them).
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let ds = rayforge_data::range(10).sql("SELECT id * 2 AS twice FROM ds WHERE id >= 5")?;
    /// let twice = rayforge_data::compute::f64_column(&ds.take_batch(10)?, "twice")?;
    /// assert_eq!(twice, vec![10.0, 12.0, 14.0, 16.0, 18.0]);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sql(&self, query: &str) -> Result<Dataset> {
        // Check the syntax now rather than when the plan runs.
        let dialect = datafusion::sql::sqlparser::dialect::GenericDialect {};
        let statements = datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, query)
            .map_err(|e| Error::Sql(format!("{e} in `{query}`")))?;
        if row_wise(&statements) {
            return Ok(self.then(MapOp::Sql {
                name: "Sql".into(),
                query: query.to_string(),
            }));
        }
        Ok(self.all_to_all(AllToAll::Sql {
            query: query.to_string(),
        }))
    }

    fn all_to_all(&self, op: AllToAll) -> Dataset {
        self.with(Arc::new(Node::AllToAll {
            input: self.node.clone(),
            op,
        }))
    }

    /// This dataset's rows followed by `other`'s.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let ds = rayforge_data::range(3).union(&rayforge_data::range(4));
    /// assert_eq!(ds.count()?, 7);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn union(&self, other: &Dataset) -> Dataset {
        self.with(Arc::new(Node::Union(vec![self.node.clone(), other.node.clone()])))
    }

    /// Row `i` of the result holds the columns of row `i` of both datasets
    /// (which must have equal lengths); a clashing name from `other` gets a
    /// suffix `_1`.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let ds = rayforge_data::range(3).zip(&rayforge_data::range(3).rename_columns(&[("id", "other")]));
    /// assert_eq!(ds.schema()?.fields().len(), 2);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn zip(&self, other: &Dataset) -> Dataset {
        self.with(Arc::new(Node::Zip(self.node.clone(), other.node.clone())))
    }

    /// Joins with `other` on equal values of the key columns `on` (named
    /// alike, of the same type, on both sides), as Ray Data's `join`: a
    /// distributed hash join (both sides cut into as many hash partitions as
    /// the larger has blocks, each partition pair joined by DataFusion). The
    /// result has the keys once, then the left's other columns, then the
    /// right's (a name the left already has gets the suffix `_1`); rows come
    /// in no particular order. A null key matches nothing, as in SQL. A key
    /// missing from a side, or of different types, is an error naming it.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// use rayforge_data::JoinType;
    /// let users = rayforge_data::range(4).rename_columns(&[("id", "user")]);
    /// let orders = rayforge_data::range(6).sql("SELECT id % 3 AS user, id AS order_id FROM ds")?;
    /// assert_eq!(users.join(&orders, &["user"], JoinType::Inner).count()?, 6);
    /// assert_eq!(users.join(&orders, &["user"], JoinType::LeftOuter).count()?, 7);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn join(&self, other: &Dataset, on: &[&str], how: JoinType) -> Dataset {
        self.with(Arc::new(Node::Join {
            left: self.node.clone(),
            right: other.node.clone(),
            on: on.iter().map(|k| k.to_string()).collect(),
            how,
        }))
    }

    // ---- consuming ----

    fn run(&self, what: &str, ctx: Ctx) -> Result<(exec::BlockIter, Progress)> {
        *self.last.lock() = Some(ctx.stats.clone());
        let progress = Progress::start(what, ctx.stats.clone());
        Ok((exec::execute(&self.node, &ctx)?, progress))
    }

    fn blocks(&self, what: &str) -> Result<Vec<BlockRef>> {
        let (it, _p) = self.run(what, Ctx::new())?;
        exec::collect(it)
    }

    /// Runs the plan and keeps the result in the object store.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let ds = rayforge_data::range(1000).materialize()?;   // runs once, kept in the object store
    /// assert_eq!(ds.count()?, 1000);
    /// assert_eq!(ds.count()?, 1000);                         // no second run
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn materialize(&self) -> Result<Dataset> {
        let blocks = self.blocks("materialize")?;
        let ds = new(Node::Blocks { blocks });
        *ds.last.lock() = self.last.lock().clone();
        Ok(ds)
    }

    /// Number of blocks (Ray Data's `num_blocks`): those of a materialized
    /// dataset, or of a read not yet run (one per read task); otherwise the
    /// dataset runs to count them (only block metadata travels back).
    pub fn num_blocks(&self) -> Result<usize> {
        match self.node.as_ref() {
            Node::Blocks { blocks } => Ok(blocks.len()),
            Node::Read { tasks, .. } => Ok(tasks.len()),
            _ => Ok(self.blocks("num_blocks")?.len()),
        }
    }

    /// Number of rows (only block metadata travels to the caller).
    pub fn count(&self) -> Result<u64> {
        Ok(self.blocks("count")?.iter().map(|b| b.meta.rows).sum())
    }

    /// The schema (known without running for reads; otherwise from the
    /// first block).
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let schema = rayforge_data::range(3).schema()?;
    /// assert_eq!(schema.field(0).name(), "id");
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn schema(&self) -> Result<SchemaRef> {
        if let Node::Read { schema, .. } = self.node.as_ref() {
            return Ok(schema.clone());
        }
        let (mut it, _p) = self.run("schema", Ctx::new())?;
        let mut first = None;
        for b in it.by_ref() {
            let b = b?;
            if b.meta.rows > 0 || first.is_none() {
                let s = b.meta.schema.schema();
                if b.meta.rows > 0 {
                    return Ok(s);
                }
                first = Some(s);
            }
        }
        Ok(first.unwrap_or_else(block::empty_schema))
    }

    /// Iterates over the rows in batches, running the plan as it goes.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let opts = rayforge_data::IterOptions { batch_size: Some(30), prefetch: 2 };
    /// let sizes: Vec<usize> = rayforge_data::range(100)
    ///     .iter_batches(opts)?
    ///     .map(|b| b.map(|b| b.num_rows()))
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(sizes, vec![30, 30, 30, 10]);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn iter_batches(&self, opts: IterOptions) -> Result<BatchIter> {
        let mut ctx = Ctx::new();
        ctx.max_window = ctx.max_window.max(opts.prefetch.max(1));
        let (it, progress) = self.run("iter_batches", ctx)?;
        Ok(BatchIter::new(it, opts.batch_size, Some(progress)))
    }

    /// Runs the plan once, feeding `n` consumers in parallel: each gets a
    /// [`DataIterator`] (send it to a training worker); blocks go to the
    /// consumer that has received the fewest rows. With `equal`, every
    /// consumer gets exactly the same number of rows (blocks are cut to
    /// make it so; at most `n - 1` rows at the end are dropped). Iterating a
    /// consumer again is its next epoch: the plan runs again once every
    /// consumer has asked, until [`DataIterator::close`].
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let shards = rayforge_data::range(100).streaming_split(2, true)?;
    /// // Usually each goes to a training worker (a DataIterator serializes).
    /// let (a, b) = (shards[0].clone(), shards[1].clone());
    /// let ta = std::thread::spawn(move || a.iter_batches(None).map(|b| b.unwrap().num_rows()).sum::<usize>());
    /// let nb: usize = b.iter_batches(None).map(|b| b.unwrap().num_rows()).sum();
    /// assert_eq!((ta.join().unwrap(), nb), (50, 50));
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn streaming_split(&self, n: usize, equal: bool) -> Result<Vec<DataIterator>> {
        if n == 0 {
            return Err(Error::InvalidArgument(
                "streaming_split needs at least one consumer".into(),
            ));
        }
        let node = self.node.clone();
        let last = self.last.clone();
        split::start(
            move |ctx| {
                *last.lock() = Some(ctx.stats.clone());
                exec::execute(&node, ctx)
            },
            n,
            equal,
        )
    }

    /// The first `n` rows, as one record batch.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// assert_eq!(rayforge_data::range(10).take_batch(4)?.num_rows(), 4);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn take_batch(&self, n: usize) -> Result<RecordBatch> {
        // The limited plan reports its stats as this dataset's.
        let limited = Dataset {
            node: self.limit(n as u64).node,
            last: self.last.clone(),
        };
        let it = limited.iter_batches(IterOptions {
            batch_size: None,
            prefetch: 2,
        })?;
        let batches = it.collect::<Result<Vec<_>>>()?;
        ops::concat(batches)
    }

    /// The first `n` rows as values of `T` (matched by field name).
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// #[derive(serde::Deserialize)]
    /// struct Row { id: i64 }
    /// let rows: Vec<Row> = rayforge_data::range(10).take(3)?;
    /// assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), vec![0, 1, 2]);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn take<T: DeserializeOwned>(&self, n: usize) -> Result<Vec<T>> {
        ops::rows_of(&self.take_batch(n)?)
    }

    /// The distinct values of `column` in ascending order (a null last:
    /// take `Option<T>` when the column has nulls), as Ray Data's `unique`;
    /// a distributed group-by on the column, partial per block.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let ds = rayforge_data::range(10).sql("SELECT id % 3 AS k FROM ds")?;
    /// assert_eq!(ds.unique::<i64>("k")?, vec![0, 1, 2]);
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unique<T: DeserializeOwned>(&self, column: &str) -> Result<Vec<T>> {
        let groups = self
            .groupby(&[column])
            .aggregate(&[Agg::Count])
            .select_columns(&[column]);
        groups
            .take_all::<serde_json::Map<String, serde_json::Value>>()?
            .into_iter()
            .map(|mut row| {
                // A null is left out of its row's JSON form.
                let v = row.remove(column).unwrap_or(serde_json::Value::Null);
                serde_json::from_value(v.clone()).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "unique(`{column}`): the value {v} is not of the type asked for: {e}"
                    ))
                })
            })
            .collect()
    }

    /// Every row as a value of `T`.
    pub fn take_all<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        let batches = self
            .iter_batches(IterOptions {
                batch_size: None,
                prefetch: 2,
            })?
            .collect::<Result<Vec<_>>>()?;
        let mut out = Vec::new();
        for b in &batches {
            out.extend(ops::rows_of::<T>(b)?);
        }
        Ok(out)
    }

    /// The first `n` rows as a table.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let table = rayforge_data::range(3).show_string(2)?;
    /// assert!(table.contains("| id |"));
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn show_string(&self, n: usize) -> Result<String> {
        let b = self.take_batch(n)?;
        Ok(arrow::util::pretty::pretty_format_batches(&[b])?.to_string())
    }

    /// Prints the first `n` rows as a table.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// rayforge_data::range(3).show(3)?;   // prints a table
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn show(&self, n: usize) -> Result<()> {
        println!("{}", self.show_string(n)?);
        Ok(())
    }

    /// Per-operator rows, bytes, task time and wall time of the last run of
    /// this dataset (empty before it ran).
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let ds = rayforge_data::range(100).map_batches(|b| Ok::<_, rayforge_data::Error>(b));
    /// ds.count()?;
    /// assert!(ds.stats().contains("MapBatches"));
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> String {
        self.last.lock().as_ref().map(|s| s.render()).unwrap_or_default()
    }

    fn write(&self, dir: &str, format: Format, opts: WriteOptions) -> Result<WriteSummary> {
        let pending = files::PendingWrite::start(dir, opts.mode)?;
        let mut written = Vec::new();
        match self.write_parts(&pending, format, &mut written) {
            Ok(rows) => {
                pending.commit(&written)?;
                Ok(WriteSummary {
                    files: written.iter().map(|k| pending_uri(dir, k)).collect(),
                    rows,
                })
            }
            Err(e) => {
                pending.abort(&written);
                Err(e)
            }
        }
    }

    /// Writes one part per block; `written` collects the parts' keys as
    /// they land. Returns the rows written.
    fn write_parts(&self, pending: &files::PendingWrite, format: Format, written: &mut Vec<String>) -> Result<u64> {
        // Number the blocks first so file names follow block order whatever
        // the plan; the write then streams.
        let ctx = Ctx::new();
        *self.last.lock() = Some(ctx.stats.clone());
        let _progress = Progress::start("write", ctx.stats.clone());
        let upstream = exec::execute(&self.node, &ctx)?;
        let mut rows = 0;
        let dir_s = pending.storage.uri().to_string();
        let write_id = pending.write_id.clone();
        let shared = pending.shared.clone();
        let mut index = 0usize;
        let mut sinks = upstream.map(move |r| {
            r.map(|br| {
                let sink = Sink {
                    format,
                    dir: dir_s.clone(),
                    index,
                    write_id: write_id.clone(),
                    shared: shared.clone(),
                };
                index += 1;
                let name = sink.file_name();
                let p = ops::map_stage::remote(
                    ops::StageSpec {
                        read: None,
                        ops: vec![MapOp::Write(sink)],
                    },
                    br.block,
                );
                (p, name, br.meta.rows)
            })
        });
        // Writes run in a window like any operator.
        let mut window = std::collections::VecDeque::new();
        loop {
            while window.len() < ctx.max_window {
                match sinks.next() {
                    Some(r) => window.push_back(r?),
                    None => break,
                }
            }
            let Some(((_, out), name, n)) = window.pop_front() else {
                break;
            };
            out.get()?;
            written.push(name);
            rows += n;
        }
        Ok(rows)
    }

    /// Writes one Parquet file per block (`part-00000-<write id>.parquet`,
    /// ...) into `dir` — a path or a storage URI (`cluster://prefix`,
    /// `s3://bucket/prefix`) — then commits them with a `_SUCCESS` marker:
    /// a failed write changes nothing readers see. A `dir` that already
    /// holds files is refused ([`WriteMode::Error`]); see
    /// [`Dataset::write_parquet_with`] to overwrite or append. On a
    /// multi-node cluster a local `dir` (or `file://` URI) must be a path
    /// every node shares: a node that cannot see it fails the write with
    /// [`Error::PathNotShared`] rather than keep its part on its own disk.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// use rayforge_data::{WriteMode, WriteOptions};
    /// let dir = std::env::temp_dir().join(format!("doc-write-parquet-{}", std::process::id()));
    /// let dir = dir.to_str().unwrap();
    /// let done = rayforge_data::range(100).repartition(2).write_parquet(dir)?;
    /// assert_eq!(done.rows, 100);
    /// assert!(done.files[0].contains("part-00000-"));
    /// assert!(rayforge_data::range(5).write_parquet(dir).is_err(), "not into a directory with files");
    /// let append = WriteOptions { mode: WriteMode::Append };
    /// rayforge_data::range(5).write_parquet_with(dir, append)?;
    /// assert_eq!(rayforge_data::read_parquet(dir)?.count()?, 105);
    /// let overwrite = WriteOptions { mode: WriteMode::Overwrite };
    /// rayforge_data::range(7).write_parquet_with(dir, overwrite)?;
    /// assert_eq!(rayforge_data::read_parquet(dir)?.count()?, 7);
    /// # std::fs::remove_dir_all(dir)?;
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_parquet(&self, dir: &str) -> Result<WriteSummary> {
        self.write(dir, Format::Parquet, WriteOptions::default())
    }

    /// [`Dataset::write_parquet`] with options (the mode).
    pub fn write_parquet_with(&self, dir: &str, opts: WriteOptions) -> Result<WriteSummary> {
        self.write(dir, Format::Parquet, opts)
    }

    /// Writes one CSV file (with header) per block into `dir` (a path or a
    /// storage URI), committed as [`Dataset::write_parquet`] does.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let dir = std::env::temp_dir().join(format!("doc-write-csv-{}", std::process::id()));
    /// let done = rayforge_data::range(10).repartition(1).write_csv(dir.to_str().unwrap())?;
    /// assert!(std::fs::read_to_string(&done.files[0])?.starts_with("id\n0\n1\n"));
    /// # std::fs::remove_dir_all(&dir)?;
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_csv(&self, dir: &str) -> Result<WriteSummary> {
        self.write(dir, Format::Csv, WriteOptions::default())
    }

    /// [`Dataset::write_csv`] with options (the mode).
    pub fn write_csv_with(&self, dir: &str, opts: WriteOptions) -> Result<WriteSummary> {
        self.write(dir, Format::Csv, opts)
    }

    /// Writes one newline-delimited JSON file per block into `dir` (a path
    /// or a storage URI), committed as [`Dataset::write_parquet`] does.
    ///
    /// ```
    /// # rayforge::init(rayforge::Config::default().num_cpus(2.0))?;
    /// let dir = std::env::temp_dir().join(format!("doc-write-json-{}", std::process::id()));
    /// let done = rayforge_data::range(2).repartition(1).write_json(dir.to_str().unwrap())?;
    /// assert_eq!(std::fs::read_to_string(&done.files[0])?, "{\"id\":0}\n{\"id\":1}\n");
    /// # std::fs::remove_dir_all(&dir)?;
    /// # rayforge::shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_json(&self, dir: &str) -> Result<WriteSummary> {
        self.write(dir, Format::Json, WriteOptions::default())
    }

    /// [`Dataset::write_json`] with options (the mode).
    pub fn write_json_with(&self, dir: &str, opts: WriteOptions) -> Result<WriteSummary> {
        self.write(dir, Format::Json, opts)
    }
}

/// The path (or URI) of the part `key` written into `dir`.
fn pending_uri(dir: &str, key: &str) -> String {
    if files::is_remote(dir) {
        format!("{}/{key}", dir.trim_end_matches('/'))
    } else {
        std::path::Path::new(dir).join(key).display().to_string()
    }
}

/// Batches of a running dataset; see [`Dataset::iter_batches`].
pub struct BatchIter {
    blocks: exec::BlockIter,
    batch_size: Option<usize>,
    buf: Vec<RecordBatch>,
    buffered: usize,
    done: bool,
    _progress: Option<Progress>,
}

impl BatchIter {
    pub(crate) fn new(blocks: exec::BlockIter, batch_size: Option<usize>, progress: Option<Progress>) -> BatchIter {
        BatchIter {
            blocks,
            batch_size,
            buf: Vec::new(),
            buffered: 0,
            done: false,
            _progress: progress,
        }
    }

    fn cut(&mut self, n: usize) -> Result<RecordBatch> {
        let all = ops::concat(std::mem::take(&mut self.buf))?;
        let n = n.min(all.num_rows());
        let rest = all.slice(n, all.num_rows() - n);
        self.buffered = rest.num_rows();
        if rest.num_rows() > 0 {
            self.buf.push(rest);
        }
        Ok(all.slice(0, n))
    }
}

impl Iterator for BatchIter {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Result<RecordBatch>> {
        loop {
            let want = self.batch_size.unwrap_or(1).max(1);
            if self.buffered >= want || (self.done && self.buffered > 0) {
                return Some(self.cut(want.min(self.buffered.max(1))));
            }
            if self.done {
                return None;
            }
            match self.blocks.next() {
                None => self.done = true,
                Some(Err(e)) => {
                    self.done = true;
                    self.buf.clear();
                    self.buffered = 0;
                    return Some(Err(e));
                }
                Some(Ok(br)) => {
                    if br.meta.rows == 0 {
                        continue;
                    }
                    let b = match br.block.get() {
                        Ok(b) => b.into_batch(),
                        Err(e) => return Some(Err(e.into())),
                    };
                    if self.batch_size.is_none() {
                        return Some(Ok(b));
                    }
                    self.buffered += b.num_rows();
                    self.buf.push(b);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_row_by_row_queries_run_per_block() {
        let row_wise = |q: &str| {
            let dialect = datafusion::sql::sqlparser::dialect::GenericDialect {};
            super::row_wise(&datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, q).unwrap())
        };
        for q in [
            "SELECT * FROM ds",
            "SELECT id * 2 AS twice, upper(s), abs(x) FROM ds WHERE x > 1 AND s LIKE 'a%'",
            "SELECT CASE WHEN x > 0 THEN 1 ELSE 0 END AS pos FROM \"ds\"",
        ] {
            assert!(row_wise(q), "{q}");
        }
        for q in [
            "SELECT sum(x) FROM ds",
            "SELECT avg(x), count(*) FROM ds",
            "SELECT mean(x) FROM ds",
            "SELECT x FROM ds GROUP BY x",
            "SELECT DISTINCT x FROM ds",
            "SELECT x FROM ds ORDER BY x",
            "SELECT x FROM ds LIMIT 3",
            "SELECT row_number() OVER (ORDER BY x) FROM ds",
            "SELECT x FROM ds WHERE x IN (SELECT x FROM ds WHERE x > 1)",
            "SELECT x FROM ds WHERE x > (SELECT avg(x) FROM ds)",
            "SELECT a.x FROM ds a JOIN ds b ON a.x = b.x",
            "SELECT x FROM other",
            "WITH t AS (SELECT x FROM ds) SELECT x FROM t",
            "SELECT x FROM ds UNION ALL SELECT x FROM ds",
            "SELECT 1; SELECT 2",
        ] {
            assert!(!row_wise(q), "{q}");
        }
    }
}
