//! Small column helpers for batch functions.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};

use crate::error::{Error, Result};

/// Replaces numeric column `name` with its values times `factor` (as f64).
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{Int64Array, RecordBatch};
/// let b = RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![1, 2])) as _)]).unwrap();
/// let out = rayforge_data::compute::scale_column(b, "x", 1.5).unwrap();
/// assert_eq!(rayforge_data::compute::f64_column(&out, "x").unwrap(), vec![1.5, 3.0]);
/// ```
pub fn scale_column(b: RecordBatch, name: &str, factor: f64) -> Result<RecordBatch> {
    let values = f64_column(&b, name)?;
    let scaled: ArrayRef = Arc::new(Float64Array::from_iter_values(values.iter().map(|v| v * factor)));
    let idx = column_index(&b, name)?;
    let mut fields: Vec<Field> = b.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[idx] = Field::new(name, DataType::Float64, true);
    let mut cols = b.columns().to_vec();
    cols[idx] = scaled;
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// A numeric column's values as f64 (nulls as NaN).
pub fn f64_column(b: &RecordBatch, name: &str) -> Result<Vec<f64>> {
    let c = b.column(column_index(b, name)?);
    let c = arrow::compute::cast(c, &DataType::Float64)?;
    let c = c
        .as_any()
        .downcast_ref::<Float64Array>()
        .ok_or_else(|| Error::Arrow(format!("column `{name}` is not numeric")))?;
    Ok((0..c.len())
        .map(|i| if c.is_null(i) { f64::NAN } else { c.value(i) })
        .collect())
}

fn column_index(b: &RecordBatch, name: &str) -> Result<usize> {
    b.schema().index_of(name).map_err(|_| Error::NoSuchColumn {
        column: name.to_string(),
        available: crate::expr::names(b),
    })
}
