//! Building and sending one write request. No retry logic here: that is `retry.rs` and the
//! sender in `mod.rs`.
//!
//! Invariant: at most [`MAX_BODY_READ`] bytes of any reply body are read, whatever its
//! `Content-Length` says or however long it goes on; a body left unread is dropped with its
//! response, which closes that connection instead of returning it to the pool. Everything taken
//! from a reply for logs (message, `Location`) is bounded and free of control characters. The
//! request `timeout` bounds the body read too (reqwest's total timeout), so a body that drips
//! forever cannot hold a write past `output.timeout`.

use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use reqwest::header::{
    HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, LOCATION, RETRY_AFTER,
};

use crate::batch::{Batch, Dest, Encoding};
use crate::config::{OutputSettings, Secret, ServerUrl};

use super::retry::parse_retry_after;

/// How much of an error body is kept for logs and the dead-letter header.
const MAX_MESSAGE: usize = 1024;

/// How many bytes of a reply body are read at most: enough for InfluxDB's JSON error with a
/// [`MAX_MESSAGE`]-character message. The rest is never read (a server answering with
/// `Content-Length: 2000000000` costs nothing).
pub const MAX_BODY_READ: usize = 8 * 1024;

/// How much of a `Location` header is kept for logs.
const MAX_LOCATION: usize = 256;

/// What the server answered.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<Duration>,
    /// The server's message (InfluxDB's JSON `message`, or the body text), shortened.
    pub message: String,
    /// Where a 3xx points, resolved against the request URL, shortened and sanitized.
    pub location: Option<String>,
}

/// Why no answer came.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("timed out")]
    Timeout,
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection closed before any answer came: on a kept-alive connection, the server
    /// may have closed it while the request was on its way (HTTP/1.1's keep-alive race, e.g.
    /// a server that closes after each answer without `Connection: close`).
    #[error("{0}")]
    Closed(String),
    #[error("{0}")]
    Other(String),
}

impl TransportError {
    /// Short label for metrics and health.
    pub fn class(&self) -> &'static str {
        match self {
            TransportError::Timeout => "timeout",
            TransportError::Connect(_) => "connect",
            TransportError::Closed(_) | TransportError::Other(_) => "transport",
        }
    }

    /// Whether resending at once, on a new connection, is the likely cure (see `Closed`).
    pub fn is_closed_connection(&self) -> bool {
        matches!(self, TransportError::Closed(_))
    }
}

/// One HTTP client (connection pool) for all the servers of an output.
pub struct Client {
    http: reqwest::Client,
    settings: OutputSettings,
    token: RwLock<Secret>,
}

/// What `GET /ping` answered.
#[derive(Debug, Clone)]
pub struct Pong {
    pub status: u16,
    /// `X-Influxdb-Version`, when the server sends it.
    pub version: Option<String>,
}

impl Client {
    pub fn new(settings: &OutputSettings) -> anyhow::Result<Self> {
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("lineship/", env!("CARGO_PKG_VERSION")))
            // Keep-alive, but drop idle connections before servers and proxies (often 3 min) do.
            .pool_idle_timeout(Duration::from_secs(90))
            // More idle connections than requests in flight are never used; the bound also
            // bounds how many dead ones a resend can meet (see `TransportError::Closed`).
            .pool_max_idle_per_host(settings.max_in_flight)
            .tcp_nodelay(true)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            // A redirected POST would lose its body; a redirect is reported instead.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &settings.tls_ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read output.tls_ca_file {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!(
                    "output.tls_ca_file {} holds no valid PEM certificate",
                    path.display()
                )
            })?;
            b = b.tls_certs_merge(certs);
        }
        let http = b.build().context("cannot build the HTTP client")?;
        Ok(Client {
            http,
            settings: settings.clone(),
            token: RwLock::new(settings.token.clone()),
        })
    }

    /// Replaces the token (SIGHUP re-reads `token_file`); the next request uses it.
    pub fn set_token(&self, token: Secret) {
        *self.token.write().unwrap() = token;
    }

    /// The write URL of `server` for a destination, with `org`, `bucket` and `precision` in
    /// the query.
    pub fn write_url(&self, server: &ServerUrl, dest: &Dest) -> url::Url {
        let mut u = server.write.clone();
        {
            let mut q = u.query_pairs_mut();
            if !self.settings.org.is_empty() {
                q.append_pair("org", &self.settings.org);
            }
            q.append_pair("bucket", &dest.bucket);
            q.append_pair("precision", dest.precision.as_str());
        }
        u
    }

    /// `GET {url}/ping`: whether the server can be reached at all (any HTTP answer counts).
    pub async fn ping(
        &self,
        server: &ServerUrl,
        timeout: Duration,
    ) -> Result<Pong, TransportError> {
        let get = || self.http.get(server.ping.clone()).timeout(timeout).send();
        let resp = match get().await.map_err(map_err) {
            // An idle kept-alive connection the server closed just now: not news either.
            Err(e) if e.is_closed_connection() => get().await.map_err(map_err)?,
            r => r?,
        };
        let version = resp
            .headers()
            .get("X-Influxdb-Version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = resp.status().as_u16();
        // Only the status matters; reading a little lets a short body keep the connection.
        let _ = read_capped(resp).await;
        Ok(Pong { status, version })
    }

    /// POSTs one batch. `timeout` bounds the whole request.
    pub async fn send(
        &self,
        server: &ServerUrl,
        batch: &Batch,
        timeout: Duration,
    ) -> Result<Reply, TransportError> {
        debug_assert!(!batch.body.is_empty(), "never send an empty body");
        let mut req = self
            .http
            .post(self.write_url(server, &batch.dest))
            .timeout(timeout)
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(batch.body.clone());
        if batch.encoding == Encoding::Gzip {
            req = req.header(CONTENT_ENCODING, "gzip");
        }
        {
            let token = self.token.read().unwrap();
            if !token.is_empty() {
                let mut v =
                    HeaderValue::from_str(&format!("Token {}", token.expose())).map_err(|_| {
                        TransportError::Other(
                            "the token holds characters not allowed in an HTTP header".into(),
                        )
                    })?;
                v.set_sensitive(true);
                req = req.header(AUTHORIZATION, v);
            }
        }
        let resp = req.send().await.map_err(map_err)?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let location = resp
            .headers()
            .get(LOCATION)
            .map(|v| location_of(resp.url(), v.as_bytes()));
        // The status decides; a body that fails or times out half-way is not a failed write
        // (a 2xx stays delivered), it only shortens the message.
        let (body, _complete) = read_capped(resp).await;
        let message = if (200..300).contains(&status) {
            String::new()
        } else {
            message_of(&body)
        };
        Ok(Reply {
            status,
            retry_after,
            message,
            location,
        })
    }
}

fn map_err(e: reqwest::Error) -> TransportError {
    // reqwest's Display is terse; the source chain says what actually failed.
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    // Never echo a URL with credentials; ours carry none (config refuses them), but be safe.
    if e.is_timeout() {
        TransportError::Timeout
    } else if e.is_connect() {
        TransportError::Connect(msg)
    } else if closed_before_answer(&e) {
        TransportError::Closed(msg)
    } else {
        TransportError::Other(msg)
    }
}

/// Whether the connection ended (EOF, or a reset: the server's kernel answers a request sent
/// into a closed socket with RST) before any part of the answer; `send` only fails before the
/// response head.
fn closed_before_answer(e: &reqwest::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() {
                return true;
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), ConnectionReset | BrokenPipe) {
                return true;
            }
        }
        src = s.source();
    }
    false
}

/// Reads at most [`MAX_BODY_READ`] bytes of the body, then drops the response: a body read to
/// its end leaves the connection to the pool, one cut short closes it. `complete` is false when
/// the body was cut short or failed (the bytes read so far are kept).
async fn read_capped(mut resp: reqwest::Response) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_BODY_READ - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if chunk.len() >= room {
                    // Possibly complete, but finding out could mean reading gigabytes.
                    return (body, false);
                }
            }
            Ok(None) => return (body, true),
            Err(_) => return (body, false),
        }
    }
}

/// A `Location` header fit for a log line: resolved against the request URL when it parses;
/// otherwise bytes that are not UTF-8 replaced and control characters escaped; at most
/// [`MAX_LOCATION`] characters either way.
fn location_of(base: &url::Url, raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(4 * MAX_LOCATION)]);
    let resolved = match std::str::from_utf8(raw) {
        Ok(s) if !s.chars().any(char::is_control) => base.join(s).ok().map(String::from),
        _ => None,
    };
    bounded_text(resolved.as_deref().unwrap_or(&text), MAX_LOCATION, true)
}

/// At most `max` characters of `text`, an ellipsis when cut; control characters escaped
/// (`escape`) or turned into spaces, so a server cannot forge or garble log lines.
fn bounded_text(text: &str, max: usize, escape: bool) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            if escape {
                out.extend(c.escape_default());
            } else {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// InfluxDB answers errors as JSON `{"code": "...", "message": "..."}`; others send text.
fn message_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Err {
        message: Option<String>,
    }
    let text = match serde_json::from_slice::<Err>(body) {
        Ok(Err { message: Some(m) }) => m,
        _ => String::from_utf8_lossy(body).into_owned(),
    };
    bounded_text(text.trim(), MAX_MESSAGE, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_prefers_influx_json() {
        assert_eq!(
            message_of(br#"{"code":"invalid","message":"bad line 3"}"#),
            "bad line 3"
        );
        assert_eq!(message_of(b"  plain text\n"), "plain text");
        assert!(message_of(&[b'x'; 5000]).chars().count() <= MAX_MESSAGE + 1);
        assert_eq!(
            message_of(b"line one\nline two\r\n\x1b[31mred"),
            "line one line two   [31mred"
        );
    }

    #[test]
    fn location_is_resolved_bounded_and_sanitized() {
        let base = url::Url::parse("http://db:8086/api/v2/write?org=o&bucket=b").unwrap();
        assert_eq!(
            location_of(&base, b"https://db:8443/api/v2/write?org=o"),
            "https://db:8443/api/v2/write?org=o"
        );
        assert_eq!(
            location_of(&base, b"/influx/api/v2/write"),
            "http://db:8086/influx/api/v2/write"
        );
        let hostile = location_of(&base, b"http://x/\xff\xfe\x1b[2J\n");
        assert_eq!(hostile, "http://x/\u{fffd}\u{fffd}\\u{1b}[2J\\n");
        let huge = location_of(&base, &[b'a'; 100_000]);
        assert!(huge.chars().count() <= MAX_LOCATION + 1, "{}", huge.len());
        assert!(huge.ends_with('…'));
    }
}
