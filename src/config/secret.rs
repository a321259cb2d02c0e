//! The output token: the [`Secret`] that holds it, where it comes from (`output.token`,
//! `output.token_file`, `LINESHIP_TOKEN`), and warnings about files that expose it.
//!
//! Invariants: the token is only ever inside a `Secret`, whose `Debug` and `Display` never
//! show it; every error here names the key or the file, never the token.

use std::fmt;
use std::path::Path;

use super::limits;
use super::{key_err, Settings};

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

/// Reads a token file; surrounding whitespace (a trailing newline) is not part of the token.
/// Errors name the file, never the token.
pub fn read_token_file(path: &Path) -> Result<Secret, String> {
    let p = path.display();
    let create = format!(
        "create it readable by lineship only (`install -m 640 -g lineship /dev/null {p}`, or `-m 600` without that group) and write the token into it"
    );
    let s = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{p} does not exist: {create}"),
        _ => format!("cannot read {p}: {e}"),
    })?;
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("{p} is empty: write the token into it"));
    }
    limits::token(t).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Secret::new(t))
}

/// Whether `path` is a readable file holding only whitespace.
fn is_blank_file(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.trim().is_empty())
}

/// Picks the token from `output.token`, `output.token_file` or [`TOKEN_ENV`], in that order,
/// and checks that it can go into a header. Setting both keys is an error; `token = ""`
/// counts as unset, so token_file and LINESHIP_TOKEN still apply.
///
/// `table` is the output's table (`output`, `outputs.NAME`); only the `default` output falls back
/// to [`TOKEN_ENV`], so one output's token never goes to another output's servers.
pub(super) fn resolve_token(
    table: &str,
    token: Option<String>,
    token_file: Option<&Path>,
    env: &impl Fn(&str) -> Option<String>,
) -> anyhow::Result<(Secret, TokenSource)> {
    let env_applies = table == "output";
    Ok(match (token.filter(|t| !t.is_empty()), token_file) {
        (Some(_), Some(_)) => {
            return Err(key_err(
                &format!("{table}.token_file"),
                format!("set either {table}.token or {table}.token_file, not both"),
            ))
        }
        (Some(t), None) => {
            limits::token(&t).map_err(|e| key_err(&format!("{table}.token"), e))?;
            (Secret::new(t), TokenSource::Config)
        }
        // An empty file is a token not written yet (the package installs one so): no token,
        // with a warning from `secret_file_warnings`. A SIGHUP that finds it empty keeps the
        // current token (see `read_token_file`).
        (None, Some(f)) if is_blank_file(f) => (Secret::new(String::new()), TokenSource::File),
        (None, Some(f)) => (
            read_token_file(f).map_err(|e| key_err(&format!("{table}.token_file"), e))?,
            TokenSource::File,
        ),
        (None, None) if !env_applies => (Secret::default(), TokenSource::None),
        (None, None) => match env(TOKEN_ENV) {
            Some(t) if !t.is_empty() => {
                limits::token(&t).map_err(|e| {
                    anyhow::anyhow!("environment variable {TOKEN_ENV} (the output token): {e}")
                })?;
                (Secret::new(t), TokenSource::Env)
            }
            _ => (Secret::default(), TokenSource::None),
        },
    })
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
    let mut out = Vec::new();
    if settings
        .outputs
        .iter()
        .any(|o| o.token_source == TokenSource::Config && !o.token.is_empty())
    {
        out.extend(world_readable_warning(config_path, "config file"));
    }
    for o in &settings.outputs {
        if let (TokenSource::File, Some(f)) = (o.token_source, &o.token_file) {
            let key = format!("{}.token_file", o.key);
            out.extend(world_readable_warning(f, &key));
            if o.token.is_empty() {
                out.push(format!(
                    "{key} {} is empty, so requests carry no Authorization header (VictoriaMetrics needs none, InfluxDB does): write the token into it",
                    f.display()
                ));
            }
        }
    }
    out
}
