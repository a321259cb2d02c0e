//! The `[telemetry] listen` HTTP endpoint: `GET /metrics` (Prometheus text format, see
//! `metrics.rs`) and `GET /health`.
//!
//! `/health` answers 200 `{"status":"ok",…}` while the output delivers and the pipeline makes
//! progress, and 503 otherwise, with a JSON body saying why: the last HTTP status or transport
//! error, since when, the server's message, and the spool backlog. Once shutdown begins it
//! answers 503 `stopping` (the stages wind down then, so they are not judged for progress).
//! The JSON is built by the pure [`health_report`].
//!
//! The listener is bound by `run` before READY, so a bad address is a startup error; the
//! server task is aborted when `run` returns (dropping it closes every connection). A failed
//! accept (typically EMFILE: out of file descriptors) never ends the server: it is logged once
//! per episode ([`AcceptErrors`]), the loop sleeps [`ACCEPT_BACKOFF`] and tries again; the
//! waiting client stays in the kernel's backlog.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::{metrics, Health, Stats};
use crate::spool::Spool;
use crate::watchdog::Stage;

/// Binds the telemetry listener. The error names the config key.
pub fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let std = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .with_context(|| {
            format!("config key `telemetry.listen`: cannot listen on {addr} for /metrics and /health (is another process using the port?)")
        })?;
    tokio::net::TcpListener::from_std(std)
        .with_context(|| format!("config key `telemetry.listen`: cannot listen on {addr}"))
}

/// What the handlers read.
pub struct Telemetry {
    registry: Registry,
    stats: Arc<Stats>,
    /// Each output's spools, in output order.
    spools: Vec<Vec<Arc<Spool>>>,
    /// A stage older than this makes `/health` report `stalled`.
    stall_limit: Duration,
    stopping: AtomicBool,
}

impl Telemetry {
    pub fn new(stats: Arc<Stats>, spools: Vec<Vec<Arc<Spool>>>, stall_limit: Duration) -> Self {
        Telemetry {
            registry: metrics::registry(stats.clone(), spools.clone()),
            stats,
            spools,
            stall_limit,
            stopping: AtomicBool::new(false),
        }
    }

    /// Shutdown began: `/health` reports `stopping` from now on.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Relaxed);
    }

    fn health(&self) -> (u16, Value) {
        let state = if self.stopping.load(Relaxed) {
            Pipeline::Stopping
        } else {
            match self
                .stats
                .progress
                .stalled(Instant::now(), self.stall_limit)
            {
                Some((stage, age)) => Pipeline::Stalled(stage, age),
                None => Pipeline::Running,
            }
        };
        let now = SystemTime::now();
        let outputs = self.stats.outputs();
        let views: Vec<OutputView> = outputs
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let oldest = self
                    .spools
                    .get(i)
                    .and_then(|s| crate::spool::oldest_created_at(s));
                OutputView {
                    name: o.name.clone(),
                    health: o.health.lock().unwrap().clone(),
                    spool: SpoolView {
                        records: o.spool_sum(|s| &s.records),
                        lines: o.spool_sum(|s| &s.lines),
                        bytes: o.spool_sum(|s| &s.bytes),
                        oldest_created_at: oldest,
                    },
                    servers: o
                        .servers
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|s| {
                            (
                                s.url.clone(),
                                s.health.lock().unwrap().clone(),
                                s.down.load(Relaxed),
                            )
                        })
                        .collect(),
                }
            })
            .collect();
        several_outputs_report(&views, state, now)
    }
}

/// One output as `/health` shows it.
#[derive(Debug, Clone)]
pub struct OutputView {
    pub name: String,
    pub health: Health,
    pub spool: SpoolView,
    /// (URL, health, out of rotation).
    pub servers: Vec<(String, Health, bool)>,
}

/// Pure: `/health` over every output. The top-level `output` and `urls` are the worst
/// output's (a failing one first), `spool` sums every output's, and `outputs` lists each.
pub fn several_outputs_report(
    views: &[OutputView],
    pipeline: Pipeline,
    now: SystemTime,
) -> (u16, Value) {
    let worst = views
        .iter()
        .find(|v| !v.health.ok)
        .or_else(|| views.first());
    let total = SpoolView {
        records: views.iter().map(|v| v.spool.records).sum(),
        lines: views.iter().map(|v| v.spool.lines).sum(),
        bytes: views.iter().map(|v| v.spool.bytes).sum(),
        oldest_created_at: views.iter().filter_map(|v| v.spool.oldest_created_at).min(),
    };
    let h = worst.map(|w| w.health.clone()).unwrap_or_default();
    let (code, mut body) = health_report(&h, &total, pipeline, now);
    if let Some(w) = worst {
        body["output"]["name"] = w.name.clone().into();
        body["output"]["urls"] = urls_report(&w.servers, now);
        if !w.health.ok && views.len() > 1 && pipeline == Pipeline::Running {
            body["reason"] = format!(
                "output {}: {}",
                w.name,
                body["reason"].as_str().unwrap_or("")
            )
            .into();
        }
    }
    body["outputs"] = views
        .iter()
        .map(|v| {
            let (_, one) = health_report(&v.health, &v.spool, Pipeline::Running, now);
            let mut o = one["output"].clone();
            o["name"] = v.name.clone().into();
            o["spool"] = one["spool"].clone();
            o["urls"] = urls_report(&v.servers, now);
            o
        })
        .collect();
    (code, body)
}

/// The spool as `/health` shows it.
#[derive(Debug, Clone, Default)]
pub struct SpoolView {
    pub records: u64,
    pub lines: u64,
    pub bytes: u64,
    pub oldest_created_at: Option<SystemTime>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// What the pipeline itself is doing, for `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipeline {
    Running,
    /// A stage has not gone round for this long.
    Stalled(Stage, Duration),
    /// Shutdown began: draining.
    Stopping,
}

/// Pure: the `/health` status code and body.
pub fn health_report(
    h: &Health,
    spool: &SpoolView,
    pipeline: Pipeline,
    now: SystemTime,
) -> (u16, Value) {
    let for_s = now.duration_since(h.since).unwrap_or_default().as_secs();
    let last_status = if h.last.is_empty() { "none" } else { &h.last };
    let mut body = json!({
        "status": "ok",
        "output": {
            "healthy": h.ok,
            "last_status": last_status,
            "since": rfc3339(h.since),
            "for_seconds": for_s,
        },
        "spool": {
            "records": spool.records,
            "lines": spool.lines,
            "bytes": spool.bytes,
            "oldest_age_seconds": spool.oldest_created_at
                .map(|t| now.duration_since(t).unwrap_or_default().as_secs()),
        },
    });
    let mut code = 200;
    if !h.ok {
        code = 503;
        body["status"] = "failing".into();
        body["output"]["message"] = h.message.clone().into();
        body["reason"] = format!(
            "writes have been failing for {for_s}s (last: {last_status}); see output.message"
        )
        .into();
    }
    if pipeline == Pipeline::Stopping {
        code = 503;
        body["status"] = "stopping".into();
        body["reason"] = "shutting down: delivering what is left, then spooling the rest".into();
    }
    if let Pipeline::Stalled(stage, age) = pipeline {
        code = 503;
        body["status"] = "stalled".into();
        body["stalled"] = json!({ "stage": stage.name(), "for_seconds": age.as_secs() });
        body["reason"] = format!(
            "the {} has made no progress for {}s",
            stage.name(),
            age.as_secs()
        )
        .into();
    }
    (code, body)
}

/// Pure: each server of the output as `/health` lists it: (URL, health, out of rotation).
pub fn urls_report(servers: &[(String, Health, bool)], now: SystemTime) -> Value {
    servers
        .iter()
        .map(|(url, h, down)| {
            let mut v = json!({
                "url": url,
                "healthy": h.ok,
                "in_rotation": !down,
                "last_status": if h.last.is_empty() { "none" } else { &h.last },
                "since": rfc3339(h.since),
                "for_seconds": now.duration_since(h.since).unwrap_or_default().as_secs(),
            });
            if !h.ok {
                v["message"] = h.message.clone().into();
            }
            v
        })
        .collect()
}

/// Pause after a failed accept: retrying at once would spin while descriptors are short.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Failed accepts: the first of a run of failures is logged, the rest are counted and
/// reported once accepting works again.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    failing: u64,
}

impl AcceptErrors {
    /// An accept failed: whether to log it.
    pub fn failed(&mut self) -> bool {
        self.failing += 1;
        self.failing == 1
    }

    /// An accept worked: how many failed in a row before it, if any.
    pub fn accepted(&mut self) -> Option<u64> {
        Some(std::mem::take(&mut self.failing)).filter(|&n| n > 0)
    }
}

/// Serves `/metrics` and `/health` on `listener` until the returned task is aborted.
pub fn spawn(
    listener: tokio::net::TcpListener,
    telemetry: Arc<Telemetry>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Dropped with the task: aborting the server closes its connections.
        let mut connections = JoinSet::new();
        let mut errors = AcceptErrors::default();
        loop {
            while connections.try_join_next().is_some() {}
            let stream = match listener.accept().await {
                Ok((s, _)) => {
                    if let Some(failed) = errors.accepted() {
                        tracing::info!(failed, "telemetry endpoint accepts connections again");
                    }
                    s
                }
                Err(e) => {
                    if errors.failed() {
                        let out_of_fds =
                            matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                        let hint = if out_of_fds {
                            "; the process is out of file descriptors: raise LimitNOFILE= in the systemd unit (or ulimit -n), or lower the tail inputs' max_open_files"
                        } else {
                            ""
                        };
                        tracing::warn!(error = %e, retry_ms = ACCEPT_BACKOFF.as_millis() as u64, "telemetry endpoint cannot accept a connection; retrying (logged once until it works again){hint}");
                    }
                    // Back off instead of spinning; clients wait in the backlog.
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let t = telemetry.clone();
            connections.spawn(async move {
                let service = service_fn(move |req| {
                    let t = t.clone();
                    async move { Ok::<_, Infallible>(handle(&t, &req)) }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

fn handle<B>(t: &Telemetry, req: &hyper::Request<B>) -> hyper::Response<Full<Bytes>> {
    use hyper::Method;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return response(405, "text/plain; charset=utf-8", "use GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => response(
            200,
            metrics::CONTENT_TYPE,
            metrics::render(&t.registry).into(),
        ),
        "/health" => {
            let (code, body) = t.health();
            let mut text = body.to_string();
            text.push('\n');
            response(code, "application/json", text.into())
        }
        _ => response(
            404,
            "text/plain; charset=utf-8",
            "not found; try /metrics or /health\n".into(),
        ),
    }
}

fn response(code: u16, content_type: &str, body: Bytes) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(body));
    *r.status_mut() = hyper::StatusCode::from_u16(code).expect("valid status");
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn health(ok: bool, last: &str, message: &str, since: SystemTime) -> Health {
        Health {
            ok,
            last: last.into(),
            message: message.into(),
            since,
            since_instant: Instant::now(),
            by_probe: false,
        }
    }

    #[test]
    fn accept_failures_are_logged_once_per_run_and_counted() {
        let mut e = AcceptErrors::default();
        assert_eq!(e.accepted(), None);
        assert!(e.failed(), "the first failure is logged");
        assert!(!e.failed() && !e.failed(), "the rest are not");
        assert_eq!(e.accepted(), Some(3), "recovery reports the count");
        assert_eq!(e.accepted(), None);
        assert!(e.failed(), "a new run of failures is logged again");
    }

    #[test]
    fn each_url_is_listed_with_its_state() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let v = urls_report(
            &[
                ("http://a:8086/".into(), health(true, "204", "", t), false),
                (
                    "http://b:8086/".into(),
                    health(false, "connect", "refused", t),
                    true,
                ),
            ],
            t + Duration::from_secs(5),
        );
        assert_eq!(v[0]["url"], "http://a:8086/");
        assert_eq!(v[0]["healthy"], true);
        assert_eq!(v[0]["in_rotation"], true);
        assert!(v[0].get("message").is_none());
        assert_eq!(v[1]["healthy"], false);
        assert_eq!(v[1]["in_rotation"], false);
        assert_eq!(v[1]["last_status"], "connect");
        assert_eq!(v[1]["message"], "refused");
        assert_eq!(v[1]["for_seconds"], 5);
    }

    #[test]
    fn healthy_is_200_with_the_last_status_and_the_backlog() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let spool = SpoolView {
            records: 0,
            ..Default::default()
        };
        let (code, body) = health_report(
            &health(true, "204", "", t0),
            &spool,
            Pipeline::Running,
            t0 + Duration::from_secs(5),
        );
        assert_eq!(code, 200);
        assert_eq!(body["status"], "ok");
        assert_eq!(body["output"]["last_status"], "204");
        assert_eq!(body["output"]["since"], "2023-11-14T22:13:20Z");
        assert_eq!(body["spool"]["records"], 0);
        assert!(body.get("reason").is_none());
    }

    #[test]
    fn failing_is_503_with_status_since_message_and_backlog() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let spool = SpoolView {
            records: 3,
            lines: 300,
            bytes: 4096,
            oldest_created_at: Some(t0),
        };
        let (code, body) = health_report(
            &health(false, "503", "server answered 503: busy", t0),
            &spool,
            Pipeline::Running,
            t0 + Duration::from_secs(42),
        );
        assert_eq!(code, 503);
        assert_eq!(body["status"], "failing");
        assert_eq!(body["output"]["last_status"], "503");
        assert_eq!(body["output"]["for_seconds"], 42);
        assert_eq!(body["output"]["message"], "server answered 503: busy");
        assert_eq!(body["spool"]["lines"], 300);
        assert_eq!(body["spool"]["oldest_age_seconds"], 42);
        let reason = body["reason"].as_str().unwrap();
        assert!(reason.contains("42s") && reason.contains("503"), "{reason}");
    }

    #[test]
    fn a_stalled_stage_is_503_even_when_the_output_is_fine() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (code, body) = health_report(
            &health(true, "204", "", t0),
            &SpoolView::default(),
            Pipeline::Stalled(Stage::Batcher, Duration::from_secs(12)),
            t0,
        );
        assert_eq!(code, 503);
        assert_eq!(body["status"], "stalled");
        assert_eq!(body["stalled"]["stage"], "batcher");
        assert_eq!(body["stalled"]["for_seconds"], 12);
    }

    #[test]
    fn stopping_is_503_and_says_so() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (code, body) = health_report(
            &health(true, "204", "", t0),
            &SpoolView::default(),
            Pipeline::Stopping,
            t0,
        );
        assert_eq!(code, 503);
        assert_eq!(body["status"], "stopping");
        assert_eq!(body["output"]["healthy"], true);
    }
}
