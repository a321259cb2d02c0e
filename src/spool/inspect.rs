//! Offline inspection: `lineship spool status` and `lineship spool verify`. Reads every segment
//! and checks every CRC, changing nothing.

use std::io;
use std::path::{Path, PathBuf};

use super::cursor::{read_cursor, Cursor};
use super::loss::{account, Found, Loss};
use super::scan::scan_segment_file;
use super::{list_segments, segment_path, Backlog, SegmentScan};

/// What `verify` found in one segment.
#[derive(Debug, Clone)]
pub struct SegmentReport {
    pub id: u64,
    pub path: PathBuf,
    pub scan: Option<SegmentScan>,
    pub read_error: Option<String>,
}

/// What an offline inspection of the spool found.
#[derive(Debug, Clone, Default)]
pub struct Inspection {
    pub dir: PathBuf,
    /// Persisted replay position, if readable.
    pub cursor: Option<Cursor>,
    pub segments: Vec<SegmentReport>,
    /// Records lost to damage after the cursor (what the daemon counts at its next start).
    pub losses: Vec<Loss>,
    /// Files set aside in `corrupt/` earlier (their losses were counted then).
    pub set_aside: usize,
}

/// Reads every segment and checks every CRC, changing nothing.
pub fn inspect(state_dir: &Path) -> io::Result<Inspection> {
    inspect_with_progress(state_dir, &mut |_, _| {})
}

/// [`inspect`], calling `progress(bytes scanned, bytes in all segments)` after each segment.
pub fn inspect_with_progress(
    state_dir: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<Inspection> {
    inspect_dir_with_progress(state_dir.join("spool"), progress)
}

/// [`inspect_with_progress`] of the spool in `dir` (one output's, or one shard's).
pub fn inspect_dir_with_progress(
    dir: PathBuf,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<Inspection> {
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Inspection {
                dir,
                ..Inspection::default()
            })
        }
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is not a directory (a symlink?); lineship never follows one there",
                    dir.display()
                ),
            ))
        }
        Ok(_) => {}
    }
    let cursor = read_cursor(&dir);
    let mut segments = Vec::new();
    let listed = list_segments(&dir)?;
    let size = |p: &Path| std::fs::symlink_metadata(p).map_or(0, |m| m.len());
    let total: u64 = listed.iter().map(|(_, p)| size(p)).sum();
    let mut done = 0u64;
    progress(0, total);
    for (id, path) in listed {
        done += size(&path);
        let (scan, read_error) = match scan_segment_file(&path) {
            Ok((scan, _)) => (Some(scan), None),
            Err(e) => (None, Some(e.to_string())),
        };
        segments.push(SegmentReport {
            id,
            path,
            scan,
            read_error,
        });
        progress(done.min(total), total);
    }
    let found: Vec<Found<'_>> = segments
        .iter()
        .map(|s| Found {
            id: s.id,
            scan: match (&s.scan, &s.read_error) {
                (Some(scan), _) => Ok(scan),
                (None, e) => Err(e.as_deref().unwrap_or("unreadable")),
            },
        })
        .collect();
    let losses = account(&found, cursor.as_ref());
    let set_aside = std::fs::read_dir(dir.join("corrupt")).map_or(0, |d| d.count());
    Ok(Inspection {
        dir,
        cursor,
        segments,
        losses,
        set_aside,
    })
}

impl Inspection {
    /// What is still to be delivered: records at or after the cursor.
    pub fn backlog(&self) -> Backlog {
        let mut b = Backlog::default();
        for seg in &self.segments {
            let Some(scan) = &seg.scan else { continue };
            b.segments += 1;
            b.bytes += scan.records.last().map_or(0, |r| r.offset + r.len as u64);
            for r in &scan.records {
                if !self.cursor.is_some_and(|c| c.passed(seg.id, r.offset)) {
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

    /// One line per problem: which file, which offset, what is wrong, what was lost. Empty
    /// when all is well.
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
                        out.push(format!("{p}: record cut short at offset {t} (in the newest segment: an append a crash interrupted; the daemon truncates it at start)"));
                    }
                }
            }
        }
        for l in &self.losses {
            let lines = l
                .lines
                .map_or("an unknown number of".to_owned(), |n| n.to_string());
            match &l.at {
                Some(at) => out.push(format!(
                    "{}: {} record(s) with {lines} lines LOST from offset {} ({})",
                    segment_path(&self.dir, at.segment).display(),
                    l.records,
                    at.offset,
                    at.what
                )),
                None => out.push(format!(
                    "{}: {} record(s) with {lines} lines are missing (no damaged bytes found: was a segment file removed?)",
                    self.dir.display(),
                    l.records
                )),
            }
        }
        out
    }
}
