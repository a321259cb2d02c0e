//! The config file's tables exactly as TOML writes them: what serde reads, before any
//! validation (see `validate.rs` for what turns them into [`Settings`](super::Settings)).
//!
//! Invariants: every table denies unknown keys, so a typo is an error that names the key; the
//! defaults the README lists live here (the `Default` impls and named default functions);
//! durations and sizes are read as the strings the README documents (`"500ms"`, `"64MiB"`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::batch::GzipEngine;

use super::{Balance, FsyncPolicy, InputFormat, LogFormat, WhenFull};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub agent: RawAgent,
    pub output: Option<RawOutput>,
    /// More outputs, by name (`[outputs.lake]`); `[output]` is the one named `default`.
    #[serde(default)]
    pub outputs: std::collections::BTreeMap<String, RawOutput>,
    #[serde(default)]
    pub spool: RawSpool,
    #[serde(default)]
    pub input: RawInputs,
    #[serde(default)]
    pub telemetry: RawTelemetry,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAgent {
    #[serde(deserialize_with = "de_duration")]
    pub flush_interval: Duration,
    pub batch_max_lines: u64,
    #[serde(deserialize_with = "de_size")]
    pub batch_max_bytes: u64,
    #[serde(deserialize_with = "de_size")]
    pub max_line_bytes: u64,
    pub stamp_missing_timestamps: bool,
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Cap on `state_dir/rejected/` (dead-letter files).
    #[serde(deserialize_with = "de_size")]
    pub rejected_max_size: u64,
    /// How often the summary line is logged.
    #[serde(deserialize_with = "de_duration")]
    pub summary_interval: Duration,
    /// Threads that compress sealed batches (default: the cores, at most 4).
    pub compress_threads: Option<u64>,
    /// Who compresses `gzip_level = 1`: ISA-L where the host has it, or libdeflate.
    pub gzip_engine: GzipEngine,
}

impl Default for RawAgent {
    fn default() -> Self {
        RawAgent {
            flush_interval: Duration::from_secs(1),
            batch_max_lines: 5000,
            batch_max_bytes: 4 << 20,
            max_line_bytes: 64 << 10,
            stamp_missing_timestamps: true,
            shutdown_timeout: Duration::from_secs(10),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            rejected_max_size: 64 << 20,
            summary_interval: Duration::from_secs(60),
            compress_threads: None,
            gzip_engine: GzipEngine::Auto,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOutput {
    pub url: String,
    /// Several servers; `url` is the one-server form (setting both is an error).
    pub urls: Option<Vec<String>>,
    pub balance: Balance,
    pub org: String,
    pub bucket: String,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub gzip_level: u64,
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    pub max_in_flight: u64,
    #[serde(deserialize_with = "de_size")]
    pub memory_limit: u64,
    #[serde(deserialize_with = "de_duration")]
    pub initial_backoff: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub max_backoff: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub max_retry_after: Duration,
    pub poison_retries: u64,
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for RawOutput {
    fn default() -> Self {
        RawOutput {
            url: String::new(),
            urls: None,
            balance: Balance::Failover,
            org: String::new(),
            bucket: String::new(),
            token: None,
            token_file: None,
            gzip_level: 1,
            timeout: Duration::from_secs(10),
            max_in_flight: 4,
            memory_limit: 64 << 20,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
            poison_retries: 10,
            tls_ca_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSpool {
    #[serde(deserialize_with = "de_size")]
    pub max_size: u64,
    pub when_full: WhenFull,
    pub fsync: FsyncPolicy,
    #[serde(deserialize_with = "de_duration")]
    pub fsync_interval: Duration,
}

impl Default for RawSpool {
    fn default() -> Self {
        RawSpool {
            max_size: 1 << 30,
            when_full: WhenFull::DropOldest,
            fsync: FsyncPolicy::Interval,
            fsync_interval: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawInputs {
    #[serde(default)]
    pub udp: Vec<RawUdp>,
    #[serde(default)]
    pub tail: Vec<RawTail>,
    #[serde(default)]
    pub tcp: Vec<RawTcp>,
    #[serde(default)]
    pub http: Vec<RawHttp>,
    #[serde(default)]
    pub stdin: RawStdin,
}

/// Declares an input table: its own keys plus the per-input line settings. (serde's `flatten`
/// cannot be combined with `deny_unknown_fields`, so the shared keys are spelled out by macro.)
macro_rules! input_table {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty,)* }) => {
        $(#[$m])*
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fm])* pub $f: $t,)*
            pub bucket: Option<String>,
            pub precision: Option<String>,
            pub stamp_missing_timestamps: Option<bool>,
            pub format: Option<InputFormat>,
            pub measurement: Option<String>,
            pub tags: Option<std::collections::BTreeMap<String, String>>,
            /// The outputs this input sends to (default: every output).
            pub outputs: Option<Vec<String>>,
        }
        impl $name {
            pub fn line(&self) -> RawLineSettings {
                RawLineSettings {
                    bucket: self.bucket.clone(),
                    precision: self.precision.clone(),
                    stamp_missing_timestamps: self.stamp_missing_timestamps,
                    format: self.format,
                    measurement: self.measurement.clone(),
                    tags: self.tags.clone(),
                    outputs: self.outputs.clone(),
                }
            }
        }
    };
}

input_table!(
    /// Settings every input may override, gathered from an input's table (the keys every
    /// input table has, and nothing else).
    #[derive(Default, Clone)]
    RawLineSettings {}
);

input_table!(RawUdp {
    pub listen: String,
    #[serde(default = "default_receive_buffer", deserialize_with = "de_size")]
    pub receive_buffer: u64,
    #[serde(default = "default_workers")]
    pub workers: u64,
});

fn default_receive_buffer() -> u64 {
    8 << 20
}
fn default_workers() -> u64 {
    1
}

input_table!(RawTail {
    pub paths: Vec<String>,
    #[serde(default)]
    pub from_beginning: bool,
    #[serde(default = "default_rotate_wait", deserialize_with = "de_duration")]
    pub rotate_wait: Duration,
    /// Default: a share of the open-file limit, resolved at startup (`tail::fds::budgets`).
    #[serde(default)]
    pub max_open_files: Option<u64>,
});

/// Long enough for a writer that logs rarely to finish with a rotated file before it reopens
/// its log (a few seconds loses those lines); short enough that deleted files do not hold
/// disk space for long.
fn default_rotate_wait() -> Duration {
    Duration::from_secs(60)
}

input_table!(RawTcp {
    pub listen: String,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    #[serde(default = "default_max_connections")]
    pub max_connections: u64,
    #[serde(default = "default_idle_timeout", deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
});

input_table!(RawHttp {
    pub listen: String,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    #[serde(default)]
    pub tokens: Vec<String>,
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub ack: super::AckMode,
    #[serde(default = "default_ack_timeout", deserialize_with = "de_duration")]
    pub ack_timeout: Duration,
    #[serde(default = "default_max_body_size", deserialize_with = "de_size")]
    pub max_body_size: u64,
    #[serde(default = "default_max_connections")]
    pub max_connections: u64,
    #[serde(default = "default_read_timeout", deserialize_with = "de_duration")]
    pub read_timeout: Duration,
});

/// Client libraries time a write out after 10 s by default; answering 503 before that lets
/// them retry instead of giving up.
fn default_ack_timeout() -> Duration {
    Duration::from_secs(8)
}
fn default_max_body_size() -> u64 {
    32 << 20
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_connections() -> u64 {
    256
}
/// Agents that forward over TCP keep their connection open and write every few seconds; a
/// peer that went away without a FIN is noticed within this.
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

input_table!(
    #[derive(Default)]
    RawStdin {
        #[serde(default)]
        pub enabled: bool,
    }
);

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub listen: Option<String>,
}

// Durations and sizes keep their own serde glue around humantime's and bytesize's parsers:
// `humantime_serde` answers "soon" with `invalid value: string "soon", expected a duration`
// and bytesize's `Deserialize` with `expected parsable string` (and `-5` with `expected integer
// overflow`), dropping the parser's reason and the form to write; these say both.

const DURATION_FORM: &str = "a duration like \"500ms\", \"10s\" or \"5m\"";
const SIZE_FORM: &str = "a size like \"64KiB\", \"4MiB\" or \"1GiB\", or a number of bytes";

/// A duration written as a string, e.g. `"500ms"` or `"1h 30m"`.
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(DURATION_FORM)
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Duration, E> {
            humantime::parse_duration(s).map_err(|e| {
                E::custom(format!(
                    "invalid duration {s:?} ({e}); write it like \"500ms\", \"10s\" or \"5m\""
                ))
            })
        }
    }
    d.deserialize_str(V)
}

/// A size written as a string (`"64MiB"`) or as a whole number of bytes.
fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(SIZE_FORM)
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<u64, E> {
            Ok(n)
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<u64, E> {
            u64::try_from(n)
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(n), &SIZE_FORM))
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<u64, E> {
            parse_size(s).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// Parses sizes such as `"64MiB"`, `"4 KiB"` or `"1000"` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| {
            format!("invalid size {s:?} ({e}); write it like \"64KiB\", \"4MiB\" or \"1GiB\"")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error message for `toml` read as the `[agent]` table.
    fn agent_error(toml: &str) -> String {
        toml::from_str::<RawAgent>(toml)
            .unwrap_err()
            .message()
            .to_owned()
    }

    #[test]
    fn bad_durations_and_sizes_say_the_value_and_the_form_to_write() {
        for (line, value, form) in [
            ("flush_interval = \"soon\"", "\"soon\"", "\"10s\""),
            ("flush_interval = 5", "5", "\"10s\""),
            ("flush_interval = true", "true", "\"10s\""),
            (
                "batch_max_bytes = \"4 parsecs\"",
                "\"4 parsecs\"",
                "\"4MiB\"",
            ),
            ("batch_max_bytes = -5", "-5", "\"4MiB\""),
            ("batch_max_bytes = true", "true", "\"4MiB\""),
            ("batch_max_bytes = 1.5", "1.5", "\"4MiB\""),
        ] {
            let msg = agent_error(line);
            assert!(msg.contains(value) && msg.contains(form), "{line}: {msg}");
            assert!(!msg.contains("untagged"), "{line}: {msg}");
        }
        let a: RawAgent =
            toml::from_str("batch_max_bytes = 1000\nmax_line_bytes = \"2 KiB\"").unwrap();
        assert_eq!((a.batch_max_bytes, a.max_line_bytes), (1000, 2048));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("4 KiB").unwrap(), 4096);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
    }
}
