//! Column predicates: used by [`Dataset::filter_expr`](crate::Dataset::filter_expr)
//! and pushed into the Parquet reader, where they skip row groups whose
//! statistics rule them out and drop rows while decoding.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, Scalar, StringArray};
use arrow::compute::kernels::{boolean, cmp};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A literal value in a predicate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Lit {
    /// A 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
}

macro_rules! lit_from {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for Lit {
            fn from(x: $t) -> Lit {
                Lit::$v(x.into())
            }
        }
    )*};
}
lit_from!(i64 => Int, i32 => Int, u32 => Int, f64 => Float, f32 => Float, String => Str, &str => Str, bool => Bool);

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A boolean expression over the columns of a row.
///
/// ```
/// use rayforge_data::expr::col;
/// let e = col("x").gt(0.5).and(col("key").eq(3));
/// assert_eq!(e.columns(), vec!["x".to_string(), "key".to_string()]);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Expr {
    /// `column op literal`.
    Compare {
        /// The column.
        column: String,
        /// The operator.
        op: Cmp,
        /// The literal.
        value: Lit,
    },
    /// Both hold.
    And(Box<Expr>, Box<Expr>),
    /// Either holds.
    Or(Box<Expr>, Box<Expr>),
    /// Does not hold.
    Not(Box<Expr>),
    /// The column is null.
    IsNull(String),
}

/// A column, to compare with a literal.
pub fn col(name: &str) -> Column {
    Column(name.to_string())
}

/// A column reference; its methods build comparisons.
#[derive(Clone, Debug)]
pub struct Column(String);

macro_rules! cmp_method {
    ($($name:ident => $op:ident, $doc:literal);*) => {$(
        #[doc = $doc]
        pub fn $name(self, v: impl Into<Lit>) -> Expr {
            Expr::Compare { column: self.0, op: Cmp::$op, value: v.into() }
        }
    )*};
}

impl Column {
    cmp_method!(eq => Eq, "column = value"; ne => Ne, "column != value"; lt => Lt, "column < value";
        le => Le, "column <= value"; gt => Gt, "column > value"; ge => Ge, "column >= value");

    /// The column is null.
    pub fn is_null(self) -> Expr {
        Expr::IsNull(self.0)
    }
}

impl Expr {
    /// Both this and `other` hold.
    pub fn and(self, other: Expr) -> Expr {
        Expr::And(Box::new(self), Box::new(other))
    }

    /// This or `other` holds.
    pub fn or(self, other: Expr) -> Expr {
        Expr::Or(Box::new(self), Box::new(other))
    }

    /// This does not hold.
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Expr {
        Expr::Not(Box::new(self))
    }

    /// The columns the expression reads, in first-use order.
    pub fn columns(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_columns(&mut out);
        out
    }

    fn collect_columns(&self, out: &mut Vec<String>) {
        let mut add = |c: &String| {
            if !out.contains(c) {
                out.push(c.clone());
            }
        };
        match self {
            Expr::Compare { column, .. } | Expr::IsNull(column) => add(column),
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.collect_columns(out);
                b.collect_columns(out);
            }
            Expr::Not(a) => a.collect_columns(out),
        }
    }

    /// Evaluates the expression on every row (null counts as false).
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let column = |name: &str| -> Result<ArrayRef> {
            batch.column_by_name(name).cloned().ok_or_else(|| Error::NoSuchColumn {
                column: name.to_string(),
                available: names(batch),
            })
        };
        let out = match self {
            Expr::Compare { column: c, op, value } => compare(&column(c)?, *op, value)?,
            Expr::And(a, b) => boolean::and_kleene(&a.evaluate(batch)?, &b.evaluate(batch)?)?,
            Expr::Or(a, b) => boolean::or_kleene(&a.evaluate(batch)?, &b.evaluate(batch)?)?,
            Expr::Not(a) => boolean::not(&a.evaluate(batch)?)?,
            Expr::IsNull(c) => arrow::compute::is_null(&column(c)?)?,
        };
        // Null results count as false.
        Ok(match out.nulls() {
            Some(n) => {
                let valid = BooleanArray::new(n.inner().clone(), None);
                boolean::and(&BooleanArray::new(out.values().clone(), None), &valid)?
            }
            None => out,
        })
    }

    /// Which of several row groups may hold a matching row, given each row
    /// group's per-column minimum and maximum (`stats(column)` returns
    /// `(mins, maxes)`, one entry per row group, or `None` when unknown).
    pub(crate) fn may_match(
        &self,
        groups: usize,
        stats: &dyn Fn(&str) -> Option<(ArrayRef, ArrayRef)>,
    ) -> Result<Vec<bool>> {
        let all = vec![true; groups];
        Ok(match self {
            Expr::Compare { column, op, value } => {
                let Some((mins, maxes)) = stats(column) else {
                    return Ok(all);
                };
                let keep = match op {
                    Cmp::Gt => compare(&maxes, Cmp::Gt, value)?,
                    Cmp::Ge => compare(&maxes, Cmp::Ge, value)?,
                    Cmp::Lt => compare(&mins, Cmp::Lt, value)?,
                    Cmp::Le => compare(&mins, Cmp::Le, value)?,
                    Cmp::Eq => {
                        boolean::and_kleene(&compare(&mins, Cmp::Le, value)?, &compare(&maxes, Cmp::Ge, value)?)?
                    }
                    Cmp::Ne => return Ok(all),
                };
                // Unknown statistics (null) keep the group.
                keep.iter().map(|k| k.unwrap_or(true)).collect()
            }
            Expr::And(a, b) => {
                let (a, b) = (a.may_match(groups, stats)?, b.may_match(groups, stats)?);
                a.iter().zip(b).map(|(x, y)| *x && y).collect()
            }
            Expr::Or(a, b) => {
                let (a, b) = (a.may_match(groups, stats)?, b.may_match(groups, stats)?);
                a.iter().zip(b).map(|(x, y)| *x || y).collect()
            }
            Expr::Not(_) | Expr::IsNull(_) => all,
        })
    }
}

pub(crate) fn names(batch: &RecordBatch) -> String {
    batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Compares every element of `a` with `value` (cast to `a`'s type).
fn compare(a: &ArrayRef, op: Cmp, value: &Lit) -> Result<BooleanArray> {
    let lit: ArrayRef = match value {
        Lit::Int(v) => Arc::new(Int64Array::from(vec![*v])),
        Lit::Float(v) => Arc::new(Float64Array::from(vec![*v])),
        Lit::Str(v) => Arc::new(StringArray::from(vec![v.as_str()])),
        Lit::Bool(v) => Arc::new(BooleanArray::from(vec![*v])),
    };
    // Compare in the wider type when an integer column meets a float.
    let (left, right) = match (a.data_type().is_integer(), value) {
        (true, Lit::Float(_)) => (arrow::compute::cast(a, lit.data_type())?, lit),
        _ => (a.clone(), arrow::compute::cast(&lit, a.data_type())?),
    };
    let right = Scalar::new(right);
    Ok(match op {
        Cmp::Eq => cmp::eq(&left, &right)?,
        Cmp::Ne => cmp::neq(&left, &right)?,
        Cmp::Lt => cmp::lt(&left, &right)?,
        Cmp::Le => cmp::lt_eq(&left, &right)?,
        Cmp::Gt => cmp::gt(&left, &right)?,
        Cmp::Ge => cmp::gt_eq(&left, &right)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter([
            ("k", Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as ArrayRef),
            (
                "x",
                Arc::new(Float64Array::from(vec![Some(0.1), None, Some(0.9), Some(0.5)])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    #[test]
    fn predicates_evaluate_row_by_row_and_nulls_are_false() -> Result<()> {
        let b = batch();
        let m = col("x").gt(0.4).evaluate(&b)?;
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            vec![Some(false), Some(false), Some(true), Some(true)]
        );
        let m = col("k").le(2).or(col("x").is_null()).not().evaluate(&b)?;
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            vec![Some(false), Some(false), Some(true), Some(true)]
        );
        let m = col("k").gt(1.5).and(col("k").ne(4)).evaluate(&b)?;
        assert_eq!(m.iter().flatten().filter(|x| *x).count(), 2);
        assert!(matches!(
            col("nope").eq(1).evaluate(&b),
            Err(Error::NoSuchColumn { .. })
        ));
        Ok(())
    }

    #[test]
    fn statistics_rule_out_row_groups() -> Result<()> {
        let mins: ArrayRef = Arc::new(Int64Array::from(vec![0, 100, 200]));
        let maxes: ArrayRef = Arc::new(Int64Array::from(vec![99, 199, 299]));
        let stats = |c: &str| (c == "id").then(|| (mins.clone(), maxes.clone()));
        assert_eq!(col("id").ge(150).may_match(3, &stats)?, vec![false, true, true]);
        assert_eq!(col("id").eq(42).may_match(3, &stats)?, vec![true, false, false]);
        let e = col("id").lt(50).or(col("id").gt(250));
        assert_eq!(e.may_match(3, &stats)?, vec![true, false, true]);
        assert_eq!(col("other").lt(0).may_match(3, &stats)?, vec![true, true, true]);
        Ok(())
    }
}
