//! NCCL for GPU ranks: collectives on CUDA tensors straight from device
//! memory, through cudarc's bindings to NCCL and the CUDA driver. Both
//! libraries are loaded when a GPU rank first needs them, so building and
//! running on a machine without CUDA needs neither.
//!
//! A gang whose ranks hold GPUs gets one communicator per attempt, made when
//! the ranks join ([`Nccl::init`]): every rank first checks that it can run
//! NCCL (libtorch sees CUDA, `libcuda.so.1` and `libnccl.so` load) and the
//! ranks agree over the TCP ring, so a rank that cannot fails them all with
//! its reason instead of leaving the others waiting; then rank 0 makes the
//! communicator's id and the ring carries it to the others.
//!
//! **Ordering with libtorch.** libtorch queues its kernels on its current
//! stream, which tch does not expose. Each collective first synchronizes
//! the device (`torch.cuda.synchronize`), so whatever libtorch queued that
//! writes the tensor has finished; it then runs on the communicator's own
//! stream, and returns only once that stream has drained, so what libtorch
//! queues next reads the result. One device synchronization per collective
//! (a [`crate::DistributedModel`] makes one per 25 MB gradient bucket) buys
//! independence from whichever stream libtorch uses.
//!
//! **Never hanging.** NCCL waits forever for a peer that died. A collective
//! polls its stream and the communicator's asynchronous error; on an error,
//! or past the group's timeout, it aborts the communicator
//! (`ncclCommAbort`, which ends kernels waiting on a dead peer) and fails
//! with [`Error::Collective`]; every later call on it fails at once.
//! Creating the communicator (which waits for every rank) runs on a helper
//! thread under the same deadline; a rank that gives up leaves that thread
//! behind, and the trainer then tears the gang's processes down.
//!
//! **Where libnccl comes from.** torch's `nvidia-nccl-cu13` wheel ships it as
//! `nvidia/nccl/lib/libnccl.so.2`; cudarc looks for `libnccl.so`. A GPU
//! set-up made by `scripts/libtorch.sh` (`RAYFORGE_TORCH_CUDA=1`) links one
//! into torch's library folder, which binaries have as their rpath; elsewhere
//! a folder holding such a link goes on `LD_LIBRARY_PATH`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{sys as cu, CudaContext, CudaStream};
use cudarc::nccl::{result as nr, sys as ns};
use parking_lot::Mutex;
use tch::{Kind, Tensor};

use crate::collective::{Group, ReduceOp};
use crate::error::{Error, Result};

/// How to make `libnccl.so` loadable, for error messages.
const NCCL_HINT: &str = "NCCL comes with torch's `nvidia-nccl-cu13` wheel as `nvidia/nccl/lib/libnccl.so.2`: \
     set up libtorch with `RAYFORGE_TORCH_CUDA=1 source scripts/libtorch.sh` (it links it as `libnccl.so` \
     beside libtorch), or put a folder holding a `libnccl.so` link to it on LD_LIBRARY_PATH";

/// What a rank's NCCL communicator reports about itself
/// ([`Group::nccl`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NcclInfo {
    /// The NCCL library's version, e.g. `2.28.9`.
    pub version: String,
    /// The CUDA device (among those this rank sees) it runs on.
    pub device: usize,
    /// Collectives run through it so far on this rank.
    pub calls: u64,
}

/// An NCCL communicator handle. It may be used from any thread, one call
/// at a time, which the mutex around it ensures.
struct Comm(ns::ncclComm_t);

// SAFETY: NCCL communicators are not tied to the thread that made them;
// calls on one must not overlap, and every use goes through `Nccl::state`'s
// mutex.
unsafe impl Send for Comm {}

struct State {
    /// `None` once aborted.
    comm: Option<Comm>,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

/// One rank's NCCL communicator over the gang (shared by the clones of its
/// [`Group`]).
pub(crate) struct Nccl {
    rank: usize,
    world: usize,
    device: usize,
    timeout: Duration,
    version: String,
    calls: AtomicU64,
    state: Mutex<State>,
}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("device", &self.device)
            .field("version", &self.version)
            .finish()
    }
}

/// Why this process cannot run NCCL on CUDA device `device`, if it cannot.
pub(crate) fn unavailable(device: usize) -> Option<String> {
    if !tch::Cuda::is_available() {
        return Some(
            "libtorch sees no CUDA device (a CPU-only libtorch, such as scripts/libtorch.sh's default set-up, \
             or no NVIDIA driver): point LIBTORCH at a CUDA build of torch (RAYFORGE_TORCH_CUDA=1 source \
             scripts/libtorch.sh)"
                .into(),
        );
    }
    let count = tch::Cuda::device_count();
    if device as i64 >= count {
        return Some(format!(
            "CUDA device {device} does not exist (this process sees {count})"
        ));
    }
    // SAFETY: only tries to load the libraries by their names.
    if !unsafe { cu::is_culib_present() } {
        return Some("the CUDA driver library (libcuda.so.1) cannot be loaded".into());
    }
    // SAFETY: as above.
    if !unsafe { ns::is_culib_present() } {
        return Some(format!("libnccl.so cannot be loaded. {NCCL_HINT}"));
    }
    None
}

fn nccl_error(e: &nr::NcclError) -> String {
    // SAFETY: ncclGetErrorString returns a static, NUL-terminated string
    // for any result code.
    let s = unsafe { std::ffi::CStr::from_ptr(ns::ncclGetErrorString(e.0)) };
    format!("{:?} ({})", e.0, s.to_string_lossy())
}

fn version_string(v: i32) -> String {
    // NCCL >= 2.9 encodes major * 10000 + minor * 100 + patch.
    format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)
}

/// The NCCL type a tensor of `kind` is sent as, if it has one.
fn data_type(kind: Kind) -> Option<ns::ncclDataType_t> {
    use ns::ncclDataType_t as T;
    Some(match kind {
        Kind::Int8 => T::ncclInt8,
        Kind::Uint8 => T::ncclUint8,
        Kind::Int => T::ncclInt32,
        Kind::Int64 => T::ncclInt64,
        Kind::Half => T::ncclFloat16,
        Kind::BFloat16 => T::ncclBfloat16,
        Kind::Float => T::ncclFloat32,
        Kind::Double => T::ncclFloat64,
        _ => return None,
    })
}

impl Nccl {
    /// Makes this rank's communicator over `group`'s ranks on CUDA device
    /// `device`. Every rank of the group calls it at the same point.
    pub(crate) fn init(group: &mut Group, device: usize) -> Result<Nccl> {
        let (rank, world, timeout) = (group.rank(), group.world_size(), group.timeout());
        let gpu_err = |message: String| Error::Gpu { rank, message };
        // Agree first: a rank that cannot run NCCL fails every rank now.
        let why = unavailable(device);
        let mut missing = [if why.is_some() { 1.0f32 } else { 0.0 }];
        group.all_reduce(&mut missing, ReduceOp::Sum)?;
        if let Some(why) = why {
            return Err(gpu_err(why));
        }
        if missing[0] > 0.0 {
            return Err(gpu_err(format!(
                "{} other rank(s) cannot run NCCL (their errors say why)",
                missing[0]
            )));
        }
        let version = nr::get_nccl_version().map_err(|e| gpu_err(format!("ncclGetVersion: {}", nccl_error(&e))))?;
        // Rank 0 makes the communicator's id; the ring carries it (128
        // bytes).
        let mut id = [0u8; 128];
        if rank == 0 {
            let uid = nr::get_uniqueid().map_err(|e| gpu_err(format!("ncclGetUniqueId: {}", nccl_error(&e))))?;
            for (b, c) in id.iter_mut().zip(uid.internal) {
                *b = c as u8;
            }
        }
        group.broadcast(&mut id, 0)?;
        let mut uid = ns::ncclUniqueId { internal: [0; 128] };
        for (c, b) in uid.internal.iter_mut().zip(&id) {
            *c = *b as std::ffi::c_char;
        }
        let ctx = CudaContext::new(device).map_err(|e| gpu_err(format!("opening CUDA device {device}: {e:?}")))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| gpu_err(format!("creating a CUDA stream: {e:?}")))?;
        // ncclCommInitRank waits for every rank: on a helper thread, so a
        // rank that never comes costs a timeout, not a hang.
        let (tx, rx) = std::sync::mpsc::channel();
        let init_ctx = ctx.clone();
        std::thread::Builder::new()
            .name(format!("nccl-init-rank{rank}"))
            .spawn(move || {
                let made = init_ctx
                    .bind_to_thread()
                    .map_err(|e| format!("binding CUDA device {device}: {e:?}"))
                    .and_then(|()| {
                        let mut comm: ns::ncclComm_t = std::ptr::null_mut();
                        // SAFETY: `comm` is a valid place for the handle, the
                        // id came from ncclGetUniqueId on rank 0, and `rank`
                        // < `world`.
                        unsafe { nr::comm_init_rank(&mut comm, world as i32, uid, rank as i32) }
                            .map(|_| Comm(comm))
                            .map_err(|e| format!("ncclCommInitRank: {}", nccl_error(&e)))
                    });
                // The receiver may have given up: then the handle leaks with
                // this process, which the trainer is about to end.
                let _ = tx.send(made);
            })
            .map_err(|e| gpu_err(format!("starting the NCCL set-up thread: {e}")))?;
        let comm = match rx.recv_timeout(timeout) {
            Ok(Ok(comm)) => comm,
            Ok(Err(message)) => return Err(Error::collective(rank, message)),
            Err(_) => {
                return Err(Error::collective(
                    rank,
                    format!("the NCCL communicator was not made within {timeout:?}: a rank did not join"),
                ))
            }
        };
        tracing::info!(rank, world, device, version = %version_string(version), "NCCL communicator ready");
        Ok(Nccl {
            rank,
            world,
            device,
            timeout,
            version: version_string(version),
            calls: AtomicU64::new(0),
            state: Mutex::new(State {
                comm: Some(comm),
                ctx,
                stream,
            }),
        })
    }

    /// What this communicator reports about itself.
    pub(crate) fn info(&self) -> NcclInfo {
        NcclInfo {
            version: self.version.clone(),
            device: self.device,
            calls: self.calls.load(Ordering::Relaxed),
        }
    }

    /// Whether `t` is for this communicator (a tensor on its device).
    pub(crate) fn takes(&self, t: &Tensor) -> bool {
        t.device() == tch::Device::Cuda(self.device)
    }

    /// Runs one collective: `issue` queues it on the communicator's stream;
    /// this waits for it, under the timeout, and aborts the communicator on
    /// any failure.
    fn run(
        &self,
        what: &str,
        issue: impl FnOnce(ns::ncclComm_t, ns::cudaStream_t) -> std::result::Result<nr::NcclStatus, nr::NcclError>,
    ) -> Result<()> {
        let mut st = self.state.lock();
        let Some(comm) = st.comm.as_ref().map(|c| c.0) else {
            return Err(Error::collective(
                self.rank,
                format!("{what}: the NCCL communicator was aborted by an earlier failure"),
            ));
        };
        // Everything libtorch queued on the device (the tensor's writers
        // among it) is done before NCCL reads the tensor.
        let device = self.device as i64;
        if std::panic::catch_unwind(|| tch::Cuda::synchronize(device)).is_err() {
            // tch panics on a CUDA error (a kernel that faulted earlier).
            return Err(Error::collective(
                self.rank,
                format!("{what}: synchronizing CUDA device {device} failed"),
            ));
        }
        let fail = |st: &mut State, message: String| {
            if let Some(c) = st.comm.take() {
                // SAFETY: a live communicator, aborted once (taken out of
                // the state), with no other call on it (we hold the lock).
                let _ = unsafe { nr::comm_abort(c.0) };
            }
            Error::collective(self.rank, format!("{what}: {message}"))
        };
        if let Err(e) = st.ctx.bind_to_thread() {
            return Err(fail(&mut st, format!("binding CUDA device {}: {e:?}", self.device)));
        }
        let stream = st.stream.cu_stream();
        if let Err(e) = issue(comm, stream as ns::cudaStream_t) {
            return Err(fail(&mut st, format!("NCCL refused it: {}", nccl_error(&e))));
        }
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_micros(10);
        loop {
            // SAFETY: a stream of this context, which is current.
            match unsafe { cu::cuStreamQuery(stream) } {
                cu::CUresult::CUDA_SUCCESS => break,
                cu::CUresult::CUDA_ERROR_NOT_READY => {}
                e => return Err(fail(&mut st, format!("CUDA reported {e:?}"))),
            }
            let mut async_err = ns::ncclResult_t::ncclSuccess;
            // SAFETY: a live communicator and a valid place for the result.
            let _ = unsafe { ns::ncclCommGetAsyncError(comm, &mut async_err) };
            if !matches!(
                async_err,
                ns::ncclResult_t::ncclSuccess | ns::ncclResult_t::ncclInProgress
            ) {
                return Err(fail(
                    &mut st,
                    format!("NCCL reported {}", nccl_error(&nr::NcclError(async_err))),
                ));
            }
            if Instant::now() >= deadline {
                return Err(fail(
                    &mut st,
                    format!(
                        "not finished within {:?}: a rank died or hung (the communicator is aborted)",
                        self.timeout
                    ),
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// `t` as a contiguous tensor of a kind NCCL sends (itself when it is
    /// one already), its NCCL type, and whether it is a copy to write
    /// back. A kind NCCL lacks, or a mean of integers, goes as `f32`.
    fn buffer(&self, t: &Tensor, reducing: Option<ReduceOp>) -> Result<(Tensor, ns::ncclDataType_t, bool)> {
        if !self.takes(t) {
            return Err(Error::InvalidArgument(format!(
                "a tensor on {:?} passed to rank {}'s NCCL collective on cuda:{}",
                t.device(),
                self.rank,
                self.device
            )));
        }
        let floating = matches!(t.kind(), Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double);
        let sent = data_type(t.kind()).filter(|_| floating || reducing != Some(ReduceOp::Mean));
        match sent {
            Some(dtype) if t.is_contiguous() => Ok((t.shallow_clone(), dtype, false)),
            Some(dtype) => Ok((t.f_contiguous()?.f_detach_copy()?, dtype, true)),
            None => Ok((
                t.f_to_kind(Kind::Float)?.f_contiguous()?.f_detach_copy()?,
                ns::ncclDataType_t::ncclFloat32,
                true,
            )),
        }
    }

    /// Reduces `t` over every rank in place.
    pub(crate) fn all_reduce(&self, t: &mut Tensor, op: ReduceOp) -> Result<()> {
        let (buf, dtype, copied) = self.buffer(t, Some(op))?;
        let n = buf.numel();
        let red = match op {
            ReduceOp::Sum => ns::ncclRedOp_t::ncclSum,
            ReduceOp::Mean => ns::ncclRedOp_t::ncclAvg,
        };
        let ptr = buf.data_ptr();
        // SAFETY: `ptr` is `n` contiguous elements of `dtype` on this
        // communicator's device, alive (held by `buf`) until `run` returns
        // after the stream drained; in place, as NCCL allows.
        self.run("all_reduce", |comm, stream| unsafe {
            nr::all_reduce(ptr, ptr, n, dtype, red, comm, stream)
        })?;
        if copied {
            tch::no_grad(|| t.f_copy_(&buf))?;
        }
        Ok(())
    }

    /// Every rank's `t` takes rank `root`'s values.
    pub(crate) fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        if root >= self.world {
            return Err(Error::InvalidArgument(format!(
                "broadcast root {root} in a group of {}",
                self.world
            )));
        }
        let (buf, dtype, copied) = self.buffer(t, None)?;
        let n = buf.numel();
        let ptr = buf.data_ptr();
        // SAFETY: as in `all_reduce`.
        self.run("broadcast", |comm, stream| unsafe {
            nr::broadcast(ptr, ptr, n, dtype, root as i32, comm, stream)
        })?;
        if copied {
            tch::no_grad(|| t.f_copy_(&buf))?;
        }
        Ok(())
    }

    /// Every rank's `t`, in rank order, each of `t`'s shape and kind.
    pub(crate) fn all_gather(&self, t: &Tensor) -> Result<Vec<Tensor>> {
        let (buf, dtype, _) = self.buffer(t, None)?;
        let n = buf.numel();
        let out = Tensor::f_empty([(n * self.world) as i64], (buf.kind(), buf.device()))?;
        let (src, dst) = (buf.data_ptr(), out.data_ptr());
        // SAFETY: `src` holds `n` elements and `dst` `n * world`, both on
        // this device and alive until `run` returns.
        self.run("all_gather", |comm, stream| unsafe {
            nr::all_gather(src, dst, n, dtype, comm, stream)
        })?;
        let shape = t.size();
        (0..self.world)
            .map(|r| {
                Ok(out
                    .f_narrow(0, (r * n) as i64, n as i64)?
                    .f_reshape(&shape)?
                    .f_to_kind(t.kind())?)
            })
            .collect()
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        let st = self.state.get_mut();
        if let Some(c) = st.comm.take() {
            let _ = st.ctx.bind_to_thread();
            // Aborted rather than destroyed: ncclCommDestroy finalizes with
            // the peers first, and a rank leaving on an error must not wait
            // for ranks that may be gone. Nothing is lost: every call
            // waited for its stream.
            // SAFETY: a live communicator with nothing queued, freed once.
            let _ = unsafe { nr::comm_abort(c.0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_kinds_map_as_nccl_defines_them() {
        assert_eq!(version_string(22809), "2.28.9");
        assert_eq!(version_string(21903), "2.19.3");
        assert_eq!(data_type(Kind::Float), Some(ns::ncclDataType_t::ncclFloat32));
        assert_eq!(data_type(Kind::BFloat16), Some(ns::ncclDataType_t::ncclBfloat16));
        assert_eq!(data_type(Kind::Bool), None);
    }

    #[test]
    fn without_cuda_a_gpu_rank_is_told_why() {
        if tch::Cuda::is_available() {
            eprintln!("skipped: this machine has CUDA (the GPU tests cover it)");
            return;
        }
        let why = unavailable(0).expect("no CUDA here");
        assert!(why.contains("no CUDA device"), "{why}");
    }
}
