//! The pipeline behind the inputs: bounded chunk queue → batcher thread → one sender task per
//! delivery lane (an output, or a URL of a sharded output), each lane with its spool and the
//! task that makes it durable.
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
use crate::batcher::{Batcher, Lane};
use crate::config::{FsyncPolicy, Settings};
use crate::lanes;
use crate::output::{self, MemoryGate, Sender};
use crate::queue::{self, ChunkTx};
use crate::reject::DeadLetter;
use crate::spool::{Backlog, Spool};
use crate::telemetry::{OutputStats, Stats};

pub struct Pipeline {
    pub acks: Arc<AckRouter>,
    pub dead_letter: Arc<DeadLetter>,
    /// Every delivery lane, in output order.
    pub lanes: Vec<LaneRun>,
    chunks: Option<ChunkTx>,
    deadline: watch::Sender<Option<Instant>>,
    batcher: std::thread::JoinHandle<()>,
}

/// One running delivery lane: an output, or one URL of a sharded output.
pub struct LaneRun {
    /// Index of its output in `Settings::outputs`.
    pub output: usize,
    /// The URL it holds, for a shard lane.
    pub shard: Option<String>,
    pub spool: Arc<Spool>,
    pub sender: Arc<Sender>,
    pub stats: Arc<OutputStats>,
    sender_task: JoinHandle<()>,
    sync_stop: CancellationToken,
    sync_task: JoinHandle<()>,
}

impl Pipeline {
    /// Opens the dead-letter file and every lane's spool, and starts the batcher, a sender
    /// and a spool sync task per lane. `cancel` is the inputs' cancellation: once it is
    /// cancelled, the batcher stops waiting for spool space or memory.
    pub fn open(
        settings: &Settings,
        stats: &Arc<Stats>,
        cancel: CancellationToken,
    ) -> anyhow::Result<Pipeline> {
        let dead_letter = Arc::new(DeadLetter::open(
            &settings.state_dir,
            settings.agent.rejected_max_bytes,
        )?);
        let plan = lanes::plan(settings);
        let out_stats: Vec<Arc<OutputStats>> = settings
            .outputs
            .iter()
            .map(|o| stats.register_output(&o.name))
            .collect();
        let acks = Arc::new(AckRouter::default());
        let (deadline, deadline_rx) = watch::channel(None::<Instant>);
        let mut runs = Vec::new();
        let mut lanes = Vec::new();
        for lp in &plan.lanes {
            let out = out_stats[lp.output].clone();
            let spool = Arc::new(Spool::open_dir(
                lp.spool_dir.clone(),
                &settings.spool,
                out.register_spool(),
            )?);
            let backlog = spool.backlog();
            if backlog.records > 0 {
                tracing::info!(
                    output = %out.name,
                    spool = %spool.dir().display(),
                    records = backlog.records,
                    lines = backlog.lines,
                    bytes = backlog.bytes,
                    "spool holds undelivered data from an earlier run; replaying it first"
                );
            }
            let spooled = Arc::new(Notify::new());
            let links = output::Links {
                stats: stats.clone(),
                out: out.clone(),
                dead_letter: dead_letter.clone(),
                acks: acks.clone(),
                spool: spool.clone(),
                spooled: spooled.clone(),
                deadline: deadline_rx.clone(),
            };
            let sender = Arc::new(Sender::new(&lp.settings, links)?);
            let memory = Arc::new(MemoryGate::new(lp.settings.memory_limit));
            let (batch_tx, batch_rx) = mpsc::unbounded_channel();
            let sender_task = tokio::spawn(sender.clone().run(batch_rx, memory.clone()));
            // Spool durability: fsync (per policy) and persist the cursor periodically; acks
            // of batches that became durable go back to their inputs.
            let sync_stop = CancellationToken::new();
            let sync_task = {
                let (spool, acks, stop) = (spool.clone(), acks.clone(), sync_stop.clone());
                let every = match settings.spool.fsync {
                    FsyncPolicy::Interval => settings.spool.fsync_interval,
                    _ => Duration::from_millis(500),
                };
                tokio::spawn(async move {
                    loop {
                        // With nothing to sync, sleep until the spool changes (an idle agent
                        // does not wake for this); then sync `every` after the change.
                        if !spool.needs_sync() {
                            tokio::select! {
                                _ = spool.sync_wanted().notified() => {}
                                _ = stop.cancelled() => break,
                            }
                            continue;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(every) => sync_spool(&spool, &acks).await,
                            _ = stop.cancelled() => break,
                        }
                    }
                })
            };
            let health = sender.clone();
            lanes.push(Lane {
                bucket: Arc::from(lp.settings.bucket.as_str()),
                gzip_level: lp.settings.gzip_level,
                out: batch_tx,
                memory,
                spool: spool.clone(),
                spooled,
                healthy: Box::new(move || health.healthy()),
                stats: out.clone(),
                spool_trouble: Default::default(),
            });
            runs.push(LaneRun {
                output: lp.output,
                shard: lp.shard.clone(),
                spool,
                sender,
                stats: out,
                sender_task,
                sync_stop,
                sync_task,
            });
        }
        let (chunks, chunk_rx) = queue::channel(queue::MAX_CHUNKS, queue::MAX_BYTES);
        let batcher = Batcher {
            chunks: chunk_rx,
            cancel,
            deadline: deadline_rx,
            limits: Limits {
                max_lines: settings.agent.batch_max_lines,
                max_bytes: settings.agent.batch_max_bytes,
                flush_interval: settings.agent.flush_interval,
            },
            lanes,
            routes: plan.routes,
            acks: acks.clone(),
            stats: stats.clone(),
            compress_threads: settings.agent.compress_threads,
        }
        .spawn()
        .context("cannot start the batcher thread")?;
        Ok(Pipeline {
            acks,
            dead_letter,
            lanes: runs,
            chunks: Some(chunks),
            deadline,
            batcher,
        })
    }

    /// The spools of output `output` (one, or one per URL when sharded).
    pub fn spools_of(&self, output: usize) -> Vec<Arc<Spool>> {
        self.lanes
            .iter()
            .filter(|l| l.output == output)
            .map(|l| l.spool.clone())
            .collect()
    }

    /// The senders of output `output`.
    pub fn senders_of(&self, output: usize) -> Vec<Arc<Sender>> {
        self.lanes
            .iter()
            .filter(|l| l.output == output)
            .map(|l| l.sender.clone())
            .collect()
    }

    /// The inputs' sender. The pipeline keeps none: once the inputs have dropped theirs, the
    /// batcher sees the queue close.
    pub fn take_chunks(&mut self) -> ChunkTx {
        self.chunks.take().expect("the chunk sender is taken once")
    }

    /// Drains after the inputs were cancelled, delivering until `deadline`, and returns what
    /// is left in each lane's spool, as (output index, backlog). Every acknowledgement has
    /// been routed when it returns.
    pub async fn drain(mut self, deadline: Instant) -> anyhow::Result<Vec<(usize, Backlog)>> {
        drop(self.chunks.take());
        let _ = self.deadline.send(Some(deadline));
        // The senders end once the batcher has dropped their channels and they delivered
        // (or spooled) what they hold; they run side by side, so waiting in turn is fine.
        for l in &mut self.lanes {
            (&mut l.sender_task).await.context("sender task failed")?;
        }
        let batcher = self.batcher;
        if tokio::task::spawn_blocking(move || batcher.join())
            .await
            .map_or(true, |r| r.is_err())
        {
            tracing::error!("the batcher thread panicked");
        }
        let mut left = Vec::new();
        for l in self.lanes {
            l.sync_stop.cancel();
            let _ = l.sync_task.await;
            // The sender is done, so no more delivery acks come; the last spool sync releases
            // the acks of what it made durable.
            sync_spool(&l.spool, &self.acks).await;
            left.push((l.output, l.spool.backlog()));
        }
        Ok(left)
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
