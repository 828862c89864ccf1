//! What runs inside tasks: reads, chains of per-block transforms (fused into
//! one task per block), sinks, and the map and reduce sides of the
//! all-to-all operations.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt64Array};
use arrow::datatypes::{Field, Schema, SchemaRef};
use rand::{Rng, SeedableRng};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::block::{Block, BlockMeta};
use crate::error::{Error, Result};
use crate::expr::{Expr, names};
use crate::source::ReadTask;
use rayforge::{AnyFnRef, FnRef};

/// A trampoline: turns the user function back into the type it knows (a
/// trampoline is monomorphized for it) and calls it on a batch.
pub(crate) type Tramp = fn(&UserCall, RecordBatch) -> Result<RecordBatch>;

/// A user function of a type only its trampoline knows, and the
/// operation's argument (a column name, say).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct UserCall {
    pub(crate) user: AnyFnRef,
    pub(crate) arg: String,
}

impl UserCall {
    /// The user function as an `F`.
    fn get<F: rayforge::FnPtr>(&self) -> Result<F> {
        Ok(self.user.typed::<F>()?.get()?)
    }
}

/// One per-block transform.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum MapOp {
    /// User code, through a trampoline.
    Call {
        name: String,
        tramp: FnRef<Tramp>,
        call: UserCall,
        batch_size: Option<usize>,
    },
    Filter(Expr),
    Select(Vec<String>),
    Drop(Vec<String>),
    Rename(Vec<(String, String)>),
    Slice {
        offset: usize,
        len: usize,
    },
    /// Write the block to a file (the block then becomes empty).
    Write(Sink),
    /// A SQL query over the block alone (as table `ds`).
    Sql {
        /// Its name in progress lines and stats.
        name: String,
        /// The query, over the block as table `ds`.
        query: String,
    },
}

impl MapOp {
    pub(crate) fn name(&self) -> String {
        match self {
            MapOp::Call { name, .. } => name.clone(),
            MapOp::Filter(_) => "Filter".into(),
            MapOp::Select(_) => "SelectColumns".into(),
            MapOp::Drop(_) => "DropColumns".into(),
            MapOp::Rename(_) => "RenameColumns".into(),
            MapOp::Slice { .. } => "Limit".into(),
            MapOp::Write(s) => format!("Write{}", s.format.name()),
            MapOp::Sql { name, .. } => name.clone(),
        }
    }

    fn apply(&self, b: RecordBatch) -> Result<RecordBatch> {
        match self {
            MapOp::Call {
                tramp,
                call,
                batch_size,
                ..
            } => {
                let t = tramp.get()?;
                in_batches(b, *batch_size, |part| t(call, part))
            }
            MapOp::Filter(e) => {
                let m = e.evaluate(&b)?;
                Ok(arrow::compute::filter_record_batch(&b, &m)?)
            }
            MapOp::Select(cols) => {
                let idx = cols.iter().map(|c| index_of(&b, c)).collect::<Result<Vec<_>>>()?;
                Ok(b.project(&idx)?)
            }
            MapOp::Drop(cols) => {
                for c in cols {
                    index_of(&b, c)?;
                }
                let keep: Vec<usize> = (0..b.num_columns())
                    .filter(|i| !cols.contains(b.schema().field(*i).name()))
                    .collect();
                Ok(b.project(&keep)?)
            }
            MapOp::Rename(pairs) => {
                for (from, _) in pairs {
                    index_of(&b, from)?;
                }
                let fields: Vec<Field> = b
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| match pairs.iter().find(|(from, _)| from == f.name()) {
                        Some((_, to)) => f.as_ref().clone().with_name(to),
                        None => f.as_ref().clone(),
                    })
                    .collect();
                Ok(RecordBatch::try_new(
                    Arc::new(Schema::new(fields)),
                    b.columns().to_vec(),
                )?)
            }
            MapOp::Slice { offset, len } => {
                let off = (*offset).min(b.num_rows());
                Ok(b.slice(off, (*len).min(b.num_rows() - off)))
            }
            MapOp::Write(sink) => {
                sink.write(&b)?;
                Ok(RecordBatch::new_empty(b.schema()))
            }
            MapOp::Sql { query, .. } => {
                let schema = b.schema();
                sql_over(vec![("ds".into(), schema, vec![b])], query)
            }
        }
    }
}

/// Calls `f` on slices of at most `batch_size` rows (the whole batch when
/// `None`) and concatenates what it returns.
pub(crate) fn in_batches(
    b: RecordBatch,
    batch_size: Option<usize>,
    mut f: impl FnMut(RecordBatch) -> Result<RecordBatch>,
) -> Result<RecordBatch> {
    match batch_size {
        Some(n) if n > 0 && b.num_rows() > n => {
            let mut outs = Vec::new();
            let mut at = 0;
            while at < b.num_rows() {
                let len = n.min(b.num_rows() - at);
                outs.push(f(b.slice(at, len))?);
                at += len;
            }
            concat(outs)
        }
        _ => f(b),
    }
}

fn index_of(b: &RecordBatch, c: &str) -> Result<usize> {
    b.schema().index_of(c).map_err(|_| Error::NoSuchColumn {
        column: c.to_string(),
        available: names(b),
    })
}

/// Concatenates batches (of one schema; empty-schema batches from row
/// functions that produced nothing are skipped).
pub(crate) fn concat(batches: Vec<RecordBatch>) -> Result<RecordBatch> {
    let batches: Vec<RecordBatch> = batches
        .into_iter()
        .filter(|b| b.num_rows() > 0 || b.num_columns() > 0)
        .collect();
    let Some(first) = batches.iter().find(|b| b.num_rows() > 0).or(batches.first()) else {
        return Ok(RecordBatch::new_empty(crate::block::empty_schema()));
    };
    let schema = first.schema();
    let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
    for b in &batches {
        if b.schema().fields() != schema.fields() {
            return Err(Error::SchemaMismatch {
                what: "blocks of one dataset".into(),
                expected: names_of(&schema),
                found: names_of(&b.schema()),
            });
        }
    }
    Ok(arrow::compute::concat_batches(&schema, &batches)?)
}

fn names_of(s: &SchemaRef) -> String {
    s.fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- trampolines: each knows the type of one kind of user function ----

pub(crate) fn t_batches<E: Into<Error> + 'static>(c: &UserCall, b: RecordBatch) -> Result<RecordBatch> {
    let f = c.get::<fn(RecordBatch) -> std::result::Result<RecordBatch, E>>()?;
    f(b).map_err(Into::into)
}

pub(crate) fn t_map<T: DeserializeOwned + 'static, U: Serialize + 'static>(
    c: &UserCall,
    b: RecordBatch,
) -> Result<RecordBatch> {
    let f = c.get::<fn(T) -> U>()?;
    let rows: Vec<U> = rows_of::<T>(&b)?.into_iter().map(f).collect();
    batch_of(&rows)
}

pub(crate) fn t_flat_map<T: DeserializeOwned + 'static, U: Serialize + 'static>(
    c: &UserCall,
    b: RecordBatch,
) -> Result<RecordBatch> {
    let f = c.get::<fn(T) -> Vec<U>>()?;
    let rows: Vec<U> = rows_of::<T>(&b)?.into_iter().flat_map(f).collect();
    batch_of(&rows)
}

pub(crate) fn t_filter<T: DeserializeOwned + 'static>(c: &UserCall, b: RecordBatch) -> Result<RecordBatch> {
    let f = c.get::<fn(&T) -> bool>()?;
    let mask: BooleanArray = rows_of::<T>(&b)?.iter().map(|r| Some(f(r))).collect();
    Ok(arrow::compute::filter_record_batch(&b, &mask)?)
}

pub(crate) fn t_add_column<E: Into<Error> + 'static>(c: &UserCall, b: RecordBatch) -> Result<RecordBatch> {
    let f = c.get::<fn(&RecordBatch) -> std::result::Result<ArrayRef, E>>()?;
    let name = c.arg.as_str();
    let col = f(&b).map_err(Into::into)?;
    if col.len() != b.num_rows() {
        return Err(Error::InvalidArgument(format!(
            "add_column(`{name}`): the function returned {} values for {} rows",
            col.len(),
            b.num_rows()
        )));
    }
    let mut fields: Vec<Field> = b.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut cols = b.columns().to_vec();
    match fields.iter().position(|f| f.name() == name) {
        Some(i) => {
            fields[i] = Field::new(name, col.data_type().clone(), true);
            cols[i] = col;
        }
        None => {
            fields.push(Field::new(name, col.data_type().clone(), true));
            cols.push(col);
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// The rows of a batch as values of `T` (through their JSON form).
pub(crate) fn rows_of<T: DeserializeOwned>(b: &RecordBatch) -> Result<Vec<T>> {
    if b.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    w.write(b)?;
    w.finish()?;
    let bytes = w.into_inner();
    serde_json::from_slice(&bytes).map_err(|e| Error::InvalidArgument(format!("rows do not match the row type: {e}")))
}

/// A batch of rows of `T` (each a struct or map of fields).
pub(crate) fn batch_of<T: Serialize>(rows: &[T]) -> Result<RecordBatch> {
    let values: Vec<serde_json::Value> = rows
        .iter()
        .map(serde_json::to_value)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::InvalidArgument(format!("row does not serialize: {e}")))?;
    if values.is_empty() {
        return Ok(RecordBatch::new_empty(crate::block::empty_schema()));
    }
    if let Some(v) = values.iter().find(|v| !v.is_object()) {
        return Err(Error::InvalidArgument(format!(
            "a row must be a struct or map of named fields, got {v}"
        )));
    }
    let schema = arrow::json::reader::infer_json_schema_from_iterator(values.iter().map(Ok))?;
    let mut d = arrow::json::ReaderBuilder::new(Arc::new(schema))
        .with_batch_size(values.len().max(1))
        .build_decoder()?;
    d.serialize(&values)?;
    Ok(d.flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(crate::block::empty_schema())))
}

// ---- sinks ----

/// A file format of the writers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Format {
    Parquet,
    Csv,
    Json,
}

impl Format {
    fn name(&self) -> &'static str {
        match self {
            Format::Parquet => "Parquet",
            Format::Csv => "CSV",
            Format::Json => "JSON",
        }
    }

    pub(crate) fn ext(&self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }
}

/// Where one block is written: a directory on a path or in storage
/// (`rayforge::storage` URI), under a name unique to this write.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Sink {
    pub(crate) format: Format,
    pub(crate) dir: String,
    pub(crate) index: usize,
    /// Names this write's parts, so they never overwrite another write's
    /// (an overwrite or append commits only with its marker).
    pub(crate) write_id: String,
    /// For a local path: the driver's marker, read before writing, so a
    /// node that does not share the path fails instead of writing on its
    /// own disk.
    pub(crate) shared: Option<rayforge::storage::SharedCheck>,
}

impl Sink {
    pub(crate) fn file_name(&self) -> String {
        format!("part-{:05}-{}.{}", self.index, self.write_id, self.format.ext())
    }

    /// Writes to a hidden temporary file, then renames it into place (on a
    /// local path) or uploads it (to storage): a failed write leaves no
    /// partial file behind.
    fn write(&self, b: &RecordBatch) -> Result<()> {
        if let Some(shared) = &self.shared {
            crate::files::verify_shared(shared, &self.dir)?;
        }
        let storage = rayforge::storage::StorageUri::from(self.dir.as_str()).open()?;
        let local_dir = storage.local_path().map(|p| p.to_path_buf());
        let tmp_dir = local_dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&tmp_dir).map_err(|e| Error::io(tmp_dir.display(), e))?;
        let tmp = tmp_dir.join(format!(".{}.tmp", self.file_name()));
        let res = (|| -> Result<()> {
            let f = std::fs::File::create(&tmp).map_err(|e| Error::io(tmp.display(), e))?;
            match self.format {
                Format::Parquet => {
                    let props = parquet::file::properties::WriterProperties::builder()
                        .set_compression(parquet::basic::Compression::SNAPPY)
                        .build();
                    let mut w = parquet::arrow::ArrowWriter::try_new(f, b.schema(), Some(props))?;
                    w.write(b)?;
                    w.close()?;
                }
                Format::Csv => {
                    let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(f);
                    w.write(b)?;
                }
                Format::Json => {
                    let mut w = arrow::json::LineDelimitedWriter::new(std::io::BufWriter::new(f));
                    w.write(b)?;
                    w.finish()?;
                }
            }
            match &local_dir {
                Some(dir) => {
                    let path = dir.join(self.file_name());
                    std::fs::rename(&tmp, &path).map_err(|e| Error::io(path.display(), e))
                }
                None => Ok(storage.put_file(&self.file_name(), &tmp)?),
            }
        })();
        let _ = std::fs::remove_file(&tmp);
        res
    }
}

/// Whether `name` is a part file of a rayforge write (`part-NNNNN-ID.ext`):
/// in a directory without a success marker, such parts are a write that
/// never finished, and readers skip them.
pub(crate) fn is_write_part(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("part-") else {
        return false;
    };
    let mut it = rest.splitn(2, '-');
    let (Some(index), Some(tail)) = (it.next(), it.next()) else {
        return false;
    };
    let id = tail.split('.').next().unwrap_or("");
    index.len() == 5
        && index.bytes().all(|b| b.is_ascii_digit())
        && id.len() == 16
        && id.bytes().all(|b| b.is_ascii_hexdigit())
}

// ---- the stage tasks ----

/// A read (or nothing, for a block that already exists) and the transforms
/// that follow it, run as one task per block.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StageSpec {
    pub(crate) read: Option<ReadTask>,
    pub(crate) ops: Vec<MapOp>,
}

/// A stage's outcome: its block, and the block's (small) description, which
/// the driver reads first. A failed stage fails both. (The stage tasks spell
/// the type out: the macro reads their returns from it.)
pub(crate) type StageResult = std::result::Result<(Block, BlockMeta), Error>;

fn finish(start: Instant, r: Result<RecordBatch>) -> StageResult {
    let block = Block::new(r?);
    let meta = BlockMeta::of(&block, start.elapsed().as_secs_f64());
    Ok((block, meta))
}

/// Keeps freed memory of large batches in this process for the next block
/// instead of handing it back to the kernel and faulting it in again (each
/// fresh page costs a fault and a zeroing; with glibc's defaults most of a
/// decoding task's time went there).
fn tune_allocator() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only sets allocator parameters.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
        }
    });
}

fn run_ops(ops: &[MapOp], mut b: RecordBatch) -> Result<RecordBatch> {
    for op in ops {
        b = op.apply(b)?;
    }
    Ok(b)
}

/// Reads one block and transforms it.
#[rayforge::remote(num_returns = 2)]
pub(crate) fn read_stage(spec: StageSpec) -> std::result::Result<(Block, BlockMeta), Error> {
    tune_allocator();
    let start = Instant::now();
    finish(start, read_and_run(&spec))
}

/// Reads a stage's block and runs its transforms on it.
fn read_and_run(spec: &StageSpec) -> Result<RecordBatch> {
    match &spec.read {
        Some(t) => t.read().and_then(|b| run_ops(&spec.ops, b.into_batch())),
        None => Err(Error::InvalidArgument("read stage without a read".into())),
    }
}

/// Transforms one block.
#[rayforge::remote(num_returns = 2)]
pub(crate) fn map_stage(spec: StageSpec, input: Block) -> std::result::Result<(Block, BlockMeta), Error> {
    tune_allocator();
    let start = Instant::now();
    finish(start, run_ops(&spec.ops, input.into_batch()))
}

/// One output block of a repartition: pieces `(block, offset, len)` of
/// input blocks, concatenated.
#[rayforge::remote(num_returns = 2)]
pub(crate) fn concat_pieces(
    pieces: Vec<(rayforge::ObjectRef<Block>, usize, usize)>,
) -> std::result::Result<(Block, BlockMeta), Error> {
    let start = Instant::now();
    let r = (|| {
        // One blocking get for all pieces (each separate get would lend the
        // CPU back and take it again).
        let refs: Vec<_> = pieces.iter().map(|(r, _, _)| r.clone()).collect();
        let blocks = rayforge::get_all(&refs)?;
        let out = blocks
            .iter()
            .zip(&pieces)
            .map(|(b, (_, off, len))| b.batch().slice(*off, *len))
            .collect();
        concat(out)
    })();
    finish(start, r)
}

/// Zips two blocks of equal length column-wise.
#[rayforge::remote(num_returns = 2)]
pub(crate) fn zip_blocks(left: Block, right: Block) -> std::result::Result<(Block, BlockMeta), Error> {
    let start = Instant::now();
    let r = (|| {
        let (l, r) = (left.batch(), right.batch());
        if l.num_rows() != r.num_rows() {
            return Err(Error::InvalidArgument(format!(
                "zip: blocks of {} and {} rows",
                l.num_rows(),
                r.num_rows()
            )));
        }
        let mut fields: Vec<Field> = l.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut cols = l.columns().to_vec();
        for (f, c) in r.schema().fields().iter().zip(r.columns()) {
            let mut name = f.name().clone();
            let mut k = 1;
            while fields.iter().any(|x| x.name() == &name) {
                name = format!("{}_{k}", f.name());
                k += 1;
            }
            fields.push(f.as_ref().clone().with_name(name));
            cols.push(c.clone());
        }
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
    })();
    finish(start, r)
}

/// Map side of a random shuffle: puts the block's rows in a random order and
/// cuts it into `n` parts (slices of one permuted batch), each its own
/// object: reduce `j` fetches only part `j` of each map.
#[rayforge::remote(split_returns)]
pub(crate) fn shuffle_map(input: Block, n: usize, seed: u64) -> std::result::Result<Vec<Block>, Error> {
    permute_cut(input.batch(), n, seed)
}

/// A read (and its fused transforms) followed by the map side of a random
/// shuffle in the same task: the block read is never stored whole.
/// Called with `n + 1` returns: the `n` parts, then the block's schema with
/// no rows (the driver gets that one to learn the read succeeded without
/// fetching any part).
#[rayforge::remote(split_returns)]
pub(crate) fn read_shuffle_map(spec: StageSpec, n: usize, seed: u64) -> std::result::Result<Vec<Block>, Error> {
    tune_allocator();
    let b = read_and_run(&spec)?;
    let mut parts = permute_cut(&b, n, seed)?;
    parts.push(Block::new(b.slice(0, 0)));
    Ok(parts)
}

/// One part of each map output (one blocking get for all of them).
fn fetch_parts(parts: &[rayforge::ObjectRef<Block>]) -> Result<Vec<RecordBatch>> {
    Ok(rayforge::get_all(parts)?.into_iter().map(Block::into_batch).collect())
}

/// Join, map side: the block's rows cut into `n` parts by the hash of their
/// key columns (the same hash in every process), each its own object.
#[rayforge::remote(split_returns)]
pub(crate) fn hash_partition(input: Block, on: Vec<String>, n: usize) -> std::result::Result<Vec<Block>, Error> {
    let b = input.batch();
    let keys = on
        .iter()
        .map(|k| Ok(b.column(index_of(b, k)?).clone()))
        .collect::<Result<Vec<_>>>()?;
    let mut hashes = vec![0u64; b.num_rows()];
    datafusion::common::hash_utils::create_hashes(
        &keys,
        &datafusion::common::hash_utils::RandomState::with_seed(0),
        &mut hashes,
    )?;
    let n = n.max(1);
    let mut rows: Vec<Vec<u64>> = vec![Vec::new(); n];
    for (i, h) in hashes.iter().enumerate() {
        rows[(h % n as u64) as usize].push(i as u64);
    }
    rows.into_iter()
        .map(|r| Ok(Block::new(take_rows(b, &UInt64Array::from(r))?)))
        .collect()
}

/// Join, reduce side: one hash partition of each side (`left`, `right`: a
/// part of every block), joined by `query` over tables `l` and `r`.
#[rayforge::remote(num_returns = 2)]
pub(crate) fn join_reduce(
    left: Vec<rayforge::ObjectRef<Block>>,
    right: Vec<rayforge::ObjectRef<Block>>,
    left_schema: Block,
    right_schema: Block,
    query: String,
) -> std::result::Result<(Block, BlockMeta), Error> {
    let start = Instant::now();
    let r = (|| {
        let side = |parts: &[rayforge::ObjectRef<Block>], empty: &Block| -> Result<(SchemaRef, Vec<RecordBatch>)> {
            let got: Vec<RecordBatch> = fetch_parts(parts)?.into_iter().filter(|b| b.num_rows() > 0).collect();
            let schema = got.first().map(|b| b.schema()).unwrap_or_else(|| empty.schema());
            Ok((schema, got))
        };
        let (ls, l) = side(&left, &left_schema)?;
        let (rs, r) = side(&right, &right_schema)?;
        sql_over(vec![("l".into(), ls, l), ("r".into(), rs, r)], &query)
    })();
    finish(start, r)
}

/// `b`'s rows in a random order (seeded), cut into `n` parts.
fn permute_cut(b: &RecordBatch, n: usize, seed: u64) -> Result<Vec<Block>> {
    let rows = b.num_rows();
    let n = n.max(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut order: Vec<u64> = (0..rows as u64).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let permuted = take_rows(b, &UInt64Array::from(order))?;
    Ok((0..n)
        .map(|i| {
            let (from, to) = (rows * i / n, rows * (i + 1) / n);
            Block::new(permuted.slice(from, to - from))
        })
        .collect())
}

/// Reduce side of a random shuffle: partition `j` of every map output
/// (`parts`, one per map), concatenated and put in a random order.
#[rayforge::remote(num_returns = 2)]
pub(crate) fn shuffle_reduce(
    parts: Vec<rayforge::ObjectRef<Block>>,
    j: usize,
    seed: u64,
) -> std::result::Result<(Block, BlockMeta), Error> {
    let start = Instant::now();
    let r = (|| {
        // Pick rows straight from the parts in a random order (no
        // concatenated copy first).
        let got: Vec<RecordBatch> = fetch_parts(&parts)?.into_iter().filter(|b| b.num_rows() > 0).collect();
        let Some(first) = got.first() else {
            return concat(Vec::new());
        };
        let schema = first.schema();
        for b in &got {
            if b.schema().fields() != schema.fields() {
                return concat(got.clone());
            }
        }
        // Each part is already in a uniformly random order (its map permuted
        // it), so a uniformly random interleaving of the parts, each read
        // front to back, is a uniformly random order of their union: shuffle
        // which part each output row comes from, not the rows themselves.
        // Reading every part sequentially is far kinder to the caches than
        // picking rows at random.
        let mut from: Vec<u32> = got
            .iter()
            .enumerate()
            .flat_map(|(p, b)| std::iter::repeat_n(p as u32, b.num_rows()))
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (j as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for i in (1..from.len()).rev() {
            from.swap(i, rng.random_range(0..=i));
        }
        let mut next = vec![0usize; got.len()];
        let order: Vec<(usize, usize)> = from
            .into_iter()
            .map(|p| {
                let p = p as usize;
                next[p] += 1;
                (p, next[p] - 1)
            })
            .collect();
        let cols = (0..schema.fields().len())
            .map(|c| {
                let arrays: Vec<&dyn Array> = got.iter().map(|b| b.column(c).as_ref()).collect();
                arrow::compute::interleave(&arrays, &order)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(schema, cols)?)
    })();
    finish(start, r)
}

fn take_rows(b: &RecordBatch, idx: &dyn Array) -> Result<RecordBatch> {
    let cols = b
        .columns()
        .iter()
        .map(|c| arrow::compute::take(c.as_ref(), idx, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(b.schema(), cols)?)
}

/// The options of a sort key: its direction, nulls last either way.
fn sort_options(descending: bool) -> arrow::compute::SortOptions {
    arrow::compute::SortOptions {
        descending,
        nulls_first: false,
    }
}

/// `b`'s rows in the order of `keys` (`(column, descending)`, the first
/// deciding first).
pub(crate) fn sort_rows(b: &RecordBatch, keys: &[(String, bool)]) -> Result<RecordBatch> {
    let columns = keys
        .iter()
        .map(|(k, desc)| {
            Ok(arrow::compute::SortColumn {
                values: b.column(index_of(b, k)?).clone(),
                options: Some(sort_options(*desc)),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let idx = arrow::compute::lexsort_to_indices(&columns, None)?;
    take_rows(b, &idx)
}

/// The key columns of `b`, encoded so that their bytes compare in the
/// sort's order (arrow's row format), with the converter that made them.
fn key_rows(b: &RecordBatch, keys: &[(String, bool)]) -> Result<(arrow::row::RowConverter, arrow::row::Rows)> {
    let mut fields = Vec::with_capacity(keys.len());
    let mut cols = Vec::with_capacity(keys.len());
    for (k, desc) in keys {
        let c = b.column(index_of(b, k)?).clone();
        fields.push(arrow::row::SortField::new_with_options(
            c.data_type().clone(),
            sort_options(*desc),
        ));
        cols.push(c);
    }
    let conv = arrow::row::RowConverter::new(fields)?;
    let rows = conv.convert_columns(&cols)?;
    Ok((conv, rows))
}

/// Sort, first pass: up to `k` evenly spaced rows of the key columns.
#[rayforge::remote]
pub(crate) fn sort_sample(input: Block, keys: Vec<(String, bool)>, k: usize) -> std::result::Result<Block, Error> {
    let b = input.batch();
    let n = b.num_rows();
    let k = k.min(n);
    let idx = UInt64Array::from((0..k).map(|i| (i * n / k.max(1)) as u64).collect::<Vec<_>>());
    let cols = keys
        .iter()
        .map(|(key, _)| {
            Ok((
                key.as_str(),
                arrow::compute::take(b.column(index_of(b, key)?).as_ref(), &idx, None)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Block::new(RecordBatch::try_from_iter(cols)?))
}

/// Sort, map side: sorts the block, then cuts it where the boundaries
/// (rows of the key columns, in sort order) fall: partition `i` holds the
/// rows after boundary `i-1` up to boundary `i`, each partition its own
/// object (called with one return per boundary, plus one).
#[rayforge::remote(split_returns)]
pub(crate) fn sort_map(
    input: Block,
    keys: Vec<(String, bool)>,
    bounds: Block,
) -> std::result::Result<Vec<Block>, Error> {
    let sorted = sort_rows(input.batch(), &keys)?;
    let (conv, rows) = key_rows(&sorted, &keys)?;
    let bounds = bounds.batch();
    let bound_cols = keys
        .iter()
        .map(|(k, _)| Ok(bounds.column(index_of(bounds, k)?).clone()))
        .collect::<Result<Vec<_>>>()?;
    let bound_rows = conv.convert_columns(&bound_cols)?;
    let mut cuts = Vec::with_capacity(bound_rows.num_rows() + 2);
    cuts.push(0usize);
    let n = rows.num_rows();
    for edge in bound_rows.iter() {
        // Rows up to the boundary, in sort order: the rows are sorted, so
        // the first row past it is found by bisection.
        let (mut lo, mut hi) = (*cuts.last().unwrap_or(&0), n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if rows.row(mid) <= edge {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        cuts.push(lo);
    }
    cuts.push(n);
    Ok(cuts
        .windows(2)
        .map(|w| Block::new(sorted.slice(w[0], w[1] - w[0])))
        .collect())
}

/// Sort, reduce side: one partition of every map output (`parts`, one per
/// map), sorted.
#[rayforge::remote(num_returns = 2)]
pub(crate) fn sort_reduce(
    parts: Vec<rayforge::ObjectRef<Block>>,
    keys: Vec<(String, bool)>,
) -> std::result::Result<(Block, BlockMeta), Error> {
    let start = Instant::now();
    let r = (|| {
        let all = concat(fetch_parts(&parts)?)?;
        if all.num_rows() == 0 {
            return Ok(all);
        }
        sort_rows(&all, &keys)
    })();
    finish(start, r)
}

/// Runs a SQL query over batches registered as table `table` (and more
/// tables), in a private single-threaded runtime.
pub(crate) fn sql_over(tables: Vec<(String, SchemaRef, Vec<RecordBatch>)>, query: &str) -> Result<RecordBatch> {
    let mut providers: Vec<(String, Arc<dyn datafusion::catalog::TableProvider>)> = Vec::new();
    for (name, schema, batches) in tables {
        let t = datafusion::datasource::MemTable::try_new(schema, vec![batches])?;
        providers.push((name, Arc::new(t)));
    }
    sql_on(providers, query)
}

/// Runs a SQL query over tables, in a private single-threaded runtime.
fn sql_on(tables: Vec<(String, Arc<dyn datafusion::catalog::TableProvider>)>, query: &str) -> Result<RecordBatch> {
    use datafusion::prelude::SessionContext;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("starting a runtime for SQL: {e}")))?;
    rt.block_on(async {
        let cfg = datafusion::prelude::SessionConfig::new().with_target_partitions(1);
        let ctx = SessionContext::new_with_config(cfg);
        for (name, table) in tables {
            ctx.register_table(name.as_str(), table)?;
        }
        let df = ctx.sql(query).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let out = df.collect().await?;
        Ok(arrow::compute::concat_batches(&schema, &out)?)
    })
}

/// A dataset's blocks as a table DataFusion reads as a stream: each block
/// is fetched from the object store when the query comes to it and let go
/// once consumed, so a query that keeps only its state (an aggregate, a
/// filter, a limit) holds one block at a time, however large the dataset.
#[derive(Debug)]
struct BlockStream {
    schema: SchemaRef,
    blocks: Vec<rayforge::ObjectRef<Block>>,
}

impl datafusion::physical_plan::streaming::PartitionStream for BlockStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(
        &self,
        _ctx: Arc<datafusion::execution::TaskContext>,
    ) -> datafusion::physical_plan::SendableRecordBatchStream {
        use datafusion::error::DataFusionError;
        use futures::StreamExt;
        let schema = self.schema.clone();
        let batches = futures::stream::iter(self.blocks.clone())
            .map(move |r| {
                let batch = r
                    .get()
                    .map_err(|e| DataFusionError::External(Box::new(e)))?
                    .into_batch();
                // Blocks of one dataset share a schema but for the
                // nullability their writers gave it: take the table's.
                RecordBatch::try_new(schema.clone(), batch.columns().to_vec())
                    .map_err(|e| DataFusionError::ArrowError(Box::new(e), None))
            })
            .filter(|b| futures::future::ready(b.as_ref().map_or(true, |b| b.num_rows() > 0)));
        Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
            self.schema.clone(),
            batches,
        ))
    }
}

/// Runs `query` over every block of the input as table `ds`, read block by
/// block as the query goes ([`BlockStream`]).
#[rayforge::remote(num_returns = 2)]
pub(crate) fn sql_stage(
    blocks: Vec<rayforge::ObjectRef<Block>>,
    schema: Block,
    query: String,
) -> std::result::Result<(Block, BlockMeta), Error> {
    let start = Instant::now();
    let r = (|| {
        let schema = schema.schema();
        let table = datafusion::catalog::streaming::StreamingTable::try_new(
            schema.clone(),
            vec![Arc::new(BlockStream { schema, blocks })],
        )?;
        sql_on(vec![("ds".into(), Arc::new(table))], &query)
    })();
    finish(start, r)
}

/// Group-by, reduce side: combines partial aggregates.
#[rayforge::remote(num_returns = 2)]
pub(crate) fn agg_final(
    parts: Vec<rayforge::ObjectRef<Block>>,
    query: String,
) -> std::result::Result<(Block, BlockMeta), Error> {
    let start = Instant::now();
    let r = (|| {
        let batches: Vec<RecordBatch> = rayforge::get_all(&parts)?.into_iter().map(Block::into_batch).collect();
        let schema = batches.first().map(|b| b.schema());
        let schema = schema.ok_or_else(|| Error::InvalidArgument("group-by over no blocks".into()))?;
        sql_over(vec![("partial".into(), schema, batches)], &query)
    })();
    finish(start, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: i64) -> RecordBatch {
        let col: arrow::array::ArrayRef = Arc::new(arrow::array::Int64Array::from((0..n).collect::<Vec<_>>()));
        RecordBatch::try_from_iter([("id", col)]).unwrap()
    }

    fn sink(dir: &std::path::Path, shared: Option<rayforge::storage::SharedCheck>) -> Sink {
        Sink {
            format: Format::Parquet,
            dir: dir.to_string_lossy().into_owned(),
            index: 0,
            write_id: "00000000000000aa".into(),
            shared,
        }
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("rayforge-data-sink-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_sink_that_sees_the_drivers_marker_writes_its_part() {
        let dir = scratch("shared");
        let storage = rayforge::storage::StorageUri::from(dir.as_path()).open().unwrap();
        let check = storage.shared_check().unwrap();
        let s = sink(&dir, Some(check.clone()));
        s.write(&ids(3)).unwrap();
        assert!(dir.join(s.file_name()).is_file());
        check.remove();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A node that does not share the path sees no marker: what the sink
    /// finds when the marker is gone.
    #[test]
    fn a_sink_that_cannot_see_the_drivers_marker_fails_naming_the_path() {
        let dir = scratch("private");
        let storage = rayforge::storage::StorageUri::from(dir.as_path()).open().unwrap();
        let check = storage.shared_check().unwrap();
        check.remove();
        let s = sink(&dir, Some(check));
        let err = s.write(&ids(3)).unwrap_err();
        match &err {
            Error::PathNotShared { path, .. } => assert_eq!(path, &dir.to_string_lossy()),
            other => panic!("expected PathNotShared, got {other:?}"),
        }
        assert!(err.to_string().contains("is not shared by every node"), "{err}");
        assert!(!dir.join(s.file_name()).exists(), "no part written");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
