//! The state of libtorch's default random generators, so a checkpoint
//! holds what a resumed run draws next: dropout masks, noise and sampling
//! after a restart are those of a run that was never stopped (as
//! `torch.get_rng_state()` / `torch.set_rng_state()` and their CUDA
//! counterparts). tch 0.24 can seed a generator but not read or write its
//! state; a small C++ shim of this crate (`src/rng_state.cpp`, compiled
//! against libtorch's headers by `build.rs`) does.
//!
//! ```no_run
//! use rayforge_train::rng::RngState;
//! use rayforge_train::{CheckpointWriter, TrainContext};
//! # fn f(ctx: &mut TrainContext) -> rayforge_train::Result<()> {
//! if let Some(c) = ctx.checkpoint() {
//!     RngState::load(c, "rng.ot")?.restore()?;
//! }
//! // ... train an epoch ...
//! let mut ckpt = CheckpointWriter::new()?;
//! RngState::capture()?.save(&mut ckpt, "rng.ot")?;
//! # Ok(()) }
//! ```

use std::ffi::{c_char, c_int, CStr};

use tch::Tensor;

use crate::collective::Group;
use crate::error::{Error, Result};
use rayforge::checkpoint::{Checkpoint, CheckpointWriter};

extern "C" {
    fn rayforge_train_rng_get_state(
        cuda: c_int,
        index: c_int,
        buf: *mut u8,
        cap: usize,
        len: *mut usize,
    ) -> *mut c_char;
    fn rayforge_train_rng_set_state(cuda: c_int, index: c_int, buf: *const u8, len: usize) -> *mut c_char;
    fn rayforge_train_rng_free_error(error: *mut c_char);
}

/// Turns the shim's error (null, or a string it allocated) into a result.
pub(crate) fn check(error: *mut c_char, what: &str) -> Result<()> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null error is a NUL-terminated string the shim
    // allocated with strdup, read once and freed by the shim's free.
    let message = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
    // SAFETY: as above; not used after this call.
    unsafe { rayforge_train_rng_free_error(error) };
    Err(Error::Torch(format!("{what}: {message}")))
}

/// The generator of the CPU (`None`) or of CUDA device `Some(i)`.
fn get(cuda: Option<usize>) -> Result<Vec<u8>> {
    let (is_cuda, index) = device_args(cuda)?;
    let what = describe(cuda);
    let mut buf = vec![0u8; 8192];
    loop {
        let mut len = 0usize;
        // SAFETY: `buf` holds `buf.len()` writable bytes; the shim writes
        // at most `cap` of them and sets `len`.
        let error = unsafe { rayforge_train_rng_get_state(is_cuda, index, buf.as_mut_ptr(), buf.len(), &mut len) };
        check(error, &format!("reading the {what} generator's state"))?;
        if len <= buf.len() {
            buf.truncate(len);
            return Ok(buf);
        }
        buf.resize(len, 0);
    }
}

fn set(cuda: Option<usize>, state: &[u8]) -> Result<()> {
    let (is_cuda, index) = device_args(cuda)?;
    // SAFETY: `state` is `state.len()` readable bytes; the shim copies them.
    let error = unsafe { rayforge_train_rng_set_state(is_cuda, index, state.as_ptr(), state.len()) };
    check(error, &format!("restoring the {} generator's state", describe(cuda)))
}

fn device_args(cuda: Option<usize>) -> Result<(c_int, c_int)> {
    match cuda {
        None => Ok((0, 0)),
        Some(i) => c_int::try_from(i)
            .map(|i| (1, i))
            .map_err(|_| Error::InvalidArgument(format!("CUDA device index {i} out of range"))),
    }
}

fn describe(cuda: Option<usize>) -> String {
    match cuda {
        None => "CPU".into(),
        Some(i) => format!("CUDA device {i}"),
    }
}

/// What libtorch's default generators will draw next: the CPU's and each
/// visible CUDA device's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RngState {
    cpu: Vec<u8>,
    cuda: Vec<Vec<u8>>,
}

impl RngState {
    /// Reads the state of this process's generators (the CPU's, and each
    /// CUDA device's when libtorch sees CUDA).
    pub fn capture() -> Result<RngState> {
        let cpu = get(None)?;
        let devices = if tch::Cuda::is_available() {
            tch::Cuda::device_count().max(0) as usize
        } else {
            0
        };
        let cuda = (0..devices).map(|i| get(Some(i))).collect::<Result<_>>()?;
        Ok(RngState { cpu, cuda })
    }

    /// Sets this process's generators to this state. CUDA devices the state
    /// has but this process lacks (a GPU run resumed on CPUs) are left out
    /// with a warning; devices it lacks keep their own state.
    pub fn restore(&self) -> Result<()> {
        set(None, &self.cpu)?;
        let here = if tch::Cuda::is_available() {
            tch::Cuda::device_count().max(0) as usize
        } else {
            0
        };
        if self.cuda.len() > here {
            tracing::warn!(
                saved = self.cuda.len(),
                here,
                "the random state has more CUDA devices than this process sees; the others are not restored"
            );
        }
        for (i, state) in self.cuda.iter().enumerate().take(here) {
            set(Some(i), state)?;
        }
        Ok(())
    }

    /// Saves the state as the file `name` of a checkpoint being written
    /// (libtorch's tensor format: one byte tensor per generator).
    pub fn save(&self, w: &mut CheckpointWriter, name: &str) -> Result<()> {
        write_entries(w, name, self.entries(""))
    }

    /// Reads a state [`RngState::save`] wrote (call [`RngState::restore`]
    /// to apply it).
    pub fn load(c: &Checkpoint, name: &str) -> Result<RngState> {
        let path = c.file(name);
        let saved = read_entries(c, name)?;
        RngState::from_entries(&saved, "").map_err(|e| Error::checkpoint(&path, e))
    }

    /// Saves every rank's state into rank 0's checkpoint as the file
    /// `name`: a collective every rank of the gang calls with its own
    /// writer (only rank 0's checkpoint is kept, see
    /// [`crate::TrainContext::report`]). Ranks seeded differently (a seed
    /// plus the rank, for augmentation) each get theirs back with
    /// [`RngState::restore_rank`].
    pub fn save_gang(group: &mut Group, w: &mut CheckpointWriter, name: &str) -> Result<()> {
        let own = RngState::capture()?.encode();
        let lens = group.all_gather(&[own.len() as u64 as i64])?;
        let longest = lens.iter().copied().max().unwrap_or(0).max(0) as usize;
        // Padded to the longest rank's.
        let mut local = own.clone();
        local.resize(longest, 0);
        let all = group.all_gather(&local)?;
        if group.rank() != 0 {
            return Ok(());
        }
        let mut entries = Vec::new();
        for (rank, chunk) in all.chunks(longest.max(1)).enumerate().take(lens.len()) {
            let state = RngState::decode(&chunk[..lens[rank] as usize])
                .ok_or_else(|| Error::collective(rank, "its random state arrived garbled".into()))?;
            entries.extend(state.entries(&format!("rank{rank}/")));
        }
        write_entries(w, name, entries)
    }

    /// Restores this rank's state from a file [`RngState::save_gang`]
    /// wrote. A rank the checkpoint has no state for (the gang grew) keeps
    /// its own, with a warning.
    pub fn restore_rank(c: &Checkpoint, name: &str, rank: usize) -> Result<()> {
        let path = c.file(name);
        let saved = read_entries(c, name)?;
        let prefix = format!("rank{rank}/");
        if !saved.iter().any(|(n, _)| n.starts_with(&prefix)) {
            if !saved.iter().any(|(n, _)| n.starts_with("rank")) {
                return Err(Error::checkpoint(
                    &path,
                    "not a gang's random state saved by RngState::save_gang",
                ));
            }
            tracing::warn!(rank, file = %path.display(), "the checkpoint has no random state for this rank; it keeps its own");
            return Ok(());
        }
        RngState::from_entries(&saved, &prefix)
            .map_err(|e| Error::checkpoint(&path, e))?
            .restore()
    }

    fn entries(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = vec![(format!("{prefix}cpu"), Tensor::from_slice(&self.cpu))];
        for (i, s) in self.cuda.iter().enumerate() {
            out.push((format!("{prefix}cuda:{i}"), Tensor::from_slice(s)));
        }
        out
    }

    fn from_entries(saved: &[(String, Tensor)], prefix: &str) -> std::result::Result<RngState, String> {
        let bytes = |t: &Tensor| -> std::result::Result<Vec<u8>, String> {
            if t.kind() != tch::Kind::Uint8 || t.dim() != 1 {
                return Err("not a random state saved by RngState".into());
            }
            Vec::<u8>::try_from(t).map_err(|e| e.to_string())
        };
        let mut cpu = None;
        let mut cuda = Vec::new();
        for (n, t) in saved {
            let Some(n) = n.strip_prefix(prefix) else { continue };
            if n == "cpu" {
                cpu = Some(bytes(t)?);
            } else if let Some(i) = n.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok()) {
                cuda.push((i, bytes(t)?));
            } else if prefix.is_empty() {
                return Err(format!(
                    "unexpected entry `{n}`: not a random state saved by RngState::save"
                ));
            }
        }
        let cpu = cpu.ok_or("no CPU generator state: not a random state saved by RngState")?;
        cuda.sort_by_key(|(i, _)| *i);
        if cuda.iter().enumerate().any(|(want, (i, _))| want != *i) {
            return Err("the CUDA generator states are not numbered 0..n".into());
        }
        Ok(RngState {
            cpu,
            cuda: cuda.into_iter().map(|(_, s)| s).collect(),
        })
    }

    /// Lengths then bytes: CUDA count, CPU state, each CUDA state.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend((self.cuda.len() as u32).to_le_bytes());
        for s in std::iter::once(&self.cpu).chain(&self.cuda) {
            out.extend((s.len() as u32).to_le_bytes());
            out.extend(s);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<RngState> {
        let mut rest = bytes;
        let mut next = |n: usize| -> Option<Vec<u8>> {
            if rest.len() < n {
                return None;
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Some(head.to_vec())
        };
        // `next(4)` returned 4 bytes.
        let word = |b: Vec<u8>| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let devices = word(next(4)?);
        let mut states = Vec::new();
        for _ in 0..=devices {
            let n = word(next(4)?);
            states.push(next(n)?);
        }
        let cpu = states.remove(0);
        Some(RngState { cpu, cuda: states })
    }
}

fn write_entries(w: &mut CheckpointWriter, name: &str, entries: Vec<(String, Tensor)>) -> Result<()> {
    let refs: Vec<(&str, &Tensor)> = entries.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let path = w.file_path(name)?;
    Tensor::save_multi(&refs, &path).map_err(|e| Error::checkpoint(&path, e))
}

fn read_entries(c: &Checkpoint, name: &str) -> Result<Vec<(String, Tensor)>> {
    let path = c.file(name);
    Tensor::load_multi(&path).map_err(|e| Error::checkpoint(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn randn(n: i64) -> Tensor {
        Tensor::randn([n], (Kind::Float, Device::Cpu))
    }

    /// One test: the generator is the process's, shared by the threads of
    /// `cargo test`.
    #[test]
    fn a_restored_state_draws_the_same_numbers_again_and_a_bad_one_is_refused() {
        tch::manual_seed(5);
        let _ = randn(17);
        let state = RngState::capture().unwrap();
        let first = randn(64);
        let next = Tensor::rand([64], (Kind::Float, Device::Cpu));
        assert!(!first.equal(&randn(64)));
        state.restore().unwrap();
        assert!(first.equal(&randn(64)));
        assert!(next.equal(&Tensor::rand([64], (Kind::Float, Device::Cpu))));

        // Through a checkpoint.
        let mut w = CheckpointWriter::new().unwrap();
        state.save(&mut w, "rng.ot").unwrap();
        let path = w.file_path("not-rng.ot").unwrap();
        Tensor::save_multi(&[("cpu", &Tensor::from_slice(&[1.0f32, 2.0]))], &path).unwrap();
        let dir = std::env::temp_dir().join(format!("rayforge-rng-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = w.commit(&dir, 1, &Default::default(), "test").unwrap();
        let loaded = RngState::load(&c, "rng.ot").unwrap();
        assert_eq!(loaded, state);
        tch::manual_seed(1);
        loaded.restore().unwrap();
        assert!(first.equal(&randn(64)));
        let err = RngState::load(&c, "not-rng.ot").unwrap_err().to_string();
        assert!(
            err.contains("not-rng.ot") && err.contains("not a random state"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);

        // What the gang's all-gather carries, and garbage refused.
        let many = RngState {
            cpu: vec![7; 300],
            cuda: vec![vec![1; 16], vec![2; 16]],
        };
        assert_eq!(RngState::decode(&many.encode()), Some(many.clone()));
        assert_eq!(RngState::decode(&state.encode()), Some(state.clone()));
        assert_eq!(RngState::decode(&many.encode()[..40]), None);
        assert_eq!(RngState::decode(&[255; 8]), None);

        // A state of the wrong size is refused by libtorch, not applied.
        let bad = RngState {
            cpu: vec![1, 2, 3],
            cuda: Vec::new(),
        };
        let err = bad.restore().unwrap_err().to_string();
        assert!(err.contains("restoring the CPU generator's state"), "{err}");
    }
}
