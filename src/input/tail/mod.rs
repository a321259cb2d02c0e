//! The tail input (`[[input.tail]]`): follows files matched by globs, one thread per input.
//!
//! - [`tailer`]: the state machine (scan, read, rotation, truncation, acks, checkpoints),
//!   driven by `step(now)` so that tests drive it without threads or timers.
//! - [`file`]: one followed file: whole lines from an offset, acks → checkpoint offset.
//! - [`checkpoint`]: `state_dir/tail/checkpoints.json`, written atomically.
//! - [`fds`]: the budget of file descriptors: `max_open_files` per input, files read in turn.
//! - this file: the thread around a [`Tailer`]: inotify (the `notify` crate) on the
//!   directories that hold the files, a periodic glob rescan (and one on SIGHUP), a polling
//!   fallback when inotify is unavailable, and the shutdown order.
//!
//! Backpressure: a chunk is sent with a blocking `send`; while the channel is full the thread
//! reads nothing more, and the file is the buffer. Delivery: the checkpoint only advances past
//! lines whose batch was acknowledged, so after `kill -9` reading resumes at or before the
//! first undelivered line (at-least-once). Idle cost: with inotify a thread wakes for an
//! event, for shutdown (an [`OnCancel`] hook sends it a message) and otherwise at most every
//! [`IDLE_WAKE`]; it rescans the globs every [`RESCAN_EVERY`] and looks at every file only
//! every [`SAFETY_POLL`]; 1,000 idle files cost a few `fstat`s per second.

pub mod checkpoint;
pub mod fds;
mod file;
pub mod tailer;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::RecvTimeoutError;
use notify::event::{EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use checkpoint::Store;
pub use tailer::{AckInbox, Closed, Config, Tailer};

use super::text::TextFormat;
use super::wake::OnCancel;
use super::{Intake, Links};
use crate::config::{InputFormat, Settings};
use crate::queue::{self, ChunkTx};

/// How often the globs are rescanned without any event.
pub const RESCAN_EVERY: Duration = Duration::from_secs(2);
/// With inotify working: how often every file is looked at anyway (files outside watched
/// directories, missed events).
pub const SAFETY_POLL: Duration = Duration::from_secs(2);
/// Without inotify: how often every file is looked at.
pub const FALLBACK_POLL: Duration = Duration::from_millis(250);
/// Longest sleep of an idle tail thread (bounds how late a SIGHUP rescan and a checkpoint of
/// newly acknowledged lines can be; a stop wakes it at once). The same as [`RESCAN_EVERY`] and
/// [`SAFETY_POLL`], so an idle thread wakes once per period for all three.
pub const IDLE_WAKE: Duration = Duration::from_secs(2);
/// Checkpoint writes while offsets move, at most this often.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Raises the soft limit on open files to the hard limit (every open tailed file holds a
/// descriptor, and systemd's default soft limit is 1,024) and returns each tail input's
/// `max_open_files`, given the configured ones (see [`fds::budgets`]).
pub fn descriptor_budgets(configured: &[Option<usize>]) -> Vec<usize> {
    let limit = fds::raise_nofile();
    let budgets = fds::budgets(configured, limit);
    tracing::debug!(
        nofile_soft = limit.soft,
        nofile_hard = limit.hard,
        ?budgets,
        "open file limit"
    );
    budgets
}

/// Starts the `[[input.tail]]` inputs: builds their tailers, makes their first scans one input
/// after another in config order (so inputs with overlapping paths resume the same files on
/// every start; off the runtime's threads, as it reads files and checkpoints) and starts one
/// thread per input.
pub async fn start(settings: &Settings, links: &Links) -> anyhow::Result<Vec<JoinHandle<()>>> {
    if settings.inputs.tail.is_empty() {
        return Ok(Vec::new());
    }
    let inputs = &settings.inputs.tail;
    let budgets = descriptor_budgets(&inputs.iter().map(|t| t.max_open_files).collect::<Vec<_>>());
    let store = Arc::new(Store::open(&settings.state_dir, inputs.len())?);
    let agent = &settings.agent;
    let mut tailers = Vec::new();
    for (i, t) in inputs.iter().enumerate() {
        let intake = Intake::new(
            &t.line,
            agent.max_line_bytes,
            links.stats.register_input(t.name.clone()),
            links.dead_letter.clone(),
        );
        let inbox = Arc::new(AckInbox::default());
        let to_inbox = inbox.clone();
        // Dropped lines are passed too: the file may move on past them (when_full says so).
        links.acks.register(i as u32, move |a, _| to_inbox.push(a));
        let cfg = Config {
            input: i as u32,
            globs: t.paths.clone(),
            from_beginning: t.from_beginning,
            max_line_bytes: agent.max_line_bytes,
            // A quarter of a batch: never split across batches, batches stay >= 3/4 full. At
            // most a quarter of what a waiting input may queue, so several tail inputs share
            // the queue.
            chunk_lines: (agent.batch_max_lines / 4).clamp(1, u32::MAX as usize) as u32,
            chunk_bytes: (agent.batch_max_bytes / 4)
                .clamp(1, queue::MAX_BYTES / queue::WAITING_SHARE / 4),
            orphan_grace: t.rotate_wait,
            checkpoint_every: CHECKPOINT_EVERY,
            text: (t.line.format == InputFormat::Text).then(|| TextFormat::new(&t.line)),
            max_open_files: budgets[i],
        };
        tailers.push(
            Tailer::new(cfg, intake, store.clone(), inbox)
                .with_context(|| format!("config key `input.tail[{i}].paths`"))?,
        );
    }
    let tailers = tokio::task::spawn_blocking(move || {
        for tailer in &mut tailers {
            tailer.start(Instant::now());
        }
        tailers
    })
    .await
    .context("the first scan of the tail inputs failed")?;
    let mut threads = Vec::new();
    for tailer in tailers {
        let thread = Thread {
            tx: links.chunks.clone(),
            cancel: links.cancel.clone(),
            reloads: links.reloads.clone(),
            pipeline_done: links.pipeline_done.clone(),
        };
        threads.push(
            std::thread::Builder::new()
                .name("lineship-tail".into())
                .spawn(move || run(tailer, thread))
                .context("cannot start a tail thread")?,
        );
    }
    Ok(threads)
}

/// What a tail thread shares with the rest of the agent.
struct Thread {
    tx: ChunkTx,
    /// Cancelled when shutdown begins: stop reading (and drop `tx`).
    cancel: CancellationToken,
    /// Changes on SIGHUP: rescan the globs now.
    reloads: watch::Receiver<u64>,
    /// Cancelled once the sender has finished and the spool made its last sync (no more acks
    /// will come).
    pipeline_done: CancellationToken,
}

fn run(mut tailer: Tailer, thread: Thread) {
    let Thread {
        tx,
        cancel,
        mut reloads,
        pipeline_done,
    } = thread;
    let (ev_tx, ev_rx) = crossbeam_channel::unbounded::<Wake>();
    let stop_tx = ev_tx.clone();
    let _on_stop = OnCancel::new(&cancel, move || {
        let _ = stop_tx.send(Wake::Stop);
    });
    let mut watcher = match notify::recommended_watcher(move |r| {
        if !is_noise(&r) {
            let _ = ev_tx.send(Wake::Fs(r));
        }
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(input = %tailer.name(), error = %e, poll_ms = FALLBACK_POLL.as_millis() as u64, "cannot use inotify; polling the tailed files instead (raise fs.inotify.max_user_instances to fix)");
            None
        }
    };
    let mut watched: BTreeSet<PathBuf> = BTreeSet::new();
    let mut watched_scan = u64::MAX;

    let (mut last_rescan, mut last_poll) = (Instant::now(), Instant::now());
    while !cancel.is_cancelled() {
        let now = Instant::now();
        if reloads.has_changed().unwrap_or(false) {
            reloads.borrow_and_update();
            tracing::info!(input = %tailer.name(), "SIGHUP: rescanning the tail globs");
            tailer.request_rescan();
        }
        if now.duration_since(last_rescan) >= RESCAN_EVERY {
            tailer.request_rescan();
            last_rescan = now;
        }
        let poll_every = if watcher.is_some() {
            SAFETY_POLL
        } else {
            FALLBACK_POLL
        };
        if now.duration_since(last_poll) >= poll_every {
            tailer.mark_all_dirty();
            last_poll = now;
        }
        let more = match tailer.step(now, &mut |c| tx.send(c).is_ok()) {
            Ok(more) => more,
            Err(Closed) => break,
        };
        if let Some(w) = watcher.as_mut() {
            if tailer.scans() != watched_scan {
                watched_scan = tailer.scans();
                sync_watches(w, &mut watched, tailer.watch_dirs());
            }
        }
        let wait = if more {
            Duration::ZERO
        } else {
            // Sleep until the next periodic look, at most IDLE_WAKE.
            let next = (last_rescan + RESCAN_EVERY).min(last_poll + poll_every);
            next.saturating_duration_since(Instant::now())
                .min(IDLE_WAKE)
        };
        match ev_rx.recv_timeout(wait) {
            Ok(first) => {
                for ev in std::iter::once(first).chain(ev_rx.try_iter()) {
                    match ev {
                        Wake::Fs(ev) => on_event(&mut tailer, ev),
                        Wake::Stop => {}
                    }
                }
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
    }
    // Let the batcher finish, then keep taking acks until the sender is done, so the last
    // checkpoint covers everything that was delivered.
    drop(tx);
    drop(watcher);
    loop {
        tailer.apply_acks();
        if tailer.all_acked() {
            break;
        }
        if pipeline_done.is_cancelled() {
            tailer.apply_acks();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tailer.finish(Instant::now());
}

/// Events that tell the tailer nothing: a file or directory opened, read or closed without
/// writing (the glob rescan itself opens every watched directory). Passing them on would
/// wake the thread for its own reads.
fn is_noise(ev: &notify::Result<notify::Event>) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(
        ev,
        Ok(notify::Event {
            kind: EventKind::Access(
                AccessKind::Open(_)
                    | AccessKind::Read
                    | AccessKind::Close(AccessMode::Read | AccessMode::Execute)
            ),
            ..
        })
    ) && !ev.as_ref().is_ok_and(|e| e.need_rescan())
}

/// What wakes a tail thread.
enum Wake {
    /// A filesystem event from inotify.
    Fs(notify::Result<notify::Event>),
    /// Shutdown began (the loop condition looks at the token).
    Stop,
}

fn on_event(tailer: &mut Tailer, ev: notify::Result<notify::Event>) {
    match ev {
        Ok(ev) => {
            if ev.need_rescan() {
                tailer.request_rescan();
                tailer.mark_all_dirty();
            }
            match ev.kind {
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) if ev.paths.len() == 2 => {
                    tailer.renamed(&ev.paths[0], &ev.paths[1]);
                }
                EventKind::Create(_)
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Name(_)) => tailer.request_rescan(),
                _ => {}
            }
            for p in &ev.paths {
                tailer.mark_dirty_path(p);
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "watch error; looking at every file");
            tailer.request_rescan();
            tailer.mark_all_dirty();
        }
    }
}

/// Watches the directories in `want` (not recursively) and stops watching the others.
fn sync_watches(
    w: &mut notify::RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
    want: BTreeSet<PathBuf>,
) {
    for d in watched.difference(&want) {
        let _ = w.unwatch(d);
    }
    watched.retain(|d| want.contains(d));
    for d in want {
        if !watched.contains(&d) && w.watch(&d, RecursiveMode::NonRecursive).is_ok() {
            watched.insert(d);
        }
    }
}
