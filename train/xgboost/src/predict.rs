//! Batch prediction over a rayforge-data dataset, as Ray's
//! `ds.map_batches(Predictor, concurrency=...)`: a pool of actors, each
//! loading the model of a checkpoint once (from whatever node wrote it) and
//! appending its predictions to the batches that pass through it. The
//! output stays in the object store, block by block.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array};
use arrow::record_batch::RecordBatch;
use rayforge::checkpoint::Checkpoint;
use rayforge_data::{ActorPoolOptions, Dataset};
use serde::{Deserialize, Serialize};

use crate::booster::Booster;
use crate::dmatrix::{DMatrix, DataSpec};
use crate::error::{Error, Result};
use crate::trainer::MODEL_FILE;

/// How [`predict`] runs.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// The feature columns, in the model's order (default: the names the
    /// model was trained with).
    pub features: Option<Vec<String>>,
    /// The column the predictions go to (default `prediction`; a model with
    /// several outputs per row, as `multi:softprob`, gives `prediction_0`,
    /// `prediction_1`, ...).
    pub column: String,
    /// The actor pool: its size, rows per call, CPUs per actor.
    pub pool: ActorPoolOptions,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions {
            features: None,
            column: "prediction".into(),
            pool: ActorPoolOptions::default(),
        }
    }
}

/// What each actor is built from.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PredictorSpec {
    /// The checkpoint's location (a path or storage URI).
    checkpoint: String,
    features: Option<Vec<String>>,
    column: String,
}

/// An actor's model.
struct Predictor {
    booster: Booster,
    data: DataSpec,
    column: String,
}

fn load(spec: PredictorSpec) -> std::result::Result<Predictor, rayforge_data::Error> {
    let load = || -> Result<Predictor> {
        let ckpt = Checkpoint::load(&spec.checkpoint)?;
        let booster = Booster::load(&ckpt.read(MODEL_FILE)?)?;
        let features = match spec.features {
            Some(f) => Some(f),
            None => Some(booster.feature_names()?).filter(|f| !f.is_empty()),
        };
        Ok(Predictor {
            booster,
            data: DataSpec {
                label: None,
                weight: None,
                features,
            },
            column: spec.column,
        })
    };
    load().map_err(|e| rayforge_data::Error::User(format!("loading the model of {}: {e}", spec.checkpoint)))
}

fn score(p: &mut Predictor, batch: RecordBatch) -> std::result::Result<RecordBatch, rayforge_data::Error> {
    if batch.num_rows() == 0 {
        return Ok(batch);
    }
    let run = || -> Result<RecordBatch> {
        let d = DMatrix::from_batch(&batch, &p.data, "prediction input")?;
        let out = p.booster.predict(&d)?;
        let rows = batch.num_rows();
        let per_row = out.len() / rows;
        if per_row * rows != out.len() || per_row == 0 {
            return Err(Error::XGBoost(format!("{} predictions for {rows} rows", out.len())));
        }
        let mut columns: Vec<(String, ArrayRef)> = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(f, c)| (f.name().clone(), c.clone()))
            .collect();
        if per_row == 1 {
            columns.push((p.column.clone(), Arc::new(Float32Array::from(out)) as ArrayRef));
        } else {
            for k in 0..per_row {
                let col: Vec<f32> = out.iter().skip(k).step_by(per_row).copied().collect();
                columns.push((
                    format!("{}_{k}", p.column),
                    Arc::new(Float32Array::from(col)) as ArrayRef,
                ));
            }
        }
        Ok(RecordBatch::try_from_iter(columns)?)
    };
    run().map_err(|e| rayforge_data::Error::User(e.to_string()))
}

/// `ds` with the predictions of the model in `checkpoint` appended (see
/// [`PredictOptions`]), computed by a pool of actors that each load the
/// model once. Lazy, as every dataset: it runs when consumed.
///
/// ```no_run
/// # fn f(result: rayforge_xgboost::XGBoostResult, rows: rayforge_data::Dataset) -> rayforge_xgboost::Result<()> {
/// let scored = rayforge_xgboost::predict(&rows, result.checkpoint().unwrap(), Default::default());
/// scored.write_parquet("scored/")?;
/// # Ok(()) }
/// ```
pub fn predict(ds: &Dataset, checkpoint: &Checkpoint, opts: PredictOptions) -> Dataset {
    let spec = PredictorSpec {
        checkpoint: checkpoint.location(),
        features: opts.features,
        column: opts.column,
    };
    ds.map_batches_actors_with(load, spec, score, opts.pool)
}
