//! Gzip bodies, with libdeflate: [`gunzip_into`] decodes one or more concatenated members into a
//! reusable buffer (the fake InfluxDB's decoder, fast enough to count millions of lines a
//! second), and [`gzip`] encodes one member (the self-test's and the tests' request bodies).
//!
//! Invariant: a body is accepted only when every byte of it belongs to a valid member (no
//! trailing garbage), and decoding never grows past the caller's limit, so a gzip bomb costs a
//! bounded amount of memory.

use libdeflater::{CompressionLvl, Compressor, DecompressionError, Decompressor};
use memchr::memmem;

#[derive(Debug, PartialEq, Eq)]
pub enum GunzipError {
    BadData,
    TooLarge,
}

/// Gunzips `input` (one or more concatenated gzip members) into `out[..returned]`.
///
/// `out` is scratch space: its length is the initialised capacity and is only ever grown, so a
/// reused buffer costs no zeroing. libdeflate decodes one member at a time and does not say how
/// many input bytes it used, so a member's end is found from its trailer: the CRC32 and size of
/// what it decoded, followed by end of input or the next member's magic.
pub fn gunzip_into(
    dec: &mut Decompressor,
    input: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<usize, GunzipError> {
    const HEADER: usize = 10;
    const MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];
    let mut rest = input;
    let mut used = 0usize;
    while !rest.is_empty() {
        if rest.len() < HEADER + 8 || !rest.starts_with(&MAGIC) {
            return Err(GunzipError::BadData);
        }
        // ISIZE of the last member: exact for the usual single-member body, a hint otherwise.
        // Deflate cannot expand more than 1032:1, so a hostile hint cannot force a huge buffer.
        let isize_hint = u32::from_le_bytes(rest[rest.len() - 4..].try_into().unwrap()) as usize;
        let mut want = isize_hint
            .min(rest.len().saturating_mul(1032))
            .max(rest.len() * 4)
            .max(64 << 10);
        let n = loop {
            want = want.min(max - used);
            if out.len() < used + want {
                out.resize(used + want, 0);
            }
            match dec.gzip_decompress(rest, &mut out[used..used + want]) {
                Ok(n) => break n,
                Err(DecompressionError::InsufficientSpace) if used + want < max => want *= 2,
                Err(DecompressionError::InsufficientSpace) => return Err(GunzipError::TooLarge),
                Err(DecompressionError::BadData) => return Err(GunzipError::BadData),
            }
        };
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&libdeflater::crc32(&out[used..used + n]).to_le_bytes());
        trailer[4..].copy_from_slice(&(n as u32).to_le_bytes());
        // The trailer can overlap the end of the deflate stream (an empty member's is all zeros),
        // so take the first candidate that is followed by the end or by another member.
        let member_len = memmem::find_iter(&rest[HEADER..], &trailer)
            .map(|p| HEADER + p + trailer.len())
            .find(|&end| end == rest.len() || rest[end..].starts_with(&MAGIC[..2]))
            .ok_or(GunzipError::BadData)?;
        used += n;
        rest = &rest[member_len..];
    }
    Ok(used)
}

/// Gunzips `input` into a new vector of at most `max` bytes.
pub fn gunzip(input: &[u8], max: usize) -> Result<Vec<u8>, GunzipError> {
    let mut out = Vec::new();
    let n = gunzip_into(&mut Decompressor::new(), input, &mut out, max)?;
    out.truncate(n);
    Ok(out)
}

/// One gzip member holding `data`.
pub fn gzip(comp: &mut Compressor, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0; comp.gzip_compress_bound(data.len())];
    let n = comp.gzip_compress(data, &mut out).expect("bound is enough");
    out.truncate(n);
    out
}

/// One gzip member holding `data`, at libdeflate level `level` (0..=12).
pub fn gzip_level(level: i32, data: &[u8]) -> Vec<u8> {
    let level = CompressionLvl::new(level).expect("a libdeflate level is 0..=12");
    gzip(&mut Compressor::new(level), data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::tests::lines;

    fn gz(data: &[u8], level: i32) -> Vec<u8> {
        gzip_level(level, data)
    }

    fn gunzip(input: &[u8]) -> Result<Vec<u8>, GunzipError> {
        super::gunzip(input, 1 << 26)
    }

    #[test]
    fn gunzip_single_member_roundtrip() {
        let data = lines(0, 5000);
        for level in [0, 1, 6] {
            assert_eq!(gunzip(&gz(&data, level)).unwrap(), data);
        }
    }

    #[test]
    fn gunzip_multi_member_including_empty_and_identical() {
        let data = lines(0, 3000);
        let (a, b) = data.split_at(1234);
        let mut body = gz(a, 1);
        body.extend(gz(b"", 1));
        body.extend(gz(b, 6));
        body.extend(gz(b, 6)); // identical members must both count
        let mut want = data.clone();
        want.extend_from_slice(b);
        assert_eq!(gunzip(&body).unwrap(), want);
    }

    #[test]
    fn gunzip_grows_past_a_wrong_size_hint() {
        // A small last member makes the trailer's ISIZE hint far too small for the first one.
        let big = vec![b'x'; 3 << 20];
        let mut body = gz(&big, 1);
        body.extend(gz(b"y\n", 1));
        let out = gunzip(&body).unwrap();
        assert_eq!(out.len(), big.len() + 2);
    }

    #[test]
    fn gunzip_rejects_bad_input_and_bombs() {
        let good = gz(&lines(0, 100), 1);
        assert_eq!(gunzip(b"plain text"), Err(GunzipError::BadData));
        assert_eq!(gunzip(&good[..good.len() - 3]), Err(GunzipError::BadData));
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"garbage after the member");
        assert_eq!(gunzip(&trailing), Err(GunzipError::BadData));
        let mut corrupt = good.clone();
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0xff;
        assert!(gunzip(&corrupt).is_err());
        let bomb = gz(&vec![0u8; 8 << 20], 1);
        let mut scratch = Vec::new();
        let r = gunzip_into(&mut Decompressor::new(), &bomb, &mut scratch, 1 << 20);
        assert_eq!(r, Err(GunzipError::TooLarge));
    }
}
