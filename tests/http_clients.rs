//! Clients nobody here wrote, through lineship's `[[input.http]]` into VictoriaMetrics: the
//! official InfluxDB 2 Python client (`influxdb-client` from PyPI, with its batching write
//! API, `tests/clients/influxdb_client_write.py`) and `curl` against the 1.x `/write`. Every
//! point is checked through `/api/v1/export`.
//!
//! The Python client runs from the interpreter named by `LINESHIP_INFLUX_PYTHON` (`.ci/run`
//! installs the client in a venv and sets it). Without it the test skips with a notice, and
//! under `LINESHIP_REQUIRE_REAL_SERVER=1` a skip is a failure.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{toml_path, toml_string, write_config, Daemon, VictoriaMetrics};

const BASE_MS: i64 = 1_700_000_000_000;

fn start_relay(dir: &Path, vm: &VictoriaMetrics, http: &str) -> (Daemon, String) {
    let cfg = write_config(
        dir,
        &format!(
            r#"state_dir = {state}
[agent]
flush_interval = "50ms"
[output]
url = {url}
bucket = "b"
[[input.http]]
listen = "127.0.0.1:0"
{http}
"#,
            state = toml_path(&dir.join("state")),
            url = toml_string(&vm.url()),
        ),
    );
    let mut d = Daemon::start(&cfg);
    let addr = d.log_field("lineship started", "http input listening", "listen");
    (d, format!("http://{addr}"))
}

/// Every `BASE_MS + i` for i < n in the series named `name` with label `run`.
fn assert_all_points(vm: &VictoriaMetrics, name: &str, run: &str, n: usize) {
    let selector = format!(r#"{{__name__="{name}",run="{run}"}}"#);
    let series = vm.wait_for_points(&selector, n, Duration::from_secs(60));
    let got: BTreeSet<i64> = series
        .iter()
        .flat_map(|(_, _, points)| points.iter().map(|(ts, _)| *ts))
        .collect();
    let missing = (0..n as i64)
        .filter(|i| !got.contains(&(BASE_MS + i)))
        .count();
    assert_eq!(missing, 0, "{missing} of {n} points of {name} missing");
}

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("LINESHIP_INFLUX_PYTHON").map(PathBuf::from);
    if p.is_none() && std::env::var("LINESHIP_REQUIRE_REAL_SERVER").as_deref() == Ok("1") {
        panic!("LINESHIP_INFLUX_PYTHON is not set and LINESHIP_REQUIRE_REAL_SERVER=1 turns a skip into a failure (.ci/run installs influxdb-client in a venv and sets it)");
    }
    p
}

#[test]
fn the_official_python_client_writes_through_lineship_into_victoria_metrics() {
    let Some(py) = python() else {
        eprintln!("SKIPPED the_official_python_client_writes_through_lineship_into_victoria_metrics: LINESHIP_INFLUX_PYTHON not set");
        return;
    };
    let Some(vm) = VictoriaMetrics::start_or_skip("the_official_python_client_writes") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (d, url) = start_relay(dir.path(), &vm, "tokens = [\"py-token\"]");
    let run = format!("py{}", std::process::id());
    const N: usize = 20_000;
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/influxdb_client_write.py");
    let out = Command::new(&py)
        .arg(&script)
        .args([&url, "py-token", "pybucket", &run, &N.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", py.display()));
    assert!(
        out.status.success(),
        "the Python client failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.stderr_so_far()
    );
    assert_all_points(&vm, "py_v", &run, N);
    d.terminate();
    assert_eq!(d.wait(Duration::from_secs(30)).code, Some(0));
}

#[test]
fn curl_writes_to_the_v1_endpoint_into_victoria_metrics() {
    let Some(vm) = VictoriaMetrics::start_or_skip("curl_writes_to_the_v1_endpoint") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (d, url) = start_relay(dir.path(), &vm, "");
    let run = format!("curl{}", std::process::id());
    const N: usize = 5_000;
    let mut body = String::new();
    for i in 0..N {
        writeln!(body, "curl,run={run} v={i}i {}", BASE_MS + i as i64).unwrap();
    }
    let file = dir.path().join("body.lp");
    std::fs::write(&file, &body).unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
        ])
        .arg(format!("@{}", file.display()))
        .arg(format!("{url}/write?db=curldb&precision=ms"))
        .output()
        .expect("curl is installed");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "204",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_all_points(&vm, "curl_v", &run, N);
    d.terminate();
    assert_eq!(d.wait(Duration::from_secs(30)).code, Some(0));
}
