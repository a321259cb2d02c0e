//! The UDP receive loop: one thread per socket reads up to `slots` datagrams per `recvmmsg`
//! call into preallocated buffers, checks their lines and sends them as one chunk.
//!
//! Invariants:
//! - The loop never blocks on the pipeline. When the channel is full, the checked lines wait
//!   in one held chunk (at most `hold_bytes`, [`HOLD_BYTES`] in the daemon) that is retried
//!   on every read and merged with newer lines; lines that do not fit are dropped and counted
//!   as `dropped{reason="channel_full"}`. The channel is bounded in bytes as well as chunks
//!   ([`crate::queue`]), so the queue plus the hold bound this input's memory however far the
//!   batcher falls behind; the kernel buffer absorbs stalls of this thread.
//! - No allocation per datagram: the datagram buffers, headers and control buffers are
//!   allocated once; the only allocation per read is the chunk handed to the batcher.
//! - A datagram is a complete unit: its last line needs no `\n`, and nothing carries over to
//!   the next datagram. A bad line loses only itself ([`Intake`] decides).
//! - A truncated datagram (larger than a buffer) keeps the complete lines before the cut and
//!   loses the rest; it is counted in `truncated`. The bytes after the last `\n` in the
//!   buffer are dropped because a cut line can still look valid (`m v=1 17000` cut from
//!   `m v=1 1700000000000000000` would be stored at the wrong time).
//! - Kernel drops (receive buffer full) are counted per socket from the cumulative
//!   `SO_RXQ_OVFL` value carried by each datagram, and reconciled with `/proc/net/udp{,6}`
//!   when idle and at exit, which also catches drops after the last datagram that arrived.
//! - On stop the loop wakes within [`POLL_INTERVAL`], reads what already arrived for at most
//!   [`DRAIN_FOR`], sends its last chunk and returns, dropping its channel sender.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::TrySendError;

use crate::batch::Chunk;
use crate::input::Intake;
use crate::queue::ChunkTx;
use crate::reject::RateLimited;

/// Datagrams read per `recvmmsg` call.
pub const SLOTS: usize = 64;
/// Bytes per datagram buffer: more than any UDP payload short of an IPv6 jumbogram (65,507
/// bytes over IPv4, 65,527 over IPv6), so in practice nothing is truncated.
pub const SLOT_BYTES: usize = 64 << 10;
/// How long a read waits for the first datagram before looking at the stop flag
/// (`SO_RCVTIMEO`).
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// At stop, how long the loop keeps reading datagrams that had already arrived.
pub const DRAIN_FOR: Duration = Duration::from_millis(250);
/// Checked lines a receive thread may hold while the channel is full, before it drops: at
/// 1M lines/s of ~75 bytes about 100 ms of a stalled batcher (a busy machine, a slow gzip).
pub const HOLD_BYTES: usize = 8 << 20;
/// After a read that emptied the socket, how long to let datagrams gather before reading
/// again (latency this adds is far below any flush interval).
pub const COALESCE: Duration = Duration::from_millis(1);
/// The smallest receive buffer (as the kernel reports it) that makes [`COALESCE`] safe: at
/// 1M lines/s, 1 ms is ~100 datagrams, ~250 KB of kernel memory; 4 MiB leaves a wide margin
/// for a late wake-up. Smaller buffers (a stock `net.core.rmem_max` gives ~416 KiB) read
/// again at once instead.
pub const COALESCE_MIN_BUFFER: usize = 4 << 20;
/// How often an idle loop compares its kernel-drop count with `/proc/net/udp`.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Control buffer per datagram, in u64 words so it is aligned for `cmsghdr`. One
/// `SO_RXQ_OVFL` message needs 20 bytes; the rest is slack.
const CONTROL_WORDS: usize = 8;

/// One receive thread's world.
pub struct Worker {
    pub socket: socket2::Socket,
    pub intake: Intake,
    pub tx: ChunkTx,
    pub stop: Arc<AtomicBool>,
    /// Datagrams per read ([`SLOTS`] in the daemon).
    pub slots: usize,
    /// Bytes per datagram buffer ([`SLOT_BYTES`] in the daemon).
    pub slot_bytes: usize,
    /// How many bytes of checked lines may wait for a full channel ([`HOLD_BYTES`] in the
    /// daemon; 0 drops at once).
    pub hold_bytes: usize,
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
        if let Err(e) = self.socket.set_read_timeout(Some(POLL_INTERVAL)) {
            tracing::error!(input = %name, error = %e, "cannot set SO_RCVTIMEO: stopping will wait for the next datagram");
        }
        if let Err(e) = super::set_int_opt(&self.socket, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1) {
            tracing::warn!(input = %name, error = %e, "cannot enable SO_RXQ_OVFL: kernel drops are seen only through /proc/net/udp");
        }
        let inode = socket_inode(fd);
        let mut bufs = Buffers::new(self.slots, self.slot_bytes);
        let mut st = LoopState {
            out: Vec::with_capacity(16 << 10),
            held: None,
            drops: DropCounter::new(self.drops_baseline),
            warn_drop: RateLimited::new(WARN_EVERY),
            warn_kernel: RateLimited::new(WARN_EVERY),
            warn_trunc: RateLimited::new(WARN_EVERY),
            warn_err: RateLimited::new(WARN_EVERY),
        };
        let mut last_reconcile = Instant::now();
        let coalesce = match self.socket.recv_buffer_size() {
            Ok(b) if b >= COALESCE_MIN_BUFFER => COALESCE,
            _ => Duration::ZERO,
        };
        let flags = libc::MSG_WAITFORONE | libc::MSG_TRUNC;
        let mut alive = true;
        while alive && !self.stop.load(Relaxed) {
            match bufs.recv(fd, flags) {
                Ok(n) => {
                    alive = self.process(&bufs, n, &mut st);
                    if n < self.slots && !coalesce.is_zero() {
                        // The queue is empty: let datagrams gather in the socket buffer
                        // rather than waking per datagram. Fewer, fuller reads cost less
                        // CPU and make fewer, bigger chunks.
                        std::thread::sleep(coalesce);
                    }
                }
                Err(e) if is_timeout(&e) => {
                    if st.held.is_some() {
                        alive = self.send(&mut st);
                    }
                    if last_reconcile.elapsed() >= RECONCILE_EVERY {
                        self.reconcile(inode, &mut st);
                        last_reconcile = Instant::now();
                    }
                }
                Err(e) => self.read_error(e, &mut st),
            }
        }
        if alive {
            // Stop: what already arrived is ours; read it (bounded) before closing the socket.
            let until = Instant::now() + DRAIN_FOR;
            while Instant::now() < until {
                match bufs.recv(fd, libc::MSG_DONTWAIT | libc::MSG_TRUNC) {
                    Ok(n) if n > 0 => {
                        if !self.process(&bufs, n, &mut st) {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    _ => break,
                }
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
        self.reconcile(inode, &mut st);
    }

    /// Handles the `n` datagrams of one read and sends their lines as one chunk. Returns false
    /// when the pipeline is gone.
    fn process(&mut self, bufs: &Buffers, n: usize, st: &mut LoopState) -> bool {
        let stats = self.intake.stats().clone();
        let stamp = self.intake.stamp_now();
        let (mut bytes, mut new_drops, mut truncated) = (0u64, 0u64, 0u64);
        for i in 0..n {
            let d = bufs.get(i);
            if let Some(total) = d.drops {
                new_drops += u64::from(st.drops.observe(total));
            }
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
        if new_drops > 0 {
            self.kernel_dropped(new_drops, st);
        }
        self.send(st)
    }

    /// Hands the accepted lines (and any held ones) to the batcher without waiting. When the
    /// channel is full they are held, up to `hold_bytes`, and retried on the next call; what
    /// does not fit the hold is dropped and counted. Returns false when the pipeline is gone.
    fn send(&mut self, st: &mut LoopState) -> bool {
        // Size the next buffer like this one, so steady traffic does not regrow it.
        let cap = st.out.len().next_power_of_two().clamp(16 << 10, 8 << 20);
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

    /// Catches drops no datagram told us about (after the last one that arrived).
    fn reconcile(&mut self, inode: Option<u64>, st: &mut LoopState) {
        let v6 = matches!(self.socket.local_addr().map(|a| a.is_ipv6()), Ok(true));
        if let Some(total) = inode.and_then(|ino| proc_drops(ino, v6)) {
            let n = st.drops.observe(total);
            if n > 0 {
                self.kernel_dropped(u64::from(n), st);
            }
        }
    }

    fn kernel_dropped(&self, n: u64, st: &mut LoopState) {
        let stats = self.intake.stats();
        stats.kernel_drops.fetch_add(n, Relaxed);
        if let Some(suppressed) = st.warn_kernel.check(Instant::now()) {
            tracing::error!(
                input = %stats.name,
                datagrams = n,
                suppressed,
                "the kernel DROPPED datagrams because the socket receive buffer was full; raise receive_buffer (and net.core.rmem_max) or workers; see kernel_drops"
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
    /// Accepted lines of the current read.
    out: Vec<u8>,
    /// Lines that found the channel full, retried before anything newer.
    held: Option<Chunk>,
    drops: DropCounter,
    warn_drop: RateLimited,
    warn_kernel: RateLimited,
    warn_trunc: RateLimited,
    warn_err: RateLimited,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// One datagram of a read.
#[derive(Debug)]
pub struct Datagram<'a> {
    /// What fits the buffer.
    pub data: &'a [u8],
    /// The datagram's real length (larger than `data` when truncated).
    pub len: usize,
    pub truncated: bool,
    /// The socket's cumulative kernel drop count (`SO_RXQ_OVFL`), when the kernel sent it.
    pub drops: Option<u32>,
    pub from: Option<SocketAddr>,
}

/// Preallocated `recvmmsg` buffers. The headers' pointers are rebuilt from the vectors before
/// every call (cheap next to the syscall), so they are always fresh and the vectors can move.
struct Buffers {
    slot_bytes: usize,
    data: Vec<u8>,
    control: Vec<u64>,
    names: Vec<libc::sockaddr_storage>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Buffers {
    fn new(slots: usize, slot_bytes: usize) -> Self {
        assert!(slots > 0 && slot_bytes > 0, "empty receive buffers");
        // SAFETY: these are plain C structs for which all-zero bytes is a valid value.
        let (name, iov, hdr) = unsafe {
            (
                std::mem::zeroed::<libc::sockaddr_storage>(),
                std::mem::zeroed::<libc::iovec>(),
                std::mem::zeroed::<libc::mmsghdr>(),
            )
        };
        Buffers {
            slot_bytes,
            // Zeroed allocations are mapped lazily: only the pages datagrams touch use memory.
            data: vec![0; slots * slot_bytes],
            control: vec![0; slots * CONTROL_WORDS],
            names: vec![name; slots],
            iov: vec![iov; slots],
            hdrs: vec![hdr; slots],
        }
    }

    /// One `recvmmsg` call; returns how many datagrams arrived.
    fn recv(&mut self, fd: RawFd, flags: libc::c_int) -> io::Result<usize> {
        let data = self.data.as_mut_ptr();
        let control = self.control.as_mut_ptr();
        for i in 0..self.hdrs.len() {
            self.iov[i] = libc::iovec {
                // SAFETY (all three `add`s): i < slots, within the allocations' bounds.
                iov_base: unsafe { data.add(i * self.slot_bytes) }.cast(),
                iov_len: self.slot_bytes,
            };
            let h = &mut self.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            h.msg_hdr.msg_iov = &mut self.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = unsafe { control.add(i * CONTROL_WORDS) }.cast();
            h.msg_hdr.msg_controllen = (CONTROL_WORDS * 8) as _;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every header points at live buffers of the lengths it states (set above);
        // the kernel writes at most that much into each.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as _,
                flags as _,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Datagram `i` of the last read.
    fn get(&self, i: usize) -> Datagram<'_> {
        let h = &self.hdrs[i].msg_hdr;
        // With MSG_TRUNC in the call's flags, msg_len is the datagram's real length.
        let len = self.hdrs[i].msg_len as usize;
        let kept = len.min(self.slot_bytes);
        let start = i * self.slot_bytes;
        let control_words = &self.control[i * CONTROL_WORDS..(i + 1) * CONTROL_WORDS];
        // SAFETY: viewing initialised u64s as bytes.
        let control_bytes = unsafe {
            std::slice::from_raw_parts(control_words.as_ptr().cast::<u8>(), CONTROL_WORDS * 8)
        };
        // size_t on glibc, socklen_t on musl.
        #[allow(clippy::unnecessary_cast)]
        let control_len = (h.msg_controllen as usize).min(control_bytes.len());
        Datagram {
            data: &self.data[start..start + kept],
            len,
            truncated: h.msg_flags & libc::MSG_TRUNC != 0 || len > self.slot_bytes,
            drops: rxq_ovfl(&control_bytes[..control_len]),
            from: sockaddr_to_std(&self.names[i], h.msg_namelen),
        }
    }
}

const fn cmsg_align(len: usize) -> usize {
    let a = std::mem::size_of::<usize>();
    (len + a - 1) & !(a - 1)
}

/// The `SO_RXQ_OVFL` counter in a control buffer as `recvmsg` filled it, if present.
pub fn rxq_ovfl(control: &[u8]) -> Option<u32> {
    let hdr_len = std::mem::size_of::<libc::cmsghdr>();
    let data_off = cmsg_align(hdr_len);
    let mut off = 0;
    while off + hdr_len <= control.len() {
        // SAFETY: reads hdr_len in-bounds bytes (checked above) as a plain C struct.
        let c: libc::cmsghdr = unsafe { std::ptr::read_unaligned(control[off..].as_ptr().cast()) };
        let len = c.cmsg_len as usize;
        if len < hdr_len || off + len > control.len() {
            return None;
        }
        if c.cmsg_level == libc::SOL_SOCKET
            && c.cmsg_type == libc::SO_RXQ_OVFL
            && len >= data_off + 4
        {
            let at = off + data_off;
            return Some(u32::from_ne_bytes(
                control[at..at + 4].try_into().expect("4 bytes"),
            ));
        }
        off += cmsg_align(len);
    }
    None
}

/// Tracks a socket's cumulative (wrapping u32) kernel drop counter and turns readings into
/// new drops. A reading can be older than one seen before (a datagram queued before drops
/// that `/proc` already reported); such stale readings add nothing.
#[derive(Debug, Clone)]
pub struct DropCounter {
    seen: u32,
}

impl DropCounter {
    pub fn new(baseline: u32) -> Self {
        DropCounter { seen: baseline }
    }

    /// New drops implied by the cumulative reading `total`.
    pub fn observe(&mut self, total: u32) -> u32 {
        let delta = total.wrapping_sub(self.seen);
        if delta == 0 || delta > u32::MAX / 2 {
            return 0; // unchanged, or behind what we have seen
        }
        self.seen = total;
        delta
    }
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

fn sockaddr_to_std(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match s.ss_family as libc::c_int {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family and length say the storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family and length say the storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

pub(super) fn socket_inode(fd: RawFd) -> Option<u64> {
    // SAFETY: fstat writes only into `st`.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd, &mut st) == 0).then_some(st.st_ino as u64)
    }
}

/// The kernel drop count of the UDP socket with this inode, from `/proc/net/udp` or `udp6`.
/// `None` when `/proc` is not readable (e.g. `ProcSubset=pid`) or the socket is not listed.
pub fn proc_drops(inode: u64, v6: bool) -> Option<u32> {
    let path = if v6 {
        "/proc/net/udp6"
    } else {
        "/proc/net/udp"
    };
    parse_proc_net_udp(&std::fs::read_to_string(path).ok()?, inode)
}

/// Finds the `drops` column of the socket with `inode` in `/proc/net/udp{,6}` text.
pub fn parse_proc_net_udp(text: &str, inode: u64) -> Option<u32> {
    // Rows end with `inode ref pointer drops`. The header's columns do not line up with the
    // rows' ("tx_queue rx_queue" is one row column), so columns are counted from the end.
    if text.lines().next()?.split_whitespace().last() != Some("drops") {
        return None;
    }
    text.lines().skip(1).find_map(|row| {
        let cols: Vec<&str> = row.split_whitespace().collect();
        let n = cols.len();
        if n < 4 || cols[n - 4].parse::<u64>().ok()? != inode {
            return None;
        }
        cols[n - 1].parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmsg(level: libc::c_int, ty: libc::c_int, payload: &[u8]) -> Vec<u8> {
        let hdr_len = std::mem::size_of::<libc::cmsghdr>();
        let len = cmsg_align(hdr_len) + payload.len();
        let mut c: libc::cmsghdr = unsafe { std::mem::zeroed() };
        c.cmsg_len = len as _;
        c.cmsg_level = level;
        c.cmsg_type = ty;
        let mut out = vec![0u8; cmsg_align(len)];
        unsafe { std::ptr::write_unaligned(out.as_mut_ptr().cast(), c) };
        out[cmsg_align(hdr_len)..len].copy_from_slice(payload);
        out
    }

    #[test]
    fn finds_rxq_ovfl_among_control_messages() {
        assert_eq!(rxq_ovfl(&[]), None);
        let ovfl = cmsg(libc::SOL_SOCKET, libc::SO_RXQ_OVFL, &77u32.to_ne_bytes());
        assert_eq!(rxq_ovfl(&ovfl), Some(77));
        let mut two = cmsg(libc::SOL_SOCKET, libc::SO_TIMESTAMP, &[1; 16]);
        two.extend_from_slice(&ovfl);
        assert_eq!(rxq_ovfl(&two), Some(77));
        let other = cmsg(libc::IPPROTO_IP, libc::SO_RXQ_OVFL, &5u32.to_ne_bytes());
        assert_eq!(rxq_ovfl(&other), None, "wrong level");
        // A header claiming more than the buffer holds ends the walk.
        assert_eq!(rxq_ovfl(&ovfl[..ovfl.len() - 8]), None);
        let mut bad = ovfl.clone();
        bad[..std::mem::size_of::<usize>()].copy_from_slice(&1usize.to_ne_bytes());
        assert_eq!(rxq_ovfl(&bad), None, "cmsg_len below the header size");
    }

    #[test]
    fn drop_counter_counts_deltas_and_ignores_stale_readings() {
        let mut d = DropCounter::new(0);
        assert_eq!(d.observe(0), 0);
        assert_eq!(d.observe(5), 5);
        assert_eq!(d.observe(5), 0);
        assert_eq!(d.observe(3), 0, "older snapshot");
        assert_eq!(d.observe(12), 7);
        let mut w = DropCounter::new(u32::MAX - 1);
        assert_eq!(w.observe(2), 4, "wraps");
        let mut b = DropCounter::new(100);
        assert_eq!(b.observe(100), 0, "baseline drops are not ours");
        assert_eq!(b.observe(101), 1);
    }

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
    fn truncated_datagrams_keep_only_complete_lines() {
        assert_eq!(complete_lines(b"m v=1 1\nm v=2 17"), b"m v=1 1\n");
        assert_eq!(complete_lines(b"m v=1 17"), b"");
        assert_eq!(complete_lines(b"a\nb\n"), b"a\nb\n");
    }

    #[test]
    fn parses_proc_net_udp() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops            \n\
          123: 0100007F:1F99 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17     \n\
          124: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 99 2 0000000000000000 0\n";
        assert_eq!(parse_proc_net_udp(text, 4242), Some(17));
        assert_eq!(parse_proc_net_udp(text, 99), Some(0));
        assert_eq!(parse_proc_net_udp(text, 5), None);
        assert_eq!(parse_proc_net_udp("garbage\n1 2 3 4\n", 2), None);
    }

    #[test]
    fn proc_drops_finds_a_live_socket() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let Some(ino) = socket_inode(s.as_raw_fd()) else {
            panic!("fstat on a socket failed");
        };
        if std::fs::metadata("/proc/net/udp").is_err() {
            eprintln!("SKIPPED: /proc/net/udp is not readable here");
            return;
        }
        assert_eq!(proc_drops(ino, false), Some(0));
    }

    #[test]
    fn sockaddr_conversion() {
        let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        assert_eq!(sockaddr_to_std(&st, 0), None);
        let sin = (&mut st as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
        unsafe {
            (*sin).sin_family = libc::AF_INET as _;
            (*sin).sin_port = 8089u16.to_be();
            (*sin).sin_addr.s_addr = u32::from(Ipv4Addr::new(10, 1, 2, 3)).to_be();
        }
        assert_eq!(
            sockaddr_to_std(&st, std::mem::size_of::<libc::sockaddr_in>() as _),
            Some("10.1.2.3:8089".parse().unwrap())
        );
    }
}
