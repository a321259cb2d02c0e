//! The batcher thread: receives chunks from the inputs, routes them to their delivery lanes
//! (outputs, and the URLs of a sharded output), groups them with [`Builder`], gzips sealed
//! batches once per (bucket, precision, gzip_level) and hands each lane its copy — or, when a
//! lane's sender is behind (memory full), its server is failing, or its spool already holds
//! data, appends the copy to that lane's spool.
//! With `when_full = "block"` a full spool blocks this thread, which fills the channel, which
//! pushes back on the inputs: a blocked output holds every input, and so every output.
//!
//! Shutdown: the inputs stop when `cancel` is cancelled and drop their senders; the batcher
//! drains the channel until the last sender is gone (or, if an input is wedged, until the
//! shutdown deadline), seals everything and exits; dropping its batch senders tells the
//! senders that no more batches come. Once `cancel` is cancelled, nothing waits for spool
//! space or memory any more.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::select;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::queue::ChunkRx;

use crate::batch::pool::{encode_all, Encoded, Want};
use crate::batch::{AckRouter, Batch, Builder, Chunk, CompressPool, Dest, Limits, RawBatch};
use crate::lanes::OutputRoute;
use crate::output::MemoryGate;
#[cfg(doc)]
use crate::output::Sender;
use crate::spool::{Appended, Spool};
use crate::telemetry::{OutputStats, Stats};
use crate::watchdog::{Stage, BEAT_EVERY, IDLE_BEAT_EVERY};

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

/// What the batcher holds of one delivery lane.
pub struct Lane {
    /// The bucket of lines whose input names none (the output's `bucket`).
    pub bucket: Arc<str>,
    pub gzip_level: u32,
    pub out: mpsc::UnboundedSender<Batch>,
    pub memory: Arc<MemoryGate>,
    pub spool: Arc<Spool>,
    /// Wakes the sender's replay when a batch was spooled.
    pub spooled: Arc<tokio::sync::Notify>,
    /// Whether the lane's servers accept writes ([`Sender::healthy`]).
    pub healthy: Box<dyn Fn() -> bool + Send>,
    pub stats: Arc<OutputStats>,
    /// Whether spool writes fail (see `spool_write_result`).
    pub spool_trouble: std::cell::Cell<SpoolTrouble>,
}

pub struct Batcher {
    pub chunks: ChunkRx,
    /// Cancelled when shutdown begins.
    pub cancel: CancellationToken,
    /// The shutdown deadline, once shutdown began.
    pub deadline: watch::Receiver<Option<Instant>>,
    pub limits: Limits,
    /// Every lane, in output order.
    pub lanes: Vec<Lane>,
    /// Each output's lanes, in output order.
    pub routes: Vec<OutputRoute>,
    pub acks: Arc<AckRouter>,
    pub stats: Arc<Stats>,
    /// Threads compressing sealed batches (`agent.compress_threads`), this one included: 1 on
    /// this thread alone, n on it and n - 1 pool workers.
    pub compress_threads: usize,
}

/// What an encoded body is for: the lanes that get it and the bucket they send it to.
#[derive(Debug, Clone)]
struct Copies {
    lanes: u64,
    bucket: Arc<str>,
}

/// Where sealed batches are compressed: here, or on the pool's threads.
enum Compress {
    Inline(Vec<Option<crate::batch::Encoder>>),
    Pool(CompressPool<Copies>),
}

/// The set bits of `mask`, lowest first.
fn bits(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let i = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            i
        })
    })
}

impl Batcher {
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("lineship-batcher".into())
            .spawn(move || self.run())
    }

    fn run(self) {
        let mut builder = Builder::new(self.limits);
        let mut compress = match self.compress_threads {
            0 | 1 => Compress::Inline(Vec::new()),
            n => match CompressPool::start(n) {
                Ok(p) => Compress::Pool(p),
                Err(e) => {
                    tracing::error!(error = %e, threads = n, "cannot start the compression threads; compressing on the batcher thread");
                    Compress::Inline(Vec::new())
                }
            },
        };
        let finished = match &compress {
            Compress::Pool(p) => p.finished().clone(),
            Compress::Inline(_) => crossbeam_channel::never(),
        };
        let mut sealed: Vec<RawBatch> = Vec::new();
        loop {
            self.stats.progress.beat(Stage::Batcher);
            self.release_hold_if_delivering();
            self.stats
                .queue_bytes
                .store(self.chunks.queued_bytes() as u64, Relaxed);
            self.store_memory_gauges();
            let now = Instant::now();
            // Wake at least every BEAT_EVERY while a batch is open, and every IDLE_BEAT_EVERY
            // when none is, so the watchdog sees the loop alive.
            let timeout = builder.next_deadline().map_or(IDLE_BEAT_EVERY, |d| {
                d.saturating_duration_since(now).min(BEAT_EVERY)
            });
            select! {
                recv(self.chunks.select_handle()) -> msg => match msg {
                    Ok(c) => self.route(self.chunks.taken(c), &mut builder, &mut sealed),
                    Err(_) => break, // every input hung up
                },
                recv(finished) -> done => {
                    if let (Ok(d), Compress::Pool(p)) = (done, &mut compress) {
                        p.accept(d);
                    }
                }
                default(timeout) => {
                    builder.poll(Instant::now(), &mut sealed);
                    if self.past_deadline() {
                        tracing::warn!("an input did not stop by the shutdown deadline; sealing what arrived and not waiting for it any longer");
                        break;
                    }
                }
            }
            self.emit(&mut compress, &mut sealed, &mut builder);
        }
        builder.flush_all(&mut sealed);
        self.emit(&mut compress, &mut sealed, &mut builder);
        if let Compress::Pool(p) = &mut compress {
            let left = p.finish(BEAT_EVERY, &mut || self.stats.progress.beat(Stage::Batcher));
            for e in left {
                self.deliver(e);
            }
        }
        self.store_memory_gauges();
    }

    fn store_memory_gauges(&self) {
        for r in &self.routes {
            let used: usize = bits(r.lanes).map(|l| self.lanes[l].memory.used()).sum();
            if let Some(l) = bits(r.lanes).next() {
                self.lanes[l].stats.memory_bytes.store(used as u64, Relaxed);
            }
        }
    }

    /// Sends a chunk's lines to the lanes of the outputs its input names: one piece for every
    /// unsharded lane together, and for each sharded output one piece per URL its series go
    /// to. The chunk's ack waits for every copy.
    fn route(&self, chunk: Chunk, builder: &mut Builder, sealed: &mut Vec<RawBatch>) {
        let now = Instant::now();
        let mut plain = 0u64;
        let mut pieces: Vec<Chunk> = Vec::new();
        for o in bits(chunk.dest.route).filter(|&o| o < self.routes.len()) {
            let r = &self.routes[o];
            let Some(shards) = &r.shards else {
                plain |= r.lanes;
                continue;
            };
            // Room for an even share and a little more, so a piece rarely grows.
            let share = chunk.data.len() / shards.lanes.len().max(1) * 5 / 4 + 256;
            let mut parts: Vec<(Vec<u8>, u32)> = vec![(Vec::new(), 0); self.lanes.len()];
            for &l in &shards.lanes {
                parts[l].0.reserve(share);
            }
            for line in chunk.data.split_inclusive(|&b| b == b'\n') {
                let body = line.strip_suffix(b"\n").unwrap_or(line);
                let part = &mut parts[shards.lane_of(body)];
                part.0.extend_from_slice(line);
                part.1 += 1;
            }
            for (lane, (data, lines)) in parts.into_iter().enumerate() {
                if lines > 0 {
                    pieces.push(Chunk {
                        dest: Dest {
                            route: 1 << lane,
                            ..chunk.dest.clone()
                        },
                        data,
                        lines,
                        ack: chunk.ack,
                    });
                }
            }
        }
        let copies: u32 = plain.count_ones()
            + pieces
                .iter()
                .map(|p| p.dest.route.count_ones())
                .sum::<u32>();
        if let Some(a) = chunk.ack {
            self.acks.expect(a, copies);
        }
        for p in pieces {
            builder.push(p, now, sealed);
        }
        if plain != 0 {
            let mut c = chunk;
            c.dest.route = plain;
            builder.push(c, now, sealed);
        }
    }

    fn past_deadline(&self) -> bool {
        self.deadline.borrow().is_some_and(|d| Instant::now() >= d)
    }

    /// While spool writes fail, inputs that can wait are held; once the lane delivers again,
    /// what they send can go straight to it (or to memory), so they may go on. Also ends a
    /// logged episode of failures once writes have worked for a while.
    fn release_hold_if_delivering(&self) {
        for lane in &self.lanes {
            let mut t = lane.spool_trouble.get();
            if t.failing && (lane.healthy)() {
                self.chunks.hold_waiting(false);
            }
            if let Some((last, failures)) = t.episode {
                if !t.failing && last.elapsed() >= SPOOL_QUIET {
                    tracing::info!(spool = %lane.spool.dir().display(), failures, "spool writes work again");
                    t.episode = None;
                    lane.spool_trouble.set(t);
                }
            }
        }
    }

    /// Records whether the last spool write worked. A full disk fails one batch after another,
    /// and a small batch may still fit between big ones: one error starts an episode, which
    /// ends (logged at info) only after [`SPOOL_QUIET`] without failures.
    fn spool_write_result(&self, lane: &Lane, failed: Option<&std::io::Error>) {
        let mut t = lane.spool_trouble.get();
        match failed {
            Some(e) => {
                t.failing = true;
                let failures = match t.episode {
                    None => {
                        tracing::error!(
                            error = %e,
                            output = %lane.stats.name,
                            spool = %lane.spool.dir().display(),
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
        lane.spool_trouble.set(t);
    }

    /// Encodes each sealed batch once per (bucket, gzip_level) among its lanes (here, or on
    /// the pool's threads) and gives every lane its copy, in the order the batches were sealed.
    fn emit(&self, compress: &mut Compress, sealed: &mut Vec<RawBatch>, builder: &mut Builder) {
        for raw in sealed.drain(..) {
            self.stats.batches_sealed.fetch_add(1, Relaxed);
            let wants = self.wants(&raw);
            match compress {
                Compress::Inline(encoders) => {
                    let e = encode_all(encoders, raw, wants);
                    builder.recycle(self.deliver(e));
                }
                Compress::Pool(p) => {
                    p.submit(raw, wants, BEAT_EVERY, &mut || {
                        self.stats.progress.beat(Stage::Batcher)
                    });
                }
            }
        }
        if let Compress::Pool(p) = compress {
            for e in p.ready() {
                builder.recycle(self.deliver(e));
            }
        }
    }

    /// The encodings a batch needs: one per distinct (bucket, gzip_level) among its lanes.
    fn wants(&self, raw: &RawBatch) -> Vec<Want<Copies>> {
        let key = |l: usize| {
            let lane = &self.lanes[l];
            let bucket = if raw.dest.bucket.is_empty() {
                lane.bucket.clone()
            } else {
                raw.dest.bucket.clone()
            };
            (bucket, lane.gzip_level)
        };
        let mut wants = Vec::new();
        let mut left = raw.dest.route;
        while left != 0 {
            let (bucket, level) = key(left.trailing_zeros() as usize);
            let group: u64 = bits(left)
                .filter(|&l| {
                    let (b, lv) = key(l);
                    lv == level && b == bucket
                })
                .fold(0, |m, l| m | 1 << l);
            left &= !group;
            wants.push(Want {
                level,
                tag: Copies {
                    lanes: group,
                    bucket,
                },
            });
        }
        wants
    }

    /// Gives each lane its copy of an encoded batch.
    /// Hands an encoded batch to its lanes; returns the batch's buffer (empty when it became
    /// the body) for [`Builder::recycle`].
    fn deliver(&self, e: Encoded<Copies>) -> Vec<u8> {
        let Encoded {
            raw,
            raw_len,
            bodies,
        } = e;
        for (copies, body, encoding) in bodies {
            for l in bits(copies.lanes) {
                let batch = Batch {
                    dest: Dest {
                        bucket: copies.bucket.clone(),
                        precision: raw.dest.precision,
                        route: 1 << l,
                    },
                    body: body.clone(),
                    encoding,
                    lines: raw.lines,
                    raw_len,
                    acks: raw.acks.clone(),
                };
                self.emit_to(&self.lanes[l], batch);
            }
        }
        raw.data
    }

    /// Hands a batch to its lane's sender, or appends it to the lane's spool.
    fn emit_to(&self, lane: &Lane, batch: Batch) {
        // Keep order: while the spool holds anything, new batches queue behind it. Also
        // spool when the server is failing or memory is full, so memory stays bounded.
        let size = batch.body.len();
        if lane.spool.unacked() == 0 && (lane.healthy)() && lane.memory.try_acquire(size) {
            self.hand_over(lane, batch, size);
            return;
        }
        // Called every 100 ms while waiting for memory or spool space: waiting on the
        // sender or the server is not a wedge, so it counts as progress.
        let give_up = || {
            self.stats.progress.beat(Stage::Batcher);
            self.cancel.is_cancelled()
        };
        let res = lane.spool.append(&batch, give_up);
        self.spool_write_result(lane, res.as_ref().err());
        match res {
            Ok((Appended::Stored, durable)) => {
                self.acks.ack(&durable);
                lane.spooled.notify_one();
            }
            // Dropped as configured: tailed files may move on past these lines.
            Ok((Appended::DroppedNewest, dropped)) => self.acks.dropped(&dropped),
            // Shutdown: withheld, so tailed lines are read again after the restart.
            Ok((Appended::GaveUp, _)) => {}
            Err(_) => {
                // Nothing more is taken from inputs that can wait while the server is
                // down too: what they read now could be neither delivered nor kept.
                if !(lane.healthy)() {
                    self.chunks.hold_waiting(true);
                }
                // At shutdown nothing may wait on a sender stuck on a dead server.
                lane.memory.acquire(size, give_up);
                self.hand_over(lane, batch, size);
            }
        }
    }

    fn hand_over(&self, lane: &Lane, batch: Batch, size: usize) {
        if let Err(e) = lane.out.send(batch) {
            let lines = e.0.lines;
            lane.memory.release(size);
            lane.stats
                .lines_undelivered
                .fetch_add(lines as u64, Relaxed);
            tracing::error!(
                lines,
                output = %lane.stats.name,
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
        let spool = Arc::new(Spool::open(dir.path(), &settings, Default::default()).unwrap());
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
            lanes: vec![Lane {
                bucket: Arc::from("b"),
                gzip_level: 1,
                out: out_tx,
                memory: Arc::new(MemoryGate::new(1 << 20)),
                spool,
                spooled: Default::default(),
                healthy: Box::new(|| true),
                stats: stats.register_output("default"),
                spool_trouble: Default::default(),
            }],
            routes: vec![OutputRoute {
                lanes: 1,
                shards: None,
            }],
            acks: Default::default(),
            stats,
            compress_threads: 1,
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

    /// Three outputs: two share a bucket and gzip level, one has its own level; a fourth
    /// output is sharded over two URLs. Returns the batcher, its input, and each lane's batches.
    fn start_lanes(
        dir: &std::path::Path,
        compress_threads: usize,
    ) -> (
        std::thread::JoinHandle<()>,
        ChunkTx,
        Vec<mpsc::UnboundedReceiver<Batch>>,
    ) {
        let stats = Arc::new(Stats::default());
        let settings = SpoolSettings {
            max_size: 1 << 20,
            when_full: WhenFull::DropNewest,
            fsync: FsyncPolicy::Never,
            fsync_interval: Duration::from_secs(1),
        };
        let (tx, chunks) = crate::queue::channel(16, 1 << 20);
        let mut lanes = Vec::new();
        let mut outs = Vec::new();
        for (i, (bucket, level)) in [("b", 1), ("b", 1), ("b", 6), ("s", 1), ("s", 1)]
            .into_iter()
            .enumerate()
        {
            let (out_tx, out) = mpsc::unbounded_channel();
            outs.push(out);
            let spool =
                Spool::open_dir(dir.join(i.to_string()), &settings, Default::default()).unwrap();
            lanes.push(Lane {
                bucket: Arc::from(bucket),
                gzip_level: level,
                out: out_tx,
                memory: Arc::new(MemoryGate::new(1 << 20)),
                spool: Arc::new(spool),
                spooled: Default::default(),
                healthy: Box::new(|| true),
                stats: stats.register_output(format!("o{i}")),
                spool_trouble: Default::default(),
            });
        }
        let route = |lanes| OutputRoute {
            lanes,
            shards: None,
        };
        let thread = Batcher {
            chunks,
            cancel: CancellationToken::new(),
            deadline: watch::channel(None).1,
            limits: Limits {
                max_lines: 1000,
                max_bytes: 1 << 20,
                flush_interval: Duration::from_secs(3600),
            },
            lanes,
            routes: vec![
                route(0b1),
                route(0b10),
                route(0b100),
                OutputRoute {
                    lanes: 0b11000,
                    shards: Some(crate::lanes::Shards {
                        seeds: vec![1, 2],
                        lanes: vec![3, 4],
                    }),
                },
            ],
            acks: Default::default(),
            stats,
            compress_threads,
        }
        .spawn()
        .unwrap();
        (thread, tx, outs)
    }

    #[test]
    fn a_batch_is_compressed_once_per_bucket_and_level_and_each_lane_gets_its_copy() {
        for threads in [1, 3] {
            compressed_once(threads);
        }
    }

    fn compressed_once(threads: usize) {
        let dir = tempfile::tempdir().unwrap();
        let (thread, tx, mut outs) = start_lanes(dir.path(), threads);
        let mut data = Vec::new();
        for i in 0..200 {
            data.extend_from_slice(format!("m,host=h{i} v={i}i {i}\n").as_bytes());
        }
        tx.send(Chunk {
            dest: Dest::routed("", Precision::Ns, 0b1111),
            data: data.clone(),
            lines: 200,
            ack: None,
        })
        .unwrap();
        drop(tx);
        assert!(ends_within(&thread, Duration::from_secs(5)));
        let got: Vec<Vec<Batch>> = outs
            .iter_mut()
            .map(|rx| std::iter::from_fn(|| rx.try_recv().ok()).collect())
            .collect();
        for lane in &got[..3] {
            assert_eq!(lane.len(), 1);
            assert_eq!(
                crate::batch::decode(&lane[0]).unwrap(),
                data,
                "byte for byte"
            );
            assert_eq!(&*lane[0].dest.bucket, "b", "the output's bucket");
        }
        // Same bucket and level: one body, shared; another level: its own.
        assert_eq!(got[0][0].body.as_ptr(), got[1][0].body.as_ptr());
        assert_ne!(got[0][0].body.as_ptr(), got[2][0].body.as_ptr());
        // The sharded output: every line in exactly one of its lanes, each series whole.
        let mut sharded = Vec::new();
        for lane in &got[3..] {
            assert_eq!(lane.len(), 1, "both shards got a share");
            assert_eq!(&*lane[0].dest.bucket, "s");
            sharded.extend(
                String::from_utf8(crate::batch::decode(&lane[0]).unwrap())
                    .unwrap()
                    .lines()
                    .map(str::to_owned),
            );
        }
        sharded.sort();
        let mut want: Vec<String> = String::from_utf8(data)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        want.sort();
        assert_eq!(sharded, want);
    }

    #[test]
    fn a_chunk_for_some_outputs_reaches_only_their_lanes() {
        let dir = tempfile::tempdir().unwrap();
        let (thread, tx, mut outs) = start_lanes(dir.path(), 2);
        tx.send(Chunk {
            dest: Dest::routed("own", Precision::Ms, 0b100),
            data: b"m v=1i 1\n".to_vec(),
            lines: 1,
            ack: None,
        })
        .unwrap();
        drop(tx);
        assert!(ends_within(&thread, Duration::from_secs(5)));
        let counts: Vec<usize> = outs
            .iter_mut()
            .map(|rx| std::iter::from_fn(|| rx.try_recv().ok()).count())
            .collect();
        assert_eq!(counts, [0, 0, 1, 0, 0]);
    }

    /// Long lines in the big chunks, so their batches take far longer to compress.
    fn line(c: u32, i: u32) -> String {
        if c % 5 == 0 {
            format!(
                "m,c={c} v=\"{}{i}\" {i}\n",
                "x".repeat(900 + (i as usize * 7919) % 97)
            )
        } else {
            format!("m,c={c} v={i}i {i}\n")
        }
    }

    /// With a pool of compression threads, each lane still gets its batches in the order they
    /// were sealed: the concatenated bodies are the input, byte for byte.
    #[test]
    fn the_pool_keeps_the_order_batches_were_sealed_in() {
        let dir = tempfile::tempdir().unwrap();
        let (thread, tx, mut outs) = start_lanes(dir.path(), 4);
        let mut all = Vec::new();
        let sender = std::thread::spawn(move || {
            for c in 0..300 {
                let mut data = Vec::new();
                // Chunks of very different sizes, so some batches compress much longer.
                let n = if c % 5 == 0 { 900 } else { 7 };
                for i in 0..n {
                    data.extend_from_slice(line(c, i).as_bytes());
                }
                tx.send(Chunk {
                    dest: Dest::routed("", Precision::Ns, 0b1),
                    data,
                    lines: n,
                    ack: None,
                })
                .unwrap();
            }
        });
        for c in 0..300 {
            let n = if c % 5 == 0 { 900 } else { 7 };
            for i in 0..n {
                all.extend_from_slice(line(c, i).as_bytes());
            }
        }
        sender.join().unwrap();
        assert!(ends_within(&thread, Duration::from_secs(10)));
        let batches: Vec<Batch> = std::iter::from_fn(|| outs[0].try_recv().ok()).collect();
        assert!(batches.len() > 50, "{} batches", batches.len());
        let got: Vec<u8> = batches
            .iter()
            .flat_map(|b| crate::batch::decode(b).unwrap())
            .collect();
        assert!(got == all, "the lane's batches are in seal order");
    }
}
