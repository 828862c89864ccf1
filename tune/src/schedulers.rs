//! Trial schedulers: after each result a trial reports, whether it goes on
//! or stops early. [`Fifo`] lets every trial run to the end;
//! [`Asha`] (asynchronous successive halving, Ray's `ASHAScheduler`) stops
//! a trial that reaches a rung below the best `1 / reduction_factor` of the
//! trials that reached it before; [`MedianStopping`] stops a trial whose
//! best result is worse than the median of the other trials' running
//! averages at the same time.
//!
//! [`HyperBand`] (synchronous successive halving in brackets) pauses each
//! trial at its bracket's milestone until the bracket's trials all reach
//! it, then resumes the best and stops the rest; [`Pbt`] (population-based
//! training) restarts a trial in the bottom quantile from a top trial's
//! checkpoint with that trial's parameters perturbed.
//!
//! Schedulers are plain state machines over the results they are shown, so
//! their decisions are tested without running anything.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::space::{Config, Domain, Param, SearchSpace};

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
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Keep running it.
    Continue,
    /// Stop it early: it is not promising enough.
    Stop,
    /// Stop it: it has run as long as the scheduler lets any trial run
    /// (ASHA's `max_t`).
    Complete,
    /// Stop it for now (its process ends); it goes on from its latest
    /// checkpoint when [`Scheduler::decide_paused`] says so.
    Pause,
    /// Restart it from trial `from`'s latest checkpoint with `config`
    /// (PBT's exploit and explore). Without a checkpoint of `from` to
    /// start from, the trial goes on as it was.
    Exploit {
        /// The trial whose checkpoint it takes.
        from: String,
        /// Its parameters from now on.
        config: Config,
    },
}

/// Decides, result by result, which trials go on.
pub trait Scheduler: Send {
    /// A result of `trial`: go on or stop.
    fn on_result(&mut self, trial: &str, result: &Metrics) -> Decision;

    /// `trial` finished (or failed): it reports no more.
    fn on_trial_complete(&mut self, _trial: &str) {}

    /// `trial` starts with `config` (again with its new config after an
    /// [`Decision::Exploit`]).
    fn on_trial_add(&mut self, _trial: &str, _config: &Config) {}

    /// What becomes of paused trials: [`Decision::Continue`] resumes one
    /// (from its latest checkpoint), [`Decision::Stop`] ends it; those not
    /// named stay paused. `more_trials_coming` is false once the searcher
    /// has nothing more to propose. Asked whenever a trial is paused.
    fn decide_paused(&mut self, _more_trials_coming: bool) -> Vec<(String, Decision)> {
        Vec::new()
    }

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

    fn on_trial_add(&mut self, trial: &str, config: &Config) {
        (**self).on_trial_add(trial, config)
    }

    fn decide_paused(&mut self, more_trials_coming: bool) -> Vec<(String, Decision)> {
        (**self).decide_paused(more_trials_coming)
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

/// Asynchronous successive halving (Li et al., 2018), with the rules of
/// Ray's `AsyncHyperBandScheduler`: rungs at `grace_period *
/// reduction_factor^k` units of `time_attr` (up to `max_t`). A result
/// decides at the highest rung it has reached where its trial is not yet
/// recorded: the trial stops if its result is below the `1 - 1 /
/// reduction_factor` quantile of the results recorded there *before* it
/// (ties and a first result at an empty rung continue), and is recorded.
/// Every trial stops at `max_t`. A trial that ends is recorded once more
/// with its last result (as Ray's `on_trial_complete`), at the next rung
/// it reached. A NaN result is recorded but never stops a trial, nor
/// counts in a cutoff. With several brackets, each trial joins one (the
/// ones with more rungs more likely), bracket `s` starting its rungs at
/// `grace_period * reduction_factor^s`. Tested against a replay of Ray
/// 2.60's own decisions (`tests/fixtures/ray_scheduler_replay.json`).
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
    /// Each trial's last `(time, score)`, recorded again when it ends.
    last: BTreeMap<String, (f64, f64)>,
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
        // As Ray: the number of rungs that fit between the grace period
        // and max_t, truncated as Ray's `int()` does (so max_t itself may
        // be a rung, or just miss being one to rounding, as in Ray).
        let rungs_of = |s: i64| ((max_t / grace_period).ln() / reduction_factor.ln() - s as f64 + 1.0) as i64;
        let brackets = (0..brackets as i64)
            .map(|s| {
                (0..rungs_of(s).max(0))
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
            last: BTreeMap::new(),
            rng: StdRng::seed_from_u64(0),
        })
    }

    /// The rung decision for `trial` at `(t, score)`, as Ray's bracket
    /// makes it: the highest rung reached where the trial is not yet
    /// recorded compares the score with the cutoff of the scores recorded
    /// there before, then records it.
    fn decide(&mut self, trial: &str, t: f64, score: f64) -> Decision {
        let keep = 1.0 - 1.0 / self.reduction_factor;
        let b = self.bracket_of(trial);
        for (milestone, recorded) in self.brackets[b].iter_mut() {
            if t < *milestone || recorded.contains_key(trial) {
                continue;
            }
            let earlier: Vec<f64> = recorded.values().copied().filter(|v| !v.is_nan()).collect();
            let stop = quantile(&earlier, keep).is_some_and(|cutoff| score < cutoff);
            recorded.insert(trial.to_string(), score);
            return if stop { Decision::Stop } else { Decision::Continue };
        }
        Decision::Continue
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
        let (Some(t), Some(v)) = (value(result, &self.time_attr), result.get(&self.metric).copied()) else {
            return Decision::Continue;
        };
        let score = self.mode.score(v);
        self.last.insert(trial.to_string(), (t, score));
        if t >= self.max_t {
            return Decision::Complete;
        }
        self.decide(trial, t, score)
    }

    fn on_trial_complete(&mut self, trial: &str) {
        // As Ray's: the last result is shown to the bracket once more.
        if let Some((t, score)) = self.last.remove(trial) {
            self.decide(trial, t, score);
        }
    }

    fn name(&self) -> &'static str {
        "ASHA"
    }
}

/// Ray's `MedianStoppingRule`, with its rules: after `grace_period` units
/// of `time_attr`, a trial whose best result so far is worse than the
/// median of the other trials' running averages stops. The others are
/// those that have reached the same time (their last result at or past
/// it), at least `min_samples_required` of them; a running average covers
/// a trial's results from the grace period up to that time. A trial that
/// ends counts its last result once more (as Ray's `on_trial_complete`).
/// Tested against a replay of Ray 2.60's own decisions.
#[derive(Debug, Clone)]
pub struct MedianStopping {
    time_attr: String,
    metric: String,
    mode: Mode,
    grace_period: f64,
    min_samples_required: usize,
    /// Each trial's `(time, value)` results.
    results: BTreeMap<String, Vec<(f64, f64)>>,
    /// Trials it stopped (they are not judged again).
    stopped: std::collections::BTreeSet<String>,
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
            stopped: Default::default(),
        }
    }
}

impl MedianStopping {
    /// Whether `a` is better than `b` (as Python's `min`/`max` compare:
    /// NaN is never better, and a NaN kept first stays).
    fn better(&self, a: f64, b: f64) -> bool {
        match self.mode {
            Mode::Min => a < b,
            Mode::Max => a > b,
        }
    }
}

impl Scheduler for MedianStopping {
    fn on_result(&mut self, trial: &str, result: &Metrics) -> Decision {
        let (Some(t), Some(v)) = (value(result, &self.time_attr), result.get(&self.metric).copied()) else {
            return Decision::Continue;
        };
        if self.stopped.contains(trial) {
            return Decision::Continue;
        }
        self.results.entry(trial.to_string()).or_default().push((t, v));
        if t < self.grace_period {
            return Decision::Continue;
        }
        let grace = self.grace_period;
        let means: Vec<f64> = self
            .results
            .iter()
            .filter(|(name, rs)| name.as_str() != trial && rs.last().is_some_and(|r| r.0 >= t))
            .filter_map(|(_, rs)| {
                let window: Vec<f64> = rs.iter().filter(|r| grace <= r.0 && r.0 <= t).map(|r| r.1).collect();
                let mean = window.iter().sum::<f64>() / window.len() as f64;
                mean.is_finite().then_some(mean)
            })
            .collect();
        if means.len() < self.min_samples_required {
            return Decision::Continue;
        }
        let Some(median) = quantile(&means, 0.5) else {
            return Decision::Continue;
        };
        let mine = &self.results[trial];
        let mut best = mine[0].1;
        for r in &mine[1..] {
            if self.better(r.1, best) {
                best = r.1;
            }
        }
        // Ray: stop unless `best` is at least as good as the median (a
        // NaN best never is).
        if best == median || self.better(best, median) {
            Decision::Continue
        } else {
            self.stopped.insert(trial.to_string());
            Decision::Stop
        }
    }

    fn on_trial_complete(&mut self, trial: &str) {
        // As Ray's: the last result counts once more.
        if let Some(rs) = self.results.get_mut(trial) {
            if let Some(last) = rs.last().copied() {
                rs.push(last);
            }
        }
    }

    fn name(&self) -> &'static str {
        "MedianStopping"
    }
}

/// Where a trial stands in its HyperBand bracket.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Running,
    /// Paused at the bracket's milestone with this score.
    Paused(f64),
    Done,
}

#[derive(Debug, Clone)]
struct Bracket {
    /// Trials it takes before it starts halving.
    capacity: usize,
    /// The time the trials run to before the next halving.
    milestone: f64,
    /// Whether it has halved once (no trial joins after).
    closed: bool,
    trials: BTreeMap<String, Stage>,
}

/// Synchronous HyperBand (Li et al., 2017), as Ray's `HyperBandScheduler`:
/// trials fill brackets in turn; bracket `s` (from `s_max` down to 0) takes
/// `ceil((s_max + 1) / (s + 1) * eta^s)` trials and first runs them to
/// `max_t / eta^s`. A trial reaching its bracket's milestone pauses; once
/// every trial of the bracket has paused or ended (and the bracket is full,
/// or no more trials are coming), the best `1 / eta` resume to a milestone
/// `eta` times further and the others stop. Every trial stops at `max_t`.
/// Paused trials go on from their latest checkpoint: trainables should
/// checkpoint at least at each milestone.
#[derive(Debug, Clone)]
pub struct HyperBand {
    time_attr: String,
    metric: String,
    mode: Mode,
    max_t: f64,
    eta: f64,
    s_max: usize,
    brackets: Vec<Bracket>,
    trial_bracket: BTreeMap<String, usize>,
}

impl HyperBand {
    /// HyperBand over `metric` (`mode`), counting time in `time_attr`, up
    /// to `max_t`, keeping `1 / reduction_factor` at each halving.
    pub fn new(time_attr: &str, metric: &str, mode: Mode, max_t: f64, reduction_factor: f64) -> Result<HyperBand> {
        let bad = |field: &str, m: String| Err(Error::config(format!("scheduler.{field}"), None, m));
        if max_t.is_nan() || max_t < 1.0 {
            return bad("max_t", format!("must be at least 1, got {max_t}"));
        }
        if reduction_factor.is_nan() || reduction_factor <= 1.0 {
            return bad("reduction_factor", format!("must be above 1, got {reduction_factor}"));
        }
        let s_max = ((max_t.ln() / reduction_factor.ln()) + 1e-9).floor().max(0.0) as usize;
        Ok(HyperBand {
            time_attr: time_attr.to_string(),
            metric: metric.to_string(),
            mode,
            max_t,
            eta: reduction_factor,
            s_max,
            brackets: Vec::new(),
            trial_bracket: BTreeMap::new(),
        })
    }

    /// Each bracket's capacity and current milestone, in creation order.
    pub fn brackets(&self) -> Vec<(usize, f64)> {
        self.brackets.iter().map(|b| (b.capacity, b.milestone)).collect()
    }

    fn new_bracket(&mut self) -> Bracket {
        let s = self.s_max - self.brackets.len() % (self.s_max + 1);
        let n = ((self.s_max + 1) as f64 / (s + 1) as f64 * self.eta.powi(s as i32)).ceil() as usize;
        Bracket {
            capacity: n.max(1),
            milestone: (self.max_t / self.eta.powi(s as i32)).max(1.0).min(self.max_t),
            closed: false,
            trials: BTreeMap::new(),
        }
    }
}

impl Scheduler for HyperBand {
    fn on_trial_add(&mut self, trial: &str, _config: &Config) {
        if self.trial_bracket.contains_key(trial) {
            return;
        }
        let room = self
            .brackets
            .last()
            .is_some_and(|b| !b.closed && b.trials.len() < b.capacity);
        if !room {
            let b = self.new_bracket();
            self.brackets.push(b);
        }
        let i = self.brackets.len() - 1;
        self.brackets[i].trials.insert(trial.to_string(), Stage::Running);
        self.trial_bracket.insert(trial.to_string(), i);
    }

    fn on_result(&mut self, trial: &str, result: &Metrics) -> Decision {
        let (Some(t), Some(v)) = (value(result, &self.time_attr), value(result, &self.metric)) else {
            return Decision::Continue;
        };
        if t >= self.max_t {
            return Decision::Complete;
        }
        let Some(b) = self.trial_bracket.get(trial).and_then(|i| self.brackets.get_mut(*i)) else {
            return Decision::Continue;
        };
        if t >= b.milestone {
            b.trials.insert(trial.to_string(), Stage::Paused(self.mode.score(v)));
            return Decision::Pause;
        }
        Decision::Continue
    }

    fn on_trial_complete(&mut self, trial: &str) {
        if let Some(b) = self.trial_bracket.get(trial).and_then(|i| self.brackets.get_mut(*i)) {
            b.trials.insert(trial.to_string(), Stage::Done);
        }
    }

    fn decide_paused(&mut self, more_trials_coming: bool) -> Vec<(String, Decision)> {
        let mut out = Vec::new();
        for b in &mut self.brackets {
            let full = b.trials.len() >= b.capacity || b.closed || !more_trials_coming;
            let settled = b.trials.values().all(|s| *s != Stage::Running);
            let mut paused: Vec<(String, f64)> = b
                .trials
                .iter()
                .filter_map(|(t, s)| match s {
                    Stage::Paused(v) => Some((t.clone(), *v)),
                    _ => None,
                })
                .collect();
            if !(full && settled) || paused.is_empty() {
                continue;
            }
            b.closed = true;
            paused.sort_by(|a, b| b.1.total_cmp(&a.1));
            let keep = ((paused.len() as f64 / self.eta).ceil() as usize).max(1);
            b.milestone = (b.milestone * self.eta).min(self.max_t);
            for (i, (t, _)) in paused.into_iter().enumerate() {
                if i < keep {
                    b.trials.insert(t.clone(), Stage::Running);
                    out.push((t, Decision::Continue));
                } else {
                    b.trials.insert(t.clone(), Stage::Done);
                    out.push((t, Decision::Stop));
                }
            }
        }
        out
    }

    fn name(&self) -> &'static str {
        "HyperBand"
    }
}

#[derive(Debug, Clone)]
struct PbtTrial {
    config: Config,
    /// Its scores by time since it last took a config.
    scores: Vec<(f64, f64)>,
    last_perturbation: f64,
}

impl PbtTrial {
    /// Its score at time `t`: the latest reported at or before `t`.
    fn score_at(&self, t: f64) -> Option<f64> {
        self.scores.iter().rev().find(|(at, _)| *at <= t).map(|x| x.1)
    }
}

/// Population-based training (Jaderberg et al., 2017), as Ray's
/// `PopulationBasedTraining`: every `perturbation_interval` units of
/// `time_attr`, a trial in the bottom `quantile_fraction` of the
/// population restarts from the latest checkpoint
/// of a trial drawn from the top `quantile_fraction` (exploit), with that
/// trial's parameters explored: each mutated parameter is drawn afresh from
/// its domain with `resample_probability`, else perturbed (a number
/// multiplied by 0.8 or 1.2 and kept within its domain; a choice moved to a
/// neighbouring value). Trials are ranked by their results at the same
/// time (each trial's latest at or before the time of the result being
/// judged), so a trial that lags — one that just restarted — is not judged
/// against trials further along.
#[derive(Debug, Clone)]
pub struct Pbt {
    time_attr: String,
    metric: String,
    mode: Mode,
    interval: f64,
    quantile_fraction: f64,
    resample_probability: f64,
    mutations: Vec<(String, Domain)>,
    trials: BTreeMap<String, PbtTrial>,
    rng: StdRng,
}

impl Pbt {
    /// PBT over `metric` (`mode`), perturbing the domains of `mutations`
    /// every `perturbation_interval` of `time_attr`.
    pub fn new(
        time_attr: &str,
        metric: &str,
        mode: Mode,
        perturbation_interval: f64,
        mutations: &SearchSpace,
        seed: u64,
    ) -> Result<Pbt> {
        if perturbation_interval.is_nan() || perturbation_interval <= 0.0 {
            return Err(Error::config(
                "scheduler.perturbation_interval",
                None,
                format!("must be above 0, got {perturbation_interval}"),
            ));
        }
        mutations.validate()?;
        let mutations: Vec<(String, Domain)> = mutations
            .params()
            .iter()
            .filter_map(|(n, p)| match p {
                Param::Domain(d) => Some((n.clone(), d.clone())),
                _ => None,
            })
            .collect();
        if mutations.is_empty() {
            return Err(Error::config(
                "scheduler.hyperparam_mutations",
                None,
                "PBT needs at least one parameter with a domain to mutate",
            ));
        }
        Ok(Pbt {
            time_attr: time_attr.to_string(),
            metric: metric.to_string(),
            mode,
            interval: perturbation_interval,
            quantile_fraction: 0.25,
            resample_probability: 0.25,
            mutations,
            trials: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// The fraction of the population counted as top and as bottom
    /// (default 0.25; at most 0.5).
    pub fn quantile_fraction(mut self, q: f64) -> Result<Pbt> {
        if !(0.0..=0.5).contains(&q) {
            return Err(Error::config(
                "scheduler.quantile_fraction",
                None,
                format!("must be in [0, 0.5], got {q}"),
            ));
        }
        self.quantile_fraction = q;
        Ok(self)
    }

    /// The chance a mutated parameter is drawn afresh rather than
    /// perturbed (default 0.25).
    pub fn resample_probability(mut self, p: f64) -> Result<Pbt> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::config(
                "scheduler.resample_probability",
                None,
                format!("must be in [0, 1], got {p}"),
            ));
        }
        self.resample_probability = p;
        Ok(self)
    }

    /// `config` explored: each mutated parameter resampled or perturbed.
    pub fn explore(&mut self, config: &Config) -> Config {
        let mut out = config.clone();
        for (name, d) in &self.mutations {
            let resample = self.rng.random::<f64>() < self.resample_probability;
            let v = match config.get(name) {
                Some(v) if !resample => perturb(d, v, &mut self.rng),
                _ => d.sample(&mut self.rng),
            };
            out.insert(name.clone(), v);
        }
        out
    }
}

/// `v` nudged within `d`: a number times 0.8 or 1.2 (clamped, rounded for
/// integers), a choice moved one place.
fn perturb(d: &Domain, v: &serde_json::Value, rng: &mut StdRng) -> serde_json::Value {
    use serde_json::Value;
    let up = rng.random::<bool>();
    match d {
        Domain::Grid(vals) | Domain::Choice(vals) if !vals.is_empty() => {
            let i = vals.iter().position(|x| x == v).unwrap_or(0);
            let j = if up {
                (i + 1).min(vals.len() - 1)
            } else {
                i.saturating_sub(1)
            };
            vals[j].clone()
        }
        _ => {
            let Some(x) = v.as_f64() else { return d.sample(rng) };
            let x = x * if up { 1.2 } else { 0.8 };
            match *d {
                Domain::Uniform { low, high } | Domain::LogUniform { low, high } => Value::from(x.clamp(low, high)),
                Domain::QUniform { low, high, q } | Domain::QLogUniform { low, high, q } => {
                    Value::from(((x / q).round() * q).clamp(low, high))
                }
                Domain::RandInt { low, high } | Domain::LogRandInt { low, high } => {
                    Value::from((x.round() as i64).clamp(low, high - 1))
                }
                Domain::QRandInt { low, high, q } => {
                    Value::from((((x / q as f64).round() as i64) * q).clamp(low, high))
                }
                _ => Value::from(x),
            }
        }
    }
}

impl Scheduler for Pbt {
    fn on_trial_add(&mut self, trial: &str, config: &Config) {
        let e = self.trials.entry(trial.to_string()).or_insert(PbtTrial {
            config: config.clone(),
            scores: Vec::new(),
            last_perturbation: 0.0,
        });
        // A trial taking another's checkpoint starts a new record.
        e.config = config.clone();
        e.scores.clear();
    }

    fn on_result(&mut self, trial: &str, result: &Metrics) -> Decision {
        let (Some(t), Some(v)) = (value(result, &self.time_attr), value(result, &self.metric)) else {
            return Decision::Continue;
        };
        let score = self.mode.score(v);
        let Some(me) = self.trials.get_mut(trial) else {
            return Decision::Continue;
        };
        me.scores.push((t, score));
        if t - me.last_perturbation < self.interval {
            return Decision::Continue;
        }
        me.last_perturbation = t;
        let mut ranked: Vec<(&String, f64)> = self
            .trials
            .iter()
            .filter_map(|(n, x)| x.score_at(t).map(|s| (n, s)))
            .collect();
        ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(b.0)));
        let k = ((ranked.len() as f64 * self.quantile_fraction).ceil() as usize).min(ranked.len() / 2);
        if k == 0 || !ranked[..k].iter().any(|(n, _)| n.as_str() == trial) {
            return Decision::Continue;
        }
        let top: Vec<String> = ranked[ranked.len() - k..].iter().map(|(n, _)| (*n).clone()).collect();
        let from = top[self.rng.random_range(0..top.len())].clone();
        let base = self.trials[&from].config.clone();
        let config = self.explore(&base);
        Decision::Exploit { from, config }
    }

    fn name(&self) -> &'static str {
        "PBT"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

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
            "0.45 < 0.633, the 2/3 quantile of the earlier 0.4, 0.5, 0.9"
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

    /// Ray 2.60's own ASHA and median stopping decisions on fixed result
    /// streams (recorded by `tune/bench/ray_scheduler_replay.py`), replayed
    /// through ours: every decision must match.
    #[test]
    fn asha_and_median_stopping_decide_as_rays_on_a_replay_of_its_decisions() {
        let fixture: Value = serde_json::from_str(include_str!("../tests/fixtures/ray_scheduler_replay.json")).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() >= 5);
        let mut checked = 0;
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let p = &case["params"];
            let num = |k: &str| p[k].as_f64().unwrap();
            let (time_attr, metric) = (p["time_attr"].as_str().unwrap(), p["metric"].as_str().unwrap());
            let mode = if p["mode"] == "min" { Mode::Min } else { Mode::Max };
            let mut sched: Box<dyn Scheduler> = match case["scheduler"].as_str().unwrap() {
                "asha" => Box::new(
                    Asha::new(
                        time_attr,
                        metric,
                        mode,
                        num("max_t"),
                        num("grace_period"),
                        num("reduction_factor"),
                        1,
                    )
                    .unwrap(),
                ),
                "median" => Box::new(MedianStopping::new(
                    time_attr,
                    metric,
                    mode,
                    num("grace_period"),
                    num("min_samples_required") as usize,
                )),
                other => panic!("unknown scheduler {other}"),
            };
            let mut seen = std::collections::BTreeSet::new();
            for (i, e) in case["events"].as_array().unwrap().iter().enumerate() {
                let trial = e["trial"].as_str().unwrap();
                if seen.insert(trial.to_string()) {
                    sched.on_trial_add(trial, &Config::new());
                }
                let value = match &e["value"] {
                    Value::String(s) if s == "NaN" => f64::NAN,
                    v => v.as_f64().unwrap(),
                };
                let result: Metrics = [
                    (time_attr.to_string(), e["t"].as_f64().unwrap()),
                    (metric.to_string(), value),
                ]
                .into();
                let ours = match sched.on_result(trial, &result) {
                    Decision::Continue => "CONTINUE",
                    Decision::Stop | Decision::Complete => "STOP",
                    other => panic!("{name} #{i}: {other:?}"),
                };
                assert_eq!(ours, e["decision"].as_str().unwrap(), "{name}, event #{i}: {e}");
                if ours == "STOP" {
                    sched.on_trial_complete(trial);
                }
                checked += 1;
            }
        }
        assert!(checked > 300, "{checked} decisions");
    }

    #[test]
    fn fifo_never_stops_a_trial() {
        assert_eq!(Fifo.on_result("t", &r(1000.0, 0.0)), Decision::Continue);
    }

    #[test]
    fn hyperband_fills_brackets_pauses_at_milestones_and_keeps_the_best() {
        // max_t 9, eta 3: s_max 2; the first bracket takes ceil(3/3 * 9) = 9
        // trials to milestone 1, the next ceil(3/2 * 3) = 5 to milestone 3.
        let mut h = HyperBand::new("training_iteration", "acc", Mode::Max, 9.0, 3.0).unwrap();
        for i in 0..10 {
            h.on_trial_add(&format!("t{i}"), &Config::new());
        }
        assert_eq!(h.brackets(), vec![(9, 1.0), (5, 3.0)]);
        // Eight of the nine pause at milestone 1; nothing is decided while
        // one still runs and more trials could come.
        for i in 0..8 {
            assert_eq!(h.on_result(&format!("t{i}"), &r(1.0, i as f64)), Decision::Pause);
        }
        assert!(h.decide_paused(true).is_empty());
        assert_eq!(h.on_result("t8", &r(1.0, 8.5)), Decision::Pause);
        // All nine paused: the best ceil(9 / 3) = 3 go on to 3, the rest stop.
        let mut d = h.decide_paused(true);
        d.sort_by(|a, b| a.0.cmp(&b.0));
        let go: Vec<&str> = d
            .iter()
            .filter(|x| x.1 == Decision::Continue)
            .map(|x| x.0.as_str())
            .collect();
        assert_eq!(go, vec!["t6", "t7", "t8"]);
        assert_eq!(d.iter().filter(|x| x.1 == Decision::Stop).count(), 6);
        assert_eq!(h.brackets()[0], (9, 3.0));
        assert_eq!(
            h.on_result("t8", &r(2.0, 9.0)),
            Decision::Continue,
            "below the new milestone"
        );
        assert_eq!(h.on_result("t8", &r(3.0, 9.0)), Decision::Pause);
        assert_eq!(h.on_result("t7", &r(3.0, 7.0)), Decision::Pause);
        // t6 fails: the bracket decides without it.
        h.on_trial_complete("t6");
        let d = h.decide_paused(true);
        assert_eq!(
            d,
            vec![
                ("t8".to_string(), Decision::Continue),
                ("t7".to_string(), Decision::Stop)
            ]
        );
        assert_eq!(h.on_result("t8", &r(9.0, 9.5)), Decision::Complete);
        // A bracket not full decides once no more trials are coming.
        assert_eq!(h.on_result("t9", &r(3.0, 1.0)), Decision::Pause);
        assert!(h.decide_paused(true).is_empty());
        assert_eq!(h.decide_paused(false), vec![("t9".to_string(), Decision::Continue)]);
        assert!(HyperBand::new("t", "acc", Mode::Max, 9.0, 1.0).is_err());
    }

    /// The learning rate that is best at `step`: 0.1, then 0.01, then 0.001.
    fn best_lr(step: u64) -> f64 {
        [0.1, 0.01, 0.001][((step - 1) / 8).min(2) as usize]
    }

    /// A step's gain at `lr`: 1 at the best rate, less by half per decade off.
    fn gain(lr: f64, step: u64) -> f64 {
        (1.0 - (lr.log10() - best_lr(step).log10()).abs() / 2.0).max(0.0)
    }

    /// Runs a population of 8 for 24 steps, round-robin, exploiting as PBT
    /// says; the best final score.
    fn simulate(seed: u64) -> f64 {
        let lrs: Vec<Value> = [1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003]
            .into_iter()
            .map(Value::from)
            .collect();
        let space = SearchSpace::new().domain("lr", Domain::Choice(lrs));
        let mut p = Pbt::new("training_iteration", "score", Mode::Max, 2.0, &space, seed).unwrap();
        let mut rng = StdRng::seed_from_u64(seed + 100);
        // Each trial: config, step, score.
        let mut pop: Vec<(Config, u64, f64)> = (0..8)
            .map(|i| {
                let c = space.complete(&Config::new(), &mut rng);
                p.on_trial_add(&format!("t{i}"), &c);
                (c, 0, 0.0)
            })
            .collect();
        for _ in 0..24 {
            for i in 0..8 {
                let (c, step, score) = &mut pop[i];
                *step += 1;
                *score += gain(c["lr"].as_f64().unwrap(), *step);
                let m: Metrics = [
                    ("training_iteration".to_string(), *step as f64),
                    ("score".to_string(), *score),
                ]
                .into();
                if let Decision::Exploit { from, config } = p.on_result(&format!("t{i}"), &m) {
                    let j: usize = from[1..].parse().unwrap();
                    let (_, s, sc) = pop[j].clone();
                    p.on_trial_add(&format!("t{i}"), &config);
                    pop[i] = (config, s, sc);
                }
            }
        }
        pop.iter().map(|x| x.2).fold(f64::MIN, f64::max)
    }

    #[test]
    fn pbt_follows_a_schedule_no_fixed_config_can() {
        // The best any fixed rate scores over 24 steps is 16 (0.01
        // throughout); following the schedule scores 24.
        let fixed_best = [1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001]
            .iter()
            .map(|lr| (1..=24).map(|s| gain(*lr, s)).sum::<f64>())
            .fold(f64::MIN, f64::max);
        assert!((fixed_best - 16.0).abs() < 1e-9, "{fixed_best}");
        let mut best: Vec<f64> = (0..9).map(simulate).collect();
        best.sort_by(f64::total_cmp);
        assert!(
            best[4] > fixed_best + 1.0,
            "median best {} over seeds: {best:?}",
            best[4]
        );
        assert!(best[2] > fixed_best, "most seeds beat the best fixed rate: {best:?}");
    }

    #[test]
    fn pbt_exploits_only_from_the_bottom_quantile_and_explores_within_domains() {
        let space = SearchSpace::new()
            .domain("lr", Domain::LogUniform { low: 1e-4, high: 1e-1 })
            .domain("layers", Domain::Choice(vec![1.into(), 2.into(), 3.into()]))
            .domain("batch", Domain::RandInt { low: 8, high: 64 });
        let mut p = Pbt::new("training_iteration", "acc", Mode::Max, 2.0, &space, 3).unwrap();
        for i in 0..4 {
            let c: Config = [
                ("lr".to_string(), Value::from(0.01)),
                ("layers".to_string(), Value::from(2)),
                ("batch".to_string(), Value::from(32)),
            ]
            .into();
            p.on_trial_add(&format!("t{i}"), &c);
        }
        // Before the interval nobody moves; then only the worst is exploited,
        // always from the best.
        for i in 0..4 {
            assert_eq!(p.on_result(&format!("t{i}"), &r(1.0, i as f64)), Decision::Continue);
        }
        for i in (1..4).rev() {
            assert_eq!(
                p.on_result(&format!("t{i}"), &r(2.0, i as f64)),
                Decision::Continue,
                "t{i}"
            );
        }
        let Decision::Exploit { from, config } = p.on_result("t0", &r(2.0, 0.0)) else {
            panic!("the worst trial is exploited");
        };
        assert_eq!(from, "t3");
        let lr = config["lr"].as_f64().unwrap();
        assert!((1e-4..=1e-1).contains(&lr), "{config:?}");
        assert!([1, 2, 3].contains(&config["layers"].as_i64().unwrap()), "{config:?}");
        assert!((8..64).contains(&config["batch"].as_i64().unwrap()), "{config:?}");
        // Exploring many times stays within the domains.
        let base = config.clone();
        for _ in 0..200 {
            let c = p.explore(&base);
            assert!((1e-4..=1e-1).contains(&c["lr"].as_f64().unwrap()));
            assert!((8..64).contains(&c["batch"].as_i64().unwrap()));
        }
        assert!(Pbt::new("t", "acc", Mode::Max, 0.0, &space, 0).is_err());
        assert!(Pbt::new("t", "acc", Mode::Max, 1.0, &SearchSpace::new(), 0).is_err());
        assert!(Pbt::new("t", "acc", Mode::Max, 1.0, &space, 0)
            .unwrap()
            .quantile_fraction(0.7)
            .is_err());
    }
}
