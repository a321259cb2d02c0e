//! `compare`: lineship and vmagent side by side on the same UDP load, each delivering into its
//! own fresh VictoriaMetrics.
//!
//! For every rate of `--rates` the datagrams are generated once, before any clock starts
//! (`rate × --secs` lines, at least [`MIN_LINES`], `--lines-per-datagram` lines each); then for
//! each of `--repeat` runs both agents get them in turn, the order alternating from run to run
//! so neither always goes first. One agent's run ([`run::run_agent`]): a VictoriaMetrics on a
//! free port with its own temp directory; the agent on a free UDP port of 127.0.0.1 (lineship
//! with one `[[input.udp]]` and its output at VictoriaMetrics' `/api/v2/write`; vmagent with
//! `-influxListenAddr`, forwarding remote write; it has no receive buffer flag, so its socket
//! gets the kernel default, net.core.rmem_default); the paced senders of `udp`; VictoriaMetrics'
//! `vm_rows_inserted_total` polled until it has every row or has not changed for
//! `--idle-secs`; the agent stopped with SIGTERM; every `*_seq` sample exported and checked, so
//! delivered, lost and duplicated lines are exact. Every process started is killed and reaped
//! whatever happens (see [`crate::victoria::KillOnDrop`] and [`crate::measure::Measured`]).
//!
//! CPU per delivered line is the agent's own CPU (all threads, from its process CPU clock) from
//! just before the first datagram to the last change of the row count (when delivery stopped),
//! over the lines delivered. Peak RSS is the agent's high-water mark over its whole life
//! (`wait4`). VictoriaMetrics' CPU is counted for neither. The result is one table, a row per
//! rate ([`table`]), judged against issue 15's targets: lineship delivers every line, spends at
//! most 1/5 of vmagent's CPU per delivered line, and peaks at no more than 64 MiB; then one JSON
//! line. Exit code 0 when lineship lost no line in any run, 1 otherwise, 2 when the harness
//! failed (e.g. VictoriaMetrics not installed). Without vmagent, lineship runs alone and the
//! table says so.

mod run;
mod table;

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{ensure, Result};
use clap::Args;
use lineship_load::gen::GenOpts;
use serde::Serialize;

use crate::daemon::{DaemonOpts, Settings};
use crate::report::exit_code;
use crate::udp::send::prepare_slices;
use crate::udp::UdpOpts;
use crate::victoria::{expected_rows, VictoriaOpts};
use run::{print_run, run_agent, Agent, AgentRun, RateInput, Turn};
use table::{compare_table, print_verdicts, RateSummary, RATIO_METHOD};

/// Fewest lines a run sends, however low the rate and short `--secs`.
pub const MIN_LINES: u64 = 1000;

// Command-level raw attributes adjust the shared daemon flags for this mode: three runs by
// default, lineship's own defaults for the batching settings the other modes tune, and the
// in-process sink's flags hidden (this mode has no sink).
#[derive(Args)]
#[command(
    mut_arg("repeat", |a| a.default_value("3")),
    mut_arg("flush_interval", |a| a.default_value("1s")),
    mut_arg("batch_max_bytes", |a| a.default_value("4MiB")),
    mut_arg("no_check_seq", |a| a.hide(true)),
    mut_arg("sink_threads", |a| a.hide(true))
)]
pub struct CompareArgs {
    /// Offered rates in lines/s, a table row each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000,30000,100000,300000,1000000"
    )]
    pub rates: Vec<f64>,
    /// Seconds of load per run: each run sends rate × secs lines (at least 1,000).
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Lines per run at every rate, instead of rate × --secs.
    #[arg(long)]
    pub lines: Option<u64>,
    #[command(flatten)]
    pub u: UdpOpts,
    /// After sending, stop waiting once VictoriaMetrics' row count has not changed for this many
    /// seconds.
    #[arg(long, default_value_t = 3.0)]
    pub idle_secs: f64,
    #[command(flatten)]
    pub vm: VictoriaOpts,
    #[command(flatten)]
    pub d: DaemonOpts,
    #[command(flatten)]
    pub gen: GenOpts,
}

impl CompareArgs {
    /// Lines a run at `rate` sends.
    pub fn lines_at(&self, rate: f64) -> u64 {
        self.lines
            .unwrap_or_else(|| ((rate * self.secs).round() as u64).max(MIN_LINES))
    }
}

/// The last stdout line: one JSON object with everything.
#[derive(Serialize)]
struct CompareSummary<'a> {
    tool: &'static str,
    mode: &'static str,
    rates: &'a [f64],
    secs: f64,
    lines_per_datagram: u64,
    senders: usize,
    workers: u32,
    receive_buffer: &'a str,
    send_batch: usize,
    pace_us: u64,
    repeat: u32,
    #[serde(flatten)]
    settings: Settings<'a>,
    vmagent_installed: bool,
    ratio_method: &'static str,
    rows: &'a [RateSummary],
    runs: &'a [AgentRun],
    /// Wall time of the whole comparison.
    wall_s: f64,
    /// Every verdict passed (informational; the exit code judges loss only).
    targets_met: bool,
    /// lineship lost no line in any run.
    ok: bool,
}

pub fn cmd_compare(a: &CompareArgs) -> Result<ExitCode> {
    ensure!(
        !a.rates.is_empty() && a.rates.iter().all(|r| r.is_finite() && *r > 0.0),
        "--rates must be a comma-separated list of rates > 0 (lines/s)"
    );
    ensure!(
        a.rates
            .iter()
            .enumerate()
            .all(|(i, r)| !a.rates[..i].contains(r)),
        "--rates lists a rate twice"
    );
    ensure!(a.secs.is_finite() && a.secs > 0.0, "--secs must be > 0");
    ensure!(a.lines != Some(0), "--lines must be > 0");
    ensure!(a.d.repeat > 0, "--repeat must be > 0");
    a.u.check()?;
    ensure!(
        !a.d.no_check_seq,
        "compare always checks every seq; drop --no-check-seq"
    );
    a.vm.check_victoria_metrics()?;
    let with_vmagent = match a.vm.check_vmagent() {
        Ok(()) => true,
        Err(e) => {
            println!("note: lineship runs alone: {e:#}");
            false
        }
    };
    let lineship = a.d.lineship()?;
    let gen_opts = a.gen.fixed();
    let started = Instant::now();

    let mut runs: Vec<AgentRun> = Vec::new();
    for &rate in &a.rates {
        let lines = a.lines_at(rate);
        // Generated once per rate, before any clock starts; both agents get the same datagrams.
        let t = Instant::now();
        let slices = prepare_slices(&gen_opts, lines, a.u.lines_per_datagram, a.u.senders)?;
        let rows_expected = slices.iter().map(|s| expected_rows(&s.data)).sum();
        eprintln!(
            "rate {rate:.0}: generated {lines} lines ({rows_expected} VictoriaMetrics rows) in {} datagrams for {} sender(s) in {:.2}s",
            slices.iter().map(|s| s.ends.len()).sum::<usize>(),
            slices.len(),
            t.elapsed().as_secs_f64()
        );
        let input = RateInput {
            slices: &slices,
            rate,
            lines,
            rows_expected,
        };
        for run in 1..=a.d.repeat {
            let order: &[Agent] = match (with_vmagent, run % 2 == 1) {
                (false, _) => &[Agent::Lineship],
                (true, true) => &[Agent::Lineship, Agent::Vmagent],
                (true, false) => &[Agent::Vmagent, Agent::Lineship],
            };
            for (i, &agent) in order.iter().enumerate() {
                let turn = Turn {
                    agent,
                    run,
                    order: i + 1,
                };
                let r = run_agent(a, &lineship, &input, turn)?;
                print_run(&r, a.d.repeat);
                runs.push(r);
            }
        }
    }

    let rows: Vec<RateSummary> = a
        .rates
        .iter()
        .map(|&rate| RateSummary::of(rate, a.lines_at(rate), &runs, with_vmagent))
        .collect();
    println!(
        "lineship vs {} on UDP ({} lines per datagram, {} sender(s), to 127.0.0.1), each into its own VictoriaMetrics; {} run(s) per agent and rate{}; {:.0}s in all",
        if with_vmagent { "vmagent" } else { "vmagent (NOT INSTALLED: lineship alone)" },
        a.u.lines_per_datagram,
        a.u.senders,
        a.d.repeat,
        if with_vmagent { ", which goes first alternating" } else { "" },
        started.elapsed().as_secs_f64(),
    );
    println!("CPU-s/M: the agent's CPU from just before the first datagram until VictoriaMetrics' row count last changed, per million lines delivered, median [min-max]; peak RSS: the agent's whole life, median (max); delivered: median per run; lost, dup: summed over the runs.");
    println!("ratio: {RATIO_METHOD}.");
    print!("{}", compare_table(&rows, with_vmagent));
    let (ok, targets_met) = print_verdicts(&rows, with_vmagent);
    let summary = CompareSummary {
        tool: "lineship-load",
        mode: "compare",
        rates: &a.rates,
        secs: a.secs,
        lines_per_datagram: a.u.lines_per_datagram,
        senders: a.u.senders,
        workers: a.u.workers,
        receive_buffer: &a.u.receive_buffer,
        send_batch: a.u.send_batch,
        pace_us: a.u.pace_us,
        repeat: a.d.repeat,
        settings: a.d.settings(),
        vmagent_installed: with_vmagent,
        ratio_method: RATIO_METHOD,
        rows: &rows,
        runs: &runs,
        wall_s: started.elapsed().as_secs_f64(),
        targets_met,
        ok,
    };
    println!("{}", serde_json::to_string(&summary)?);
    Ok(exit_code(ok))
}
