//! Shipping plain functions to other processes of the same program.
//!
//! Every worker runs the driver's own binary, so a plain function (or a
//! closure that captures nothing) is the same code at the same offset from
//! any other function of the binary in every process. A [`FnRef`] carries
//! that offset plus the binary's build id; a process whose binary differs
//! refuses to call it instead of jumping to the wrong code. Libraries use it
//! to run user functions inside generic tasks and actors (rayforge-data's
//! `map_batches`, rayforge-serve's deployments).

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A function of this binary, by position, that any process running the
/// same binary can call.
///
/// ```
/// fn double(x: i64) -> i64 { x * 2 }
///
/// let r = rayforge::FnRef::new(double as fn(i64) -> i64 as usize);
/// // In any process of this program (r serializes with serde):
/// let addr = r.addr().unwrap();
/// // SAFETY: `r` was made from a `fn(i64) -> i64` of this same binary.
/// let f = unsafe { std::mem::transmute::<usize, fn(i64) -> i64>(addr) };
/// assert_eq!(f(21), 42);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FnRef {
    offset: i64,
    build: u64,
}

#[inline(never)]
fn anchor() -> u64 {
    // A body of its own so the function is never merged with another.
    std::hint::black_box(0x7261_7966_6f72_6765)
}

impl FnRef {
    /// Refers to the function at `addr` (a function pointer cast to usize).
    pub fn new(addr: usize) -> FnRef {
        let base = anchor as *const () as usize;
        FnRef {
            offset: addr as i64 - base as i64,
            build: build_id(),
        }
    }

    /// The address of the function in this process.
    pub fn addr(&self) -> Result<usize> {
        if self.build != build_id() {
            return Err(Error::Runtime(
                "a function was sent to a process running a different binary (build ids differ)".into(),
            ));
        }
        let base = anchor as *const () as usize;
        Ok((base as i64 + self.offset) as usize)
    }
}

/// This binary's GNU build id (hashed), or a hash of the executable's size
/// and code layout when it has none.
fn build_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        match std::env::current_exe().ok().and_then(|p| read_build_id(&p)) {
            Some(id) => id.hash(&mut h),
            None => {
                let len = std::env::current_exe()
                    .and_then(std::fs::metadata)
                    .map(|m| m.len())
                    .unwrap_or(0);
                len.hash(&mut h);
                ((anchor as *const () as usize).wrapping_sub(crate::init as *const () as usize)).hash(&mut h);
            }
        }
        h.finish()
    })
}

/// Reads the NT_GNU_BUILD_ID note from the program headers of an ELF64
/// little-endian executable.
fn read_build_id(path: &std::path::Path) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let mut head = vec![0u8; 64];
    f.read_exact(&mut head).ok()?;
    if &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4])) as u64;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let (phoff, phentsize, phnum) = (u64_at(&head, 32), u16_at(&head, 54), u16_at(&head, 56));
    if phentsize < 56 || phnum > 4096 {
        return None;
    }
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    f.seek(SeekFrom::Start(phoff)).ok()?;
    f.read_exact(&mut ph).ok()?;
    for i in 0..phnum as usize {
        let p = &ph[i * phentsize as usize..];
        if u32_at(p, 0) != 4 {
            continue; // not PT_NOTE
        }
        let (off, size) = (u64_at(p, 8), u64_at(p, 32));
        if size > 1 << 20 {
            continue;
        }
        let mut notes = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(off)).ok()?;
        f.read_exact(&mut notes).ok()?;
        let mut at = 0usize;
        while at + 12 <= notes.len() {
            let (namesz, descsz, kind) = (
                u32_at(&notes, at) as usize,
                u32_at(&notes, at + 4) as usize,
                u32_at(&notes, at + 8),
            );
            let name_at = at + 12;
            let desc_at = name_at + namesz.div_ceil(4) * 4;
            let end = desc_at + descsz.div_ceil(4) * 4;
            if end > notes.len() {
                break;
            }
            if kind == 3 && notes[name_at..name_at + namesz].starts_with(b"GNU") {
                return Some(notes[desc_at..desc_at + descsz].to_vec());
            }
            at = end;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(x: i64) -> i64 {
        x * 2
    }

    #[test]
    fn a_function_survives_the_round_trip_through_an_offset() -> Result<()> {
        let r = FnRef::new(double as fn(i64) -> i64 as usize);
        // SAFETY: made from a `fn(i64) -> i64` just above.
        let f = unsafe { std::mem::transmute::<usize, fn(i64) -> i64>(r.addr()?) };
        assert_eq!(f(21), 42);
        let other = FnRef {
            build: r.build ^ 1,
            ..r
        };
        assert!(matches!(other.addr(), Err(Error::Runtime(_))));
        Ok(())
    }

    #[test]
    fn this_test_binary_has_a_build_id() {
        let exe = std::env::current_exe().unwrap();
        let id = read_build_id(&exe).expect("build id note");
        assert!(id.len() >= 8);
    }
}
