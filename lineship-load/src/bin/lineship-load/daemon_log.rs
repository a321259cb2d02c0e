//! Reading the daemon's log: its stderr is copied to ours while the lines a run needs (started,
//! UDP listening, the final summary, errors) are noted, and the summary's counters parsed.

use std::io::{self, BufRead, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::measure::{spawn_measured, DaemonExit, Measured};

/// A daemon (`lineship --config CONFIG`, stdin from /dev/null) started through the
/// `exec-measured` helper, with its log read as it runs.
pub struct Logged {
    pub daemon: Measured,
    pub log: Arc<Mutex<DaemonLog>>,
    reader: JoinHandle<()>,
}

impl Logged {
    pub fn spawn(lineship: &Path, config: &Path) -> Result<Self> {
        let mut daemon = spawn_measured(lineship, config, &[], Stdio::null(), Stdio::piped())?;
        let log = Arc::new(Mutex::new(DaemonLog::default()));
        let err = daemon
            .helper
            .stderr
            .take()
            .context("no stderr pipe from the helper")?;
        let reader = spawn_log_reader(err, log.clone());
        Ok(Logged {
            daemon,
            log,
            reader,
        })
    }

    /// The daemon has logged "lineship started".
    pub fn started(&self) -> bool {
        self.log.lock().unwrap().started
    }

    /// Stops the daemon with SIGTERM (SIGKILL after `timeout`); returns how it ended and the
    /// counters from its final summary line.
    pub fn stop(self, timeout: Duration) -> (Result<DaemonExit>, DaemonCounters) {
        self.daemon.signal(libc::SIGTERM);
        let exit = self.daemon.wait(timeout);
        let _ = self.reader.join();
        let counters = DaemonCounters::from_log(&self.log.lock().unwrap());
        (exit, counters)
    }
}

/// The `key=value` fields of a text-format tracing line, after its message `message`. A value
/// with spaces runs until the next word that looks like `key=`.
pub fn log_fields(line: &str, message: &str) -> Option<Vec<(String, String)>> {
    let at = line.find(&format!(" {message} "))? + message.len() + 2;
    let mut fields: Vec<(String, String)> = Vec::new();
    for word in line[at..].split_whitespace() {
        match word.split_once('=') {
            Some((k, v))
                if !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') =>
            {
                fields.push((k.to_string(), v.to_string()));
            }
            _ => {
                if let Some((_, v)) = fields.last_mut() {
                    v.push(' ');
                    v.push_str(word);
                }
            }
        }
    }
    Some(fields)
}

/// The start messages of the listening inputs, whose `listen=` field [`DaemonLog::listen_addr`]
/// reads.
pub const LISTENING_MESSAGES: [&str; 3] = [
    "udp input listening",
    "http input listening",
    "tcp input listening",
];

impl DaemonLog {
    /// The address the (last logged) listening input bound, from its `listen=` field.
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.listening
            .as_ref()?
            .iter()
            .find(|(k, _)| k == "listen")?
            .1
            .parse()
            .ok()
    }
}

/// What the daemon's log said, collected from its stderr.
#[derive(Default)]
pub struct DaemonLog {
    pub started: bool,
    pub listening: Option<Vec<(String, String)>>,
    /// The last `summary` line: at exit, the daemon's final counters.
    pub summary: Option<Vec<(String, String)>>,
    pub errors: u64,
}

/// Copies the daemon's output to our stderr, noting the lines the modes need (started, listening, summary).
pub fn spawn_log_reader(
    out: std::process::ChildStderr,
    log: Arc<Mutex<DaemonLog>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let stderr = io::stderr();
        for line in io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(stderr.lock(), "{line}");
            log.lock().unwrap().note(&line);
        }
    })
}

impl DaemonLog {
    /// Notes what one log line says.
    pub fn note(&mut self, line: &str) {
        if line.contains(" lineship started") {
            self.started = true;
        } else if let Some(f) = LISTENING_MESSAGES.iter().find_map(|m| log_fields(line, m)) {
            self.listening = Some(f);
        } else if line.contains(" output summary ") {
            // Each output's own summary, logged after the daemon's: not the one read here.
        } else if let Some(f) = log_fields(line, "summary") {
            self.summary = Some(f);
        }
        if line.contains(" ERROR ") {
            self.errors += 1;
        }
    }
}

/// The daemon's own counters, from its final summary log line.
#[derive(Serialize, Clone, Debug, Default)]
pub struct DaemonCounters {
    pub lines_in: Option<u64>,
    pub delivered: Option<u64>,
    pub invalid: Option<u64>,
    pub dropped: Option<u64>,
    pub dropped_by_reason: Option<String>,
    pub udp_kernel_drops: Option<u64>,
    pub udp_truncated: Option<u64>,
    /// SO_RCVBUF as the kernel applied it (Linux reports twice the size asked for).
    pub receive_buffer_applied: Option<u64>,
    /// ERROR lines the daemon logged.
    pub error_lines: u64,
}

impl DaemonCounters {
    pub fn from_log(log: &DaemonLog) -> Self {
        let get = |f: &Option<Vec<(String, String)>>, k: &str| {
            f.as_ref()
                .and_then(|f| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
        };
        let num = |f: &Option<Vec<(String, String)>>, k: &str| get(f, k)?.parse().ok();
        DaemonCounters {
            lines_in: num(&log.summary, "lines_in"),
            delivered: num(&log.summary, "delivered"),
            invalid: num(&log.summary, "invalid"),
            dropped: num(&log.summary, "dropped"),
            dropped_by_reason: get(&log.summary, "dropped_by_reason"),
            udp_kernel_drops: num(&log.summary, "udp_kernel_drops"),
            udp_truncated: num(&log.summary, "udp_truncated"),
            receive_buffer_applied: num(&log.listening, "receive_buffer_applied"),
            error_lines: log.errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_daemon_summary_line() {
        let log = DaemonLog {
            started: true,
            listening: log_fields(
                "2026-11-28T01:48:30.541821Z  INFO udp input listening input=udp:127.0.0.1:34673 listen=127.0.0.1:34673 workers=1 receive_buffer=67108864 receive_buffer_applied=134217728",
                "udp input listening",
            ),
            summary: log_fields(
                "2026-11-28T01:48:33.160742Z  INFO summary lines_in=500000 delivered=499990 invalid=0 invalid_by_reason= dropped=10 dropped_by_reason=channel_full=10 udp_kernel_drops=3 udp_truncated=0 last_status=connection error: refused healthy=false",
                "summary",
            ),
            errors: 2,
        };
        let c = DaemonCounters::from_log(&log);
        assert_eq!(c.lines_in, Some(500000));
        assert_eq!(c.delivered, Some(499990));
        assert_eq!(c.dropped, Some(10));
        assert_eq!(c.dropped_by_reason.as_deref(), Some("channel_full=10"));
        assert_eq!(c.udp_kernel_drops, Some(3));
        assert_eq!(c.udp_truncated, Some(0));
        assert_eq!(c.receive_buffer_applied, Some(134217728));
        assert_eq!(c.error_lines, 2);
        assert_eq!(log.listen_addr(), Some("127.0.0.1:34673".parse().unwrap()));
        let f = log.summary.unwrap();
        let status = f.iter().find(|(k, _)| k == "last_status").unwrap();
        assert_eq!(status.1, "connection error: refused");
        assert!(log_fields("INFO something else x=1", "summary").is_none());
        let http = DaemonLog {
            listening: log_fields(
                "2026-12-03T17:20:00.000000Z  INFO http input listening input=http:127.0.0.1:0 listen=127.0.0.1:40123 tls=false ack=Durable tokens=0",
                "http input listening",
            ),
            ..DaemonLog::default()
        };
        assert_eq!(http.listen_addr(), Some("127.0.0.1:40123".parse().unwrap()));
        assert_eq!(DaemonLog::default().listen_addr(), None);
    }

    #[test]
    fn an_output_summary_does_not_hide_the_daemon_summary() {
        let mut log = DaemonLog::default();
        log.note("2026-12-04T04:23:41.707744Z  INFO summary lines_in=10000 delivered=10000 invalid=0 invalid_by_reason= dropped=0 dropped_by_reason= udp_datagrams=1000 udp_kernel_drops=0 udp_truncated=0");
        log.note("2026-12-04T04:23:41.707763Z  INFO output summary output=default delivered=10000 dead_lettered=0 partial_dropped=0 undelivered=0 retries=0 spool_records=0 last_status=204 healthy=true");
        let c = DaemonCounters::from_log(&log);
        assert_eq!((c.lines_in, c.udp_kernel_drops), (Some(10000), Some(0)));
    }
}
