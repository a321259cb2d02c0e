//! systemd socket activation (`sd_listen_fds(3)`) for the UDP input.
//!
//! systemd passes the sockets of a `.socket` unit as file descriptors `3 .. 3 + LISTEN_FDS` and
//! sets `LISTEN_PID` to the pid they are meant for. [`take_from_env`] checks both and takes
//! ownership of the passed fds that are IPv4/IPv6 datagram sockets; the UDP input then uses a
//! passed socket whose local address equals its `listen` instead of binding its own.
//!
//! Invariants:
//! - The fds are taken at most once per process (an `OwnedFd` must have one owner), and only
//!   when `LISTEN_PID` is our pid.
//! - Only IPv4/IPv6 datagram sockets are taken. Anything else (a stream socket, say) is left
//!   open and untouched for whoever may want it, and logged.
//! - Taken fds get `FD_CLOEXEC`, so they never leak into a child.
//! - The environment is not modified: changing it in a multi-threaded process is unsound, and
//!   a child could not mistake the fds for its own anyway, because `LISTEN_PID` names us.
//!
//! The variables are parsed here rather than with `sd_notify::listen_fds` (sd-notify 0.5): that
//! function reads the environment itself (so [`passed_fd_count`] could not be tested without
//! changing the environment of a multi-threaded test process) and sets `FD_CLOEXEC` on every
//! passed fd, including those this input leaves alone; what it would save is the dozen lines
//! of [`passed_fd_count`]. The socket calls go through `socket2`; only the `fstat` that proves
//! an fd is open (which every safe fd wrapper requires before it may be built) is raw `libc`.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// How many fds `LISTEN_PID`/`LISTEN_FDS` hand to the process `pid`: 0 when the variables are
/// absent or meant for another process. An unparsable value is an error to log, not to obey.
pub fn passed_fd_count(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    pid: u32,
) -> Result<usize, String> {
    let (Some(listen_pid), Some(listen_fds)) = (listen_pid, listen_fds) else {
        return Ok(0);
    };
    let for_pid: u32 = listen_pid
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_PID={listen_pid:?} is not a pid"))?;
    if for_pid != pid {
        return Ok(0);
    }
    let n: usize = listen_fds
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_FDS={listen_fds:?} is not a number"))?;
    // fds are ints: a count that would overflow them is garbage.
    if n > (RawFd::MAX - LISTEN_FDS_START) as usize {
        return Err(format!("LISTEN_FDS={n} is out of range"));
    }
    Ok(n)
}

/// The datagram sockets systemd passed to this process, with their local addresses.
/// Empty when there are none, when they were meant for another pid, or on a second call.
pub fn take_from_env() -> Vec<(SocketAddr, UdpSocket)> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let pid_var = std::env::var("LISTEN_PID").ok();
    let fds_var = std::env::var("LISTEN_FDS").ok();
    let n = match passed_fd_count(pid_var.as_deref(), fds_var.as_deref(), std::process::id()) {
        Ok(0) => return Vec::new(),
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("ignoring systemd socket activation variables: {e}");
            return Vec::new();
        }
    };
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + n as RawFd {
        match inspect(fd) {
            Ok(addr) => {
                // SAFETY: LISTEN_PID names this process, so systemd handed fd to us; TAKEN
                // guarantees that no other OwnedFd for it was made in this process, and
                // `inspect` checked that it is an open socket.
                let sock = socket2::Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
                if let Err(e) = sock.set_cloexec(true) {
                    tracing::warn!(fd, %addr, error = %e, "cannot set FD_CLOEXEC on a UDP socket passed by systemd; a child process would inherit it");
                }
                let sock = UdpSocket::from(sock);
                // The receive loop reads with MSG_DONTWAIT and waits in poll(2); the socket is
                // made blocking all the same, as systemd passes it and as it was tested.
                if let Err(e) = sock.set_nonblocking(false) {
                    tracing::error!(fd, %addr, error = %e, "cannot make a UDP socket passed by systemd blocking; not using it");
                    continue;
                }
                tracing::debug!(fd, %addr, "systemd passed a datagram socket");
                out.push((addr, sock));
            }
            Err(why) => {
                tracing::info!(fd, "leaving an fd passed by systemd alone: {why}");
            }
        }
    }
    out
}

/// The local address of `fd` if it is an IPv4/IPv6 datagram socket.
fn inspect(fd: RawFd) -> Result<SocketAddr, String> {
    // SAFETY: fstat only writes into the local passed; an invalid fd is an error.
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return Err(format!("not open ({})", std::io::Error::last_os_error()));
        }
        st
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err("not a socket".into());
    }
    // Borrow the fd just long enough to ask for its type and address; `ManuallyDrop` keeps it
    // open.
    // SAFETY: fd is an open socket (checked above) and is not closed here.
    let sock = std::mem::ManuallyDrop::new(unsafe { socket2::Socket::from_raw_fd(fd) });
    if sock.r#type().ok() != Some(socket2::Type::DGRAM) {
        return Err("not a datagram socket".into());
    }
    sock.local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| "not an IPv4/IPv6 socket".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_count_only_for_our_pid() {
        assert_eq!(passed_fd_count(None, None, 42), Ok(0));
        assert_eq!(passed_fd_count(Some("42"), None, 42), Ok(0));
        assert_eq!(passed_fd_count(None, Some("2"), 42), Ok(0));
        assert_eq!(passed_fd_count(Some("41"), Some("2"), 42), Ok(0));
        assert_eq!(passed_fd_count(Some("42"), Some("2"), 42), Ok(2));
        assert_eq!(passed_fd_count(Some("42"), Some("0"), 42), Ok(0));
        assert!(passed_fd_count(Some("x"), Some("2"), 42).is_err());
        assert!(passed_fd_count(Some("42"), Some("-1"), 42).is_err());
        assert!(passed_fd_count(Some("42"), Some("99999999999"), 42).is_err());
    }

    #[test]
    fn inspect_accepts_udp_and_refuses_others() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&udp);
        assert_eq!(inspect(fd), Ok(udp.local_addr().unwrap()));
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(inspect(std::os::fd::AsRawFd::as_raw_fd(&tcp)).is_err());
        let file = tempfile::tempfile().unwrap();
        assert!(inspect(std::os::fd::AsRawFd::as_raw_fd(&file)).is_err());
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        assert!(inspect(std::os::fd::AsRawFd::as_raw_fd(&a)).is_err());
        // Still open after inspection.
        assert!(udp.local_addr().is_ok());
    }
}
