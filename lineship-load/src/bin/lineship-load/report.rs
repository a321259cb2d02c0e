//! What every mode reports alike: the performance targets, the daemon's resource use in a run
//! ([`DaemonUsage`]), what arrived ([`Delivery`]), medians over runs, the JSON summary's common
//! part ([`Summary`]), and small formatting helpers.

use std::fmt;
use std::process::ExitCode;

use lineship_load::fake::Counts;
use lineship_load::seq::SeqSummary;
use serde::Serialize;

use crate::daemon::Settings;
use crate::measure::DaemonExit;

// The performance targets the README's Performance table names (stdin → gzip → HTTP sink,
// end to end; CPU cost per line; peak RSS).
pub const TARGET_LINES_PER_SEC: f64 = 2_000_000.0;
pub const TARGET_CPU_S_PER_M: f64 = 0.5;
pub const TARGET_RSS_MIB: f64 = 64.0;

/// The daemon's CPU, memory and exit in one run of `lines` lines.
#[derive(Serialize, Clone, Debug)]
pub struct DaemonUsage {
    pub daemon_cpu_s: f64,
    pub daemon_cpu_user_s: f64,
    pub daemon_cpu_sys_s: f64,
    pub cpu_s_per_million_lines: f64,
    pub peak_rss_mib: f64,
    /// Peak RSS cannot be measured below this (the spawning helper's own RSS).
    pub rss_floor_mib: f64,
    pub exit_code: i32,
    pub timed_out: bool,
}

impl DaemonUsage {
    pub fn of(exit: &DaemonExit, lines: u64) -> Self {
        DaemonUsage {
            daemon_cpu_s: exit.cpu_s(),
            daemon_cpu_user_s: exit.cpu_user_s,
            daemon_cpu_sys_s: exit.cpu_sys_s,
            cpu_s_per_million_lines: rate(exit.cpu_s(), lines as f64 / 1e6),
            peak_rss_mib: exit.peak_rss_kib as f64 / 1024.0,
            rss_floor_mib: exit.rss_floor_kib as f64 / 1024.0,
            exit_code: exit.exit_code,
            timed_out: exit.timed_out,
        }
    }

    /// Exited 0 by itself.
    pub fn clean_exit(&self) -> bool {
        self.exit_code == 0 && !self.timed_out
    }
}

impl fmt::Display for DaemonUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "daemon_cpu={:.2}s (user {:.2} sys {:.2}; {:.3} s/M lines) peak_rss={:.1} MiB (floor {:.1}) exit={}{}",
            self.daemon_cpu_s,
            self.daemon_cpu_user_s,
            self.daemon_cpu_sys_s,
            self.cpu_s_per_million_lines,
            self.peak_rss_mib,
            self.rss_floor_mib,
            self.exit_code,
            if self.timed_out { " (timed out)" } else { "" },
        )
    }
}

/// A run timed from `t0` to the sink's last write: its wall time, what arrived, and the end to
/// end rate (0 unless every line arrived).
pub struct EndToEnd {
    pub wall_s: f64,
    pub lines_per_sec: f64,
    pub delivery: Delivery,
}

impl EndToEnd {
    pub fn of(
        last_write: Option<std::time::Instant>,
        t0: std::time::Instant,
        counts: &Counts,
        lines: u64,
    ) -> Self {
        let wall_s = last_write.map_or(0.0, |t| t.saturating_duration_since(t0).as_secs_f64());
        let delivery = Delivery::of(counts, lines);
        EndToEnd {
            wall_s,
            lines_per_sec: if delivery.complete {
                rate(lines as f64, wall_s)
            } else {
                0.0
            },
            delivery,
        }
    }
}

/// What the sink saw of the `expected` lines.
#[derive(Serialize, Clone, Copy, Debug)]
pub struct Delivery {
    pub lines_received: u64,
    /// From the seq check (None without it).
    pub lost: Option<u64>,
    pub dup: Option<u64>,
    /// Every expected line arrived (by seq, or by count without the seq check).
    #[serde(skip)]
    pub complete: bool,
}

impl Delivery {
    pub fn of(counts: &Counts, expected: u64) -> Self {
        let lost = counts.seq.and_then(|s| s.lost);
        Delivery {
            lines_received: counts.lines,
            lost,
            dup: counts.seq.map(|s| s.dup),
            complete: match lost {
                Some(lost) => lost == 0,
                None => counts.lines >= expected,
            },
        }
    }

    /// Complete and without duplicates: at-least-once is the contract only across crashes, so a
    /// clean run must not duplicate.
    pub fn exact(&self) -> bool {
        self.complete && self.dup.unwrap_or(0) == 0
    }
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received={} lost={} dup={}",
            self.lines_received,
            opt_u64(self.lost),
            opt_u64(self.dup)
        )
    }
}

/// What [`Medians`] and the verdict need of a run's report.
pub trait RunOutcome {
    /// `(lines_per_sec, wall_s, usage, ok)`.
    fn outcome(&self) -> (f64, f64, &DaemonUsage, bool);
}

#[derive(Serialize)]
pub struct Medians {
    pub lines_per_sec: f64,
    pub cpu_s_per_million_lines: f64,
    pub wall_s: f64,
    pub peak_rss_mib: f64,
    pub max_peak_rss_mib: f64,
}

impl Medians {
    pub fn of<R: RunOutcome>(runs: &[R]) -> Self {
        let m = |f: fn(&R) -> f64| median(runs.iter().map(f).collect());
        let rss = |r: &R| r.outcome().2.peak_rss_mib;
        Medians {
            lines_per_sec: m(|r| r.outcome().0),
            cpu_s_per_million_lines: m(|r| r.outcome().2.cpu_s_per_million_lines),
            wall_s: m(|r| r.outcome().1),
            peak_rss_mib: m(rss),
            max_peak_rss_mib: runs.iter().map(rss).fold(0.0, f64::max),
        }
    }

    /// Prints the medians against `target_lines_per_sec` and the cost targets, and says when a
    /// run failed; returns whether every run was good.
    pub fn print<R: RunOutcome>(&self, runs: &[R], target_lines_per_sec: f64) -> bool {
        println!(
            "median of {} run(s): {:.0} lines/s [{} >= {:.0}], {}",
            runs.len(),
            self.lines_per_sec,
            verdict(self.lines_per_sec >= target_lines_per_sec),
            target_lines_per_sec,
            cost_verdicts(self.cpu_s_per_million_lines, self.max_peak_rss_mib),
        );
        let ok = runs.iter().all(|r| r.outcome().3);
        if !ok {
            println!("FAILED: some run lost lines, or lineship did not exit 0");
        }
        ok
    }
}

/// The CPU and memory targets (see the README's Performance table), judged.
pub fn cost_verdicts(cpu_s_per_million_lines: f64, max_peak_rss_mib: f64) -> String {
    format!(
        "{:.3} CPU-s per M lines [{} <= {}], peak RSS max {:.1} MiB [{} <= {}]",
        cpu_s_per_million_lines,
        verdict(cpu_s_per_million_lines <= TARGET_CPU_S_PER_M),
        TARGET_CPU_S_PER_M,
        max_peak_rss_mib,
        verdict(max_peak_rss_mib <= TARGET_RSS_MIB),
        TARGET_RSS_MIB,
    )
}

/// The last stdout line of `stdin` and `tail`: one JSON object with everything.
#[derive(Serialize)]
pub struct Summary<'a, R> {
    pub tool: &'static str,
    pub mode: &'static str,
    pub lines: u64,
    pub repeat: u32,
    #[serde(flatten)]
    pub settings: Settings<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pregenerated: Option<bool>,
    pub median: Medians,
    pub runs: &'a [R],
    pub ok: bool,
}

impl<R: Serialize> Summary<'_, R> {
    /// Prints the summary as the last line and returns the exit code for `ok`.
    pub fn print(&self) -> anyhow::Result<ExitCode> {
        println!("{}", serde_json::to_string(self)?);
        Ok(exit_code(self.ok))
    }
}

/// 0 when every run was good, 1 otherwise (2 is for the harness failing).
pub fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// `median [min–max]` of `v`, with `prec` decimals (just the value for one run).
pub fn med_range(v: &[f64], prec: usize) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    let m = median(v.to_vec());
    if v.len() == 1 {
        format!("{m:.prec$}")
    } else {
        format!("{m:.prec$} [{lo:.prec$}-{hi:.prec$}]")
    }
}

/// Sum over runs, or `?` if some run could not say.
pub fn sum_opt(v: &[Option<u64>]) -> String {
    v.iter()
        .try_fold(0u64, |acc, x| x.map(|x| acc + x))
        .map_or_else(|| "?".into(), |n| n.to_string())
}

/// A Markdown table: `head`, a `|---|` rule, then `rows`, every column padded to its widest
/// cell.
pub fn text_table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt_row = |cells: Vec<&str>| {
        let line: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |\n", line.join(" | "))
    };
    let mut out = fmt_row(head.to_vec());
    out.push_str(&fmt_row(widths.iter().map(|_| "").collect()).replace(' ', "-"));
    for r in rows {
        out.push_str(&fmt_row(r.iter().map(String::as_str).collect()));
    }
    out
}

pub fn rate(n: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        n / secs
    } else {
        0.0
    }
}

pub fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "FAIL"
    }
}

pub fn opt_u64(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

pub fn seq_line(s: &SeqSummary) -> String {
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    format!(
        "seq: unique={} dup={} lost={} gaps_in_span={} min={} max={} out_of_range={} malformed={}",
        s.unique,
        s.dup,
        opt(s.lost),
        s.gaps_in_span,
        opt(s.min),
        opt(s.max),
        s.out_of_range,
        s.malformed
    )
}

/// The lines of `table` (from [`text_table`]), checked to line up: every line as wide, the
/// second a `|---|` rule.
#[cfg(test)]
pub fn table_lines(table: &str) -> Vec<&str> {
    let lines: Vec<&str> = table.lines().collect();
    let width = lines[0].chars().count();
    assert!(lines.iter().all(|l| l.chars().count() == width), "{table}");
    assert!(
        lines[1].starts_with("|--") && !lines[1].contains(' '),
        "{table}"
    );
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn med_range_formats() {
        assert_eq!(med_range(&[], 0), "-");
        assert_eq!(med_range(&[1.26], 1), "1.3");
        assert_eq!(med_range(&[3.0, 1.0, 2.0], 0), "2 [1-3]");
        assert_eq!(med_range(&[0.5, 0.3], 2), "0.40 [0.30-0.50]");
    }
}
