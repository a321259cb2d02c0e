//! Configuration: raw TOML structs (`Raw*`, exactly what the file says) validated into typed
//! [`Settings`] (what the program runs on).
//!
//! Invariants: every table denies unknown keys, so a typo is an error that names the key; every
//! validation error names the key as `table.key`; the token lives only in a [`Secret`], whose
//! `Debug` and `Display` never show it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Deserializer};
use url::Url;

use crate::line::Precision;

/// Environment variable consulted for the token when the config names neither `token` nor
/// `token_file`.
pub const TOKEN_ENV: &str = "LINESHIP_TOKEN";

/// A value that must never be logged. `Debug`/`Display` print `[redacted]`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself; call only where it is put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("[redacted]")
        }
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

// ---------------------------------------------------------------------------------------------
// Raw structs: what TOML says.

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub agent: RawAgent,
    pub output: Option<RawOutput>,
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
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOutput {
    pub url: String,
    pub org: String,
    pub bucket: String,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub gzip_level: u32,
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
    pub poison_retries: u32,
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for RawOutput {
    fn default() -> Self {
        RawOutput {
            url: String::new(),
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

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawInputs {
    #[serde(default)]
    pub udp: Vec<RawUdp>,
    #[serde(default)]
    pub tail: Vec<RawTail>,
    #[serde(default)]
    pub stdin: RawStdin,
}

/// Settings every input may override, gathered from an input's table.
#[derive(Debug, Default, Clone)]
pub struct RawLineSettings {
    pub bucket: Option<String>,
    pub precision: Option<String>,
    pub stamp_missing_timestamps: Option<bool>,
    pub format: Option<InputFormat>,
    pub measurement: Option<String>,
    pub tags: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    #[default]
    Lp,
    Text,
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
                }
            }
        }
    };
}

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

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {s:?} ({e}); write it like \"500ms\", \"10s\" or \"5m\""
        ))
    })
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum SizeRepr {
        Int(u64),
        Str(String),
    }
    match SizeRepr::deserialize(d)? {
        SizeRepr::Int(n) => Ok(n),
        SizeRepr::Str(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
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

// ---------------------------------------------------------------------------------------------
// Typed settings: what the program runs on.

#[derive(Debug, Clone)]
pub struct Settings {
    pub state_dir: PathBuf,
    pub agent: AgentSettings,
    pub output: OutputSettings,
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
}

#[derive(Debug, Clone)]
pub struct OutputSettings {
    /// The server's base URL as configured (for logs).
    pub url: Url,
    /// `{url}/api/v2/write`, without query.
    pub write_url: Url,
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
    pub bucket: String,
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
    pub stdin: Option<StdinSettings>,
}

/// Where a setting came from when validating: lets errors name `table.key`.
fn key_err(key: &str, msg: impl fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("config key `{key}`: {msg}")
}

impl Settings {
    /// Reads, parses and validates a config file. `force_stdin` is the `--stdin` flag.
    pub fn load(path: &Path, force_stdin: bool) -> anyhow::Result<Settings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml(&text, force_stdin, |k| std::env::var(k).ok())
            .with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses and validates config text; `env` looks up environment variables (injected for tests).
    pub fn from_toml(
        text: &str,
        force_stdin: bool,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Settings> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| parse_error(text, &e))?;
        raw.validate(force_stdin, env)
    }
}

/// A TOML error as `line L, column C: message`. toml's own rendering quotes the offending
/// source line, which may be `token = <secret>` (unquoted, mistyped key, wrong type), and this
/// message goes to stderr and the journal; so the source is never quoted, and on a line that
/// mentions a token, values the message quotes in backticks are redacted too. The key is
/// named as `table.key`, found from the table headers above the line.
fn parse_error(text: &str, e: &toml::de::Error) -> anyhow::Error {
    let msg = e.message().trim();
    // Messages about a key name quote key names only; the others may quote the value.
    let about_keys = ["unknown field", "missing field", "duplicate key"]
        .iter()
        .any(|p| msg.starts_with(p));
    let Some(span) = e.span() else {
        let msg = if about_keys {
            msg.to_owned()
        } else {
            redact_quoted(msg)
        };
        return anyhow::anyhow!("{msg}");
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line_no = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    let source_line = &text[line_start..line_end];
    let msg = if !about_keys && source_line.to_ascii_lowercase().contains("tok") {
        redact_quoted(msg)
    } else {
        msg.to_owned()
    };
    let at = format!("line {line_no}, column {column}");
    match key_at(&text[..line_start], source_line) {
        Some(key) => anyhow::anyhow!("config key `{key}` ({at}): {msg}"),
        None => anyhow::anyhow!("{at}: {msg}"),
    }
}

/// A best guess at the dotted key `line` sets, from the table headers `before` it:
/// `agent.flush_interval`, `input.udp[1].listen`; only the table when the line holds no plain
/// `key =` (a mangled line such as `token: "…"` may be all secret). `None` outside any table.
fn key_at(before: &str, line: &str) -> Option<String> {
    let bare = |k: &str| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    let header = |l: &str| {
        let l = l.split('#').next().unwrap_or("").trim();
        let (name, array) = match l.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            Some(name) => (name, true),
            None => (
                l.strip_prefix('[').and_then(|l| l.strip_suffix(']'))?,
                false,
            ),
        };
        let name = name.trim();
        bare(name).then(|| (name.to_owned(), array))
    };
    // Entries of an array of tables append wherever they appear, so count them per name.
    let mut entries: std::collections::HashMap<String, usize> = Default::default();
    let mut table = String::new();
    for l in before.lines() {
        match header(l) {
            Some((name, true)) => {
                let n = entries.entry(name.clone()).or_insert(0);
                table = format!("{name}[{n}]");
                *n += 1;
            }
            Some((name, false)) => table = name,
            None => {}
        }
    }
    if let Some((name, _)) = header(line) {
        return Some(name);
    }
    // `key = value` with a value: a token pasted alone (`AbC…==`) splits at its padding.
    let key = line
        .split_once('=')
        .filter(|(_, v)| {
            let v = v.trim();
            !v.is_empty() && !v.starts_with('=')
        })
        .map(|(k, _)| k.trim())
        .filter(|k| bare(k));
    match (key, table.is_empty()) {
        (Some(key), true) => Some(key.to_owned()),
        (Some(key), false) => Some(format!("{table}.{key}")),
        (None, true) => None,
        (None, false) => Some(table),
    }
}

/// Replaces the contents of every `backticked` span with `[redacted]`.
fn redact_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for (i, part) in msg.split('`').enumerate() {
        if i > 0 {
            out.push('`');
        }
        out.push_str(if i % 2 == 1 { "[redacted]" } else { part });
    }
    out
}

impl RawConfig {
    pub fn validate(
        self,
        force_stdin: bool,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Settings> {
        let a = self.agent;
        let state_dir = match self.state_dir {
            Some(p) if p.as_os_str().is_empty() => bail!(key_err("state_dir", "must not be empty")),
            Some(p) => p,
            None => env("STATE_DIRECTORY")
                // systemd may pass several directories separated by ':'; the first is ours.
                .and_then(|s| s.split(':').next().map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("/var/lib/lineship")),
        };
        if a.batch_max_lines == 0 {
            bail!(key_err("agent.batch_max_lines", "must be at least 1"));
        }
        if a.max_line_bytes < 16 {
            bail!(key_err("agent.max_line_bytes", "must be at least 16 bytes"));
        }
        if a.batch_max_bytes < a.max_line_bytes + 32 {
            bail!(key_err(
                "agent.batch_max_bytes",
                format!(
                    "must be larger than agent.max_line_bytes ({} bytes) so that every valid line fits a batch",
                    a.max_line_bytes
                )
            ));
        }
        if a.flush_interval.is_zero() {
            bail!(key_err("agent.flush_interval", "must be greater than 0"));
        }
        if a.summary_interval.is_zero() {
            bail!(key_err("agent.summary_interval", "must be greater than 0"));
        }
        tracing_subscriber::EnvFilter::try_new(&a.log_level).map_err(|e| {
            key_err(
                "agent.log_level",
                format!("{e}; use e.g. \"info\" or \"lineship=debug\""),
            )
        })?;
        if a.rejected_max_size < (1 << 20) {
            bail!(key_err("agent.rejected_max_size", "must be at least 1MiB"));
        }
        let agent = AgentSettings {
            flush_interval: a.flush_interval,
            batch_max_lines: to_usize("agent.batch_max_lines", a.batch_max_lines)?,
            batch_max_bytes: to_usize("agent.batch_max_bytes", a.batch_max_bytes)?,
            max_line_bytes: to_usize("agent.max_line_bytes", a.max_line_bytes)?,
            shutdown_timeout: a.shutdown_timeout,
            log_level: a.log_level,
            log_format: a.log_format,
            rejected_max_bytes: a.rejected_max_size,
            summary_interval: a.summary_interval,
        };

        let Some(o) = self.output else {
            bail!("missing table [output]: set at least output.url, output.org and output.bucket");
        };
        let output = validate_output(o, &env)?;

        let s = self.spool;
        if s.max_size < (1 << 20) {
            bail!(key_err("spool.max_size", "must be at least 1MiB"));
        }
        if s.fsync == FsyncPolicy::Interval && s.fsync_interval.is_zero() {
            bail!(key_err("spool.fsync_interval", "must be greater than 0"));
        }
        let spool = SpoolSettings {
            max_size: s.max_size,
            when_full: s.when_full,
            fsync: s.fsync,
            fsync_interval: s.fsync_interval,
        };

        let defaults = LineDefaults {
            bucket: &output.bucket,
            stamp_missing: a.stamp_missing_timestamps,
        };
        let mut inputs = InputSettings::default();
        for (i, u) in self.input.udp.into_iter().enumerate() {
            let key = format!("input.udp[{i}]");
            let listen: SocketAddr = u.listen.parse().map_err(|e| {
                key_err(
                    &format!("{key}.listen"),
                    format!(
                        "{e}: {:?} is not an address like \"127.0.0.1:8089\" or \"[::1]:8089\"",
                        u.listen
                    ),
                )
            })?;
            if u.workers == 0 || u.workers > 64 {
                bail!(key_err(
                    &format!("{key}.workers"),
                    "must be between 1 and 64"
                ));
            }
            inputs.udp.push(UdpSettings {
                name: format!("udp:{listen}"),
                key: key.clone(),
                listen,
                receive_buffer: to_usize(&format!("{key}.receive_buffer"), u.receive_buffer)?,
                workers: u.workers as usize,
                line: defaults.resolve(&key, u.line())?,
            });
        }
        for (i, t) in self.input.tail.into_iter().enumerate() {
            let key = format!("input.tail[{i}]");
            if t.paths.is_empty() {
                bail!(key_err(
                    &format!("{key}.paths"),
                    "must list at least one path or glob"
                ));
            }
            for p in &t.paths {
                if !Path::new(p).is_absolute() {
                    bail!(key_err(
                        &format!("{key}.paths"),
                        format!("{p:?} must be an absolute path")
                    ));
                }
            }
            let max_open_files = match t.max_open_files {
                Some(0) => bail!(key_err(
                    &format!("{key}.max_open_files"),
                    "must be at least 1 (leave it out for a share of the open-file limit)"
                )),
                Some(n) => Some(to_usize(&format!("{key}.max_open_files"), n)?),
                None => None,
            };
            inputs.tail.push(TailSettings {
                name: format!("tail[{i}]"),
                line: defaults.resolve(&key, t.line())?,
                paths: t.paths,
                from_beginning: t.from_beginning,
                rotate_wait: t.rotate_wait,
                max_open_files,
            });
        }
        // Resolved even when disabled, so a bad key is reported before someone needs `--stdin`.
        let stdin_line = defaults.resolve("input.stdin", self.input.stdin.line())?;
        if self.input.stdin.enabled || force_stdin {
            inputs.stdin = Some(StdinSettings { line: stdin_line });
        }

        let telemetry_listen = match self.telemetry.listen {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s.parse().map_err(|e| {
                key_err(
                    "telemetry.listen",
                    format!("{e}: {s:?} is not an address like \"127.0.0.1:9273\""),
                )
            })?),
        };

        Ok(Settings {
            state_dir,
            agent,
            output,
            spool,
            inputs,
            telemetry_listen,
        })
    }
}

struct LineDefaults<'a> {
    bucket: &'a str,
    stamp_missing: bool,
}

impl LineDefaults<'_> {
    fn resolve(&self, key: &str, raw: RawLineSettings) -> anyhow::Result<LineSettings> {
        let precision = match raw.precision {
            None => Precision::Ns,
            Some(p) => p
                .parse()
                .map_err(|e| key_err(&format!("{key}.precision"), e))?,
        };
        let bucket = raw.bucket.unwrap_or_else(|| self.bucket.to_owned());
        if bucket.is_empty() {
            bail!(key_err(&format!("{key}.bucket"), "must not be empty"));
        }
        let format = raw.format.unwrap_or_default();
        if format == InputFormat::Lp && (raw.measurement.is_some() || raw.tags.is_some()) {
            bail!(key_err(
                &format!("{key}.measurement"),
                "`measurement` and `tags` only apply with format = \"text\""
            ));
        }
        // Line protocol cannot carry control characters in a name, and a trailing backslash
        // would escape the separator after it.
        let unfit = |s: &str| {
            if s.is_empty() {
                Some("must not be empty")
            } else if s.chars().any(char::is_control) {
                Some("must not hold control characters (tabs, newlines)")
            } else if s.ends_with('\\') {
                Some("must not end with a backslash")
            } else {
                None
            }
        };
        let measurement = raw.measurement.unwrap_or_else(|| "log".to_owned());
        if let Some(why) = unfit(&measurement) {
            bail!(key_err(&format!("{key}.measurement"), why));
        }
        let tags: Vec<(String, String)> = raw.tags.unwrap_or_default().into_iter().collect();
        for (k, v) in &tags {
            if let Some(why) = unfit(k).or_else(|| unfit(v)) {
                bail!(key_err(
                    &format!("{key}.tags"),
                    format!("tag {k:?} = {v:?}: keys and values {why}")
                ));
            }
            if matches!(k.as_str(), "time" | "_field" | "_measurement" | "path") {
                bail!(key_err(
                    &format!("{key}.tags"),
                    format!("tag key {k:?} is reserved")
                ));
            }
        }
        Ok(LineSettings {
            bucket,
            precision,
            stamp_missing: raw.stamp_missing_timestamps.unwrap_or(self.stamp_missing),
            format,
            measurement,
            tags,
        })
    }
}

fn validate_output(
    o: RawOutput,
    env: &impl Fn(&str) -> Option<String>,
) -> anyhow::Result<OutputSettings> {
    if o.url.is_empty() {
        bail!(key_err(
            "output.url",
            "is required, e.g. \"http://localhost:8086\""
        ));
    }
    let url = Url::parse(&o.url).map_err(|e| key_err("output.url", format!("{e}: {:?}", o.url)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        bail!(key_err(
            "output.url",
            format!("{:?} must be an http:// or https:// URL with a host", o.url)
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!(key_err(
            "output.url",
            "must not have a query or fragment; org and bucket have their own keys"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        bail!(key_err(
            "output.url",
            "must not hold credentials; use output.token or output.token_file"
        ));
    }
    let mut write_url = url.clone();
    let path = format!("{}/api/v2/write", url.path().trim_end_matches('/'));
    write_url.set_path(&path);
    if o.org.is_empty() {
        // InfluxDB 2.x needs it; VictoriaMetrics and InfluxDB 3 ignore it, so only warn later.
    }
    if o.bucket.is_empty() {
        bail!(key_err(
            "output.bucket",
            "is required (the default bucket; inputs may override it)"
        ));
    }
    // `token = ""` counts as unset, so token_file and LINESHIP_TOKEN still apply.
    let (token, token_source) = match (o.token.filter(|t| !t.is_empty()), &o.token_file) {
        (Some(_), Some(_)) => bail!(key_err(
            "output.token_file",
            "set either output.token or output.token_file, not both"
        )),
        (Some(t), None) => (Secret::new(t), TokenSource::Config),
        (None, Some(f)) => (
            read_token_file(f).map_err(|e| key_err("output.token_file", e))?,
            TokenSource::File,
        ),
        (None, None) => match env(TOKEN_ENV) {
            Some(t) if !t.is_empty() => (Secret::new(t), TokenSource::Env),
            _ => (Secret::default(), TokenSource::None),
        },
    };
    if o.gzip_level > 12 {
        bail!(key_err(
            "output.gzip_level",
            "must be between 0 (no compression) and 12"
        ));
    }
    if o.max_in_flight == 0 || o.max_in_flight > 256 {
        bail!(key_err("output.max_in_flight", "must be between 1 and 256"));
    }
    if o.timeout.is_zero() {
        bail!(key_err("output.timeout", "must be greater than 0"));
    }
    if o.initial_backoff.is_zero() {
        bail!(key_err("output.initial_backoff", "must be greater than 0"));
    }
    if o.max_backoff < o.initial_backoff {
        bail!(key_err(
            "output.max_backoff",
            "must not be less than output.initial_backoff"
        ));
    }
    if o.poison_retries == 0 {
        bail!(key_err("output.poison_retries", "must be at least 1"));
    }
    if o.memory_limit < (1 << 20) {
        bail!(key_err("output.memory_limit", "must be at least 1MiB"));
    }
    let tls_ca_file = match o.tls_ca_file {
        Some(p) if p.as_os_str().is_empty() => None,
        Some(p) => {
            std::fs::metadata(&p).map_err(|e| {
                key_err(
                    "output.tls_ca_file",
                    format!("cannot read {}: {e}", p.display()),
                )
            })?;
            Some(p)
        }
        None => None,
    };
    Ok(OutputSettings {
        url,
        write_url,
        org: o.org,
        bucket: o.bucket,
        token,
        token_file: o.token_file,
        token_source,
        gzip_level: o.gzip_level,
        timeout: o.timeout,
        max_in_flight: o.max_in_flight as usize,
        memory_limit: to_usize("output.memory_limit", o.memory_limit)?,
        initial_backoff: o.initial_backoff,
        max_backoff: o.max_backoff,
        max_retry_after: o.max_retry_after,
        poison_retries: o.poison_retries,
        tls_ca_file,
    })
}

/// Reads a token file; surrounding whitespace (a trailing newline) is not part of the token.
pub fn read_token_file(path: &Path) -> Result<Secret, String> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret::new(t))
}

/// Where the output token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    None,
    /// `output.token` in the config file.
    Config,
    /// `output.token_file`.
    File,
    /// The `LINESHIP_TOKEN` environment variable.
    Env,
}

/// A warning when `path` (a file holding a secret) can be read by every user on the machine.
pub fn world_readable_warning(path: &Path, what: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "{what} {} holds the output token and is readable by every user (mode {:o}); run `chmod 600 {}` (or 640 with group lineship)",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

/// Warnings about secrets readable by every user: the config file when it holds
/// `output.token`, and `output.token_file`.
pub fn secret_file_warnings(config_path: &Path, settings: &Settings) -> Vec<String> {
    let o = &settings.output;
    let mut out = Vec::new();
    if o.token_source == TokenSource::Config && !o.token.is_empty() {
        out.extend(world_readable_warning(config_path, "config file"));
    }
    if let (TokenSource::File, Some(f)) = (o.token_source, &o.token_file) {
        out.extend(world_readable_warning(f, "output.token_file"));
    }
    out
}

fn to_usize(key: &str, v: u64) -> anyhow::Result<usize> {
    usize::try_from(v).map_err(|_| key_err(key, "is too large for this machine"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
state_dir = "/tmp/x"
[output]
url = "http://localhost:8086/"
org = "o"
bucket = "b"
token = "s3cret"
"#;

    fn load(text: &str) -> anyhow::Result<Settings> {
        Settings::from_toml(text, false, |_| None)
    }

    #[test]
    fn minimal_config_gets_design_defaults() {
        let s = load(MINIMAL).unwrap();
        assert_eq!(
            s.output.write_url.as_str(),
            "http://localhost:8086/api/v2/write"
        );
        assert_eq!(s.agent.batch_max_lines, 5000);
        assert_eq!(s.agent.batch_max_bytes, 4 << 20);
        assert_eq!(s.agent.flush_interval, Duration::from_secs(1));
        assert_eq!(s.output.memory_limit, 64 << 20);
        assert_eq!(s.output.max_retry_after, Duration::from_secs(300));
        assert_eq!(s.spool.when_full, WhenFull::DropOldest);
        assert!(s.inputs.stdin.is_none());
        let t = load(&format!(
            "{MINIMAL}\n[[input.tail]]\npaths = [\"/x/*.log\"]\n"
        ))
        .unwrap();
        assert_eq!(t.inputs.tail[0].rotate_wait, Duration::from_secs(60));
        let t = load(&format!(
            "{MINIMAL}\n[[input.tail]]\npaths = [\"/x/*.log\"]\nrotate_wait = \"5m\"\n"
        ))
        .unwrap();
        assert_eq!(t.inputs.tail[0].rotate_wait, Duration::from_secs(300));
    }

    #[test]
    fn tail_max_open_files_is_optional_and_positive() {
        let tail = |extra: &str| {
            load(&format!(
                "{MINIMAL}\n[[input.tail]]\npaths = [\"/x/*.log\"]\n{extra}"
            ))
        };
        assert_eq!(tail("").unwrap().inputs.tail[0].max_open_files, None);
        let t = tail("max_open_files = 100\n").unwrap();
        assert_eq!(t.inputs.tail[0].max_open_files, Some(100));
        let e = format!("{:#}", tail("max_open_files = 0\n").unwrap_err());
        assert!(e.contains("input.tail[0].max_open_files"), "{e}");
    }

    #[test]
    fn url_path_prefix_is_kept() {
        let s = load(&MINIMAL.replace("http://localhost:8086/", "https://h/influx")).unwrap();
        assert_eq!(s.output.write_url.as_str(), "https://h/influx/api/v2/write");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load(&format!("{MINIMAL}\n[agent]\nflush_intervall = \"1s\"\n")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("flush_intervall"), "{msg}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (snippet, key) in [
            ("[agent]\nflush_interval = \"soon\"\n", "flush_interval"),
            (
                "[agent]\nbatch_max_bytes = \"4 parsecs\"\n",
                "batch_max_bytes",
            ),
            ("[agent]\nbatch_max_lines = 0\n", "agent.batch_max_lines"),
            (
                "[agent]\nrejected_max_size = 0\n",
                "agent.rejected_max_size",
            ),
            (
                "[input.stdin]\nprecision = \"minutes\"\n",
                "input.stdin.precision",
            ),
            ("[[input.udp]]\nlisten = \"nope\"\n", "input.udp[0].listen"),
            ("[telemetry]\nlisten = \"x\"\n", "telemetry.listen"),
            (
                "[[input.tail]]\npaths = [\"/x\"]\nrotate_wait = \"soon\"\n",
                "rotate_wait",
            ),
            (
                "[[input.tail]]\npaths = [\"/x\"]\nformat = \"text\"\ntags = { app = \"a\\tb\" }\n",
                "input.tail[0].tags",
            ),
            (
                "[input.stdin]\nformat = \"text\"\nmeasurement = 'logs\\'\n",
                "input.stdin.measurement",
            ),
        ] {
            let err = load(&format!("{MINIMAL}\n{snippet}")).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(key), "{snippet:?} -> {msg}");
        }
        let err = load(&MINIMAL.replace("http://localhost:8086/", "ftp://x")).unwrap_err();
        assert!(format!("{err:#}").contains("output.url"));
        let err = load(
            &MINIMAL
                .replace("gzip", "x")
                .replace("token = \"s3cret\"", "gzip_level = 13"),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("output.gzip_level"));
    }

    #[test]
    fn token_sources_and_redaction() {
        let s = load(MINIMAL).unwrap();
        assert_eq!(s.output.token.expose(), "s3cret");
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("[redacted]"));

        let no_token = MINIMAL.replace("token = \"s3cret\"", "");
        let s = Settings::from_toml(&no_token, false, |k| {
            (k == TOKEN_ENV).then(|| "envtok".into())
        })
        .unwrap();
        assert_eq!(s.output.token.expose(), "envtok");

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "filetok\n").unwrap();
        let with_file = MINIMAL.replace("token = \"s3cret\"", &format!("token_file = {:?}", f));
        let s = load(&with_file).unwrap();
        assert_eq!(s.output.token.expose(), "filetok");
        let both = format!("{with_file}token = \"x\"\n");
        assert!(format!("{:#}", load(&both).unwrap_err()).contains("output.token_file"));

        let empty = MINIMAL.replace("token = \"s3cret\"", "token = \"\"");
        let s = Settings::from_toml(&empty, false, |k| (k == TOKEN_ENV).then(|| "envtok".into()))
            .unwrap();
        assert_eq!(
            s.output.token.expose(),
            "envtok",
            "an empty token counts as unset"
        );
    }

    #[test]
    fn parse_errors_name_the_key_under_its_table() {
        let text = format!(
            "{MINIMAL}[[input.udp]]\nlisten = \"127.0.0.1:1\"\n[[input.udp]] # two\nlisten = 5\n"
        );
        let err = format!("{:#}", load(&text).unwrap_err());
        assert!(err.contains("config key `input.udp[1].listen`"), "{err}");
        // Entries of one array count across other tables in between.
        let text = format!(
            "{MINIMAL}[[input.udp]]\nlisten = \"127.0.0.1:1\"\n[[input.tail]]\npaths = [\"/x\"]\n[[input.udp]]\nlisten = 5\n"
        );
        let err = format!("{:#}", load(&text).unwrap_err());
        assert!(err.contains("config key `input.udp[1].listen`"), "{err}");
        let err = format!("{:#}", load("state_dir = 5\n").unwrap_err());
        assert!(
            err.starts_with("config key `state_dir` (line 1, column 13)"),
            "{err}"
        );
    }

    #[test]
    fn parse_errors_never_quote_a_token() {
        for bad in [
            "tokn = \"s3cret\"",
            "token = s3cret",
            "token = 123456789",
            "token = \"s3cret",
            "token = [\"s3cret\"]",
            // Mangled lines where the secret sits before the first `=` (base64 padding).
            "token: \"s3cret==\"",
            "token \"s3cret==\"",
            "s3cret==",
        ] {
            let text = MINIMAL.replace("token = \"s3cret\"", bad);
            let err = format!("{:#}", load(&text).unwrap_err());
            assert!(!err.contains("s3cret"), "{bad}: {err}");
            assert!(!err.contains("123456789"), "{bad}: {err}");
            let line = MINIMAL.lines().position(|l| l.contains("s3cret")).unwrap() + 1;
            assert!(
                err.contains(&format!("line {line}, column ")),
                "{bad}: {err}"
            );
        }
        // Elsewhere the message keeps the value it complains about.
        let text = MINIMAL.replace("[output]", "[output]\ngzip_level = \"high\"");
        let err = format!("{:#}", load(&text).unwrap_err());
        assert!(err.contains("high"), "{err}");
    }

    #[test]
    fn world_readable_secrets_are_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("lineship.toml");
        std::fs::write(&cfg, MINIMAL).unwrap();
        let chmod = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        chmod(&cfg, 0o644);
        let s = load(MINIMAL).unwrap();
        assert_eq!(s.output.token_source, TokenSource::Config);
        let w = secret_file_warnings(&cfg, &s);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("chmod 600") && w[0].contains("lineship.toml"),
            "{w:?}"
        );
        assert!(!w[0].contains("s3cret"));
        chmod(&cfg, 0o640);
        assert!(secret_file_warnings(&cfg, &s).is_empty());

        // A config without a token may be world-readable; a world-readable token_file may not.
        let tok = dir.path().join("tok");
        std::fs::write(&tok, "t\n").unwrap();
        chmod(&tok, 0o604);
        chmod(&cfg, 0o644);
        let s =
            load(&MINIMAL.replace("token = \"s3cret\"", &format!("token_file = {tok:?}"))).unwrap();
        let w = secret_file_warnings(&cfg, &s);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("output.token_file"), "{w:?}");
    }

    #[test]
    fn per_input_overrides() {
        let s = Settings::from_toml(
            &format!("{MINIMAL}\n[input.stdin]\nbucket = \"other\"\nprecision = \"ms\"\nstamp_missing_timestamps = false\n"),
            true,
            |_| None,
        )
        .unwrap();
        let st = s.inputs.stdin.unwrap();
        assert_eq!(st.line.bucket, "other");
        assert_eq!(st.line.precision, Precision::Ms);
        assert!(!st.line.stamp_missing);
    }

    #[test]
    fn state_dir_defaults_to_systemd_state_directory() {
        let text = MINIMAL.replace("state_dir = \"/tmp/x\"", "");
        let s = Settings::from_toml(&text, false, |k| {
            (k == "STATE_DIRECTORY").then(|| "/var/lib/lineship:/x".into())
        })
        .unwrap();
        assert_eq!(s.state_dir, PathBuf::from("/var/lib/lineship"));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("4 KiB").unwrap(), 4096);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
    }
}
