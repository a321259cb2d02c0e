//! Each server's health as writes and the `GET /ping` probe see it, and the output's: healthy
//! while any of its servers accepts writes. `/health`, the summary line and the batcher (which
//! spools while the output fails) read the output's; `/health` and `/metrics` also show each
//! server's. Failures are logged per server when their kind changes, not per retry; a recovery
//! is logged once.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::client::Reply;
use super::{Sender, TRANSPORT_KINDS};
use crate::config::Balance;
use crate::telemetry::Health;

/// The shortest sleep of the probe loop while a down server's backoff is about to end.
const PROBE_MIN_SLEEP: Duration = Duration::from_millis(20);

impl Sender {
    /// `GET {url}/ping` for each server: at start and whenever no write has gone to it for
    /// `max_backoff` (at least 1 s), so an unreachable server is reported (log, `/health`)
    /// before the first batch, a standby URL that gets no writes is watched, and an idle host
    /// too. Only reachability is judged: a transport error marks the server failing (unless
    /// a write already found a different problem); an HTTP answer clears only a connection
    /// failure, or a failure the probe itself found. A write timeout, a token, bucket or
    /// server error is cleared by a write alone: `/ping` may answer at once while writes
    /// still time out.
    ///
    /// With several servers, a server out of rotation is also pinged once its backoff has
    /// passed: an answer below 500 puts it back in rotation (its health turns good with the
    /// first write it accepts); no answer backs it off again.
    pub(super) async fn probe_health(self: Arc<Self>) {
        // One loop per server, so a server whose ping hangs until the timeout delays no other.
        // Dropping the set (the sender aborts this task when it ends) aborts them all.
        let mut probes = tokio::task::JoinSet::new();
        for i in 0..self.servers.len() {
            probes.spawn(self.clone().probe_server(i));
        }
        while probes.join_next().await.is_some() {}
    }

    async fn probe_server(self: Arc<Self>, i: usize) {
        let every = self.settings.max_backoff.max(Duration::from_secs(1));
        let several = self.servers.len() > 1;
        let server = &self.servers[i];
        let mut first = true;
        let mut last_probe: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if several && server.is_down() {
                let open_at = server.open_at();
                if open_at > now {
                    tokio::time::sleep((open_at - now).max(PROBE_MIN_SLEEP)).await;
                    continue;
                }
                self.probe_down(i).await;
                last_probe = Some(Instant::now());
                // A zero jitter draw must not make a refused ping a busy loop.
                tokio::time::sleep(PROBE_MIN_SLEEP).await;
                continue;
            }
            let quiet = |t: Option<Instant>| t.is_none_or(|t| t.elapsed() >= every);
            let idle = server.in_flight.load(Relaxed) == 0
                && quiet(*server.last_write.lock().unwrap())
                && quiet(last_probe);
            if idle {
                last_probe = Some(now);
                match self.client.ping(&server.url, self.settings.timeout).await {
                    Ok(pong) => {
                        if std::mem::take(&mut first) {
                            tracing::info!(
                                url = %server.url.base,
                                status = pong.status,
                                version = pong.version.as_deref().unwrap_or("-"),
                                "output answers GET /ping"
                            );
                        }
                        self.ping_answered(i, pong.status);
                    }
                    Err(e) => {
                        first = false;
                        self.ping_failed(i, &e);
                    }
                }
            }
            // A write that takes the server out of rotation wakes this loop.
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = server.went_down.notified() => {}
            }
        }
    }

    /// Pings a server that is out of rotation and past its backoff: back in rotation if it
    /// answers below 500, backed off again if not.
    async fn probe_down(&self, i: usize) {
        let server = &self.servers[i];
        let answer = self.client.ping(&server.url, self.settings.timeout).await;
        match answer {
            Ok(pong) if pong.status < 500 => {
                tracing::info!(
                    url = %server.url.base,
                    status = pong.status,
                    "URL answers GET /ping again; it is back in rotation"
                );
                self.ping_answered(i, pong.status);
                server.set_down(false);
                self.back.notify_waiters();
            }
            other => {
                if let Err(e) = &other {
                    self.ping_failed(i, e);
                }
                // Counted as a failure of its own (the gate's current epoch): a write that failed
                // meanwhile must not leave the gate open, or this loop would ping without pause.
                let mut gate = server.gate.lock().unwrap();
                let epoch = gate.epoch();
                gate.failed(
                    Instant::now(),
                    epoch,
                    None,
                    (self.settings.initial_backoff, self.settings.max_backoff),
                    rand::random::<f64>(),
                );
            }
        }
    }

    /// A `GET /ping` answer clears only a connection failure, or one the probe itself found.
    fn ping_answered(&self, i: usize, status: u16) {
        self.healthy_if(i, status, "server can be reached again (GET /ping)", |h| {
            !h.ok && (h.last == "connect" || h.by_probe)
        });
    }

    /// No `GET /ping` answer: the server fails, unless a write already found another problem.
    fn ping_failed(&self, i: usize, e: &super::client::TransportError) {
        let ping = &self.servers[i].url.ping;
        self.failing_if(
            i,
            e.class(),
            &format!("cannot reach the server (GET {ping}: {e})"),
            true,
            |h| h.ok || TRANSPORT_KINDS.contains(&h.last.as_str()),
        );
    }

    /// Records that server `i` answered a write (so it is reachable and in rotation); logs the
    /// recovery once.
    pub(super) fn reachable(&self, i: usize, reply: &Reply) {
        let server = &self.servers[i];
        server.gate.lock().unwrap().succeeded();
        if server.is_down() {
            server.set_down(false);
            self.back.notify_waiters();
        }
        self.last_try_failed.store(false, Relaxed);
        self.healthy_if(i, reply.status, "server accepts writes again", |_| true);
    }

    /// Marks server `i` healthy, logging `what` if it was failing, if `when` holds for its
    /// current health (checked under its lock).
    pub(super) fn healthy_if(
        &self,
        i: usize,
        status: u16,
        what: &str,
        when: impl FnOnce(&Health) -> bool,
    ) {
        let server = &self.servers[i];
        {
            let mut h = server.stats.health.lock().unwrap();
            if !when(&h) {
                return;
            }
            if !h.ok {
                tracing::info!(
                    url = %server.url.base,
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
        self.update_output_health(i);
    }

    /// Records a failure of a write to server `i`; logs only when the failure kind changes,
    /// not per retry.
    pub(super) fn failing(&self, i: usize, kind: &str, message: &str) {
        self.failing_if(i, kind, message, false, |_| true);
    }

    /// Records a failure seen by a write or (`by_probe`) by the `GET /ping` probe, if `when`
    /// holds for the server's current health (checked under its lock).
    pub(super) fn failing_if(
        &self,
        i: usize,
        kind: &str,
        message: &str,
        by_probe: bool,
        when: impl FnOnce(&Health) -> bool,
    ) {
        let server = &self.servers[i];
        {
            let mut h = server.stats.health.lock().unwrap();
            if !when(&h) {
                return;
            }
            if !h.ok && h.last == kind {
                // A write confirms what the probe saw: from now on only a write clears it.
                h.by_probe &= by_probe;
            } else {
                let others = if self.servers.len() > 1 {
                    "writes go to the other URLs while one is up, otherwise they are retried with backoff; nothing is dropped"
                } else {
                    "retrying with backoff, nothing is dropped"
                };
                tracing::error!(
                    url = %server.url.base,
                    failure = kind,
                    "writes are failing: {message}; {others}"
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
        self.update_output_health(i);
    }

    /// The output's health from its servers': healthy while any is; while none is, the
    /// failure of the last server to fail. `changed` is the server that just changed: with
    /// one server, the output's health is that server's.
    fn update_output_health(&self, changed: usize) {
        // Every server of the output: a sharded output's lanes each hold one of them.
        let servers = self.links.out.servers.lock().unwrap().clone();
        let changed = servers
            .iter()
            .position(|s| Arc::ptr_eq(s, &self.servers[changed].stats))
            .unwrap_or(0);
        let all: Vec<Health> = servers
            .iter()
            .map(|s| s.health.lock().unwrap().clone())
            .collect();
        let mut out = self.links.out.health.lock().unwrap();
        if all.len() == 1 {
            *out = all[0].clone();
            return;
        }
        // A sharded output delivers only while every URL does: a down URL's series wait.
        let healthy = match self.settings.balance {
            Balance::Shard => all.iter().all(|h| h.ok).then_some(changed),
            _ => all.iter().position(|h| h.ok),
        };
        let failing_shard = (self.settings.balance == Balance::Shard)
            .then(|| all.iter().position(|h| !h.ok))
            .flatten();
        match healthy {
            Some(i) => {
                if !out.ok {
                    tracing::info!(
                        output = %self.links.out.name,
                        url = %servers[i].url,
                        failing_for_s = out.since_instant.elapsed().as_secs(),
                        "the output delivers again"
                    );
                    *out = all[i].clone();
                }
                // The last status of the server that answered last, if it is a healthy one.
                let i = if all[changed].ok { changed } else { i };
                out.last = all[i].last.clone();
            }
            None => {
                let (i, last) = match failing_shard {
                    Some(i) => (i, &all[i]),
                    None => all
                        .iter()
                        .enumerate()
                        .max_by_key(|(_, h)| h.since_instant)
                        .expect("at least one server"),
                };
                if out.ok && failing_shard.is_some() {
                    tracing::error!(
                        output = %self.links.out.name,
                        url = %servers[i].url,
                        "a URL of the sharded output is failing; its series wait in its own spool (retried with backoff), the other URLs keep delivering"
                    );
                    out.since = last.since;
                    out.since_instant = last.since_instant;
                } else if out.ok {
                    let urls: Vec<&str> = servers.iter().map(|s| s.url.as_str()).collect();
                    tracing::error!(
                        output = %self.links.out.name,
                        urls = %urls.join(", "),
                        "every URL of the output is failing; writes are retried with backoff and spooled, nothing is dropped"
                    );
                    out.since = last.since;
                    out.since_instant = last.since_instant;
                }
                out.ok = false;
                out.last = last.last.clone();
                out.by_probe = false;
                out.message = format!("{}: {}", servers[i].url, last.message);
            }
        }
    }
}
