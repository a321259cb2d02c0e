//! Record framing (pure): encoding a batch as one spool record, parsing it back, and scanning
//! segment bytes for valid records, damaged regions and a torn tail. The format is documented
//! in the spool's module doc.

use bytes::Bytes;

use crate::batch::{Batch, Dest, Encoding};
use crate::line::Precision;

pub(super) const MAGIC: &[u8; 4] = b"LSPL";
pub(super) const VERSION: u8 = 1;
pub(super) const HEADER: usize = 16;
pub(super) const META_FIXED: usize = 8 + 4 + 4 + 2;
/// Sanity bound on a payload, so a damaged length cannot make us allocate gigabytes.
pub(super) const MAX_PAYLOAD: usize = 256 << 20;

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
