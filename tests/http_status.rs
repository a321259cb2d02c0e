//! One test per row of the HTTP status table (README, "How lineship treats the server's
//! answers"), running the real pipeline in-process (`lineship::run` with stdin injected)
//! against the fake InfluxDB.

mod common;

use std::io::Cursor;
use std::time::Duration;

use common::{FakeInflux, Reply};
use lineship::{Io, Report, Settings};

/// Fast backoff so retry tests take milliseconds; everything else at its default.
fn settings(url: &str, state: &std::path::Path, extra_output: &str) -> Settings {
    let text = format!(
        r#"
state_dir = {state:?}
[agent]
flush_interval = "50ms"
batch_max_lines = 1000
shutdown_timeout = "20s"
[output]
url = "{url}"
org = "test-org"
bucket = "test-bucket"
token = "test-token"
initial_backoff = "10ms"
max_backoff = "100ms"
{extra_output}
[input.stdin]
enabled = true
"#
    );
    Settings::from_toml(&text, false, |_| None).expect("valid test config")
}

async fn run(settings: Settings, input: Vec<u8>) -> Report {
    let io = Io {
        stdin: Some(Box::new(Cursor::new(input))),
        ..Default::default()
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        lineship::run(settings, io, std::future::pending()),
    )
    .await
    .expect("run finished in time")
    .expect("run succeeded")
}

/// `n` distinct valid lines with timestamps, so bodies can be compared exactly.
fn lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "m,host=h{} v={i}i {}",
                i % 7,
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

fn dead_letter(state: &std::path::Path) -> String {
    std::fs::read_to_string(state.join("rejected/rejected.lp")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_with_design_headers_and_query() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let input = lines(2500);
    let report = run(settings(&fake.url(), dir.path(), ""), join(&input)).await;
    assert_eq!(report.lines_received, 2500);
    assert_eq!(report.lines_delivered, 2500);
    assert_eq!(
        sorted(fake.accepted_lines()),
        sorted(input),
        "byte for byte"
    );
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3, "1000-line batches");
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/api/v2/write");
        assert_eq!(r.param("org"), Some("test-org"));
        assert_eq!(r.param("bucket"), Some("test-bucket"));
        assert_eq!(r.param("precision"), Some("ns"));
        assert_eq!(r.header("authorization"), Some("Token test-token"));
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert!(r.header("user-agent").unwrap().starts_with("lineship/"));
        assert!(r.is_gzip());
    }
    assert_eq!(fake.empty_posts(), 0);
    assert!(
        fake.connections() <= 4,
        "keep-alive: at most max_in_flight connections, got {}",
        fake.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_level_zero_sends_identity() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let input = lines(10);
    run(
        settings(&fake.url(), dir.path(), "gzip_level = 0"),
        join(&input),
    )
    .await;
    let reqs = fake.requests();
    assert!(reqs.iter().all(|r| r.header("content-encoding").is_none()));
    assert_eq!(fake.accepted_lines(), input);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_400_bisects_down_to_exactly_the_poisoned_lines() {
    let fake = FakeInflux::with_responder(|req| {
        if req.contains("poison") {
            Reply::influx_error(400, "unable to parse 'poison': field type conflict")
        } else {
            Reply::status(204)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut input = lines(1000);
    for i in [3usize, 500, 998] {
        input[i] = format!(
            "m,host=poison v={i}i {}",
            1_700_000_000_000_000_000u64 + i as u64
        );
    }
    let report = run(settings(&fake.url(), dir.path(), ""), join(&input)).await;
    let good: Vec<String> = input
        .iter()
        .filter(|l| !l.contains("poison"))
        .cloned()
        .collect();
    assert_eq!(sorted(fake.accepted_lines()), sorted(good));
    assert_eq!(report.lines_dead_lettered, 3);
    assert_eq!(report.lines_delivered, 997);
    let dl = dead_letter(dir.path());
    for i in [3usize, 500, 998] {
        assert!(dl.contains(&input[i]), "dead letter holds line {i}: {dl}");
    }
    assert!(dl.contains("http 400: unable to parse 'poison'"), "{dl}");
    assert_eq!(dl.lines().filter(|l| !l.starts_with('#')).count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_413_splits_until_it_fits_and_dead_letters_a_lone_giant() {
    let fake = FakeInflux::with_responder(|req| {
        if req.lines().len() > 100 || req.contains("giant") {
            Reply::influx_error(413, "request too large")
        } else {
            Reply::status(204)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut input = lines(1000);
    input[10] = "m,host=giant v=1i 1".into();
    let report = run(settings(&fake.url(), dir.path(), ""), join(&input)).await;
    let good: Vec<String> = input
        .iter()
        .filter(|l| !l.contains("giant"))
        .cloned()
        .collect();
    assert_eq!(sorted(fake.accepted_lines()), sorted(good));
    assert_eq!(report.lines_dead_lettered, 1);
    assert!(fake.statuses().contains(&413));
    assert!(dead_letter(dir.path()).contains("m,host=giant v=1i 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_422_counts_dropped_and_does_not_retry() {
    let fake = FakeInflux::with_script(vec![Reply::influx_error(
        422,
        "partial write: points beyond retention policy dropped=2",
    )]);
    let dir = tempfile::tempdir().unwrap();
    let report = run(settings(&fake.url(), dir.path(), ""), join(&lines(10))).await;
    assert_eq!(fake.requests().len(), 1, "a 422 is not retried");
    assert_eq!(report.lines_partial_dropped, 2);
    assert_eq!(report.lines_delivered, 8);
}

async fn misconfigured_keeps_data_until_fixed(status: u16) {
    // The server refuses until the operator fixes it (after a few attempts), then accepts.
    let fake = FakeInflux::with_script(vec![
        Reply::influx_error(status, "nope"),
        Reply::influx_error(status, "nope"),
        Reply::influx_error(status, "nope"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let input = lines(50);
    let report = run(settings(&fake.url(), dir.path(), ""), join(&input)).await;
    assert_eq!(&fake.statuses()[..3], &[status; 3]);
    assert_eq!(fake.accepted_lines(), input, "nothing dropped for {status}");
    assert_eq!(report.lines_dead_lettered, 0);
    assert_eq!(report.lines_undelivered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_401_keeps_data_and_delivers_once_the_token_is_accepted() {
    misconfigured_keeps_data_until_fixed(401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_403_keeps_data() {
    misconfigured_keeps_data_until_fixed(403).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_404_keeps_data() {
    misconfigured_keeps_data_until_fixed(404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_keep_data_like_a_wrong_url() {
    // Not followed (a redirected POST can lose its body): output.url must be fixed.
    for status in [301u16, 302, 307, 308] {
        misconfigured_keeps_data_until_fixed(status).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_statuses_are_retried_with_backoff() {
    let script = [408u16, 429, 500, 502, 503, 504]
        .map(Reply::status)
        .to_vec();
    let fake = FakeInflux::with_script(script);
    let dir = tempfile::tempdir().unwrap();
    let input = lines(20);
    let report = run(settings(&fake.url(), dir.path(), ""), join(&input)).await;
    assert_eq!(fake.statuses(), vec![408, 429, 500, 502, 503, 504, 204]);
    assert_eq!(fake.accepted_lines(), input, "delivered exactly once");
    assert_eq!(report.lines_delivered, 20);
    let t = fake.request_times();
    assert!(t.windows(2).all(|w| w[1] >= w[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_in_seconds_is_honoured() {
    let fake = FakeInflux::with_script(vec![Reply::status(429).with_header("Retry-After", "1")]);
    let dir = tempfile::tempdir().unwrap();
    run(settings(&fake.url(), dir.path(), ""), join(&lines(5))).await;
    let t = fake.request_times();
    assert_eq!(t.len(), 2);
    let gap = t[1] - t[0];
    assert!(
        gap >= Duration::from_millis(950),
        "waited {gap:?}, not the 1 s the server asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_as_http_date_is_honoured() {
    let when = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3));
    let fake = FakeInflux::with_script(vec![Reply::status(503).with_header("Retry-After", when)]);
    let dir = tempfile::tempdir().unwrap();
    run(settings(&fake.url(), dir.path(), ""), join(&lines(5))).await;
    let t = fake.request_times();
    assert_eq!(t.len(), 2);
    // HTTP dates have whole-second resolution: at least 2 s of the 3 s remain.
    let gap = t[1] - t[0];
    assert!(gap >= Duration::from_millis(1900), "waited only {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_capped_by_max_retry_after() {
    let fake = FakeInflux::with_script(vec![Reply::status(429).with_header("Retry-After", "3600")]);
    let dir = tempfile::tempdir().unwrap();
    run(
        settings(&fake.url(), dir.path(), "max_retry_after = \"300ms\""),
        join(&lines(5)),
    )
    .await;
    let t = fake.request_times();
    assert_eq!(t.len(), 2);
    let gap = t[1] - t[0];
    assert!(
        gap >= Duration::from_millis(290) && gap < Duration::from_secs(5),
        "{gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_500_bisects_to_the_poisoned_line() {
    let fake = FakeInflux::with_responder(|req| {
        if req.contains("poison") {
            Reply::influx_error(500, "internal error")
        } else {
            Reply::status(204)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut input = lines(64);
    input[17] = "m,host=poison v=1i 1".into();
    let report = run(
        settings(&fake.url(), dir.path(), "poison_retries = 2"),
        join(&input),
    )
    .await;
    let good: Vec<String> = input
        .iter()
        .filter(|l| !l.contains("poison"))
        .cloned()
        .collect();
    assert_eq!(sorted(fake.accepted_lines()), sorted(good));
    assert_eq!(report.lines_dead_lettered, 1);
    assert!(dead_letter(dir.path()).contains("http 500: internal error\nm,host=poison v=1i 1\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_4xx_and_501_dead_letter_the_batch() {
    for status in [405u16, 409, 501] {
        let fake = FakeInflux::with_script(vec![Reply::influx_error(status, "no such thing")]);
        let dir = tempfile::tempdir().unwrap();
        let input = lines(7);
        let report = run(settings(&fake.url(), dir.path(), ""), join(&input)).await;
        assert_eq!(fake.requests().len(), 1, "{status} is not retried");
        assert_eq!(report.lines_dead_lettered, 7, "{status}");
        let dl = dead_letter(dir.path());
        assert!(
            dl.contains(&format!("http {status}: no such thing")),
            "{dl}"
        );
        for l in &input {
            assert!(dl.contains(l.as_str()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_data_goes_to_the_spool_at_the_shutdown_deadline() {
    let fake = FakeInflux::start().default_reply(Reply::status(503));
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&fake.url(), dir.path(), "");
    s.agent.shutdown_timeout = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let report = run(s, join(&lines(30))).await;
    assert_eq!(report.lines_spooled, 30, "kept in the spool, not lost");
    assert_eq!(report.lines_undelivered, 0);
    assert_eq!(report.lines_delivered, 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by shutdown_timeout"
    );
    assert!(fake.requests().len() >= 2, "retried until the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_lines_lose_only_themselves() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let good = lines(5);
    let input = format!(
        "{}\nnot line protocol\n# a comment\n\n{}\r\nm v=\"unterminated 1\n{}\n{}\n{}\n",
        good[0], good[1], good[2], good[3], good[4]
    );
    let report = run(settings(&fake.url(), dir.path(), ""), input.into_bytes()).await;
    assert_eq!(
        fake.accepted_lines(),
        good,
        "CRLF normalised, comment and blank skipped"
    );
    assert_eq!(report.lines_invalid, 2);
    let dl = dead_letter(dir.path());
    assert!(
        dl.contains("not line protocol") && dl.contains("m v=\"unterminated 1"),
        "{dl}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_timestamps_are_stamped_in_the_input_precision() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&fake.url(), dir.path(), "");
    let before = std::time::SystemTime::now();
    s.inputs.stdin.as_mut().unwrap().line.precision = lineship::line::Precision::S;
    run(s, b"m v=1\nm v=2 1700000000\n".to_vec()).await;
    let after = std::time::SystemTime::now();
    let got = fake.accepted_lines();
    assert_eq!(
        got[1], "m v=2 1700000000",
        "a timestamp already there is kept"
    );
    let ts: u64 = got[0]
        .strip_prefix("m v=1 ")
        .expect("stamped")
        .parse()
        .unwrap();
    let secs =
        |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(secs(before) <= ts && ts <= secs(after));
    assert_eq!(fake.requests()[0].param("precision"), Some("s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_requests_go_out_at_once_and_never_more() {
    let fake = FakeInflux::start();
    fake.set_response_delay(Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let input = lines(20_000);
    let mut s = settings(&fake.url(), dir.path(), "max_in_flight = 3");
    // Only the size limit seals batches: on a loaded machine a 50 ms flush could seal a short one.
    s.agent.flush_interval = Duration::from_secs(60);
    let report = run(s, join(&input)).await;
    assert_eq!(report.lines_delivered, 20_000);
    assert_eq!(fake.requests().len(), 20, "1000-line batches");
    // 20 batches, each answered after 200 ms: they overlap, three at a time.
    assert_eq!(fake.max_writes_in_flight(), 3);
    assert_eq!(sorted(fake.accepted_lines()), sorted(input));
}
