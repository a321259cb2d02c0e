//! Recovery when the spool opens: what a crash, a full disk or a hostile hand left in
//! `state_dir/spool/`, turned into the segments to replay.
//!
//! - Nothing is followed: a segment name that is a symlink, a FIFO or a directory is moved to
//!   `corrupt/` as it is (the link itself, never its target).
//! - A segment with no valid record but damage in it (garbage, zeros, a finished segment cut
//!   short) is moved to `corrupt/` untouched, never truncated.
//! - Only a real torn tail (a record header whose record runs past the end) of the newest
//!   segment is truncated: that is an append a crash interrupted.
//! - Every lost record is counted and logged at error with its file, offset and lines
//!   (`loss.rs` measures them from the record numbers).

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

use super::cursor::{read_cursor, Cursor};
use super::loss::{self, Found, Loss};
use super::record::Seq;
use super::scan::scan_segment_file;
use super::segment::{Rec, RecState, Segment};
use super::SegmentScan;
use super::SpoolStats;
use crate::statefile;

pub(super) struct Recovered {
    pub segments: VecDeque<Segment>,
    pub cursor: Option<Cursor>,
    /// Above every segment id ever used here (listed, moved aside, or named by the cursor), so
    /// a new segment can never be taken for one the cursor has passed.
    pub next_segment_id: u64,
    pub next_seq: Seq,
    /// Records were lost: the cursor should be rewritten past them.
    pub lost: bool,
}

/// A segment's scan and length, or why it could not be read.
type ScanResult = Result<(SegmentScan, u64), String>;

pub(super) fn recover(dir: &Path, stats: &SpoolStats) -> io::Result<Recovered> {
    statefile::ensure_dir(dir)?;
    let cursor = read_cursor(dir);
    let mut listed = list_segments(dir)?;
    // Ids grow by one per segment: no spool of ours comes near this, so a name past it was
    // planted, and must not push the numbering to its end.
    listed.retain(|(id, path)| {
        let ours = *id <= MAX_SEGMENT_ID;
        if !ours {
            move_aside(dir, path, "its id is out of range");
        }
        ours
    });
    let scans: Vec<(u64, PathBuf, ScanResult)> = listed
        .into_iter()
        .map(|(id, path)| {
            let scan = scan_segment_file(&path).map_err(|e| e.to_string());
            (id, path, scan)
        })
        .collect();
    let found: Vec<Found<'_>> = scans
        .iter()
        .map(|(id, _, s)| Found {
            id: *id,
            scan: s.as_ref().map(|(scan, _)| scan).map_err(String::as_str),
        })
        .collect();
    let losses = loss::account(&found, cursor.as_ref());
    for l in &losses {
        report_loss(dir, l, stats);
    }

    // As in `loss::account`: the newest segment that could be read.
    let newest = scans
        .iter()
        .rev()
        .find(|(_, _, s)| s.is_ok())
        .map(|(id, _, _)| *id);
    let highest = scans
        .iter()
        .map(|(id, _, _)| *id)
        .chain(cursor.map(|c| c.segment))
        .max();
    let mut next_seq = cursor
        .iter()
        .flat_map(|c| [c.next, c.end])
        .flatten()
        .max()
        .unwrap_or_default();
    let mut segments = VecDeque::new();
    for (id, path, scan) in scans {
        let (scan, len) = match scan {
            Ok(s) => s,
            Err(e) => {
                move_aside(dir, &path, &e);
                continue;
            }
        };
        let real_torn = scan
            .torn_tail
            .filter(|t| !scan.damaged.iter().any(|(o, _, _)| o == t));
        let finished_cut = real_torn.is_some() && Some(id) != newest;
        if scan.records.is_empty() && (!scan.damaged.is_empty() || finished_cut) {
            move_aside(dir, &path, "it holds no valid record");
            continue;
        }
        let mut size = len;
        if let Some(tail) = real_torn.filter(|_| Some(id) == newest) {
            tracing::warn!(segment = %path.display(), offset = tail, "truncating a torn record at the end of the newest spool segment (an append a crash interrupted)");
            match statefile::open(&path, fs::OpenOptions::new().write(true))
                .and_then(|f| f.set_len(tail))
            {
                Ok(()) => size = tail,
                Err(e) => {
                    tracing::error!(segment = %path.display(), error = %e, "cannot truncate the torn tail; new records go to a new segment")
                }
            }
        }
        if let Some(last) = scan
            .records
            .iter()
            .rev()
            .find_map(|r| r.seq.map(|s| s.after(r.lines)))
        {
            next_seq = next_seq.max(last);
        }
        let records: VecDeque<Rec> = scan
            .records
            .iter()
            // Records before the cursor were delivered.
            .filter(|r| !cursor.is_some_and(|c| c.passed(id, r.offset)))
            .map(|r| Rec {
                offset: r.offset,
                len: r.len,
                lines: r.lines,
                created_at_ms: r.created_at_ms,
                seq: r.seq,
                state: RecState::Pending,
            })
            .collect();
        segments.push_back(Segment::new(id, size, records));
    }
    Ok(Recovered {
        segments,
        cursor,
        next_segment_id: highest.map_or(1, |h| h.saturating_add(1)),
        next_seq,
        lost: !losses.is_empty(),
    })
}

fn report_loss(dir: &Path, l: &Loss, stats: &SpoolStats) {
    stats.corrupt_records.fetch_add(l.records, Relaxed);
    if let Some(n) = l.lines {
        stats.corrupt_lines.fetch_add(n, Relaxed);
    }
    // Absent when it cannot be known.
    let lines = l.lines;
    match &l.at {
        Some(p) => tracing::error!(
            segment = %segment_path(dir, p.segment).display(),
            offset = p.offset,
            records = l.records,
            lines,
            damage = %p.what,
            "spool records are damaged and were skipped; the lines in them are LOST"
        ),
        None => tracing::error!(
            spool = %dir.display(),
            records = l.records,
            lines,
            "spool records are missing (no damaged bytes found: was a segment file removed?); the lines in them are LOST"
        ),
    }
}

/// The highest segment id a spool uses (2^48 segments of at least 64 KiB: 16 EiB).
pub(super) const MAX_SEGMENT_ID: u64 = 1 << 48;

pub(super) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

/// Entries named like segments, in id order, whatever their file type.
pub(super) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
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

/// Moves `path` (the entry itself, never a symlink's target) into `dir/corrupt/`, under a name
/// not used there yet.
fn move_aside(dir: &Path, path: &Path, why: &str) {
    let aside = dir.join("corrupt");
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let res = statefile::ensure_dir(&aside).and_then(|()| {
        let target = statefile::unused_name(&aside.join(&*name));
        fs::rename(path, &target).map(|()| target)
    });
    match res {
        Ok(target) => tracing::error!(
            segment = %path.display(),
            moved_to = %target.display(),
            why,
            "a spool segment cannot be replayed; it was moved aside untouched (its lost records are counted above)"
        ),
        Err(e) => tracing::error!(
            segment = %path.display(),
            why,
            error = %e,
            "a spool segment cannot be replayed, nor moved to corrupt/; it is left in place and skipped. Move it out of the spool directory by hand"
        ),
    }
}
