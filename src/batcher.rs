//! The batcher thread: receives chunks from the inputs, groups them with [`batch::Builder`],
//! gzips sealed batches and hands them to the sender, waiting at the [`MemoryGate`] when the
//! sender is behind (which fills the channel, which pushes back on the inputs).
//!
//! Shutdown: when `stop` closes, it keeps draining the channel until every input has hung up
//! or it stayed empty for a short grace period, seals everything and exits; dropping its
//! batch sender tells the sender that no more batches come.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, RecvTimeoutError};
use tokio::sync::mpsc;

use crate::batch::{Batch, Builder, Chunk, Encoder, Limits, RawBatch};
use crate::output::MemoryGate;
use crate::telemetry::Stats;

/// After stop, how long the channel must stay empty before the batcher stops waiting for
/// inputs that have not hung up yet (e.g. stdin blocked in `read`).
const STOP_GRACE: Duration = Duration::from_millis(300);

pub struct Batcher {
    pub chunks: Receiver<Chunk>,
    pub stop: Receiver<()>,
    pub limits: Limits,
    pub gzip_level: u32,
    pub out: mpsc::UnboundedSender<Batch>,
    pub memory: Arc<MemoryGate>,
    pub stats: Arc<Stats>,
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
        let mut stopping = false;
        loop {
            let now = Instant::now();
            let timeout = builder
                .next_deadline()
                .map_or(Duration::from_secs(3600), |d| {
                    d.saturating_duration_since(now)
                });
            if stopping {
                match self.chunks.recv_timeout(STOP_GRACE) {
                    Ok(c) => builder.push(c, Instant::now(), &mut sealed),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            } else {
                select! {
                    recv(self.chunks) -> msg => match msg {
                        Ok(c) => builder.push(c, Instant::now(), &mut sealed),
                        Err(_) => break, // every input hung up
                    },
                    recv(self.stop) -> _ => stopping = true,
                    default(timeout) => builder.poll(Instant::now(), &mut sealed),
                }
            }
            self.emit(&mut encoder, &mut sealed, stopping);
        }
        builder.flush_all(&mut sealed);
        self.emit(&mut encoder, &mut sealed, true);
    }

    fn emit(&self, encoder: &mut Encoder, sealed: &mut Vec<RawBatch>, stopping: bool) {
        for raw in sealed.drain(..) {
            let batch = encoder.encode(raw);
            self.stats.batches_sealed.fetch_add(1, Relaxed);
            // At shutdown nothing may wait on a sender that is itself waiting on a dead server.
            self.memory
                .acquire(batch.body.len(), || stopping || stop_closed(&self.stop));
            if let Err(e) = self.out.send(batch) {
                let lines = e.0.lines;
                self.memory.release(e.0.body.len());
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
}

fn stop_closed(stop: &Receiver<()>) -> bool {
    matches!(
        stop.try_recv(),
        Err(crossbeam_channel::TryRecvError::Disconnected)
    )
}
