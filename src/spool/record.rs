//! Record framing (pure): encoding a batch as one spool record, parsing it back, and scanning
//! segment bytes for valid records, damaged regions and a torn tail. The format is documented
//! in the spool's module doc.

use bytes::Bytes;

use crate::batch::{Batch, Dest, Encoding};
use crate::line::Precision;

pub(super) const MAGIC: &[u8; 4] = b"LSPL";
/// The version written; version 1 (no sequence numbers) is still read.
pub(super) const VERSION: u8 = 2;
pub(super) const HEADER: usize = 16;
/// The longest fixed metadata of any version (what a reader must look at before the bucket).
pub(super) const META_MAX: usize = meta_fixed(VERSION);
/// Sanity bound on a payload, so a damaged length cannot make us allocate gigabytes.
pub(super) const MAX_PAYLOAD: usize = 256 << 20;

/// Bytes of fixed metadata at the start of a payload of `version`.
pub(super) const fn meta_fixed(version: u8) -> usize {
    match version {
        1 => 8 + 4 + 4 + 2,
        _ => 8 + 4 + 4 + 2 + 8 + 8,
    }
}

/// Where a record stands in the spool's history: its number, and the lines appended before it.
/// Consecutive records have consecutive numbers, so a gap between two records read back is
/// exactly the records (and lines) lost between them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seq {
    pub record: u64,
    pub line: u64,
}

impl Seq {
    /// The sequence of the record after one of `lines` lines at `self`.
    pub fn after(self, lines: u32) -> Seq {
        // Saturating: a crafted record may carry any number (its CRC is no signature).
        Seq {
            record: self.record.saturating_add(1),
            line: self.line.saturating_add(u64::from(lines)),
        }
    }
}

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

/// Frames a batch as one record (the current version), numbered `seq`.
pub fn encode_record(batch: &Batch, created_at_ms: u64, seq: Seq) -> Vec<u8> {
    let bucket = batch.dest.bucket.as_bytes();
    let bucket = &bucket[..bucket.len().min(u16::MAX as usize)];
    let payload_len = META_MAX + bucket.len() + batch.body.len();
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
    rec.extend_from_slice(&seq.record.to_le_bytes());
    rec.extend_from_slice(&seq.line.to_le_bytes());
    rec.extend_from_slice(bucket);
    rec.extend_from_slice(&batch.body);
    let crc = record_crc(&rec[4..12], &rec[HEADER..]);
    rec[12..16].copy_from_slice(&crc.to_le_bytes());
    rec
}

pub(super) fn record_crc(header: &[u8], payload: &[u8]) -> u32 {
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
    /// `None` for version 1 records.
    pub seq: Option<Seq>,
}

/// What a record header says: its version and payload length. `have` is how many bytes of the
/// record are available (a header cut short is `Truncated` if what is there could begin one).
pub(super) fn check_header(h: &[u8], have: u64) -> Result<(u8, usize), Damage> {
    if h.len() < HEADER {
        return Err(if MAGIC.starts_with(&h[..h.len().min(4)]) {
            Damage::Truncated
        } else {
            Damage::BadHeader
        });
    }
    let version = h[4];
    if &h[0..4] != MAGIC || !(1..=VERSION).contains(&version) || h[5] > 1 || h[6] > 3 || h[7] != 0 {
        return Err(Damage::BadHeader);
    }
    let payload_len = u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize;
    if !(meta_fixed(version)..=MAX_PAYLOAD).contains(&payload_len) {
        return Err(Damage::BadHeader);
    }
    // Decided from the length alone: a damaged length reads nothing.
    if have < (HEADER + payload_len) as u64 {
        return Err(Damage::Truncated);
    }
    Ok((version, payload_len))
}

/// The fixed metadata at the start of a payload of `version` (`m` holds at least
/// `meta_fixed(version)` bytes).
pub(super) struct Meta {
    pub created_at_ms: u64,
    pub lines: u32,
    pub raw_len: u32,
    pub bucket_len: usize,
    pub seq: Option<Seq>,
}

impl Meta {
    pub(super) fn read(version: u8, m: &[u8]) -> Meta {
        let u64_at = |i: usize| u64::from_le_bytes(m[i..i + 8].try_into().unwrap());
        let u32_at = |i: usize| u32::from_le_bytes(m[i..i + 4].try_into().unwrap());
        Meta {
            created_at_ms: u64_at(0),
            lines: u32_at(8),
            raw_len: u32_at(12),
            bucket_len: u16::from_le_bytes(m[16..18].try_into().unwrap()) as usize,
            seq: (version >= 2).then(|| Seq {
                record: u64_at(18),
                line: u64_at(26),
            }),
        }
    }

    /// Whether the metadata fits a payload of `payload_len` (a bucket, at least one line and a
    /// non-empty body).
    pub(super) fn fits(&self, version: u8, payload_len: usize) -> bool {
        self.lines != 0 && meta_fixed(version) + self.bucket_len < payload_len
    }
}

/// Parses the record at the start of `buf`.
pub fn parse_record(buf: &[u8]) -> Result<(RecordMeta, Batch), Damage> {
    let (version, payload_len) = check_header(&buf[..buf.len().min(HEADER)], buf.len() as u64)?;
    let payload = &buf[HEADER..HEADER + payload_len];
    let crc = u32::from_le_bytes(buf[12..16].try_into().unwrap());
    if record_crc(&buf[4..12], payload) != crc {
        return Err(Damage::BadChecksum);
    }
    let meta = Meta::read(version, payload);
    if !meta.fits(version, payload_len) {
        return Err(Damage::BadMetadata);
    }
    let fixed = meta_fixed(version);
    let bucket = std::str::from_utf8(&payload[fixed..fixed + meta.bucket_len])
        .map_err(|_| Damage::BadMetadata)?;
    let body = &payload[fixed + meta.bucket_len..];
    let precision = precision_of(buf[6]).ok_or(Damage::BadHeader)?;
    let encoding = if buf[5] == 1 {
        Encoding::Gzip
    } else {
        Encoding::Identity
    };
    let record = RecordMeta {
        len: HEADER + payload_len,
        lines: meta.lines,
        created_at_ms: meta.created_at_ms,
        body_len: body.len(),
        seq: meta.seq,
    };
    let batch = Batch {
        dest: Dest::new(bucket, precision),
        body: Bytes::copy_from_slice(body),
        encoding,
        lines: meta.lines,
        raw_len: meta.raw_len as usize,
        acks: Vec::new(),
    };
    Ok((record, batch))
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
    /// `None` for version 1 records.
    pub seq: Option<Seq>,
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
                    seq: meta.seq,
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
