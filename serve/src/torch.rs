//! Serving TorchScript models through tch (feature `torch`).
//!
//! [`TorchScript`] is a deployment that loads a TorchScript file once per
//! replica and answers rows of features with rows of outputs. Concurrent
//! requests are batched: rows arriving together go through one `forward` as
//! one `[batch, features]` tensor.
//!
//! ```toml
//! [[applications.deployments]]
//! name = "Model"
//! deployment = "TorchScript"
//! user_config = { model_path = "model.pt", max_batch_size = 32, batch_wait_ms = 2 }
//! ```
//!
//! Or the model of a checkpoint in storage (a Train run's, on any node):
//! each replica downloads it to its own node's cache first.
//!
//! ```toml
//! user_config = { checkpoint = "cluster://rayforge_results/mlp/checkpoint_000010", model_path = "model.pt" }
//! ```

use std::time::Duration;

use parking_lot::Mutex;
use serde::Deserialize;
use tch::{CModule, Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::{Batcher, Context, Deployment, Json};

/// The model's user config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TorchScriptConfig {
    /// The TorchScript file (`torch.jit.save`); with `checkpoint`, its
    /// name inside the checkpoint (default `model.pt`).
    #[serde(default)]
    pub model_path: String,
    /// A checkpoint holding the model: a path, or the storage URI of a
    /// checkpoint directory (`cluster://...`, `s3://...`), downloaded to
    /// the replica's node ([`rayforge::checkpoint::Checkpoint::load`]).
    pub checkpoint: Option<String>,
    /// `cpu`, `cuda`, or `auto` (CUDA when there is one; the default).
    pub device: Option<String>,
    /// Most rows per forward pass (default 32).
    pub max_batch_size: Option<usize>,
    /// How long a batch gathers rows (default 2 ms).
    pub batch_wait_ms: Option<u64>,
}

/// A TorchScript model: a request is one row of `f32` features (JSON
/// array), the response the model's output row.
pub struct TorchScript {
    module: Mutex<CModule>,
    device: Device,
    batcher: Batcher<Vec<f32>, Result<Vec<f32>>>,
}

fn torch_error(what: &str, e: tch::TchError) -> Error {
    Error::User {
        deployment: String::new(),
        message: format!("{what}: {e}"),
    }
}

impl TorchScript {
    /// Runs rows through the model: rows of one width go through one
    /// forward pass together; a failing pass fails only its own rows.
    fn forward_all(&self, rows: Vec<Vec<f32>>) -> Vec<Result<Vec<f32>>> {
        let mut out: Vec<Option<Result<Vec<f32>>>> = rows.iter().map(|_| None).collect();
        let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, r) in rows.iter().enumerate() {
            groups.entry(r.len()).or_default().push(i);
        }
        for (width, idx) in groups {
            let batch: Vec<&[f32]> = idx.iter().map(|&i| rows[i].as_slice()).collect();
            match self.forward(width, &batch) {
                Ok(ys) => {
                    for (i, y) in idx.into_iter().zip(ys) {
                        out[i] = Some(Ok(y));
                    }
                }
                Err(e) => {
                    for i in idx {
                        out[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Error::internal("a row got no output"))))
            .collect()
    }

    /// One forward pass over rows of `width` features.
    fn forward(&self, width: usize, rows: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        if width == 0 {
            return Err(Error::BadRequest("a row needs at least one feature".into()));
        }
        let n = rows.len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        let input = Tensor::from_slice(&flat)
            .reshape([n as i64, width as i64])
            .to_device(self.device);
        let out = tch::no_grad(|| self.module.lock().forward_ts(&[input])).map_err(|e| torch_error("forward", e))?;
        let out = out.to_device(Device::Cpu).to_kind(Kind::Float).reshape([n as i64, -1]);
        let cols = out.size().get(1).copied().unwrap_or(0) as usize;
        let values = Vec::<f32>::try_from(out.flatten(0, -1)).map_err(|e| torch_error("reading the output", e))?;
        Ok(values.chunks(cols.max(1)).map(<[f32]>::to_vec).collect())
    }
}

/// Loads the model a config names, on its device.
fn load(c: &TorchScriptConfig) -> Result<(CModule, Device)> {
    let model_path = match &c.checkpoint {
        Some(location) => {
            let name = if c.model_path.is_empty() {
                "model.pt"
            } else {
                &c.model_path
            };
            let ckpt = rayforge::checkpoint::Checkpoint::load(location)
                .map_err(|e| Error::Invalid(format!("user_config.checkpoint `{location}`: {e}")))?;
            let file = ckpt.file(name);
            if !file.is_file() {
                return Err(Error::Invalid(format!(
                    "user_config.checkpoint `{location}` has no file `{name}` (set user_config.model_path)"
                )));
            }
            file.display().to_string()
        }
        None if c.model_path.is_empty() => {
            return Err(Error::Invalid(
                "user_config.model_path (or user_config.checkpoint) is required".into(),
            ));
        }
        None => c.model_path.clone(),
    };
    let device = match c.device.as_deref().unwrap_or("auto") {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        "auto" => Device::cuda_if_available(),
        other => return Err(Error::Invalid(format!("device `{other}`: use cpu, cuda or auto"))),
    };
    let mut module =
        CModule::load_on_device(&model_path, device).map_err(|e| torch_error(&format!("loading {model_path}"), e))?;
    module.set_eval();
    tracing::info!(model = %model_path, checkpoint = ?c.checkpoint, ?device, "TorchScript model loaded");
    Ok((module, device))
}

impl Deployment for TorchScript {
    type Config = TorchScriptConfig;
    type Request = Json<Vec<f32>>;
    type Response = Json<Vec<f32>>;

    fn new(_: &Context, c: TorchScriptConfig) -> Result<Self> {
        let (module, device) = load(&c)?;
        Ok(TorchScript {
            module: Mutex::new(module),
            device,
            batcher: Batcher::new(
                c.max_batch_size.unwrap_or(32),
                Duration::from_millis(c.batch_wait_ms.unwrap_or(2)),
            ),
        })
    }

    /// A new `model_path` or `device` loads that model (the old one stays
    /// when loading fails); batch settings apply at once.
    fn reconfigure(&mut self, c: TorchScriptConfig) -> Result<()> {
        let (module, device) = load(&c)?;
        *self.module.lock() = module;
        self.device = device;
        self.batcher = Batcher::new(
            c.max_batch_size.unwrap_or(32),
            Duration::from_millis(c.batch_wait_ms.unwrap_or(2)),
        );
        Ok(())
    }

    async fn handle(&self, Json(row): Json<Vec<f32>>) -> Result<Json<Vec<f32>>> {
        let out = self
            .batcher
            // A forward pass runs on the replica's own thread: the replica is a
            // process of its own and the batch is the unit of work.
            .call(row, |rows| async move { Ok(self.forward_all(rows)) })
            .await??;
        Ok(Json(out))
    }
}
