//! Configuration: raw TOML structs (`Raw*`, exactly what the file says) validated into typed
//! [`Settings`] (what the program runs on).
//!
//! Invariants: every table denies unknown keys, so a typo is an error that names the key; every
//! validation error names the key as `table.key`; every number lies in the range `limits`
//! documents, so nothing that passes `check` overflows later; the token lives only in a
//! [`Secret`], whose `Debug` and `Display` never show it, and can go into an HTTP header.
//!
//! One file per step: `raw` (what serde reads), `parse` (text -> raw, with errors that name
//! the key and never quote a token), `validate` (raw -> typed), `settings` (the typed result),
//! `limits` (the range of every number), `secret` (the token and where it comes from).

use std::fmt;
use std::path::Path;

use anyhow::Context;

mod limits;
mod parse;
mod raw;
mod secret;
mod settings;
mod validate;

pub use raw::{
    parse_size, RawAgent, RawConfig, RawInputs, RawLineSettings, RawOutput, RawSpool, RawStdin,
    RawTail, RawTelemetry, RawUdp,
};
pub use secret::{
    read_token_file, secret_file_warnings, world_readable_warning, Secret, TokenSource, TOKEN_ENV,
};
pub use settings::{
    AckMode, AgentSettings, Balance, FsyncPolicy, HttpSettings, InputFormat, InputSettings,
    LineSettings, LogFormat, OutputSettings, ServerUrl, Settings, SpoolSettings, StdinSettings,
    TailSettings, TcpSettings, TlsFiles, UdpSettings, WhenFull,
};

/// An error about one key, named as `table.key` (`input.udp[0].listen`).
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
        parse::parse(text)?.validate(force_stdin, env)
    }
}

#[cfg(test)]
mod tests;
