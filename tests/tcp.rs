//! The TCP input with the real binary against the fake InfluxDB: many connections at once, a
//! bad line and a half line at close, `max_connections`, `idle_timeout`, and pushback through
//! TCP flow control while the pipeline is blocked.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{metric, scrape, telemetry_addr, toml_path, write_config, Daemon, FakeInflux};

const T: Duration = Duration::from_secs(30);

/// A config with one `[[input.tcp]]` on a port the kernel picks, plus `extra` TOML.
fn config(dir: &Path, url: &str, tcp: &str, extra: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"
state_dir = {state}
[agent]
flush_interval = "50ms"
shutdown_timeout = "3s"
[output]
url = "{url}"
bucket = "b"
initial_backoff = "10ms"
max_backoff = "100ms"
[telemetry]
listen = "127.0.0.1:0"
{extra}
[[input.tcp]]
listen = "127.0.0.1:0"
{tcp}
"#,
            state = toml_path(&dir.join("state")),
        ),
    )
}

/// Starts the daemon and returns it with its TCP and telemetry addresses.
fn start(cfg: &Path) -> (Daemon, SocketAddr, SocketAddr) {
    let mut d = Daemon::start(cfg);
    let tcp: SocketAddr = d
        .log_field("lineship started", "tcp input listening", "listen")
        .parse()
        .unwrap();
    let telemetry = telemetry_addr(&mut d);
    (d, tcp, telemetry)
}

fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    common::wait_until(T, &mut f)
}

fn seq_counts(fake: &FakeInflux) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for l in fake.accepted_lines() {
        let seq: u64 = l.rsplit(' ').next().unwrap().parse().unwrap();
        *m.entry(seq).or_default() += 1;
    }
    m
}

#[test]
fn many_connections_at_once_deliver_every_line_once() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let (d, tcp, telemetry) = start(&config(dir.path(), &fake.url(), "", ""));
    const CONNS: u64 = 32;
    const LINES: u64 = 5_000;
    let writers: Vec<_> = (0..CONNS)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(tcp).unwrap();
                let mut buf = Vec::new();
                for i in 0..LINES {
                    let seq = c * LINES + i;
                    writeln!(buf, "m,conn={c} v={i}i {seq}").unwrap();
                    // Writes of odd sizes, so lines straddle reads.
                    if buf.len() > 1000 + c as usize * 37 {
                        s.write_all(&buf).unwrap();
                        buf.clear();
                    }
                }
                s.write_all(&buf).unwrap();
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert!(
        wait_until(|| fake.accepted_line_count() as u64 >= CONNS * LINES),
        "{} of {} lines arrived",
        fake.accepted_line_count(),
        CONNS * LINES
    );
    let counts = seq_counts(&fake);
    assert_eq!(counts.len() as u64, CONNS * LINES);
    assert!(counts.values().all(|&n| n == 1), "a line arrived twice");
    let name = r#"{input="tcp:127.0.0.1:0"}"#;
    assert!(wait_until(|| metric(
        &scrape(telemetry),
        &format!("lineship_tcp_connections_open{name}")
    ) == 0));
    let m = scrape(telemetry);
    assert_eq!(
        metric(&m, &format!("lineship_tcp_connections_total{name}")),
        CONNS
    );
    assert_eq!(
        metric(&m, &format!("lineship_lines_received_total{name}")),
        CONNS * LINES
    );
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("tcp summary"), "{}", out.stderr);
}

#[test]
fn a_bad_line_an_overlong_line_and_a_half_line_at_close_cost_only_themselves() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let (d, tcp, telemetry) = start(&config(dir.path(), &fake.url(), "", ""));
    let mut s = TcpStream::connect(tcp).unwrap();
    s.write_all(b"m v=1i 1\nthis is not line protocol\n")
        .unwrap();
    // A line far over max_line_bytes, in pieces: only its start is kept to report it.
    s.write_all(b"m v=\"").unwrap();
    for _ in 0..64 {
        s.write_all(&[b'x'; 64 << 10]).unwrap();
    }
    s.write_all(b"\"\nm v=2i 2\nm v=3i 3").unwrap();
    drop(s);
    let name = "tcp:127.0.0.1:0";
    assert!(wait_until(|| {
        metric(
            &scrape(telemetry),
            &format!(r#"lineship_lines_invalid_total{{input="{name}",reason="truncated"}}"#),
        ) == 1
    }));
    assert!(wait_until(|| fake.accepted_line_count() >= 2));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fake.accepted_lines(), vec!["m v=1i 1", "m v=2i 2"]);
    let invalid: f64 = scrape(telemetry)
        .iter()
        .filter(|(k, _)| k.starts_with(&format!(r#"lineship_lines_invalid_total{{input="{name}""#)))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        invalid, 3.0,
        "the bad line, the overlong line and the half line, once each"
    );
    let rejected = std::fs::read_to_string(dir.path().join("state/rejected/rejected.lp"))
        .unwrap_or_else(|e| panic!("dead-letter file: {e}"));
    assert!(
        rejected.contains("reason=truncated") && rejected.contains("\nm v=3i 3\n"),
        "{rejected}"
    );
    assert!(
        rejected.contains("\nthis is not line protocol\n"),
        "{rejected}"
    );
    d.terminate();
    assert_eq!(d.wait(T).code, Some(0));
}

/// True if the peer closed the connection (EOF or a reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn connections_beyond_max_connections_are_closed_and_counted() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), "max_connections = 2", "");
    let (d, tcp, telemetry) = start(&cfg);
    let name = r#"{input="tcp:127.0.0.1:0"}"#;
    let mut first = TcpStream::connect(tcp).unwrap();
    let mut second = TcpStream::connect(tcp).unwrap();
    assert!(wait_until(|| metric(
        &scrape(telemetry),
        &format!("lineship_tcp_connections_open{name}")
    ) == 2));
    let mut third = TcpStream::connect(tcp).unwrap();
    assert!(
        closed_within(&mut third, Duration::from_secs(10)),
        "the third connection is closed"
    );
    assert!(wait_until(|| metric(
        &scrape(telemetry),
        &format!("lineship_tcp_connections_refused_total{name}")
    ) == 1));
    // The two open ones still work.
    first.write_all(b"m v=1i 1\n").unwrap();
    second.write_all(b"m v=2i 2\n").unwrap();
    assert!(wait_until(|| fake.accepted_line_count() == 2));
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("max_connections are open"),
        "{}",
        out.stderr
    );
}

#[test]
fn an_idle_connection_is_closed_after_idle_timeout() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), r#"idle_timeout = "1s""#, "");
    let (d, tcp, _) = start(&cfg);
    let mut s = TcpStream::connect(tcp).unwrap();
    s.write_all(b"m v=1i 1\n").unwrap();
    let t = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(10)));
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    assert!(wait_until(|| fake.accepted_line_count() == 1));
    d.terminate();
    assert_eq!(d.wait(T).code, Some(0));
}

/// While the server is down and the spool is full (`when_full = "block"`), the TCP input stops
/// reading: the client's writes stall (TCP flow control) instead of lines being dropped. Once
/// the server is back, every line arrives once.
#[test]
fn a_blocked_pipeline_stalls_the_sender_and_drops_nothing() {
    let fake = FakeInflux::start().default_reply(common::Reply::status(503));
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[spool]
max_size = "1MiB"
when_full = "block"
"#;
    let cfg = write_config(
        dir.path(),
        &std::fs::read_to_string(config(dir.path(), &fake.url(), "", extra))
            .unwrap()
            .replace("[output]", "[output]\nmemory_limit = \"1MiB\"\n")
            .replace("[agent]", "[agent]\nbatch_max_bytes = \"1MiB\""),
    );
    let (d, tcp, _) = start(&cfg);
    // ~40 MB that gzip cannot shrink much, far more than the pipeline's buffers hold.
    const N: u64 = 400_000;
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let written = written.clone();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(tcp).unwrap();
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut buf = Vec::new();
            for seq in 1..=N {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                writeln!(
                    buf,
                    "m,host=h r=\"{x:016x}{:016x}{:016x}\" {seq}",
                    x.rotate_left(21),
                    x.rotate_left(42)
                )
                .unwrap();
                if buf.len() >= 64 << 10 {
                    s.write_all(&buf).unwrap();
                    written.fetch_add(buf.len() as u64, Relaxed);
                    buf.clear();
                }
            }
            s.write_all(&buf).unwrap();
            written.fetch_add(buf.len() as u64, Relaxed);
        })
    };
    // The writes stall well before the end.
    let mut last = 0;
    let stalled = wait_until(|| {
        std::thread::sleep(Duration::from_millis(500));
        let now = written.load(Relaxed);
        let same = now == last;
        last = now;
        same && now > 0
    });
    assert!(stalled, "the writer never stalled");
    let at_stall = written.load(Relaxed);
    assert!(
        at_stall < 30 << 20,
        "{at_stall} bytes were taken while the pipeline was blocked"
    );
    assert!(!writer.is_finished());
    // The server comes back: everything arrives, once.
    fake.set_default_reply(common::Reply::status(204));
    writer.join().unwrap();
    assert!(
        common::wait_until(Duration::from_secs(90), || fake.accepted_line_count()
            as u64
            >= N),
        "{} of {N} lines arrived",
        fake.accepted_line_count()
    );
    let counts = seq_counts(&fake);
    assert_eq!(counts.len() as u64, N);
    assert!(counts.values().all(|&n| n == 1), "a line arrived twice");
    d.terminate();
    assert_eq!(d.wait(T).code, Some(0));
}
