//! How values become bytes and back.
//!
//! A value is encoded with serde (bincode) into a *payload*, except for large
//! numeric buffers ([`Buffer`]) which are written out of band, 64-byte aligned,
//! after the payload — the same idea as pickle protocol 5. Reading an object
//! that lives in shared memory then hands out [`Buffer`]s that point straight
//! into the mapped store: no copy, however many readers.
//!
//! Layout: `b"RFO1" | n_buffers u32 | payload_len u64 | (offset u64, len u64)* |
//! payload | padding | buffer 0 | padding | buffer 1 ...`

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::ids::ObjectId;

const MAGIC: &[u8; 4] = b"RFO1";
const ALIGN: usize = 64;
const FIXED_HEADER: usize = 16;

/// Anything that can be a task argument, a return value or a stored object.
pub trait Value: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> Value for T {}

/// Immutable bytes of an object: an inline vector or a read-only mapping of
/// the shared-memory store. Cheap to clone.
#[derive(Clone)]
pub struct ObjectBytes {
    backing: Arc<dyn AsRef<[u8]> + Send + Sync>,
    mapped: bool,
}

impl ObjectBytes {
    /// Wraps owned bytes.
    pub fn from_vec(v: Vec<u8>) -> ObjectBytes {
        ObjectBytes {
            backing: Arc::new(v),
            mapped: false,
        }
    }

    /// Wraps a mapping of the shared-memory store.
    pub(crate) fn from_mapping(m: impl AsRef<[u8]> + Send + Sync + 'static) -> ObjectBytes {
        ObjectBytes {
            backing: Arc::new(m),
            mapped: true,
        }
    }

    /// A weak reference, for caches that must not keep mappings alive.
    pub(crate) fn downgrade(&self) -> WeakObjectBytes {
        WeakObjectBytes {
            backing: Arc::downgrade(&self.backing),
            mapped: self.mapped,
        }
    }

    /// Whether these bytes are a mapping of the shared-memory store.
    pub fn is_mapped(&self) -> bool {
        self.mapped
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        (*self.backing).as_ref()
    }
}

/// A weak [`ObjectBytes`].
pub(crate) struct WeakObjectBytes {
    backing: std::sync::Weak<dyn AsRef<[u8]> + Send + Sync>,
    mapped: bool,
}

impl WeakObjectBytes {
    pub(crate) fn upgrade(&self) -> Option<ObjectBytes> {
        self.backing.upgrade().map(|backing| ObjectBytes {
            backing,
            mapped: self.mapped,
        })
    }
}

/// An immutable, cheaply cloneable array of plain numbers (`u8`, `f32`, `f64`,
/// ...). Stored out of band in objects, so reading it from the shared-memory
/// store costs no copy: every reader sees the same physical pages.
///
/// ```
/// let b = rayforge::Buffer::from(vec![1.0f64, 2.0, 3.0]);
/// assert_eq!(b.iter().sum::<f64>(), 6.0);
/// ```
pub struct Buffer<T: bytemuck::Pod> {
    owner: Arc<dyn Send + Sync>,
    ptr: *const T,
    len: usize,
    shared: bool,
    _t: PhantomData<T>,
}

// SAFETY: the data is immutable and kept alive by `owner`, which is Send+Sync.
unsafe impl<T: bytemuck::Pod> Send for Buffer<T> {}
// SAFETY: as above; only shared references are ever handed out.
unsafe impl<T: bytemuck::Pod> Sync for Buffer<T> {}

impl<T: bytemuck::Pod> Clone for Buffer<T> {
    fn clone(&self) -> Self {
        Buffer {
            owner: self.owner.clone(),
            ptr: self.ptr,
            len: self.len,
            shared: self.shared,
            _t: PhantomData,
        }
    }
}

impl<T: bytemuck::Pod + Send + Sync> From<Vec<T>> for Buffer<T> {
    fn from(v: Vec<T>) -> Self {
        let v = Arc::new(v);
        let ptr = v.as_ptr();
        let len = v.len();
        Buffer {
            owner: v,
            ptr,
            len,
            shared: false,
            _t: PhantomData,
        }
    }
}

/// Buffers this large get their own mapping with huge pages requested.
const HUGE_BUFFER: usize = 4 << 20;

impl<T: bytemuck::Pod + Send + Sync> Buffer<T> {
    /// A buffer of `len` zeros.
    ///
    /// ```
    /// let z = rayforge::Buffer::<f32>::zeros(1000);
    /// assert!(z.len() == 1000 && z.iter().all(|x| *x == 0.0));
    /// ```
    pub fn zeros(len: usize) -> Buffer<T> {
        Self::build(len, |_| {})
    }

    /// A buffer of `len` elements, zeroed and then filled in place by `fill`.
    /// Large buffers (4 MiB and up) come from their own anonymous mapping
    /// with transparent huge pages requested, as NumPy does for large arrays:
    /// creating, filling and storing one faults once per 2 MiB rather than
    /// once per 4 KiB, which makes a `put` of a fresh array several times
    /// faster.
    ///
    /// ```
    /// let b = rayforge::Buffer::<u64>::build(5, |s| {
    ///     for (i, x) in s.iter_mut().enumerate() {
    ///         *x = i as u64 * 10;
    ///     }
    /// });
    /// assert_eq!(&b[..], &[0, 10, 20, 30, 40]);
    /// ```
    pub fn build(len: usize, fill: impl FnOnce(&mut [T])) -> Buffer<T> {
        let bytes = len.saturating_mul(std::mem::size_of::<T>());
        if bytes >= HUGE_BUFFER {
            if let Ok(mut map) = memmap2::MmapOptions::new().len(bytes).map_anon() {
                // Only advice: without huge pages the buffer still works.
                let _ = map.advise(memmap2::Advice::HugePage);
                // An anonymous mapping is page-aligned (so aligned for any
                // Pod type) and zero-filled, which is a valid T for Pod.
                fill(bytemuck::cast_slice_mut(&mut map[..]));
                let ptr = map.as_ptr() as *const T;
                return Buffer {
                    owner: Arc::new(map),
                    ptr,
                    len,
                    shared: false,
                    _t: PhantomData,
                };
            }
        }
        let mut v = vec![T::zeroed(); len];
        fill(&mut v);
        Buffer::from(v)
    }
}

impl<T: bytemuck::Pod> std::ops::Deref for Buffer<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: ptr/len describe memory owned by `owner`, aligned for T
        // (checked on construction), immutable for the buffer's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<T: bytemuck::Pod + std::fmt::Debug> std::fmt::Debug for Buffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer(len={})", self.len)
    }
}

impl<T: bytemuck::Pod + PartialEq> PartialEq for Buffer<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: bytemuck::Pod> Buffer<T> {
    /// The contents as raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        bytemuck::cast_slice(self)
    }

    /// The address of the first element: two buffers with the same address
    /// share memory (used by tests to prove zero-copy reads).
    pub fn as_ptr(&self) -> *const T {
        self.ptr
    }

    /// Whether this buffer points into a shared-memory object rather than
    /// process-private memory.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    fn from_object(bytes: &ObjectBytes, offset: usize, byte_len: usize) -> Result<Buffer<T>> {
        let size = std::mem::size_of::<T>().max(1);
        let all = bytes.as_slice();
        if offset.checked_add(byte_len).is_none_or(|end| end > all.len()) || !byte_len.is_multiple_of(size) {
            return Err(Error::Serialization {
                what: std::any::type_name::<Buffer<T>>().into(),
                message: format!("buffer [{offset}, +{byte_len}) out of range or misaligned"),
            });
        }
        let ptr = all[offset..].as_ptr();
        if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
            return Err(Error::Serialization {
                what: std::any::type_name::<Buffer<T>>().into(),
                message: "buffer not aligned".into(),
            });
        }
        let owner: Arc<dyn Send + Sync> = Arc::new(SharedOwner(bytes.clone()));
        Ok(Buffer {
            owner,
            ptr: ptr as *const T,
            len: byte_len / size,
            shared: bytes.is_mapped(),
            _t: PhantomData,
        })
    }
}

impl Buffer<u8> {
    /// Bytes held by `owner` (an Arrow buffer, `bytes::Bytes`, a vector...),
    /// viewed without a copy: the buffer keeps `owner` alive.
    ///
    /// ```
    /// let b = rayforge::Buffer::from_bytes_owner(b"hello".to_vec().into_boxed_slice());
    /// assert_eq!(&b[..], b"hello");
    /// ```
    pub fn from_bytes_owner<O: AsRef<[u8]> + Send + Sync + 'static>(owner: O) -> Buffer<u8> {
        let owner = Arc::new(owner);
        // The bytes live wherever `owner` keeps them; inside the Arc they
        // never move.
        let bytes = (*owner).as_ref();
        let (ptr, len) = (bytes.as_ptr(), bytes.len());
        Buffer {
            owner,
            ptr,
            len,
            shared: false,
            _t: PhantomData,
        }
    }
}

/// Bytes made of several pieces, stored as one contiguous out-of-band buffer:
/// the pieces are copied once, straight into the object (no staging copy
/// that concatenates them first). Reads back as a [`Buffer<u8>`].
///
/// ```
/// use rayforge::{Buffer, Concat};
/// let parts = Concat::new(vec![Buffer::from(b"ab".to_vec()), Buffer::from(b"cd".to_vec())]);
/// assert_eq!(parts.len(), 4);
/// ```
#[derive(Clone, Default)]
pub struct Concat {
    parts: Vec<Buffer<u8>>,
}

impl Concat {
    /// The pieces, in order.
    pub fn new(parts: Vec<Buffer<u8>>) -> Concat {
        Concat { parts }
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Serialize for Concat {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let idx = ENCODE.with(|c| {
            c.borrow_mut().as_mut().map(|ctx| {
                ctx.buffers
                    .push(self.parts.iter().map(|p| (p.owner.clone(), p.ptr, p.len)))
            })
        });
        match idx {
            // Read back exactly as a `Buffer<u8>` is.
            Some(i) => s.serialize_u32(i),
            None => {
                let mut all = Vec::with_capacity(self.len());
                for p in &self.parts {
                    all.extend_from_slice(p);
                }
                s.serialize_bytes(&all)
            }
        }
    }
}

/// Keeps an object's bytes alive under a Buffer view.
struct SharedOwner(#[allow(dead_code)] ObjectBytes);

/// A reference found inside a value while encoding it.
#[derive(Clone)]
pub(crate) struct ContainedRef {
    pub(crate) id: ObjectId,
    pub(crate) owner_addr: String,
    /// Keeps the reference alive while the value holding it exists.
    #[allow(dead_code)]
    pub(crate) handle: Option<Arc<dyn Send + Sync>>,
}

/// A piece of an out-of-band buffer: memory kept alive by the owner beside it.
type Segment = (Arc<dyn Send + Sync>, *const u8, usize);

/// The out-of-band buffers of a value being encoded: each buffer is a run
/// of segments laid out back to back (most buffers have one).
#[derive(Default)]
struct OutBuffers {
    segments: Vec<Segment>,
    /// Per buffer: its first segment, its number of segments, its length.
    buffers: Vec<(usize, usize, usize)>,
}

impl OutBuffers {
    /// Adds a buffer made of `parts`; returns its index.
    fn push(&mut self, parts: impl IntoIterator<Item = Segment>) -> u32 {
        let first = self.segments.len();
        self.segments.extend(parts);
        let len = self.segments[first..].iter().map(|s| s.2).sum();
        self.buffers.push((first, self.segments.len() - first, len));
        self.buffers.len() as u32 - 1
    }

    /// Each buffer's segments.
    fn each(&self) -> impl Iterator<Item = &[Segment]> {
        self.buffers
            .iter()
            .map(|&(first, n, _)| &self.segments[first..first + n])
    }
}

struct EncodeCtx {
    buffers: OutBuffers,
    refs: Vec<ContainedRef>,
}

struct DecodeCtx {
    bytes: ObjectBytes,
    table: Vec<(usize, usize)>,
    refs: Vec<ContainedRef>,
}

thread_local! {
    static ENCODE: RefCell<Option<EncodeCtx>> = const { RefCell::new(None) };
    static DECODE: RefCell<Option<DecodeCtx>> = const { RefCell::new(None) };
}

/// A value encoded but not yet laid out: the payload plus its out-of-band
/// buffers, so a large value can be written straight into shared memory.
pub struct Encoded {
    head: Vec<u8>,
    buffers: OutBuffers,
    pub(crate) refs: Vec<ContainedRef>,
    total: usize,
}

// SAFETY: the raw pointers point into memory kept alive by the Arcs beside them.
unsafe impl Send for Encoded {}

/// Buffers this large are copied on several threads by
/// [`Encoded::write_to_threads`].
pub(crate) const PARALLEL_COPY_MIN: usize = 32 << 20;
/// The unit of work of a parallel copy.
const COPY_CHUNK: usize = 4 << 20;

/// Copies each `(offset, source)` into `out` at its offset, in chunks that
/// `threads` threads take in turn. The ranges must not overlap.
fn copy_in_parallel(out: &mut [u8], copies: &[(usize, &[u8])], threads: usize) {
    let chunks: Vec<(usize, &[u8])> = copies
        .iter()
        .flat_map(|&(at, src)| {
            src.chunks(COPY_CHUNK)
                .enumerate()
                .map(move |(i, c)| (at + i * COPY_CHUNK, c))
        })
        .collect();
    for &(at, c) in &chunks {
        assert!(at + c.len() <= out.len(), "copy out of bounds");
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    // The address as an integer: each chunk writes its own range (checked
    // in bounds above, disjoint by the caller's contract).
    let base = out.as_mut_ptr() as usize;
    let work = || loop {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(&(at, c)) = chunks.get(i) else { break };
        // SAFETY: `at..at + c.len()` lies inside `out` (asserted above), no
        // other chunk writes it, and `out` outlives the scope below.
        unsafe { std::ptr::copy_nonoverlapping(c.as_ptr(), (base as *mut u8).add(at), c.len()) };
    };
    std::thread::scope(|s| {
        for _ in 1..threads.min(chunks.len()) {
            s.spawn(work);
        }
        work();
    });
}

fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

impl Encoded {
    /// Total size of the laid-out object in bytes.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether the object is empty (never: the header is always there).
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Writes the object into `out`, which must be exactly `len()` bytes.
    pub fn write_to(&self, out: &mut [u8]) {
        self.write_to_threads(out, 1);
    }

    /// [`write_to`](Self::write_to), copying buffers of [`PARALLEL_COPY_MIN`]
    /// bytes and more on up to `threads` threads (the calling one included).
    /// One core cannot saturate memory bandwidth with a copy; Ray's store
    /// client copies large objects on several threads too.
    pub(crate) fn write_to_threads(&self, out: &mut [u8], threads: usize) {
        debug_assert_eq!(out.len(), self.total);
        out[..self.head.len()].copy_from_slice(&self.head);
        let mut pos = align_up(self.head.len());
        let n = out.len();
        out[self.head.len()..pos.min(n)].fill(0);
        let mut large: Vec<(usize, &[u8])> = Vec::new();
        for segments in self.buffers.each() {
            for (_, ptr, len) in segments {
                // SAFETY: ptr/len come from a live Buffer whose owner we hold.
                let src = unsafe { std::slice::from_raw_parts(*ptr, *len) };
                if threads > 1 && *len >= PARALLEL_COPY_MIN {
                    large.push((pos, src));
                } else {
                    out[pos..pos + len].copy_from_slice(src);
                }
                pos += len;
            }
            let next = align_up(pos);
            let n = out.len();
            out[pos..next.min(n)].fill(0);
            pos = next;
        }
        if !large.is_empty() {
            copy_in_parallel(out, &large, threads);
        }
    }

    /// Streams the laid-out object to a writer (one copy, no staging).
    pub(crate) fn write_into(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        const ZEROS: [u8; ALIGN] = [0; ALIGN];
        w.write_all(&self.head)?;
        let mut pos = self.head.len();
        for segments in self.buffers.each() {
            let pad = align_up(pos) - pos;
            w.write_all(&ZEROS[..pad])?;
            pos += pad;
            for (_, ptr, len) in segments {
                // SAFETY: ptr/len come from a live Buffer whose owner we hold.
                let src = unsafe { std::slice::from_raw_parts(*ptr, *len) };
                w.write_all(src)?;
                pos += len;
            }
        }
        let pad = self.total.saturating_sub(pos);
        w.write_all(&ZEROS[..pad.min(ALIGN)])?;
        Ok(())
    }

    /// Lays the object out in a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.total];
        self.write_to(&mut v);
        v
    }
}

/// Encodes a value.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Encoded> {
    let prev = ENCODE.with(|c| {
        c.borrow_mut().replace(EncodeCtx {
            buffers: OutBuffers::default(),
            refs: Vec::new(),
        })
    });
    // One pass only (`bincode::serialize` would run a sizing pass first,
    // registering every out-of-band buffer twice).
    let mut payload = Vec::new();
    let payload = bincode::serialize_into(&mut payload, value).map(|()| payload);
    let ctx = ENCODE.with(|c| std::mem::replace(&mut *c.borrow_mut(), prev));
    let payload = payload.map_err(|e| Error::Serialization {
        what: std::any::type_name::<T>().into(),
        message: e.to_string(),
    })?;
    let ctx = ctx.ok_or_else(|| Error::Internal("encode context vanished".into()))?;
    let n = ctx.buffers.buffers.len();
    let head_len = FIXED_HEADER + 16 * n + payload.len();
    let mut head = Vec::with_capacity(head_len);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&(n as u32).to_le_bytes());
    head.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let mut pos = align_up(head_len);
    for (_, _, len) in &ctx.buffers.buffers {
        head.extend_from_slice(&(pos as u64).to_le_bytes());
        head.extend_from_slice(&(*len as u64).to_le_bytes());
        pos = align_up(pos + len);
    }
    head.extend_from_slice(&payload);
    let total = if n == 0 { head.len() } else { pos };
    Ok(Encoded {
        head,
        buffers: ctx.buffers,
        refs: ctx.refs,
        total,
    })
}

/// Expands `$mac!(T)` for each plain number type whose `Vec` travels out
/// of band (see [`encode_value`]).
macro_rules! for_plain_numbers {
    ($mac:ident) => {
        $mac!(f64);
        $mac!(f32);
        $mac!(i64);
        $mac!(i32);
        $mac!(i16);
        $mac!(i8);
        $mac!(u64);
        $mac!(u32);
        $mac!(u16);
        $mac!(u8);
    };
}

/// Encodes a value the runtime stores or sends (a `put`, an argument, a
/// return value). A `Vec` of plain numbers (`Vec<f64>`, `Vec<u8>`, ...)
/// is laid out as a [`Buffer`] would be: one out-of-band copy of its
/// memory instead of an encode per element. [`decode_value_with_refs`]
/// reads it back; both sides know the type, so both take the same path.
pub(crate) fn encode_value<T: Value>(value: T) -> Result<Encoded> {
    use std::any::{Any, TypeId};
    macro_rules! out_of_band {
        ($p:ty) => {
            if TypeId::of::<T>() == TypeId::of::<Vec<$p>>() {
                let any: Box<dyn Any> = Box::new(value);
                return match any.downcast::<Vec<$p>>() {
                    // Moves the vector into the buffer: no copy here.
                    Ok(v) => encode(&Buffer::from(*v)),
                    Err(_) => Err(Error::Internal("a Vec's type id matched but not its type".into())),
                };
            }
        };
    }
    for_plain_numbers!(out_of_band);
    encode(&value)
}

/// Decodes what [`encode_value`] encoded (a `Vec` of plain numbers is one
/// copy out of the object's memory), with the references found inside.
pub(crate) fn decode_value_with_refs<T: Value>(bytes: &ObjectBytes) -> Result<(T, Vec<ContainedRef>)> {
    use std::any::{Any, TypeId};
    macro_rules! out_of_band {
        ($p:ty) => {
            if TypeId::of::<T>() == TypeId::of::<Vec<$p>>() {
                let (b, refs) = decode_with_refs::<Buffer<$p>>(bytes)?;
                let any: Box<dyn Any> = Box::new(b.to_vec());
                return match any.downcast::<T>() {
                    Ok(v) => Ok((*v, refs)),
                    Err(_) => Err(Error::Internal("a Vec's type id matched but not its type".into())),
                };
            }
        };
    }
    for_plain_numbers!(out_of_band);
    decode_with_refs(bytes)
}

/// Encodes a value straight into a vector.
#[cfg(test)]
pub(crate) fn encode_to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    Ok(encode(value)?.to_vec())
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
}

/// Decodes a value; [`Buffer`]s inside it point into `bytes` (zero-copy).
/// Also returns the object references found inside the value.
pub(crate) fn decode_with_refs<T: DeserializeOwned>(bytes: &ObjectBytes) -> Result<(T, Vec<ContainedRef>)> {
    let bad = |m: &str| Error::Serialization {
        what: std::any::type_name::<T>().into(),
        message: m.into(),
    };
    let b = bytes.as_slice();
    if b.len() < FIXED_HEADER || &b[..4] != MAGIC {
        return Err(bad("not a rayforge object (bad header)"));
    }
    let n = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
    let payload_len = read_u64(b, 8).ok_or_else(|| bad("truncated header"))? as usize;
    let mut table = Vec::with_capacity(n);
    for i in 0..n {
        let off = read_u64(b, FIXED_HEADER + 16 * i).ok_or_else(|| bad("truncated buffer table"))?;
        let len = read_u64(b, FIXED_HEADER + 16 * i + 8).ok_or_else(|| bad("truncated buffer table"))?;
        table.push((off as usize, len as usize));
    }
    let start = FIXED_HEADER + 16 * n;
    let payload = b
        .get(start..start + payload_len)
        .ok_or_else(|| bad("truncated payload"))?;
    let prev = DECODE.with(|c| {
        c.borrow_mut().replace(DecodeCtx {
            bytes: bytes.clone(),
            table,
            refs: Vec::new(),
        })
    });
    let out = bincode::deserialize::<T>(payload);
    let ctx = DECODE.with(|c| std::mem::replace(&mut *c.borrow_mut(), prev));
    let v = out.map_err(|e| match *e {
        bincode::ErrorKind::DeserializeAnyNotSupported => bad(
            "the type (or one inside it) is self-describing (serde_json::Value, an untagged or \
             flattened enum...): wrap it in rayforge::Json to send it",
        ),
        e => bad(&e.to_string()),
    })?;
    Ok((v, ctx.map(|c| c.refs).unwrap_or_default()))
}

/// Decodes a value; see [`decode_with_refs`]. (The runtime decodes through
/// `worker::decode_value`, which also registers the references found.)
#[cfg(test)]
pub(crate) fn decode<T: DeserializeOwned>(bytes: &ObjectBytes) -> Result<T> {
    decode_with_refs(bytes).map(|(v, _)| v)
}

impl<T: bytemuck::Pod> Serialize for Buffer<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let idx = ENCODE.with(|c| {
            c.borrow_mut().as_mut().map(|ctx| {
                ctx.buffers
                    .push([(self.owner.clone(), self.ptr as *const u8, self.as_bytes().len())])
            })
        });
        match idx {
            Some(i) => s.serialize_u32(i),
            None => s.serialize_bytes(self.as_bytes()),
        }
    }
}

impl<'de, T: bytemuck::Pod + Send + Sync> Deserialize<'de> for Buffer<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let in_object = DECODE.with(|c| c.borrow().is_some());
        if in_object {
            let i = u32::deserialize(d)? as usize;
            DECODE.with(|c| {
                let c = c.borrow();
                let ctx = c.as_ref().ok_or_else(|| D::Error::custom("decode context vanished"))?;
                let (off, len) = *ctx
                    .table
                    .get(i)
                    .ok_or_else(|| D::Error::custom("buffer index out of range"))?;
                Buffer::from_object(&ctx.bytes, off, len).map_err(D::Error::custom)
            })
        } else {
            let bytes: Vec<u8> = serde_bytes_vec(d)?;
            if !bytes.len().is_multiple_of(std::mem::size_of::<T>().max(1)) {
                return Err(D::Error::custom("byte length is not a multiple of the element size"));
            }
            let mut v = vec![T::zeroed(); bytes.len() / std::mem::size_of::<T>().max(1)];
            bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(&bytes);
            Ok(Buffer::from(v))
        }
    }
}

fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<u8>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E>(self, v: &[u8]) -> std::result::Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E>(self, v: Vec<u8>) -> std::result::Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> std::result::Result<Vec<u8>, A::Error> {
            let mut v = Vec::new();
            while let Some(b) = a.next_element()? {
                v.push(b);
            }
            Ok(v)
        }
    }
    d.deserialize_byte_buf(V)
}

/// Called by `ObjectRef`'s `Serialize`: records the reference as contained in
/// the value being encoded (so its owner keeps it alive).
pub(crate) fn note_encoded_ref(r: ContainedRef) {
    ENCODE.with(|c| {
        if let Some(ctx) = c.borrow_mut().as_mut() {
            ctx.refs.push(r);
        }
    });
}

/// Called by `ObjectRef`'s `Deserialize`: records a reference found while
/// decoding, so the runtime can register this process as a borrower.
pub(crate) fn note_decoded_ref(r: ContainedRef) {
    DECODE.with(|c| {
        if let Some(ctx) = c.borrow_mut().as_mut() {
            ctx.refs.push(r);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Mixed {
        name: String,
        a: Buffer<f64>,
        b: Buffer<u8>,
        n: i32,
    }

    #[test]
    fn vectors_of_plain_numbers_travel_out_of_band_and_come_back_equal() {
        let v: Vec<f64> = (0..100_000).map(|i| i as f64 * 0.5).collect();
        let enc = encode_value(v.clone()).unwrap();
        // One out-of-band buffer holding the elements' bytes, aligned.
        assert_eq!(enc.buffers.buffers.len(), 1);
        let bytes = ObjectBytes::from_vec(enc.to_vec());
        let (back, refs) = decode_value_with_refs::<Vec<f64>>(&bytes).unwrap();
        assert!(refs.is_empty());
        assert_eq!(back, v);
        let small = encode_value(vec![1u8, 2, 3]).unwrap().to_vec();
        let (back, _) = decode_value_with_refs::<Vec<u8>>(&ObjectBytes::from_vec(small)).unwrap();
        assert_eq!(back, vec![1, 2, 3]);
        let empty = encode_value(Vec::<i32>::new()).unwrap().to_vec();
        let (back, _) = decode_value_with_refs::<Vec<i32>>(&ObjectBytes::from_vec(empty)).unwrap();
        assert!(back.is_empty());
        // Other types keep the element-wise encoding.
        let words = vec!["a".to_string(), "b".to_string()];
        let enc = encode_value(words.clone()).unwrap();
        assert!(enc.buffers.buffers.is_empty());
        let (back, _) = decode_value_with_refs::<Vec<String>>(&ObjectBytes::from_vec(enc.to_vec())).unwrap();
        assert_eq!(back, words);
    }

    #[test]
    fn plain_values_round_trip() {
        let v = (String::from("x"), vec![1u32, 2, 3], Some(4.5f32));
        let bytes = ObjectBytes::from_vec(encode_to_vec(&v).unwrap());
        let back: (String, Vec<u32>, Option<f32>) = decode(&bytes).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn buffers_are_out_of_band_aligned_and_zero_copy() {
        let m = Mixed {
            name: "m".into(),
            a: Buffer::from((0..1000).map(|i| i as f64).collect::<Vec<_>>()),
            b: Buffer::from(vec![7u8; 13]),
            n: -3,
        };
        let bytes = ObjectBytes::from_vec(encode_to_vec(&m).unwrap());
        let back: Mixed = decode(&bytes).unwrap();
        assert_eq!(back, m);
        let base = bytes.as_slice().as_ptr() as usize;
        let p = back.a.as_ptr() as usize;
        assert!(
            p >= base && p < base + bytes.as_slice().len(),
            "buffer must point into the object"
        );
        assert_eq!(p % ALIGN, (base % ALIGN + (p - base)) % ALIGN);
        assert_eq!((p - base) % ALIGN, 0);
        // Two decodes share the same memory.
        let again: Mixed = decode(&bytes).unwrap();
        assert_eq!(again.a.as_ptr(), back.a.as_ptr());
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = decode::<u32>(&ObjectBytes::from_vec(vec![1, 2, 3])).unwrap_err();
        assert!(matches!(err, Error::Serialization { .. }), "{err}");
        let ok = encode_to_vec(&String::from("hello")).unwrap();
        let err = decode::<Vec<u64>>(&ObjectBytes::from_vec(ok[..ok.len() - 2].to_vec())).unwrap_err();
        assert!(err.to_string().contains("Vec<u64>"), "{err}");
    }

    #[test]
    fn a_parallel_write_lays_out_the_same_bytes() {
        // One buffer large enough to be split among threads (and not a
        // whole number of chunks), small ones around it.
        let big: Vec<u8> = (0..PARALLEL_COPY_MIN + COPY_CHUNK / 3)
            .map(|i| (i % 251) as u8)
            .collect();
        let v = (
            String::from("head"),
            Buffer::from(vec![5u8; 13]),
            Buffer::from(big),
            Buffer::from(vec![9u16; 1000]),
        );
        let enc = encode(&v).unwrap();
        let mut one = vec![0xAAu8; enc.len()];
        enc.write_to(&mut one);
        for threads in [2, 3] {
            let mut many = vec![0x55u8; enc.len()];
            enc.write_to_threads(&mut many, threads);
            assert!(one == many, "{threads} threads laid the object out differently");
        }
        let back: (String, Buffer<u8>, Buffer<u8>, Buffer<u16>) = decode(&ObjectBytes::from_vec(one)).unwrap();
        assert_eq!(back.0, "head");
        assert!(back.2.iter().enumerate().all(|(i, x)| *x == (i % 251) as u8));
        assert_eq!(back.2.len(), PARALLEL_COPY_MIN + COPY_CHUNK / 3);
        assert!(back.3.iter().all(|x| *x == 9) && back.3.len() == 1000);
    }

    #[test]
    fn each_buffer_is_written_once() {
        let enc = encode(&Buffer::from(vec![1u8; 4000])).unwrap();
        assert!(enc.len() < 4200, "object of {} bytes for a 4000-byte buffer", enc.len());
    }

    #[test]
    fn empty_buffer_round_trips() {
        let b: Buffer<f32> = Buffer::from(Vec::new());
        let bytes = ObjectBytes::from_vec(encode_to_vec(&b).unwrap());
        let back: Buffer<f32> = decode(&bytes).unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn a_concat_is_stored_as_one_contiguous_buffer() {
        #[derive(Serialize)]
        struct Out(u8, Concat, Buffer<u8>);
        #[derive(Deserialize)]
        struct In(u8, Buffer<u8>, Buffer<u8>);
        let parts = Concat::new(vec![
            Buffer::from(b"abc".to_vec()),
            Buffer::from(Vec::new()),
            Buffer::from_bytes_owner(b"defgh".to_vec()),
        ]);
        let enc = encode(&Out(9, parts.clone(), Buffer::from(vec![5u8; 3]))).unwrap();
        let bytes = ObjectBytes::from_vec(enc.to_vec());
        let mut streamed = Vec::new();
        enc.write_into(&mut streamed).unwrap();
        assert_eq!(streamed, bytes.as_slice(), "both layouts agree");
        let back: In = decode(&bytes).unwrap();
        assert_eq!((back.0, &back.1[..], &back.2[..]), (9, &b"abcdefgh"[..], &[5u8; 3][..]));
        let base = bytes.as_slice().as_ptr() as usize;
        assert_eq!((back.1.as_ptr() as usize - base) % ALIGN, 0, "aligned in the object");
        // Outside an object (plain bincode) it is just the bytes.
        let plain = bincode::serialize(&parts).unwrap();
        let b: Buffer<u8> = bincode::deserialize(&plain).unwrap();
        assert_eq!(&b[..], b"abcdefgh");
        assert_eq!(parts.len(), 8);
    }
}
