//! `udp`: paced senders -> lineship's `[[input.udp]]` on 127.0.0.1 -> the fake InfluxDB in count
//! mode, with loss counts; `--find-max` steps the offered rate up and reports the highest
//! loss-free one.

pub mod proc;
mod report;
pub mod run;
pub mod send;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Args;
use lineship_load::gen::GenOpts;

use crate::daemon::DaemonOpts;
use crate::report::{exit_code, verdict};
use report::{
    print_udp_medians, print_udp_run, FindMaxStep, UdpMedians, UdpSummary, TARGET_UDP_LINES_PER_SEC,
};
use run::{run_udp, SENDER_LIMITED_SHARE};
use send::{prepare_slices, send_all, SenderSlice, SenderStats};

/// How a UDP load is sent and received, shared by `udp` and `compare`.
#[derive(Args)]
pub struct UdpOpts {
    /// Lines per datagram (the last datagram of a sender may hold fewer).
    #[arg(long, default_value_t = 10)]
    pub lines_per_datagram: u64,
    /// Sender threads, each with its own socket and source port (so SO_REUSEPORT can spread them
    /// over the workers) and an equal share of the rate.
    #[arg(long, default_value_t = 2)]
    pub senders: usize,
    /// `workers` of the UDP input (sockets and receive threads sharing the port).
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// `receive_buffer` of the UDP input, written as given.
    #[arg(long, default_value = "64MiB")]
    pub receive_buffer: String,
    /// Most datagrams per `sendmmsg` call.
    #[arg(long, default_value_t = 64)]
    pub send_batch: usize,
    /// Pacing granularity in µs: a sender sleeps to the schedule, then sends every datagram due
    /// within this much, so no burst is longer than this.
    #[arg(long, default_value_t = 500)]
    pub pace_us: u64,
}

impl UdpOpts {
    /// Checks the ranges.
    pub fn check(&self) -> Result<()> {
        ensure!(
            self.lines_per_datagram > 0,
            "--lines-per-datagram must be > 0"
        );
        ensure!(self.senders > 0, "--senders must be > 0");
        ensure!(
            (1..=64).contains(&self.workers),
            "--workers must be between 1 and 64"
        );
        ensure!(
            (1..=1024).contains(&self.send_batch),
            "--send-batch must be between 1 and 1024"
        );
        Ok(())
    }

    /// The `[[input.udp]]` section for lineship on 127.0.0.1:`port`.
    pub fn input_section(&self, port: u16) -> String {
        run::udp_input_section(port, &self.receive_buffer, self.workers)
    }

    /// Sends every slice to `target` at `rate` lines/s with these pacing settings; the
    /// schedule's start and each sender's stats.
    pub fn send(
        &self,
        slices: &[SenderSlice],
        target: SocketAddr,
        rate: f64,
    ) -> Result<(Instant, Vec<SenderStats>)> {
        send_all(
            slices,
            target,
            self.lines_per_datagram,
            rate,
            Duration::from_micros(self.pace_us),
            self.send_batch,
        )
    }
}

#[derive(Args)]
pub struct UdpArgs {
    /// Offered rate in lines/s, paced from the first datagram (required unless --find-max).
    #[arg(long, required_unless_present = "find_max")]
    pub rate: Option<f64>,
    /// Lines to send per run.
    #[arg(long, default_value_t = 5_000_000)]
    pub lines: u64,
    #[command(flatten)]
    pub u: UdpOpts,
    /// After sending, stop waiting once the sink has seen no new line for this many seconds.
    #[arg(long, default_value_t = 2.0)]
    pub idle_secs: f64,
    /// Step the rate up through --find-max-rates (--lines each, stopping after two steps in a
    /// row lose lines) and report the highest loss-free rate.
    #[arg(long)]
    pub find_max: bool,
    /// Offered rates (lines/s) for --find-max, in ascending order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "500000,750000,1000000,1250000,1500000"
    )]
    pub find_max_rates: Vec<f64>,
    /// --find-max does not start a step that would likely end after this many seconds.
    #[arg(long, default_value_t = 170)]
    pub find_max_budget_secs: u64,
    #[command(flatten)]
    pub d: DaemonOpts,
    #[command(flatten)]
    pub gen: GenOpts,
}

pub fn cmd_udp(a: &UdpArgs) -> Result<ExitCode> {
    ensure!(a.lines > 0, "--lines must be > 0");
    ensure!(a.d.repeat > 0, "--repeat must be > 0");
    a.u.check()?;
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
    let gen_opts = a.gen.fixed();
    // Generated once, before any clock starts; every run sends the same datagrams.
    let t = Instant::now();
    let slices = prepare_slices(&gen_opts, a.lines, a.u.lines_per_datagram, a.u.senders)?;
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
    let summary = |mode| UdpSummary {
        tool: "lineship-load",
        mode,
        lines: a.lines,
        lines_per_datagram: a.u.lines_per_datagram,
        senders: slices.len(),
        workers: a.u.workers,
        receive_buffer: &a.u.receive_buffer,
        send_batch: a.u.send_batch,
        pace_us: a.u.pace_us,
        repeat: a.d.repeat,
        settings: a.d.settings(),
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
            let r = run_udp(a, &lineship, &slices, rate, run)?;
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
        return Ok(exit_code(ok));
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
            let r = run_udp(a, &lineship, &slices, rate, run)?;
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
    Ok(exit_code(best.is_some()))
}
