//! Which of a backward's gradient buckets are complete, told by hooks on the
//! parameters as libtorch accumulates each gradient (through
//! `src/grad_hook.cpp`): [`crate::DistributedModel::backward`] hands each
//! complete bucket to the all-reduce while backward goes on with the
//! earlier layers, as PyTorch's DDP does.

use std::ffi::{c_char, c_void};
use std::ops::Range;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use tch::Tensor;

use crate::error::Result;

extern "C" {
    fn rayforge_train_set_grad_hook(
        tensor: *const c_void,
        ready: extern "C" fn(*const c_void, usize),
        release: extern "C" fn(*const c_void),
        ctx: *const c_void,
        index: usize,
    ) -> *mut c_char;
}

/// The buckets' progress through one backward, shared with the hooks.
#[derive(Debug)]
pub(crate) struct Readiness {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Each parameter's bucket.
    bucket_of: Vec<usize>,
    /// Each bucket's number of parameters.
    sizes: Vec<usize>,
    /// Each bucket's parameters whose gradient this backward has not
    /// accumulated yet.
    left: Vec<usize>,
    /// The parameters this backward has accumulated.
    seen: Vec<bool>,
    /// Each bucket: handed over already.
    handed: Vec<bool>,
    /// While an overlapped backward runs: where complete buckets go.
    tx: Option<mpsc::Sender<usize>>,
}

impl Readiness {
    /// Puts a hook on each of `params` (leaves that require grad), which
    /// fall into `buckets` (index ranges of `params`).
    pub(crate) fn install(params: &[Tensor], buckets: &[Range<usize>]) -> Result<Arc<Readiness>> {
        let mut bucket_of = vec![0; params.len()];
        for (b, range) in buckets.iter().enumerate() {
            for i in range.clone() {
                bucket_of[i] = b;
            }
        }
        let readiness = Arc::new(Readiness {
            state: Mutex::new(State {
                bucket_of,
                sizes: buckets.iter().map(|r| r.len()).collect(),
                left: vec![0; buckets.len()],
                seen: vec![false; params.len()],
                handed: vec![true; buckets.len()],
                tx: None,
            }),
        });
        for (i, p) in params.iter().enumerate() {
            let ctx = Arc::into_raw(Arc::clone(&readiness)).cast::<c_void>();
            // SAFETY: `p.as_ptr()` is the live at::Tensor of a tch tensor
            // borrowed for the call; `ctx` is one strong count of the Arc,
            // which the shim hands back to `release` exactly once.
            let error = unsafe { rayforge_train_set_grad_hook(p.as_ptr().cast(), ready, release, ctx, i) };
            crate::rng::check(error, "setting a gradient hook")?;
        }
        Ok(readiness)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters behind,
        // which `start` resets: the poison carries nothing to act on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a backward whose complete buckets arrive, by index, on the
    /// receiver.
    pub(crate) fn start(&self) -> mpsc::Receiver<usize> {
        let (tx, rx) = mpsc::channel();
        let mut s = self.lock();
        s.left = s.sizes.clone();
        s.seen.iter_mut().for_each(|x| *x = false);
        s.handed.iter_mut().for_each(|x| *x = false);
        s.tx = Some(tx);
        rx
    }

    /// Ends the backward started last, and returns how many buckets were
    /// complete (and handed over) before it returned. When `complete`, the
    /// buckets still waiting for a gradient (their parameters unused on
    /// this rank) are handed over now; otherwise (backward failed) none
    /// more are, and the receiver ends.
    pub(crate) fn finish(&self, complete: bool) -> usize {
        let mut s = self.lock();
        let during = s.handed.iter().filter(|h| **h).count();
        if let Some(tx) = s.tx.take() {
            if complete {
                for (b, handed) in s.handed.iter().enumerate() {
                    if !handed {
                        let _ = tx.send(b);
                    }
                }
            }
        }
        during
    }

    /// The hook: parameter `i`'s gradient is accumulated for this backward.
    fn param_ready(&self, i: usize) {
        let mut s = self.lock();
        // No sender: a backward of the user's own, or one without overlap.
        if s.tx.is_none() || i >= s.seen.len() || s.seen[i] {
            return;
        }
        s.seen[i] = true;
        let b = s.bucket_of[i];
        s.left[b] -= 1;
        if s.left[b] == 0 {
            s.handed[b] = true;
            if let Some(tx) = &s.tx {
                // The receiver has gone only if the all-reduce thread
                // failed, which the backward's caller reports.
                let _ = tx.send(b);
            }
        }
    }
}

extern "C" fn ready(ctx: *const c_void, index: usize) {
    // SAFETY: `ctx` is a strong count of an Arc<Readiness> the hook holds
    // until `release`, so the Readiness is alive during the call.
    let readiness = unsafe { &*ctx.cast::<Readiness>() };
    // A panic must not unwind into libtorch's autograd engine.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| readiness.param_ready(index)));
}

extern "C" fn release(ctx: *const c_void) {
    // SAFETY: the strong count `Readiness::install` gave this hook, handed
    // back exactly once by the shim.
    drop(unsafe { Arc::from_raw(ctx.cast::<Readiness>()) });
}
