//! `lineship-load`: the end-to-end load tool for `lineship`.
//!
//! It is its own package (the library `lineship_load` holds what it shares with lineship's
//! integration tests) and does not link the `lineship` crate: it drives the real daemon binary
//! from the outside, the way an operator would. One module a concern:
//!
//! - `lineship_load::gen::LineGen`: fast generated line protocol, a unique `seq=<n>i` per line.
//! - `sink` ([`sink::Sink`]): the counting sink, i.e. `lineship_load::fake::FakeInflux` in count
//!   mode (gzip through libdeflate, lines counted, every `seq` in a bitset, nothing stored), with
//!   a stats line a second; the `sink` subcommand runs it standalone.
//! - `daemon` + `measure`: write a config whose `[input...]` section the caller chooses, start
//!   `lineship` and collect its CPU time and peak RSS from `wait4`. The daemon is started
//!   through a small helper process (`exec-measured`, hidden), because a child's `ru_maxrss`
//!   starts at the peak RSS of the process that spawned it, and this one holds all the
//!   generated input. `daemon_log` reads the daemon's log for its start and final counters.
//! - `listen`: what the modes driving a listening input share (an input on 127.0.0.1:0, the
//!   bound address read from the daemon's `... input listening listen=ADDR` log line).
//! - `stdin`, `tail`, `http` (with `http::post`, the keep-alive clients, and `http::vmagent`,
//!   the vmagent comparison), `tcp`, `udp` (with `udp::send`, the paced `sendmmsg` senders, and `udp::proc`,
//!   the kernel's loss counters), `compare` (lineship vs vmagent on UDP at several rates, and
//!   `compare::table`, its result): the modes. `victoria` is the local VictoriaMetrics (and
//!   vmagent) the comparisons deliver into, counted by exported seq. `selftest` checks
//!   generator and sink against each other. `run` is the scaffolding every mode's run shares
//!   (run dir, config, sink, harness CPU, waiting for the sink); `report` holds what all of them
//!   print alike.
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
//! # HTTP: 4 keep-alive clients POST gzip bodies of 5,000 lines -> [[input.http]] -> sink;
//! # --vmagent also runs the bodies into /usr/bin/vmagent (-> a local VictoriaMetrics) and
//! # prints a comparison table
//! target/release/lineship-load http --lines 5000000 --repeat 3
//! target/release/lineship-load http --lines 5000000 --repeat 3 --vmagent
//!
//! # TCP: 4 connections write their share -> [[input.tcp]] -> sink
//! target/release/lineship-load tcp --lines 5000000 --repeat 3
//!
//! # lineship vs vmagent: the same UDP datagrams (10 lines each) at 10k, 30k, 100k, 300k and 1M
//! # lines/s for 5 s, into a fresh VictoriaMetrics each (Debian package victoria-metrics);
//! # 3 runs per agent and rate, one table (delivered/lost/dup, CPU-s per M delivered, peak RSS,
//! # the CPU ratio, verdicts); lineship alone when vmagent is not installed
//! target/release/lineship-load compare
//! target/release/lineship-load compare --rates 10000 --secs 1 --repeat 1   # CI's short run
//! target/release/lineship-load compare --rates 100000,1000000 --secs 10 --repeat 5 --keep-config
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
//! the medians, compared against the targets in the README's Performance table. Its last stdout line is one JSON object
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
//!
//! `compare` runs lineship and vmagent in turn on the same generated UDP load at each rate of
//! `--rates` (see the `compare` module for how delivery, CPU and memory are measured), prints a
//! line per run, then one table with a row per rate and the verdicts against issue 15's targets
//! (lineship delivers every line, spends at most 1/5 of vmagent's CPU per delivered line, peaks
//! at 64 MiB RSS at most), and JSON last. It exits 1 when lineship lost a line in some run (the
//! other targets are verdicts only) and 2 when the harness failed, e.g. without VictoriaMetrics.
//! Every process a mode starts is killed and reaped when it ends, however it ends (and gets
//! SIGKILL if this tool is killed).
//!
//! Traffic goes only to 127.0.0.1 and every run ends by itself.

mod compare;
mod daemon;
mod daemon_log;
mod http;
mod listen;
mod measure;
mod report;
mod run;
mod selftest;
mod sink;
mod stdin;
mod tail;
mod tcp;
mod udp;
mod victoria;

use std::ffi::OsString;
use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use lineship_load::gen::{GenOpts, LineGen};

use compare::CompareArgs;
use http::HttpArgs;
use measure::HELPER_SUBCOMMAND;
use selftest::SelftestArgs;
use sink::SinkArgs;
use stdin::StdinArgs;
use tail::TailArgs;
use tcp::TcpArgs;
use udp::UdpArgs;

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
    /// Benchmark concurrent HTTP clients (gzip bodies) -> lineship's HTTP input -> sink;
    /// `--vmagent` compares vmagent on the same bodies.
    Http(HttpArgs),
    /// Benchmark TCP connections -> lineship's TCP input -> in-process sink, end to end.
    Tcp(TcpArgs),
    /// lineship vs vmagent on the same UDP load at several rates, each delivering into its own
    /// VictoriaMetrics: delivered, lost, duplicated, CPU per delivered line, peak RSS.
    Compare(CompareArgs),
    /// Check the generator and the sink against each other; measure the sink's throughput.
    Selftest(SelftestArgs),
    /// Internal: run a command and report its rusage (used by `stdin` and `udp`).
    #[command(name = HELPER_SUBCOMMAND, hide = true)]
    ExecMeasured {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<OsString>,
    },
}

#[derive(Args)]
struct GenArgs {
    /// Number of lines to write.
    #[arg(long)]
    pub lines: u64,
    #[command(flatten)]
    pub gen: GenOpts,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Gen(a) => cmd_gen(&a),
        Cmd::Sink(a) => sink::cmd_sink(&a),
        Cmd::Stdin(a) => stdin::cmd_stdin(&a),
        Cmd::Udp(a) => udp::cmd_udp(&a),
        Cmd::Tail(a) => tail::cmd_tail(&a),
        Cmd::Http(a) => http::cmd_http(&a),
        Cmd::Tcp(a) => tcp::cmd_tcp(&a),
        Cmd::Compare(a) => compare::cmd_compare(&a),
        Cmd::Selftest(a) => selftest::cmd_selftest(&a),
        Cmd::ExecMeasured { command } => measure::cmd_exec_measured(&command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lineship-load: error: {e:#}");
            ExitCode::from(2)
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
