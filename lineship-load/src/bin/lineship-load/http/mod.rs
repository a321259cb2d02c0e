//! `http`: concurrent HTTP clients POST pre-gzipped bodies of generated lines to lineship's
//! `[[input.http]]` on 127.0.0.1 (`/api/v2/write`, keep-alive, `Content-Encoding: gzip`), which
//! ships them to the counting sink. With `ack = "durable"` (the default) a 204 means delivered
//! or spooled, so when the clients are done the sink should have every line. Timed from the
//! first request to the sink's last write. `--vmagent` also runs the same bodies into vmagent
//! (see [`vmagent`]) and prints a comparison table.

mod post;
mod vmagent;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use clap::Args;
use lineship_load::fake::Counts;
use lineship_load::gen::{GenOpts, APPROX_LINE_BYTES};
use lineship_load::gunzip::gzip_level;
use serde::Serialize;

use crate::daemon::{toml_str, DaemonOpts};
use crate::daemon_log::{DaemonCounters, Logged};
use crate::listen::{chunks_of_lines, input_section, wait_listening};
use crate::measure::threads_cpu_s;
use crate::report::{
    med_range, sum_opt, text_table, DaemonUsage, Delivery, EndToEnd, Medians, RunOutcome, Summary,
};
use crate::run::{load_average, pregenerate, wait_for_sink, CpuPressure, HarnessCpu, RunSetup};
use crate::stdin::PREGEN_LIMIT_BYTES;
use crate::victoria::{expected_rows, VictoriaOpts};
use post::{post_all, Body, PostStats};
use vmagent::{run_vmagent, VmagentRunReport};

/// No README target exists for the HTTP input yet; the stdin one is the yardstick.
pub const TARGET_HTTP_LINES_PER_SEC: f64 = crate::report::TARGET_LINES_PER_SEC;

#[derive(Args)]
pub struct HttpArgs {
    /// Lines to send per run.
    #[arg(long)]
    pub lines: u64,
    /// Concurrent client threads, each with one keep-alive connection.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Lines per request body.
    #[arg(long, default_value_t = 5000)]
    pub lines_per_request: u64,
    /// libdeflate level of the clients' gzip bodies (done before any clock starts).
    #[arg(long, default_value_t = 6)]
    pub client_gzip_level: i32,
    /// `ack` of the HTTP input (`durable` or `queued`).
    #[arg(long, default_value = "durable")]
    pub ack: String,
    /// Sleep before retrying a body answered 503, in ms.
    #[arg(long, default_value_t = 20)]
    pub retry_ms: u64,
    /// After the clients are done, stop waiting once the sink (or VictoriaMetrics) has seen
    /// nothing new for this many seconds.
    #[arg(long, default_value_t = 5.0)]
    pub idle_secs: f64,
    /// In each run, also POST the same bodies to vmagent (forwarding to a local
    /// VictoriaMetrics) and print a comparison table.
    #[arg(long)]
    pub vmagent: bool,
    #[command(flatten)]
    pub vm: VictoriaOpts,
    #[command(flatten)]
    pub d: DaemonOpts,
    #[command(flatten)]
    pub gen: GenOpts,
}

pub fn http_input_section(ack: &str) -> String {
    input_section("http", &[format!("ack = {}", toml_str(ack))])
}

#[derive(Serialize, Clone, Debug)]
pub struct HttpRunReport {
    pub run: u32,
    pub lines: u64,
    pub requests_planned: u64,
    pub gzip_bytes: u64,
    #[serde(flatten)]
    pub delivery: Delivery,
    /// From the first request to the sink's last write.
    pub wall_s: f64,
    /// End to end (0 unless every line arrived).
    pub lines_per_sec: f64,
    pub post: PostStats,
    #[serde(flatten)]
    pub usage: DaemonUsage,
    pub daemon_threads_cpu_s: Vec<(String, f64)>,
    pub daemon: DaemonCounters,
    /// CPU of this tool (clients + sink) during the run, and of the sink's threads.
    pub harness_cpu_s: f64,
    pub sink_cpu_s: f64,
    /// Share of the run during which some task on the machine waited for a CPU.
    pub cpu_pressure_pct: Option<f64>,
    /// /proc/loadavg (1, 5, 15 min) when the run started.
    pub load_average: String,
    pub sink: Counts,
    pub ok: bool,
}

impl RunOutcome for HttpRunReport {
    fn outcome(&self) -> (f64, f64, &DaemonUsage, bool) {
        (self.lines_per_sec, self.wall_s, &self.usage, self.ok)
    }
}

/// One lineship run: start sink and daemon, POST every body, wait for the sink, stop.
pub fn run_http(a: &HttpArgs, lineship: &Path, bodies: &[Body], run: u32) -> Result<HttpRunReport> {
    let log_level = a.d.log_level.as_deref().unwrap_or("info");
    let setup = RunSetup::new(&a.d, run, log_level, |_| Ok(http_input_section(&a.ack)))?;
    let sink = &setup.sink;
    let load_average = load_average();
    let cpu = HarnessCpu::start();
    let pressure = CpuPressure::start();
    let mut logged = Logged::spawn(lineship, &setup.config)?;
    type Phase = (Instant, PostStats, Vec<(String, f64)>);
    let phase = (|| -> Result<Phase> {
        let addr = wait_listening(&mut logged)?;
        let deadline = Instant::now() + Duration::from_secs(a.d.timeout_secs);
        let (t0, post) = post_all(
            addr,
            bodies,
            a.clients,
            Duration::from_millis(a.retry_ms),
            deadline,
        )?;
        wait_for_sink(
            sink,
            &mut logged.daemon,
            a.lines,
            Duration::from_secs_f64(a.idle_secs.max(0.1)),
            deadline,
            Duration::from_millis(2),
            || {},
        );
        Ok((t0, post, threads_cpu_s(logged.daemon.pid)))
    })();
    let (exit, daemon_counters) = logged.stop(Duration::from_secs(a.d.timeout_secs));
    let (harness_cpu_s, sink_cpu_s) = cpu.since();
    let cpu_pressure_pct = pressure.pct();
    let snap = sink.fake.counts(Some((a.gen.start, a.lines)));
    setup.finish(&a.d);
    let exit = exit?;
    let (t0, post, daemon_threads) = phase?;

    let EndToEnd {
        wall_s,
        lines_per_sec,
        delivery,
    } = EndToEnd::of(sink.fake.last_write_at(), t0, &snap, a.lines);
    let usage = DaemonUsage::of(&exit, a.lines);
    Ok(HttpRunReport {
        run,
        lines: a.lines,
        requests_planned: bodies.len() as u64,
        gzip_bytes: bodies.iter().map(|b| b.gz.len() as u64).sum(),
        wall_s,
        lines_per_sec,
        ok: delivery.exact()
            && usage.clean_exit()
            && post.lines_acked == a.lines
            && post.bodies_given_up == 0,
        delivery,
        post,
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

/// One row of the comparison table.
pub struct TableRow {
    pub agent: &'static str,
    /// What `lines_per_sec` measures.
    pub timed: &'static str,
    pub lines_per_sec: Vec<f64>,
    pub cpu_s_per_m: Vec<f64>,
    pub peak_rss_mib: Vec<f64>,
    pub lost: Vec<Option<u64>>,
    pub dup: Vec<Option<u64>>,
    pub status_503: u64,
    pub delivery: &'static str,
}

/// The comparison table, one row per agent, medians with [min-max] over runs.
pub fn comparison_table(rows: &[TableRow]) -> String {
    let head = [
        "agent",
        "lines/s median [min-max]",
        "timed",
        "CPU-s/M lines",
        "peak RSS MiB",
        "lost",
        "dup",
        "503s",
        "delivery",
    ];
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.agent.to_string(),
                med_range(&r.lines_per_sec, 0),
                r.timed.to_string(),
                med_range(&r.cpu_s_per_m, 3),
                med_range(&r.peak_rss_mib, 1),
                sum_opt(&r.lost),
                sum_opt(&r.dup),
                r.status_503.to_string(),
                r.delivery.to_string(),
            ]
        })
        .collect();
    text_table(&head, &body)
}

#[derive(Serialize)]
struct HttpSummary<'a> {
    #[serde(flatten)]
    base: Summary<'a, HttpRunReport>,
    clients: usize,
    lines_per_request: u64,
    client_gzip_level: i32,
    ack: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    vmagent_median: Option<Medians>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vmagent_runs: Option<&'a [VmagentRunReport]>,
}

pub fn cmd_http(a: &HttpArgs) -> Result<ExitCode> {
    ensure!(a.lines > 0, "--lines must be > 0");
    ensure!(a.d.repeat > 0, "--repeat must be > 0");
    ensure!(a.clients > 0, "--clients must be > 0");
    ensure!(a.lines_per_request > 0, "--lines-per-request must be > 0");
    ensure!(
        (0..=12).contains(&a.client_gzip_level),
        "--client-gzip-level is 0..=12"
    );
    ensure!(
        a.lines.saturating_mul(APPROX_LINE_BYTES) <= PREGEN_LIMIT_BYTES,
        "--lines too large for http mode (the bodies are generated in memory first)"
    );
    let lineship = a.d.lineship()?;
    let data = pregenerate(&a.gen.fixed(), a.lines);
    let t = Instant::now();
    let bodies: Vec<Body> = chunks_of_lines(&data, a.lines_per_request)
        .into_iter()
        .map(|(chunk, lines)| Body {
            gz: gzip_level(a.client_gzip_level, chunk),
            lines,
        })
        .collect();
    let gz_bytes: usize = bodies.iter().map(|b| b.gz.len()).sum();
    eprintln!(
        "gzipped into {} bodies of {} lines ({:.1} MB, {:.1}x) in {:.2}s",
        bodies.len(),
        a.lines_per_request,
        gz_bytes as f64 / 1e6,
        data.len() as f64 / gz_bytes.max(1) as f64,
        t.elapsed().as_secs_f64()
    );
    let rows_expected = if a.vmagent { expected_rows(&data) } else { 0 };
    drop(data);

    let (mut runs, mut vm_runs) = (Vec::new(), Vec::new());
    for run in 1..=a.d.repeat {
        let r = run_http(a, &lineship, &bodies, run)?;
        println!(
            "run {run}/{}: http clients={} requests={} (503s {}, reconnects {}, given up {}) {} wall={:.3}s rate={:.0} lines/s (all acked after {:.3}s) {} harness_cpu={:.2}s (sink {:.2}s) cpu_pressure={} load={}{}",
            a.d.repeat,
            a.clients,
            r.post.requests,
            r.post.status_503,
            r.post.reconnects,
            r.post.bodies_given_up,
            r.delivery,
            r.wall_s,
            r.lines_per_sec,
            r.post.acked_s,
            r.usage,
            r.harness_cpu_s,
            r.sink_cpu_s,
            r.cpu_pressure_pct
                .map_or_else(|| "?".to_string(), |p| format!("{p:.0}%")),
            r.load_average,
            if r.ok { "" } else { "  << FAILED" },
        );
        if !r.post.other_statuses.is_empty() {
            println!(
                "  other statuses (body given up): {:?}",
                r.post.other_statuses
            );
        }
        runs.push(r);
        if a.vmagent {
            let v = run_vmagent(a, &bodies, rows_expected, run)?;
            println!(
                "run {run}/{}: vmagent requests={} (503s {}, reconnects {}, given up {}) accepted={} in {:.3}s rate={:.0} lines/s accepted; VictoriaMetrics rows {}/{}{} seq lost={} dup={} {} victoria_metrics_cpu={:.2}s ({:.2}s while timed) cpu_pressure={} load={}{}",
                a.d.repeat,
                v.post.requests,
                v.post.status_503,
                v.post.reconnects,
                v.post.bodies_given_up,
                v.post.lines_acked,
                v.accept_s,
                v.lines_per_sec,
                v.rows_inserted,
                v.rows_expected,
                v.delivered_s
                    .map_or(String::new(), |s| format!(" (all after {s:.3}s)")),
                crate::report::opt_u64(v.lost),
                crate::report::opt_u64(v.dup),
                v.usage,
                v.victoria_metrics_cpu_s,
                v.victoria_metrics_cpu_accept_s,
                v.cpu_pressure_pct
                    .map_or_else(|| "?".to_string(), |p| format!("{p:.0}%")),
                v.load_average,
                if v.ok { "" } else { "  << FAILED" },
            );
            if let Some(e) = &v.delivery_error {
                println!("  vmagent delivery NOT verified: {e}");
            }
            vm_runs.push(v);
        }
    }

    let med = Medians::of(&runs);
    let mut ok = med.print(&runs, TARGET_HTTP_LINES_PER_SEC);
    let vm_med = a.vmagent.then(|| Medians::of(&vm_runs));
    if a.vmagent {
        let mut rows = vec![TableRow {
            agent: "lineship",
            timed: "first request -> sink has every line",
            lines_per_sec: runs.iter().map(|r| r.lines_per_sec).collect(),
            cpu_s_per_m: runs
                .iter()
                .map(|r| r.usage.cpu_s_per_million_lines)
                .collect(),
            peak_rss_mib: runs.iter().map(|r| r.usage.peak_rss_mib).collect(),
            lost: runs.iter().map(|r| r.delivery.lost).collect(),
            dup: runs.iter().map(|r| r.delivery.dup).collect(),
            status_503: runs.iter().map(|r| r.post.status_503).sum(),
            delivery: "sink seq check",
        }];
        let verified = vm_runs.iter().all(|v| v.seq.is_some());
        rows.push(TableRow {
            agent: "vmagent",
            timed: "first request -> last 204 (queued)",
            lines_per_sec: vm_runs.iter().map(|r| r.lines_per_sec).collect(),
            cpu_s_per_m: vm_runs
                .iter()
                .map(|r| r.usage.cpu_s_per_million_lines)
                .collect(),
            peak_rss_mib: vm_runs.iter().map(|r| r.usage.peak_rss_mib).collect(),
            lost: vm_runs.iter().map(|r| r.lost).collect(),
            dup: vm_runs.iter().map(|r| r.dup).collect(),
            status_503: vm_runs.iter().map(|r| r.post.status_503).sum(),
            delivery: if verified {
                "VictoriaMetrics export seq check, after timing"
            } else {
                "NOT verified (see above)"
            },
        });
        println!(
            "comparison ({} run(s) each, same bodies, {} clients):",
            a.d.repeat, a.clients
        );
        print!("{}", comparison_table(&rows));
        println!("CPU-s/M and peak RSS: the agent process from start to exit (wait4). vmagent's CPU includes forwarding to VictoriaMetrics (remote write); VictoriaMetrics' own CPU is not counted.");
        println!(
            "VictoriaMetrics (vmagent's remote-write target, on the same cores) used {} CPU-s per run, {} of it while vmagent was timed; lineship's counting sink used {} CPU-s (in this process).",
            med_range(&vm_runs.iter().map(|v| v.victoria_metrics_cpu_s).collect::<Vec<_>>(), 2),
            med_range(&vm_runs.iter().map(|v| v.victoria_metrics_cpu_accept_s).collect::<Vec<_>>(), 2),
            med_range(&runs.iter().map(|r| r.sink_cpu_s).collect::<Vec<_>>(), 2),
        );
        if !vm_runs.iter().all(|v| v.ok) {
            println!("FAILED: some vmagent run did not accept, or did not deliver, every line exactly once");
            ok = false;
        }
    }
    let summary = HttpSummary {
        base: Summary {
            tool: "lineship-load",
            mode: if a.vmagent { "http-vs-vmagent" } else { "http" },
            lines: a.lines,
            repeat: a.d.repeat,
            settings: a.d.settings(),
            pregenerated: None,
            median: med,
            runs: &runs,
            ok,
        },
        clients: a.clients,
        lines_per_request: a.lines_per_request,
        client_gzip_level: a.client_gzip_level,
        ack: &a.ack,
        vmagent_median: vm_med,
        vmagent_runs: a.vmagent.then_some(&vm_runs[..]),
    };
    println!("{}", serde_json::to_string(&summary)?);
    Ok(crate::report::exit_code(ok))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::example_config;
    use crate::report::table_lines;

    #[test]
    fn http_config_is_valid_toml() {
        let c = example_config("info", &http_input_section("queued"), "/tmp/s");
        let v: toml::Value = toml::from_str(&c).unwrap();
        assert_eq!(v["input"]["http"][0]["ack"].as_str(), Some("queued"));
        assert_eq!(
            v["input"]["http"][0]["listen"].as_str(),
            Some("127.0.0.1:0")
        );
    }

    #[test]
    fn table_lines_up() {
        let row = |agent, lost| TableRow {
            agent,
            timed: "t",
            lines_per_sec: vec![1_000_000.0, 1_200_000.0, 900_000.0],
            cpu_s_per_m: vec![0.4],
            peak_rss_mib: vec![30.0, 31.0],
            lost,
            dup: vec![Some(0), Some(0)],
            status_503: 2,
            delivery: "d",
        };
        let t = comparison_table(&[
            row("lineship", vec![Some(0), Some(1)]),
            row("vmagent", vec![Some(0), None]),
        ]);
        let lines = table_lines(&t);
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[2].contains("| 1000000 [900000-1200000] |"), "{t}");
        assert!(lines[2].contains("| 0.400 "), "{t}");
        assert!(lines[2].contains("| 30.5 [30.0-31.0] |"), "{t}");
        // lost: summed over runs; unknown in some run is `?`.
        assert!(lines[2].contains("| 1    |"), "{t}");
        assert!(lines[3].contains("| ?    |"), "{t}");
    }
}
