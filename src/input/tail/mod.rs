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
//! first undelivered line (at-least-once). Idle cost: with inotify a thread wakes every
//! [`IDLE_WAKE`] to check the stop flag, and looks at every file only every
//! [`SAFETY_POLL`]; 1,000 idle files cost a few `fstat`s per second.

pub mod checkpoint;
pub mod fds;
mod file;
pub mod tailer;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use notify::event::{EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};

pub use checkpoint::Store;
pub use tailer::{AckInbox, Closed, Config, Tailer};

use crate::queue::ChunkTx;

/// How often the globs are rescanned without any event.
pub const RESCAN_EVERY: Duration = Duration::from_secs(2);
/// With inotify working: how often every file is looked at anyway (files outside watched
/// directories, missed events).
pub const SAFETY_POLL: Duration = Duration::from_secs(2);
/// Without inotify: how often every file is looked at.
pub const FALLBACK_POLL: Duration = Duration::from_millis(250);
/// Longest sleep of an idle tail thread (bounds how long a stop takes to be noticed).
pub const IDLE_WAKE: Duration = Duration::from_millis(200);
/// Checkpoint writes while offsets move, at most this often.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// What a tail thread shares with the rest of the agent.
pub struct Links {
    pub tx: ChunkTx,
    /// Set when shutdown begins: stop reading.
    pub stop: Arc<AtomicBool>,
    /// Bumped on SIGHUP: rescan the globs now.
    pub rescan: Arc<AtomicU64>,
    /// Disconnected once the sender has finished (no more acks will come).
    pub pipeline_done: Receiver<()>,
}

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

/// Starts the thread of one tail input; `tailer` must have been [`Tailer::start`]ed.
pub fn spawn(tailer: Tailer, links: Links) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("lineship-tail".into())
        .spawn(move || run(tailer, links))
}

fn run(mut tailer: Tailer, links: Links) {
    let Links {
        tx,
        stop,
        rescan,
        pipeline_done,
    } = links;
    let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
    let mut watcher = match notify::recommended_watcher(move |r| {
        let _ = ev_tx.send(r);
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
    let mut hups = rescan.load(Relaxed);
    while !stop.load(Relaxed) {
        let now = Instant::now();
        let h = rescan.load(Relaxed);
        if h != hups {
            hups = h;
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
        let wait = if more { Duration::ZERO } else { IDLE_WAKE };
        match ev_rx.recv_timeout(wait) {
            Ok(ev) => {
                on_event(&mut tailer, ev);
                for ev in ev_rx.try_iter() {
                    on_event(&mut tailer, ev);
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
        if let Err(RecvTimeoutError::Disconnected) =
            pipeline_done.recv_timeout(Duration::from_millis(50))
        {
            tailer.apply_acks();
            break;
        }
    }
    tailer.finish(Instant::now());
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
