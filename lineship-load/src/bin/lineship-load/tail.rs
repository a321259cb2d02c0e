//! `tail`: a file on disk -> lineship's `[[input.tail]]` -> the fake InfluxDB in count mode,
//! either complete before the daemon starts or appended while it runs (`--growing`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Args;
use lineship_load::fake::Counts;
use lineship_load::gen::{GenOpts, APPROX_LINE_BYTES};
use serde::Serialize;

use crate::daemon::{toml_str, DaemonOpts};
use crate::daemon_log::{DaemonCounters, Logged};
use crate::measure::threads_cpu_s;
use crate::report::{rate, DaemonUsage, Delivery, EndToEnd, Medians, RunOutcome, Summary};
use crate::run::{pregenerate, wait_for_sink, HarnessCpu, RunSetup};
use crate::stdin::PREGEN_LIMIT_BYTES;

// Issue 4: "tail -> gzip -> HTTP sink: >= 1,500,000 lines/s end to end".
pub const TARGET_TAIL_LINES_PER_SEC: f64 = 1_500_000.0;

/// How long a tail run waits for the daemon's "lineship started" log line.
pub const TAIL_READY_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Args)]
pub struct TailArgs {
    /// Lines to write into the tailed file per run.
    #[arg(long)]
    pub lines: u64,
    /// Start the daemon on an empty file, then append the lines as fast as possible (timed from
    /// the first append). Default: the file is complete before the daemon starts (timed from the
    /// daemon's start).
    #[arg(long)]
    pub growing: bool,
    /// Bytes per append with --growing (cut at a line end).
    #[arg(long, default_value_t = 4 << 20)]
    pub block_bytes: usize,
    /// Stop waiting when the sink has seen no new line for this long (the daemon rescans globs
    /// every 2 s).
    #[arg(long, default_value_t = 15.0)]
    pub idle_secs: f64,
    #[command(flatten)]
    pub d: DaemonOpts,
    #[command(flatten)]
    pub gen: GenOpts,
}

pub fn tail_input_section(dir: &Path) -> String {
    let glob = dir.join("*.log");
    format!(
        "[[input.tail]]\npaths = [{}]\nfrom_beginning = true\n\n[input.stdin]\nenabled = false",
        toml_str(&glob.to_string_lossy())
    )
}

/// Splits `data` into blocks of about `block` bytes, each ending at a line end.
pub fn line_blocks(data: &[u8], block: usize) -> Vec<&[u8]> {
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
pub struct TailRunReport {
    pub run: u32,
    pub lines: u64,
    pub bytes: u64,
    #[serde(flatten)]
    pub delivery: Delivery,
    /// From the daemon's start (existing file) or the first append (--growing) to the sink's
    /// last accepted write.
    pub wall_s: f64,
    pub lines_per_sec: f64,
    /// --growing: how long the appends took, and their rate.
    pub append_s: Option<f64>,
    pub append_lines_per_sec: Option<f64>,
    /// Existing file: from spawning the daemon to its "lineship started" log line.
    pub startup_s: Option<f64>,
    #[serde(flatten)]
    pub usage: DaemonUsage,
    /// CPU seconds of the daemon's threads by name just before it was stopped, busiest first.
    pub daemon_threads_cpu_s: Vec<(String, f64)>,
    pub daemon: DaemonCounters,
    pub harness_cpu_s: f64,
    pub sink_cpu_s: f64,
    pub sink: Counts,
    pub ok: bool,
}

/// One tail run: writes (or, with --growing, appends) `data` into `<run dir>/logs/bench.log`.
pub fn run_tail(a: &TailArgs, lineship: &Path, data: &[u8], run: u32) -> Result<TailRunReport> {
    // Info, so the "lineship started" and summary lines are there to read.
    let log_level = a.d.log_level.as_deref().unwrap_or("info");
    let mut file_path = PathBuf::new();
    let setup = RunSetup::new(&a.d, run, log_level, |dir| {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        file_path = logs.join("bench.log");
        // Existing-file case: complete before the daemon starts (and in the page cache).
        std::fs::write(&file_path, if a.growing { &[][..] } else { data })
            .with_context(|| format!("writing {}", file_path.display()))?;
        Ok(tail_input_section(&logs))
    })?;
    let sink = &setup.sink;

    let cpu = HarnessCpu::start();
    let t_spawn = Instant::now();
    let mut logged = Logged::spawn(lineship, &setup.config)?;

    // Everything between start and stop; the daemon is stopped and reaped whatever happens.
    type Phase = (Instant, Option<f64>, Option<f64>, Vec<(String, f64)>);
    let phase = (|| -> Result<Phase> {
        let mut startup_s = None;
        let t0 = if a.growing {
            // Wait until the daemon runs, so its start-up is not timed.
            loop {
                ensure!(
                    !logged.daemon.has_exited(),
                    "lineship exited before it was ready"
                );
                if logged.started() {
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
        let log = Arc::clone(&logged.log);
        wait_for_sink(
            sink,
            &mut logged.daemon,
            a.lines,
            Duration::from_secs_f64(a.idle_secs.max(0.1)),
            t0 + Duration::from_secs(a.d.timeout_secs),
            Duration::from_millis(2),
            || {
                if startup_s.is_none() && !a.growing && log.lock().unwrap().started {
                    startup_s = Some(t_spawn.elapsed().as_secs_f64());
                }
            },
        );
        Ok((t0, append_s, startup_s, threads_cpu_s(logged.daemon.pid)))
    })();
    let (exit, daemon_counters) = logged.stop(Duration::from_secs(a.d.timeout_secs));
    let (harness_cpu_s, sink_cpu_s) = cpu.since();
    let snap = sink.fake.counts(Some((a.gen.start, a.lines)));
    setup.finish(&a.d);
    let exit = exit?;
    let (t0, append_s, startup_s, daemon_threads) = phase?;

    let EndToEnd {
        wall_s,
        lines_per_sec,
        delivery,
    } = EndToEnd::of(sink.fake.last_write_at(), t0, &snap, a.lines);
    let usage = DaemonUsage::of(&exit, a.lines);
    Ok(TailRunReport {
        run,
        lines: a.lines,
        bytes: data.len() as u64,
        wall_s,
        lines_per_sec,
        append_s,
        append_lines_per_sec: append_s.map(|s| rate(a.lines as f64, s)),
        startup_s,
        ok: delivery.exact() && usage.clean_exit(),
        delivery,
        usage,
        daemon_threads_cpu_s: daemon_threads,
        daemon: daemon_counters,
        harness_cpu_s,
        sink_cpu_s,
        sink: snap,
    })
}

impl RunOutcome for TailRunReport {
    fn outcome(&self) -> (f64, f64, &DaemonUsage, bool) {
        (self.lines_per_sec, self.wall_s, &self.usage, self.ok)
    }
}

pub fn cmd_tail(a: &TailArgs) -> Result<ExitCode> {
    ensure!(a.lines > 0, "--lines must be > 0");
    ensure!(a.d.repeat > 0, "--repeat must be > 0");
    ensure!(a.block_bytes > 0, "--block-bytes must be > 0");
    ensure!(
        a.lines.saturating_mul(APPROX_LINE_BYTES) <= PREGEN_LIMIT_BYTES,
        "--lines too large for tail mode (the lines are generated in memory first)"
    );
    let lineship = a.d.lineship()?;
    let data = pregenerate(&a.gen.fixed(), a.lines);
    let mode = if a.growing { "tail-growing" } else { "tail" };
    let mut runs = Vec::new();
    for run in 1..=a.d.repeat {
        let r = run_tail(a, &lineship, &data, run)?;
        println!(
            "run {run}/{}: {mode} lines={} {} wall={:.3}s rate={:.0} lines/s{} {} harness_cpu={:.2}s (sink {:.2}s){}",
            a.d.repeat,
            r.lines,
            r.delivery,
            r.wall_s,
            r.lines_per_sec,
            match (r.append_s, r.startup_s) {
                (Some(s), _) => format!(" (appends took {s:.3}s)"),
                (None, Some(s)) => format!(" (start-up {s:.3}s)"),
                _ => String::new(),
            },
            r.usage,
            r.harness_cpu_s,
            r.sink_cpu_s,
            if r.ok { "" } else { "  << FAILED" },
        );
        runs.push(r);
    }
    let med = Medians::of(&runs);
    let ok = med.print(&runs, TARGET_TAIL_LINES_PER_SEC);
    Summary {
        tool: "lineship-load",
        mode,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::example_config;

    #[test]
    fn tail_config_is_valid_toml() {
        let input = tail_input_section(Path::new("/tmp/x \"y\"/logs"));
        let c = example_config("info", &input, "/tmp/state");
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
}
