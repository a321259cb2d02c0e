//! The pipeline behind the inputs: bounded chunk queue → batcher thread → sender task, with the
//! spool and the task that makes it durable.
//!
//! [`Pipeline::open`] starts it; the inputs get their sender through [`Pipeline::take_chunks`].
//! [`Pipeline::drain`] runs the shutdown front to back: the batcher ends once every input has
//! dropped its sender, seals what it has and ends; the sender keeps delivering until
//! `shutdown_timeout` after shutdown began, spools what it could not deliver and ends; a last
//! spool sync releases the acknowledgements of what it made durable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::batch::{AckRouter, Limits};
use crate::batcher::Batcher;
use crate::config::{FsyncPolicy, Settings};
use crate::output::{self, MemoryGate, Sender};
use crate::queue::{self, ChunkTx};
use crate::reject::DeadLetter;
use crate::spool::{Backlog, Spool};
use crate::telemetry::Stats;

pub struct Pipeline {
    pub acks: Arc<AckRouter>,
    pub dead_letter: Arc<DeadLetter>,
    pub spool: Arc<Spool>,
    pub sender: Arc<Sender>,
    chunks: Option<ChunkTx>,
    deadline: watch::Sender<Option<Instant>>,
    batcher: std::thread::JoinHandle<()>,
    sender_task: JoinHandle<()>,
    sync_stop: CancellationToken,
    sync_task: JoinHandle<()>,
}

impl Pipeline {
    /// Opens the dead-letter file and the spool, and starts the batcher, the sender and the
    /// spool's sync task. `cancel` is the inputs' cancellation: once it is cancelled, the
    /// batcher stops waiting for spool space or memory.
    pub fn open(
        settings: &Settings,
        stats: &Arc<Stats>,
        cancel: CancellationToken,
    ) -> anyhow::Result<Pipeline> {
        let dead_letter = Arc::new(DeadLetter::open(
            &settings.state_dir,
            settings.agent.rejected_max_bytes,
        )?);
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
        let acks = Arc::new(AckRouter::default());
        let (deadline, deadline_rx) = watch::channel(None::<Instant>);
        let spooled = Arc::new(Notify::new());
        let links = output::Links {
            stats: stats.clone(),
            dead_letter: dead_letter.clone(),
            acks: acks.clone(),
            spool: spool.clone(),
            spooled: spooled.clone(),
            deadline: deadline_rx.clone(),
        };
        let sender = Arc::new(Sender::new(&settings.output, links)?);
        let memory = Arc::new(MemoryGate::new(settings.output.memory_limit));
        let (chunks, chunk_rx) = queue::channel(queue::MAX_CHUNKS, queue::MAX_BYTES);
        let (batch_tx, batch_rx) = mpsc::unbounded_channel();
        let batcher = Batcher {
            chunks: chunk_rx,
            cancel,
            deadline: deadline_rx,
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
        // Spool durability: fsync (per policy) and persist the cursor periodically; acks of
        // batches that became durable go back to their inputs.
        let sync_stop = CancellationToken::new();
        let sync_task = {
            let (spool, acks, stop) = (spool.clone(), acks.clone(), sync_stop.clone());
            let every = match settings.spool.fsync {
                FsyncPolicy::Interval => settings.spool.fsync_interval,
                _ => Duration::from_millis(500),
            };
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = tick.tick() => sync_spool(&spool, &acks).await,
                        _ = stop.cancelled() => break,
                    }
                }
            })
        };
        Ok(Pipeline {
            acks,
            dead_letter,
            spool,
            sender,
            chunks: Some(chunks),
            deadline,
            batcher,
            sender_task,
            sync_stop,
            sync_task,
        })
    }

    /// The inputs' sender. The pipeline keeps none: once the inputs have dropped theirs, the
    /// batcher sees the queue close.
    pub fn take_chunks(&mut self) -> ChunkTx {
        self.chunks.take().expect("the chunk sender is taken once")
    }

    /// Drains after the inputs were cancelled, delivering until `deadline`, and returns what
    /// is left in the spool. Every acknowledgement has been routed when it returns.
    pub async fn drain(mut self, deadline: Instant) -> anyhow::Result<Backlog> {
        drop(self.chunks.take());
        let _ = self.deadline.send(Some(deadline));
        self.sender_task.await.context("sender task failed")?;
        let batcher = self.batcher;
        if tokio::task::spawn_blocking(move || batcher.join())
            .await
            .map_or(true, |r| r.is_err())
        {
            tracing::error!("the batcher thread panicked");
        }
        self.sync_stop.cancel();
        let _ = self.sync_task.await;
        // The sender is done, so no more delivery acks come; the last spool sync releases the
        // acks of what it made durable.
        sync_spool(&self.spool, &self.acks).await;
        Ok(self.spool.backlog())
    }
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
