//! Appending: a batch becomes a record in the newest segment, per the size cap (`when_full`)
//! and the fsync policy; new segments are started as the current one fills.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::recover::segment_path;
use super::segment::{Rec, RecState, Segment};
use super::{encode_record, Appended, Spool, State};
use crate::batch::{Ack, Batch};
use crate::config::{FsyncPolicy, WhenFull};
use crate::statefile;

impl Spool {
    /// Appends a batch. Its acks are returned once the batch is durable per the fsync policy
    /// (at once for `always` and `never`; after the next [`Spool::sync`] for `interval`).
    /// With `when_full = "block"`, waits for space until `give_up()` (then drops the batch).
    pub fn append(
        &self,
        batch: &Batch,
        give_up: impl Fn() -> bool,
    ) -> io::Result<(Appended, Vec<Ack>)> {
        let _wake = self.wants_sync();
        let mut st = self.state.lock().unwrap();
        let seq = st.next_seq;
        let rec = encode_record(batch, now_ms(), seq);
        loop {
            let used = st.segments.iter().map(|s| s.size).sum::<u64>();
            if used.saturating_add(rec.len() as u64) <= self.settings.max_size
                || st.segments.is_empty()
            {
                break;
            }
            match self.settings.when_full {
                WhenFull::DropOldest => {
                    if !self.drop_oldest_segment(&mut st) {
                        break; // only the segment being written is left: let it grow past the cap once
                    }
                }
                WhenFull::DropNewest => {
                    self.count_dropped(
                        batch.lines as u64,
                        "spool full (when_full = \"drop_newest\"): dropped the newest batch",
                    );
                    return Ok((Appended::DroppedNewest, batch.acks.clone()));
                }
                WhenFull::Block => {
                    if give_up() {
                        self.count_dropped(batch.lines as u64, "spool full (when_full = \"block\") at shutdown: dropped the newest batch (lines from tailed files are read again after a restart)");
                        return Ok((Appended::GaveUp, Vec::new()));
                    }
                    st = self
                        .freed
                        .wait_timeout(st, Duration::from_millis(100))
                        .unwrap()
                        .0;
                }
            }
        }
        let (id, offset) = self.write_record(&mut st, &rec)?;
        let seg = st
            .segments
            .iter_mut()
            .find(|s| s.id == id)
            .expect("writer segment is listed");
        seg.push(Rec {
            offset,
            len: rec.len() as u32,
            lines: batch.lines,
            created_at_ms: now_ms(),
            seq: Some(seq),
            state: RecState::Pending,
        });
        seg.size = offset + rec.len() as u64;
        st.next_seq = seq.after(batch.lines);
        self.update_gauges(&st);
        let acks = match self.settings.fsync {
            FsyncPolicy::Always => {
                if let Some((_, f)) = &st.writer {
                    f.sync_data()?;
                }
                st.synced_seq = st.next_seq;
                batch.acks.clone()
            }
            FsyncPolicy::Interval => {
                st.dirty = true;
                st.pending_acks.extend_from_slice(&batch.acks);
                Vec::new()
            }
            FsyncPolicy::Never => {
                st.synced_seq = st.next_seq;
                batch.acks.clone()
            }
        };
        Ok((Appended::Stored, acks))
    }

    fn write_record(&self, st: &mut State, rec: &[u8]) -> io::Result<(u64, u64)> {
        // A process never appends to a segment it did not create: after recovery, offsets in
        // an old segment could fall below the persisted cursor and be mistaken for delivered.
        let need_new = match (&st.writer, st.segments.back()) {
            (Some((wid, _)), Some(last)) => {
                *wid != last.id
                    || (last.size > 0 && last.size + rec.len() as u64 > self.segment_size)
            }
            _ => true,
        };
        if need_new {
            if let Some((_, f)) = st.writer.take() {
                // The finished segment must be durable before records go elsewhere.
                if self.settings.fsync != FsyncPolicy::Never {
                    f.sync_data()?;
                }
            }
            self.new_segment(st)?;
        }
        let (id, f) = st.writer.as_mut().expect("writer opened above");
        let id = *id;
        let offset = st.segments.back().expect("writer segment").size;
        if let Err(e) = f.write_all(rec) {
            // Don't leave a half record for the next append to follow: cut it off.
            let _ = f.set_len(offset);
            return Err(e);
        }
        Ok((id, offset))
    }

    /// Starts a new segment for appending. Its name must be new: a file planted under it is
    /// never opened (recovery moves it aside at the next start).
    fn new_segment(&self, st: &mut State) -> io::Result<()> {
        for _ in 0..16 {
            let id = st.next_segment_id;
            st.next_segment_id += 1;
            let path = segment_path(&self.dir, id);
            match statefile::create_new(&path) {
                Ok(f) => {
                    statefile::sync_dir(&self.dir)?;
                    st.segments.push_back(Segment::new(id, 0, VecDeque::new()));
                    st.writer = Some((id, f));
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    tracing::error!(segment = %path.display(), "a file lineship did not create sits where a new spool segment goes; it is left alone and the next name is used (recovery moves it aside at the next start)");
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "cannot create a spool segment in {}: every name tried is taken by a file lineship did not create",
            self.dir.display()
        )))
    }

    /// Deletes the oldest segment to make room, counting its undelivered lines as dropped.
    /// Returns false if only the segment being written is left.
    fn drop_oldest_segment(&self, st: &mut State) -> bool {
        if st.segments.len() <= 1 {
            // Start a new segment so the old one can go.
            if let Some((_, f)) = st.writer.take() {
                let _ = f.sync_data();
            }
            if st.segments.back().is_some_and(|s| s.size > 0) {
                if self.new_segment(st).is_err() {
                    return false;
                }
            } else {
                return false;
            }
        }
        let seg = st.segments.pop_front().expect("at least two segments");
        let lines = seg.live_lines;
        if st.reader.as_ref().is_some_and(|(r, _)| *r == seg.id) {
            st.reader = None;
        }
        // Past the dropped records first, so a restart does not count them again as damage.
        let _ = self.persist_cursor(st, false);
        let _ = fs::remove_file(segment_path(&self.dir, seg.id));
        self.count_dropped(
            lines,
            "spool full (when_full = \"drop_oldest\"): deleted the oldest segment",
        );
        true
    }

    fn count_dropped(&self, lines: u64, what: &str) {
        self.stats.dropped_lines.fetch_add(lines, Relaxed);
        tracing::error!(
            lines,
            max_size = self.settings.max_size,
            "{what}; these lines are lost. Raise spool.max_size or fix the output"
        );
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
