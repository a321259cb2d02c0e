//! Streaming segment scan: the same [`SegmentScan`] as [`scan_segment`], read through a fixed
//! window so that recovery and inspection use bounded memory whatever the segment size.
//!
//! Invariants:
//! - Memory is the window plus at most one bucket name (64 KiB), whatever a header claims: a
//!   record's checksum is computed as its payload streams past, and a claimed length is checked
//!   against the bytes left in the segment before anything is read.
//! - Only the first `len` bytes are looked at (a segment that grows meanwhile is scanned as it
//!   was); a segment shorter than `len` is a read error.
//! - Bytes are read again only while resynchronising after damage, which is why the reader
//!   must seek.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use super::record::{check_header, meta_fixed, Meta, META_MAX};
use super::{Damage, ScannedRecord, SegmentScan, HEADER, MAGIC};

/// Bytes of a segment held in memory at once by a scan.
pub(super) const WINDOW: usize = 1 << 20;

/// Scans the first `len` bytes of a segment read from `reader`: every valid record, every
/// damaged region and a torn tail, exactly as [`scan_segment`] would over those bytes.
///
/// [`scan_segment`]: super::scan_segment
pub fn scan_segment_reader<R: Read + Seek>(reader: R, len: u64) -> io::Result<SegmentScan> {
    Scanner::new(reader, len, WINDOW).scan()
}

/// Scans the segment file at `path`; also returns its length.
pub(super) fn scan_segment_file(path: &Path) -> io::Result<(SegmentScan, u64)> {
    // Never through a symlink, and only a regular file (a directory or FIFO is refused).
    let f = crate::statefile::open_read(path)?;
    let len = f.metadata()?.len();
    Ok((scan_segment_reader(f, len)?, len))
}

pub(super) struct Scanner<R> {
    reader: R,
    /// Where the reader is positioned, if known.
    at: Option<u64>,
    len: u64,
    window: usize,
    /// The window holds the segment bytes `base .. base + buf.len()`.
    base: u64,
    buf: Vec<u8>,
    /// Holds a bucket name while it is checked.
    scratch: Vec<u8>,
}

impl<R: Read + Seek> Scanner<R> {
    /// `window` must hold a record header; tests make it tiny to exercise its edges.
    pub(super) fn new(reader: R, len: u64, window: usize) -> Scanner<R> {
        assert!(
            window >= HEADER,
            "the scan window must hold a record header"
        );
        Scanner {
            reader,
            at: None,
            len,
            window,
            base: 0,
            buf: Vec::with_capacity(window.min(usize::try_from(len).unwrap_or(usize::MAX))),
            scratch: Vec::new(),
        }
    }

    /// The most bytes the scan has held (for tests of its memory bound).
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.buf.capacity() + self.scratch.capacity()
    }

    /// The same loop as `scan_segment`, over positions instead of a slice.
    pub(super) fn scan(&mut self) -> io::Result<SegmentScan> {
        let mut scan = SegmentScan::default();
        let mut pos = 0u64;
        while pos < self.len {
            match self.check(pos)? {
                Ok(rec) => {
                    pos += u64::from(rec.len);
                    scan.records.push(rec);
                }
                Err(damage) => match self.resync(pos + 1)? {
                    Some(next) => {
                        scan.damaged.push((pos, damage, next - pos));
                        pos = next;
                    }
                    None if damage == Damage::Truncated => {
                        scan.torn_tail = Some(pos);
                        break;
                    }
                    None => {
                        scan.damaged.push((pos, damage, self.len - pos));
                        scan.torn_tail = Some(pos);
                        break;
                    }
                },
            }
        }
        Ok(scan)
    }

    /// The offset of the next valid record at or after `from`.
    fn resync(&mut self, from: u64) -> io::Result<Option<u64>> {
        let mut i = from;
        while i + MAGIC.len() as u64 <= self.len {
            let (found, seen) = {
                let w = self.view(i, MAGIC.len())?;
                (memchr::memmem::find(w, MAGIC), w.len())
            };
            match found {
                Some(p) => {
                    let at = i + p as u64;
                    if self.check(at)?.is_ok() {
                        return Ok(Some(at));
                    }
                    i = at + 1;
                }
                // A magic may straddle the window's end: look again from its last 3 bytes.
                None => i += (seen - (MAGIC.len() - 1)) as u64,
            }
        }
        Ok(None)
    }

    /// Checks the record at `pos` the way `parse_record` does, in the same order of verdicts.
    fn check(&mut self, pos: u64) -> io::Result<Result<ScannedRecord, Damage>> {
        let left = self.len - pos;
        let mut h = [0u8; HEADER + META_MAX];
        let head = &mut h[..HEADER.min(left as usize)];
        self.copy(pos, head)?;
        let (version, payload_len) = match check_header(head, left) {
            Ok(v) => v,
            Err(damage) => return Ok(Err(damage)),
        };
        // Metadata first (it sits right after the header, in the window now), checksum second;
        // a bad checksum still wins, as in `parse_record`.
        let fixed = meta_fixed(version);
        self.copy(pos + HEADER as u64, &mut h[HEADER..HEADER + fixed])?;
        let meta = Meta::read(version, &h[HEADER..]);
        let meta_ok = meta.fits(version, payload_len)
            && self.bucket_is_utf8(pos + (HEADER + fixed) as u64, meta.bucket_len)?;
        let crc = self.crc(
            pos + HEADER as u64,
            payload_len as u64,
            crc32c::crc32c(&h[4..12]),
        )?;
        if crc != u32::from_le_bytes(h[12..16].try_into().unwrap()) {
            return Ok(Err(Damage::BadChecksum));
        }
        if !meta_ok {
            return Ok(Err(Damage::BadMetadata));
        }
        Ok(Ok(ScannedRecord {
            offset: pos,
            len: (HEADER + payload_len) as u32,
            lines: meta.lines,
            created_at_ms: meta.created_at_ms,
            body_len: (payload_len - fixed - meta.bucket_len) as u32,
            seq: meta.seq,
        }))
    }

    fn bucket_is_utf8(&mut self, pos: u64, len: usize) -> io::Result<bool> {
        let mut name = std::mem::take(&mut self.scratch);
        name.resize(len, 0);
        let res = self.copy(pos, &mut name);
        let ok = std::str::from_utf8(&name).is_ok();
        self.scratch = name;
        res.map(|()| ok)
    }

    /// Fills `out` with the segment bytes at `pos`, which must lie within `len`.
    fn copy(&mut self, mut pos: u64, mut out: &mut [u8]) -> io::Result<()> {
        while !out.is_empty() {
            let w = self.view(pos, 1)?;
            let n = w.len().min(out.len());
            out[..n].copy_from_slice(&w[..n]);
            out = &mut out[n..];
            pos += n as u64;
        }
        Ok(())
    }

    /// Continues `crc` over `n` segment bytes at `pos`, which must lie within `len`.
    fn crc(&mut self, mut pos: u64, mut n: u64, mut crc: u32) -> io::Result<u32> {
        while n > 0 {
            let w = self.view(pos, 1)?;
            let k = (w.len() as u64).min(n) as usize;
            crc = crc32c::crc32c_append(crc, &w[..k]);
            pos += k as u64;
            n -= k as u64;
        }
        Ok(crc)
    }

    /// The window's bytes from `pos` on, at least `need` of them (fewer only at the end of the
    /// segment). `pos` must lie within `len` and `need` within the window size.
    fn view(&mut self, pos: u64, need: usize) -> io::Result<&[u8]> {
        let need = (need as u64).min(self.len - pos);
        let end = self.base + self.buf.len() as u64;
        if pos < self.base || pos + need > end {
            self.refill(pos)?;
        }
        Ok(&self.buf[(pos - self.base) as usize..])
    }

    /// Moves the window to start at `pos`.
    fn refill(&mut self, pos: u64) -> io::Result<()> {
        let want = (self.window as u64).min(self.len - pos) as usize;
        self.buf.clear();
        if self.at != Some(pos) {
            self.at = None;
            self.reader.seek(SeekFrom::Start(pos))?;
        }
        self.buf.resize(want, 0);
        if let Err(e) = self.reader.read_exact(&mut self.buf) {
            self.buf.clear();
            self.at = None;
            return Err(e);
        }
        self.base = pos;
        self.at = Some(pos + want as u64);
        Ok(())
    }
}
