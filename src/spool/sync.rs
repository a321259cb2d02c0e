//! Syncing and the cursor: appended data made durable per the fsync policy, and where replay
//! resumes persisted (durably at each sync, as progress after acknowledgements).

use std::io;
use std::time::{Duration, Instant};

use super::cursor::{write_cursor, Cursor};
use super::{Spool, State};
use crate::batch::Ack;

/// Replay progress is written at most this often between syncs (see [`Spool::ack`]).
pub(super) const PROGRESS_EVERY: Duration = Duration::from_millis(2);

impl Spool {
    /// Makes appended data durable (per policy) and persists the cursor. Returns the acks of
    /// batches that became durable. Call it every `fsync_interval` and at shutdown.
    pub fn sync(&self) -> io::Result<Vec<Ack>> {
        let mut st = self.state.lock().unwrap();
        if st.dirty {
            if let Some((_, f)) = &st.writer {
                f.sync_data()?;
            }
            st.dirty = false;
        }
        st.synced_seq = st.next_seq;
        let acks = std::mem::take(&mut st.pending_acks);
        // The data is durable whatever happens to the cursor: a cursor that cannot be written
        // costs re-sent batches after a restart, never data, so the acks go out regardless.
        match self.persist_cursor(&mut st, true) {
            Ok(()) if st.cursor_failing => {
                st.cursor_failing = false;
                tracing::info!(spool = %self.dir.display(), "the spool cursor can be written again");
            }
            Err(e) if !st.cursor_failing => {
                st.cursor_failing = true;
                tracing::warn!(spool = %self.dir.display(), error = %e, "cannot write the spool cursor; after a restart, batches delivered since may be sent again. Check the disk");
            }
            _ => {}
        }
        Ok(acks)
    }

    /// The cursor as things stand: at the first record not yet acknowledged (or past the
    /// newest), with the numbering synced so far.
    pub(super) fn cursor_now(st: &State) -> Cursor {
        let front = st
            .segments
            .iter()
            .find_map(|s| s.records.front().map(|r| (s.id, r.offset, r.seq)));
        let (segment, offset, next) = match (front, st.segments.back()) {
            (Some(f), _) => f,
            (None, Some(last)) => (last.id, last.size, Some(st.next_seq)),
            (None, None) => (st.next_segment_id, 0, Some(st.next_seq)),
        };
        Cursor {
            segment,
            offset,
            next,
            end: Some(st.synced_seq),
        }
    }

    /// Writes the cursor if it changed (`durable`: also if the last write was not durable).
    pub(super) fn persist_cursor(&self, st: &mut State, durable: bool) -> io::Result<()> {
        let c = Self::cursor_now(st);
        if Some(c) == st.persisted_cursor && (st.persisted_durable || !durable) {
            return Ok(());
        }
        write_cursor(&self.dir, &c, durable)?;
        st.persisted_cursor = Some(c);
        st.persisted_durable = durable;
        st.cursor_written_at = Some(Instant::now());
        Ok(())
    }

    /// After an acknowledgement: replay progress is written at once (without fsync; the
    /// periodic sync makes it durable), so a crash re-sends little more than the requests that
    /// were in flight. At most once per [`PROGRESS_EVERY`].
    pub(super) fn persist_progress(&self, st: &mut State, now: Instant) {
        let moved = st.persisted_cursor.is_none_or(|p| {
            let c = Self::cursor_now(st);
            (p.segment, p.offset) != (c.segment, c.offset)
        });
        let due = st
            .cursor_written_at
            .is_none_or(|t| now.saturating_duration_since(t) >= PROGRESS_EVERY);
        if moved && due {
            match self.persist_cursor(st, false) {
                Ok(()) => st.cursor_written_at = Some(now),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot write the spool cursor now; the next sync retries")
                }
            }
        }
    }
}
