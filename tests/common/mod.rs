//! Shared harness for lineship's integration tests (`mod common;` in each test file).
//!
//! - [`FakeInflux`]: an in-process HTTP/1.1 stand-in for `/api/v2/write` that records every
//!   request and answers from a script, a programmable responder or a default reply, with
//!   generated (huge, endless) reply bodies for hostile-server tests. It is the load tool's
//!   fake (`lineship-load/src/fake/`, re-exported here with its `split_lines` and
//!   `percent_decode`), run in record mode, so the tests and the benchmarks share one.
//! - [`VictoriaMetrics`] (`victoria_metrics.rs`): a real `victoria-metrics` server (Debian
//!   package) in a temporary data directory, with export helpers to check what landed.
//! - `lineship.rs`: running the `lineship` binary ([`run_stdin`], [`Daemon`]) with a hard
//!   timeout, so a hung daemon fails its test instead of hanging CI.
//! - `telemetry.rs`: the daemon's `/metrics` and `/health` endpoint ([`telemetry_addr`], [`get`],
//!   [`scrape`]).
//! - `udp.rs` (`common::udp`): polling and loopback sockets for the UDP test files.
//! - `service.rs` (`common::service`): config, daemon and lines for the service test files.
//! - `tail.rs` (`common::tail`): config, writers and delivery checks for the tail test files.
//! - This file: small codecs the others share (flate2 gzip, percent-encoding).
//!
//! Invariants: every server binds 127.0.0.1 on a port the kernel picked (never a fixed port);
//! every server and child process is stopped when its handle is dropped; every wait is bounded.
//! All of it works from plain `#[test]`s and from async tests alike: the fake runs its own
//! runtime on its own thread, and the VictoriaMetrics client runs each call on a helper thread.

// Each test binary uses a different subset of the harness.
#![allow(dead_code, unused_imports)]

mod lineship;
pub mod service;
pub mod tail;
mod telemetry;
pub mod udp;
mod victoria_metrics;

pub use lineship::*;
pub use lineship_load::fake::*;
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
