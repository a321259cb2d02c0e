//! Wiring and shutdown order.
//!
//! `run` owns the pipeline: inputs → bounded chunk channel → batcher thread → sender task.
//! Shutdown closes things front to back: inputs stop, the batcher drains the channel and seals
//! what it has, the sender keeps delivering until `shutdown_timeout` after shutdown began and
//! then reports what it could not deliver.

use std::fs::File;
use std::future::Future;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::{mpsc, watch};

use crate::batch::{AckRouter, Limits};
use crate::batcher::Batcher;
use crate::config::{FsyncPolicy, InputFormat, Settings};
use crate::input::text::TextFormat;
use crate::input::{self, tail, Intake};
use crate::output::{MemoryGate, Sender};
use crate::reject::DeadLetter;
use crate::reload::Reloader;
use crate::service::{self, Service};
use crate::spool::Spool;
use crate::telemetry::Stats;

/// Chunks queued between the inputs and the batcher (small UDP reads make many small chunks).
const CHANNEL_CHUNKS: usize = 1024;
/// Bytes of checked lines queued between the inputs and the batcher: about 200 ms of UDP input
/// at 1M lines/s, and the bound that keeps memory flat when the inputs outrun the batcher.
/// stdin and tail may fill only a quarter of it (see [`crate::queue`]).
pub const CHANNEL_BYTES: usize = 16 << 20;

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
    if settings.inputs.stdin.is_none()
        && settings.inputs.udp.is_empty()
        && settings.inputs.tail.is_empty()
    {
        bail!("no input is configured: add an [[input.udp]] or [[input.tail]] table, or enable [input.stdin] (or pass --stdin)");
    }
    if settings.output.org.is_empty() {
        tracing::warn!(
            "output.org is empty: InfluxDB 2.x needs it (VictoriaMetrics and InfluxDB 3 do not)"
        );
    }
    if settings.output.token.is_empty() {
        tracing::warn!("no token configured (output.token, output.token_file or LINESHIP_TOKEN); requests carry no Authorization header");
    }

    std::fs::create_dir_all(&settings.state_dir).with_context(|| {
        format!(
            "cannot create state_dir {}; create it or point state_dir at a writable directory",
            settings.state_dir.display()
        )
    })?;
    service::check_state_dir_writable(&settings.state_dir)?;
    let _lock = lock_state_dir(&settings.state_dir)?;
    let mut service = Service::prepare(&settings)?;
    // SIGHUP: inputs that react to reloads subscribe with `reloader.subscribe()`.
    let reloader = Arc::new(Reloader::new(
        settings.output.token_file.clone(),
        settings.output.token.clone(),
    ));

    // UDP sockets are bound before anything starts, so a bind error ends the run cleanly.
    let mut inherited = match io.udp_sockets {
        Some(socks) => input::udp::Inherited::new(socks)?,
        None => input::udp::Inherited::from_env(),
    };
    let udp_inputs = settings
        .inputs
        .udp
        .iter()
        .map(|u| input::udp::open(u, &mut inherited))
        .collect::<anyhow::Result<Vec<_>>>()?;
    inherited.close_unclaimed();

    let stats = io.stats.unwrap_or_default();
    let dead_letter = Arc::new(DeadLetter::open(
        &settings.state_dir,
        settings.agent.rejected_max_bytes,
    )?);
    let (deadline_tx, deadline_rx) = watch::channel(None::<Instant>);
    let acks = Arc::new(AckRouter::default());
    let spool = Arc::new(Spool::open(
        &settings.state_dir,
        &settings.spool,
        stats.spool.clone(),
    )?);
    let backlog = spool.backlog();
    if backlog.records > 0 {
        tracing::info!(
            records = backlog.records,
            lines = backlog.lines,
            bytes = backlog.bytes,
            "spool holds undelivered data from an earlier run; replaying it first"
        );
    }
    let spooled = Arc::new(tokio::sync::Notify::new());
    let sender = Arc::new(Sender::new(
        &settings.output,
        stats.clone(),
        dead_letter.clone(),
        acks.clone(),
        spool.clone(),
        spooled.clone(),
        deadline_rx,
    )?);
    let memory = Arc::new(MemoryGate::new(settings.output.memory_limit));

    let (chunk_tx, chunk_rx) = crate::queue::channel(CHANNEL_CHUNKS, CHANNEL_BYTES);
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let (batch_tx, batch_rx) = mpsc::unbounded_channel();
    let batcher = Batcher {
        chunks: chunk_rx,
        stop: stop_rx,
        limits: Limits {
            max_lines: settings.agent.batch_max_lines,
            max_bytes: settings.agent.batch_max_bytes,
            flush_interval: settings.agent.flush_interval,
        },
        gzip_level: settings.output.gzip_level,
        out: batch_tx,
        memory: memory.clone(),
        spool: spool.clone(),
        spooled,
        acks: acks.clone(),
        stats: stats.clone(),
        spool_trouble: Default::default(),
    }
    .spawn()
    .context("cannot start the batcher thread")?;
    let sender_task = tokio::spawn(sender.clone().run(batch_rx, memory));

    // Inputs.
    let stop_inputs = Arc::new(AtomicBool::new(false));
    let (stdin_done_tx, stdin_done_rx) = tokio::sync::oneshot::channel::<()>();
    let stdin_mode = settings.inputs.stdin.is_some();
    if let Some(st) = &settings.inputs.stdin {
        let intake = Intake::new(
            &st.line,
            settings.agent.max_line_bytes,
            stats.register_input("stdin"),
            dead_letter.clone(),
        );
        let reader = io.stdin.unwrap_or_else(|| Box::new(std::io::stdin()));
        let (tx, stop, max) = (
            chunk_tx.clone(),
            stop_inputs.clone(),
            settings.agent.max_line_bytes,
        );
        std::thread::Builder::new()
            .name("lineship-stdin".into())
            .spawn(move || {
                input::stdin::run(reader, intake, max, tx, stop);
                let _ = stdin_done_tx.send(());
            })
            .context("cannot start the stdin thread")?;
    }
    let mut udp_threads = Vec::new();
    for udp in udp_inputs {
        let input_stats = stats.register_input(udp.name());
        let threads = udp
            .spawn(
                input_stats,
                dead_letter.clone(),
                settings.agent.max_line_bytes,
                chunk_tx.clone(),
                stop_inputs.clone(),
            )
            .inspect_err(|_| stop_inputs.store(true, Relaxed))
            .context("cannot start a UDP receive thread")?;
        udp_threads.extend(threads);
    }
    // Further inputs start here, each with a clone of `chunk_tx`, `stop_inputs`, its own
    // `stats.register_input(..)`, `dead_letter` and (if it needs acks) `acks`.
    let (tail_done_tx, tail_done_rx) = crossbeam_channel::bounded::<()>(0);
    let tail_rescan = Arc::new(AtomicU64::new(0));
    let mut tail_threads = Vec::new();
    if !settings.inputs.tail.is_empty() {
        let max_open_files = tail::descriptor_budgets(
            &settings
                .inputs
                .tail
                .iter()
                .map(|t| t.max_open_files)
                .collect::<Vec<_>>(),
        );
        let store = Arc::new(tail::Store::open(
            &settings.state_dir,
            settings.inputs.tail.len(),
        )?);
        let mut tailers = Vec::new();
        for (i, t) in settings.inputs.tail.iter().enumerate() {
            let intake = Intake::new(
                &t.line,
                settings.agent.max_line_bytes,
                stats.register_input(t.name.clone()),
                dead_letter.clone(),
            );
            let inbox = Arc::new(tail::AckInbox::default());
            let to_inbox = inbox.clone();
            acks.register(i as u32, move |a| to_inbox.push(a));
            let cfg = tail::Config {
                input: i as u32,
                globs: t.paths.clone(),
                from_beginning: t.from_beginning,
                max_line_bytes: settings.agent.max_line_bytes,
                // A quarter of a batch: never split across batches, batches stay >= 3/4 full.
                // At most a quarter of what a waiting input may queue, so several tail inputs
                // share the queue.
                chunk_lines: (settings.agent.batch_max_lines / 4).clamp(1, u32::MAX as usize)
                    as u32,
                chunk_bytes: (settings.agent.batch_max_bytes / 4)
                    .clamp(1, CHANNEL_BYTES / crate::queue::WAITING_SHARE / 4),
                orphan_grace: t.rotate_wait,
                checkpoint_every: tail::CHECKPOINT_EVERY,
                text: (t.line.format == InputFormat::Text).then(|| TextFormat::new(&t.line)),
                max_open_files: max_open_files[i],
            };
            tailers.push(
                tail::Tailer::new(cfg, intake, store.clone(), inbox)
                    .with_context(|| format!("config key `input.tail[{i}].paths`"))?,
            );
        }
        // First scans one input after another, in config order (files and checkpoints: off
        // the runtime's threads), so that inputs with overlapping paths resume the same files
        // on every start.
        let tailers = tokio::task::spawn_blocking(move || {
            for tailer in &mut tailers {
                tailer.start(Instant::now());
            }
            tailers
        })
        .await
        .context("the first scan of the tail inputs failed")?;
        for tailer in tailers {
            let links = tail::Links {
                tx: chunk_tx.clone(),
                stop: stop_inputs.clone(),
                rescan: tail_rescan.clone(),
                pipeline_done: tail_done_rx.clone(),
            };
            tail_threads.push(tail::spawn(tailer, links).context("cannot start a tail thread")?);
        }
        forward_reloads(reloader.subscribe(), tail_rescan.clone());
    }
    drop(tail_done_rx);

    // Only the inputs hold senders now: the batcher sees the channel close when they all end.
    drop(chunk_tx);

    tracing::info!(
        url = %settings.output.url,
        state_dir = %settings.state_dir.display(),
        version = env!("CARGO_PKG_VERSION"),
        "lineship started"
    );
    service.ready(&settings, &stats, &spool, &sender, &reloader);

    // Spool durability: fsync (per policy) and persist the cursor periodically; acks of
    // batches that became durable go back to their inputs.
    let sync_task = {
        let (spool, acks) = (spool.clone(), acks.clone());
        let every = match settings.spool.fsync {
            FsyncPolicy::Interval => settings.spool.fsync_interval,
            _ => Duration::from_millis(500),
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                sync_spool(&spool, &acks).await;
            }
        })
    };

    let mut summary = tokio::time::interval(settings.agent.summary_interval);
    summary.tick().await;
    tokio::pin!(shutdown);
    // With stdin enabled, the run ends at its EOF; otherwise only a signal ends it.
    let stdin_done = async move {
        if stdin_mode {
            let _ = stdin_done_rx.await;
        } else {
            std::future::pending::<()>().await
        }
    };
    tokio::pin!(stdin_done);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!(timeout = ?settings.agent.shutdown_timeout, "shutting down: draining the pipeline");
                break;
            }
            _ = &mut stdin_done => {
                tracing::debug!("stdin ended; draining the pipeline");
                break;
            }
            _ = summary.tick() => {
                stats.log_summary();
                service.status(&stats);
            }
        }
    }

    // Shutdown, front to back.
    service.stopping();
    let deadline = crate::clock::after(Instant::now(), settings.agent.shutdown_timeout);
    stop_inputs.store(true, Relaxed);
    let _ = deadline_tx.send(Some(deadline));
    // UDP threads wake within their poll interval, drain what already arrived and send their
    // last chunk; join them before the batcher stops waiting for input.
    let _ = tokio::task::spawn_blocking(move || {
        for t in udp_threads {
            if t.join().is_err() {
                tracing::error!("a UDP receive thread panicked");
            }
        }
    })
    .await;
    drop(stop_tx);
    sender_task.await.context("sender task failed")?;
    let _ = tokio::task::spawn_blocking(move || batcher.join()).await;
    sync_task.abort();
    // The sender is done, so no more delivery acks come; the last spool sync releases the acks
    // of what it made durable. Then the tail inputs write their last checkpoints and end.
    sync_spool(&spool, &acks).await;
    drop(tail_done_tx);
    for t in tail_threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    let left = spool.backlog();
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
            url = %settings.output.url,
            "not everything was delivered before shutdown; the rest is kept in the spool and the next run delivers it first"
        );
    }
    if report.lines_undelivered > 0 {
        tracing::error!(
            lines = report.lines_undelivered,
            url = %settings.output.url,
            "lines were neither delivered nor spooled and are LOST; see the errors above"
        );
    }
    Ok(report)
}

async fn sync_spool(spool: &Arc<Spool>, acks: &Arc<AckRouter>) {
    let sp = spool.clone();
    match tokio::task::spawn_blocking(move || sp.sync()).await {
        Ok(Ok(durable)) => acks.ack(&durable),
        Ok(Err(e)) => {
            tracing::error!(error = %e, spool = %spool.dir().display(), "cannot sync the spool; check the disk")
        }
        Err(e) => tracing::error!(error = %e, "spool sync task failed"),
    }
}

/// SIGHUP (via the reloader) makes the tail inputs rescan their globs at once; they also
/// rescan every few seconds.
fn forward_reloads(mut reloads: watch::Receiver<u64>, rescan: Arc<AtomicU64>) {
    tokio::spawn(async move {
        while reloads.changed().await.is_ok() {
            rescan.fetch_add(1, Relaxed);
        }
    });
}

/// Takes an exclusive `flock` on `state_dir/lock`, so two processes never share a state_dir.
fn lock_state_dir(dir: &Path) -> anyhow::Result<Flock<File>> {
    let path = dir.join("lock");
    // Never through a symlink: the file is truncated below. Whatever is not a regular file
    // is renamed aside (a planted link must not keep the daemon from starting either).
    if let Ok(m) = std::fs::symlink_metadata(&path) {
        if !m.is_file() {
            let aside = crate::statefile::unused_name(&dir.join("lock.not-ours"));
            std::fs::rename(&path, &aside).with_context(|| {
                format!(
                    "{} is not a regular file and cannot be renamed aside; remove it",
                    path.display()
                )
            })?;
            tracing::warn!(path = %path.display(), moved_to = %aside.display(), "the lock file was not a regular file; it was renamed aside untouched");
        }
    }
    let f = crate::statefile::open(
        &path,
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false),
    )
    .with_context(|| format!("cannot open lock file {}", path.display()))?;
    // Held until the returned `Flock` is dropped at the end of `run` (or the process dies).
    // Its drop unlocks explicitly and panics only if `LOCK_UN` fails, which it cannot on the
    // open fd it owns.
    let mut f = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((mut f, _)) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            bail!(
            "state_dir {} is in use by another lineship process (pid {}); stop it, or give this run its own state_dir",
            dir.display(),
                pid.trim()
            );
        }
    };
    f.set_len(0)?;
    f.rewind()?;
    write!(f, "{}", std::process::id())?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_lock_file_is_never_truncated_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::symlink(&victim, state.join("lock")).unwrap();
        let _lock = lock_state_dir(&state).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(state.join("lock"))
            .unwrap()
            .is_file());
        assert!(std::fs::symlink_metadata(state.join("lock.not-ours"))
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
