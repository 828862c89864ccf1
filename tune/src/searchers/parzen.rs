//! The Parzen estimators that TPE compares (Optuna's `_ParzenEstimator`):
//! a mixture with one kernel per observation plus a wide prior kernel.
//! Each kernel is a product over the modelled dimensions: a Gaussian
//! truncated to the dimension's range (for an integer or quantised
//! parameter, the mass of each value's cell of the grid), or, for a
//! choice, a categorical distribution leaning to the observed value.
//!
//! Univariate TPE builds one estimator per parameter; multivariate TPE
//! builds one over all of them, so a kernel keeps an observation's values
//! together and a candidate drawn from it inherits their correlation.
//!
//! Everything here works in model space: a choice is its index, a number
//! on a log scale is its logarithm.

use std::f64::consts::{PI, SQRT_2};

use rand::Rng;

/// One modelled parameter's model space.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Dim {
    /// One of `n` values, by index.
    Categorical {
        /// How many values.
        n: usize,
    },
    /// A number in `[lo, hi]` (logarithms when `log`). For a discrete
    /// parameter the range reaches half a step past the extreme values.
    Numeric {
        /// Lower bound, model space.
        lo: f64,
        /// Upper bound, model space.
        hi: f64,
        /// Whether model space is the logarithm of the value.
        log: bool,
        /// The values a discrete parameter takes.
        grid: Option<Grid>,
    },
}

/// The values of a discrete parameter: `origin + k * step` within
/// `[min, max]`, on the parameter's own scale (not logarithms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Grid {
    /// A value on the grid.
    pub(super) origin: f64,
    /// The distance between neighbouring values (above 0).
    pub(super) step: f64,
    /// The smallest value.
    pub(super) min: f64,
    /// The largest value.
    pub(super) max: f64,
}

impl Grid {
    /// The grid value nearest `x`.
    pub(super) fn snap(&self, x: f64) -> f64 {
        (self.origin + ((x - self.origin) / self.step).round() * self.step).clamp(self.min, self.max)
    }
}

/// Optuna's `prior_weight`: the prior kernel counts as one observation.
const PRIOR_WEIGHT: f64 = 1.0;

/// A mixture of product kernels over some dimensions.
#[derive(Debug, Clone)]
pub(super) struct Mixture {
    /// Cumulative kernel weights (normalised; the prior's is last).
    cumulative: Vec<f64>,
    /// Per kernel: the log of its weight plus the terms of its density
    /// that do not depend on the point (normalisation of each dimension).
    log_const: Vec<f64>,
    dims: Vec<Kernels>,
}

/// The kernels of one dimension, one per observation then the prior.
#[derive(Debug, Clone)]
enum Kernels {
    /// Kernel `k < obs.len()` puts `1 / (1 + n a)` more mass on choice
    /// `obs[k]` than a uniform draw would (`a` = prior weight over kernels);
    /// the prior kernel is uniform.
    Categorical {
        n: usize,
        obs: Vec<usize>,
        /// Probability that an observation's kernel draws its own choice
        /// (on top of its uniform share).
        keep: f64,
        log_hit: f64,
        log_miss: f64,
    },
    /// Truncated Gaussians on `[lo, hi]`.
    Continuous {
        lo: f64,
        hi: f64,
        mus: Vec<f64>,
        sigmas: Vec<f64>,
        inv_sigmas: Vec<f64>,
    },
    /// Truncated Gaussians on `[lo, hi]`, each value of `grid` weighted by
    /// the mass of its cell.
    Discrete {
        lo: f64,
        hi: f64,
        log: bool,
        grid: Grid,
        mus: Vec<f64>,
        sigmas: Vec<f64>,
    },
}

impl Mixture {
    /// The estimator of `rows` (one value per dimension of `dims`, in model
    /// space, finite), weighted by `weights` (one per row, not all 0).
    pub(super) fn new(dims: &[Dim], rows: &[&[f64]], weights: &[f64]) -> Mixture {
        debug_assert_eq!(rows.len(), weights.len());
        let mut w: Vec<f64> = weights.to_vec();
        if rows.is_empty() {
            w = vec![1.0];
        } else {
            w.push(PRIOR_WEIGHT);
        }
        let total: f64 = w.iter().sum();
        let mut log_const: Vec<f64> = w.iter().map(|x| (x / total).ln()).collect();
        let mut acc = 0.0;
        let cumulative = w
            .iter()
            .map(|x| {
                acc += x / total;
                acc
            })
            .collect();
        let n_kernels = rows.len() + 1;
        let dims = dims
            .iter()
            .enumerate()
            .map(|(d, dim)| {
                let column: Vec<f64> = rows.iter().map(|r| r[d]).collect();
                Kernels::new(dim, &column, n_kernels, &mut log_const)
            })
            .collect();
        Mixture {
            cumulative,
            log_const,
            dims,
        }
    }

    /// A point drawn from the mixture: one kernel, then each dimension
    /// from that kernel (discrete values on their grid).
    pub(super) fn sample(&self, rng: &mut impl Rng) -> Vec<f64> {
        let u = rng.random::<f64>();
        let k = self
            .cumulative
            .partition_point(|c| *c <= u)
            .min(self.cumulative.len() - 1);
        self.dims.iter().map(|d| d.sample(k, rng)).collect()
    }

    /// The log density (log mass for discrete dimensions) at `x`.
    #[cfg(test)]
    pub(super) fn log_pdf(&self, x: &[f64]) -> f64 {
        self.log_pdf_in(x, &mut Vec::new())
    }

    /// The log density (log mass for discrete dimensions) at `x`, with a
    /// scratch buffer reused over many points.
    pub(super) fn log_pdf_in(&self, x: &[f64], acc: &mut Vec<f64>) -> f64 {
        acc.clear();
        acc.extend_from_slice(&self.log_const);
        for (d, kernels) in self.dims.iter().enumerate() {
            kernels.add_log_pdf(x[d], acc);
        }
        log_sum_exp(acc)
    }
}

impl Kernels {
    /// The kernels of one dimension over `column` (the observations'
    /// values), adding their point-independent log terms to `log_const`.
    fn new(dim: &Dim, column: &[f64], n_kernels: usize, log_const: &mut [f64]) -> Kernels {
        match *dim {
            Dim::Categorical { n } => {
                let n = n.max(1);
                let a = PRIOR_WEIGHT / n_kernels as f64;
                let norm = 1.0 + n as f64 * a;
                // The prior kernel (last, the only one without observations)
                // is uniform.
                if let Some(last) = log_const.last_mut() {
                    *last -= (n as f64).ln();
                }
                Kernels::Categorical {
                    n,
                    obs: column.iter().map(|x| (x.max(0.0) as usize).min(n - 1)).collect(),
                    keep: 1.0 / norm,
                    log_hit: ((a + 1.0) / norm).ln(),
                    log_miss: (a / norm).ln(),
                }
            }
            Dim::Numeric { lo, hi, grid, log } => {
                let mut mus: Vec<f64> = column.iter().map(|x| x.clamp(lo, hi)).collect();
                let mut sigmas = bandwidths(&mus, lo, hi, n_kernels);
                mus.push(0.5 * (lo + hi));
                sigmas.push(hi - lo);
                for (k, (m, s)) in mus.iter().zip(&sigmas).enumerate() {
                    let norm = log_gauss_mass((lo - m) / s, (hi - m) / s);
                    log_const[k] -= norm;
                    if grid.is_none() {
                        log_const[k] -= s.ln() + 0.5 * (2.0 * PI).ln();
                    }
                }
                match grid {
                    None => Kernels::Continuous {
                        lo,
                        hi,
                        inv_sigmas: sigmas.iter().map(|s| 1.0 / s).collect(),
                        mus,
                        sigmas,
                    },
                    Some(grid) => Kernels::Discrete {
                        lo,
                        hi,
                        log,
                        grid,
                        mus,
                        sigmas,
                    },
                }
            }
        }
    }

    fn sample(&self, k: usize, rng: &mut impl Rng) -> f64 {
        match self {
            Kernels::Categorical { n, obs, keep, .. } => match obs.get(k) {
                Some(o) if rng.random::<f64>() < *keep => *o as f64,
                _ => rng.random_range(0..*n) as f64,
            },
            Kernels::Continuous {
                lo, hi, mus, sigmas, ..
            } => truncated_normal(rng, mus[k], sigmas[k], *lo, *hi),
            Kernels::Discrete {
                lo,
                hi,
                log,
                grid,
                mus,
                sigmas,
            } => {
                let x = truncated_normal(rng, mus[k], sigmas[k], *lo, *hi);
                if *log {
                    grid.snap(x.exp()).ln()
                } else {
                    grid.snap(x)
                }
            }
        }
    }

    /// Adds each kernel's log density at `x` (less the constant terms).
    fn add_log_pdf(&self, x: f64, acc: &mut [f64]) {
        match self {
            Kernels::Categorical {
                obs, log_hit, log_miss, ..
            } => {
                let c = x as usize;
                for (a, o) in acc.iter_mut().zip(obs) {
                    *a += if *o == c { *log_hit } else { *log_miss };
                }
            }
            Kernels::Continuous { mus, inv_sigmas, .. } => {
                for ((a, m), is) in acc.iter_mut().zip(mus).zip(inv_sigmas) {
                    let z = (x - m) * is;
                    *a -= 0.5 * z * z;
                }
            }
            Kernels::Discrete {
                lo,
                hi,
                log,
                grid,
                mus,
                sigmas,
            } => {
                // The value's cell: half a step either side, in model space.
                let v = if *log { x.exp() } else { x };
                let cell = |y: f64| if *log { y.max(f64::MIN_POSITIVE).ln() } else { y };
                let (left, right) = (
                    cell(v - grid.step / 2.0).clamp(*lo, *hi),
                    cell(v + grid.step / 2.0).clamp(*lo, *hi),
                );
                for ((a, m), s) in acc.iter_mut().zip(mus).zip(sigmas) {
                    *a += log_gauss_mass((left - m) / s, (right - m) / s);
                }
            }
        }
    }
}

/// Optuna's bandwidths: each observation's distance to its farther
/// neighbour (the range's ends count as neighbours, except for the
/// outermost observations, which take their inner neighbour's distance),
/// clipped to `[range / min(100, 1 + kernels), range]`.
fn bandwidths(mus: &[f64], lo: f64, hi: f64, n_kernels: usize) -> Vec<f64> {
    let width = hi - lo;
    let min_sigma = width / (100f64).min(1.0 + n_kernels as f64);
    let mut order: Vec<(f64, usize)> = mus.iter().cloned().zip(0..).collect();
    order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let mut ends = Vec::with_capacity(mus.len() + 2);
    ends.push(lo);
    ends.extend(order.iter().map(|o| o.0));
    ends.push(hi);
    let mut sorted: Vec<f64> = (0..mus.len())
        .map(|i| (ends[i + 1] - ends[i]).max(ends[i + 2] - ends[i + 1]))
        .collect();
    let m = mus.len();
    if m >= 2 {
        sorted[0] = ends[2] - ends[1];
        sorted[m - 1] = ends[m] - ends[m - 1];
    }
    let mut sigmas = vec![0.0; m];
    for (rank, (_, i)) in order.iter().enumerate() {
        sigmas[*i] = sorted[rank].clamp(min_sigma, width);
    }
    sigmas
}

/// `ln(sum(exp(x)))` without overflow.
fn log_sum_exp(x: &[f64]) -> f64 {
    let max = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    // Terms below e^-40 of the largest change nothing a ratio of
    // densities can tell; skipping their exp() halves the cost of a
    // suggestion among thousands of observations.
    let floor = max - 40.0;
    max + x
        .iter()
        .filter(|v| **v > floor)
        .map(|v| (v - max).exp())
        .sum::<f64>()
        .ln()
}

/// A normal draw truncated to `[lo, hi]` (`mu` inside it, `sigma` at most
/// the range's width, so most draws land inside; a long run of misses
/// ends at the nearest end).
fn truncated_normal(rng: &mut impl Rng, mu: f64, sigma: f64, lo: f64, hi: f64) -> f64 {
    for _ in 0..64 {
        // Box-Muller: two uniforms in (0, 1] make one normal draw.
        let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
        let x = mu + sigma * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        if (lo..=hi).contains(&x) {
            return x;
        }
    }
    mu.clamp(lo, hi)
}

/// `ln(Phi(b) - Phi(a))` for standard normal `Phi` and `a <= b`, accurate
/// in the tails (differences of upper-tail masses, never of masses near 1).
pub(super) fn log_gauss_mass(a: f64, b: f64) -> f64 {
    if a >= 0.0 {
        (0.5 * (erfc(a / SQRT_2) - erfc(b / SQRT_2))).ln()
    } else if b <= 0.0 {
        log_gauss_mass(-b, -a)
    } else {
        // A tail beyond 8.5 standard deviations (erfc(6) / 2 = 1e-17) is
        // below what 1 - tail can show: skipped, as it is for most kernels
        // of a large estimator.
        let tail = |x: f64| if x > 6.0 { 0.0 } else { 0.5 * erfc(x) };
        (1.0 - tail(-a / SQRT_2) - tail(b / SQRT_2)).ln()
    }
}

/// The complementary error function, to about 1e-13 relative: the Taylor
/// series of erf below 2.5, the continued fraction of erfc (Abramowitz and
/// Stegun 7.1.14) above, where it converges fast (`6 + 80 / x` terms reach
/// full precision, measured against a reference).
pub(super) fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 2.5 {
        // erf(x) = 2 / sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))
        let (mut sum, mut term) = (0.0, x);
        for n in 0..64 {
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() < 1e-17 * sum.abs() {
                break;
            }
            term *= -x * x / (n + 1) as f64;
        }
        return 1.0 - 2.0 / PI.sqrt() * sum;
    }
    if x > 27.3 {
        return 0.0; // below the smallest f64
    }
    let mut t = x;
    let terms = 6 + (80.0 / x) as usize;
    for k in (1..=terms).rev() {
        t = x + (k as f64 / 2.0) / t;
    }
    (-x * x).exp() / (PI.sqrt() * t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn erfc_matches_reference_values() {
        // Reference values: Python's math.erfc.
        for (x, want) in [
            (0.0, 1.0),
            (0.1, 0.887_537_083_981_715_2),
            (1.0, 0.157_299_207_050_285_13),
            (2.0, 0.004_677_734_981_047_265),
            (2.49, 4.292_878_677_339_13e-4),
            (3.0, 2.209_049_699_858_543_8e-5),
            (6.0, 2.151_973_671_249_891_6e-17),
            (20.0, 5.395_865_611_607_900_5e-176),
            (-1.0, 1.842_700_792_949_715),
        ] {
            let got = erfc(x);
            assert!(((got - want) / want).abs() < 1e-12, "erfc({x}) = {got}, want {want}");
        }
    }

    #[test]
    fn gauss_masses_add_up_and_stay_accurate_in_the_tails() {
        let cuts = [-40.0, -8.0, -3.0, -0.5, 0.0, 0.3, 2.0, 9.0, 40.0];
        let total: f64 = cuts.windows(2).map(|w| log_gauss_mass(w[0], w[1]).exp()).sum();
        assert!((total - 1.0).abs() < 1e-14, "{total}");
        // P(Z > 9) = 1.1285884059538422e-19, far below what 1 - Phi(9) can say.
        let tail = log_gauss_mass(9.0, f64::INFINITY);
        assert!((tail - 1.128_588_405_953_842_2e-19_f64.ln()).abs() < 1e-9, "{tail}");
    }

    #[test]
    fn bandwidths_follow_optunas_neighbour_rule() {
        // Sorted 0.2, 0.3, 0.7 on [0, 1], 4 kernels: min sigma 1/5.
        let s = bandwidths(&[0.75, 0.25, 0.375], 0.0, 1.0, 4);
        // 0.75: outermost, inner neighbour 0.375 away; 0.25: outermost,
        // 0.125 clipped to 0.2; 0.375: max(0.125, 0.375).
        assert_eq!(s, vec![0.375, 0.2, 0.375]);
        // One observation: both ends count.
        assert_eq!(bandwidths(&[0.25], 0.0, 1.0, 2), vec![0.75]);
    }

    #[test]
    fn densities_integrate_to_one() {
        let dims = [Dim::Numeric {
            lo: -1.0,
            hi: 2.0,
            log: false,
            grid: None,
        }];
        let rows: Vec<&[f64]> = vec![&[0.0], &[0.1], &[1.5]];
        let m = Mixture::new(&dims, &rows, &[1.0, 1.0, 2.0]);
        let n = 30_000;
        let h = 3.0 / n as f64;
        let integral: f64 = (0..n)
            .map(|i| m.log_pdf(&[-1.0 + (i as f64 + 0.5) * h]).exp() * h)
            .sum();
        assert!((integral - 1.0).abs() < 1e-4, "{integral}");
        // Discrete: the masses of the values 0..=4 add up to one.
        let grid = Grid {
            origin: 0.0,
            step: 1.0,
            min: 0.0,
            max: 4.0,
        };
        let dims = [Dim::Numeric {
            lo: -0.5,
            hi: 4.5,
            log: false,
            grid: Some(grid),
        }];
        let m = Mixture::new(&dims, &[&[1.0][..], &[3.0][..]], &[1.0, 1.0]);
        let total: f64 = (0..5).map(|v| m.log_pdf(&[v as f64]).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12, "{total}");
        // Categorical: the three choices' masses add up to one.
        let m = Mixture::new(&[Dim::Categorical { n: 3 }], &[&[2.0][..]], &[1.0]);
        let total: f64 = (0..3).map(|v| m.log_pdf(&[v as f64]).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12, "{total}");
    }

    #[test]
    fn a_joint_kernel_keeps_the_observed_correlation() {
        // Good observations sit on the diagonal, near (0.1, 0.1) and
        // (0.9, 0.9). A joint model draws from those corners; a product
        // of per-dimension models draws the off-diagonal corners as often.
        let unit = Dim::Numeric {
            lo: 0.0,
            hi: 1.0,
            log: false,
            grid: None,
        };
        let pts: Vec<[f64; 2]> = (0..20)
            .map(|i| {
                let c = if i % 2 == 0 { 0.1 } else { 0.9 };
                let e = 0.002 * i as f64;
                [c + e, c - e]
            })
            .collect();
        let rows: Vec<&[f64]> = pts.iter().map(|p| &p[..]).collect();
        let joint = Mixture::new(&[unit, unit], &rows, &[1.0; 20]);
        let xs: Vec<&[f64]> = pts.iter().map(|p| &p[..1]).collect();
        let ys: Vec<&[f64]> = pts.iter().map(|p| &p[1..]).collect();
        let (mx, my) = (
            Mixture::new(&[unit], &xs, &[1.0; 20]),
            Mixture::new(&[unit], &ys, &[1.0; 20]),
        );
        let mut rng = StdRng::seed_from_u64(7);
        let off = |p: (f64, f64)| (p.0 < 0.5) != (p.1 < 0.5);
        let n = 2000;
        let joint_off = (0..n)
            .filter(|_| {
                let s = joint.sample(&mut rng);
                off((s[0], s[1]))
            })
            .count();
        let product_off = (0..n)
            .filter(|_| off((mx.sample(&mut rng)[0], my.sample(&mut rng)[0])))
            .count();
        // The joint model strays through the prior and through the wide
        // kernels of the observations nearest the middle (their bandwidth
        // is the gap to the other corner).
        assert!(joint_off < n / 6, "joint: {joint_off} of {n} off the diagonal");
        assert!(product_off > n / 3, "product: {product_off} of {n}");
        // The joint density tells the corners apart too.
        assert!(joint.log_pdf(&[0.1, 0.1]) > joint.log_pdf(&[0.1, 0.9]) + 2.0);
    }
}
