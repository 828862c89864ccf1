//! The streaming executor: turns a dataset's plan into a stream of blocks.
//!
//! Per-block transforms are fused into the task that reads (or receives) a
//! block. Each operator keeps a bounded window of tasks in flight and hands
//! its blocks downstream in order as they finish, so all operators run at
//! once as a pipeline; the window shrinks to fit a memory budget once block
//! sizes are known, which bounds how much of the object store a pipeline
//! holds (backpressure). All-to-all operations (sort, shuffle, group-by,
//! repartition, SQL, zip) gather their input first.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parking_lot::Mutex;
use rayforge::ObjectRef;

use crate::block::{Block, BlockMeta};
use crate::error::{Error, Result};
use crate::ops::{self, MapOp, StageSpec};
use crate::plan::{AllToAll, Compute, Node};

/// A block in the object store and what is known about it.
#[derive(Clone)]
pub(crate) struct BlockRef {
    pub(crate) block: ObjectRef<Block>,
    pub(crate) meta: BlockMeta,
}

pub(crate) type BlockIter = Box<dyn Iterator<Item = Result<BlockRef>> + Send>;
type Pending = (ObjectRef<Block>, ObjectRef<BlockMeta>);
type Submits = Box<dyn Iterator<Item = Result<Pending>> + Send>;

/// Counters of one operator.
pub(crate) struct OpStats {
    pub(crate) name: String,
    pub(crate) blocks: AtomicU64,
    pub(crate) rows: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) task_micros: AtomicU64,
    pub(crate) running: AtomicU64,
    /// Actors of an actor-pool operator.
    pub(crate) actors: AtomicU64,
    start: Instant,
    pub(crate) wall_micros: AtomicU64,
}

/// Counters of one execution.
#[derive(Default)]
pub(crate) struct ExecStats {
    pub(crate) ops: Mutex<Vec<Arc<OpStats>>>,
}

impl ExecStats {
    pub(crate) fn op(&self, name: String) -> Arc<OpStats> {
        let s = Arc::new(OpStats {
            name,
            blocks: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            task_micros: AtomicU64::new(0),
            running: AtomicU64::new(0),
            actors: AtomicU64::new(0),
            start: Instant::now(),
            wall_micros: AtomicU64::new(0),
        });
        self.ops.lock().push(s.clone());
        s
    }

    /// A table: operator, blocks, rows, bytes, task time, wall time.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.ops.lock().iter().enumerate() {
            let actors = s.actors.load(Ordering::Relaxed);
            if actors > 0 {
                out.push_str(&format!("Operator {i} {}: {actors} actors\n", s.name));
            }
            out.push_str(&format!(
                "Operator {i} {}: {} blocks, {} rows, {:.1} MB, {:.3} s in tasks, {:.3} s wall\n",
                s.name,
                s.blocks.load(Ordering::Relaxed),
                s.rows.load(Ordering::Relaxed),
                s.bytes.load(Ordering::Relaxed) as f64 / 1e6,
                s.task_micros.load(Ordering::Relaxed) as f64 / 1e6,
                s.wall_micros.load(Ordering::Relaxed) as f64 / 1e6,
            ));
        }
        out
    }

    fn progress_line(&self) -> String {
        self.ops
            .lock()
            .iter()
            .map(|s| {
                format!(
                    "{}: {} blocks, {} rows, {} running",
                    s.name,
                    s.blocks.load(Ordering::Relaxed),
                    s.rows.load(Ordering::Relaxed),
                    s.running.load(Ordering::Relaxed)
                )
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

impl OpStats {
    pub(crate) fn record(&self, m: &BlockMeta) {
        self.blocks.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(m.rows, Ordering::Relaxed);
        self.bytes.fetch_add(m.bytes, Ordering::Relaxed);
        self.task_micros.fetch_add((m.secs * 1e6) as u64, Ordering::Relaxed);
        self.wall_micros
            .store(self.start.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

/// Settings of one execution.
#[derive(Clone)]
pub(crate) struct Ctx {
    /// Most tasks one operator keeps in flight.
    pub(crate) max_window: usize,
    /// Bytes of finished blocks one operator may hold ahead of its consumer.
    pub(crate) budget: u64,
    pub(crate) stats: Arc<ExecStats>,
}

impl Ctx {
    pub(crate) fn new() -> Ctx {
        let cpus = rayforge::cluster_resources()
            .ok()
            .and_then(|r| r.total.get("CPU").copied())
            .unwrap_or(2.0)
            .max(1.0) as usize;
        let store = rayforge::store_stats().map(|s| s.capacity_bytes).unwrap_or(1 << 30);
        Ctx {
            max_window: (cpus * 2).max(2),
            budget: (store / 4).max(1 << 20),
            stats: Arc::new(ExecStats::default()),
        }
    }
}

/// Keeps up to `window` tasks in flight and yields their blocks in order.
struct Window {
    source: Submits,
    source_done: bool,
    pending: VecDeque<Pending>,
    ctx: Ctx,
    stats: Arc<OpStats>,
    failed: bool,
}

impl Window {
    fn new(ctx: &Ctx, name: String, source: Submits) -> Window {
        Window {
            source,
            source_done: false,
            pending: VecDeque::new(),
            stats: ctx.stats.op(name),
            ctx: ctx.clone(),
            failed: false,
        }
    }

    fn window(&self) -> usize {
        let blocks = self.stats.blocks.load(Ordering::Relaxed);
        if blocks == 0 {
            return self.ctx.max_window.min(4);
        }
        let avg = (self.stats.bytes.load(Ordering::Relaxed) / blocks).max(1);
        ((self.ctx.budget / avg) as usize).clamp(1, self.ctx.max_window)
    }
}

impl Iterator for Window {
    type Item = Result<BlockRef>;

    fn next(&mut self) -> Option<Result<BlockRef>> {
        if self.failed {
            return None;
        }
        while !self.source_done && self.pending.len() < self.window() {
            match self.source.next() {
                Some(Ok(p)) => {
                    self.stats.running.fetch_add(1, Ordering::Relaxed);
                    self.pending.push_back(p)
                }
                Some(Err(e)) => {
                    self.failed = true;
                    return Some(Err(e));
                }
                None => self.source_done = true,
            }
        }
        let (block, out) = self.pending.pop_front()?;
        self.stats.running.fetch_sub(1, Ordering::Relaxed);
        let r = match out.get() {
            Err(e) => Err(Error::from(e)),
            Ok(meta) => {
                self.stats.record(&meta);
                Ok(BlockRef { block, meta })
            }
        };
        if r.is_err() {
            self.failed = true;
        }
        Some(r)
    }
}

fn opts(c: &Compute) -> rayforge::TaskOptions {
    rayforge::TaskOptions {
        num_cpus: c.num_cpus,
        num_gpus: c.num_gpus,
        ..Default::default()
    }
}

fn stage_name(head: &str, ops: &[MapOp]) -> String {
    let mut parts = vec![head.to_string()];
    parts.extend(ops.iter().map(|o| o.name()));
    parts.join("->")
}

/// Runs a plan node, yielding its blocks in order.
pub(crate) fn execute(node: &Arc<Node>, ctx: &Ctx) -> Result<BlockIter> {
    Ok(match node.as_ref() {
        Node::Read { tasks, .. } => {
            let name = tasks.first().map(|t| t.kind()).unwrap_or("Read").to_string();
            read_window(ctx, name, tasks.clone(), Vec::new(), &Compute::default())
        }
        Node::Blocks { blocks, .. } => Box::new(blocks.clone().into_iter().map(Ok)),
        Node::Map { input, ops, compute } => match input.as_ref() {
            Node::Read { tasks, .. } => {
                let name = tasks.first().map(|t| t.kind()).unwrap_or("Read");
                read_window(ctx, stage_name(name, ops), tasks.clone(), ops.clone(), compute)
            }
            _ => {
                let upstream = execute(input, ctx)?;
                let spec = StageSpec {
                    read: None,
                    ops: ops.clone(),
                };
                let o = opts(compute);
                let src = upstream
                    .map(move |r| r.map(|br| ops::map_stage::Options(o.clone()).remote(spec.clone(), br.block)));
                Box::new(Window::new(ctx, stage_name("Map", ops), Box::new(src)))
            }
        },
        Node::ActorMap { input, spec, size } => Box::new(crate::pool::ActorPoolOp::new(
            ctx,
            execute(input, ctx)?,
            spec.clone(),
            size.clone(),
        )?),
        Node::Limit { input, n } => Box::new(Limit {
            upstream: execute(input, ctx)?,
            left: *n,
            ctx: ctx.clone(),
        }),
        Node::Union(inputs) => {
            let inputs = inputs.clone();
            let ctx = ctx.clone();
            Box::new(inputs.into_iter().flat_map(move |n| match execute(&n, &ctx) {
                Ok(it) => it,
                Err(e) => Box::new(std::iter::once(Err(e))),
            }))
        }
        Node::AllToAll { input, op } => {
            if let (AllToAll::Shuffle(seed), Some((tasks, ops, compute))) = (op, fusable_read(input)) {
                return Ok(Box::new(
                    read_and_shuffle(ctx, tasks, ops, &compute, *seed)?.into_iter().map(Ok),
                ));
            }
            let blocks = collect(execute(input, ctx)?)?;
            Box::new(all_to_all(op, blocks, ctx)?.into_iter().map(Ok))
        }
        Node::Zip(a, b) => {
            let left = collect(execute(a, ctx)?)?;
            let right = collect(execute(b, ctx)?)?;
            Box::new(zip(left, right, ctx)?.into_iter().map(Ok))
        }
        Node::Join { left, right, on, how } => {
            let l = collect(execute(left, ctx)?)?;
            let r = collect(execute(right, ctx)?)?;
            Box::new(join(l, r, on, *how, ctx)?.into_iter().map(Ok))
        }
    })
}

/// A hash join: every block of both sides is cut into `n` parts by the hash
/// of its key columns (each part its own object), then reduce `j` joins
/// part `j` of the left side with part `j` of the right, where all rows of
/// a key meet, in DataFusion.
fn join(
    left: Vec<BlockRef>,
    right: Vec<BlockRef>,
    on: &[String],
    how: crate::JoinType,
    ctx: &Ctx,
) -> Result<Vec<BlockRef>> {
    let schema_of = |blocks: &[BlockRef], side: &str| {
        blocks.first().map(|b| b.meta.schema.schema()).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "join: the {side} dataset has no blocks, so no columns to join on"
            ))
        })
    };
    let (ls, rs) = (schema_of(&left, "left")?, schema_of(&right, "right")?);
    if on.is_empty() {
        return Err(Error::InvalidArgument("join needs at least one key column".into()));
    }
    for k in on {
        let field = |s: &SchemaRef, side: &str| {
            s.field_with_name(k).map(|f| f.data_type().clone()).map_err(|_| {
                Error::InvalidArgument(format!(
                    "join key `{k}` is not a column of the {side} dataset (columns: {})",
                    s.fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
        };
        let (lt, rt) = (field(&ls, "left")?, field(&rs, "right")?);
        if lt != rt {
            return Err(Error::InvalidArgument(format!(
                "join key `{k}` is {lt} on the left and {rt} on the right: cast one side first"
            )));
        }
    }
    let n = left.len().max(right.len()).max(1);
    let cut = |blocks: &[BlockRef]| -> Vec<Vec<ObjectRef<Block>>> {
        blocks
            .iter()
            .map(|b| ops::hash_partition::remote(n, &b.block, on.to_vec(), n))
            .collect()
    };
    let (lm, rm) = (cut(&left), cut(&right));
    wait_maps(&lm)?;
    wait_maps(&rm)?;
    let query = crate::join_query(&ls, &rs, on, how);
    let (le, re) = (Block::empty(ls), Block::empty(rs));
    let pending = (0..n)
        .map(|j| ops::join_reduce::remote(part_j(&lm, j), part_j(&rm, j), le.clone(), re.clone(), query.clone()))
        .collect();
    run_pending(ctx, "Join", pending)
}

/// A read, possibly with transforms fused into it: its tasks, transforms and
/// resources.
fn fusable_read(node: &Node) -> Option<(Vec<crate::source::ReadTask>, Vec<MapOp>, Compute)> {
    match node {
        Node::Read { tasks, .. } => Some((tasks.clone(), Vec::new(), Compute::default())),
        Node::Map { input, ops, compute } => match input.as_ref() {
            Node::Read { tasks, .. } => Some((tasks.clone(), ops.clone(), compute.clone())),
            _ => None,
        },
        _ => None,
    }
}

/// A random shuffle straight from a read: each read task also permutes its
/// block and cuts it into parts (the block is never stored whole); reduces
/// then interleave one part of each.
fn read_and_shuffle(
    ctx: &Ctx,
    tasks: Vec<crate::source::ReadTask>,
    ops: Vec<MapOp>,
    c: &Compute,
    seed: u64,
) -> Result<Vec<BlockRef>> {
    let n = tasks.len().max(1);
    let o = rayforge::TaskOptions {
        scheduling_strategy: rayforge::SchedulingStrategy::Spread,
        ..opts(c)
    };
    let mut maps: Vec<Vec<ObjectRef<Block>>> = tasks
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            ops::read_shuffle_map::Options(o.clone()).remote(
                n + 1,
                StageSpec {
                    read: Some(t),
                    ops: ops.clone(),
                },
                n,
                seed.wrapping_add(i as u64),
            )
        })
        .collect();
    // Each map's last return is its schema alone (no rows): getting it says
    // the read went well, and a task's returns are ready together, so every
    // part exists too (the reduces below may start).
    let done: Vec<ObjectRef<Block>> = maps.iter_mut().filter_map(|m| m.pop()).collect();
    rayforge::get_all(&done)?;
    let pending = (0..n)
        .map(|j| ops::shuffle_reduce::remote(part_j(&maps, j), j, seed))
        .collect();
    run_pending(ctx, "RandomShuffle", pending)
}

fn read_window(
    ctx: &Ctx,
    name: String,
    tasks: Vec<crate::source::ReadTask>,
    ops: Vec<MapOp>,
    c: &Compute,
) -> BlockIter {
    // Reads spread over the nodes (as Ray Data's do), so a cluster's blocks
    // start out spread over its nodes and stores.
    let o = rayforge::TaskOptions {
        scheduling_strategy: rayforge::SchedulingStrategy::Spread,
        ..opts(c)
    };
    let src = tasks.into_iter().map(move |t| {
        Ok(ops::read_stage::Options(o.clone()).remote(StageSpec {
            read: Some(t),
            ops: ops.clone(),
        }))
    });
    Box::new(Window::new(ctx, name, Box::new(src)))
}

/// Runs the stream to the end.
pub(crate) fn collect(it: BlockIter) -> Result<Vec<BlockRef>> {
    it.collect()
}

/// Stops after `left` rows, cutting the last block.
struct Limit {
    upstream: BlockIter,
    left: u64,
    ctx: Ctx,
}

impl Iterator for Limit {
    type Item = Result<BlockRef>;

    fn next(&mut self) -> Option<Result<BlockRef>> {
        if self.left == 0 {
            return None;
        }
        let br = match self.upstream.next()? {
            Ok(b) => b,
            Err(e) => return Some(Err(e)),
        };
        if br.meta.rows <= self.left {
            self.left -= br.meta.rows;
            return Some(Ok(br));
        }
        let spec = StageSpec {
            read: None,
            ops: vec![MapOp::Slice {
                offset: 0,
                len: self.left as usize,
            }],
        };
        self.left = 0;
        let p = ops::map_stage::remote(spec, br.block);
        Window::new(&self.ctx, "Limit".into(), Box::new(std::iter::once(Ok(p)))).next()
    }
}

/// Pieces of `blocks` that make consecutive output blocks of `sizes` rows.
fn slice_plan(blocks: &[BlockRef], sizes: &[u64]) -> Vec<Vec<(ObjectRef<Block>, usize, usize)>> {
    let mut out = Vec::new();
    let (mut bi, mut off) = (0usize, 0u64);
    for &want in sizes {
        let mut pieces = Vec::new();
        let mut need = want;
        while need > 0 && bi < blocks.len() {
            let avail = blocks[bi].meta.rows - off;
            let take = avail.min(need);
            if take > 0 {
                pieces.push((blocks[bi].block.clone(), off as usize, take as usize));
            }
            need -= take;
            off += take;
            if off == blocks[bi].meta.rows {
                bi += 1;
                off = 0;
            }
        }
        out.push(pieces);
    }
    out
}

fn run_pending(ctx: &Ctx, name: &str, pending: Vec<Pending>) -> Result<Vec<BlockRef>> {
    let mut w = Window::new(ctx, name.to_string(), Box::new(pending.into_iter().map(Ok)));
    w.ctx.max_window = usize::MAX;
    w.ctx.budget = u64::MAX;
    collect(Box::new(w))
}

/// Part `j` of each map's output (`maps[i]` holds map `i`'s parts, each its
/// own object): what reduce `j` reads, and nothing else.
fn part_j(maps: &[Vec<ObjectRef<Block>>], j: usize) -> Vec<ObjectRef<Block>> {
    maps.iter().filter_map(|m| m.get(j).cloned()).collect()
}

/// Waits until every map task is done (a task's returns are ready
/// together, so waiting on each one's first part is enough). Reduce tasks
/// name the parts inside a value, not as arguments, so the runtime would
/// dispatch a reduce before its inputs are ready; one that then waits in
/// `get` holds a worker the map tasks need.
fn wait_maps(maps: &[Vec<ObjectRef<Block>>]) -> Result<()> {
    let firsts: Vec<ObjectRef<Block>> = maps.iter().filter_map(|m| m.first().cloned()).collect();
    wait_all(&firsts)
}

fn wait_all<T>(refs: &[ObjectRef<T>]) -> Result<()> {
    if !refs.is_empty() {
        rayforge::wait(refs, refs.len(), None)?;
    }
    Ok(())
}

fn total_rows(blocks: &[BlockRef]) -> u64 {
    blocks.iter().map(|b| b.meta.rows).sum()
}

fn even_sizes(total: u64, n: usize) -> Vec<u64> {
    let n = n.max(1) as u64;
    (0..n).map(|i| total * (i + 1) / n - total * i / n).collect()
}

fn all_to_all(op: &AllToAll, blocks: Vec<BlockRef>, ctx: &Ctx) -> Result<Vec<BlockRef>> {
    match op {
        AllToAll::Repartition(n) => {
            let plan = slice_plan(&blocks, &even_sizes(total_rows(&blocks), *n));
            let pending = plan.into_iter().map(ops::concat_pieces::remote).collect();
            run_pending(ctx, "Repartition", pending)
        }
        AllToAll::Slice { offset, len } => {
            let total = total_rows(&blocks);
            let start = (*offset).min(total);
            let plan = slice_plan(&blocks, &[start, (*len).min(total - start)]);
            let pending = plan
                .into_iter()
                .nth(1)
                .unwrap_or_default()
                .into_iter()
                .map(|piece| ops::concat_pieces::remote(vec![piece]))
                .collect();
            run_pending(ctx, "Split", pending)
        }
        AllToAll::Shuffle(seed) => {
            let n = blocks.len().max(1);
            let maps: Vec<Vec<ObjectRef<Block>>> = blocks
                .iter()
                .enumerate()
                .map(|(i, b)| ops::shuffle_map::remote(n, &b.block, n, seed.wrapping_add(i as u64)))
                .collect();
            wait_maps(&maps)?;
            let pending = (0..n)
                .map(|j| ops::shuffle_reduce::remote(part_j(&maps, j), j, *seed))
                .collect();
            run_pending(ctx, "RandomShuffle", pending)
        }
        AllToAll::Sort { keys } => {
            if keys.is_empty() {
                return Err(Error::InvalidArgument("sort_by needs at least one key".into()));
            }
            let n = blocks.len().max(1);
            let samples: Vec<ObjectRef<Block>> = blocks
                .iter()
                .map(|b| ops::sort_sample::remote(&b.block, keys.clone(), 64usize))
                .collect();
            let mut got = Vec::new();
            for s in &samples {
                got.push(s.get()?.into_batch());
            }
            let all = ops::concat(got)?;
            // n - 1 evenly spaced rows of the sorted samples cut the key
            // space into n ranges.
            let bounds = if all.num_rows() == 0 || all.num_columns() == 0 {
                Block::new(RecordBatch::new_empty(all.schema()))
            } else {
                let sorted = ops::sort_rows(&all, keys)?;
                let m = sorted.num_rows();
                let idx: Vec<u64> = (1..n).map(|i| (i * m / n) as u64).collect();
                let cols = sorted
                    .columns()
                    .iter()
                    .map(|c| arrow::compute::take(c.as_ref(), &arrow::array::UInt64Array::from(idx.clone()), None))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Block::new(RecordBatch::try_new(sorted.schema(), cols)?)
            };
            let k = bounds.num_rows() + 1;
            let maps: Vec<Vec<ObjectRef<Block>>> = blocks
                .iter()
                .map(|b| ops::sort_map::remote(k, &b.block, keys.clone(), bounds.clone()))
                .collect();
            wait_maps(&maps)?;
            let pending = (0..k)
                .map(|j| ops::sort_reduce::remote(part_j(&maps, j), keys.clone()))
                .collect();
            run_pending(ctx, "Sort", pending)
        }
        AllToAll::Sql { query } => {
            let schema = blocks
                .first()
                .map(|b| b.meta.schema.schema())
                .unwrap_or_else(crate::block::empty_schema);
            let refs: Vec<ObjectRef<Block>> = blocks.iter().map(|b| b.block.clone()).collect();
            run_pending(
                ctx,
                "SQL",
                vec![ops::sql_stage::remote(
                    refs,
                    Block::empty(schema.clone()),
                    query.clone(),
                )],
            )
        }
        AllToAll::Aggregate { combine } => {
            if blocks.is_empty() {
                return Ok(Vec::new());
            }
            let parts: Vec<ObjectRef<Block>> = blocks.iter().map(|b| b.block.clone()).collect();
            run_pending(ctx, "Aggregate", vec![ops::agg_final::remote(parts, combine.clone())])
        }
    }
}

fn zip(left: Vec<BlockRef>, right: Vec<BlockRef>, ctx: &Ctx) -> Result<Vec<BlockRef>> {
    let (l, r) = (total_rows(&left), total_rows(&right));
    if l != r {
        return Err(Error::InvalidArgument(format!(
            "zip needs datasets of equal length; got {l} and {r} rows"
        )));
    }
    let sizes: Vec<u64> = left.iter().map(|b| b.meta.rows).collect();
    let plan = slice_plan(&right, &sizes);
    let pending = left
        .iter()
        .zip(plan)
        .map(|(lb, pieces)| {
            let (rb, _) = ops::concat_pieces::remote(pieces);
            ops::zip_blocks::remote(&lb.block, rb)
        })
        .collect();
    run_pending(ctx, "Zip", pending)
}

/// Prints progress to stderr while a long execution runs (from its third
/// second on).
pub(crate) struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    pub(crate) fn start(what: &str, stats: Arc<ExecStats>) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let what = what.to_string();
        let thread = std::thread::Builder::new()
            .name("rayforge-data-progress".into())
            .spawn(move || {
                let start = Instant::now();
                // A terminal gets one line rewritten every second; a log, a
                // new line every ten seconds.
                let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
                let every = if tty { 1 } else { 10 };
                let mut printed = false;
                let mut next = Duration::from_secs(2);
                while !s.load(Ordering::Relaxed) {
                    std::thread::park_timeout(Duration::from_millis(250));
                    let t = start.elapsed();
                    if s.load(Ordering::Relaxed) || t < next {
                        continue;
                    }
                    next = t + Duration::from_secs(every);
                    let line = format!("[data {what} {:.0}s] {}", t.as_secs_f64(), stats.progress_line());
                    if tty {
                        eprint!("\r{line}\x1b[K");
                        let _ = std::io::stderr().flush();
                    } else {
                        eprintln!("{line}");
                    }
                    printed = true;
                }
                if printed {
                    let line = format!(
                        "[data {what} done in {:.1}s] {}",
                        start.elapsed().as_secs_f64(),
                        stats.progress_line()
                    );
                    if tty {
                        eprintln!("\r{line}\x1b[K");
                    } else {
                        eprintln!("{line}");
                    }
                }
            })
            .ok();
        Progress { stop, thread }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
