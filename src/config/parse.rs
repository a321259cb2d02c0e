//! Reading config text into the raw structs, with errors that name the key and never quote a
//! token.
//!
//! Invariant: an error names the key as `table.key` and its line and column, and never quotes
//! the source line or, on a line about a token, a value.
//!
//! Why this is not all left to crates: toml's own `Display` quotes the offending source line,
//! which may be `token = <secret>` (unquoted, mistyped key, wrong type), and this message goes
//! to stderr and the journal; toml tracks the keys above an error but does not expose them and
//! has no array indices. `serde_path_to_error` names the key of every error serde sees
//! (`input.udp[1].listen`, also inside inline tables), but a syntax error happens before serde,
//! so it has no path; for those the key is found from the table headers above the line
//! (`key_at`). Line and column come from toml's span.

use super::RawConfig;

/// Parses config text into the raw structs: syntax first, then the types.
pub(super) fn parse(text: &str) -> anyhow::Result<RawConfig> {
    let de = toml::Deserializer::parse(text).map_err(|e| render(text, &e, None))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        // An error at the top level has the path ".".
        let path = (path != ".").then_some(path);
        render(text, e.inner(), path.as_deref())
    })
}

/// A TOML error as `config key `table.key` (line L, column C): message`, without the source
/// line. `path` is where serde was when the error happened; without it (a syntax error) the key
/// is found from the table headers above the line. Values the message quotes in backticks are
/// redacted when the line or the key mentions a token.
fn render(text: &str, e: &toml::de::Error, path: Option<&str>) -> anyhow::Error {
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
        return match path {
            Some(key) => anyhow::anyhow!("config key `{key}`: {msg}"),
            None => anyhow::anyhow!("{msg}"),
        };
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line_no = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    let source_line = &text[line_start..line_end];
    let mentions_token = |s: &str| s.to_ascii_lowercase().contains("tok");
    let msg = if !about_keys && (mentions_token(source_line) || path.is_some_and(mentions_token)) {
        redact_quoted(msg)
    } else {
        msg.to_owned()
    };
    let at = format!("line {line_no}, column {column}");
    let key = match path {
        Some(path) => Some(path.to_owned()),
        None => key_at(&text[..line_start], source_line),
    };
    match key {
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
