//! Counters, output health and logging setup.
//!
//! Counters are plain atomics shared through `Arc<Stats>`; the hot paths add whole chunk or
//! batch totals, never per line. Rare events (invalid lines, HTTP statuses) go through small
//! mutex-protected maps. The telemetry endpoint (`metrics.rs`, `endpoint.rs`) and the summary
//! log line read from here.

pub mod endpoint;
pub mod metrics;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::config::LogFormat;
use crate::spool::SpoolStats;
use crate::watchdog::Progress;

/// Counters of one input.
#[derive(Debug, Default)]
pub struct InputStats {
    pub name: String,
    /// Lines accepted by the validator and handed to the pipeline.
    pub lines: AtomicU64,
    /// Raw bytes read.
    pub bytes: AtomicU64,
    /// Invalid lines by reason.
    pub invalid: Mutex<BTreeMap<&'static str, u64>>,
    /// Lines dropped by reason (e.g. UDP `channel_full`).
    pub dropped: Mutex<BTreeMap<&'static str, u64>>,
    /// UDP: datagrams read.
    pub datagrams: AtomicU64,
    /// UDP: datagrams the kernel dropped because the socket's receive buffer was full
    /// (the socket's counter from `SO_MEMINFO`, reconciled with `/proc/net/udp`). Their lines
    /// were never seen.
    pub kernel_drops: AtomicU64,
    /// UDP: datagrams larger than the read buffer; the lines after the cut were lost.
    pub truncated: AtomicU64,
    /// Tail: files currently open.
    pub files_open: AtomicU64,
    /// Tail: files that left their path by rename (rotations).
    pub rotations: AtomicU64,
    /// Tail: files that shrank or were rewritten and were read again from 0 (copytruncate).
    pub truncations: AtomicU64,
    /// TCP, HTTP: connections open now.
    pub connections_open: AtomicU64,
    /// TCP, HTTP: connections accepted.
    pub connections: AtomicU64,
    /// TCP, HTTP: connections closed at once because `max_connections` were open.
    pub connections_refused: AtomicU64,
    /// HTTP: requests answered, by status.
    pub answers: Mutex<BTreeMap<u16, u64>>,
}

impl InputStats {
    pub fn new(name: impl Into<String>) -> Self {
        InputStats {
            name: name.into(),
            ..Default::default()
        }
    }
    pub fn invalid_total(&self) -> u64 {
        self.invalid.lock().unwrap().values().sum()
    }
    pub fn add_invalid(&self, reason: &'static str, n: u64) {
        *self.invalid.lock().unwrap().entry(reason).or_default() += n;
    }
    pub fn add_dropped(&self, reason: &'static str, n: u64) {
        *self.dropped.lock().unwrap().entry(reason).or_default() += n;
    }
}

/// A per-input number exported on `/metrics` as `lineship_<name>{input="…"}` (counters get
/// the `_total` suffix). A new `AtomicU64` in [`InputStats`] becomes a metric by adding a row
/// to [`INPUT_METRICS`]; `invalid` and `dropped` are exported by reason separately.
pub struct InputMetric {
    pub name: &'static str,
    pub help: &'static str,
    pub gauge: bool,
    /// Only inputs whose name starts with this get a series (`""`: every input).
    pub inputs: &'static str,
    pub get: fn(&InputStats) -> u64,
}

pub const INPUT_METRICS: &[InputMetric] = &[
    InputMetric {
        name: "lines_received",
        help: "Lines accepted by the validator and queued for delivery.",
        gauge: false,
        inputs: "",
        get: |i| i.lines.load(Relaxed),
    },
    InputMetric {
        name: "input_bytes",
        help: "Raw bytes read by the input.",
        gauge: false,
        inputs: "",
        get: |i| i.bytes.load(Relaxed),
    },
    InputMetric {
        name: "udp_datagrams",
        help: "UDP datagrams read.",
        gauge: false,
        inputs: "udp:",
        get: |i| i.datagrams.load(Relaxed),
    },
    InputMetric {
        name: "udp_kernel_drops",
        help: "UDP datagrams the kernel dropped because the socket receive buffer was full (the socket's drop counter); raise receive_buffer and net.core.rmem_max.",
        gauge: false,
        inputs: "udp:",
        get: |i| i.kernel_drops.load(Relaxed),
    },
    InputMetric {
        name: "udp_truncated_datagrams",
        help: "UDP datagrams larger than the read buffer; the line cut at the end was lost.",
        gauge: false,
        inputs: "udp:",
        get: |i| i.truncated.load(Relaxed),
    },
    InputMetric {
        name: "tail_files_open",
        help: "Files the tail input has open (live ones, and rotated or deleted ones still being drained).",
        gauge: true,
        inputs: "tail[",
        get: |i| i.files_open.load(Relaxed),
    },
    InputMetric {
        name: "tail_rotations",
        help: "Files that left their path by rename (rotations); each is read to its end.",
        gauge: false,
        inputs: "tail[",
        get: |i| i.rotations.load(Relaxed),
    },
    InputMetric {
        name: "tail_truncations",
        help: "Files that shrank or were rewritten (copytruncate) and were read again from their start.",
        gauge: false,
        inputs: "tail[",
        get: |i| i.truncations.load(Relaxed),
    },
    InputMetric {
        name: "http_connections_open",
        help: "HTTP connections open now.",
        gauge: true,
        inputs: "http:",
        get: |i| i.connections_open.load(Relaxed),
    },
    InputMetric {
        name: "http_connections_refused",
        help: "HTTP connections closed as soon as they were accepted because max_connections were open.",
        gauge: false,
        inputs: "http:",
        get: |i| i.connections_refused.load(Relaxed),
    },
    InputMetric {
        name: "tcp_connections_open",
        help: "TCP connections open now.",
        gauge: true,
        inputs: "tcp:",
        get: |i| i.connections_open.load(Relaxed),
    },
    InputMetric {
        name: "tcp_connections",
        help: "TCP connections accepted.",
        gauge: false,
        inputs: "tcp:",
        get: |i| i.connections.load(Relaxed),
    },
    InputMetric {
        name: "tcp_connections_refused",
        help: "TCP connections closed as soon as they were accepted because max_connections were open.",
        gauge: false,
        inputs: "tcp:",
        get: |i| i.connections_refused.load(Relaxed),
    },
];

/// Pipeline-wide counters; each output keeps its own in [`OutputStats`].
#[derive(Debug, Default)]
pub struct Stats {
    pub inputs: Mutex<Vec<Arc<InputStats>>>,
    /// Every output, in the configured order.
    pub outputs: Mutex<Vec<Arc<OutputStats>>>,
    pub batches_sealed: AtomicU64,
    /// Gauge: bytes of checked lines queued between the inputs and the batcher.
    pub queue_bytes: AtomicU64,
    /// Heartbeats of the pipeline stages (systemd watchdog, `/health`).
    pub progress: Arc<Progress>,
}

/// One output's counters: what `/metrics` shows with its `output` label, `/health` under
/// `outputs`, and the summary line per output.
#[derive(Debug)]
pub struct OutputStats {
    pub name: String,
    pub lines_delivered: AtomicU64,
    /// Lines the server refused for good (400 down to one line, 413 single line, other 4xx).
    pub lines_dead_lettered: AtomicU64,
    /// Lines the server reported dropped in a 422 partial write.
    pub lines_partial_dropped: AtomicU64,
    /// Lines given up on at shutdown (not delivered within `shutdown_timeout`).
    pub lines_undelivered: AtomicU64,
    pub batches_delivered: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub retries: AtomicU64,
    /// Gauge: bytes of sealed, compressed batches held in memory for this output.
    pub memory_bytes: AtomicU64,
    /// What its spools count (one, or one per URL when sharded; each keeps its own counters).
    pub spools: Mutex<Vec<Arc<SpoolStats>>>,
    pub requests: Mutex<BTreeMap<String, u64>>,
    /// Healthy while any of its servers accepts writes.
    pub health: Mutex<Health>,
    /// Each server of the output, in the configured order.
    pub servers: Mutex<Vec<Arc<ServerStats>>>,
}

impl OutputStats {
    pub fn new(name: impl Into<String>) -> Self {
        OutputStats {
            name: name.into(),
            lines_delivered: Default::default(),
            lines_dead_lettered: Default::default(),
            lines_partial_dropped: Default::default(),
            lines_undelivered: Default::default(),
            batches_delivered: Default::default(),
            bytes_sent: Default::default(),
            retries: Default::default(),
            memory_bytes: Default::default(),
            spools: Default::default(),
            requests: Default::default(),
            health: Default::default(),
            servers: Default::default(),
        }
    }

    pub fn register_server(&self, url: impl Into<String>) -> Arc<ServerStats> {
        let s = Arc::new(ServerStats::new(url));
        self.servers.lock().unwrap().push(s.clone());
        s
    }

    /// A new spool's counters (the output's first, or one more shard's).
    pub fn register_spool(&self) -> Arc<SpoolStats> {
        let s = Arc::new(SpoolStats::default());
        self.spools.lock().unwrap().push(s.clone());
        s
    }

    /// Sum of one spool counter over the output's spools.
    pub fn spool_sum(&self, f: impl Fn(&SpoolStats) -> &AtomicU64) -> u64 {
        self.spools
            .lock()
            .unwrap()
            .iter()
            .map(|s| f(s).load(Relaxed))
            .sum()
    }

    /// Counts one request outcome: an HTTP status or a transport error class.
    pub fn count_request(&self, outcome: &str) {
        count_outcome(&self.requests, outcome);
    }
}

/// One server (URL) of the output: what `/health` and `/metrics` show per URL.
#[derive(Debug)]
pub struct ServerStats {
    pub url: String,
    pub health: Mutex<Health>,
    /// Taken out of rotation (a write failed, or it refused the token or bucket) until a
    /// `GET /ping` answers or a write succeeds.
    pub down: std::sync::atomic::AtomicBool,
    /// Write requests by outcome, as [`Stats::requests`].
    pub requests: Mutex<BTreeMap<String, u64>>,
}

impl ServerStats {
    pub fn new(url: impl Into<String>) -> Self {
        ServerStats {
            url: url.into(),
            health: Mutex::new(Health::default()),
            down: Default::default(),
            requests: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts one request outcome, as [`Stats::count_request`].
    pub fn count_request(&self, outcome: &str) {
        count_outcome(&self.requests, outcome);
    }
}

/// Adds one to `outcome`'s count; the key is allocated only the first time it is seen.
fn count_outcome(counts: &Mutex<BTreeMap<String, u64>>, outcome: &str) {
    let mut counts = counts.lock().unwrap();
    match counts.get_mut(outcome) {
        Some(n) => *n += 1,
        None => {
            counts.insert(outcome.to_owned(), 1);
        }
    }
}

/// What the output last saw; `/health` and the summary line report it.
#[derive(Debug, Clone)]
pub struct Health {
    pub ok: bool,
    /// Last HTTP status, or a transport error class such as `connect`.
    pub last: String,
    /// What the last failure said (empty while healthy).
    pub message: String,
    pub since: SystemTime,
    pub since_instant: Instant,
    /// The failure was seen by the `GET /ping` probe, not by a write.
    pub by_probe: bool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            ok: true,
            last: "none".into(),
            message: String::new(),
            since: SystemTime::now(),
            since_instant: Instant::now(),
            by_probe: false,
        }
    }
}

impl Stats {
    pub fn register_output(&self, name: impl Into<String>) -> Arc<OutputStats> {
        let s = Arc::new(OutputStats::new(name));
        self.outputs.lock().unwrap().push(s.clone());
        s
    }

    /// A snapshot of the outputs' counters, in the configured order.
    pub fn outputs(&self) -> Vec<Arc<OutputStats>> {
        self.outputs.lock().unwrap().clone()
    }

    /// Sum of one counter over the outputs.
    pub fn outputs_sum(&self, f: impl Fn(&OutputStats) -> u64) -> u64 {
        self.outputs.lock().unwrap().iter().map(|o| f(o)).sum()
    }

    pub fn register_input(&self, name: impl Into<String>) -> Arc<InputStats> {
        let s = Arc::new(InputStats::new(name));
        self.inputs.lock().unwrap().push(s.clone());
        s
    }

    pub fn lines_received(&self) -> u64 {
        self.inputs
            .lock()
            .unwrap()
            .iter()
            .map(|i| i.lines.load(Relaxed))
            .sum()
    }

    pub fn lines_invalid(&self) -> u64 {
        self.inputs
            .lock()
            .unwrap()
            .iter()
            .map(|i| i.invalid_total())
            .sum()
    }

    pub fn lines_dropped(&self) -> u64 {
        self.inputs
            .lock()
            .unwrap()
            .iter()
            .map(|i| i.dropped.lock().unwrap().values().sum::<u64>())
            .sum()
    }

    /// Sum of one counter over the inputs.
    pub fn inputs_sum(&self, f: impl Fn(&InputStats) -> u64) -> u64 {
        self.inputs.lock().unwrap().iter().map(|i| f(i)).sum()
    }

    /// Per-reason totals over the inputs of `invalid` or `dropped`, as `reason=n,...`.
    pub fn reasons(
        &self,
        f: impl Fn(&InputStats) -> &Mutex<BTreeMap<&'static str, u64>>,
    ) -> String {
        let mut all: BTreeMap<&'static str, u64> = BTreeMap::new();
        for i in self.inputs.lock().unwrap().iter() {
            for (r, n) in f(i).lock().unwrap().iter() {
                *all.entry(r).or_default() += n;
            }
        }
        let parts: Vec<String> = all.iter().map(|(r, n)| format!("{r}={n}")).collect();
        parts.join(",")
    }

    /// Logs the periodic summary line.
    /// HTTP answers of every input by status, as `204=10,400=1`.
    fn http_answers(&self) -> String {
        let mut total: BTreeMap<u16, u64> = BTreeMap::new();
        for i in self.inputs.lock().unwrap().iter() {
            for (status, n) in i.answers.lock().unwrap().iter() {
                *total.entry(*status).or_default() += n;
            }
        }
        total
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether an input whose name starts with `prefix` is registered.
    fn has_input(&self, prefix: &str) -> bool {
        self.inputs
            .lock()
            .unwrap()
            .iter()
            .any(|i| i.name.starts_with(prefix))
    }

    pub fn log_summary(&self) {
        if self.has_input("tcp:") {
            tracing::info!(
                connections_open = self.inputs_sum(|i| i.connections_open.load(Relaxed)),
                connections = self.inputs_sum(|i| i.connections.load(Relaxed)),
                connections_refused = self.inputs_sum(|i| i.connections_refused.load(Relaxed)),
                "tcp summary"
            );
        }
        if self.has_input("http:") {
            tracing::info!(
                connections_open = self.inputs_sum(|i| i.connections_open.load(Relaxed)),
                answers_by_status = %self.http_answers(),
                "http summary"
            );
        }
        if self.has_input("tail[") {
            tracing::info!(
                files_open = self.inputs_sum(|i| i.files_open.load(Relaxed)),
                rotations = self.inputs_sum(|i| i.rotations.load(Relaxed)),
                truncations = self.inputs_sum(|i| i.truncations.load(Relaxed)),
                "tail summary"
            );
        }
        tracing::info!(
            lines_in = self.lines_received(),
            delivered = self.outputs_sum(|o| o.lines_delivered.load(Relaxed)),
            invalid = self.lines_invalid(),
            invalid_by_reason = %self.reasons(|i| &i.invalid),
            dropped = self.lines_dropped(),
            dropped_by_reason = %self.reasons(|i| &i.dropped),
            udp_datagrams = self.inputs_sum(|i| i.datagrams.load(Relaxed)),
            udp_kernel_drops = self.inputs_sum(|i| i.kernel_drops.load(Relaxed)),
            udp_truncated = self.inputs_sum(|i| i.truncated.load(Relaxed)),
            "summary"
        );
        // One line per output.
        for o in self.outputs() {
            let h = o.health.lock().unwrap().clone();
            tracing::info!(
                output = %o.name,
                delivered = o.lines_delivered.load(Relaxed),
                dead_lettered = o.lines_dead_lettered.load(Relaxed),
                partial_dropped = o.lines_partial_dropped.load(Relaxed),
                undelivered = o.lines_undelivered.load(Relaxed),
                retries = o.retries.load(Relaxed),
                spool_records = o.spool_sum(|s| &s.records),
                spool_lines = o.spool_sum(|s| &s.lines),
                spool_bytes = o.spool_sum(|s| &s.bytes),
                spool_dropped = o.spool_sum(|s| &s.dropped_lines),
                last_status = %h.last,
                healthy = h.ok,
                "output summary"
            );
        }
    }
}

/// Sets up the global tracing subscriber. `RUST_LOG` overrides `level`. Under journald
/// (`JOURNAL_STREAM` set) no ANSI colours and no timestamps are written: journald adds its own.
pub fn init_logging(level: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = !journald && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let res = match (format, journald) {
        (LogFormat::Json, true) => builder.json().without_time().try_init(),
        (LogFormat::Json, false) => builder.json().try_init(),
        (LogFormat::Text, true) => builder.without_time().try_init(),
        (LogFormat::Text, false) => builder.try_init(),
    };
    // A second init (tests running `run` in-process) keeps the first subscriber.
    let _ = res;
}
