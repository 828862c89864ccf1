//! [`DMatrix`]: XGBoost's data matrix, made from Arrow record batches.
//!
//! Each feature column goes to XGBoost as an `__array_interface__` pointing
//! at the Arrow column's own values buffer (`XGDMatrixCreateFromColumnar`),
//! so numeric columns without nulls are read where they lie, with no copy or
//! conversion of ours; XGBoost builds its own compressed matrix from them.
//! Columns with nulls become `f32` with NaN for the nulls (XGBoost's
//! missing value), booleans become bytes. The batches of a shard are joined
//! into one first (a copy of the buffers, not per value).

use std::ffi::c_char;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ffi::{self, api, check, cstr, BstUlong, Handle};

/// Which columns of a dataset are what: the label, an optional weight, and
/// the features (every other column when not named).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    /// The label column (none for data only predicted on).
    pub label: Option<String>,
    /// A column of per-row weights.
    pub weight: Option<String>,
    /// The feature columns, in order; `None`: every column but the label
    /// and weight, in the dataset's order.
    pub features: Option<Vec<String>>,
}

impl DataSpec {
    /// Every column but `label` is a feature.
    pub fn label(label: impl Into<String>) -> DataSpec {
        DataSpec {
            label: Some(label.into()),
            ..Default::default()
        }
    }

    /// The feature columns of `schema`'s fields, checked to be there.
    fn feature_names(&self, batch: &RecordBatch, dataset: &str) -> Result<Vec<String>> {
        let have = || {
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (role, c) in [("label", &self.label), ("weight", &self.weight)] {
            if let Some(c) = c {
                if batch.column_by_name(c).is_none() {
                    return Err(Error::MissingColumn {
                        role: role.into(),
                        column: c.clone(),
                        dataset: dataset.into(),
                        have: have(),
                    });
                }
            }
        }
        match &self.features {
            Some(f) => {
                if f.is_empty() {
                    return Err(Error::InvalidArgument("the list of feature columns is empty".into()));
                }
                for c in f {
                    if batch.column_by_name(c).is_none() {
                        return Err(Error::MissingColumn {
                            role: "feature".into(),
                            column: c.clone(),
                            dataset: dataset.into(),
                            have: have(),
                        });
                    }
                }
                Ok(f.clone())
            }
            None => {
                let f: Vec<String> = batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .filter(|n| Some(n) != self.label.as_ref() && Some(n) != self.weight.as_ref())
                    .collect();
                if f.is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "the dataset `{dataset}` has no feature columns besides the label"
                    )));
                }
                Ok(f)
            }
        }
    }
}

/// XGBoost's data matrix (features, and labels and weights when given).
pub struct DMatrix {
    pub(crate) handle: Handle,
    rows: u64,
    features: Vec<String>,
}

// SAFETY: a DMatrix handle is not tied to the thread that made it; the
// type is not Sync, so it is used from one thread at a time.
unsafe impl Send for DMatrix {}

impl std::fmt::Debug for DMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DMatrix")
            .field("rows", &self.rows)
            .field("features", &self.features)
            .finish()
    }
}

impl Drop for DMatrix {
    fn drop(&mut self) {
        if let Ok(api) = api() {
            // SAFETY: the handle came from XGDMatrixCreateFromColumnar and is
            // freed once.
            unsafe { (api.XGDMatrixFree)(self.handle) };
        }
    }
}

/// A column's values as XGBoost reads them: a pointer into Arrow's buffer,
/// or a converted copy kept alive here until XGBoost has read it.
enum Values {
    Arrow(ArrayRef),
    F32(Vec<f32>),
    U8(Vec<u8>),
}

impl Values {
    fn interface(&self) -> Result<String> {
        let (ptr, typestr, len) = match self {
            Values::F32(v) => (v.as_ptr() as usize, "<f4", v.len()),
            Values::U8(v) => (v.as_ptr() as usize, "<u1", v.len()),
            Values::Arrow(a) => {
                let data = a.to_data();
                let (typestr, width) = typestr(a.data_type())
                    .ok_or_else(|| Error::InvalidArgument(format!("no array interface for {}", a.data_type())))?;
                // The values buffer, from the array's offset.
                let base = data.buffers()[0].as_ptr() as usize;
                (base + data.offset() * width, typestr, a.len())
            }
        };
        Ok(format!(
            r#"{{"data": [{ptr}, true], "shape": [{len}], "typestr": "{typestr}", "version": 3, "strides": null}}"#
        ))
    }
}

/// The array-interface type of a primitive Arrow type, and its width.
fn typestr(t: &DataType) -> Option<(&'static str, usize)> {
    Some(match t {
        DataType::Float32 => ("<f4", 4),
        DataType::Float64 => ("<f8", 8),
        DataType::Int8 => ("<i1", 1),
        DataType::Int16 => ("<i2", 2),
        DataType::Int32 => ("<i4", 4),
        DataType::Int64 => ("<i8", 8),
        DataType::UInt8 => ("<u1", 1),
        DataType::UInt16 => ("<u2", 2),
        DataType::UInt32 => ("<u4", 4),
        DataType::UInt64 => ("<u8", 8),
        _ => return None,
    })
}

/// A feature column as XGBoost will read it.
fn feature_values(name: &str, a: &ArrayRef) -> Result<Values> {
    if a.data_type() == &DataType::Boolean {
        let b = a.as_boolean();
        if b.null_count() == 0 {
            return Ok(Values::U8(b.values().iter().map(u8::from).collect()));
        }
        return Ok(Values::F32(
            b.iter()
                .map(|v| v.map_or(f32::NAN, |v| f32::from(u8::from(v))))
                .collect(),
        ));
    }
    if typestr(a.data_type()).is_none() {
        return Err(Error::BadColumn {
            column: name.into(),
            message: format!(
                "type {} is not numeric: encode it first (one-hot or ordinal, with rayforge-data)",
                a.data_type()
            ),
        });
    }
    if a.null_count() == 0 {
        return Ok(Values::Arrow(a.clone()));
    }
    Ok(Values::F32(as_f32(a)?.iter().map(|v| v.unwrap_or(f32::NAN)).collect()))
}

/// A numeric column as `f32` values (nulls as `None`).
fn as_f32(a: &ArrayRef) -> Result<Vec<Option<f32>>> {
    let c = arrow::compute::cast(a, &DataType::Float32)?;
    Ok(c.as_primitive::<Float32Type>().iter().collect())
}

/// A label or weight column: numbers, no nulls.
fn info_values(role: &str, name: &str, a: &ArrayRef) -> Result<Vec<f32>> {
    if a.null_count() > 0 {
        return Err(Error::BadColumn {
            column: name.into(),
            message: format!("the {role} has {} nulls", a.null_count()),
        });
    }
    if a.data_type() == &DataType::Float64 {
        return Ok(a
            .as_primitive::<Float64Type>()
            .values()
            .iter()
            .map(|v| *v as f32)
            .collect());
    }
    if typestr(a.data_type()).is_none() && a.data_type() != &DataType::Boolean {
        return Err(Error::BadColumn {
            column: name.into(),
            message: format!("the {role} must be numeric, not {}", a.data_type()),
        });
    }
    Ok(as_f32(a)?.into_iter().map(|v| v.unwrap_or(f32::NAN)).collect())
}

impl DMatrix {
    /// A matrix of the rows of `batches` (one table: the same schema),
    /// columns picked by `spec`. `dataset` names the data in errors.
    pub fn from_batches(batches: &[RecordBatch], spec: &DataSpec, dataset: &str) -> Result<DMatrix> {
        let Some(first) = batches.first() else {
            return Err(Error::InvalidArgument(format!("the dataset `{dataset}` has no rows")));
        };
        let batch = if batches.len() == 1 {
            first.clone()
        } else {
            arrow::compute::concat_batches(&first.schema(), batches)?
        };
        DMatrix::from_batch(&batch, spec, dataset)
    }

    /// A matrix of the rows of `batch`, columns picked by `spec`.
    pub fn from_batch(batch: &RecordBatch, spec: &DataSpec, dataset: &str) -> Result<DMatrix> {
        let api = api()?;
        let features = spec.feature_names(batch, dataset)?;
        // Every column named was checked to be there (feature_names).
        let column = |n: &str| {
            batch
                .column_by_name(n)
                .cloned()
                .ok_or_else(|| Error::InvalidArgument(format!("no column `{n}` in the dataset `{dataset}`")))
        };
        let values: Vec<Values> = features
            .iter()
            .map(|n| feature_values(n, &column(n)?))
            .collect::<Result<_>>()?;
        let interfaces: Vec<String> = values.iter().map(Values::interface).collect::<Result<_>>()?;
        let data = cstr("columns", &format!("[{}]", interfaces.join(", ")))?;
        let config = cstr("config", r#"{"missing": NaN, "nthread": 0}"#)?;
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: the interfaces point into `values` (Arrow buffers or our
        // copies), alive until after the call; XGBoost copies what it reads.
        check(api, unsafe {
            (api.XGDMatrixCreateFromColumnar)(data.as_ptr(), config.as_ptr(), &mut handle)
        })?;
        drop(values);
        let m = DMatrix {
            handle,
            rows: batch.num_rows() as u64,
            features,
        };
        for (role, field, c) in [("label", "label", &spec.label), ("weight", "weight", &spec.weight)] {
            if let Some(c) = c {
                let v = info_values(role, c, &column(c)?)?;
                m.set_info(field, &v)?;
            }
        }
        let names: Vec<std::ffi::CString> = m
            .features
            .iter()
            .map(|n| cstr("feature name", n))
            .collect::<Result<_>>()?;
        let ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
        let field = cstr("field", "feature_name")?;
        // SAFETY: `ptrs` holds `names.len()` NUL-terminated strings alive for
        // the call; XGBoost copies them.
        check(api, unsafe {
            (api.XGDMatrixSetStrFeatureInfo)(m.handle, field.as_ptr(), ptrs.as_ptr(), ptrs.len() as BstUlong)
        })?;
        Ok(m)
    }

    /// Sets the `label` or `weight` of every row.
    fn set_info(&self, field: &str, values: &[f32]) -> Result<()> {
        let api = api()?;
        let iface = cstr(
            "interface",
            &format!(
                r#"{{"data": [{}, true], "shape": [{}], "typestr": "<f4", "version": 3, "strides": null}}"#,
                values.as_ptr() as usize,
                values.len()
            ),
        )?;
        let field = cstr("field", field)?;
        // SAFETY: the interface points at `values`, alive for the call;
        // XGBoost copies it.
        check(api, unsafe {
            (api.XGDMatrixSetInfoFromInterface)(self.handle, field.as_ptr(), iface.as_ptr())
        })
    }

    /// Rows.
    pub fn num_rows(&self) -> u64 {
        self.rows
    }

    /// Columns, as XGBoost counts them.
    pub fn num_cols(&self) -> Result<u64> {
        let api = api()?;
        let mut n: BstUlong = 0;
        // SAFETY: a live handle and a valid out-pointer.
        check(api, unsafe { (api.XGDMatrixNumCol)(self.handle, &mut n) })?;
        Ok(n)
    }

    /// The feature columns, in order.
    pub fn feature_names(&self) -> &[String] {
        &self.features
    }
}

/// The library's path and version (it is loaded if it was not).
pub fn library() -> Result<(std::path::PathBuf, String)> {
    ffi::library()
}
