//! The `recvmmsg(2)` buffers of one receive thread: datagram buffers, address and control
//! buffers and the `mmsghdr` array, allocated once ([`Buffers::new`]) and reused by every read;
//! plus reading what the kernel wrote into them ([`Datagram`]: length, truncation, source and
//! the `SO_RXQ_OVFL` drop counter from the control messages).
//!
//! Invariants:
//! - No allocation per read or per datagram: [`Buffers::recv`] only rewrites the headers.
//! - Every call hands the kernel the full capacity of every buffer. `msg_namelen` and
//!   `msg_controllen` are in-out: the kernel shrinks them to what it wrote (0 for a datagram
//!   without control messages, which is every datagram until the socket has dropped one), so
//!   headers reused without a reset would see `MSG_CTRUNC` and lose the drop counter forever.
//!
//! Written by hand on `libc` rather than with a crate, because none does this without a cost
//! on the hot path: `nix::sys::socket::recvmmsg` (0.32) refills only `msg_iov` between calls,
//! so a reused `MultiHeaders` loses control messages exactly as described above (nix issue
//! #2813; the test `reused_buffers_still_receive_the_drop_count` here checks for it), and a fresh
//! `MultiHeaders` per call is three allocations per read; `rustix` (1.1) has no `recvmmsg`
//! (rustix issue #1156) and its `recvmsg` parses no `SO_RXQ_OVFL`; `socket2` (0.6) has neither.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Control buffer per datagram, in u64 words so it is aligned for `cmsghdr`. One
/// `SO_RXQ_OVFL` message needs 20 bytes; the rest is slack.
const CONTROL_WORDS: usize = 8;

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
pub(super) struct Buffers {
    slot_bytes: usize,
    data: Vec<u8>,
    control: Vec<u64>,
    names: Vec<libc::sockaddr_storage>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Buffers {
    pub(super) fn new(slots: usize, slot_bytes: usize) -> Self {
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
    pub(super) fn recv(&mut self, fd: RawFd, flags: libc::c_int) -> io::Result<usize> {
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
    pub(super) fn get(&self, i: usize) -> Datagram<'_> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

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

    /// The kernel shrinks `msg_controllen` to what it wrote; a read must hand it the full
    /// control buffer again, or the drop counter of every later datagram in that slot is cut.
    #[test]
    fn reused_buffers_still_receive_the_drop_count() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        use nix::sys::socket::{setsockopt, sockopt};
        setsockopt(&sock, sockopt::RxqOvfl, &1).expect("SO_RXQ_OVFL");
        // The smallest receive buffer the kernel allows: a few datagrams fill it.
        socket2::SockRef::from(&sock)
            .set_recv_buffer_size(1)
            .unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = sock.as_raw_fd();
        let flags = libc::MSG_DONTWAIT | libc::MSG_TRUNC;
        // One slot, so every read reuses the same header and control buffer.
        let mut bufs = Buffers::new(1, 2048);
        let read_all = |bufs: &mut Buffers| {
            let mut got = Vec::new();
            while let Ok(1) = bufs.recv(fd, flags) {
                let d = bufs.get(0);
                got.push((d.data.to_vec(), d.drops, d.from));
            }
            got
        };

        // Before any drop the kernel attaches no SO_RXQ_OVFL message (controllen comes back 0).
        client.send_to(b"first", addr).unwrap();
        let got = read_all(&mut bufs);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, b"first");
        assert_eq!(got[0].1, None, "no drops yet");
        assert_eq!(got[0].2, Some(client.local_addr().unwrap()));

        let flood = 300;
        for _ in 0..flood {
            client.send_to(&[b'#'; 1000], addr).unwrap();
        }
        let queued = read_all(&mut bufs).len();
        assert!(queued < flood, "a tiny buffer took all {flood} datagrams?");
        // A datagram queued after the drops carries their count.
        client.send_to(b"after", addr).unwrap();
        let got = read_all(&mut bufs);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, b"after");
        assert_eq!(
            got[0].1,
            Some((flood - queued) as u32),
            "the drop count must arrive through a reused header"
        );
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
