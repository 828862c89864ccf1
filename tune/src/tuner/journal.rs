//! The driver's durable state of an experiment, in its storage: the
//! journal every decision is appended to (what `--resume` rebuilds the
//! experiment from, on this machine or another given the same storage),
//! and the lease that keeps a second driver off an experiment that one
//! is running.
//!
//! On a local path the journal is one file, `journal.jsonl`: each event is
//! written as it happens (a killed driver loses nothing it wrote) and the
//! file is fsynced once per batch (the events of one pass of the
//! controller), so a crash of the machine loses at most that batch. A line
//! cut short by a crash is dropped before appending; any other line that
//! does not parse is an error naming it, never skipped. In remote storage
//! (`cluster://`, `s3://`), which has no append, it is a series of
//! segments `journal/NNNNNN.jsonl`, the last rewritten whole at most once a
//! second (and at the end), each at most [`SEGMENT_BYTES`].

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rayforge::storage::Storage;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schedulers::Metrics;
use crate::space::Config;
use crate::tuner::results::TrialStatus;

/// The experiment's journal on a local path, next to its trials'
/// directories.
pub const JOURNAL: &str = "journal.jsonl";

/// The prefix of the journal's segments in remote storage.
const SEGMENTS: &str = "journal/";

/// A remote segment is closed (the next one started) past this size.
pub(crate) const SEGMENT_BYTES: usize = 1 << 20;

/// How often at most a remote journal's last segment is uploaded.
const REMOTE_SYNC_EVERY: Duration = Duration::from_secs(1);

/// The lease's file in the experiment's storage.
const LEASE: &str = "driver.lease";

/// How long a lease holds without being renewed (a driver on another
/// machine that died is taken over after this).
const LEASE_TTL: Duration = Duration::from_secs(60);

/// One line of the journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[allow(missing_docs)]
pub(crate) enum Event {
    /// What the experiment was defined by (its `search.toml`), first:
    /// a resume with another definition is refused.
    Experiment {
        definition: serde_json::Value,
    },
    Suggested {
        trial: String,
        config: Config,
    },
    Result {
        trial: String,
        metrics: Metrics,
        /// The checkpoint committed with it: its path, or its URI in
        /// remote storage.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint: Option<String>,
    },
    Ended {
        trial: String,
        status: TrialStatus,
        stopped_early: bool,
    },
    /// It failed and goes on from its latest checkpoint (or the start);
    /// its later results are dropped.
    Retried {
        trial: String,
        error: String,
    },
    /// The scheduler paused it.
    Paused {
        trial: String,
    },
    /// It was resumed without the scheduler (nothing else could run).
    Unpaused {
        trial: String,
    },
    /// The scheduler decided about the paused trials.
    Decided {
        more_trials_coming: bool,
    },
    /// It took over `from`'s checkpoint with a new config (PBT).
    Exploited {
        trial: String,
        from: String,
        config: Config,
        checkpoint: String,
        /// The iteration of the checkpoint it took.
        #[serde(default)]
        iteration: Option<u64>,
    },
    /// A failed trial runs again on a resume that asked for it.
    Reopened {
        trial: String,
        from_checkpoint: bool,
    },
    /// How long the experiment's drivers have run so far, all of them
    /// together (what a resume's time budget goes on from).
    Clock {
        elapsed_s: f64,
    },
}

/// The journal, appended an event at a time.
pub(crate) struct Journal {
    sink: Sink,
    /// Events appended since the last sync.
    pending: usize,
    /// Whether a sync fsyncs a local journal.
    fsync: bool,
}

enum Sink {
    Local {
        file: std::fs::File,
        path: PathBuf,
    },
    Remote {
        storage: Storage,
        /// The segment being appended to, and its text.
        segment: u32,
        text: String,
        synced: Option<Instant>,
    },
}

impl Journal {
    /// Opens the journal of the experiment in `storage`, with the events
    /// it holds. `fresh`: it must hold none (a new experiment), else it
    /// must hold some (a resume). `fsync`: each sync of a local journal
    /// reaches the disk.
    pub(crate) fn open(storage: &Storage, fresh: bool, fsync: bool) -> Result<(Journal, Vec<Event>)> {
        let exists_error = || {
            Error::config(
                "name",
                None,
                format!(
                    "an experiment exists in {}: resume it (--resume) or choose another name",
                    storage.uri()
                ),
            )
        };
        if let Some(dir) = storage.local_path() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let path = dir.join(JOURNAL);
            let text = match std::fs::read(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(Error::io(&path, e)),
            };
            if fresh && !text.is_empty() {
                return Err(exists_error());
            }
            if !fresh && text.is_empty() {
                return Err(Error::io(&path, "no journal to resume from"));
            }
            let whole = repair_torn_tail(&path, &text)?;
            let events = parse(&path.display().to_string(), &text[..whole])?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            let sink = Sink::Local { file, path };
            return Ok((
                Journal {
                    sink,
                    pending: 0,
                    fsync,
                },
                events,
            ));
        }
        let err = |e: rayforge::Error| Error::Runtime(e.to_string());
        let mut keys: Vec<(u32, String)> = storage
            .list(SEGMENTS)
            .map_err(err)?
            .into_iter()
            .filter_map(|e| {
                let n = e.key.strip_prefix(SEGMENTS)?.strip_suffix(".jsonl")?.parse().ok()?;
                Some((n, e.key))
            })
            .collect();
        keys.sort();
        if fresh && !keys.is_empty() {
            return Err(exists_error());
        }
        if !fresh && keys.is_empty() {
            return Err(Error::io(storage.uri_of(SEGMENTS), "no journal to resume from"));
        }
        let mut events = Vec::new();
        let mut last = (0, String::new());
        for (n, key) in keys {
            let text = storage.read(&key).map_err(err)?.unwrap_or_default();
            events.extend(parse(&storage.uri_of(&key), &text)?);
            last = (n, String::from_utf8_lossy(&text).into_owned());
        }
        let (segment, text) = if last.1.len() >= SEGMENT_BYTES {
            (last.0 + 1, String::new())
        } else {
            last
        };
        let sink = Sink::Remote {
            storage: storage.clone(),
            segment,
            text,
            synced: None,
        };
        Ok((
            Journal {
                sink,
                pending: 0,
                fsync,
            },
            events,
        ))
    }

    /// Appends an event (on a local path, written at once).
    pub(crate) fn append(&mut self, e: &Event) -> Result<()> {
        let mut line = serde_json::to_string(e).map_err(|e| Error::Runtime(e.to_string()))?;
        line.push('\n');
        self.pending += 1;
        match &mut self.sink {
            Sink::Local { file, path } => file.write_all(line.as_bytes()).map_err(|e| Error::io(&*path, e)),
            Sink::Remote { text, .. } => {
                text.push_str(&line);
                Ok(())
            }
        }
    }

    /// Makes the events appended so far durable: fsyncs a local journal;
    /// uploads a remote one's last segment when a second has passed since
    /// the last upload, or `force`. A remote upload that fails is retried
    /// on the next sync (and is an error when forced).
    pub(crate) fn sync(&mut self, force: bool) -> Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        match &mut self.sink {
            Sink::Local { file, path } => {
                if self.fsync {
                    file.sync_data().map_err(|e| Error::io(&*path, e))?;
                }
            }
            Sink::Remote {
                storage,
                segment,
                text,
                synced,
            } => {
                if !force && synced.is_some_and(|t| t.elapsed() < REMOTE_SYNC_EVERY) {
                    return Ok(());
                }
                *synced = Some(Instant::now());
                let key = format!("{SEGMENTS}{segment:06}.jsonl");
                if let Err(e) = storage.put(&key, text.as_bytes()) {
                    if force {
                        return Err(Error::Runtime(format!("writing the journal: {e}")));
                    }
                    tracing::warn!("writing the journal (retried on the next event): {e}");
                    return Ok(());
                }
                if text.len() >= SEGMENT_BYTES {
                    *segment += 1;
                    text.clear();
                }
            }
        }
        self.pending = 0;
        Ok(())
    }
}

/// Drops a last line that a crash cut short (no newline at its end) from
/// the journal at `path`, so the next event starts a line of its own.
/// Returns the length of the whole lines.
fn repair_torn_tail(path: &std::path::Path, text: &[u8]) -> Result<usize> {
    if text.is_empty() || text.ends_with(b"\n") {
        return Ok(text.len());
    }
    let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    tracing::warn!(
        "{}: dropping its last line, cut short when its driver died ({} bytes)",
        path.display(),
        text.len() - whole
    );
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.set_len(whole as u64).map_err(|e| Error::io(path, e))?;
    f.sync_data().map_err(|e| Error::io(path, e))?;
    Ok(whole)
}

/// The events of whole lines of journal text: a line that does not parse
/// is an error naming it.
fn parse(at: &str, text: &[u8]) -> Result<Vec<Event>> {
    let text = std::str::from_utf8(text).map_err(|e| Error::Journal {
        at: at.to_string(),
        line: None,
        message: format!("not UTF-8 ({e})"),
    })?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Journal {
                at: at.to_string(),
                line: Some(i + 1),
                message: format!(
                    "does not parse ({e}): the journal was edited or damaged; \
                     fix or remove the line to resume"
                ),
            })
        })
        .collect()
}

/// The differences between the definition an experiment was started with
/// and the one it is resumed with, as `path: was X, now Y` (at most 5).
pub(crate) fn differences(was: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    fn walk(path: &str, was: &serde_json::Value, now: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value;
        match (was, now) {
            (Value::Object(a), Value::Object(b)) => {
                let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match (a.get(k), b.get(k)) {
                        (Some(x), Some(y)) => walk(&p, x, y, out),
                        (Some(x), None) => out.push(format!("{p}: was {x}, now absent")),
                        (None, Some(y)) => out.push(format!("{p}: was absent, now {y}")),
                        (None, None) => {}
                    }
                }
            }
            (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    walk(&format!("{path}[{i}]"), x, y, out);
                }
            }
            (a, b) if a != b => out.push(format!("{path}: was {a}, now {b}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", was, now, &mut out);
    out.truncate(5);
    out
}

/// The lease of the driver running an experiment: held in its storage,
/// renewed while it runs, released at its end. A driver finds it held by
/// another that is alive (a live process on this machine, or a lease
/// renewed within [`LEASE_TTL`] from another) and stops.
pub(crate) struct Lease {
    storage: Storage,
    mine: LeaseRecord,
    renewed: Instant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LeaseRecord {
    id: String,
    host: String,
    pid: u32,
    /// When it was last renewed (ms since the epoch).
    renewed_ms: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

impl LeaseRecord {
    /// Whether the driver that holds it may still be running.
    fn alive(&self) -> bool {
        if self.host == hostname() && self.pid != 0 {
            // A process that exited but is not reaped yet (a zombie, state
            // Z or X in /proc) is gone too.
            return std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|stat| {
                let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start()).unwrap_or("");
                !state.starts_with('Z') && !state.starts_with('X')
            });
        }
        now_ms().saturating_sub(self.renewed_ms) < LEASE_TTL.as_millis() as u64
    }

    fn describe(&self) -> String {
        format!(
            "the driver with pid {} on {} (lease renewed {} s ago; it lapses {} s after its last renewal)",
            self.pid,
            self.host,
            now_ms().saturating_sub(self.renewed_ms) / 1000,
            LEASE_TTL.as_secs()
        )
    }
}

impl Lease {
    /// Takes the lease of the experiment in `storage` (`name`, for
    /// messages), unless a live driver holds it.
    pub(crate) fn acquire(storage: &Storage, name: &str) -> Result<Lease> {
        let mine = LeaseRecord {
            id: format!("{:016x}", rand::random::<u64>()),
            host: hostname(),
            pid: std::process::id(),
            renewed_ms: now_ms(),
        };
        if let Some(held) = Self::holder(storage)? {
            if held.alive() {
                return Err(Error::Locked {
                    experiment: name.to_string(),
                    holder: held.describe(),
                });
            }
            tracing::info!("taking over experiment {name} from {}", held.describe());
        }
        let mut lease = Lease {
            storage: storage.clone(),
            mine,
            renewed: Instant::now(),
        };
        lease.write()?;
        // Two drivers starting at once: the one whose record stayed wins.
        match Self::holder(storage)? {
            Some(h) if h.id != lease.mine.id => Err(Error::Locked {
                experiment: name.to_string(),
                holder: h.describe(),
            }),
            _ => Ok(lease),
        }
    }

    fn holder(storage: &Storage) -> Result<Option<LeaseRecord>> {
        let Some(bytes) = storage.read(LEASE).map_err(|e| Error::Runtime(e.to_string()))? else {
            return Ok(None);
        };
        // A lease that does not parse holds nothing (it was cut short).
        Ok(serde_json::from_slice(&bytes).ok())
    }

    fn write(&mut self) -> Result<()> {
        self.mine.renewed_ms = now_ms();
        let bytes = serde_json::to_vec(&self.mine).map_err(|e| Error::Runtime(e.to_string()))?;
        self.storage
            .put(LEASE, &bytes)
            .map_err(|e| Error::Runtime(e.to_string()))?;
        self.renewed = Instant::now();
        Ok(())
    }

    /// Renews the lease when a quarter of its time has passed; an error
    /// when another driver took it meanwhile.
    pub(crate) fn renew(&mut self, name: &str) -> Result<()> {
        if self.renewed.elapsed() < LEASE_TTL / 4 {
            return Ok(());
        }
        match Self::holder(&self.storage)? {
            Some(h) if h.id != self.mine.id => Err(Error::Locked {
                experiment: name.to_string(),
                holder: format!("{} (it took the experiment over from this driver)", h.describe()),
            }),
            _ => self.write(),
        }
    }

    /// Gives the lease up (the experiment ended, or failed).
    pub(crate) fn release(self) {
        // Dropping it releases it.
    }
}

impl Drop for Lease {
    /// A driver that ends, on success or error, gives its lease up (a
    /// killed one cannot: its lease lapses instead).
    fn drop(&mut self) {
        if Self::holder(&self.storage)
            .ok()
            .flatten()
            .is_some_and(|h| h.id == self.mine.id)
        {
            let _ = self.storage.delete(LEASE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayforge::storage::StorageUri;

    fn suggested(i: usize) -> Event {
        Event::Suggested {
            trial: format!("trial_{i:05}"),
            config: Config::new(),
        }
    }

    fn temp(name: &str) -> Storage {
        let dir = std::env::temp_dir().join(format!("tune-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        StorageUri::from(dir.as_path()).open().unwrap()
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_the_next_event_starts_its_own_line() {
        let s = temp("torn");
        let (mut j, events) = Journal::open(&s, true, true).unwrap();
        assert!(events.is_empty());
        j.append(&suggested(0)).unwrap();
        j.sync(false).unwrap();
        drop(j);
        let path = s.local_path().unwrap().join(JOURNAL);
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"event":"suggested","tri"#).unwrap();
        drop(f);
        let (mut j, events) = Journal::open(&s, false, true).unwrap();
        assert_eq!(events.len(), 1);
        j.append(&suggested(1)).unwrap();
        j.sync(false).unwrap();
        let (_, events) = Journal::open(&s, false, true).unwrap();
        assert_eq!(events.len(), 2, "{}", std::fs::read_to_string(&path).unwrap());
    }

    #[test]
    fn an_unparseable_line_is_an_error_naming_it_not_skipped() {
        let s = temp("bad");
        let (mut j, _) = Journal::open(&s, true, true).unwrap();
        j.append(&suggested(0)).unwrap();
        drop(j);
        let path = s.local_path().unwrap().join(JOURNAL);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"event\":\"nonsense\"}\n");
        std::fs::write(&path, &text).unwrap();
        // A new experiment may not start over it either.
        assert!(matches!(Journal::open(&s, true, true), Err(Error::Config { .. })));
        match Journal::open(&s, false, true) {
            Err(Error::Journal { at, line, .. }) => {
                assert_eq!(line, Some(2));
                assert!(at.ends_with(JOURNAL), "{at}");
            }
            other => panic!("{:?}", other.map(|(_, e)| e)),
        }
    }

    #[test]
    fn a_remote_journal_is_segments_read_back_in_order() {
        let s = StorageUri::from(format!("memory://journal-{}", std::process::id()).as_str())
            .open()
            .unwrap();
        let (mut j, _) = Journal::open(&s, true, false).unwrap();
        // Enough events for several segments, each synced.
        let n = 3 * SEGMENT_BYTES / 60;
        for i in 0..n {
            j.append(&suggested(i)).unwrap();
            j.sync(i % 1000 == 0).unwrap();
        }
        j.sync(true).unwrap();
        let segments = s.list(SEGMENTS).unwrap();
        assert!(segments.len() >= 2, "{segments:?}");
        let (mut j, events) = Journal::open(&s, false, false).unwrap();
        assert_eq!(events.len(), n);
        let names: Vec<String> = events
            .iter()
            .map(|e| match e {
                Event::Suggested { trial, .. } => trial.clone(),
                e => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(names[n - 1], format!("trial_{:05}", n - 1));
        assert!(names.windows(2).all(|w| w[0] < w[1]), "in order");
        j.append(&suggested(n)).unwrap();
        j.sync(true).unwrap();
        assert_eq!(Journal::open(&s, false, false).unwrap().1.len(), n + 1);
        // A new experiment may not start over it.
        assert!(matches!(Journal::open(&s, true, false), Err(Error::Config { .. })));
    }

    #[test]
    fn a_live_drivers_lease_keeps_a_second_off_and_a_dead_ones_is_taken_over() {
        let s = temp("lease");
        let first = Lease::acquire(&s, "exp").unwrap();
        match Lease::acquire(&s, "exp") {
            Err(Error::Locked { experiment, holder }) => {
                assert_eq!(experiment, "exp");
                assert!(holder.contains(&std::process::id().to_string()), "{holder}");
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        drop(first);
        let second = Lease::acquire(&s, "exp").unwrap();
        // A holder on this machine whose process is gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = LeaseRecord {
            id: "dead".into(),
            host: hostname(),
            pid,
            renewed_ms: now_ms(),
        };
        s.put(LEASE, &serde_json::to_vec(&dead).unwrap()).unwrap();
        let mut second = second;
        second.renewed = Instant::now() - LEASE_TTL;
        assert!(
            matches!(second.renew("exp"), Err(Error::Locked { .. })),
            "it was taken over"
        );
        let third = Lease::acquire(&s, "exp").unwrap();
        drop(third);
        // One whose process exited but is not reaped yet (a zombie).
        let mut zombie = std::process::Command::new("true").spawn().unwrap();
        let zpid = zombie.id();
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while !std::fs::read_to_string(format!("/proc/{zpid}/stat")).is_ok_and(|t| t.contains(") Z")) {
            assert!(Instant::now() < deadline, "the child never exited");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let z = LeaseRecord {
            id: "zombie".into(),
            host: hostname(),
            pid: zpid,
            renewed_ms: now_ms(),
        };
        assert!(!z.alive(), "a zombie holds no lease");
        zombie.wait().unwrap();
        let third = Lease::acquire(&s, "exp").unwrap();
        // One on another machine, renewed long ago, has lapsed.
        let lapsed = LeaseRecord {
            host: "elsewhere".into(),
            renewed_ms: now_ms() - 2 * LEASE_TTL.as_millis() as u64,
            ..dead
        };
        s.put(LEASE, &serde_json::to_vec(&lapsed).unwrap()).unwrap();
        assert!(Lease::acquire(&s, "exp").is_ok());
        drop(third);
    }

    #[test]
    fn differences_name_each_changed_field() {
        let was = serde_json::json!({"metric": "loss", "param_space": {"lr": {"loguniform": [1e-4, 1e-1]}}});
        let now = serde_json::json!({"metric": "acc", "param_space": {"lr": {"loguniform": [1e-4, 1e-2]}}, "x": 1});
        let d = differences(&was, &now);
        assert_eq!(
            d,
            vec![
                "metric: was \"loss\", now \"acc\"".to_string(),
                "param_space.lr.loguniform[1]: was 0.1, now 0.01".to_string(),
                "x: was absent, now 1".to_string(),
            ]
        );
        assert!(differences(&was, &was).is_empty());
    }
}
