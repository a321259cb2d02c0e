//! The UDP receive loop: one thread per socket reads up to `slots` datagrams per `recvmmsg`
//! call into preallocated buffers ([`super::mmsg`]), checks their lines and sends them as one
//! chunk once the socket is empty (or [`CHUNK_BYTES`] have gathered). Kernel drops are
//! accounted in [`super::drops`].
//!
//! Invariants:
//! - The loop never blocks on the pipeline. When the channel is full, the checked lines wait
//!   in one held chunk (at most `hold_bytes`, [`HOLD_BYTES`] in the daemon) that is retried
//!   on every read and merged with newer lines; lines that do not fit are dropped and counted
//!   as `dropped{reason="channel_full"}`. The channel is bounded in bytes as well as chunks
//!   ([`crate::queue`]), so the queue plus the hold bound this input's memory however far the
//!   batcher falls behind; the kernel buffer absorbs stalls of this thread.
//! - No allocation per datagram: the `recvmmsg` buffers are allocated once; the only
//!   allocation is the chunk handed to the batcher, one per wake-up (reads that fill every
//!   slot are followed by another read at once, and their lines go into the same chunk, up to
//!   [`CHUNK_BYTES`]), so a busy socket wakes the batcher once per wake-up, not once per read.
//! - Lines never wait in the loop's buffer while it sleeps: it sends them before any wait.
//! - A datagram is a complete unit: its last line needs no `\n`, and nothing carries over to
//!   the next datagram. A bad line loses only itself ([`Intake`] decides).
//! - A truncated datagram (larger than a buffer) keeps the complete lines before the cut and
//!   loses the rest; it is counted in `truncated`. The bytes after the last `\n` in the
//!   buffer are dropped because a cut line can still look valid (`m v=1 17000` cut from
//!   `m v=1 1700000000000000000` would be stored at the wrong time).
//! - Kernel drops (receive buffer full) are counted from the socket's drop counter
//!   (`SO_MEMINFO`) each time a chunk is handed over, and reconciled with `/proc/net/udp{,6}`
//!   once traffic stops and at exit.
//! - Idle costs nothing: the loop sleeps in `poll(2)` on the socket and a [`StopFd`] with no
//!   timeout (once, [`RECONCILE_AFTER`] after traffic stops, it looks at `/proc/net/udp`).
//!   Busy, a read that empties the socket is followed by a gathering wait ([`gather_for`] the
//!   receive buffer) so that moderate rates make fewer, fuller reads.
//! - On stop the loop wakes at once (the stop descriptor), reads what already arrived for at
//!   most [`DRAIN_FOR`], sends its last chunk and returns, dropping its channel sender.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crossbeam_channel::TrySendError;
use tokio_util::sync::CancellationToken;

use crate::batch::Chunk;
use crate::input::Intake;
use crate::queue::ChunkTx;
use crate::reject::RateLimited;

use super::drops::{queued_bytes, KernelDrops};
use super::mmsg::Buffers;
use crate::input::wake::{wait_readable, Ready, StopFd};

/// Datagrams read per `recvmmsg` call.
pub const SLOTS: usize = 64;
/// Bytes per datagram buffer: more than any UDP payload short of an IPv6 jumbogram (65,507
/// bytes over IPv4, 65,527 over IPv6), so in practice nothing is truncated.
pub const SLOT_BYTES: usize = 64 << 10;
/// How often the loop looks at the stop flag and retries held lines while the pipeline is
/// full, and how often it looks at the stop flag when no stop descriptor could be made.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Checked lines gathered over the reads of one wake-up before they are sent anyway (the socket
/// still holding datagrams): about 7,000 lines of ~75 bytes, what 300k lines/s bring in one
/// gathering wait of 20 ms.
pub const CHUNK_BYTES: usize = 512 << 10;
/// At stop, how long the loop keeps reading datagrams that had already arrived.
pub const DRAIN_FOR: Duration = Duration::from_millis(250);
/// Checked lines a receive thread may hold while the channel is full, before it drops: at
/// 1M lines/s of ~75 bytes about 100 ms of a stalled batcher (a busy machine, a slow gzip).
pub const HOLD_BYTES: usize = 8 << 20;
/// Longest wait for datagrams to gather in the socket buffer after a read that emptied it.
/// The latency it adds is far below any flush interval.
pub const GATHER_MAX: Duration = Duration::from_millis(20);
/// Shorter gathering waits than this are not worth their wake-up: the loop reads at once.
pub const GATHER_MIN: Duration = Duration::from_millis(1);
/// Kernel memory per second the loop drains at its fastest (about 1.5M lines/s in
/// datagrams of 10 lines; the kernel charges roughly twice the payload per datagram).
/// Waiting delays draining by the wait, so a burst then needs at most this rate times the
/// wait more of the buffer than it would otherwise.
pub const DRAIN_BYTES_PER_SEC: u64 = 256 << 20;
/// The share of the receive buffer (as the kernel reports it) a gathering wait may cost a
/// burst.
pub const GATHER_BUFFER_SHARE: u64 = 8;
/// The fastest a burst is assumed to fill the receive buffer, in kernel memory per second
/// (loopback senders here reach about 3.5M lines/s in datagrams of 10 lines, ~600 MB/s).
pub const BURST_BYTES_PER_SEC: u64 = 1 << 30;
/// A gathering wait is slept in steps short enough that a burst at [`BURST_BYTES_PER_SEC`]
/// fills at most 1/[`GATHER_BUFFER_SHARE`] of the buffer in one; after each step the socket's
/// queue is looked at (`SO_MEMINFO`), and the wait ends once it holds 1/[`BURST_SHARE`] of
/// the buffer. With a large buffer the wait is one step.
pub const BURST_SHARE: usize = 32;
/// How long after the last datagram an idle loop compares its kernel-drop count with
/// `/proc/net/udp` (once; an idle socket drops nothing).
pub const RECONCILE_AFTER: Duration = Duration::from_secs(1);
const WARN_EVERY: Duration = Duration::from_secs(10);

/// How long a loop may let datagrams gather after a read that emptied its socket, given the
/// receive buffer the kernel reports: what [`DRAIN_BYTES_PER_SEC`] fills of
/// 1/[`GATHER_BUFFER_SHARE`] of it, at most [`GATHER_MAX`]; zero (read at once) when that is
/// under [`GATHER_MIN`].
pub fn gather_for(receive_buffer: usize) -> Duration {
    let secs = receive_buffer as f64 / GATHER_BUFFER_SHARE as f64 / DRAIN_BYTES_PER_SEC as f64;
    let wait = Duration::from_secs_f64(secs).min(GATHER_MAX);
    if wait < GATHER_MIN {
        Duration::ZERO
    } else {
        wait
    }
}

/// The longest step of a gathering wait for a receive buffer of `receive_buffer` bytes (see
/// [`BURST_BYTES_PER_SEC`]).
pub fn gather_step(receive_buffer: usize) -> Duration {
    Duration::from_secs_f64(
        receive_buffer as f64 / GATHER_BUFFER_SHARE as f64 / BURST_BYTES_PER_SEC as f64,
    )
    .max(Duration::from_micros(500))
}

/// Sleeps `wait` in steps of at most `step`, returning early once the socket's receive queue
/// holds `burst_bytes` or more (when the kernel cannot say, the whole wait is slept).
fn gather_wait(fd: std::os::fd::RawFd, wait: Duration, step: Duration, burst_bytes: usize) {
    let mut left = wait;
    while !left.is_zero() {
        let now = left.min(step);
        std::thread::sleep(now);
        left -= now;
        if !left.is_zero() && queued_bytes(fd).is_some_and(|q| q >= burst_bytes) {
            return;
        }
    }
}

/// The smallest receive buffer (as the kernel reports it) that allows a gathering wait.
pub fn gather_min_buffer() -> usize {
    (GATHER_MIN.as_secs_f64() * (DRAIN_BYTES_PER_SEC * GATHER_BUFFER_SHARE) as f64).ceil() as usize
}

/// One receive thread's world.
pub struct Worker {
    pub socket: socket2::Socket,
    pub intake: Intake,
    pub tx: ChunkTx,
    pub stop: CancellationToken,
    /// Datagrams per read ([`SLOTS`] in the daemon).
    pub slots: usize,
    /// Bytes per datagram buffer ([`SLOT_BYTES`] in the daemon).
    pub slot_bytes: usize,
    /// How many bytes of checked lines may wait for a full channel ([`HOLD_BYTES`] in the
    /// daemon; 0 drops at once).
    pub hold_bytes: usize,
    /// How long to let datagrams gather after a read that emptied the socket ([`gather_for`]
    /// the socket's receive buffer in the daemon; zero reads at once).
    pub gather: Duration,
    /// The socket's kernel drop count when this process got it: 0 for a socket it bound,
    /// the `/proc` value for one inherited from systemd (drops before we owned it are not ours
    /// to count again).
    pub drops_baseline: u32,
}

impl Worker {
    /// Runs until `stop` (then drains) or until the pipeline is gone.
    pub fn run(mut self) {
        let fd = self.socket.as_raw_fd();
        let name = self.intake.stats().name.clone();
        // Idle, the loop sleeps in poll(2) on the socket and this descriptor, with no timeout.
        let stop_fd = match StopFd::new(&self.stop) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(input = %name, error = %e, "cannot create an eventfd: the UDP thread wakes every 100 ms to look for a stop");
                None
            }
        };
        let mut bufs = Buffers::new(self.slots, self.slot_bytes);
        let mut st = LoopState {
            out: Vec::with_capacity(16 << 10),
            held: None,
            drops: KernelDrops::new(&self.socket, self.drops_baseline),
            warn_drop: RateLimited::new(WARN_EVERY),
            warn_trunc: RateLimited::new(WARN_EVERY),
            warn_err: RateLimited::new(WARN_EVERY),
        };
        // The gathering wait's steps, and the queued bytes (as the kernel counts them) that
        // end it early.
        let buffer = self.socket.recv_buffer_size().unwrap_or(0);
        let (step, burst_bytes) = (gather_step(buffer), buffer / BURST_SHARE);
        // Datagrams were read (or the loop started) since the last look at /proc/net/udp.
        let mut reconcile_due = true;
        // The last read emptied the socket (or nothing was read yet): wait before reading.
        let mut empty = true;
        let flags = libc::MSG_DONTWAIT | libc::MSG_WAITFORONE | libc::MSG_TRUNC;
        let mut alive = true;
        while alive && !self.stop.is_cancelled() {
            if empty {
                // Held lines are retried, and a missing stop descriptor made up for, every
                // POLL_INTERVAL; kernel drops are reconciled once after traffic stops; else
                // only a datagram or the stop wakes the loop.
                let timeout = if st.held.is_some() || stop_fd.is_none() {
                    POLL_INTERVAL
                } else if reconcile_due {
                    RECONCILE_AFTER
                } else {
                    Duration::MAX
                };
                match wait_readable(fd, stop_fd.as_ref(), timeout) {
                    Ok(Ready::Readable) => {}
                    Ok(Ready::Stop) => break,
                    Ok(Ready::TimedOut) => {
                        if st.held.is_some() {
                            alive = self.send(&mut st);
                        } else if reconcile_due {
                            st.drops.reconcile(self.intake.stats());
                            reconcile_due = false;
                        }
                        continue;
                    }
                    Err(e) => {
                        self.read_error(e, &mut st);
                        continue;
                    }
                }
            }
            match bufs.recv(fd, flags) {
                Ok(n) => {
                    self.process(&bufs, n, &mut st);
                    reconcile_due = true;
                    empty = n < self.slots;
                    // A read that filled every slot is followed by another at once, into the
                    // same chunk; the lines go before any wait.
                    if empty || st.out.len() >= CHUNK_BYTES {
                        alive = self.send(&mut st);
                    }
                    if alive && empty && !self.gather.is_zero() {
                        // The socket is empty: let datagrams gather in its buffer rather than
                        // waking per datagram. Fewer, fuller reads cost less CPU and make
                        // fewer, bigger chunks; the wait is sized to the buffer's headroom
                        // and cut short when a burst starts filling it.
                        gather_wait(fd, self.gather, step, burst_bytes);
                        empty = false;
                    }
                }
                // Nothing more after a full read: its lines go now.
                Err(e) if is_timeout(&e) => {
                    alive = self.send(&mut st);
                    empty = true;
                }
                Err(e) => {
                    alive = self.send(&mut st);
                    self.read_error(e, &mut st);
                    empty = true;
                }
            }
        }
        if alive {
            // Stop: what already arrived is ours; read it (bounded) before closing the socket.
            let until = Instant::now() + DRAIN_FOR;
            while Instant::now() < until {
                match bufs.recv(fd, libc::MSG_DONTWAIT | libc::MSG_TRUNC) {
                    Ok(n) if n > 0 => {
                        self.process(&bufs, n, &mut st);
                        if st.out.len() >= CHUNK_BYTES {
                            alive = self.send(&mut st);
                            if !alive {
                                break;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    _ => break,
                }
            }
            if alive {
                alive = self.send(&mut st);
            }
            // Lines held for a full channel get until the same deadline to go through.
            while alive && st.held.is_some() && Instant::now() < until {
                alive = self.send(&mut st);
                if st.held.is_some() {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            if let Some(c) = st.held.take() {
                self.channel_full(c.lines, &mut st);
            }
        }
        st.drops.reconcile(self.intake.stats());
    }

    /// Checks the lines of the `n` datagrams of one read into `st.out`; [`Worker::send`] hands
    /// them over.
    fn process(&mut self, bufs: &Buffers, n: usize, st: &mut LoopState) {
        let stats = self.intake.stats().clone();
        let stamp = self.intake.stamp_now();
        let (mut bytes, mut truncated) = (0u64, 0u64);
        for i in 0..n {
            let d = bufs.get(i);
            bytes += d.data.len() as u64;
            let data = if d.truncated {
                truncated += 1;
                let kept = complete_lines(d.data);
                if let Some(suppressed) = st.warn_trunc.check(Instant::now()) {
                    tracing::error!(
                        input = %stats.name,
                        from = %d.from.map_or_else(|| "?".to_string(), |a| a.to_string()),
                        datagram_bytes = d.len,
                        buffer_bytes = self.slot_bytes,
                        kept_bytes = kept.len(),
                        suppressed,
                        "a datagram was larger than the read buffer; the lines after the cut are LOST; send smaller datagrams"
                    );
                }
                kept
            } else {
                d.data
            };
            for line in datagram_lines(data) {
                self.intake.line(Ok(line), stamp, &mut st.out);
            }
        }
        stats.datagrams.fetch_add(n as u64, Relaxed);
        stats.bytes.fetch_add(bytes, Relaxed);
        if truncated > 0 {
            stats.truncated.fetch_add(truncated, Relaxed);
        }
    }

    /// Hands the accepted lines (and any held ones) to the batcher without waiting. When the
    /// channel is full they are held, up to `hold_bytes`, and retried on the next call; what
    /// does not fit the hold is dropped and counted. Returns false when the pipeline is gone.
    fn send(&mut self, st: &mut LoopState) -> bool {
        st.drops.look(self.socket.as_raw_fd(), self.intake.stats());
        // Size the next buffer like this one with a quarter to spare, so steady traffic does
        // not regrow it; not to the next power of two, which would reserve up to twice what
        // the queue counts (its bound is in bytes of lines) once chunks are [`CHUNK_BYTES`].
        let len = st.out.len();
        let cap = (len + len / 4).clamp(16 << 10, 8 << 20);
        let fresh = self.intake.take_chunk(&mut st.out, cap);
        let chunk = match (st.held.take(), fresh) {
            (None, None) => return true,
            (Some(c), None) | (None, Some(c)) => c,
            (Some(mut held), Some(fresh)) => {
                if held.data.len() + fresh.data.len() <= self.hold_bytes {
                    held.data.extend_from_slice(&fresh.data);
                    held.lines += fresh.lines;
                } else {
                    self.channel_full(fresh.lines, st);
                }
                held
            }
        };
        let lines = chunk.lines;
        match self.tx.try_send(chunk) {
            Ok(()) => {
                self.intake.count_sent(lines);
                true
            }
            Err(TrySendError::Full(c)) if c.data.len() <= self.hold_bytes => {
                st.held = Some(c);
                true
            }
            Err(TrySendError::Full(_)) => {
                self.channel_full(lines, st);
                true
            }
            Err(TrySendError::Disconnected(_)) => {
                let stats = self.intake.stats();
                stats.add_dropped("shutdown", u64::from(lines));
                tracing::error!(input = %stats.name, lines, "the pipeline stopped before these UDP lines could be queued; they were not accepted");
                false
            }
        }
    }

    fn channel_full(&self, lines: u32, st: &mut LoopState) {
        let stats = self.intake.stats();
        stats.add_dropped("channel_full", u64::from(lines));
        if let Some(suppressed) = st.warn_drop.check(Instant::now()) {
            tracing::error!(
                input = %stats.name,
                lines,
                suppressed,
                "the pipeline is full (output slower than input); UDP lines were DROPPED to keep reading; see dropped{{reason=\"channel_full\"}}"
            );
        }
    }

    fn read_error(&self, e: io::Error, st: &mut LoopState) {
        if e.kind() == io::ErrorKind::Interrupted {
            return;
        }
        if let Some(suppressed) = st.warn_err.check(Instant::now()) {
            tracing::error!(input = %self.intake.stats().name, error = %e, suppressed, "cannot read from the UDP socket; retrying");
        }
        // Do not spin on a persistent error.
        std::thread::sleep(POLL_INTERVAL);
    }
}

struct LoopState {
    /// Accepted lines of the reads since the last send.
    out: Vec<u8>,
    /// Lines that found the channel full, retried before anything newer.
    held: Option<Chunk>,
    drops: KernelDrops,
    warn_drop: RateLimited,
    warn_trunc: RateLimited,
    warn_err: RateLimited,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// The lines of one datagram: split at `\n`; the last line needs no `\n`.
pub fn datagram_lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data.strip_suffix(b"\n").unwrap_or(data);
    let mut done = rest.is_empty();
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                let line = &rest[..i];
                rest = &rest[i + 1..];
                Some(line)
            }
            None => {
                done = true;
                Some(rest)
            }
        }
    })
}

/// The part of a truncated datagram that holds only complete lines (up to its last `\n`).
pub fn complete_lines(data: &[u8]) -> &[u8] {
    memchr::memrchr(b'\n', data).map_or(&[], |i| &data[..=i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_datagrams_into_lines() {
        fn all(d: &[u8]) -> Vec<&[u8]> {
            datagram_lines(d).collect()
        }
        assert!(all(b"").is_empty());
        assert!(all(b"\n").is_empty());
        assert_eq!(all(b"a"), vec![b"a" as &[u8]]);
        assert_eq!(all(b"a\n"), vec![b"a" as &[u8]]);
        assert_eq!(all(b"a\nb"), vec![b"a" as &[u8], b"b"]);
        assert_eq!(all(b"a\n\nb\n"), vec![b"a" as &[u8], b"", b"b"]);
        assert_eq!(all(b"a\r\nb\r\n"), vec![b"a\r" as &[u8], b"b\r"]);
    }

    #[test]
    fn the_gathering_wait_follows_the_buffer_and_is_bounded() {
        // A stock net.core.rmem_max (416 KiB as the kernel reports it): too small to wait.
        assert_eq!(gather_for(416 << 10), Duration::ZERO);
        assert_eq!(gather_for(0), Duration::ZERO);
        // The daemon's default 8 MiB, reported as 16 MiB: 1/8 of it at 256 MiB/s is 7.8 ms.
        let w = gather_for(16 << 20);
        assert!(
            w > Duration::from_millis(7) && w < Duration::from_millis(8),
            "{w:?}"
        );
        // Large buffers are capped.
        assert_eq!(gather_for(512 << 20), GATHER_MAX);
        assert_eq!(gather_for(usize::MAX), GATHER_MAX);
        // The threshold the warning names is where waiting starts.
        let min = gather_min_buffer();
        assert!(gather_for(min) >= GATHER_MIN);
        assert_eq!(gather_for(min - 4096), Duration::ZERO);
    }

    #[test]
    fn the_queue_size_is_read_from_the_kernel() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = sock.as_raw_fd();
        assert_eq!(queued_bytes(fd), Some(0));
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..10 {
            tx.send_to(&[b'x'; 1000], sock.local_addr().unwrap())
                .unwrap();
        }
        let q = queued_bytes(fd).unwrap();
        // The kernel charges the payload and its bookkeeping.
        assert!(q >= 10_000, "{q}");
        // A full queue ends the wait at the first step.
        let t = Instant::now();
        gather_wait(
            fd,
            Duration::from_millis(400),
            Duration::from_millis(100),
            5_000,
        );
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        // Steps: 16 MiB (the default 8 MiB as reported) waits in steps of about 2 ms; a
        // 128 MiB buffer waits in steps of about 16 ms.
        let s = gather_step(16 << 20);
        assert!(
            s > Duration::from_millis(1) && s < Duration::from_millis(3),
            "{s:?}"
        );
        assert!(gather_step(128 << 20) > Duration::from_millis(15));
    }

    #[test]
    fn truncated_datagrams_keep_only_complete_lines() {
        assert_eq!(complete_lines(b"m v=1 1\nm v=2 17"), b"m v=1 1\n");
        assert_eq!(complete_lines(b"m v=1 17"), b"");
        assert_eq!(complete_lines(b"a\nb\n"), b"a\nb\n");
    }
}
