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

/// Bytes sent in one piece within a step of the ring (receivers sum one
/// segment while the next is on its way).
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
    /// The gang's NCCL communicator, on a GPU rank ([`Group::init_nccl`]):
    /// tensor collectives on its device go through it.
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
            nccl: self.nccl.clone(),
        })
    }

    /// Makes the gang's NCCL communicator on CUDA device `device` (every
    /// rank calls it at the same point, after joining): from then on the
    /// tensor collectives ([`Group::all_reduce_tensor`] and the others) run
    /// through NCCL for tensors on that device, straight from GPU memory.
    /// Fails on every rank, with [`Error::Gpu`], when any rank cannot run
    /// NCCL. The trainer calls it for ranks that use GPUs.
    pub fn init_nccl(&mut self, device: usize) -> Result<()> {
        let comm = crate::nccl::Nccl::init(self, device)?;
        self.nccl = Some(Arc::new(comm));
        Ok(())
    }

    /// This rank's NCCL communicator, when the group has one: its version,
    /// device and the number of collectives run through it.
    pub fn nccl(&self) -> Option<crate::nccl::NcclInfo> {
        self.nccl.as_ref().map(|n| n.info())
    }

    /// How long an operation may wait for the other ranks.
    pub fn timeout(&self) -> Duration {
        self.timeout
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

    /// Sends `out` to the next rank while receiving `into.len()` bytes from
    /// the previous one, calling `got(offset, bytes)` on each received
    /// segment as it arrives.
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
            let mut buf = vec![0u8; SEGMENT_BYTES.min(in_len)];
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
    /// of the same length and gets the same result).
    pub fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        let n = self.world;
        if n > 1 {
            self.check_len(buf.len())?;
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
                self.exchange(bytemuck::cast_slice(send), (r1 - r0) * 4, |at, bytes| {
                    let incoming: &[f32] = bytemuck::cast_slice(bytes);
                    for (x, y) in target[at / 4..at / 4 + incoming.len()].iter_mut().zip(incoming) {
                        *x += *y;
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
            let k = 1.0 / n as f32;
            buf.iter_mut().for_each(|x| *x *= k);
        }
        Ok(())
    }

    /// Every rank's `buf` becomes rank `root`'s.
    pub fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        let n = self.world;
        if root >= n {
            return Err(Error::InvalidArgument(format!(
                "broadcast root {root} in a group of {n}"
            )));
        }
        if n == 1 {
            return Ok(());
        }
        self.check_len(buf.len())?;
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

    /// Every rank's `local` (all of the same length), in rank order.
    pub fn all_gather(&mut self, local: &[f32]) -> Result<Vec<f32>> {
        let n = self.world;
        let len = local.len();
        let mut out = vec![0f32; len * n];
        out[self.rank * len..(self.rank + 1) * len].copy_from_slice(local);
        if n > 1 {
            self.check_len(len)?;
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
        let mut one = [1f32];
        self.all_reduce(&mut one, ReduceOp::Sum)?;
        if one[0] as usize != self.world {
            return Err(Error::collective(
                self.rank,
                format!("a barrier counted {} ranks of {}", one[0], self.world),
            ));
        }
        Ok(())
    }

    /// Every rank must pass buffers of one length: the ranks agree on it
    /// first, so a mismatch is an error rather than a hang.
    fn check_len(&mut self, len: usize) -> Result<()> {
        let n = self.world;
        let mine = (len as u64).to_le_bytes();
        let mut seen = Vec::with_capacity(n);
        let mut carry = mine;
        // Pass lengths once around the ring.
        for _ in 0..n - 1 {
            let mut got = [0u8; 8];
            self.exchange(&carry, 8, |_, b| got.copy_from_slice(b))?;
            seen.push(u64::from_le_bytes(got));
            carry = got;
        }
        if let Some(other) = seen.iter().find(|l| **l != len as u64) {
            return Err(Error::InvalidArgument(format!(
                "rank {} passed {len} values to a collective, another rank {other}",
                self.rank
            )));
        }
        Ok(())
    }
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
fn disjoint(buf: &mut [f32], send: std::ops::Range<usize>, recv: std::ops::Range<usize>) -> (&[f32], &mut [f32]) {
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

    /// `n` ranks on loopback, each a group of the ring.
    fn ring(n: usize, timeout: Duration) -> Vec<Group> {
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
            assert!(e.to_string().contains("passed"), "{e}");
        }
    }
}
