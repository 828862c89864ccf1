//! The learners: [`ppo`], [`dqn`] and [`sac`], each with its networks on
//! the learner's device (CUDA when there is one) and its update rule.

pub mod dqn;
pub mod ppo;
pub mod sac;

use tch::{Device, Kind, Tensor};

/// A flat `f32` vector as a `[rows, cols]` tensor on `device`.
pub(crate) fn tensor2(v: &[f32], cols: i64, device: Device) -> Tensor {
    Tensor::from_slice(v).view([-1, cols.max(1)]).to_device(device)
}

/// A flat `f32` vector as a 1-D tensor on `device`.
pub(crate) fn tensor1(v: &[f32], device: Device) -> Tensor {
    Tensor::from_slice(v).to_device(device)
}

/// A scalar tensor's value.
pub(crate) fn scalar(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).double_value(&[])
}

/// A replay buffer: a ring of transitions, sampled uniformly.
pub(crate) struct Replay {
    capacity: usize,
    obs_dim: usize,
    act_dim: usize,
    obs: Vec<f32>,
    actions: Vec<f32>,
    rewards: Vec<f32>,
    next_obs: Vec<f32>,
    terminated: Vec<f32>,
    discount: Vec<f32>,
    next: usize,
    len: usize,
}

/// A sampled batch, as tensors.
pub(crate) struct ReplayBatch {
    pub(crate) obs: Tensor,
    pub(crate) actions: Tensor,
    pub(crate) rewards: Tensor,
    pub(crate) next_obs: Tensor,
    pub(crate) terminated: Tensor,
    pub(crate) discount: Tensor,
}

impl Replay {
    pub(crate) fn new(capacity: usize, obs_dim: usize, act_dim: usize) -> Replay {
        Replay {
            capacity,
            obs_dim,
            act_dim,
            obs: Vec::new(),
            actions: Vec::new(),
            rewards: Vec::new(),
            next_obs: Vec::new(),
            terminated: Vec::new(),
            discount: Vec::new(),
            next: 0,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Samples transitions through the runners into the buffer; the env
    /// steps taken and the episodes that ended.
    pub(crate) fn fill(
        &mut self,
        runners: &mut crate::algorithm::Runners,
        weights: Vec<f32>,
        steps: usize,
        explore: crate::runner::Explore,
    ) -> crate::error::Result<(u64, crate::runner::Episodes)> {
        let mut episodes = crate::runner::Episodes::default();
        let mut taken = 0;
        for b in runners.transitions(weights, steps, explore)? {
            self.add(&b);
            taken += b.env_steps;
            episodes.returns.extend(b.episodes.returns);
            episodes.lengths.extend(b.episodes.lengths);
        }
        Ok((taken, episodes))
    }

    /// Adds every transition of `t`, overwriting the oldest when full.
    pub(crate) fn add(&mut self, t: &crate::runner::Transitions) {
        let (od, ad) = (self.obs_dim, self.act_dim);
        for i in 0..t.rewards.len() {
            let row = |v: &[f32], d: usize| v[i * d..(i + 1) * d].to_vec();
            if self.len < self.capacity {
                self.obs.extend(row(&t.obs, od));
                self.actions.extend(row(&t.actions, ad));
                self.rewards.push(t.rewards[i]);
                self.next_obs.extend(row(&t.next_obs, od));
                self.terminated.push(t.terminated[i]);
                self.discount.push(t.discount[i]);
                self.len += 1;
            } else {
                let j = self.next;
                self.obs[j * od..(j + 1) * od].copy_from_slice(&t.obs[i * od..(i + 1) * od]);
                self.actions[j * ad..(j + 1) * ad].copy_from_slice(&t.actions[i * ad..(i + 1) * ad]);
                self.rewards[j] = t.rewards[i];
                self.next_obs[j * od..(j + 1) * od].copy_from_slice(&t.next_obs[i * od..(i + 1) * od]);
                self.terminated[j] = t.terminated[i];
                self.discount[j] = t.discount[i];
            }
            self.next = (self.next + 1) % self.capacity;
        }
    }

    /// `n` transitions drawn uniformly (with replacement).
    pub(crate) fn sample(&self, n: usize, rng: &mut rand::rngs::StdRng, device: Device) -> ReplayBatch {
        use rand::Rng;
        let (od, ad) = (self.obs_dim, self.act_dim);
        let idx: Vec<usize> = (0..n).map(|_| rng.random_range(0..self.len.max(1))).collect();
        let gather = |v: &[f32], d: usize| -> Vec<f32> {
            idx.iter().flat_map(|i| v[i * d..(i + 1) * d].iter().copied()).collect()
        };
        ReplayBatch {
            obs: tensor2(&gather(&self.obs, od), od as i64, device),
            actions: tensor2(&gather(&self.actions, ad), ad as i64, device),
            rewards: tensor1(&gather(&self.rewards, 1), device),
            next_obs: tensor2(&gather(&self.next_obs, od), od as i64, device),
            terminated: tensor1(&gather(&self.terminated, 1), device),
            discount: tensor1(&gather(&self.discount, 1), device),
        }
    }
}
