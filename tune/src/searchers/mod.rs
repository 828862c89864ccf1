//! Searchers: where the next trial's config comes from. The [`Searcher`]
//! trait is ask/tell (`suggest` a config for a new trial, `on_trial_complete`
//! with its result), so other algorithms plug in; a searcher is pure state,
//! tested without trials running.
//!
//! The parts:
//! - here, the trait and [`BasicVariant`], Ray Tune's default (every grid
//!   point `num_samples` times, the rest drawn at random);
//! - `tpe`: [`Tpe`], the tree-structured Parzen estimator as Optuna's
//!   `TPESampler` (univariate or multivariate, with a constant liar for
//!   parallel trials);
//! - `parzen`: the Parzen estimators TPE fits and the normal-distribution
//!   arithmetic under them.
//!
//! Both searchers take configs to try first (Ray's `points_to_evaluate`):
//! [`BasicVariant::with_points`], [`Tpe::with_points`].

mod parzen;
mod tpe;

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::space::{Config, Domain, Param, SearchSpace};

pub use tpe::{Tpe, TpeOptions};

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
    space: SearchSpace,
    num_samples: usize,
    seed: u64,
    queue: VecDeque<Config>,
}

impl BasicVariant {
    /// The variants of `space`.
    pub fn new(space: &SearchSpace, num_samples: usize, seed: u64) -> Result<BasicVariant> {
        Ok(BasicVariant {
            queue: space.variants(num_samples, seed)?.into(),
            space: space.clone(),
            num_samples,
            seed,
        })
    }

    /// Proposes `points` first, in order (Ray's `points_to_evaluate`). As
    /// in Ray, each point takes the place of one of the `num_samples`
    /// samples: it runs once per grid point of the grid parameters it does
    /// not set, with the parameters it does not name drawn at random; the
    /// samples left after the points follow. Replaces points given before.
    ///
    /// Fails when a point names a parameter the space lacks or gives a
    /// value outside its domain.
    ///
    /// ```
    /// use rayforge_tune::{BasicVariant, Config, Domain, SearchSpace};
    ///
    /// let space = SearchSpace::new()
    ///     .domain("lr", Domain::LogUniform { low: 1e-4, high: 1e-1 })
    ///     .domain("layers", Domain::Grid(vec![1.into(), 2.into()]));
    /// let default = Config::from([("lr".to_string(), 1e-3.into())]);
    /// let searcher = BasicVariant::new(&space, 3, 0)?.with_points(vec![default])?;
    /// // The point on both grid points, then 2 samples of each.
    /// assert_eq!(searcher.remaining(), 6);
    /// # Ok::<(), rayforge_tune::Error>(())
    /// ```
    pub fn with_points(self, points: Vec<Config>) -> Result<BasicVariant> {
        check_points(&self.space, &points)?;
        // Seeded apart from the samples, which stay those of `new` with
        // fewer samples.
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x9e37_79b9_7f4a_7c15);
        let mut queue = VecDeque::new();
        for point in &points {
            let expanded = self.space.grid_points(point);
            queue.extend(expanded.iter().map(|c| self.space.complete(c, &mut rng)));
        }
        let rest = self.num_samples.saturating_sub(points.len());
        queue.extend(self.space.variants(rest, self.seed)?);
        Ok(BasicVariant { queue, ..self })
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

/// Checks that each point names parameters of `space` only, with values
/// their domains can take; the error names the point and parameter as
/// `points_to_evaluate[i].name`.
fn check_points(space: &SearchSpace, points: &[Config]) -> Result<()> {
    for (i, point) in points.iter().enumerate() {
        for (name, v) in point {
            let field = format!("points_to_evaluate[{i}].{name}");
            match space.params().iter().find(|(n, _)| n == name) {
                None => {
                    let names: Vec<&str> = space.params().iter().map(|(n, _)| n.as_str()).collect();
                    return Err(Error::config(
                        field,
                        None,
                        format!("not a parameter of the search space (it has: {})", names.join(", ")),
                    ));
                }
                Some((_, Param::Domain(d))) if !admits(d, v) => {
                    return Err(Error::config(
                        field,
                        None,
                        format!("{v} is not a value of the parameter's domain, {d:?}"),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Whether `v` is a value `d` can take (bounds included; quantised
/// domains take any number within their bounds).
fn admits(d: &Domain, v: &Value) -> bool {
    let float = |low: f64, high: f64| v.as_f64().is_some_and(|x| (low..=high).contains(&x));
    let int = |low: i64, high: i64| v.as_i64().is_some_and(|x| (low..=high).contains(&x));
    match *d {
        Domain::Grid(ref vals) | Domain::Choice(ref vals) => vals.contains(v),
        Domain::Uniform { low, high }
        | Domain::QUniform { low, high, .. }
        | Domain::LogUniform { low, high }
        | Domain::QLogUniform { low, high, .. } => float(low, high),
        Domain::RandInt { low, high } | Domain::LogRandInt { low, high } => int(low, high - 1),
        Domain::QRandInt { low, high, .. } => int(low, high),
        Domain::RandN { .. } => v.as_f64().is_some_and(f64::is_finite),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `n` trials one after the other; the best value.
    pub(super) fn search(s: &mut dyn Searcher, f: impl Fn(&Config) -> f64, n: usize) -> f64 {
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
    pub(super) fn branin(c: &Config) -> f64 {
        let (x, y) = (c["x"].as_f64().unwrap_or(0.0), c["y"].as_f64().unwrap_or(0.0));
        let pi = std::f64::consts::PI;
        let b = 5.1 / (4.0 * pi * pi);
        (y - b * x * x + 5.0 / pi * x - 6.0).powi(2) + 10.0 * (1.0 - 1.0 / (8.0 * pi)) * x.cos() + 10.0
    }

    pub(super) fn branin_space() -> SearchSpace {
        SearchSpace::new()
            .domain("x", Domain::Uniform { low: -5.0, high: 10.0 })
            .domain("y", Domain::Uniform { low: 0.0, high: 15.0 })
    }

    #[test]
    fn basic_variant_runs_points_first_on_each_grid_point_in_place_of_a_sample() {
        let space = SearchSpace::new()
            .domain("lr", Domain::Uniform { low: 0.0, high: 1.0 })
            .domain("g", Domain::Grid(vec![1.into(), 2.into(), 3.into()]))
            .domain("h", Domain::Grid(vec!["a".into(), "b".into()]));
        let points = vec![
            // Both grids unset: 6 configs.
            Config::from([("lr".to_string(), Value::from(0.5))]),
            // g set: one per value of h.
            Config::from([("g".to_string(), Value::from(2)), ("lr".to_string(), Value::from(0.25))]),
        ];
        let plain = BasicVariant::new(&space, 4, 3).unwrap();
        assert_eq!(plain.remaining(), 24);
        let mut s = plain.with_points(points).unwrap();
        assert_eq!(s.remaining(), 6 + 2 + 2 * 6, "two samples replaced by the points");
        let all: Vec<Config> = std::iter::from_fn(|| s.suggest("t")).collect();
        assert!(all[..6].iter().all(|c| c["lr"] == 0.5));
        let grid: std::collections::BTreeSet<String> =
            all[..6].iter().map(|c| format!("{}{}", c["g"], c["h"])).collect();
        assert_eq!(grid.len(), 6, "every grid point once");
        assert!(all[6..8].iter().all(|c| c["lr"] == 0.25 && c["g"] == 2));
        assert_ne!(all[6]["h"], all[7]["h"]);
        // The samples after the points are those of 2 samples.
        assert_eq!(
            all[8..],
            BasicVariant::new(&space, 2, 3).unwrap().queue.make_contiguous()[..]
        );
        // More points than samples: all points, no samples.
        let many = vec![Config::from([("g".to_string(), Value::from(1)), ("h".to_string(), Value::from("a"))]); 5];
        assert_eq!(
            BasicVariant::new(&space, 2, 0)
                .unwrap()
                .with_points(many)
                .unwrap()
                .remaining(),
            5
        );
    }

    #[test]
    fn points_must_fit_the_space() {
        let space = SearchSpace::new()
            .domain("n", Domain::RandInt { low: 1, high: 5 })
            .domain("c", Domain::Choice(vec!["a".into(), "b".into()]))
            .constant("epochs", 3);
        let check = |p: Config| check_points(&space, &[p]).map_err(|e| e.to_string());
        let p = |k: &str, v: Value| Config::from([(k.to_string(), v)]);
        assert!(check(p("n", 4.into())).is_ok());
        assert!(check(p("epochs", 10.into())).is_ok(), "constants may be overridden");
        assert!(
            check(p("n", 5.into())).unwrap_err().contains("RandInt"),
            "5 is excluded"
        );
        assert!(check(p("n", 2.5.into())).is_err());
        assert!(check(p("c", "z".into()))
            .unwrap_err()
            .contains("points_to_evaluate[0].c"));
        assert!(check(p("m", 1.into())).unwrap_err().contains("n, c, epochs"));
    }
}
