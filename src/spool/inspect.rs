//! Offline inspection: `lineship spool status` and `lineship spool verify`. Reads every segment
//! and checks every CRC, changing nothing.

use std::io;
use std::path::{Path, PathBuf};

use super::cursor::read_cursor;
use super::scan::scan_segment_file;
use super::{list_segments, Backlog, SegmentScan};

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
