//! The sender: takes sealed batches and delivers them with up to `max_in_flight` requests,
//! following DESIGN's status table (bisect on 400, split on 413, retry with one shared backoff
//! gate, dead-letter what the server refuses for good).
//!
//! Invariants: a batch leaves the sender only as delivered, dead-lettered (with the server's
//! message), counted as partially dropped by the server (422), or — once the shutdown deadline
//! passes — written to the spool (live batches) or left in it (spooled records). Batches in
//! memory are bounded by [`MemoryGate`]; past it the batcher spools instead.

pub mod client;
pub mod retry;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::batch::{self, Ack, AckRouter, Batch, Encoder};
use crate::config::OutputSettings;
use crate::reject::DeadLetter;
use crate::spool::{self, RecordId, Spool};
use crate::telemetry::{Health, Stats};
use crate::watchdog::{Stage, BEAT_EVERY};
use client::{Client, Reply};
use retry::{classify, parse_dropped, Gate, Verdict};

/// Bounds the bytes of sealed batches held in memory. The batcher thread blocks in
/// [`MemoryGate::acquire`]; the sender releases when a batch is done.
pub struct MemoryGate {
    limit: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

impl MemoryGate {
    pub fn new(limit: usize) -> Self {
        MemoryGate {
            limit,
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Waits until `n` more bytes fit (one batch always fits when nothing is held), or until
    /// `give_up()` says to stop waiting (shutdown), then takes them.
    pub fn acquire(&self, n: usize, give_up: impl Fn() -> bool) {
        let mut used = self.used.lock().unwrap();
        while *used > 0 && used.saturating_add(n) > self.limit && !give_up() {
            used = self
                .freed
                .wait_timeout(used, Duration::from_millis(100))
                .unwrap()
                .0;
        }
        *used += n;
    }

    /// Takes `n` bytes if they fit now (one batch always fits when nothing is held).
    pub fn try_acquire(&self, n: usize) -> bool {
        let mut used = self.used.lock().unwrap();
        if *used > 0 && used.saturating_add(n) > self.limit {
            return false;
        }
        *used += n;
        true
    }

    pub fn release(&self, n: usize) {
        let mut used = self.used.lock().unwrap();
        *used = used.saturating_sub(n);
        self.freed.notify_all();
    }

    pub fn used(&self) -> usize {
        *self.used.lock().unwrap()
    }
}

/// Everything a delivery needs, shared by all in-flight requests of one output.
pub struct Sender {
    client: Client,
    settings: OutputSettings,
    gate: Mutex<Gate>,
    stats: Arc<Stats>,
    dead_letter: Arc<DeadLetter>,
    acks: Arc<AckRouter>,
    spool: Arc<Spool>,
    /// Woken when the batcher spools a batch.
    spooled: Arc<tokio::sync::Notify>,
    /// Set when shutdown begins: retries stop at this instant.
    deadline: watch::Receiver<Option<Instant>>,
    /// When the last write request ended (any outcome); the health probe runs only when
    /// writes have been idle for a while.
    last_write: Mutex<Option<Instant>>,
    /// Write requests under way (the probe waits for a quiet moment).
    writes_in_flight: AtomicUsize,
    /// Set when a last try before the shutdown deadline failed, cleared by a delivery: from
    /// then on, batches that would wait past the deadline give up at once instead of each
    /// taking its own last try (a spooled record handed back would be retried in a tight
    /// loop until the deadline).
    last_try_failed: AtomicBool,
}

/// Counts a write request as under way until dropped (also if its future is cancelled).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Failure kinds that only say the server could not be reached ([`client::TransportError::class`]);
/// a `GET /ping` answer clears them.
const TRANSPORT_KINDS: [&str; 3] = ["connect", "timeout", "transport"];

/// How a wait at the gate ended.
enum Go {
    Now,
    /// Draining and the gate opens after the deadline: one last try now.
    LastTry,
    GiveUp,
}

/// `Err` holds what was not delivered when the shutdown deadline passed (whole or split).
type Delivery = Pin<Box<dyn Future<Output = Result<(), Vec<Batch>>> + Send>>;

/// Where a delivery's batch came from.
enum Work {
    Live(Batch),
    Spooled(RecordId, Batch),
}

impl Sender {
    pub fn new(
        settings: &OutputSettings,
        stats: Arc<Stats>,
        dead_letter: Arc<DeadLetter>,
        acks: Arc<AckRouter>,
        spool: Arc<Spool>,
        spooled: Arc<tokio::sync::Notify>,
        deadline: watch::Receiver<Option<Instant>>,
    ) -> anyhow::Result<Self> {
        Ok(Sender {
            client: Client::new(settings)?,
            settings: settings.clone(),
            gate: Mutex::new(Gate::new(Instant::now())),
            stats,
            dead_letter,
            acks,
            spool,
            spooled,
            deadline,
            last_write: Mutex::new(None),
            writes_in_flight: AtomicUsize::new(0),
            last_try_failed: AtomicBool::new(false),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Delivers live batches from `rx` and spooled records, oldest spooled first, until `rx`
    /// closes and nothing deliverable is left (or the shutdown deadline passed). Live batches
    /// not delivered by the deadline go to the spool; spooled ones stay there.
    pub async fn run(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Batch>,
        memory: Arc<MemoryGate>,
    ) {
        let probe = tokio::spawn(self.clone().probe_health());
        let slots = Arc::new(Semaphore::new(self.settings.max_in_flight));
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut rx_open = true;
        loop {
            while tasks.try_join_next().is_some() {}
            // Beat while waiting for a slot too: slots held by retries are not a wedge.
            let permit = loop {
                self.stats.progress.beat(Stage::Sender);
                tokio::select! {
                    p = slots.clone().acquire_owned() => break p.expect("semaphore is never closed"),
                    _ = tokio::time::sleep(BEAT_EVERY) => {}
                }
            };
            self.stats.progress.beat(Stage::Sender);
            let past_deadline = self.deadline.borrow().is_some_and(|d| Instant::now() >= d);
            // Nothing can be sent before the deadline: spooled records stay where they are.
            let hopeless = past_deadline || self.gives_up_at_gate();
            let mut work = None;
            if !hopeless && self.spool.has_pending() {
                let sp = self.spool.clone();
                if let Ok(Some((id, b))) = tokio::task::spawn_blocking(move || sp.next()).await {
                    work = Some(Work::Spooled(id, b));
                }
            }
            let work = match work {
                Some(w) => w,
                None if !rx_open => {
                    if hopeless || !self.spool.has_pending() {
                        break;
                    }
                    continue;
                }
                None => tokio::select! {
                    b = rx.recv() => match b {
                        Some(b) => Work::Live(b),
                        None => {
                            rx_open = false;
                            continue;
                        }
                    },
                    _ = self.spooled.notified() => continue,
                    // Re-check the deadline and the spool now and then.
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                },
            };
            let (me, memory) = (self.clone(), memory.clone());
            tasks.spawn(async move {
                match work {
                    Work::Live(batch) => {
                        let size = batch.body.len();
                        let acks = batch.acks.clone();
                        match me.clone().deliver(batch).await {
                            // Handled for good (delivered, dead-lettered or partially kept):
                            // inputs may forget these lines.
                            Ok(()) => me.acks.ack(&acks),
                            Err(left) => me.spool_undelivered(left, acks).await,
                        }
                        memory.release(size);
                    }
                    Work::Spooled(id, batch) => {
                        let ok = me.clone().deliver(batch).await.is_ok();
                        let sp = me.spool.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            if ok {
                                sp.ack(id)
                            } else {
                                sp.release(id)
                            }
                        })
                        .await;
                    }
                }
                drop(permit);
            });
        }
        while tasks.join_next().await.is_some() {}
        probe.abort();
    }

    /// `GET {url}/ping` at start and whenever writes have been idle for `max_backoff` (at
    /// least 1 s): so an unreachable server is reported (log, `/health`) before the first
    /// batch, and on an idle host too. Only reachability is judged: a transport error marks
    /// the output failing (unless a write already found a different problem); an HTTP answer
    /// clears only a connection failure, or a failure the probe itself found. A write timeout,
    /// a token, bucket or server error is cleared by a write alone: `/ping` may answer at
    /// once while writes still time out.
    async fn probe_health(self: Arc<Self>) {
        let every = self.settings.max_backoff.max(Duration::from_secs(1));
        let mut first = true;
        loop {
            let idle = self.writes_in_flight.load(Relaxed) == 0
                && self
                    .last_write
                    .lock()
                    .unwrap()
                    .is_none_or(|t| t.elapsed() >= every);
            if idle {
                match self.client.ping(self.settings.timeout).await {
                    Ok(pong) => {
                        if first {
                            tracing::info!(
                                url = %self.settings.url,
                                status = pong.status,
                                version = pong.version.as_deref().unwrap_or("-"),
                                "output answers GET /ping"
                            );
                        }
                        self.healthy_if(
                            pong.status,
                            "server can be reached again (GET /ping)",
                            |h| !h.ok && (h.last == "connect" || h.by_probe),
                        );
                    }
                    Err(e) => self.failing_if(
                        e.class(),
                        &format!(
                            "cannot reach the server (GET {}: {e})",
                            self.client.ping_url()
                        ),
                        true,
                        |h| h.ok || TRANSPORT_KINDS.contains(&h.last.as_str()),
                    ),
                }
                first = false;
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Puts live batches that missed the shutdown deadline into the spool.
    async fn spool_undelivered(&self, mut left: Vec<Batch>, acks: Vec<Ack>) {
        if let Some(first) = left.first_mut() {
            first.acks = acks;
        }
        let sp = self.spool.clone();
        let stats = self.stats.clone();
        let router = self.acks.clone();
        let _ = tokio::task::spawn_blocking(move || {
            // One error line for all the batches a full disk refuses, not one per batch.
            let mut failed: Option<(std::io::Error, u64)> = None;
            for b in left {
                match sp.append(&b, || true) {
                    Ok((spool::Appended::Stored, durable)) => router.ack(&durable),
                    // At shutdown even a drop by policy keeps its acks back: tailed lines are
                    // read again after the restart instead of being lost.
                    Ok((spool::Appended::DroppedNewest | spool::Appended::GaveUp, _)) => {
                        stats.lines_undelivered.fetch_add(b.lines as u64, Relaxed);
                    }
                    Err(e) => {
                        stats.lines_undelivered.fetch_add(b.lines as u64, Relaxed);
                        let lines = failed.as_ref().map_or(0, |f| f.1) + b.lines as u64;
                        failed = Some((failed.map_or(e, |f| f.0), lines));
                    }
                }
            }
            if let Some((e, lines)) = failed {
                tracing::error!(lines, error = %e, spool = %sp.dir().display(), "cannot write undelivered lines to the spool at shutdown; they are LOST (lines from tailed files are read again after a restart)");
            }
        })
        .await;
    }

    /// Delivers one batch; `Err` with what is left when the shutdown deadline passed first.
    fn deliver(self: Arc<Self>, batch: Batch) -> Delivery {
        Box::pin(async move {
            let mut consecutive_500 = 0u32;
            // Resends at once after the server closed the connection under the request: each
            // one discards a dead pooled connection, and the pool keeps at most
            // `max_in_flight` idle ones, so this many reach a new connection.
            let mut closed_resends_left = self.settings.max_in_flight + 1;
            loop {
                let last_try = match self.wait_gate().await {
                    Go::Now => false,
                    Go::LastTry => true,
                    Go::GiveUp => return Err(vec![batch]),
                };
                let epoch = self.gate.lock().unwrap().epoch();
                let sent = {
                    let _w = InFlight::enter(&self.writes_in_flight);
                    self.client.send(&batch, self.request_timeout()).await
                };
                *self.last_write.lock().unwrap() = Some(Instant::now());
                let wait = match sent {
                    Ok(reply) => {
                        closed_resends_left = self.settings.max_in_flight + 1;
                        self.stats.count_request(&reply.status.to_string());
                        if reply.status == 500 {
                            consecutive_500 += 1;
                        } else {
                            consecutive_500 = 0;
                        }
                        match classify(reply.status) {
                            Verdict::Delivered => {
                                self.reachable(&reply);
                                self.stats
                                    .lines_delivered
                                    .fetch_add(batch.lines as u64, Relaxed);
                                self.stats.batches_delivered.fetch_add(1, Relaxed);
                                self.stats
                                    .bytes_sent
                                    .fetch_add(batch.body.len() as u64, Relaxed);
                                return Ok(());
                            }
                            Verdict::Bisect | Verdict::Split => {
                                self.reachable(&reply);
                                return self.refused_lines(batch, &reply).await;
                            }
                            Verdict::Partial => {
                                self.reachable(&reply);
                                let dropped = parse_dropped(&reply.message)
                                    .unwrap_or(0)
                                    .min(batch.lines as u64);
                                tracing::warn!(
                                    status = 422,
                                    dropped,
                                    lines = batch.lines,
                                    message = %reply.message,
                                    "server kept part of a batch and dropped the rest (partial write); not retried"
                                );
                                self.stats.lines_partial_dropped.fetch_add(dropped, Relaxed);
                                self.stats
                                    .lines_delivered
                                    .fetch_add(batch.lines as u64 - dropped, Relaxed);
                                return Ok(());
                            }
                            Verdict::Reject => {
                                self.reachable(&reply);
                                self.dead_letter_batch(&batch, &reply);
                                return Ok(());
                            }
                            Verdict::Misconfigured => {
                                self.failing(
                                    &reply.status.to_string(),
                                    &self.misconfig_cause(&reply),
                                );
                                Some(self.settings.max_backoff)
                            }
                            Verdict::Retry => {
                                if consecutive_500 >= self.settings.poison_retries {
                                    tracing::warn!(
                                        lines = batch.lines,
                                        attempts = consecutive_500,
                                        message = %reply.message,
                                        "batch failed with 500 on every attempt; bisecting it to find a poisoned line"
                                    );
                                    return self.refused_lines(batch, &reply).await;
                                }
                                let msg =
                                    format!("server answered {}: {}", reply.status, reply.message);
                                self.failing(&reply.status.to_string(), &msg);
                                reply
                                    .retry_after
                                    .map(|d| d.min(self.settings.max_retry_after))
                            }
                        }
                    }
                    Err(e) if e.is_closed_connection() && closed_resends_left > 0 => {
                        // A kept-alive connection the server had just closed (it answered
                        // without `Connection: close`): not news about the server, so no log
                        // line, health change or backoff; writes are idempotent.
                        closed_resends_left -= 1;
                        self.stats.count_request(e.class());
                        self.stats.retries.fetch_add(1, Relaxed);
                        tracing::debug!(error = %e, "the server closed the connection under the request; resending it on a new one");
                        continue;
                    }
                    Err(e) => {
                        consecutive_500 = 0;
                        self.stats.count_request(e.class());
                        self.failing(e.class(), &e.to_string());
                        None
                    }
                };
                if last_try {
                    self.last_try_failed.store(true, Relaxed);
                    return Err(vec![batch]);
                }
                self.stats.retries.fetch_add(1, Relaxed);
                let delay = self.gate.lock().unwrap().failed(
                    Instant::now(),
                    epoch,
                    wait,
                    (self.settings.initial_backoff, self.settings.max_backoff),
                    rand::random::<f64>(),
                );
                tracing::debug!(
                    retry_in_ms = delay.as_millis() as u64,
                    lines = batch.lines,
                    "retrying batch"
                );
            }
        })
    }

    /// The server refused lines of this batch (400, 413, or a poisoned 500): bisect down to
    /// single lines, dead-letter a single line that still fails, deliver the rest.
    async fn refused_lines(self: Arc<Self>, batch: Batch, reply: &Reply) -> Result<(), Vec<Batch>> {
        if batch.lines <= 1 {
            self.dead_letter_batch(&batch, reply);
            return Ok(());
        }
        let level = self.settings.gzip_level;
        let b = batch.clone();
        let halves = tokio::task::spawn_blocking(move || -> std::io::Result<(Batch, Batch)> {
            let data = batch::decode(&b)?;
            let ((a, na), (c, nc)) = batch::split_lines(&data, b.lines);
            let mut enc = Encoder::new(level);
            let half = |d: &[u8], n: u32| batch::RawBatch {
                dest: b.dest.clone(),
                data: d.to_vec(),
                lines: n,
                acks: Vec::new(),
            };
            Ok((enc.encode(half(a, na)), enc.encode(half(c, nc))))
        })
        .await;
        let (a, c) = match halves {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::error!(error = %e, lines = batch.lines, "cannot decode a refused batch to split it; dead-lettering it whole");
                self.dead_letter_batch(&batch, reply);
                return Ok(());
            }
            Err(e) => {
                tracing::error!(error = %e, "split task failed; keeping the batch whole");
                return Err(vec![batch]);
            }
        };
        tracing::debug!(
            status = reply.status,
            lines = batch.lines,
            "splitting refused batch in halves"
        );
        let ra = self.clone().deliver(a).await;
        let rc = self.deliver(c).await;
        match (ra, rc) {
            (Ok(()), Ok(())) => Ok(()),
            (a, c) => Err(a.err().into_iter().chain(c.err()).flatten().collect()),
        }
    }

    fn dead_letter_batch(&self, batch: &Batch, reply: &Reply) {
        let reason = format!("http {}: {}", reply.status, reply.message);
        match batch::decode(batch) {
            Ok(data) => self.dead_letter.write("output", &reason, &data),
            Err(e) => {
                tracing::error!(error = %e, "cannot decode a refused batch for the dead-letter file")
            }
        }
        self.stats
            .lines_dead_lettered
            .fetch_add(batch.lines as u64, Relaxed);
        tracing::error!(
            status = reply.status,
            lines = batch.lines,
            message = %reply.message,
            dead_letter = %self.dead_letter.path().display(),
            "server refused lines for good; they were written to the dead-letter file"
        );
    }

    fn misconfig_cause(&self, reply: &Reply) -> String {
        retry::misconfig_cause(
            reply.status,
            &reply.message,
            reply.location.as_deref(),
            self.settings.max_backoff,
        )
    }

    /// Records that the server answered a write (so it is reachable); logs the recovery once.
    fn reachable(&self, reply: &Reply) {
        self.gate.lock().unwrap().succeeded();
        self.last_try_failed.store(false, Relaxed);
        self.healthy(reply.status, "server accepts writes again");
    }

    /// Marks the output healthy, logging `what` if it was failing.
    fn healthy(&self, status: u16, what: &str) {
        self.healthy_if(status, what, |_| true);
    }

    /// [`Sender::healthy`] if `when` holds for the current health (checked under its lock).
    fn healthy_if(&self, status: u16, what: &str, when: impl FnOnce(&Health) -> bool) {
        let mut h = self.stats.health.lock().unwrap();
        if !when(&h) {
            return;
        }
        if !h.ok {
            tracing::info!(
                url = %self.settings.url,
                status,
                failing_for_s = h.since_instant.elapsed().as_secs(),
                "{what}"
            );
            *h = Health {
                ok: true,
                last: String::new(),
                message: String::new(),
                since: SystemTime::now(),
                since_instant: Instant::now(),
                by_probe: false,
            };
        }
        h.last = status.to_string();
    }

    /// Records a failure of a write; logs only when the failure kind changes, not per retry.
    fn failing(&self, kind: &str, message: &str) {
        self.failing_if(kind, message, false, |_| true);
    }

    /// Records a failure seen by a write or (`by_probe`) by the `GET /ping` probe, if `when`
    /// holds for the current health (checked under its lock).
    fn failing_if(
        &self,
        kind: &str,
        message: &str,
        by_probe: bool,
        when: impl FnOnce(&Health) -> bool,
    ) {
        let mut h = self.stats.health.lock().unwrap();
        if !when(&h) {
            return;
        }
        if !h.ok && h.last == kind {
            // A write confirms what the probe saw: from now on only a write clears it.
            h.by_probe &= by_probe;
        } else {
            tracing::error!(
                url = %self.settings.url,
                failure = kind,
                "writes are failing: {message}; retrying with backoff, nothing is dropped"
            );
            *h = Health {
                ok: false,
                last: kind.to_owned(),
                message: message.to_owned(),
                since: SystemTime::now(),
                since_instant: Instant::now(),
                by_probe,
            };
        }
    }

    fn request_timeout(&self) -> Duration {
        match *self.deadline.borrow() {
            Some(dl) => self
                .settings
                .timeout
                .min(dl.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(1)),
            None => self.settings.timeout,
        }
    }

    /// Whether a delivery starting now would give up at the gate (see [`Sender::wait_gate`]).
    fn gives_up_at_gate(&self) -> bool {
        let Some(dl) = *self.deadline.borrow() else {
            return false;
        };
        self.last_try_failed.load(Relaxed) && self.gate.lock().unwrap().open_at() > dl
    }

    async fn wait_gate(&self) -> Go {
        let mut deadline = self.deadline.clone();
        loop {
            let open_at = self.gate.lock().unwrap().open_at();
            let now = Instant::now();
            let dl = *deadline.borrow_and_update();
            if let Some(dl) = dl {
                if now >= dl {
                    return Go::GiveUp;
                }
                if open_at > dl {
                    return if self.last_try_failed.load(Relaxed) {
                        Go::GiveUp
                    } else {
                        Go::LastTry
                    };
                }
            }
            if open_at <= now {
                return Go::Now;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(open_at.into()) => {}
                changed = deadline.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(open_at.into()).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_gate_blocks_past_the_limit_until_released() {
        let gate = Arc::new(MemoryGate::new(100));
        gate.acquire(60, || false);
        // One batch always fits when nothing else is held; a second one past the limit waits.
        let g = gate.clone();
        let waiter = std::thread::spawn(move || {
            g.acquire(60, || false);
            Instant::now()
        });
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            !waiter.is_finished(),
            "acquire must wait while 60 + 60 > 100"
        );
        let released_at = Instant::now();
        gate.release(60);
        let acquired_at = waiter.join().unwrap();
        assert!(acquired_at >= released_at);
        assert_eq!(gate.used(), 60);
    }

    #[test]
    fn memory_gate_gives_way_at_shutdown() {
        let gate = MemoryGate::new(100);
        gate.acquire(90, || false);
        gate.acquire(90, || true);
        assert_eq!(gate.used(), 180);
    }
}
