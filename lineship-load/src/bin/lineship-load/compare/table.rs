//! The `compare` result: each agent's runs at a rate summarised ([`AgentSummary`]), the CPU
//! ratio per run pair, one table row per rate ([`compare_table`]), and the verdicts against
//! issue 15's targets ([`print_verdicts`]).

use serde::Serialize;

use super::run::{Agent, AgentRun};
use crate::report::{med_range, median, text_table, verdict, TARGET_RSS_MIB};

/// Issue 15: lineship spends at most 1/5 of vmagent's CPU per delivered line.
pub const TARGET_CPU_RATIO: f64 = 5.0;

/// How the ratio column is computed (printed above the table and kept in the JSON).
pub const RATIO_METHOD: &str = "vmagent's CPU-s per M delivered lines / lineship's, one ratio per run (its two agents ran back to back on the same datagrams), median [min-max] of those ratios; the target is >= 5";

/// One agent's runs at one rate.
#[derive(Serialize, Clone, Debug)]
pub struct AgentSummary {
    pub runs: usize,
    pub delivered_median: f64,
    pub lost_total: u64,
    pub dup_total: u64,
    pub socket_drops_total: u64,
    /// CPU-s per M delivered lines of each run that delivered any, and their median.
    pub cpu_s_per_million_delivered: Vec<f64>,
    pub cpu_s_per_million_delivered_median: Option<f64>,
    pub peak_rss_mib: Vec<f64>,
    pub peak_rss_mib_median: f64,
    pub peak_rss_mib_max: f64,
}

impl AgentSummary {
    pub fn of(runs: &[&AgentRun]) -> Self {
        let cpu: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.cpu_s_per_million_delivered)
            .collect();
        let rss: Vec<f64> = runs.iter().map(|r| r.peak_rss_mib).collect();
        AgentSummary {
            runs: runs.len(),
            delivered_median: median(runs.iter().map(|r| r.delivered as f64).collect()),
            lost_total: runs.iter().map(|r| r.lost).sum(),
            dup_total: runs.iter().map(|r| r.dup).sum(),
            socket_drops_total: runs.iter().map(|r| r.socket_drops).sum(),
            cpu_s_per_million_delivered_median: (!cpu.is_empty()).then(|| median(cpu.clone())),
            cpu_s_per_million_delivered: cpu,
            peak_rss_mib_median: median(rss.clone()),
            peak_rss_mib_max: rss.iter().copied().fold(0.0, f64::max),
            peak_rss_mib: rss,
        }
    }
}

/// One table row: a rate, both agents' summaries, the ratios and the verdicts.
#[derive(Serialize, Clone, Debug)]
pub struct RateSummary {
    pub offered_lines_per_sec: f64,
    pub lines_per_run: u64,
    pub lineship: AgentSummary,
    /// None when vmagent is not installed.
    pub vmagent: Option<AgentSummary>,
    /// vmagent's CPU-s per M delivered over lineship's, per run (see [`RATIO_METHOD`]).
    pub ratios: Vec<f64>,
    pub ratio_median: Option<f64>,
    /// Verdicts: lineship lost no line; the median ratio is at least [`TARGET_CPU_RATIO`]
    /// (None: not judged, without vmagent or a ratio); lineship's peak RSS stayed within
    /// [`TARGET_RSS_MIB`] in every run.
    pub lineship_lost_none: bool,
    pub ratio_met: Option<bool>,
    pub rss_met: bool,
}

/// vmagent's CPU per delivered line over lineship's, for each run both agents had at this rate
/// (paired by run number) and that gave both a value.
pub fn run_ratios(lineship: &[&AgentRun], vmagent: &[&AgentRun]) -> Vec<f64> {
    lineship
        .iter()
        .filter_map(|l| {
            let v = vmagent.iter().find(|v| v.run == l.run)?;
            let (l, v) = (
                l.cpu_s_per_million_delivered?,
                v.cpu_s_per_million_delivered?,
            );
            (l > 0.0).then(|| v / l)
        })
        .collect()
}

impl RateSummary {
    /// The row of `rate` from all `runs`.
    pub fn of(rate: f64, lines_per_run: u64, runs: &[AgentRun], with_vmagent: bool) -> Self {
        let of = |agent: Agent| -> Vec<&AgentRun> {
            runs.iter()
                .filter(|r| r.agent == agent && r.offered_lines_per_sec == rate)
                .collect()
        };
        let (ls, vm) = (of(Agent::Lineship), of(Agent::Vmagent));
        let ratios = run_ratios(&ls, &vm);
        let ratio_median = (!ratios.is_empty()).then(|| median(ratios.clone()));
        let lineship = AgentSummary::of(&ls);
        RateSummary {
            offered_lines_per_sec: rate,
            lines_per_run,
            lineship_lost_none: lineship.lost_total == 0,
            ratio_met: ratio_median.map(|r| r >= TARGET_CPU_RATIO),
            rss_met: lineship.peak_rss_mib_max <= TARGET_RSS_MIB,
            lineship,
            vmagent: with_vmagent.then(|| AgentSummary::of(&vm)),
            ratios,
            ratio_median,
        }
    }
}

/// `10k`, `1M`, `2.5k`, `500` lines/s.
pub fn short_rate(rate: f64) -> String {
    let (v, unit) = if rate >= 1e6 {
        (rate / 1e6, "M")
    } else if rate >= 1e3 {
        (rate / 1e3, "k")
    } else {
        (rate, "")
    };
    let text = format!("{v:.1}");
    format!("{}{unit}", text.strip_suffix(".0").unwrap_or(&text))
}

/// `delivered/lost/dup`: the median delivered per run, lost and dup summed over the runs.
fn delivery_cell(s: &AgentSummary) -> String {
    format!("{:.0}/{}/{}", s.delivered_median, s.lost_total, s.dup_total)
}

/// `median (max N)` of the peak RSS (just the value for one run).
fn rss_cell(s: &AgentSummary) -> String {
    if s.runs > 1 {
        format!(
            "{:.1} (max {:.1})",
            s.peak_rss_mib_median, s.peak_rss_mib_max
        )
    } else {
        format!("{:.1}", s.peak_rss_mib_median)
    }
}

/// The verdicts cell of a row.
fn verdicts_cell(r: &RateSummary) -> String {
    format!(
        "lost 0 {}, ratio>=5 {}, RSS<=64 {}",
        verdict(r.lineship_lost_none),
        r.ratio_met.map_or("n/a", verdict),
        verdict(r.rss_met)
    )
}

/// The comparison table, one row per rate.
pub fn compare_table(rows: &[RateSummary], with_vmagent: bool) -> String {
    let head = [
        "rate lines/s",
        "lines/run",
        "lineship delivered/lost/dup",
        "lineship CPU-s/M",
        "lineship RSS MiB",
        "vmagent delivered/lost/dup",
        "vmagent CPU-s/M",
        "vmagent RSS MiB",
        "ratio vmagent/lineship",
        "verdicts (lineship)",
    ];
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let l = &r.lineship;
            let vm_cells = match &r.vmagent {
                Some(v) if v.runs > 0 => [
                    delivery_cell(v),
                    med_range(&v.cpu_s_per_million_delivered, 3),
                    rss_cell(v),
                ],
                _ => {
                    let na = if with_vmagent { "-" } else { "not installed" };
                    [na.to_string(), na.to_string(), na.to_string()]
                }
            };
            let mut row = vec![
                short_rate(r.offered_lines_per_sec),
                r.lines_per_run.to_string(),
                delivery_cell(l),
                med_range(&l.cpu_s_per_million_delivered, 3),
                rss_cell(l),
            ];
            row.extend(vm_cells);
            row.push(med_range(&r.ratios, 1));
            row.push(verdicts_cell(r));
            row
        })
        .collect();
    text_table(&head, &body)
}

/// Prints the verdicts over all rates; returns `(lineship lost no line anywhere, every target
/// met)`.
pub fn print_verdicts(rows: &[RateSummary], with_vmagent: bool) -> (bool, bool) {
    let at = |pick: &dyn Fn(&RateSummary) -> Option<String>| -> String {
        rows.iter()
            .filter_map(|r| {
                Some(format!(
                    "{} {}",
                    short_rate(r.offered_lines_per_sec),
                    pick(r)?
                ))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let runs: usize = rows.iter().map(|r| r.lineship.runs).sum();
    let lost_ok = rows.iter().all(|r| r.lineship_lost_none);
    let lost_at =
        at(&|r| (!r.lineship_lost_none).then(|| format!("({} lost)", r.lineship.lost_total)));
    println!(
        "target: lineship delivers every line at every rate: {} ({})",
        verdict(lost_ok),
        if lost_ok {
            format!("0 lost in {runs} runs")
        } else {
            format!("lost at {lost_at}")
        }
    );
    let ratio_ok = with_vmagent && rows.iter().all(|r| r.ratio_met == Some(true));
    if with_vmagent {
        let below = at(&|r| match r.ratio_median {
            Some(m) if m < TARGET_CPU_RATIO => Some(format!("({m:.1})")),
            None => Some("(no ratio)".into()),
            _ => None,
        });
        println!(
            "target: lineship spends at most 1/5 of vmagent's CPU per delivered line at every rate (median ratio >= {TARGET_CPU_RATIO}): {} ({})",
            verdict(ratio_ok),
            if ratio_ok {
                format!("lowest {:.1}", rows.iter().filter_map(|r| r.ratio_median).fold(f64::INFINITY, f64::min))
            } else {
                format!("short at {below}")
            }
        );
    } else {
        println!("target: lineship spends at most 1/5 of vmagent's CPU per delivered line: NOT JUDGED (vmagent not installed)");
    }
    let rss_max = rows
        .iter()
        .map(|r| r.lineship.peak_rss_mib_max)
        .fold(0.0, f64::max);
    let rss_ok = rows.iter().all(|r| r.rss_met);
    println!(
        "target: lineship peak RSS <= {TARGET_RSS_MIB} MiB: {} (max {rss_max:.1} MiB)",
        verdict(rss_ok)
    );
    let vm_lost = at(&|r| {
        let v = r.vmagent.as_ref()?;
        (v.lost_total > 0 || v.dup_total > 0).then(|| {
            format!(
                "(lost {}, dup {}, socket drops {})",
                v.lost_total, v.dup_total, v.socket_drops_total
            )
        })
    });
    if !vm_lost.is_empty() {
        println!("note: vmagent did not deliver every line exactly once at {vm_lost}");
    }
    (lost_ok, lost_ok && ratio_ok && rss_ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::table_lines;
    use crate::report::DaemonUsage;
    use crate::udp::proc::NetCounters;
    use lineship_load::seq::SeqSummary;

    fn run(agent: Agent, rate: f64, n: u32, lost: u64, cpu: Option<f64>, rss: f64) -> AgentRun {
        AgentRun {
            agent,
            offered_lines_per_sec: rate,
            run: n,
            order: 1,
            lines_offered: 50_000,
            lines_sent: 50_000,
            send_failed_lines: 0,
            send_s: 5.0,
            send_lines_per_sec: rate,
            sender_limited: false,
            rows_expected: 150_000,
            rows_inserted: 150_000,
            complete_s: Some(5.2),
            last_rows_s: 5.2,
            seq: SeqSummary::default(),
            delivered: 50_000 - lost,
            lost,
            dup: 0,
            cpu_s: 0.0,
            cpu_s_per_million_delivered: cpu,
            peak_rss_mib: rss,
            vmhwm_before_stop_mib: Some(rss),
            lifetime: DaemonUsage {
                daemon_cpu_s: 0.0,
                daemon_cpu_user_s: 0.0,
                daemon_cpu_sys_s: 0.0,
                cpu_s_per_million_lines: 0.0,
                peak_rss_mib: rss,
                rss_floor_mib: 0.0,
                exit_code: 0,
                timed_out: false,
            },
            agent_threads_cpu_s: Vec::new(),
            sockets: Vec::new(),
            socket_drops: 0,
            net: NetCounters::default(),
            lineship: None,
            victoria_metrics_cpu_s: 0.0,
            cpu_pressure_pct: None,
            load_average: String::new(),
            ok: lost == 0,
        }
    }

    #[test]
    fn rates_read_short() {
        assert_eq!(short_rate(10_000.0), "10k");
        assert_eq!(short_rate(1_000_000.0), "1M");
        assert_eq!(short_rate(2_500.0), "2.5k");
        assert_eq!(short_rate(1_250_000.0), "1.2M");
        assert_eq!(short_rate(500.0), "500");
    }

    #[test]
    fn ratios_pair_runs_by_number() {
        let ls = [
            run(Agent::Lineship, 1e4, 1, 0, Some(0.2), 10.0),
            run(Agent::Lineship, 1e4, 2, 0, Some(0.4), 10.0),
            run(Agent::Lineship, 1e4, 3, 0, None, 10.0),
        ];
        // vmagent's runs in another order, and its run 3 delivered nothing.
        let vm = [
            run(Agent::Vmagent, 1e4, 2, 0, Some(2.0), 40.0),
            run(Agent::Vmagent, 1e4, 1, 0, Some(1.5), 40.0),
            run(Agent::Vmagent, 1e4, 3, 50_000, None, 40.0),
        ];
        let r = run_ratios(
            &ls.iter().collect::<Vec<_>>(),
            &vm.iter().collect::<Vec<_>>(),
        );
        assert_eq!(r, vec![7.5, 5.0]);
        let zero = [run(Agent::Lineship, 1e4, 1, 0, Some(0.0), 10.0)];
        assert!(run_ratios(&zero.iter().collect::<Vec<_>>(), &[&vm[1]]).is_empty());
    }

    #[test]
    fn a_rate_row_sums_loss_and_judges_the_targets() {
        let runs = vec![
            run(Agent::Lineship, 1e4, 1, 0, Some(0.2), 20.0),
            run(Agent::Vmagent, 1e4, 1, 3, Some(1.6), 50.0),
            run(Agent::Vmagent, 1e4, 2, 4, Some(0.9), 51.0),
            run(Agent::Lineship, 1e4, 2, 0, Some(0.3), 22.0),
            run(Agent::Lineship, 3e4, 1, 7, Some(0.3), 70.0),
        ];
        let r = RateSummary::of(1e4, 50_000, &runs, true);
        assert_eq!(r.lineship.runs, 2);
        assert_eq!(r.lineship.cpu_s_per_million_delivered, vec![0.2, 0.3]);
        let vm = r.vmagent.as_ref().unwrap();
        assert_eq!((vm.lost_total, vm.delivered_median), (7, 49_996.5));
        assert_eq!(vm.peak_rss_mib_max, 51.0);
        // Ratios 8 and 3: the median 5.5 meets the target.
        assert_eq!(r.ratios, vec![8.0, 3.0]);
        assert_eq!(r.ratio_median, Some(5.5));
        assert_eq!(
            (r.lineship_lost_none, r.ratio_met, r.rss_met),
            (true, Some(true), true)
        );
        let r3 = RateSummary::of(3e4, 150_000, &runs, true);
        assert_eq!(
            (r3.lineship_lost_none, r3.ratio_met, r3.rss_met),
            (false, None, false)
        );
        let alone = RateSummary::of(1e4, 50_000, &runs, false);
        assert!(alone.vmagent.is_none());
    }

    #[test]
    fn the_table_lines_up_and_says_what_is_missing() {
        let runs = vec![
            run(Agent::Lineship, 1e4, 1, 0, Some(0.2), 20.0),
            run(Agent::Vmagent, 1e4, 1, 0, Some(1.6), 50.0),
            run(Agent::Lineship, 1e4, 2, 0, Some(0.3), 22.0),
            run(Agent::Vmagent, 1e4, 2, 0, Some(1.2), 48.0),
            run(Agent::Lineship, 1e6, 1, 12, Some(0.25), 30.0),
        ];
        let rows = [
            RateSummary::of(1e4, 50_000, &runs, true),
            RateSummary::of(1e6, 5_000_000, &runs, true),
        ];
        let t = compare_table(&rows, true);
        let lines = table_lines(&t);
        assert_eq!(lines.len(), 4, "{t}");
        let cells: Vec<&str> = lines[2].split('|').map(str::trim).collect();
        assert_eq!(
            &cells[1..11],
            [
                "10k",
                "50000",
                "50000/0/0",
                "0.250 [0.200-0.300]",
                "21.0 (max 22.0)",
                "50000/0/0",
                "1.400 [1.200-1.600]",
                "49.0 (max 50.0)",
                "6.0 [4.0-8.0]",
                "lost 0 PASS, ratio>=5 PASS, RSS<=64 PASS",
            ],
            "{t}"
        );
        // A rate vmagent has no run at: its cells are empty and the ratio is not judged.
        let cells: Vec<&str> = lines[3].split('|').map(str::trim).collect();
        assert_eq!(cells[3], "49988/12/0", "{t}");
        assert_eq!(cells[6], "-", "{t}");
        assert_eq!(cells[9], "-", "{t}");
        assert_eq!(cells[10], "lost 0 FAIL, ratio>=5 n/a, RSS<=64 PASS", "{t}");

        let alone = [RateSummary::of(1e4, 50_000, &runs, false)];
        let t = compare_table(&alone, false);
        assert_eq!(t.matches("not installed").count(), 3, "{t}");
    }
}
