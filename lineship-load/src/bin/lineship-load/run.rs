//! The scaffolding of one daemon run that every mode shares: a fresh directory with a config for
//! a fresh counting sink ([`RunSetup`]), the harness's own CPU use ([`HarnessCpu`]), waiting
//! until the sink has every line or stops making progress ([`wait_for_sink`]), and generating
//! the input before any clock starts ([`pregenerate`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use lineship_load::gen::{GenOpts, LineGen};

use crate::daemon::{make_run_dir, write_run_config, DaemonOpts};
use crate::measure::{process_cpu_s, sink_cpu_s, Measured};
use crate::sink::Sink;

/// One run's sink, directory and daemon config.
pub struct RunSetup {
    pub sink: Sink,
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl RunSetup {
    /// Starts a sink and writes `<run dir>/lineship.toml` for it; `input` returns the
    /// `[input...]` section given the run directory (and may prepare files in it).
    pub fn new(
        d: &DaemonOpts,
        run: u32,
        log_level: &str,
        input: impl FnOnce(&Path) -> Result<String>,
    ) -> Result<Self> {
        let sink = Sink::for_run(!d.no_check_seq, d.sink_threads)?;
        let dir = make_run_dir(run)?;
        let input = input(&dir)?;
        let config = write_run_config(d, &dir, sink.addr(), log_level, &input)?;
        Ok(RunSetup { sink, dir, config })
    }

    /// Removes the run directory, or with `--keep-config` says where it is.
    pub fn finish(&self, d: &DaemonOpts) {
        if d.keep_config {
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// This process's CPU seconds since [`HarnessCpu::start`]: all of it, and the sink's threads.
pub struct HarnessCpu {
    process: f64,
    sink: f64,
}

impl HarnessCpu {
    pub fn start() -> Self {
        HarnessCpu {
            process: process_cpu_s(),
            sink: sink_cpu_s(),
        }
    }

    /// `(harness_cpu_s, sink_cpu_s)` so far.
    pub fn since(&self) -> (f64, f64) {
        (process_cpu_s() - self.process, sink_cpu_s() - self.sink)
    }
}

/// How contended the machine was during a run: the share of wall time during which some task
/// waited for a CPU (`/proc/pressure/cpu`), from [`CpuPressure::start`] to [`CpuPressure::pct`].
pub struct CpuPressure {
    at: Instant,
    us: Option<u64>,
}

impl CpuPressure {
    pub fn start() -> Self {
        CpuPressure {
            at: Instant::now(),
            us: crate::udp::proc::cpu_pressure_us(),
        }
    }

    /// Percent of the time since `start` (None where /proc/pressure is unavailable).
    pub fn pct(&self) -> Option<f64> {
        let (before, now) = (self.us?, crate::udp::proc::cpu_pressure_us()?);
        Some(crate::report::rate(
            now.saturating_sub(before) as f64 / 1e4,
            self.at.elapsed().as_secs_f64(),
        ))
    }
}

/// The first three fields of /proc/loadavg ("1 5 15 minute load averages"), or "?".
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// Waits until the sink has `want` lines, `deadline` passes, the daemon exits, or no new line
/// arrived for `idle`, polling every `poll` (and calling `on_poll` each time).
pub fn wait_for_sink(
    sink: &Sink,
    daemon: &mut Measured,
    want: u64,
    idle: Duration,
    deadline: Instant,
    poll: Duration,
    mut on_poll: impl FnMut(),
) {
    let (mut last, mut last_change) = (0, Instant::now());
    loop {
        let seen = sink.lines();
        on_poll();
        if seen >= want || Instant::now() >= deadline || daemon.has_exited() {
            return;
        }
        if seen != last {
            (last, last_change) = (seen, Instant::now());
        } else if last_change.elapsed() >= idle {
            return;
        }
        std::thread::sleep(poll);
    }
}

/// `lines` generated lines, made before any clock starts so their cost is not the daemon's.
pub fn pregenerate(opts: &GenOpts, lines: u64) -> Vec<u8> {
    let t = Instant::now();
    let mut data = Vec::new();
    LineGen::new(opts).fill_lines(&mut data, lines);
    eprintln!(
        "generated {} lines ({:.1} MB, {:.1} B/line) in {:.2}s",
        lines,
        data.len() as f64 / 1e6,
        data.len() as f64 / lines as f64,
        t.elapsed().as_secs_f64()
    );
    data
}
