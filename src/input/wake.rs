//! Waking a blocked input thread when shutdown begins, so it need not poll the stop flag.
//!
//! An input thread that sleeps in a blocking call (`poll` on a socket, a channel receive)
//! would otherwise have to wake every few hundred milliseconds to look at its
//! [`CancellationToken`]; idle, that is all it does. Instead [`OnCancel`] registers a waker
//! with the token and runs a callback (write an `eventfd`, send on a channel) from the thread
//! that cancels it. No thread and no runtime are involved: the token's own waiter list calls
//! the waker.
//!
//! [`StopFd`] is the `eventfd` form, for loops that `poll(2)` a descriptor.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Runs a callback once `token` is cancelled (at once if it already is). Dropping it
/// unregisters the callback.
pub struct OnCancel {
    /// Kept so that the token keeps our waker registered; never polled again.
    _wait: Pin<Box<WaitForCancellationFutureOwned>>,
}

struct Callback<F>(F);

impl<F: Fn() + Send + Sync + 'static> Wake for Callback<F> {
    fn wake(self: Arc<Self>) {
        (self.0)();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        (self.0)();
    }
}

impl OnCancel {
    pub fn new(token: &CancellationToken, f: impl Fn() + Send + Sync + 'static) -> OnCancel {
        let waker = Waker::from(Arc::new(Callback(f)));
        let mut wait = Box::pin(token.clone().cancelled_owned());
        if let Poll::Ready(()) = wait.as_mut().poll(&mut Context::from_waker(&waker)) {
            waker.wake_by_ref();
        }
        OnCancel { _wait: wait }
    }
}

/// An `eventfd` that becomes readable when a token is cancelled: poll it beside the
/// descriptors a loop waits on.
pub struct StopFd {
    fd: Arc<OwnedFd>,
    _hook: OnCancel,
}

impl StopFd {
    pub fn new(token: &CancellationToken) -> io::Result<StopFd> {
        // SAFETY: eventfd returns a new descriptor that nothing else owns, or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a valid descriptor owned by nobody else.
        let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
        let signal = fd.clone();
        let hook = OnCancel::new(token, move || {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to a descriptor this closure keeps open.
            // A full counter (EAGAIN) is already readable, which is all a waiter needs.
            unsafe { libc::write(signal.as_raw_fd(), (&one as *const u64).cast(), 8) };
        });
        Ok(StopFd { fd, _hook: hook })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// What [`wait_readable`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// `fd` has something to read (or an error to report on read).
    Readable,
    /// The stop descriptor fired.
    Stop,
    /// Neither, within the timeout (or a signal interrupted the wait).
    TimedOut,
}

/// Waits up to `timeout` ([`Duration::MAX`]: forever) until `fd` is readable or `stop` fires.
pub fn wait_readable(fd: RawFd, stop: Option<&StopFd>, timeout: Duration) -> io::Result<Ready> {
    let timeout_ms = if timeout == Duration::MAX {
        -1
    } else {
        // Rounded up, so a short wait is not a busy loop.
        i32::try_from(timeout.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
    };
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            // poll(2) ignores a negative descriptor.
            fd: stop.map_or(-1, StopFd::raw_fd),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `fds` is a live array of two pollfd structs.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::Interrupted => Ok(Ready::TimedOut),
            _ => Err(e),
        };
    }
    if fds[1].revents != 0 {
        return Ok(Ready::Stop);
    }
    if fds[0].revents != 0 {
        return Ok(Ready::Readable);
    }
    Ok(Ready::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    use std::time::Instant;

    #[test]
    fn the_callback_runs_once_on_cancel_and_at_once_when_already_cancelled() {
        let token = CancellationToken::new();
        let n = Arc::new(AtomicU32::new(0));
        let m = n.clone();
        let hook = OnCancel::new(&token, move || {
            m.fetch_add(1, SeqCst);
        });
        assert_eq!(n.load(SeqCst), 0);
        token.cancel();
        token.cancel();
        assert_eq!(n.load(SeqCst), 1);
        drop(hook);

        let late = Arc::new(AtomicU32::new(0));
        let l = late.clone();
        let _hook = OnCancel::new(&token, move || {
            l.fetch_add(1, SeqCst);
        });
        assert_eq!(late.load(SeqCst), 1);
    }

    #[test]
    fn a_dropped_hook_is_not_called() {
        let token = CancellationToken::new();
        let n = Arc::new(AtomicU32::new(0));
        let m = n.clone();
        drop(OnCancel::new(&token, move || {
            m.fetch_add(1, SeqCst);
        }));
        token.cancel();
        assert_eq!(n.load(SeqCst), 0);
    }

    #[test]
    fn a_poll_wakes_when_the_token_is_cancelled_from_another_thread() {
        let token = CancellationToken::new();
        let stop = StopFd::new(&token).unwrap();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(
            wait_readable(sock.as_raw_fd(), Some(&stop), Duration::from_millis(10)).unwrap(),
            Ready::TimedOut
        );
        let t = token.clone();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            t.cancel();
        });
        let started = Instant::now();
        assert_eq!(
            wait_readable(sock.as_raw_fd(), Some(&stop), Duration::MAX).unwrap(),
            Ready::Stop
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        canceller.join().unwrap();
        // It stays fired.
        assert_eq!(
            wait_readable(sock.as_raw_fd(), Some(&stop), Duration::ZERO).unwrap(),
            Ready::Stop
        );
    }

    #[test]
    fn a_datagram_makes_the_socket_readable() {
        let token = CancellationToken::new();
        let stop = StopFd::new(&token).unwrap();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"m v=1", sock.local_addr().unwrap()).unwrap();
        assert_eq!(
            wait_readable(sock.as_raw_fd(), Some(&stop), Duration::from_secs(5)).unwrap(),
            Ready::Readable
        );
        // Without a stop descriptor too.
        assert_eq!(
            wait_readable(sock.as_raw_fd(), None, Duration::from_secs(5)).unwrap(),
            Ready::Readable
        );
    }
}
