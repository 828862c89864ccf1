//! Benchmarks rayforge-data against plain single-process DataFusion on the
//! same Parquet input, case by case (the cases of `ray_data_anchor.py`):
//! read -> map_batches -> write Parquet; group-by mean/sum; sort; random
//! shuffle (also over 16, 64 and 256 materialized blocks). Prints wall
//! seconds and million rows per second per case and
//! writes them as JSON.
//!
//!   data-bench DIR [--rows N] [--json FILE] [--only rayforge|datafusion] [--filter TEXT] [--warmup]
//!
//! `--warmup` runs each case once untimed before the timed run.
//!
//! DIR/input/*.parquet is generated (16 files: id, key in [0, 1000), x, y,
//! s) when missing; `data/bench/compare-ray-data` runs this and Ray Data
//! side by side.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use rayforge_data::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use rayforge_data::{Agg, Error};

struct Args {
    dir: String,
    rows: u64,
    json: Option<String>,
    only: Option<String>,
    filter: Option<String>,
    warmup: bool,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        dir: String::new(),
        rows: 20_000_000,
        json: None,
        only: None,
        filter: None,
        warmup: false,
    };
    while let Some(x) = it.next() {
        match x.as_str() {
            "--rows" => a.rows = it.next().and_then(|v| v.parse().ok()).ok_or("--rows needs a number")?,
            "--json" => a.json = Some(it.next().ok_or("--json needs a file")?),
            "--filter" => a.filter = Some(it.next().ok_or("--filter needs text")?),
            "--warmup" => a.warmup = true,
            "--only" => a.only = Some(it.next().ok_or("--only needs rayforge or datafusion")?),
            d if !d.starts_with('-') && a.dir.is_empty() => a.dir = d.to_string(),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if a.dir.is_empty() {
        return Err(
            "usage: data-bench DIR [--rows N] [--json FILE] [--only rayforge|datafusion] [--filter TEXT] [--warmup]"
                .into(),
        );
    }
    Ok(a)
}

/// splitmix64: the generated data is the same on every run.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn gen_block(b: RecordBatch) -> Result<RecordBatch, Error> {
    let ids = rayforge_data::compute::f64_column(&b, "id")?;
    let ids: Vec<i64> = ids.iter().map(|v| *v as i64).collect();
    let r = |i: i64, s: u64| mix((i as u64) ^ (s << 56));
    let unit = |v: u64| (v >> 11) as f64 / (1u64 << 53) as f64;
    let key: Vec<i64> = ids.iter().map(|i| (r(*i, 1) % 1000) as i64).collect();
    let x: Vec<f64> = ids.iter().map(|i| unit(r(*i, 2))).collect();
    let y: Vec<f64> = ids.iter().map(|i| unit(r(*i, 3))).collect();
    let s: Vec<String> = ids.iter().map(|i| (r(*i, 4) % (1 << 30)).to_string()).collect();
    Ok(RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(ids)) as ArrayRef),
        ("key", Arc::new(Int64Array::from(key)) as ArrayRef),
        ("x", Arc::new(Float64Array::from(x)) as ArrayRef),
        ("y", Arc::new(Float64Array::from(y)) as ArrayRef),
        ("s", Arc::new(StringArray::from(s)) as ArrayRef),
    ])?)
}

fn add_z(b: RecordBatch) -> Result<RecordBatch, Error> {
    let x = rayforge_data::compute::f64_column(&b, "x")?;
    let y = rayforge_data::compute::f64_column(&b, "y")?;
    let z: ArrayRef = Arc::new(Float64Array::from_iter_values(
        x.iter().zip(&y).map(|(x, y)| x * 2.0 + y),
    ));
    let schema = b.schema();
    let mut cols: Vec<(&str, ArrayRef)> = schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .zip(b.columns().iter().cloned())
        .collect();
    cols.push(("z", z));
    Ok(RecordBatch::try_from_iter(cols)?)
}

fn timed(
    a: &Args,
    results: &mut BTreeMap<String, f64>,
    name: &str,
    mut f: impl FnMut() -> Result<u64, Box<dyn std::error::Error>>,
) -> Result<(), Box<dyn std::error::Error>> {
    if a.filter.as_ref().is_some_and(|x| !name.contains(x.as_str())) {
        return Ok(());
    }
    if a.warmup {
        // Untimed: the measured run then finds warm heaps, caches and workers.
        f()?;
    }
    let rows = a.rows;
    let t = Instant::now();
    let n = f()?;
    let dt = t.elapsed().as_secs_f64();
    println!(
        "{name:48} {dt:8.2} s {:8.2} M rows/s  ({n} rows out)",
        rows as f64 / dt / 1e6
    );
    results.insert(name.to_string(), dt);
    Ok(())
}

fn rayforge_cases(
    a: &Args,
    inp: &str,
    out: &str,
    res: &mut BTreeMap<String, f64>,
) -> Result<(), Box<dyn std::error::Error>> {
    timed(a, res, "rayforge: read->map_batches->write parquet", || {
        let _ = std::fs::remove_dir_all(out);
        Ok(rayforge_data::read_parquet(inp)?
            .map_batches(add_z)
            .write_parquet(out)?
            .rows)
    })?;
    timed(a, res, "rayforge: groupby(key) mean(x), sum(y)", || {
        let ds = rayforge_data::read_parquet(inp)?
            .groupby(&["key"])
            .aggregate(&[Agg::Mean("x".into()), Agg::Sum("y".into())])
            .materialize()?;
        Ok(ds.count()?)
    })?;
    timed(a, res, "rayforge: sort by x", || {
        Ok(rayforge_data::read_parquet(inp)?
            .sort("x", false)
            .materialize()?
            .count()?)
    })?;
    timed(a, res, "rayforge: random_shuffle", || {
        let ds = rayforge_data::read_parquet(inp)?
            .random_shuffle(Some(0))
            .materialize()?;
        if std::env::var_os("DATA_BENCH_STATS").is_some() {
            println!("{}", ds.stats());
        }
        Ok(ds.count()?)
    })?;
    // The same shuffle over 16, 64 and 256 blocks: the input is cut into that
    // many blocks and materialized first (untimed), so the timing is the
    // shuffle's alone and shows how it scales with the number of blocks.
    for blocks in [16usize, 64, 256] {
        let name = format!("rayforge: random_shuffle {blocks} blocks");
        if a.filter.as_ref().is_some_and(|x| !name.contains(x.as_str())) {
            continue;
        }
        let input = rayforge_data::read_parquet(inp)?.repartition(blocks).materialize()?;
        timed(a, res, &name, || {
            Ok(input.random_shuffle(Some(0)).materialize()?.count()?)
        })?;
    }
    Ok(())
}

fn datafusion_cases(
    a: &Args,
    inp: &str,
    out: &str,
    res: &mut BTreeMap<String, f64>,
) -> Result<(), Box<dyn std::error::Error>> {
    use datafusion::prelude::*;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let ctx = SessionContext::new();
    rt.block_on(ctx.register_parquet("t", inp, ParquetReadOptions::default()))?;
    let collect = |q: &str| -> Result<u64, Box<dyn std::error::Error>> {
        let batches = rt.block_on(async { ctx.sql(q).await?.collect().await })?;
        Ok(batches.iter().map(|b| b.num_rows() as u64).sum())
    };
    timed(a, res, "datafusion: read->project->write parquet", || {
        let _ = std::fs::remove_dir_all(out);
        rt.block_on(async {
            ctx.sql("SELECT *, x * 2 + y AS z FROM t")
                .await?
                .write_parquet(out, datafusion::dataframe::DataFrameWriteOptions::new(), None)
                .await
        })?;
        Ok(a.rows)
    })?;
    timed(a, res, "datafusion: groupby(key) avg(x), sum(y)", || {
        collect("SELECT key, avg(x), sum(y) FROM t GROUP BY key")
    })?;
    timed(a, res, "datafusion: sort by x", || {
        collect("SELECT * FROM t ORDER BY x")
    })?;
    timed(a, res, "datafusion: random shuffle (order by random())", || {
        collect("SELECT * FROM t ORDER BY random()")
    })?;
    Ok(())
}

#[rayforge::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = parse()?;
    rayforge::init(rayforge::Config::default())?;
    let inp = format!("{}/input", a.dir);
    let out = format!("{}/out", a.dir);
    if !std::path::Path::new(&inp).exists() {
        println!("== generating {} rows into {inp}", a.rows);
        rayforge_data::range_with_blocks(a.rows, 16)
            .map_batches(gen_block)
            .write_parquet(&inp)?;
    }
    let mut res = BTreeMap::new();
    if a.only.as_deref() != Some("datafusion") {
        rayforge_cases(&a, &inp, &out, &mut res)?;
    }
    if a.only.as_deref() != Some("rayforge") {
        datafusion_cases(&a, &inp, &out, &mut res)?;
    }
    let _ = std::fs::remove_dir_all(&out);
    if let Some(j) = &a.json {
        let body: Vec<String> = res.iter().map(|(k, v)| format!("  {k:?}: {v}")).collect();
        std::fs::write(j, format!("{{\n{}\n}}\n", body.join(",\n")))?;
    }
    Ok(())
}
