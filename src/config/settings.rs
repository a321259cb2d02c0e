//! The typed settings the program runs on: every value validated, in range and in the unit
//! its user needs (`Duration`, `usize`, `SocketAddr`, `Url`, [`Secret`]).
//!
//! Invariant: a `Settings` only comes out of `validate.rs`, so holding one means `check`
//! would pass; nothing downstream re-checks a range.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::{Secret, TokenSource};
use crate::line::Precision;

#[derive(Debug, Clone)]
pub struct Settings {
    pub state_dir: PathBuf,
    pub agent: AgentSettings,
    /// Every output, `default` (the `[output]` table) first if configured, then
    /// `[outputs.NAME]` in name order. Never empty.
    pub outputs: Vec<OutputSettings>,
    pub spool: SpoolSettings,
    pub inputs: InputSettings,
    pub telemetry_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub flush_interval: Duration,
    pub batch_max_lines: usize,
    pub batch_max_bytes: usize,
    pub max_line_bytes: usize,
    pub shutdown_timeout: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    pub rejected_max_bytes: u64,
    pub summary_interval: Duration,
    /// Threads compressing sealed batches, the batcher thread included: 1 compresses on the
    /// batcher thread alone, n on it and n - 1 workers.
    pub compress_threads: usize,
    /// Who compresses `gzip_level = 1` ([`crate::batch::select_engine`] applies it).
    pub gzip_engine: crate::batch::GzipEngine,
}

#[derive(Debug, Clone)]
pub struct OutputSettings {
    /// `default` for `[output]`, else the `NAME` of `[outputs.NAME]`.
    pub name: String,
    /// The table, for messages: `output` or `outputs.NAME`.
    pub key: String,
    /// The servers, in the configured order (`output.url` is a list of one).
    pub urls: Vec<ServerUrl>,
    /// How writes are spread over `urls`.
    pub balance: Balance,
    pub org: String,
    pub bucket: String,
    pub token: Secret,
    pub token_file: Option<PathBuf>,
    /// Where `token` came from (the config file's permissions matter only for `Config`).
    pub token_source: TokenSource,
    pub gzip_level: u32,
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub memory_limit: usize,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub max_retry_after: Duration,
    pub poison_retries: u32,
    pub tls_ca_file: Option<PathBuf>,
}

impl OutputSettings {
    /// The URLs for a log line or a status: `http://a:8086/, http://b:8086/`.
    pub fn urls_text(&self) -> String {
        let all: Vec<&str> = self.urls.iter().map(|u| u.base.as_str()).collect();
        all.join(", ")
    }
}

/// One server of an output.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// The base URL as configured (for logs, metrics and `/health`).
    pub base: Url,
    /// `{base}/api/v2/write`, without query.
    pub write: Url,
    /// `{base}/ping`, the health probe.
    pub ping: Url,
}

/// Shows the base URL only (`lineship check` prints the settings): the write and ping URLs
/// follow from it.
impl std::fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ServerUrl")
            .field(&self.base.as_str())
            .finish()
    }
}

/// How an output with several URLs spreads its writes (`output.balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Every write goes to the first healthy URL in order.
    Failover,
    /// Writes spread over the healthy URLs, fewest requests in flight first.
    RoundRobin,
    /// Each series (measurement and tag set) always goes to the same URL, chosen by
    /// rendezvous hashing; every URL has its own spool.
    Shard,
}

/// A set of outputs, a bit per index in [`Settings::outputs`].
pub type OutputSet = u64;

/// The most outputs a config may have, and the most delivery lanes (an output, or a shard of
/// one) in all: each has its own sender, spool and sync task.
pub const MAX_OUTPUTS: usize = 16;
pub const MAX_LANES: usize = 64;

#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub max_size: u64,
    pub when_full: WhenFull,
    pub fsync: FsyncPolicy,
    pub fsync_interval: Duration,
}

/// Resolved per-input line settings.
#[derive(Debug, Clone)]
pub struct LineSettings {
    /// The input's bucket; empty: each output's own `bucket`.
    pub bucket: String,
    /// The outputs this input sends to, as a bit per index in [`Settings::outputs`].
    pub outputs: OutputSet,
    pub precision: Precision,
    pub stamp_missing: bool,
    pub format: InputFormat,
    pub measurement: String,
    pub tags: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct UdpSettings {
    pub name: String,
    /// The config table, e.g. `input.udp[0]`, for errors that should name the key.
    pub key: String,
    pub listen: SocketAddr,
    pub receive_buffer: usize,
    pub workers: usize,
    pub line: LineSettings,
}

#[derive(Debug, Clone)]
pub struct TcpSettings {
    pub name: String,
    /// The config table, e.g. `input.tcp[0]`, for errors that should name the key.
    pub key: String,
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    /// Connections beyond this are closed as soon as they are accepted.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    pub line: LineSettings,
}

/// A listener's certificate chain and private key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// When an HTTP write is answered 204.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// Once every line of the request is delivered or durably in the spool.
    #[default]
    Durable,
    /// As soon as the lines are in the pipeline.
    Queued,
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub name: String,
    /// The config table, e.g. `input.http[0]`, for errors that should name the key.
    pub key: String,
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    /// The tokens a client may present (none: no authentication, loopback only).
    pub tokens: Vec<Secret>,
    pub ack: AckMode,
    pub ack_timeout: Duration,
    /// Largest request body, counted after decompression.
    pub max_body_size: usize,
    pub max_connections: usize,
    /// Bound on reading a request's headers, and its body.
    pub read_timeout: Duration,
    /// A `bucket` configured on the input: every request goes there, whatever it asks.
    pub force_bucket: Option<String>,
    pub line: LineSettings,
}

#[derive(Debug, Clone)]
pub struct TailSettings {
    pub name: String,
    pub paths: Vec<String>,
    pub from_beginning: bool,
    /// How long a rotated or deleted file stays open after it was read to its end, every line
    /// delivered, with no new data.
    pub rotate_wait: Duration,
    /// At most this many files open at once (the others are read in turn); `None`: a share
    /// of the open-file limit.
    pub max_open_files: Option<usize>,
    pub line: LineSettings,
}

#[derive(Debug, Clone)]
pub struct StdinSettings {
    pub line: LineSettings,
}

#[derive(Debug, Clone, Default)]
pub struct InputSettings {
    pub udp: Vec<UdpSettings>,
    pub tail: Vec<TailSettings>,
    pub tcp: Vec<TcpSettings>,
    pub http: Vec<HttpSettings>,
    pub stdin: Option<StdinSettings>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    DropOldest,
    DropNewest,
    Block,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    Always,
    Interval,
    Never,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    #[default]
    Lp,
    Text,
}
