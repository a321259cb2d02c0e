//! The output: takes sealed batches and delivers them with up to `max_in_flight` requests,
//! live batches and spooled records (oldest first) alike, behind one backoff gate.
//!
//! - `mod.rs`: the [`Sender`] (one per output), its run loop and the shutdown gate;
//! - `deliver.rs`: one batch through the status table (bisect, split, dead-letter, spool at
//!   the deadline);
//! - `servers.rs`: the output's servers (URLs) and which one a write goes to (`balance`);
//! - `health.rs`: what writes and the `GET /ping` probe say about each server, and the
//!   output's health (healthy while any server accepts writes);
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
mod servers;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::batch::{AckRouter, Batch};
use crate::config::{Balance, OutputSettings};
use crate::reject::DeadLetter;
use crate::spool::{RecordId, Spool};
use crate::telemetry::{OutputStats, Stats};
use crate::watchdog::{Stage, BEAT_EVERY};
use client::Client;
use servers::Server;

pub use memory::MemoryGate;

/// What an output shares with the rest of the agent.
pub struct Links {
    /// The agent's counters (stage heartbeats).
    pub stats: Arc<Stats>,
    /// This output's counters.
    pub out: Arc<OutputStats>,
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
    /// The output's servers, in the configured order; each has its own backoff gate.
    servers: Vec<Server>,
    /// Advanced per round_robin pick, so servers with equal load take turns.
    turn: AtomicUsize,
    /// Woken when a down server is back in rotation (a waiting write may go now).
    back: tokio::sync::Notify,
    links: Links,
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
        let servers = settings
            .urls
            .iter()
            .map(|u| Server::new(u.clone(), links.out.register_server(u.base.as_str())))
            .collect();
        Ok(Sender {
            client: Client::new(settings)?,
            settings: settings.clone(),
            servers,
            turn: AtomicUsize::new(0),
            back: tokio::sync::Notify::new(),
            links,
            last_try_failed: AtomicBool::new(false),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether any of this sender's servers accepts writes (what the batcher asks before it
    /// hands a batch over rather than spooling it).
    pub fn healthy(&self) -> bool {
        self.servers
            .iter()
            .any(|s| s.stats.health.lock().unwrap().ok)
    }

    /// Delivers live batches from `rx` and spooled records, oldest spooled first, until `rx`
    /// closes and nothing deliverable is left (or the shutdown deadline passed). Live batches
    /// not delivered by the deadline go to the spool; spooled ones stay there.
    pub async fn run(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Batch>,
        memory: Arc<MemoryGate>,
    ) {
        let _running = self.links.stats.progress.running(Stage::Sender);
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
                None => {
                    // Nothing in flight and nothing spooled: only a batch or a spool append
                    // can give this loop work, so it parks rather than waking to beat.
                    let idle = tasks.is_empty() && self.links.spool.unacked() == 0;
                    let _parked = idle.then(|| self.links.stats.progress.park(Stage::Sender));
                    tokio::select! {
                        b = rx.recv() => match b {
                            Some(b) => Work::Live(b),
                            None => {
                                rx_open = false;
                                continue;
                            }
                        },
                        _ = self.links.spooled.notified() => continue,
                        // Otherwise re-check the deadline and the spool now and then (and
                        // beat).
                        _ = tokio::time::sleep(BEAT_EVERY), if !idle => continue,
                    }
                }
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

    /// A server that is up, by `balance`.
    fn pick_up(&self) -> Option<usize> {
        let up: Vec<bool> = self.servers.iter().map(|s| !s.is_down()).collect();
        let in_flight: Vec<usize> = self
            .servers
            .iter()
            .map(|s| s.in_flight.load(Relaxed))
            .collect();
        let turn = match self.settings.balance {
            Balance::RoundRobin => self.turn.fetch_add(1, Relaxed),
            Balance::Failover | Balance::Shard => 0,
        };
        servers::pick(self.settings.balance, &up, &in_flight, turn)
    }

    /// With every server down: the one whose gate opens first (the first in order on a tie).
    fn first_to_open(&self) -> (usize, Instant) {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.open_at()))
            .min_by_key(|&(i, t)| (t, i))
            .expect("an output has at least one server")
    }

    /// Whether a delivery starting now would give up at the gate (see [`Sender::choose`]).
    fn gives_up_at_gate(&self) -> bool {
        let Some(dl) = *self.links.deadline.borrow() else {
            return false;
        };
        self.last_try_failed.load(Relaxed)
            && self.servers.iter().all(Server::is_down)
            && self.first_to_open().1 > dl
    }

    /// The server for the next try of a write: one that is up, at once; while all are down,
    /// the first whose backoff gate opens, once it opens (or a server that comes back
    /// meanwhile). Draining, a gate that opens after the deadline allows one last try.
    async fn choose(&self) -> (Go, usize) {
        let mut deadline = self.links.deadline.clone();
        loop {
            let back = self.back.notified();
            let now = Instant::now();
            let dl = *deadline.borrow_and_update();
            if dl.is_some_and(|dl| now >= dl) {
                return (Go::GiveUp, 0);
            }
            if let Some(i) = self.pick_up() {
                return (Go::Now, i);
            }
            let (i, open_at) = self.first_to_open();
            if let Some(dl) = dl {
                if open_at > dl {
                    return if self.last_try_failed.load(Relaxed) {
                        (Go::GiveUp, i)
                    } else {
                        (Go::LastTry, i)
                    };
                }
            }
            if open_at <= now {
                return (Go::Now, i);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(open_at.into()) => {}
                _ = back => {}
                changed = deadline.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(open_at.into()).await;
                    }
                }
            }
        }
    }
}
