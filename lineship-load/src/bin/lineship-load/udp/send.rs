//! The UDP senders. All datagrams are generated before the clock starts ([`prepare_slices`]);
//! each sender thread has its own socket (its own source port, so `SO_REUSEPORT` workers get a
//! share each) and follows an absolute schedule, sleeping until the next datagram is due and
//! then sending everything due within `--pace-us` in one `sendmmsg` ([`send_paced`]).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use lineship_load::gen::{GenOpts, LineGen, APPROX_LINE_BYTES};
use serde::Serialize;

use crate::measure::thread_cpu_s;

/// Largest UDP payload over IPv4.
pub const MAX_DATAGRAM_BYTES: usize = 65_507;

/// Late wake-ups of a sender beyond this are counted as `late_wakeups`.
pub const LATE_NS: u64 = 1_000_000;

/// One sender's pre-generated datagrams.
pub struct SenderSlice {
    pub data: Vec<u8>,
    /// End offset in `data` of each datagram.
    pub ends: Vec<usize>,
    pub lines: u64,
}

impl SenderSlice {
    pub fn datagram(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }
}

/// Splits `lines` lines (sequence numbers from `opts.start`) into datagrams of `per_datagram`
/// lines and deals contiguous runs of datagrams to `senders` senders, generating them in
/// parallel.
pub fn prepare_slices(
    opts: &GenOpts,
    lines: u64,
    per_datagram: u64,
    senders: usize,
) -> Result<Vec<SenderSlice>> {
    let datagrams = lines.div_ceil(per_datagram);
    let senders = (senders as u64).clamp(1, datagrams.max(1));
    let slices = std::thread::scope(|scope| {
        let parts: Vec<_> = (0..senders)
            .map(|k| {
                let (lo, hi) = (k * datagrams / senders, (k + 1) * datagrams / senders);
                let (first, end) = (lo * per_datagram, (hi * per_datagram).min(lines));
                let opts = GenOpts {
                    start: opts.start + first,
                    ..*opts
                };
                scope.spawn(move || {
                    let mut gen = LineGen::new(&opts);
                    let mut data = Vec::with_capacity(((end - first) * APPROX_LINE_BYTES) as usize);
                    let mut ends = Vec::with_capacity((hi - lo) as usize);
                    let mut left = end - first;
                    while left > 0 {
                        let n = left.min(per_datagram);
                        gen.fill_lines(&mut data, n);
                        ends.push(data.len());
                        left -= n;
                    }
                    SenderSlice {
                        data,
                        ends,
                        lines: end - first,
                    }
                })
            })
            .collect();
        parts
            .into_iter()
            .map(|p| p.join().expect("generator thread panicked"))
            .collect::<Vec<_>>()
    });
    for s in &slices {
        let biggest = (0..s.ends.len())
            .map(|i| s.datagram(i).len())
            .max()
            .unwrap_or(0);
        ensure!(
            biggest <= MAX_DATAGRAM_BYTES,
            "a datagram of {biggest} bytes exceeds the UDP maximum of {MAX_DATAGRAM_BYTES}; lower --lines-per-datagram"
        );
    }
    Ok(slices)
}

#[derive(Serialize, Clone, Copy, Debug, Default)]
pub struct SenderStats {
    pub datagrams: u64,
    pub lines: u64,
    pub bytes: u64,
    /// Datagrams the kernel refused (ECONNREFUSED: nothing listening), not retried.
    pub failed_datagrams: u64,
    pub failed_lines: u64,
    /// Transient send errors (ENOBUFS, EAGAIN) that were retried.
    pub retries: u64,
    pub sendmmsg_calls: u64,
    /// ns after the schedule's start of the first call and of the end of the last one.
    pub first_send_ns: u64,
    pub last_send_ns: u64,
    /// How far behind the schedule a wake-up was, at worst; and how many were over 1 ms late.
    pub max_lag_ns: u64,
    pub late_wakeups: u64,
    /// CPU time of the sender thread (sendmmsg on loopback also runs the receive path up to the
    /// socket queue, so most of it is kernel time).
    pub cpu_s: f64,
}

pub fn ns_since(t0: Instant) -> u64 {
    Instant::now().saturating_duration_since(t0).as_nanos() as u64
}

/// Sends `slice` on the connected `sock` at `rate` lines/s from `t0`: datagram `i` is due at
/// `t0 + i * per_datagram / rate`. The sender sleeps until the first unsent datagram is due, then
/// sends, in one `sendmmsg`, every datagram due within `pace` (at most `max_batch`). The
/// schedule is absolute, so a late wake-up is made up by the next calls instead of drifting.
pub fn send_paced(
    sock: &std::net::UdpSocket,
    slice: &SenderSlice,
    per_datagram: u64,
    rate: f64,
    t0: Instant,
    pace: Duration,
    max_batch: usize,
) -> Result<SenderStats> {
    // Sleep to within ~10 µs of the schedule instead of the default 50 µs of timer slack.
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 10_000 as libc::c_ulong, 0, 0, 0) };
    let cpu_before = thread_cpu_s();
    let fd = sock.as_raw_fd();
    let n = slice.ends.len();
    let ns_per_datagram = per_datagram as f64 * 1e9 / rate;
    let due = |i: usize| (i as f64 * ns_per_datagram) as u64;
    let lines_of = |i: usize| {
        if i + 1 == n {
            slice.lines - (n as u64 - 1) * per_datagram
        } else {
            per_datagram
        }
    };
    let pace_ns = pace.as_nanos() as u64;
    let max_batch = max_batch.clamp(1, 1024);
    // SAFETY: all-zero iovec and mmsghdr are valid (null pointers, zero lengths).
    let mut iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; max_batch];
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; max_batch];
    let mut st = SenderStats::default();
    if let Some(wait) = t0.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    let mut i = 0;
    while i < n {
        let now = ns_since(t0);
        let due_i = due(i);
        if due_i > now {
            std::thread::sleep(Duration::from_nanos(due_i - now));
            continue;
        }
        let lag = now - due_i;
        st.max_lag_ns = st.max_lag_ns.max(lag);
        st.late_wakeups += u64::from(lag > LATE_NS);
        let horizon = now + pace_ns;
        let mut j = i;
        while j < n && j - i < max_batch && due(j) <= horizon {
            let d = slice.datagram(j);
            let b = j - i;
            iov[b] = libc::iovec {
                iov_base: d.as_ptr() as *mut libc::c_void,
                iov_len: d.len(),
            };
            // SAFETY: all-zero is a valid msghdr; the fields set point at live data.
            hdrs[b].msg_hdr = unsafe { std::mem::zeroed() };
            hdrs[b].msg_hdr.msg_iov = &mut iov[b];
            hdrs[b].msg_hdr.msg_iovlen = 1;
            hdrs[b].msg_len = 0;
            j += 1;
        }
        if st.sendmmsg_calls == 0 {
            st.first_send_ns = ns_since(t0);
        }
        st.sendmmsg_calls += 1;
        // SAFETY: hdrs[..j - i] point at iovecs that point into `slice.data`, all alive for the
        // call; the socket is connected, so no address is needed.
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), (j - i) as libc::c_uint, 0) };
        st.last_send_ns = ns_since(t0);
        if r > 0 {
            for k in i..i + r as usize {
                st.datagrams += 1;
                st.lines += lines_of(k);
                st.bytes += slice.datagram(k).len() as u64;
            }
            i += r as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::ENOBUFS | libc::EAGAIN) => {
                st.retries += 1;
                std::thread::sleep(Duration::from_micros(20));
            }
            Some(libc::ECONNREFUSED) => {
                // An ICMP port-unreachable from an earlier datagram: this one was not sent.
                st.failed_datagrams += 1;
                st.failed_lines += lines_of(i);
                i += 1;
            }
            _ => return Err(e).context("sendmmsg"),
        }
    }
    st.cpu_s = thread_cpu_s() - cpu_before;
    Ok(st)
}

/// Sends all slices to `target` from one thread and socket each, together at `rate` lines/s.
pub fn send_all(
    slices: &[SenderSlice],
    target: SocketAddr,
    per_datagram: u64,
    rate: f64,
    pace: Duration,
    max_batch: usize,
) -> Result<(Instant, Vec<SenderStats>)> {
    let total: u64 = slices.iter().map(|s| s.lines).sum();
    let socks = slices
        .iter()
        .map(|_| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").context("binding a sender socket")?;
            s.connect(target).context("connecting a sender socket")?;
            Ok(s)
        })
        .collect::<Result<Vec<_>>>()?;
    // All senders share one schedule start, a moment from now so every thread is ready.
    let t0 = Instant::now() + Duration::from_millis(5);
    let stats = std::thread::scope(|scope| {
        let threads: Vec<_> = slices
            .iter()
            .zip(&socks)
            .enumerate()
            .map(|(k, (slice, sock))| {
                let share = rate * slice.lines as f64 / total as f64;
                std::thread::Builder::new()
                    .name(format!("sender{k}"))
                    .spawn_scoped(scope, move || {
                        send_paced(sock, slice, per_datagram, share, t0, pace, max_batch)
                    })
                    .context("spawning a sender thread")
            })
            .collect::<Result<_>>()?;
        threads
            .into_iter()
            .map(|t| t.join().expect("sender thread panicked"))
            .collect::<Result<Vec<_>>>()
    })?;
    Ok((t0, stats))
}

/// A free UDP port on 127.0.0.1: bound to find one, then released for the daemon.
pub fn free_udp_port() -> Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").context("finding a free UDP port")?;
    Ok(s.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lineship_load::seq::{count_lines, scan_seqs};

    fn gen_opts(start: u64) -> GenOpts {
        GenOpts::fixed_example(start)
    }

    #[test]
    fn udp_slices_cover_every_seq_once() {
        let opts = gen_opts(500);
        let slices = prepare_slices(&opts, 1003, 10, 3).unwrap();
        assert_eq!(slices.len(), 3);
        assert_eq!(slices.iter().map(|s| s.lines).sum::<u64>(), 1003);
        let mut seqs = Vec::new();
        let mut datagrams = 0;
        for s in &slices {
            for i in 0..s.ends.len() {
                let d = s.datagram(i);
                let want = if i + 1 == s.ends.len() {
                    s.lines - 10 * (s.ends.len() as u64 - 1)
                } else {
                    10
                };
                assert_eq!(count_lines(d), want);
                assert_eq!(scan_seqs(d, &mut seqs), 0);
                datagrams += 1;
            }
        }
        assert_eq!(datagrams, 101);
        seqs.sort_unstable();
        assert_eq!(seqs, (500..1503).collect::<Vec<_>>());
        // More senders than datagrams: one datagram each.
        assert_eq!(prepare_slices(&opts, 25, 10, 8).unwrap().len(), 3);
        // A datagram over the UDP maximum is refused.
        assert!(prepare_slices(&opts, 2000, 1000, 1).is_err());
    }

    #[test]
    fn udp_sender_paces_to_the_schedule() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let slices = prepare_slices(&gen_opts(0), 300, 10, 1).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        // 30 datagrams at 30,000 lines/s: the last is due at 29 * 10 / 30000 s = 9.67 ms, and
        // may go out at most one pacing quantum (0.5 ms) early.
        let t0 = Instant::now() + Duration::from_millis(2);
        let st = send_paced(
            &tx,
            &slices[0],
            10,
            30_000.0,
            t0,
            Duration::from_micros(500),
            64,
        )
        .unwrap();
        assert!(Instant::now() >= t0);
        assert_eq!((st.datagrams, st.lines, st.failed_lines), (30, 300, 0));
        assert!(
            st.last_send_ns >= 9_100_000,
            "sent too fast: {}",
            st.last_send_ns
        );
        // How many sendmmsg calls it took depends on how late the thread woke up (a busy
        // machine batches more per call), so only "never early" is asserted.
        let mut buf = vec![0u8; 65536];
        let mut seqs = Vec::new();
        for _ in 0..30 {
            let n = rx.recv(&mut buf).unwrap();
            scan_seqs(&buf[..n], &mut seqs);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (0..300).collect::<Vec<_>>());
    }
}
