//! `tail`: a file on disk -> lineship's `[[input.tail]]` -> the fake InfluxDB in count mode,
//! either complete before the daemon starts or appended while it runs (`--growing`).

use std::io::Write;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use lineship_load::fake::Counts;
use lineship_load::gen::{GenOpts, LineGen, APPROX_LINE_BYTES};
use serde::Serialize;

use crate::daemon::{make_run_dir, render_config, toml_str, write_config, DaemonOpts};
use crate::daemon_log::{spawn_log_reader, DaemonCounters, DaemonLog};
use crate::measure::{process_cpu_s, sink_cpu_s, spawn_measured, threads_cpu_s};
use crate::report::{median, rate, verdict, Medians};
use crate::sink::Sink;
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
    pub lines_received: u64,
    pub lost: Option<u64>,
    pub dup: Option<u64>,
    /// From the daemon's start (existing file) or the first append (--growing) to the sink's
    /// last accepted write.
    pub wall_s: f64,
    pub lines_per_sec: f64,
    /// --growing: how long the appends took, and their rate.
    pub append_s: Option<f64>,
    pub append_lines_per_sec: Option<f64>,
    /// Existing file: from spawning the daemon to its "lineship started" log line.
    pub startup_s: Option<f64>,
    pub daemon_cpu_s: f64,
    pub cpu_s_per_million_lines: f64,
    pub peak_rss_mib: f64,
    pub rss_floor_mib: f64,
    pub exit_code: i32,
    pub timed_out: bool,
    /// CPU seconds of the daemon's threads by name just before it was stopped, busiest first.
    pub daemon_threads_cpu_s: Vec<(String, f64)>,
    pub daemon: DaemonCounters,
    pub harness_cpu_s: f64,
    pub sink_cpu_s: f64,
    pub sink: Counts,
    pub ok: bool,
}

#[derive(Serialize)]
pub struct TailSummary<'a> {
    pub tool: &'static str,
    pub mode: &'static str,
    pub lines: u64,
    pub repeat: u32,
    pub gzip_level: u32,
    pub batch_max_lines: u64,
    pub batch_max_bytes: &'a str,
    pub max_in_flight: u32,
    pub flush_interval: &'a str,
    pub median: Medians,
    pub runs: &'a [TailRunReport],
    pub ok: bool,
}

/// One tail run: writes (or, with --growing, appends) `data` into `<run dir>/logs/bench.log`.
pub fn run_tail(a: &TailArgs, lineship: &Path, data: &[u8], run: u32) -> Result<TailRunReport> {
    let check_seq = !a.d.no_check_seq;
    let mut sink = Sink::for_run(check_seq, a.d.sink_threads)?;
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
        &a.d.config(sink.addr(), log_level, &tail_input_section(&logs)),
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
            let seen = sink.lines();
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
    sink.stop_progress();
    let snap = sink.fake.counts(Some((a.gen.start, a.lines)));
    if a.d.keep_config {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let exit = exit?;
    let (t0, append_s, startup_s, daemon_threads) = phase?;
    let daemon_counters = DaemonCounters::from_log(&log.lock().unwrap());

    let wall_s = sink
        .fake
        .last_write_at()
        .map_or(0.0, |t| t.saturating_duration_since(t0).as_secs_f64());
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

pub fn cmd_tail(a: &TailArgs) -> Result<ExitCode> {
    ensure!(a.lines > 0, "--lines must be > 0");
    ensure!(a.d.repeat > 0, "--repeat must be > 0");
    ensure!(a.block_bytes > 0, "--block-bytes must be > 0");
    ensure!(
        a.lines.saturating_mul(APPROX_LINE_BYTES) <= PREGEN_LIMIT_BYTES,
        "--lines too large for tail mode (the lines are generated in memory first)"
    );
    let lineship = a.d.lineship()?;
    let gen_opts = a.gen.fixed();
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
    let mut runs = Vec::new();
    for run in 1..=a.d.repeat {
        let r = run_tail(a, &lineship, &data, run)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::DaemonConfig;

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
}
