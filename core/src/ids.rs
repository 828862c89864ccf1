//! Identifiers of objects, tasks, actors and worker processes.
//!
//! An [`ObjectId`] is 16 bytes: the creating process's nonce (8), a counter
//! unique in that process (4) and a return index (4; 0 for `put`). A task's
//! return ids derive from its task id, so a retried task writes the same ids.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

fn process_nonce() -> u64 {
    static NONCE: OnceLock<u64> = OnceLock::new();
    *NONCE.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // Mix time and pid so two processes started in the same nanosecond
        // still differ.
        let mut x = t ^ ((std::process::id() as u64) << 32) ^ 0x9e37_79b9_7f4a_7c15;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    })
}

fn next_counter() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(1);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A 64-bit id unique in this process (a bijective mix of the process
/// nonce and a counter) and, with overwhelming odds, in the cluster.
pub(crate) fn unique_u64() -> u64 {
    let mut x = process_nonce() ^ (next_counter() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Identifies one object in the cluster.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ObjectId(pub [u8; 16]);

/// Identifies one task (and its retries).
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TaskId(pub [u8; 12]);

/// Identifies one actor across its restarts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ActorId(pub [u8; 12]);

impl TaskId {
    /// A fresh task id.
    pub fn new() -> TaskId {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&process_nonce().to_le_bytes());
        b[8..].copy_from_slice(&next_counter().to_le_bytes());
        TaskId(b)
    }

    /// The id of the `index`-th return value (0-based) of this task.
    pub fn return_id(&self, index: u32) -> ObjectId {
        let mut b = [0u8; 16];
        b[..12].copy_from_slice(&self.0);
        b[12..].copy_from_slice(&index.wrapping_add(1).to_le_bytes());
        ObjectId(b)
    }

    /// Parses wire bytes.
    pub(crate) fn from_bytes(b: &[u8]) -> Option<TaskId> {
        b.try_into().ok().map(TaskId)
    }
}

impl Default for TaskId {
    fn default() -> Self {
        TaskId::new()
    }
}

impl ObjectId {
    /// A fresh id for a `put` object.
    pub fn for_put() -> ObjectId {
        TaskId::new().return_id(u32::MAX)
    }

    /// Parses wire bytes.
    pub(crate) fn from_bytes(b: &[u8]) -> Option<ObjectId> {
        b.try_into().ok().map(ObjectId)
    }

    /// Lower-case hex form, used for file names and messages.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

impl ActorId {
    /// A fresh actor id.
    pub fn new() -> ActorId {
        ActorId(TaskId::new().0)
    }

    /// Parses wire bytes.
    pub(crate) fn from_bytes(b: &[u8]) -> Option<ActorId> {
        b.try_into().ok().map(ActorId)
    }

    /// Parses the hex form listings show (24 hex digits).
    pub fn from_hex(s: &str) -> Option<ActorId> {
        let s = s.trim();
        if s.len() != 24 || !s.is_ascii() {
            return None;
        }
        let mut b = [0u8; 12];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(ActorId(b))
    }
}

impl Default for ActorId {
    fn default() -> Self {
        ActorId::new()
    }
}

/// A fresh 64-bit id for a worker process.
pub(crate) fn new_worker_id() -> u64 {
    process_nonce().rotate_left(17) ^ ((next_counter() as u64) << 1) ^ 1
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

macro_rules! debug_hex {
    ($($t:ident),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($t), hex(&self.0))
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex(&self.0))
            }
        }
    )*};
}
debug_hex!(ObjectId, TaskId, ActorId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_returns_derive_from_task() {
        let a = TaskId::new();
        let b = TaskId::new();
        assert_ne!(a, b);
        assert_eq!(a.return_id(0), a.return_id(0));
        assert_ne!(a.return_id(0), a.return_id(1));
        assert_ne!(ObjectId::for_put(), ObjectId::for_put());
        assert_eq!(ObjectId::from_bytes(&a.return_id(3).0), Some(a.return_id(3)));
        assert_eq!(ObjectId::from_bytes(&[1, 2]), None);
        assert_eq!(a.return_id(0).hex().len(), 32);
    }
}
