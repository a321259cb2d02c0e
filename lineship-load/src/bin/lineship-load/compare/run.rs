//! One agent's run of `compare`: a fresh VictoriaMetrics, the agent on a free UDP port in front
//! of it, the rate's datagrams sent, delivery awaited and counted, everything stopped.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use lineship_load::seq::SeqSummary;
use serde::Serialize;

use super::CompareArgs;
use crate::daemon::{in_run_dir, write_run_config};
use crate::daemon_log::{DaemonCounters, Logged};
use crate::measure::{pid_cpu_s, pid_peak_rss_kib, threads_cpu_s, DaemonExit, Measured};
use crate::report::{opt_u64, rate, DaemonUsage};
use crate::run::{load_average, CpuPressure};
use crate::udp::proc::{proc_udp_port, NetCounters, ProcUdpSocket};
use crate::udp::run::{wait_udp_ready, READY_TIMEOUT, SENDER_LIMITED_SHARE};
use crate::udp::send::{free_udp_port, SenderSlice, SenderStats};
use crate::victoria::{start_vmagent, wait_healthy, VictoriaMetrics};

/// How long an agent gets to exit after SIGTERM before it gets SIGTERM again, and SIGKILL 10 s
/// after that.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The agent a run drives.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Agent {
    Lineship,
    Vmagent,
}

impl Agent {
    pub fn name(self) -> &'static str {
        match self {
            Agent::Lineship => "lineship",
            Agent::Vmagent => "vmagent",
        }
    }

    /// The `type` of VictoriaMetrics' `vm_rows_inserted_total` for what this agent sends it:
    /// lineship writes line protocol to `/api/v2/write`, vmagent forwards remote write.
    pub fn rows_kind(self) -> &'static str {
        match self {
            Agent::Lineship => "influx",
            Agent::Vmagent => "promremotewrite",
        }
    }
}

/// What one rate sends, the same to every agent and run.
pub struct RateInput<'a> {
    pub slices: &'a [SenderSlice],
    pub rate: f64,
    pub lines: u64,
    pub rows_expected: u64,
}

#[derive(Serialize, Clone, Debug)]
pub struct AgentRun {
    pub agent: Agent,
    pub offered_lines_per_sec: f64,
    pub run: u32,
    /// 1 when this agent went first in its run, 2 when second.
    pub order: usize,
    pub lines_offered: u64,
    pub lines_sent: u64,
    /// Lines in datagrams the kernel refused to send (nothing listening).
    pub send_failed_lines: u64,
    /// From the schedule's start to the end of the last send.
    pub send_s: f64,
    pub send_lines_per_sec: f64,
    pub sender_limited: bool,
    pub rows_expected: u64,
    /// `vm_rows_inserted_total` for the agent's protocol when the wait for delivery ended.
    pub rows_inserted: u64,
    /// From the schedule's start until VictoriaMetrics had every row (None: it never did).
    pub complete_s: Option<f64>,
    /// From the schedule's start to the last change of the row count: the CPU window's end.
    pub last_rows_s: f64,
    /// The seq check over every exported `*_seq` sample, against the lines offered.
    pub seq: SeqSummary,
    /// Distinct expected lines found in VictoriaMetrics; lines offered and never found; extra
    /// copies.
    pub delivered: u64,
    pub lost: u64,
    pub dup: u64,
    /// The agent's CPU seconds from just before the first datagram to the row count's last
    /// change, and that per million lines delivered (None when none was).
    pub cpu_s: f64,
    pub cpu_s_per_million_delivered: Option<f64>,
    /// The agent's peak RSS over its whole life (wait4), and its VmHWM just before the stop.
    pub peak_rss_mib: f64,
    pub vmhwm_before_stop_mib: Option<f64>,
    /// Start to exit, from wait4 (CPU per million lines sent).
    pub lifetime: DaemonUsage,
    /// CPU seconds of the agent's threads by name, start to just before the stop, busiest first.
    pub agent_threads_cpu_s: Vec<(String, f64)>,
    /// The agent's sockets on the port in /proc/net/udp just before the stop, and their drops.
    pub sockets: Vec<ProcUdpSocket>,
    pub socket_drops: u64,
    /// Machine-wide network counters over the run.
    pub net: NetCounters,
    /// lineship's own counters from its final summary line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lineship: Option<DaemonCounters>,
    /// CPU seconds of this run's VictoriaMetrics (ingesting, the export), on the same cores.
    pub victoria_metrics_cpu_s: f64,
    /// Share of the run during which some task on the machine waited for a CPU.
    pub cpu_pressure_pct: Option<f64>,
    /// /proc/loadavg (1, 5, 15 min) when the run started.
    pub load_average: String,
    /// Every line delivered exactly once and the agent exited 0.
    pub ok: bool,
}

/// CPU seconds per million of `delivered` lines (None when none was).
pub fn per_million(cpu_s: f64, delivered: u64) -> Option<f64> {
    (delivered > 0).then(|| cpu_s / delivered as f64 * 1e6)
}

/// A running agent.
enum Running {
    Lineship(Logged),
    Vmagent { agent: Measured, http: SocketAddr },
}

impl Running {
    fn pid(&self) -> libc::pid_t {
        match self {
            Running::Lineship(l) => l.daemon.pid,
            Running::Vmagent { agent, .. } => agent.pid,
        }
    }

    /// Waits until the agent started at `t_spawn` has bound `port` (lineship with `workers`
    /// sockets, vmagent with one) and is ready: lineship has logged that it started, vmagent
    /// answers `/health`.
    fn wait_ready(&mut self, port: u16, workers: u32, t_spawn: Instant) -> Result<()> {
        match self {
            Running::Lineship(l) => wait_udp_ready(l, port, workers, t_spawn),
            Running::Vmagent { agent, http } => {
                wait_healthy(*http, "vmagent", || agent.has_exited())?;
                while proc_udp_port(port).is_empty() {
                    ensure!(!agent.has_exited(), "vmagent exited before it was ready");
                    ensure!(
                        t_spawn.elapsed() < READY_TIMEOUT,
                        "vmagent did not bind UDP 127.0.0.1:{port} within {READY_TIMEOUT:?} (-influxListenAddr)"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(())
            }
        }
    }

    /// SIGTERM, then the exit (see [`STOP_TIMEOUT`]), and lineship's final counters.
    fn stop(self) -> (Result<DaemonExit>, Option<DaemonCounters>) {
        match self {
            Running::Lineship(l) => {
                let (exit, counters) = l.stop(STOP_TIMEOUT);
                (exit, Some(counters))
            }
            Running::Vmagent { agent, .. } => {
                agent.signal(libc::SIGTERM);
                (agent.wait(STOP_TIMEOUT), None)
            }
        }
    }
}

/// What is learnt while the agent runs.
struct Phase {
    senders: Vec<SenderStats>,
    cpu_s: f64,
    last_rows_s: f64,
    rows: u64,
    complete_s: Option<f64>,
    sockets: Vec<ProcUdpSocket>,
    threads: Vec<(String, f64)>,
    vmhwm_kib: Option<u64>,
}

/// Which agent a run drives, in which repeat, and whether it went first (1) or second (2).
#[derive(Clone, Copy)]
pub struct Turn {
    pub agent: Agent,
    pub run: u32,
    pub order: usize,
}

/// Runs an agent once on `input` in a fresh directory, removed afterwards unless
/// `--keep-config`.
pub fn run_agent(
    a: &CompareArgs,
    lineship: &Path,
    input: &RateInput,
    turn: Turn,
) -> Result<AgentRun> {
    let what = format!(
        "{} and VictoriaMetrics data, config and logs",
        turn.agent.name()
    );
    in_run_dir(turn.run, a.d.keep_config, &what, |dir| {
        run_in(a, lineship, input, turn, dir)
    })
}

fn run_in(
    a: &CompareArgs,
    lineship: &Path,
    input: &RateInput,
    Turn { agent, run, order }: Turn,
    dir: &Path,
) -> Result<AgentRun> {
    let load_average = load_average();
    let pressure = CpuPressure::start();
    let net_before = NetCounters::read();
    let vm = VictoriaMetrics::start(&a.vm.victoria_metrics_bin, dir)?;
    let port = free_udp_port()?;
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let t_spawn = Instant::now();
    let mut running = match agent {
        Agent::Lineship => {
            let log_level = a.d.log_level.as_deref().unwrap_or("info");
            let input_section = a.u.input_section(port);
            let config = write_run_config(&a.d, dir, vm.addr, log_level, &input_section)?;
            Running::Lineship(Logged::spawn(lineship, &config)?)
        }
        Agent::Vmagent => {
            let flag = format!("-influxListenAddr={target}");
            let (agent, http) = start_vmagent(&a.vm.vmagent_bin, dir, vm.addr, &[flag])?;
            Running::Vmagent { agent, http }
        }
    };

    // From ready to delivered; the agent is stopped and reaped whatever happens.
    let phase = (|| -> Result<Phase> {
        running.wait_ready(port, a.u.workers, t_spawn)?;
        let pid = running.pid();
        let deadline = Instant::now() + Duration::from_secs(a.d.timeout_secs);
        let cpu_before = pid_cpu_s(pid);
        let (t0, senders) = a.u.send(input.slices, target, input.rate)?;
        // Delivery stops at the row count's last change: the agent's CPU is read there.
        let mut last = (t0, cpu_before);
        let idle = Duration::from_secs_f64(a.idle_secs.max(0.1));
        let w = vm.wait_rows(
            agent.rows_kind(),
            input.rows_expected,
            idle,
            deadline,
            |_| last = (Instant::now(), pid_cpu_s(pid)),
        )?;
        let since_t0 = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
        Ok(Phase {
            senders,
            cpu_s: last.1 - cpu_before,
            last_rows_s: since_t0(last.0),
            rows: w.rows,
            complete_s: w.complete_at.map(since_t0),
            sockets: proc_udp_port(port),
            threads: threads_cpu_s(pid),
            vmhwm_kib: pid_peak_rss_kib(pid),
        })
    })();
    let (exit, lineship_counters) = running.stop();
    let phase = phase?;
    let exit = exit?;
    let seq = vm.seq_summary(a.gen.start, input.lines)?;
    let victoria_metrics_cpu_s = vm.cpu_s();
    drop(vm);
    let net = NetCounters::read().since(&net_before);
    let cpu_pressure_pct = pressure.pct();

    let Phase {
        senders,
        cpu_s,
        last_rows_s,
        rows,
        complete_s,
        sockets,
        threads,
        vmhwm_kib,
    } = phase;
    let lines_sent: u64 = senders.iter().map(|s| s.lines).sum();
    let send_s = senders.iter().map(|s| s.last_send_ns).max().unwrap_or(0) as f64 / 1e9;
    let send_lines_per_sec = rate(lines_sent as f64, send_s);
    let lost = seq.lost.unwrap_or(input.lines);
    let delivered = input.lines - lost;
    let lifetime = DaemonUsage::of(&exit, lines_sent);
    Ok(AgentRun {
        agent,
        offered_lines_per_sec: input.rate,
        run,
        order,
        lines_offered: input.lines,
        lines_sent,
        send_failed_lines: senders.iter().map(|s| s.failed_lines).sum(),
        send_s,
        send_lines_per_sec,
        sender_limited: send_lines_per_sec < input.rate * SENDER_LIMITED_SHARE,
        rows_expected: input.rows_expected,
        rows_inserted: rows,
        complete_s,
        last_rows_s,
        seq,
        delivered,
        lost,
        dup: seq.dup,
        cpu_s,
        cpu_s_per_million_delivered: per_million(cpu_s, delivered),
        peak_rss_mib: lifetime.peak_rss_mib,
        vmhwm_before_stop_mib: vmhwm_kib.map(|k| k as f64 / 1024.0),
        ok: lost == 0 && seq.dup == 0 && lifetime.clean_exit(),
        lifetime,
        agent_threads_cpu_s: threads,
        socket_drops: sockets.iter().map(|s| s.drops).sum(),
        sockets,
        net,
        lineship: lineship_counters,
        victoria_metrics_cpu_s,
        cpu_pressure_pct,
        load_average,
    })
}

/// The run's one line on stdout.
pub fn print_run(r: &AgentRun, of: u32) {
    println!(
        "rate {:.0} run {}/{of} {} ({}): sent {} lines in {:.2}s ({:.0} lines/s{}); VictoriaMetrics rows {}/{}{}; delivered {} lost {} dup {}; CPU {:.3}s to the last row ({:.2}s) = {} CPU-s per M delivered; peak RSS {:.1} MiB; socket drops {}{}; exit {}; VictoriaMetrics CPU {:.2}s; cpu_pressure {}{}",
        r.offered_lines_per_sec,
        r.run,
        r.agent.name(),
        if r.order == 1 { "first" } else { "second" },
        r.lines_sent,
        r.send_s,
        r.send_lines_per_sec,
        if r.sender_limited { ", SENDER-LIMITED" } else { "" },
        r.rows_inserted,
        r.rows_expected,
        r.complete_s
            .map_or_else(String::new, |s| format!(" after {s:.2}s")),
        r.delivered,
        r.lost,
        r.dup,
        r.cpu_s,
        r.last_rows_s,
        r.cpu_s_per_million_delivered
            .map_or_else(|| "-".into(), |v| format!("{v:.3}")),
        r.peak_rss_mib,
        r.socket_drops,
        r.lineship.as_ref().map_or_else(String::new, |c| format!(
            " (lineship: udp_kernel_drops {}, dropped {})",
            opt_u64(c.udp_kernel_drops),
            opt_u64(c.dropped)
        )),
        r.lifetime.exit_code,
        r.victoria_metrics_cpu_s,
        r.cpu_pressure_pct
            .map_or_else(|| "-".into(), |p| format!("{p:.0}%")),
        if r.ok { "" } else { "  << NOT EVERY LINE EXACTLY ONCE" },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_million_delivered_lines() {
        assert_eq!(per_million(0.5, 1_000_000), Some(0.5));
        let v = per_million(0.012, 50_000).unwrap();
        assert!((v - 0.24).abs() < 1e-12, "{v}");
        assert_eq!(per_million(1.0, 0), None);
    }

    #[test]
    fn agents_are_counted_by_their_protocol() {
        assert_eq!(Agent::Lineship.rows_kind(), "influx");
        assert_eq!(Agent::Vmagent.rows_kind(), "promremotewrite");
        assert_eq!(
            serde_json::to_value(Agent::Vmagent).unwrap(),
            serde_json::json!("vmagent")
        );
    }
}
