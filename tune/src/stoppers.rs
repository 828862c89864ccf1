//! Stoppers: criteria that end a trial (or the whole experiment) whatever
//! the scheduler says, as Ray Tune's stoppers. [`MaxIterations`] and
//! [`MetricThreshold`] end a trial at a fixed point; [`Plateau`] ends a
//! trial whose metric stopped moving; [`TimeBudget`] ends the experiment
//! after a wall-clock budget; any `fn(&str, &Metrics) -> bool` is a custom
//! stopper.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::schedulers::{Metrics, Mode};

/// Decides, result by result, whether a trial stops, and whether the whole
/// experiment does.
pub trait Stopper: Send {
    /// Whether `trial` stops after this result.
    fn stop_trial(&mut self, trial: &str, result: &Metrics) -> bool;

    /// Whether the experiment stops now: running trials are stopped and no
    /// new ones start.
    fn stop_all(&mut self) -> bool {
        false
    }

    /// The experiment resumes after its earlier drivers ran it for
    /// `already` (called once, before any result): a budget of time goes
    /// on from there rather than starting over.
    fn resume_after(&mut self, _already: Duration) {}
}

impl<S: Stopper + ?Sized> Stopper for Box<S> {
    fn stop_trial(&mut self, trial: &str, result: &Metrics) -> bool {
        (**self).stop_trial(trial, result)
    }

    fn stop_all(&mut self) -> bool {
        (**self).stop_all()
    }

    fn resume_after(&mut self, already: Duration) {
        (**self).resume_after(already)
    }
}

impl Stopper for fn(&str, &Metrics) -> bool {
    fn stop_trial(&mut self, trial: &str, result: &Metrics) -> bool {
        self(trial, result)
    }
}

/// Stops a trial once `key` (a counter such as `training_iteration`)
/// reaches the bound.
#[derive(Debug, Clone)]
pub struct MaxIterations {
    key: String,
    max: f64,
}

impl MaxIterations {
    /// Stops at `max` of `key`.
    pub fn new(key: &str, max: f64) -> MaxIterations {
        MaxIterations {
            key: key.to_string(),
            max,
        }
    }
}

impl Stopper for MaxIterations {
    fn stop_trial(&mut self, _trial: &str, result: &Metrics) -> bool {
        result.get(&self.key).is_some_and(|v| *v >= self.max)
    }
}

/// Stops a trial once its metric is at least as good as a threshold (by
/// the mode: at or below it for `min`, at or above it for `max`).
#[derive(Debug, Clone)]
pub struct MetricThreshold {
    metric: String,
    mode: Mode,
    threshold: f64,
}

impl MetricThreshold {
    /// Stops when `metric` reaches `threshold` in direction `mode`.
    pub fn new(metric: &str, mode: Mode, threshold: f64) -> MetricThreshold {
        MetricThreshold {
            metric: metric.to_string(),
            mode,
            threshold,
        }
    }
}

impl Stopper for MetricThreshold {
    fn stop_trial(&mut self, _trial: &str, result: &Metrics) -> bool {
        result
            .get(&self.metric)
            .is_some_and(|v| self.mode.score(*v) >= self.mode.score(self.threshold))
    }
}

/// Stops a trial whose metric has plateaued, as Ray's
/// `TrialPlateauStopper`: after `grace_period` results, once the standard
/// deviation of its last `num_results` values is below `std`.
#[derive(Debug, Clone)]
pub struct Plateau {
    metric: String,
    std: f64,
    num_results: usize,
    grace_period: usize,
    windows: BTreeMap<String, (usize, VecDeque<f64>)>,
}

impl Plateau {
    /// Ray's defaults: `std` 0.01, 4 results, a grace period of 4.
    pub fn new(metric: &str) -> Plateau {
        Plateau {
            metric: metric.to_string(),
            std: 0.01,
            num_results: 4,
            grace_period: 4,
            windows: BTreeMap::new(),
        }
    }

    /// The standard deviation under which the metric counts as flat.
    pub fn std(mut self, std: f64) -> Plateau {
        self.std = std;
        self
    }

    /// How many of the latest results are compared (at least 2).
    pub fn num_results(mut self, n: usize) -> Plateau {
        self.num_results = n.max(2);
        self
    }

    /// Results before a trial can be stopped.
    pub fn grace_period(mut self, n: usize) -> Plateau {
        self.grace_period = n;
        self
    }
}

impl Stopper for Plateau {
    fn stop_trial(&mut self, trial: &str, result: &Metrics) -> bool {
        let Some(v) = result.get(&self.metric).copied().filter(|v| !v.is_nan()) else {
            return false;
        };
        let (seen, w) = self.windows.entry(trial.to_string()).or_default();
        *seen += 1;
        w.push_back(v);
        while w.len() > self.num_results {
            w.pop_front();
        }
        if *seen < self.grace_period || w.len() < self.num_results {
            return false;
        }
        let mean = w.iter().sum::<f64>() / w.len() as f64;
        let var = w.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / w.len() as f64;
        var.sqrt() < self.std
    }
}

/// Stops the whole experiment once a wall-clock budget is spent (Ray's
/// `TimeoutStopper`); the budget counts from the first result it sees.
#[derive(Debug, Clone)]
pub struct TimeBudget {
    budget: Duration,
    started: Option<Instant>,
    /// Spent by earlier drivers of a resumed experiment.
    spent_before: Duration,
}

impl TimeBudget {
    /// A budget of `budget`.
    pub fn new(budget: Duration) -> TimeBudget {
        TimeBudget {
            budget,
            started: None,
            spent_before: Duration::ZERO,
        }
    }
}

impl Stopper for TimeBudget {
    fn stop_trial(&mut self, _trial: &str, _result: &Metrics) -> bool {
        false
    }

    fn stop_all(&mut self) -> bool {
        self.spent_before + self.started.get_or_insert_with(Instant::now).elapsed() >= self.budget
    }

    fn resume_after(&mut self, already: Duration) {
        self.spent_before = already;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, f64)]) -> Metrics {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn plateau_stops_a_flat_trial_after_its_grace_period_only() {
        let mut p = Plateau::new("loss").std(0.01).num_results(3).grace_period(4);
        let flat = [1.0, 1.0, 1.0, 1.0, 1.0];
        let stops: Vec<bool> = flat.iter().map(|v| p.stop_trial("a", &m(&[("loss", *v)]))).collect();
        assert_eq!(stops, vec![false, false, false, true, true]);
        let falling = [1.0, 0.8, 0.6, 0.4, 0.2, 0.1];
        assert!(falling.iter().all(|v| !p.stop_trial("b", &m(&[("loss", *v)]))));
        assert!(!p.stop_trial("c", &m(&[("acc", 1.0)])), "without the metric it goes on");
    }

    #[test]
    fn thresholds_follow_the_mode_and_counters_their_bound() {
        let mut min = MetricThreshold::new("loss", Mode::Min, 0.1);
        assert!(!min.stop_trial("a", &m(&[("loss", 0.2)])));
        assert!(min.stop_trial("a", &m(&[("loss", 0.1)])));
        let mut max = MetricThreshold::new("acc", Mode::Max, 0.9);
        assert!(!max.stop_trial("a", &m(&[("acc", 0.5)])));
        assert!(max.stop_trial("a", &m(&[("acc", 0.95)])));
        let mut it = MaxIterations::new("training_iteration", 3.0);
        assert!(!it.stop_trial("a", &m(&[("training_iteration", 2.0)])));
        assert!(it.stop_trial("a", &m(&[("training_iteration", 3.0)])));
        let mut custom: fn(&str, &Metrics) -> bool = |t, r| t == "x" && r.contains_key("boom");
        assert!(custom.stop_trial("x", &m(&[("boom", 1.0)])) && !custom.stop_trial("y", &m(&[("boom", 1.0)])));
    }

    #[test]
    fn a_time_budget_stops_everything_once_spent() {
        let mut t = TimeBudget::new(Duration::from_millis(30));
        assert!(!t.stop_all());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !t.stop_all() {
            assert!(Instant::now() < deadline, "the budget never ran out");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!TimeBudget::new(Duration::from_secs(3600)).stop_all());
        // Resumed: the earlier drivers' time counts.
        let mut spent = TimeBudget::new(Duration::from_secs(60));
        spent.resume_after(Duration::from_secs(61));
        assert!(spent.stop_all(), "spent before the resume");
        let mut left: Box<dyn Stopper> = Box::new(TimeBudget::new(Duration::from_secs(60)));
        left.resume_after(Duration::from_secs(30));
        assert!(!left.stop_all(), "half of it left");
    }
}
