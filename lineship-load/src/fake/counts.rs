//! What the fake counted: [`Counters`], kept under the fake's lock and updated once per request
//! when it is answered, and [`Counts`], the snapshot callers read (and the load tool prints as
//! JSON, so its field names are part of the tool's output).

use std::time::Instant;

use serde::Serialize;

use crate::seq::SeqSummary;

/// A snapshot of what the fake received, in either mode.
#[derive(Serialize, Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Requests answered, on every path.
    pub requests: u64,
    /// Writes answered, whatever the status.
    pub write_requests: u64,
    /// Lines in writes answered 2xx.
    pub lines: u64,
    /// Write bodies as received (compressed when gzip).
    pub body_bytes: u64,
    /// Bytes after gunzip of the writes answered 2xx.
    pub decoded_bytes: u64,
    /// Writes answered with a scripted or default non-2xx status, and their lines.
    pub rejected_requests: u64,
    pub rejected_lines: u64,
    /// Empty, undecodable or oversized bodies, answered 4xx.
    pub bad_requests: u64,
    /// Seconds between the first and the last accepted write.
    pub active_secs: f64,
    /// Count mode with `check_seq`: which sequence numbers arrived.
    pub seq: Option<SeqSummary>,
}

impl Counts {
    /// Accepted lines per second of `active_secs` (0 before two writes).
    pub fn lines_per_sec(&self) -> f64 {
        if self.active_secs > 0.0 {
            self.lines as f64 / self.active_secs
        } else {
            0.0
        }
    }
}

/// How one write was judged, for [`Counters::add_write`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Verdict {
    /// Answered 2xx: `lines` lines of `decoded_bytes` bytes.
    Accepted { lines: u64, decoded_bytes: u64 },
    /// Answered with a non-2xx status the fake was told to give.
    Rejected { lines: u64 },
    /// Empty, undecodable or oversized.
    Bad,
}

/// The running totals: a [`Counts`] (whose `active_secs` and `seq` are filled in only by
/// [`Counters::snapshot`]) and the times of the first and last accepted write.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters {
    pub totals: Counts,
    pub first_write: Option<Instant>,
    pub last_write: Option<Instant>,
}

impl Counters {
    pub fn add_write(&mut self, body_bytes: usize, verdict: Verdict) {
        let t = &mut self.totals;
        t.write_requests += 1;
        t.body_bytes += body_bytes as u64;
        match verdict {
            Verdict::Accepted {
                lines,
                decoded_bytes,
            } => {
                t.lines += lines;
                t.decoded_bytes += decoded_bytes;
                let now = Instant::now();
                self.first_write.get_or_insert(now);
                self.last_write = Some(now);
            }
            Verdict::Rejected { lines } => {
                t.rejected_requests += 1;
                t.rejected_lines += lines;
            }
            Verdict::Bad => t.bad_requests += 1,
        }
    }

    pub fn snapshot(&self, seq: Option<SeqSummary>) -> Counts {
        let active_secs = match (self.first_write, self.last_write) {
            (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
            _ => 0.0,
        };
        Counts {
            active_secs,
            seq,
            ..self.totals
        }
    }
}
