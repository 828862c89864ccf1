//! NumPy's scalar arithmetic, as far as the Gymnasium ports need it to
//! match Gymnasium bit for bit.
//!
//! Gymnasium's classic-control code mixes Python floats, `np.float64` and
//! `np.float32` scalars, and NumPy 2 (NEP 50) decides each result's type:
//! an `np.float32` with a Python float stays `float32` (the Python float is
//! rounded to `float32` first, comparisons included), with an
//! `np.float64` it becomes `float64`. MountainCarContinuous keeps its state
//! in `float32`, so its step is written over [`Scalar`], which follows
//! those rules. `x ** 2` on NumPy and Python floats calls the C library's
//! `pow`, which is not always `x * x` (glibc's `pow(x, 2)` differs from the
//! correctly rounded square in about 1 case in 1,000): [`pow2`] calls `pow`
//! too.

use std::cmp::Ordering;
use std::hint::black_box;

/// `x ** 2` for a Python or NumPy float64: the C library's `pow(x, 2.0)`.
pub(crate) fn pow2(x: f64) -> f64 {
    // `black_box` keeps LLVM from rewriting `pow(x, 2.0)` into `x * x`,
    // which rounds differently from glibc's `pow` now and then.
    x.powf(black_box(2.0))
}

/// `x ** 2` for an `np.float32`: the C library's `powf(x, 2.0f)`.
pub(crate) fn pow2_f32(x: f32) -> f32 {
    // As in `pow2`: the call must reach `powf`.
    x.powf(black_box(2.0))
}

/// `a % b` on `np.float64` (NumPy's `npy_divmod`): the result takes the
/// divisor's sign, as Python's `%`.
pub(crate) fn remainder(a: f64, b: f64) -> f64 {
    let m = a % b; // C's fmod
    if m == 0.0 {
        0.0f64.copysign(b)
    } else if (b < 0.0) != (m < 0.0) {
        m + b
    } else {
        m
    }
}

/// A scalar as Python holds it in Gymnasium's code, with its type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Scalar {
    /// A Python `float` (a "weak" scalar under NEP 50).
    Py(f64),
    /// An `np.float64`.
    F64(f64),
    /// An `np.float32`.
    F32(f32),
}

/// The type two scalars' arithmetic is done in.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Common {
    Py,
    F64,
    F32,
}

impl Scalar {
    /// The value, widened to `f64` (exact).
    pub(crate) fn value(self) -> f64 {
        match self {
            Scalar::Py(x) | Scalar::F64(x) => x,
            Scalar::F32(x) => x as f64,
        }
    }

    fn common(self, other: Scalar) -> Common {
        match (self, other) {
            (Scalar::Py(_), Scalar::Py(_)) => Common::Py,
            (Scalar::F32(_), Scalar::F32(_) | Scalar::Py(_)) | (Scalar::Py(_), Scalar::F32(_)) => Common::F32,
            _ => Common::F64,
        }
    }

    /// The value in `float32` (a Python float or `float64` rounded to it,
    /// as NumPy casts a weak scalar).
    fn as_f32(self) -> f32 {
        match self {
            Scalar::F32(x) => x,
            Scalar::Py(x) | Scalar::F64(x) => x as f32,
        }
    }

    fn op(self, other: Scalar, f64_op: fn(f64, f64) -> f64, f32_op: fn(f32, f32) -> f32) -> Scalar {
        match self.common(other) {
            Common::Py => Scalar::Py(f64_op(self.value(), other.value())),
            Common::F64 => Scalar::F64(f64_op(self.value(), other.value())),
            Common::F32 => Scalar::F32(f32_op(self.as_f32(), other.as_f32())),
        }
    }

    /// `self + other`.
    pub(crate) fn add(self, other: Scalar) -> Scalar {
        self.op(other, |a, b| a + b, |a, b| a + b)
    }

    /// `self - other`.
    pub(crate) fn sub(self, other: Scalar) -> Scalar {
        self.op(other, |a, b| a - b, |a, b| a - b)
    }

    /// `self * other`.
    pub(crate) fn mul(self, other: Scalar) -> Scalar {
        self.op(other, |a, b| a * b, |a, b| a * b)
    }

    /// Python's comparison of the two (`None` when one is NaN).
    pub(crate) fn compare(self, other: Scalar) -> Option<Ordering> {
        match self.common(other) {
            Common::F32 => self.as_f32().partial_cmp(&other.as_f32()),
            Common::Py | Common::F64 => self.value().partial_cmp(&other.value()),
        }
    }

    /// `self > other`.
    pub(crate) fn gt(self, other: Scalar) -> bool {
        self.compare(other) == Some(Ordering::Greater)
    }

    /// `self < other`.
    pub(crate) fn lt(self, other: Scalar) -> bool {
        self.compare(other) == Some(Ordering::Less)
    }

    /// `self >= other`.
    pub(crate) fn ge(self, other: Scalar) -> bool {
        matches!(self.compare(other), Some(Ordering::Greater | Ordering::Equal))
    }

    /// `self == other`.
    pub(crate) fn eq(self, other: Scalar) -> bool {
        self.compare(other) == Some(Ordering::Equal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float32_with_a_python_float_rounds_the_python_float_first() {
        // NumPy 2: np.float32(1.0) + (2**-24 + 2**-50) == 1.0 (the Python
        // float becomes 2**-24, and 1 + 2**-24 ties to even); in float64
        // and then rounded it would be 1.0000001.
        let b = 2f64.powi(-24) + 2f64.powi(-50);
        assert_eq!(Scalar::F32(1.0).add(Scalar::Py(b)), Scalar::F32(1.0));
        assert_eq!(((1.0 + b) as f32), 1.000_000_1);
        // np.float32(0.45) >= 0.45 is True (compared in float32).
        assert!(Scalar::F32(0.45).ge(Scalar::Py(0.45)));
        assert!(Scalar::F32(-1.2).eq(Scalar::Py(-1.2)));
        // With an np.float64 the float32 widens instead.
        assert_eq!(Scalar::F64(0.5).add(Scalar::F32(0.1)), Scalar::F64(0.5 + 0.1f32 as f64));
        assert!(!Scalar::F64(0.45f32 as f64).ge(Scalar::Py(0.45)));
        assert_eq!(Scalar::Py(1.0).mul(Scalar::Py(3.0)), Scalar::Py(3.0));
    }

    #[test]
    fn remainder_takes_the_divisors_sign() {
        assert_eq!(remainder(-1.0, 4.0), 3.0);
        assert_eq!(remainder(5.0, 4.0), 1.0);
        assert_eq!(remainder(-8.0, 4.0).to_bits(), 0.0f64.to_bits());
        assert_eq!(remainder(1.0, -4.0), -3.0);
    }

    #[test]
    fn pow2_is_the_c_librarys_pow() {
        // A value where glibc's pow(x, 2) and x * x differ would pin this
        // down, but which values do depends on the C library; what must
        // hold everywhere is that it squares.
        assert_eq!(pow2(3.0), 9.0);
        assert_eq!(pow2_f32(-1.5), 2.25);
    }
}
