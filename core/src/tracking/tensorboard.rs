//! [`TensorBoard`]: TensorBoard event files next to a run's results.
//!
//! The format is TensorFlow's record file of `Event` protocol buffers:
//! each record is its length (u64, little-endian), a masked CRC-32C of the
//! length, the bytes, and a masked CRC-32C of the bytes. The first event
//! names the format version; each report is one event holding a `Summary`
//! with a scalar per metric (`simple_value`), at the report's step.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use super::{Callback, RunEnd, RunInfo};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// `tensorflow.Event` (the fields written here).
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` with a scalar (`simple_value`, a member of
/// the value oneof: the same bytes on the wire as this optional field).
#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

/// CRC-32C (Castagnoli), as TFRecord files check their records.
fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for &b in bytes {
        crc = TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

fn masked_crc(bytes: &[u8]) -> u32 {
    let c = crc32c(bytes);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// One record of an event file.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Where an event file's bytes go.
enum Sink {
    /// A file on this machine, appended to as events come (TensorBoard
    /// follows it live).
    File {
        path: PathBuf,
        file: std::io::BufWriter<std::fs::File>,
    },
    /// Remote storage: the current chunk is rewritten as a whole (at most
    /// every few seconds, and at the end); a chunk past `CHUNK_BYTES` is
    /// closed and the next file begins.
    Remote {
        storage: Storage,
        stem: String,
        chunk: u32,
        buf: Vec<u8>,
        dirty: bool,
        flushed: Instant,
    },
}

const CHUNK_BYTES: usize = 4 << 20;
const REMOTE_FLUSH: Duration = Duration::from_secs(10);

/// One event file being written (a directory may hold several: TensorBoard
/// reads them in name order).
pub struct EventWriter {
    sink: Sink,
}

impl EventWriter {
    /// Starts a new event file in `dir` (a run's results directory in any
    /// [`crate::storage`]), named as TensorBoard expects
    /// (`events.out.tfevents.<time>.<host>...`), with its version event.
    pub fn create(dir: &Storage) -> Result<EventWriter> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let host = crate::node::cluster::hostname();
        let stem = format!(
            "events.out.tfevents.{:010}.{host}.{}.{seq}",
            now_s() as u64,
            std::process::id()
        );
        let sink = match dir.local_path() {
            Some(root) => {
                std::fs::create_dir_all(root).map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
                let path = root.join(&stem);
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
                Sink::File {
                    path,
                    file: std::io::BufWriter::new(file),
                }
            }
            None => Sink::Remote {
                storage: dir.clone(),
                stem,
                chunk: 0,
                buf: Vec::new(),
                dirty: false,
                flushed: Instant::now(),
            },
        };
        let mut w = EventWriter { sink };
        w.event(&Event {
            wall_time: now_s(),
            step: 0,
            what: Some(What::FileVersion("brain.Event:2".into())),
        })?;
        w.flush()?;
        Ok(w)
    }

    /// Writes one event with a scalar per metric at `step` (flushed by
    /// [`EventWriter::flush`]).
    pub fn scalars(&mut self, step: u64, metrics: &BTreeMap<String, f64>) -> Result<()> {
        let value = metrics
            .iter()
            .map(|(tag, v)| SummaryValue {
                tag: tag.clone(),
                simple_value: Some(*v as f32),
            })
            .collect();
        self.event(&Event {
            wall_time: now_s(),
            step: i64::try_from(step).unwrap_or(i64::MAX),
            what: Some(What::Summary(Summary { value })),
        })
    }

    fn event(&mut self, e: &Event) -> Result<()> {
        let bytes = record(&prost::Message::encode_to_vec(e));
        match &mut self.sink {
            Sink::File { path, file } => file
                .write_all(&bytes)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e)),
            Sink::Remote { buf, dirty, .. } => {
                buf.extend_from_slice(&bytes);
                *dirty = true;
                Ok(())
            }
        }
    }

    /// Makes what was written visible: a local file is flushed; a remote
    /// chunk is uploaded when `REMOTE_FLUSH` passed since the last upload
    /// or it is full.
    pub fn flush(&mut self) -> Result<()> {
        self.flush_inner(false)
    }

    /// Flushes everything, now (the end of a run).
    pub fn close(&mut self) -> Result<()> {
        self.flush_inner(true)
    }

    fn flush_inner(&mut self, now: bool) -> Result<()> {
        match &mut self.sink {
            Sink::File { path, file } => file
                .flush()
                .map_err(|e| Error::io(format!("writing {}", path.display()), e)),
            Sink::Remote {
                storage,
                stem,
                chunk,
                buf,
                dirty,
                flushed,
            } => {
                let full = buf.len() >= CHUNK_BYTES;
                if !*dirty || !(now || full || flushed.elapsed() >= REMOTE_FLUSH) {
                    return Ok(());
                }
                storage.put(&format!("{stem}.{chunk:04}"), buf)?;
                *dirty = false;
                *flushed = Instant::now();
                if full {
                    *chunk += 1;
                    buf.clear();
                }
                Ok(())
            }
        }
    }
}

/// The callback that writes a TensorBoard event file into each run's
/// results directory ([`RunInfo::storage`]): Train's run directory, each
/// Tune trial's directory (one TensorBoard run per trial), an RLlib run's.
/// `tensorboard --logdir <storage path>` shows them. Train, Tune and RLlib
/// add it unless told not to.
#[derive(Default)]
pub struct TensorBoard {
    runs: Mutex<HashMap<String, EventWriter>>,
}

impl TensorBoard {
    /// The callback.
    pub fn new() -> TensorBoard {
        TensorBoard::default()
    }

    fn with_writer(&self, run: &RunInfo, f: impl FnOnce(&mut EventWriter) -> Result<()>) -> Result<()> {
        let Some(dir) = &run.storage else {
            return Ok(());
        };
        let mut runs = self.runs.lock();
        let key = run.key();
        if !runs.contains_key(&key) {
            runs.insert(key.clone(), EventWriter::create(dir)?);
        }
        // Inserted just above when missing.
        let w = runs.get_mut(&key).expect("the run's writer");
        f(w)
    }
}

impl Callback for TensorBoard {
    fn name(&self) -> &str {
        "TensorBoard"
    }

    /// Each start (a Tune trial's restart too) begins a new event file: a
    /// trial started over from scratch has had its files deleted, and one
    /// going on from a checkpoint reports its steps after it again
    /// (TensorBoard keeps the later ones).
    fn on_start(&self, run: &RunInfo) -> Result<()> {
        if let Some(mut old) = self.runs.lock().remove(&run.key()) {
            // The old file may be gone; what matters now is the new one.
            let _ = old.close();
        }
        self.with_writer(run, |_| Ok(()))
    }

    fn on_report(&self, run: &RunInfo, step: u64, metrics: &BTreeMap<String, f64>) -> Result<()> {
        self.with_writer(run, |w| {
            w.scalars(step, metrics)?;
            w.flush()
        })
    }

    fn on_end(&self, run: &RunInfo, _end: &RunEnd) -> Result<()> {
        match self.runs.lock().remove(&run.key()) {
            Some(mut w) => w.close(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn a_record_frames_its_bytes_with_checked_lengths() {
        let r = record(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[8..12], &masked_crc(&3u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(&r[15..], &masked_crc(b"abc").to_le_bytes());
    }
}
