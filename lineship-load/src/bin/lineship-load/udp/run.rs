//! One UDP run: start the daemon with one `[[input.udp]]` on a free port of 127.0.0.1, wait until
//! it is bound and started, send every slice at the offered rate, wait for the sink, stop the
//! daemon, and explain any loss from the counters.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use lineship_load::fake::Counts;
use serde::Serialize;

use super::proc::{cpu_pressure_us, proc_udp_port, NetCounters, ProcUdpSocket};
use super::send::{free_udp_port, SenderSlice, SenderStats};
use super::UdpArgs;
use crate::daemon::toml_str;
use crate::daemon_log::{DaemonCounters, Logged};
use crate::measure::threads_cpu_s;
use crate::report::{rate, DaemonUsage, Delivery};
use crate::run::{wait_for_sink, HarnessCpu, RunSetup};

/// How long a UDP run waits for the daemon to bind its port and start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Once the port is bound, how long to wait for the "lineship started" log line before sending
/// anyway (it never comes when the log level hides info).
pub const READY_GRACE: Duration = Duration::from_millis(500);

/// A run whose senders achieved less than this share of the offered rate was sender-limited.
pub const SENDER_LIMITED_SHARE: f64 = 0.97;

pub fn udp_input_section(port: u16, receive_buffer: &str, workers: u32) -> String {
    format!(
        "[[input.udp]]\nlisten = \"127.0.0.1:{port}\"\nreceive_buffer = {}\nworkers = {workers}\n\n[input.stdin]\nenabled = false",
        toml_str(receive_buffer)
    )
}

/// Waits until the daemon spawned at `t_spawn` has `workers` sockets bound to 127.0.0.1:`port`
/// and has logged that it started (or [`READY_GRACE`] has passed since the port was bound);
/// fails if it exits first or takes longer than [`READY_TIMEOUT`].
pub fn wait_udp_ready(
    logged: &mut Logged,
    port: u16,
    workers: u32,
    t_spawn: Instant,
) -> Result<()> {
    let mut bound_at: Option<Instant> = None;
    loop {
        ensure!(
            !logged.daemon.has_exited(),
            "lineship exited before it was ready"
        );
        let started = logged.started();
        if bound_at.is_none() && proc_udp_port(port).len() >= workers as usize {
            bound_at = Some(Instant::now());
        }
        match bound_at {
            Some(t) if started || t.elapsed() >= READY_GRACE => return Ok(()),
            _ => {}
        }
        ensure!(
            t_spawn.elapsed() < READY_TIMEOUT,
            "lineship did not bind 127.0.0.1:{port} within {READY_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct UdpRunReport {
    pub run: u32,
    pub offered_lines_per_sec: f64,
    pub lines_offered: u64,
    pub lines_sent: u64,
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    /// Lines in datagrams the kernel refused to send (nothing listening).
    pub send_failed_lines: u64,
    /// From the schedule's start to the end of the last send.
    pub send_s: f64,
    pub send_lines_per_sec: f64,
    /// Worst lateness of a sender wake-up against the schedule, and wake-ups over 1 ms late.
    pub send_max_lag_ms: f64,
    pub send_late_wakeups: u64,
    pub sender_limited: bool,
    #[serde(flatten)]
    pub delivery: Delivery,
    /// From the schedule's start to the sink's last write, and from the end of sending to it.
    pub end_to_end_s: f64,
    pub drain_s: f64,
    #[serde(flatten)]
    pub usage: DaemonUsage,
    /// Share of the run during which some task on the machine waited for a CPU
    /// (/proc/pressure/cpu): how contended the machine was.
    pub cpu_pressure_pct: Option<f64>,
    /// The daemon's sockets in /proc/net/udp just before it was stopped.
    pub sockets: Vec<ProcUdpSocket>,
    /// CPU seconds of the daemon's threads by name just before it was stopped, busiest first
    /// (`lineship-udp`: receive threads; `lineship-batcher`: batching and gzip; `lineship-io`:
    /// HTTP and the rest).
    pub daemon_threads_cpu_s: Vec<(String, f64)>,
    pub daemon: DaemonCounters,
    pub net: NetCounters,
    pub senders: Vec<SenderStats>,
    pub sender_cpu_s: f64,
    pub sink_cpu_s: f64,
    pub harness_cpu_s: f64,
    pub sink: Counts,
    /// Where lines were lost, when they were.
    pub loss_causes: Vec<String>,
    pub ok: bool,
}

/// What a UDP run learns while the daemon runs.
pub struct SendPhase {
    /// The senders' schedule start.
    pub t0: Instant,
    pub senders: Vec<SenderStats>,
    /// Read just before the daemon is stopped.
    pub sockets: Vec<ProcUdpSocket>,
    pub daemon_threads: Vec<(String, f64)>,
}

/// Runs the daemon with a UDP input once and sends it all of `slices` at `rate` lines/s.
pub fn run_udp(
    a: &UdpArgs,
    lineship: &Path,
    slices: &[SenderSlice],
    offered: f64,
    run: u32,
) -> Result<UdpRunReport> {
    let lines_offered: u64 = slices.iter().map(|s| s.lines).sum();
    let port = free_udp_port()?;
    let target: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
    let log_level = a.d.log_level.as_deref().unwrap_or("info");
    let setup = RunSetup::new(&a.d, run, log_level, |_| Ok(a.u.input_section(port)))?;
    let sink = &setup.sink;

    let net_before = NetCounters::read();
    let (pressure_before, t_run) = (cpu_pressure_us(), Instant::now());
    let cpu = HarnessCpu::start();
    let mut logged = Logged::spawn(lineship, &setup.config)?;

    // Everything between start and stop; the daemon is stopped and reaped whatever happens.
    let t_spawn = Instant::now();
    let phase = (|| -> Result<SendPhase> {
        wait_udp_ready(&mut logged, port, a.u.workers, t_spawn)?;
        let (t0, senders) = a.u.send(slices, target, offered)?;
        let sent: u64 = senders.iter().map(|s| s.lines).sum();
        wait_for_sink(
            sink,
            &mut logged.daemon,
            sent,
            Duration::from_secs_f64(a.idle_secs.max(0.1)),
            Instant::now() + Duration::from_secs(a.d.timeout_secs),
            Duration::from_millis(20),
            || {},
        );
        Ok(SendPhase {
            t0,
            senders,
            sockets: proc_udp_port(port),
            daemon_threads: threads_cpu_s(logged.daemon.pid),
        })
    })();
    let (exit, daemon_counters) = logged.stop(Duration::from_secs(a.d.timeout_secs));
    let (harness_cpu_s, sink_cpu_s) = cpu.since();
    let net = NetCounters::read().since(&net_before);
    let cpu_pressure_pct = match (pressure_before, cpu_pressure_us()) {
        (Some(b), Some(a)) => Some(rate(
            a.saturating_sub(b) as f64 / 1e4,
            t_run.elapsed().as_secs_f64(),
        )),
        _ => None,
    };
    let snap = sink.fake.counts(Some((a.gen.start, lines_offered)));
    setup.finish(&a.d);
    let exit = exit?;
    let SendPhase {
        t0,
        senders,
        sockets,
        daemon_threads,
    } = phase?;

    let sum = |f: fn(&SenderStats) -> u64| senders.iter().map(f).sum::<u64>();
    let lines_sent = sum(|s| s.lines);
    // Times are from the schedule's start, when the first datagram is due.
    let send_s = senders.iter().map(|s| s.last_send_ns).max().unwrap_or(0) as f64 / 1e9;
    let send_lines_per_sec = rate(lines_sent as f64, send_s);
    let end_to_end_s = sink
        .fake
        .last_write_at()
        .map_or(0.0, |t| t.saturating_duration_since(t0).as_secs_f64());
    let delivery = Delivery::of(&snap, lines_offered);
    let Delivery { lost, dup, .. } = delivery;
    let lost_n = lost.unwrap_or_else(|| lines_offered.saturating_sub(snap.lines));
    let socket_drops: u64 = sockets.iter().map(|s| s.drops).sum();
    let mut loss_causes = Vec::new();
    if lost_n > 0 {
        let failed = sum(|s| s.failed_lines);
        if failed > 0 {
            loss_causes.push(format!(
                "{failed} lines refused at send (nothing listening)"
            ));
        }
        if socket_drops > 0 || daemon_counters.udp_kernel_drops.unwrap_or(0) > 0 {
            loss_causes.push(format!(
                "socket receive buffer full: {socket_drops} datagrams dropped by the kernel (daemon counted {}); the receive thread fell behind",
                daemon_counters.udp_kernel_drops.map_or("?".into(), |v| v.to_string())
            ));
        }
        if daemon_counters.dropped.unwrap_or(0) > 0 {
            loss_causes.push(format!(
                "daemon dropped {} lines ({}): the pipeline behind the receive thread fell behind",
                daemon_counters.dropped.unwrap_or(0),
                daemon_counters.dropped_by_reason.as_deref().unwrap_or("")
            ));
        }
        if net.softnet_dropped > 0 {
            loss_causes.push(format!(
                "{} packets dropped from a full CPU backlog (net.core.netdev_max_backlog; machine-wide)",
                net.softnet_dropped
            ));
        }
        if loss_causes.is_empty() {
            loss_causes.push("no counter explains it".into());
        }
    }
    let usage = DaemonUsage::of(&exit, lines_sent);
    let ok = lost_n == 0 && dup.unwrap_or(0) == 0 && usage.clean_exit();
    Ok(UdpRunReport {
        run,
        offered_lines_per_sec: offered,
        lines_offered,
        lines_sent,
        datagrams_sent: sum(|s| s.datagrams),
        bytes_sent: sum(|s| s.bytes),
        send_failed_lines: sum(|s| s.failed_lines),
        send_s,
        send_lines_per_sec,
        send_max_lag_ms: senders.iter().map(|s| s.max_lag_ns).max().unwrap_or(0) as f64 / 1e6,
        send_late_wakeups: sum(|s| s.late_wakeups),
        sender_limited: send_lines_per_sec < offered * SENDER_LIMITED_SHARE,
        delivery,
        end_to_end_s,
        drain_s: (end_to_end_s - send_s).max(0.0),
        usage,
        cpu_pressure_pct,
        sockets,
        daemon_threads_cpu_s: daemon_threads,
        daemon: daemon_counters,
        net,
        sender_cpu_s: senders.iter().map(|s| s.cpu_s).sum(),
        senders,
        sink_cpu_s,
        harness_cpu_s,
        sink: snap,
        loss_causes,
        ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::example_config;

    #[test]
    fn udp_config_is_valid_toml() {
        let input = udp_input_section(8089, "64MiB", 2);
        let c = example_config("info", &input, "/tmp/state");
        let v: toml::Value = toml::from_str(&c).unwrap();
        let udp = &v["input"]["udp"][0];
        assert_eq!(udp["listen"].as_str(), Some("127.0.0.1:8089"));
        assert_eq!(udp["receive_buffer"].as_str(), Some("64MiB"));
        assert_eq!(udp["workers"].as_integer(), Some(2));
        assert_eq!(v["input"]["stdin"]["enabled"].as_bool(), Some(false));
    }
}
