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
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::batch::Ack;
use crate::config::SpoolSettings;

mod append;
mod cursor;
mod inspect;
mod loss;
mod record;
mod recover;
mod replay;
mod scan;
mod segment;
mod sync;

pub use cursor::Cursor;
pub use inspect::{
    inspect, inspect_dir_with_progress, inspect_with_progress, Inspection, SegmentReport,
};
pub use loss::{Loss, Place};
pub use record::{
    encode_record, parse_record, scan_segment, Damage, RecordMeta, ScannedRecord, SegmentScan, Seq,
};
use record::{HEADER, MAGIC};
use recover::{list_segments, segment_path};
pub use scan::scan_segment_reader;
use segment::{RecState, Segment};

// ---------------------------------------------------------------------------------------------
// The spool. Its operations are in `append.rs`, `replay.rs` and `sync.rs`; the bookkeeping of
// one segment in `segment.rs`.

/// Identifies a record handed out by [`Spool::next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordId {
    pub segment: u64,
    pub offset: u64,
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

/// When the oldest undelivered record of any of `spools` was created (one output's spools: one,
/// or one per URL when sharded); `None` while they are empty.
pub fn oldest_created_at(spools: &[Arc<Spool>]) -> Option<std::time::SystemTime> {
    spools
        .iter()
        .filter_map(|s| s.backlog().oldest_created_at_ms)
        .min()
        .map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
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
    /// Signalled after every change that may leave something to sync (see
    /// [`Spool::sync_wanted`]).
    sync_wanted: tokio::sync::Notify,
}

/// Signals a [`Spool::sync_wanted`] when dropped: declared before the state guard, it fires
/// after the lock is released, so a waiter that wakes sees the change.
struct SyncWanted<'a>(&'a tokio::sync::Notify);

impl Drop for SyncWanted<'_> {
    fn drop(&mut self) {
        self.0.notify_one();
    }
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
        Spool::open_dir(state_dir.join("spool"), settings, stats)
    }

    /// Opens (creating if needed) the spool in `dir` (one output's, or one shard's).
    pub fn open_dir(
        dir: PathBuf,
        settings: &SpoolSettings,
        stats: Arc<SpoolStats>,
    ) -> anyhow::Result<Spool> {
        use anyhow::Context;
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
            sync_wanted: tokio::sync::Notify::new(),
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

    /// Whether [`Spool::sync`] has anything to do: data not yet fsynced, acks waiting for it,
    /// records not yet counted as durable, or a cursor that differs from the one on disk (or
    /// was written without fsync, or failed).
    pub fn needs_sync(&self) -> bool {
        let st = self.state.lock().unwrap();
        st.dirty
            || !st.pending_acks.is_empty()
            || st.synced_seq != st.next_seq
            || st.cursor_failing
            || !st.persisted_durable
            || st.persisted_cursor != Some(Self::cursor_now(&st))
    }

    /// Notified after each append, acknowledgement and skipped record: a periodic sync may
    /// sleep on it while [`Spool::needs_sync`] is false instead of waking for nothing. A
    /// notification sent while nobody waits is kept for the next waiter.
    pub fn sync_wanted(&self) -> &tokio::sync::Notify {
        &self.sync_wanted
    }

    fn wants_sync(&self) -> SyncWanted<'_> {
        SyncWanted(&self.sync_wanted)
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

#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod tests;
