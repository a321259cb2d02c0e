//! The replay cursor file (`spool/cursor`): where replay resumes, and how far the spool's
//! record numbering had come, written atomically (see the spool's module doc for the format).

use std::io::{self, Read};
use std::path::Path;

use super::record::Seq;
use crate::statefile;

pub(super) const CURSOR: &str = "cursor";
const V1_LEN: usize = 20;
const V2_LEN: usize = 52;

/// Where replay resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Every record before (segment, offset) was delivered.
    pub segment: u64,
    pub offset: u64,
    /// The number of the first record at the cursor (`None` in a version 1 cursor).
    pub next: Option<Seq>,
    /// Every record numbered below this had been appended (and synced, per the fsync policy)
    /// when the cursor was written (`None` in a version 1 cursor).
    pub end: Option<Seq>,
}

impl Cursor {
    /// Whether the record at (`segment`, `offset`) lies before the cursor (was delivered).
    pub fn passed(&self, segment: u64, offset: u64) -> bool {
        segment < self.segment || (segment == self.segment && offset < self.offset)
    }
}

/// Reads the cursor; a missing, unreadable or damaged one is `None` (replay from the oldest
/// record: at-least-once).
pub(super) fn read_cursor(dir: &Path) -> Option<Cursor> {
    let path = dir.join(CURSOR);
    let mut buf = Vec::new();
    match statefile::open_read(&path) {
        Ok(f) => {
            if let Err(e) = f.take(V2_LEN as u64 + 1).read_to_end(&mut buf) {
                tracing::warn!(cursor = %path.display(), error = %e, "cannot read the spool cursor; replaying from the oldest record (some batches may be sent twice)");
                return None;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(cursor = %path.display(), error = %e, "the spool cursor is not a regular file and is ignored; replaying from the oldest record (some batches may be sent twice)");
            return None;
        }
    }
    let decoded = decode(&buf);
    if decoded.is_none() {
        tracing::warn!(cursor = %path.display(), "spool cursor is damaged; replaying from the oldest record (some batches may be sent twice)");
    }
    decoded
}

fn decode(buf: &[u8]) -> Option<Cursor> {
    let n = buf.len();
    if !(n == V1_LEN || n == V2_LEN) || crc32c::crc32c(&buf[..n - 4]).to_le_bytes() != buf[n - 4..]
    {
        return None;
    }
    let u = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().unwrap());
    let seq = |i: usize| {
        (n == V2_LEN).then(|| Seq {
            record: u(i),
            line: u(i + 8),
        })
    };
    if u(0) > super::recover::MAX_SEGMENT_ID {
        return None;
    }
    Some(Cursor {
        segment: u(0),
        offset: u(8),
        next: seq(16),
        end: seq(32),
    })
}

/// Version 2, or version 1 when the numbers are not known (the first record to replay is a
/// version 1 record): a made-up number would make recovery count a gap that is not there.
fn encode(c: &Cursor) -> Vec<u8> {
    let mut buf = Vec::with_capacity(V2_LEN);
    buf.extend_from_slice(&c.segment.to_le_bytes());
    buf.extend_from_slice(&c.offset.to_le_bytes());
    if let (Some(next), Some(end)) = (c.next, c.end) {
        for v in [next.record, next.line, end.record, end.line] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
    }
    buf.extend_from_slice(&crc32c::crc32c(&buf).to_le_bytes());
    buf
}

/// Writes the cursor atomically. `durable` also fsyncs it (and the directory), so it survives a
/// power loss; without, it survives a crash of the process.
pub(super) fn write_cursor(dir: &Path, c: &Cursor, durable: bool) -> io::Result<()> {
    statefile::replace(dir, CURSOR, &encode(c), durable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_1() {
        let c = Cursor {
            segment: 7,
            offset: 99,
            next: Some(Seq {
                record: 5,
                line: 50,
            }),
            end: Some(Seq {
                record: 9,
                line: 90,
            }),
        };
        assert_eq!(decode(&encode(&c)), Some(c));
        let mut v1 = Vec::new();
        v1.extend_from_slice(&7u64.to_le_bytes());
        v1.extend_from_slice(&99u64.to_le_bytes());
        v1.extend_from_slice(&crc32c::crc32c(&v1).to_le_bytes());
        let old = decode(&v1).unwrap();
        assert_eq!(
            (old.segment, old.offset, old.next, old.end),
            (7, 99, None, None)
        );
        let mut bad = encode(&c);
        bad[3] ^= 1;
        assert_eq!(decode(&bad), None);
        assert_eq!(decode(b"nonsense"), None);
    }
}
