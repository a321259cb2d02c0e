//! What `lineship --stdin` shows an operator replaying a backlog: a progress bar on stderr while
//! it runs (only when stderr is a terminal: pipes, journald and CI get no bar and no escape
//! codes), and one summary line at the end of every run.
//!
//! The bar reads the counters in [`Stats`] a few times a second from its own thread; the
//! pipeline does not know it exists. When stdin is a regular file (`< backlog.lp`), it shows the
//! bytes read of the file's size; otherwise a spinner.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::app::Report;
use crate::config::LogFormat;
use crate::telemetry::Stats;

/// How often the bar is redrawn.
const TICK: Duration = Duration::from_millis(200);

/// The counters the bar and the summary show.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    pub read: u64,
    pub delivered: u64,
    pub invalid: u64,
    pub spooled: u64,
}

/// The bar's message: rate, delivered, invalid, in the spool.
pub fn bar_message(f: Figures, elapsed: Duration) -> String {
    format!(
        "{} lines/s · delivered {} · invalid {} · spool {}",
        rate(f.read, elapsed),
        f.delivered,
        f.invalid,
        f.spooled
    )
}

fn rate(lines: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        (lines as f64 / secs) as u64
    } else {
        0
    }
}

/// What an exit code of `lineship --stdin` means.
pub fn exit_meaning(code: u8) -> &'static str {
    match code {
        0 => "everything read was delivered",
        65 => "some lines were invalid or refused by the server (see the dead-letter file); the rest was delivered",
        75 => "some data was not delivered: it waits in the spool for the next run (or was lost, see the errors above)",
        2 => "bad config or usage",
        _ => "lineship failed (see the error above)",
    }
}

/// The one line every `--stdin` run ends with.
pub fn summary_line(report: &Report, elapsed: Duration, rejected: &Path, code: u8) -> String {
    let invalid = report.lines_invalid + report.lines_dead_lettered + report.lines_partial_dropped;
    // With several outputs, each output's count: every line goes to each.
    let delivered = if report.outputs.len() > 1 {
        let each: Vec<String> = report
            .outputs
            .iter()
            .map(|o| format!("{} to {}", o.lines_delivered, o.name))
            .collect();
        each.join(", ")
    } else {
        report.lines_delivered.to_string()
    };
    let mut s = format!(
        "lineship: read {} lines, delivered {delivered}, invalid {}",
        report.lines_received + report.lines_invalid,
        invalid
    );
    if invalid > 0 {
        s.push_str(&format!(" (in {})", rejected.display()));
    }
    s.push_str(&format!(", left in the spool {}", report.lines_spooled));
    let lost = report.lines_undelivered + report.lines_spool_dropped + report.lines_dropped;
    if lost > 0 {
        s.push_str(&format!(", LOST {lost}"));
    }
    s.push_str(&format!(
        "; {:.1}s, {} lines/s; exit {code}: {}",
        elapsed.as_secs_f64(),
        rate(report.lines_received + report.lines_invalid, elapsed),
        exit_meaning(code)
    ));
    s
}

/// The summary line as written to stderr, in the shape of the other log lines: plain text; under
/// journald (`journald`), led by its level like the log lines there; in JSON, an object with
/// the same fields as a JSON log line, plus `exit_code`.
pub fn summary_output(line: &str, code: u8, format: LogFormat, journald: bool) -> String {
    match format {
        LogFormat::Json => serde_json::json!({
            "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            "level": "INFO",
            "fields": { "message": line, "exit_code": code },
            "target": "lineship",
        })
        .to_string(),
        LogFormat::Text if journald => format!("INFO {line}"),
        LogFormat::Text => line.to_owned(),
    }
}

/// A bar over `what` bytes for a one-shot command (`lineship spool verify`), on stderr when it
/// is a terminal; `None` otherwise.
pub fn bytes_bar(what: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(5))
        .with_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} {what} [{{bar:30}}] {{bytes}}/{{total_bytes}} ({{bytes_per_sec}}, {{eta}})"
            ))
            .expect("a valid template")
            .progress_chars("=> "),
        );
    Some(bar)
}

/// The size of stdin when it is a regular file.
fn stdin_file_size() -> Option<u64> {
    let meta = std::fs::metadata("/proc/self/fd/0").ok()?;
    meta.is_file().then_some(meta.len())
}

/// A progress bar on stderr, drawn from its own thread until [`Bar::finish`].
pub struct Bar {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bar {
    /// Starts the bar if stderr is a terminal; `None` otherwise.
    pub fn start(stats: Arc<Stats>) -> Option<Bar> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = match stdin_file_size() {
            Some(len) => ProgressBar::new(len).with_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] [{bar:30}] {bytes}/{total_bytes} ({eta}) {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bytes} read {msg}")
                    .expect("a valid template"),
            ),
        };
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(5));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("lineship-progress".into())
                .spawn(move || {
                    let started = Instant::now();
                    while !stop.load(Relaxed) {
                        let f = figures(&stats);
                        bar.set_position(stats.inputs_sum(|i| i.bytes.load(Relaxed)));
                        bar.set_message(bar_message(f, started.elapsed()));
                        bar.tick();
                        std::thread::sleep(TICK);
                    }
                    bar.finish_and_clear();
                })
                .ok()?
        };
        Some(Bar {
            stop,
            thread: Some(thread),
        })
    }

    /// Clears the bar (the summary line follows).
    pub fn finish(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn figures(stats: &Stats) -> Figures {
    Figures {
        read: stats.lines_received() + stats.lines_invalid(),
        delivered: stats.outputs_sum(|o| o.lines_delivered.load(Relaxed)),
        invalid: stats.lines_invalid(),
        spooled: stats.outputs_sum(|o| o.spool_sum(|s| &s.lines)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_takes_the_shape_of_the_log() {
        assert_eq!(
            summary_output("lineship: x", 0, LogFormat::Text, false),
            "lineship: x"
        );
        assert_eq!(
            summary_output("lineship: x", 0, LogFormat::Text, true),
            "INFO lineship: x"
        );
        let v: serde_json::Value =
            serde_json::from_str(&summary_output("lineship: x", 65, LogFormat::Json, false))
                .unwrap();
        assert_eq!(v["fields"]["message"], "lineship: x");
        assert_eq!(v["fields"]["exit_code"], 65);
        assert!(v["timestamp"].is_string());
    }

    #[test]
    fn the_bar_message_gives_rate_and_counts() {
        let f = Figures {
            read: 5000,
            delivered: 4000,
            invalid: 3,
            spooled: 7,
        };
        assert_eq!(
            bar_message(f, Duration::from_secs(2)),
            "2500 lines/s · delivered 4000 · invalid 3 · spool 7"
        );
        assert!(bar_message(f, Duration::ZERO).starts_with("0 lines/s"));
    }

    #[test]
    fn the_summary_names_counts_the_rejected_file_and_the_exit_code() {
        let report = Report {
            lines_received: 998,
            lines_invalid: 2,
            lines_delivered: 998,
            ..Default::default()
        };
        let s = summary_line(
            &report,
            Duration::from_secs(2),
            Path::new("/var/lib/lineship/rejected/rejected.lp"),
            65,
        );
        assert_eq!(
            s,
            "lineship: read 1000 lines, delivered 998, invalid 2 (in /var/lib/lineship/rejected/rejected.lp), left in the spool 0; 2.0s, 500 lines/s; exit 65: some lines were invalid or refused by the server (see the dead-letter file); the rest was delivered"
        );
        let clean = Report {
            lines_received: 10,
            lines_delivered: 10,
            ..Default::default()
        };
        let s = summary_line(&clean, Duration::from_millis(500), Path::new("/x"), 0);
        assert!(s.contains("invalid 0,") && !s.contains("/x"), "{s}");
        assert!(s.ends_with("exit 0: everything read was delivered"), "{s}");
        let lost = Report {
            lines_received: 10,
            lines_spooled: 4,
            lines_undelivered: 1,
            ..Default::default()
        };
        let s = summary_line(&lost, Duration::from_secs(1), Path::new("/x"), 75);
        assert!(s.contains("left in the spool 4, LOST 1;"), "{s}");
    }

    #[test]
    fn with_several_outputs_the_summary_gives_each_outputs_count() {
        let out = |name: &str, n| crate::app::OutputReport {
            name: name.into(),
            lines_delivered: n,
            ..Default::default()
        };
        let report = Report {
            lines_received: 10,
            lines_delivered: 16,
            lines_spooled: 4,
            outputs: vec![out("default", 10), out("lake", 6)],
            ..Default::default()
        };
        let s = summary_line(&report, Duration::from_secs(1), Path::new("/x"), 75);
        assert!(
            s.starts_with("lineship: read 10 lines, delivered 10 to default, 6 to lake, invalid 0, left in the spool 4;"),
            "{s}"
        );
    }
}
