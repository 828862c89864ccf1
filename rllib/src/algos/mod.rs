//! The learners: [`ppo`], [`dqn`] and [`sac`], each with its networks on
//! the learner's device (CUDA when there is one) and its update rule.

pub mod dqn;
pub mod ppo;
pub mod sac;

use rayforge::checkpoint::{Checkpoint, CheckpointWriter};
use rayforge_train::optim::Adam;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Saves an optimizer's moments and step count as the checkpoint file
/// `name`.
pub(crate) fn save_optimizer(opt: &Adam, w: &mut CheckpointWriter, name: &str) -> Result<()> {
    opt.save(w, name).map_err(|e| Error::Runtime(e.to_string()))
}

/// Restores an optimizer from the checkpoint file `name` (a checkpoint
/// without it, from before optimizers were saved, leaves it fresh).
pub(crate) fn load_optimizer(opt: &mut Adam, c: &Checkpoint, name: &str) -> Result<()> {
    if !c.file(name).exists() {
        tracing::warn!("{}: no {name}: the optimizer starts fresh", c.location());
        return Ok(());
    }
    opt.load(c, name)
        .map_err(|e| Error::config("checkpoint", e.to_string()))
}

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

    /// Saves the buffer's transitions and where it stands as the
    /// checkpoint file `name`.
    pub(crate) fn save(&self, w: &mut CheckpointWriter, name: &str) -> Result<()> {
        let meta = Tensor::from_slice(&[
            self.capacity as i64,
            self.obs_dim as i64,
            self.act_dim as i64,
            self.next as i64,
            self.len as i64,
        ]);
        let named = [
            ("meta", meta),
            ("obs", Tensor::from_slice(&self.obs)),
            ("actions", Tensor::from_slice(&self.actions)),
            ("rewards", Tensor::from_slice(&self.rewards)),
            ("next_obs", Tensor::from_slice(&self.next_obs)),
            ("terminated", Tensor::from_slice(&self.terminated)),
            ("discount", Tensor::from_slice(&self.discount)),
        ];
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (*n, t)).collect();
        let path = w.file_path(name)?;
        Ok(Tensor::save_multi(&refs, &path)?)
    }

    /// Refills the buffer from the checkpoint file `name` that
    /// [`Replay::save`] wrote, oldest transition first (into a buffer of
    /// another capacity, the newest that fit). Observation and action
    /// sizes must match.
    pub(crate) fn load(&mut self, c: &Checkpoint, name: &str) -> Result<()> {
        let path = c.file(name);
        let bad = |what: String| Error::config("checkpoint", format!("{}: {what}", path.display()));
        let saved: std::collections::BTreeMap<String, Tensor> = Tensor::load_multi(&path)?.into_iter().collect();
        let get = |key: &str| {
            saved
                .get(key)
                .ok_or_else(|| bad(format!("no `{key}` in the replay buffer")))
        };
        let meta: Vec<i64> = Vec::try_from(get("meta")?)?;
        let [capacity, od, ad, next, len] = meta[..] else {
            return Err(bad(format!(
                "a replay buffer's header is 5 numbers, not {}",
                meta.len()
            )));
        };
        if (od as usize, ad as usize) != (self.obs_dim, self.act_dim) {
            return Err(bad(format!(
                "the replay buffer holds observations of {od} and actions of {ad} values; this algorithm's are {} and {}",
                self.obs_dim, self.act_dim
            )));
        }
        let vec = |key: &str, width: usize| -> Result<Vec<f32>> {
            let v: Vec<f32> = Vec::try_from(get(key)?)?;
            if v.len() != len as usize * width {
                return Err(bad(format!("`{key}` holds {} values for {len} transitions", v.len())));
            }
            Ok(v)
        };
        let (od, ad) = (self.obs_dim, self.act_dim);
        let t = crate::runner::Transitions {
            obs: vec("obs", od)?,
            actions: vec("actions", ad)?,
            rewards: vec("rewards", 1)?,
            next_obs: vec("next_obs", od)?,
            terminated: vec("terminated", 1)?,
            discount: vec("discount", 1)?,
            ..Default::default()
        };
        // Oldest first: once full, the ring's oldest is at `next`.
        let (len, next) = (len as usize, next as usize);
        let order: Vec<usize> = if len < capacity as usize {
            (0..len).collect()
        } else {
            (next..len).chain(0..next.min(len)).collect()
        };
        let pick = |v: &[f32], d: usize| -> Vec<f32> {
            order
                .iter()
                .flat_map(|i| v[i * d..(i + 1) * d].iter().copied())
                .collect()
        };
        let ordered = crate::runner::Transitions {
            obs: pick(&t.obs, od),
            actions: pick(&t.actions, ad),
            rewards: pick(&t.rewards, 1),
            next_obs: pick(&t.next_obs, od),
            terminated: pick(&t.terminated, 1),
            discount: pick(&t.discount, 1),
            ..Default::default()
        };
        *self = Replay::new(self.capacity, od, ad);
        self.add(&ordered);
        Ok(())
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
