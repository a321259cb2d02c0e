//! Replay: records handed out oldest first, acknowledged (in any order) or released, and
//! segments deleted once everything in them was delivered.

use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::recover::segment_path;
use super::segment::RecState;
use super::{parse_record, RecordId, Spool, State};
use crate::batch::Batch;
use crate::statefile;

impl Spool {
    /// Hands out the oldest pending record, reading it from disk. Damaged records found now
    /// are skipped and counted.
    pub fn next(&self) -> Option<(RecordId, Batch)> {
        let _wake = self.wants_sync();
        let mut st = self.state.lock().unwrap();
        loop {
            let (seg_id, offset, len) = st
                .segments
                .iter()
                .find_map(|s| s.first_pending().map(|r| (s.id, r.offset, r.len)))?;
            let mut buf = vec![0u8; len as usize];
            let read = self.read_at(&mut st, seg_id, offset, &mut buf);
            let seg = st
                .segments
                .iter_mut()
                .find(|s| s.id == seg_id)
                .expect("segment just found");
            match read
                .map_err(|e| e.to_string())
                .and_then(|()| parse_record(&buf).map_err(|d| format!("{d:?}")))
            {
                Ok((_, batch)) => {
                    seg.update(offset, |_| RecState::HandedOut);
                    return Some((
                        RecordId {
                            segment: seg_id,
                            offset,
                        },
                        batch,
                    ));
                }
                Err(what) => {
                    let lines = seg.update(offset, |_| RecState::Acked).unwrap_or(0);
                    self.stats.corrupt_records.fetch_add(1, Relaxed);
                    tracing::error!(segment = seg_id, offset, lines, error = %what, "spool record could not be read back and was skipped; its lines are lost");
                    self.collect_garbage(&mut st);
                }
            }
        }
    }

    fn read_at(&self, st: &mut State, seg: u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if st.reader.as_ref().map(|(id, _)| *id) != Some(seg) {
            st.reader = Some((seg, statefile::open_read(&segment_path(&self.dir, seg))?));
        }
        st.reader
            .as_ref()
            .expect("opened above")
            .1
            .read_exact_at(buf, offset)
    }

    /// The record was delivered (or dead-lettered): it may be forgotten.
    pub fn ack(&self, id: RecordId) {
        self.ack_at(id, Instant::now());
    }

    /// [`Spool::ack`] at `now`, the clock that paces the replay progress written after
    /// acknowledgements (tests pass their own).
    pub fn ack_at(&self, id: RecordId, now: Instant) {
        let _wake = self.wants_sync();
        let mut st = self.state.lock().unwrap();
        if let Some(s) = st.segments.iter_mut().find(|s| s.id == id.segment) {
            s.update(id.offset, |_| RecState::Acked);
        }
        self.collect_garbage(&mut st);
        self.persist_progress(&mut st, now);
        self.update_gauges(&st);
        self.freed.notify_all();
    }

    /// The record was not delivered (shutdown): it stays on disk for the next run.
    pub fn release(&self, id: RecordId) {
        let mut st = self.state.lock().unwrap();
        if let Some(s) = st.segments.iter_mut().find(|s| s.id == id.segment) {
            s.update(id.offset, |state| match state {
                RecState::HandedOut => RecState::Pending,
                other => other,
            });
        }
    }

    /// Drops acknowledged records at the front and deletes segments with nothing left to send
    /// (never the one being written).
    pub(super) fn collect_garbage(&self, st: &mut State) {
        for s in st.segments.iter_mut() {
            while s
                .records
                .front()
                .is_some_and(|r| r.state == RecState::Acked)
            {
                s.records.pop_front();
            }
        }
        let mut delivered = Vec::new();
        while let Some(front) = st.segments.front() {
            // The newest segment goes too once everything in it was delivered, so a drained
            // spool gives its disk space back (the next append starts a new segment).
            let writing = st.writer.as_ref().is_some_and(|(w, _)| *w == front.id);
            if front.live != 0 || (writing && front.size == 0) {
                break;
            }
            let id = front.id;
            st.segments.pop_front();
            if writing {
                st.writer = None;
            }
            if st.reader.as_ref().is_some_and(|(r, _)| *r == id) {
                st.reader = None;
            }
            delivered.push(id);
        }
        if delivered.is_empty() {
            return;
        }
        // The cursor must pass the records before their file goes, or a restart would find
        // them missing and count delivered records as lost.
        if let Err(e) = self.persist_cursor(st, true) {
            tracing::warn!(error = %e, spool = %self.dir.display(), "cannot write the spool cursor before deleting delivered segments; a restart may report them as lost");
        }
        for id in delivered {
            if let Err(e) = fs::remove_file(segment_path(&self.dir, id)) {
                tracing::warn!(segment = id, error = %e, "cannot delete a delivered spool segment");
            }
        }
    }
}
