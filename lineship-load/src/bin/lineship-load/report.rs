//! What every mode reports alike: the DESIGN.md targets, medians and rates, verdicts, and the
//! one-line rendering of a sequence-number summary.

use lineship_load::seq::SeqSummary;
use serde::Serialize;

// Performance targets from DESIGN.md ("stdin → gzip → HTTP sink, end to end" and "CPU cost").
pub const TARGET_LINES_PER_SEC: f64 = 2_000_000.0;

pub const TARGET_CPU_S_PER_M: f64 = 0.5;

pub const TARGET_RSS_MIB: f64 = 64.0;

#[derive(Serialize)]
pub struct Medians {
    pub lines_per_sec: f64,
    pub cpu_s_per_million_lines: f64,
    pub wall_s: f64,
    pub peak_rss_mib: f64,
    pub max_peak_rss_mib: f64,
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
