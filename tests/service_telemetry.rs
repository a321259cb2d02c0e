//! The telemetry endpoint of the real binary against the fake InfluxDB: `/metrics` counting
//! the traffic and the memory and queue gauges, `/health` following the server, and the
//! health probe (`GET /ping`) before any data, after a rejected token and while writes time
//! out.

mod common;

use std::time::{Duration, Instant};

use common::service::*;
use common::{get, metric, scrape, telemetry_addr, wait_until, FakeInflux, Reply};

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
            metric(&m, "lineship_lines_delivered_total{output=\"default\"}") == 100
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
        metric(
            &m,
            r#"lineship_requests_total{output="default",status="204"}"#
        ),
        writes
    );
    assert_eq!(
        metric(&m, "lineship_batches_delivered_total{output=\"default\"}"),
        writes
    );
    assert_eq!(metric(&m, "lineship_retries_total{output=\"default\"}"), 0);
    assert_eq!(metric(&m, "lineship_output_healthy{output=\"default\"}"), 1);
    assert_eq!(metric(&m, "lineship_spool_records{output=\"default\"}"), 0);

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
    assert_eq!(metric(&m, "lineship_output_healthy{output=\"default\"}"), 0);

    // The server is back: /health turns 200 and everything arrives.
    fake.set_default_reply(Reply::no_content());
    assert!(wait_until(T, || get(addr, "/health").0 == 200));
    assert!(fake.wait_for_lines(110, T));
    let m = {
        let mut m = scrape(addr);
        assert!(wait_until(T, || {
            m = scrape(addr);
            metric(&m, "lineship_lines_delivered_total{output=\"default\"}") == 110
        }));
        m
    };
    assert_eq!(
        metric(&m, r#"lineship_lines_received_total{input="stdin"}"#),
        110
    );
    assert_eq!(
        metric(
            &m,
            r#"lineship_requests_total{output="default",status="204"}"#
        ),
        statuses_answered(&fake, 204)
    );
    assert_eq!(
        metric(
            &m,
            r#"lineship_requests_total{output="default",status="503"}"#
        ),
        statuses_answered(&fake, 503)
    );
    assert!(statuses_answered(&fake, 503) >= 1);
    assert_eq!(
        metric(&m, "lineship_retries_total{output=\"default\"}"),
        statuses_answered(&fake, 503),
        "every 503 was retried"
    );
    assert_eq!(
        metric(&m, "lineship_lines_dead_lettered_total{output=\"default\"}"),
        0
    );
    assert_eq!(metric(&m, "lineship_spool_records{output=\"default\"}"), 0);
    assert_eq!(metric(&m, "lineship_spool_lines{output=\"default\"}"), 0);
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
        wait_until(T, || metric(
            &scrape(addr),
            "lineship_memory_bytes{output=\"default\"}"
        ) > 0),
        "a sealed batch waiting for the server is held in memory"
    );
    assert!(fake.wait_for_lines(100, T));
    assert!(wait_until(T, || {
        let m = scrape(addr);
        metric(&m, "lineship_lines_delivered_total{output=\"default\"}") == 100
            && metric(&m, "lineship_memory_bytes{output=\"default\"}") == 0
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
