//! # rayforge-xgboost
//!
//! Gradient-boosted trees on rayforge with XGBoost's own library, as Ray
//! Train's `XGBoostTrainer` (formerly xgboost-ray): a gang of worker actors
//! (Train's, in a placement group), each turning its shard of a
//! rayforge-data dataset into an XGBoost [`DMatrix`] from the Arrow buffers,
//! boosting together over XGBoost's own collective (the tracker on rank 0,
//! its address shared through the gang), so the trees are those one process
//! would grow on all the rows. Each round's metrics are reported as Train
//! reports are, the model is checkpointed in XGBoost's UBJSON, a run resumes
//! boosting from its checkpoint, and a worker that dies restarts the gang
//! from the latest one.
//!
//! `libxgboost.so` (3.2, from PyPI's `xgboost-cpu` wheel: `source
//! scripts/xgboost.sh`) is loaded at run time through a small binding of our
//! own to its C API ([`library`] says which was loaded); nothing of XGBoost,
//! nor libtorch, is needed to build.
//!
//! ```no_run
//! use rayforge_xgboost::{params, XGBoostTrainer};
//!
//! #[rayforge::main]
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     rayforge::init(rayforge::Config::default())?;
//!     let rows = rayforge_data::read_parquet("higgs.parquet")?;
//!     let (train, valid) = rows.train_test_split(0.2, Some(42))?;
//!     let result = XGBoostTrainer::new(
//!         params! {"objective": "binary:logistic", "tree_method": "hist", "eta": 0.1, "max_depth": 6,
//!                  "eval_metric": ["logloss", "auc"]},
//!         "label",
//!         100,
//!     )
//!     .dataset("train", train)
//!     .dataset("valid", valid)
//!     .early_stopping_rounds(10)
//!     .fit()?;
//!     println!("valid-auc {}", result.metrics()["valid-auc"]);
//!     let model = result.model()?;
//!     println!("{} rounds", model.boosted_rounds()?);
//!     Ok(())
//! }
//! ```

#![warn(missing_docs)]

mod booster;
pub mod collective;
mod dmatrix;
mod error;
mod ffi;
mod predict;
pub mod serve;
mod trainer;
pub mod tune;

pub use booster::{train, Booster, Params};
pub use dmatrix::{library, DMatrix, DataSpec};
pub use error::{Error, Result};
pub use ffi::{cache_dirs, XGBOOST_VERSION};
pub use predict::{predict, PredictOptions};
pub use trainer::{XGBoostResult, XGBoostTrainer, MODEL_FILE, TRAIN_DATASET};

/// serde_json, for [`params!`].
#[doc(hidden)]
pub use serde_json;

/// XGBoost parameters as a [`Params`] map, as Python's dict:
/// `params!{"objective": "reg:squarederror", "eta": 0.3, "eval_metric": ["rmse", "mae"]}`.
#[macro_export]
macro_rules! params {
    ($($k:literal : $v:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut m = $crate::Params::new();
        $( m.insert($k.to_string(), $crate::serde_json::json!($v)); )*
        m
    }};
}
