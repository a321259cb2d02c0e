//! Shared harness for lineship's integration tests (`mod common;` in each test file).
//!
//! - [`FakeInflux`] (`fake_influx.rs`): an in-process HTTP/1.1 stand-in for `/api/v2/write`
//!   that records every request and answers from a script, a programmable responder or a
//!   default reply; `fake_body.rs` holds its generated (huge, endless) reply bodies.
//! - [`VictoriaMetrics`] (`victoria_metrics.rs`): a real `victoria-metrics` server (Debian
//!   package) in a temporary data directory, with export helpers to check what landed.
//! - `lineship.rs`: running the `lineship` binary ([`run_stdin`], [`Daemon`]) with a hard
//!   timeout, so a hung daemon fails its test instead of hanging CI.
//! - `telemetry.rs`: the daemon's `/metrics` and `/health` endpoint ([`telemetry_addr`], [`get`],
//!   [`scrape`]).
//! - `udp.rs` (`common::udp`): polling and loopback sockets for the UDP test files.
//! - This file: small codecs the others share (gzip, line splitting, percent-encoding).
//!
//! Invariants: every server binds 127.0.0.1 on a port the kernel picked (never a fixed port);
//! every server and child process is stopped when its handle is dropped; every wait is bounded.
//! All of it works from plain `#[test]`s and from async tests alike: the fake runs its own
//! runtime on its own thread, and the VictoriaMetrics client runs each call on a helper thread.

// Each test binary uses a different subset of the harness.
#![allow(dead_code, unused_imports)]

mod fake_body;
mod fake_influx;
mod lineship;
mod telemetry;
pub mod udp;
mod victoria_metrics;

pub use fake_body::BodyStream;
pub use fake_influx::*;
pub use lineship::*;
pub use telemetry::*;
pub use victoria_metrics::*;

use std::io::{Read, Write};

/// Gunzips a body that may hold several gzip members back to back.
pub fn gunzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out)?;
    Ok(out)
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("gzip into a Vec");
    encoder.finish().expect("gzip into a Vec")
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

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
