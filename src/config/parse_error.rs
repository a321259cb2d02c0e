//! TOML syntax and type errors, rendered without ever quoting a token.
//!
//! Invariant: the message names the key as `table.key` and its line and column, and never
//! quotes the source line or, on a line about a token, a value.

/// A TOML error as `line L, column C: message`. toml's own rendering quotes the offending
/// source line, which may be `token = <secret>` (unquoted, mistyped key, wrong type), and this
/// message goes to stderr and the journal; so the source is never quoted, and on a line that
/// mentions a token, values the message quotes in backticks are redacted too. The key is
/// named as `table.key`, found from the table headers above the line.
pub(super) fn parse_error(text: &str, e: &toml::de::Error) -> anyhow::Error {
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
