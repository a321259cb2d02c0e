//! [`Request`]: one request the fake InfluxDB received, as it records it, and the small codecs
//! that reading it needs (query strings, line splitting).

use std::collections::BTreeMap;
use std::time::Instant;

use super::WRITE_PATH;

/// One request the fake received, as recorded after it was answered.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Query parameters, percent-decoded; a repeated key keeps its last value.
    pub query: BTreeMap<String, String>,
    /// Header names lowercased; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    /// The body as it came over the wire. Empty in count mode, which does not keep bodies.
    pub body: Vec<u8>,
    /// The body gunzipped when `Content-Encoding` is `gzip`, otherwise the raw body. Empty in
    /// count mode.
    pub decoded: Vec<u8>,
    /// Set when the body could not be read, was too large, had an unknown `Content-Encoding` or
    /// claimed gzip but did not gunzip; `decoded` is then empty and the fake answered 400 (413
    /// when too large, 415 for the encoding).
    pub decode_error: Option<String>,
    /// The status the fake answered. It is 0 while a responder is looking at the request.
    pub status: u16,
    /// When the request's head arrived.
    pub at: Instant,
    /// Which TCP connection carried it (1, 2, ... in accept order): keep-alive shows as reuse.
    pub connection: u64,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    pub fn is_gzip(&self) -> bool {
        self.header("content-encoding")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"))
    }

    /// The decoded body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.decoded).into_owned()
    }

    /// The decoded body split into lines, without their `\n`.
    pub fn lines(&self) -> Vec<String> {
        split_lines(&self.decoded)
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.text().contains(needle)
    }

    pub fn is_write(&self) -> bool {
        self.path == WRITE_PATH
    }

    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// True for a write whose decoded body holds nothing but whitespace.
    pub fn is_empty_write(&self) -> bool {
        self.is_write() && self.decode_error.is_none() && is_blank(&self.decoded)
    }
}

impl Request {
    /// The request line and headers of `parts`; body, decoding and status come later.
    pub(crate) fn from_head(
        parts: &hyper::http::request::Parts,
        at: Instant,
        connection: u64,
    ) -> Self {
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in &parts.headers {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.as_str().to_ascii_lowercase())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        Request {
            method: parts.method.as_str().to_string(),
            path: parts.uri.path().to_string(),
            query: parse_query(parts.uri.query().unwrap_or("")),
            headers,
            body: Vec::new(),
            decoded: Vec::new(),
            decode_error: None,
            status: 0,
            at,
            connection,
        }
    }
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

/// Splits a body into lines without their `\n`; a trailing newline adds no empty line.
pub fn split_lines(data: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    if text.is_empty() {
        return Vec::new();
    }
    text.strip_suffix('\n')
        .unwrap_or(&text)
        .split('\n')
        .map(str::to_string)
        .collect()
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space; a malformed `%` escape
/// is kept as is).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let digit = |at: usize| bytes.get(at).and_then(|&b| hex(b));
                match (digit(i + 1), digit(i + 2)) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True for a body holding nothing but whitespace (or nothing): never a valid write.
pub(crate) fn is_blank(data: &[u8]) -> bool {
    data.iter().all(u8::is_ascii_whitespace)
}
