//! Delivering one batch, following the status table in the README ("How lineship treats the
//! server's answers"): retry on another server or after the server's backoff gate, bisect on 400 (and on a poisoned
//! 500), split on 413, dead-letter what the server refuses for good, count a 422's dropped
//! lines; and, past the shutdown deadline, spool what is left.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use super::client::Reply;
use super::retry::{self, classify, parse_dropped, Verdict};
use super::{Delivery, Go, InFlight, Sender};
use crate::batch::{self, Ack, Batch, Encoder};
use crate::spool;

impl Sender {
    /// Puts live batches that missed the shutdown deadline into the spool.
    pub(super) async fn spool_undelivered(&self, mut left: Vec<Batch>, acks: Vec<Ack>) {
        if let Some(first) = left.first_mut() {
            first.acks = acks;
        }
        let sp = self.links.spool.clone();
        let stats = self.links.out.clone();
        let router = self.links.acks.clone();
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
    pub(super) fn deliver(self: Arc<Self>, batch: Batch) -> Delivery {
        Box::pin(async move {
            let mut consecutive_500 = 0u32;
            // Resends at once after the server closed the connection under the request: each
            // one discards a dead pooled connection, and the pool keeps at most
            // `max_in_flight` idle ones, so this many reach a new connection.
            let mut closed_resends_left = self.settings.max_in_flight + 1;
            loop {
                let (go, at) = self.choose().await;
                let last_try = match go {
                    Go::Now => false,
                    Go::LastTry => true,
                    Go::GiveUp => return Err(vec![batch]),
                };
                let server = &self.servers[at];
                let epoch = server.gate.lock().unwrap().epoch();
                let timeout = self.request_timeout();
                // The shutdown deadline shortened this request's timeout.
                let cut_short = timeout < self.settings.timeout;
                let sent = {
                    let _w = InFlight::enter(&server.in_flight);
                    self.client.send(&server.url, &batch, timeout).await
                };
                *server.last_write.lock().unwrap() = Some(Instant::now());
                let wait = match sent {
                    Ok(reply) => {
                        closed_resends_left = self.settings.max_in_flight + 1;
                        self.count_request(at, &reply.status.to_string());
                        if reply.status == 500 {
                            consecutive_500 += 1;
                        } else {
                            consecutive_500 = 0;
                        }
                        match classify(reply.status) {
                            Verdict::Delivered => {
                                self.reachable(at, &reply);
                                self.links
                                    .out
                                    .lines_delivered
                                    .fetch_add(batch.lines as u64, Relaxed);
                                self.links.out.batches_delivered.fetch_add(1, Relaxed);
                                self.links
                                    .out
                                    .bytes_sent
                                    .fetch_add(batch.body.len() as u64, Relaxed);
                                return Ok(());
                            }
                            Verdict::Bisect | Verdict::Split => {
                                self.reachable(at, &reply);
                                return self.refused_lines(batch, &reply).await;
                            }
                            Verdict::Partial => {
                                self.reachable(at, &reply);
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
                                self.links
                                    .out
                                    .lines_partial_dropped
                                    .fetch_add(dropped, Relaxed);
                                self.links
                                    .out
                                    .lines_delivered
                                    .fetch_add(batch.lines as u64 - dropped, Relaxed);
                                return Ok(());
                            }
                            Verdict::Reject => {
                                self.reachable(at, &reply);
                                self.dead_letter_batch(&batch, &reply);
                                return Ok(());
                            }
                            Verdict::Misconfigured => {
                                self.failing(
                                    at,
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
                                self.failing(at, &reply.status.to_string(), &msg);
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
                        self.count_request(at, e.class());
                        self.links.out.retries.fetch_add(1, Relaxed);
                        tracing::debug!(error = %e, "the server closed the connection under the request; resending it on a new one");
                        continue;
                    }
                    Err(e) if cut_short && e.class() == "timeout" => {
                        // Cut off by the shutdown deadline, not news about the server (a busy
                        // machine can take that long to answer): no log line or health change.
                        self.count_request(at, e.class());
                        tracing::debug!(
                            lines = batch.lines,
                            "the shutdown deadline cut a write short; its batch goes to the spool"
                        );
                        self.last_try_failed.store(true, Relaxed);
                        return Err(vec![batch]);
                    }
                    Err(e) => {
                        consecutive_500 = 0;
                        self.count_request(at, e.class());
                        self.failing(at, e.class(), &e.to_string());
                        None
                    }
                };
                if last_try {
                    self.last_try_failed.store(true, Relaxed);
                    return Err(vec![batch]);
                }
                self.links.out.retries.fetch_add(1, Relaxed);
                // Out of rotation: the next try goes to another server that is up, at once.
                self.servers[at].set_down(true);
                let delay = self.servers[at].gate.lock().unwrap().failed(
                    Instant::now(),
                    epoch,
                    wait,
                    (self.settings.initial_backoff, self.settings.max_backoff),
                    rand::random::<f64>(),
                );
                tracing::debug!(
                    url = %self.servers[at].url.base,
                    backoff_ms = delay.as_millis() as u64,
                    lines = batch.lines,
                    "retrying batch (at once on another URL if one is up, else after the backoff)"
                );
            }
        })
    }

    /// The server refused lines of this batch (400, 413, or a poisoned 500): bisect down to
    /// single lines, dead-letter a single line that still fails, deliver the rest.
    pub(super) async fn refused_lines(
        self: Arc<Self>,
        batch: Batch,
        reply: &Reply,
    ) -> Result<(), Vec<Batch>> {
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

    pub(super) fn dead_letter_batch(&self, batch: &Batch, reply: &Reply) {
        let reason = format!("http {}: {}", reply.status, reply.message);
        match batch::decode(batch) {
            Ok(data) => self.links.dead_letter.write("output", &reason, &data),
            Err(e) => {
                tracing::error!(error = %e, "cannot decode a refused batch for the dead-letter file")
            }
        }
        self.links
            .out
            .lines_dead_lettered
            .fetch_add(batch.lines as u64, Relaxed);
        tracing::error!(
            status = reply.status,
            lines = batch.lines,
            message = %reply.message,
            dead_letter = %self.links.dead_letter.path().display(),
            "server refused lines for good; they were written to the dead-letter file"
        );
    }

    fn count_request(&self, at: usize, outcome: &str) {
        self.links.out.count_request(outcome);
        self.servers[at].stats.count_request(outcome);
    }

    pub(super) fn misconfig_cause(&self, reply: &Reply) -> String {
        retry::misconfig_cause(
            reply.status,
            &reply.message,
            reply.location.as_deref(),
            self.settings.max_backoff,
        )
    }
}
