//! The output: takes sealed batches and delivers them with up to `max_in_flight` requests,
//! live batches and spooled records (oldest first) alike, behind one backoff gate.
//!
//! - `mod.rs`: the [`Sender`] (one per output), its run loop and the shutdown gate;
//! - `deliver.rs`: one batch through the status table (bisect, split, dead-letter, spool at
//!   the deadline);
//! - `health.rs`: what writes and the `GET /ping` probe say about the server;
//! - `memory.rs`: the bound on batches held in memory;
//! - `client.rs`: building and sending one request; `retry.rs`: status classification and the
//!   backoff gate (pure).
//!
//! Invariants: a batch leaves the sender only as delivered, dead-lettered (with the server's
//! message), counted as partially dropped by the server (422), or — once the shutdown deadline
//! passes — written to the spool (live batches) or left in it (spooled records). Batches in
//! memory are bounded by [`MemoryGate`]; past it the batcher spools instead.

pub mod client;
mod deliver;
mod health;
mod memory;
pub mod retry;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::batch::{AckRouter, Batch};
use crate::config::OutputSettings;
use crate::reject::DeadLetter;
use crate::spool::{RecordId, Spool};
use crate::telemetry::Stats;
use crate::watchdog::{Stage, BEAT_EVERY};
use client::Client;
use retry::Gate;

pub use memory::MemoryGate;

/// What an output shares with the rest of the agent.
pub struct Links {
    pub stats: Arc<Stats>,
    pub dead_letter: Arc<DeadLetter>,
    /// Where acknowledgements of delivered (or dead-lettered) lines go.
    pub acks: Arc<AckRouter>,
    /// This output's spool.
    pub spool: Arc<Spool>,
    /// Woken when the batcher spools a batch.
    pub spooled: Arc<tokio::sync::Notify>,
    /// Set when shutdown begins: retries stop at this instant.
    pub deadline: watch::Receiver<Option<Instant>>,
}

/// Everything a delivery needs, shared by all in-flight requests of one output.
pub struct Sender {
    client: Client,
    settings: OutputSettings,
    gate: Mutex<Gate>,
    links: Links,
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
    pub fn new(settings: &OutputSettings, links: Links) -> anyhow::Result<Self> {
        Ok(Sender {
            client: Client::new(settings)?,
            settings: settings.clone(),
            gate: Mutex::new(Gate::new(Instant::now())),
            links,
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
                self.links.stats.progress.beat(Stage::Sender);
                tokio::select! {
                    p = slots.clone().acquire_owned() => break p.expect("semaphore is never closed"),
                    _ = tokio::time::sleep(BEAT_EVERY) => {}
                }
            };
            self.links.stats.progress.beat(Stage::Sender);
            let past_deadline = self
                .links
                .deadline
                .borrow()
                .is_some_and(|d| Instant::now() >= d);
            // Nothing can be sent before the deadline: spooled records stay where they are.
            let hopeless = past_deadline || self.gives_up_at_gate();
            let mut work = None;
            if !hopeless && self.links.spool.has_pending() {
                let sp = self.links.spool.clone();
                if let Ok(Some((id, b))) = tokio::task::spawn_blocking(move || sp.next()).await {
                    work = Some(Work::Spooled(id, b));
                }
            }
            let work = match work {
                Some(w) => w,
                None if !rx_open => {
                    if hopeless || !self.links.spool.has_pending() {
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
                    _ = self.links.spooled.notified() => continue,
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
                            Ok(()) => me.links.acks.ack(&acks),
                            Err(left) => me.spool_undelivered(left, acks).await,
                        }
                        memory.release(size);
                    }
                    Work::Spooled(id, batch) => {
                        let ok = me.clone().deliver(batch).await.is_ok();
                        let sp = me.links.spool.clone();
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

    fn request_timeout(&self) -> Duration {
        match *self.links.deadline.borrow() {
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
        let Some(dl) = *self.links.deadline.borrow() else {
            return false;
        };
        self.last_try_failed.load(Relaxed) && self.gate.lock().unwrap().open_at() > dl
    }

    async fn wait_gate(&self) -> Go {
        let mut deadline = self.links.deadline.clone();
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
