//! Searchers: where the next trial's config comes from. The [`Searcher`]
//! trait is ask/tell (`suggest` a config for a new trial, `on_trial_complete`
//! with its result), so other algorithms plug in. [`BasicVariant`] is Ray
//! Tune's default (every grid point `num_samples` times, the rest drawn at
//! random); [`Tpe`] is the tree-structured Parzen estimator (Bergstra et al.
//! 2011, as Optuna's `TPESampler`): after some random trials, it models the
//! configs of the best `gamma` fraction and of the rest with Parzen
//! estimators per parameter and proposes the candidate that maximises
//! their ratio.

use std::collections::{BTreeMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::error::Result;
use crate::schedulers::Mode;
use crate::space::{Config, Domain, Param, SearchSpace};

/// Proposes configs and learns from their results.
pub trait Searcher: Send {
    /// A config for the new trial `trial`, or `None` when the searcher has
    /// nothing more to propose.
    fn suggest(&mut self, trial: &str) -> Option<Config>;

    /// `trial` ended with this value of the experiment's metric (`None`
    /// when it failed or reported none).
    fn on_trial_complete(&mut self, trial: &str, value: Option<f64>);
}

impl<S: Searcher + ?Sized> Searcher for Box<S> {
    fn suggest(&mut self, trial: &str) -> Option<Config> {
        (**self).suggest(trial)
    }

    fn on_trial_complete(&mut self, trial: &str, value: Option<f64>) {
        (**self).on_trial_complete(trial, value)
    }
}

/// Every grid point `num_samples` times, the other parameters drawn at
/// random (seeded): Ray Tune's `BasicVariantGenerator`.
#[derive(Debug, Clone)]
pub struct BasicVariant {
    queue: VecDeque<Config>,
}

impl BasicVariant {
    /// The variants of `space`.
    pub fn new(space: &SearchSpace, num_samples: usize, seed: u64) -> Result<BasicVariant> {
        Ok(BasicVariant {
            queue: space.variants(num_samples, seed)?.into(),
        })
    }

    /// How many configs are left.
    pub fn remaining(&self) -> usize {
        self.queue.len()
    }
}

impl Searcher for BasicVariant {
    fn suggest(&mut self, _trial: &str) -> Option<Config> {
        self.queue.pop_front()
    }

    fn on_trial_complete(&mut self, _trial: &str, _value: Option<f64>) {}
}

/// TPE's settings (Optuna's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TpeOptions {
    /// Random trials before the model is used (default 10).
    pub n_startup_trials: usize,
    /// Candidates drawn from the good model per suggestion (default 24).
    pub n_ei_candidates: usize,
    /// The seed.
    pub seed: u64,
}

impl Default for TpeOptions {
    fn default() -> Self {
        TpeOptions {
            n_startup_trials: 10,
            n_ei_candidates: 24,
            seed: 0,
        }
    }
}

/// The tree-structured Parzen estimator searcher, univariate (each
/// parameter modelled on its own), over a space's domains (grid parameters
/// are treated as choices). Derived parameters are computed as usual.
#[derive(Debug, Clone)]
pub struct Tpe {
    space: SearchSpace,
    mode: Mode,
    opts: TpeOptions,
    rng: StdRng,
    /// Suggested and not yet complete.
    pending: BTreeMap<String, Config>,
    /// Completed trials: config and score (higher is better).
    observed: Vec<(Config, f64)>,
    /// Suggestions left (`None`: without end).
    budget: Option<usize>,
}

impl Tpe {
    /// TPE over `space`, optimising the metric in direction `mode`, for at
    /// most `num_samples` suggestions (`None`: as many as asked).
    pub fn new(space: SearchSpace, mode: Mode, num_samples: Option<usize>, opts: TpeOptions) -> Result<Tpe> {
        space.validate()?;
        Ok(Tpe {
            space,
            mode,
            rng: StdRng::seed_from_u64(opts.seed),
            opts,
            pending: BTreeMap::new(),
            observed: Vec::new(),
            budget: num_samples,
        })
    }

    /// Optuna's gamma: the number of observations counted as good.
    fn n_good(n: usize) -> usize {
        (n as f64 * 0.1).ceil().clamp(1.0, 25.0) as usize
    }

    fn propose(&mut self, d: &Domain, good: &[&Value], bad: &[&Value]) -> Value {
        match d {
            Domain::Grid(vals) | Domain::Choice(vals) => {
                let weights = |obs: &[&Value]| -> Vec<f64> {
                    // Counts plus a prior of one per value.
                    vals.iter()
                        .map(|v| 1.0 + obs.iter().filter(|o| **o == v).count() as f64)
                        .collect()
                };
                let (wg, wb) = (weights(good), weights(bad));
                let (sg, sb) = (wg.iter().sum::<f64>(), wb.iter().sum::<f64>());
                let mut best = (f64::MIN, 0);
                for _ in 0..self.opts.n_ei_candidates {
                    let i = pick_weighted(&mut self.rng, &wg);
                    let ratio = (wg[i] / sg).ln() - (wb[i] / sb).ln();
                    if ratio > best.0 {
                        best = (ratio, i);
                    }
                }
                vals[best.1].clone()
            }
            Domain::RandN { mean, sd } => {
                // Modelled on mean +- 4 sd.
                let (lo, hi) = (mean - 4.0 * sd, mean + 4.0 * sd);
                Value::from(self.numeric(lo, hi, good, bad, |x| x))
            }
            _ => {
                let (lo, hi, log, int) = bounds(d);
                let to = |x: f64| if log { x.ln() } else { x };
                let from = |x: f64| if log { x.exp() } else { x };
                // Integers: the model's range covers each value's half-unit.
                // (Log-scaled integers start at 1, so lo - 0.5 stays above 0.)
                let (lo_m, hi_m) = if int {
                    (to(lo - 0.5), to(hi + 0.5))
                } else {
                    (to(lo), to(hi))
                };
                let x = from(self.numeric(lo_m, hi_m, good, bad, to));
                snap(d, x)
            }
        }
    }

    /// The candidate in `[lo, hi]` (model space) maximising l(x) / g(x).
    fn numeric(&mut self, lo: f64, hi: f64, good: &[&Value], bad: &[&Value], to: impl Fn(f64) -> f64) -> f64 {
        let pts = |obs: &[&Value]| -> Vec<f64> {
            obs.iter()
                .filter_map(|v| v.as_f64())
                .map(&to)
                .filter(|x| x.is_finite())
                .map(|x| x.clamp(lo, hi))
                .collect()
        };
        let l = Parzen::new(&pts(good), lo, hi);
        let g = Parzen::new(&pts(bad), lo, hi);
        let mut best = (f64::MIN, (lo + hi) / 2.0);
        for _ in 0..self.opts.n_ei_candidates {
            let x = l.sample(&mut self.rng);
            let score = l.log_pdf(x) - g.log_pdf(x);
            if score > best.0 {
                best = (score, x);
            }
        }
        best.1
    }
}

/// `(low, high, log scale, integer)` of a numeric domain.
fn bounds(d: &Domain) -> (f64, f64, bool, bool) {
    match *d {
        Domain::Uniform { low, high } | Domain::QUniform { low, high, .. } => (low, high, false, false),
        Domain::LogUniform { low, high } | Domain::QLogUniform { low, high, .. } => (low, high, true, false),
        Domain::RandInt { low, high } => (low as f64, (high - 1) as f64, false, true),
        Domain::QRandInt { low, high, .. } => (low as f64, high as f64, false, true),
        Domain::LogRandInt { low, high } => (low as f64, (high - 1) as f64, true, true),
        Domain::RandN { mean, sd } => (mean - 4.0 * sd, mean + 4.0 * sd, false, false),
        Domain::Grid(_) | Domain::Choice(_) => (0.0, 1.0, false, false),
    }
}

/// A value of the domain nearest `x` (rounded, quantised, within bounds).
fn snap(d: &Domain, x: f64) -> Value {
    let q = |x: f64, q: f64| (x / q).round() * q;
    match *d {
        Domain::Uniform { low, high } | Domain::LogUniform { low, high } => Value::from(x.clamp(low, high)),
        Domain::QUniform { low, high, q: s } | Domain::QLogUniform { low, high, q: s } => {
            Value::from(q(x, s).clamp(low, high))
        }
        Domain::RandInt { low, high } | Domain::LogRandInt { low, high } => {
            Value::from((x.round() as i64).clamp(low, high - 1))
        }
        Domain::QRandInt { low, high, q: s } => {
            let steps = ((x - low as f64) / s as f64).round() as i64;
            Value::from((low + steps * s).clamp(low, low + (high - low) / s * s))
        }
        _ => Value::from(x),
    }
}

/// Picks an index with probability proportional to `w`.
fn pick_weighted(rng: &mut impl Rng, w: &[f64]) -> usize {
    let mut r = rng.random::<f64>() * w.iter().sum::<f64>();
    for (i, x) in w.iter().enumerate() {
        if r < *x {
            return i;
        }
        r -= x;
    }
    w.len() - 1
}

/// A mixture of Gaussians truncated to `[lo, hi]`, one per observation
/// plus a wide prior at the middle, with Optuna's bandwidths (the distance
/// to the farther neighbour, clipped).
struct Parzen {
    mus: Vec<f64>,
    sigmas: Vec<f64>,
    lo: f64,
    hi: f64,
}

impl Parzen {
    fn new(points: &[f64], lo: f64, hi: f64) -> Parzen {
        let width = (hi - lo).max(f64::MIN_POSITIVE);
        let mut mus: Vec<f64> = points.to_vec();
        mus.push((lo + hi) / 2.0);
        let mut order: Vec<usize> = (0..mus.len()).collect();
        order.sort_by(|a, b| mus[*a].total_cmp(&mus[*b]));
        let sorted: Vec<f64> = order.iter().map(|i| mus[*i]).collect();
        let min_sigma = width / (100f64).min(1.0 + mus.len() as f64);
        let mut sigmas = vec![width; mus.len()];
        for (k, i) in order.iter().enumerate() {
            if *i == mus.len() - 1 {
                continue; // the prior keeps the whole range as its width
            }
            let left = if k > 0 {
                sorted[k] - sorted[k - 1]
            } else {
                sorted[k] - lo
            };
            let right = if k + 1 < sorted.len() {
                sorted[k + 1] - sorted[k]
            } else {
                hi - sorted[k]
            };
            sigmas[*i] = left.max(right).clamp(min_sigma, width);
        }
        Parzen { mus, sigmas, lo, hi }
    }

    fn sample(&self, rng: &mut impl Rng) -> f64 {
        let i = rng.random_range(0..self.mus.len());
        // Rejection into the range, bounded; the clamp ends a long run.
        for _ in 0..100 {
            let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            let x = self.mus[i] + self.sigmas[i] * z;
            if (self.lo..=self.hi).contains(&x) {
                return x;
            }
        }
        self.mus[i].clamp(self.lo, self.hi)
    }

    fn log_pdf(&self, x: f64) -> f64 {
        let n = self.mus.len() as f64;
        let p: f64 = self
            .mus
            .iter()
            .zip(&self.sigmas)
            .map(|(m, s)| {
                let mass = normal_cdf((self.hi - m) / s) - normal_cdf((self.lo - m) / s);
                let z = (x - m) / s;
                (-0.5 * z * z).exp() / (s * (std::f64::consts::TAU).sqrt() * mass.max(1e-12))
            })
            .sum::<f64>()
            / n;
        p.max(1e-300).ln()
    }
}

/// The standard normal CDF (Abramowitz and Stegun 7.1.26, error < 1.5e-7).
fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

impl Searcher for Tpe {
    fn suggest(&mut self, trial: &str) -> Option<Config> {
        if let Some(b) = self.budget.as_mut() {
            if *b == 0 {
                return None;
            }
            *b -= 1;
        }
        let config = if self.observed.len() < self.opts.n_startup_trials {
            self.space.complete(&Config::new(), &mut self.rng)
        } else {
            // Taken out while proposing (which draws from self.rng).
            let observed = std::mem::take(&mut self.observed);
            let mut sorted: Vec<&(Config, f64)> = observed.iter().collect();
            sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
            let n_good = Tpe::n_good(sorted.len());
            let mut fixed = Config::new();
            let params: Vec<(String, Param)> = self.space.params().to_vec();
            for (name, p) in &params {
                let Param::Domain(d) = p else { continue };
                let good: Vec<&Value> = sorted[..n_good].iter().filter_map(|o| o.0.get(name)).collect();
                let bad: Vec<&Value> = sorted[n_good..].iter().filter_map(|o| o.0.get(name)).collect();
                let v = self.propose(d, &good, &bad);
                fixed.insert(name.clone(), v);
            }
            self.observed = observed;
            self.space.complete(&fixed, &mut self.rng)
        };
        self.pending.insert(trial.to_string(), config.clone());
        Some(config)
    }

    fn on_trial_complete(&mut self, trial: &str, value: Option<f64>) {
        if let (Some(c), Some(v)) = (self.pending.remove(trial), value.filter(|v| v.is_finite())) {
            self.observed.push((c, self.mode.score(v)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(s: &mut dyn Searcher, f: impl Fn(&Config) -> f64, n: usize) -> f64 {
        let mut best = f64::MAX;
        for i in 0..n {
            let id = format!("t{i}");
            let Some(c) = s.suggest(&id) else { break };
            let v = f(&c);
            best = best.min(v);
            s.on_trial_complete(&id, Some(v));
        }
        best
    }

    /// The Branin function (minimum 0.397887 at three points).
    fn branin(c: &Config) -> f64 {
        let (x, y) = (c["x"].as_f64().unwrap_or(0.0), c["y"].as_f64().unwrap_or(0.0));
        let pi = std::f64::consts::PI;
        let b = 5.1 / (4.0 * pi * pi);
        (y - b * x * x + 5.0 / pi * x - 6.0).powi(2) + 10.0 * (1.0 - 1.0 / (8.0 * pi)) * x.cos() + 10.0
    }

    fn branin_space() -> SearchSpace {
        SearchSpace::new()
            .domain("x", Domain::Uniform { low: -5.0, high: 10.0 })
            .domain("y", Domain::Uniform { low: 0.0, high: 15.0 })
    }

    #[test]
    fn tpe_beats_random_search_on_branin_at_the_same_budget() {
        // Medians over 9 seeds of the best value after 60 trials.
        let (mut tpe, mut random) = (Vec::new(), Vec::new());
        for seed in 0..9 {
            let opts = TpeOptions {
                seed,
                ..Default::default()
            };
            let mut t = Tpe::new(branin_space(), Mode::Min, Some(60), opts).unwrap();
            tpe.push(search(&mut t, branin, 60));
            let mut r = BasicVariant::new(&branin_space(), 60, seed).unwrap();
            random.push(search(&mut r, branin, 60));
        }
        tpe.sort_by(f64::total_cmp);
        random.sort_by(f64::total_cmp);
        assert!(tpe[4] < random[4], "TPE {tpe:?} vs random {random:?}");
        assert!(tpe[4] < 1.0, "{tpe:?}");
    }

    #[test]
    fn tpe_handles_every_kind_of_domain_and_stops_at_its_budget() {
        let space = SearchSpace::new()
            .domain("c", Domain::Choice(vec!["a".into(), "b".into(), "c".into()]))
            .domain("lr", Domain::LogUniform { low: 1e-5, high: 1.0 })
            .domain("n", Domain::RandInt { low: 1, high: 5 })
            .domain(
                "q",
                Domain::QRandInt {
                    low: 0,
                    high: 100,
                    q: 10,
                },
            )
            .domain("k", Domain::LogRandInt { low: 1, high: 1000 })
            .domain(
                "u",
                Domain::QUniform {
                    low: 0.0,
                    high: 1.0,
                    q: 0.25,
                },
            )
            .domain("z", Domain::RandN { mean: 0.0, sd: 1.0 });
        // Best: c = "b", lr near 1e-3, n = 3, q = 40.
        let f = |c: &Config| {
            (c["c"] != "b") as i32 as f64
                + (c["lr"].as_f64().unwrap().log10() + 3.0).abs()
                + (c["n"].as_i64().unwrap() - 3).abs() as f64
                + (c["q"].as_i64().unwrap() - 40).abs() as f64 / 10.0
        };
        let mut t = Tpe::new(space, Mode::Min, Some(80), TpeOptions::default()).unwrap();
        let mut seen = Vec::new();
        for i in 0..100 {
            let id = format!("t{i}");
            let Some(c) = t.suggest(&id) else { break };
            assert!(["a", "b", "c"].contains(&c["c"].as_str().unwrap()));
            assert!((1e-5..=1.0).contains(&c["lr"].as_f64().unwrap()));
            assert!((1..5).contains(&c["n"].as_i64().unwrap()));
            assert!(c["q"].as_i64().unwrap() % 10 == 0 && (0..=100).contains(&c["q"].as_i64().unwrap()));
            assert!((1..1000).contains(&c["k"].as_i64().unwrap()));
            assert!([0.0, 0.25, 0.5, 0.75, 1.0].contains(&c["u"].as_f64().unwrap()));
            seen.push(f(&c));
            t.on_trial_complete(&id, Some(f(&c)));
        }
        assert_eq!(seen.len(), 80, "the budget");
        let early = seen[..10].iter().cloned().fold(f64::MAX, f64::min);
        let late = seen[60..].iter().cloned().fold(f64::MAX, f64::min);
        assert!(
            late <= early,
            "the model finds better configs than the random start: {early} then {late}"
        );
    }

    #[test]
    fn the_normal_cdf_is_accurate() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.96) - 0.975_002).abs() < 1e-5);
        assert!((normal_cdf(-1.0) - 0.158_655).abs() < 1e-5);
    }
}
