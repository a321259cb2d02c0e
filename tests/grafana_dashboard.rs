//! The Grafana dashboard (`contrib/grafana/lineship.json`) against real data: a running
//! lineship's `/metrics`, scraped twice into VictoriaMetrics (which speaks PromQL), and every
//! query of every panel run there with Grafana's variables filled in. Each must parse and the
//! key ones must return data. (That each named metric is served at all is a unit test in
//! `src/telemetry/metrics.rs`.)

mod common;

use std::time::Duration;

use common::service::{config, daemon, lines};
use common::{get, telemetry_addr, FakeInflux, VictoriaMetrics};

const T: Duration = Duration::from_secs(60);

/// Grafana's variables as a dashboard over the last few minutes would fill them in.
fn fill(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$instance", ".*")
}

#[test]
fn every_panel_query_runs_against_scraped_lineship_metrics() {
    let Some(vm) =
        VictoriaMetrics::start_or_skip("every_panel_query_runs_against_scraped_lineship_metrics")
    else {
        return;
    };
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &fake.url(),
        "",
        "[telemetry]\nlisten = \"127.0.0.1:0\"\n",
    );
    let mut d = daemon(&cfg, &[]);
    let addr = telemetry_addr(&mut d);
    d.write_stdin(&lines(0, 1000));
    assert!(fake.wait_for_lines(1000, T));
    // The fake records a write before lineship has read its answer: wait for the count.
    let delivered = |n: u64| {
        common::wait_until(T, || {
            common::metric(
                &common::scrape(addr),
                "lineship_lines_delivered_total{output=\"default\"}",
            ) == n
        })
    };
    assert!(delivered(1000));
    vm.import_prometheus(&get(addr, "/metrics").2, "host-a:9273");
    std::thread::sleep(Duration::from_secs(2));
    d.write_stdin(&lines(1000, 1000));
    d.write_stdin(b"not line protocol\n");
    assert!(fake.wait_for_lines(2000, T));
    assert!(delivered(2000));
    let second = get(addr, "/metrics").2;

    vm.import_prometheus(&second, "host-a:9273");
    // Both scrapes are stored (so rates have two samples) before any panel is queried.
    let stored = vm.wait_for_points("lineship_lines_received_total", 2, T);
    assert_eq!(common::point_count(&stored), 2, "both scrapes were stored");

    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../contrib/grafana/lineship.json")).unwrap();
    const WITH_DATA: [&str; 8] = [
        "Lines lost (range)",
        "Output healthy",
        "Lines received vs delivered",
        "Invalid and dropped lines",
        "Write requests by status",
        "URLs in rotation",
        "Spool backlog",
        "Spool backlog and oldest batch",
    ];
    // Every query must parse each time; the panels that have data must show it (polled: a
    // rate needs both scrapes' samples, which VictoriaMetrics serves a moment apart).
    let run_all = || {
        let mut with_data = Vec::new();
        let mut queries = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = fill(target["expr"].as_str().unwrap());
                let (status, body) = vm.query(&expr);
                assert_eq!(status, 200, "panel {:?}: {expr}: {body}", panel["title"]);
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["status"], "success", "{expr}: {body}");
                queries += 1;
                if !v["data"]["result"].as_array().unwrap().is_empty() {
                    with_data.push((panel["title"].as_str().unwrap().to_owned(), v));
                }
            }
        }
        (with_data, queries)
    };
    let mut with_data = Vec::new();
    let mut queries = 0;
    let complete = common::wait_until(T, || {
        (with_data, queries) = run_all();
        WITH_DATA
            .iter()
            .all(|title| with_data.iter().any(|(t, _)| t == title))
    });
    let shown: Vec<&str> = with_data.iter().map(|(t, _)| t.as_str()).collect();
    assert!(
        complete,
        "panels with data: {shown:?}; expected {WITH_DATA:?}"
    );
    assert!(queries >= 15, "{queries}");
    let value = |title: &str| -> f64 {
        let (_, v) = with_data
            .iter()
            .find(|(t, _)| t == title)
            .unwrap_or_else(|| panic!("panel {title:?} shows no data"));
        v["data"]["result"][0]["value"][1]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(value("Lines lost (range)"), 0.0, "nothing was lost");
    assert_eq!(value("Output healthy"), 1.0);
    assert!(value("Lines received vs delivered") > 0.0);
    d.close_stdin();
    let out = d.wait(T);
    assert!(out.code.is_some(), "{}", out.stderr);
}
