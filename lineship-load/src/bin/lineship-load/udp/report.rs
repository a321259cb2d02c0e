//! Reporting UDP runs: medians over runs, the `--find-max` steps, the JSON summary and the text
//! lines.

use serde::Serialize;

use super::run::UdpRunReport;
use crate::daemon::Settings;
use crate::report::{cost_verdicts, median, opt_u64, rate};

// The README's UDP target: 10 lines per datagram into the HTTP sink, at least 1,000,000 lines/s
// offered with 0 loss.
pub const TARGET_UDP_LINES_PER_SEC: f64 = 1_000_000.0;

#[derive(Serialize, Clone, Debug)]
pub struct UdpMedians {
    pub send_lines_per_sec: f64,
    /// Lines received over the time from the schedule's start to the sink's last write.
    pub end_to_end_lines_per_sec: f64,
    pub lost: f64,
    pub max_lost: u64,
    pub daemon_cpu_s: f64,
    pub cpu_s_per_million_lines: f64,
    pub peak_rss_mib: f64,
    pub max_peak_rss_mib: f64,
    pub sender_cpu_s: f64,
    pub sink_cpu_s: f64,
}

impl UdpMedians {
    pub fn of(runs: &[UdpRunReport]) -> Self {
        let m = |f: fn(&UdpRunReport) -> f64| median(runs.iter().map(f).collect());
        let lost = |r: &UdpRunReport| {
            let d = &r.delivery;
            d.lost.unwrap_or(r.lines_offered - d.lines_received)
        };
        UdpMedians {
            send_lines_per_sec: m(|r| r.send_lines_per_sec),
            end_to_end_lines_per_sec: m(|r| rate(r.delivery.lines_received as f64, r.end_to_end_s)),
            lost: median(runs.iter().map(|r| lost(r) as f64).collect()),
            max_lost: runs.iter().map(lost).max().unwrap_or(0),
            daemon_cpu_s: m(|r| r.usage.daemon_cpu_s),
            cpu_s_per_million_lines: m(|r| r.usage.cpu_s_per_million_lines),
            peak_rss_mib: m(|r| r.usage.peak_rss_mib),
            max_peak_rss_mib: runs
                .iter()
                .map(|r| r.usage.peak_rss_mib)
                .fold(0.0, f64::max),
            sender_cpu_s: m(|r| r.sender_cpu_s),
            sink_cpu_s: m(|r| r.sink_cpu_s),
        }
    }
}

#[derive(Serialize)]
pub struct FindMaxStep {
    pub offered_lines_per_sec: f64,
    pub loss_free: bool,
    pub median: UdpMedians,
    pub runs: Vec<UdpRunReport>,
}

#[derive(Serialize)]
pub struct UdpSummary<'a> {
    pub tool: &'static str,
    pub mode: &'static str,
    pub lines: u64,
    pub lines_per_datagram: u64,
    pub senders: usize,
    pub workers: u32,
    pub receive_buffer: &'a str,
    pub send_batch: usize,
    pub pace_us: u64,
    pub repeat: u32,
    #[serde(flatten)]
    pub settings: Settings<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_lines_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median: Option<UdpMedians>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs: Option<&'a [UdpRunReport]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<&'a [FindMaxStep]>,
    /// --find-max: the highest offered rate at which every run delivered every line, and the
    /// lowest at which some run lost lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_loss_free_lines_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_lossy_lines_per_sec: Option<f64>,
    pub ok: bool,
}

pub fn print_udp_run(r: &UdpRunReport, of: u32) {
    let s = r.net;
    println!(
        "run {}/{of}: offered={:.0} lines/s sent={} in {:.3}s ({:.0} lines/s, max lag {:.2} ms{}) {} e2e={:.3}s (drain {:.3}s) {} | kernel drops: socket={} daemon={} | daemon dropped={} [{}] | softnet_dropped={} udp_rcvbuf_errors={} | sender_cpu={:.2}s sink_cpu={:.2}s harness_cpu={:.2}s cpu_pressure={}{}",
        r.run,
        r.offered_lines_per_sec,
        r.lines_sent,
        r.send_s,
        r.send_lines_per_sec,
        r.send_max_lag_ms,
        if r.sender_limited { ", SENDER-LIMITED" } else { "" },
        r.delivery,
        r.end_to_end_s,
        r.drain_s,
        r.usage,
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

pub fn print_udp_medians(runs: &[UdpRunReport], med: &UdpMedians) {
    println!(
        "median of {} run(s): sent {:.0} lines/s, end to end {:.0} lines/s, lost {} (max {}), {}, sender CPU {:.2}s, sink CPU {:.2}s",
        runs.len(),
        med.send_lines_per_sec,
        med.end_to_end_lines_per_sec,
        med.lost,
        med.max_lost,
        cost_verdicts(med.cpu_s_per_million_lines, med.max_peak_rss_mib),
        med.sender_cpu_s,
        med.sink_cpu_s,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_serialises_with_the_settings_beside_its_own_keys() {
        let s = UdpSummary {
            tool: "lineship-load",
            mode: "udp",
            lines: 10,
            lines_per_datagram: 10,
            senders: 2,
            workers: 1,
            receive_buffer: "64MiB",
            send_batch: 64,
            pace_us: 0,
            repeat: 3,
            settings: Settings {
                gzip_level: 1,
                batch_max_lines: 5000,
                batch_max_bytes: "1MiB",
                max_in_flight: 4,
                flush_interval: "200ms",
                compress_threads: None,
                gzip_engine: None,
            },
            offered_lines_per_sec: Some(1e6),
            median: None,
            runs: None,
            steps: None,
            max_loss_free_lines_per_sec: None,
            first_lossy_lines_per_sec: None,
            ok: true,
        };
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["repeat"], 3);
        assert_eq!(v["gzip_level"], 1);
        assert_eq!(v["offered_lines_per_sec"], 1e6);
    }
}
