//! The systemd notification protocol (`sd_notify(3)`), written by hand: one datagram per
//! message to the unix socket named by `NOTIFY_SOCKET` (a path, or an abstract socket when it
//! starts with `@`), plus the watchdog settings from `WATCHDOG_USEC` / `WATCHDOG_PID`.
//!
//! Without `NOTIFY_SOCKET` (not under systemd, or `Type=simple`) every call is a no-op.
//! Sending never blocks the caller for long (the socket is non-blocking) and never fails the
//! daemon: a lost notification is logged, nothing more.
//!
//! Written by hand rather than with the `sd-notify` crate (0.5), which falls short of this in
//! four ways: its `notify` cannot reach an abstract socket (`NOTIFY_SOCKET=@...`, which
//! `sd_notify(3)` documents; it connects to the literal path `@...`); it opens a new blocking
//! socket for every message, so a ping from the async watchdog task could block a runtime
//! thread while systemd's queue is full; its `watchdog_enabled` returns `Some(0)` for
//! `WATCHDOG_USEC=0` and treats an unparsable `WATCHDOG_PID` as absent, i.e. meant for us,
//! where libsystemd's `sd_watchdog_enabled` refuses both (here they would start a ping every
//! millisecond); and it reads the environment itself, so the parsing could only be tested by
//! changing the environment of a multi-threaded test process.
//! The protocol is one `sendto` of `KEY=VALUE` lines; keeping it costs less than these.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where to send notifications, parsed from `NOTIFY_SOCKET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A filesystem path (starts with `/`).
    Path(String),
    /// A Linux abstract socket (`@name`; the name without the `@`).
    Abstract(Vec<u8>),
}

/// Parses the value of `NOTIFY_SOCKET`.
pub fn parse_target(value: &str) -> Result<Target, String> {
    if let Some(name) = value.strip_prefix('@') {
        if name.is_empty() {
            return Err("NOTIFY_SOCKET=@ names no abstract socket".into());
        }
        Ok(Target::Abstract(name.as_bytes().to_vec()))
    } else if value.starts_with('/') {
        Ok(Target::Path(value.to_owned()))
    } else {
        // e.g. `vsock:` addresses (systemd 254+, for VMs): not something a host daemon sees.
        Err(format!(
            "NOTIFY_SOCKET={value:?} is neither a path nor an abstract socket"
        ))
    }
}

/// The watchdog interval systemd expects pings within, from `WATCHDOG_USEC`, if it is meant
/// for this process (`WATCHDOG_PID` unset or equal to `my_pid`), like `sd_watchdog_enabled(3)`.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != my_pid {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// A connection to systemd's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    target: Target,
}

impl Notifier {
    /// Connects to the socket named by `NOTIFY_SOCKET`; `None` when it is unset. A malformed
    /// or unusable value is logged and treated as unset.
    pub fn from_env() -> Option<Notifier> {
        let value = std::env::var("NOTIFY_SOCKET").ok()?;
        if value.is_empty() {
            return None;
        }
        match parse_target(&value).and_then(|t| Notifier::new(t).map_err(|e| e.to_string())) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(
                    "cannot use NOTIFY_SOCKET ({e}); systemd will not hear READY or watchdog pings"
                );
                None
            }
        }
    }

    pub fn new(target: Target) -> io::Result<Notifier> {
        let addr = match &target {
            Target::Path(p) => SocketAddr::from_pathname(p)?,
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket,
            addr,
            target,
        })
    }

    /// Sends one message such as `"READY=1"` (several assignments are separated by `\n`).
    pub fn send(&self, message: &str) -> io::Result<()> {
        let n = self.socket.send_to_addr(message.as_bytes(), &self.addr)?;
        if n != message.len() {
            return Err(io::Error::other("short write to NOTIFY_SOCKET"));
        }
        Ok(())
    }

    /// Like [`Notifier::send`], but logs a failure instead of returning it.
    pub fn notify(&self, message: &str) {
        if let Err(e) = self.send(message) {
            tracing::warn!(
                error = %e,
                socket = ?self.target,
                message = message.lines().next().unwrap_or(""),
                "cannot send a notification to systemd"
            );
        }
    }
}

/// Sends `message` if there is a notifier.
pub fn notify(notifier: Option<&Notifier>, message: &str) {
    if let Some(n) = notifier {
        n.notify(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            parse_target("/run/systemd/notify"),
            Ok(Target::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            parse_target("@/org/freedesktop/systemd1/notify/42"),
            Ok(Target::Abstract(
                b"/org/freedesktop/systemd1/notify/42".to_vec()
            ))
        );
        assert!(parse_target("@").is_err());
        assert!(parse_target("vsock:2:1234").is_err());
        assert!(parse_target("relative/path").is_err());
    }

    #[test]
    fn watchdog_is_for_this_process_only() {
        let us = Some("200000");
        assert_eq!(
            watchdog_interval(us, None, 7),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            watchdog_interval(us, Some("7"), 7),
            Some(Duration::from_millis(200))
        );
        assert_eq!(watchdog_interval(us, Some("8"), 7), None);
        assert_eq!(watchdog_interval(us, Some("x"), 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
    }

    #[test]
    fn sends_to_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(Target::Path(path.to_str().unwrap().into())).unwrap();
        n.send("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("lineship-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let n = Notifier::new(parse_target(&format!("@{name}")).unwrap()).unwrap();
        n.send("WATCHDOG=1").unwrap();
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }
}
