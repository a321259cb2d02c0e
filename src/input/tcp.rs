//! The TCP input (`[[input.tcp]]`): newline-delimited line protocol, as Telegraf's
//! `socket_listener` and other agents forward it.
//!
//! - One accept thread per input. It closes connections beyond `max_connections` as soon as
//!   they are accepted (counted, and warned about at most every few seconds with the peer), and
//!   starts one thread per connection otherwise.
//! - A connection thread reads into its own framer and sends one chunk per read with a blocking
//!   send. While the queue is full it reads nothing: the socket's receive buffer fills and TCP
//!   flow control slows the sender, so nothing is dropped. While the pipeline can neither
//!   deliver nor spool (see [`crate::queue`]), it reads nothing either.
//! - A bad or overlong line costs only itself. A connection that ends in the middle of a line
//!   (no newline after its last bytes) loses that partial line: it is counted as invalid with
//!   reason `truncated` and copied to the dead-letter file.
//! - A connection that sends nothing for `idle_timeout` is closed.
//! - Shutdown: every thread notices the cancellation within [`WAKE`]; connection threads send
//!   what they hold and end, and the accept thread joins them before it ends, so joining the
//!   accept thread covers the connections too.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{Intake, Links};
use crate::config::TcpSettings;
use crate::line::{Framer, LineError};
use crate::queue::ChunkTx;
use crate::reject::{DeadLetter, RateLimited};
use crate::telemetry::InputStats;

/// How often blocked accepts and reads look at the cancellation.
pub const WAKE: Duration = Duration::from_millis(200);
const READ_BUF: usize = 256 << 10;
/// Refused connections and accept errors are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A bound TCP input, not accepting yet.
pub struct Opened {
    settings: TcpSettings,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// Binds the listening socket of one TCP input.
pub fn open(s: &TcpSettings) -> anyhow::Result<Opened> {
    let listener = TcpListener::bind(s.listen).with_context(|| {
        format!(
            "config key `{}.listen` = \"{}\": cannot listen on this TCP address; is another process using the port, or is the address not on this host?",
            s.key, s.listen
        )
    })?;
    // Linux applies the receive timeout to accept() too: the accept thread wakes to look at
    // the cancellation.
    socket2::SockRef::from(&listener)
        .set_read_timeout(Some(WAKE))
        .context("cannot set a timeout on the TCP listening socket")?;
    let tls = match &s.tls {
        Some(files) => Some(super::tls::server_config(&s.key, files)?),
        None => None,
    };
    let local = listener.local_addr().unwrap_or(s.listen);
    tracing::info!(input = %s.name, listen = %local, tls = tls.is_some(), max_connections = s.max_connections, "tcp input listening");
    if !local.ip().is_loopback() {
        tracing::warn!(input = %s.name, listen = %local, "the tcp input listens beyond this host and has no authentication: anyone who can reach the port can write; restrict it with a firewall, or listen on 127.0.0.1");
    }
    Ok(Opened {
        settings: s.clone(),
        listener,
        tls,
    })
}

impl Opened {
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The address it listens on (the port the kernel chose for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Starts the accept thread.
    pub fn start(self, max_line_bytes: usize, links: &Links) -> std::io::Result<JoinHandle<()>> {
        let acceptor = Acceptor {
            stats: links.stats.register_input(self.name()),
            listener: self.listener,
            dead_letter: links.dead_letter.clone(),
            shared: Arc::new(Shared {
                settings: self.settings,
                tls: self.tls,
                errors: Mutex::new(RateLimited::new(WARN_EVERY)),
                max_line_bytes,
                tx: links.chunks.clone(),
                cancel: links.cancel.clone(),
            }),
        };
        std::thread::Builder::new()
            .name("lineship-tcp".into())
            .spawn(move || acceptor.run())
    }
}

/// What the accept thread and every connection of one input share.
struct Shared {
    settings: TcpSettings,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Connection errors (a failed TLS handshake) are logged at most every few seconds.
    errors: Mutex<RateLimited>,
    max_line_bytes: usize,
    tx: ChunkTx,
    cancel: CancellationToken,
}

struct Acceptor {
    listener: TcpListener,
    shared: Arc<Shared>,
    dead_letter: Arc<DeadLetter>,
    stats: Arc<InputStats>,
}

impl Acceptor {
    fn run(self) {
        let mut conns: Vec<JoinHandle<()>> = Vec::new();
        let mut refused_warn = RateLimited::new(WARN_EVERY);
        let mut error_warn = RateLimited::new(WARN_EVERY);
        while !self.shared.cancel.is_cancelled() {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if is_timeout(&e) || e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: the pending connection stays queued; try again soon.
                    if let Some(suppressed) = error_warn.check(Instant::now()) {
                        tracing::warn!(input = %self.shared.settings.name, error = %e, suppressed, "cannot accept a TCP connection; if the error is \"Too many open files\", raise LimitNOFILE= or lower max_connections");
                    }
                    std::thread::sleep(WAKE);
                    continue;
                }
            };
            conns.retain(|c| !c.is_finished());
            self.stats.connections.fetch_add(1, Relaxed);
            if self.stats.connections_open.load(Relaxed)
                >= self.shared.settings.max_connections as u64
            {
                self.stats.connections_refused.fetch_add(1, Relaxed);
                if let Some(suppressed) = refused_warn.check(Instant::now()) {
                    tracing::warn!(input = %self.shared.settings.name, %peer, max_connections = self.shared.settings.max_connections, suppressed, "closed a TCP connection at once: max_connections are open; raise input.tcp max_connections if these clients are expected");
                }
                continue;
            }
            match self.spawn_connection(stream, peer) {
                Ok(handle) => conns.push(handle),
                Err(e) => {
                    tracing::error!(input = %self.shared.settings.name, %peer, error = %e, "cannot start a thread for a TCP connection; it was closed");
                }
            }
        }
        drop(self.listener);
        for c in conns {
            if c.join().is_err() {
                tracing::error!(input = %self.shared.settings.name, "a TCP connection thread panicked");
            }
        }
    }

    fn spawn_connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> std::io::Result<JoinHandle<()>> {
        let conn = Connection {
            stream,
            peer,
            intake: Intake::new(
                &self.shared.settings.line,
                self.shared.max_line_bytes,
                self.stats.clone(),
                self.dead_letter.clone(),
            ),
            shared: self.shared.clone(),
        };
        self.stats.connections_open.fetch_add(1, Relaxed);
        let stats = self.stats.clone();
        let spawned = std::thread::Builder::new()
            .name("lineship-tcp-conn".into())
            .spawn(move || {
                conn.run();
                stats.connections_open.fetch_sub(1, Relaxed);
            });
        if spawned.is_err() {
            self.stats.connections_open.fetch_sub(1, Relaxed);
        }
        spawned
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    intake: Intake,
    shared: Arc<Shared>,
}

impl Connection {
    fn run(mut self) {
        let name = self.intake.stats().name.clone();
        if let Err(e) = self.stream.set_read_timeout(Some(WAKE)) {
            tracing::warn!(input = %name, peer = %self.peer, error = %e, "cannot set a read timeout on a TCP connection; closing it");
            return;
        }
        let stream = match self.stream.try_clone() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(input = %name, peer = %self.peer, error = %e, "cannot use a TCP connection; closing it");
                return;
            }
        };
        let mut reader: Box<dyn Read> = match self.shared.tls.clone() {
            None => Box::new(stream),
            Some(config) => match rustls::ServerConnection::new(config) {
                Ok(conn) => Box::new(rustls::StreamOwned::new(conn, stream)),
                Err(e) => {
                    tracing::warn!(input = %name, peer = %self.peer, error = %e, "cannot start TLS on a TCP connection; closing it");
                    return;
                }
            },
        };
        let mut framer = if self.intake.is_text() {
            Framer::raw(self.shared.max_line_bytes)
        } else {
            Framer::new(self.shared.max_line_bytes)
        };
        let mut buf = vec![0u8; READ_BUF];
        let mut out = Vec::with_capacity(READ_BUF + READ_BUF / 4);
        let mut last_data = Instant::now();
        let why = loop {
            // While nothing read now could be delivered or spooled, leave it in the socket.
            self.shared
                .tx
                .wait_while_held(|| self.shared.cancel.is_cancelled());
            if self.shared.cancel.is_cancelled() {
                break "shutdown";
            }
            match reader.read(&mut buf) {
                Ok(0) => break "closed by the peer",
                Ok(n) => {
                    last_data = Instant::now();
                    self.intake.stats().bytes.fetch_add(n as u64, Relaxed);
                    let stamp = self.intake.stamp_now();
                    let intake = &mut self.intake;
                    framer.feed(&buf[..n], |l| intake.line(l, stamp, &mut out));
                    if !self.send(&mut out) {
                        return;
                    }
                }
                Err(e) if is_timeout(&e) => {
                    if last_data.elapsed() >= self.shared.settings.idle_timeout {
                        break "idle for idle_timeout";
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    // rustls: not TLS, a failed handshake, a corrupt record.
                    if let Some(suppressed) =
                        self.shared.errors.lock().unwrap().check(Instant::now())
                    {
                        tracing::warn!(input = %name, peer = %self.peer, error = %e, suppressed, "closed a TCP connection: TLS failed; the client must speak TLS and trust this listener's certificate");
                    }
                    break "TLS failed";
                }
                Err(_) => break "reset",
            }
        };
        let intake = &mut self.intake;
        framer.abandon(|partial| intake.reject(partial, LineError::Truncated));
        self.send(&mut out);
        tracing::debug!(input = %name, peer = %self.peer, why, "tcp connection ended");
    }

    /// Sends the accepted lines in `out`, blocking while the queue is full. False when the
    /// pipeline is gone.
    fn send(&mut self, out: &mut Vec<u8>) -> bool {
        match self
            .intake
            .send_blocking(out, READ_BUF + READ_BUF / 4, &self.shared.tx)
        {
            Ok(()) => true,
            Err(lines) => {
                tracing::error!(input = %self.intake.stats().name, peer = %self.peer, lines, "the pipeline shut down before these TCP lines could be queued; they were not accepted");
                false
            }
        }
    }
}
