//! One output, several servers (`output.urls`, `output.balance`), against fakes: failover
//! moves a write to the next URL at once when one stops and goes back to the first when it
//! returns; round_robin spreads batches evenly; a URL that refuses the token is taken out of
//! rotation while the others carry the writes; `/health` and `/metrics` show each URL.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::service::{arrivals, assert_lines_once, lines};
use common::{
    get, lineship_command, metric, scrape, telemetry_addr, toml_path, wait_until, write_config,
    Daemon, FakeInflux, Reply,
};

const T: Duration = Duration::from_secs(60);

/// stdin → one output over `urls`, 100-line batches, telemetry on a free port.
fn start(dir: &Path, urls: &[String], output_extra: &str) -> (Daemon, std::net::SocketAddr) {
    let list: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    let cfg = write_config(
        dir,
        &format!(
            r#"
state_dir = {state}
[agent]
flush_interval = "50ms"
batch_max_lines = 100
shutdown_timeout = "20s"
[output]
urls = [{list}]
org = "o"
bucket = "b"
timeout = "3s"
{output_extra}
[input.stdin]
enabled = true
[telemetry]
listen = "127.0.0.1:0"
"#,
            state = toml_path(&dir.join("state")),
            list = list.join(", "),
        ),
    );
    let mut cmd = lineship_command();
    cmd.arg("--config").arg(cfg);
    let mut d = Daemon::spawn_with_open_stdin(cmd);
    let addr = telemetry_addr(&mut d);
    (d, addr)
}

fn assert_each_line_once(seen: &HashMap<String, usize>, n: usize) {
    assert_lines_once(seen, 0, n, "all URLs");
}

#[test]
fn failover_moves_to_the_next_url_at_once_when_one_stops() {
    let dir = tempfile::tempdir().unwrap();
    let a = FakeInflux::start();
    let b = FakeInflux::start();
    let c = FakeInflux::start();
    // A backoff far longer than the waits below: a retry that waited it out would miss them.
    let (mut d, _) = start(
        dir.path(),
        &[a.url(), b.url(), c.url()],
        "initial_backoff = \"30s\"\nmax_backoff = \"30s\"",
    );
    d.write_stdin(&lines(0, 500));
    assert!(a.wait_for_lines(500, T), "the first URL takes every write");
    assert_eq!(b.accepted_line_count() + c.accepted_line_count(), 0);
    std::thread::sleep(Duration::from_millis(200));
    drop(a);
    let t = Instant::now();
    d.write_stdin(&lines(500, 500));
    assert!(
        b.wait_for_lines(500, Duration::from_secs(10)),
        "the second URL took over at once ({} lines after {:?})",
        b.accepted_line_count(),
        t.elapsed()
    );
    println!(
        "after the first URL stopped, the second had every line {:?} after the write",
        t.elapsed()
    );
    std::thread::sleep(Duration::from_millis(200));
    drop(b);
    let t = Instant::now();
    d.write_stdin(&lines(1000, 500));
    assert!(
        c.wait_for_lines(500, Duration::from_secs(10)),
        "the third URL took over at once ({} lines after {:?})",
        c.accepted_line_count(),
        t.elapsed()
    );
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // a and b are gone with what they recorded; c has exactly its share.
    let seen = arrivals(&[&c]);
    let want = String::from_utf8(lines(1000, 500)).unwrap();
    for l in want.lines() {
        assert_eq!(seen.get(l), Some(&1), "line {l:?}");
    }
    assert_eq!(seen.len(), 500);
    assert!(
        out.stderr.contains("writes go to the other URLs"),
        "{}",
        out.stderr
    );
}

#[test]
fn failover_sends_every_line_once_and_goes_back_to_the_first_url_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let a = FakeInflux::start();
    let a_port = a.port();
    let b = FakeInflux::start();
    let c = FakeInflux::start();
    let (mut d, telemetry) = start(
        dir.path(),
        &[a.url(), b.url(), c.url()],
        "initial_backoff = \"100ms\"\nmax_backoff = \"500ms\"",
    );
    d.write_stdin(&lines(0, 300));
    assert!(a.wait_for_lines(300, T));
    std::thread::sleep(Duration::from_millis(200));
    let a_before = a.accepted_lines();
    drop(a);
    d.write_stdin(&lines(300, 300));
    assert!(b.wait_for_lines(300, T));
    assert!(wait_until(T, || {
        let h: serde_json::Value = serde_json::from_str(&get(telemetry, "/health").2).unwrap();
        h["output"]["urls"][0]["in_rotation"] == false && h["output"]["healthy"] == true
    }));
    // The first URL comes back: the probe puts it back in rotation and writes go there again.
    let a = FakeInflux::start_on_port(a_port);
    assert!(
        wait_until(T, || { a.all_requests().iter().any(|r| r.path == "/ping") }),
        "the returned URL was probed"
    );
    let mut next = 600;
    assert!(
        wait_until(T, || {
            d.write_stdin(&lines(next, 100));
            next += 100;
            std::thread::sleep(Duration::from_millis(100));
            a.accepted_line_count() > 0
        }),
        "writes went back to the first URL"
    );
    // Once back, it takes every write.
    let (b_n, c_n) = (b.accepted_line_count(), c.accepted_line_count());
    d.write_stdin(&lines(next, 300));
    next += 300;
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        (b.accepted_line_count(), c.accepted_line_count()),
        (b_n, c_n),
        "after its return the first URL took everything"
    );
    let mut seen = arrivals(&[&a, &b, &c]);
    for l in a_before {
        *seen.entry(l).or_default() += 1;
    }
    assert_each_line_once(&seen, next);
    assert!(out.stderr.contains("back in rotation"), "{}", out.stderr);
}

#[test]
fn round_robin_spreads_batches_evenly_over_healthy_urls() {
    let dir = tempfile::tempdir().unwrap();
    let fakes = [
        FakeInflux::start(),
        FakeInflux::start(),
        FakeInflux::start(),
    ];
    let urls: Vec<String> = fakes.iter().map(FakeInflux::url).collect();
    let (mut d, telemetry) = start(dir.path(), &urls, "balance = \"round_robin\"");
    let n = 6000;
    for k in 0..60 {
        d.write_stdin(&lines(k * 100, 100));
    }
    assert!(wait_until(T, || fakes
        .iter()
        .map(FakeInflux::accepted_line_count)
        .sum::<usize>()
        == n));
    let m = scrape(telemetry);
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let counts: Vec<usize> = fakes.iter().map(FakeInflux::accepted_line_count).collect();
    let mean = n / 3;
    for (i, c) in counts.iter().enumerate() {
        assert!(
            c.abs_diff(mean) * 5 <= mean,
            "URL {i} got {c} lines of {n}, not within 20% of {mean}: {counts:?}"
        );
        let requests: u64 = fakes[i].requests().len() as u64;
        let series = format!(
            "lineship_url_requests_total{{output=\"default\",url=\"{}/\",status=\"204\"}}",
            urls[i]
        );
        assert_eq!(metric(&m, &series), requests, "{series}");
    }
    assert_each_line_once(&arrivals(&fakes.iter().collect::<Vec<_>>()), n);
}

#[test]
fn a_url_that_refuses_the_token_is_out_of_rotation_while_the_others_carry_the_writes() {
    let dir = tempfile::tempdir().unwrap();
    let a = FakeInflux::start().default_reply(Reply::influx_error(401, "unauthorized access"));
    let b = FakeInflux::start();
    let (mut d, telemetry) = start(
        dir.path(),
        &[a.url(), b.url()],
        "initial_backoff = \"100ms\"\nmax_backoff = \"30s\"",
    );
    d.write_stdin(&lines(0, 1000));
    assert!(
        b.wait_for_lines(1000, T),
        "the second URL carried the writes"
    );
    let (_, _, health) = get(telemetry, "/health");
    let h: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(h["output"]["healthy"], true, "{h}");
    assert_eq!(h["output"]["urls"][0]["healthy"], false, "{h}");
    assert_eq!(h["output"]["urls"][0]["last_status"], "401", "{h}");
    assert_eq!(h["output"]["urls"][1]["healthy"], true, "{h}");
    let m = scrape(telemetry);
    assert_eq!(
        metric(
            &m,
            &format!("lineship_url_up{{output=\"default\",url=\"{}/\"}}", a.url())
        ),
        0
    );
    assert_eq!(
        metric(
            &m,
            &format!("lineship_url_up{{output=\"default\",url=\"{}/\"}}", b.url())
        ),
        1
    );
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let err_line = out
        .stderr
        .lines()
        .find(|l| l.contains("401") && l.contains("ERROR"))
        .unwrap_or_else(|| panic!("no error line for the 401: {}", out.stderr));
    assert!(err_line.contains(&a.url()), "{err_line}");
    // The first requests in flight together (max_in_flight, 4) all meet the 401; after that
    // the URL is out of rotation for max_backoff.
    assert!(
        a.requests().len() <= 4,
        "the refusing URL is not retried while out of rotation: {}",
        a.requests().len()
    );
    assert_each_line_once(&arrivals(&[&b]), 1000);
}

#[test]
fn with_every_url_down_lines_wait_and_arrive_once_one_returns() {
    let dir = tempfile::tempdir().unwrap();
    let a = FakeInflux::start();
    let b = FakeInflux::start();
    let b_port = b.port();
    let urls = [a.url(), b.url()];
    drop(a);
    drop(b);
    let (mut d, telemetry) = start(
        dir.path(),
        &urls,
        "initial_backoff = \"50ms\"\nmax_backoff = \"200ms\"",
    );
    d.write_stdin(&lines(0, 500));
    assert!(wait_until(T, || {
        let h: serde_json::Value = serde_json::from_str(&get(telemetry, "/health").2).unwrap();
        h["output"]["healthy"] == false
    }));
    let b = FakeInflux::start_on_port(b_port);
    assert!(b.wait_for_lines(500, T), "{}", d.stderr_so_far());
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("every URL of the output is failing"),
        "{}",
        out.stderr
    );
    assert_each_line_once(&arrivals(&[&b]), 500);
}

#[test]
fn failover_moves_within_one_request_timeout_when_a_url_stops_answering() {
    let dir = tempfile::tempdir().unwrap();
    let a = FakeInflux::start();
    let b = FakeInflux::start();
    let timeout = Duration::from_secs(3); // output.timeout in `start`
    let (mut d, _) = start(
        dir.path(),
        &[a.url(), b.url()],
        "initial_backoff = \"30s\"\nmax_backoff = \"30s\"",
    );
    d.write_stdin(&lines(0, 100));
    assert!(a.wait_for_lines(100, T));
    let a_first = a.accepted_lines();
    // The first URL still accepts connections but never answers in time.
    a.set_response_delay(Duration::from_secs(30));
    let t = Instant::now();
    d.write_stdin(&lines(100, 100));
    assert!(b.wait_for_lines(100, T), "{}", d.stderr_so_far());
    let moved = t.elapsed();
    println!(
        "traffic moved to the second URL {moved:?} after the write (request timeout {timeout:?})"
    );
    // One request timeout, plus the flush interval and a busy machine's slack.
    assert!(moved < timeout * 3, "moved after {moved:?}");
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // What the first URL recorded after it stopped answering was never acknowledged.
    let mut seen = arrivals(&[&b]);
    for l in a_first {
        *seen.entry(l).or_default() += 1;
    }
    assert_each_line_once(&seen, 200);
}

#[test]
fn a_url_that_keeps_failing_is_probed_at_its_backoff_not_in_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    // Answers every request, /ping included, with 503.
    let a = FakeInflux::start().default_reply(Reply::influx_error(503, "overloaded"));
    a.set_ping_reply(Reply::influx_error(503, "overloaded"));
    let b = FakeInflux::start();
    let (mut d, _) = start(
        dir.path(),
        &[a.url(), b.url()],
        "initial_backoff = \"100ms\"\nmax_backoff = \"400ms\"",
    );
    d.write_stdin(&lines(0, 500));
    assert!(b.wait_for_lines(500, T));
    let pings = |f: &FakeInflux| {
        f.all_requests()
            .iter()
            .filter(|r| r.path == "/ping")
            .count()
    };
    let before = pings(&a);
    std::thread::sleep(Duration::from_secs(3));
    let during = pings(&a) - before;
    // At a backoff of up to 400 ms (full jitter), 3 s hold a few dozen probes at most; a loop
    // without a pause would make thousands.
    println!("{during} pings of the failing URL in 3 s");
    assert!(during <= 60, "{during} pings in 3 s");
    assert!(during >= 2, "the down URL is still probed: {during}");
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_each_line_once(&arrivals(&[&b]), 500);
}
