//! `lineship-load`: the end-to-end load tool for `lineship`.
//!
//! It is a standalone binary: it does not link the `lineship` library but drives the real daemon
//! binary from the outside, the way an operator would. Its pieces are kept apart so the modes
//! (`stdin`, `udp`) share them:
//!
//! - [`LineGen`]: a fast generator of realistic line protocol (~76 B/line, well over 10 M
//!   lines/s on one core). Every line carries a unique `seq=<n>i` field; 1 line in 16 has no
//!   timestamp, so the daemon's stamping path runs too. `fill_lines` appends any number of lines,
//!   e.g. ten per datagram.
//! - [`Sink`] / [`start_sink`]: a counting InfluxDB stand-in on hyper. It accepts
//!   `POST /api/v2/write` (gzip through libdeflate, multi-member safe, or identity), counts lines
//!   and bytes, optionally records every `seq` in a bitset to count lost and duplicated lines,
//!   and answers `GET /ping` (204) and `GET /health` (200). Per-line work is limited to counting.
//! - [`render_config`] + [`spawn_measured`] / [`run_daemon`]: write a config whose `[input...]`
//!   section the caller chooses, start `lineship` (feeding its stdin for `stdin`), and collect
//!   its CPU time and peak RSS from `wait4`. The daemon is started through a small helper
//!   process (`exec-measured`, hidden), because a child's `ru_maxrss` starts at the peak RSS of
//!   the process that spawned it, and this one holds all the generated input.
//! - [`prepare_slices`] + [`send_paced`]: the UDP senders. All datagrams are generated before
//!   the clock starts; each sender thread has its own socket (its own source port, so
//!   `SO_REUSEPORT` workers get a share each) and follows an absolute schedule, sleeping until
//!   the next datagram is due and then sending everything due within `--pace-us` in one
//!   `sendmmsg`.
//!
//! Subcommands:
//!
//! ```text
//! # the end-to-end benchmark: stdin -> lineship -> gzip -> HTTP -> in-process sink
//! # (uses the `lineship` binary next to this one unless --lineship PATH is given)
//! cargo build --release && target/release/lineship-load stdin --lines 5000000 --repeat 3
//! target/release/lineship-load stdin --lines 2000000 --gzip-level 3 --batch-max-lines 10000 \
//!     --batch-max-bytes 4MiB --max-in-flight 8 --keep-config
//! target/release/lineship-load stdin --lines 5000000 --repeat 5 | tail -n 1 > run.json
//!
//! # UDP: paced senders -> lineship [[input.udp]] on 127.0.0.1 -> gzip -> HTTP -> sink
//! target/release/lineship-load udp --rate 1000000 --lines 5000000 --repeat 3
//! target/release/lineship-load udp --rate 1500000 --workers 2 --senders 4 --receive-buffer 16MiB
//! # step 500k, 750k, 1M, 1.25M, 1.5M lines/s (5M lines each) and report the highest loss-free
//! target/release/lineship-load udp --find-max
//!
//! # generator alone, to stdout
//! target/release/lineship-load gen --lines 1000000 --start 0 --tag-cardinality 1000 > data.lp
//!
//! # standalone sink: the first stdout line is `listening 127.0.0.1:PORT`, a stats line follows
//! # every second, and a summary (text, then JSON) comes on SIGINT/SIGTERM or after the duration
//! target/release/lineship-load sink --listen 127.0.0.1:0 --check-seq --duration-secs 60
//! target/release/lineship-load sink --expect-lines 1000000   # exit 1 unless seq 0..1e6 all arrive
//! target/release/lineship-load sink --status 503             # a failing server
//!
//! # generator and sink checked against each other; prints the sink's own throughput
//! target/release/lineship-load selftest --lines 5000000
//! ```
//!
//! `stdin` reports per run: lines sent and received (lost/dup from the seq check), wall time
//! from the first write to the daemon's exit, lines/s, the daemon's CPU seconds (user + sys) and
//! CPU seconds per million lines, its peak RSS and exit code, and this tool's own CPU use; then
//! the medians, compared against the DESIGN.md targets. Its last stdout line is one JSON object
//! with all of it. The daemon's own output goes to stderr. It exits 0 when every run delivered
//! every line and the daemon exited 0, 1 otherwise, and 2 when the harness itself failed.
//!
//! `udp` runs the daemon with one `[[input.udp]]` on a free port of 127.0.0.1 (info logging, so
//! its start and final summary can be read from its stderr, which is copied to ours), waits
//! until the port is bound and the daemon has started, sends `--lines` lines at `--rate`
//! lines/s, waits until the sink has every line or has seen none for `--idle-secs`, and stops
//! the daemon with SIGTERM. It reports per run: offered and achieved send rate (and how late the
//! senders woke, at worst), lines received, lost and duplicated, time to the sink's last write,
//! the daemon's CPU (user/sys, per million lines) and peak RSS, where lost lines went (the
//! socket's kernel drops from /proc/net/udp and the daemon's `udp_kernel_drops`, the daemon's
//! `dropped_by_reason`, /proc/net/softnet_stat backlog drops, /proc/net/snmp RcvbufErrors), and
//! the CPU of the senders and the sink; then medians, and JSON last. It exits 1 when a run lost
//! lines. `--find-max` steps the rate up instead and exits 1 only when no step was loss-free.
//! Traffic goes only to 127.0.0.1 and every run ends by itself.

use std::cell::RefCell;
use std::convert::Infallible;
use std::ffi::OsString;
use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use libdeflater::{CompressionLvl, Compressor, DecompressionError, Decompressor};
use memchr::memmem;
use serde::{Deserialize, Serialize};

/// Largest request body the sink reads, compressed or not.
const MAX_BODY_BYTES: usize = 512 << 20;
/// Largest decoded body the sink accepts; a gzip bomb gets 413 instead of eating memory.
const MAX_DECODED_BYTES: usize = 1 << 30;
/// Sequence numbers at or above this are counted as out of range (the bitset stays ≤ 512 MiB).
const MAX_SEQ: u64 = 1 << 32;
/// Average generated line length, used to size buffers.
const APPROX_LINE_BYTES: u64 = 76;
/// Above this estimated size `stdin` generates while writing instead of pre-generating.
const PREGEN_LIMIT_BYTES: u64 = 8 << 30;

// Performance targets from DESIGN.md ("stdin → gzip → HTTP sink, end to end" and "CPU cost").
const TARGET_LINES_PER_SEC: f64 = 2_000_000.0;
const TARGET_CPU_S_PER_M: f64 = 0.5;
const TARGET_RSS_MIB: f64 = 64.0;

#[derive(Parser)]
#[command(
    name = "lineship-load",
    version,
    about = "End-to-end load tool for lineship"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write generated line protocol to stdout.
    Gen(GenArgs),
    /// Run a counting HTTP sink that stands in for InfluxDB.
    Sink(SinkArgs),
    /// Benchmark stdin -> lineship -> in-process sink, end to end.
    Stdin(StdinArgs),
    /// Benchmark paced UDP senders -> lineship's UDP input -> in-process sink, with loss counts.
    Udp(UdpArgs),
    /// Benchmark a tailed file -> lineship's tail input -> in-process sink, end to end.
    Tail(TailArgs),
    /// Check the generator and the sink against each other; measure the sink's throughput.
    Selftest(SelftestArgs),
    /// Internal: run a command and report its rusage (used by `stdin` and `udp`).
    #[command(name = HELPER_SUBCOMMAND, hide = true)]
    ExecMeasured {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<OsString>,
    },
}

const HELPER_SUBCOMMAND: &str = "exec-measured";

#[derive(Args, Clone, Copy)]
struct GenOpts {
    /// First sequence number.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Number of distinct hosts, i.e. series per measurement (at most 1,000,000).
    #[arg(long, default_value_t = 1000)]
    tag_cardinality: u64,
    /// Timestamp of sequence number 0, in ns since the epoch (default: now).
    #[arg(long)]
    timestamp_base: Option<u64>,
    /// Seed for the value generator.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
}

#[derive(Args)]
struct GenArgs {
    /// Number of lines to write.
    #[arg(long)]
    lines: u64,
    #[command(flatten)]
    gen: GenOpts,
}

#[derive(Args)]
struct SinkArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Status answered to writes (2xx counts the lines as accepted).
    #[arg(long, default_value_t = 204)]
    status: u16,
    /// Record every `seq=<n>i` to count lost and duplicated lines.
    #[arg(long)]
    check_seq: bool,
    /// Expect sequence numbers start..start+N; the summary reports the missing ones and the
    /// exit code is 1 when any are missing.
    #[arg(long, value_name = "N")]
    expect_lines: Option<u64>,
    /// First expected sequence number (with --expect-lines).
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    duration_secs: Option<u64>,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// Settings of the daemon runs, shared by `stdin` and `udp`.
#[derive(Args)]
struct DaemonOpts {
    /// The lineship binary (default: `lineship` next to this executable).
    #[arg(long)]
    lineship: Option<PathBuf>,
    /// Runs; medians are reported.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// `output.gzip_level` (0 = identity).
    #[arg(long, default_value_t = 1)]
    gzip_level: u32,
    /// `agent.batch_max_lines`.
    #[arg(long, default_value_t = 5000)]
    batch_max_lines: u64,
    /// `agent.batch_max_bytes`, written as given (e.g. 1MiB).
    #[arg(long, default_value = "1MiB")]
    batch_max_bytes: String,
    /// `output.max_in_flight`.
    #[arg(long, default_value_t = 4)]
    max_in_flight: u32,
    /// `agent.flush_interval`.
    #[arg(long, default_value = "200ms")]
    flush_interval: String,
    /// `agent.log_level` (default: warn for `stdin`; info for `udp`, which reads the daemon's
    /// start and summary lines from its log).
    #[arg(long)]
    log_level: Option<String>,
    /// Keep the temp dir with the config and state_dir, and print its path.
    #[arg(long)]
    keep_config: bool,
    /// Skip the per-line seq bookkeeping in the sink (counts lines only).
    #[arg(long)]
    no_check_seq: bool,
    /// Kill the daemon (SIGTERM, then SIGKILL 10 s later) if a run takes longer.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Tokio worker threads for the in-process sink.
    #[arg(long, default_value_t = 2)]
    sink_threads: usize,
}

impl DaemonOpts {
    /// The lineship binary to run, checked to exist.
    fn lineship(&self) -> Result<PathBuf> {
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

    /// The daemon config for a sink at `sink`, with the caller's `[input...]` section.
    fn config<'a>(
        &'a self,
        sink: SocketAddr,
        log_level: &'a str,
        input_section: &'a str,
    ) -> DaemonConfig<'a> {
        DaemonConfig {
            sink,
            gzip_level: self.gzip_level,
            batch_max_lines: self.batch_max_lines,
            batch_max_bytes: &self.batch_max_bytes,
            max_in_flight: self.max_in_flight,
            flush_interval: &self.flush_interval,
            log_level,
            input_section,
        }
    }
}

#[derive(Args)]
struct StdinArgs {
    /// Lines to send per run.
    #[arg(long)]
    lines: u64,
    #[command(flatten)]
    d: DaemonOpts,
    #[command(flatten)]
    gen: GenOpts,
}

#[derive(Args)]
struct SelftestArgs {
    /// Lines to send through the sink.
    #[arg(long, default_value_t = 2_000_000)]
    lines: u64,
    /// Lines per request body.
    #[arg(long, default_value_t = 5000)]
    batch_lines: u64,
    /// libdeflate level for the request bodies.
    #[arg(long, default_value_t = 1)]
    gzip_level: u32,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Tokio worker threads for the sink.
    #[arg(long, default_value_t = 2)]
    sink_threads: usize,
    #[command(flatten)]
    gen: GenOpts,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Gen(a) => cmd_gen(&a),
        Cmd::Sink(a) => cmd_sink(&a),
        Cmd::Stdin(a) => cmd_stdin(&a),
        Cmd::Udp(a) => cmd_udp(&a),
        Cmd::Tail(a) => cmd_tail(&a),
        Cmd::Selftest(a) => cmd_selftest(&a),
        Cmd::ExecMeasured { command } => cmd_exec_measured(&command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lineship-load: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------------------------

const REGIONS: [&str; 6] = [
    "eu-west-1",
    "eu-central-1",
    "us-east-1",
    "us-west-2",
    "ap-south-1",
    "sa-east-1",
];
const DISK_PATHS: [&str; 4] = ["/", "/data", "/var", "/home"];

/// Most distinct hosts `--tag-cardinality` accepts; each costs 256 bytes of prefixes.
const MAX_CARDINALITY: u64 = 1_000_000;
/// Slot size of a precomputed line prefix; copied whole, then trimmed (see `put_padded`).
const PREFIX_SLOT: usize = 64;

/// Generates line protocol with unique, consecutive sequence numbers.
///
/// Four shapes (cpu, mem, disk, net) averaging ~75 bytes. Line `seq` is stamped
/// `timestamp_base + seq * 1000` ns, except when `seq % 16 == 15`, which has no timestamp.
///
/// Speed comes from doing almost nothing per line: everything up to the first field value is
/// precomputed per (shape, host); `seq` and the timestamp are ASCII counters incremented in
/// place; and every copy is a fixed-size one the compiler inlines, trimmed afterwards.
struct LineGen {
    next_seq: u64,
    cardinality: u64,
    /// `4 * cardinality` prefixes such as `cpu,host=host0042,region=eu-west-1 user=`, indexed by
    /// `shape * cardinality + host`.
    prefixes: Vec<([u8; PREFIX_SLOT], u8)>,
    /// `,seq=<n>i`
    seq_text: AsciiCounter,
    /// ` <timestamp>\n`
    ts_text: AsciiCounter,
    rng: u64,
}

/// A decimal counter kept as text between a fixed head and tail, e.g. `,seq=` `41` `i`.
struct AsciiCounter {
    text: [u8; 32],
    len: usize,
    head: usize,
    tail: usize,
}

impl AsciiCounter {
    fn new(head: &[u8], value: u64, tail: &[u8]) -> Self {
        let digits = value.to_string();
        let parts = [head, digits.as_bytes(), tail];
        let len = parts.iter().map(|p| p.len()).sum();
        let mut text = [0u8; 32];
        text[..len].copy_from_slice(&parts.concat());
        AsciiCounter {
            text,
            len,
            head: head.len(),
            tail: tail.len(),
        }
    }

    fn increment(&mut self) {
        let mut i = self.len - self.tail;
        while i > self.head {
            i -= 1;
            if self.text[i] != b'9' {
                self.text[i] += 1;
                return;
            }
            self.text[i] = b'0';
        }
        // All nines: one more digit.
        assert!(self.len < self.text.len(), "counter overflow");
        self.text.copy_within(self.head..self.len, self.head + 1);
        self.text[self.head] = b'1';
        self.len += 1;
    }

    fn push(&self, buf: &mut Vec<u8>) {
        put_padded(buf, &self.text, self.len);
    }
}

/// The current time in ns, rounded down to the second.
fn now_whole_second_ns() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.as_secs() * 1_000_000_000
}

/// Appends `src[..len]` by copying all of `src` and trimming: a fixed-size copy is a few vector
/// moves, where a variable-length one is a `memmove` call.
#[inline(always)]
fn put_padded<const N: usize>(buf: &mut Vec<u8>, src: &[u8; N], len: usize) {
    let end = buf.len() + len;
    buf.extend_from_slice(src);
    buf.truncate(end);
}

/// Appends `v` in decimal, writing the digits in place.
#[inline(always)]
fn put_u64(buf: &mut Vec<u8>, mut v: u64) {
    let digits = v.checked_ilog10().unwrap_or(0) as usize + 1;
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 20]);
    let out = &mut buf[start..start + digits];
    for d in out.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    buf.truncate(start + digits);
}

/// Appends `v / 10^frac_digits` with exactly `frac_digits` (1 or 2) decimals, e.g. `12.5`.
#[inline(always)]
fn put_decimal(buf: &mut Vec<u8>, v: u64, frac_digits: u32) {
    let scale = 10u64.pow(frac_digits);
    put_u64(buf, v / scale);
    let frac = v % scale;
    if frac_digits == 2 {
        buf.extend_from_slice(&[b'.', b'0' + (frac / 10) as u8, b'0' + (frac % 10) as u8]);
    } else {
        buf.extend_from_slice(&[b'.', b'0' + frac as u8]);
    }
}

impl LineGen {
    fn new(opts: &GenOpts) -> Self {
        let cardinality = opts.tag_cardinality.clamp(1, MAX_CARDINALITY);
        let digits = ((cardinality - 1).checked_ilog10().unwrap_or(0) as usize + 1).max(4);
        let mut prefixes = vec![([0u8; PREFIX_SLOT], 0u8); 4 * cardinality as usize];
        for host in 0..cardinality as usize {
            let name = format!("host{host:0digits$}");
            let region = REGIONS[host % REGIONS.len()];
            let path = DISK_PATHS[(host / REGIONS.len()) % DISK_PATHS.len()];
            let shapes = [
                format!("cpu,host={name},region={region} user="),
                format!("mem,host={name} used_percent="),
                format!("disk,host={name},path={path} free="),
                format!("net,host={name} rx="),
            ];
            for (shape, text) in shapes.iter().enumerate() {
                let slot = &mut prefixes[shape * cardinality as usize + host];
                slot.0[..text.len()].copy_from_slice(text.as_bytes());
                slot.1 = text.len() as u8;
            }
        }
        let ts_base = opts.timestamp_base.unwrap_or_else(now_whole_second_ns);
        // The timestamp counter counts microseconds; the nanosecond digits are its fixed tail.
        let ts_us = ts_base / 1000 + opts.start;
        let ns_tail = format!("{:03}\n", ts_base % 1000);
        LineGen {
            next_seq: opts.start,
            cardinality,
            prefixes,
            seq_text: AsciiCounter::new(b",seq=", opts.start, b"i"),
            ts_text: AsciiCounter::new(b" ", ts_us, ns_tail.as_bytes()),
            rng: opts.seed ^ 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// splitmix64: cheap, and good enough for picking hosts and values.
    fn next_rand(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Appends one newline-terminated line.
    fn push_line(&mut self, buf: &mut Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let r = self.next_rand();
        let host = ((r >> 32) * self.cardinality) >> 32;
        let shape = r & 3;
        let (prefix, len) = &self.prefixes[(shape * self.cardinality + host) as usize];
        put_padded(buf, prefix, usize::from(*len));
        match shape {
            0 => {
                put_decimal(buf, (r >> 8) & 0x3ff, 1);
                buf.extend_from_slice(b",system=");
                put_decimal(buf, (r >> 18) & 0xfff, 2);
            }
            1 => put_decimal(buf, ((r >> 8) & 0x3ff) % 1000, 1),
            2 => {
                put_u64(buf, (r >> 8) & 0xf_ffff_ffff);
                buf.push(b'i');
            }
            _ => {
                put_u64(buf, (r >> 8) & 0xf_ffff);
                buf.extend_from_slice(b"i,tx=");
                put_u64(buf, (r >> 28) & 0xffff);
                buf.push(b'i');
            }
        }
        self.seq_text.push(buf);
        self.seq_text.increment();
        if seq & 15 == 15 {
            buf.push(b'\n');
        } else {
            self.ts_text.push(buf);
        }
        self.ts_text.increment();
    }

    /// Appends `n` lines.
    fn fill_lines(&mut self, buf: &mut Vec<u8>, n: u64) {
        // Room for the overcopies of the last line too.
        buf.reserve((n * (APPROX_LINE_BYTES + 8)) as usize + 2 * PREFIX_SLOT);
        for _ in 0..n {
            self.push_line(buf);
        }
    }
}

fn cmd_gen(a: &GenArgs) -> Result<ExitCode> {
    let mut gen = LineGen::new(&a.gen);
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut buf = Vec::with_capacity(1 << 21);
    let mut left = a.lines;
    while left > 0 {
        let n = left.min(16 * 1024);
        buf.clear();
        gen.fill_lines(&mut buf, n);
        left -= n;
        match out.write_all(&buf) {
            Ok(()) => {}
            // `gen | head` is normal use, not an error.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(e).context("writing to stdout"),
        }
    }
    match out.flush() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("flushing stdout"),
        _ => Ok(ExitCode::SUCCESS),
    }
}

// ---------------------------------------------------------------------------------------------
// Body decoding and counting (pure)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
enum GunzipError {
    BadData,
    TooLarge,
}

/// Gunzips `input` (one or more concatenated gzip members) into `out[..returned]`.
///
/// `out` is scratch space: its length is the initialised capacity and is only ever grown, so a
/// reused buffer costs no zeroing. libdeflate decodes one member at a time and does not say how
/// many input bytes it used, so a member's end is found from its trailer: the CRC32 and size of
/// what it decoded, followed by end of input or the next member's magic.
fn gunzip_into(
    dec: &mut Decompressor,
    input: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<usize, GunzipError> {
    const HEADER: usize = 10;
    const MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];
    let mut rest = input;
    let mut used = 0usize;
    while !rest.is_empty() {
        if rest.len() < HEADER + 8 || !rest.starts_with(&MAGIC) {
            return Err(GunzipError::BadData);
        }
        // ISIZE of the last member: exact for the usual single-member body, a hint otherwise.
        // Deflate cannot expand more than 1032:1, so a hostile hint cannot force a huge buffer.
        let isize_hint = u32::from_le_bytes(rest[rest.len() - 4..].try_into().unwrap()) as usize;
        let mut want = isize_hint
            .min(rest.len().saturating_mul(1032))
            .max(rest.len() * 4)
            .max(64 << 10);
        let n = loop {
            want = want.min(max - used);
            if out.len() < used + want {
                out.resize(used + want, 0);
            }
            match dec.gzip_decompress(rest, &mut out[used..used + want]) {
                Ok(n) => break n,
                Err(DecompressionError::InsufficientSpace) if used + want < max => want *= 2,
                Err(DecompressionError::InsufficientSpace) => return Err(GunzipError::TooLarge),
                Err(DecompressionError::BadData) => return Err(GunzipError::BadData),
            }
        };
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&libdeflater::crc32(&out[used..used + n]).to_le_bytes());
        trailer[4..].copy_from_slice(&(n as u32).to_le_bytes());
        // The trailer can overlap the end of the deflate stream (an empty member's is all zeros),
        // so take the first candidate that is followed by the end or by another member.
        let member_len = memmem::find_iter(&rest[HEADER..], &trailer)
            .map(|p| HEADER + p + trailer.len())
            .find(|&end| end == rest.len() || rest[end..].starts_with(&MAGIC[..2]))
            .ok_or(GunzipError::BadData)?;
        used += n;
        rest = &rest[member_len..];
    }
    Ok(used)
}

/// Lines in `body`: newline-terminated ones plus an unterminated tail.
fn count_lines(body: &[u8]) -> u64 {
    let n = memchr::memchr_iter(b'\n', body).count() as u64;
    n + u64::from(body.last().is_some_and(|&b| b != b'\n'))
}

/// Appends every `seq=<digits>i` (or `u`) field value in `body` to `out`; returns how many `seq=`
/// occurrences in field position could not be parsed. Scans the whole body once with memmem
/// rather than line by line.
fn scan_seqs(body: &[u8], out: &mut Vec<u64>) -> u64 {
    static FINDER: OnceLock<memmem::Finder<'static>> = OnceLock::new();
    let finder = FINDER.get_or_init(|| memmem::Finder::new(b"seq="));
    let mut malformed = 0;
    for p in finder.find_iter(body) {
        if p > 0 && !matches!(body[p - 1], b',' | b' ') {
            continue;
        }
        let mut value = Some(0u64);
        let mut len = 0;
        for &b in &body[p + 4..] {
            if !b.is_ascii_digit() {
                break;
            }
            value = value
                .and_then(|v| v.checked_mul(10))
                .and_then(|v| v.checked_add(u64::from(b - b'0')));
            len += 1;
        }
        match (value, body.get(p + 4 + len)) {
            (Some(v), Some(b'i' | b'u')) if len > 0 => out.push(v),
            _ => malformed += 1,
        }
    }
    malformed
}

/// Which sequence numbers arrived, as a growable bitset.
#[derive(Default)]
struct SeqSet {
    words: Vec<u64>,
    unique: u64,
    dup: u64,
    out_of_range: u64,
    malformed: u64,
    min: Option<u64>,
    max: Option<u64>,
}

impl SeqSet {
    fn insert(&mut self, s: u64) {
        if s >= MAX_SEQ {
            self.out_of_range += 1;
            return;
        }
        let w = (s >> 6) as usize;
        if w >= self.words.len() {
            let len = (w + 1)
                .max(self.words.len() * 2)
                .min((MAX_SEQ >> 6) as usize);
            self.words.resize(len, 0);
        }
        let bit = 1u64 << (s & 63);
        if self.words[w] & bit != 0 {
            self.dup += 1;
        } else {
            self.words[w] |= bit;
            self.unique += 1;
            self.min = Some(self.min.map_or(s, |m| m.min(s)));
            self.max = Some(self.max.map_or(s, |m| m.max(s)));
        }
    }

    /// Distinct sequence numbers seen in `start..end`.
    fn count_range(&self, start: u64, end: u64) -> u64 {
        let end = end.min(MAX_SEQ);
        if start >= end {
            return 0;
        }
        let (first, last) = ((start >> 6) as usize, ((end - 1) >> 6) as usize);
        let mut n = 0;
        for (w, &word) in self.words.iter().enumerate().take(last + 1).skip(first) {
            let mut mask = !0u64;
            if w == first {
                mask &= !0u64 << (start & 63);
            }
            if w == last {
                let hi = ((end - 1) & 63) + 1;
                if hi < 64 {
                    mask &= (1u64 << hi) - 1;
                }
            }
            n += u64::from((word & mask).count_ones());
        }
        n
    }

    fn summary(&self, expect: Option<(u64, u64)>) -> SeqSummary {
        let span = match (self.min, self.max) {
            (Some(lo), Some(hi)) => hi - lo + 1,
            _ => 0,
        };
        SeqSummary {
            unique: self.unique,
            dup: self.dup,
            min: self.min,
            max: self.max,
            gaps_in_span: span - self.unique,
            lost: expect.map(|(start, n)| n - self.count_range(start, start.saturating_add(n))),
            out_of_range: self.out_of_range,
            malformed: self.malformed,
        }
    }
}

#[derive(Serialize, Clone, Copy, Debug, Default)]
struct SeqSummary {
    unique: u64,
    dup: u64,
    min: Option<u64>,
    max: Option<u64>,
    /// Sequence numbers missing between the smallest and largest seen.
    gaps_in_span: u64,
    /// Expected sequence numbers never seen (only when the expected range is known).
    lost: Option<u64>,
    out_of_range: u64,
    malformed: u64,
}

// ---------------------------------------------------------------------------------------------
// Sink
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Progress {
    Stdout,
    Stderr,
    Off,
}

#[derive(Clone, Copy)]
struct SinkOptions {
    status: StatusCode,
    check_seq: bool,
    progress: Progress,
}

/// Counters shared by all connections. Atomics for the totals; the seq bitset sits behind a
/// mutex taken once per request.
struct Sink {
    opts: SinkOptions,
    started: Instant,
    requests: AtomicU64,
    write_requests: AtomicU64,
    lines: AtomicU64,
    body_bytes: AtomicU64,
    decoded_bytes: AtomicU64,
    rejected_requests: AtomicU64,
    rejected_lines: AtomicU64,
    bad_requests: AtomicU64,
    /// ns since `started` of the first and last accepted write, +1 so 0 means "none yet".
    first_write_ns: AtomicU64,
    last_write_ns: AtomicU64,
    seqs: Mutex<SeqSet>,
}

#[derive(Serialize, Clone, Copy, Debug, Default)]
struct SinkSnapshot {
    requests: u64,
    write_requests: u64,
    /// Lines in writes answered 2xx.
    lines: u64,
    /// Request bytes as received (compressed when gzip).
    body_bytes: u64,
    /// Bytes after gunzip.
    decoded_bytes: u64,
    /// Writes answered with the configured non-2xx `--status`, and their lines.
    rejected_requests: u64,
    rejected_lines: u64,
    /// Undecodable bodies, answered 400 or 413.
    bad_requests: u64,
    /// Seconds between the first and the last accepted write.
    active_secs: f64,
    seq: Option<SeqSummary>,
}

impl SinkSnapshot {
    fn lines_per_sec(&self) -> f64 {
        rate(self.lines as f64, self.active_secs)
    }
}

thread_local! {
    /// Per worker thread, so decoding never allocates in the steady state.
    static DECODE: RefCell<(Decompressor, Vec<u8>, Vec<u64>)> =
        RefCell::new((Decompressor::new(), Vec::new(), Vec::new()));
}

impl Sink {
    fn new(opts: SinkOptions) -> Self {
        Sink {
            opts,
            started: Instant::now(),
            requests: AtomicU64::new(0),
            write_requests: AtomicU64::new(0),
            lines: AtomicU64::new(0),
            body_bytes: AtomicU64::new(0),
            decoded_bytes: AtomicU64::new(0),
            rejected_requests: AtomicU64::new(0),
            rejected_lines: AtomicU64::new(0),
            bad_requests: AtomicU64::new(0),
            first_write_ns: AtomicU64::new(0),
            last_write_ns: AtomicU64::new(0),
            seqs: Mutex::new(SeqSet::default()),
        }
    }

    /// Decodes and counts one write body. Runs synchronously inside the request future (no
    /// await), so the thread-local scratch buffers are safe to use.
    fn ingest(&self, gzip: bool, body: &[u8]) -> Result<(), (StatusCode, &'static str)> {
        self.body_bytes.fetch_add(body.len() as u64, Relaxed);
        DECODE.with(|cell| {
            let (dec, scratch, seqs) = &mut *cell.borrow_mut();
            // Keep the buffer for ordinary batches, but not after one outsized body.
            if scratch.len() > 64 << 20 {
                *scratch = Vec::new();
            }
            let data = if gzip {
                match gunzip_into(dec, body, scratch, MAX_DECODED_BYTES) {
                    Ok(n) => &scratch[..n],
                    Err(GunzipError::BadData) => {
                        self.bad_requests.fetch_add(1, Relaxed);
                        return Err((StatusCode::BAD_REQUEST, "body is not valid gzip"));
                    }
                    Err(GunzipError::TooLarge) => {
                        self.bad_requests.fetch_add(1, Relaxed);
                        return Err((StatusCode::PAYLOAD_TOO_LARGE, "decoded body too large"));
                    }
                }
            } else {
                body
            };
            let lines = count_lines(data);
            if !self.opts.status.is_success() {
                self.rejected_requests.fetch_add(1, Relaxed);
                self.rejected_lines.fetch_add(lines, Relaxed);
                return Ok(());
            }
            if self.opts.check_seq {
                seqs.clear();
                let malformed = scan_seqs(data, seqs);
                let mut set = self.seqs.lock().unwrap();
                set.malformed += malformed;
                for &s in seqs.iter() {
                    set.insert(s);
                }
            }
            self.decoded_bytes.fetch_add(data.len() as u64, Relaxed);
            self.lines.fetch_add(lines, Relaxed);
            let now = self.started.elapsed().as_nanos() as u64 + 1;
            let _ = self
                .first_write_ns
                .compare_exchange(0, now, Relaxed, Relaxed);
            self.last_write_ns.fetch_max(now, Relaxed);
            Ok(())
        })
    }

    fn snapshot(&self, expect: Option<(u64, u64)>) -> SinkSnapshot {
        let first = self.first_write_ns.load(Relaxed);
        let last = self.last_write_ns.load(Relaxed);
        SinkSnapshot {
            requests: self.requests.load(Relaxed),
            write_requests: self.write_requests.load(Relaxed),
            lines: self.lines.load(Relaxed),
            body_bytes: self.body_bytes.load(Relaxed),
            decoded_bytes: self.decoded_bytes.load(Relaxed),
            rejected_requests: self.rejected_requests.load(Relaxed),
            rejected_lines: self.rejected_lines.load(Relaxed),
            bad_requests: self.bad_requests.load(Relaxed),
            active_secs: last.saturating_sub(first) as f64 / 1e9,
            seq: self
                .opts
                .check_seq
                .then(|| self.seqs.lock().unwrap().summary(expect)),
        }
    }
}

fn respond(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    if !body.is_empty() {
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
    }
    resp
}

async fn handle(
    sink: Arc<Sink>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    sink.requests.fetch_add(1, Relaxed);
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/ping") => respond(StatusCode::NO_CONTENT, ""),
        (&Method::GET | &Method::HEAD, "/health") => respond(
            StatusCode::OK,
            r#"{"name":"lineship-load-sink","status":"pass"}"#,
        ),
        (&Method::POST, "/api/v2/write") => {
            sink.write_requests.fetch_add(1, Relaxed);
            let gzip = match req.headers().get(header::CONTENT_ENCODING) {
                None => false,
                Some(v) if v.as_bytes().eq_ignore_ascii_case(b"gzip") => true,
                Some(v) if v.as_bytes().eq_ignore_ascii_case(b"identity") => false,
                Some(_) => {
                    sink.bad_requests.fetch_add(1, Relaxed);
                    return Ok(respond(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        r#"{"code":"unsupported","message":"unknown Content-Encoding"}"#,
                    ));
                }
            };
            let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    sink.bad_requests.fetch_add(1, Relaxed);
                    return Ok(respond(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        r#"{"code":"too large","message":"body unreadable or too large"}"#,
                    ));
                }
            };
            match sink.ingest(gzip, &body) {
                Ok(()) if sink.opts.status.is_success() => respond(sink.opts.status, ""),
                Ok(()) => respond(
                    sink.opts.status,
                    r#"{"code":"internal error","message":"lineship-load sink answers this status by request (--status)"}"#,
                ),
                Err((status, _)) if status == StatusCode::PAYLOAD_TOO_LARGE => respond(
                    status,
                    r#"{"code":"too large","message":"decoded body too large"}"#,
                ),
                Err((status, _)) => respond(
                    status,
                    r#"{"code":"invalid","message":"body is not valid gzip"}"#,
                ),
            }
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            r#"{"code":"not found","message":"unknown path"}"#,
        ),
    };
    Ok(resp)
}

/// A running sink. Dropping it (or `stop`) stops accepting and printing; connections that are
/// still open end when their peer closes them.
struct SinkHandle {
    sink: Arc<Sink>,
    addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SinkHandle {
    fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for SinkHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds `listen` and serves the sink on `rt`. Binding happens before returning, so the address
/// is usable at once.
fn start_sink(
    rt: &tokio::runtime::Handle,
    listen: SocketAddr,
    opts: SinkOptions,
) -> Result<SinkHandle> {
    let std_listener =
        std::net::TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let _guard = rt.enter();
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let sink = Arc::new(Sink::new(opts));
    let mut tasks = Vec::new();
    let s = sink.clone();
    tasks.push(rt.spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Usually EMFILE; back off instead of spinning.
                    eprintln!("sink: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let s = s.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(s.clone(), req));
                // Peers resetting mid-request is normal when a daemon is killed.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }));
    if opts.progress != Progress::Off {
        let s = sink.clone();
        tasks.push(rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut prev = s.snapshot(None);
            loop {
                tick.tick().await;
                let cur = s.snapshot(None);
                let line = format!(
                    "sink t={:.0}s lines={} (+{}/s) decoded={:.1} MB (+{:.1} MB/s) wire={:.1} MB writes={} rejected={} bad={}",
                    s.started.elapsed().as_secs_f64(),
                    cur.lines,
                    cur.lines - prev.lines,
                    cur.decoded_bytes as f64 / 1e6,
                    (cur.decoded_bytes - prev.decoded_bytes) as f64 / 1e6,
                    cur.body_bytes as f64 / 1e6,
                    cur.write_requests,
                    cur.rejected_requests,
                    cur.bad_requests,
                );
                if opts.progress == Progress::Stdout {
                    println!("{line}");
                } else {
                    eprintln!("{line}");
                }
                prev = cur;
            }
        }));
    }
    Ok(SinkHandle { sink, addr, tasks })
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("sink")
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn cmd_sink(a: &SinkArgs) -> Result<ExitCode> {
    let status = StatusCode::from_u16(a.status).context("--status")?;
    let check_seq = a.check_seq || a.expect_lines.is_some();
    let rt = runtime(a.threads)?;
    let handle = start_sink(
        rt.handle(),
        a.listen,
        SinkOptions {
            status,
            check_seq,
            progress: Progress::Stdout,
        },
    )?;
    println!("listening {}", handle.addr);
    io::stdout().flush()?;
    let duration = a.duration_secs.map(Duration::from_secs);
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let timer = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = timer => {}
        }
        anyhow::Ok(())
    })?;
    let expect = a.expect_lines.map(|n| (a.start, n));
    let snap = handle.sink.snapshot(expect);
    println!(
        "summary: {} writes, {} lines in {:.3}s active ({:.0} lines/s), decoded {:.1} MB, wire {:.1} MB, rejected {} writes/{} lines, bad {}",
        snap.write_requests,
        snap.lines,
        snap.active_secs,
        snap.lines_per_sec(),
        snap.decoded_bytes as f64 / 1e6,
        snap.body_bytes as f64 / 1e6,
        snap.rejected_requests,
        snap.rejected_lines,
        snap.bad_requests,
    );
    if let Some(s) = snap.seq {
        println!("{}", seq_line(&s));
    }
    println!("{}", serde_json::to_string(&snap)?);
    let missing = snap.seq.and_then(|s| s.lost).unwrap_or(0);
    Ok(if missing > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn seq_line(s: &SeqSummary) -> String {
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    format!(
        "seq: unique={} dup={} lost={} gaps_in_span={} min={} max={} out_of_range={} malformed={}",
        s.unique,
        s.dup,
        opt(s.lost),
        s.gaps_in_span,
        opt(s.min),
        opt(s.max),
        s.out_of_range,
        s.malformed
    )
}

// ---------------------------------------------------------------------------------------------
// Driving the daemon
// ---------------------------------------------------------------------------------------------

/// Settings written into the daemon's config; the `[input...]` section is the caller's, so a UDP
/// mode can reuse everything else.
struct DaemonConfig<'a> {
    sink: SocketAddr,
    gzip_level: u32,
    batch_max_lines: u64,
    batch_max_bytes: &'a str,
    max_in_flight: u32,
    flush_interval: &'a str,
    log_level: &'a str,
    input_section: &'a str,
}

/// A TOML basic string: JSON string escapes are a subset of TOML's.
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialise")
}

fn render_config(c: &DaemonConfig, state_dir: &Path) -> String {
    format!(
        r#"# written by lineship-load
state_dir = {state_dir}

[agent]
flush_interval = {flush}
batch_max_lines = {bml}
batch_max_bytes = {bmb}
shutdown_timeout = "30s"
log_level = {log}

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
        flush = toml_str(c.flush_interval),
        bml = c.batch_max_lines,
        bmb = toml_str(c.batch_max_bytes),
        log = toml_str(c.log_level),
        url = toml_str(&format!("http://{}", c.sink)),
        gz = c.gzip_level,
        mif = c.max_in_flight,
        input = c.input_section,
    )
}

/// A fresh directory per run, so no spool from an earlier run is replayed.
fn make_run_dir(run: u32) -> Result<PathBuf> {
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

/// Writes a run's config readable by the owner only: it holds the sink's token, and the
/// daemon warns about a token in a file every user can read.
fn write_config(path: &Path, config: &str) -> Result<()> {
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

/// How the daemon process ended, from `wait4` in the `exec-measured` helper.
#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
struct DaemonExit {
    /// Exit status, or 128 + signal number when killed by a signal.
    exit_code: i32,
    signal: Option<i32>,
    cpu_user_s: f64,
    cpu_sys_s: f64,
    peak_rss_kib: u64,
    /// The helper's own peak RSS when it spawned the daemon: `peak_rss_kib` cannot be lower.
    rss_floor_kib: u64,
    timed_out: bool,
}

impl DaemonExit {
    fn cpu_s(&self) -> f64 {
        self.cpu_user_s + self.cpu_sys_s
    }
}

/// Reaps `pid` with `wait4` and returns its status and resource usage.
fn reap(pid: libc::pid_t) -> io::Result<DaemonExit> {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `ru` are valid out-parameters; `pid` is our unreaped child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let (exit_code, signal) = if libc::WIFEXITED(status) {
        (libc::WEXITSTATUS(status), None)
    } else {
        let sig = libc::WTERMSIG(status);
        (128 + sig, Some(sig))
    };
    Ok(DaemonExit {
        exit_code,
        signal,
        cpu_user_s: tv(ru.ru_utime),
        cpu_sys_s: tv(ru.ru_stime),
        // Linux reports ru_maxrss in KiB.
        peak_rss_kib: ru.ru_maxrss.max(0) as u64,
        rss_floor_kib: 0,
        timed_out: false,
    })
}

/// `VmHWM` of this process in KiB, or 0.
fn own_peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The daemon's pid, for the helper's signal handler.
static HELPER_CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = HELPER_CHILD.load(Relaxed);
    if pid > 0 {
        let sig = if sig == libc::SIGUSR1 {
            libc::SIGKILL
        } else {
            sig
        };
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// The `exec-measured` helper: runs `command` with this process's stdin, prints `spawned <pid>`,
/// forwards SIGTERM/SIGINT (and SIGUSR1 as SIGKILL), and prints a [`DaemonExit`] as JSON when it
/// has exited.
///
/// Why a helper: on Linux a child's `ru_maxrss` starts at the peak RSS of the process that
/// spawned it (the kernel records the old mm's high-water mark at exec, and with vfork/CLONE_VM
/// that is the parent's). Spawned from `stdin`, which holds all the generated input, the daemon
/// would report hundreds of MiB it never used. This helper is freshly exec'd and small.
fn cmd_exec_measured(command: &[OsString]) -> Result<ExitCode> {
    let (program, args) = command.split_first().context("no command given")?;
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1] {
        // SAFETY: installs a handler that only calls async-signal-safe functions.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
    let rss_floor_kib = own_peak_rss_kib();
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::inherit())
        // Our stdout is the report channel to `stdin`; the daemon's output goes to stderr.
        .stdout(Stdio::from(io::stderr()))
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawning {}", Path::new(program).display()))?;
    let pid = child.id() as libc::pid_t;
    HELPER_CHILD.store(pid, Relaxed);
    // Leave the daemon the only reader of the input pipe, so the writer sees EPIPE if it exits.
    let devnull = std::fs::File::open("/dev/null").context("opening /dev/null")?;
    // SAFETY: dup2 onto fd 0, which nothing in this process reads.
    unsafe { libc::dup2(devnull.as_raw_fd(), 0) };
    let mut out = io::stdout().lock();
    writeln!(out, "spawned {pid}")?;
    out.flush()?;
    let mut exit = reap(pid).context("wait4 on the daemon")?;
    exit.rss_floor_kib = rss_floor_kib;
    writeln!(out, "{}", serde_json::to_string(&exit)?)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// What to write into the daemon's stdin.
#[derive(Clone)]
enum Feed {
    /// Pre-generated bytes holding `lines` lines.
    Bytes { data: Arc<Vec<u8>>, lines: u64 },
    /// Generated while writing (for runs too big to hold in memory).
    Generate { opts: GenOpts, lines: u64 },
}

struct FeedResult {
    lines: u64,
    bytes: u64,
    error: Option<io::Error>,
}

/// Writes `feed` to `out` in 1 MiB chunks, publishing the bytes and lines fully written so far in
/// `progress`, so a caller that gives up on a blocked writer still knows how much went in.
fn write_feed(out: &mut impl Write, feed: &Feed, progress: &[AtomicU64; 2]) -> FeedResult {
    const CHUNK: usize = 1 << 20;
    let [bytes, lines] = progress;
    let result = |error| FeedResult {
        bytes: bytes.load(Relaxed),
        lines: lines.load(Relaxed),
        error,
    };
    match feed {
        Feed::Bytes { data, lines: n } => {
            for chunk in data.chunks(CHUNK) {
                if let Err(e) = out.write_all(chunk) {
                    // Count only complete lines of the written prefix, after the timed part.
                    let done = bytes.load(Relaxed) as usize;
                    let complete = memchr::memchr_iter(b'\n', &data[..done]).count();
                    lines.store(complete as u64, Relaxed);
                    return result(Some(e));
                }
                bytes.fetch_add(chunk.len() as u64, Relaxed);
            }
            lines.store(*n, Relaxed);
        }
        Feed::Generate { opts, lines: n } => {
            let mut gen = LineGen::new(opts);
            let mut buf = Vec::with_capacity(CHUNK + 64 * 1024);
            let mut left = *n;
            while left > 0 {
                let batch = left.min(CHUNK as u64 / APPROX_LINE_BYTES);
                buf.clear();
                gen.fill_lines(&mut buf, batch);
                if let Err(e) = out.write_all(&buf) {
                    return result(Some(e));
                }
                left -= batch;
                lines.fetch_add(batch, Relaxed);
                bytes.fetch_add(buf.len() as u64, Relaxed);
            }
        }
    }
    result(None)
}

struct DaemonRun {
    exit: DaemonExit,
    feed: FeedResult,
    /// From just before the first write to the daemon's exit.
    wall: Duration,
}

/// A daemon started through the `exec-measured` helper.
struct Measured {
    helper: std::process::Child,
    helper_pid: libc::pid_t,
    /// The daemon's own pid, as the helper reported it.
    pid: libc::pid_t,
    reports: io::BufReader<std::process::ChildStdout>,
}

/// Starts `lineship --config CFG [extra...]` through the `exec-measured` helper and waits for it
/// to say the daemon was spawned. `stdin` and `stderr` are the helper's, which the daemon
/// inherits (its stdout goes to the same place as its stderr).
fn spawn_measured(
    lineship: &Path,
    config: &Path,
    extra: &[&str],
    stdin: Stdio,
    stderr: Stdio,
) -> Result<Measured> {
    let this = std::env::current_exe().context("locating this executable")?;
    let mut helper = Command::new(this)
        .arg(HELPER_SUBCOMMAND)
        .arg("--")
        .arg(lineship)
        .arg("--config")
        .arg(config)
        .args(extra)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("spawning the exec-measured helper")?;
    let helper_pid = helper.id() as libc::pid_t;
    let mut reports = io::BufReader::new(helper.stdout.take().context("helper stdout")?);
    let mut line = String::new();
    reports.read_line(&mut line)?;
    let Some(pid) = line
        .strip_prefix("spawned ")
        .and_then(|p| p.trim().parse().ok())
    else {
        // Closes the helper's stdin before waiting.
        let _ = helper.wait();
        bail!("could not start {}", lineship.display());
    };
    Ok(Measured {
        helper,
        helper_pid,
        pid,
        reports,
    })
}

impl Measured {
    /// Sends `sig` to the helper, which forwards it to the daemon (SIGUSR1 as SIGKILL).
    fn signal(&self, sig: libc::c_int) {
        // SAFETY: the helper is our child and is reaped only in `wait`, which consumes self.
        unsafe { libc::kill(self.helper_pid, sig) };
    }

    /// True once the helper (and so the daemon) has exited.
    fn has_exited(&mut self) -> bool {
        matches!(self.helper.try_wait(), Ok(Some(_)))
    }

    /// Waits for the daemon to exit and returns the helper's report. After `timeout` the daemon
    /// gets SIGTERM, and SIGKILL 10 s later.
    fn wait(mut self, timeout: Duration) -> Result<DaemonExit> {
        let helper_pid = self.helper_pid;
        let (cancel_tx, cancel_rx) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if cancel_rx.recv_timeout(timeout).is_ok() {
                return false;
            }
            eprintln!("lineship-load: run exceeded {timeout:?}; sending SIGTERM");
            // SAFETY: the helper is our child and is not reaped before this thread is joined;
            // it forwards the signal to the daemon.
            unsafe { libc::kill(helper_pid, libc::SIGTERM) };
            if cancel_rx.recv_timeout(Duration::from_secs(10)).is_err() {
                eprintln!("lineship-load: still running; sending SIGKILL");
                // SAFETY: as above; the helper turns SIGUSR1 into SIGKILL for the daemon.
                unsafe { libc::kill(helper_pid, libc::SIGUSR1) };
            }
            true
        });
        let mut line = String::new();
        let read = self.reports.read_line(&mut line);
        let _ = cancel_tx.send(());
        let timed_out = watchdog.join().expect("watchdog thread panicked");
        let _ = self.helper.wait();
        read.context("reading the helper's report")?;
        let mut exit: DaemonExit = serde_json::from_str(line.trim())
            .with_context(|| format!("the exec-measured helper reported {line:?}"))?;
        exit.timed_out = timed_out;
        Ok(exit)
    }
}

/// Starts `lineship --config CFG --stdin` through the `exec-measured` helper, writes `feed` into
/// its stdin from a writer thread, and waits for it to exit (stopping it after `timeout`).
fn run_daemon(lineship: &Path, config: &Path, feed: &Feed, timeout: Duration) -> Result<DaemonRun> {
    let mut daemon = spawn_measured(
        lineship,
        config,
        &["--stdin"],
        Stdio::piped(),
        Stdio::inherit(),
    )?;
    let mut stdin = daemon.helper.stdin.take().context("helper stdin")?;

    let t0 = Instant::now();
    let progress = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let (done_tx, done_rx) = mpsc::channel();
    {
        let (feed, progress) = (feed.clone(), progress.clone());
        std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || {
                let r = write_feed(&mut stdin, &feed, &progress);
                drop(stdin); // EOF: the daemon drains and exits
                let _ = done_tx.send(r);
            })
            .context("spawning the writer thread")?;
    }
    let exit = daemon.wait(timeout);
    let wall = t0.elapsed();
    let exit = exit?;
    // A process the daemon left behind may still hold the pipe open and the writer blocked; then
    // the writer is abandoned (it ends when that process does) and the run reports what got in.
    let feed = done_rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| FeedResult {
            bytes: progress[0].load(Relaxed),
            lines: progress[1].load(Relaxed),
            error: Some(io::Error::other(
                "lineship exited, but its stdin is still held open by another process",
            )),
        });
    Ok(DaemonRun { exit, feed, wall })
}

fn process_cpu_s() -> f64 {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU seconds used so far by this process's threads named `sink` (the tokio workers), from
/// /proc; 0 where that is unavailable.
fn sink_cpu_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut total = 0u64;
    for task in tasks.flatten() {
        let path = task.path();
        let is_sink = std::fs::read_to_string(path.join("comm")).is_ok_and(|c| c.trim() == "sink");
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if is_sink && fields.len() > 12 {
            total +=
                fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        }
    }
    total as f64 / ticks
}

/// CPU seconds (user + sys) so far of each thread of process `pid`, summed per thread name
/// with trailing digits dropped (`lineship-udp0` and `lineship-udp1` are `lineship-udp`),
/// from /proc; empty where that is unavailable.
fn threads_cpu_s(pid: libc::pid_t) -> Vec<(String, f64)> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut by_name: Vec<(String, f64)> = Vec::new();
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close]
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.len() <= 12 {
            continue;
        }
        let t = (fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0))
            as f64
            / ticks;
        match by_name.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => *v += t,
            None => by_name.push((name, t)),
        }
    }
    by_name.sort_by(|a, b| b.1.total_cmp(&a.1));
    by_name
}

#[derive(Serialize, Clone, Debug)]
struct RunReport {
    run: u32,
    lines_sent: u64,
    bytes_sent: u64,
    lines_received: u64,
    lost: Option<u64>,
    dup: Option<u64>,
    wall_s: f64,
    lines_per_sec: f64,
    daemon_cpu_s: f64,
    cpu_s_per_million_lines: f64,
    peak_rss_mib: f64,
    /// Peak RSS cannot be measured below this (the spawning helper's own RSS).
    rss_floor_mib: f64,
    exit_code: i32,
    timed_out: bool,
    /// CPU used by this tool (sink + writer) during the run, for judging interference.
    harness_cpu_s: f64,
    /// The part of `harness_cpu_s` used by the sink's threads.
    sink_cpu_s: f64,
    sink: SinkSnapshot,
    write_error: Option<String>,
    ok: bool,
}

#[derive(Serialize)]
struct Medians {
    lines_per_sec: f64,
    cpu_s_per_million_lines: f64,
    wall_s: f64,
    peak_rss_mib: f64,
    max_peak_rss_mib: f64,
}

#[derive(Serialize)]
struct StdinSummary<'a> {
    tool: &'static str,
    mode: &'static str,
    lines: u64,
    repeat: u32,
    gzip_level: u32,
    batch_max_lines: u64,
    batch_max_bytes: &'a str,
    max_in_flight: u32,
    flush_interval: &'a str,
    pregenerated: bool,
    median: Medians,
    runs: &'a [RunReport],
    ok: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn rate(n: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        n / secs
    } else {
        0.0
    }
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "FAIL"
    }
}

fn cmd_stdin(a: &StdinArgs) -> Result<ExitCode> {
    ensure!(a.lines > 0, "--lines must be > 0");
    ensure!(a.d.repeat > 0, "--repeat must be > 0");
    let lineship = a.d.lineship()?;
    let log_level = a.d.log_level.as_deref().unwrap_or("warn");
    let check_seq = !a.d.no_check_seq;
    // Fix the timestamp base so every repeat sends identical bytes.
    let mut gen_opts = a.gen;
    gen_opts
        .timestamp_base
        .get_or_insert_with(now_whole_second_ns);
    let pregenerate = a.lines.saturating_mul(APPROX_LINE_BYTES) <= PREGEN_LIMIT_BYTES;
    let feed = if pregenerate {
        // Generated before the clock starts, so its cost is not the daemon's.
        let t = Instant::now();
        let mut data = Vec::new();
        LineGen::new(&gen_opts).fill_lines(&mut data, a.lines);
        eprintln!(
            "generated {} lines ({:.1} MB, {:.1} B/line) in {:.2}s",
            a.lines,
            data.len() as f64 / 1e6,
            data.len() as f64 / a.lines as f64,
            t.elapsed().as_secs_f64()
        );
        Feed::Bytes {
            data: Arc::new(data),
            lines: a.lines,
        }
    } else {
        eprintln!(
            "{} lines do not fit in memory; generating while writing",
            a.lines
        );
        Feed::Generate {
            opts: gen_opts,
            lines: a.lines,
        }
    };

    let rt = runtime(a.d.sink_threads)?;
    let mut runs = Vec::new();
    for run in 1..=a.d.repeat {
        let mut sink = start_sink(
            rt.handle(),
            "127.0.0.1:0".parse().unwrap(),
            SinkOptions {
                status: StatusCode::NO_CONTENT,
                check_seq,
                progress: Progress::Stderr,
            },
        )?;
        let dir = make_run_dir(run)?;
        let config_path = dir.join("lineship.toml");
        let config = render_config(
            &a.d.config(sink.addr, log_level, "[input.stdin]\nenabled = true"),
            &dir.join("state"),
        );
        write_config(&config_path, &config)?;

        let (cpu_before, sink_cpu_before) = (process_cpu_s(), sink_cpu_s());
        let result = run_daemon(
            &lineship,
            &config_path,
            &feed,
            Duration::from_secs(a.d.timeout_secs),
        );
        let harness_cpu_s = process_cpu_s() - cpu_before;
        let sink_cpu_s = sink_cpu_s() - sink_cpu_before;
        // Every write the daemon saw acknowledged was counted before the response went out, so
        // nothing is in flight once it has exited.
        sink.stop();
        let snap = sink.sink.snapshot(Some((a.gen.start, a.lines)));
        if a.d.keep_config {
            eprintln!("kept {}", dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let DaemonRun {
            exit,
            feed: fed,
            wall,
        } = result?;

        let wall_s = wall.as_secs_f64();
        let lost = snap.seq.and_then(|s| s.lost);
        let dup = snap.seq.map(|s| s.dup);
        let all_received = match lost {
            Some(lost) => lost == 0,
            None => snap.lines >= a.lines,
        };
        // At-least-once is the contract only across crashes; a clean run must not duplicate.
        let ok = all_received
            && dup.unwrap_or(0) == 0
            && exit.exit_code == 0
            && fed.error.is_none()
            && !exit.timed_out;
        let report = RunReport {
            run,
            lines_sent: fed.lines,
            bytes_sent: fed.bytes,
            lines_received: snap.lines,
            lost,
            dup,
            wall_s,
            lines_per_sec: rate(fed.lines as f64, wall_s),
            daemon_cpu_s: exit.cpu_s(),
            cpu_s_per_million_lines: rate(exit.cpu_s(), fed.lines as f64 / 1e6),
            peak_rss_mib: exit.peak_rss_kib as f64 / 1024.0,
            rss_floor_mib: exit.rss_floor_kib as f64 / 1024.0,
            exit_code: exit.exit_code,
            timed_out: exit.timed_out,
            harness_cpu_s,
            sink_cpu_s,
            sink: snap,
            write_error: fed.error.as_ref().map(|e| e.to_string()),
            ok,
        };
        println!(
            "run {run}/{}: sent={} received={} lost={} dup={} wall={:.3}s rate={:.0} lines/s daemon_cpu={:.2}s ({:.3} s/M lines) peak_rss={:.1} MiB (floor {:.1}) exit={}{} harness_cpu={:.2}s (sink {:.2}s){}",
            a.d.repeat,
            report.lines_sent,
            report.lines_received,
            lost.map_or_else(|| "-".into(), |v| v.to_string()),
            dup.map_or_else(|| "-".into(), |v| v.to_string()),
            report.wall_s,
            report.lines_per_sec,
            report.daemon_cpu_s,
            report.cpu_s_per_million_lines,
            report.peak_rss_mib,
            report.rss_floor_mib,
            report.exit_code,
            if exit.timed_out { " (timed out)" } else { "" },
            report.harness_cpu_s,
            report.sink_cpu_s,
            if ok { "" } else { "  << FAILED" },
        );
        if let Some(e) = &report.write_error {
            println!("  writing to lineship's stdin failed: {e}");
        }
        runs.push(report);
    }

    let med = Medians {
        lines_per_sec: median(runs.iter().map(|r| r.lines_per_sec).collect()),
        cpu_s_per_million_lines: median(runs.iter().map(|r| r.cpu_s_per_million_lines).collect()),
        wall_s: median(runs.iter().map(|r| r.wall_s).collect()),
        peak_rss_mib: median(runs.iter().map(|r| r.peak_rss_mib).collect()),
        max_peak_rss_mib: runs.iter().map(|r| r.peak_rss_mib).fold(0.0, f64::max),
    };
    let ok = runs.iter().all(|r| r.ok);
    println!(
        "median of {} run(s): {:.0} lines/s [{} >= {:.0}], {:.3} CPU-s per M lines [{} <= {}], peak RSS max {:.1} MiB [{} <= {}]",
        runs.len(),
        med.lines_per_sec,
        verdict(med.lines_per_sec >= TARGET_LINES_PER_SEC),
        TARGET_LINES_PER_SEC,
        med.cpu_s_per_million_lines,
        verdict(med.cpu_s_per_million_lines <= TARGET_CPU_S_PER_M),
        TARGET_CPU_S_PER_M,
        med.max_peak_rss_mib,
        verdict(med.max_peak_rss_mib <= TARGET_RSS_MIB),
        TARGET_RSS_MIB,
    );
    if !ok {
        println!("FAILED: some run lost lines, or lineship did not exit 0");
    }
    let summary = StdinSummary {
        tool: "lineship-load",
        mode: "stdin",
        lines: a.lines,
        repeat: a.d.repeat,
        gzip_level: a.d.gzip_level,
        batch_max_lines: a.d.batch_max_lines,
        batch_max_bytes: &a.d.batch_max_bytes,
        max_in_flight: a.d.max_in_flight,
        flush_interval: &a.d.flush_interval,
        pregenerated: pregenerate,
        median: med,
        runs: &runs,
        ok,
    };
    println!("{}", serde_json::to_string(&summary)?);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

// ---------------------------------------------------------------------------------------------
// Tail: a file on disk -> lineship's [[input.tail]] -> in-process sink
// ---------------------------------------------------------------------------------------------

// Issue 4: "tail -> gzip -> HTTP sink: >= 1,500,000 lines/s end to end".
const TARGET_TAIL_LINES_PER_SEC: f64 = 1_500_000.0;
/// How long a tail run waits for the daemon's "lineship started" log line.
const TAIL_READY_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Args)]
struct TailArgs {
    /// Lines to write into the tailed file per run.
    #[arg(long)]
    lines: u64,
    /// Start the daemon on an empty file, then append the lines as fast as possible (timed from
    /// the first append). Default: the file is complete before the daemon starts (timed from the
    /// daemon's start).
    #[arg(long)]
    growing: bool,
    /// Bytes per append with --growing (cut at a line end).
    #[arg(long, default_value_t = 4 << 20)]
    block_bytes: usize,
    /// Stop waiting when the sink has seen no new line for this long (the daemon rescans globs
    /// every 2 s).
    #[arg(long, default_value_t = 15.0)]
    idle_secs: f64,
    #[command(flatten)]
    d: DaemonOpts,
    #[command(flatten)]
    gen: GenOpts,
}

fn tail_input_section(dir: &Path) -> String {
    let glob = dir.join("*.log");
    format!(
        "[[input.tail]]\npaths = [{}]\nfrom_beginning = true\n\n[input.stdin]\nenabled = false",
        toml_str(&glob.to_string_lossy())
    )
}

/// Splits `data` into blocks of about `block` bytes, each ending at a line end.
fn line_blocks(data: &[u8], block: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let cut = if rest.len() <= block {
            rest.len()
        } else {
            match memchr::memchr(b'\n', &rest[block.max(1) - 1..]) {
                Some(i) => block.max(1) + i,
                None => rest.len(),
            }
        };
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out
}

#[derive(Serialize, Clone, Debug)]
struct TailRunReport {
    run: u32,
    lines: u64,
    bytes: u64,
    lines_received: u64,
    lost: Option<u64>,
    dup: Option<u64>,
    /// From the daemon's start (existing file) or the first append (--growing) to the sink's
    /// last accepted write.
    wall_s: f64,
    lines_per_sec: f64,
    /// --growing: how long the appends took, and their rate.
    append_s: Option<f64>,
    append_lines_per_sec: Option<f64>,
    /// Existing file: from spawning the daemon to its "lineship started" log line.
    startup_s: Option<f64>,
    daemon_cpu_s: f64,
    cpu_s_per_million_lines: f64,
    peak_rss_mib: f64,
    rss_floor_mib: f64,
    exit_code: i32,
    timed_out: bool,
    /// CPU seconds of the daemon's threads by name just before it was stopped, busiest first.
    daemon_threads_cpu_s: Vec<(String, f64)>,
    daemon: DaemonCounters,
    harness_cpu_s: f64,
    sink_cpu_s: f64,
    sink: SinkSnapshot,
    ok: bool,
}

#[derive(Serialize)]
struct TailSummary<'a> {
    tool: &'static str,
    mode: &'static str,
    lines: u64,
    repeat: u32,
    gzip_level: u32,
    batch_max_lines: u64,
    batch_max_bytes: &'a str,
    max_in_flight: u32,
    flush_interval: &'a str,
    median: Medians,
    runs: &'a [TailRunReport],
    ok: bool,
}

/// One tail run: writes (or, with --growing, appends) `data` into `<run dir>/logs/bench.log`.
fn run_tail(
    a: &TailArgs,
    lineship: &Path,
    data: &[u8],
    rt: &tokio::runtime::Runtime,
    run: u32,
) -> Result<TailRunReport> {
    let check_seq = !a.d.no_check_seq;
    let mut sink = start_sink(
        rt.handle(),
        "127.0.0.1:0".parse().unwrap(),
        SinkOptions {
            status: StatusCode::NO_CONTENT,
            check_seq,
            progress: Progress::Stderr,
        },
    )?;
    let dir = make_run_dir(run)?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let file_path = logs.join("bench.log");
    // Existing-file case: complete before the daemon starts (and in the page cache).
    std::fs::write(&file_path, if a.growing { &[][..] } else { data })
        .with_context(|| format!("writing {}", file_path.display()))?;
    let config_path = dir.join("lineship.toml");
    // Info, so the "lineship started" and summary lines are there to read.
    let log_level = a.d.log_level.as_deref().unwrap_or("info");
    let config = render_config(
        &a.d.config(sink.addr, log_level, &tail_input_section(&logs)),
        &dir.join("state"),
    );
    write_config(&config_path, &config)?;

    let (cpu_before, sink_cpu_before) = (process_cpu_s(), sink_cpu_s());
    let t_spawn = Instant::now();
    let mut daemon = spawn_measured(lineship, &config_path, &[], Stdio::null(), Stdio::piped())?;
    let log = Arc::new(Mutex::new(DaemonLog::default()));
    let log_reader = match daemon.helper.stderr.take() {
        Some(err) => spawn_log_reader(err, log.clone()),
        None => bail!("no stderr pipe from the helper"),
    };

    // Everything between start and stop; the daemon is stopped and reaped whatever happens.
    type Phase = (Instant, Option<f64>, Option<f64>, Vec<(String, f64)>);
    let phase = (|| -> Result<Phase> {
        let mut startup_s = None;
        let t0 = if a.growing {
            // Wait until the daemon runs, so its start-up is not timed.
            loop {
                ensure!(!daemon.has_exited(), "lineship exited before it was ready");
                if log.lock().unwrap().started {
                    break;
                }
                ensure!(
                    t_spawn.elapsed() < TAIL_READY_TIMEOUT,
                    "no \"lineship started\" log line within {TAIL_READY_TIMEOUT:?} (is --log-level below info?)"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Instant::now()
        } else {
            t_spawn
        };
        let mut append_s = None;
        if a.growing {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&file_path)
                .with_context(|| format!("opening {}", file_path.display()))?;
            for block in line_blocks(data, a.block_bytes) {
                f.write_all(block)
                    .with_context(|| format!("appending to {}", file_path.display()))?;
            }
            append_s = Some(t0.elapsed().as_secs_f64());
        }
        // Wait for the sink to see everything, or to stop making progress.
        let idle = Duration::from_secs_f64(a.idle_secs.max(0.1));
        let deadline = t0 + Duration::from_secs(a.d.timeout_secs);
        let (mut last, mut last_change) = (0, Instant::now());
        loop {
            let seen = sink.sink.lines.load(Relaxed);
            if startup_s.is_none() && log.lock().unwrap().started {
                startup_s = Some(t_spawn.elapsed().as_secs_f64());
            }
            if seen >= a.lines || Instant::now() >= deadline || daemon.has_exited() {
                break;
            }
            if seen != last {
                (last, last_change) = (seen, Instant::now());
            } else if last_change.elapsed() >= idle {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if a.growing {
            startup_s = None;
        }
        Ok((t0, append_s, startup_s, threads_cpu_s(daemon.pid)))
    })();
    daemon.signal(libc::SIGTERM);
    let exit = daemon.wait(Duration::from_secs(a.d.timeout_secs));
    let _ = log_reader.join();
    let harness_cpu_s = process_cpu_s() - cpu_before;
    let sink_cpu_s = sink_cpu_s() - sink_cpu_before;
    sink.stop();
    let snap = sink.sink.snapshot(Some((a.gen.start, a.lines)));
    if a.d.keep_config {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let exit = exit?;
    let (t0, append_s, startup_s, daemon_threads) = phase?;
    let daemon_counters = DaemonCounters::from_log(&log.lock().unwrap());

    let last_write_ns = sink.sink.last_write_ns.load(Relaxed);
    let wall_s = if last_write_ns == 0 {
        0.0
    } else {
        (sink.sink.started + Duration::from_nanos(last_write_ns - 1))
            .saturating_duration_since(t0)
            .as_secs_f64()
    };
    let lost = snap.seq.and_then(|s| s.lost);
    let dup = snap.seq.map(|s| s.dup);
    let all_received = match lost {
        Some(lost) => lost == 0,
        None => snap.lines >= a.lines,
    };
    let ok = all_received && dup.unwrap_or(0) == 0 && exit.exit_code == 0 && !exit.timed_out;
    Ok(TailRunReport {
        run,
        lines: a.lines,
        bytes: data.len() as u64,
        lines_received: snap.lines,
        lost,
        dup,
        wall_s,
        lines_per_sec: if all_received {
            rate(a.lines as f64, wall_s)
        } else {
            0.0
        },
        append_s,
        append_lines_per_sec: append_s.map(|s| rate(a.lines as f64, s)),
        startup_s,
        daemon_cpu_s: exit.cpu_s(),
        cpu_s_per_million_lines: rate(exit.cpu_s(), a.lines as f64 / 1e6),
        peak_rss_mib: exit.peak_rss_kib as f64 / 1024.0,
        rss_floor_mib: exit.rss_floor_kib as f64 / 1024.0,
        exit_code: exit.exit_code,
        timed_out: exit.timed_out,
        daemon_threads_cpu_s: daemon_threads,
        daemon: daemon_counters,
        harness_cpu_s,
        sink_cpu_s,
        sink: snap,
        ok,
    })
}

fn cmd_tail(a: &TailArgs) -> Result<ExitCode> {
    ensure!(a.lines > 0, "--lines must be > 0");
    ensure!(a.d.repeat > 0, "--repeat must be > 0");
    ensure!(a.block_bytes > 0, "--block-bytes must be > 0");
    ensure!(
        a.lines.saturating_mul(APPROX_LINE_BYTES) <= PREGEN_LIMIT_BYTES,
        "--lines too large for tail mode (the lines are generated in memory first)"
    );
    let lineship = a.d.lineship()?;
    let mut gen_opts = a.gen;
    gen_opts
        .timestamp_base
        .get_or_insert_with(now_whole_second_ns);
    let t = Instant::now();
    let mut data = Vec::new();
    LineGen::new(&gen_opts).fill_lines(&mut data, a.lines);
    eprintln!(
        "generated {} lines ({:.1} MB, {:.1} B/line) in {:.2}s",
        a.lines,
        data.len() as f64 / 1e6,
        data.len() as f64 / a.lines as f64,
        t.elapsed().as_secs_f64()
    );
    let mode = if a.growing { "tail-growing" } else { "tail" };
    let rt = runtime(a.d.sink_threads)?;
    let mut runs = Vec::new();
    for run in 1..=a.d.repeat {
        let r = run_tail(a, &lineship, &data, &rt, run)?;
        println!(
            "run {run}/{}: {mode} lines={} received={} lost={} dup={} wall={:.3}s rate={:.0} lines/s{} daemon_cpu={:.2}s ({:.3} s/M lines) peak_rss={:.1} MiB (floor {:.1}) exit={}{} harness_cpu={:.2}s (sink {:.2}s){}",
            a.d.repeat,
            r.lines,
            r.lines_received,
            r.lost.map_or_else(|| "-".into(), |v| v.to_string()),
            r.dup.map_or_else(|| "-".into(), |v| v.to_string()),
            r.wall_s,
            r.lines_per_sec,
            match (r.append_s, r.startup_s) {
                (Some(s), _) => format!(" (appends took {s:.3}s)"),
                (None, Some(s)) => format!(" (start-up {s:.3}s)"),
                _ => String::new(),
            },
            r.daemon_cpu_s,
            r.cpu_s_per_million_lines,
            r.peak_rss_mib,
            r.rss_floor_mib,
            r.exit_code,
            if r.timed_out { " (timed out)" } else { "" },
            r.harness_cpu_s,
            r.sink_cpu_s,
            if r.ok { "" } else { "  << FAILED" },
        );
        runs.push(r);
    }
    let med = Medians {
        lines_per_sec: median(runs.iter().map(|r| r.lines_per_sec).collect()),
        cpu_s_per_million_lines: median(runs.iter().map(|r| r.cpu_s_per_million_lines).collect()),
        wall_s: median(runs.iter().map(|r| r.wall_s).collect()),
        peak_rss_mib: median(runs.iter().map(|r| r.peak_rss_mib).collect()),
        max_peak_rss_mib: runs.iter().map(|r| r.peak_rss_mib).fold(0.0, f64::max),
    };
    let ok = runs.iter().all(|r| r.ok);
    println!(
        "median of {} run(s): {:.0} lines/s [{} >= {:.0}], {:.3} CPU-s per M lines, peak RSS max {:.1} MiB",
        runs.len(),
        med.lines_per_sec,
        verdict(med.lines_per_sec >= TARGET_TAIL_LINES_PER_SEC),
        TARGET_TAIL_LINES_PER_SEC,
        med.cpu_s_per_million_lines,
        med.max_peak_rss_mib,
    );
    if !ok {
        println!("FAILED: some run lost lines, or lineship did not exit 0");
    }
    let summary = TailSummary {
        tool: "lineship-load",
        mode,
        lines: a.lines,
        repeat: a.d.repeat,
        gzip_level: a.d.gzip_level,
        batch_max_lines: a.d.batch_max_lines,
        batch_max_bytes: &a.d.batch_max_bytes,
        max_in_flight: a.d.max_in_flight,
        flush_interval: &a.d.flush_interval,
        median: med,
        runs: &runs,
        ok,
    };
    println!("{}", serde_json::to_string(&summary)?);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

// ---------------------------------------------------------------------------------------------
// UDP: paced senders -> lineship's [[input.udp]] -> in-process sink
// ---------------------------------------------------------------------------------------------

/// Largest UDP payload over IPv4.
const MAX_DATAGRAM_BYTES: usize = 65_507;
/// How long a UDP run waits for the daemon to bind its port and start.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Once the port is bound, how long to wait for the "lineship started" log line before sending
/// anyway (it never comes when the log level hides info).
const READY_GRACE: Duration = Duration::from_millis(500);
/// A run whose senders achieved less than this share of the offered rate was sender-limited.
const SENDER_LIMITED_SHARE: f64 = 0.97;
/// Late wake-ups of a sender beyond this are counted as `late_wakeups`.
const LATE_NS: u64 = 1_000_000;
// DESIGN.md: "UDP (10 lines per datagram) -> HTTP sink: >= 1,000,000 lines/s offered with 0 loss".
const TARGET_UDP_LINES_PER_SEC: f64 = 1_000_000.0;

#[derive(Args)]
struct UdpArgs {
    /// Offered rate in lines/s, paced from the first datagram (required unless --find-max).
    #[arg(long, required_unless_present = "find_max")]
    rate: Option<f64>,
    /// Lines to send per run.
    #[arg(long, default_value_t = 5_000_000)]
    lines: u64,
    /// Lines per datagram (the last datagram of a sender may hold fewer).
    #[arg(long, default_value_t = 10)]
    lines_per_datagram: u64,
    /// Sender threads, each with its own socket and source port (so SO_REUSEPORT can spread them
    /// over the workers) and an equal share of the rate.
    #[arg(long, default_value_t = 2)]
    senders: usize,
    /// `workers` of the UDP input (sockets and receive threads sharing the port).
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// `receive_buffer` of the UDP input, written as given.
    #[arg(long, default_value = "64MiB")]
    receive_buffer: String,
    /// Most datagrams per `sendmmsg` call.
    #[arg(long, default_value_t = 64)]
    send_batch: usize,
    /// Pacing granularity in µs: a sender sleeps to the schedule, then sends every datagram due
    /// within this much, so no burst is longer than this.
    #[arg(long, default_value_t = 500)]
    pace_us: u64,
    /// After sending, stop waiting once the sink has seen no new line for this many seconds.
    #[arg(long, default_value_t = 2.0)]
    idle_secs: f64,
    /// Step the rate up through --find-max-rates (--lines each, stopping after two steps in a
    /// row lose lines) and report the highest loss-free rate.
    #[arg(long)]
    find_max: bool,
    /// Offered rates (lines/s) for --find-max, in ascending order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "500000,750000,1000000,1250000,1500000"
    )]
    find_max_rates: Vec<f64>,
    /// --find-max does not start a step that would likely end after this many seconds.
    #[arg(long, default_value_t = 170)]
    find_max_budget_secs: u64,
    #[command(flatten)]
    d: DaemonOpts,
    #[command(flatten)]
    gen: GenOpts,
}

/// One sender's pre-generated datagrams.
struct SenderSlice {
    data: Vec<u8>,
    /// End offset in `data` of each datagram.
    ends: Vec<usize>,
    lines: u64,
}

impl SenderSlice {
    fn datagram(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }
}

/// Splits `lines` lines (sequence numbers from `opts.start`) into datagrams of `per_datagram`
/// lines and deals contiguous runs of datagrams to `senders` senders, generating them in
/// parallel.
fn prepare_slices(
    opts: &GenOpts,
    lines: u64,
    per_datagram: u64,
    senders: usize,
) -> Result<Vec<SenderSlice>> {
    let datagrams = lines.div_ceil(per_datagram);
    let senders = (senders as u64).clamp(1, datagrams.max(1));
    let slices = std::thread::scope(|scope| {
        let parts: Vec<_> = (0..senders)
            .map(|k| {
                let (lo, hi) = (k * datagrams / senders, (k + 1) * datagrams / senders);
                let (first, end) = (lo * per_datagram, (hi * per_datagram).min(lines));
                let opts = GenOpts {
                    start: opts.start + first,
                    ..*opts
                };
                scope.spawn(move || {
                    let mut gen = LineGen::new(&opts);
                    let mut data = Vec::with_capacity(((end - first) * APPROX_LINE_BYTES) as usize);
                    let mut ends = Vec::with_capacity((hi - lo) as usize);
                    let mut left = end - first;
                    while left > 0 {
                        let n = left.min(per_datagram);
                        gen.fill_lines(&mut data, n);
                        ends.push(data.len());
                        left -= n;
                    }
                    SenderSlice {
                        data,
                        ends,
                        lines: end - first,
                    }
                })
            })
            .collect();
        parts
            .into_iter()
            .map(|p| p.join().expect("generator thread panicked"))
            .collect::<Vec<_>>()
    });
    for s in &slices {
        let biggest = (0..s.ends.len())
            .map(|i| s.datagram(i).len())
            .max()
            .unwrap_or(0);
        ensure!(
            biggest <= MAX_DATAGRAM_BYTES,
            "a datagram of {biggest} bytes exceeds the UDP maximum of {MAX_DATAGRAM_BYTES}; lower --lines-per-datagram"
        );
    }
    Ok(slices)
}

#[derive(Serialize, Clone, Copy, Debug, Default)]
struct SenderStats {
    datagrams: u64,
    lines: u64,
    bytes: u64,
    /// Datagrams the kernel refused (ECONNREFUSED: nothing listening), not retried.
    failed_datagrams: u64,
    failed_lines: u64,
    /// Transient send errors (ENOBUFS, EAGAIN) that were retried.
    retries: u64,
    sendmmsg_calls: u64,
    /// ns after the schedule's start of the first call and of the end of the last one.
    first_send_ns: u64,
    last_send_ns: u64,
    /// How far behind the schedule a wake-up was, at worst; and how many were over 1 ms late.
    max_lag_ns: u64,
    late_wakeups: u64,
    /// CPU time of the sender thread (sendmmsg on loopback also runs the receive path up to the
    /// socket queue, so most of it is kernel time).
    cpu_s: f64,
}

fn thread_cpu_s() -> f64 {
    // SAFETY: zeroed timespec is a valid out-parameter.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn ns_since(t0: Instant) -> u64 {
    Instant::now().saturating_duration_since(t0).as_nanos() as u64
}

/// Sends `slice` on the connected `sock` at `rate` lines/s from `t0`: datagram `i` is due at
/// `t0 + i * per_datagram / rate`. The sender sleeps until the first unsent datagram is due, then
/// sends, in one `sendmmsg`, every datagram due within `pace` (at most `max_batch`). The
/// schedule is absolute, so a late wake-up is made up by the next calls instead of drifting.
fn send_paced(
    sock: &std::net::UdpSocket,
    slice: &SenderSlice,
    per_datagram: u64,
    rate: f64,
    t0: Instant,
    pace: Duration,
    max_batch: usize,
) -> Result<SenderStats> {
    // Sleep to within ~10 µs of the schedule instead of the default 50 µs of timer slack.
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 10_000 as libc::c_ulong, 0, 0, 0) };
    let cpu_before = thread_cpu_s();
    let fd = sock.as_raw_fd();
    let n = slice.ends.len();
    let ns_per_datagram = per_datagram as f64 * 1e9 / rate;
    let due = |i: usize| (i as f64 * ns_per_datagram) as u64;
    let lines_of = |i: usize| {
        if i + 1 == n {
            slice.lines - (n as u64 - 1) * per_datagram
        } else {
            per_datagram
        }
    };
    let pace_ns = pace.as_nanos() as u64;
    let max_batch = max_batch.clamp(1, 1024);
    // SAFETY: all-zero iovec and mmsghdr are valid (null pointers, zero lengths).
    let mut iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; max_batch];
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; max_batch];
    let mut st = SenderStats::default();
    if let Some(wait) = t0.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    let mut i = 0;
    while i < n {
        let now = ns_since(t0);
        let due_i = due(i);
        if due_i > now {
            std::thread::sleep(Duration::from_nanos(due_i - now));
            continue;
        }
        let lag = now - due_i;
        st.max_lag_ns = st.max_lag_ns.max(lag);
        st.late_wakeups += u64::from(lag > LATE_NS);
        let horizon = now + pace_ns;
        let mut j = i;
        while j < n && j - i < max_batch && due(j) <= horizon {
            let d = slice.datagram(j);
            let b = j - i;
            iov[b] = libc::iovec {
                iov_base: d.as_ptr() as *mut libc::c_void,
                iov_len: d.len(),
            };
            // SAFETY: all-zero is a valid msghdr; the fields set point at live data.
            hdrs[b].msg_hdr = unsafe { std::mem::zeroed() };
            hdrs[b].msg_hdr.msg_iov = &mut iov[b];
            hdrs[b].msg_hdr.msg_iovlen = 1;
            hdrs[b].msg_len = 0;
            j += 1;
        }
        if st.sendmmsg_calls == 0 {
            st.first_send_ns = ns_since(t0);
        }
        st.sendmmsg_calls += 1;
        // SAFETY: hdrs[..j - i] point at iovecs that point into `slice.data`, all alive for the
        // call; the socket is connected, so no address is needed.
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), (j - i) as libc::c_uint, 0) };
        st.last_send_ns = ns_since(t0);
        if r > 0 {
            for k in i..i + r as usize {
                st.datagrams += 1;
                st.lines += lines_of(k);
                st.bytes += slice.datagram(k).len() as u64;
            }
            i += r as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::ENOBUFS | libc::EAGAIN) => {
                st.retries += 1;
                std::thread::sleep(Duration::from_micros(20));
            }
            Some(libc::ECONNREFUSED) => {
                // An ICMP port-unreachable from an earlier datagram: this one was not sent.
                st.failed_datagrams += 1;
                st.failed_lines += lines_of(i);
                i += 1;
            }
            _ => return Err(e).context("sendmmsg"),
        }
    }
    st.cpu_s = thread_cpu_s() - cpu_before;
    Ok(st)
}

/// Sends all slices to `target` from one thread and socket each, together at `rate` lines/s.
fn send_all(
    slices: &[SenderSlice],
    target: SocketAddr,
    per_datagram: u64,
    rate: f64,
    pace: Duration,
    max_batch: usize,
) -> Result<(Instant, Vec<SenderStats>)> {
    let total: u64 = slices.iter().map(|s| s.lines).sum();
    let socks = slices
        .iter()
        .map(|_| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").context("binding a sender socket")?;
            s.connect(target).context("connecting a sender socket")?;
            Ok(s)
        })
        .collect::<Result<Vec<_>>>()?;
    // All senders share one schedule start, a moment from now so every thread is ready.
    let t0 = Instant::now() + Duration::from_millis(5);
    let stats = std::thread::scope(|scope| {
        let threads: Vec<_> = slices
            .iter()
            .zip(&socks)
            .enumerate()
            .map(|(k, (slice, sock))| {
                let share = rate * slice.lines as f64 / total as f64;
                std::thread::Builder::new()
                    .name(format!("sender{k}"))
                    .spawn_scoped(scope, move || {
                        send_paced(sock, slice, per_datagram, share, t0, pace, max_batch)
                    })
                    .context("spawning a sender thread")
            })
            .collect::<Result<_>>()?;
        threads
            .into_iter()
            .map(|t| t.join().expect("sender thread panicked"))
            .collect::<Result<Vec<_>>>()
    })?;
    Ok((t0, stats))
}

/// A free UDP port on 127.0.0.1: bound to find one, then released for the daemon.
fn free_udp_port() -> Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").context("finding a free UDP port")?;
    Ok(s.local_addr()?.port())
}

fn udp_input_section(port: u16, receive_buffer: &str, workers: u32) -> String {
    format!(
        "[[input.udp]]\nlisten = \"127.0.0.1:{port}\"\nreceive_buffer = {}\nworkers = {workers}\n\n[input.stdin]\nenabled = false",
        toml_str(receive_buffer)
    )
}

/// A UDP socket's row in `/proc/net/udp`.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
struct ProcUdpSocket {
    inode: u64,
    rx_queue: u64,
    drops: u64,
}

/// The sockets bound to 127.0.0.1:`port` in `/proc/net/udp` text.
fn parse_proc_udp_port(text: &str, port: u16) -> Vec<ProcUdpSocket> {
    // The kernel prints the address as the raw (network-order) u32 in hex.
    let local = format!(
        "{:08X}:{port:04X}",
        u32::from_ne_bytes(std::net::Ipv4Addr::LOCALHOST.octets())
    );
    text.lines()
        .skip(1)
        .filter_map(|row| {
            let cols: Vec<&str> = row.split_whitespace().collect();
            let n = cols.len();
            if n < 13 || cols[1] != local {
                return None;
            }
            let rx_queue = cols[4]
                .split_once(':')
                .and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok())?;
            Some(ProcUdpSocket {
                inode: cols[n - 4].parse().ok()?,
                rx_queue,
                drops: cols[n - 1].parse().ok()?,
            })
        })
        .collect()
}

fn proc_udp_port(port: u16) -> Vec<ProcUdpSocket> {
    std::fs::read_to_string("/proc/net/udp")
        .map(|t| parse_proc_udp_port(&t, port))
        .unwrap_or_default()
}

/// Machine-wide counters from /proc that tell where datagrams were lost.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
struct NetCounters {
    /// `/proc/net/softnet_stat`, summed over CPUs: packets dropped because a CPU's backlog queue
    /// (`net.core.netdev_max_backlog`, which loopback traffic goes through) was full; and times
    /// the receive softirq ran out of budget.
    softnet_dropped: u64,
    softnet_time_squeeze: u64,
    /// `/proc/net/snmp` Udp (this network namespace, all sockets).
    udp_in_datagrams: u64,
    udp_in_errors: u64,
    udp_rcvbuf_errors: u64,
}

impl NetCounters {
    fn read() -> Self {
        let mut c = NetCounters::default();
        if let Ok(t) = std::fs::read_to_string("/proc/net/softnet_stat") {
            (c.softnet_dropped, c.softnet_time_squeeze) = parse_softnet(&t);
        }
        if let Ok(t) = std::fs::read_to_string("/proc/net/snmp") {
            let udp = parse_snmp_udp(&t);
            let get = |k: &str| udp.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v);
            c.udp_in_datagrams = get("InDatagrams");
            c.udp_in_errors = get("InErrors");
            c.udp_rcvbuf_errors = get("RcvbufErrors");
        }
        c
    }

    fn since(&self, before: &Self) -> Self {
        NetCounters {
            softnet_dropped: self.softnet_dropped.wrapping_sub(before.softnet_dropped),
            softnet_time_squeeze: self
                .softnet_time_squeeze
                .wrapping_sub(before.softnet_time_squeeze),
            udp_in_datagrams: self.udp_in_datagrams.wrapping_sub(before.udp_in_datagrams),
            udp_in_errors: self.udp_in_errors.wrapping_sub(before.udp_in_errors),
            udp_rcvbuf_errors: self
                .udp_rcvbuf_errors
                .wrapping_sub(before.udp_rcvbuf_errors),
        }
    }
}

/// Sums the `dropped` (2nd) and `time_squeeze` (3rd) hex columns over the CPUs' rows.
fn parse_softnet(text: &str) -> (u64, u64) {
    let col = |row: &str, i: usize| {
        row.split_whitespace()
            .nth(i)
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .unwrap_or(0)
    };
    text.lines()
        .fold((0, 0), |(d, s), row| (d + col(row, 1), s + col(row, 2)))
}

/// The `Udp:` header and value rows of `/proc/net/snmp`, zipped.
fn parse_snmp_udp(text: &str) -> Vec<(String, u64)> {
    let mut rows = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
        return Vec::new();
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter_map(|(n, v)| Some((n.to_string(), v.parse().ok()?)))
        .collect()
}

/// `some total=` of `/proc/pressure/cpu`: µs during which some task waited for a CPU.
fn cpu_pressure_us() -> Option<u64> {
    parse_cpu_pressure(&std::fs::read_to_string("/proc/pressure/cpu").ok()?)
}

fn parse_cpu_pressure(text: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("total="))?
        .parse()
        .ok()
}

/// The `key=value` fields of a text-format tracing line, after its message `message`. A value
/// with spaces runs until the next word that looks like `key=`.
fn log_fields(line: &str, message: &str) -> Option<Vec<(String, String)>> {
    let at = line.find(&format!(" {message} "))? + message.len() + 2;
    let mut fields: Vec<(String, String)> = Vec::new();
    for word in line[at..].split_whitespace() {
        match word.split_once('=') {
            Some((k, v))
                if !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') =>
            {
                fields.push((k.to_string(), v.to_string()));
            }
            _ => {
                if let Some((_, v)) = fields.last_mut() {
                    v.push(' ');
                    v.push_str(word);
                }
            }
        }
    }
    Some(fields)
}

/// What the daemon's log said, collected from its stderr.
#[derive(Default)]
struct DaemonLog {
    started: bool,
    listening: Option<Vec<(String, String)>>,
    /// The last `summary` line: at exit, the daemon's final counters.
    summary: Option<Vec<(String, String)>>,
    errors: u64,
}

/// Copies the daemon's output to our stderr, noting the lines `udp` needs.
fn spawn_log_reader(
    out: std::process::ChildStderr,
    log: Arc<Mutex<DaemonLog>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let stderr = io::stderr();
        for line in io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(stderr.lock(), "{line}");
            let mut l = log.lock().unwrap();
            if line.contains(" lineship started") {
                l.started = true;
            } else if let Some(f) = log_fields(&line, "udp input listening") {
                l.listening = Some(f);
            } else if let Some(f) = log_fields(&line, "summary") {
                l.summary = Some(f);
            }
            if line.contains(" ERROR ") {
                l.errors += 1;
            }
        }
    })
}

/// The daemon's own counters, from its final summary log line.
#[derive(Serialize, Clone, Debug, Default)]
struct DaemonCounters {
    lines_in: Option<u64>,
    delivered: Option<u64>,
    invalid: Option<u64>,
    dropped: Option<u64>,
    dropped_by_reason: Option<String>,
    udp_kernel_drops: Option<u64>,
    udp_truncated: Option<u64>,
    /// SO_RCVBUF as the kernel applied it (Linux reports twice the size asked for).
    receive_buffer_applied: Option<u64>,
    /// ERROR lines the daemon logged.
    error_lines: u64,
}

impl DaemonCounters {
    fn from_log(log: &DaemonLog) -> Self {
        let get = |f: &Option<Vec<(String, String)>>, k: &str| {
            f.as_ref()
                .and_then(|f| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
        };
        let num = |f: &Option<Vec<(String, String)>>, k: &str| get(f, k)?.parse().ok();
        DaemonCounters {
            lines_in: num(&log.summary, "lines_in"),
            delivered: num(&log.summary, "delivered"),
            invalid: num(&log.summary, "invalid"),
            dropped: num(&log.summary, "dropped"),
            dropped_by_reason: get(&log.summary, "dropped_by_reason"),
            udp_kernel_drops: num(&log.summary, "udp_kernel_drops"),
            udp_truncated: num(&log.summary, "udp_truncated"),
            receive_buffer_applied: num(&log.listening, "receive_buffer_applied"),
            error_lines: log.errors,
        }
    }
}

#[derive(Serialize, Clone, Debug)]
struct UdpRunReport {
    run: u32,
    offered_lines_per_sec: f64,
    lines_offered: u64,
    lines_sent: u64,
    datagrams_sent: u64,
    bytes_sent: u64,
    /// Lines in datagrams the kernel refused to send (nothing listening).
    send_failed_lines: u64,
    /// From the schedule's start to the end of the last send.
    send_s: f64,
    send_lines_per_sec: f64,
    /// Worst lateness of a sender wake-up against the schedule, and wake-ups over 1 ms late.
    send_max_lag_ms: f64,
    send_late_wakeups: u64,
    sender_limited: bool,
    lines_received: u64,
    lost: Option<u64>,
    dup: Option<u64>,
    /// From the schedule's start to the sink's last write, and from the end of sending to it.
    end_to_end_s: f64,
    drain_s: f64,
    daemon_cpu_s: f64,
    daemon_cpu_user_s: f64,
    daemon_cpu_sys_s: f64,
    cpu_s_per_million_lines: f64,
    peak_rss_mib: f64,
    rss_floor_mib: f64,
    exit_code: i32,
    timed_out: bool,
    /// Share of the run during which some task on the machine waited for a CPU
    /// (/proc/pressure/cpu): how contended the machine was.
    cpu_pressure_pct: Option<f64>,
    /// The daemon's sockets in /proc/net/udp just before it was stopped.
    sockets: Vec<ProcUdpSocket>,
    /// CPU seconds of the daemon's threads by name just before it was stopped, busiest first
    /// (`lineship-udp`: receive threads; `lineship-batcher`: batching and gzip; `lineship-io`:
    /// HTTP and the rest).
    daemon_threads_cpu_s: Vec<(String, f64)>,
    daemon: DaemonCounters,
    net: NetCounters,
    senders: Vec<SenderStats>,
    sender_cpu_s: f64,
    sink_cpu_s: f64,
    harness_cpu_s: f64,
    sink: SinkSnapshot,
    /// Where lines were lost, when they were.
    loss_causes: Vec<String>,
    ok: bool,
}

/// What a UDP run learns while the daemon runs.
struct SendPhase {
    /// The senders' schedule start.
    t0: Instant,
    senders: Vec<SenderStats>,
    /// Read just before the daemon is stopped.
    sockets: Vec<ProcUdpSocket>,
    daemon_threads: Vec<(String, f64)>,
}

/// Runs the daemon with a UDP input once and sends it all of `slices` at `rate` lines/s.
fn run_udp(
    a: &UdpArgs,
    lineship: &Path,
    slices: &[SenderSlice],
    rt: &tokio::runtime::Runtime,
    offered: f64,
    run: u32,
) -> Result<UdpRunReport> {
    let lines_offered: u64 = slices.iter().map(|s| s.lines).sum();
    let check_seq = !a.d.no_check_seq;
    let mut sink = start_sink(
        rt.handle(),
        "127.0.0.1:0".parse().unwrap(),
        SinkOptions {
            status: StatusCode::NO_CONTENT,
            check_seq,
            progress: Progress::Stderr,
        },
    )?;
    let port = free_udp_port()?;
    let target: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = make_run_dir(run)?;
    let config_path = dir.join("lineship.toml");
    let input = udp_input_section(port, &a.receive_buffer, a.workers);
    let log_level = a.d.log_level.as_deref().unwrap_or("info");
    let config = render_config(
        &a.d.config(sink.addr, log_level, &input),
        &dir.join("state"),
    );
    write_config(&config_path, &config)?;

    let net_before = NetCounters::read();
    let (pressure_before, t_run) = (cpu_pressure_us(), Instant::now());
    let (cpu_before, sink_cpu_before) = (process_cpu_s(), sink_cpu_s());
    let mut daemon = spawn_measured(lineship, &config_path, &[], Stdio::null(), Stdio::piped())?;
    let log = Arc::new(Mutex::new(DaemonLog::default()));
    let log_reader = match daemon.helper.stderr.take() {
        Some(err) => spawn_log_reader(err, log.clone()),
        None => bail!("no stderr pipe from the helper"),
    };

    // Everything between start and stop; the daemon is stopped and reaped whatever happens.
    let t_spawn = Instant::now();
    let phase = (|| -> Result<SendPhase> {
        let mut bound_at: Option<Instant> = None;
        loop {
            ensure!(!daemon.has_exited(), "lineship exited before it was ready");
            let started = log.lock().unwrap().started;
            if bound_at.is_none() && proc_udp_port(port).len() >= a.workers as usize {
                bound_at = Some(Instant::now());
            }
            match bound_at {
                Some(t) if started || t.elapsed() >= READY_GRACE => break,
                _ => {}
            }
            ensure!(
                t_spawn.elapsed() < READY_TIMEOUT,
                "lineship did not bind 127.0.0.1:{port} within {READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let (t0, senders) = send_all(
            slices,
            target,
            a.lines_per_datagram,
            offered,
            Duration::from_micros(a.pace_us),
            a.send_batch,
        )?;
        let sent: u64 = senders.iter().map(|s| s.lines).sum();
        // Wait for the sink to see everything, or to stop making progress.
        let idle = Duration::from_secs_f64(a.idle_secs.max(0.1));
        let deadline = Instant::now() + Duration::from_secs(a.d.timeout_secs);
        let (mut last, mut last_change) = (0, Instant::now());
        loop {
            let seen = sink.sink.lines.load(Relaxed);
            if seen >= sent || Instant::now() >= deadline || daemon.has_exited() {
                break;
            }
            if seen != last {
                (last, last_change) = (seen, Instant::now());
            } else if last_change.elapsed() >= idle {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(SendPhase {
            t0,
            senders,
            sockets: proc_udp_port(port),
            daemon_threads: threads_cpu_s(daemon.pid),
        })
    })();
    daemon.signal(libc::SIGTERM);
    let exit = daemon.wait(Duration::from_secs(a.d.timeout_secs));
    let _ = log_reader.join();
    let harness_cpu_s = process_cpu_s() - cpu_before;
    let sink_cpu_s = sink_cpu_s() - sink_cpu_before;
    let net = NetCounters::read().since(&net_before);
    let cpu_pressure_pct = match (pressure_before, cpu_pressure_us()) {
        (Some(b), Some(a)) => Some(rate(
            a.saturating_sub(b) as f64 / 1e4,
            t_run.elapsed().as_secs_f64(),
        )),
        _ => None,
    };
    sink.stop();
    let snap = sink.sink.snapshot(Some((a.gen.start, lines_offered)));
    if a.d.keep_config {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let exit = exit?;
    let SendPhase {
        t0,
        senders,
        sockets,
        daemon_threads,
    } = phase?;
    let daemon_counters = DaemonCounters::from_log(&log.lock().unwrap());

    let sum = |f: fn(&SenderStats) -> u64| senders.iter().map(f).sum::<u64>();
    let lines_sent = sum(|s| s.lines);
    // Times are from the schedule's start, when the first datagram is due.
    let send_s = senders.iter().map(|s| s.last_send_ns).max().unwrap_or(0) as f64 / 1e9;
    let send_lines_per_sec = rate(lines_sent as f64, send_s);
    let last_write_ns = sink.sink.last_write_ns.load(Relaxed);
    let end_to_end_s = if last_write_ns == 0 {
        0.0
    } else {
        (sink.sink.started + Duration::from_nanos(last_write_ns - 1))
            .saturating_duration_since(t0)
            .as_secs_f64()
    };
    let lost = snap.seq.and_then(|s| s.lost);
    let dup = snap.seq.map(|s| s.dup);
    let lost_n = lost.unwrap_or_else(|| lines_offered.saturating_sub(snap.lines));
    let socket_drops: u64 = sockets.iter().map(|s| s.drops).sum();
    let mut loss_causes = Vec::new();
    if lost_n > 0 {
        let failed = sum(|s| s.failed_lines);
        if failed > 0 {
            loss_causes.push(format!(
                "{failed} lines refused at send (nothing listening)"
            ));
        }
        if socket_drops > 0 || daemon_counters.udp_kernel_drops.unwrap_or(0) > 0 {
            loss_causes.push(format!(
                "socket receive buffer full: {socket_drops} datagrams dropped by the kernel (daemon counted {}); the receive thread fell behind",
                daemon_counters.udp_kernel_drops.map_or("?".into(), |v| v.to_string())
            ));
        }
        if daemon_counters.dropped.unwrap_or(0) > 0 {
            loss_causes.push(format!(
                "daemon dropped {} lines ({}): the pipeline behind the receive thread fell behind",
                daemon_counters.dropped.unwrap_or(0),
                daemon_counters.dropped_by_reason.as_deref().unwrap_or("")
            ));
        }
        if net.softnet_dropped > 0 {
            loss_causes.push(format!(
                "{} packets dropped from a full CPU backlog (net.core.netdev_max_backlog; machine-wide)",
                net.softnet_dropped
            ));
        }
        if loss_causes.is_empty() {
            loss_causes.push("no counter explains it".into());
        }
    }
    let ok = lost_n == 0 && dup.unwrap_or(0) == 0 && exit.exit_code == 0 && !exit.timed_out;
    Ok(UdpRunReport {
        run,
        offered_lines_per_sec: offered,
        lines_offered,
        lines_sent,
        datagrams_sent: sum(|s| s.datagrams),
        bytes_sent: sum(|s| s.bytes),
        send_failed_lines: sum(|s| s.failed_lines),
        send_s,
        send_lines_per_sec,
        send_max_lag_ms: senders.iter().map(|s| s.max_lag_ns).max().unwrap_or(0) as f64 / 1e6,
        send_late_wakeups: sum(|s| s.late_wakeups),
        sender_limited: send_lines_per_sec < offered * SENDER_LIMITED_SHARE,
        lines_received: snap.lines,
        lost,
        dup,
        end_to_end_s,
        drain_s: (end_to_end_s - send_s).max(0.0),
        daemon_cpu_s: exit.cpu_s(),
        daemon_cpu_user_s: exit.cpu_user_s,
        daemon_cpu_sys_s: exit.cpu_sys_s,
        cpu_s_per_million_lines: rate(exit.cpu_s(), lines_sent as f64 / 1e6),
        peak_rss_mib: exit.peak_rss_kib as f64 / 1024.0,
        rss_floor_mib: exit.rss_floor_kib as f64 / 1024.0,
        exit_code: exit.exit_code,
        timed_out: exit.timed_out,
        cpu_pressure_pct,
        sockets,
        daemon_threads_cpu_s: daemon_threads,
        daemon: daemon_counters,
        net,
        sender_cpu_s: senders.iter().map(|s| s.cpu_s).sum(),
        senders,
        sink_cpu_s,
        harness_cpu_s,
        sink: snap,
        loss_causes,
        ok,
    })
}

#[derive(Serialize, Clone, Debug)]
struct UdpMedians {
    send_lines_per_sec: f64,
    /// Lines received over the time from the schedule's start to the sink's last write.
    end_to_end_lines_per_sec: f64,
    lost: f64,
    max_lost: u64,
    daemon_cpu_s: f64,
    cpu_s_per_million_lines: f64,
    peak_rss_mib: f64,
    max_peak_rss_mib: f64,
    sender_cpu_s: f64,
    sink_cpu_s: f64,
}

impl UdpMedians {
    fn of(runs: &[UdpRunReport]) -> Self {
        let m = |f: fn(&UdpRunReport) -> f64| median(runs.iter().map(f).collect());
        let lost = |r: &UdpRunReport| r.lost.unwrap_or(r.lines_offered - r.lines_received);
        UdpMedians {
            send_lines_per_sec: m(|r| r.send_lines_per_sec),
            end_to_end_lines_per_sec: m(|r| rate(r.lines_received as f64, r.end_to_end_s)),
            lost: median(runs.iter().map(|r| lost(r) as f64).collect()),
            max_lost: runs.iter().map(lost).max().unwrap_or(0),
            daemon_cpu_s: m(|r| r.daemon_cpu_s),
            cpu_s_per_million_lines: m(|r| r.cpu_s_per_million_lines),
            peak_rss_mib: m(|r| r.peak_rss_mib),
            max_peak_rss_mib: runs.iter().map(|r| r.peak_rss_mib).fold(0.0, f64::max),
            sender_cpu_s: m(|r| r.sender_cpu_s),
            sink_cpu_s: m(|r| r.sink_cpu_s),
        }
    }
}

#[derive(Serialize)]
struct FindMaxStep {
    offered_lines_per_sec: f64,
    loss_free: bool,
    median: UdpMedians,
    runs: Vec<UdpRunReport>,
}

#[derive(Serialize)]
struct UdpSummary<'a> {
    tool: &'static str,
    mode: &'static str,
    lines: u64,
    lines_per_datagram: u64,
    senders: usize,
    workers: u32,
    receive_buffer: &'a str,
    send_batch: usize,
    pace_us: u64,
    repeat: u32,
    gzip_level: u32,
    batch_max_lines: u64,
    batch_max_bytes: &'a str,
    max_in_flight: u32,
    flush_interval: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    offered_lines_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    median: Option<UdpMedians>,
    #[serde(skip_serializing_if = "Option::is_none")]
    runs: Option<&'a [UdpRunReport]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<&'a [FindMaxStep]>,
    /// --find-max: the highest offered rate at which every run delivered every line, and the
    /// lowest at which some run lost lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_loss_free_lines_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_lossy_lines_per_sec: Option<f64>,
    ok: bool,
}

fn opt_u64(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn print_udp_run(r: &UdpRunReport, of: u32) {
    let s = r.net;
    println!(
        "run {}/{of}: offered={:.0} lines/s sent={} in {:.3}s ({:.0} lines/s, max lag {:.2} ms{}) received={} lost={} dup={} e2e={:.3}s (drain {:.3}s) daemon_cpu={:.2}s (user {:.2} sys {:.2}; {:.3} s/M lines) peak_rss={:.1} MiB exit={}{} | kernel drops: socket={} daemon={} | daemon dropped={} [{}] | softnet_dropped={} udp_rcvbuf_errors={} | sender_cpu={:.2}s sink_cpu={:.2}s harness_cpu={:.2}s cpu_pressure={}{}",
        r.run,
        r.offered_lines_per_sec,
        r.lines_sent,
        r.send_s,
        r.send_lines_per_sec,
        r.send_max_lag_ms,
        if r.sender_limited { ", SENDER-LIMITED" } else { "" },
        r.lines_received,
        opt_u64(r.lost),
        opt_u64(r.dup),
        r.end_to_end_s,
        r.drain_s,
        r.daemon_cpu_s,
        r.daemon_cpu_user_s,
        r.daemon_cpu_sys_s,
        r.cpu_s_per_million_lines,
        r.peak_rss_mib,
        r.exit_code,
        if r.timed_out { " (timed out)" } else { "" },
        r.sockets.iter().map(|s| s.drops).sum::<u64>(),
        opt_u64(r.daemon.udp_kernel_drops),
        opt_u64(r.daemon.dropped),
        r.daemon.dropped_by_reason.as_deref().unwrap_or("-"),
        s.softnet_dropped,
        s.udp_rcvbuf_errors,
        r.sender_cpu_s,
        r.sink_cpu_s,
        r.harness_cpu_s,
        r.cpu_pressure_pct
            .map_or_else(|| "-".into(), |p| format!("{p:.0}%")),
        if r.ok { "" } else { "  << LOST LINES / FAILED" },
    );
    if !r.daemon_threads_cpu_s.is_empty() {
        let busy: Vec<String> = r
            .daemon_threads_cpu_s
            .iter()
            .filter(|(_, t)| *t >= 0.01)
            .map(|(n, t)| format!("{n} {t:.2}s ({:.0}%)", 100.0 * rate(*t, r.end_to_end_s)))
            .collect();
        println!(
            "  daemon threads (CPU s, share of the {:.2}s to the last write): {}",
            r.end_to_end_s,
            busy.join(", ")
        );
    }
    for c in &r.loss_causes {
        println!("  loss: {c}");
    }
}

fn print_udp_medians(runs: &[UdpRunReport], med: &UdpMedians) {
    println!(
        "median of {} run(s): sent {:.0} lines/s, end to end {:.0} lines/s, lost {} (max {}), {:.3} CPU-s per M lines [{} <= {}], peak RSS max {:.1} MiB [{} <= {}], sender CPU {:.2}s, sink CPU {:.2}s",
        runs.len(),
        med.send_lines_per_sec,
        med.end_to_end_lines_per_sec,
        med.lost,
        med.max_lost,
        med.cpu_s_per_million_lines,
        verdict(med.cpu_s_per_million_lines <= TARGET_CPU_S_PER_M),
        TARGET_CPU_S_PER_M,
        med.max_peak_rss_mib,
        verdict(med.max_peak_rss_mib <= TARGET_RSS_MIB),
        TARGET_RSS_MIB,
        med.sender_cpu_s,
        med.sink_cpu_s,
    );
}

fn cmd_udp(a: &UdpArgs) -> Result<ExitCode> {
    ensure!(a.lines > 0, "--lines must be > 0");
    ensure!(a.d.repeat > 0, "--repeat must be > 0");
    ensure!(a.lines_per_datagram > 0, "--lines-per-datagram must be > 0");
    ensure!(a.senders > 0, "--senders must be > 0");
    ensure!(
        (1..=64).contains(&a.workers),
        "--workers must be between 1 and 64"
    );
    ensure!(
        (1..=1024).contains(&a.send_batch),
        "--send-batch must be between 1 and 1024"
    );
    let rates: Vec<f64> = if a.find_max {
        a.find_max_rates.clone()
    } else {
        vec![a.rate.context("--rate is required without --find-max")?]
    };
    ensure!(
        !rates.is_empty() && rates.iter().all(|r| r.is_finite() && *r > 0.0),
        "rates must be > 0"
    );
    let lineship = a.d.lineship()?;
    let mut gen_opts = a.gen;
    gen_opts
        .timestamp_base
        .get_or_insert_with(now_whole_second_ns);
    // Generated once, before any clock starts; every run sends the same datagrams.
    let t = Instant::now();
    let slices = prepare_slices(&gen_opts, a.lines, a.lines_per_datagram, a.senders)?;
    let bytes: usize = slices.iter().map(|s| s.data.len()).sum();
    let datagrams: usize = slices.iter().map(|s| s.ends.len()).sum();
    eprintln!(
        "generated {} lines in {datagrams} datagrams ({:.1} MB, {:.0} B/datagram) for {} sender(s) in {:.2}s",
        a.lines,
        bytes as f64 / 1e6,
        bytes as f64 / datagrams as f64,
        slices.len(),
        t.elapsed().as_secs_f64()
    );
    let rt = runtime(a.d.sink_threads)?;
    let summary = |mode| UdpSummary {
        tool: "lineship-load",
        mode,
        lines: a.lines,
        lines_per_datagram: a.lines_per_datagram,
        senders: slices.len(),
        workers: a.workers,
        receive_buffer: &a.receive_buffer,
        send_batch: a.send_batch,
        pace_us: a.pace_us,
        repeat: a.d.repeat,
        gzip_level: a.d.gzip_level,
        batch_max_lines: a.d.batch_max_lines,
        batch_max_bytes: &a.d.batch_max_bytes,
        max_in_flight: a.d.max_in_flight,
        flush_interval: &a.d.flush_interval,
        offered_lines_per_sec: None,
        median: None,
        runs: None,
        steps: None,
        max_loss_free_lines_per_sec: None,
        first_lossy_lines_per_sec: None,
        ok: false,
    };

    if !a.find_max {
        let rate = rates[0];
        let mut runs = Vec::new();
        for run in 1..=a.d.repeat {
            let r = run_udp(a, &lineship, &slices, &rt, rate, run)?;
            print_udp_run(&r, a.d.repeat);
            runs.push(r);
        }
        let med = UdpMedians::of(&runs);
        print_udp_medians(&runs, &med);
        let ok = runs.iter().all(|r| r.ok);
        let target_met = ok
            && rate >= TARGET_UDP_LINES_PER_SEC
            && med.send_lines_per_sec >= TARGET_UDP_LINES_PER_SEC * SENDER_LIMITED_SHARE;
        println!(
            "offered {rate:.0} lines/s, {}: {} [target >= {TARGET_UDP_LINES_PER_SEC:.0} lines/s offered with 0 loss]",
            if ok { "no line lost in any run" } else { "LINES LOST (or lineship failed)" },
            verdict(target_met),
        );
        let s = UdpSummary {
            offered_lines_per_sec: Some(rate),
            median: Some(med),
            runs: Some(&runs),
            ok,
            ..summary("udp")
        };
        println!("{}", serde_json::to_string(&s)?);
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }

    // --find-max: step up until two steps in a row lose lines (one may be noise on a busy
    // machine), within the time budget.
    let started = Instant::now();
    let budget = Duration::from_secs(a.find_max_budget_secs);
    // Start-up, drain and stop around the sending itself; refined from the runs.
    let mut overhead = Duration::from_secs(4);
    let mut steps: Vec<FindMaxStep> = Vec::new();
    for &rate in &rates {
        let per_run = Duration::from_secs_f64(a.lines as f64 / rate) + overhead;
        if started.elapsed() + per_run * a.d.repeat > budget {
            println!(
                "step {rate:.0} lines/s skipped: it would end after the {}s budget",
                budget.as_secs()
            );
            break;
        }
        let mut runs = Vec::new();
        for run in 1..=a.d.repeat {
            let t = Instant::now();
            let r = run_udp(a, &lineship, &slices, &rt, rate, run)?;
            overhead = t
                .elapsed()
                .saturating_sub(Duration::from_secs_f64(r.send_s));
            print_udp_run(&r, a.d.repeat);
            runs.push(r);
        }
        let med = UdpMedians::of(&runs);
        print_udp_medians(&runs, &med);
        let loss_free = runs.iter().all(|r| r.ok);
        println!(
            "step {rate:.0} lines/s: {}",
            if loss_free { "loss-free" } else { "LOST LINES" }
        );
        steps.push(FindMaxStep {
            offered_lines_per_sec: rate,
            loss_free,
            median: med,
            runs,
        });
        if steps.len() >= 2 && steps.iter().rev().take(2).all(|s| !s.loss_free) {
            break;
        }
    }
    let best = steps
        .iter()
        .filter(|s| s.loss_free)
        .max_by(|x, y| x.offered_lines_per_sec.total_cmp(&y.offered_lines_per_sec));
    let first_lossy = steps
        .iter()
        .filter(|s| !s.loss_free)
        .map(|s| s.offered_lines_per_sec)
        .min_by(f64::total_cmp);
    let first_lossy_text =
        first_lossy.map_or_else(|| "none".into(), |r: f64| format!("{r:.0} lines/s"));
    match best {
        Some(step) => {
            let b = step.offered_lines_per_sec;
            println!(
                "highest loss-free offered rate: {b:.0} lines/s (sent at {:.0} lines/s, {:.3} CPU-s per M lines){} [{} >= {TARGET_UDP_LINES_PER_SEC:.0}]; lowest lossy step: {first_lossy_text}{}; {:.0}s in all",
                step.median.send_lines_per_sec,
                step.median.cpu_s_per_million_lines,
                if step.runs.iter().any(|r| r.sender_limited) { ", sender-limited" } else { "" },
                verdict(b >= TARGET_UDP_LINES_PER_SEC),
                if first_lossy.is_some_and(|l| l < b) { " (below the best: loss there is noise or a borderline rate)" } else { "" },
                started.elapsed().as_secs_f64(),
            );
        }
        None => println!("no step was loss-free; lowest lossy step: {first_lossy_text}"),
    }
    let best = best.map(|s| s.offered_lines_per_sec);
    let s = UdpSummary {
        steps: Some(&steps),
        max_loss_free_lines_per_sec: best,
        first_lossy_lines_per_sec: first_lossy,
        ok: best.is_some(),
        ..summary("udp-find-max")
    };
    println!("{}", serde_json::to_string(&s)?);
    Ok(if best.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

// ---------------------------------------------------------------------------------------------
// Selftest: a minimal HTTP/1.1 client against the sink
// ---------------------------------------------------------------------------------------------

/// One keep-alive connection speaking just enough HTTP/1.1 to drive the sink.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(RawClient {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one request and returns the response status.
    fn request(&mut self, method: &str, path: &str, gzip: bool, body: &[u8]) -> Result<u16> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: sink\r\nContent-Length: {}\r\n",
            body.len()
        );
        if gzip {
            head.push_str("Content-Encoding: gzip\r\n");
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes())?;
        self.stream.write_all(body)?;
        let end = loop {
            if let Some(p) = memmem::find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            self.fill()?;
        };
        let head = std::str::from_utf8(&self.buf[..end]).context("response head")?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("response status")?;
        let body_len: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while self.buf.len() < end + body_len {
            self.fill()?;
        }
        self.buf.drain(..end + body_len);
        Ok(status)
    }

    fn fill(&mut self) -> Result<()> {
        let mut tmp = [0u8; 4096];
        let n = self.stream.read(&mut tmp)?;
        ensure!(n > 0, "sink closed the connection");
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }
}

fn gzip(comp: &mut Compressor, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0; comp.gzip_compress_bound(data.len())];
    let n = comp.gzip_compress(data, &mut out).expect("bound is enough");
    out.truncate(n);
    out
}

fn cmd_selftest(a: &SelftestArgs) -> Result<ExitCode> {
    ensure!(
        a.lines > 0 && a.batch_lines > 0,
        "--lines and --batch-lines must be > 0"
    );
    let level = CompressionLvl::new(a.gzip_level as i32)
        .map_err(|e| anyhow::anyhow!("--gzip-level: {e:?}"))?;
    let mut comp = Compressor::new(level);
    let mut gen = LineGen::new(&a.gen);
    // Body 0 is identity, body 1 is two gzip members, the rest are single gzip members.
    let t = Instant::now();
    let mut bodies: Vec<(bool, Vec<u8>)> = Vec::new();
    let (mut raw_bytes, mut left, mut buf) = (0u64, a.lines, Vec::new());
    while left > 0 {
        let n = left.min(a.batch_lines);
        buf.clear();
        gen.fill_lines(&mut buf, n);
        raw_bytes += buf.len() as u64;
        left -= n;
        let body = match bodies.len() {
            0 => (false, buf.clone()),
            1 => {
                let cut = buf.len() / 3;
                let mut two = gzip(&mut comp, &buf[..cut]);
                two.extend_from_slice(&gzip(&mut comp, &buf[cut..]));
                (true, two)
            }
            _ => (true, gzip(&mut comp, &buf)),
        };
        bodies.push(body);
    }
    let wire: u64 = bodies.iter().map(|(_, b)| b.len() as u64).sum();
    eprintln!(
        "prepared {} bodies: {} lines, {:.1} MB raw ({:.1} B/line), {:.1} MB gzip ({:.2}x) in {:.2}s",
        bodies.len(),
        a.lines,
        raw_bytes as f64 / 1e6,
        raw_bytes as f64 / a.lines as f64,
        wire as f64 / 1e6,
        raw_bytes as f64 / wire as f64,
        t.elapsed().as_secs_f64(),
    );

    let rt = runtime(a.sink_threads)?;
    let sink = start_sink(
        rt.handle(),
        "127.0.0.1:0".parse().unwrap(),
        SinkOptions {
            status: StatusCode::NO_CONTENT,
            check_seq: true,
            progress: Progress::Off,
        },
    )?;
    let addr = sink.addr;
    let conns = a.connections.max(1);
    let (cpu_before, sink_cpu_before) = (process_cpu_s(), sink_cpu_s());
    let t = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..conns)
            .map(|c| {
                let bodies = &bodies;
                scope.spawn(move || -> Result<()> {
                    let mut client = RawClient::connect(addr)?;
                    for (gz, body) in bodies.iter().skip(c).step_by(conns) {
                        let status = client.request("POST", WRITE_PATH, *gz, body)?;
                        ensure!(status == 204, "write answered {status}");
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().expect("client thread panicked")?;
        }
        Ok(())
    })?;
    let elapsed = t.elapsed().as_secs_f64();
    let cpu = process_cpu_s() - cpu_before;
    let sink_cpu = sink_cpu_s() - sink_cpu_before;
    let snap = sink.sink.snapshot(Some((a.gen.start, a.lines)));

    let mut failures = Vec::new();
    let mut check = |cond: bool, what: String| {
        if !cond {
            failures.push(what);
        }
    };
    let seq = snap.seq.unwrap_or_default();
    check(
        snap.lines == a.lines,
        format!("lines {} != {}", snap.lines, a.lines),
    );
    check(
        snap.decoded_bytes == raw_bytes,
        format!("decoded bytes {} != {raw_bytes}", snap.decoded_bytes),
    );
    check(
        seq.unique == a.lines,
        format!("unique seqs {} != {}", seq.unique, a.lines),
    );
    check(seq.lost == Some(0), format!("lost {:?}", seq.lost));
    check(seq.dup == 0 && seq.malformed == 0, format!("seq {seq:?}"));

    // Protocol checks after the timed part: re-sending a body shows up as duplicates, bad gzip
    // is a 400, and the probes answer.
    let mut client = RawClient::connect(addr)?;
    let (gz, first) = &bodies[0];
    check(
        client.request("POST", WRITE_PATH, *gz, first)? == 204,
        "resend".into(),
    );
    let resent = count_lines(first);
    let after = sink.sink.snapshot(Some((a.gen.start, a.lines)));
    check(
        after.seq.map(|s| s.dup) == Some(resent),
        format!(
            "dup after resend {:?} != {resent}",
            after.seq.map(|s| s.dup)
        ),
    );
    let bad = client.request(
        "POST",
        WRITE_PATH,
        true,
        b"\x1f\x8b\x08not gzip at all!!!!!",
    )?;
    check(bad == 400, format!("bad gzip answered {bad}"));
    check(
        client.request("GET", "/ping", false, b"")? == 204,
        "/ping".into(),
    );
    check(
        client.request("GET", "/health", false, b"")? == 200,
        "/health".into(),
    );
    check(
        client.request("GET", "/nope", false, b"")? == 404,
        "404".into(),
    );

    println!(
        "sink throughput: {:.0} lines/s, {:.1} MB/s decoded, {:.1} MB/s on the wire, {} connections; sink CPU {:.2}s = {:.3} s/M lines (whole process {:.2}s)",
        rate(a.lines as f64, elapsed),
        rate(raw_bytes as f64 / 1e6, elapsed),
        rate(wire as f64 / 1e6, elapsed),
        conns,
        sink_cpu,
        sink_cpu / (a.lines as f64 / 1e6),
        cpu,
    );
    println!("{}", seq_line(&seq));
    if failures.is_empty() {
        println!("selftest passed");
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &failures {
            println!("FAILED: {f}");
        }
        Ok(ExitCode::from(1))
    }
}

const WRITE_PATH: &str = "/api/v2/write?org=bench&bucket=bench&precision=ns";

#[cfg(test)]
mod tests {
    use super::*;

    fn gen_opts(start: u64) -> GenOpts {
        GenOpts {
            start,
            tag_cardinality: 100,
            timestamp_base: Some(1_700_000_000_000_000_000),
            seed: 1,
        }
    }

    fn lines(start: u64, n: u64) -> Vec<u8> {
        let mut v = Vec::new();
        LineGen::new(&gen_opts(start)).fill_lines(&mut v, n);
        v
    }

    fn gz(data: &[u8], level: i32) -> Vec<u8> {
        gzip(
            &mut Compressor::new(CompressionLvl::new(level).unwrap()),
            data,
        )
    }

    fn gunzip(input: &[u8]) -> Result<Vec<u8>, GunzipError> {
        let mut scratch = Vec::new();
        let n = gunzip_into(&mut Decompressor::new(), input, &mut scratch, 1 << 26)?;
        scratch.truncate(n);
        Ok(scratch)
    }

    #[test]
    fn generator_lines_are_well_formed() {
        // Starts just below a power of ten, so the ASCII counters gain a digit on the way.
        let start = 9_990;
        let data = lines(start, 1600);
        let text = std::str::from_utf8(&data).unwrap();
        let all: Vec<&str> = text.lines().collect();
        assert_eq!(all.len(), 1600);
        let mut without_ts = 0;
        for (i, line) in all.iter().enumerate() {
            let seq = start + i as u64;
            let parts: Vec<&str> = line.split(' ').collect();
            assert!(parts.len() == 2 || parts.len() == 3, "{line}");
            assert!(parts[0].contains(",host=host00"), "{line}");
            let field = format!(",seq={seq}i");
            assert!(parts[1].ends_with(&field), "{line} lacks {field}");
            if parts.len() == 2 {
                assert_eq!(seq % 16, 15, "{line}");
                without_ts += 1;
            } else {
                let ts: u64 = parts[2].parse().unwrap();
                assert_eq!(ts, 1_700_000_000_000_000_000 + seq * 1000, "{line}");
            }
        }
        assert_eq!(without_ts, 100);
        let avg = data.len() as f64 / 1600.0;
        assert!((65.0..85.0).contains(&avg), "average line length {avg}");
    }

    #[test]
    fn gunzip_single_member_roundtrip() {
        let data = lines(0, 5000);
        for level in [0, 1, 6] {
            assert_eq!(gunzip(&gz(&data, level)).unwrap(), data);
        }
    }

    #[test]
    fn gunzip_multi_member_including_empty_and_identical() {
        let data = lines(0, 3000);
        let (a, b) = data.split_at(1234);
        let mut body = gz(a, 1);
        body.extend(gz(b"", 1));
        body.extend(gz(b, 6));
        body.extend(gz(b, 6)); // identical members must both count
        let mut want = data.clone();
        want.extend_from_slice(b);
        assert_eq!(gunzip(&body).unwrap(), want);
    }

    #[test]
    fn gunzip_grows_past_a_wrong_size_hint() {
        // A small last member makes the trailer's ISIZE hint far too small for the first one.
        let big = vec![b'x'; 3 << 20];
        let mut body = gz(&big, 1);
        body.extend(gz(b"y\n", 1));
        let out = gunzip(&body).unwrap();
        assert_eq!(out.len(), big.len() + 2);
    }

    #[test]
    fn gunzip_rejects_bad_input_and_bombs() {
        let good = gz(&lines(0, 100), 1);
        assert_eq!(gunzip(b"plain text"), Err(GunzipError::BadData));
        assert_eq!(gunzip(&good[..good.len() - 3]), Err(GunzipError::BadData));
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"garbage after the member");
        assert_eq!(gunzip(&trailing), Err(GunzipError::BadData));
        let mut corrupt = good.clone();
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0xff;
        assert!(gunzip(&corrupt).is_err());
        let bomb = gz(&vec![0u8; 8 << 20], 1);
        let mut scratch = Vec::new();
        let r = gunzip_into(&mut Decompressor::new(), &bomb, &mut scratch, 1 << 20);
        assert_eq!(r, Err(GunzipError::TooLarge));
    }

    #[test]
    fn counts_lines_and_seqs() {
        assert_eq!(count_lines(b""), 0);
        assert_eq!(count_lines(b"a\nb\n"), 2);
        assert_eq!(count_lines(b"a\nb"), 2);
        let mut seqs = Vec::new();
        let body = b"m,seq=9 f=1,seq=3i 1\nm f=1i,seq=4u\nm myseq=7i\nm seq=5i\nm seq=x\nm seq=99999999999999999999i\n";
        // `seq=9 ` (a tag), `seq=x` and an overflowing value are not counted.
        assert_eq!(scan_seqs(body, &mut seqs), 3);
        assert_eq!(seqs, vec![3, 4, 5]);

        let data = lines(100, 2000);
        seqs.clear();
        assert_eq!(scan_seqs(&data, &mut seqs), 0);
        assert_eq!(seqs, (100..2100).collect::<Vec<_>>());
    }

    #[test]
    fn seqset_counts_lost_and_dup() {
        let mut set = SeqSet::default();
        for s in (5..200).filter(|s| s % 7 != 0) {
            set.insert(s);
        }
        set.insert(8);
        set.insert(8);
        set.insert(MAX_SEQ);
        let sum = set.summary(Some((0, 300)));
        assert_eq!(sum.dup, 2);
        assert_eq!(sum.out_of_range, 1);
        let expected_unique = (5..200).filter(|s| s % 7 != 0).count() as u64;
        assert_eq!(sum.unique, expected_unique);
        assert_eq!(sum.lost, Some(300 - expected_unique));
        assert_eq!(sum.gaps_in_span, 195 - expected_unique);
        assert_eq!(set.count_range(6, 7), 1);
        assert_eq!(set.count_range(7, 8), 0);
        assert_eq!(
            set.count_range(63, 129),
            66 - (63..=126).step_by(7).count() as u64
        );
    }

    #[test]
    fn sink_counts_gzip_bodies_end_to_end() {
        let rt = runtime(1).unwrap();
        let sink = start_sink(
            rt.handle(),
            "127.0.0.1:0".parse().unwrap(),
            SinkOptions {
                status: StatusCode::NO_CONTENT,
                check_seq: true,
                progress: Progress::Off,
            },
        )
        .unwrap();
        let mut c = RawClient::connect(sink.addr).unwrap();
        let a = lines(0, 700);
        let b = lines(700, 300);
        assert_eq!(
            c.request("POST", WRITE_PATH, true, &gz(&a, 1)).unwrap(),
            204
        );
        assert_eq!(c.request("POST", WRITE_PATH, false, &b).unwrap(), 204);
        assert_eq!(
            c.request("POST", WRITE_PATH, true, &gz(&b[..100], 1))
                .unwrap(),
            204
        );
        let snap = sink.sink.snapshot(Some((0, 1001)));
        assert_eq!(snap.write_requests, 3);
        assert_eq!(snap.lines, 1000 + count_lines(&b[..100]));
        let seq = snap.seq.unwrap();
        assert_eq!(seq.unique, 1000);
        assert!(seq.dup > 0);
        assert_eq!(seq.lost, Some(1));
    }

    #[test]
    fn config_has_the_design_keys() {
        let c = render_config(
            &DaemonConfig {
                sink: "127.0.0.1:9".parse().unwrap(),
                gzip_level: 1,
                batch_max_lines: 5000,
                batch_max_bytes: "1MiB",
                max_in_flight: 4,
                flush_interval: "200ms",
                log_level: "warn",
                input_section: "[input.stdin]\nenabled = true",
            },
            Path::new("/tmp/x \"y\"/state"),
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

    #[test]
    fn udp_slices_cover_every_seq_once() {
        let opts = gen_opts(500);
        let slices = prepare_slices(&opts, 1003, 10, 3).unwrap();
        assert_eq!(slices.len(), 3);
        assert_eq!(slices.iter().map(|s| s.lines).sum::<u64>(), 1003);
        let mut seqs = Vec::new();
        let mut datagrams = 0;
        for s in &slices {
            for i in 0..s.ends.len() {
                let d = s.datagram(i);
                let want = if i + 1 == s.ends.len() {
                    s.lines - 10 * (s.ends.len() as u64 - 1)
                } else {
                    10
                };
                assert_eq!(count_lines(d), want);
                assert_eq!(scan_seqs(d, &mut seqs), 0);
                datagrams += 1;
            }
        }
        assert_eq!(datagrams, 101);
        seqs.sort_unstable();
        assert_eq!(seqs, (500..1503).collect::<Vec<_>>());
        // More senders than datagrams: one datagram each.
        assert_eq!(prepare_slices(&opts, 25, 10, 8).unwrap().len(), 3);
        // A datagram over the UDP maximum is refused.
        assert!(prepare_slices(&opts, 2000, 1000, 1).is_err());
    }

    #[test]
    fn udp_sender_paces_to_the_schedule() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let slices = prepare_slices(&gen_opts(0), 300, 10, 1).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        // 30 datagrams at 30,000 lines/s: the last is due at 29 * 10 / 30000 s = 9.67 ms, and
        // may go out at most one pacing quantum (0.5 ms) early.
        let t0 = Instant::now() + Duration::from_millis(2);
        let st = send_paced(
            &tx,
            &slices[0],
            10,
            30_000.0,
            t0,
            Duration::from_micros(500),
            64,
        )
        .unwrap();
        assert!(Instant::now() >= t0);
        assert_eq!((st.datagrams, st.lines, st.failed_lines), (30, 300, 0));
        assert!(
            st.last_send_ns >= 9_100_000,
            "sent too fast: {}",
            st.last_send_ns
        );
        // How many sendmmsg calls it took depends on how late the thread woke up (a busy
        // machine batches more per call), so only "never early" is asserted.
        let mut buf = vec![0u8; 65536];
        let mut seqs = Vec::new();
        for _ in 0..30 {
            let n = rx.recv(&mut buf).unwrap();
            scan_seqs(&buf[..n], &mut seqs);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (0..300).collect::<Vec<_>>());
    }

    #[test]
    fn tail_config_is_valid_toml() {
        let input = tail_input_section(Path::new("/tmp/x \"y\"/logs"));
        let c = render_config(
            &DaemonConfig {
                sink: "127.0.0.1:9".parse().unwrap(),
                gzip_level: 1,
                batch_max_lines: 5000,
                batch_max_bytes: "1MiB",
                max_in_flight: 4,
                flush_interval: "200ms",
                log_level: "info",
                input_section: &input,
            },
            Path::new("/tmp/state"),
        );
        let v: toml::Value = toml::from_str(&c).unwrap();
        let tail = &v["input"]["tail"][0];
        assert_eq!(tail["paths"][0].as_str(), Some("/tmp/x \"y\"/logs/*.log"));
        assert_eq!(tail["from_beginning"].as_bool(), Some(true));
        assert_eq!(v["input"]["stdin"]["enabled"].as_bool(), Some(false));
    }

    #[test]
    fn line_blocks_end_at_line_ends() {
        let data = b"aaaa\nbb\ncccccc\nd\n";
        for block in 1..=data.len() + 1 {
            let blocks = line_blocks(data, block);
            assert_eq!(blocks.concat(), data.to_vec(), "block {block}");
            for b in &blocks {
                assert_eq!(b.last(), Some(&b'\n'), "block {block}: {b:?}");
                // The shortest prefix of at least `block` bytes that ends a line.
                let body = &b[..b.len() - 1];
                assert!(
                    !body.iter().skip(block - 1).any(|&c| c == b'\n'),
                    "block {block}: {b:?}"
                );
            }
        }
        assert!(line_blocks(b"", 4).is_empty());
    }

    #[test]
    fn udp_config_is_valid_toml() {
        let input = udp_input_section(8089, "64MiB", 2);
        let c = render_config(
            &DaemonConfig {
                sink: "127.0.0.1:9".parse().unwrap(),
                gzip_level: 1,
                batch_max_lines: 5000,
                batch_max_bytes: "1MiB",
                max_in_flight: 4,
                flush_interval: "200ms",
                log_level: "info",
                input_section: &input,
            },
            Path::new("/tmp/state"),
        );
        let v: toml::Value = toml::from_str(&c).unwrap();
        let udp = &v["input"]["udp"][0];
        assert_eq!(udp["listen"].as_str(), Some("127.0.0.1:8089"));
        assert_eq!(udp["receive_buffer"].as_str(), Some("64MiB"));
        assert_eq!(udp["workers"].as_integer(), Some(2));
        assert_eq!(v["input"]["stdin"]["enabled"].as_bool(), Some(false));
    }

    #[test]
    fn parses_proc_counters() {
        let udp = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
           12: 0100007F:1F99 00000000:0000 07 00000000:00000A00 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n\
           13: 0100007F:1F99 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4243 2 0000000000000000 0\n\
           14: 0100007F:1F9A 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 99 2 0000000000000000 5\n";
        // The rows above spell 127.0.0.1 as a little-endian machine prints it.
        #[cfg(target_endian = "little")]
        assert_eq!(
            parse_proc_udp_port(udp, 0x1F99),
            vec![
                ProcUdpSocket {
                    inode: 4242,
                    rx_queue: 0xA00,
                    drops: 17
                },
                ProcUdpSocket {
                    inode: 4243,
                    rx_queue: 0,
                    drops: 0
                },
            ]
        );
        assert!(parse_proc_udp_port(udp, 1).is_empty());

        let softnet = "0042f072 00000003 00000001 00000000\n005172a5 0000000a 00000000 00000000\n";
        assert_eq!(parse_softnet(softnet), (13, 1));

        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\nUdp: 8974310 0 459053 9433684 459050\nUdpLite: InDatagrams NoPorts\nUdpLite: 0 0\n";
        let udp = parse_snmp_udp(snmp);
        assert_eq!(udp[0], ("InDatagrams".to_string(), 8974310));
        assert_eq!(udp[4], ("RcvbufErrors".to_string(), 459050));
        assert!(parse_snmp_udp("Ip: a\nIp: 1\n").is_empty());

        let psi = "some avg10=32.15 avg60=65.42 avg300=76.56 total=5373067340\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_cpu_pressure(psi), Some(5373067340));
        assert_eq!(parse_cpu_pressure("full total=3\n"), None);
    }

    #[test]
    fn reads_the_daemon_summary_line() {
        let log = DaemonLog {
            started: true,
            listening: log_fields(
                "2026-11-28T01:48:30.541821Z  INFO udp input listening input=udp:127.0.0.1:34673 listen=127.0.0.1:34673 workers=1 receive_buffer=67108864 receive_buffer_applied=134217728",
                "udp input listening",
            ),
            summary: log_fields(
                "2026-11-28T01:48:33.160742Z  INFO summary lines_in=500000 delivered=499990 invalid=0 invalid_by_reason= dropped=10 dropped_by_reason=channel_full=10 udp_kernel_drops=3 udp_truncated=0 last_status=connection error: refused healthy=false",
                "summary",
            ),
            errors: 2,
        };
        let c = DaemonCounters::from_log(&log);
        assert_eq!(c.lines_in, Some(500000));
        assert_eq!(c.delivered, Some(499990));
        assert_eq!(c.dropped, Some(10));
        assert_eq!(c.dropped_by_reason.as_deref(), Some("channel_full=10"));
        assert_eq!(c.udp_kernel_drops, Some(3));
        assert_eq!(c.udp_truncated, Some(0));
        assert_eq!(c.receive_buffer_applied, Some(134217728));
        assert_eq!(c.error_lines, 2);
        let f = log.summary.unwrap();
        let status = f.iter().find(|(k, _)| k == "last_status").unwrap();
        assert_eq!(status.1, "connection error: refused");
        assert!(log_fields("INFO something else x=1", "summary").is_none());
    }
}
