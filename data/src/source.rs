//! Sources: finding input files, planning read tasks (one block each) on the
//! driver, and running them in tasks.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::{ArrowPredicateFn, ParquetRecordBatchReaderBuilder, RowFilter};
use serde::{Deserialize, Serialize};

use crate::block::Block;
use crate::error::{Error, Result};
use crate::expr::Expr;

/// Options of [`read_parquet_with`](crate::read_parquet_with).
#[derive(Clone, Debug, Default)]
pub struct ParquetOptions {
    /// Read only these columns (all when `None`).
    pub columns: Option<Vec<String>>,
    /// Keep only rows where this holds; row groups whose statistics rule it
    /// out are never read.
    pub filter: Option<Expr>,
}

/// Options of [`read_csv_with`](crate::read_csv_with) and
/// [`read_json_with`](crate::read_json_with).
#[derive(Clone, Debug)]
pub struct TextOptions {
    /// Bytes per read task: a larger file is read in chunks cut at line
    /// ends, each chunk a block of its own read by its own task (as
    /// DataFusion's byte-range file scans). 0: one block per file.
    pub chunk_bytes: u64,
    /// Values may hold newlines (quoted CSV fields spanning lines): each file
    /// is then read whole by one task, as a cut at a line end could fall
    /// inside a value.
    pub newlines_in_values: bool,
}

impl Default for TextOptions {
    /// 64 MiB chunks; no newlines inside values.
    fn default() -> Self {
        TextOptions {
            chunk_bytes: 64 << 20,
            newlines_in_values: false,
        }
    }
}

/// One read, making one block.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum ReadTask {
    Range {
        start: i64,
        end: i64,
    },
    Parquet {
        path: String,
        row_groups: Vec<usize>,
        columns: Option<Vec<String>>,
        filter: Option<Expr>,
    },
    Csv {
        path: String,
        schema: Block,
        /// The bytes whose lines this task reads (every line starting in
        /// them); `None`: the whole file.
        range: Option<(u64, u64)>,
    },
    Json {
        path: String,
        schema: Block,
        range: Option<(u64, u64)>,
    },
}

impl ReadTask {
    /// A short name for progress lines and stats.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ReadTask::Range { .. } => "Range",
            ReadTask::Parquet { .. } => "ReadParquet",
            ReadTask::Csv { .. } => "ReadCSV",
            ReadTask::Json { .. } => "ReadJSON",
        }
    }

    pub(crate) fn read(&self) -> Result<Block> {
        match self {
            ReadTask::Range { start, end } => {
                let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(*start..*end));
                Ok(Block::new(RecordBatch::try_from_iter([("id", ids)])?))
            }
            ReadTask::Parquet {
                path,
                row_groups,
                columns,
                filter,
            } => read_parquet_groups(path, row_groups, columns.as_deref(), filter.as_ref()),
            ReadTask::Csv {
                path,
                schema,
                range: None,
            } => read_csv_file(path, schema.schema()),
            ReadTask::Csv {
                path,
                schema,
                range: Some(r),
            } => read_csv_chunk(path, schema.schema(), *r),
            ReadTask::Json {
                path,
                schema,
                range: None,
            } => read_json_file(path, schema.schema()),
            ReadTask::Json {
                path,
                schema,
                range: Some(r),
            } => read_json_chunk(path, schema.schema(), *r),
        }
    }
}

/// Splits `0..n` into `blocks` read tasks of (nearly) equal size.
pub(crate) fn plan_range(n: u64, blocks: usize) -> Vec<ReadTask> {
    let n = n as i64;
    let blocks = (blocks.max(1) as i64).min(n.max(1));
    (0..blocks)
        .map(|i| ReadTask::Range {
            start: n * i / blocks,
            end: n * (i + 1) / blocks,
        })
        .collect()
}

/// Expands files, directories (all files inside, recursively, ending in
/// `ext`) and glob patterns (`*`, `?` in any path component) into a sorted
/// list of files. A path that matches nothing is an error.
pub(crate) fn expand_paths(paths: &[String], ext: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for p in paths {
        let before = out.len();
        if crate::files::is_remote(p) {
            // A directory in storage (its committed files), or one file.
            let storage = rayforge::storage::StorageUri::from(p.as_str()).open()?;
            let files = crate::files::committed_files(&storage, ext)?;
            if files.is_empty() && p.ends_with(ext) {
                out.push(p.clone());
            } else {
                out.extend(files.iter().map(|k| storage.uri_of(k)));
            }
        } else if p.contains(['*', '?']) {
            glob(p, &mut out)?;
        } else {
            let path = Path::new(p);
            if path.is_dir() {
                let storage = rayforge::storage::StorageUri::from(path).open()?;
                let files = crate::files::committed_files(&storage, ext)?;
                out.extend(files.iter().map(|k| path.join(k).display().to_string()));
            } else if path.is_file() {
                out.push(p.clone());
            }
        }
        if out.len() == before {
            return Err(Error::NotFound(p.clone()));
        }
    }
    Ok(out)
}

fn glob(pattern: &str, out: &mut Vec<String>) -> Result<()> {
    let absolute = pattern.starts_with('/');
    let parts: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let mut current = vec![PathBuf::from(if absolute { "/" } else { "." })];
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let mut next = Vec::new();
        for base in &current {
            if !part.contains(['*', '?']) {
                let p = base.join(part);
                if p.exists() {
                    next.push(p);
                }
                continue;
            }
            let Ok(rd) = std::fs::read_dir(base) else { continue };
            let mut names: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .filter(|e| wildcard(part, &e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .collect();
            names.sort();
            next.extend(names);
        }
        current = next.into_iter().filter(|p| !last || p.is_file()).collect();
    }
    for p in current {
        let s = p.display().to_string();
        out.push(s.strip_prefix("./").map(str::to_string).unwrap_or(s));
    }
    Ok(())
}

/// Shell-style matching of `*` (any run) and `?` (one character).
fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Opens a file to read: a local path, or a file in storage (downloaded
/// into this node's cache first).
fn open(path: &str) -> Result<File> {
    let local = crate::files::localize(path)?;
    File::open(&local).map_err(|e| Error::io(path, e))
}

/// Opens a file the driver listed, in the task that reads it: a local
/// path missing here is one the nodes do not share (or one removed since
/// the driver listed it): [`Error::PathNotShared`], naming the node, not a
/// plain "not found".
fn open_listed(path: &str) -> Result<File> {
    let local = crate::files::localize(path)?;
    File::open(&local).map_err(|e| {
        if e.kind() != std::io::ErrorKind::NotFound || crate::files::is_remote(path) {
            return Error::io(path, e);
        }
        Error::PathNotShared {
            node: rayforge::node_id().unwrap_or_else(|_| "(unknown)".into()),
            path: path.to_string(),
            what: "a file the driver listed for this read".into(),
            hint: " (or the file was removed after the driver listed it)".into(),
            source: Box::new(rayforge::Error::Storage {
                uri: path.to_string(),
                message: e.to_string(),
                retriable: false,
            }),
        }
    })
}

/// Reads every file's footer: checks the schemas agree, drops row groups the
/// filter rules out, and makes one read task per remaining row group.
pub(crate) fn plan_parquet(files: &[String], opts: &ParquetOptions) -> Result<(Vec<ReadTask>, SchemaRef)> {
    let mut tasks = Vec::new();
    let mut first: Option<(String, SchemaRef)> = None;
    for path in files {
        let b = ParquetRecordBatchReaderBuilder::try_new(open(path)?)
            .map_err(|e| Error::Parquet(format!("{path}: {e}")))?;
        let schema = b.schema().clone();
        match &first {
            None => first = Some((path.clone(), schema.clone())),
            Some((p0, s0)) if s0.fields() != schema.fields() => {
                return Err(Error::SchemaMismatch {
                    what: format!("{path} (vs {p0})"),
                    expected: fields(s0),
                    found: fields(&schema),
                });
            }
            Some(_) => {}
        }
        if let Some(cols) = &opts.columns {
            for c in cols {
                if schema.index_of(c).is_err() {
                    return Err(Error::NoSuchColumn {
                        column: c.clone(),
                        available: fields(&schema),
                    });
                }
            }
        }
        let md = b.metadata();
        let groups = md.num_row_groups();
        let keep = match &opts.filter {
            None => vec![true; groups],
            Some(f) => {
                for c in f.columns() {
                    if schema.index_of(&c).is_err() {
                        return Err(Error::NoSuchColumn {
                            column: c,
                            available: fields(&schema),
                        });
                    }
                }
                let stats = |c: &str| -> Option<(ArrayRef, ArrayRef)> {
                    let conv = StatisticsConverter::try_new(c, &schema, md.file_metadata().schema_descr()).ok()?;
                    let mins = conv.row_group_mins(md.row_groups().iter()).ok()?;
                    let maxes = conv.row_group_maxes(md.row_groups().iter()).ok()?;
                    Some((mins, maxes))
                };
                f.may_match(groups, &stats)?
            }
        };
        for (g, k) in keep.into_iter().enumerate() {
            if k {
                tasks.push(ReadTask::Parquet {
                    path: path.clone(),
                    row_groups: vec![g],
                    columns: opts.columns.clone(),
                    filter: opts.filter.clone(),
                });
            }
        }
    }
    let schema = first.map(|(_, s)| s).unwrap_or_else(crate::block::empty_schema);
    let schema = match &opts.columns {
        Some(cols) => {
            Arc::new(schema.project(&cols.iter().filter_map(|c| schema.index_of(c).ok()).collect::<Vec<_>>())?)
        }
        None => schema,
    };
    Ok((tasks, schema))
}

fn fields(s: &Schema) -> String {
    s.fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn read_parquet_groups(
    path: &str,
    groups: &[usize],
    columns: Option<&[String]>,
    filter: Option<&Expr>,
) -> Result<Block> {
    let ctx = |e: parquet::errors::ParquetError| Error::Parquet(format!("{path}: {e}"));
    let b = ParquetRecordBatchReaderBuilder::try_new(open_listed(path)?).map_err(ctx)?;
    let schema = b.schema().clone();
    let descr = b.metadata().file_metadata().schema_descr_ptr();
    let roots = |names: &[String]| -> Vec<usize> { names.iter().filter_map(|c| schema.index_of(c).ok()).collect() };
    let mut b = b.with_row_groups(groups.to_vec()).with_batch_size(64 * 1024);
    let out_schema = match columns {
        Some(cols) => {
            let idx = roots(cols);
            b = b.with_projection(ProjectionMask::roots(&descr, idx.clone()));
            Arc::new(schema.project(&idx)?)
        }
        None => schema.clone(),
    };
    if let Some(f) = filter {
        let mask = ProjectionMask::roots(&descr, roots(&f.columns()));
        let f = f.clone();
        let pred = ArrowPredicateFn::new(mask, move |batch| {
            f.evaluate(&batch)
                .map_err(|e| arrow::error::ArrowError::ComputeError(e.to_string()))
        });
        b = b.with_row_filter(RowFilter::new(vec![Box::new(pred)]));
    }
    let reader = b.build().map_err(ctx)?;
    let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
    let out_schema = batches.first().map(|b| b.schema()).unwrap_or(out_schema);
    Ok(Block::new(arrow::compute::concat_batches(&out_schema, &batches)?))
}

/// Infers the schema of CSV files (from each file's first rows) and checks
/// the files agree: same columns in the same order; an integer column may
/// widen to float, any other difference is an error.
pub(crate) fn plan_csv(files: &[String], opts: &TextOptions) -> Result<(Vec<ReadTask>, SchemaRef)> {
    plan_text(
        files,
        "CSV",
        opts,
        // The data starts after the header line.
        |path| {
            let mut header = Vec::new();
            BufReader::new(open(path)?)
                .read_until(b'\n', &mut header)
                .map_err(|e| Error::io(path, e))?;
            Ok(header.len() as u64)
        },
        |path| {
            let f = open(path)?;
            let (s, _) = arrow::csv::reader::Format::default()
                .with_header(true)
                .infer_schema(f, Some(1000))
                .map_err(|e| parse_error(path, &e.to_string(), 1))?;
            Ok(s)
        },
        |path, schema, range| ReadTask::Csv { path, schema, range },
    )
}

/// As [`plan_csv`], for newline-delimited JSON.
pub(crate) fn plan_json(files: &[String], opts: &TextOptions) -> Result<(Vec<ReadTask>, SchemaRef)> {
    plan_text(
        files,
        "JSON",
        opts,
        |_| Ok(0),
        |path| {
            let mut r = BufReader::new(open(path)?);
            match arrow::json::reader::infer_json_schema_from_seekable(&mut r, Some(1000)) {
                Ok((s, _)) => Ok(s),
                Err(e) => {
                    let _ = r.rewind();
                    Err(find_bad_json_line(path, &e.to_string(), None)
                        .or_else(|| find_conflicting_json_line(path, &e.to_string()))
                        .unwrap_or_else(|| parse_error(path, &e.to_string(), 0)))
                }
            }
        },
        |path, schema, range| ReadTask::Json { path, schema, range },
    )
}

/// Infers each file's schema, merges them (see [`plan_csv`]) and makes the
/// read tasks: one per file, or one per `chunk_bytes` of a larger file's
/// data (which starts at `data_start`).
fn plan_text(
    files: &[String],
    what: &str,
    opts: &TextOptions,
    data_start: impl Fn(&str) -> Result<u64>,
    infer: impl Fn(&str) -> Result<Schema>,
    task: impl Fn(String, Block, Option<(u64, u64)>) -> ReadTask,
) -> Result<(Vec<ReadTask>, SchemaRef)> {
    let mut merged: Option<(String, Schema)> = None;
    let mut ranges: Vec<Vec<Option<(u64, u64)>>> = Vec::new();
    for path in files {
        let size = open(path)?.metadata().map_err(|e| Error::io(path, e))?.len();
        ranges.push(
            if opts.newlines_in_values || opts.chunk_bytes == 0 || size <= opts.chunk_bytes {
                vec![None]
            } else {
                let start = data_start(path)?;
                (start..size)
                    .step_by(opts.chunk_bytes as usize)
                    .map(|a| Some((a, (a + opts.chunk_bytes).min(size))))
                    .collect()
            },
        );
        let s = infer(path)?;
        merged = Some(match merged {
            None => (path.clone(), s),
            Some((p0, s0)) => {
                let m = merge_inferred(&s0, &s).ok_or_else(|| Error::SchemaMismatch {
                    what: format!("{what} file {path} (vs {p0})"),
                    expected: fields(&s0),
                    found: fields(&s),
                })?;
                (p0, m)
            }
        });
    }
    let schema = merged
        .map(|(_, s)| Arc::new(s))
        .unwrap_or_else(crate::block::empty_schema);
    let mut tasks = Vec::new();
    for (p, rs) in files.iter().zip(ranges) {
        for r in rs {
            tasks.push(task(p.clone(), Block::empty(schema.clone()), r));
        }
    }
    Ok((tasks, schema))
}

/// The lines of `path` that start in bytes `start..end`: the first byte
/// after the line end at or after `start - 1`, up to the end of the line
/// holding byte `end - 1`. Each line belongs to exactly one of the ranges
/// that cover a file. Returns the offset the lines start at.
fn read_lines_in(path: &str, (start, end): (u64, u64)) -> Result<(u64, Vec<u8>)> {
    let io = |e| Error::io(path, e);
    let mut f = BufReader::new(open_listed(path)?);
    let mut at = start;
    if start > 0 {
        f.seek(SeekFrom::Start(start - 1)).map_err(io)?;
        let mut skipped = Vec::new();
        f.read_until(b'\n', &mut skipped).map_err(io)?;
        at = start - 1 + skipped.len() as u64;
    }
    let mut buf = Vec::new();
    if at < end {
        (&mut f).take(end - at).read_to_end(&mut buf).map_err(io)?;
        if buf.len() as u64 == end - at && !buf.ends_with(b"\n") {
            f.read_until(b'\n', &mut buf).map_err(io)?;
        }
    }
    Ok((at, buf))
}

/// The number of line ends in the first `at` bytes of `path` (for the line
/// numbers of errors in a chunk).
fn lines_before(path: &str, at: u64) -> u64 {
    let Ok(f) = open(path) else { return 0 };
    let mut n = 0;
    let mut r = BufReader::new(f.take(at));
    loop {
        let Ok(buf) = r.fill_buf() else { return n };
        if buf.is_empty() {
            return n;
        }
        n += buf.iter().filter(|b| **b == b'\n').count() as u64;
        let len = buf.len();
        r.consume(len);
    }
}

/// One chunk of a CSV file's data lines (see [`TextOptions::chunk_bytes`]).
fn read_csv_chunk(path: &str, schema: SchemaRef, range: (u64, u64)) -> Result<Block> {
    let (at, bytes) = read_lines_in(path, range)?;
    decode_csv(path, schema, std::io::Cursor::new(bytes), false, |msg| {
        // Without a header arrow counts a bad value's row from 0 and a short
        // row's line from 1; the file's lines before the chunk come first.
        let n = number_after(msg, "at line ")
            .map(|n| n + 1)
            .or_else(|| number_after(msg, "for line "));
        n.map_or(0, |n| n + lines_before(path, at))
    })
}

/// One chunk of a newline-delimited JSON file (see [`TextOptions::chunk_bytes`]).
fn read_json_chunk(path: &str, schema: SchemaRef, range: (u64, u64)) -> Result<Block> {
    let (at, bytes) = read_lines_in(path, range)?;
    let r = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(64 * 1024)
        .build(std::io::Cursor::new(&bytes))?;
    match r.collect::<std::result::Result<Vec<_>, _>>() {
        Ok(batches) => Ok(Block::new(arrow::compute::concat_batches(&schema, &batches)?)),
        Err(e) => {
            let first = lines_before(path, at);
            let bad = find_bad_json_line_in(path, &e.to_string(), Some(&schema), std::io::Cursor::new(&bytes));
            Err(match bad {
                Some(Error::Parse { file, line, message }) => Error::Parse {
                    file,
                    line: line + first,
                    message,
                },
                Some(other) => other,
                None => parse_error(path, &e.to_string(), 0),
            })
        }
    }
}

fn merge_inferred(a: &Schema, b: &Schema) -> Option<Schema> {
    if a.fields().len() != b.fields().len() {
        return None;
    }
    let mut out = Vec::new();
    for (x, y) in a.fields().iter().zip(b.fields().iter()) {
        if x.name() != y.name() {
            return None;
        }
        let t = match (x.data_type(), y.data_type()) {
            (p, q) if p == q => p.clone(),
            (DataType::Null, q) => q.clone(),
            (p, DataType::Null) => p.clone(),
            (DataType::Int64, DataType::Float64) | (DataType::Float64, DataType::Int64) => DataType::Float64,
            _ => return None,
        };
        out.push(Field::new(x.name(), t, true));
    }
    Some(Schema::new(out))
}

fn parse_error(path: &str, message: &str, line: u64) -> Error {
    Error::Parse {
        file: path.to_string(),
        line,
        message: message.to_string(),
    }
}

fn read_csv_file(path: &str, schema: SchemaRef) -> Result<Block> {
    decode_csv(path, schema, open_listed(path)?, true, |msg| {
        csv_error_line(msg).unwrap_or(0)
    })
}

/// CSV rows from `input` as one block; a row that does not decode is a
/// parse error of `path` at the line `line` reads from arrow's message.
fn decode_csv(
    path: &str,
    schema: SchemaRef,
    input: impl Read,
    header: bool,
    line: impl Fn(&str) -> u64,
) -> Result<Block> {
    let r = arrow::csv::ReaderBuilder::new(schema.clone())
        .with_header(header)
        .with_batch_size(64 * 1024)
        .build(input)?;
    let mut batches = Vec::new();
    for b in r {
        match b {
            Ok(b) => batches.push(b),
            Err(e) => {
                let msg = e.to_string();
                return Err(parse_error(path, &msg, line(&msg)));
            }
        }
    }
    Ok(Block::new(arrow::compute::concat_batches(&schema, &batches)?))
}

/// The file line (1-based, the header included) that an arrow CSV error
/// names. Arrow words it two ways: a value that does not parse is "at line
/// N", N counting data rows from 1 after the header; a row with the wrong
/// number of fields is "for line N", N counting every line of the file.
fn csv_error_line(msg: &str) -> Option<u64> {
    number_after(msg, "at line ")
        .map(|n| n + 1)
        .or_else(|| number_after(msg, "for line "))
}

/// The number following `marker` in `msg`.
fn number_after(msg: &str, marker: &str) -> Option<u64> {
    msg.split(marker)
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse::<u64>().ok())
}

fn read_json_file(path: &str, schema: SchemaRef) -> Result<Block> {
    let r = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(64 * 1024)
        .build(BufReader::new(open_listed(path)?))?;
    match r.collect::<std::result::Result<Vec<_>, _>>() {
        Ok(batches) => Ok(Block::new(arrow::compute::concat_batches(&schema, &batches)?)),
        Err(e) => Err(find_bad_json_line(path, &e.to_string(), Some(&schema))
            .unwrap_or_else(|| parse_error(path, &e.to_string(), 0))),
    }
}

/// Finds the first line of `path` that is not a JSON object (or, given a
/// schema, does not decode with it) to name it in the error.
fn find_bad_json_line(path: &str, message: &str, schema: Option<&SchemaRef>) -> Option<Error> {
    find_bad_json_line_in(path, message, schema, BufReader::new(open(path).ok()?))
}

/// [`find_bad_json_line`] over the lines of `text` (line numbers count
/// from 1 at its start).
fn find_bad_json_line_in(path: &str, message: &str, schema: Option<&SchemaRef>, text: impl BufRead) -> Option<Error> {
    for (i, line) in text.lines().enumerate() {
        let line = line.ok()?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = match serde_json::from_str::<serde_json::Value>(&line) {
            Err(e) => Some(e.to_string()),
            Ok(v) if !v.is_object() => Some("not a JSON object".to_string()),
            Ok(_) => schema.and_then(|s| {
                let mut d = arrow::json::ReaderBuilder::new(s.clone()).build_decoder().ok()?;
                match d.decode(line.as_bytes()).and_then(|_| d.flush()) {
                    Ok(_) => None,
                    Err(e) => Some(e.to_string()),
                }
            }),
        };
        if let Some(why) = bad {
            return Some(parse_error(path, &format!("{why} ({message})"), i as u64 + 1));
        }
    }
    None
}

/// Finds the first line whose types conflict with the lines before it.
fn find_conflicting_json_line(path: &str, message: &str) -> Option<Error> {
    let f = open(path).ok()?;
    let mut seen: Vec<serde_json::Value> = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate().take(1000) {
        let line = line.ok()?;
        if line.trim().is_empty() {
            continue;
        }
        seen.push(serde_json::from_str(&line).ok()?);
        if arrow::json::reader::infer_json_schema_from_iterator(seen.iter().map(|v| Ok(v.clone()))).is_err() {
            return Some(parse_error(path, message, i as u64 + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_errors_name_the_file_line_in_both_of_arrows_wordings() {
        let parse =
            "Parser error: Error while parsing value 'x' as type 'Int64' for column 1 at line 1101. Row data: '[5,x]'";
        assert_eq!(csv_error_line(parse), Some(1102));
        let fields = "Csv error: incorrect number of fields for line 1002, expected 2 got 1";
        assert_eq!(csv_error_line(fields), Some(1002));
        assert_eq!(csv_error_line("Csv error: something else"), None);
    }

    #[test]
    fn wildcards_match_like_a_shell() {
        assert!(wildcard("part-*.parquet", "part-00.parquet"));
        assert!(wildcard("*", "x"));
        assert!(wildcard("a?c", "abc"));
        assert!(!wildcard("a?c", "abbc"));
        assert!(!wildcard("*.csv", "x.csvx"));
        assert!(wildcard("*a*b", "xxaxxb"));
    }

    #[test]
    fn ranges_split_evenly() {
        let t = plan_range(10, 3);
        let spans: Vec<_> = t
            .iter()
            .map(|t| match t {
                ReadTask::Range { start, end } => (*start, *end),
                _ => unreachable!("range tasks only"),
            })
            .collect();
        assert_eq!(spans, vec![(0, 3), (3, 6), (6, 10)]);
    }
}
