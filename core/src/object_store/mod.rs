//! The node's shared-memory object store.
//!
//! Each large object is one file in a tmpfs directory (`/dev/shm`), written by
//! the process that creates it and mapped read-only by every process that
//! reads it, so a read costs a page-table update rather than a copy. The node
//! daemon owns the accounting ([`StoreManager`]): a writer first reserves
//! space, which may spill older objects to a disk directory; a reader that
//! finds an object spilled asks the daemon to restore it. Objects are removed
//! when their owner frees them (the last reference is gone).

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use crate::codec::{Encoded, ObjectBytes};
use crate::error::{Error, Result};
use crate::ids::ObjectId;

/// Usage figures of one node's store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes held in shared memory.
    pub used_bytes: u64,
    /// The configured capacity.
    pub capacity_bytes: u64,
    /// Objects held in shared memory.
    pub num_objects: u64,
    /// Bytes currently spilled to disk.
    pub spilled_bytes: u64,
    /// Objects currently spilled to disk.
    pub num_spilled: u64,
    /// Objects spilled since start.
    pub spilled_total: u64,
    /// Objects restored from disk since start.
    pub restored_total: u64,
    /// Object transfers this node sent to other nodes.
    pub transfers_sent: u64,
    /// Reads by other nodes redirected to a node holding a copy.
    pub reads_redirected: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Where {
    Memory,
    Spilled,
}

/// The daemon's side of the store: capacity accounting, spilling, restoring.
pub(crate) struct StoreManager {
    shm_dir: PathBuf,
    spill_dir: PathBuf,
    capacity: u64,
    objects: HashMap<ObjectId, (u64, Where)>,
    /// In-memory objects, oldest first: the spilling order.
    order: VecDeque<ObjectId>,
    stats: StoreStats,
}

/// Path of an object's file in a store directory.
pub(crate) fn object_path(dir: &Path, id: &ObjectId) -> PathBuf {
    dir.join(id.hex())
}

impl StoreManager {
    /// Creates the store's directories.
    pub(crate) fn new(shm_dir: PathBuf, spill_dir: PathBuf, capacity: u64) -> Result<StoreManager> {
        fs::create_dir_all(&shm_dir).map_err(|e| Error::io(format!("creating store dir {}", shm_dir.display()), e))?;
        fs::create_dir_all(&spill_dir)
            .map_err(|e| Error::io(format!("creating spill dir {}", spill_dir.display()), e))?;
        Ok(StoreManager {
            shm_dir,
            spill_dir,
            capacity,
            objects: HashMap::new(),
            order: VecDeque::new(),
            stats: StoreStats {
                capacity_bytes: capacity,
                ..Default::default()
            },
        })
    }

    /// The directory writers and readers use.
    #[cfg(test)]
    pub(crate) fn dir(&self) -> &Path {
        &self.shm_dir
    }

    /// Whether the store holds the object (in memory or spilled).
    pub(crate) fn contains(&self, id: &ObjectId) -> bool {
        self.objects.contains_key(id)
    }

    /// Reserves `size` bytes for a new object, spilling the oldest objects to
    /// disk when the store would go over capacity.
    pub(crate) fn reserve(&mut self, id: ObjectId, size: u64) -> Result<()> {
        if self.objects.contains_key(&id) {
            return Ok(()); // a retried task writing the same return again
        }
        if size > self.capacity {
            return Err(Error::ObjectStoreFull(format!(
                "object {} needs {} bytes but the store's capacity is {} bytes; raise \
                 Config::object_store_memory",
                id.hex(),
                size,
                self.capacity
            )));
        }
        self.make_room(size)?;
        self.objects.insert(id, (size, Where::Memory));
        self.order.push_back(id);
        self.stats.used_bytes += size;
        self.stats.num_objects += 1;
        Ok(())
    }

    fn make_room(&mut self, size: u64) -> Result<()> {
        while self.stats.used_bytes + size > self.capacity {
            let Some(victim) = self.order.pop_front() else {
                return Err(Error::ObjectStoreFull(format!(
                    "{} bytes requested, {} of {} bytes in use and nothing left to spill",
                    size, self.stats.used_bytes, self.capacity
                )));
            };
            if let Err(e) = self.spill(victim) {
                self.order.push_front(victim);
                return Err(e);
            }
        }
        Ok(())
    }

    fn spill(&mut self, id: ObjectId) -> Result<()> {
        let Some((size, Where::Memory)) = self.objects.get(&id).copied() else {
            return Ok(());
        };
        let from = object_path(&self.shm_dir, &id);
        let to = object_path(&self.spill_dir, &id);
        match fs::copy(&from, &to) {
            Ok(_) => {
                let _ = fs::remove_file(&from);
            }
            // Reserved but never written (its writer died): nothing to keep.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                let _ = fs::remove_file(&to);
                return Err(Error::ObjectStoreFull(format!(
                    "spilling object {} to {} failed: {e}",
                    id.hex(),
                    to.display()
                )));
            }
        }
        tracing::debug!(object = %id, size, "spilled object to disk");
        self.objects.insert(id, (size, Where::Spilled));
        self.stats.used_bytes -= size;
        self.stats.num_objects -= 1;
        self.stats.spilled_bytes += size;
        self.stats.num_spilled += 1;
        self.stats.spilled_total += 1;
        Ok(())
    }

    /// Brings a spilled object back into shared memory (spilling others if
    /// needed). A no-op for an object already in memory.
    pub(crate) fn restore(&mut self, id: ObjectId) -> Result<()> {
        let Some((size, place)) = self.objects.get(&id).copied() else {
            return Err(Error::ObjectLost {
                id: id.hex(),
                cause: "not in this node's object store".into(),
            });
        };
        if place == Where::Memory {
            return Ok(());
        }
        self.make_room(size)?;
        let from = object_path(&self.spill_dir, &id);
        let tmp = self.shm_dir.join(format!("{}.restore", id.hex()));
        fs::copy(&from, &tmp).map_err(|e| Error::io(format!("restoring object {} from disk", id.hex()), e))?;
        fs::rename(&tmp, object_path(&self.shm_dir, &id))
            .map_err(|e| Error::io(format!("restoring object {}", id.hex()), e))?;
        let _ = fs::remove_file(&from);
        self.objects.insert(id, (size, Where::Memory));
        self.order.push_back(id);
        self.stats.used_bytes += size;
        self.stats.num_objects += 1;
        self.stats.spilled_bytes -= size;
        self.stats.num_spilled -= 1;
        self.stats.restored_total += 1;
        Ok(())
    }

    /// Deletes an object wherever it is. Readers that mapped it keep their
    /// mapping until they drop it.
    pub(crate) fn free(&mut self, id: ObjectId) {
        let Some((size, place)) = self.objects.remove(&id) else {
            return;
        };
        match place {
            Where::Memory => {
                let _ = fs::remove_file(object_path(&self.shm_dir, &id));
                self.order.retain(|o| *o != id);
                self.stats.used_bytes -= size;
                self.stats.num_objects -= 1;
            }
            Where::Spilled => {
                let _ = fs::remove_file(object_path(&self.spill_dir, &id));
                self.stats.spilled_bytes -= size;
                self.stats.num_spilled -= 1;
            }
        }
    }

    /// Current usage.
    pub(crate) fn stats(&self) -> StoreStats {
        self.stats
    }

    /// Every object held: id, size, and whether it is spilled to disk.
    pub(crate) fn list(&self) -> Vec<(ObjectId, u64, bool)> {
        self.objects
            .iter()
            .map(|(id, (size, at))| (*id, *size, *at == Where::Spilled))
            .collect()
    }
}

/// Writes an encoded object into the store directory: to a temporary name
/// first, renamed into place when complete, so readers never see half an
/// object. Space must have been reserved with the daemon.
pub(crate) fn write_object(dir: &Path, id: &ObjectId, enc: &Encoded) -> Result<()> {
    let path = object_path(dir, id);
    let tmp = dir.join(format!("{}.{}.tmp", id.hex(), std::process::id()));
    let ctx = || format!("writing object {} to {}", id.hex(), tmp.display());
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| Error::io(ctx(), e))?;
    // Plain writes: the kernel copies straight into the tmpfs pages, which
    // is faster than faulting in a fresh mapping and copying into it.
    let mut f = file;
    enc.write_into(&mut f).map_err(|e| Error::io(ctx(), e))?;
    fs::rename(&tmp, &path).map_err(|e| Error::io(ctx(), e))?;
    Ok(())
}

/// Maps an object read-only, or `None` when it is not in shared memory (it
/// was spilled, or not written yet).
pub(crate) fn map_object(dir: &Path, id: &ObjectId) -> Result<Option<ObjectBytes>> {
    let path = object_path(dir, id);
    let file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("opening object {}", path.display()), e)),
    };
    // SAFETY: objects are immutable once renamed into place; nobody writes to
    // them again, deletion only unlinks the name.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(format!("mapping {}", path.display()), e))?;
    Ok(Some(ObjectBytes::from_mmap(map)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode, Buffer};

    fn store(cap: u64) -> (StoreManager, PathBuf) {
        let base = std::env::temp_dir().join(format!("rf-store-test-{}", ObjectId::for_put().hex()));
        let m = StoreManager::new(base.join("shm"), base.join("spill"), cap).unwrap();
        (m, base)
    }

    fn put(m: &mut StoreManager, v: Vec<u8>) -> (ObjectId, usize) {
        let id = ObjectId::for_put();
        let enc = encode(&Buffer::from(v)).unwrap();
        m.reserve(id, enc.len() as u64).unwrap();
        write_object(m.dir(), &id, &enc).unwrap();
        (id, enc.len())
    }

    #[test]
    fn spills_oldest_when_full_and_restores_on_read() {
        let (mut m, base) = store(10_000);
        let (a, _) = put(&mut m, vec![1; 4000]);
        let (b, _) = put(&mut m, vec![2; 4000]);
        let (c, _) = put(&mut m, vec![3; 4000]);
        let s = m.stats();
        assert_eq!(s.num_spilled, 1, "{s:?}");
        assert!(s.used_bytes <= 10_000);
        assert!(
            map_object(m.dir(), &a).unwrap().is_none(),
            "oldest object must be spilled"
        );
        m.restore(a).unwrap();
        let bytes = map_object(m.dir(), &a).unwrap().unwrap();
        let back: Buffer<u8> = decode(&bytes).unwrap();
        assert!(back.iter().all(|x| *x == 1) && back.len() == 4000);
        assert_eq!(m.stats().restored_total, 1);
        // b was spilled to make room for a.
        assert!(map_object(m.dir(), &b).unwrap().is_none());
        for id in [a, b, c] {
            m.free(id);
        }
        let s = m.stats();
        assert_eq!(
            (s.used_bytes, s.spilled_bytes, s.num_objects, s.num_spilled),
            (0, 0, 0, 0)
        );
        assert_eq!(fs::read_dir(base.join("shm")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(base.join("spill")).unwrap().count(), 0);
        let _ = fs::remove_dir_all(base);
    }

    #[test]
    fn object_larger_than_capacity_is_refused_with_sizes() {
        let (mut m, base) = store(1000);
        let err = m.reserve(ObjectId::for_put(), 5000).unwrap_err();
        assert!(matches!(err, Error::ObjectStoreFull(_)));
        assert!(
            err.to_string().contains("5000") && err.to_string().contains("1000"),
            "{err}"
        );
        assert_eq!(m.stats().used_bytes, 0);
        let _ = fs::remove_dir_all(base);
    }

    #[test]
    fn restore_of_unknown_object_is_object_lost() {
        let (mut m, base) = store(1000);
        assert!(matches!(m.restore(ObjectId::for_put()), Err(Error::ObjectLost { .. })));
        let _ = fs::remove_dir_all(base);
    }
}
