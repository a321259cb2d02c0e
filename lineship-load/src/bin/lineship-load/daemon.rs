//! The daemon's side of a run: the options every daemon mode shares ([`DaemonOpts`]), the config
//! written for it ([`render_config`], with the caller's `[input...]` section), and the fresh
//! directory each run gets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

/// Settings of the daemon runs, shared by every mode that runs it.
#[derive(Args)]
pub struct DaemonOpts {
    /// The lineship binary (default: `lineship` next to this executable).
    #[arg(long)]
    pub lineship: Option<PathBuf>,
    /// Runs; medians are reported.
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// `output.gzip_level` (0 = identity).
    #[arg(long, default_value_t = 1)]
    pub gzip_level: u32,
    /// `agent.batch_max_lines`.
    #[arg(long, default_value_t = 5000)]
    pub batch_max_lines: u64,
    /// `agent.batch_max_bytes`, written as given (e.g. 1MiB).
    #[arg(long, default_value = "1MiB")]
    pub batch_max_bytes: String,
    /// `output.max_in_flight`.
    #[arg(long, default_value_t = 4)]
    pub max_in_flight: u32,
    /// `agent.flush_interval`.
    #[arg(long, default_value = "200ms")]
    pub flush_interval: String,
    /// `agent.log_level` (default: warn for `stdin`; info for `udp`, which reads the daemon's
    /// start and summary lines from its log).
    #[arg(long)]
    pub log_level: Option<String>,
    /// Keep the temp dir with the config and state_dir, and print its path.
    #[arg(long)]
    pub keep_config: bool,
    /// Skip the per-line seq bookkeeping in the sink (counts lines only).
    #[arg(long)]
    pub no_check_seq: bool,
    /// Kill the daemon (SIGTERM, then SIGKILL 10 s later) if a run takes longer.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Tokio worker threads for the in-process sink.
    #[arg(long, default_value_t = 2)]
    pub sink_threads: usize,
    /// `agent.compress_threads` (default: the daemon's own, the cores up to 4).
    #[arg(long)]
    pub compress_threads: Option<u32>,
    /// `agent.gzip_engine`: auto, libdeflate or isal (default: the daemon's own, auto).
    #[arg(long)]
    pub gzip_engine: Option<String>,
}

impl DaemonOpts {
    /// The lineship binary to run, checked to exist.
    pub fn lineship(&self) -> Result<PathBuf> {
        let lineship = match &self.lineship {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .context("locating this executable")?
                .with_file_name("lineship"),
        };
        if !lineship.is_file() {
            bail!(
                "lineship binary not found at {} (build it with `cargo build --release`, or pass --lineship PATH)",
                lineship.display()
            );
        }
        Ok(lineship)
    }

    /// The daemon config for an output server at `sink` (the counting sink, or VictoriaMetrics
    /// for `compare`), with the caller's `[input...]` section.
    pub fn config<'a>(
        &'a self,
        sink: SocketAddr,
        log_level: &'a str,
        input_section: &'a str,
    ) -> DaemonConfig<'a> {
        DaemonConfig {
            sink,
            settings: self.settings(),
            log_level,
            input_section,
        }
    }

    pub fn settings(&self) -> Settings<'_> {
        Settings {
            gzip_level: self.gzip_level,
            batch_max_lines: self.batch_max_lines,
            batch_max_bytes: &self.batch_max_bytes,
            max_in_flight: self.max_in_flight,
            flush_interval: &self.flush_interval,
            compress_threads: self.compress_threads,
            gzip_engine: self.gzip_engine.as_deref(),
        }
    }
}

/// Settings written into the daemon's config; the `[input...]` section is the caller's, so a UDP
/// mode can reuse everything else.
pub struct DaemonConfig<'a> {
    /// The server the output writes to (`url = "http://ADDR"`).
    pub sink: SocketAddr,
    pub settings: Settings<'a>,
    pub log_level: &'a str,
    pub input_section: &'a str,
}

/// The batching and output settings of the daemon, as written into its config and shown in the
/// JSON summaries.
#[derive(Serialize, Clone, Copy)]
pub struct Settings<'a> {
    pub gzip_level: u32,
    pub batch_max_lines: u64,
    pub batch_max_bytes: &'a str,
    pub max_in_flight: u32,
    pub flush_interval: &'a str,
    pub compress_threads: Option<u32>,
    pub gzip_engine: Option<&'a str>,
}

/// A TOML basic string: JSON string escapes are a subset of TOML's.
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialise")
}

pub fn render_config(c: &DaemonConfig, state_dir: &Path) -> String {
    format!(
        r#"# written by lineship-load
state_dir = {state_dir}

[agent]
flush_interval = {flush}
batch_max_lines = {bml}
batch_max_bytes = {bmb}
shutdown_timeout = "30s"
log_level = {log}
{compress}{engine}
[output]
url = {url}
org = "bench"
bucket = "bench"
token = "bench-token"
gzip_level = {gz}
max_in_flight = {mif}

{input}
"#,
        state_dir = toml_str(&state_dir.to_string_lossy()),
        flush = toml_str(c.settings.flush_interval),
        bml = c.settings.batch_max_lines,
        bmb = toml_str(c.settings.batch_max_bytes),
        log = toml_str(c.log_level),
        compress = c
            .settings
            .compress_threads
            .map_or(String::new(), |n| format!("compress_threads = {n}\n")),
        engine = c.settings.gzip_engine.map_or(String::new(), |e| format!(
            "gzip_engine = {}\n",
            toml_str(e)
        )),
        url = toml_str(&format!("http://{}", c.sink)),
        gz = c.settings.gzip_level,
        mif = c.settings.max_in_flight,
        input = c.input_section,
    )
}

/// A fresh directory per run, so no spool from an earlier run is replayed.
pub fn make_run_dir(run: u32) -> Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "lineship-load-{}-{run}-{nanos:x}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Runs `f` in a fresh run directory ([`make_run_dir`]), then removes the directory, or with
/// `keep` (`--keep-config`) says where it is and what it holds (`what`).
pub fn in_run_dir<T>(
    run: u32,
    keep: bool,
    what: &str,
    f: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let dir = make_run_dir(run)?;
    let result = f(&dir);
    if keep {
        eprintln!("kept {} ({what})", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// Writes a run's config readable by the owner only: it holds the sink's token, and the
/// daemon warns about a token in a file every user can read.
pub fn write_config(path: &Path, config: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(config.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes `dir/lineship.toml` for output server `sink` with `d`'s settings and the caller's
/// `[input...]` section, its `state_dir` `dir/state`; returns the config's path.
pub fn write_run_config(
    d: &DaemonOpts,
    dir: &Path,
    sink: SocketAddr,
    log_level: &str,
    input_section: &str,
) -> Result<PathBuf> {
    let config = dir.join("lineship.toml");
    let text = render_config(
        &d.config(sink, log_level, input_section),
        &dir.join("state"),
    );
    write_config(&config, &text)?;
    Ok(config)
}

/// The config of a run with the default options, a sink at 127.0.0.1:9 and `input_section`,
/// for the modes' tests.
#[cfg(test)]
pub fn example_config(log_level: &str, input_section: &str, state_dir: &str) -> String {
    render_config(
        &DaemonConfig {
            sink: "127.0.0.1:9".parse().unwrap(),
            settings: Settings {
                gzip_level: 1,
                batch_max_lines: 5000,
                batch_max_bytes: "1MiB",
                max_in_flight: 4,
                flush_interval: "200ms",
                compress_threads: None,
                gzip_engine: None,
            },
            log_level,
            input_section,
        },
        Path::new(state_dir),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_the_design_keys() {
        let c = example_config(
            "warn",
            "[input.stdin]\nenabled = true",
            "/tmp/x \"y\"/state",
        );
        for key in [
            r#"state_dir = "/tmp/x \"y\"/state""#,
            "[agent]",
            r#"flush_interval = "200ms""#,
            "batch_max_lines = 5000",
            r#"batch_max_bytes = "1MiB""#,
            r#"url = "http://127.0.0.1:9""#,
            "gzip_level = 1",
            "max_in_flight = 4",
            "[input.stdin]\nenabled = true",
        ] {
            assert!(c.contains(key), "missing {key} in\n{c}");
        }
    }
}
