//! `http --vmagent`: the same bodies POSTed to vmagent's `/api/v2/write` (it accepts InfluxDB
//! line protocol), for comparison. vmagent forwards Prometheus remote write, which the counting
//! sink does not speak, so its `-remoteWrite.url` is a local single-node VictoriaMetrics on a
//! free port with a temp `-storageDataPath`. What is timed is ingestion: vmagent answers 204 once
//! it has parsed a body into its queue, not once it is delivered. Delivery is verified after the
//! timed part: VictoriaMetrics' `vm_rows_inserted_total{type="promremotewrite"}` is polled until
//! it has every field of every line (or stops growing), then every `*_seq` sample is exported and
//! run through the same seq check as the sink's.
//!
//! vmagent runs through the `exec-measured` helper like lineship, so its CPU and peak RSS come
//! from `wait4` after SIGTERM; VictoriaMetrics is killed when the run ends, however it ends.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use lineship_load::seq::SeqSummary;
use serde::Serialize;

use super::post::{post_all, Body, PostStats};
use super::HttpArgs;
use crate::daemon::in_run_dir;
use crate::report::{rate, DaemonUsage, RunOutcome};
use crate::run::{load_average, CpuPressure};
use crate::victoria::{start_vmagent, wait_healthy, VictoriaMetrics};

/// The `type` of VictoriaMetrics' rows counter for what vmagent forwards (remote write).
const ROWS_KIND: &str = "promremotewrite";

#[derive(Serialize, Clone, Debug)]
pub struct VmagentRunReport {
    pub run: u32,
    pub lines: u64,
    pub post: PostStats,
    /// From the first request to the last 204 (vmagent's 204 means parsed and queued).
    pub accept_s: f64,
    /// Lines accepted per second (0 unless every body was accepted).
    pub lines_per_sec: f64,
    #[serde(flatten)]
    pub usage: DaemonUsage,
    pub rows_expected: u64,
    /// `vm_rows_inserted_total{type="promremotewrite"}` when the wait for delivery ended.
    pub rows_inserted: u64,
    /// From the first request until VictoriaMetrics had every row (polled every 50 ms).
    pub delivered_s: Option<f64>,
    /// The seq check over every exported `*_seq` sample (None when the export failed).
    pub seq: Option<SeqSummary>,
    pub lost: Option<u64>,
    pub dup: Option<u64>,
    pub delivery_error: Option<String>,
    /// CPU seconds VictoriaMetrics used (receiving vmagent's remote write, the export), which
    /// ran on the same cores while vmagent was timed.
    pub victoria_metrics_cpu_s: f64,
    /// The part of it used while vmagent was being timed (first request to last 204).
    pub victoria_metrics_cpu_accept_s: f64,
    /// Share of the run during which some task on the machine waited for a CPU.
    pub cpu_pressure_pct: Option<f64>,
    /// /proc/loadavg (1, 5, 15 min) when the run started.
    pub load_average: String,
    pub ok: bool,
}

impl RunOutcome for VmagentRunReport {
    fn outcome(&self) -> (f64, f64, &DaemonUsage, bool) {
        (self.lines_per_sec, self.accept_s, &self.usage, self.ok)
    }
}

/// One vmagent run: VictoriaMetrics and vmagent on free ports, every body POSTed, delivery
/// checked, both stopped.
pub fn run_vmagent(
    a: &HttpArgs,
    bodies: &[Body],
    rows_expected: u64,
    run: u32,
) -> Result<VmagentRunReport> {
    a.vm.check_vmagent()?;
    a.vm.check_victoria_metrics()?;
    in_run_dir(
        run,
        a.d.keep_config,
        "vmagent and VictoriaMetrics data and logs",
        |dir| run_in(a, bodies, rows_expected, run, dir),
    )
}

fn run_in(
    a: &HttpArgs,
    bodies: &[Body],
    rows_expected: u64,
    run: u32,
    dir: &Path,
) -> Result<VmagentRunReport> {
    let lines: u64 = bodies.iter().map(|b| b.lines).sum();
    let load_average = load_average();
    let pressure = CpuPressure::start();
    let vm = VictoriaMetrics::start(&a.vm.victoria_metrics_bin, dir)?;
    let (mut agent, agent_addr) = start_vmagent(&a.vm.vmagent_bin, dir, vm.addr, &[])?;

    // The timed part and the delivery wait; vmagent is stopped and reaped whatever happens.
    let phase = (|| -> Result<(PostStats, u64, Option<f64>, f64)> {
        wait_healthy(agent_addr, "vmagent", || agent.has_exited())?;
        let deadline = Instant::now() + Duration::from_secs(a.d.timeout_secs);
        let vm_cpu_before = vm.cpu_s();
        let (t0, post) = post_all(
            agent_addr,
            bodies,
            a.clients,
            Duration::from_millis(a.retry_ms),
            deadline,
        )?;
        let vm_cpu_accept = vm.cpu_s() - vm_cpu_before;
        let idle = Duration::from_secs_f64(a.idle_secs.max(0.1));
        let w = vm.wait_rows(ROWS_KIND, rows_expected, idle, deadline, |_| {})?;
        let delivered_s = w
            .complete_at
            .map(|t| t.saturating_duration_since(t0).as_secs_f64());
        Ok((post, w.rows, delivered_s, vm_cpu_accept))
    })();
    agent.signal(libc::SIGTERM);
    let exit = agent.wait(Duration::from_secs(60))?;
    let (post, rows_inserted, delivered_s, victoria_metrics_cpu_accept_s) = phase?;

    // Make what arrived searchable, then read back every seq.
    let seq = vm.seq_summary(a.gen.start, lines);
    let victoria_metrics_cpu_s = vm.cpu_s();
    let cpu_pressure_pct = pressure.pct();
    drop(vm);
    let (seq, delivery_error) = match seq {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let usage = DaemonUsage::of(&exit, lines);
    let accepted_all = post.lines_acked == lines;
    let (lost, dup) = (seq.and_then(|s| s.lost), seq.map(|s| s.dup));
    Ok(VmagentRunReport {
        run,
        lines,
        accept_s: post.acked_s,
        lines_per_sec: if accepted_all {
            rate(lines as f64, post.acked_s)
        } else {
            0.0
        },
        ok: accepted_all && lost == Some(0) && dup == Some(0) && usage.clean_exit(),
        post,
        usage,
        rows_expected,
        rows_inserted,
        delivered_s,
        seq,
        lost,
        dup,
        delivery_error,
        victoria_metrics_cpu_s,
        victoria_metrics_cpu_accept_s,
        cpu_pressure_pct,
        load_average,
    })
}
