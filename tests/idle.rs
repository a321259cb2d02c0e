//! Idle costs nothing: the real binary with a UDP input, a tail input and the telemetry
//! endpoint, after some traffic has been delivered, wakes no thread more often than once a
//! second (voluntary context switches per thread from `/proc/PID/task/*/status`; the
//! summary is set to an hour and the health probe follows `max_backoff`, so neither counts
//! here), and still stops at once on SIGTERM.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(30);
/// How long the idle daemon is watched.
const WATCH: Duration = Duration::from_secs(5);

/// Voluntary context switches (each one a wait the thread woke from) per thread, by
/// `tid: name`.
fn wakeups(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let dir = t.path();
        let (Ok(status), Ok(comm)) = (
            std::fs::read_to_string(dir.join("status")),
            std::fs::read_to_string(dir.join("comm")),
        ) else {
            continue;
        };
        let n = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let tid = t.file_name().to_string_lossy().into_owned();
        out.insert(format!("{tid}: {}", comm.trim()), n);
    }
    out
}

#[test]
fn an_idle_daemon_wakes_no_thread_more_than_once_a_second_and_stops_at_once() {
    if !std::path::Path::new("/proc/self/task").is_dir() {
        eprintln!("SKIPPED: no /proc/PID/task here");
        return;
    }
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
state_dir = {state}
[agent]
flush_interval = "50ms"
summary_interval = "1h"
log_level = "info"
[output]
url = "{url}"
bucket = "b"
max_backoff = "1h"
[[input.udp]]
listen = "127.0.0.1:0"
[[input.tail]]
paths = [{glob}]
[telemetry]
listen = "127.0.0.1:0"
"#,
            state = toml_path(&dir.path().join("state")),
            url = fake.url(),
            glob = toml_path(&logs.join("*.log")),
        ),
    );
    let mut d = Daemon::start(&cfg);
    let udp: SocketAddr = d
        .log_field("lineship started", "udp input listening", "listen")
        .parse()
        .unwrap();
    let telemetry = telemetry_addr(&mut d);

    // Some traffic on every path first, so the idle state is the one after work, not the
    // one before it.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.send_to(b"m,src=udp v=1i 1\n", udp).unwrap();
    let mut log = tail::append(&logs.join("a.log"));
    log.write_all(b"m,src=tail v=2i 2\n").unwrap();
    log.flush().unwrap();
    assert!(fake.wait_for_lines(2, T), "both lines were delivered");
    assert_eq!(get(telemetry, "/health").0, 200);
    // Let the last acks, checkpoint, spool sync and kernel-drop reconciliation happen.
    std::thread::sleep(Duration::from_millis(2500));

    let before = wakeups(d.pid());
    std::thread::sleep(WATCH);
    let after = wakeups(d.pid());
    let mut report = Vec::new();
    let mut busy = Vec::new();
    // Once a second, plus one for a period that straddles the window's edges.
    let allowed = WATCH.as_secs() + 1;
    for (thread, n) in &after {
        let woke = n - before.get(thread).copied().unwrap_or(0);
        report.push(format!("{thread} {woke}"));
        if woke > allowed {
            busy.push(format!("{thread} woke {woke} times"));
        }
    }
    eprintln!("wake-ups over {WATCH:?}: {}", report.join(", "));
    assert!(
        busy.is_empty(),
        "idle threads woke more than once a second: {busy:?} (all: {report:?})"
    );

    let asked = Instant::now();
    d.terminate();
    let out = d.wait(T);
    let took = asked.elapsed();
    eprintln!("stopped {took:?} after SIGTERM");
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        took < Duration::from_secs(2),
        "an idle daemon took {took:?} to stop"
    );
    assert_eq!(fake.accepted_line_count(), 2, "nothing sent twice");
}
