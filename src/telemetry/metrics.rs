//! `/metrics`: the counters in [`Stats`] in the Prometheus text exposition format (0.0.4).
//!
//! The encoding (HELP/TYPE lines, the `_total` suffix of counters, label escaping, number
//! formatting) is `prometheus-client`'s, the official Rust client. lineship keeps its own
//! lock-free atomics on the hot paths; a [`Collector`] reads them at scrape time, so scraping
//! costs the pipeline nothing and there is one source of truth for `/metrics`, the summary
//! line and the run report.
//!
//! Every name starts with `lineship_`. Per-input series carry `input` (its name: `stdin`,
//! `udp:127.0.0.1:8089`, `tail[0]`); invalid and dropped lines also `reason`; requests
//! `status` (the HTTP status, or `connect` / `timeout` / `transport` when none came).
//! Per-input numbers come from the table [`INPUT_METRICS`](super::INPUT_METRICS).

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{OutputStats, Stats, INPUT_METRICS};
use crate::spool::Spool;

/// `Content-Type` of the exposition.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Reads [`Stats`] (and the spool's backlog) on every scrape.
pub struct StatsCollector {
    stats: Arc<Stats>,
    /// Each output's spools, in output order.
    spools: Vec<Vec<Arc<Spool>>>,
}

impl fmt::Debug for StatsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatsCollector").finish_non_exhaustive()
    }
}

/// Builds the registry served on `/metrics`.
pub fn registry(stats: Arc<Stats>, spools: Vec<Vec<Arc<Spool>>>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StatsCollector { stats, spools }));
    registry
}

/// The exposition text for `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(8 << 10);
    // Writing into a String cannot fail; a collector error would be a bug.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::error!(error = %e, "cannot encode /metrics");
    }
    out
}

type Labels = Vec<(&'static str, String)>;

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge<N: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: N,
) -> fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

/// One metric with a sample per label set (a family with no samples still gets HELP/TYPE).
fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    gauge: bool,
    samples: &[(Labels, u64)],
) -> fmt::Result {
    let kind = if gauge {
        MetricType::Gauge
    } else {
        MetricType::Counter
    };
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        let sample = metric.encode_family(labels)?;
        if gauge {
            ConstGauge::new(*v).encode(sample)?;
        } else {
            ConstCounter::new(*v).encode(sample)?;
        }
    }
    Ok(())
}

/// A number of [`Stats`] exported as is.
struct StatMetric {
    name: &'static str,
    help: &'static str,
    gauge: bool,
    get: fn(&Stats) -> u64,
}

/// The agent-wide counters and gauges of [`Stats`]: name, help, gauge (or counter), value.
#[rustfmt::skip]
const STAT_METRICS: &[StatMetric] = &[
    StatMetric { name: "lineship_batches_sealed", gauge: false, get: |s| s.batches_sealed.load(Relaxed), help: "Batches sealed by the batcher (each is compressed once per distinct bucket and gzip_level among the outputs it goes to)." },
    StatMetric { name: "lineship_queue_bytes", gauge: true, get: |s| s.queue_bytes.load(Relaxed), help: "Bytes of checked lines queued between the inputs and the batcher (at most 16 MiB)." },
];

/// A number of [`OutputStats`] exported with the `output` label.
struct OutputMetric {
    name: &'static str,
    help: &'static str,
    gauge: bool,
    get: fn(&OutputStats) -> u64,
}

/// Each output's counters and gauges, a sample per output.
#[rustfmt::skip]
const OUTPUT_METRICS: &[OutputMetric] = &[
    OutputMetric { name: "lineship_lines_delivered", gauge: false, get: |s| s.lines_delivered.load(Relaxed), help: "Lines the output's servers accepted (2xx, or kept in a 422 partial write)." },
    OutputMetric { name: "lineship_lines_dead_lettered", gauge: false, get: |s| s.lines_dead_lettered.load(Relaxed), help: "Lines the output's servers refused for good (400 down to one line, 413 single line, other 4xx), written to the dead-letter file." },
    OutputMetric { name: "lineship_lines_partial_dropped", gauge: false, get: |s| s.lines_partial_dropped.load(Relaxed), help: "Lines the output's servers reported dropped in a 422 partial write." },
    OutputMetric { name: "lineship_lines_undelivered", gauge: false, get: |s| s.lines_undelivered.load(Relaxed), help: "Lines lost: neither delivered nor spooled (e.g. the spool could not be written at shutdown)." },
    OutputMetric { name: "lineship_batches_delivered", gauge: false, get: |s| s.batches_delivered.load(Relaxed), help: "Batches the output's servers accepted." },
    OutputMetric { name: "lineship_bytes_sent", gauge: false, get: |s| s.bytes_sent.load(Relaxed), help: "Request body bytes (compressed) of delivered batches." },
    OutputMetric { name: "lineship_retries", gauge: false, get: |s| s.retries.load(Relaxed), help: "Write attempts that failed and were retried after a backoff." },
    OutputMetric { name: "lineship_spool_dropped_lines", gauge: false, get: |s| s.spool_sum(|p| &p.dropped_lines), help: "Lines the output's spool discarded at its size cap (when_full)." },
    OutputMetric { name: "lineship_spool_corrupt_records", gauge: false, get: |s| s.spool_sum(|p| &p.corrupt_records), help: "Damaged spool records skipped at recovery or replay (their lines are lost)." },
    OutputMetric { name: "lineship_spool_corrupt_lines", gauge: false, get: |s| s.spool_sum(|p| &p.corrupt_lines), help: "Lines in damaged spool records, where the spool could count them (they are lost)." },
    OutputMetric { name: "lineship_memory_bytes", gauge: true, get: |s| s.memory_bytes.load(Relaxed), help: "Bytes of sealed, compressed batches held in memory for the output's senders (at most memory_limit per lane)." },
    OutputMetric { name: "lineship_spool_bytes", gauge: true, get: |s| s.spool_sum(|p| &p.bytes), help: "Bytes of the output's spool segment files on disk." },
    OutputMetric { name: "lineship_spool_records", gauge: true, get: |s| s.spool_sum(|p| &p.records), help: "Spooled batches not yet delivered." },
    OutputMetric { name: "lineship_spool_lines", gauge: true, get: |s| s.spool_sum(|p| &p.lines), help: "Lines in spooled batches not yet delivered." },
    OutputMetric { name: "lineship_output_healthy", gauge: true, get: |s| u64::from(s.health.lock().unwrap().ok), help: "1 while the output delivers, 0 while writes fail (see /health for why)." },
];

impl Collector for StatsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.stats;
        let inputs = s.inputs.lock().unwrap().clone();
        let e = &mut enc;

        for m in INPUT_METRICS {
            let samples: Vec<(Labels, u64)> = inputs
                .iter()
                .filter(|i| i.name.starts_with(m.inputs))
                .map(|i| (vec![("input", i.name.clone())], (m.get)(i)))
                .collect();
            family(
                e,
                &format!("lineship_{}", m.name),
                m.help,
                m.gauge,
                &samples,
            )?;
        }
        let by_reason = |pick: fn(&super::InputStats) -> Vec<(&'static str, u64)>| {
            inputs
                .iter()
                .flat_map(|i| {
                    pick(i).into_iter().map(|(reason, n)| {
                        (
                            vec![("input", i.name.clone()), ("reason", reason.to_owned())],
                            n,
                        )
                    })
                })
                .collect::<Vec<_>>()
        };
        family(
            e,
            "lineship_lines_invalid",
            "Lines rejected by the validator (copied to the dead-letter file), by input and reason.",
            false,
            &by_reason(|i| i.invalid.lock().unwrap().iter().map(|(r, n)| (*r, *n)).collect()),
        )?;
        family(
            e,
            "lineship_lines_dropped",
            "Lines an input dropped (e.g. UDP channel_full), by input and reason.",
            false,
            &by_reason(|i| {
                i.dropped
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(r, n)| (*r, *n))
                    .collect()
            }),
        )?;
        let answers: Vec<(Labels, u64)> = inputs
            .iter()
            .flat_map(|i| {
                let by_status = i.answers.lock().unwrap().clone();
                by_status.into_iter().map(|(status, n)| {
                    (
                        vec![("input", i.name.clone()), ("status", status.to_string())],
                        n,
                    )
                })
            })
            .collect();
        family(
            e,
            "lineship_http_requests",
            "Requests the HTTP inputs answered, by input and status.",
            false,
            &answers,
        )?;

        for m in STAT_METRICS {
            if m.gauge {
                gauge(e, m.name, m.help, (m.get)(s))?;
            } else {
                counter(e, m.name, m.help, (m.get)(s))?;
            }
        }
        let outputs = s.outputs();
        let by_output = |o: &OutputStats| vec![("output", o.name.clone())];
        for m in OUTPUT_METRICS {
            let samples: Vec<(Labels, u64)> =
                outputs.iter().map(|o| (by_output(o), (m.get)(o))).collect();
            family(e, m.name, m.help, m.gauge, &samples)?;
        }
        let requests: Vec<(Labels, u64)> = outputs
            .iter()
            .flat_map(|o| {
                let by_status = o.requests.lock().unwrap().clone();
                by_status
                    .into_iter()
                    .map(|(status, n)| (vec![("output", o.name.clone()), ("status", status)], n))
            })
            .collect();
        family(
            e,
            "lineship_requests",
            "Write requests by output and outcome: the HTTP status, or connect/timeout/transport when no answer came.",
            false,
            &requests,
        )?;

        let now = SystemTime::now();
        let ages: Vec<(Labels, f64)> = outputs
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let age = self
                    .spools
                    .get(i)
                    .and_then(|s| crate::spool::oldest_created_at(s))
                    .map(|t| now.duration_since(t).unwrap_or_default())
                    .unwrap_or_default();
                (by_output(o), age.as_secs_f64())
            })
            .collect();
        let mut m = e.encode_descriptor(
            "lineship_spool_oldest_age_seconds",
            "Age of the output's oldest undelivered spooled batch (0 when its spool is empty).",
            None,
            MetricType::Gauge,
        )?;
        for (labels, age) in &ages {
            ConstGauge::new(*age).encode(m.encode_family(labels)?)?;
        }

        let servers: Vec<(String, Arc<super::ServerStats>)> = outputs
            .iter()
            .flat_map(|o| {
                let list = o.servers.lock().unwrap().clone();
                list.into_iter().map(|srv| (o.name.clone(), srv))
            })
            .collect();
        let by_url: Vec<(Labels, u64)> = servers
            .iter()
            .flat_map(|(out, srv)| {
                let by_status = srv.requests.lock().unwrap().clone();
                by_status.into_iter().map(|(status, n)| {
                    (
                        vec![
                            ("output", out.clone()),
                            ("url", srv.url.clone()),
                            ("status", status),
                        ],
                        n,
                    )
                })
            })
            .collect();
        family(
            e,
            "lineship_url_requests",
            "Write requests by output, server URL and outcome (as lineship_requests_total).",
            false,
            &by_url,
        )?;
        let up: Vec<(Labels, u64)> = servers
            .iter()
            .map(|(out, srv)| {
                let ok = srv.health.lock().unwrap().ok && !srv.down.load(Relaxed);
                (
                    vec![("output", out.clone()), ("url", srv.url.clone())],
                    u64::from(ok),
                )
            })
            .collect();
        family(
            e,
            "lineship_url_up",
            "1 while a server URL is healthy and in rotation, 0 while it is out (see /health).",
            true,
            &up,
        )?;

        let ages: Vec<(Labels, f64)> = s
            .progress
            .ages(Instant::now())
            .iter()
            .map(|(stage, age)| (vec![("stage", stage.name().to_owned())], age.as_secs_f64()))
            .collect();
        let mut m = e.encode_descriptor(
            "lineship_stage_heartbeat_age_seconds",
            "Seconds since a pipeline stage's loop last went round; it stays near 1 or below unless the stage is wedged.",
            None,
            MetricType::Gauge,
        )?;
        for (labels, age) in &ages {
            ConstGauge::new(*age).encode(m.encode_family(labels)?)?;
        }
        let mut m = e.encode_descriptor(
            "lineship_build_info",
            "Always 1; the version label says which lineship runs.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64)
            .encode(m.encode_family(&vec![("version", env!("CARGO_PKG_VERSION").to_owned())])?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn exposition_names_labels_and_values() {
        let stats = Arc::new(Stats::default());
        let stdin = stats.register_input("stdin");
        stdin.lines.store(10, Relaxed);
        stdin.add_invalid("too_long", 2);
        stdin.add_invalid("bad", 1);
        let udp = stats.register_input("udp:127.0.0.1:8089");
        udp.add_dropped("channel_full", 7);
        udp.kernel_drops.store(3, Relaxed);
        let out = stats.register_output("default");
        out.lines_delivered.store(9, Relaxed);
        out.count_request("204");
        out.count_request("204");
        out.count_request("503");
        let a = out.register_server("http://a:8086/");
        a.count_request("204");
        let b = out.register_server("http://b:8086/");
        b.count_request("connect");
        b.down.store(true, Relaxed);
        out.register_spool().lines.store(42, Relaxed);
        out.register_spool().lines.store(8, Relaxed);
        let lake = stats.register_output("lake");
        lake.lines_delivered.store(5, Relaxed);
        lake.health.lock().unwrap().ok = false;
        let tail = stats.register_input("tail[0]");
        tail.files_open.store(4, Relaxed);
        tail.rotations.store(2, Relaxed);
        tail.truncations.store(1, Relaxed);
        let text = render(&registry(stats, Vec::new()));

        assert_eq!(
            sample(&text, r#"lineship_tail_files_open{input="tail[0]"}"#),
            Some("4")
        );
        assert_eq!(
            sample(&text, r#"lineship_tail_rotations_total{input="tail[0]"}"#),
            Some("2")
        );
        assert_eq!(
            sample(&text, r#"lineship_tail_truncations_total{input="tail[0]"}"#),
            Some("1")
        );
        assert!(
            !text.contains(r#"lineship_tail_files_open{input="stdin"}"#),
            "tail series only for tail inputs: {text}"
        );

        assert_eq!(
            sample(&text, r#"lineship_lines_received_total{input="stdin"}"#),
            Some("10")
        );
        assert_eq!(
            sample(
                &text,
                r#"lineship_lines_invalid_total{input="stdin",reason="too_long"}"#
            ),
            Some("2")
        );
        assert_eq!(
            sample(
                &text,
                r#"lineship_lines_invalid_total{input="stdin",reason="bad"}"#
            ),
            Some("1")
        );
        assert_eq!(
            sample(
                &text,
                r#"lineship_lines_dropped_total{input="udp:127.0.0.1:8089",reason="channel_full"}"#
            ),
            Some("7")
        );
        assert_eq!(
            sample(
                &text,
                r#"lineship_udp_kernel_drops_total{input="udp:127.0.0.1:8089"}"#
            ),
            Some("3")
        );
        assert!(
            !text.contains(r#"lineship_udp_kernel_drops_total{input="stdin"}"#),
            "UDP series only for UDP inputs: {text}"
        );
        assert_eq!(
            sample(&text, r#"lineship_lines_delivered_total{output="default"}"#),
            Some("9")
        );
        assert_eq!(
            sample(&text, r#"lineship_lines_delivered_total{output="lake"}"#),
            Some("5")
        );
        assert_eq!(
            sample(
                &text,
                r#"lineship_requests_total{output="default",status="204"}"#
            ),
            Some("2")
        );
        assert_eq!(
            sample(
                &text,
                r#"lineship_requests_total{output="default",status="503"}"#
            ),
            Some("1")
        );
        // A sharded output's spools add up.
        assert_eq!(
            sample(&text, r#"lineship_spool_lines{output="default"}"#),
            Some("50")
        );
        assert_eq!(
            sample(&text, r#"lineship_output_healthy{output="default"}"#),
            Some("1")
        );
        assert_eq!(
            sample(&text, r#"lineship_output_healthy{output="lake"}"#),
            Some("0")
        );
        assert_eq!(
            sample(
                &text,
                r#"lineship_url_requests_total{output="default",url="http://a:8086/",status="204"}"#
            ),
            Some("1")
        );
        assert_eq!(
            sample(
                &text,
                r#"lineship_url_requests_total{output="default",url="http://b:8086/",status="connect"}"#
            ),
            Some("1")
        );
        assert_eq!(
            sample(
                &text,
                r#"lineship_url_up{output="default",url="http://a:8086/"}"#
            ),
            Some("1")
        );
        assert_eq!(
            sample(
                &text,
                r#"lineship_url_up{output="default",url="http://b:8086/"}"#
            ),
            Some("0")
        );
        assert!(
            text.contains("# TYPE lineship_lines_delivered_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE lineship_spool_bytes gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE lineship_queue_bytes gauge\n")
                && text.contains("# TYPE lineship_memory_bytes gauge\n"),
            "{text}"
        );
        assert!(text.contains("# HELP lineship_retries_total "), "{text}");
        // Every sample line belongs to a metric announced with HELP and TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(name.starts_with("lineship_"), "{line}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let stats = Arc::new(Stats::default());
        stats
            .register_input("tail \"a\\b\"\n")
            .lines
            .store(1, Relaxed);
        let text = render(&registry(stats, Vec::new()));
        assert!(
            text.contains(r#"lineship_lines_received_total{input="tail \"a\\b\"\n"} 1"#),
            "{text}"
        );
    }

    /// The Grafana dashboard (`contrib/grafana/lineship.json`) names only series `/metrics`
    /// serves: a renamed metric fails here, not on an operator's screen.
    #[test]
    fn the_grafana_dashboard_names_only_served_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let out = stats.register_output("default");
        let spool_settings = crate::config::SpoolSettings {
            max_size: 1 << 20,
            when_full: crate::config::WhenFull::DropOldest,
            fsync: crate::config::FsyncPolicy::Never,
            fsync_interval: std::time::Duration::from_secs(1),
        };
        let spool = Arc::new(
            crate::spool::Spool::open(dir.path(), &spool_settings, out.register_spool()).unwrap(),
        );
        let text = render(&registry(stats, vec![vec![spool]]));
        let served: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        // A counter is announced as `name_total` or `name` depending on the encoder; a query
        // may use either the announced name or the sample name.
        let serves = |name: &str| {
            served.contains(name)
                || name
                    .strip_suffix("_total")
                    .is_some_and(|base| served.contains(base))
        };
        let dashboard = include_str!("../../contrib/grafana/lineship.json");
        let json: serde_json::Value =
            serde_json::from_str(dashboard).expect("the dashboard is JSON");
        assert!(json["panels"].as_array().is_some_and(|p| p.len() >= 8));
        let mut named = 0;
        for (i, _) in dashboard.match_indices("lineship_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                serves(&name),
                "the dashboard names {name}, which /metrics does not serve"
            );
            named += 1;
        }
        for must in [
            "lineship_lines_undelivered_total",
            "lineship_spool_dropped_lines_total",
            "lineship_spool_corrupt_lines_total",
            "lineship_udp_kernel_drops_total",
            "lineship_output_healthy",
            "lineship_requests_total",
            "lineship_spool_oldest_age_seconds",
        ] {
            assert!(dashboard.contains(must), "the dashboard lacks {must}");
        }
        assert!(named >= 15, "{named}");
    }
}
