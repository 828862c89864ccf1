//! Trial schedulers: after each result a trial reports, whether it goes on
//! or stops early. [`Fifo`] lets every trial run to the end;
//! [`Asha`] (asynchronous successive halving, Ray's `ASHAScheduler`) stops
//! a trial that reaches a rung below the best `1 / reduction_factor` of the
//! trials that reached it before; [`MedianStopping`] stops a trial whose
//! best result is worse than the median of the other trials' running
//! averages at the same time.
//!
//! Schedulers are plain state machines over the results they are shown, so
//! their decisions are tested without running anything.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// A result's metrics, by name.
pub type Metrics = BTreeMap<String, f64>;

/// Whether higher or lower values of the metric are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Lower is better (a loss).
    Min,
    /// Higher is better (an accuracy).
    Max,
}

impl Mode {
    /// `value` turned so that higher is better.
    pub fn score(self, value: f64) -> f64 {
        match self {
            Mode::Max => value,
            Mode::Min => -value,
        }
    }
}

/// What a scheduler decides about a trial after one of its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Keep running it.
    Continue,
    /// Stop it early: it is not promising enough.
    Stop,
    /// Stop it: it has run as long as the scheduler lets any trial run
    /// (ASHA's `max_t`).
    Complete,
}

/// Decides, result by result, which trials go on.
pub trait Scheduler: Send {
    /// A result of `trial`: go on or stop.
    fn on_result(&mut self, trial: &str, result: &Metrics) -> Decision;

    /// `trial` finished (or failed): it reports no more.
    fn on_trial_complete(&mut self, _trial: &str) {}

    /// A short name for progress output ("FIFO", "ASHA", ...).
    fn name(&self) -> &'static str;
}

impl<S: Scheduler + ?Sized> Scheduler for Box<S> {
    fn on_result(&mut self, trial: &str, result: &Metrics) -> Decision {
        (**self).on_result(trial, result)
    }

    fn on_trial_complete(&mut self, trial: &str) {
        (**self).on_trial_complete(trial)
    }

    fn name(&self) -> &'static str {
        (**self).name()
    }
}

/// Every trial runs until it ends or a stop criterion stops it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fifo;

impl Scheduler for Fifo {
    fn on_result(&mut self, _trial: &str, _result: &Metrics) -> Decision {
        Decision::Continue
    }

    fn name(&self) -> &'static str {
        "FIFO"
    }
}

/// The value of `key` in `result` (`None` when missing or NaN).
fn value(result: &Metrics, key: &str) -> Option<f64> {
    result.get(key).copied().filter(|v| !v.is_nan())
}

/// The `q`-quantile (0..=1) of `values`, linearly interpolated (numpy's
/// default), `None` for no values.
fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

/// Asynchronous successive halving (Li et al., 2018), as Ray's
/// `AsyncHyperBandScheduler`: rungs at `grace_period * reduction_factor^k`
/// units of `time_attr` (up to `max_t`); a trial reaching a rung continues
/// only if its result is within the best `1 / reduction_factor` of the
/// results recorded at that rung so far; every trial stops at `max_t`.
/// With several brackets, each trial joins one (the ones with more rungs
/// more likely), bracket `s` starting its rungs at `grace_period *
/// reduction_factor^s`.
#[derive(Debug, Clone)]
pub struct Asha {
    time_attr: String,
    metric: String,
    mode: Mode,
    max_t: f64,
    reduction_factor: f64,
    /// Per bracket, its rungs from the highest milestone down, each with
    /// the scores recorded there by trial.
    brackets: Vec<Vec<(f64, BTreeMap<String, f64>)>>,
    /// Each trial's bracket.
    trial_bracket: BTreeMap<String, usize>,
    rng: StdRng,
}

impl Asha {
    /// An ASHA over `metric` (`mode`), counting time in `time_attr`
    /// (`training_iteration` as Ray, or any reported metric).
    pub fn new(
        time_attr: &str,
        metric: &str,
        mode: Mode,
        max_t: f64,
        grace_period: f64,
        reduction_factor: f64,
        brackets: usize,
    ) -> Result<Asha> {
        let bad = |field: &str, m: String| Err(Error::config(format!("scheduler.{field}"), None, m));
        if grace_period.is_nan() || grace_period <= 0.0 {
            return bad("grace_period", format!("must be above 0, got {grace_period}"));
        }
        if max_t.is_nan() || max_t < grace_period {
            return bad(
                "max_t",
                format!("must be at least grace_period ({grace_period}), got {max_t}"),
            );
        }
        if reduction_factor.is_nan() || reduction_factor <= 1.0 {
            return bad("reduction_factor", format!("must be above 1, got {reduction_factor}"));
        }
        if brackets == 0 {
            return bad("brackets", "must be at least 1".into());
        }
        // As Ray: the number of rungs that fit between the grace period and max_t.
        let max_rungs = ((max_t / grace_period).ln() / reduction_factor.ln() + 1e-9).floor() as i64 + 1;
        let brackets = (0..brackets as i64)
            .map(|s| {
                (0..(max_rungs - s).max(0))
                    .rev()
                    .map(|k| (grace_period * reduction_factor.powi((k + s) as i32), BTreeMap::new()))
                    .collect()
            })
            .collect();
        Ok(Asha {
            time_attr: time_attr.to_string(),
            metric: metric.to_string(),
            mode,
            max_t,
            reduction_factor,
            brackets,
            trial_bracket: BTreeMap::new(),
            rng: StdRng::seed_from_u64(0),
        })
    }

    /// The milestones of each bracket, highest first.
    pub fn rungs(&self) -> Vec<Vec<f64>> {
        self.brackets.iter().map(|b| b.iter().map(|r| r.0).collect()).collect()
    }

    fn bracket_of(&mut self, trial: &str) -> usize {
        if let Some(b) = self.trial_bracket.get(trial) {
            return *b;
        }
        // As Ray: brackets with more rungs are likelier (softmax of sizes).
        let sizes: Vec<f64> = self.brackets.iter().map(|b| b.len() as f64).collect();
        let top = sizes.iter().cloned().fold(f64::MIN, f64::max);
        let weights: Vec<f64> = sizes.iter().map(|s| (s - top).exp()).collect();
        let mut pick = self.rng.random::<f64>() * weights.iter().sum::<f64>();
        let mut b = weights.len() - 1;
        for (i, w) in weights.iter().enumerate() {
            if pick < *w {
                b = i;
                break;
            }
            pick -= w;
        }
        self.trial_bracket.insert(trial.to_string(), b);
        b
    }
}

impl Scheduler for Asha {
    fn on_result(&mut self, trial: &str, result: &Metrics) -> Decision {
        let (Some(t), Some(v)) = (value(result, &self.time_attr), value(result, &self.metric)) else {
            return Decision::Continue;
        };
        if t >= self.max_t {
            return Decision::Complete;
        }
        let score = self.mode.score(v);
        let keep = 1.0 - 1.0 / self.reduction_factor;
        let b = self.bracket_of(trial);
        for (milestone, recorded) in self.brackets[b].iter_mut() {
            if t < *milestone || recorded.contains_key(trial) {
                continue;
            }
            recorded.insert(trial.to_string(), score);
            let all: Vec<f64> = recorded.values().copied().collect();
            let cutoff = quantile(&all, keep).unwrap_or(f64::MIN);
            // The highest rung reached decides (as Ray).
            return if score < cutoff {
                Decision::Stop
            } else {
                Decision::Continue
            };
        }
        Decision::Continue
    }

    fn name(&self) -> &'static str {
        "ASHA"
    }
}

/// Ray's `MedianStoppingRule`: after `grace_period` units of `time_attr`,
/// and once `min_samples_required` other trials have results by then, a
/// trial whose best result so far is worse than the median of the other
/// trials' running averages (over their results up to the same time)
/// stops.
#[derive(Debug, Clone)]
pub struct MedianStopping {
    time_attr: String,
    metric: String,
    mode: Mode,
    grace_period: f64,
    min_samples_required: usize,
    /// Each trial's `(time, score)` results.
    results: BTreeMap<String, Vec<(f64, f64)>>,
}

impl MedianStopping {
    /// The rule over `metric` (`mode`), time counted in `time_attr`.
    pub fn new(time_attr: &str, metric: &str, mode: Mode, grace_period: f64, min_samples_required: usize) -> Self {
        MedianStopping {
            time_attr: time_attr.to_string(),
            metric: metric.to_string(),
            mode,
            grace_period,
            min_samples_required: min_samples_required.max(1),
            results: BTreeMap::new(),
        }
    }
}

impl Scheduler for MedianStopping {
    fn on_result(&mut self, trial: &str, result: &Metrics) -> Decision {
        let (Some(t), Some(v)) = (value(result, &self.time_attr), value(result, &self.metric)) else {
            return Decision::Continue;
        };
        let score = self.mode.score(v);
        let mine = self.results.entry(trial.to_string()).or_default();
        mine.push((t, score));
        let best = mine.iter().map(|r| r.1).fold(f64::MIN, f64::max);
        if t < self.grace_period {
            return Decision::Continue;
        }
        let others: Vec<f64> = self
            .results
            .iter()
            .filter(|(name, _)| name.as_str() != trial)
            .filter_map(|(_, rs)| {
                let upto: Vec<f64> = rs.iter().filter(|r| r.0 <= t).map(|r| r.1).collect();
                (!upto.is_empty()).then(|| upto.iter().sum::<f64>() / upto.len() as f64)
            })
            .collect();
        if others.len() < self.min_samples_required {
            return Decision::Continue;
        }
        match quantile(&others, 0.5) {
            Some(median) if best < median => Decision::Stop,
            _ => Decision::Continue,
        }
    }

    fn name(&self) -> &'static str {
        "MedianStopping"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(t: f64, v: f64) -> Metrics {
        [("training_iteration".to_string(), t), ("acc".to_string(), v)].into()
    }

    #[test]
    fn asha_rungs_follow_the_grace_period_and_reduction_factor() {
        let a = Asha::new("training_iteration", "acc", Mode::Max, 100.0, 1.0, 4.0, 3).unwrap();
        assert_eq!(
            a.rungs(),
            vec![vec![64.0, 16.0, 4.0, 1.0], vec![64.0, 16.0, 4.0], vec![64.0, 16.0]]
        );
        let e = Asha::new("t", "acc", Mode::Max, 10.0, 1.0, 1.0, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("scheduler.reduction_factor"), "{e}");
        assert!(Asha::new("t", "acc", Mode::Max, 1.0, 2.0, 3.0, 1).is_err());
    }

    #[test]
    fn asha_keeps_the_top_fraction_at_each_rung_and_stops_at_max_t() {
        let mut a = Asha::new("training_iteration", "acc", Mode::Max, 9.0, 1.0, 3.0, 1).unwrap();
        // Rung at 1: trials arrive in order of rising accuracy; each is
        // compared with those before it.
        assert_eq!(
            a.on_result("t0", &r(1.0, 0.5)),
            Decision::Continue,
            "the first is its own cutoff"
        );
        assert_eq!(a.on_result("t1", &r(1.0, 0.4)), Decision::Stop, "below the top third");
        assert_eq!(a.on_result("t2", &r(1.0, 0.9)), Decision::Continue);
        assert_eq!(
            a.on_result("t3", &r(1.0, 0.45)),
            Decision::Stop,
            "0.45 < 0.5, the 2/3 quantile of 0.4,0.45,0.5,0.9"
        );
        // Between rungs nothing is decided; at rung 3 t0 is compared anew.
        assert_eq!(a.on_result("t0", &r(2.0, 0.1)), Decision::Continue);
        assert_eq!(a.on_result("t2", &r(3.0, 0.95)), Decision::Continue);
        assert_eq!(a.on_result("t0", &r(3.0, 0.2)), Decision::Stop);
        assert_eq!(a.on_result("t2", &r(9.0, 0.99)), Decision::Complete, "max_t reached");
        // Minimising: the lowest losses go on.
        let mut m = Asha::new("training_iteration", "acc", Mode::Min, 9.0, 1.0, 2.0, 1).unwrap();
        assert_eq!(m.on_result("a", &r(1.0, 0.5)), Decision::Continue);
        assert_eq!(m.on_result("b", &r(1.0, 0.9)), Decision::Stop);
        assert_eq!(m.on_result("c", &r(1.0, 0.1)), Decision::Continue);
        // A result without the metric decides nothing.
        assert_eq!(
            m.on_result("d", &[("training_iteration".to_string(), 1.0)].into()),
            Decision::Continue
        );
    }

    #[test]
    fn median_stopping_compares_the_best_result_with_the_others_running_averages() {
        let mut m = MedianStopping::new("training_iteration", "acc", Mode::Max, 2.0, 2);
        for t in 1..=4 {
            assert_eq!(m.on_result("good1", &r(t as f64, 0.8)), Decision::Continue);
            assert_eq!(m.on_result("good2", &r(t as f64, 0.9)), Decision::Continue);
        }
        assert_eq!(
            m.on_result("bad", &r(1.0, 0.1)),
            Decision::Continue,
            "within the grace period"
        );
        assert_eq!(
            m.on_result("bad", &r(2.0, 0.2)),
            Decision::Stop,
            "0.2 < median(0.8, 0.9)"
        );
        assert_eq!(m.on_result("fine", &r(2.0, 0.85)), Decision::Continue);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.5));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn fifo_never_stops_a_trial() {
        assert_eq!(Fifo.on_result("t", &r(1000.0, 0.0)), Decision::Continue);
    }
}
