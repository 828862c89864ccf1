//! [`Curve`]: a run's reported metrics kept at bounded length for the
//! dashboard.

use std::collections::BTreeMap;

/// A run's reports as a bounded, downsampled series: what a library
/// publishes (see [`crate::state::publish`]) so the dashboard draws a
/// finished run's whole curve, however long the run.
///
/// It keeps every report until it holds `cap` of them; then every other
/// one is dropped and from there on only every second report is kept, and
/// so on (the stride doubles each time it fills), so a run of any length
/// keeps between `cap / 2` and `cap` evenly spaced reports — plus the
/// latest, always. Pushing is O(metrics).
///
/// ```
/// use std::collections::BTreeMap;
/// let mut c = rayforge::tracking::Curve::new(100);
/// for i in 1..=100_000u64 {
///     c.push(i as f64, &BTreeMap::from([("loss".to_string(), 1.0 / i as f64)]));
/// }
/// let j = c.to_json();
/// assert_eq!(j["total"], 100_000);
/// let steps = j["steps"].as_array().unwrap();
/// assert!(steps.len() <= 101);
/// assert_eq!(steps.last().unwrap(), 100_000.0); // the latest report is always there
/// ```
#[derive(Debug, Clone)]
pub struct Curve {
    cap: usize,
    stride: u64,
    total: u64,
    steps: Vec<f64>,
    series: BTreeMap<String, Vec<Option<f64>>>,
    /// The latest report when the stride skipped it.
    latest: Option<(f64, BTreeMap<String, f64>)>,
}

impl Default for Curve {
    fn default() -> Self {
        Curve::new(Curve::DEFAULT_CAP)
    }
}

impl Curve {
    /// The bound the libraries publish with.
    pub const DEFAULT_CAP: usize = 1000;

    /// An empty curve keeping at most `cap` reports (at least 2; an odd
    /// `cap` is taken as the even number below it).
    pub fn new(cap: usize) -> Curve {
        Curve {
            // Even, so the row that overflows it sits at an even position
            // and survives the halving: the latest report is never lost.
            cap: cap.max(2) & !1,
            stride: 1,
            total: 0,
            steps: Vec::new(),
            series: BTreeMap::new(),
            latest: None,
        }
    }

    /// Records one report: `values` at `step` (an iteration, a number of
    /// environment steps). A value missing from a report is a gap in its
    /// series; a non-finite one is published as `null`.
    pub fn push(&mut self, step: f64, values: &BTreeMap<String, f64>) {
        let index = self.total;
        self.total += 1;
        if !index.is_multiple_of(self.stride) {
            self.latest = Some((step, values.clone()));
            return;
        }
        self.latest = None;
        let n = self.steps.len();
        self.steps.push(step);
        for name in values.keys() {
            self.series.entry(name.clone()).or_insert_with(|| vec![None; n]);
        }
        for (name, col) in self.series.iter_mut() {
            col.push(values.get(name).copied());
        }
        if self.steps.len() > self.cap {
            // Keep the rows at even positions: reports 0, 2s, 4s, ... —
            // what the doubled stride keeps from here on.
            self.steps = self.steps.iter().step_by(2).copied().collect();
            for col in self.series.values_mut() {
                *col = col.iter().step_by(2).copied().collect();
            }
            self.stride *= 2;
        }
    }

    /// How many reports were pushed.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// How many reports it holds (the latest included).
    pub fn len(&self) -> usize {
        self.steps.len() + usize::from(self.latest.is_some())
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// `{"steps": [..], "series": {"NAME": [value or null, ..]}, "total": N}`:
    /// every series as long as `steps`, the latest report last.
    pub fn to_json(&self) -> serde_json::Value {
        let mut steps = self.steps.clone();
        let mut series = self.series.clone();
        if let Some((step, values)) = &self.latest {
            let n = steps.len();
            steps.push(*step);
            for name in values.keys() {
                series.entry(name.clone()).or_insert_with(|| vec![None; n]);
            }
            for (name, col) in series.iter_mut() {
                col.push(values.get(name).copied());
            }
        }
        let finite = |v: &Option<f64>| v.filter(|x| x.is_finite()).map(serde_json::Value::from);
        serde_json::json!({
            "steps": steps,
            "series": series
                .iter()
                .map(|(k, col)| (k.clone(), serde_json::Value::from(col.iter().map(finite).collect::<Vec<_>>())))
                .collect::<serde_json::Map<_, _>>(),
            "total": self.total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn short_runs_keep_every_report_and_gaps_are_null() {
        let mut c = Curve::new(10);
        c.push(1.0, &m(&[("loss", 3.0)]));
        c.push(2.0, &m(&[("loss", 2.0), ("acc", 0.5)]));
        c.push(3.0, &m(&[("loss", f64::NAN)]));
        let j = c.to_json();
        assert_eq!(j["steps"], serde_json::json!([1.0, 2.0, 3.0]));
        assert_eq!(j["series"]["loss"], serde_json::json!([3.0, 2.0, null]));
        assert_eq!(j["series"]["acc"], serde_json::json!([null, 0.5, null]));
        assert_eq!(j["total"], 3);
    }

    #[test]
    fn long_runs_stay_bounded_evenly_spaced_and_end_at_the_latest() {
        let mut c = Curve::new(100);
        for i in 0..12_345u64 {
            c.push(i as f64, &m(&[("x", i as f64 * 2.0)]));
            assert!(c.len() <= 101, "{} at {i}", c.len());
        }
        let j = c.to_json();
        let steps: Vec<f64> = serde_json::from_value(j["steps"].clone()).unwrap();
        let xs: Vec<f64> = serde_json::from_value(j["series"]["x"].clone()).unwrap();
        assert!(steps.len() >= 50, "{}", steps.len());
        assert_eq!(*steps.last().unwrap(), 12_344.0);
        assert_eq!(steps[0], 0.0);
        // Evenly spaced but for the latest, and each value is its step's.
        let gap = steps[1] - steps[0];
        assert!(
            steps[..steps.len() - 1].windows(2).all(|w| w[1] - w[0] == gap),
            "{steps:?}"
        );
        assert!(steps.iter().zip(&xs).all(|(s, x)| *x == s * 2.0));
    }
}
