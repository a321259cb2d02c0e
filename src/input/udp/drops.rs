//! Kernel drop accounting for one UDP socket: datagrams the kernel dropped because the socket's
//! receive buffer was full, counted in `kernel_drops` and logged at error.
//!
//! The kernel keeps one cumulative (wrapping u32) drop counter per socket. It reaches us two
//! ways: from `SO_MEMINFO` (`SK_MEMINFO_DROPS`), which [`KernelDrops::look`] reads each time
//! the receive loop hands over a chunk, and in the `drops` column of `/proc/net/udp{,6}`,
//! which [`KernelDrops::reconcile`] reads when the loop is idle and at exit (that catches drops
//! after the last datagram).
//!
//! Invariants:
//! - Each drop is counted once: readings only ever add what is new since the highest reading
//!   seen ([`DropCounter`]), whichever way they came, and stale readings (a datagram queued
//!   before drops `/proc` already reported) add nothing.
//! - Drops before this process owned the socket (one inherited from systemd) are not ours:
//!   counting starts from the baseline read when we got it ([`socket_drops`]).
//! - Nothing here runs per datagram: one `getsockopt` per chunk, the log at most once per
//!   chunk, and the `/proc` read once after traffic stops.

use std::os::fd::{AsFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::reject::RateLimited;
use crate::telemetry::InputStats;

const WARN_EVERY: Duration = Duration::from_secs(10);

/// The kernel drops of one socket, as this process counts them.
pub(super) struct KernelDrops {
    counter: DropCounter,
    inode: Option<u64>,
    v6: bool,
    warn: RateLimited,
}

impl KernelDrops {
    /// Starts counting after `baseline` (the socket's drop count when we got it).
    pub(super) fn new(sock: &Socket, baseline: u32) -> Self {
        KernelDrops {
            counter: DropCounter::new(baseline),
            inode: socket_inode(sock),
            v6: matches!(sock.local_addr().map(|a| a.is_ipv6()), Ok(true)),
            warn: RateLimited::new(WARN_EVERY),
        }
    }

    /// Counts the drops since the last look, from the socket's own counter (`SO_MEMINFO`).
    pub(super) fn look(&mut self, fd: RawFd, stats: &InputStats) {
        self.add(meminfo_drops(fd), stats);
    }

    /// Catches drops no datagram told us about (after the last one that arrived).
    pub(super) fn reconcile(&mut self, stats: &InputStats) {
        let total = self.inode.and_then(|ino| proc_drops(ino, self.v6));
        self.add(total, stats);
    }

    /// Counts what a cumulative reading adds, if there is one.
    fn add(&mut self, total: Option<u32>, stats: &InputStats) {
        let n = total.map_or(0, |t| self.counter.observe(t));
        if n > 0 {
            self.count(u64::from(n), stats);
        }
    }

    /// Counts `n` new drops and logs them (rate-limited).
    fn count(&mut self, n: u64, stats: &InputStats) {
        stats.kernel_drops.fetch_add(n, Relaxed);
        if let Some(suppressed) = self.warn.check(Instant::now()) {
            tracing::error!(
                input = %stats.name,
                datagrams = n,
                suppressed,
                "the kernel DROPPED datagrams because the socket receive buffer was full; raise receive_buffer (and net.core.rmem_max) or workers; see kernel_drops"
            );
        }
    }
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

/// `SK_MEMINFO_*` indices of `SO_MEMINFO` (linux/sock_diag.h).
const SK_MEMINFO_RMEM_ALLOC: usize = 0;
const SK_MEMINFO_DROPS: usize = 8;

/// The socket's `SO_MEMINFO` counters and how many the kernel filled in.
fn meminfo(fd: RawFd) -> Option<([u32; 16], usize)> {
    // SK_MEMINFO_VARS is 9 or 10 depending on the kernel; room for more.
    let mut info = [0u32; 16];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is a live buffer of `len` bytes; the kernel writes at most that much.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (r == 0).then_some((info, len as usize / 4))
}

/// The memory the kernel charges for the socket's receive queue (`SK_MEMINFO_RMEM_ALLOC`).
pub(super) fn queued_bytes(fd: RawFd) -> Option<usize> {
    meminfo(fd)
        .filter(|&(_, n)| n > SK_MEMINFO_RMEM_ALLOC)
        .map(|(info, _)| info[SK_MEMINFO_RMEM_ALLOC] as usize)
}

/// The socket's cumulative kernel drop count (`SK_MEMINFO_DROPS`, the counter `/proc/net/udp`
/// shows; kernels before 4.6 do not report it, and then only `/proc` tells).
pub(super) fn meminfo_drops(fd: RawFd) -> Option<u32> {
    meminfo(fd)
        .filter(|&(_, n)| n > SK_MEMINFO_DROPS)
        .map(|(info, _)| info[SK_MEMINFO_DROPS])
}

// `ino_t` is 32 bits on some targets.
#[allow(clippy::unnecessary_cast)]
fn socket_inode(sock: impl AsFd) -> Option<u64> {
    nix::sys::stat::fstat(sock).ok().map(|st| st.st_ino as u64)
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

/// The socket's current kernel drop count, from `/proc/net/udp{,6}`.
pub(super) fn socket_drops(sock: &Socket) -> Option<u32> {
    let ino = socket_inode(sock)?;
    let v6 = sock.local_addr().ok()?.is_ipv6();
    proc_drops(ino, v6)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let Some(ino) = socket_inode(&s) else {
            panic!("fstat on a socket failed");
        };
        if std::fs::metadata("/proc/net/udp").is_err() {
            eprintln!("SKIPPED: /proc/net/udp is not readable here");
            return;
        }
        assert_eq!(proc_drops(ino, false), Some(0));
    }
}
