//! Optimizers whose state is tensors this crate owns, so a checkpoint holds
//! the whole training state a resume needs. tch's `nn::Optimizer` wraps
//! libtorch's C++ optimizer, whose moments and step count tch 0.24 cannot
//! read or write: a run resumed with it restarts Adam from zero moments and
//! ends elsewhere than a run that was never stopped. [`Adam`] computes the
//! same update as `torch.optim.Adam` / `AdamW`, in tch tensor ops, and
//! saves and loads its state by parameter name.
//!
//! ```no_run
//! use rayforge_train::optim::{Adam, Optimizer};
//! use rayforge_train::tch::{nn, nn::Module, Tensor};
//! # fn main() -> rayforge_train::Result<()> {
//! let vs = nn::VarStore::new(tch::Device::Cpu);
//! let model = nn::linear(vs.root() / "l", 4, 1, Default::default());
//! let mut opt = Adam::new(&vs, 1e-2);
//! let loss = model.forward(&Tensor::ones([8, 4], (tch::Kind::Float, tch::Device::Cpu))).mean(tch::Kind::Float);
//! opt.zero_grad();
//! loss.backward();
//! opt.step()?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use tch::{nn, Tensor};

use crate::error::{Error, Result};
use rayforge::checkpoint::{Checkpoint, CheckpointWriter};

/// What [`crate::DistributedModel::backward_step`] needs of an optimizer:
/// tch's `nn::Optimizer` and this module's [`Adam`] both are one.
pub trait Optimizer {
    /// Clears the gradients of the parameters it updates.
    fn zero_grad(&mut self);
    /// Updates the parameters from their gradients.
    fn step(&mut self) -> Result<()>;
}

impl Optimizer for nn::Optimizer {
    fn zero_grad(&mut self) {
        nn::Optimizer::zero_grad(self)
    }

    fn step(&mut self) -> Result<()> {
        nn::Optimizer::step(self);
        Ok(())
    }
}

/// Adam (Kingma and Ba), or AdamW with [`Adam::weight_decay`] decoupled as
/// in `torch.optim.AdamW`; its moments and step count are saved with
/// [`Adam::save`] and restored with [`Adam::load`].
pub struct Adam {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// The trainable variables by name, each with its first and second
    /// moments.
    params: BTreeMap<String, (Tensor, Tensor, Tensor)>,
    steps: i64,
}

impl std::fmt::Debug for Adam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adam")
            .field("lr", &self.lr)
            .field("params", &self.params.len())
            .field("steps", &self.steps)
            .finish()
    }
}

impl Adam {
    /// Adam over `vs`'s trainable variables with learning rate `lr`
    /// (betas 0.9 and 0.999, eps 1e-8, no weight decay: PyTorch's
    /// defaults).
    pub fn new(vs: &nn::VarStore, lr: f64) -> Adam {
        let params = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(name, t)| {
                let m = t.zeros_like().detach();
                let v = t.zeros_like().detach();
                (name, (t, m, v))
            })
            .collect();
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            params,
            steps: 0,
        }
    }

    /// The moments' decay rates.
    pub fn betas(mut self, beta1: f64, beta2: f64) -> Adam {
        self.beta1 = beta1;
        self.beta2 = beta2;
        self
    }

    /// The term added to the denominator.
    pub fn eps(mut self, eps: f64) -> Adam {
        self.eps = eps;
        self
    }

    /// Decoupled weight decay (AdamW): each step first shrinks the
    /// parameters by `lr * weight_decay`.
    pub fn weight_decay(mut self, weight_decay: f64) -> Adam {
        self.weight_decay = weight_decay;
        self
    }

    /// Changes the learning rate (a schedule).
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Scales the gradients so that their total norm is at most `max`, as
    /// `torch.nn.utils.clip_grad_norm_` (and tch's
    /// `nn::Optimizer::clip_grad_norm`); the norm before clipping.
    pub fn clip_grad_norm(&mut self, max: f64) -> f64 {
        let grads: Vec<Tensor> = self
            .params
            .values()
            .map(|(p, _, _)| p.grad())
            .filter(|g| g.defined())
            .collect();
        let total = grads
            .iter()
            .map(|g| g.norm().double_value(&[]).powi(2))
            .sum::<f64>()
            .sqrt();
        let coef = max / (total + 1e-6);
        if coef < 1.0 {
            tch::no_grad(|| {
                for mut g in grads {
                    let _ = g.f_mul_scalar_(coef);
                }
            });
        }
        total
    }

    /// The steps taken (restored by [`Adam::load`]).
    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// Saves the step count and every parameter's moments as the file
    /// `name` of a checkpoint being written.
    pub fn save(&self, w: &mut CheckpointWriter, name: &str) -> Result<()> {
        let steps = Tensor::from_slice(&[self.steps]);
        let mut named: Vec<(String, &Tensor)> = vec![("steps".into(), &steps)];
        for (p, (_, m, v)) in &self.params {
            named.push((format!("m.{p}"), m));
            named.push((format!("v.{p}"), v));
        }
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        let path = w.file_path(name)?;
        Tensor::save_multi(&refs, &path).map_err(|e| Error::checkpoint(&path, e))
    }

    /// Restores the state [`Adam::save`] wrote: every parameter must have
    /// its moments there, with its shape.
    pub fn load(&mut self, c: &Checkpoint, name: &str) -> Result<()> {
        let path = c.file(name);
        let saved: BTreeMap<String, Tensor> = Tensor::load_multi(&path)
            .map_err(|e| Error::checkpoint(&path, e))?
            .into_iter()
            .collect();
        let bad = |what: String| Error::checkpoint(&path, what);
        let steps = saved
            .get("steps")
            .ok_or_else(|| bad("no step count: not an optimizer state saved by Adam::save".into()))?;
        let steps = steps.int64_value(&[0]);
        tch::no_grad(|| -> Result<()> {
            for (p, (param, m, v)) in &mut self.params {
                for (key, dst) in [(format!("m.{p}"), m), (format!("v.{p}"), v)] {
                    let src = saved
                        .get(&key)
                        .ok_or_else(|| bad(format!("no state for parameter `{p}`")))?;
                    if src.size() != param.size() {
                        return Err(bad(format!(
                            "parameter `{p}` has shape {:?} here and {:?} in the checkpoint",
                            param.size(),
                            src.size()
                        )));
                    }
                    dst.f_copy_(src)?;
                }
            }
            Ok(())
        })?;
        self.steps = steps;
        Ok(())
    }
}

impl Optimizer for Adam {
    fn zero_grad(&mut self) {
        for (p, _, _) in self.params.values_mut() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// `torch.optim.Adam`'s update (AdamW's with weight decay).
    fn step(&mut self) -> Result<()> {
        self.steps += 1;
        let t = self.steps as f64;
        let (b1, b2) = (self.beta1, self.beta2);
        let bias1 = 1.0 - b1.powf(t);
        let bias2_sqrt = (1.0 - b2.powf(t)).sqrt();
        let step_size = self.lr / bias1;
        let decay = 1.0 - self.lr * self.weight_decay;
        tch::no_grad(|| -> Result<()> {
            for (p, m, v) in self.params.values_mut() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                if self.weight_decay != 0.0 {
                    let _ = p.f_mul_scalar_(decay)?;
                }
                let _ = m.f_mul_scalar_(b1)?.f_add_(&g.f_mul_scalar(1.0 - b1)?)?;
                let _ = v.f_mul_scalar_(b2)?.f_add_(&g.f_mul(&g)?.f_mul_scalar(1.0 - b2)?)?;
                let denom = v.f_sqrt()?.f_div_scalar(bias2_sqrt)?.f_add_scalar(self.eps)?;
                let update = m.f_div(&denom)?.f_mul_scalar(step_size)?;
                let _ = p.f_sub_(&update)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::Module, nn::OptimizerConfig, Device, Kind};

    fn model(vs: &nn::VarStore) -> nn::Linear {
        nn::linear(vs.root() / "l", 3, 1, Default::default())
    }

    fn loss(m: &nn::Linear, step: i64) -> Tensor {
        let x = Tensor::arange(12, (Kind::Float, Device::Cpu)).reshape([4, 3]) / 10.0 + step as f64;
        (m.forward(&x) - 1.0).square().mean(Kind::Float)
    }

    /// Clipping scales the gradients as libtorch's optimizer does.
    #[test]
    fn clipped_gradients_match_libtorchs() {
        tch::manual_seed(3);
        let vs_a = nn::VarStore::new(Device::Cpu);
        let ma = model(&vs_a);
        let mut vs_b = nn::VarStore::new(Device::Cpu);
        let mb = model(&vs_b);
        vs_b.copy(&vs_a).unwrap();
        let mut ours = Adam::new(&vs_a, 0.1);
        let mut theirs = nn::Adam::default().build(&vs_b, 0.1).unwrap();
        for step in 0..4 {
            ours.zero_grad();
            loss(&ma, step).backward();
            let norm = ours.clip_grad_norm(0.05);
            assert!(norm > 0.05, "clipping happens: {norm}");
            ours.step().unwrap();
            theirs.zero_grad();
            loss(&mb, step).backward();
            theirs.clip_grad_norm(0.05);
            theirs.step();
        }
        for (name, a) in vs_a.variables() {
            let b = &vs_b.variables()[&name];
            let diff = (&a - b).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{name}: {diff}");
        }
    }

    /// The same parameters after a few steps as libtorch's own Adam.
    #[test]
    fn adam_matches_libtorchs() {
        tch::manual_seed(7);
        let vs_a = nn::VarStore::new(Device::Cpu);
        let ma = model(&vs_a);
        let mut vs_b = nn::VarStore::new(Device::Cpu);
        let mb = model(&vs_b);
        vs_b.copy(&vs_a).unwrap();
        let mut ours = Adam::new(&vs_a, 0.05);
        let mut theirs = nn::Adam::default().build(&vs_b, 0.05).unwrap();
        for s in 0..5 {
            Optimizer::zero_grad(&mut ours);
            loss(&ma, s).backward();
            Optimizer::step(&mut ours).unwrap();
            theirs.zero_grad();
            loss(&mb, s).backward();
            theirs.step();
        }
        let diff = (&ma.ws - &mb.ws).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "weights differ by {diff}");
    }

    /// Saved after 3 steps and loaded into a fresh model and optimizer,
    /// 3 more steps end exactly where 6 uninterrupted steps do.
    #[test]
    fn a_saved_state_resumes_to_the_same_weights() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = model(&vs);
        let mut opt = Adam::new(&vs, 0.05).weight_decay(0.01);
        let run = |opt: &mut Adam, m: &nn::Linear, steps: std::ops::Range<i64>| {
            for s in steps {
                Optimizer::zero_grad(opt);
                loss(m, s).backward();
                Optimizer::step(opt).unwrap();
            }
        };
        run(&mut opt, &m, 0..3);
        let mut w = CheckpointWriter::new().unwrap();
        let p = w.file_path("model.ot").unwrap();
        vs.save(&p).unwrap();
        opt.save(&mut w, "optimizer.ot").unwrap();
        let dir = std::env::temp_dir().join(format!("rayforge-adam-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = w.commit(&dir, 3, &Default::default(), "test").unwrap();
        run(&mut opt, &m, 3..6);

        let mut vs2 = nn::VarStore::new(Device::Cpu);
        let m2 = model(&vs2);
        vs2.load(c.file("model.ot")).unwrap();
        let mut opt2 = Adam::new(&vs2, 0.05).weight_decay(0.01);
        opt2.load(&c, "optimizer.ot").unwrap();
        assert_eq!(opt2.steps(), 3);
        run(&mut opt2, &m2, 3..6);
        assert!(m.ws.equal(&m2.ws), "{} vs {}", m.ws, m2.ws);
        // A file that is no optimizer state is refused, naming it.
        let err = opt2.load(&c, "model.ot").unwrap_err();
        assert!(err.to_string().contains("model.ot"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
