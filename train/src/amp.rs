//! Mixed precision, as `torch.autocast` and `torch.amp.GradScaler`: the
//! forward pass under [`autocast`] runs matrix products and convolutions in
//! bfloat16 or float16 and the rest in float32 (libtorch's own per-op
//! rules, on the CPU with bfloat16 or on CUDA), while the parameters and
//! their gradients stay float32. float16's narrow range needs the loss
//! scaled so small gradients do not vanish: [`GradScaler`] scales it,
//! unscales the gradients, and skips a step whose gradients overflowed.
//! bfloat16 has float32's range and needs no scaler.
//!
//! ```no_run
//! use rayforge_train::amp::{autocast, GradScaler};
//! use rayforge_train::optim::{Adam, Optimizer};
//! use rayforge_train::tch::{nn, nn::Module, Kind, Tensor};
//! # fn f(ctx: &mut rayforge_train::TrainContext, net: &nn::Sequential, vs: &nn::VarStore,
//! #      x: &Tensor, y: &Tensor) -> rayforge_train::Result<()> {
//! let mut model = ctx.prepare_model(vs)?;
//! let mut opt = Adam::new(vs, 1e-3);
//! let device = ctx.torch_device();
//! // bfloat16 (CPU or CUDA): autocast the forward, backward and step as usual.
//! let loss = autocast(device, Kind::BFloat16, || net.forward(x).mse_loss(y, tch::Reduction::Mean))?;
//! opt.zero_grad();
//! model.backward(&loss)?;
//! opt.step()?;
//! // float16 on CUDA: scale the loss, and let the scaler step.
//! let mut scaler = GradScaler::new();
//! let loss = autocast(device, Kind::Half, || net.forward(x).mse_loss(y, tch::Reduction::Mean))?;
//! opt.zero_grad();
//! model.backward(&scaler.scale(&loss))?;
//! scaler.step(vs, &mut opt)?; // false when it skipped an overflowed step
//! # Ok(()) }
//! ```

use std::ffi::{c_char, c_int};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::optim::Optimizer;
use crate::rng::check;

extern "C" {
    fn rayforge_train_autocast_enter(
        cuda: c_int,
        dtype: c_int,
        was_enabled: *mut c_int,
        was_dtype: *mut c_int,
    ) -> *mut c_char;
    fn rayforge_train_autocast_exit(cuda: c_int, was_enabled: c_int, was_dtype: c_int) -> *mut c_char;
}

/// c10's number for a reduced-precision kind autocast takes.
fn scalar_type(kind: Kind) -> Result<c_int> {
    match kind {
        Kind::Half => Ok(5),
        Kind::BFloat16 => Ok(15),
        other => Err(Error::Torch(format!(
            "autocast computes in Half or BFloat16, not {other:?}"
        ))),
    }
}

/// Runs `f` with autocast on `device` in `kind` (`Kind::BFloat16`, or
/// `Kind::Half`), for this thread: libtorch casts each eligible operation's
/// inputs (matrix products, convolutions, linear layers) to `kind` and keeps
/// the precision-sensitive ones (reductions, losses, softmax) in float32.
/// Regions nest; the thread's autocast state is restored when `f` returns.
/// Run the backward pass outside it, as PyTorch advises.
pub fn autocast<T>(device: Device, kind: Kind, f: impl FnOnce() -> T) -> Result<T> {
    let dtype = scalar_type(kind)?;
    let cuda = match device {
        Device::Cpu => 0,
        Device::Cuda(_) => 1,
        other => return Err(Error::Torch(format!("autocast runs on the CPU or CUDA, not {other:?}"))),
    };
    let (mut was_enabled, mut was_dtype) = (0, 0);
    // SAFETY: plain values in, two ints written by the shim.
    check(
        unsafe { rayforge_train_autocast_enter(cuda, dtype, &mut was_enabled, &mut was_dtype) },
        "autocast",
    )?;
    /// Leaves the region even when `f` panics.
    struct Exit(c_int, c_int, c_int);
    impl Drop for Exit {
        fn drop(&mut self) {
            // SAFETY: restores what enter reported; an error here (none is
            // known) leaves nothing to undo.
            let e = unsafe { rayforge_train_autocast_exit(self.0, self.1, self.2) };
            let _ = check(e, "autocast");
        }
    }
    let _exit = Exit(cuda, was_enabled, was_dtype);
    Ok(f())
}

/// Loss scaling for float16 training (`torch.amp.GradScaler`, with its
/// defaults): the loss is multiplied by a scale before backward; at the
/// step the gradients are divided by it, and a step whose gradients hold an
/// infinity or NaN is skipped and the scale halved; after
/// `growth_interval` good steps in a row the scale doubles. On several
/// ranks the averaged gradients carry an overflow to every rank, so all
/// skip the same steps. Its state belongs in checkpoints (it is serde).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradScaler {
    /// The current scale.
    pub scale: f64,
    /// The scale's factor after `growth_interval` good steps.
    pub growth_factor: f64,
    /// The scale's factor after an overflow.
    pub backoff_factor: f64,
    /// Good steps in a row before the scale grows.
    pub growth_interval: u64,
    /// Good steps since the last change of scale.
    pub growth_tracker: u64,
    /// Whether this step's gradients are already unscaled.
    #[serde(skip)]
    unscaled: Option<bool>,
}

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler::new()
    }
}

impl GradScaler {
    /// PyTorch's defaults: scale 2^16, growth 2 every 2000 steps, backoff 0.5.
    pub fn new() -> GradScaler {
        GradScaler {
            scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            growth_tracker: 0,
            unscaled: None,
        }
    }

    /// The loss times the scale: call backward on this.
    pub fn scale(&self, loss: &Tensor) -> Tensor {
        loss * self.scale
    }

    /// Divides the gradients of `vs`'s trainable variables by the scale
    /// (once per step) and says whether any is not finite. Call it before
    /// clipping gradients; [`GradScaler::step`] calls it otherwise.
    pub fn unscale(&mut self, vs: &nn::VarStore) -> Result<bool> {
        if let Some(found_inf) = self.unscaled {
            return Ok(found_inf);
        }
        let inv = 1.0 / self.scale;
        let mut found_inf = false;
        for v in vs.trainable_variables() {
            let mut g = v.grad();
            if !g.defined() {
                continue;
            }
            tch::no_grad(|| -> Result<()> {
                let _ = g.f_mul_scalar_(inv)?;
                found_inf |= !bool::try_from(g.f_isfinite()?.f_all()?)?;
                Ok(())
            })?;
        }
        self.unscaled = Some(found_inf);
        Ok(found_inf)
    }

    /// Steps `opt` unless the gradients overflowed, then updates the scale;
    /// whether it stepped. Zero the gradients before the next backward, as
    /// always.
    pub fn step(&mut self, vs: &nn::VarStore, opt: &mut impl Optimizer) -> Result<bool> {
        let found_inf = self.unscale(vs)?;
        self.unscaled = None;
        if found_inf {
            self.scale *= self.backoff_factor;
            self.growth_tracker = 0;
            return Ok(false);
        }
        opt.step()?;
        self.growth_tracker += 1;
        if self.growth_tracker >= self.growth_interval {
            self.scale *= self.growth_factor;
            self.growth_tracker = 0;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::Module;

    #[test]
    fn autocast_computes_products_in_bfloat16_and_restores_the_thread() {
        let a = Tensor::randn([8, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 8], (Kind::Float, Device::Cpu));
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        let (inner, nested, after_nested) = autocast(Device::Cpu, Kind::BFloat16, || {
            let inner = a.matmul(&b).kind();
            let nested = autocast(Device::Cpu, Kind::BFloat16, || a.matmul(&b).kind()).unwrap();
            (inner, nested, a.matmul(&b).kind())
        })
        .unwrap();
        assert_eq!(
            (inner, nested, after_nested),
            (Kind::BFloat16, Kind::BFloat16, Kind::BFloat16)
        );
        assert_eq!(a.matmul(&b).kind(), Kind::Float, "off again after the region");
        // Another thread never saw it.
        let other = autocast(Device::Cpu, Kind::BFloat16, || {
            let (a, b) = (a.shallow_clone(), b.shallow_clone());
            std::thread::spawn(move || a.matmul(&b).kind()).join().unwrap()
        })
        .unwrap();
        assert_eq!(other, Kind::Float);
        let e = autocast(Device::Cpu, Kind::Double, || ()).unwrap_err();
        assert!(e.to_string().contains("Half or BFloat16"), "{e}");
    }

    /// Fits y = 3x - 1 with a linear layer, the forward under autocast when
    /// `kind` is given; the final loss.
    fn fit(kind: Option<Kind>, scaler: Option<&mut GradScaler>) -> f64 {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = nn::seq()
            .add(nn::linear(vs.root() / "l1", 1, 16, Default::default()))
            .add_fn(|x| x.tanh())
            .add(nn::linear(vs.root() / "l2", 16, 1, Default::default()));
        let mut opt = crate::optim::Adam::new(&vs, 1e-2);
        let x = Tensor::linspace(-1.0, 1.0, 64, (Kind::Float, Device::Cpu)).view([64, 1]);
        let y = &x * 3.0 - 1.0;
        let mut scaler = scaler;
        let mut last = f64::NAN;
        for _ in 0..300 {
            let forward = || net.forward(&x).mse_loss(&y, tch::Reduction::Mean);
            let loss = match kind {
                Some(k) => autocast(Device::Cpu, k, forward).unwrap(),
                None => forward(),
            };
            opt.zero_grad();
            match scaler.as_deref_mut() {
                Some(s) => {
                    s.scale(&loss).backward();
                    s.step(&vs, &mut opt).unwrap();
                }
                None => {
                    loss.backward();
                    opt.step().unwrap();
                }
            }
            last = loss.double_value(&[]);
        }
        last
    }

    #[test]
    fn a_bfloat16_forward_learns_as_float32_does() {
        let f32_loss = fit(None, None);
        let bf16_loss = fit(Some(Kind::BFloat16), None);
        // Seen: 0.00280 float32, 0.00282 bfloat16.
        assert!(f32_loss < 1e-2, "{f32_loss}");
        assert!(
            bf16_loss < f32_loss * 1.5 + 1e-3,
            "bfloat16 {bf16_loss} against float32 {f32_loss}"
        );
        // With the scaler too: its unscaled gradients make the same steps.
        let mut s = GradScaler::new();
        let scaled = fit(Some(Kind::BFloat16), Some(&mut s));
        assert!(scaled < f32_loss * 1.5 + 1e-3, "{scaled}");
        assert_eq!(
            s.scale, 65536.0,
            "no overflow in 300 steps, fewer than the growth interval"
        );
    }

    #[test]
    fn an_overflowed_step_is_skipped_and_the_scale_backs_off_then_grows() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[1], nn::Init::Const(1.0));
        let mut opt = crate::optim::Adam::new(&vs, 0.1);
        let mut s = GradScaler {
            growth_interval: 3,
            ..GradScaler::new()
        };
        let mut step = |s: &mut GradScaler, factor: f64| {
            opt.zero_grad();
            s.scale(&(&w * factor).sum(Kind::Float)).backward();
            s.step(&vs, &mut opt).unwrap()
        };
        // 2^16 * 1e36 overflows float32: skipped, w untouched, scale halved.
        assert!(!step(&mut s, 1e36));
        assert_eq!(w.double_value(&[0]), 1.0);
        assert_eq!(s.scale, 32768.0);
        // Good steps move w; the third in a row doubles the scale.
        for _ in 0..3 {
            assert!(step(&mut s, 1.0));
        }
        assert!(w.double_value(&[0]) < 1.0);
        assert_eq!(s.scale, 65536.0);
        assert_eq!(s.growth_tracker, 0);
        // The unscaled gradient is the true one: d(w * 2)/dw = 2.
        opt.zero_grad();
        s.scale(&(&w * 2.0).sum(Kind::Float)).backward();
        assert!(!s.unscale(&vs).unwrap());
        assert_eq!(w.grad().double_value(&[0]), 2.0);
        assert!(!s.unscale(&vs).unwrap(), "once per step");
        assert_eq!(w.grad().double_value(&[0]), 2.0);
    }
}
