//! The HTTP write listener (`[[input.http]]`): InfluxDB's write APIs, so that applications,
//! client libraries and other agents (another lineship among them) can write to lineship.
//!
//! - [`request`]: endpoints, destinations, tokens and the JSON error shapes.
//! - [`ingest`]: the body (size cap after decompression), the line check into chunks, and
//!   the requests waiting for their acknowledgements.
//! - this file: the listener and the answer to a write.
//!
//! The answer to a write. The valid lines of a request are accepted and the bad ones listed:
//! 204 when every line was good, 400 naming each rejected line (line number, error, start of
//! the line, as InfluxDB 3 reports a partial write) otherwise. With `ack = "durable"` (the
//! default) the answer comes only once every accepted line is delivered or durably in the
//! spool — the acknowledgement that also moves tail checkpoints — so a client that got it
//! loses nothing to a crash. `ack = "queued"` answers once the lines are in the queue.
//! 503 with `Retry-After`: the queue has no room now (it never waits for room before the first
//! chunk is in), the spool dropped lines (`when_full = "drop_newest"`), or no acknowledgement
//! came within `ack_timeout`; the client retries, and lines already queued may then arrive twice
//! (at least once, never lost).
//!
//! Shutdown: on cancellation the listener stops accepting and lets go of its queue sender; open
//! connections are answered 503 for new writes, requests waiting for acknowledgements keep
//! waiting while the pipeline drains, and the connections are closed once it is done.

pub mod inflate;
pub mod ingest;
pub mod request;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use crossbeam_channel::TrySendError;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::ingest::{ChunkLimits, Waiters};
use self::request::{Endpoint, Refusal};
use super::{Intake, Links};
use crate::batch::Ack;
use crate::config::{AckMode, HttpSettings, InputFormat, Settings};
use crate::queue::{self, Detachable};
use crate::reject::RateLimited;
use crate::telemetry::InputStats;

/// HTTP inputs take acknowledgement routes from here up (tail inputs use their index).
pub const ACK_ROUTE_BASE: u32 = 1 << 20;
/// How often a request that waits for queue room looks again.
const ROOM_POLL: Duration = Duration::from_millis(5);
/// Refused requests are logged at most this often per input.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A bound HTTP input, not serving yet.
pub struct Opened {
    settings: HttpSettings,
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Binds the listening socket of one HTTP input.
pub fn open(s: &HttpSettings) -> anyhow::Result<Opened> {
    if s.line.format != InputFormat::Lp {
        anyhow::bail!(
            "config key `{}.format`: the HTTP input takes line protocol only",
            s.key
        );
    }
    let listener = std::net::TcpListener::bind(s.listen).with_context(|| {
        format!(
            "config key `{}.listen` = \"{}\": cannot listen on this address; is another process using the port, or is the address not on this host?",
            s.key, s.listen
        )
    })?;
    listener.set_nonblocking(true)?;
    let tls = match &s.tls {
        Some(files) => Some(tokio_rustls::TlsAcceptor::from(super::tls::server_config(
            &s.key, files,
        )?)),
        None => None,
    };
    let local = listener.local_addr().unwrap_or(s.listen);
    tracing::info!(input = %s.name, listen = %local, tls = tls.is_some(), ack = ?s.ack, tokens = s.tokens.len(), "http input listening");
    Ok(Opened {
        settings: s.clone(),
        listener,
        tls,
    })
}

/// What every request of one input shares.
struct Shared {
    settings: HttpSettings,
    route: u32,
    tx: Detachable,
    intake: Mutex<Intake>,
    stats: Arc<InputStats>,
    waiters: Arc<Waiters>,
    max_line_bytes: usize,
    limits: ChunkLimits,
    warn: Mutex<RateLimited>,
}

impl Opened {
    /// Starts serving on the runtime; `index` is the input's place among the HTTP inputs.
    pub fn start(
        self,
        index: usize,
        settings: &Settings,
        links: &Links,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let listener = tokio::net::TcpListener::from_std(self.listener)
            .context("cannot serve the HTTP input's socket")?;
        let stats = links.stats.register_input(self.settings.name.clone());
        let agent = &settings.agent;
        let route = ACK_ROUTE_BASE + index as u32;
        let waiters = Arc::new(Waiters::default());
        let w = waiters.clone();
        links.acks.register(route, move |a, fate| w.on_ack(a, fate));
        let shared = Arc::new(Shared {
            intake: Mutex::new(Intake::new(
                &self.settings.line,
                agent.max_line_bytes,
                stats.clone(),
                links.dead_letter.clone(),
            )),
            settings: self.settings,
            route,
            tx: Detachable::new(links.chunks.clone()),
            stats,
            waiters,
            max_line_bytes: agent.max_line_bytes,
            // As for tail: each chunk fits a batch alone, so its ack covers all its lines.
            limits: ChunkLimits {
                lines: (agent.batch_max_lines / 4).clamp(1, u32::MAX as usize) as u32,
                bytes: (agent.batch_max_bytes / 4)
                    .clamp(1, queue::MAX_BYTES / queue::WAITING_SHARE / 4),
            },
            warn: Mutex::new(RateLimited::new(WARN_EVERY)),
        });
        let (cancel, done) = (links.cancel.clone(), links.pipeline_done.clone());
        Ok(tokio::spawn(serve(
            listener, self.tls, shared, cancel, done,
        )))
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    pipeline_done: CancellationToken,
) {
    let mut connections = JoinSet::new();
    let permits = Arc::new(Semaphore::new(shared.settings.max_connections));
    let mut errors = crate::telemetry::endpoint::AcceptErrors::default();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(accepted) => {
                    errors.accepted();
                    accepted
                }
                Err(e) => {
                    if errors.failed() {
                        tracing::warn!(input = %shared.settings.name, error = %e, "cannot accept an HTTP connection; retrying (logged once until it works again); if it is \"Too many open files\", raise LimitNOFILE= or lower max_connections");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        shared.stats.connections.fetch_add(1, Relaxed);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared.stats.connections_refused.fetch_add(1, Relaxed);
            shared.warn_rate_limited(|suppressed| {
                tracing::warn!(input = %shared.settings.name, %peer, max_connections = shared.settings.max_connections, suppressed, "closed an HTTP connection at once: max_connections are open; raise input.http max_connections if these clients are expected");
            });
            continue;
        };
        let (shared, tls) = (shared.clone(), tls.clone());
        connections.spawn(async move {
            shared.stats.connections_open.fetch_add(1, Relaxed);
            match tls {
                None => shared.serve_connection(stream, peer).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        shared.settings.read_timeout,
                        acceptor.accept(stream),
                    );
                    match handshake.await {
                        Ok(Ok(tls_stream)) => shared.serve_connection(tls_stream, peer).await,
                        Ok(Err(e)) => shared.warn_rate_limited(|suppressed| {
                            tracing::warn!(input = %shared.settings.name, %peer, error = %e, suppressed, "TLS handshake failed; the client must speak TLS (https://) and trust this listener's certificate");
                        }),
                        Err(_) => shared.warn_rate_limited(|suppressed| {
                            tracing::warn!(input = %shared.settings.name, %peer, suppressed, "TLS handshake did not finish within read_timeout");
                        }),
                    }
                }
            }
            shared.stats.connections_open.fetch_sub(1, Relaxed);
            drop(permit);
        });
    }
    drop(listener);
    // New writes on open connections get 503 from now on; the batcher may end.
    shared.tx.detach();
    // Requests waiting for acknowledgements are answered while the pipeline drains.
    pipeline_done.cancelled().await;
    connections.shutdown().await;
}

impl Shared {
    /// Serves HTTP/1.1 requests on one connection (plain or TLS) until it closes.
    async fn serve_connection<S>(self: &Arc<Self>, stream: S, peer: SocketAddr)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let s = self.clone();
        let service = service_fn(move |req| {
            let s = s.clone();
            async move { Ok::<_, Infallible>(s.handle(req, peer).await) }
        });
        let served = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.read_timeout)
            .serve_connection(TokioIo::new(stream), service)
            .await;
        if let Err(e) = served {
            // Malformed HTTP, a header that did not arrive within read_timeout, a client that
            // went away mid-request: the connection is closed, nothing else is hurt.
            self.warn_rate_limited(|suppressed| {
                tracing::warn!(input = %self.settings.name, %peer, error = %e, suppressed, "closed an HTTP connection: the client sent something that is not HTTP/1.1, or too slowly");
            });
        }
    }

    fn warn_rate_limited(&self, log: impl FnOnce(u64)) {
        if let Some(suppressed) = self.warn.lock().unwrap().check(Instant::now()) {
            log(suppressed);
        }
    }

    async fn handle(
        self: &Arc<Self>,
        req: Request<hyper::body::Incoming>,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let response = match self.answer(req).await {
            Ok(r) => r,
            Err(refusal) => {
                self.warn_rate_limited(|suppressed| {
                    tracing::warn!(input = %self.settings.name, %peer, status = refusal.status, reason = %refusal.message, suppressed, "http request refused");
                });
                refusal_response(&refusal)
            }
        };
        *self
            .stats
            .answers
            .lock()
            .unwrap()
            .entry(response.status().as_u16())
            .or_default() += 1;
        response
    }

    async fn answer(
        self: &Arc<Self>,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, Refusal> {
        let endpoint = request::route(req.method(), req.uri().path())?;
        match endpoint {
            Endpoint::Ping => {
                return Ok(Response::builder()
                    .status(204)
                    .header(
                        "X-Influxdb-Version",
                        concat!("lineship-", env!("CARGO_PKG_VERSION")),
                    )
                    .header("X-Influxdb-Build", "lineship")
                    .body(Full::default())
                    .expect("valid response"))
            }
            Endpoint::Health => {
                let body = serde_json::json!({
                    "name": "lineship",
                    "message": "ready for writes",
                    "status": "pass",
                    "checks": [],
                    "version": env!("CARGO_PKG_VERSION"),
                });
                return Ok(json_response(200, body.to_string()));
            }
            _ => {}
        }
        let query = req.uri().query().unwrap_or("").to_owned();
        let token = request::presented_token(req.headers(), &query);
        if !request::authorized(&self.settings.tokens, token.as_deref()) {
            return Err(Refusal::new(
                401,
                "unauthorized",
                "unauthorized access: send one of the input's tokens (Authorization: Token …)",
            ));
        }
        let target = request::target(
            endpoint,
            &query,
            self.settings.force_bucket.as_deref(),
            self.settings.line.precision,
        )?;
        let gzip = match req
            .headers()
            .get(hyper::header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        {
            None => false,
            Some(e) if e == "identity" || e.is_empty() => false,
            Some(e) if e == "gzip" || e == "x-gzip" => true,
            Some(e) => {
                return Err(Refusal::new(
                    415,
                    "unsupported media type",
                    format!("Content-Encoding {e:?} is not supported: send the body plain or gzip"),
                ))
            }
        };
        let started = Instant::now();
        let max = self.settings.max_body_size;
        let raw = ingest::read_body(req.into_body(), max, self.settings.read_timeout).await?;
        let me = self.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let body = if gzip {
                ingest::gunzip(&raw, max)?
            } else {
                raw
            };
            if body.is_empty() {
                return Err(Refusal::invalid(
                    "the request body is empty: send line protocol, one point per line",
                ));
            }
            let mut intake = me.intake.lock().unwrap_or_else(|e| e.into_inner());
            intake.set_destination(&target.bucket, target.precision);
            Ok(ingest::check(
                &mut intake,
                &body,
                me.max_line_bytes,
                me.limits,
            ))
        })
        .await
        .map_err(|e| {
            Refusal::new(500, "internal error", format!("the line check failed: {e}"))
        })??;
        if checked.accepted == 0 && !checked.rejected.is_empty() {
            let (r, body) = partial_write(&checked.rejected);
            return Ok(json_response(r.status, body));
        }
        self.enqueue(checked.chunks, started).await?;
        if checked.rejected.is_empty() {
            Ok(Response::builder()
                .status(204)
                .body(Full::default())
                .expect("valid response"))
        } else {
            let (r, body) = partial_write(&checked.rejected);
            Ok(json_response(r.status, body))
        }
    }

    /// Queues the chunks of one request and, with `ack = "durable"`, waits until every one of
    /// them is delivered or durably spooled.
    async fn enqueue(
        &self,
        mut chunks: Vec<crate::batch::Chunk>,
        started: Instant,
    ) -> Result<(), Refusal> {
        if chunks.is_empty() {
            return Ok(());
        }
        let deadline = ingest::deadline(started, self.settings.ack_timeout);
        let durable = self.settings.ack == AckMode::Durable;
        let (id, done) = self.waiters.register(chunks.len());
        // However this request ends (answered, timed out, or dropped because the client went
        // away), its entry goes.
        let _forget = Forget(&self.waiters, id);
        if durable {
            for (k, c) in chunks.iter_mut().enumerate() {
                c.ack = Some(Ack {
                    input: self.route,
                    file: id,
                    offset: k as u64,
                });
            }
        }
        for (k, mut chunk) in chunks.into_iter().enumerate() {
            loop {
                let Some(tx) = self.tx.get() else {
                    return Err(unavailable("lineship is shutting down"));
                };
                let lines = chunk.lines;
                match tx.try_send_waiting(chunk) {
                    Ok(()) => {
                        self.stats.lines.fetch_add(lines as u64, Relaxed);
                        break;
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        return Err(unavailable("lineship is shutting down"))
                    }
                    Err(TrySendError::Full(c)) => {
                        // Nothing of the request is in yet: answer now rather than hold the
                        // connection. Once part of it is in, wait a little for the rest.
                        if k == 0 || Instant::now() >= deadline {
                            return Err(unavailable("the pipeline is full (the server is slow or down and the spool cannot take more)"));
                        }
                        chunk = c;
                        drop(tx);
                        tokio::time::sleep(ROOM_POLL).await;
                    }
                }
            }
        }
        if !durable {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline.into(), done).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(unavailable(
                "the spool is full and dropped lines of this request (when_full = \"drop_newest\")",
            )),
            Ok(Err(_)) => Err(unavailable("lineship is shutting down")),
            Err(_) => Err(unavailable(
                "the lines were not delivered or durably spooled within ack_timeout",
            )),
        }
    }
}

/// Forgets a waiting request when dropped.
struct Forget<'a>(&'a Waiters, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

fn unavailable(why: &str) -> Refusal {
    Refusal::new(503, "unavailable", format!("{why}; retry later"))
}

/// The 400 answer to a request with rejected lines (its good lines were accepted).
fn partial_write(rejected: &[ingest::RejectedLine]) -> (Refusal, String) {
    let first: Vec<String> = rejected
        .iter()
        .take(3)
        .map(|r| format!("line {}: {}", r.line_number, r.error_message))
        .collect();
    let message = format!(
        "partial write: {} line(s) rejected, the other lines were accepted ({}{})",
        rejected.len(),
        first.join("; "),
        if rejected.len() > 3 { "; …" } else { "" }
    );
    let refusal = Refusal::invalid(message);
    let body = serde_json::json!({
        "code": refusal.code,
        "message": refusal.message,
        "error": "partial write of line protocol occurred",
        "data": rejected,
    })
    .to_string();
    (refusal, body)
}

fn json_response(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(
            hyper::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        )
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn refusal_response(r: &Refusal) -> Response<Full<Bytes>> {
    let mut resp = json_response(r.status, r.body());
    if r.status == 503 {
        resp.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("1"),
        );
    }
    resp
}
