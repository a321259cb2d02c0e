//! The UDP input (`[[input.udp]]`): opens and configures the sockets of each input and starts
//! one receive thread per socket ([`recv::Worker`], the loop; [`mmsg`], its `recvmmsg`
//! buffers; [`drops`], kernel drop accounting; [`listen_fds`], sockets systemd passes).
//!
//! Per input, `workers` sockets share `listen` through `SO_REUSEPORT` (the kernel spreads
//! senders over them by flow hash, so one sender always lands on one socket). `listen` may be
//! IPv4 or IPv6; `[::]` also receives IPv4 unless `net.ipv6.bindv6only` says otherwise (the
//! OS default is kept). Each socket gets:
//! - `SO_RCVBUF` of at least `receive_buffer`, trying `SO_RCVBUFFORCE` first (it ignores
//!   `net.core.rmem_max` when we have `CAP_NET_ADMIN`); the size the kernel applied is read
//!   back and logged, with a warning naming `net.core.rmem_max` when it was capped. Linux
//!   reports (and enforces) twice the size asked for, to allow for its bookkeeping overhead;
//!   the log shows the kernel's figure. An existing larger buffer (e.g. systemd's
//!   `ReceiveBuffer=`) is never shrunk.
//!
//! The receive thread reads the socket's kernel drop counter itself (`SO_MEMINFO`, once per
//! chunk). It waits in `poll(2)` with an `eventfd` that shutdown writes, so idle it never wakes. After a
//! read that empties the socket it lets datagrams gather for a time sized to the applied
//! buffer ([`recv::gather_for`]); a buffer too small for that is logged once, with the sysctl.
//!
//! Socket activation: sockets systemd passes (see [`listen_fds`]) or a caller injects
//! (`Io::udp_sockets`) are claimed by the input whose `listen` equals their local address, and
//! are used instead of binding. With `workers = N` and fewer passed sockets, the rest are bound
//! beside them only if the passed socket has `SO_REUSEPORT` (`ReusePort=yes` in the `.socket`
//! unit); more passed sockets than `workers` are all read, since the kernel delivers to every
//! socket of a reuseport group. Passed datagram sockets no input claims are closed with a
//! warning. All sockets are opened before any thread starts, so a bind error ends startup
//! cleanly.

pub mod drops;
pub mod listen_fds;
pub mod mmsg;
pub mod recv;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::thread::JoinHandle;

use anyhow::Context;
use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::UdpSettings;
use crate::input::{Intake, Links};

/// Sockets handed to the process (systemd socket activation, or a test through
/// `Io::udp_sockets`), waiting to be claimed by the UDP input whose `listen` equals their local
/// address.
pub struct Inherited {
    socks: Vec<(SocketAddr, UdpSocket)>,
}

impl Inherited {
    /// The datagram sockets systemd passed through `LISTEN_FDS`/`LISTEN_PID`, if any.
    pub fn from_env() -> Self {
        Inherited {
            socks: listen_fds::take_from_env(),
        }
    }

    /// Sockets injected by the caller.
    pub fn new(socks: Vec<UdpSocket>) -> anyhow::Result<Self> {
        let socks = socks
            .into_iter()
            .map(|s| {
                // The receive loop reads with MSG_DONTWAIT and waits in poll(2), so either
                // mode works; blocking is what systemd passes and what the loop was tested with.
                s.set_nonblocking(false)
                    .context("cannot make a passed UDP socket blocking")?;
                Ok((
                    s.local_addr()
                        .context("a passed UDP socket has no address")?,
                    s,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Inherited { socks })
    }

    fn take(&mut self, addr: SocketAddr) -> Vec<UdpSocket> {
        let (mine, rest) = std::mem::take(&mut self.socks)
            .into_iter()
            .partition(|(a, _)| *a == addr);
        self.socks = rest;
        mine.into_iter().map(|(_, s)| s).collect()
    }

    /// Closes the sockets no input claimed, with a warning for each.
    pub fn close_unclaimed(self) {
        for (addr, _sock) in self.socks {
            tracing::warn!(
                %addr,
                "closing a UDP socket passed by systemd that no [[input.udp]] listens on; set an input's listen = \"{addr}\" to use it, or remove it from the .socket unit"
            );
        }
    }
}

/// The open, configured sockets of one UDP input, ready for their threads.
pub struct Opened {
    settings: UdpSettings,
    /// Each socket with its kernel drop count when we got it.
    sockets: Vec<(Socket, u32)>,
}

/// Opens (or claims from `inherited`) and configures the sockets of one UDP input.
pub fn open(s: &UdpSettings, inherited: &mut Inherited) -> anyhow::Result<Opened> {
    let key = format!("config key `{}.listen` = \"{}\"", s.key, s.listen);
    let mut sockets: Vec<(Socket, u32)> = inherited
        .take(s.listen)
        .into_iter()
        .map(|u| {
            let sock = Socket::from(OwnedFd::from(u));
            let baseline = drops::socket_drops(&sock).unwrap_or(0);
            (sock, baseline)
        })
        .collect();
    let passed = sockets.len();
    let want = s.workers.max(passed);
    // More sockets may join passed ones only in the same reuseport group.
    let bind_more = if passed == 0 {
        want
    } else if sockets[0].0.reuse_port().unwrap_or(false) {
        want - passed
    } else {
        if passed < want {
            tracing::warn!(
                input = %s.name,
                workers = s.workers,
                passed,
                "workers > 1 needs ReusePort=yes in the .socket unit; reading only the passed socket(s)"
            );
        }
        0
    };
    let reuse_port = want > 1;
    let mut addr = s.listen;
    for _ in 0..bind_more {
        let sock = bind(addr, reuse_port).with_context(|| {
            format!("{key}: cannot bind the UDP socket; is another process using the port, or is the address not on this host?")
        })?;
        if addr.port() == 0 {
            // Further workers join the port the kernel picked.
            addr = sock
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .unwrap_or(addr);
        }
        sockets.push((sock, 0));
    }
    let mut applied = 0;
    for (sock, _) in &sockets {
        applied = set_receive_buffer(sock, s.receive_buffer).with_context(|| {
            format!(
                "config key `{}.receive_buffer`: cannot set the receive buffer of {}",
                s.key, s.listen
            )
        })?;
    }
    let local = sockets[0]
        .0
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(s.listen);
    tracing::info!(
        input = %s.name,
        listen = %local,
        workers = sockets.len(),
        passed_by_systemd = passed,
        receive_buffer = s.receive_buffer,
        receive_buffer_applied = applied,
        "udp input listening"
    );
    let asked = s.receive_buffer.min(i32::MAX as usize / 2);
    if applied < asked.saturating_mul(2) {
        tracing::warn!(
            input = %s.name,
            receive_buffer = s.receive_buffer,
            applied,
            "the kernel capped the UDP receive buffer (Linux reports twice the usable size); raise net.core.rmem_max to at least receive_buffer (sysctl -w net.core.rmem_max={asked}) or grant CAP_NET_ADMIN, or bursts overflow it sooner (see kernel_drops)"
        );
    }
    if recv::gather_for(applied).is_zero() {
        let need = recv::gather_min_buffer();
        tracing::warn!(
            input = %s.name,
            applied,
            needed = need,
            "the UDP receive buffer is too small to let datagrams gather between reads, so every datagram costs a wake-up (more CPU at moderate rates); set receive_buffer to at least {} and, without CAP_NET_ADMIN, sysctl -w net.core.rmem_max={}",
            need / 2,
            need / 2
        );
    }
    Ok(Opened {
        settings: s.clone(),
        sockets,
    })
}

impl Opened {
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Starts one receive thread per socket. On error, the threads already started stop when
    /// `links.cancel` is cancelled.
    pub fn start(
        self,
        max_line_bytes: usize,
        links: &Links,
    ) -> std::io::Result<Vec<JoinHandle<()>>> {
        let stats = links.stats.register_input(self.name());
        let mut threads = Vec::with_capacity(self.sockets.len());
        for (i, (socket, drops_baseline)) in self.sockets.into_iter().enumerate() {
            let gather = recv::gather_for(socket.recv_buffer_size().unwrap_or(0));
            let worker = recv::Worker {
                socket,
                intake: Intake::new(
                    &self.settings.line,
                    max_line_bytes,
                    stats.clone(),
                    links.dead_letter.clone(),
                ),
                tx: links.chunks.clone(),
                stop: links.cancel.clone(),
                slots: recv::SLOTS,
                slot_bytes: recv::SLOT_BYTES,
                hold_bytes: recv::HOLD_BYTES,
                gather,
                drops_baseline,
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("lineship-udp{i}"))
                    .spawn(move || worker.run())?,
            );
        }
        Ok(threads)
    }
}

fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.bind(&addr.into())?;
    Ok(sock)
}

/// Makes the receive buffer at least `want` bytes (as asked; the kernel doubles it) and returns
/// the size the kernel reports afterwards. Tries `SO_RCVBUFFORCE` (needs `CAP_NET_ADMIN`,
/// ignores `net.core.rmem_max`) before `SO_RCVBUF`.
fn set_receive_buffer(sock: &Socket, want: usize) -> std::io::Result<usize> {
    let want = want.min(i32::MAX as usize / 2);
    if sock.recv_buffer_size()? >= want.saturating_mul(2) {
        return sock.recv_buffer_size();
    }
    if setsockopt(sock, sockopt::RcvBufForce, &want).is_err() {
        sock.set_recv_buffer_size(want)?;
    }
    sock.recv_buffer_size()
}
