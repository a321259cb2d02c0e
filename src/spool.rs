//! Disk spool: sealed, already-compressed batches kept on disk through outages, restarts and
//! crashes, replayed oldest first.
//!
//! # Layout (`state_dir/spool/`)
//!
//! - `NNNNNNNNNNNNNNNN.seg`: segment files (16 hex digits, increasing). Records are appended to
//!   the newest segment; a new segment starts when the current one would pass the segment size
//!   (`max_size / 8`, between 64 KiB and 32 MiB).
//! - `cursor`: where replay resumes: `segment id (u64 LE) | offset (u64 LE) | crc32c (u32 LE)`
//!   over the first 16 bytes. Written as `cursor.tmp`, fsync, rename, directory fsync. Every
//!   record before the cursor has been delivered. A missing or damaged cursor means "from the
//!   oldest record" (at-least-once: some records may be sent twice, none lost).
//! - `corrupt/`: segments that could not be read are moved here, never deleted.
//!
//! # Record format, version 1 (all integers little endian)
//!
//! ```text
//! offset size  field
//!  0     4     magic "LSPL"
//!  4     1     format version = 1
//!  5     1     encoding: 0 identity, 1 gzip
//!  6     1     precision: 0 ns, 1 us, 2 ms, 3 s
//!  7     1     reserved = 0
//!  8     4     payload length P
//! 12     4     crc32c over bytes 4..12 and the payload
//! 16     P     payload: created_at_ms u64 | lines u32 | raw_len u32 | bucket_len u16 | bucket | body
//! ```
//!
//! # Invariants
//!
//! - A record is returned by [`Spool::next`] only if its CRC matched when it was read.
//! - Recovery never refuses to start: a torn tail (a partial record at the end of the newest
//!   segment) is truncated; a corrupt record is skipped and counted (the scan resynchronises on
//!   the next valid record); a segment that cannot be read is moved to `corrupt/`.
//! - Recovery and inspection read a segment through a fixed window (`scan.rs`), never whole:
//!   their memory does not grow with the segment size.
//! - Records are handed out oldest first; acknowledgements may come out of order, and the
//!   cursor only moves over a contiguous acknowledged prefix. Fully acknowledged segments are
//!   deleted (deleting before the cursor is persisted is safe: a cursor pointing at a missing
//!   segment resumes at the next one).
//! - `fsync`: `always` syncs each append before it returns; `interval` syncs from the caller's
//!   periodic [`Spool::sync`]; `never` leaves it to the OS.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::batch::{Ack, Batch, Dest, Encoding};
use crate::config::{FsyncPolicy, SpoolSettings, WhenFull};
use crate::line::Precision;
use crate::telemetry::Stats;

mod scan;
use scan::scan_segment_file;
pub use scan::scan_segment_reader;

const MAGIC: &[u8; 4] = b"LSPL";
const VERSION: u8 = 1;
const HEADER: usize = 16;
const META_FIXED: usize = 8 + 4 + 4 + 2;
/// Sanity bound on a payload, so a damaged length cannot make us allocate gigabytes.
const MAX_PAYLOAD: usize = 256 << 20;
const CURSOR: &str = "cursor";

// ---------------------------------------------------------------------------------------------
// Record encoding (pure).

fn precision_code(p: Precision) -> u8 {
    match p {
        Precision::Ns => 0,
        Precision::Us => 1,
        Precision::Ms => 2,
        Precision::S => 3,
    }
}

fn precision_of(code: u8) -> Option<Precision> {
    Some(match code {
        0 => Precision::Ns,
        1 => Precision::Us,
        2 => Precision::Ms,
        3 => Precision::S,
        _ => return None,
    })
}

/// Frames a batch as one record.
pub fn encode_record(batch: &Batch, created_at_ms: u64) -> Vec<u8> {
    let bucket = batch.dest.bucket.as_bytes();
    let bucket = &bucket[..bucket.len().min(u16::MAX as usize)];
    let payload_len = META_FIXED + bucket.len() + batch.body.len();
    let mut rec = Vec::with_capacity(HEADER + payload_len);
    rec.extend_from_slice(MAGIC);
    rec.push(VERSION);
    rec.push(match batch.encoding {
        Encoding::Identity => 0,
        Encoding::Gzip => 1,
    });
    rec.push(precision_code(batch.dest.precision));
    rec.push(0);
    rec.extend_from_slice(&(payload_len as u32).to_le_bytes());
    rec.extend_from_slice(&[0; 4]); // crc, filled below
    rec.extend_from_slice(&created_at_ms.to_le_bytes());
    rec.extend_from_slice(&batch.lines.to_le_bytes());
    rec.extend_from_slice(&(batch.raw_len as u32).to_le_bytes());
    rec.extend_from_slice(&(bucket.len() as u16).to_le_bytes());
    rec.extend_from_slice(bucket);
    rec.extend_from_slice(&batch.body);
    let crc = record_crc(&rec[4..12], &rec[HEADER..]);
    rec[12..16].copy_from_slice(&crc.to_le_bytes());
    rec
}

fn record_crc(header: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header), payload)
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// Fewer bytes than the header or the payload it announces: an interrupted write.
    Truncated,
    /// Not a record header (magic, version or length wrong).
    BadHeader,
    /// The header is sane but the checksum does not match.
    BadChecksum,
    /// The checksum matches but the metadata is inconsistent (a bug or a foreign file).
    BadMetadata,
}

/// What the header and metadata of a valid record say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    pub len: usize,
    pub lines: u32,
    pub created_at_ms: u64,
    pub body_len: usize,
}

/// Parses the record at the start of `buf`.
pub fn parse_record(buf: &[u8]) -> Result<(RecordMeta, Batch), Damage> {
    if buf.len() < HEADER {
        return Err(if MAGIC.starts_with(&buf[..buf.len().min(4)]) {
            Damage::Truncated
        } else {
            Damage::BadHeader
        });
    }
    if &buf[0..4] != MAGIC || buf[4] != VERSION || buf[5] > 1 || buf[6] > 3 || buf[7] != 0 {
        return Err(Damage::BadHeader);
    }
    let payload_len = u32::from_le_bytes(buf[8..12].try_into().unwrap()) as usize;
    if !(META_FIXED..=MAX_PAYLOAD).contains(&payload_len) {
        return Err(Damage::BadHeader);
    }
    if buf.len() < HEADER + payload_len {
        return Err(Damage::Truncated);
    }
    let payload = &buf[HEADER..HEADER + payload_len];
    let crc = u32::from_le_bytes(buf[12..16].try_into().unwrap());
    if record_crc(&buf[4..12], payload) != crc {
        return Err(Damage::BadChecksum);
    }
    let created_at_ms = u64::from_le_bytes(payload[0..8].try_into().unwrap());
    let lines = u32::from_le_bytes(payload[8..12].try_into().unwrap());
    let raw_len = u32::from_le_bytes(payload[12..16].try_into().unwrap()) as usize;
    let bucket_len = u16::from_le_bytes(payload[16..18].try_into().unwrap()) as usize;
    if META_FIXED + bucket_len > payload_len || lines == 0 {
        return Err(Damage::BadMetadata);
    }
    let bucket = std::str::from_utf8(&payload[META_FIXED..META_FIXED + bucket_len])
        .map_err(|_| Damage::BadMetadata)?;
    let body = &payload[META_FIXED + bucket_len..];
    if body.is_empty() {
        return Err(Damage::BadMetadata);
    }
    let precision = precision_of(buf[6]).ok_or(Damage::BadHeader)?;
    let encoding = if buf[5] == 1 {
        Encoding::Gzip
    } else {
        Encoding::Identity
    };
    let meta = RecordMeta {
        len: HEADER + payload_len,
        lines,
        created_at_ms,
        body_len: body.len(),
    };
    let batch = Batch {
        dest: Dest::new(bucket, precision),
        body: Bytes::copy_from_slice(body),
        encoding,
        lines,
        raw_len,
        acks: Vec::new(),
    };
    Ok((meta, batch))
}

// ---------------------------------------------------------------------------------------------
// Scanning a segment (pure over its bytes).

/// One valid record found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedRecord {
    pub offset: u64,
    pub len: u32,
    pub lines: u32,
    pub created_at_ms: u64,
    pub body_len: u32,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    pub records: Vec<ScannedRecord>,
    /// Damaged regions: (offset, what was wrong, bytes skipped).
    pub damaged: Vec<(u64, Damage, u64)>,
    /// Where an incomplete record at the end begins, if the segment ends in one.
    pub torn_tail: Option<u64>,
}

/// Scans segment bytes: every valid record, every damaged region (resynchronising on the next
/// valid record), and a torn tail. The reference model for [`scan_segment_reader`], which the
/// spool uses so as not to hold a whole segment in memory.
pub fn scan_segment(buf: &[u8]) -> SegmentScan {
    let mut scan = SegmentScan::default();
    let mut pos = 0usize;
    while pos < buf.len() {
        match parse_record(&buf[pos..]) {
            Ok((meta, _)) => {
                scan.records.push(ScannedRecord {
                    offset: pos as u64,
                    len: meta.len as u32,
                    lines: meta.lines,
                    created_at_ms: meta.created_at_ms,
                    body_len: meta.body_len as u32,
                });
                pos += meta.len;
            }
            Err(damage) => match resync(buf, pos + 1) {
                Some(next) => {
                    scan.damaged.push((pos as u64, damage, (next - pos) as u64));
                    pos = next;
                }
                None if damage == Damage::Truncated => {
                    scan.torn_tail = Some(pos as u64);
                    break;
                }
                None => {
                    scan.damaged
                        .push((pos as u64, damage, (buf.len() - pos) as u64));
                    scan.torn_tail = Some(pos as u64);
                    break;
                }
            },
        }
    }
    scan
}

/// The offset of the next valid record at or after `from`.
fn resync(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + HEADER <= buf.len() {
        let at = buf[i..].windows(4).position(|w| w == MAGIC)? + i;
        if parse_record(&buf[at..]).is_ok() {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

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
    stats: Arc<Stats>,
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
    /// Cursor last persisted.
    persisted_cursor: Option<(u64, u64)>,
    next_segment_id: u64,
    /// A cached reader for the segment replay reads from.
    reader: Option<(u64, File)>,
}

impl Spool {
    /// Opens (creating if needed) the spool under `state_dir/spool`, recovering from whatever a
    /// crash left. Only an unusable directory is an error.
    pub fn open(
        state_dir: &Path,
        settings: &SpoolSettings,
        stats: Arc<Stats>,
    ) -> anyhow::Result<Spool> {
        use anyhow::Context;
        let dir = state_dir.join("spool");
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create spool directory {}", dir.display()))?;
        let cursor = read_cursor(&dir);
        let mut segments = VecDeque::new();
        for (id, path) in list_segments(&dir)
            .with_context(|| format!("cannot list spool directory {}", dir.display()))?
        {
            let (scan, len) = match scan_segment_file(&path) {
                Ok(s) => s,
                Err(e) => {
                    move_aside(&dir, &path, &e.to_string());
                    continue;
                }
            };
            for (offset, damage, skipped) in &scan.damaged {
                stats.spool_corrupt_records.fetch_add(1, Relaxed);
                tracing::error!(
                    segment = %path.display(),
                    offset,
                    skipped_bytes = skipped,
                    damage = ?damage,
                    "spool record is damaged and was skipped; the lines in it are lost"
                );
            }
            let mut size = len;
            if let Some(tail) = scan.torn_tail {
                tracing::warn!(segment = %path.display(), offset = tail, "truncating a torn record at the end of a spool segment (an interrupted write)");
                if let Err(e) = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(tail))
                {
                    tracing::error!(segment = %path.display(), error = %e, "cannot truncate the torn tail; new records go to a new segment");
                }
                size = tail;
            }
            let mut records: VecDeque<Rec> = scan
                .records
                .iter()
                .map(|r| Rec {
                    offset: r.offset,
                    len: r.len,
                    lines: r.lines,
                    created_at_ms: r.created_at_ms,
                    state: RecState::Pending,
                })
                .collect();
            // Records before the cursor were delivered.
            if let Some((cseg, coff)) = cursor {
                if id < cseg {
                    records.clear();
                } else if id == cseg {
                    records.retain(|r| r.offset >= coff);
                }
            }
            segments.push_back(Segment::new(id, size, records));
        }
        let next_segment_id = segments.back().map_or(1, |s| s.id + 1);
        let segment_size = (settings.max_size / 8).clamp(64 << 10, 32 << 20);
        let spool = Spool {
            dir,
            settings: settings.clone(),
            segment_size,
            stats,
            state: Mutex::new(State {
                segments,
                writer: None,
                dirty: false,
                pending_acks: Vec::new(),
                persisted_cursor: cursor,
                next_segment_id,
                reader: None,
            }),
            freed: Condvar::new(),
        };
        {
            let mut st = spool.state.lock().unwrap();
            spool.collect_garbage(&mut st);
            spool.update_gauges(&st);
        }
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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
        let rec = encode_record(batch, now_ms());
        let mut st = self.state.lock().unwrap();
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
            state: RecState::Pending,
        });
        seg.size = offset + rec.len() as u64;
        self.update_gauges(&st);
        let acks = match self.settings.fsync {
            FsyncPolicy::Always => {
                if let Some((_, f)) = &st.writer {
                    f.sync_data()?;
                }
                batch.acks.clone()
            }
            FsyncPolicy::Interval => {
                st.dirty = true;
                st.pending_acks.extend_from_slice(&batch.acks);
                Vec::new()
            }
            FsyncPolicy::Never => batch.acks.clone(),
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
            let id = st.next_segment_id;
            st.next_segment_id += 1;
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(segment_path(&self.dir, id))?;
            sync_dir(&self.dir)?;
            st.segments.push_back(Segment::new(id, 0, VecDeque::new()));
            st.writer = Some((id, f));
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
                    self.stats.spool_corrupt_records.fetch_add(1, Relaxed);
                    tracing::error!(segment = seg_id, offset, lines, error = %what, "spool record could not be read back and was skipped; its lines are lost");
                    self.collect_garbage(&mut st);
                }
            }
        }
    }

    fn read_at(&self, st: &mut State, seg: u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if st.reader.as_ref().map(|(id, _)| *id) != Some(seg) {
            st.reader = Some((seg, File::open(segment_path(&self.dir, seg))?));
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
        let acks = std::mem::take(&mut st.pending_acks);
        let cursor = st
            .segments
            .iter()
            .find_map(|s| s.records.front().map(|r| (s.id, r.offset)))
            .or_else(|| st.segments.back().map(|s| (s.id, s.size)));
        if let Some((seg, off)) = cursor.filter(|c| Some(*c) != st.persisted_cursor) {
            write_cursor(&self.dir, seg, off)?;
            st.persisted_cursor = cursor;
        }
        Ok(acks)
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
        let writer = st.writer.as_ref().map(|(id, _)| *id);
        let last = st.segments.back().map(|s| s.id);
        while let Some(front) = st.segments.front() {
            let done = front.live == 0;
            if !done || Some(front.id) == writer || Some(front.id) == last {
                break;
            }
            let id = front.id;
            st.segments.pop_front();
            if st.reader.as_ref().is_some_and(|(r, _)| *r == id) {
                st.reader = None;
            }
            if let Err(e) = fs::remove_file(segment_path(&self.dir, id)) {
                tracing::warn!(segment = id, error = %e, "cannot delete a delivered spool segment");
            }
        }
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
                let id = st.next_segment_id;
                st.next_segment_id += 1;
                match OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(segment_path(&self.dir, id))
                {
                    Ok(f) => {
                        st.segments.push_back(Segment::new(id, 0, VecDeque::new()));
                        st.writer = Some((id, f));
                    }
                    Err(_) => return false,
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
        let _ = fs::remove_file(segment_path(&self.dir, seg.id));
        self.count_dropped(
            lines,
            "spool full (when_full = \"drop_oldest\"): deleted the oldest segment",
        );
        true
    }

    fn count_dropped(&self, lines: u64, what: &str) {
        self.stats.spool_dropped_lines.fetch_add(lines, Relaxed);
        tracing::error!(
            lines,
            max_size = self.settings.max_size,
            "{what}; these lines are lost. Raise spool.max_size or fix the output"
        );
    }

    fn update_gauges(&self, st: &State) {
        let b = backlog_of(&st.segments);
        self.stats.spool_bytes.store(b.bytes, Relaxed);
        self.stats.spool_records.store(b.records, Relaxed);
        self.stats.spool_lines.store(b.lines, Relaxed);
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

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

/// Segment files in id order.
fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(hex) = name.strip_suffix(".seg") else {
            continue;
        };
        if hex.len() != 16 {
            continue;
        }
        if let Ok(id) = u64::from_str_radix(hex, 16) {
            out.push((id, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn move_aside(dir: &Path, path: &Path, why: &str) {
    let aside = dir.join("corrupt");
    let target = aside.join(path.file_name().unwrap_or_default());
    let res = fs::create_dir_all(&aside).and_then(|()| fs::rename(path, &target));
    tracing::error!(
        segment = %path.display(),
        moved_to = %target.display(),
        error = why,
        moved = res.is_ok(),
        "cannot read a spool segment; it was moved aside and its lines are not replayed"
    );
}

fn read_cursor(dir: &Path) -> Option<(u64, u64)> {
    let mut buf = Vec::new();
    File::open(dir.join(CURSOR))
        .ok()?
        .read_to_end(&mut buf)
        .ok()?;
    if buf.len() != 20 || crc32c::crc32c(&buf[..16]).to_le_bytes() != buf[16..20] {
        tracing::warn!(dir = %dir.display(), "spool cursor is damaged; replaying from the oldest record (some batches may be sent twice)");
        return None;
    }
    Some((
        u64::from_le_bytes(buf[0..8].try_into().unwrap()),
        u64::from_le_bytes(buf[8..16].try_into().unwrap()),
    ))
}

fn write_cursor(dir: &Path, seg: u64, off: u64) -> io::Result<()> {
    let mut buf = Vec::with_capacity(20);
    buf.extend_from_slice(&seg.to_le_bytes());
    buf.extend_from_slice(&off.to_le_bytes());
    buf.extend_from_slice(&crc32c::crc32c(&buf).to_le_bytes());
    let tmp = dir.join("cursor.tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(CURSOR))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

// ---------------------------------------------------------------------------------------------
// Offline inspection: `lineship spool status` and `lineship spool verify`.

/// What `verify` found in one segment.
#[derive(Debug, Clone)]
pub struct SegmentReport {
    pub path: PathBuf,
    pub scan: Option<SegmentScan>,
    pub read_error: Option<String>,
}

/// What an offline inspection of the spool found.
#[derive(Debug, Clone, Default)]
pub struct Inspection {
    /// Persisted replay position (segment id, offset), if readable.
    pub cursor: Option<(u64, u64)>,
    pub segments: Vec<SegmentReport>,
}

/// Reads every segment and checks every CRC, changing nothing.
pub fn inspect(state_dir: &Path) -> io::Result<Inspection> {
    let dir = state_dir.join("spool");
    if !dir.exists() {
        return Ok(Inspection::default());
    }
    let cursor = read_cursor(&dir);
    let mut out = Vec::new();
    for (_, path) in list_segments(&dir)? {
        match scan_segment_file(&path) {
            Ok((scan, _)) => out.push(SegmentReport {
                path,
                scan: Some(scan),
                read_error: None,
            }),
            Err(e) => out.push(SegmentReport {
                path,
                scan: None,
                read_error: Some(e.to_string()),
            }),
        }
    }
    Ok(Inspection {
        cursor,
        segments: out,
    })
}

impl Inspection {
    /// What is still to be delivered: records at or after the cursor.
    pub fn backlog(&self) -> Backlog {
        let mut b = Backlog::default();
        for seg in &self.segments {
            let Some(scan) = &seg.scan else { continue };
            let id = segment_id(&seg.path);
            b.segments += 1;
            b.bytes += scan.records.last().map_or(0, |r| r.offset + r.len as u64);
            for r in &scan.records {
                let delivered = match (self.cursor, id) {
                    (Some((cseg, coff)), Some(id)) => id < cseg || (id == cseg && r.offset < coff),
                    _ => false,
                };
                if !delivered {
                    b.records += 1;
                    b.lines += r.lines as u64;
                    b.oldest_created_at_ms = Some(
                        b.oldest_created_at_ms
                            .map_or(r.created_at_ms, |o| o.min(r.created_at_ms)),
                    );
                }
            }
        }
        b
    }

    /// One line per problem: which file, which offset, what is wrong. Empty when all is well.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for seg in &self.segments {
            let p = seg.path.display();
            if let Some(e) = &seg.read_error {
                out.push(format!("{p}: cannot read: {e}"));
            }
            if let Some(scan) = &seg.scan {
                for (offset, damage, skipped) in &scan.damaged {
                    out.push(format!("{p}: damaged record at offset {offset} ({damage:?}, {skipped} bytes unreadable)"));
                }
                if let Some(t) = scan.torn_tail {
                    if !scan.damaged.iter().any(|(o, _, _)| *o == t) {
                        out.push(format!("{p}: torn record at offset {t} (an interrupted write; the daemon truncates it at start)"));
                    }
                }
            }
        }
        out
    }
}

fn segment_id(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?.strip_suffix(".seg")?;
    u64::from_str_radix(name, 16).ok()
}

#[cfg(test)]
mod tests;
