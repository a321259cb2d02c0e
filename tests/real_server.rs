//! Real-server tests: the lineship binary against a real VictoriaMetrics (Debian package
//! `victoria-metrics`), checked point by point through `/api/v1/export`.
//!
//! Without the server installed these tests print a SKIPPED notice and pass; `.ci/run` sets
//! `LINESHIP_REQUIRE_REAL_SERVER=1`, which turns a skip into a failure.

mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

const LINES: usize = 100_000;
const HOSTS: usize = 50;
/// 2020-09-13T12:26:40Z in ms. Old on purpose: the harness runs VictoriaMetrics with a 100-year
/// retention, and a fixed base makes every timestamp predictable.
const BASE_MS: i64 = 1_600_000_000_000;

/// Line `i` is `lstest,host=h{i%50},run=RUN value={i}.5,n={i}i {BASE_MS + i}` in ms precision.
/// Every line has its own millisecond, so no two lines share a (series, timestamp) pair: neither
/// VictoriaMetrics' ms storage nor any deduplication can merge two of them, and each field of
/// each line must come back exactly once.
fn lstest_lines(run: &str) -> String {
    let mut body = String::with_capacity(LINES * 64);
    for i in 0..LINES {
        writeln!(
            body,
            "lstest,host=h{},run={run} value={i}.5,n={i}i {}",
            i % HOSTS,
            BASE_MS + i as i64
        )
        .expect("write to a String");
    }
    body
}

/// Checks the export against [`lstest_lines`]: exactly one `lstest_value` and one `lstest_n`
/// point per line, on the right series, at the right timestamp, with the right value.
fn verify_lstest(
    series: &[ExportedSeries],
    run: &str,
    bucket: &str,
    allow_duplicates: bool,
) -> Result<(), String> {
    let mut errors = Vec::new();
    let mut seen_value = vec![false; LINES];
    let mut seen_n = vec![false; LINES];
    for (name, labels, points) in series {
        let (seen, offset) = match name.as_str() {
            "lstest_value" => (&mut seen_value, 0.5),
            "lstest_n" => (&mut seen_n, 0.0),
            other => {
                errors.push(format!("unexpected series {other} {labels:?}"));
                continue;
            }
        };
        let host = labels.get("host").cloned().unwrap_or_default();
        if labels.get("run").map(String::as_str) != Some(run) {
            errors.push(format!("{name} {labels:?}: wrong run label"));
        }
        // VictoriaMetrics ignores org and bucket today; tolerate a db label naming the bucket.
        for key in labels.keys() {
            let allowed = key == "host" || key == "run" || (key == "db" && labels[key] == bucket);
            if !allowed {
                errors.push(format!("{name} {labels:?}: unexpected label {key}"));
            }
        }
        for &(ts, value) in points {
            let i = ts - BASE_MS;
            if !(0..LINES as i64).contains(&i) {
                errors.push(format!(
                    "{name}{{host={host}}}: timestamp {ts} out of range"
                ));
                continue;
            }
            let i = i as usize;
            if host != format!("h{}", i % HOSTS) {
                errors.push(format!("{name}: line {i} landed on host {host}"));
            }
            if value != i as f64 + offset {
                errors.push(format!("{name}: line {i} has value {value}"));
            }
            if std::mem::replace(&mut seen[i], true) && !allow_duplicates {
                errors.push(format!("{name}: line {i} exported twice"));
            }
        }
    }
    for (name, seen) in [("lstest_value", &seen_value), ("lstest_n", &seen_n)] {
        let missing: Vec<usize> = (0..LINES).filter(|&i| !seen[i]).collect();
        if !missing.is_empty() {
            errors.push(format!(
                "{name}: {} of {LINES} lines missing, first {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        let shown = errors.len().min(20);
        Err(format!(
            "{} problems, first {shown}:\n{}",
            errors.len(),
            errors[..shown].join("\n")
        ))
    }
}

#[test]
fn stdin_100k_lines_land_in_victoria_metrics() {
    let Some(vm) = VictoriaMetrics::start_or_skip("stdin_100k_lines_land_in_victoria_metrics")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let run = format!(
        "r{}x{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .subsec_nanos()
    );
    let bucket = "lstest";
    let config = write_config(
        dir.path(),
        &format!(
            r#"state_dir = {state_dir}

[agent]
flush_interval = "200ms"

[output]
url = {url}
org = "lineship-test"
bucket = "{bucket}"
token = "x"

[input.stdin]
enabled = true
precision = "ms"
"#,
            state_dir = toml_path(&dir.path().join("state")),
            url = toml_string(&vm.url()),
        ),
    );
    let body = lstest_lines(&run);
    assert_eq!(body.lines().count(), LINES);

    let out = run_stdin(&config, body.as_bytes(), Duration::from_secs(120));
    assert_eq!(
        out.code,
        Some(0),
        "lineship --stdin should deliver everything and exit 0; stderr:\n{}",
        out.stderr
    );

    let selector = format!(r#"{{__name__=~"lstest_.*",run="{run}"}}"#);
    let waited = Instant::now();
    let series = vm.wait_for_points(&selector, 2 * LINES, Duration::from_secs(60));
    eprintln!(
        "lineship took {:?}; export showed {} points {:?} after it exited",
        out.elapsed,
        point_count(&series),
        waited.elapsed()
    );
    if let Err(problems) = verify_lstest(&series, &run, bucket, false) {
        panic!("VictoriaMetrics does not hold the 100,000 lines lineship sent: {problems}");
    }
}

/// A crash test: stop the server mid-stream, keep sending, start it again; every line lands.
/// Retries are at-least-once, so a line may land twice, never zero times.
#[test]
fn victoria_metrics_stopped_mid_stream_loses_nothing() {
    let Some(mut vm) =
        VictoriaMetrics::start_or_skip("victoria_metrics_stopped_mid_stream_loses_nothing")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let run = format!("outage{}", std::process::id());
    let config = write_config(
        dir.path(),
        &format!(
            r#"state_dir = {state_dir}
[agent]
flush_interval = "100ms"
batch_max_lines = 2000
shutdown_timeout = "60s"
[output]
url = {url}
org = "lineship-test"
bucket = "lstest"
token = "x"
max_backoff = "500ms"
[input.stdin]
enabled = true
precision = "ms"
"#,
            state_dir = toml_path(&dir.path().join("state")),
            url = toml_string(&vm.url()),
        ),
    );
    let body = lstest_lines(&run);
    let all: Vec<&str> = body.split_inclusive('\n').collect();
    let mut cmd = lineship_command();
    cmd.arg("--config").arg(&config).arg("--stdin");
    let mut daemon = Daemon::spawn_with_open_stdin(cmd);
    let send = |d: &mut Daemon, from: usize, to: usize| {
        for chunk in all[from..to].chunks(5_000) {
            d.write_stdin(chunk.concat().as_bytes());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    send(&mut daemon, 0, 40_000);
    std::thread::sleep(Duration::from_millis(500));
    vm.stop();
    send(&mut daemon, 40_000, 70_000);
    std::thread::sleep(Duration::from_secs(1));
    vm.restart();
    send(&mut daemon, 70_000, LINES);
    daemon.close_stdin();
    let out = daemon.wait(Duration::from_secs(120));
    assert_eq!(
        out.code,
        Some(0),
        "every line delivered after the outage; stderr:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("writes are failing"),
        "the outage was noticed:\n{}",
        out.stderr
    );

    let selector = format!(r#"{{__name__=~"lstest_.*",run="{run}"}}"#);
    let series = vm.wait_for_points(&selector, 2 * LINES, Duration::from_secs(60));
    if let Err(problems) = verify_lstest(&series, &run, "lstest", true) {
        panic!("lines lost across the VictoriaMetrics outage: {problems}");
    }
}
