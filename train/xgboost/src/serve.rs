//! Serving a model over HTTP with rayforge-serve: [`XGBoostModel`] is a
//! deployment that loads a model once per replica (from a checkpoint in
//! storage, on any node, or a file) and answers JSON rows with predictions.
//! Rows arriving together are predicted together (one in-place prediction
//! per batch).
//!
//! A program registers it under a name for `serve.toml`
//! (`registry.deployment::<XGBoostModel>("XGBoost")`) or deploys it itself:
//!
//! ```toml
//! [[applications.deployments]]
//! name = "Model"
//! deployment = "XGBoost"
//! user_config = { checkpoint = "cluster://rayforge_results/xgb/checkpoint_000050", max_batch_size = 64 }
//! ```
//!
//! A request is one row: an object of feature values by name (`{"age": 41,
//! "income": 52000}`; a feature left out is missing, as XGBoost treats NaN)
//! or an array of them in the model's order. The answer is
//! `{"prediction": p}` (a list for models with several outputs per row).
//! A feature the model does not know, a row of the wrong length or a value
//! that is not a number is a 400 naming it.

use std::time::Duration;

use parking_lot::Mutex;
use rayforge_serve::{Batcher, Context, Deployment, Json};
use serde::Deserialize;
use serde_json::Value;

use crate::booster::Booster;
use crate::trainer::MODEL_FILE;

/// The deployment's user config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XGBoostModelConfig {
    /// A checkpoint holding the model (a path, or a storage URI such as
    /// `cluster://...` or `s3://...`, downloaded to the replica's node).
    pub checkpoint: Option<String>,
    /// The model file: its name inside the checkpoint (default
    /// `model.ubj`), or, without `checkpoint`, its path.
    #[serde(default)]
    pub model_path: String,
    /// Most rows per prediction (default 64).
    pub max_batch_size: Option<usize>,
    /// How long a batch gathers rows (default 2 ms).
    pub batch_wait_ms: Option<u64>,
}

/// A replica's model.
pub struct XGBoostModel {
    booster: Mutex<Booster>,
    features: Vec<String>,
    batcher: Batcher<Vec<f32>, rayforge_serve::Result<Value>>,
}

fn invalid(what: String) -> rayforge_serve::Error {
    rayforge_serve::Error::Invalid(what)
}

/// A prediction that failed (Serve names the deployment).
fn failed(message: String) -> rayforge_serve::Error {
    rayforge_serve::Error::User {
        deployment: String::new(),
        message,
    }
}

/// Loads the model a config names.
fn load(c: &XGBoostModelConfig) -> rayforge_serve::Result<(Booster, Vec<String>)> {
    let bytes = match &c.checkpoint {
        Some(location) => {
            let name = if c.model_path.is_empty() {
                MODEL_FILE
            } else {
                &c.model_path
            };
            let ckpt = rayforge::checkpoint::Checkpoint::load(location)
                .map_err(|e| invalid(format!("user_config.checkpoint `{location}`: {e}")))?;
            ckpt.read(name).map_err(|e| {
                invalid(format!(
                    "user_config.checkpoint `{location}` has no readable `{name}` (set user_config.model_path): {e}"
                ))
            })?
        }
        None if c.model_path.is_empty() => {
            return Err(invalid(
                "user_config.checkpoint (or user_config.model_path) is required".into(),
            ));
        }
        None => std::fs::read(&c.model_path)
            .map_err(|e| invalid(format!("user_config.model_path `{}`: {e}", c.model_path)))?,
    };
    let booster = Booster::load(&bytes).map_err(|e| invalid(format!("loading the model: {e}")))?;
    let features = booster.feature_names().map_err(|e| invalid(e.to_string()))?;
    let n = booster.num_features().map_err(|e| invalid(e.to_string()))? as usize;
    let features = if features.len() == n {
        features
    } else {
        (0..n).map(|i| format!("f{i}")).collect()
    };
    tracing::info!(checkpoint = ?c.checkpoint, features = n, "XGBoost model loaded");
    Ok((booster, features))
}

impl XGBoostModel {
    /// One request's row as the model's feature vector.
    fn row(&self, v: Value) -> rayforge_serve::Result<Vec<f32>> {
        let bad = |m: String| rayforge_serve::Error::BadRequest(m);
        let number = |name: &str, v: &Value| -> rayforge_serve::Result<f32> {
            match v {
                Value::Number(n) => n
                    .as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| bad(format!("`{name}` is not a number"))),
                Value::Bool(b) => Ok(f32::from(u8::from(*b))),
                Value::Null => Ok(f32::NAN),
                other => Err(bad(format!("`{name}` is {other}, not a number"))),
            }
        };
        match v {
            Value::Array(items) => {
                if items.len() != self.features.len() {
                    return Err(bad(format!(
                        "a row of {} values; the model takes {} ({})",
                        items.len(),
                        self.features.len(),
                        self.features.join(", ")
                    )));
                }
                items
                    .iter()
                    .zip(&self.features)
                    .map(|(v, name)| number(name, v))
                    .collect()
            }
            Value::Object(map) => {
                if let Some(unknown) = map.keys().find(|k| !self.features.contains(k)) {
                    return Err(bad(format!(
                        "the model has no feature `{unknown}` (it has: {})",
                        self.features.join(", ")
                    )));
                }
                self.features
                    .iter()
                    .map(|name| map.get(name).map_or(Ok(f32::NAN), |v| number(name, v)))
                    .collect()
            }
            other => Err(bad(format!(
                "a row is an object of features by name or an array of values, not {other}"
            ))),
        }
    }

    /// Predicts rows together; a failure fails every row of the batch.
    fn predict_all(&self, rows: Vec<Vec<f32>>) -> Vec<rayforge_serve::Result<Value>> {
        let n = rows.len();
        let k = self.features.len();
        let flat: Vec<f32> = rows.into_iter().flatten().collect();
        let out = self.booster.lock().predict_dense(&flat, n, k);
        match out {
            Ok(p) if n > 0 && p.len() % n == 0 => {
                let per = p.len() / n;
                p.chunks(per.max(1))
                    .map(|c| {
                        Ok(if per == 1 {
                            serde_json::json!({ "prediction": c[0] })
                        } else {
                            serde_json::json!({ "prediction": c })
                        })
                    })
                    .collect()
            }
            Ok(p) => (0..n)
                .map(|_| Err(failed(format!("{} predictions for {n} rows", p.len()))))
                .collect(),
            Err(e) => (0..n).map(|_| Err(failed(e.to_string()))).collect(),
        }
    }
}

impl Deployment for XGBoostModel {
    type Config = XGBoostModelConfig;
    type Request = Json<Value>;
    type Response = Json<Value>;

    fn new(_: &Context, c: XGBoostModelConfig) -> rayforge_serve::Result<Self> {
        let (booster, features) = load(&c)?;
        Ok(XGBoostModel {
            booster: Mutex::new(booster),
            features,
            batcher: Batcher::new(
                c.max_batch_size.unwrap_or(64),
                Duration::from_millis(c.batch_wait_ms.unwrap_or(2)),
            ),
        })
    }

    /// A new checkpoint or model loads that model (the old one stays when
    /// loading fails); batch settings apply at once.
    fn reconfigure(&mut self, c: XGBoostModelConfig) -> rayforge_serve::Result<()> {
        let (booster, features) = load(&c)?;
        *self.booster.lock() = booster;
        self.features = features;
        self.batcher = Batcher::new(
            c.max_batch_size.unwrap_or(64),
            Duration::from_millis(c.batch_wait_ms.unwrap_or(2)),
        );
        Ok(())
    }

    async fn handle(&self, Json(row): Json<Value>) -> rayforge_serve::Result<Json<Value>> {
        let row = self.row(row)?;
        let out = self
            .batcher
            .call(row, |rows| async move { Ok(self.predict_all(rows)) })
            .await??;
        Ok(Json(out))
    }
}
