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
    warn_about_output(&settings.output);
    // Open: what can fail is checked before anything starts.
    let _lock = crate::state_dir::prepare(&settings.state_dir)?;
    let mut service = Service::prepare(&settings)?;
    // SIGHUP: inputs that react to reloads watch `links.reloads`.
    let reloader = Arc::new(Reloader::new(
        settings.output.token_file.clone(),
        settings.output.token.clone(),
    ));
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
        urls = %settings.output.urls_text(),
        state_dir = %settings.state_dir.display(),
        version = env!("CARGO_PKG_VERSION"),
        "lineship started"
    );
    service.ready(
        &settings,
        &stats,
        &pipeline.spool,
        &pipeline.sender,
        &reloader,
    );

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
    let spool = pipeline.spool.clone();
    let left = pipeline.drain(deadline).await?;
    pipeline_done.cancel();
    running.join().await;

    let report = Report {
        lines_received: stats.lines_received(),
        lines_invalid: stats.lines_invalid(),
        lines_delivered: stats.lines_delivered.load(Relaxed),
        lines_dead_lettered: stats.lines_dead_lettered.load(Relaxed),
        lines_partial_dropped: stats.lines_partial_dropped.load(Relaxed),
        lines_dropped: stats.lines_dropped(),
        lines_undelivered: stats.lines_undelivered.load(Relaxed),
        lines_spooled: left.lines,
        lines_spool_dropped: stats.spool.dropped_lines.load(Relaxed),
    };
    stats.log_summary();
    if report.lines_spooled > 0 {
        tracing::warn!(
            lines = report.lines_spooled,
            records = left.records,
            spool = %spool.dir().display(),
            urls = %settings.output.urls_text(),
            "not everything was delivered before shutdown; the rest is kept in the spool and the next run delivers it first"
        );
    }
    if report.lines_undelivered > 0 {
        tracing::error!(
            lines = report.lines_undelivered,
            urls = %settings.output.urls_text(),
            "lines were neither delivered nor spooled and are LOST; see the errors above"
        );
    }
    Ok(report)
}

fn warn_about_output(output: &OutputSettings) {
    if output.org.is_empty() {
        tracing::warn!(
            "output.org is empty: InfluxDB 2.x needs it (VictoriaMetrics and InfluxDB 3 do not)"
        );
    }
    if output.token.is_empty() {
        tracing::warn!("no token configured (output.token, output.token_file or LINESHIP_TOKEN); requests carry no Authorization header");
    }
}
