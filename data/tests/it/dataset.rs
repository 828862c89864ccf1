//! Datasets end to end on an embedded cluster with real worker processes:
//! every result is checked against the same computation done another way
//! (a plain loop over the input).

use std::collections::BTreeMap;
use std::sync::Arc;

use rayforge_data::arrow::array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch};
use rayforge_data::expr::col;
use rayforge_data::{Agg, Error, IterOptions, MapOptions};
use rayforge_integration_tests::cluster;
use serde::{Deserialize, Serialize};

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rayforge-data-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn i64s(b: &RecordBatch, name: &str) -> Vec<i64> {
    let c = b.column_by_name(name).unwrap_or_else(|| panic!("column {name}"));
    let c = rayforge_data::arrow::compute::cast(c, &rayforge_data::arrow::datatypes::DataType::Int64).unwrap();
    let a = c.as_any().downcast_ref::<Int64Array>().unwrap();
    a.iter().map(|v| v.unwrap()).collect()
}

fn f64s(b: &RecordBatch, name: &str) -> Vec<f64> {
    rayforge_data::compute::f64_column(b, name).unwrap()
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Row {
    id: i64,
    key: i64,
    x: f64,
    s: String,
}

fn rows(n: i64) -> Vec<Row> {
    (0..n)
        .map(|i| Row {
            id: i,
            key: (i * 7) % 5,
            x: ((i * 37) % 101) as f64 / 10.0,
            s: format!("r{i}"),
        })
        .collect()
}

fn double_id(b: RecordBatch) -> Result<RecordBatch, Error> {
    let ids = i64s(&b, "id");
    let col: ArrayRef = Arc::new(Int64Array::from(ids.iter().map(|v| v * 2).collect::<Vec<_>>()));
    Ok(RecordBatch::try_from_iter([("id", col)])?)
}

#[test]
fn range_map_batches_filter_and_limit() {
    cluster();
    let ds = rayforge_data::range_with_blocks(10_000, 7);
    assert_eq!(ds.count().unwrap(), 10_000);
    let doubled = ds.map_batches(double_id).filter_expr(col("id").lt(100));
    let got = doubled.take_batch(1000).unwrap();
    assert_eq!(i64s(&got, "id"), (0..50).map(|i| i * 2).collect::<Vec<_>>());
    // Batches of a given size, in order, across block boundaries.
    let sizes: Vec<usize> = ds
        .iter_batches(IterOptions {
            batch_size: Some(3000),
            prefetch: 2,
        })
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .collect();
    assert_eq!(sizes, vec![3000, 3000, 3000, 1000]);
    let limited = ds.limit(1234);
    assert_eq!(limited.count().unwrap(), 1234);
    assert_eq!(
        i64s(&limited.take_batch(2000).unwrap(), "id"),
        (0..1234).collect::<Vec<_>>()
    );
    // Stats name the fused operator and count its rows.
    let _ = doubled.count().unwrap();
    let stats = doubled.stats();
    assert!(
        stats.contains("Range->MapBatches->Filter") && stats.contains("50 rows"),
        "{stats}"
    );
}

#[test]
fn row_functions_and_column_operations() {
    cluster();
    let input = rows(500);
    let ds = rayforge_data::from_items(&input).unwrap();
    assert_eq!(ds.count().unwrap(), 500);

    #[derive(Serialize, Deserialize)]
    struct Out {
        id: i64,
        y: f64,
    }
    let mapped: Vec<Out> = ds.map(|r: Row| Out { id: r.id, y: r.x * 2.0 }).take_all().unwrap();
    assert_eq!(mapped.len(), 500);
    assert!(mapped.iter().zip(&input).all(|(o, r)| o.id == r.id && o.y == r.x * 2.0));

    let kept: Vec<Row> = ds.filter(|r: &Row| r.key == 3).take_all().unwrap();
    let want: Vec<Row> = input.iter().filter(|r| r.key == 3).cloned().collect();
    assert_eq!(kept, want);

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Piece {
        id: i64,
        part: i64,
    }
    let flat: Vec<Piece> = ds
        .limit(10)
        .flat_map(|r: Row| (0..r.key).map(|p| Piece { id: r.id, part: p }).collect())
        .take_all()
        .unwrap();
    let want: usize = input[..10].iter().map(|r| r.key as usize).sum();
    assert_eq!(flat.len(), want);

    fn x_plus_key(b: &RecordBatch) -> Result<ArrayRef, Error> {
        let (x, k) = (f64s(b, "x"), i64s(b, "key"));
        Ok(Arc::new(Float64Array::from_iter_values(
            x.iter().zip(&k).map(|(x, k)| x + *k as f64),
        )))
    }
    let shaped = ds
        .add_column("z", x_plus_key)
        .drop_columns(&["s"])
        .rename_columns(&[("x", "x0")])
        .select_columns(&["z", "id", "x0"]);
    let b = shaped.take_batch(500).unwrap();
    let names: Vec<String> = b.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, vec!["z", "id", "x0"]);
    assert!(f64s(&b, "z").iter().zip(&input).all(|(z, r)| *z == r.x + r.key as f64));
    let err = ds.select_columns(&["nope"]).count().unwrap_err();
    assert!(
        matches!(&err, Error::NoSuchColumn { column, .. } if column == "nope"),
        "{err}"
    );
}

#[test]
fn groupby_sort_shuffle_repartition_union_zip_and_sql() {
    cluster();
    let input = rows(3000);
    let ds = rayforge_data::from_items(&input).unwrap().repartition(6);
    assert_eq!(ds.materialize().unwrap().count().unwrap(), 3000);

    // Group-by against a plain loop.
    let g = ds
        .groupby(&["key"])
        .aggregate(&[
            Agg::Count,
            Agg::Sum("id".into()),
            Agg::Mean("x".into()),
            Agg::Min("x".into()),
            Agg::Max("x".into()),
            Agg::Std("x".into()),
        ])
        .take_batch(100)
        .unwrap();
    let mut want: BTreeMap<i64, Vec<&Row>> = BTreeMap::new();
    for r in &input {
        want.entry(r.key).or_default().push(r);
    }
    assert_eq!(i64s(&g, "key"), want.keys().copied().collect::<Vec<_>>());
    for (i, rs) in want.values().enumerate() {
        let n = rs.len() as f64;
        let mean = rs.iter().map(|r| r.x).sum::<f64>() / n;
        let var = rs.iter().map(|r| (r.x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        assert_eq!(i64s(&g, "count()")[i], rs.len() as i64);
        assert_eq!(i64s(&g, "sum(id)")[i], rs.iter().map(|r| r.id).sum::<i64>());
        assert!((f64s(&g, "mean(x)")[i] - mean).abs() < 1e-9);
        assert_eq!(f64s(&g, "min(x)")[i], rs.iter().map(|r| r.x).fold(f64::MAX, f64::min));
        assert_eq!(f64s(&g, "max(x)")[i], rs.iter().map(|r| r.x).fold(f64::MIN, f64::max));
        assert!((f64s(&g, "std(x)")[i] - var.sqrt()).abs() < 1e-6);
    }
    let total = ds.aggregate(&[Agg::Count]).take_batch(1).unwrap();
    assert_eq!(i64s(&total, "count()"), vec![3000]);

    // Sort, both ways.
    let sorted = ds.sort("x", false).take_batch(3000).unwrap();
    let mut xs: Vec<f64> = input.iter().map(|r| r.x).collect();
    xs.sort_by(f64::total_cmp);
    assert_eq!(f64s(&sorted, "x"), xs);
    let desc = ds.sort("id", true).take_batch(3000).unwrap();
    assert_eq!(i64s(&desc, "id"), (0..3000).rev().collect::<Vec<_>>());

    // A seeded shuffle is a permutation, the same one every time.
    let a = i64s(&ds.random_shuffle(Some(7)).take_batch(3000).unwrap(), "id");
    let b = i64s(&ds.random_shuffle(Some(7)).take_batch(3000).unwrap(), "id");
    assert_eq!(a, b);
    assert_ne!(a, (0..3000).collect::<Vec<_>>());
    let mut sorted_a = a.clone();
    sorted_a.sort();
    assert_eq!(sorted_a, (0..3000).collect::<Vec<_>>());

    // Union and zip.
    let u = ds.limit(10).union(&ds.limit(5));
    assert_eq!(
        i64s(&u.take_batch(100).unwrap(), "id"),
        (0..10).chain(0..5).collect::<Vec<_>>()
    );
    let z = ds
        .select_columns(&["id"])
        .zip(&rayforge_data::range_with_blocks(3000, 4));
    let zb = z.take_batch(3000).unwrap();
    assert_eq!(i64s(&zb, "id"), i64s(&zb, "id_1"));
    let bad = ds.zip(&rayforge_data::range(10)).count().unwrap_err();
    assert!(matches!(bad, Error::InvalidArgument(_)), "{bad}");

    // SQL against a plain loop.
    let q = ds
        .sql("SELECT key, count(*) AS n, sum(id) AS total FROM ds WHERE x > 5 GROUP BY key ORDER BY key")
        .unwrap()
        .take_batch(100)
        .unwrap();
    let mut want: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for r in input.iter().filter(|r| r.x > 5.0) {
        let e = want.entry(r.key).or_default();
        e.0 += 1;
        e.1 += r.id;
    }
    assert_eq!(i64s(&q, "key"), want.keys().copied().collect::<Vec<_>>());
    assert_eq!(i64s(&q, "n"), want.values().map(|v| v.0).collect::<Vec<_>>());
    assert_eq!(i64s(&q, "total"), want.values().map(|v| v.1).collect::<Vec<_>>());
    assert!(matches!(ds.sql("SELEC nonsense"), Err(Error::Sql(_))));
    let err = ds.sql("SELECT nope FROM ds").unwrap().count().unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn parquet_round_trip_with_projection_and_filter_pushdown() {
    cluster();
    let dir = tmp("parquet");
    let input = rows(4000);
    let out = rayforge_data::from_items(&input)
        .unwrap()
        .repartition(4)
        .write_parquet(dir.to_str().unwrap())
        .unwrap();
    assert_eq!(out.rows, 4000);
    // One part per block in block order, named by the write.
    let names: Vec<String> = out
        .files
        .iter()
        .map(|f| f.rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 4);
    for (i, n) in names.iter().enumerate() {
        assert!(
            n.starts_with(&format!("part-{i:05}-")) && n.ends_with(".parquet"),
            "{names:?}"
        );
    }
    assert!(
        std::fs::read_dir(&dir)
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp"))
    );

    let back: Vec<Row> = rayforge_data::read_parquet(dir.to_str().unwrap())
        .unwrap()
        .take_all()
        .unwrap();
    assert_eq!(back, input);
    let glob = format!("{}/part-0000[0-1]*", dir.display());
    assert!(matches!(
        rayforge_data::read_parquet(glob.as_str()),
        Err(Error::NotFound(_))
    ));
    let glob = format!("{}/part-*1-*.parquet", dir.display());
    assert_eq!(
        rayforge_data::read_parquet(glob.as_str()).unwrap().count().unwrap(),
        1000
    );

    // Projection plus a filter: ids are sorted per file, so files whose id
    // range misses the filter are skipped by their statistics.
    let opts = rayforge_data::ParquetOptions {
        columns: Some(vec!["id".into(), "x".into()]),
        filter: Some(col("id").ge(2500).and(col("x").gt(5.0))),
    };
    let ds = rayforge_data::read_parquet_with(dir.to_str().unwrap(), opts).unwrap();
    let b = ds.take_batch(10_000).unwrap();
    assert_eq!(b.num_columns(), 2);
    let want: Vec<i64> = input
        .iter()
        .filter(|r| r.id >= 2500 && r.x > 5.0)
        .map(|r| r.id)
        .collect();
    assert_eq!(i64s(&b, "id"), want);
    let _ = ds.count().unwrap();
    assert!(ds.stats().contains("ReadParquet: 2 blocks"), "{}", ds.stats());

    // Errors before any work: a missing path, an unknown column, files
    // whose schemas differ.
    assert!(matches!(
        rayforge_data::read_parquet("/no/such/dir"),
        Err(Error::NotFound(_))
    ));
    let opts = rayforge_data::ParquetOptions {
        columns: Some(vec!["nope".into()]),
        filter: None,
    };
    assert!(matches!(
        rayforge_data::read_parquet_with(dir.to_str().unwrap(), opts),
        Err(Error::NoSuchColumn { .. })
    ));
    let other = dir.join("other");
    rayforge_data::range(10).write_parquet(other.to_str().unwrap()).unwrap();
    // A committed directory is exactly its listed files: the other
    // dataset written inside it is not part of it.
    assert_eq!(
        rayforge_data::read_parquet(dir.to_str().unwrap())
            .unwrap()
            .count()
            .unwrap(),
        4000
    );
    let err = rayforge_data::read_parquet(vec![dir.to_str().unwrap(), other.to_str().unwrap()])
        .err()
        .expect("schema mismatch");
    assert!(matches!(err, Error::SchemaMismatch { .. }), "{err}");
}

/// The `q`-quantile of sorted `v` with linear interpolation between the
/// closest ranks (numpy's default, Ray Data's `Quantile`).
fn quantile_of(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

#[test]
fn quantiles_per_group_match_a_sort_and_sit_beside_other_aggregates() {
    cluster();
    #[derive(Serialize, Deserialize, Clone)]
    struct In {
        g: i64,
        v: Option<f64>,
    }
    // Three groups; every seventh value null (ignored, as Ray does).
    let input: Vec<In> = (0..2000i64)
        .map(|i| In {
            g: i % 3,
            v: (i % 7 != 0).then(|| ((i * 7919) % 1009) as f64 / 7.0),
        })
        .collect();
    let ds = rayforge_data::from_items(&input).unwrap().repartition(8);
    #[derive(Deserialize, Debug)]
    struct Out {
        g: i64,
        #[serde(rename = "count()")]
        count: i64,
        #[serde(rename = "mean(v)")]
        mean: f64,
        #[serde(rename = "quantile(v)")]
        quantile: f64,
    }
    for q in [0.0, 0.25, 0.5, 0.9, 1.0] {
        let got: Vec<Out> = ds
            .groupby(&["g"])
            .aggregate(&[Agg::Count, Agg::Mean("v".into()), Agg::Quantile("v".into(), q)])
            .take_all()
            .unwrap();
        assert_eq!(got.len(), 3);
        for o in &got {
            let mut v: Vec<f64> = input.iter().filter(|r| r.g == o.g).filter_map(|r| r.v).collect();
            v.sort_by(f64::total_cmp);
            assert_eq!(o.count, input.iter().filter(|r| r.g == o.g).count() as i64);
            assert!((o.mean - v.iter().sum::<f64>() / v.len() as f64).abs() < 1e-9, "{o:?}");
            // DataFusion rounds the interpolation weight down to 6 decimals.
            let gap = v[v.len() - 1] - v[0];
            assert!((o.quantile - quantile_of(&v, q)).abs() <= 1e-6 * gap, "q {q}: {o:?}");
        }
    }
    // Over the whole dataset, through GroupedData's shorthand too.
    let mut all: Vec<f64> = input.iter().filter_map(|r| r.v).collect();
    all.sort_by(f64::total_cmp);
    let whole = ds.aggregate(&[Agg::Quantile("v".into(), 0.5)]).take_batch(1).unwrap();
    let median = rayforge_data::compute::f64_column(&whole, "quantile(v)").unwrap()[0];
    assert!(
        (median - quantile_of(&all, 0.5)).abs() <= 1e-6 * all[all.len() - 1],
        "{median}"
    );
    let per_group = ds.groupby(&["g"]).quantile("v", 0.5).count().unwrap();
    assert_eq!(per_group, 3);
    // A quantile outside [0, 1] and an unknown column are errors naming them.
    let err = ds.aggregate(&[Agg::Quantile("v".into(), 1.5)]).count().unwrap_err();
    assert!(err.to_string().contains("1.5"), "{err}");
    let err = ds.aggregate(&[Agg::Quantile("w".into(), 0.5)]).count().unwrap_err();
    assert!(err.to_string().contains('w'), "{err}");
}

#[test]
fn csv_and_json_read_in_chunks_cut_at_line_ends_keep_every_row_in_order() {
    cluster();
    let dir = tmp("chunks");
    let input = rows(300);
    let ds = rayforge_data::from_items(&input).unwrap();
    let csv = dir.join("csv");
    ds.repartition(2).write_csv(csv.to_str().unwrap()).unwrap();
    let json = dir.join("json");
    ds.repartition(2).write_json(json.to_str().unwrap()).unwrap();
    // Chunk sizes below a line, around one, and over many: every line read
    // once, by the chunk it starts in.
    for chunk_bytes in [7, 16, 17, 100, 999, 1 << 20] {
        let opts = rayforge_data::TextOptions {
            chunk_bytes,
            ..Default::default()
        };
        let read = rayforge_data::read_csv_with(csv.to_str().unwrap(), opts.clone()).unwrap();
        let blocks = read.num_blocks().unwrap();
        let back: Vec<Row> = read.take_all().unwrap();
        assert_eq!(back, input, "CSV in chunks of {chunk_bytes} bytes");
        let read = rayforge_data::read_json_with(json.to_str().unwrap(), opts).unwrap();
        let back: Vec<Row> = read.take_all().unwrap();
        assert_eq!(back, input, "JSON in chunks of {chunk_bytes} bytes");
        if chunk_bytes == 100 {
            assert!(blocks > 40, "a block per chunk: {blocks}");
        }
        if chunk_bytes == 1 << 20 {
            assert_eq!(blocks, 2, "a block per file below the chunk size");
        }
    }
    // Errors in a later chunk name the file's own line.
    let opts = rayforge_data::TextOptions {
        chunk_bytes: 500,
        ..Default::default()
    };
    let bad = dir.join("bad.csv");
    let mut text = String::from("a,b\n");
    for i in 0..1100 {
        text.push_str(&format!("{i},{i}\n"));
    }
    text.push_str("5,x\n");
    std::fs::write(&bad, &text).unwrap();
    let err = rayforge_data::read_csv_with(bad.to_str().unwrap(), opts.clone())
        .and_then(|d| d.count())
        .unwrap_err();
    assert!(matches!(&err, Error::Parse { line: 1102, .. }), "{err}");
    let short = dir.join("short.csv");
    std::fs::write(&short, text.replace("5,x\n", "5\n")).unwrap();
    let err = rayforge_data::read_csv_with(short.to_str().unwrap(), opts.clone())
        .and_then(|d| d.count())
        .unwrap_err();
    assert!(matches!(&err, Error::Parse { line: 1102, .. }), "{err}");
    let bad_json = dir.join("bad.json");
    let mut text: String = (0..1100).map(|i| format!("{{\"a\": {i}}}\n")).collect();
    text.push_str("{\"a\": oops}\n");
    std::fs::write(&bad_json, text).unwrap();
    let err = rayforge_data::read_json_with(bad_json.to_str().unwrap(), opts)
        .and_then(|d| d.count())
        .unwrap_err();
    assert!(matches!(&err, Error::Parse { line: 1101, .. }), "{err}");
    // Quoted values holding newlines: read whole with newlines_in_values.
    let quoted = dir.join("quoted.csv");
    let mut text = String::from("name,n\n");
    for i in 0..200 {
        text.push_str(&format!("\"line one\nline {i}\",{i}\n"));
    }
    std::fs::write(&quoted, text).unwrap();
    let opts = rayforge_data::TextOptions {
        chunk_bytes: 64,
        newlines_in_values: true,
    };
    let read = rayforge_data::read_csv_with(quoted.to_str().unwrap(), opts).unwrap();
    assert_eq!(read.num_blocks().unwrap(), 1);
    #[derive(Deserialize)]
    struct Quoted {
        name: String,
        n: i64,
    }
    let back: Vec<Quoted> = read.take_all().unwrap();
    assert_eq!(back.len(), 200);
    assert!(
        back.iter()
            .enumerate()
            .all(|(i, q)| q.n == i as i64 && q.name == format!("line one\nline {i}"))
    );
}

#[test]
fn csv_and_json_read_write_and_bad_rows() {
    cluster();
    let dir = tmp("text");
    let input = rows(300);
    let ds = rayforge_data::from_items(&input).unwrap();
    let csv = dir.join("csv");
    ds.repartition(3).write_csv(csv.to_str().unwrap()).unwrap();
    let back: Vec<Row> = rayforge_data::read_csv(csv.to_str().unwrap())
        .unwrap()
        .take_all()
        .unwrap();
    assert_eq!(back, input);
    let json = dir.join("json");
    ds.repartition(2).write_json(json.to_str().unwrap()).unwrap();
    let back: Vec<Row> = rayforge_data::read_json(json.to_str().unwrap())
        .unwrap()
        .take_all()
        .unwrap();
    assert_eq!(back, input);

    // A bad row names its file and line.
    // A bad row names its file and line (types are inferred from the first
    // 1000 rows; line 1102 holds text in a number column).
    let bad = dir.join("bad.csv");
    let mut text = String::from("a,b\n");
    for i in 0..1100 {
        text.push_str(&format!("{i},{i}\n"));
    }
    text.push_str("5,x\n");
    std::fs::write(&bad, text).unwrap();
    let err = rayforge_data::read_csv(bad.to_str().unwrap())
        .and_then(|d| d.count())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Parse { line: 1102, file, .. } if file.ends_with("bad.csv")),
        "{err}"
    );
    // A row with too few fields: arrow counts its line differently.
    let short = dir.join("short.csv");
    let mut text = String::from("a,b\n");
    for i in 0..1000 {
        text.push_str(&format!("{i},{i}\n"));
    }
    text.push_str("5\n");
    std::fs::write(&short, text).unwrap();
    let err = rayforge_data::read_csv(short.to_str().unwrap())
        .and_then(|d| d.count())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Parse { line: 1002, file, .. } if file.ends_with("short.csv")),
        "{err}"
    );
    let bad_json = dir.join("bad.json");
    std::fs::write(&bad_json, "{\"a\": 1}\n{\"a\": 2}\n{\"a\": oops}\n").unwrap();
    let err = rayforge_data::read_json(bad_json.to_str().unwrap())
        .and_then(|d| d.count())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Parse { line: 3, file, .. } if file.ends_with("bad.json")),
        "{err}"
    );
    let typed = dir.join("typed.json");
    std::fs::write(&typed, "{\"a\": 1}\n{\"a\": 2}\n").unwrap();
    let typed2 = dir.join("typed2.json");
    std::fs::write(&typed2, "{\"a\": \"one\"}\n").unwrap();
    let err = rayforge_data::read_json(vec![typed.to_str().unwrap(), typed2.to_str().unwrap()])
        .err()
        .expect("mismatch");
    assert!(matches!(err, Error::SchemaMismatch { .. }), "{err}");
    // Types that disagree inside one file name the line where they do.
    let mixed = dir.join("mixed.json");
    std::fs::write(&mixed, "{\"a\": 1}\n{\"a\": 2}\n{\"a\": {\"b\": 2}}\n").unwrap();
    let err = rayforge_data::read_json(mixed.to_str().unwrap())
        .err()
        .expect("conflict");
    assert!(matches!(&err, Error::Parse { line: 3, .. }), "{err}");
    let csv_a = dir.join("a.csv");
    std::fs::write(&csv_a, "a,b\n1,2\n").unwrap();
    let csv_b = dir.join("b.csv");
    std::fs::write(&csv_b, "a,c\n1,2\n").unwrap();
    let err = rayforge_data::read_csv(vec![csv_a.to_str().unwrap(), csv_b.to_str().unwrap()])
        .err()
        .expect("mismatch");
    assert!(matches!(err, Error::SchemaMismatch { .. }), "{err}");
    assert!(matches!(
        rayforge_data::read_csv(dir.join("none.csv").to_str().unwrap()),
        Err(Error::NotFound(_))
    ));
}

#[rayforge::remote]
fn read_in_task(b: rayforge_data::Block) -> (bool, i64) {
    let sum = b
        .batch()
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .map(|a| a.values().iter().sum())
        .unwrap_or(-1);
    (b.is_shared(), sum)
}

#[test]
fn blocks_are_read_from_shared_memory_without_a_copy() {
    cluster();
    let n = 1_000_000i64;
    let b = RecordBatch::try_from_iter([("v", Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef)]).unwrap();
    let r = rayforge::put(rayforge_data::Block::new(b)).unwrap();
    let local = r.get().unwrap();
    assert!(local.is_shared(), "the driver maps the stored block");
    let (shared, sum) = read_in_task::remote(&r).get().unwrap();
    assert!(shared, "the task maps the stored block");
    assert_eq!(sum, n * (n - 1) / 2);
}

fn fails_on_seven(b: RecordBatch) -> Result<RecordBatch, Error> {
    if i64s(&b, "id").contains(&7) {
        return Err(Error::User("seven is not allowed".into()));
    }
    Ok(b)
}

#[test]
fn a_failing_function_fails_the_dataset_with_its_error() {
    cluster();
    let err = rayforge_data::range_with_blocks(100, 4)
        .map_batches_with(
            fails_on_seven,
            MapOptions {
                batch_size: Some(10),
                ..Default::default()
            },
        )
        .count()
        .unwrap_err();
    assert_eq!(err, Error::User("seven is not allowed".into()));
}

struct Scorer {
    inits: i64,
}

static INITS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

fn load_scorer() -> Scorer {
    Scorer {
        inits: INITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1,
    }
}

fn score(s: &mut Scorer, b: RecordBatch) -> Result<RecordBatch, Error> {
    let n = b.num_rows();
    let pid: ArrayRef = Arc::new(Int64Array::from(vec![std::process::id() as i64; n]));
    let inits: ArrayRef = Arc::new(Int64Array::from(vec![s.inits; n]));
    Ok(RecordBatch::try_from_iter([
        ("id", b.column(0).clone()),
        ("pid", pid),
        ("inits", inits),
    ])?)
}

/// `score`, taking the time a model would (so the pool sees a backlog).
fn slow_score(s: &mut Scorer, b: RecordBatch) -> Result<RecordBatch, Error> {
    std::thread::sleep(std::time::Duration::from_millis(30));
    score(s, b)
}

#[test]
fn map_batches_on_an_actor_pool_builds_state_once_and_grows_with_the_backlog() {
    cluster();
    let opts = rayforge_data::ActorPoolOptions {
        concurrency: (1, 3),
        batch_size: Some(100),
        num_cpus: 0.25,
        num_gpus: 0.0,
    };
    let ds = rayforge_data::range_with_blocks(6000, 30).map_batches_actors(load_scorer, slow_score, opts);
    let b = ds.take_batch(10_000).unwrap();
    assert_eq!(i64s(&b, "id"), (0..6000).collect::<Vec<_>>());
    assert!(
        i64s(&b, "inits").iter().all(|i| *i == 1),
        "state is built once per actor"
    );
    let pids: std::collections::BTreeSet<i64> = i64s(&b, "pid").into_iter().collect();
    assert_eq!(pids.len(), 3, "the pool grew to its maximum");
    assert!(!pids.contains(&(std::process::id() as i64)));
    let stats = ds.stats();
    assert!(stats.contains("3 actors"), "{stats}");
}

/// An actor state built from an argument: an offset added to the ids.
struct Offset(i64);

fn load_offset(by: i64) -> Result<Offset, Error> {
    if by < 0 {
        return Err(Error::User(format!("offset {by} is negative")));
    }
    Ok(Offset(by))
}

fn add_offset(o: &mut Offset, b: RecordBatch) -> Result<RecordBatch, Error> {
    let ids: Vec<i64> = i64s(&b, "id").into_iter().map(|i| i + o.0).collect();
    Ok(RecordBatch::try_from_iter([(
        "id",
        Arc::new(Int64Array::from(ids)) as ArrayRef,
    )])?)
}

#[test]
fn an_actor_pool_builds_its_state_from_an_argument_and_a_failing_init_fails_the_run() {
    cluster();
    let opts = rayforge_data::ActorPoolOptions {
        num_cpus: 0.25,
        ..Default::default()
    };
    let ds = rayforge_data::range_with_blocks(100, 4);
    let b = ds
        .map_batches_actors_with(load_offset, 1000, add_offset, opts.clone())
        .take_batch(1000)
        .unwrap();
    assert_eq!(i64s(&b, "id"), (1000..1100).collect::<Vec<_>>());
    let err = ds
        .map_batches_actors_with(load_offset, -1, add_offset, opts)
        .count()
        .unwrap_err();
    assert!(err.to_string().contains("offset -1 is negative"), "{err}");
}

#[test]
fn train_test_split_partitions_the_rows() {
    cluster();
    let ds = rayforge_data::range_with_blocks(1000, 3);
    let (train, test) = ds.train_test_split(0.25, Some(3)).unwrap();
    let (a, b) = (train.take_batch(2000).unwrap(), test.take_batch(2000).unwrap());
    assert_eq!((a.num_rows(), b.num_rows()), (750, 250));
    let mut all: Vec<i64> = i64s(&a, "id").into_iter().chain(i64s(&b, "id")).collect();
    assert_ne!(all, (0..1000).collect::<Vec<_>>(), "shuffled");
    all.sort();
    assert_eq!(all, (0..1000).collect::<Vec<_>>());
    let (train, test) = ds.train_test_split(0.1, None).unwrap();
    assert_eq!(
        i64s(&test.take_batch(2000).unwrap(), "id"),
        (900..1000).collect::<Vec<_>>()
    );
    assert_eq!(train.count().unwrap(), 900);
    assert!(matches!(ds.train_test_split(1.5, None), Err(Error::InvalidArgument(_))));
}

/// A consumer of a streaming split: its rows' count and the sum of their ids.
#[rayforge::remote]
fn consume(it: rayforge_data::DataIterator) -> (u64, i64, Vec<i64>) {
    let (mut n, mut sum, mut ids) = (0u64, 0i64, Vec::new());
    for b in it.iter_batches(Some(100)) {
        let b = b.expect("batch");
        let v = i64s(&b, "id");
        n += v.len() as u64;
        sum += v.iter().sum::<i64>();
        ids.extend(v);
    }
    (n, sum, ids)
}

#[test]
fn streaming_split_feeds_consumers_in_other_processes() {
    cluster();
    let its = rayforge_data::range_with_blocks(10_000, 10)
        .streaming_split(3, false)
        .unwrap();
    let refs: Vec<_> = its
        .into_iter()
        .map(|it| consume::options().num_cpus(0.25).remote(it))
        .collect();
    let outs: Vec<(u64, i64, Vec<i64>)> = refs.iter().map(|r| r.get().unwrap()).collect();
    assert_eq!(outs.iter().map(|o| o.0).sum::<u64>(), 10_000);
    assert_eq!(outs.iter().map(|o| o.1).sum::<i64>(), (0..10_000).sum::<i64>());
    assert!(outs.iter().all(|o| o.0 >= 1000), "every consumer got blocks");

    // Equal: exactly the same number of rows each, no row twice.
    let its = rayforge_data::range_with_blocks(1000, 7)
        .streaming_split(3, true)
        .unwrap();
    let refs: Vec<_> = its
        .into_iter()
        .map(|it| consume::options().num_cpus(0.25).remote(it))
        .collect();
    let outs: Vec<(u64, i64, Vec<i64>)> = refs.iter().map(|r| r.get().unwrap()).collect();
    assert!(
        outs.iter().all(|o| o.0 == 333),
        "{:?}",
        outs.iter().map(|o| o.0).collect::<Vec<_>>()
    );
    let mut all: Vec<i64> = outs.into_iter().flat_map(|o| o.2).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 999);
    assert!(matches!(
        rayforge_data::range(10).streaming_split(0, true),
        Err(Error::InvalidArgument(_))
    ));
}

/// Consumes `epochs` passes of a split: each pass's row count and id sum.
#[rayforge::remote]
fn consume_epochs(it: rayforge_data::DataIterator, epochs: usize) -> Vec<(u64, i64)> {
    consume_epochs_leaving(it, epochs, None)
}

/// [`consume_epochs`], leaving the first epoch after `leave_after` batches.
#[rayforge::remote]
fn consume_epochs_leaving(
    it: rayforge_data::DataIterator,
    epochs: usize,
    leave_after: Option<usize>,
) -> Vec<(u64, i64)> {
    (0..epochs)
        .map(|epoch| {
            let (mut n, mut sum) = (0u64, 0i64);
            let take = if epoch == 0 {
                leave_after.unwrap_or(usize::MAX)
            } else {
                usize::MAX
            };
            for b in it.iter_batches(Some(64)).take(take) {
                let v = i64s(&b.expect("batch"), "id");
                n += v.len() as u64;
                sum += v.iter().sum::<i64>();
            }
            (n, sum)
        })
        .collect()
}

#[test]
fn a_streaming_split_serves_one_pass_per_epoch_until_closed() {
    cluster();
    let its = rayforge_data::range_with_blocks(600, 6)
        .streaming_split(2, true)
        .unwrap();
    let refs: Vec<_> = its
        .iter()
        .map(|it| consume_epochs::options().num_cpus(0.25).remote(it.clone(), 3))
        .collect();
    let outs: Vec<Vec<(u64, i64)>> = refs.iter().map(|r| r.get().unwrap()).collect();
    for epoch in 0..3 {
        assert_eq!(outs[0][epoch].0 + outs[1][epoch].0, 600, "epoch {epoch}: {outs:?}");
        assert_eq!(
            outs[0][epoch].1 + outs[1][epoch].1,
            (0..600).sum::<i64>(),
            "epoch {epoch}"
        );
    }
    its[0].close().unwrap();
}

#[test]
fn a_consumer_that_leaves_an_epoch_early_gets_only_the_next_epochs_rows() {
    cluster();
    // Many blocks, so that the first epoch has plenty left when consumer 0
    // stops after one batch.
    let its = rayforge_data::range_with_blocks(1200, 24)
        .streaming_split(2, true)
        .unwrap();
    let leaving = consume_epochs_leaving::options()
        .num_cpus(0.25)
        .remote(its[0].clone(), 3, Some(1));
    let full = consume_epochs::options().num_cpus(0.25).remote(its[1].clone(), 3);
    let (leaving, full) = (leaving.get().unwrap(), full.get().unwrap());
    assert_eq!(leaving[0].0, 64, "one batch of the first epoch");
    for epoch in 1..3 {
        // Without the epoch on each block, the first epoch's leftovers came
        // first here, and this epoch's rows spilled into the next.
        assert_eq!(leaving[epoch].0, 600, "epoch {epoch}: {leaving:?}");
        assert_eq!(
            leaving[epoch].1 + full[epoch].1,
            (0..1200).sum::<i64>(),
            "epoch {epoch}: {leaving:?} {full:?}"
        );
    }
    assert!(full.iter().all(|e| e.0 == 600), "{full:?}");
    its[0].close().unwrap();
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct User {
    uid: i64,
    region: i64,
    name: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Order {
    uid: i64,
    region: i64,
    amount: i64,
    name: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, PartialOrd)]
struct Joined {
    uid: i64,
    region: i64,
    name: Option<String>,
    amount: Option<i64>,
    name_1: Option<String>,
}

#[test]
fn joins_match_a_nested_loop_on_two_keys_for_every_join_type() {
    use rayforge_data::JoinType;
    cluster();
    let users: Vec<User> = (0..20)
        .map(|uid| User {
            uid,
            region: uid % 3,
            name: format!("u{uid}"),
        })
        .collect();
    // Some orders name users that do not exist (uid 20..24), some the
    // right user in the wrong region: neither matches on both keys.
    let orders: Vec<Order> = (0..30)
        .map(|i| {
            let uid = (i * 7) % 25;
            Order {
                uid,
                region: if i % 10 == 0 { uid % 3 + 1 } else { uid % 3 },
                amount: i,
                name: format!("o{i}"),
            }
        })
        .collect();
    let left = rayforge_data::from_items(&users).unwrap().repartition(3);
    let right = rayforge_data::from_items(&orders).unwrap().repartition(4);
    let matches = |u: &User, o: &Order| u.uid == o.uid && u.region == o.region;
    let both = |u: &User, o: &Order| Joined {
        uid: u.uid,
        region: u.region,
        name: Some(u.name.clone()),
        amount: Some(o.amount),
        name_1: Some(o.name.clone()),
    };
    let inner: Vec<Joined> = users
        .iter()
        .flat_map(|u| orders.iter().filter(move |o| matches(u, o)).map(move |o| both(u, o)))
        .collect();
    let left_only: Vec<Joined> = users
        .iter()
        .filter(|u| !orders.iter().any(|o| matches(u, o)))
        .map(|u| Joined {
            uid: u.uid,
            region: u.region,
            name: Some(u.name.clone()),
            amount: None,
            name_1: None,
        })
        .collect();
    let right_only: Vec<Joined> = orders
        .iter()
        .filter(|o| !users.iter().any(|u| matches(u, o)))
        .map(|o| Joined {
            uid: o.uid,
            region: o.region,
            name: None,
            amount: Some(o.amount),
            name_1: Some(o.name.clone()),
        })
        .collect();
    assert!(!inner.is_empty() && !left_only.is_empty() && !right_only.is_empty());
    let sorted = |mut v: Vec<Joined>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    };
    let cases = [
        (JoinType::Inner, inner.clone()),
        (JoinType::LeftOuter, [inner.clone(), left_only.clone()].concat()),
        (JoinType::RightOuter, [inner.clone(), right_only.clone()].concat()),
        (JoinType::FullOuter, [inner, left_only, right_only].concat()),
    ];
    for (how, want) in cases {
        let ds = left.join(&right, &["uid", "region"], how);
        let names: Vec<String> = ds.schema().unwrap().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["uid", "region", "name", "amount", "name_1"], "{how:?}");
        let got: Vec<Joined> = ds.take_all().unwrap();
        assert_eq!(sorted(got), sorted(want), "{how:?}");
    }
    // Keys that are not columns of a side, or differ in type, are refused
    // naming them.
    let e = left
        .join(&right, &["amount"], JoinType::Inner)
        .count()
        .unwrap_err()
        .to_string();
    assert!(e.contains("`amount`") && e.contains("left"), "{e}");
    let cast = right.sql("SELECT CAST(uid AS DOUBLE) AS uid, amount FROM ds").unwrap();
    let e = left
        .join(&cast, &["uid"], JoinType::Inner)
        .count()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`uid`") && e.contains("Int64") && e.contains("Float64"),
        "{e}"
    );
}

#[test]
fn unique_values_of_a_column_in_order_with_nulls_last() {
    cluster();
    let ds = rayforge_data::from_items(&rows(50)).unwrap().repartition(4);
    assert_eq!(ds.unique::<i64>("key").unwrap(), vec![0, 1, 2, 3, 4]);
    let names: Vec<String> = ds.unique("s").unwrap();
    assert_eq!(names.len(), 50);
    assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
    // A column with nulls: Option values, the null last.
    let with_null = ds
        .sql("SELECT CASE WHEN key = 2 THEN NULL ELSE key * 10 END AS k FROM ds")
        .unwrap();
    assert_eq!(
        with_null.unique::<Option<i64>>("k").unwrap(),
        vec![Some(0), Some(10), Some(30), Some(40), None]
    );
    let e = with_null.unique::<i64>("k").unwrap_err().to_string();
    assert!(e.contains("unique(`k`)") && e.contains("null"), "{e}");
    let e = ds.unique::<i64>("nope").unwrap_err().to_string();
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn sort_by_several_keys_each_in_its_own_direction() {
    cluster();
    let mut want = rows(300);
    let ds = rayforge_data::from_items(&want)
        .unwrap()
        .random_shuffle(Some(3))
        .repartition(5);
    let got: Vec<Row> = ds
        .sort_by(&[("key", false), ("x", true), ("id", false)])
        .take_all()
        .unwrap();
    want.sort_by(|a, b| a.key.cmp(&b.key).then(b.x.total_cmp(&a.x)).then(a.id.cmp(&b.id)));
    assert_eq!(got, want);
    // Nulls last, descending too; an empty key list or an unknown key is an error.
    let with_null = ds
        .sql("SELECT CASE WHEN id % 4 = 0 THEN NULL ELSE key END AS k, id FROM ds")
        .unwrap();
    let b = with_null
        .sort_by(&[("k", true), ("id", false)])
        .take_batch(300)
        .unwrap();
    let k = b.column_by_name("k").unwrap();
    assert_eq!(k.null_count(), 75);
    assert!((0..225).all(|i| k.is_valid(i)) && (225..300).all(|i| k.is_null(i)));
    assert_eq!(i64s(&b.slice(225, 75), "id"), (0..300).step_by(4).collect::<Vec<i64>>());
    assert!(
        ds.sort_by(&[])
            .count()
            .unwrap_err()
            .to_string()
            .contains("at least one key")
    );
    let e = ds
        .sort_by(&[("key", false), ("nope", true)])
        .count()
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
}

/// Scores a batch; the first time it meets row 777 of a run (column `run`),
/// its process dies (a marker file remembers it).
fn score_or_die(s: &mut Scorer, b: RecordBatch) -> Result<RecordBatch, Error> {
    let ids = i64s(&b, "id");
    let run = i64s(&b, "run")[0];
    let marker = std::env::temp_dir().join(format!("rayforge-data-pool-death-{run}"));
    if ids.contains(&777)
        && std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
            .is_ok()
    {
        std::process::exit(3);
    }
    score(s, b.project(&[0]).map_err(|e| Error::InvalidArgument(e.to_string()))?)
}

#[test]
fn an_actor_pool_replaces_a_dead_actor_and_processes_its_blocks_again() {
    cluster();
    let run = std::process::id() as i64;
    let marker = std::env::temp_dir().join(format!("rayforge-data-pool-death-{run}"));
    let _ = std::fs::remove_file(&marker);
    let opts = rayforge_data::ActorPoolOptions {
        concurrency: (2, 2),
        batch_size: None,
        num_cpus: 0.25,
        num_gpus: 0.0,
    };
    let ds = rayforge_data::range_with_blocks(2000, 10)
        .sql(&format!("SELECT id, {run} AS run FROM ds"))
        .unwrap()
        .repartition(10)
        .map_batches_actors(load_scorer, score_or_die, opts);
    let b = ds.take_batch(10_000).unwrap();
    assert!(marker.exists(), "an actor died");
    // Every row, in order, none lost with the dead actor.
    assert_eq!(i64s(&b, "id"), (0..2000).collect::<Vec<_>>());
    let pids: std::collections::BTreeSet<i64> = i64s(&b, "pid").into_iter().collect();
    assert!(
        pids.len() >= 2,
        "the dead actor's successor finished the work: {pids:?}"
    );
    let _ = std::fs::remove_file(&marker);
}

#[test]
fn an_actor_pool_does_not_grow_past_the_free_cpus_and_finishes() {
    cluster();
    // Whole-CPU actors on 2 CPUs, up to 4, fed by tasks that need a CPU too:
    // actors that could not start would hold the blocks queued on them,
    // and actors holding every CPU would starve the input's tasks.
    let opts = rayforge_data::ActorPoolOptions {
        concurrency: (1, 4),
        batch_size: None,
        num_cpus: 1.0,
        num_gpus: 0.0,
    };
    let ds = rayforge_data::range_with_blocks(3000, 30)
        .map_batches(double_id)
        .map_batches_actors(load_scorer, score, opts);
    let (tx, rx) = std::sync::mpsc::channel();
    let ds2 = ds.clone();
    std::thread::spawn(move || {
        let _ = tx.send(ds2.take_batch(10_000).map(|b| i64s(&b, "id")));
    });
    let ids = rx
        .recv_timeout(std::time::Duration::from_secs(300))
        .expect("the pool finishes")
        .unwrap();
    assert_eq!(ids, (0..3000).map(|i| i * 2).collect::<Vec<_>>());
    let stats = ds.stats();
    assert!(stats.contains("1 actors") || stats.contains("2 actors"), "{stats}");
}
