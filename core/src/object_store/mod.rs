//! The node's shared-memory object store.
//!
//! Each large object is one file in a tmpfs directory (`/dev/shm`), written by
//! the process that creates it and mapped by every process that reads it, so
//! a read costs a page-table update rather than a copy. The node daemon owns
//! the accounting ([`StoreManager`]): a writer first reserves space, which may
//! spill older objects to a disk directory; a reader that finds an object
//! spilled asks the daemon to restore it. Objects are removed when their owner
//! frees them (the last reference is gone).
//!
//! Memory is recycled the way a pre-allocated arena would be: the file of a
//! freed object that no process still maps goes to a pool, and the next object
//! of a similar size is written over it. Its pages are already resident, so the
//! write is a plain copy instead of a page fault per 4 KiB (about 3x faster).
//! A process keeps its mapping of a file it wrote a large object over, for
//! the next time the file comes back to it: in a steady stream of puts the
//! copy then goes straight into mapped memory, on several threads (see
//! [`write_mapped`]); mappings of files the daemon deleted are let go within
//! a second.
//! Each file opens with a small header holding the object's id, its length and
//! a count of the mappings alive in any process ("pins"): a reader pins the
//! file before using it and unpins when its mapping is dropped; the daemon
//! recycles only a file it can lock at zero pins, so no reader ever sees an
//! object's bytes change.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

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
    /// Bytes of freed objects' memory kept for reuse by new objects (returned
    /// to the system after a few idle seconds, or when the store needs room).
    pub pooled_bytes: u64,
    /// Objects written over a freed object's memory since start.
    pub reused_total: u64,
}

/// Bytes before an object's data in its file: magic, pins, id, length.
pub(crate) const HEADER: usize = 64;
const MAGIC: &[u8; 8] = b"RFSTORE1";
const PINS_AT: usize = 8;
const ID_AT: usize = 16;
const LEN_AT: usize = 32;
/// The pin count of a file being recycled: readers back off.
const LOCKED: i64 = i64::MIN;
/// A pooled file unused this long is given back to the system.
const POOL_IDLE: Duration = Duration::from_secs(10);

/// The header of a new object's file.
fn header(id: &ObjectId, len: u64, pins: i64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[PINS_AT..PINS_AT + 8].copy_from_slice(&pins.to_ne_bytes());
    h[ID_AT..ID_AT + 16].copy_from_slice(&id.0);
    h[LEN_AT..LEN_AT + 8].copy_from_slice(&len.to_ne_bytes());
    h
}

/// The pin counter of a mapped object file.
///
/// # Safety
/// `base` must point at a live shared mapping of at least [`HEADER`] bytes.
unsafe fn pins<'a>(base: *const u8) -> &'a AtomicI64 {
    // SAFETY: the caller guarantees the mapping; PINS_AT is 8-aligned within
    // a page-aligned mapping, as AtomicI64 requires.
    unsafe { &*(base.add(PINS_AT) as *const AtomicI64) }
}

/// Maps the first bytes of a file, for its pin counter.
fn map_header(file: &fs::File) -> std::io::Result<memmap2::MmapRaw> {
    memmap2::MmapOptions::new().len(HEADER).map_raw(file)
}

/// A freed object's file kept for reuse.
struct Pooled {
    name: String,
    file_size: u64,
    since: Instant,
}

/// What the store knows of one object.
#[derive(Clone)]
struct Entry {
    size: u64,
    at: Where,
    /// The pooled file handed to its writer, removed if the writer never
    /// renamed it into place.
    scratch: Option<String>,
    /// A copy pulled from another node (the primary copy lives there):
    /// it does not keep this node busy for the autoscaler.
    copy: bool,
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
    objects: HashMap<ObjectId, Entry>,
    /// In-memory objects, oldest first: the spilling order.
    order: VecDeque<ObjectId>,
    /// Freed objects' files waiting for reuse, oldest first.
    pool: VecDeque<Pooled>,
    pool_seq: u64,
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
            pool: VecDeque::new(),
            pool_seq: 0,
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
    /// disk when the store would go over capacity. Returns the name of a
    /// pooled file (in the store directory) the writer must write over, when
    /// one fits.
    pub(crate) fn reserve(&mut self, id: ObjectId, size: u64) -> Result<Option<String>> {
        if self.objects.contains_key(&id) {
            return Ok(None); // a retried task writing the same return again
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
        self.trim_pool(Instant::now());
        let scratch = self.take_pooled(size + HEADER as u64);
        self.stats.reused_total += u64::from(scratch.is_some());
        self.make_room(size)?;
        self.objects.insert(
            id,
            Entry {
                size,
                at: Where::Memory,
                scratch: scratch.clone(),
                copy: false,
            },
        );
        self.order.push_back(id);
        self.stats.used_bytes += size;
        self.stats.num_objects += 1;
        Ok(scratch)
    }

    /// Takes the pooled file closest in size to `file_size` (the smallest
    /// that holds it, else the largest), if any.
    fn take_pooled(&mut self, file_size: u64) -> Option<String> {
        let best = self
            .pool
            .iter()
            .enumerate()
            .filter(|(_, p)| p.file_size >= file_size)
            .min_by_key(|(_, p)| p.file_size)
            .or_else(|| self.pool.iter().enumerate().max_by_key(|(_, p)| p.file_size))
            .map(|(i, _)| i)?;
        let p = self.pool.remove(best)?;
        self.stats.pooled_bytes -= p.file_size;
        Some(p.name)
    }

    fn make_room(&mut self, size: u64) -> Result<()> {
        while self.stats.used_bytes + self.stats.pooled_bytes + size > self.capacity {
            if let Some(p) = self.pool.pop_front() {
                self.drop_pooled(p);
                continue;
            }
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

    fn drop_pooled(&mut self, p: Pooled) {
        let _ = fs::remove_file(self.shm_dir.join(&p.name));
        self.stats.pooled_bytes -= p.file_size;
    }

    /// Gives back to the system pooled files unused for a while.
    pub(crate) fn trim_pool(&mut self, now: Instant) {
        while self.pool_has_idle(now) {
            if let Some(p) = self.pool.pop_front() {
                self.drop_pooled(p);
            }
        }
    }

    /// Whether [`trim_pool`](Self::trim_pool) has anything to do.
    pub(crate) fn pool_has_idle(&self, now: Instant) -> bool {
        self.pool
            .front()
            .is_some_and(|p| now.saturating_duration_since(p.since) > POOL_IDLE)
    }

    /// Moves a freed object's file into the pool when no process maps it;
    /// otherwise (or when it is too large to keep) deletes it. Readers that
    /// mapped it keep their mapping until they drop it.
    fn recycle(&mut self, path: &Path) {
        let limit = self.capacity / 2;
        let locked = (|| -> std::io::Result<Option<u64>> {
            let file = fs::OpenOptions::new().read(true).write(true).open(path)?;
            let file_size = file.metadata()?.len();
            if file_size < HEADER as u64 || file_size > limit {
                return Ok(None);
            }
            let map = map_header(&file)?;
            // SAFETY: `map` is a live shared mapping of HEADER bytes.
            let pins = unsafe { pins(map.as_ptr()) };
            Ok(pins
                .compare_exchange(0, LOCKED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
                .then_some(file_size))
        })();
        let Ok(Some(file_size)) = locked else {
            let _ = fs::remove_file(path);
            return;
        };
        while self.stats.pooled_bytes + file_size > limit {
            match self.pool.pop_front() {
                Some(p) => self.drop_pooled(p),
                None => break,
            }
        }
        self.pool_seq += 1;
        let name = format!("pool-{}", self.pool_seq);
        if fs::rename(path, self.shm_dir.join(&name)).is_err() {
            let _ = fs::remove_file(path);
            return;
        }
        self.stats.pooled_bytes += file_size;
        self.pool.push_back(Pooled {
            name,
            file_size,
            since: Instant::now(),
        });
    }

    fn spill(&mut self, id: ObjectId) -> Result<()> {
        let Some(Entry {
            size,
            at: Where::Memory,
            copy,
            ..
        }) = self.objects.get(&id).cloned()
        else {
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
        self.objects.insert(
            id,
            Entry {
                size,
                at: Where::Spilled,
                scratch: None,
                copy,
            },
        );
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
        let Some(Entry { size, at, copy, .. }) = self.objects.get(&id).cloned() else {
            return Err(Error::ObjectLost {
                id: id.hex(),
                cause: "not in this node's object store".into(),
            });
        };
        if at == Where::Memory {
            return Ok(());
        }
        self.make_room(size)?;
        let from = object_path(&self.spill_dir, &id);
        let tmp = self.shm_dir.join(format!("{}.restore", id.hex()));
        let ctx = || format!("restoring object {} from disk", id.hex());
        fs::copy(&from, &tmp).map_err(|e| Error::io(ctx(), e))?;
        // The spilled copy carries the pins its readers held then; the
        // restored file starts unmapped.
        {
            use std::os::unix::fs::FileExt;
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&tmp)
                .map_err(|e| Error::io(ctx(), e))?;
            f.write_all_at(&0i64.to_ne_bytes(), PINS_AT as u64)
                .map_err(|e| Error::io(ctx(), e))?;
        }
        fs::rename(&tmp, object_path(&self.shm_dir, &id))
            .map_err(|e| Error::io(format!("restoring object {}", id.hex()), e))?;
        let _ = fs::remove_file(&from);
        self.objects.insert(
            id,
            Entry {
                size,
                at: Where::Memory,
                scratch: None,
                copy,
            },
        );
        self.order.push_back(id);
        self.stats.used_bytes += size;
        self.stats.num_objects += 1;
        self.stats.spilled_bytes -= size;
        self.stats.num_spilled -= 1;
        self.stats.restored_total += 1;
        Ok(())
    }

    /// Deletes an object wherever it is; its memory goes to the pool when no
    /// process maps it. Readers that mapped it keep their mapping until they
    /// drop it.
    pub(crate) fn free(&mut self, id: ObjectId) {
        let Some(Entry { size, at, scratch, .. }) = self.objects.remove(&id) else {
            return;
        };
        match at {
            Where::Memory => {
                if let Some(name) = scratch {
                    // Still there only when its writer never finished.
                    let _ = fs::remove_file(self.shm_dir.join(name));
                }
                self.recycle(&object_path(&self.shm_dir, &id));
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

    /// Records that `id` is a copy pulled from another node.
    pub(crate) fn mark_copy(&mut self, id: &ObjectId) {
        if let Some(e) = self.objects.get_mut(id) {
            e.copy = true;
        }
    }

    /// How many objects this node holds the primary copy of (made here,
    /// not pulled from elsewhere).
    pub(crate) fn primary_count(&self) -> usize {
        self.objects.values().filter(|e| !e.copy).count()
    }

    /// Current usage.
    pub(crate) fn stats(&self) -> StoreStats {
        self.stats
    }

    /// Every object held: id, size, and whether it is spilled to disk.
    pub(crate) fn list(&self) -> Vec<(ObjectId, u64, bool)> {
        self.objects
            .iter()
            .map(|(id, e)| (*id, e.size, e.at == Where::Spilled))
            .collect()
    }
}

/// A new object's file being written: a fresh temporary file, or a pooled one
/// to write over. Readers cannot see it until [`commit`](Self::commit) renames
/// it into place.
pub(crate) struct NewObject {
    file: fs::File,
    path: PathBuf,
    dest: PathBuf,
    reused: bool,
    id: ObjectId,
}

impl NewObject {
    /// Opens the file for an object of `len` bytes and writes its header;
    /// `reuse` is the pooled file [`StoreManager::reserve`] handed out.
    pub(crate) fn create(dir: &Path, id: &ObjectId, len: u64, reuse: Option<&str>) -> Result<NewObject> {
        let (path, reused) = match reuse {
            // Only a name the daemon made (`pool-N`), never a path.
            Some(name) if !name.is_empty() && !name.contains('/') => (dir.join(name), true),
            _ => (dir.join(format!("{}.{}.tmp", id.hex(), std::process::id())), false),
        };
        let ctx = |e| Error::io(format!("writing object {} to {}", id.hex(), path.display()), e);
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(!reused)
            .truncate(!reused)
            .open(&path)
            .map_err(ctx)?;
        // A pooled file is shrunk or grown to size; its pin count stays
        // LOCKED (so a reader of its previous object still backs off) until
        // the new object is complete.
        file.set_len(HEADER as u64 + len).map_err(ctx)?;
        file.write_all(&header(id, len, if reused { LOCKED } else { 0 }))
            .map_err(ctx)?;
        Ok(NewObject {
            file,
            dest: object_path(dir, id),
            path,
            reused,
            id: *id,
        })
    }

    /// The file, positioned at the start of the object's data.
    pub(crate) fn file(&mut self) -> &mut fs::File {
        &mut self.file
    }

    /// Makes the complete object visible to readers.
    pub(crate) fn commit(self) -> Result<()> {
        let ctx = |e| Error::io(format!("storing object {}", self.id.hex()), e);
        if self.reused {
            let map = map_header(&self.file).map_err(ctx)?;
            // SAFETY: `map` is a live shared mapping of HEADER bytes.
            unsafe { pins(map.as_ptr()) }.store(0, Ordering::Release);
        }
        fs::rename(&self.path, &self.dest).map_err(ctx)
    }

    /// Removes an unfinished object's file.
    pub(crate) fn abort(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Writes an encoded object into the store directory (see [`NewObject`]).
/// Space must have been reserved with the daemon, which named the pooled file
/// to reuse, if any.
pub(crate) fn write_object(dir: &Path, id: &ObjectId, enc: &Encoded, reuse: Option<&str>) -> Result<()> {
    let mut new = NewObject::create(dir, id, enc.len() as u64, reuse)?;
    let written = if new.reused && enc.len() >= MAPPED_WRITE_MIN {
        write_mapped(&new.file, enc)
    } else {
        // Plain writes: the kernel copies straight into the tmpfs pages,
        // which is faster than faulting in a fresh mapping and copying into
        // it.
        enc.write_into(new.file())
    };
    if let Err(e) = written {
        let err = Error::io(format!("writing object {}", id.hex()), e);
        new.abort();
        return Err(err);
    }
    new.commit()
}

/// Objects this large are written over a pooled file through a mapping the
/// writing process keeps (see [`write_mapped`]).
const MAPPED_WRITE_MIN: usize = 1 << 20;
/// How many such mappings a process keeps.
const WRITE_MAPS_MAX: usize = 4;
/// How often a process looks for kept mappings of deleted files.
const WRITE_MAPS_SWEEP: Duration = Duration::from_secs(1);

/// A writer's mapping of a store file, kept for the next object written
/// over the same file.
struct WriteMap {
    /// The file, to tell when the daemon deleted it.
    file: fs::File,
    dev: u64,
    ino: u64,
    map: std::sync::Arc<memmap2::MmapRaw>,
    used: Instant,
}

impl WriteMap {
    /// Whether the mapping is still worth its memory: its file is still in
    /// the store (a deleted file's pages live as long as a mapping does),
    /// and it was used lately.
    fn keep(&self, now: Instant) -> bool {
        use std::os::unix::fs::MetadataExt;
        now.saturating_duration_since(self.used) < POOL_IDLE && self.file.metadata().is_ok_and(|m| m.nlink() > 0)
    }
}

/// This process's kept write mappings, and whether a thread sweeps them.
static WRITE_MAPS: parking_lot::Mutex<(Vec<WriteMap>, bool)> = parking_lot::Mutex::new((Vec::new(), false));

/// Writes an object over a pooled file through a shared mapping.
///
/// The daemon hands out the file of a freed object of a similar size, and in
/// a steady stream of puts the same few files come back again and again. A
/// process keeps its mappings of them: writing through a mapping whose page
/// tables are already filled is a plain memory copy, several times faster
/// than `write(2)` (which looks up and locks each 4 KiB page) or a fresh
/// mapping (which faults on each). Ray's store client keeps its whole arena
/// mapped for the same reason. A kept mapping would hold a deleted file's
/// memory, so a sweeper thread drops mappings of deleted files and idle ones.
fn write_mapped(file: &fs::File, enc: &Encoded) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    let need = HEADER + enc.len();
    let map = {
        let mut guard = WRITE_MAPS.lock();
        let (maps, sweeping) = &mut *guard;
        let now = Instant::now();
        maps.retain(|m| m.keep(now));
        let at = maps.iter().position(|m| m.dev == meta.dev() && m.ino == meta.ino());
        let at = match at {
            Some(i) if maps[i].map.len() >= need => i,
            found => {
                if let Some(i) = found {
                    maps.remove(i); // too short for this object
                }
                if maps.len() >= WRITE_MAPS_MAX {
                    if let Some(lru) = maps.iter().enumerate().min_by_key(|(_, m)| m.used).map(|(i, _)| i) {
                        maps.remove(lru);
                    }
                }
                let map = memmap2::MmapOptions::new().len(need).populate().map_raw(file)?;
                maps.push(WriteMap {
                    file: file.try_clone()?,
                    dev: meta.dev(),
                    ino: meta.ino(),
                    map: std::sync::Arc::new(map),
                    used: now,
                });
                if !*sweeping {
                    *sweeping = std::thread::Builder::new()
                        .name("rf-store-maps".into())
                        .spawn(sweep_write_maps)
                        .is_ok();
                }
                maps.len() - 1
            }
        };
        maps[at].used = now;
        maps[at].map.clone()
    };
    // Asked once: on Linux the answer reads the cgroup's files.
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads = *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)));
    // SAFETY: the mapping covers HEADER + len bytes of the file, whose
    // length is at least that (NewObject::create set it); the daemon handed
    // this file to this writer alone and readers back off it until commit,
    // so nothing else reads or writes these bytes meanwhile. The Arc keeps
    // the mapping alive during the copy.
    let out = unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr().add(HEADER), enc.len()) };
    enc.write_to_threads(out, threads);
    Ok(())
}

/// Drops kept write mappings of deleted files and idle ones, until none is
/// left.
fn sweep_write_maps() {
    loop {
        std::thread::sleep(WRITE_MAPS_SWEEP);
        let mut guard = WRITE_MAPS.lock();
        let (maps, sweeping) = &mut *guard;
        let now = Instant::now();
        maps.retain(|m| m.keep(now));
        if maps.is_empty() {
            *sweeping = false;
            return;
        }
    }
}

/// How many kept write mappings this process holds of a file (by inode).
#[cfg(test)]
fn kept_write_maps(ino: u64) -> usize {
    WRITE_MAPS.lock().0.iter().filter(|m| m.ino == ino).count()
}

/// A pinned mapping of an object's file; unpins when dropped.
struct StoreMapping {
    map: memmap2::MmapRaw,
    len: usize,
}

impl AsRef<[u8]> for StoreMapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: map_object checked HEADER + len <= the mapping's length;
        // the bytes never change while pinned (a file is recycled only at
        // zero pins, and an object is written once, before it is renamed
        // into place).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(HEADER), self.len) }
    }
}

impl Drop for StoreMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is alive until the end of this function.
        unsafe { pins(self.map.as_ptr()) }.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Maps and pins an object, or `None` when it is not in shared memory (it
/// was spilled, freed, or not written yet).
pub(crate) fn map_object(dir: &Path, id: &ObjectId) -> Result<Option<ObjectBytes>> {
    let path = object_path(dir, id);
    let file = match fs::OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("opening object {}", path.display()), e)),
    };
    let bad = |why: &str| Error::Internal(format!("object file {} is damaged: {why}", path.display()));
    let file_len = file
        .metadata()
        .map_err(|e| Error::io(format!("reading object {}", path.display()), e))?
        .len();
    if file_len < HEADER as u64 {
        return Err(bad("shorter than its header"));
    }
    let map = memmap2::MmapOptions::new()
        .map_raw(&file)
        .map_err(|e| Error::io(format!("mapping {}", path.display()), e))?;
    let base = map.as_ptr();
    let field = |at: usize| -> [u8; 8] {
        let mut b = [0u8; 8];
        // SAFETY: the mapping holds at least HEADER bytes (checked above).
        b.copy_from_slice(unsafe { std::slice::from_raw_parts(base.add(at), 8) });
        b
    };
    if &field(0) != MAGIC {
        return Err(bad("no store header"));
    }
    // SAFETY: as above; `map` outlives every use of `pins`.
    let pins = unsafe { pins(base) };
    let mut cur = pins.load(Ordering::Acquire);
    loop {
        if cur < 0 {
            return Ok(None); // being recycled: the object was freed
        }
        match pins.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(now) => cur = now,
        }
    }
    // Pinned: the header cannot change any more; it names the object the
    // file holds now.
    let mut file_id = [0u8; 16];
    file_id[..8].copy_from_slice(&field(ID_AT));
    file_id[8..].copy_from_slice(&field(ID_AT + 8));
    let len = u64::from_ne_bytes(field(LEN_AT));
    if file_id != id.0 {
        // The file was recycled for another object after we opened it.
        pins.fetch_sub(1, Ordering::AcqRel);
        return Ok(None);
    }
    if HEADER as u64 + len > file_len {
        pins.fetch_sub(1, Ordering::AcqRel);
        return Err(bad("shorter than the length in its header"));
    }
    Ok(Some(ObjectBytes::from_mapping(StoreMapping { map, len: len as usize })))
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
        let reuse = m.reserve(id, enc.len() as u64).unwrap();
        write_object(m.dir(), &id, &enc, reuse.as_deref()).unwrap();
        (id, enc.len())
    }

    fn read(m: &StoreManager, id: &ObjectId) -> Option<Vec<u8>> {
        let b = map_object(m.dir(), id).unwrap()?;
        Some(decode::<Buffer<u8>>(&b).unwrap().to_vec())
    }

    fn files(base: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(base.join("shm"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn freed_memory_is_reused_by_the_next_object() {
        let (mut m, base) = store(1 << 20);
        let (a, _) = put(&mut m, vec![1; 50_000]);
        m.free(a);
        let s = m.stats();
        assert_eq!((s.used_bytes, s.num_objects), (0, 0));
        assert!(s.pooled_bytes > 50_000, "{s:?}");
        assert_eq!(files(&base), vec!["pool-1".to_string()]);
        assert_eq!(read(&m, &a), None, "a freed object cannot be read");

        // The next object of a similar size is written over the pooled file.
        let (b, _) = put(&mut m, vec![2; 40_000]);
        assert_eq!(m.stats().pooled_bytes, 0);
        assert_eq!(files(&base), vec![b.hex()]);
        assert_eq!(read(&m, &b), Some(vec![2; 40_000]));
        assert_eq!(read(&m, &a), None);

        // Pooled memory counts against capacity and goes before any spill;
        // idle pooled memory goes back to the system.
        m.free(b);
        assert!(m.stats().pooled_bytes > 0);
        m.trim_pool(Instant::now() + POOL_IDLE * 2);
        assert_eq!(m.stats().pooled_bytes, 0);
        assert!(files(&base).is_empty());
        let _ = fs::remove_dir_all(base);
    }

    #[test]
    fn a_mapped_object_is_never_written_over() {
        let (mut m, base) = store(1 << 20);
        let (a, _) = put(&mut m, vec![7; 50_000]);
        let held = map_object(m.dir(), &a).unwrap().unwrap();
        m.free(a);
        // Still mapped here: deleted, not pooled.
        assert_eq!(m.stats().pooled_bytes, 0);
        let (b, _) = put(&mut m, vec![8; 50_000]);
        assert_eq!(read(&m, &b), Some(vec![8; 50_000]));
        let back: Buffer<u8> = decode(&held).unwrap();
        assert!(back.iter().all(|x| *x == 7) && back.len() == 50_000);
        drop((back, held));

        // Pins are counted per mapping: b pooled only once both are gone.
        let r1 = map_object(m.dir(), &b).unwrap().unwrap();
        let r2 = map_object(m.dir(), &b).unwrap().unwrap();
        drop(r1);
        m.free(b);
        assert_eq!(m.stats().pooled_bytes, 0, "one mapping is still alive");
        drop(r2);
        let (c, _) = put(&mut m, vec![9; 50_000]);
        m.free(c);
        assert!(m.stats().pooled_bytes > 0, "an unmapped object's memory is pooled");
        let _ = fs::remove_dir_all(base);
    }

    fn inode(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn large_objects_are_written_over_pooled_memory_through_a_kept_mapping() {
        let (mut m, base) = store(64 << 20);
        let n = 3 << 20;
        let (a, _) = put(&mut m, vec![1; n]);
        m.free(a);
        let file = inode(&base.join("shm/pool-1"));
        assert_eq!(kept_write_maps(file), 0, "a fresh file is written with write(2)");

        // The next two objects go over the same file, through one mapping.
        let (b, _) = put(&mut m, vec![2; n]);
        assert_eq!(inode(&object_path(m.dir(), &b)), file);
        assert_eq!(kept_write_maps(file), 1);
        assert_eq!(read(&m, &b), Some(vec![2; n]));
        m.free(b);
        let (c, _) = put(&mut m, vec![3; n]);
        assert_eq!(inode(&object_path(m.dir(), &c)), file);
        assert_eq!(kept_write_maps(file), 1, "the mapping is reused, not made again");
        assert_eq!(read(&m, &c), Some(vec![3; n]));
        assert_eq!(m.stats().reused_total, 2);

        // A reader holds c while it is freed: its file is deleted, not
        // pooled, and the next object cannot land on it.
        let held = map_object(m.dir(), &c).unwrap().unwrap();
        m.free(c);
        assert_eq!(m.stats().pooled_bytes, 0);
        let (d, _) = put(&mut m, vec![4; n]);
        assert_eq!(read(&m, &d), Some(vec![4; n]));
        let back: Buffer<u8> = decode(&held).unwrap();
        assert!(back.iter().all(|x| *x == 3) && back.len() == n);
        drop((back, held));

        // The sweeper lets go of the kept mapping of the deleted file, so
        // its memory returns to the system.
        let deadline = Instant::now() + Duration::from_secs(60);
        while kept_write_maps(file) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(kept_write_maps(file), 0, "a deleted file's mapping was kept");
        m.free(d);
        let _ = fs::remove_dir_all(base);
    }

    #[test]
    fn a_writer_that_never_finishes_leaves_nothing_behind() {
        let (mut m, base) = store(1 << 20);
        let (a, _) = put(&mut m, vec![1; 50_000]);
        m.free(a);
        let b = ObjectId::for_put();
        let reuse = m.reserve(b, 50_100).unwrap();
        assert!(reuse.is_some());
        // The writer died before renaming the pooled file into place.
        m.free(b);
        assert!(files(&base).is_empty(), "{:?}", files(&base));
        assert_eq!(m.stats().pooled_bytes + m.stats().used_bytes, 0);
        let _ = fs::remove_dir_all(base);
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
        // Memory either returned or pooled; no object file is left.
        assert!(
            files(&base).iter().all(|f| f.starts_with("pool-")),
            "{:?}",
            files(&base)
        );
        m.trim_pool(Instant::now() + POOL_IDLE * 2);
        assert!(files(&base).is_empty());
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
