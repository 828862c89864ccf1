//! Observation normalization: a running mean and variance of every
//! observation the env runners see (Ray's `MeanStdFilter`, Stable-Baselines3's
//! `VecNormalize`). Each runner normalizes with the statistics it was sent
//! plus what it has seen since, and sends back what it saw; the algorithm
//! merges every runner's share after each sampling round and keeps the
//! result in its checkpoints, so a restored policy sees the observations it
//! was trained on.

use serde::{Deserialize, Serialize};

/// Normalized observations are clipped to `[-CLIP, CLIP]` (as Ray's and
/// Stable-Baselines3's).
pub const CLIP: f32 = 10.0;

/// Running statistics of vectors: count, mean and the sum of squared
/// differences from the mean, per dimension (Welford's method; two are
/// merged with Chan et al.'s formula).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    /// Vectors seen.
    pub count: f64,
    /// Their mean, per dimension.
    pub mean: Vec<f64>,
    /// Sum of squared differences from the mean, per dimension.
    pub m2: Vec<f64>,
}

impl MeanStd {
    /// No vectors of `dim` dimensions seen yet.
    pub fn new(dim: usize) -> MeanStd {
        MeanStd {
            count: 0.0,
            mean: vec![0.0; dim],
            m2: vec![0.0; dim],
        }
    }

    /// Adds one vector (a vector of another length is ignored: the
    /// environment's own error reports it).
    pub fn push(&mut self, x: &[f32]) {
        if x.len() != self.mean.len() {
            return;
        }
        self.count += 1.0;
        for ((m, s), x) in self.mean.iter_mut().zip(&mut self.m2).zip(x) {
            let x = *x as f64;
            let d = x - *m;
            *m += d / self.count;
            *s += d * (x - *m);
        }
    }

    /// Adds everything `other` saw.
    pub fn merge(&mut self, other: &MeanStd) {
        if other.count == 0.0 || other.mean.len() != self.mean.len() {
            return;
        }
        let n = self.count + other.count;
        for i in 0..self.mean.len() {
            let d = other.mean[i] - self.mean[i];
            self.mean[i] += d * other.count / n;
            self.m2[i] += other.m2[i] + d * d * self.count * other.count / n;
        }
        self.count = n;
    }

    /// The (population) variance per dimension; 1 before anything is seen.
    pub fn var(&self) -> Vec<f64> {
        if self.count == 0.0 {
            return vec![1.0; self.mean.len()];
        }
        self.m2.iter().map(|s| s / self.count).collect()
    }

    /// `x` centred, scaled to unit variance and clipped to [`CLIP`].
    pub fn normalize(&self, x: &[f32]) -> Vec<f32> {
        if x.len() != self.mean.len() {
            return x.to_vec();
        }
        x.iter()
            .zip(&self.mean)
            .zip(self.var())
            .map(|((x, m), v)| ((((*x as f64) - m) / (v + 1e-8).sqrt()) as f32).clamp(-CLIP, CLIP))
            .collect()
    }
}

/// A runner's filter: the statistics it was sent, and what it has seen
/// since (sent back with its batch).
#[derive(Debug, Clone)]
pub(crate) struct RunnerFilter {
    /// Sent, plus seen since: what it normalizes with.
    pub(crate) local: MeanStd,
    /// Seen since the last sync.
    pub(crate) delta: MeanStd,
}

impl RunnerFilter {
    pub(crate) fn new(dim: usize) -> RunnerFilter {
        RunnerFilter {
            local: MeanStd::new(dim),
            delta: MeanStd::new(dim),
        }
    }

    /// Takes the algorithm's statistics, plus what it has seen and not yet
    /// sent back (its environments' first observations, before any call).
    pub(crate) fn sync(&mut self, global: &MeanStd) {
        self.local = global.clone();
        self.local.merge(&self.delta);
    }

    /// Records a raw observation and returns it normalized.
    pub(crate) fn observe(&mut self, x: &[f32]) -> Vec<f32> {
        self.local.push(x);
        self.delta.push(x);
        self.local.normalize(x)
    }

    /// What it saw since the last sync, leaving nothing behind.
    pub(crate) fn take_delta(&mut self) -> MeanStd {
        std::mem::replace(&mut self.delta, MeanStd::new(self.local.mean.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_shares_equal_one_pass_over_everything() {
        let xs: Vec<[f32; 2]> = (0..1000)
            .map(|i| [(i as f32 * 0.37).sin() * 50.0 + 100.0, (i % 7) as f32])
            .collect();
        let mut whole = MeanStd::new(2);
        xs.iter().for_each(|x| whole.push(x));
        let mut parts = [MeanStd::new(2), MeanStd::new(2), MeanStd::new(2)];
        for (i, x) in xs.iter().enumerate() {
            parts[(i * 7) % 3].push(x);
        }
        let mut merged = MeanStd::new(2);
        parts.iter().for_each(|p| merged.merge(p));
        assert_eq!(merged.count, 1000.0);
        for d in 0..2 {
            let col: Vec<f64> = xs.iter().map(|x| x[d] as f64).collect();
            let mean = col.iter().sum::<f64>() / 1000.0;
            let var = col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 1000.0;
            assert!((merged.mean[d] - mean).abs() < 1e-9 && (whole.mean[d] - mean).abs() < 1e-9);
            assert!((merged.var()[d] - var).abs() < 1e-6 && (whole.var()[d] - var).abs() < 1e-6);
        }
        // Normalized: mean 0, variance 1, clipped at 10.
        let z: Vec<f32> = xs.iter().map(|x| merged.normalize(x)[0]).collect();
        let zm = z.iter().map(|v| *v as f64).sum::<f64>() / 1000.0;
        let zv = z.iter().map(|v| (*v as f64 - zm).powi(2)).sum::<f64>() / 1000.0;
        assert!(zm.abs() < 1e-4 && (zv - 1.0).abs() < 1e-3, "{zm} {zv}");
        assert_eq!(merged.normalize(&[1e9, 0.0])[0], CLIP);
        // A runner's share comes back once, what it saw before its first
        // sync included.
        let mut r = RunnerFilter::new(2);
        r.observe(&[5.0, 5.0]);
        r.sync(&merged);
        r.observe(&[1.0, 2.0]);
        assert_eq!(r.local.count, 1002.0);
        assert_eq!(r.take_delta().count, 2.0);
        assert_eq!(r.take_delta().count, 0.0);
    }
}
