//! The real binary against a server that misbehaves: replies with a gigantic or endless body
//! (to a write and to `GET /ping`), a gigantic header, and redirects whose connection is closed
//! without notice. The promises checked: peak memory (`VmHWM` of the lineship process) stays
//! small, the data is still handled as the status says (2xx delivered, 5xx retried, 3xx kept
//! until `output.url` is fixed; nothing lost), no write outlives `output.timeout`, and a failure
//! is logged once, naming what to fix.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{lineship_command, run_stdin, write_config, BodyStream, Daemon, FakeInflux, Reply};

const T: Duration = Duration::from_secs(120);
const GB: u64 = 1 << 30;
/// Peak RSS allowed for the daemon while it is sent 1 GB replies (it idles at ~15 MiB).
const MAX_PEAK_MIB: u64 = 80;

/// `timeout` is `output.timeout`.
fn config(dir: &Path, url: &str, timeout: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"
state_dir = "{}"
[agent]
flush_interval = "50ms"
batch_max_lines = 1000
shutdown_timeout = "3s"
[output]
url = "{url}"
org = "o"
bucket = "b"
token = "t"
initial_backoff = "10ms"
max_backoff = "200ms"
timeout = "{timeout}"
"#,
            dir.join("state").display()
        ),
    )
}

/// `n` distinct lines with timestamps.
fn lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "m,host=h{} v={i}i {}",
                i % 5,
                1_700_000_000_000_000_000u64 + i as u64
            )
        })
        .collect()
}

fn join(lines: &[String]) -> Vec<u8> {
    let mut s = lines.join("\n");
    s.push('\n');
    s.into_bytes()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// `VmHWM` (peak resident set) of a process, in MiB; `None` once it has exited.
fn peak_rss_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())?;
    Some(kib / 1024)
}

/// Starts `lineship --stdin` with stdin left open, so the process can be measured while alive.
fn start(cfg: &Path) -> Daemon {
    let mut c = lineship_command();
    c.arg("--config").arg(cfg).arg("--stdin");
    let mut d = Daemon::spawn_with_open_stdin(c);
    assert!(
        d.wait_for_stderr("lineship started", Duration::from_secs(30)),
        "{}",
        d.stderr_so_far()
    );
    d
}

/// Feeds `input`, waits until the fake accepted all of it, checks the peak memory, ends stdin
/// and expects exit 0 with every line delivered exactly once.
fn deliver_all_within_memory(fake: &FakeInflux, mut d: Daemon, input: &[String]) -> String {
    d.write_stdin(&join(input));
    assert!(
        fake.wait_for_lines(input.len(), Duration::from_secs(60)),
        "accepted {} of {} lines; statuses {:?}\n{}",
        fake.accepted_line_count(),
        input.len(),
        fake.statuses(),
        d.stderr_so_far()
    );
    let pid = d.pid();
    let mut peak = peak_rss_mib(pid).expect("the daemon runs");
    d.close_stdin();
    // The peak so far, until the process exits (its status has no VmHWM once it is a zombie).
    while let Some(p) = peak_rss_mib(pid) {
        peak = peak.max(p);
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = d.wait(T);
    assert!(
        peak < MAX_PEAK_MIB,
        "peak RSS {peak} MiB (bound {MAX_PEAK_MIB} MiB)\n{}",
        out.stderr
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        sorted(fake.accepted_lines()),
        sorted(input.to_vec()),
        "exactly once"
    );
    out.stderr
}

fn error_and_warn_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .collect()
}

#[test]
fn a_1_gb_body_on_a_2xx_write_reply_is_not_read_and_the_write_counts_as_delivered() {
    let fake =
        FakeInflux::start().default_reply(Reply::status(200).with_stream(BodyStream::Sized(GB)));
    let dir = tempfile::tempdir().unwrap();
    let d = start(&config(dir.path(), &fake.url(), "5s"));
    let input = lines(3000);
    let log = deliver_all_within_memory(&fake, d, &input);
    assert!(
        fake.statuses().iter().all(|&s| s == 200),
        "{:?}",
        fake.statuses()
    );
    assert!(!log.contains("writes are failing"), "{log}");
    let sent = fake.body_bytes_sent();
    assert!(
        sent < 64 << 20,
        "the daemon took {sent} body bytes; it should hang up after a few KiB"
    );
}

#[test]
fn a_1_gb_body_on_a_500_write_reply_is_not_read_and_the_batch_is_retried() {
    let huge_500 = Reply::status(500).with_stream(BodyStream::Sized(GB));
    let fake = FakeInflux::with_script(vec![huge_500.clone(), huge_500.clone(), huge_500]);
    let dir = tempfile::tempdir().unwrap();
    let d = start(&config(dir.path(), &fake.url(), "5s"));
    let input = lines(2000);
    deliver_all_within_memory(&fake, d, &input);
    assert_eq!(fake.statuses().iter().filter(|&&s| s == 500).count(), 3);
}

#[test]
fn a_1_gb_body_on_the_ping_reply_is_not_read() {
    let fake = FakeInflux::start();
    fake.set_ping_reply(Reply::status(200).with_stream(BodyStream::Sized(GB)));
    let dir = tempfile::tempdir().unwrap();
    let mut d = start(&config(dir.path(), &fake.url(), "5s"));
    assert!(
        d.wait_for_stderr("output answers GET /ping", Duration::from_secs(60)),
        "{}",
        d.stderr_so_far()
    );
    deliver_all_within_memory(&fake, d, &lines(500));
    let sent = fake.body_bytes_sent();
    assert!(
        sent < 64 << 20,
        "the daemon took {sent} body bytes of the ping reply"
    );
}

#[test]
fn a_gigantic_header_on_the_ping_reply_is_refused_and_writes_still_go() {
    let fake = FakeInflux::start();
    fake.set_ping_reply(Reply::status(204).with_header("X-Junk", "j".repeat(8 << 20)));
    let dir = tempfile::tempdir().unwrap();
    let mut d = start(&config(dir.path(), &fake.url(), "5s"));
    assert!(
        d.wait_for_stderr("cannot reach the server", Duration::from_secs(60)),
        "{}",
        d.stderr_so_far()
    );
    deliver_all_within_memory(&fake, d, &lines(500));
}

#[test]
fn endless_chunked_bodies_bound_memory_and_time_and_keep_the_status_meaning() {
    // A 500 whose body streams forever as fast as it is read, then a 200 whose body drips a
    // few bytes now and then, forever: retried, then delivered, each within output.timeout.
    let fast = BodyStream::Endless {
        chunk: 64 * 1024,
        every: Duration::ZERO,
    };
    let drip = BodyStream::Endless {
        chunk: 16,
        every: Duration::from_millis(200),
    };
    let fake = FakeInflux::with_script(vec![
        Reply::status(500).with_stream(fast),
        Reply::status(200).with_stream(drip),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let d = start(&config(dir.path(), &fake.url(), "2s"));
    let started = Instant::now();
    let input = lines(10);
    let log = deliver_all_within_memory(&fake, d, &input);
    assert_eq!(
        fake.statuses(),
        vec![500, 200],
        "retried once, then delivered"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(log.contains("server answered 500"), "{log}");
}

/// Redirects of every write, each connection closed after its answer without
/// `Connection: close`, then a shutdown while they go on: one ERROR naming the target and
/// `output.url`, no flood (also not while draining), data kept in the spool; once the server
/// accepts, a restart delivers all of it.
#[test]
fn a_redirect_is_logged_once_with_its_target_and_the_data_is_kept() {
    let target = "https://influx.example.net:8443/api/v2/write?org=o&bucket=b";
    let moved = Reply::status(301)
        .with_header("Location", target)
        .with_body("moved")
        .closing();
    let fake = FakeInflux::start().default_reply(moved.clone());
    fake.set_ping_reply(moved);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), "5s");
    let mut d = start(&cfg);
    let input = lines(3000);
    d.write_stdin(&join(&input));
    // Several slow retries (every max_backoff = 200 ms) within the window.
    assert!(fake.wait_for_requests(6, Duration::from_secs(30)));
    std::thread::sleep(Duration::from_secs(2));
    let while_running = d.stderr_so_far();
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(75), "data left in the spool\n{}", out.stderr);
    let noisy = error_and_warn_lines(&out.stderr);
    let errors: Vec<_> = noisy.iter().filter(|l| l.contains(" ERROR ")).collect();
    assert_eq!(
        errors.len(),
        1,
        "one ERROR, no flood:\n{}",
        noisy.join("\n")
    );
    assert!(
        errors[0].contains(target) && errors[0].contains("set output.url"),
        "{}",
        errors[0]
    );
    assert!(
        noisy.len() <= 2,
        "at most the ERROR and the shutdown's spool warning:\n{}",
        noisy.join("\n")
    );
    assert_eq!(
        error_and_warn_lines(&while_running).len(),
        1,
        "{while_running}"
    );
    assert!(fake.statuses().iter().all(|&s| s == 301));
    assert!(fake.accepted_lines().is_empty());
    assert!(
        !dir.path().join("state/rejected/rejected.lp").exists(),
        "nothing dead-lettered"
    );

    // The operator fixes it (here: the server stops redirecting); the spool is replayed.
    fake.set_default_reply(Reply::no_content());
    let out = run_stdin(&cfg, b"", T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(sorted(fake.accepted_lines()), sorted(input), "nothing lost");
}

/// A `Location` that is huge and not UTF-8 is logged bounded and escaped.
#[test]
fn a_hostile_location_header_is_logged_bounded() {
    let mut location = b"https://x.example/\xff\xfe".to_vec();
    location.extend(std::iter::repeat_n(b'a', 60_000));
    let fake =
        FakeInflux::start().default_reply(Reply::status(308).with_raw_header("Location", location));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), "5s");
    let out = run_stdin(&cfg, &join(&lines(5)), T);
    assert_eq!(out.code, Some(75), "{}", out.stderr);
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("the server redirects writes (308)"))
        .unwrap_or_else(|| panic!("no redirect error:\n{}", out.stderr));
    assert!(line.len() < 2000, "{} bytes: {line}", line.len());
    assert!(
        line.contains("https://x.example/\u{fffd}\u{fffd}aaa"),
        "{line}"
    );
    assert!(line.contains('…'), "{line}");
}

/// The redirect test relies on this: a `closing()` reply ends the connection without
/// announcing it in a `Connection: close` header.
#[test]
fn the_fake_closes_a_closing_reply_without_saying_so() {
    use std::io::{Read, Write};
    let fake = FakeInflux::start().default_reply(Reply::status(301).closing());
    let mut s = std::net::TcpStream::connect(fake.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /api/v2/write HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nm v=1\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .expect("the fake closes the connection");
    assert!(reply.starts_with("HTTP/1.1 301"), "{reply}");
    assert!(
        !reply.to_ascii_lowercase().contains("connection:"),
        "{reply}"
    );
}

/// A server that closes every connection after its answer, without `Connection: close`:
/// requests sent on a connection it just closed are resent on a new one, quietly.
#[test]
fn connections_closed_after_each_answer_cost_no_error_and_no_data() {
    let fake = FakeInflux::start().default_reply(Reply::no_content().closing());
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), "5s");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("batch_max_lines = 1000", "batch_max_lines = 20");
    std::fs::write(&cfg, text).unwrap();
    let input = lines(4000);
    let out = run_stdin(&cfg, &join(&input), T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        sorted(fake.accepted_lines()),
        sorted(input),
        "{}",
        out.stderr
    );
    assert!(
        error_and_warn_lines(&out.stderr).is_empty(),
        "{}",
        out.stderr
    );
    assert!(fake.connections() >= 100, "one connection per answer");
}

/// A server that answers slower than the time left before the shutdown deadline: the writes
/// the deadline cuts short go to the spool without an ERROR about the server (it did nothing
/// wrong; a loaded machine answers late too).
#[test]
fn writes_cut_short_by_the_shutdown_deadline_are_spooled_without_blaming_the_server() {
    let fake = FakeInflux::start();
    fake.set_response_delay(Duration::from_secs(6));
    let dir = tempfile::tempdir().unwrap();
    // shutdown_timeout is 3 s, the output timeout 10 s: every write at the drain is cut short.
    let cfg = config(dir.path(), &fake.url(), "10s");
    let mut d = start(&cfg);
    d.write_stdin(&join(&lines(3000)));
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(75), "kept in the spool\n{}", out.stderr);
    assert!(
        !out.stderr.contains("writes are failing"),
        "the deadline is not the server's failure:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("kept in the spool"), "{}", out.stderr);
}
