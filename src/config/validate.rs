//! Raw config -> [`Settings`]: every range, every cross-key rule, every default that depends on
//! another key (a per-input bucket falls back to `output.bucket`).
//!
//! Invariant: every error names the key as `table.key` (through `key_err`) and says what to
//! write instead; none shows the token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::bail;
use url::Url;

use super::limits::{self, Zero, DAY, GIB, HOUR, MIB, TIB};
use super::raw::{RawConfig, RawLineSettings, RawOutput};
use super::secret::resolve_token;
use super::settings::*;
use super::{key_err, FsyncPolicy, InputFormat, Secret};
use crate::line::Precision;

impl RawConfig {
    /// Checks every key and builds the settings; `force_stdin` is the `--stdin` flag and `env`
    /// looks up environment variables (`STATE_DIRECTORY`, `LINESHIP_TOKEN`).
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
        // Batches count lines in a u32; 10 million is far beyond what a server accepts at once.
        limits::count("agent.batch_max_lines", a.batch_max_lines, 1, 10_000_000)?;
        limits::size("agent.max_line_bytes", a.max_line_bytes, 16, 64 * MIB)?;
        // A spool record holds at most 256 MiB, and a batch of incompressible lines at
        // gzip_level 0 is as large as its lines.
        limits::size(
            "agent.batch_max_bytes",
            a.batch_max_bytes,
            1 << 10,
            128 * MIB,
        )?;
        if a.batch_max_bytes < a.max_line_bytes + 32 {
            bail!(key_err(
                "agent.batch_max_bytes",
                format!(
                    "must be larger than agent.max_line_bytes ({} bytes) so that every valid line fits a batch",
                    a.max_line_bytes
                )
            ));
        }
        limits::duration(
            "agent.flush_interval",
            a.flush_interval,
            Zero::Refused,
            HOUR,
        )?;
        limits::duration(
            "agent.shutdown_timeout",
            a.shutdown_timeout,
            Zero::Allowed,
            DAY,
        )?;
        limits::duration(
            "agent.summary_interval",
            a.summary_interval,
            Zero::Refused,
            DAY,
        )?;
        tracing_subscriber::EnvFilter::try_new(&a.log_level).map_err(|e| {
            key_err(
                "agent.log_level",
                format!("{e}; use e.g. \"info\" or \"lineship=debug\""),
            )
        })?;
        limits::size("agent.rejected_max_size", a.rejected_max_size, MIB, TIB)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        // Default: one compressing thread per core, at most 4 (1 compresses on the batcher
        // thread itself). Since batch buffers are sized once and reused, 2 threads on 2
        // cores cost no more per line than 1 end to end (README, Performance).
        let compress_threads = match a.compress_threads {
            None => cores.min(4),
            Some(n) => {
                limits::count("agent.compress_threads", n, 1, cores * 4).map_err(|e| {
                    anyhow::anyhow!("{e} (4 × the {cores} cores of this machine; more threads than that only wait for a core)")
                })?;
                n
            }
        };
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
            compress_threads: compress_threads as usize,
            gzip_engine: a.gzip_engine,
        };

        let outputs = validate_outputs(self.output, self.outputs, &env)?;

        let s = self.spool;
        limits::size("spool.max_size", s.max_size, MIB, 64 * TIB)?;
        // Zero is fine when the interval is not used.
        let zero = match s.fsync {
            FsyncPolicy::Interval => Zero::Refused,
            _ => Zero::Allowed,
        };
        limits::duration("spool.fsync_interval", s.fsync_interval, zero, HOUR)?;
        let spool = SpoolSettings {
            max_size: s.max_size,
            when_full: s.when_full,
            fsync: s.fsync,
            fsync_interval: s.fsync_interval,
        };

        let defaults = LineDefaults {
            outputs: &outputs,
            stamp_missing: a.stamp_missing_timestamps,
        };
        let mut inputs = InputSettings::default();
        for (i, u) in self.input.udp.into_iter().enumerate() {
            let key = format!("input.udp[{i}]");
            let listen = parse_listen(&key, &u.listen, 8089)?;
            limits::count(&format!("{key}.workers"), u.workers, 1, 64)?;
            // The kernel takes an int and doubles it.
            limits::size(&format!("{key}.receive_buffer"), u.receive_buffer, 0, GIB)?;
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
            limits::duration(
                &format!("{key}.rotate_wait"),
                t.rotate_wait,
                Zero::Allowed,
                DAY,
            )?;
            for p in &t.paths {
                if !Path::new(p).is_absolute() {
                    bail!(key_err(
                        &format!("{key}.paths"),
                        format!("{p:?} must be an absolute path")
                    ));
                }
            }
            let max_open_files = match t.max_open_files {
                Some(n) => {
                    let k = format!("{key}.max_open_files");
                    limits::count(&k, n, 1, 1 << 20)?;
                    Some(n as usize)
                }
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
        for (i, t) in self.input.tcp.into_iter().enumerate() {
            let key = format!("input.tcp[{i}]");
            let listen = parse_listen(&key, &t.listen, 8094)?;
            limits::count(
                &format!("{key}.max_connections"),
                t.max_connections,
                1,
                65_536,
            )?;
            limits::duration(
                &format!("{key}.idle_timeout"),
                t.idle_timeout,
                Zero::Refused,
                DAY,
            )?;
            inputs.tcp.push(TcpSettings {
                name: format!("tcp:{listen}"),
                tls: tls_files(&key, t.tls_cert_file.clone(), t.tls_key_file.clone())?,
                key: key.clone(),
                listen,
                max_connections: t.max_connections as usize,
                idle_timeout: t.idle_timeout,
                line: defaults.resolve(&key, t.line())?,
            });
        }
        for (i, h) in self.input.http.into_iter().enumerate() {
            let key = format!("input.http[{i}]");
            let listen = parse_listen(&key, &h.listen, 8086)?;
            limits::count(
                &format!("{key}.max_connections"),
                h.max_connections,
                1,
                65_536,
            )?;
            limits::size(&format!("{key}.max_body_size"), h.max_body_size, 1, GIB)?;
            let timeout =
                |k: &str, d| limits::duration(&format!("{key}.{k}"), d, Zero::Refused, HOUR);
            timeout("ack_timeout", h.ack_timeout)?;
            timeout("read_timeout", h.read_timeout)?;
            let mut tokens = Vec::new();
            for t in h.tokens.iter() {
                limits::token(t).map_err(|e| key_err(&format!("{key}.tokens"), e))?;
                tokens.push(Secret::new(t.clone()));
            }
            if let Some(f) = &h.token_file {
                tokens.extend(
                    read_token_lines(f).map_err(|e| key_err(&format!("{key}.token_file"), e))?,
                );
            }
            if tokens.is_empty() && !listen.ip().is_loopback() {
                bail!(key_err(
                    &format!("{key}.tokens"),
                    format!("{listen} is reachable from other hosts: set tokens (or token_file) so that only clients holding one can write, or listen on 127.0.0.1")
                ));
            }
            let force_bucket = h.bucket.clone();
            inputs.http.push(HttpSettings {
                name: format!("http:{listen}"),
                tls: tls_files(&key, h.tls_cert_file.clone(), h.tls_key_file.clone())?,
                key: key.clone(),
                listen,
                tokens,
                ack: h.ack,
                ack_timeout: h.ack_timeout,
                max_body_size: to_usize(&format!("{key}.max_body_size"), h.max_body_size)?,
                max_connections: h.max_connections as usize,
                read_timeout: h.read_timeout,
                force_bucket,
                line: defaults.resolve(&key, h.line())?,
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
            outputs,
            spool,
            inputs,
            telemetry_listen,
        })
    }
}

/// The tokens of a token file, one per line (blank lines and `#` comments skipped).
fn read_token_lines(path: &Path) -> Result<Vec<Secret>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read {}: {e}; check the path and that this user may read it",
            path.display()
        )
    })?;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        limits::token(t).map_err(|e| format!("{} line {}: {e}", path.display(), n + 1))?;
        tokens.push(Secret::new(t));
    }
    if tokens.is_empty() {
        return Err(format!("{} holds no token", path.display()));
    }
    Ok(tokens)
}

/// `KEY.tls_cert_file` and `KEY.tls_key_file`: both or neither.
fn tls_files(
    key: &str,
    cert: Option<PathBuf>,
    private: Option<PathBuf>,
) -> anyhow::Result<Option<TlsFiles>> {
    match (cert, private) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
        (Some(_), None) => Err(key_err(
            &format!("{key}.tls_key_file"),
            "tls_cert_file is set: set tls_key_file to its private key too",
        )),
        (None, Some(_)) => Err(key_err(
            &format!("{key}.tls_cert_file"),
            "tls_key_file is set: set tls_cert_file to its certificate chain too",
        )),
    }
}

/// `KEY.listen` as a socket address.
fn parse_listen(key: &str, listen: &str, port: u16) -> anyhow::Result<SocketAddr> {
    listen.parse().map_err(|e| {
        key_err(
            &format!("{key}.listen"),
            format!(
                "{e}: {listen:?} is not an address like \"127.0.0.1:{port}\" or \"[::1]:{port}\""
            ),
        )
    })
}

struct LineDefaults<'a> {
    outputs: &'a [OutputSettings],
    stamp_missing: bool,
}

impl LineDefaults<'_> {
    /// The outputs an input's `outputs` key names (every output when it is absent).
    fn output_set(&self, key: &str, names: Option<&[String]>) -> anyhow::Result<OutputSet> {
        let Some(names) = names else {
            return Ok(OutputSet::MAX >> (64 - self.outputs.len()));
        };
        if names.is_empty() {
            bail!(key_err(
                &format!("{key}.outputs"),
                "is empty: name at least one output, or leave the key out to send to every output"
            ));
        }
        let mut set: OutputSet = 0;
        for n in names {
            let Some(i) = self.outputs.iter().position(|o| &o.name == n) else {
                let known: Vec<&str> = self.outputs.iter().map(|o| o.name.as_str()).collect();
                bail!(key_err(
                    &format!("{key}.outputs"),
                    format!(
                        "names {n:?}, which is not an output; the outputs are {} ([output] is \"default\", [outputs.NAME] is NAME)",
                        known.join(", ")
                    )
                ));
            };
            set |= 1 << i;
        }
        Ok(set)
    }

    fn resolve(&self, key: &str, raw: RawLineSettings) -> anyhow::Result<LineSettings> {
        let precision = match raw.precision {
            None => Precision::Ns,
            Some(p) => p
                .parse()
                .map_err(|e| key_err(&format!("{key}.precision"), e))?,
        };
        // No bucket of its own: each output's `bucket`.
        if raw.bucket.as_deref() == Some("") {
            bail!(key_err(&format!("{key}.bucket"), "must not be empty"));
        }
        let bucket = raw.bucket.unwrap_or_default();
        let outputs = self.output_set(key, raw.outputs.as_deref())?;
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
            outputs,
            precision,
            stamp_missing: raw.stamp_missing_timestamps.unwrap_or(self.stamp_missing),
            format,
            measurement,
            tags,
        })
    }
}

/// `[output]` (named `default`) and the `[outputs.NAME]` tables.
fn validate_outputs(
    default: Option<RawOutput>,
    named: std::collections::BTreeMap<String, RawOutput>,
    env: &impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Vec<OutputSettings>> {
    if default.is_none() && named.is_empty() {
        bail!("missing table [output]: set at least output.url, output.org and output.bucket");
    }
    if named.len() + usize::from(default.is_some()) > MAX_OUTPUTS {
        bail!(key_err(
            "outputs",
            format!("at most {MAX_OUTPUTS} outputs are supported")
        ));
    }
    let mut outputs = Vec::new();
    if let Some(o) = default {
        outputs.push(validate_output("default", "output", o, env)?);
    }
    for (name, o) in named {
        let t = format!("outputs.{name}");
        if name == "default" {
            bail!(key_err(
                &t,
                "is the [output] table's name: write that output as [output], or give this one another name"
            ));
        }
        if let Some(why) = unfit_output_name(&name) {
            bail!(key_err(&t, format!("{name:?} is not a simple word: {why}")));
        }
        outputs.push(validate_output(&name, &t, o, env)?);
    }
    let lanes: usize = outputs.iter().map(lanes_of).sum();
    if lanes > MAX_LANES {
        bail!(key_err(
            "outputs",
            format!("the outputs need {lanes} delivery lanes (one per output, one per URL of a sharded output); at most {MAX_LANES} are supported")
        ));
    }
    Ok(outputs)
}

/// Delivery lanes an output needs: one, or one per URL when sharded.
pub fn lanes_of(o: &OutputSettings) -> usize {
    match o.balance {
        Balance::Shard => o.urls.len(),
        _ => 1,
    }
}

/// Why `name` cannot name an output (it names the output's spool directory and a metric
/// label): it must be a lowercase letter, then lowercase letters, digits or `_`, at most 32.
fn unfit_output_name(name: &str) -> Option<&'static str> {
    let mut chars = name.chars();
    match chars.next() {
        None => Some("it is empty"),
        Some(c) if !c.is_ascii_lowercase() => Some("it must start with a lowercase letter"),
        _ if name.len() > 32 => Some("it must be at most 32 characters"),
        _ if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') => {
            Some("use only lowercase letters, digits and _")
        }
        // The default output's spool keeps damaged files in `spool/corrupt/`.
        _ if name == "corrupt" => Some("\"corrupt\" is reserved for the spool's damaged files"),
        _ => None,
    }
}

fn validate_output(
    name: &str,
    t: &str,
    o: RawOutput,
    env: &impl Fn(&str) -> Option<String>,
) -> anyhow::Result<OutputSettings> {
    let k = |key: &str| format!("{t}.{key}");
    let urls = match (o.url.is_empty(), o.urls) {
        (false, Some(_)) => bail!(key_err(&k("urls"),
            format!("is set together with {t}.url: set one of them ({t}.urls = [\"http://a:8086\", \"http://b:8086\"] for several servers)")
        )),
        (true, None) => bail!(key_err(&k("url"),
            format!("is required, e.g. \"http://localhost:8086\" (or {t}.urls for several servers)")
        )),
        (true, Some(list)) if list.is_empty() => bail!(key_err(&k("urls"),
            "is empty: list at least one server, e.g. [\"http://localhost:8086\"]"
        )),
        (true, Some(list)) if list.len() > MAX_URLS => bail!(key_err(&k("urls"),
            format!("lists {} servers; at most {MAX_URLS} are supported", list.len())
        )),
        (true, Some(list)) => list
            .iter()
            .enumerate()
            .map(|(i, u)| server_url(&k(&format!("urls[{i}]")), u))
            .collect::<anyhow::Result<Vec<_>>>()?,
        (false, None) => vec![server_url(&k("url"), &o.url)?],
    };
    for (i, u) in urls.iter().enumerate() {
        if let Some(j) = urls[..i].iter().position(|v| v.base == u.base) {
            bail!(key_err(
                &k(&format!("urls[{i}]")),
                format!("{} is listed twice (also {t}.urls[{j}])", u.base)
            ));
        }
    }
    if o.org.is_empty() {
        // InfluxDB 2.x needs it; VictoriaMetrics and InfluxDB 3 ignore it, so only warn later.
    }
    if o.bucket.is_empty() {
        bail!(key_err(
            &k("bucket"),
            "is required (the default bucket; inputs may override it)"
        ));
    }
    let (token, token_source) = resolve_token(t, o.token, o.token_file.as_deref(), env)?;
    limits::count(&k("gzip_level"), o.gzip_level, 0, 12)?;
    limits::count(&k("max_in_flight"), o.max_in_flight, 1, 256)?;
    limits::duration(&k("timeout"), o.timeout, Zero::Refused, HOUR)?;
    limits::duration(
        &k("initial_backoff"),
        o.initial_backoff,
        Zero::Refused,
        HOUR,
    )?;
    limits::duration(&k("max_backoff"), o.max_backoff, Zero::Refused, HOUR)?;
    if o.max_backoff < o.initial_backoff {
        bail!(key_err(
            &k("max_backoff"),
            format!("must not be less than {t}.initial_backoff")
        ));
    }
    // Zero would retry a throttled write at once, again and again.
    limits::duration(&k("max_retry_after"), o.max_retry_after, Zero::Refused, DAY)?;
    limits::count(&k("poison_retries"), o.poison_retries, 1, 1000)?;
    limits::size(&k("memory_limit"), o.memory_limit, MIB, TIB)?;
    let tls_ca_file = match o.tls_ca_file {
        Some(p) if p.as_os_str().is_empty() => None,
        Some(p) => {
            std::fs::metadata(&p).map_err(|e| {
                key_err(
                    &k("tls_ca_file"),
                    format!("cannot read {}: {e}", p.display()),
                )
            })?;
            Some(p)
        }
        None => None,
    };
    Ok(OutputSettings {
        name: name.to_owned(),
        key: t.to_owned(),
        urls,
        balance: o.balance,
        org: o.org,
        bucket: o.bucket,
        token,
        token_file: o.token_file,
        token_source,
        gzip_level: o.gzip_level as u32,
        timeout: o.timeout,
        max_in_flight: o.max_in_flight as usize,
        memory_limit: to_usize(&k("memory_limit"), o.memory_limit)?,
        initial_backoff: o.initial_backoff,
        max_backoff: o.max_backoff,
        max_retry_after: o.max_retry_after,
        poison_retries: o.poison_retries as u32,
        tls_ca_file,
    })
}

/// The most servers one output may list: each is probed on its own and holds its own
/// connections.
const MAX_URLS: usize = 64;

/// One server's URL, checked; `key` names it in errors.
fn server_url(key: &str, text: &str) -> anyhow::Result<ServerUrl> {
    let url = Url::parse(text).map_err(|e| key_err(key, format!("{e}: {text:?}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        bail!(key_err(
            key,
            format!("{text:?} must be an http:// or https:// URL with a host")
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!(key_err(
            key,
            "must not have a query or fragment; org and bucket have their own keys"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        bail!(key_err(
            key,
            "must not hold credentials; use output.token or output.token_file"
        ));
    }
    let with_path = |tail: &str| {
        let mut u = url.clone();
        u.set_path(&format!("{}/{tail}", url.path().trim_end_matches('/')));
        u
    };
    Ok(ServerUrl {
        write: with_path("api/v2/write"),
        ping: with_path("ping"),
        base: url,
    })
}

fn to_usize(key: &str, v: u64) -> anyhow::Result<usize> {
    usize::try_from(v).map_err(|_| key_err(key, "is too large for this machine"))
}
