//! The tree-structured Parzen estimator (Bergstra et al. 2011), as
//! Optuna's `TPESampler` (5.0): after `n_startup_trials` random trials, the
//! completed trials are split into the best `gamma(n) = min(ceil(n / 10),
//! 25)` and the rest; a Parzen estimator is fitted to each (older
//! observations of a large group weigh less); `n_ei_candidates` drawn from
//! the good one are scored by `ln l(x) - ln g(x)` and the best is proposed.
//!
//! Univariate TPE models each parameter on its own; multivariate TPE
//! (`TpeOptions::multivariate`) models all of them jointly. With a constant
//! liar (`TpeOptions::constant_liar`), suggestions that have not completed
//! yet count as observations among the bad ones, so parallel trials do not
//! all go to the same spot.
//!
//! One default departs from Optuna: the good observations weigh by rank
//! (`TpeOptions::rank_weights`), where Optuna weighs them alike. On the
//! benchmark functions of `tune/bench/searchers` it finds better values at
//! the same budget (most on Rosenbrock-10); with it off, the estimators
//! are Optuna's to 1e-9 (tested).

use std::collections::{BTreeMap, VecDeque};

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;

use super::parzen::{Dim, Grid, Mixture};
use super::{check_points, Searcher};
use crate::error::Result;
use crate::schedulers::Mode;
use crate::space::{Config, Domain, Param, SearchSpace};

/// TPE's settings. The defaults are those of Optuna 4's `TPESampler()`
/// (Optuna 5 turns `multivariate` and `constant_liar` on by default), but
/// for [`TpeOptions::rank_weights`]. Build them with
/// `..TpeOptions::default()` so that settings added later keep your code
/// compiling:
///
/// ```
/// use rayforge_tune::TpeOptions;
///
/// let opts = TpeOptions { multivariate: true, seed: 7, ..TpeOptions::default() };
/// assert_eq!(opts.n_startup_trials, 10);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TpeOptions {
    /// Random trials before the model is used (default 10).
    pub n_startup_trials: usize,
    /// Candidates drawn from the good model per suggestion (default 24).
    pub n_ei_candidates: usize,
    /// The seed.
    pub seed: u64,
    /// One joint model over all parameters instead of one per parameter
    /// (Optuna's `multivariate=True`; default false). It sees how
    /// parameters interact, which pays on correlated objectives.
    pub multivariate: bool,
    /// Count suggestions still running as bad observations (Optuna's
    /// `constant_liar=True`; default false), so trials suggested before
    /// the others complete spread out instead of repeating one point.
    pub constant_liar: bool,
    /// Weigh the good observations by rank: the best `2n / (n + 1)`,
    /// falling linearly to `2 / (n + 1)` for the worst of the `n` (1 on
    /// average, as uniform weights). Default true; false weighs them
    /// alike, as Optuna, which explores more around the good group's
    /// weaker points and, on the benchmarks, finds less.
    pub rank_weights: bool,
}

impl Default for TpeOptions {
    fn default() -> Self {
        TpeOptions {
            n_startup_trials: 10,
            n_ei_candidates: 24,
            seed: 0,
            multivariate: false,
            constant_liar: false,
            rank_weights: true,
        }
    }
}

/// The tree-structured Parzen estimator searcher over a space's domains
/// (grid parameters are modelled as choices; constants and derived
/// parameters are filled in as usual). See [`TpeOptions`] for the
/// multivariate model and the constant liar, and [`Tpe::with_points`] for
/// configs to try first.
#[derive(Debug, Clone)]
pub struct Tpe {
    space: SearchSpace,
    mode: Mode,
    opts: TpeOptions,
    rng: StdRng,
    /// The modelled parameters, in the space's order.
    params: Vec<Modelled>,
    /// Configs to propose before anything else.
    points: VecDeque<Config>,
    /// Suggested and not yet complete, by trial.
    pending: BTreeMap<String, Observation>,
    /// Completed trials with a finite value.
    observed: Vec<Observation>,
    /// Suggestions so far: orders observations by age.
    suggested: u64,
    /// Suggestions left (`None`: without end).
    budget: Option<usize>,
}

/// A parameter TPE models: its domain and model space.
#[derive(Debug, Clone)]
struct Modelled {
    name: String,
    domain: Domain,
    dim: Dim,
}

/// Observations with their kernel weights.
type Weighted<'a> = Vec<(&'a Observation, f64)>;

/// A trial's config in model space (NaN where a value does not fit the
/// domain), its score (higher is better) and when it was suggested.
#[derive(Debug, Clone)]
struct Observation {
    x: Vec<f64>,
    score: f64,
    seq: u64,
}

impl Tpe {
    /// TPE over `space`, optimising the metric in direction `mode`, for at
    /// most `num_samples` suggestions (`None`: as many as asked).
    pub fn new(space: SearchSpace, mode: Mode, num_samples: Option<usize>, opts: TpeOptions) -> Result<Tpe> {
        space.validate()?;
        let params = space
            .params()
            .iter()
            .filter_map(|(name, p)| match p {
                Param::Domain(d) => Some(Modelled {
                    name: name.clone(),
                    domain: d.clone(),
                    dim: dim_of(d),
                }),
                _ => None,
            })
            .collect();
        Ok(Tpe {
            space,
            mode,
            rng: StdRng::seed_from_u64(opts.seed),
            opts,
            params,
            points: VecDeque::new(),
            pending: BTreeMap::new(),
            observed: Vec::new(),
            suggested: 0,
            budget: num_samples,
        })
    }

    /// Proposes `points` first, in order, before any random or modelled
    /// config (Ray's `points_to_evaluate`): known good configs, or the
    /// defaults to beat. A point may name some parameters only; the others
    /// are drawn from the space. Each counts against the budget, and its
    /// result feeds the model as any other. Replaces points given before.
    ///
    /// Fails when a point names a parameter the space lacks or gives a
    /// value outside its domain.
    pub fn with_points(mut self, points: Vec<Config>) -> Result<Tpe> {
        check_points(&self.space, &points)?;
        self.points = points.into();
        Ok(self)
    }

    /// Optuna's gamma: the number of observations counted as good.
    fn n_good(n: usize) -> usize {
        n.div_ceil(10).min(25)
    }

    /// The config's values in model space.
    fn encode(&self, c: &Config) -> Vec<f64> {
        self.params
            .iter()
            .map(|p| c.get(&p.name).map_or(f64::NAN, |v| encode(&p.domain, &p.dim, v)))
            .collect()
    }

    /// A config from the model: candidates drawn from the good trials'
    /// estimator, the one most likely under it relative to the bad
    /// trials' estimator wins.
    fn modelled_config(&mut self) -> Config {
        let (good, bad) = weighted_groups(&self.observed, &self.pending, &self.opts);
        let n_candidates = self.opts.n_ei_candidates.max(1);
        let dims: Vec<Dim> = self.params.iter().map(|p| p.dim).collect();
        let rng = &mut self.rng;
        let x = if self.opts.multivariate {
            best_candidate(&dims, &good, &bad, 0..dims.len(), n_candidates, rng)
        } else {
            let mut x = Vec::with_capacity(dims.len());
            for d in 0..dims.len() {
                x.extend(best_candidate(&dims, &good, &bad, d..d + 1, n_candidates, rng));
            }
            x
        };
        let mut fixed = Config::new();
        for (p, v) in self.params.iter().zip(x) {
            fixed.insert(p.name.clone(), decode(&p.domain, &p.dim, v));
        }
        fixed
    }
}

/// The good and the bad observations with their weights, each oldest
/// first: the best `gamma(n)` completed trials, and the others (with a
/// constant liar, the pending suggestions too).
fn weighted_groups<'a>(
    observed: &'a [Observation],
    pending: &'a BTreeMap<String, Observation>,
    opts: &TpeOptions,
) -> (Weighted<'a>, Weighted<'a>) {
    let n_good = Tpe::n_good(observed.len());
    // The best n_good (in linear time); ties go to the older trial, as
    // Optuna's stable sort.
    let mut ranked: Vec<usize> = (0..observed.len()).collect();
    if n_good > 0 && n_good < ranked.len() {
        ranked.select_nth_unstable_by(n_good - 1, |a, b| {
            let (a, b) = (&observed[*a], &observed[*b]);
            b.score.total_cmp(&a.score).then(a.seq.cmp(&b.seq))
        });
    }
    let mut is_good = vec![false; observed.len()];
    for i in &ranked[..n_good] {
        is_good[*i] = true;
    }
    let (mut good, mut bad): (Vec<&Observation>, Vec<&Observation>) = (Vec::new(), Vec::new());
    for (o, g) in observed.iter().zip(is_good) {
        if g {
            good.push(o);
        } else {
            bad.push(o);
        }
    }
    if opts.constant_liar {
        bad.extend(pending.values());
    }
    // Oldest first, as the weights ramp up with age (observations come
    // nearly in that order already, so the sort takes linear time).
    good.sort_by_key(|o| o.seq);
    bad.sort_by_key(|o| o.seq);
    let good_weights = if opts.rank_weights {
        rank_weights(&good)
    } else {
        ramp_weights(good.len())
    };
    let bad_weights = ramp_weights(bad.len());
    (
        good.into_iter().zip(good_weights).collect(),
        bad.into_iter().zip(bad_weights).collect(),
    )
}

/// The best of `n` candidates for dimensions `dims[range]`, drawn from the
/// estimator of the (weighted) `good` observations and scored against that
/// of the `bad` ones (observations with a value missing in `range` are
/// left out).
fn best_candidate(
    dims: &[Dim],
    good: &[(&Observation, f64)],
    bad: &[(&Observation, f64)],
    range: std::ops::Range<usize>,
    n: usize,
    rng: &mut StdRng,
) -> Vec<f64> {
    let fit = |obs: &[(&Observation, f64)]| {
        let (rows, weights): (Vec<&[f64]>, Vec<f64>) = obs
            .iter()
            .map(|(o, w)| (&o.x[range.clone()], *w))
            .filter(|(x, _)| x.iter().all(|v| v.is_finite()))
            .unzip();
        Mixture::new(&dims[range.clone()], &rows, &weights)
    };
    let (l, g) = (fit(good), fit(bad));
    let mut best: Option<(f64, Vec<f64>)> = None;
    let mut scratch = Vec::new();
    for _ in 0..n {
        let x = l.sample(rng);
        let score = l.log_pdf_in(&x, &mut scratch) - g.log_pdf_in(&x, &mut scratch);
        // The first of equal scores wins, as numpy's argmax; a NaN score
        // (both densities 0) never does, unless all are.
        if best.as_ref().is_none_or(|(s, _)| score > *s) {
            best = Some((score, x));
        }
    }
    best.map(|b| b.1).unwrap_or_default()
}

/// Weights of the good observations by rank, in their order: the best
/// `2n / (n + 1)`, falling linearly to `2 / (n + 1)` for the worst (ties
/// share the better rank).
fn rank_weights(good: &[&Observation]) -> Vec<f64> {
    let n = good.len() as f64;
    good.iter()
        .map(|o| {
            let better = good.iter().filter(|p| p.score > o.score).count() as f64;
            2.0 * (n - better) / (n + 1.0)
        })
        .collect()
}

/// Optuna's default weights for `n` observations, oldest first: 1 each up
/// to 25; beyond, the newest 25 weigh 1 and the older ones ramp up
/// linearly from `1 / n`.
fn ramp_weights(n: usize) -> Vec<f64> {
    if n < 25 {
        return vec![1.0; n];
    }
    let m = n - 25;
    let start = 1.0 / n as f64;
    // numpy's linspace(start, 1, m): its last value is exactly 1.
    let step = (1.0 - start) / (m.max(2) - 1) as f64;
    let mut w: Vec<f64> = (0..m)
        .map(|i| {
            if m > 1 && i == m - 1 {
                1.0
            } else {
                start + step * i as f64
            }
        })
        .collect();
    w.resize(n, 1.0);
    w
}

/// The model space of a domain.
fn dim_of(d: &Domain) -> Dim {
    let grid = |origin: f64, step: f64, min: f64, max: f64| Grid { origin, step, min, max };
    // A discrete parameter's range reaches half a step past its ends.
    let discrete = |g: Grid, log: bool| {
        let (lo, hi) = (g.min - g.step / 2.0, g.max + g.step / 2.0);
        let (lo, hi) = if log { (lo.ln(), hi.ln()) } else { (lo, hi) };
        Dim::Numeric {
            lo,
            hi,
            log,
            grid: Some(g),
        }
    };
    let continuous = |lo: f64, hi: f64, log: bool| Dim::Numeric {
        lo,
        hi,
        log,
        grid: None,
    };
    match *d {
        Domain::Grid(ref v) | Domain::Choice(ref v) => Dim::Categorical { n: v.len() },
        Domain::Uniform { low, high } => continuous(low, high, false),
        Domain::LogUniform { low, high } => continuous(low.ln(), high.ln(), true),
        // Values are multiples of q (clamped to the bounds).
        Domain::QUniform { low, high, q } => discrete(grid(0.0, q, low, high), false),
        // Half a step below a small lower bound may be 0 or less, out of
        // reach of a log scale: modelled as continuous, then rounded.
        Domain::QLogUniform { low, high, .. } => continuous(low.ln(), high.ln(), true),
        Domain::RandInt { low, high } => discrete(grid(low as f64, 1.0, low as f64, (high - 1) as f64), false),
        Domain::QRandInt { low, high, q } => {
            let top = low + (high - low) / q * q;
            discrete(grid(low as f64, q as f64, low as f64, top as f64), false)
        }
        // low >= 1, so low - 0.5 > 0.
        Domain::LogRandInt { low, high } => discrete(grid(low as f64, 1.0, low as f64, (high - 1) as f64), true),
        // Modelled on mean +- 4 sd.
        Domain::RandN { mean, sd } => continuous(mean - 4.0 * sd, mean + 4.0 * sd, false),
    }
}

/// `v` in model space, NaN when it does not fit (not a number, not one of
/// the choices); numbers outside the range are taken as its nearest end.
fn encode(d: &Domain, dim: &Dim, v: &Value) -> f64 {
    match (d, dim) {
        (Domain::Grid(vals) | Domain::Choice(vals), _) => {
            vals.iter().position(|x| x == v).map_or(f64::NAN, |i| i as f64)
        }
        (_, Dim::Numeric { lo, hi, log, .. }) => match v.as_f64() {
            Some(x) if *log && x > 0.0 => x.ln().clamp(*lo, *hi),
            Some(x) if !*log && x.is_finite() => x.clamp(*lo, *hi),
            _ => f64::NAN,
        },
        _ => f64::NAN,
    }
}

/// The domain's value for model-space `x`.
fn decode(d: &Domain, dim: &Dim, x: f64) -> Value {
    match (d, dim) {
        (Domain::Grid(vals) | Domain::Choice(vals), _) => {
            let i = (x.max(0.0) as usize).min(vals.len().saturating_sub(1));
            vals.get(i).cloned().unwrap_or(Value::Null)
        }
        (_, Dim::Numeric { log, .. }) => snap(d, if *log { x.exp() } else { x }),
        _ => Value::Null,
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

impl Searcher for Tpe {
    fn suggest(&mut self, trial: &str) -> Option<Config> {
        if let Some(b) = self.budget.as_mut() {
            if *b == 0 {
                return None;
            }
            *b -= 1;
        }
        let fixed = if let Some(p) = self.points.pop_front() {
            p
        } else if self.observed.len() < self.opts.n_startup_trials || self.params.is_empty() {
            Config::new()
        } else {
            self.modelled_config()
        };
        let config = self.space.complete(&fixed, &mut self.rng);
        let x = self.encode(&config);
        self.pending.insert(
            trial.to_string(),
            Observation {
                x,
                score: f64::NAN,
                seq: self.suggested,
            },
        );
        self.suggested += 1;
        Some(config)
    }

    fn on_trial_complete(&mut self, trial: &str, value: Option<f64>) {
        if let (Some(mut o), Some(v)) = (self.pending.remove(trial), value.filter(|v| v.is_finite())) {
            o.score = self.mode.score(v);
            self.observed.push(o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{branin, branin_space, search};
    use super::super::BasicVariant;
    use super::*;

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    #[test]
    fn tpe_beats_random_search_on_branin_at_the_same_budget() {
        // Medians over 9 seeds of the best value after 60 trials.
        for multivariate in [false, true] {
            let (mut tpe, mut random) = (Vec::new(), Vec::new());
            for seed in 0..9 {
                let opts = TpeOptions {
                    seed,
                    multivariate,
                    ..Default::default()
                };
                let mut t = Tpe::new(branin_space(), Mode::Min, Some(60), opts).unwrap();
                tpe.push(search(&mut t, branin, 60));
                let mut r = BasicVariant::new(&branin_space(), 60, seed).unwrap();
                random.push(search(&mut r, branin, 60));
            }
            let (tpe, random) = (median(tpe), median(random));
            assert!(
                tpe < random,
                "multivariate {multivariate}: TPE {tpe} vs random {random}"
            );
            assert!(tpe < 1.0, "multivariate {multivariate}: {tpe}");
        }
    }

    /// Rosenbrock's banana valley on [-2, 2]^2 (minimum 0 at (1, 1)): the
    /// good region is a thin curved band, where x and y go together.
    fn rosenbrock(c: &Config) -> f64 {
        let (x, y) = (c["x"].as_f64().unwrap_or(0.0), c["y"].as_f64().unwrap_or(0.0));
        100.0 * (y - x * x).powi(2) + (1.0 - x).powi(2)
    }

    #[test]
    fn multivariate_tpe_beats_random_search_on_a_correlated_function() {
        let space = || {
            SearchSpace::new()
                .domain("x", Domain::Uniform { low: -2.0, high: 2.0 })
                .domain("y", Domain::Uniform { low: -2.0, high: 2.0 })
        };
        let (mut tpe, mut random) = (Vec::new(), Vec::new());
        for seed in 0..9 {
            let opts = TpeOptions {
                seed,
                multivariate: true,
                ..Default::default()
            };
            let mut t = Tpe::new(space(), Mode::Min, Some(80), opts).unwrap();
            tpe.push(search(&mut t, rosenbrock, 80));
            let mut r = BasicVariant::new(&space(), 80, seed).unwrap();
            random.push(search(&mut r, rosenbrock, 80));
        }
        let (tpe, random) = (median(tpe), median(random));
        assert!(tpe < random / 2.0, "multivariate TPE {tpe} vs random {random}");
    }

    /// The smallest distance between two of `configs` (over x and y).
    fn min_distance(configs: &[Config]) -> f64 {
        let xy = |c: &Config| (c["x"].as_f64().unwrap(), c["y"].as_f64().unwrap());
        let mut min = f64::MAX;
        for (i, a) in configs.iter().enumerate() {
            for b in &configs[i + 1..] {
                let ((ax, ay), (bx, by)) = (xy(a), xy(b));
                min = min.min(((ax - bx).powi(2) + (ay - by).powi(2)).sqrt());
            }
        }
        min
    }

    #[test]
    fn the_constant_liar_spreads_suggestions_made_before_results_come_back() {
        // 30 trials one after the other, then 8 suggested at once (8
        // parallel workers). Without a liar the model does not change
        // between the 8, so they crowd around its mode.
        let mut spread = [Vec::new(), Vec::new()];
        for seed in 0..9 {
            for (i, liar) in [false, true].into_iter().enumerate() {
                for multivariate in [false, true] {
                    let opts = TpeOptions {
                        seed,
                        multivariate,
                        constant_liar: liar,
                        ..Default::default()
                    };
                    let mut t = Tpe::new(branin_space(), Mode::Min, None, opts).unwrap();
                    search(&mut t, branin, 30);
                    let batch: Vec<Config> = (0..8).filter_map(|j| t.suggest(&format!("p{j}"))).collect();
                    assert_eq!(batch.len(), 8);
                    spread[i].push(min_distance(&batch));
                }
            }
        }
        let (plain, liar) = (median(spread[0].clone()), median(spread[1].clone()));
        assert!(liar > 2.0 * plain, "min pairwise distance: liar {liar}, plain {plain}");
    }

    #[test]
    fn points_come_first_and_count_against_the_budget() {
        let space = branin_space().constant("epochs", 3);
        let points = vec![
            Config::from([("x".to_string(), Value::from(3.0)), ("y".to_string(), Value::from(2.0))]),
            // Partial: y is drawn.
            Config::from([("x".to_string(), Value::from(-5.0))]),
        ];
        let mut t = Tpe::new(space, Mode::Min, Some(5), TpeOptions::default())
            .unwrap()
            .with_points(points)
            .unwrap();
        let mut got = Vec::new();
        for i in 0..10 {
            let id = format!("t{i}");
            let Some(c) = t.suggest(&id) else { break };
            t.on_trial_complete(&id, Some(branin(&c)));
            got.push(c);
        }
        assert_eq!(got.len(), 5, "two points and three more: the budget");
        assert_eq!((got[0]["x"].as_f64(), got[0]["y"].as_f64()), (Some(3.0), Some(2.0)));
        assert_eq!(got[1]["x"].as_f64(), Some(-5.0));
        assert!((0.0..15.0).contains(&got[1]["y"].as_f64().unwrap()));
        assert!(got.iter().all(|c| c["epochs"] == 3));
        // Points beyond the budget are not proposed.
        let many = vec![Config::from([("x".to_string(), Value::from(1.0))]); 4];
        let mut t = Tpe::new(branin_space(), Mode::Min, Some(2), TpeOptions::default())
            .unwrap()
            .with_points(many)
            .unwrap();
        assert!(t.suggest("a").is_some() && t.suggest("b").is_some());
        assert_eq!(t.suggest("c"), None);
    }

    #[test]
    fn a_good_point_guides_the_model() {
        // The optimum given as a point: every later trial is judged
        // against it, and the best found is the point itself.
        let best = Config::from([
            ("x".to_string(), Value::from(PI)),
            ("y".to_string(), Value::from(2.275)),
        ]);
        let mut t = Tpe::new(branin_space(), Mode::Min, Some(30), TpeOptions::default())
            .unwrap()
            .with_points(vec![best])
            .unwrap();
        assert!(search(&mut t, branin, 30) < 0.398);
    }

    const PI: f64 = std::f64::consts::PI;

    #[test]
    fn bad_points_are_errors_that_name_them() {
        let t = || Tpe::new(branin_space(), Mode::Min, None, TpeOptions::default()).unwrap();
        let e = t()
            .with_points(vec![Config::from([("z".to_string(), Value::from(1.0))])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("points_to_evaluate[0].z") && e.contains("x, y"), "{e}");
        let e = t()
            .with_points(vec![
                Config::new(),
                Config::from([("x".to_string(), Value::from(11.0))]),
            ])
            .unwrap_err()
            .to_string();
        assert!(e.contains("points_to_evaluate[1].x") && e.contains("11"), "{e}");
        let e = t()
            .with_points(vec![Config::from([("y".to_string(), Value::from("a"))])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("points_to_evaluate[0].y"), "{e}");
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
            .domain(
                "ql",
                Domain::QLogUniform {
                    low: 0.01,
                    high: 10.0,
                    q: 0.05,
                },
            )
            .domain("g", Domain::Grid(vec![1.into(), 2.into()]))
            .domain("z", Domain::RandN { mean: 0.0, sd: 1.0 });
        // Best: c = "b", lr near 1e-3, n = 3, q = 40.
        let f = |c: &Config| {
            (c["c"] != "b") as i32 as f64
                + (c["lr"].as_f64().unwrap().log10() + 3.0).abs()
                + (c["n"].as_i64().unwrap() - 3).abs() as f64
                + (c["q"].as_i64().unwrap() - 40).abs() as f64 / 10.0
        };
        for multivariate in [false, true] {
            let opts = TpeOptions {
                multivariate,
                constant_liar: multivariate,
                ..Default::default()
            };
            let mut t = Tpe::new(space.clone(), Mode::Min, Some(80), opts).unwrap();
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
                assert!((0.01..=10.0).contains(&c["ql"].as_f64().unwrap()));
                assert!([1, 2].contains(&c["g"].as_i64().unwrap()));
                assert!(c["z"].as_f64().unwrap().abs() <= 4.0 || i < 10);
                seen.push(f(&c));
                // Every fifth trial fails: no value.
                t.on_trial_complete(&id, (i % 5 != 4).then(|| f(&c)));
            }
            assert_eq!(seen.len(), 80, "the budget");
            let early = seen[..10].iter().cloned().fold(f64::MAX, f64::min);
            let late = seen[60..].iter().cloned().fold(f64::MAX, f64::min);
            assert!(
                late <= early,
                "multivariate {multivariate}: the model finds better configs than the random start: {early} then {late}"
            );
        }
    }

    #[test]
    fn a_space_without_domains_still_gets_configs() {
        let space = SearchSpace::new().constant("a", 1);
        let mut t = Tpe::new(space, Mode::Max, Some(20), TpeOptions::default()).unwrap();
        for i in 0..20 {
            let id = format!("t{i}");
            assert_eq!(t.suggest(&id).unwrap()["a"], 1);
            t.on_trial_complete(&id, Some(1.0));
        }
        assert_eq!(t.suggest("more"), None);
    }

    #[test]
    fn the_estimators_match_optunas() {
        // Reference values: Optuna 5.0's _ParzenEstimator (prior weight 1,
        // magic clip, endpoints not considered, default weights) on the
        // same observations and points.
        let xs = [
            3.232, 5.728, 4.041, 3.173, 1.355, 4.688, 1.564, 8.377, 9.455, 0.752, 6.876, 2.933, 3.521, 8.884, -3.934,
            -3.693, -4.697, 7.489, 6.672, 8.05, 9.679, 6.987, 1.922, 6.708, -3.226, 4.599, -2.85, 9.17, 2.828, 1.22,
        ];
        let ys = [
            3.968, 11.614, 6.842, 8.527, 0.282, 9.265, 9.181, 9.254, 14.156, 10.227, 5.393, 6.555, 10.464, 0.903,
            10.002, 10.06, 3.156, 1.934, 4.731, 5.456, 8.553, 6.579, 14.826, 1.531, 3.133, 2.42, 9.797, 3.799, 6.995,
            3.666,
        ];
        let dims = [
            dim_of(&Domain::Uniform { low: -5.0, high: 10.0 }),
            dim_of(&Domain::Uniform { low: 0.0, high: 15.0 }),
        ];
        let rows: Vec<[f64; 2]> = xs.iter().zip(&ys).map(|(x, y)| [*x, *y]).collect();
        let rows: Vec<&[f64]> = rows.iter().map(|r| &r[..]).collect();
        let joint = Mixture::new(&dims, &rows, &ramp_weights(30));
        let points = [[-4.0, 14.0], [0.5, 2.0], [3.0, 7.5], [9.9, 0.1]];
        let want = [
            -8.87474634951053,
            -8.083657930571512,
            -4.096815101626036,
            -6.669362935636203,
        ];
        for (p, w) in points.iter().zip(want) {
            assert!(
                (joint.log_pdf(p) - w).abs() < 1e-9,
                "joint at {p:?}: {} vs {w}",
                joint.log_pdf(p)
            );
        }
        let x_rows: Vec<&[f64]> = rows.iter().map(|r| &r[..1]).collect();
        let x_only = Mixture::new(&dims[..1], &x_rows, &ramp_weights(30));
        let want = [
            -2.538508179210302,
            -3.4383433617847885,
            -2.25929638428718,
            -2.6209760887453335,
        ];
        for (p, w) in points.iter().zip(want) {
            assert!((x_only.log_pdf(&p[..1]) - w).abs() < 1e-9, "x at {}", p[0]);
        }
        // Integers (Optuna's IntDistribution(1, 5)), log integers
        // (IntDistribution(1, 999, log=True)) and a choice.
        let domains = [
            Domain::RandInt { low: 1, high: 6 },
            Domain::LogRandInt { low: 1, high: 1000 },
            Domain::Choice(vec!["a".into(), "b".into(), "c".into()]),
        ];
        let dims: Vec<Dim> = domains.iter().map(dim_of).collect();
        let enc = |vals: [Value; 3]| -> Vec<f64> {
            domains
                .iter()
                .zip(&dims)
                .zip(&vals)
                .map(|((d, m), v)| encode(d, m, v))
                .collect()
        };
        let obs = [
            enc([1.into(), 2.into(), "a".into()]),
            enc([3.into(), 50.into(), "c".into()]),
            enc([3.into(), 700.into(), "c".into()]),
            enc([5.into(), 3.into(), "b".into()]),
        ];
        let rows: Vec<&[f64]> = obs.iter().map(|r| &r[..]).collect();
        let mixed = Mixture::new(&dims, &rows, &ramp_weights(4));
        for (p, w) in [
            (enc([1.into(), 1.into(), "a".into()]), -4.0014338288890965),
            (enc([2.into(), 60.into(), "b".into()]), -9.251498416890904),
            (enc([4.into(), 999.into(), "c".into()]), -11.163094070252088),
        ] {
            assert!(
                (mixed.log_pdf(&p) - w).abs() < 1e-9,
                "mixed at {p:?}: {} vs {w}",
                mixed.log_pdf(&p)
            );
        }
    }

    #[test]
    fn optunas_weights_and_gamma() {
        assert_eq!(ramp_weights(3), vec![1.0; 3]);
        assert_eq!(ramp_weights(25), vec![1.0; 25]);
        let w = ramp_weights(26);
        assert_eq!((w.len(), w[0], w[1]), (26, 1.0 / 26.0, 1.0));
        let w = ramp_weights(35); // linspace(1/35, 1, 10), then 25 ones
        assert_eq!((w[0], w[9], w[10]), (1.0 / 35.0, 1.0, 1.0));
        assert_eq!(w[1], 1.0 / 35.0 + (1.0 - 1.0 / 35.0) / 9.0);
        assert_eq!(
            [0, 1, 10, 11, 100, 250, 1000].map(Tpe::n_good),
            [0, 1, 1, 2, 10, 25, 25]
        );
        let obs = |score: f64| Observation {
            x: vec![],
            score,
            seq: 0,
        };
        let good = [obs(1.0), obs(3.0), obs(2.0), obs(3.0)];
        let good: Vec<&Observation> = good.iter().collect();
        // n = 4: ranks 3, 0, 2, 0 (a tie for the best).
        assert_eq!(rank_weights(&good), vec![0.4, 1.6, 0.8, 1.6]);
    }
}
