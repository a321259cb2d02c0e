//! Running as a service, through the real binary: sd_notify (READY, WATCHDOG, STOPPING),
//! `/metrics` and `/health` against the fake InfluxDB, SIGHUP token rotation, and the startup
//! checks (telemetry bind, state_dir, world-readable secrets).

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    get, lineship_command, metric, scrape, telemetry_addr, toml_path, wait_until, write_config,
    Daemon, FakeInflux, Reply,
};

const T: Duration = Duration::from_secs(60);

fn config(dir: &Path, url: &str, output_extra: &str, extra: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"
state_dir = {state}
[agent]
flush_interval = "50ms"
shutdown_timeout = "20s"
max_line_bytes = "100"
[output]
url = "{url}"
org = "o"
bucket = "b"
initial_backoff = "10ms"
max_backoff = "50ms"
{output_extra}
[input.stdin]
enabled = true
{extra}
"#,
            state = toml_path(&dir.join("state")),
        ),
    )
}

fn daemon(cfg: &Path, env: &[(&str, &str)]) -> Daemon {
    let mut cmd = lineship_command();
    cmd.arg("--config").arg(cfg);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Daemon::spawn_with_open_stdin(cmd)
}

/// A daemon with `/metrics` and `/health` on a free port, and that endpoint's address.
fn daemon_with_telemetry(
    dir: &Path,
    url: &str,
    output_extra: &str,
) -> (Daemon, std::net::SocketAddr) {
    let cfg = config(
        dir,
        url,
        output_extra,
        "[telemetry]\nlisten = \"127.0.0.1:0\"\n",
    );
    let mut d = daemon(&cfg, &[]);
    let addr = telemetry_addr(&mut d);
    (d, addr)
}

/// `n` distinct valid lines starting at `from`.
fn lines(from: usize, n: usize) -> Vec<u8> {
    (from..from + n)
        .map(|i| {
            format!(
                "m,host=h{} v={i}i {}\n",
                i % 5,
                1_700_000_000_000_000_000u64 + i as u64
            )
        })
        .collect::<String>()
        .into_bytes()
}

/// Collects every datagram sent to a unix socket, on a helper thread.
struct NotifySocket {
    path: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NotifySocket {
    fn bind(path: PathBuf) -> Self {
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (messages.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    m.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        });
        NotifySocket {
            path,
            messages,
            stop,
            thread: Some(thread),
        }
    }

    fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    fn wait_for(&self, count: impl Fn(&[String]) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if count(&self.messages()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn finish(mut self) -> Vec<String> {
        // Give datagrams already queued a moment to be read.
        std::thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.messages()
    }
}

fn has(msg: &str, assignment: &str) -> bool {
    msg.lines().any(|l| l == assignment)
}

fn count(msgs: &[String], assignment: &str) -> usize {
    msgs.iter().filter(|m| has(m, assignment)).count()
}

fn first(msgs: &[String], assignment: &str) -> Option<usize> {
    msgs.iter().position(|m| has(m, assignment))
}

#[test]
fn sd_notify_ready_then_watchdog_pings_then_stopping() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), "", "");
    let notify = NotifySocket::bind(dir.path().join("notify.sock"));
    let path = notify.path.to_str().unwrap().to_owned();
    let mut d = daemon(
        &cfg,
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "200000")],
    );
    assert!(
        notify.wait_for(|m| count(m, "WATCHDOG=1") >= 3, T),
        "no watchdog pings; got {:?}\n{}",
        notify.messages(),
        d.stderr_so_far()
    );
    d.write_stdin(&lines(0, 10));
    assert!(fake.wait_for_lines(10, T));
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let msgs = notify.finish();

    assert_eq!(count(&msgs, "READY=1"), 1, "{msgs:?}");
    assert_eq!(count(&msgs, "STOPPING=1"), 1, "{msgs:?}");
    let ready = first(&msgs, "READY=1").unwrap();
    let ping = first(&msgs, "WATCHDOG=1").unwrap();
    let stopping = first(&msgs, "STOPPING=1").unwrap();
    assert!(ready < ping && ping < stopping, "order: {msgs:?}");
    assert!(
        msgs[stopping..].iter().all(|m| !has(m, "WATCHDOG=1")),
        "no pings once stopping: {msgs:?}"
    );
}

#[test]
fn watchdog_meant_for_another_pid_is_not_fed() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), "", "");
    let notify = NotifySocket::bind(dir.path().join("notify.sock"));
    let path = notify.path.to_str().unwrap().to_owned();
    let mut d = daemon(
        &cfg,
        &[
            ("NOTIFY_SOCKET", &path),
            ("WATCHDOG_USEC", "100000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    assert!(notify.wait_for(|m| count(m, "READY=1") == 1, T));
    std::thread::sleep(Duration::from_millis(500));
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let msgs = notify.finish();
    assert_eq!(count(&msgs, "WATCHDOG=1"), 0, "{msgs:?}");
    assert_eq!(count(&msgs, "STOPPING=1"), 1, "{msgs:?}");
}

fn statuses_answered(fake: &FakeInflux, status: u16) -> u64 {
    fake.statuses().iter().filter(|s| **s == status).count() as u64
}

#[test]
fn metrics_count_the_traffic_and_health_follows_the_server() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let (mut d, addr) = daemon_with_telemetry(dir.path(), &fake.url(), "token = \"t\"");

    let (code, _, body) = get(addr, "/health");
    assert_eq!(code, 200, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "ok");

    // 100 good lines, 3 over max_line_bytes, 1 that no validator accepts.
    let mut input = lines(0, 100);
    for _ in 0..3 {
        input.extend_from_slice(format!("m v={}i 1\n", "9".repeat(120)).as_bytes());
    }
    input.extend_from_slice(b"this is not line protocol\n");
    d.write_stdin(&input);
    assert!(fake.wait_for_lines(100, T));
    let m = {
        let mut m = scrape(addr);
        assert!(wait_until(T, || {
            m = scrape(addr);
            metric(&m, "lineship_lines_delivered_total") == 100
        }));
        m
    };
    assert_eq!(
        metric(&m, r#"lineship_lines_received_total{input="stdin"}"#),
        100
    );
    assert_eq!(
        metric(
            &m,
            r#"lineship_lines_invalid_total{input="stdin",reason="too_long"}"#
        ),
        3
    );
    let invalid: Vec<(&String, &f64)> = m
        .iter()
        .filter(|(k, _)| k.starts_with("lineship_lines_invalid_total{"))
        .collect();
    assert_eq!(
        invalid.len(),
        2,
        "too_long and one other reason: {invalid:?}"
    );
    assert_eq!(invalid.iter().map(|(_, v)| **v as u64).sum::<u64>(), 4);
    let writes = fake.requests().len() as u64;
    assert!(writes >= 1);
    assert_eq!(
        metric(&m, r#"lineship_requests_total{status="204"}"#),
        writes
    );
    assert_eq!(metric(&m, "lineship_batches_delivered_total"), writes);
    assert_eq!(metric(&m, "lineship_retries_total"), 0);
    assert_eq!(metric(&m, "lineship_output_healthy"), 1);
    assert_eq!(metric(&m, "lineship_spool_records"), 0);

    // The server fails: /health turns 503 and says why; the lines wait in the spool.
    fake.set_default_reply(Reply::influx_error(503, "fake is down for maintenance"));
    d.write_stdin(&lines(100, 10));
    let mut body = String::new();
    assert!(
        wait_until(T, || {
            let (code, _, b) = get(addr, "/health");
            body = b;
            code == 503
        }),
        "{body}"
    );
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "failing", "{h}");
    assert_eq!(h["output"]["last_status"], "503", "{h}");
    assert!(
        h["output"]["message"]
            .as_str()
            .unwrap()
            .contains("fake is down for maintenance"),
        "{h}"
    );
    assert!(h["output"]["since"].as_str().unwrap().ends_with('Z'), "{h}");
    assert!(h["spool"]["lines"].is_u64(), "{h}");
    let m = scrape(addr);
    assert_eq!(metric(&m, "lineship_output_healthy"), 0);

    // The server is back: /health turns 200 and everything arrives.
    fake.set_default_reply(Reply::no_content());
    assert!(wait_until(T, || get(addr, "/health").0 == 200));
    assert!(fake.wait_for_lines(110, T));
    let m = {
        let mut m = scrape(addr);
        assert!(wait_until(T, || {
            m = scrape(addr);
            metric(&m, "lineship_lines_delivered_total") == 110
        }));
        m
    };
    assert_eq!(
        metric(&m, r#"lineship_lines_received_total{input="stdin"}"#),
        110
    );
    assert_eq!(
        metric(&m, r#"lineship_requests_total{status="204"}"#),
        statuses_answered(&fake, 204)
    );
    assert_eq!(
        metric(&m, r#"lineship_requests_total{status="503"}"#),
        statuses_answered(&fake, 503)
    );
    assert!(statuses_answered(&fake, 503) >= 1);
    assert_eq!(
        metric(&m, "lineship_retries_total"),
        statuses_answered(&fake, 503),
        "every 503 was retried"
    );
    assert_eq!(metric(&m, "lineship_lines_dead_lettered_total"), 0);
    assert_eq!(metric(&m, "lineship_spool_records"), 0);
    assert_eq!(metric(&m, "lineship_spool_lines"), 0);
    assert_eq!(get(addr, "/nope").0, 404);

    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(
        out.code,
        Some(65),
        "invalid lines were seen: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("spool_lines=0"),
        "summary line: {}",
        out.stderr
    );
}

#[test]
fn sighup_rotates_the_token_without_losing_lines() {
    const OLD: &str = "tok-old-5f2a81";
    const NEW: &str = "tok-new-9c1b07";
    let accepted = Arc::new(Mutex::new(OLD.to_owned()));
    let a = accepted.clone();
    let fake = FakeInflux::with_responder(move |req| {
        let want = format!("Token {}", a.lock().unwrap());
        if req.header("authorization") == Some(want.as_str()) {
            Reply::no_content()
        } else {
            Reply::influx_error(401, "unauthorized access")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{OLD}\n")).unwrap();
    let cfg = config(
        dir.path(),
        &fake.url(),
        &format!("token_file = {}", toml_path(&token_file)),
        "",
    );
    let mut d = daemon(&cfg, &[]);

    d.write_stdin(&lines(0, 50));
    assert!(fake.wait_for_lines(50, T), "{}", d.stderr_so_far());

    // The token is rotated on the server and in the file; until SIGHUP, writes get 401 and
    // their lines wait.
    *accepted.lock().unwrap() = NEW.to_owned();
    let tmp = dir.path().join("token.tmp");
    std::fs::write(&tmp, format!("{NEW}\n")).unwrap();
    std::fs::rename(&tmp, &token_file).unwrap();
    d.write_stdin(&lines(50, 50));
    assert!(fake.wait_until(T, |reqs| reqs.iter().any(|r| r.status == 401)));
    assert_eq!(fake.accepted_line_count(), 50);

    d.signal(libc::SIGHUP);
    assert!(
        d.wait_for_stderr("the next request uses the new token", T),
        "{}",
        d.stderr_so_far()
    );
    d.write_stdin(&lines(100, 50));
    assert!(fake.wait_for_lines(150, T), "{}", d.stderr_so_far());
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    let mut got = fake.accepted_lines();
    got.sort();
    let mut want: Vec<String> = String::from_utf8(lines(0, 150))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    want.sort();
    assert_eq!(got, want, "every line delivered exactly once");
    let after: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.header("authorization") == Some(&format!("Token {NEW}")))
        .collect();
    assert!(after.iter().all(|r| r.status == 204));
    assert!(
        !out.stderr.contains(OLD) && !out.stderr.contains(NEW),
        "token logged"
    );
}

#[test]
fn telemetry_bind_failure_names_the_key() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = config(
        dir.path(),
        &fake.url(),
        "",
        &format!(
            "[telemetry]\nlisten = \"{}\"\n",
            taken.local_addr().unwrap()
        ),
    );
    let mut d = daemon(&cfg, &[]);
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("telemetry.listen"), "{}", out.stderr);
}

#[test]
fn unwritable_state_dir_is_a_clear_startup_error() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    // Not even root may create files in /proc.
    let cfg = write_config(
        dir.path(),
        &format!(
            "state_dir = \"/proc/self\"\n[output]\nurl = \"{}\"\nbucket = \"b\"\n[input.stdin]\nenabled = true\n",
            fake.url()
        ),
    );
    let mut d = daemon(&cfg, &[]);
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("state_dir /proc/self is not writable"),
        "{}",
        out.stderr
    );
}

#[test]
fn check_warns_about_a_world_readable_config_holding_the_token() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "http://127.0.0.1:9", "token = \"hush-77\"", "");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = lineship_command();
    cmd.arg("check").arg("--config").arg(&cfg);
    let out = Daemon::spawn(cmd).wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("chmod 600"), "{}", out.stderr);
    assert!(out.stderr.contains("lineship.toml"), "{}", out.stderr);
    assert!(!out.stderr.contains("hush-77") && !out.stdout.contains("hush-77"));

    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = lineship_command();
    cmd.arg("check").arg("--config").arg(&cfg);
    let out = Daemon::spawn(cmd).wait(T);
    assert!(!out.stderr.contains("chmod"), "{}", out.stderr);
}

/// The memory and queue gauges: a batch waiting on a slow server shows in
/// `lineship_memory_bytes`, and both gauges return to 0 once it is delivered.
#[test]
fn memory_gauge_shows_batches_waiting_for_a_slow_server() {
    let fake = FakeInflux::start();
    fake.set_response_delay(Duration::from_secs(3));
    let dir = tempfile::tempdir().unwrap();
    let (mut d, addr) = daemon_with_telemetry(dir.path(), &fake.url(), "token = \"t\"");
    d.write_stdin(&lines(0, 100));
    assert!(
        wait_until(T, || metric(&scrape(addr), "lineship_memory_bytes") > 0),
        "a sealed batch waiting for the server is held in memory"
    );
    assert!(fake.wait_for_lines(100, T));
    assert!(wait_until(T, || {
        let m = scrape(addr);
        metric(&m, "lineship_lines_delivered_total") == 100
            && metric(&m, "lineship_memory_bytes") == 0
            && metric(&m, "lineship_queue_bytes") == 0
    }));
    d.terminate();
    assert_eq!(d.wait(T).code, Some(0));
}

#[test]
fn the_health_probe_reports_an_unreachable_server_before_any_data_and_its_return() {
    // A port with nothing listening, for now: bound but not listening, so connections are
    // refused and no other test can take the port before the fake does.
    let holder = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    holder
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = holder.local_addr().unwrap().as_socket().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let (d, addr) = daemon_with_telemetry(dir.path(), &url, "");
    // No line was sent, yet GET /ping finds the server missing: logged once, /health 503.
    assert!(
        wait_until(T, || get(addr, "/health").0 == 503),
        "{}",
        d.stderr_so_far()
    );
    let probe = format!("cannot reach the server (GET {url}/ping");
    assert!(d.stderr_so_far().contains(&probe), "{}", d.stderr_so_far());
    // Probes repeat (every second here) without repeating the log.
    std::thread::sleep(Duration::from_millis(2500));
    let failing = |s: &str| s.matches("writes are failing").count();
    assert_eq!(failing(&d.stderr_so_far()), 1, "{}", d.stderr_so_far());

    // The server comes up: the next probe clears the failure, without any write.
    drop(holder);
    let fake = FakeInflux::start_on_port(port);
    assert!(
        wait_until(T, || get(addr, "/health").0 == 200),
        "{}",
        d.stderr_so_far()
    );
    assert!(
        d.stderr_so_far()
            .contains("server can be reached again (GET /ping)"),
        "{}",
        d.stderr_so_far()
    );
    let pings = fake
        .all_requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/ping")
        .count();
    assert!(pings >= 1);
    assert!(fake.requests().is_empty(), "no write was needed");
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn the_health_probe_never_clears_a_rejected_token() {
    let fake = FakeInflux::start().default_reply(Reply::influx_error(401, "unauthorized access"));
    let dir = tempfile::tempdir().unwrap();
    let (mut d, addr) = daemon_with_telemetry(dir.path(), &fake.url(), "token = \"wrong\"");
    assert!(wait_until(T, || get(addr, "/health").0 == 200));
    d.write_stdin(&lines(0, 10));
    assert!(wait_until(T, || get(addr, "/health").0 == 503));
    // /ping answers 204 all along; only an accepted write may clear a 401.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(get(addr, "/health").0, 503, "{}", d.stderr_so_far());
    assert!(fake.all_requests().iter().any(|r| r.path == "/ping"));
    assert!(d.stderr_so_far().contains("rejected the token"));
    // The lines wait (in memory or the spool) until the token is fixed; a clean stop would
    // wait shutdown_timeout for the server, which this test does not need.
    d.kill9();
}

#[test]
fn the_health_probe_never_clears_writes_that_time_out() {
    // /ping answers at once; every write takes longer than output.timeout.
    let fake = FakeInflux::start();
    fake.set_response_delay(Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &fake.url(),
        "timeout = \"700ms\"",
        "[telemetry]\nlisten = \"127.0.0.1:0\"\n",
    );
    // Backoff up to 1 s plus a 0.7 s write: the last write often ended more than the probe
    // period (1 s) ago while the next one is under way.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("initial_backoff = \"10ms\"", "initial_backoff = \"1s\"")
        .replace("max_backoff = \"50ms\"", "max_backoff = \"1s\"");
    std::fs::write(&cfg, text).unwrap();
    let mut d = daemon(&cfg, &[]);
    let addr = telemetry_addr(&mut d);
    d.write_stdin(&lines(0, 10));
    assert!(wait_until(T, || get(addr, "/health").0 == 503));
    // Several probe periods: /health must stay 503 (no flapping back to 200).
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let (code, _, body) = get(addr, "/health");
        assert_eq!(code, 503, "{body}\n{}", d.stderr_so_far());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!d.stderr_so_far().contains("server can be reached again"));
    d.kill9();
}
