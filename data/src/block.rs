//! Blocks: the unit of data. A block is one Arrow record batch; in the object
//! store it is kept in Arrow's IPC format, and a task that reads it gets
//! arrays pointing straight into the shared-memory object (no copy).

use std::ptr::NonNull;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::{IpcWriteOptions, StreamEncoder};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// One Arrow record batch, stored in the object store as Arrow IPC.
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{Int64Array, RecordBatch};
/// let batch = RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![1, 2])) as _)]).unwrap();
/// let block = rayforge_data::Block::new(batch);
/// assert_eq!(block.num_rows(), 2);
/// ```
#[derive(Clone, Debug)]
pub struct Block {
    batch: RecordBatch,
    shared: bool,
}

impl Block {
    /// Wraps a record batch.
    pub fn new(batch: RecordBatch) -> Block {
        Block { batch, shared: false }
    }

    /// An empty block with this schema.
    pub fn empty(schema: SchemaRef) -> Block {
        Block::new(RecordBatch::new_empty(schema))
    }

    /// The record batch.
    pub fn batch(&self) -> &RecordBatch {
        &self.batch
    }

    /// The record batch, by value.
    pub fn into_batch(self) -> RecordBatch {
        self.batch
    }

    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// The schema.
    pub fn schema(&self) -> SchemaRef {
        self.batch.schema()
    }

    /// Whether the arrays point into a shared-memory object (the block was
    /// read from the object store without a copy).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// The block as the pieces of an Arrow IPC stream (buffers 64-byte
    /// aligned): framing and metadata, then the arrays' own buffers
    /// unchanged (no copy), so storing the block copies each byte once,
    /// straight into the object.
    pub(crate) fn to_ipc(&self) -> Result<rayforge::Concat> {
        let opts = IpcWriteOptions::try_new(64, false, arrow::ipc::MetadataVersion::V5)?;
        let mut enc = StreamEncoder::try_new_with_options(&self.batch.schema(), opts)?;
        let mut parts = enc.encode(&self.batch)?;
        parts.extend(enc.finish()?);
        Ok(rayforge::Concat::new(
            parts
                .into_iter()
                .map(|p| rayforge::Buffer::from_bytes_owner(ArrowBytes(p)))
                .collect(),
        ))
    }

    /// Decodes an IPC stream held by `bytes` without copying the arrays.
    pub(crate) fn from_ipc(bytes: rayforge::Buffer<u8>) -> Result<Block> {
        let shared = bytes.is_shared();
        let len = bytes.len();
        let buf = match NonNull::new(bytes.as_ptr() as *mut u8) {
            Some(ptr) if len > 0 => {
                let owner: Arc<dyn arrow::alloc::Allocation> = Arc::new(Owner(std::panic::AssertUnwindSafe(bytes)));
                // SAFETY: `ptr`/`len` describe the immutable bytes kept alive
                // by `owner` (the object-store mapping or a private vector).
                unsafe { arrow::buffer::Buffer::from_custom_allocation(ptr, len, owner) }
            }
            _ => return Err(Error::Arrow("empty block bytes".into())),
        };
        let mut buf = buf;
        // SAFETY: block bytes are only ever made by `to_ipc` from a valid
        // record batch in a process of this program (the object store holds
        // them unchanged), so re-validating them (UTF-8 of every string,
        // offsets) on every read would only cost time.
        let mut dec = unsafe { StreamDecoder::new().with_skip_validation(true) };
        let mut schema: Option<SchemaRef> = None;
        while !buf.is_empty() {
            if let Some(b) = dec.decode(&mut buf)? {
                return Ok(Block { batch: b, shared });
            }
            if schema.is_none() {
                schema = dec.schema();
            }
        }
        dec.finish()?;
        match dec.schema().or(schema) {
            Some(s) => Ok(Block {
                batch: RecordBatch::new_empty(s),
                shared,
            }),
            None => Err(Error::Arrow("block holds no schema".into())),
        }
    }
}

/// An Arrow buffer lent to the object store without a copy.
struct ArrowBytes(arrow::buffer::Buffer);

impl AsRef<[u8]> for ArrowBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// Keeps the bytes under an Arrow buffer alive.
struct Owner(#[allow(dead_code)] std::panic::AssertUnwindSafe<rayforge::Buffer<u8>>);

impl Serialize for Block {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        self.to_ipc().map_err(S::Error::custom)?.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Block {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let bytes = rayforge::Buffer::<u8>::deserialize(d)?;
        Block::from_ipc(bytes).map_err(D::Error::custom)
    }
}

/// What the driver learns about a block without reading it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct BlockMeta {
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
    /// The block's schema, as an empty block.
    pub(crate) schema: Block,
    /// Seconds the task spent making it.
    pub(crate) secs: f64,
}

/// The bytes a batch's columns take, counting only the sliced part of shared buffers.
fn slice_bytes(b: &RecordBatch) -> usize {
    b.columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size())
        })
        .sum()
}

impl BlockMeta {
    pub(crate) fn of(b: &Block, secs: f64) -> BlockMeta {
        BlockMeta {
            rows: b.num_rows() as u64,
            bytes: slice_bytes(&b.batch) as u64,
            schema: Block::empty(b.schema()),
            secs,
        }
    }
}

/// A schema with no fields.
pub(crate) fn empty_schema() -> SchemaRef {
    Arc::new(Schema::empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array, StringArray};

    #[test]
    fn sliced_blocks_with_nulls_and_strings_round_trip() {
        let ids = Int64Array::from((0..1000).map(|i| (i % 7 != 0).then_some(i)).collect::<Vec<_>>());
        let names = StringArray::from((0..1000).map(|i| format!("row-{i}")).collect::<Vec<_>>());
        let batch = RecordBatch::try_from_iter([("id", Arc::new(ids) as _), ("name", Arc::new(names) as _)]).unwrap();
        // Offsets that are not a multiple of 8 exercise bitmap and string-offset slicing.
        for (from, len) in [(0, 1000), (3, 517), (999, 1), (500, 0)] {
            let part = Block::new(batch.slice(from, len));
            let bytes = bincode::serialize(&part).unwrap();
            let back: Block = bincode::deserialize(&bytes).unwrap();
            assert_eq!(back.batch(), part.batch(), "slice {from}+{len}");
            assert_eq!(back.batch().column(0).null_count(), part.batch().column(0).null_count());
        }
    }
}
