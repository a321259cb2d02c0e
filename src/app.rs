//! A run: open → start → wait → drain.
//!
//! `run` opens the state directory, the service side (telemetry, signals) and the inputs'
//! sockets; starts the pipeline ([`crate::pipeline`]) and the inputs ([`crate::input`]); waits
//! for a signal or for stdin's end; then shuts down front to back: the inputs are cancelled and
//! drop their senders, the pipeline drains until `shutdown_timeout` after shutdown began, and
//! the inputs that wait for acknowledgements write their last checkpoints.

use std::future::Future;
use std::io::Read;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{OutputSettings, Settings};
use crate::input::{self, CancellationToken, Links, Sources};
use crate::pipeline::Pipeline;
use crate::reload::Reloader;
use crate::service::Service;
use crate::telemetry::Stats;

/// What a run did; `main` maps it to an exit code in stdin mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub lines_received: u64,
    pub lines_invalid: u64,
    /// This and the counts below it are summed over the outputs (a line delivered to two
    /// outputs counts twice); [`Report::outputs`] has each output's.
    pub lines_delivered: u64,
    pub lines_dead_lettered: u64,
    pub lines_partial_dropped: u64,
    pub lines_dropped: u64,
    /// Lines lost: neither delivered nor spooled.
    pub lines_undelivered: u64,
    /// Lines left in the spool at exit (delivered by a later run).
    pub lines_spooled: u64,
    /// Lines the spool dropped at its size cap.
    pub lines_spool_dropped: u64,
    /// Each output's figures, in the configured order.
    pub outputs: Vec<OutputReport>,
}

/// What one output did in a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputReport {
    pub name: String,
    pub lines_delivered: u64,
    pub lines_dead_lettered: u64,
    pub lines_partial_dropped: u64,
    pub lines_undelivered: u64,
    pub lines_spooled: u64,
    pub lines_spool_dropped: u64,
}

impl Report {
    /// Sums each output's figures into the totals.
    fn with_outputs(mut self, outputs: Vec<OutputReport>) -> Report {
        let sum = |f: fn(&OutputReport) -> u64| outputs.iter().map(f).sum::<u64>();
        self.lines_delivered = sum(|o| o.lines_delivered);
        self.lines_dead_lettered = sum(|o| o.lines_dead_lettered);
        self.lines_partial_dropped = sum(|o| o.lines_partial_dropped);
        self.lines_undelivered = sum(|o| o.lines_undelivered);
        self.lines_spooled = sum(|o| o.lines_spooled);
        self.lines_spool_dropped = sum(|o| o.lines_spool_dropped);
        self.outputs = outputs;
        self
    }
}

/// The world `run` needs that tests replace.
#[derive(Default)]
pub struct Io {
    /// Where the stdin input reads from (the process's stdin when `None`).
    pub stdin: Option<Box<dyn Read + Send>>,
    /// Counters; pass your own to watch them from outside.
    pub stats: Option<Arc<Stats>>,
    /// Bound UDP sockets, used by the `[[input.udp]]` whose `listen` equals their local
    /// address instead of binding one. `None`: take what systemd socket activation passed
    /// (`LISTEN_FDS`), if anything.
    pub udp_sockets: Option<Vec<std::net::UdpSocket>>,
}

/// Runs the agent until `shutdown` resolves or, with the stdin input, until stdin ends.
pub async fn run(
    settings: Settings,
    io: Io,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Report> {
    for o in &settings.outputs {
        warn_about_output(o);
    }
    // Open: what can fail is checked before anything starts.
    let gzip_engine =
        crate::batch::select_engine(settings.agent.gzip_engine).map_err(anyhow::Error::msg)?;
    let _lock = crate::state_dir::prepare(&settings.state_dir)?;
    let mut service = Service::prepare(&settings)?;
    // SIGHUP: inputs that react to reloads watch `links.reloads`.
    let reloader = Arc::new(Reloader::new(&settings.outputs));
    let sources = Sources {
        stdin: io.stdin,
        udp_sockets: io.udp_sockets,
    };
    let inputs = input::open(&settings, sources)?;
    let stats = io.stats.unwrap_or_default();

    // Start.
    let (cancel, pipeline_done) = (CancellationToken::new(), CancellationToken::new());
    let mut pipeline = Pipeline::open(&settings, &stats, cancel.clone())?;
    let links = Links {
        chunks: pipeline.take_chunks(),
        cancel: cancel.clone(),
        pipeline_done: pipeline_done.clone(),
        acks: pipeline.acks.clone(),
        dead_letter: pipeline.dead_letter.clone(),
        stats: stats.clone(),
        reloads: reloader.subscribe(),
    };
    let mut running = inputs.start(&settings, links).await?;
    tracing::info!(
        urls = %all_urls(&settings),
        state_dir = %settings.state_dir.display(),
        version = env!("CARGO_PKG_VERSION"),
        gzip_level_1 = gzip_engine,
        "lineship started"
    );
    service.ready(&settings, &stats, &pipeline, &reloader);

    // Wait.
    let mut summary = tokio::time::interval(settings.agent.summary_interval);
    summary.tick().await;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!(timeout = ?settings.agent.shutdown_timeout, "shutting down: draining the pipeline");
                break;
            }
            _ = running.finished() => {
                tracing::debug!("stdin ended; draining the pipeline");
                break;
            }
            _ = summary.tick() => {
                stats.log_summary();
                service.status(&stats);
            }
        }
    }

    // Drain, front to back.
    service.stopping();
    let deadline = crate::clock::after(Instant::now(), settings.agent.shutdown_timeout);
    cancel.cancel();
    let spool_dirs: Vec<(usize, std::path::PathBuf)> = pipeline
        .lanes
        .iter()
        .map(|l| (l.output, l.spool.dir().to_path_buf()))
        .collect();
    let left = pipeline.drain(deadline).await?;
    pipeline_done.cancel();
    running.join().await;

    let outputs: Vec<OutputReport> = stats
        .outputs()
        .iter()
        .enumerate()
        .map(|(i, o)| OutputReport {
            name: o.name.clone(),
            lines_delivered: o.lines_delivered.load(Relaxed),
            lines_dead_lettered: o.lines_dead_lettered.load(Relaxed),
            lines_partial_dropped: o.lines_partial_dropped.load(Relaxed),
            lines_undelivered: o.lines_undelivered.load(Relaxed),
            lines_spooled: left
                .iter()
                .filter(|(out, _)| *out == i)
                .map(|(_, b)| b.lines)
                .sum(),
            lines_spool_dropped: o.spool_sum(|s| &s.dropped_lines),
        })
        .collect();
    let report = Report {
        lines_received: stats.lines_received(),
        lines_invalid: stats.lines_invalid(),
        lines_dropped: stats.lines_dropped(),
        ..Report::default()
    }
    .with_outputs(outputs);
    stats.log_summary();
    for (i, o) in report.outputs.iter().enumerate() {
        let urls = settings.outputs[i].urls_text();
        if o.lines_spooled > 0 {
            let spools: Vec<String> = spool_dirs
                .iter()
                .filter(|(out, _)| *out == i)
                .map(|(_, d)| d.display().to_string())
                .collect();
            tracing::warn!(
                output = %o.name,
                lines = o.lines_spooled,
                spool = %spools.join(", "),
                urls = %urls,
                "not everything was delivered before shutdown; the rest is kept in the spool and the next run delivers it first"
            );
        }
        if o.lines_undelivered > 0 {
            tracing::error!(
                output = %o.name,
                lines = o.lines_undelivered,
                urls = %urls,
                "lines were neither delivered nor spooled and are LOST; see the errors above"
            );
        }
    }
    Ok(report)
}

/// Every output's URLs, for the start line.
fn all_urls(settings: &Settings) -> String {
    let all: Vec<String> = settings
        .outputs
        .iter()
        .map(|o| match settings.outputs.len() {
            1 => o.urls_text(),
            _ => format!("{}: {}", o.name, o.urls_text()),
        })
        .collect();
    all.join("; ")
}

fn warn_about_output(output: &OutputSettings) {
    let t = &output.key;
    if output.org.is_empty() {
        tracing::warn!(
            "{t}.org is empty: InfluxDB 2.x needs it (VictoriaMetrics and InfluxDB 3 do not)"
        );
    }
    if output.token.is_empty() {
        let env = if t == "output" {
            " or LINESHIP_TOKEN"
        } else {
            ""
        };
        tracing::warn!("no token configured ({t}.token or {t}.token_file{env}); requests to {} carry no Authorization header", output.urls_text());
    }
}
