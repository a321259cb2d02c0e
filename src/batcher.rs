//! The batcher thread: receives chunks from the inputs, groups them with [`Builder`], gzips
//! sealed batches and hands them to the sender — or, when the sender is behind (memory full),
//! the server is failing, or the spool already holds data, appends them to the spool.
//! With `when_full = "block"` a full spool blocks this thread, which fills the channel, which
//! pushes back on the inputs.
//!
//! Shutdown: the inputs stop when `cancel` is cancelled and drop their senders; the batcher
//! drains the channel until the last sender is gone (or, if an input is wedged, until the
//! shutdown deadline), seals everything and exits; dropping its batch sender tells the sender
//! that no more batches come. Once `cancel` is cancelled, nothing waits for spool space or
//! memory any more.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::select;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::queue::ChunkRx;

use crate::batch::{AckRouter, Batch, Builder, Encoder, Limits, RawBatch};
use crate::output::MemoryGate;
use crate::spool::{Appended, Spool};
use crate::telemetry::Stats;
use crate::watchdog::{Stage, BEAT_EVERY};

/// How long spool writes must work before an episode of failures is over.
const SPOOL_QUIET: Duration = Duration::from_secs(10);

/// Spool write failures, as the batcher sees them.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpoolTrouble {
    /// The last write failed.
    failing: bool,
    /// An episode logged at error: the last failure and how many there were.
    episode: Option<(Instant, u64)>,
}

pub struct Batcher {
    pub chunks: ChunkRx,
    /// Cancelled when shutdown begins.
    pub cancel: CancellationToken,
    /// The shutdown deadline, once shutdown began.
    pub deadline: watch::Receiver<Option<Instant>>,
    pub limits: Limits,
    pub gzip_level: u32,
    pub out: mpsc::UnboundedSender<Batch>,
    pub memory: Arc<MemoryGate>,
    pub spool: Arc<Spool>,
    /// Wakes the sender's replay when a batch was spooled.
    pub spooled: Arc<tokio::sync::Notify>,
    pub acks: Arc<AckRouter>,
    pub stats: Arc<Stats>,
    /// Whether spool writes fail (see `spool_write_result`).
    pub spool_trouble: std::cell::Cell<SpoolTrouble>,
}

impl Batcher {
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("lineship-batcher".into())
            .spawn(move || self.run())
    }

    fn run(self) {
        let mut builder = Builder::new(self.limits);
        let mut encoder = Encoder::new(self.gzip_level);
        let mut sealed: Vec<RawBatch> = Vec::new();
        loop {
            self.stats.progress.beat(Stage::Batcher);
            self.release_hold_if_delivering();
            self.stats
                .queue_bytes
                .store(self.chunks.queued_bytes() as u64, Relaxed);
            self.stats
                .memory_bytes
                .store(self.memory.used() as u64, Relaxed);
            let now = Instant::now();
            // Wake at least every BEAT_EVERY even when idle, so the watchdog sees the loop alive.
            let timeout = builder.next_deadline().map_or(BEAT_EVERY, |d| {
                d.saturating_duration_since(now).min(BEAT_EVERY)
            });
            select! {
                recv(self.chunks.select_handle()) -> msg => match msg {
                    Ok(c) => builder.push(self.chunks.taken(c), Instant::now(), &mut sealed),
                    Err(_) => break, // every input hung up
                },
                default(timeout) => {
                    builder.poll(Instant::now(), &mut sealed);
                    if self.past_deadline() {
                        tracing::warn!("an input did not stop by the shutdown deadline; sealing what arrived and not waiting for it any longer");
                        break;
                    }
                }
            }
            self.emit(&mut encoder, &mut sealed);
        }
        builder.flush_all(&mut sealed);
        self.emit(&mut encoder, &mut sealed);
    }

    fn past_deadline(&self) -> bool {
        self.deadline.borrow().is_some_and(|d| Instant::now() >= d)
    }

    /// While spool writes fail, inputs that can wait are held; once the output delivers again,
    /// what they send can go straight to it (or to memory), so they may go on. Also ends a
    /// logged episode of failures once writes have worked for a while.
    fn release_hold_if_delivering(&self) {
        let mut t = self.spool_trouble.get();
        if t.failing && self.stats.health.lock().unwrap().ok {
            self.chunks.hold_waiting(false);
        }
        if let Some((last, failures)) = t.episode {
            if !t.failing && last.elapsed() >= SPOOL_QUIET {
                tracing::info!(spool = %self.spool.dir().display(), failures, "spool writes work again");
                t.episode = None;
                self.spool_trouble.set(t);
            }
        }
    }

    /// Records whether the last spool write worked. A full disk fails one batch after another,
    /// and a small batch may still fit between big ones: one error starts an episode, which
    /// ends (logged at info) only after [`SPOOL_QUIET`] without failures.
    fn spool_write_result(&self, failed: Option<&std::io::Error>) {
        let mut t = self.spool_trouble.get();
        match failed {
            Some(e) => {
                t.failing = true;
                let failures = match t.episode {
                    None => {
                        tracing::error!(
                            error = %e,
                            spool = %self.spool.dir().display(),
                            "cannot write to the spool; holding sealed batches in memory (up to output.memory_limit) and pausing stdin and tail inputs until the spool or the server works again. Check disk space and permissions"
                        );
                        1
                    }
                    Some((_, n)) => {
                        tracing::debug!(error = %e, "spool write failed again");
                        n + 1
                    }
                };
                t.episode = Some((Instant::now(), failures));
            }
            None if t.failing => {
                t.failing = false;
                self.chunks.hold_waiting(false);
            }
            None => {}
        }
        self.spool_trouble.set(t);
    }

    fn emit(&self, encoder: &mut Encoder, sealed: &mut Vec<RawBatch>) {
        for raw in sealed.drain(..) {
            let batch = encoder.encode(raw);
            self.stats.batches_sealed.fetch_add(1, Relaxed);
            // Keep order: while the spool holds anything, new batches queue behind it. Also
            // spool when the server is failing or memory is full, so memory stays bounded.
            let healthy = self.stats.health.lock().unwrap().ok;
            let size = batch.body.len();
            if self.spool.unacked() == 0 && healthy && self.memory.try_acquire(size) {
                self.hand_over(batch, size);
                continue;
            }
            // Called every 100 ms while waiting for memory or spool space: waiting on the
            // sender or the server is not a wedge, so it counts as progress.
            let give_up = || {
                self.stats.progress.beat(Stage::Batcher);
                self.cancel.is_cancelled()
            };
            let res = self.spool.append(&batch, give_up);
            self.spool_write_result(res.as_ref().err());
            match res {
                Ok((Appended::Stored, durable)) => {
                    self.acks.ack(&durable);
                    self.spooled.notify_one();
                }
                // Dropped as configured: tailed files may move on past these lines.
                Ok((Appended::DroppedNewest, dropped)) => self.acks.dropped(&dropped),
                // Shutdown: withheld, so tailed lines are read again after the restart.
                Ok((Appended::GaveUp, _)) => {}
                Err(_) => {
                    // Nothing more is taken from inputs that can wait while the server is
                    // down too: what they read now could be neither delivered nor kept.
                    if !self.stats.health.lock().unwrap().ok {
                        self.chunks.hold_waiting(true);
                    }
                    // At shutdown nothing may wait on a sender stuck on a dead server.
                    self.memory.acquire(size, give_up);
                    self.hand_over(batch, size);
                }
            }
        }
    }

    fn hand_over(&self, batch: Batch, size: usize) {
        if let Err(e) = self.out.send(batch) {
            let lines = e.0.lines;
            self.memory.release(size);
            self.stats
                .lines_undelivered
                .fetch_add(lines as u64, Relaxed);
            tracing::error!(
                lines,
                "sender is gone; a sealed batch could not be handed over and is lost"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Chunk, Dest};
    use crate::config::{FsyncPolicy, SpoolSettings, WhenFull};
    use crate::line::Precision;
    use crate::queue::ChunkTx;

    struct Run {
        thread: std::thread::JoinHandle<()>,
        tx: ChunkTx,
        cancel: CancellationToken,
        deadline: watch::Sender<Option<Instant>>,
        out: mpsc::UnboundedReceiver<Batch>,
        _dir: tempfile::TempDir,
    }

    fn start() -> Run {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let settings = SpoolSettings {
            max_size: 1 << 20,
            when_full: WhenFull::DropNewest,
            fsync: FsyncPolicy::Never,
            fsync_interval: Duration::from_secs(1),
        };
        let spool = Arc::new(Spool::open(dir.path(), &settings, stats.spool.clone()).unwrap());
        let (tx, chunks) = crate::queue::channel(16, 1 << 20);
        let (out_tx, out) = mpsc::unbounded_channel();
        let (deadline, deadline_rx) = watch::channel(None);
        let cancel = CancellationToken::new();
        let thread = Batcher {
            chunks,
            cancel: cancel.clone(),
            deadline: deadline_rx,
            limits: Limits {
                max_lines: 1000,
                max_bytes: 1 << 20,
                // Only the drain seals.
                flush_interval: Duration::from_secs(3600),
            },
            gzip_level: 1,
            out: out_tx,
            memory: Arc::new(MemoryGate::new(1 << 20)),
            spool,
            spooled: Default::default(),
            acks: Default::default(),
            stats,
            spool_trouble: Default::default(),
        }
        .spawn()
        .unwrap();
        Run {
            thread,
            tx,
            cancel,
            deadline,
            out,
            _dir: dir,
        }
    }

    fn chunk() -> Chunk {
        Chunk {
            dest: Dest::new("b", Precision::Ns),
            data: b"m v=1i 1\n".to_vec(),
            lines: 1,
            ack: None,
        }
    }

    fn ends_within(thread: &std::thread::JoinHandle<()>, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while !thread.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        thread.is_finished()
    }

    #[test]
    fn ends_when_the_last_input_drops_its_sender_and_seals_what_it_holds() {
        let mut r = start();
        let second = r.tx.clone();
        r.tx.send(chunk()).unwrap();
        r.cancel.cancel();
        drop(r.tx);
        std::thread::sleep(Duration::from_millis(400));
        assert!(
            !r.thread.is_finished(),
            "an input still holds a sender: no quiet spell ends the batcher"
        );
        second.send(chunk()).unwrap();
        drop(second);
        assert!(ends_within(&r.thread, Duration::from_secs(5)));
        let batch = r.out.try_recv().expect("the drain sealed one batch");
        assert_eq!(batch.lines, 2);
    }

    #[test]
    fn an_input_that_never_lets_go_is_not_waited_for_past_the_deadline() {
        let mut r = start();
        r.tx.send(chunk()).unwrap();
        r.cancel.cancel();
        r.deadline.send(Some(Instant::now())).unwrap();
        assert!(ends_within(&r.thread, Duration::from_secs(5)));
        assert_eq!(r.out.try_recv().unwrap().lines, 1);
        drop(r.tx);
    }
}
