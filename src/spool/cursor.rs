//! The replay cursor file (`spool/cursor`): where replay resumes, written atomically.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use super::sync_dir;

pub(super) const CURSOR: &str = "cursor";

pub(super) fn read_cursor(dir: &Path) -> Option<(u64, u64)> {
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

pub(super) fn write_cursor(dir: &Path, seg: u64, off: u64) -> io::Result<()> {
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
