//! Collectives among the ranks of a training gang, over TCP: each rank
//! holds one connection to the next rank of a ring and one from the
//! previous, and every operation moves data around that ring.
//!
//! - [`Group::all_reduce`] is a ring all-reduce: a reduce-scatter (each
//!   rank ends up holding the sum of one chunk) then an all-gather (every
//!   rank gets every summed chunk), `2 (n - 1) / n` times the buffer sent
//!   per rank whatever the number of ranks. Each step's chunk is sent in
//!   segments while the previous rank's segments are received and summed
//!   as they arrive. A chunk is always summed in ring order starting from
//!   the same rank, so the result is the same run after run.
//! - [`Group::broadcast`], [`Group::all_gather`] and [`Group::barrier`]
//!   pass data along the same ring.
//!
//! Values are `f32`, `f64`, `i32`, `i64` or `u8` ([`Element`]), each
//! reduced in its own type: integers sum exactly (wrapping on overflow, as
//! libtorch's do), never through a float.
//!
//! Before any data moves, the ranks agree on the call: each passes around
//! the ring what it is calling (the operation, its sequence number among
//! this rank's collectives, the element type, the length and the root). A
//! rank calling a broadcast where another calls an all-reduce, or one that
//! skipped a call, fails every rank with [`Error::Collective`] naming both
//! ranks' calls, never a silent desync. The agreement is itself the
//! barrier: once a rank has seen every other rank's call, all have entered.
//!
//! A peer that dies closes its sockets, so its neighbours' next read or
//! write fails at once; one that hangs trips the group's timeout. Either
//! way the operation returns [`Error::Collective`] naming the rank and what
//! went wrong: a collective never hangs forever.
//!
//! On GPU ranks the tensor collectives go through NCCL instead, in GPU
//! memory ([`Group::init_nccl`], module `nccl`); the ring still carries the
//! communicator's id, and the `f32` buffer collectives and the barrier.
//!
//! Ranks find each other through the cluster's key-value store
//! ([`Group::join`]): each binds a listener on its node's address and
//! publishes it under the run's key; then each connects to the next rank
//! and accepts the previous one. The two prove to each other that they
//! belong to the gang before any data moves: each sends a SHA-256 digest
//! of the attempt's secret (which the driver hands every rank, never sent
//! over the ring) with the run and both ranks. A connection without the
//! right proof (a port scanner, a rank of another run) is closed and the
//! listener goes on waiting for the real one.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How a reduction combines the ranks' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// The sum over ranks.
    Sum,
    /// The sum divided by the number of ranks.
    Mean,
}

impl ReduceOp {
    fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A type of value the collectives move and reduce: `f32`, `f64`, `i32`,
/// `i64` and `u8`, each summed in its own type.
pub trait Element: bytemuck::Pod + Send + Sync + sealed::Sealed {
    /// Its name, as errors say it.
    const NAME: &'static str;
    /// Adds `other` (integers wrap on overflow).
    fn add(&mut self, other: Self);
    /// Divides by the number of ranks (integers round toward zero).
    fn div_ranks(&mut self, n: usize);
}

/// `Element` for `$t`: `$add` sums `a` and `b`, `$div` divides `x` by `n`.
macro_rules! element {
    ($t:ty, |$a:ident, $b:ident| $add:expr, |$x:ident, $n:ident| $div:expr) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const NAME: &'static str = stringify!($t);
            fn add(&mut self, $b: Self) {
                let $a = *self;
                *self = $add;
            }
            fn div_ranks(&mut self, $n: usize) {
                let $x = *self;
                *self = $div;
            }
        }
    };
}

element!(f32, |a, b| a + b, |x, n| x * (1.0 / n as f32));
element!(f64, |a, b| a + b, |x, n| x * (1.0 / n as f64));
// Integers wrap on overflow; with more ranks than the type holds, every
// value is smaller than `n`, so the quotient is 0.
element!(i32, |a, b| a.wrapping_add(b), |x, n| i32::try_from(n)
    .map_or(0, |n| x / n));
element!(i64, |a, b| a.wrapping_add(b), |x, n| i64::try_from(n)
    .map_or(0, |n| x / n));
element!(u8, |a, b| a.wrapping_add(b), |x, n| u8::try_from(n)
    .map_or(0, |n| x / n));

/// What a rank is calling, as the ranks compare it before moving data.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    /// `all_reduce(sum)`, `broadcast`, ...
    op: String,
    /// Its number among this rank's collectives (1 for the first).
    seq: u64,
    /// The element type's name (empty for a barrier).
    elem: &'static str,
    len: u64,
    /// A broadcast's root.
    root: u64,
}

/// The bytes of a [`Call`] on the ring.
const CALL_BYTES: usize = 64;

impl Call {
    fn encode(&self) -> [u8; CALL_BYTES] {
        let mut out = [0u8; CALL_BYTES];
        out[..8].copy_from_slice(&self.seq.to_le_bytes());
        out[8..16].copy_from_slice(&self.len.to_le_bytes());
        out[16..24].copy_from_slice(&self.root.to_le_bytes());
        // Names are short ASCII (ours), NUL-padded.
        for (dst, src) in out[24..48].iter_mut().zip(self.op.bytes()) {
            *dst = src;
        }
        for (dst, src) in out[48..].iter_mut().zip(self.elem.bytes()) {
            *dst = src;
        }
        out
    }

    /// The other rank's call, as this rank describes it.
    fn decode(b: &[u8]) -> Call {
        let word = |r: std::ops::Range<usize>| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[r]);
            u64::from_le_bytes(w)
        };
        let text = |r: std::ops::Range<usize>| String::from_utf8_lossy(&b[r]).trim_end_matches('\0').to_string();
        let elem = match text(48..CALL_BYTES).as_str() {
            "f32" => "f32",
            "f64" => "f64",
            "i32" => "i32",
            "i64" => "i64",
            "u8" => "u8",
            "" => "",
            _ => "an unknown type",
        };
        Call {
            op: text(24..48),
            seq: word(0..8),
            elem,
            len: word(8..16),
            root: word(16..24),
        }
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (collective #{}", self.op, self.seq)?;
        if !self.elem.is_empty() {
            write!(f, ", {} {} values", self.len, self.elem)?;
        }
        if self.op == "broadcast" {
            write!(f, " from rank {}", self.root)?;
        }
        write!(f, ")")
    }
}

/// Bytes sent in one piece within a step of the ring (receivers sum one
/// segment while the next is on its way). A multiple of every
/// [`Element`]'s size.
const SEGMENT_BYTES: usize = 1 << 20;

/// The key-value namespace of rendezvous addresses.
const KV_NAMESPACE: &str = "train";

/// One rank's place in a gang: its connections around the ring.
pub struct Group {
    rank: usize,
    world: usize,
    /// To the next rank (`None` alone in a group of one).
    next: Option<TcpStream>,
    /// From the previous rank.
    prev: Option<TcpStream>,
    timeout: Duration,
    /// The collectives this rank has called, shared by the handles of
    /// [`Group::try_clone`] (they share the ring).
    calls: Arc<AtomicU64>,
    /// The gang's NCCL communicator, on a GPU rank ([`Group::init_nccl`]):
    /// tensor collectives on its device go through it.
    #[cfg(feature = "torch")]
    pub(crate) nccl: Option<Arc<crate::nccl::Nccl>>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .finish()
    }
}

impl Group {
    /// Joins the gang `run` as `rank` of `world`: publishes this rank's
    /// address in the cluster's key-value store, finds the others', and
    /// connects the ring, each link proven with `secret` (the same on every
    /// rank of the run; see the module's docs). `host` is the address this
    /// rank listens on (its node's, from `rayforge::runtime_context`).
    /// Fails after `timeout` if some rank never shows up.
    pub fn join(run: &str, secret: &str, rank: usize, world: usize, host: &str, timeout: Duration) -> Result<Group> {
        if world == 0 || rank >= world {
            return Err(Error::InvalidArgument(format!("rank {rank} of a group of {world}")));
        }
        if world == 1 {
            return Ok(Group {
                rank,
                world,
                next: None,
                prev: None,
                timeout,
                calls: Arc::default(),
                #[cfg(feature = "torch")]
                nccl: None,
            });
        }
        let listener =
            TcpListener::bind((host, 0)).map_err(|e| Error::collective(rank, format!("binding on {host}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::collective(rank, format!("reading the listener's address: {e}")))?;
        let key = |r: usize| format!("{run}/rank{r}");
        rayforge::kv::put(KV_NAMESPACE, &key(rank), addr.to_string().as_bytes(), true)?;
        let next_rank = (rank + 1) % world;
        let deadline = Instant::now() + timeout;
        let next_addr = loop {
            if let Some(a) = rayforge::kv::get(KV_NAMESPACE, &key(next_rank))? {
                break String::from_utf8_lossy(&a).into_owned();
            }
            if Instant::now() >= deadline {
                return Err(Error::collective(
                    rank,
                    format!("rank {next_rank} did not publish its address within {timeout:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // Connect to the next rank while accepting the previous one: every
        // rank does both, so neither may wait for the other first.
        let prev_rank = (rank + world - 1) % world;
        let link = |from: usize, to: usize| Link { secret, run, from, to };
        let (next, prev) = std::thread::scope(|s| {
            let accept = s.spawn(|| accept_within(&listener, &link(prev_rank, rank), deadline));
            let next = connect_within(&next_addr, &link(rank, next_rank), deadline);
            let prev = accept
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the accepting thread panicked")));
            (next, prev)
        });
        let next =
            next.map_err(|e| Error::collective(rank, format!("connecting to rank {next_rank} at {next_addr}: {e}")))?;
        let prev = prev.map_err(|e| Error::collective(rank, format!("waiting for rank {prev_rank}: {e}")))?;
        let mut group = Group {
            rank,
            world,
            next: Some(next),
            prev: Some(prev),
            timeout,
            calls: Arc::default(),
            #[cfg(feature = "torch")]
            nccl: None,
        };
        group.configure()?;
        // Everyone is connected before anyone goes on (and stale addresses
        // of an earlier attempt are never used: the run key names the attempt).
        group.barrier()?;
        Ok(group)
    }

    /// A group over streams already connected (tests, and callers that wire
    /// the ring themselves): `next` goes to rank `rank + 1`, `prev` comes
    /// from rank `rank - 1` (mod `world`).
    pub fn from_streams(
        rank: usize,
        world: usize,
        next: TcpStream,
        prev: TcpStream,
        timeout: Duration,
    ) -> Result<Group> {
        let g = Group {
            rank,
            world,
            next: Some(next),
            prev: Some(prev),
            timeout,
            calls: Arc::default(),
            #[cfg(feature = "torch")]
            nccl: None,
        };
        g.configure()?;
        Ok(g)
    }

    fn configure(&self) -> Result<()> {
        for s in [&self.next, &self.prev].into_iter().flatten() {
            s.set_nodelay(true)
                .and_then(|()| s.set_read_timeout(Some(self.timeout)))
                .and_then(|()| s.set_write_timeout(Some(self.timeout)))
                .map_err(|e| Error::collective(self.rank, format!("configuring a socket: {e}")))?;
        }
        Ok(())
    }

    /// A second handle on the same connections (what a prepared model
    /// keeps to average its gradients). The handles share the ring: use one
    /// at a time, in the same order on every rank.
    pub fn try_clone(&self) -> Result<Group> {
        let dup = |s: &Option<TcpStream>| -> Result<Option<TcpStream>> {
            s.as_ref()
                .map(|s| s.try_clone())
                .transpose()
                .map_err(|e| Error::collective(self.rank, format!("duplicating a connection: {e}")))
        };
        Ok(Group {
            rank: self.rank,
            world: self.world,
            next: dup(&self.next)?,
            prev: dup(&self.prev)?,
            timeout: self.timeout,
            calls: self.calls.clone(),
            #[cfg(feature = "torch")]
            nccl: self.nccl.clone(),
        })
    }

    /// Makes the gang's NCCL communicator on CUDA device `device` (every
    /// rank calls it at the same point, after joining): from then on the
    /// tensor collectives ([`Group::all_reduce_tensor`] and the others) run
    /// through NCCL for tensors on that device, straight from GPU memory.
    /// Fails on every rank, with [`Error::Gpu`], when any rank cannot run
    /// NCCL. The trainer calls it for ranks that use GPUs.
    #[cfg(feature = "torch")]
    pub fn init_nccl(&mut self, device: usize) -> Result<()> {
        let comm = crate::nccl::Nccl::init(self, device)?;
        self.nccl = Some(Arc::new(comm));
        Ok(())
    }

    /// This rank's NCCL communicator, when the group has one: its version,
    /// device and the number of collectives run through it.
    #[cfg(feature = "torch")]
    pub fn nccl(&self) -> Option<crate::nccl::NcclInfo> {
        self.nccl.as_ref().map(|n| n.info())
    }

    /// How long an operation may wait for the other ranks.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How many collectives this rank has called on the ring (all-reduce,
    /// broadcast, all-gather, barrier; through any handle of
    /// [`Group::try_clone`]).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.world
    }

    /// The links to the next and from the previous rank.
    fn links(&mut self) -> Result<(&mut TcpStream, &mut TcpStream)> {
        match (&mut self.next, &mut self.prev) {
            (Some(n), Some(p)) => Ok((n, p)),
            _ => Err(Error::collective(self.rank, "this rank has no ring to send on".into())),
        }
    }

    /// Sends `out` to the next rank while receiving `in_len` bytes from
    /// the previous one, calling `got(offset, bytes)` on each received
    /// segment as it arrives (each segment 8-byte aligned, its offset a
    /// multiple of [`SEGMENT_BYTES`]).
    fn exchange(&mut self, out: &[u8], in_len: usize, mut got: impl FnMut(usize, &[u8])) -> Result<()> {
        let (rank, world) = (self.rank, self.world);
        let (next, prev) = self.links()?;
        std::thread::scope(|s| {
            let sender = s.spawn(move || -> std::io::Result<()> {
                for seg in out.chunks(SEGMENT_BYTES) {
                    next.write_all(seg)?;
                }
                Ok(())
            });
            // Words, so that a segment can be read as any element type.
            let mut words = vec![0u64; SEGMENT_BYTES.min(in_len).div_ceil(8)];
            let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
            let mut at = 0;
            let mut received = Ok(());
            while at < in_len {
                let n = SEGMENT_BYTES.min(in_len - at);
                if let Err(e) = prev.read_exact(&mut buf[..n]) {
                    received = Err(e);
                    break;
                }
                got(at, &buf[..n]);
                at += n;
            }
            let sent = sender
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the sending thread panicked")));
            match (sent, received) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(e), _) => Err(Error::collective(
                    rank,
                    format!("sending to rank {}: {e}", (rank + 1) % world),
                )),
                (_, Err(e)) => Err(Error::collective(
                    rank,
                    format!("receiving from the previous rank: {e}"),
                )),
            }
        })
    }

    /// Reduces `buf` over every rank in place (every rank passes a buffer
    /// of the same type and length and gets the same result). Integers sum
    /// exactly; their [`ReduceOp::Mean`] rounds toward zero.
    pub fn all_reduce<T: Element>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        let n = self.world;
        self.agree(format!("all_reduce({})", op.name()), T::NAME, buf.len(), 0)?;
        if n > 1 {
            let size = std::mem::size_of::<T>();
            let len = buf.len();
            let bounds = |c: usize| (len * c / n, len * (c + 1) / n);
            // Reduce-scatter: after step s, rank r holds the sum of chunk
            // (r - s - 1) over s + 2 ranks; after n - 1 steps, chunk r + 1
            // is complete at rank r.
            for step in 0..n - 1 {
                let send_c = (self.rank + n - step) % n;
                let recv_c = (self.rank + n - step - 1) % n;
                let (s0, s1) = bounds(send_c);
                let (r0, r1) = bounds(recv_c);
                let (send, target) = disjoint(buf, s0..s1, r0..r1);
                self.exchange(bytemuck::cast_slice(send), (r1 - r0) * size, |at, bytes| {
                    let incoming: &[T] = bytemuck::cast_slice(bytes);
                    for (x, y) in target[at / size..at / size + incoming.len()].iter_mut().zip(incoming) {
                        x.add(*y);
                    }
                })?;
            }
            // All-gather: pass the complete chunks around.
            for step in 0..n - 1 {
                let send_c = (self.rank + 1 + n - step) % n;
                let recv_c = (self.rank + n - step) % n;
                let (s0, s1) = bounds(send_c);
                let (r0, r1) = bounds(recv_c);
                let (send, target) = disjoint(buf, s0..s1, r0..r1);
                let target: &mut [u8] = bytemuck::cast_slice_mut(target);
                self.exchange(bytemuck::cast_slice(send), target.len(), |at, bytes| {
                    target[at..at + bytes.len()].copy_from_slice(bytes);
                })?;
            }
        }
        if op == ReduceOp::Mean {
            buf.iter_mut().for_each(|x| x.div_ranks(n));
        }
        Ok(())
    }

    /// Every rank's `buf` becomes rank `root`'s.
    pub fn broadcast<T: Element>(&mut self, buf: &mut [T], root: usize) -> Result<()> {
        let n = self.world;
        if root >= n {
            return Err(Error::InvalidArgument(format!(
                "broadcast root {root} in a group of {n}"
            )));
        }
        self.agree("broadcast".into(), T::NAME, buf.len(), root)?;
        if n == 1 {
            return Ok(());
        }
        // Down the ring from the root: each rank receives, then forwards
        // unless the next one is the root.
        let forward = (self.rank + 1) % n != root;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(buf);
        let rank = self.rank;
        let (next, prev) = self.links()?;
        if rank != root {
            prev.read_exact(bytes)
                .map_err(|e| Error::collective(rank, format!("receiving a broadcast: {e}")))?;
        }
        if forward {
            next.write_all(bytes)
                .map_err(|e| Error::collective(rank, format!("forwarding a broadcast: {e}")))?;
        }
        Ok(())
    }

    /// Every rank's `local` (all of the same type and length), in rank
    /// order.
    pub fn all_gather<T: Element>(&mut self, local: &[T]) -> Result<Vec<T>> {
        let n = self.world;
        let len = local.len();
        self.agree("all_gather".into(), T::NAME, len, 0)?;
        let mut out = vec![T::zeroed(); len * n];
        out[self.rank * len..(self.rank + 1) * len].copy_from_slice(local);
        if n > 1 {
            for step in 0..n - 1 {
                let send_c = (self.rank + n - step) % n;
                let recv_c = (self.rank + n - step - 1) % n;
                let (send, target) = disjoint(
                    &mut out,
                    send_c * len..(send_c + 1) * len,
                    recv_c * len..(recv_c + 1) * len,
                );
                let target: &mut [u8] = bytemuck::cast_slice_mut(target);
                self.exchange(bytemuck::cast_slice(send), target.len(), |at, bytes| {
                    target[at..at + bytes.len()].copy_from_slice(bytes);
                })?;
            }
        }
        Ok(out)
    }

    /// Returns once every rank has called it.
    pub fn barrier(&mut self) -> Result<()> {
        // Seeing every other rank's call means every rank has entered.
        self.agree("barrier".into(), "", 0, 0)
    }

    /// Counts this call and makes the ranks agree on it before any data
    /// moves: each rank's call goes once around the ring, and a rank whose
    /// call differs (another operation, type, length or root, or another
    /// place in the sequence) fails every rank with both calls named.
    fn agree(&mut self, op: String, elem: &'static str, len: usize, root: usize) -> Result<()> {
        let seq = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let n = self.world;
        if n == 1 {
            return Ok(());
        }
        let mine = Call {
            op,
            seq,
            elem,
            len: len as u64,
            root: root as u64,
        };
        let mut carry = mine.encode();
        let mut first_other: Option<(usize, Call)> = None;
        for step in 0..n - 1 {
            let mut got = [0u8; CALL_BYTES];
            self.exchange(&carry, CALL_BYTES, |_, b| got.copy_from_slice(b))
                .map_err(|e| match e {
                    Error::Collective { rank, message } => Error::Collective {
                        rank,
                        message: format!("in {mine}, waiting for the other ranks' calls: {message}"),
                    },
                    e => e,
                })?;
            // At step s the call of rank (r - 1 - s) arrives.
            let from = (self.rank + n - 1 - step) % n;
            let theirs = Call::decode(&got);
            if theirs != mine && first_other.is_none() {
                first_other = Some((from, theirs));
            }
            carry = got;
        }
        if let Some((other, theirs)) = first_other {
            return Err(Error::collective(
                self.rank,
                format!(
                    "the ranks called different collectives: rank {} called {mine}, rank {other} called {theirs} \
                     (every rank must call the same collectives in the same order)",
                    self.rank
                ),
            ));
        }
        Ok(())
    }
}

/// `n` ranks on loopback, each a group of the ring (for tests).
#[cfg(test)]
pub(crate) fn test_ring(n: usize, timeout: Duration) -> Vec<Group> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let nexts: Vec<TcpStream> = (0..n)
        .map(|i| TcpStream::connect(addrs[(i + 1) % n]).unwrap())
        .collect();
    // Listener i was connected to by rank i - 1.
    let prevs: Vec<TcpStream> = listeners.iter().map(|l| l.accept().unwrap().0).collect();
    nexts
        .into_iter()
        .zip(prevs)
        .enumerate()
        .map(|(i, (next, prev))| Group::from_streams(i, n, next, prev, timeout).unwrap())
        .collect()
}

/// One link of the ring, as both its ends name it: what they prove to each
/// other.
struct Link<'a> {
    secret: &'a str,
    run: &'a str,
    /// The connecting rank.
    from: usize,
    /// The accepting rank.
    to: usize,
}

/// The bytes of a proof.
const PROOF_BYTES: usize = 32;

/// How long an accepted connection has to send its proof (the real rank
/// sends it as soon as it connects).
const PROOF_WAIT: Duration = Duration::from_secs(2);

impl Link<'_> {
    /// What one end sends: `hello` from the connecting rank, `welcome`
    /// back from the accepting one.
    fn proof(&self, what: &str) -> [u8; PROOF_BYTES] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for part in [self.secret.as_bytes(), self.run.as_bytes(), what.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update((self.from as u64).to_le_bytes());
        h.update((self.to as u64).to_le_bytes());
        h.finalize().into()
    }
}

/// Reads a proof and checks it against `want`, in time that does not
/// depend on where they differ.
fn read_proof(s: &mut TcpStream, want: &[u8; PROOF_BYTES]) -> std::io::Result<bool> {
    let mut got = [0u8; PROOF_BYTES];
    s.read_exact(&mut got)?;
    Ok(got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0)
}

/// Connects to the next rank and proves the link both ways.
fn connect_within(addr: &str, link: &Link<'_>, deadline: Instant) -> std::io::Result<TcpStream> {
    let mut s = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    s.write_all(&link.proof("hello"))?;
    s.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(PROOF_WAIT)))?;
    if !read_proof(&mut s, &link.proof("welcome"))? {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the peer at this address is not this gang's rank (a wrong proof)",
        ));
    }
    s.set_read_timeout(None)?;
    Ok(s)
}

/// Accepts the previous rank: the first connection that proves the link.
/// Others are closed (and said in the log).
fn accept_within(listener: &TcpListener, link: &Link<'_>, deadline: Instant) -> std::io::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let hello = link.proof("hello");
    loop {
        match listener.accept() {
            Ok((mut s, peer)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(PROOF_WAIT))?;
                match read_proof(&mut s, &hello) {
                    Ok(true) => {
                        s.write_all(&link.proof("welcome"))?;
                        s.set_read_timeout(None)?;
                        return Ok(s);
                    }
                    Ok(false) => tracing::warn!(%peer, rank = link.to, "closed a ring connection with a wrong proof"),
                    Err(e) => tracing::warn!(%peer, rank = link.to, "closed a ring connection that sent no proof: {e}"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no connection from the previous rank",
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The chunk to send and the chunk to receive into, two disjoint ranges
/// of one buffer, borrowed together (sent straight from the buffer, no
/// copy).
fn disjoint<T>(buf: &mut [T], send: std::ops::Range<usize>, recv: std::ops::Range<usize>) -> (&[T], &mut [T]) {
    if send.end <= recv.start {
        let (a, b) = buf.split_at_mut(recv.start);
        (&a[send], &mut b[..recv.end - recv.start])
    } else {
        // The ring never sends and receives the same chunk in one step, so
        // here the received one lies wholly before the sent one.
        let (a, b) = buf.split_at_mut(send.start);
        (&b[..send.end - send.start], &mut a[recv])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::collective::test_ring as ring;

    /// Runs `f` on every rank at once.
    fn each<T: Send>(groups: Vec<Group>, f: impl Fn(&mut Group) -> T + Sync) -> Vec<T> {
        std::thread::scope(|s| {
            let hs: Vec<_> = groups
                .into_iter()
                .map(|mut g| {
                    let f = &f;
                    s.spawn(move || f(&mut g))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn data(rank: usize, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7 + rank * 13) % 101) as f32 * 0.37 - 11.0)
            .collect()
    }

    #[test]
    fn all_reduce_matches_a_plain_sum_and_is_the_same_every_time() {
        for n in [2, 3, 4] {
            // Lengths that do not split evenly, and one spanning segments.
            for len in [1, 10, 1001, 700_003] {
                let inputs: Vec<Vec<f32>> = (0..n).map(|r| data(r, len)).collect();
                let want: Vec<f32> = (0..len)
                    .map(|i| inputs.iter().map(|d| d[i] as f64).sum::<f64>() as f32)
                    .collect();
                let runs: Vec<Vec<Vec<f32>>> = (0..2)
                    .map(|_| {
                        each(ring(n, Duration::from_secs(30)), |g| {
                            let mut buf = data(g.rank(), len);
                            g.all_reduce(&mut buf, ReduceOp::Sum).unwrap();
                            buf
                        })
                    })
                    .collect();
                for out in &runs[0] {
                    assert_eq!(out, &runs[0][0], "every rank gets the same result");
                    for (a, b) in out.iter().zip(&want) {
                        assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "n={n} len={len}: {a} vs {b}");
                    }
                }
                assert_eq!(runs[0], runs[1], "the same bits run after run");
            }
        }
        let means = each(ring(3, Duration::from_secs(30)), |g| {
            let mut buf = vec![g.rank() as f32; 5];
            g.all_reduce(&mut buf, ReduceOp::Mean).unwrap();
            buf
        });
        assert!(means.iter().all(|m| m == &vec![1.0; 5]));
    }

    #[test]
    fn broadcast_all_gather_and_barrier_move_data_around_the_ring() {
        let out = each(ring(3, Duration::from_secs(30)), |g| {
            let mut b = vec![g.rank() as f32; 4];
            g.broadcast(&mut b, 1).unwrap();
            let all = g.all_gather(&[g.rank() as f32, 10.0 + g.rank() as f32]).unwrap();
            g.barrier().unwrap();
            (b, all)
        });
        for (b, all) in out {
            assert_eq!(b, vec![1.0; 4]);
            assert_eq!(all, vec![0.0, 10.0, 1.0, 11.0, 2.0, 12.0]);
        }
    }

    #[test]
    fn a_ring_link_takes_only_a_peer_with_the_gangs_proof() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let link = |secret, run, from| Link {
            secret,
            run,
            from,
            to: 1,
        };
        // Before the rank, in this order: a silent connection, garbage, and
        // the proofs of another secret, another run and another rank.
        let mut impostors = vec![TcpStream::connect(&addr).unwrap()];
        let mut garbage = TcpStream::connect(&addr).unwrap();
        garbage.write_all(&[7u8; PROOF_BYTES]).unwrap();
        impostors.push(garbage);
        for (secret, run, from) in [("other", "run/a0", 0), ("s3cret", "run/a1", 0), ("s3cret", "run/a0", 2)] {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(&link(secret, run, from).proof("hello")).unwrap();
            impostors.push(s);
        }
        let rank = std::thread::spawn({
            let addr = addr.clone();
            move || {
                connect_within(
                    &addr,
                    &link("s3cret", "run/a0", 0),
                    Instant::now() + Duration::from_secs(60),
                )
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut accepted = accept_within(&listener, &link("s3cret", "run/a0", 0), deadline).unwrap();
        let mut connected = rank.join().unwrap().unwrap();
        // The accepted connection is the rank's: data flows.
        connected.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        accepted.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        // Each impostor was closed without a welcome.
        for (i, s) in impostors.iter_mut().enumerate() {
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            assert!(rest.is_empty(), "impostor {i} got {rest:?}");
        }
        // And a rank meeting a listener that cannot prove itself gives up.
        let fake = TcpListener::bind("127.0.0.1:0").unwrap();
        let fake_addr = fake.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (mut s, _) = fake.accept().unwrap();
            let mut hello = [0u8; PROOF_BYTES];
            s.read_exact(&mut hello).unwrap();
            s.write_all(&[0u8; PROOF_BYTES]).unwrap();
            s
        });
        let err = connect_within(
            &fake_addr,
            &link("s3cret", "run/a0", 0),
            Instant::now() + Duration::from_secs(60),
        )
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
        drop(t.join().unwrap());
    }

    #[test]
    fn a_peer_that_leaves_or_disagrees_fails_the_others_instead_of_hanging() {
        let mut groups = ring(3, Duration::from_secs(20));
        drop(groups.pop()); // rank 2 is gone
        let started = Instant::now();
        let errs = each(groups, |g| {
            let mut b = vec![1.0f32; 1000];
            g.all_reduce(&mut b, ReduceOp::Sum).unwrap_err()
        });
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "failed fast, not at the timeout"
        );
        for e in errs {
            assert!(matches!(e, Error::Collective { .. }), "{e}");
        }
        let errs = each(ring(2, Duration::from_secs(20)), |g| {
            let mut b = vec![1.0f32; 3 + g.rank()];
            g.all_reduce(&mut b, ReduceOp::Sum).unwrap_err()
        });
        for e in errs {
            let e = e.to_string();
            assert!(e.contains("3 f32 values") && e.contains("4 f32 values"), "{e}");
        }
    }

    #[test]
    fn ranks_calling_different_collectives_fail_naming_both_calls() {
        // A broadcast meeting an all-reduce of the same length.
        let errs = each(ring(3, Duration::from_secs(20)), |g| {
            let mut b = vec![1.0f32; 8];
            g.barrier().unwrap();
            if g.rank() == 1 {
                g.broadcast(&mut b, 0).unwrap_err()
            } else {
                g.all_reduce(&mut b, ReduceOp::Sum).unwrap_err()
            }
        });
        for e in &errs {
            let text = e.to_string();
            assert!(matches!(e, Error::Collective { .. }), "{e}");
            assert!(
                text.contains("broadcast (collective #2, 8 f32 values from rank 0)"),
                "{text}"
            );
            assert!(text.contains("all_reduce(sum) (collective #2, 8 f32 values)"), "{text}");
        }
        // A rank that skips a call meets the next one out of step.
        let errs = each(ring(2, Duration::from_secs(20)), |g| {
            let mut grads = vec![1.0f32; 100];
            if g.rank() == 0 {
                g.all_reduce(&mut grads, ReduceOp::Mean)?;
            }
            g.barrier()
        });
        for e in errs {
            let text = e.unwrap_err().to_string();
            assert!(text.contains("rank 0 called all_reduce(mean) (collective #1"), "{text}");
            assert!(text.contains("rank 1 called barrier (collective #1)"), "{text}");
        }
        // Another element type is another call.
        let errs = each(ring(2, Duration::from_secs(20)), |g| {
            if g.rank() == 0 {
                g.all_reduce(&mut [1i64, 2], ReduceOp::Sum).unwrap_err()
            } else {
                g.all_reduce(&mut [1.0f64, 2.0], ReduceOp::Sum).unwrap_err()
            }
        });
        for e in errs {
            let text = e.to_string();
            assert!(text.contains("2 i64 values") && text.contains("2 f64 values"), "{text}");
        }
    }

    #[test]
    fn integers_and_doubles_reduce_exactly_in_their_own_type() {
        // Above 2^24 an f32 round trip would lose these.
        let big = (1i64 << 40) + 1;
        let out = each(ring(3, Duration::from_secs(20)), |g| {
            let mut ints = vec![big + g.rank() as i64, -7, i64::from(g.rank() as u8)];
            g.all_reduce(&mut ints, ReduceOp::Sum).unwrap();
            let mut mean = vec![10i64 + g.rank() as i64];
            g.all_reduce(&mut mean, ReduceOp::Mean).unwrap();
            let mut doubles = vec![1e17f64 + g.rank() as f64 * 8.0];
            g.all_reduce(&mut doubles, ReduceOp::Sum).unwrap();
            let mut root = vec![big * (g.rank() as i64 + 1)];
            g.broadcast(&mut root, 2).unwrap();
            let gathered = g.all_gather(&[big + g.rank() as i64]).unwrap();
            (ints, mean, doubles, root, gathered, g.calls())
        });
        for (ints, mean, doubles, root, gathered, calls) in out {
            assert_eq!(ints, vec![3 * big + 3, -21, 3]);
            assert_eq!(mean, vec![11], "(10 + 11 + 12) / 3");
            assert_eq!(doubles, vec![3e17 + 24.0]);
            assert_eq!(root, vec![3 * big]);
            assert_eq!(gathered, vec![big, big + 1, big + 2]);
            assert_eq!(calls, 5);
        }
    }
}
