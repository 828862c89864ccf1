//! [`XGBoostTrainer`]: data-parallel XGBoost on a Train gang, as Ray
//! Train's `XGBoostTrainer` (formerly xgboost-ray): one worker per shard of
//! the training data, rank 0 running XGBoost's tracker, every worker
//! boosting the same trees over XGBoost's own all-reduce; rank 0 reports
//! each round's metrics and checkpoints the model (UBJSON) through Train.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use rayforge::checkpoint::{Checkpoint, CheckpointWriter};
use rayforge_data::Dataset;
use rayforge_train::{Report, RunConfig, ScalingConfig, TrainContext, TrainResult, Trainer};
use serde::{Deserialize, Serialize};

use crate::booster::{Booster, Params};
use crate::collective::{Communicator, Tracker};
use crate::dmatrix::{DMatrix, DataSpec};
use crate::error::{Error, Result};

/// The file a checkpoint keeps the model in (XGBoost's UBJSON).
pub const MODEL_FILE: &str = "model.ubj";

/// The dataset boosted on; every dataset given is evaluated each round.
pub const TRAIN_DATASET: &str = "train";

/// What every rank runs with (the gang's config).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunSpec {
    params: Params,
    num_boost_round: usize,
    data: DataSpec,
    /// Evaluated each round, in order (XGBoost's `evals`): early stopping
    /// watches the last metric of the last one.
    eval_sets: Vec<String>,
    early_stopping_rounds: Option<usize>,
    checkpoint_frequency: usize,
    timeout_s: u64,
    nthread: usize,
}

/// Distributed XGBoost training.
///
/// ```no_run
/// use rayforge_xgboost::{XGBoostTrainer, params};
/// # fn f(train: rayforge_data::Dataset, valid: rayforge_data::Dataset) -> rayforge_xgboost::Result<()> {
/// let result = XGBoostTrainer::new(params!{"objective": "binary:logistic", "eta": 0.3, "max_depth": 6}, "label", 50)
///     .dataset("train", train)
///     .dataset("valid", valid)
///     .fit()?;
/// println!("{:?}", result.metrics());
/// let model = result.model()?;
/// # Ok(()) }
/// ```
pub struct XGBoostTrainer {
    spec: RunSpec,
    datasets: Vec<(String, Dataset)>,
    scaling: ScalingConfig,
    run: RunConfig,
    placement: Option<(rayforge::PlacementGroup, usize)>,
}

impl std::fmt::Debug for XGBoostTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XGBoostTrainer")
            .field("spec", &self.spec)
            .field("datasets", &self.datasets.iter().map(|d| &d.0).collect::<Vec<_>>())
            .field("scaling", &self.scaling)
            .field("run", &self.run)
            .finish()
    }
}

impl XGBoostTrainer {
    /// Boosts `num_boost_round` rounds with XGBoost's `params`, learning
    /// the column `label` from every other column (see
    /// [`XGBoostTrainer::features`]). Two workers of one CPU each unless
    /// [`XGBoostTrainer::scaling`] says otherwise.
    pub fn new(params: Params, label: &str, num_boost_round: usize) -> XGBoostTrainer {
        XGBoostTrainer {
            spec: RunSpec {
                params,
                num_boost_round,
                data: DataSpec::label(label),
                eval_sets: Vec::new(),
                early_stopping_rounds: None,
                checkpoint_frequency: 10,
                timeout_s: 300,
                nthread: 1,
            },
            datasets: Vec::new(),
            scaling: ScalingConfig {
                num_workers: 2,
                cpus_per_worker: 1.0,
                ..Default::default()
            },
            run: RunConfig {
                name: "xgboost".into(),
                ..Default::default()
            },
            placement: None,
        }
    }

    /// Runs the workers in bundles `first_bundle..` of a placement group
    /// someone else holds (a Tune trial's), as
    /// [`rayforge_train::Trainer::placement_group`].
    pub fn placement_group(mut self, pg: &rayforge::PlacementGroup, first_bundle: usize) -> Self {
        self.placement = Some((pg.clone(), first_bundle));
        self
    }

    /// A dataset: `"train"` is boosted on; each one (`"train"` too) is
    /// evaluated every round, its metrics reported as `NAME-METRIC`, in the
    /// order given. Each is split across the workers (`streaming_split`,
    /// every worker the same number of rows).
    pub fn dataset(mut self, name: &str, ds: Dataset) -> Self {
        self.datasets.retain(|d| d.0 != name);
        self.datasets.push((name.to_string(), ds));
        self
    }

    /// The feature columns (every column but the label and weight when not
    /// given).
    pub fn features<S: Into<String>>(mut self, columns: impl IntoIterator<Item = S>) -> Self {
        self.spec.data.features = Some(columns.into_iter().map(Into::into).collect());
        self
    }

    /// A column of per-row weights.
    pub fn weight(mut self, column: &str) -> Self {
        self.spec.data.weight = Some(column.to_string());
        self
    }

    /// Stops when the last metric of the last dataset given has not
    /// improved for `rounds` rounds (XGBoost's `early_stopping_rounds`);
    /// the model keeps every round, with `best_iteration` and `best_score`
    /// among its attributes.
    pub fn early_stopping_rounds(mut self, rounds: usize) -> Self {
        self.spec.early_stopping_rounds = Some(rounds);
        self
    }

    /// A checkpoint every `rounds` rounds (default 10; 0: only at the end),
    /// and always after the last.
    pub fn checkpoint_frequency(mut self, rounds: usize) -> Self {
        self.spec.checkpoint_frequency = rounds;
        self
    }

    /// Workers and what each holds (XGBoost uses each worker's CPUs as its
    /// threads).
    pub fn scaling(mut self, s: ScalingConfig) -> Self {
        self.scaling = s;
        self
    }

    /// Name, storage, checkpoints kept and failures allowed (a worker that
    /// dies restarts the gang from the latest checkpoint, within
    /// `failure.max_failures`).
    pub fn run_config(mut self, r: RunConfig) -> Self {
        self.spec.timeout_s = r.collective_timeout.as_secs().max(1);
        self.run = r;
        self
    }

    /// Checks what can be checked before a gang starts: the datasets, the
    /// columns, and the parameters (on a two-row model in this process).
    fn validate(&self) -> Result<()> {
        if self.spec.num_boost_round == 0 {
            return Err(Error::InvalidArgument("num_boost_round must be at least 1".into()));
        }
        let Some((_, train)) = self.datasets.iter().find(|d| d.0 == TRAIN_DATASET) else {
            return Err(Error::InvalidArgument(format!(
                "no `{TRAIN_DATASET}` dataset to boost on (give one with XGBoostTrainer::dataset)"
            )));
        };
        let schema = train.schema()?;
        let empty = RecordBatch::new_empty(schema);
        let features = {
            // The same check the workers make, on the schema alone.
            let spec = &self.spec.data;
            spec_features(spec, &empty)?
        };
        check_params(&self.spec.params, features.len())
    }

    /// Runs the gang to the end (see [`rayforge_train::Trainer::fit`]).
    pub fn fit(&self) -> Result<XGBoostResult> {
        self.fit_with(|_| {})
    }

    /// [`XGBoostTrainer::fit`], calling `on_report` with each round's
    /// report as it comes (a Tune trial passes them on this way).
    pub fn fit_with(&self, on_report: impl FnMut(&Report)) -> Result<XGBoostResult> {
        self.validate()?;
        let mut spec = self.spec.clone();
        spec.eval_sets = self.datasets.iter().map(|d| d.0.clone()).collect();
        spec.nthread = (self.scaling.cpus_per_worker.floor() as usize).max(1);
        let config = serde_json::to_value(&spec).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mut trainer = Trainer::new(boost)
            .config(config)
            .scaling(self.scaling.clone())
            .run_config(self.run.clone());
        for (name, ds) in &self.datasets {
            trainer = trainer.dataset(name, ds.clone());
        }
        if let Some((pg, first)) = &self.placement {
            trainer = trainer.placement_group(pg, *first);
        }
        Ok(XGBoostResult {
            train: trainer.fit_with(on_report)?,
        })
    }

    /// The model a checkpoint of a run holds.
    pub fn get_model(checkpoint: &Checkpoint) -> Result<Booster> {
        Booster::load(&checkpoint.read(MODEL_FILE)?)
    }
}

/// The feature columns `spec` picks from `batch`'s schema.
fn spec_features(spec: &DataSpec, batch: &RecordBatch) -> Result<Vec<String>> {
    // Built on the schema alone: an empty matrix is never made.
    let have: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
    let missing = |role: &str, c: &str| Error::MissingColumn {
        role: role.into(),
        column: c.into(),
        dataset: TRAIN_DATASET.into(),
        have: have.join(", "),
    };
    for (role, c) in [("label", &spec.label), ("weight", &spec.weight)] {
        if let Some(c) = c {
            if !have.contains(c) {
                return Err(missing(role, c));
            }
        }
    }
    match &spec.features {
        Some(f) => {
            if let Some(c) = f.iter().find(|c| !have.contains(c)) {
                return Err(missing("feature", c));
            }
            Ok(f.clone())
        }
        None => Ok(have
            .into_iter()
            .filter(|n| Some(n) != spec.label.as_ref() && Some(n) != spec.weight.as_ref())
            .collect()),
    }
}

/// Builds a model of `params` on two rows of `features` features and boosts
/// one round: a parameter XGBoost refuses or does not use fails here,
/// named, before any worker starts.
fn check_params(params: &Params, features: usize) -> Result<()> {
    use arrow::array::{ArrayRef, Float32Array};
    let mut cols: Vec<(String, ArrayRef)> = (0..features.max(1))
        .map(|i| {
            (
                format!("f{i}"),
                std::sync::Arc::new(Float32Array::from(vec![0.0, 1.0])) as ArrayRef,
            )
        })
        .collect();
    cols.push((
        "label".into(),
        std::sync::Arc::new(Float32Array::from(vec![1.0, 1.0])) as ArrayRef,
    ));
    let batch = RecordBatch::try_from_iter(cols)?;
    let d = DMatrix::from_batch(&batch, &DataSpec::label("label"), "parameter check")?;
    let mut b = Booster::new(&[&d], params)?;
    b.update(0, &d)
}

/// What a run gave: Train's result (metrics per round, checkpoints,
/// failures) and the model.
#[derive(Debug)]
pub struct XGBoostResult {
    /// The run as Train records it.
    pub train: TrainResult,
}

impl XGBoostResult {
    /// The last round's metrics: `train-rmse`, `valid-logloss`, ... as
    /// XGBoost names them, `round`, `time_this_round_s` (rank 0's boosting
    /// and evaluation) and `data_load_s` (the slowest rank's time from its
    /// shards to its matrices, in this attempt).
    pub fn metrics(&self) -> &BTreeMap<String, f64> {
        &self.train.metrics
    }

    /// The run's error, if it failed (a worker that died more often than
    /// `max_failures` allows, a bad column).
    pub fn error(&self) -> Option<&rayforge_train::Error> {
        self.train.error.as_ref()
    }

    /// The model of the latest checkpoint (the final one, for a run that
    /// finished).
    pub fn model(&self) -> Result<Booster> {
        let c = self
            .train
            .latest_checkpoint
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("the run left no checkpoint".into()))?;
        XGBoostTrainer::get_model(c)
    }

    /// The latest checkpoint.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.train.latest_checkpoint.as_ref()
    }
}

/// Whether a larger value of metric `name` is better (XGBoost's rule for
/// early stopping).
fn maximize(name: &str) -> bool {
    let metric = name.rsplit_once('-').map_or(name, |(_, m)| m);
    let base = metric.split('@').next().unwrap_or(metric);
    matches!(base, "auc" | "aucpr" | "map" | "ndcg" | "pre")
}

/// Early stopping's state, kept in the model's attributes so a resumed
/// run goes on where it was.
struct EarlyStop {
    rounds: usize,
    best: Option<(usize, f64)>,
}

impl EarlyStop {
    fn resume(rounds: usize, b: &Booster) -> Result<EarlyStop> {
        let best = match (b.attr("best_iteration")?, b.attr("best_score")?) {
            (Some(i), Some(s)) => i.parse().ok().zip(s.parse().ok()),
            _ => None,
        };
        Ok(EarlyStop { rounds, best })
    }

    /// Takes round `round`'s metrics (their last is watched); whether to
    /// stop.
    fn observe(&mut self, round: usize, watched: Option<(&str, f64)>, b: &mut Booster) -> Result<bool> {
        let Some((name, value)) = watched else {
            return Ok(false);
        };
        let better = match self.best {
            None => true,
            Some((_, best)) => {
                if maximize(name) {
                    value > best
                } else {
                    value < best
                }
            }
        };
        if better {
            self.best = Some((round, value));
            b.set_attr("best_iteration", &round.to_string())?;
            b.set_attr("best_score", &value.to_string())?;
        }
        Ok(self.best.is_some_and(|(r, _)| round >= r + self.rounds))
    }
}

/// Rank 0's tracker address, to every rank (over Train's ring, as bytes in
/// `i32`s: the length, then the JSON).
fn share_tracker_args(ctx: &mut TrainContext, args: Option<&serde_json::Value>) -> Result<serde_json::Value> {
    const SLOTS: usize = 1024;
    let mut buf = vec![0i32; SLOTS];
    if let Some(a) = args {
        let text = a.to_string();
        if text.len() >= SLOTS {
            return Err(Error::XGBoost(format!("tracker arguments too long: {text}")));
        }
        buf[0] = text.len() as i32;
        for (slot, b) in buf[1..].iter_mut().zip(text.bytes()) {
            *slot = i32::from(b);
        }
    }
    ctx.group().broadcast(&mut buf, 0)?;
    let len = (buf[0].max(0) as usize).min(SLOTS - 1);
    let bytes: Vec<u8> = buf[1..=len].iter().map(|b| *b as u8).collect();
    serde_json::from_slice(&bytes).map_err(|e| Error::XGBoost(format!("tracker arguments from rank 0: {e}")))
}

/// The rows of this rank's shard of `name`.
fn read_shard(ctx: &TrainContext, name: &str, spec: &DataSpec) -> Result<DMatrix> {
    let shard = ctx.dataset_shard(name)?;
    let batches: Vec<RecordBatch> = shard
        .iter_batches(None)
        .filter(|b| !matches!(b, Ok(b) if b.num_rows() == 0))
        .collect::<std::result::Result<_, _>>()?;
    DMatrix::from_batches(&batches, spec, name)
}

/// Every rank's training loop.
fn boost(ctx: &mut TrainContext) -> Result<()> {
    let spec: RunSpec = ctx.config()?;
    let (rank, world) = (ctx.world_rank(), ctx.world_size());
    let timeout = Duration::from_secs(spec.timeout_s);
    let tracker = if rank == 0 {
        let host = rayforge::runtime_context()?.node_ip;
        Some(Tracker::start(world, &host, timeout)?)
    } else {
        None
    };
    let args = tracker.as_ref().map(Tracker::worker_args).transpose()?;
    let args = share_tracker_args(ctx, args.as_ref())?;
    let comm = Communicator::join(&args, rank, timeout)?;
    tracing::debug!(rank, world = comm.world_size()?, "joined XGBoost's communicator");
    // Matrices are made with the communicator up (XGBoost agrees on the
    // number of columns across workers as it makes them), in the same
    // order on every rank.
    let loading = Instant::now();
    let dtrain = read_shard(ctx, TRAIN_DATASET, &spec.data)?;
    let others: Vec<(String, DMatrix)> = spec
        .eval_sets
        .iter()
        .filter(|n| n.as_str() != TRAIN_DATASET)
        .map(|n| Ok((n.clone(), read_shard(ctx, n, &spec.data)?)))
        .collect::<Result<_>>()?;
    let evals: Vec<(&str, &DMatrix)> = spec
        .eval_sets
        .iter()
        .map(|n| match others.iter().find(|o| &o.0 == n) {
            Some((_, d)) => (n.as_str(), d),
            None => (n.as_str(), &dtrain),
        })
        .collect();
    // The slowest rank's time from its shards to its matrices.
    let load_s = ctx
        .group()
        .all_gather(&[loading.elapsed().as_secs_f64()])?
        .into_iter()
        .fold(0.0, f64::max);
    let mut cache: Vec<&DMatrix> = vec![&dtrain];
    cache.extend(others.iter().map(|o| &o.1));
    let mut booster = Booster::new(&cache, &spec.params)?;
    booster.set_param("nthread", &spec.nthread.to_string())?;
    if let Some(c) = ctx.checkpoint() {
        booster.load_model(&c.read(MODEL_FILE)?)?;
    }
    let start = booster.boosted_rounds()?;
    let mut stopper = spec
        .early_stopping_rounds
        .map(|r| EarlyStop::resume(r, &booster))
        .transpose()?;
    let last_set = spec.eval_sets.last().cloned();
    for round in start..spec.num_boost_round {
        let began = Instant::now();
        booster.update(round, &dtrain)?;
        let mut metrics = booster.eval(round, &evals)?;
        let round_s = began.elapsed().as_secs_f64();
        // XGBoost watches the last metric of the last set.
        let watched = last_set.as_ref().and_then(|set| {
            let prefix = format!("{set}-");
            let mut names: Vec<(&String, &f64)> = metrics.iter().filter(|(k, _)| k.starts_with(&prefix)).collect();
            names.pop().map(|(k, v)| (k.as_str(), *v))
        });
        let stop = match stopper.as_mut() {
            Some(s) => s.observe(round, watched, &mut booster)?,
            None => false,
        };
        let done = stop || round + 1 == spec.num_boost_round;
        let every = spec.checkpoint_frequency;
        let checkpoint = if done || (every > 0 && (round + 1) % every == 0) {
            let mut w = CheckpointWriter::new()?;
            w.write(MODEL_FILE, &booster.save()?)?;
            Some(w)
        } else {
            None
        };
        metrics.insert("round".into(), (round + 1) as f64);
        metrics.insert("time_this_round_s".into(), round_s);
        metrics.insert("data_load_s".into(), load_s);
        ctx.report(metrics, checkpoint)?;
        if stop {
            break;
        }
    }
    drop(comm);
    if let Some(t) = tracker {
        t.wait()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_stopping_knows_which_metrics_grow() {
        assert!(maximize("valid-auc"));
        assert!(maximize("valid-ndcg@5"));
        assert!(!maximize("valid-logloss"));
        assert!(!maximize("train-rmse"));
    }
}
