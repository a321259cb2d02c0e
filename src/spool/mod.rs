//! Disk spool: sealed, already-compressed batches kept on disk through outages, restarts and
//! crashes, replayed oldest first.
//!
//! # Layout (`state_dir/spool/`)
//!
//! - `NNNNNNNNNNNNNNNN.seg`: segment files (16 hex digits, increasing). Records are appended to
//!   the newest segment; a new segment starts when the current one would pass the segment size
//!   (`max_size / 8`, between 64 KiB and 32 MiB).
//! - `cursor`: where replay resumes, 52 bytes, all u64 LE: `segment id | offset | next record
//!   number | next line number | synced record number | synced line number`, then a crc32c (u32
//!   LE) over them. Every record before (segment, offset) has been delivered; the first record
//!   there is numbered `next`; every record numbered below `synced` was durable when the cursor
//!   was written. Written as `cursor.tmp` + rename: after each acknowledgement without fsync (at
//!   most every 2 ms, so a crash re-sends little more than what was in flight), with fsync and a
//!   directory fsync at every [`Spool::sync`] and before delivered segments are deleted. A
//!   20-byte version 1 cursor (no numbers) is still read. A missing or damaged cursor means "from
//!   the oldest record" (at-least-once: some records may be sent twice, none lost).
//! - `corrupt/`: what recovery cannot replay (a segment with no valid record, anything that is
//!   not a regular file) is moved here untouched, never deleted.
//!
//! Nothing in the directory is followed: files are opened with `O_NOFOLLOW` and must be regular
//! files; new segments are created with `O_EXCL` (see [`crate::statefile`]).
//!
//! # Record format, version 2 (all integers little endian)
//!
//! ```text
//! offset size  field
//!  0     4     magic "LSPL"
//!  4     1     format version = 2 (version 1 is still read)
//!  5     1     encoding: 0 identity, 1 gzip
//!  6     1     precision: 0 ns, 1 us, 2 ms, 3 s
//!  7     1     reserved = 0
//!  8     4     payload length P
//! 12     4     crc32c over bytes 4..12 and the payload
//! 16     P     payload: created_at_ms u64 | lines u32 | raw_len u32 | bucket_len u16 |
//!              record number u64 | lines before u64 | bucket | body
//! ```
//!
//! Version 1 has no record number and no lines-before. Records are numbered consecutively, so
//! a gap between records read back is exactly the records and lines lost there (`loss.rs`).
//!
//! # Invariants
//!
//! - A record is returned by [`Spool::next`] only if its CRC matched when it was read.
//! - Recovery never refuses to start (`recover.rs`): a torn tail (an append a crash
//!   interrupted, at the end of the newest segment) is truncated; damage anywhere else is
//!   skipped, never truncated; a segment with nothing valid in it is moved to `corrupt/`.
//!   Every lost record is counted (`lineship_spool_corrupt_records`, and its lines) and logged
//!   at error with its file and offset.
//! - Recovery and inspection read a segment through a fixed window (`scan.rs`), never whole:
//!   their memory does not grow with the segment size.
//! - Records are handed out oldest first; acknowledgements may come out of order, and the
//!   cursor only moves over a contiguous acknowledged prefix. Fully acknowledged segments are
//!   deleted, the newest one included (a drained spool holds no disk space), after the cursor
//!   has passed them. New segment ids are above every id seen, the cursor's included, so a new
//!   record is never taken for a delivered one.
//! - `fsync`: `always` syncs each append before it returns; `interval` syncs from the caller's
//!   periodic [`Spool::sync`]; `never` leaves it to the OS.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::batch::{Ack, Batch};
use crate::config::{FsyncPolicy, SpoolSettings, WhenFull};

use crate::statefile;

mod cursor;
mod inspect;
mod loss;
mod record;
mod recover;
mod scan;

use cursor::write_cursor;
pub use cursor::Cursor;
pub use inspect::{inspect, Inspection, SegmentReport};
pub use loss::{Loss, Place};
pub use record::{
    encode_record, parse_record, scan_segment, Damage, RecordMeta, ScannedRecord, SegmentScan, Seq,
};
use record::{HEADER, MAGIC};
use recover::{list_segments, segment_path};
pub use scan::scan_segment_reader;

/// Replay progress is written at most this often between syncs (see [`Spool::ack`]).
const PROGRESS_EVERY: Duration = Duration::from_millis(2);

// ---------------------------------------------------------------------------------------------
// The spool.

/// Identifies a record handed out by [`Spool::next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordId {
    pub segment: u64,
    pub offset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecState {
    Pending,
    HandedOut,
    Acked,
}

#[derive(Debug)]
struct Rec {
    offset: u64,
    len: u32,
    lines: u32,
    created_at_ms: u64,
    /// `None` for version 1 records.
    seq: Option<Seq>,
    state: RecState,
}

/// One segment file's records, in offset order, with running counts so that the spool's
/// bookkeeping costs O(segments) per operation, not O(records): a quiet host's day-long outage
/// leaves ~100,000 small records.
#[derive(Debug)]
struct Segment {
    id: u64,
    size: u64,
    records: VecDeque<Rec>,
    /// Records not acknowledged (pending or handed out), and their lines.
    live: u64,
    live_lines: u64,
    /// Records waiting to be handed out.
    pending: u64,
}

impl Segment {
    fn new(id: u64, size: u64, records: VecDeque<Rec>) -> Segment {
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

    fn push(&mut self, r: Rec) {
        self.count(r.state, r.lines, 1);
        self.records.push_back(r);
    }

    /// Adds (`sign` 1) or removes (`sign` -1) one record in `state` from the counts.
    fn count(&mut self, state: RecState, lines: u32, sign: i64) {
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
    fn update(&mut self, offset: u64, to: impl FnOnce(RecState) -> RecState) -> Option<u32> {
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
    fn first_pending(&self) -> Option<&Rec> {
        if self.pending == 0 {
            return None;
        }
        self.records.iter().find(|r| r.state == RecState::Pending)
    }
}

/// What the spool counts. It keeps these itself and imports nothing above it; telemetry reads
/// them (each spool its own).
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Gauges: bytes of segment files, records and lines not yet delivered.
    pub bytes: AtomicU64,
    pub records: AtomicU64,
    pub lines: AtomicU64,
    /// Lines the spool dropped at its size cap (`when_full`).
    pub dropped_lines: AtomicU64,
    /// Damaged records skipped at recovery or replay, and their lines where it could tell.
    pub corrupt_records: AtomicU64,
    pub corrupt_lines: AtomicU64,
}

/// What happened to an appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Stored,
    /// `when_full = "drop_newest"` and the spool is full: the batch was dropped, as configured.
    /// Its acks come back with it: the lines are counted as dropped and inputs may forget
    /// them (a tailed file's checkpoint moves on and a rotated file can be closed).
    DroppedNewest,
    /// `when_full = "block"` and the spool stayed full until shutdown: the batch was dropped
    /// and its acks withheld, so lines of a tailed file are read again after the restart.
    GaveUp,
}

/// A point-in-time summary (for `lineship spool status`, metrics and health).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backlog {
    pub segments: usize,
    pub records: u64,
    pub lines: u64,
    pub bytes: u64,
    pub oldest_created_at_ms: Option<u64>,
}

pub struct Spool {
    dir: PathBuf,
    settings: SpoolSettings,
    segment_size: u64,
    stats: Arc<SpoolStats>,
    state: Mutex<State>,
    /// Signalled when space is freed (for `when_full = "block"`).
    freed: Condvar,
}

struct State {
    segments: VecDeque<Segment>,
    /// The newest segment, open for appending.
    writer: Option<(u64, File)>,
    /// Appended since the last data fsync.
    dirty: bool,
    /// Acks waiting for the next fsync before they may be released.
    pending_acks: Vec<Ack>,
    /// Cursor last persisted, whether with fsync, and when (by this process).
    persisted_cursor: Option<Cursor>,
    persisted_durable: bool,
    cursor_written_at: Option<Instant>,
    /// The last durable cursor write failed (logged once per change).
    cursor_failing: bool,
    /// Records numbered below this are durable per the fsync policy.
    synced_seq: Seq,
    next_segment_id: u64,
    /// The number of the next record appended.
    next_seq: Seq,
    /// A cached reader for the segment replay reads from.
    reader: Option<(u64, File)>,
}

impl Spool {
    /// Opens (creating if needed) the spool under `state_dir/spool`, recovering from whatever a
    /// crash left. Only an unusable directory is an error.
    pub fn open(
        state_dir: &Path,
        settings: &SpoolSettings,
        stats: Arc<SpoolStats>,
    ) -> anyhow::Result<Spool> {
        use anyhow::Context;
        let dir = state_dir.join("spool");
        let rec = recover::recover(&dir, &stats).with_context(|| {
            format!(
                "cannot open the spool directory {}; check that it is a directory lineship may write to",
                dir.display()
            )
        })?;
        let segment_size = (settings.max_size / 8).clamp(64 << 10, 32 << 20);
        let spool = Spool {
            dir,
            settings: settings.clone(),
            segment_size,
            stats,
            state: Mutex::new(State {
                segments: rec.segments,
                writer: None,
                dirty: false,
                pending_acks: Vec::new(),
                persisted_cursor: rec.cursor,
                persisted_durable: true,
                cursor_written_at: None,
                cursor_failing: false,
                synced_seq: rec.next_seq,
                next_segment_id: rec.next_segment_id,
                next_seq: rec.next_seq,
                reader: None,
            }),
            freed: Condvar::new(),
        };
        {
            let mut st = spool.state.lock().unwrap();
            spool.collect_garbage(&mut st);
            spool.update_gauges(&st);
            if rec.lost {
                // Past the gap, so the loss is not counted again at the next start.
                if let Err(e) = spool.persist_cursor(&mut st, true) {
                    tracing::warn!(error = %e, spool = %spool.dir.display(), "cannot write the spool cursor after recovery");
                }
            }
        }
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The spool's counters.
    pub fn stats(&self) -> &Arc<SpoolStats> {
        &self.stats
    }

    /// Records not yet acknowledged (pending or handed out).
    pub fn unacked(&self) -> u64 {
        let st = self.state.lock().unwrap();
        st.segments.iter().map(|s| s.live).sum()
    }

    /// Whether some record waits to be handed out.
    pub fn has_pending(&self) -> bool {
        let st = self.state.lock().unwrap();
        st.segments.iter().any(|s| s.pending > 0)
    }

    pub fn backlog(&self) -> Backlog {
        let st = self.state.lock().unwrap();
        backlog_of(&st.segments)
    }

    /// Appends a batch. Its acks are returned once the batch is durable per the fsync policy
    /// (at once for `always` and `never`; after the next [`Spool::sync`] for `interval`).
    /// With `when_full = "block"`, waits for space until `give_up()` (then drops the batch).
    pub fn append(
        &self,
        batch: &Batch,
        give_up: impl Fn() -> bool,
    ) -> io::Result<(Appended, Vec<Ack>)> {
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

    /// Hands out the oldest pending record, reading it from disk. Damaged records found now
    /// are skipped and counted.
    pub fn next(&self) -> Option<(RecordId, Batch)> {
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
        let mut st = self.state.lock().unwrap();
        if let Some(s) = st.segments.iter_mut().find(|s| s.id == id.segment) {
            s.update(id.offset, |_| RecState::Acked);
        }
        self.collect_garbage(&mut st);
        self.persist_progress(&mut st);
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
    fn cursor_now(st: &State) -> Cursor {
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
    fn persist_cursor(&self, st: &mut State, durable: bool) -> io::Result<()> {
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
    fn persist_progress(&self, st: &mut State) {
        let moved = st.persisted_cursor.is_none_or(|p| {
            let c = Self::cursor_now(st);
            (p.segment, p.offset) != (c.segment, c.offset)
        });
        let due = st
            .cursor_written_at
            .is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
        if moved && due {
            if let Err(e) = self.persist_cursor(st, false) {
                tracing::debug!(error = %e, "cannot write the spool cursor now; the next sync retries");
            }
        }
    }

    /// Drops acknowledged records at the front and deletes segments with nothing left to send
    /// (never the one being written).
    fn collect_garbage(&self, st: &mut State) {
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

    fn update_gauges(&self, st: &State) {
        let b = backlog_of(&st.segments);
        self.stats.bytes.store(b.bytes, Relaxed);
        self.stats.records.store(b.records, Relaxed);
        self.stats.lines.store(b.lines, Relaxed);
    }
}

fn backlog_of(segments: &VecDeque<Segment>) -> Backlog {
    let mut b = Backlog {
        segments: segments.len(),
        ..Default::default()
    };
    for s in segments {
        b.bytes += s.size;
        b.records += s.live;
        b.lines += s.live_lines;
        if b.oldest_created_at_ms.is_none() && s.live > 0 {
            // The first live record in spool order was spooled first (acked records at the
            // front are dropped as they are acked, so this looks at a few at most).
            b.oldest_created_at_ms = s
                .records
                .iter()
                .find(|r| r.state != RecState::Acked)
                .map(|r| r.created_at_ms);
        }
    }
    b
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod tests;
