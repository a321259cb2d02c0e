//! The output's health as writes and the `GET /ping` probe see it: what `/health`, the
//! summary line and the batcher (which spools while the output fails) read. Failures are
//! logged when their kind changes, not per retry; a recovery is logged once.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::client::Reply;
use super::{Sender, TRANSPORT_KINDS};
use crate::telemetry::Health;

impl Sender {
    /// `GET {url}/ping` at start and whenever writes have been idle for `max_backoff` (at
    /// least 1 s): so an unreachable server is reported (log, `/health`) before the first
    /// batch, and on an idle host too. Only reachability is judged: a transport error marks
    /// the output failing (unless a write already found a different problem); an HTTP answer
    /// clears only a connection failure, or a failure the probe itself found. A write timeout,
    /// a token, bucket or server error is cleared by a write alone: `/ping` may answer at
    /// once while writes still time out.
    pub(super) async fn probe_health(self: Arc<Self>) {
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

    /// Records that the server answered a write (so it is reachable); logs the recovery once.
    pub(super) fn reachable(&self, reply: &Reply) {
        self.gate.lock().unwrap().succeeded();
        self.last_try_failed.store(false, Relaxed);
        self.healthy(reply.status, "server accepts writes again");
    }

    /// Marks the output healthy, logging `what` if it was failing.
    pub(super) fn healthy(&self, status: u16, what: &str) {
        self.healthy_if(status, what, |_| true);
    }

    /// [`Sender::healthy`] if `when` holds for the current health (checked under its lock).
    pub(super) fn healthy_if(&self, status: u16, what: &str, when: impl FnOnce(&Health) -> bool) {
        let mut h = self.links.stats.health.lock().unwrap();
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
    pub(super) fn failing(&self, kind: &str, message: &str) {
        self.failing_if(kind, message, false, |_| true);
    }

    /// Records a failure seen by a write or (`by_probe`) by the `GET /ping` probe, if `when`
    /// holds for the current health (checked under its lock).
    pub(super) fn failing_if(
        &self,
        kind: &str,
        message: &str,
        by_probe: bool,
        when: impl FnOnce(&Health) -> bool,
    ) {
        let mut h = self.links.stats.health.lock().unwrap();
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
}
