//! The in-memory bookkeeping of one segment file: its records, their states (pending, handed
//! out, acknowledged) and running counts.

use std::collections::VecDeque;

use super::record::Seq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecState {
    Pending,
    HandedOut,
    Acked,
}

#[derive(Debug)]
pub(super) struct Rec {
    pub(super) offset: u64,
    pub(super) len: u32,
    pub(super) lines: u32,
    pub(super) created_at_ms: u64,
    /// `None` for version 1 records.
    pub(super) seq: Option<Seq>,
    pub(super) state: RecState,
}

/// One segment file's records, in offset order, with running counts so that the spool's
/// bookkeeping costs O(segments) per operation, not O(records): a quiet host's day-long outage
/// leaves ~100,000 small records.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) id: u64,
    pub(super) size: u64,
    pub(super) records: VecDeque<Rec>,
    /// Records not acknowledged (pending or handed out), and their lines.
    pub(super) live: u64,
    pub(super) live_lines: u64,
    /// Records waiting to be handed out.
    pub(super) pending: u64,
}

impl Segment {
    pub(super) fn new(id: u64, size: u64, records: VecDeque<Rec>) -> Segment {
        let mut s = Segment {
            id,
            size,
            records: VecDeque::with_capacity(records.len()),
            live: 0,
            live_lines: 0,
            pending: 0,
        };
        for r in records {
            s.push(r);
        }
        s
    }

    pub(super) fn push(&mut self, r: Rec) {
        self.count(r.state, r.lines, 1);
        self.records.push_back(r);
    }

    /// Adds (`sign` 1) or removes (`sign` -1) one record in `state` from the counts.
    pub(super) fn count(&mut self, state: RecState, lines: u32, sign: i64) {
        let add = |v: &mut u64, n: u64| *v = v.wrapping_add_signed(sign * n as i64);
        if state != RecState::Acked {
            add(&mut self.live, 1);
            add(&mut self.live_lines, u64::from(lines));
        }
        if state == RecState::Pending {
            add(&mut self.pending, 1);
        }
    }

    /// Moves the record at `offset` to `to(its state)`. Returns its lines, or `None` when no
    /// record starts there.
    pub(super) fn update(
        &mut self,
        offset: u64,
        to: impl FnOnce(RecState) -> RecState,
    ) -> Option<u32> {
        let i = self
            .records
            .binary_search_by_key(&offset, |r| r.offset)
            .ok()?;
        let (from, lines) = (self.records[i].state, self.records[i].lines);
        let next = to(from);
        if next != from {
            self.count(from, lines, -1);
            self.count(next, lines, 1);
            self.records[i].state = next;
        }
        Some(lines)
    }

    /// The oldest pending record. Acknowledged records at the front are dropped as they are
    /// acked, so this looks past only the few handed out and not yet acked.
    pub(super) fn first_pending(&self) -> Option<&Rec> {
        if self.pending == 0 {
            return None;
        }
        self.records.iter().find(|r| r.state == RecState::Pending)
    }
}
