//! The `recvmmsg(2)` buffers of one receive thread: datagram buffers, address buffers and the
//! `mmsghdr` array, allocated once ([`Buffers::new`]) and reused by every read; plus reading
//! what the kernel wrote into them ([`Datagram`]: length, truncation and source).
//!
//! Invariants:
//! - No allocation per read or per datagram: [`Buffers::recv`] only rewrites the headers.
//! - Every call hands the kernel the full capacity of every buffer. `msg_namelen` is in-out:
//!   the kernel shrinks it to what it wrote, so headers reused without a reset could cut a
//!   longer address (an IPv6 source after an IPv4 one).
//! - Source addresses are asked for only when a datagram can be cut (buffers smaller than
//!   [`ANY_DATAGRAM`]): they are only ever needed to name the sender of a truncated datagram,
//!   and copying one out per datagram is a measurable part of the kernel's cost per read.
//! - No control messages: kernel drops are read per chunk from `SO_MEMINFO` (`drops.rs`), not
//!   per datagram from `SO_RXQ_OVFL`, whose per-datagram handling cost 2–3% of lineship's CPU
//!   at 100k–300k lines/s.
//!
//! Written by hand on `libc` rather than with a crate, because none does this without a cost
//! on the hot path: `nix::sys::socket::recvmmsg` (0.32) refills only `msg_iov` between calls
//! (nix issue #2813), and a fresh `MultiHeaders` per call is three allocations per read;
//! `rustix` (1.1) has no `recvmmsg` (rustix issue #1156); `socket2` (0.6) has none either.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// A datagram buffer at least this large holds any UDP payload (its length field is 16 bits),
/// so nothing read into it is ever cut.
pub const ANY_DATAGRAM: usize = 65_535;

/// One datagram of a read.
#[derive(Debug)]
pub struct Datagram<'a> {
    /// What fits the buffer.
    pub data: &'a [u8],
    /// The datagram's real length (larger than `data` when truncated).
    pub len: usize,
    pub truncated: bool,
    /// The sender, where the buffers ask for it (see [`ANY_DATAGRAM`]).
    pub from: Option<SocketAddr>,
}

/// Preallocated `recvmmsg` buffers. The headers' pointers are rebuilt from the vectors before
/// every call (cheap next to the syscall), so they are always fresh and the vectors can move.
pub(super) struct Buffers {
    slot_bytes: usize,
    data: Vec<u8>,
    /// One per slot when datagrams can be cut, else empty (no addresses asked for).
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
            names: if slot_bytes < ANY_DATAGRAM {
                vec![name; slots]
            } else {
                Vec::new()
            },
            iov: vec![iov; slots],
            hdrs: vec![hdr; slots],
        }
    }

    /// One `recvmmsg` call; returns how many datagrams arrived.
    pub(super) fn recv(&mut self, fd: RawFd, flags: libc::c_int) -> io::Result<usize> {
        let data = self.data.as_mut_ptr();
        for i in 0..self.hdrs.len() {
            self.iov[i] = libc::iovec {
                // SAFETY: i < slots, within the allocation's bounds.
                iov_base: unsafe { data.add(i * self.slot_bytes) }.cast(),
                iov_len: self.slot_bytes,
            };
            let h = &mut self.hdrs[i];
            h.msg_len = 0;
            match self.names.get_mut(i) {
                Some(name) => {
                    h.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
                    h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
                }
                None => {
                    h.msg_hdr.msg_name = std::ptr::null_mut();
                    h.msg_hdr.msg_namelen = 0;
                }
            }
            h.msg_hdr.msg_iov = &mut self.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
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
        Datagram {
            data: &self.data[start..start + kept],
            len,
            truncated: h.msg_flags & libc::MSG_TRUNC != 0 || len > self.slot_bytes,
            from: self
                .names
                .get(i)
                .and_then(|name| sockaddr_to_std(name, h.msg_namelen)),
        }
    }
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

    /// `msg_namelen` is in-out: every read hands the kernel the full address buffer again, so
    /// a reused header still names each sender. And the drop count the receive loop reads per
    /// chunk (`SO_MEMINFO`, in `drops.rs`) is exact.
    #[test]
    fn reused_buffers_still_receive_the_source_and_drops_are_counted() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        // The smallest receive buffer the kernel allows: a few datagrams fill it.
        socket2::SockRef::from(&sock)
            .set_recv_buffer_size(1)
            .unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = sock.as_raw_fd();
        let flags = libc::MSG_DONTWAIT | libc::MSG_TRUNC;
        // One slot, so every read reuses the same header; small, so addresses are asked for.
        let mut bufs = Buffers::new(1, 2048);
        let read_all = |bufs: &mut Buffers| {
            let mut got = Vec::new();
            while let Ok(1) = bufs.recv(fd, flags) {
                let d = bufs.get(0);
                got.push((d.data.to_vec(), d.from));
            }
            got
        };
        let drops = || super::super::drops::meminfo_drops(fd).expect("SO_MEMINFO drops");
        let me = Some(client.local_addr().unwrap());

        client.send_to(b"first", addr).unwrap();
        assert_eq!(read_all(&mut bufs), vec![(b"first".to_vec(), me)]);
        assert_eq!(drops(), 0, "no drops yet");

        let flood = 300;
        for _ in 0..flood {
            client.send_to(&[b'#'; 1000], addr).unwrap();
        }
        let queued = read_all(&mut bufs).len();
        assert!(queued < flood, "a tiny buffer took all {flood} datagrams?");
        assert_eq!(drops() as usize, flood - queued, "every drop counted, once");
        client.send_to(b"after", addr).unwrap();
        assert_eq!(read_all(&mut bufs), vec![(b"after".to_vec(), me)]);
    }

    #[test]
    fn buffers_that_hold_any_datagram_ask_for_no_address() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"m v=1i", sock.local_addr().unwrap()).unwrap();
        let mut bufs = Buffers::new(2, ANY_DATAGRAM);
        let flags = libc::MSG_DONTWAIT | libc::MSG_TRUNC;
        assert_eq!(bufs.recv(sock.as_raw_fd(), flags).unwrap(), 1);
        let d = bufs.get(0);
        assert_eq!((d.data, d.truncated, d.from), (&b"m v=1i"[..], false, None));
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
