//! `tcp`: `--connections` TCP connections write their share of the pre-generated lines into
//! lineship's `[[input.tcp]]` on 127.0.0.1 (newline-delimited line protocol, `write_all` in
//! large blocks), which ships them to the counting sink. Timed from the first connect to the
//! sink's last write.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Args;
use lineship_load::fake::Counts;
use lineship_load::gen::{GenOpts, APPROX_LINE_BYTES};
use serde::Serialize;

use crate::daemon::DaemonOpts;
use crate::daemon_log::{DaemonCounters, Logged};
use crate::listen::{input_section, shares, wait_listening};
use crate::measure::threads_cpu_s;
use crate::report::{DaemonUsage, Delivery, EndToEnd, Medians, RunOutcome, Summary};
use crate::run::{load_average, pregenerate, wait_for_sink, CpuPressure, HarnessCpu, RunSetup};
use crate::stdin::PREGEN_LIMIT_BYTES;
use crate::tail::line_blocks;

/// No README target exists for the TCP input yet; the stdin one is the yardstick.
pub const TARGET_TCP_LINES_PER_SEC: f64 = crate::report::TARGET_LINES_PER_SEC;

#[derive(Args)]
pub struct TcpArgs {
    /// Lines to send per run.
    #[arg(long)]
    pub lines: u64,
    /// Connections, each writing an equal share of the lines.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Bytes per `write_all` (cut at a line end).
    #[arg(long, default_value_t = 1 << 20)]
    pub block_bytes: usize,
    /// After writing, stop waiting once the sink has seen no new line for this many seconds.
    #[arg(long, default_value_t = 5.0)]
    pub idle_secs: f64,
    #[command(flatten)]
    pub d: DaemonOpts,
    #[command(flatten)]
    pub gen: GenOpts,
}

#[derive(Serialize, Clone, Debug)]
pub struct TcpRunReport {
    pub run: u32,
    pub lines: u64,
    pub bytes: u64,
    pub connections: usize,
    #[serde(flatten)]
    pub delivery: Delivery,
    /// From the first connect to the sink's last write.
    pub wall_s: f64,
    /// End to end (0 unless every line arrived).
    pub lines_per_sec: f64,
    /// From the first connect until every connection had written (and shut down) its share.
    pub write_s: f64,
    pub write_errors: Vec<String>,
    #[serde(flatten)]
    pub usage: DaemonUsage,
    pub daemon_threads_cpu_s: Vec<(String, f64)>,
    pub daemon: DaemonCounters,
    pub harness_cpu_s: f64,
    pub sink_cpu_s: f64,
    /// Share of the run during which some task on the machine waited for a CPU.
    pub cpu_pressure_pct: Option<f64>,
    /// /proc/loadavg (1, 5, 15 min) when the run started.
    pub load_average: String,
    pub sink: Counts,
    pub ok: bool,
}

impl RunOutcome for TcpRunReport {
    fn outcome(&self) -> (f64, f64, &DaemonUsage, bool) {
        (self.lines_per_sec, self.wall_s, &self.usage, self.ok)
    }
}

/// Writes `share` to `addr` in blocks of about `block` bytes, then shuts the write side down.
fn write_share(addr: SocketAddr, share: &[u8], block: usize) -> Result<()> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting {addr}"))?;
    for b in line_blocks(share, block) {
        s.write_all(b).context("writing")?;
    }
    s.shutdown(Shutdown::Write).context("shutting down")?;
    Ok(())
}

/// One run: start sink and daemon, write every share over its own connection, wait, stop.
pub fn run_tcp(a: &TcpArgs, lineship: &Path, data: &[u8], run: u32) -> Result<TcpRunReport> {
    let log_level = a.d.log_level.as_deref().unwrap_or("info");
    let setup = RunSetup::new(&a.d, run, log_level, |_| Ok(input_section("tcp", &[])))?;
    let sink = &setup.sink;
    let parts = shares(data, a.lines, a.connections);
    let load_average = load_average();
    let cpu = HarnessCpu::start();
    let pressure = CpuPressure::start();
    let mut logged = Logged::spawn(lineship, &setup.config)?;
    type Phase = (Instant, f64, Vec<String>, Vec<(String, f64)>);
    let phase = (|| -> Result<Phase> {
        let addr = wait_listening(&mut logged)?;
        let t0 = Instant::now();
        let errors: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = parts
                .iter()
                .map(|&(share, _)| s.spawn(move || write_share(addr, share, a.block_bytes)))
                .collect();
            handles
                .into_iter()
                .filter_map(|h| match h.join().expect("writer panicked") {
                    Ok(()) => None,
                    Err(e) => Some(format!("{e:#}")),
                })
                .collect()
        });
        let write_s = t0.elapsed().as_secs_f64();
        wait_for_sink(
            sink,
            &mut logged.daemon,
            a.lines,
            Duration::from_secs_f64(a.idle_secs.max(0.1)),
            t0 + Duration::from_secs(a.d.timeout_secs),
            Duration::from_millis(2),
            || {},
        );
        Ok((t0, write_s, errors, threads_cpu_s(logged.daemon.pid)))
    })();
    let (exit, daemon_counters) = logged.stop(Duration::from_secs(a.d.timeout_secs));
    let (harness_cpu_s, sink_cpu_s) = cpu.since();
    let cpu_pressure_pct = pressure.pct();
    let snap = sink.fake.counts(Some((a.gen.start, a.lines)));
    setup.finish(&a.d);
    let exit = exit?;
    let (t0, write_s, write_errors, daemon_threads) = phase?;

    let EndToEnd {
        wall_s,
        lines_per_sec,
        delivery,
    } = EndToEnd::of(sink.fake.last_write_at(), t0, &snap, a.lines);
    let usage = DaemonUsage::of(&exit, a.lines);
    Ok(TcpRunReport {
        run,
        lines: a.lines,
        bytes: data.len() as u64,
        connections: parts.len(),
        wall_s,
        lines_per_sec,
        write_s,
        ok: delivery.exact() && usage.clean_exit() && write_errors.is_empty(),
        write_errors,
        delivery,
        usage,
        daemon_threads_cpu_s: daemon_threads,
        daemon: daemon_counters,
        harness_cpu_s,
        sink_cpu_s,
        cpu_pressure_pct,
        load_average,
        sink: snap,
    })
}

pub fn cmd_tcp(a: &TcpArgs) -> Result<ExitCode> {
    ensure!(a.lines > 0, "--lines must be > 0");
    ensure!(a.d.repeat > 0, "--repeat must be > 0");
    ensure!(a.connections > 0, "--connections must be > 0");
    ensure!(a.block_bytes > 0, "--block-bytes must be > 0");
    ensure!(
        a.lines.saturating_mul(APPROX_LINE_BYTES) <= PREGEN_LIMIT_BYTES,
        "--lines too large for tcp mode (the lines are generated in memory first)"
    );
    let lineship = a.d.lineship()?;
    let data = pregenerate(&a.gen.fixed(), a.lines);
    let mut runs = Vec::new();
    for run in 1..=a.d.repeat {
        let r = run_tcp(a, &lineship, &data, run)?;
        println!(
            "run {run}/{}: tcp connections={} {} wall={:.3}s rate={:.0} lines/s (writes done after {:.3}s) {} harness_cpu={:.2}s (sink {:.2}s) cpu_pressure={} load={}{}",
            a.d.repeat,
            r.connections,
            r.delivery,
            r.wall_s,
            r.lines_per_sec,
            r.write_s,
            r.usage,
            r.harness_cpu_s,
            r.sink_cpu_s,
            r.cpu_pressure_pct
                .map_or_else(|| "?".to_string(), |p| format!("{p:.0}%")),
            r.load_average,
            if r.ok { "" } else { "  << FAILED" },
        );
        for e in &r.write_errors {
            println!("  a connection failed: {e}");
        }
        runs.push(r);
    }
    let med = Medians::of(&runs);
    let ok = med.print(&runs, TARGET_TCP_LINES_PER_SEC);
    Summary {
        tool: "lineship-load",
        mode: "tcp",
        lines: a.lines,
        repeat: a.d.repeat,
        settings: a.d.settings(),
        pregenerated: None,
        median: med,
        runs: &runs,
        ok,
    }
    .print()
}
