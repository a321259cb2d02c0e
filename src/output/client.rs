//! Building and sending one write request. No retry logic here: that is `retry.rs` and the
//! sender in `mod.rs`.

use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};

use crate::batch::{Batch, Dest, Encoding};
use crate::config::{OutputSettings, Secret};

use super::retry::parse_retry_after;

/// How much of an error body is kept for logs and the dead-letter header.
const MAX_MESSAGE: usize = 1024;

/// What the server answered.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<Duration>,
    /// The server's message (InfluxDB's JSON `message`, or the body text), shortened.
    pub message: String,
}

/// Why no answer came.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("timed out")]
    Timeout,
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{0}")]
    Other(String),
}

impl TransportError {
    /// Short label for metrics and health.
    pub fn class(&self) -> &'static str {
        match self {
            TransportError::Timeout => "timeout",
            TransportError::Connect(_) => "connect",
            TransportError::Other(_) => "transport",
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    settings: OutputSettings,
    /// `{url}/ping`, the health probe.
    ping_url: url::Url,
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
        let mut ping_url = settings.url.clone();
        ping_url.set_path(&format!(
            "{}/ping",
            settings.url.path().trim_end_matches('/')
        ));
        ping_url.set_query(None);
        Ok(Client {
            http,
            settings: settings.clone(),
            ping_url,
            token: RwLock::new(settings.token.clone()),
        })
    }

    pub fn ping_url(&self) -> &url::Url {
        &self.ping_url
    }

    /// Replaces the token (SIGHUP re-reads `token_file`); the next request uses it.
    pub fn set_token(&self, token: Secret) {
        *self.token.write().unwrap() = token;
    }

    /// The write URL for a destination, with `org`, `bucket` and `precision` in the query.
    pub fn write_url(&self, dest: &Dest) -> url::Url {
        let mut u = self.settings.write_url.clone();
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
    pub async fn ping(&self, timeout: Duration) -> Result<Pong, TransportError> {
        let resp = self
            .http
            .get(self.ping_url.clone())
            .timeout(timeout)
            .send()
            .await
            .map_err(map_err)?;
        let version = resp
            .headers()
            .get("X-Influxdb-Version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = resp.status().as_u16();
        let _ = resp.bytes().await;
        Ok(Pong { status, version })
    }

    /// POSTs one batch. `timeout` bounds the whole request.
    pub async fn send(&self, batch: &Batch, timeout: Duration) -> Result<Reply, TransportError> {
        debug_assert!(!batch.body.is_empty(), "never send an empty body");
        let mut req = self
            .http
            .post(self.write_url(&batch.dest))
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
        let message = if (200..300).contains(&status) {
            // Drain so the connection can be reused.
            let _ = resp.bytes().await;
            String::new()
        } else {
            resp.bytes()
                .await
                .map(|b| message_of(&b))
                .unwrap_or_default()
        };
        Ok(Reply {
            status,
            retry_after,
            message,
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
    } else {
        TransportError::Other(msg)
    }
}

/// InfluxDB answers errors as JSON `{"code": "...", "message": "..."}`; others send text.
fn message_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Err {
        message: Option<String>,
    }
    let text = match serde_json::from_slice::<Err>(body) {
        Ok(Err { message: Some(m) }) => m,
        _ => String::from_utf8_lossy(body).trim().to_owned(),
    };
    let mut t: String = text.chars().take(MAX_MESSAGE).collect();
    if t.len() < text.len() {
        t.push('…');
    }
    t
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
    }
}
