//! Gzip request bodies, decoded with libdeflate: [`gunzip`] takes one or more concatenated
//! members (RFC 1952 allows several, and some clients append) and stops at a size limit.
//!
//! libdeflate decodes a whole member into a buffer in one call, about twice as fast as a
//! streaming inflater, and its `_ex` entry point says how many input bytes the member used, so
//! members are split exactly (no guessing from trailers). The safe wrapper [`Inflater`] owns the
//! decompressor.
//!
//! Invariants: every byte of the body belongs to a valid member (CRC32 and size checked by
//! libdeflate), or the body is refused; the output never grows past `max`, and the buffer tried
//! for a member is bounded by what its compressed size can decode to, so a small body that
//! claims a huge size in its trailer cannot make it allocate.

use std::ptr::NonNull;

use libdeflate_sys::{
    libdeflate_alloc_decompressor, libdeflate_decompressor, libdeflate_free_decompressor,
    libdeflate_gzip_decompress_ex, libdeflate_result_LIBDEFLATE_INSUFFICIENT_SPACE,
    libdeflate_result_LIBDEFLATE_SUCCESS,
};

/// Why a body could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum InflateError {
    /// Not gzip, corrupt, truncated, or trailing bytes after the last member; `at` is the offset
    /// in the body of the member that failed.
    BadData { at: usize },
    /// The decoded body would exceed the limit.
    TooLarge,
}

/// Deflate cannot expand a stream by more than about 1032:1.
const MAX_RATIO: usize = 1032;
/// A gzip member is at least a 10-byte header, an empty deflate block and an 8-byte trailer.
const MIN_MEMBER: usize = 20;

/// One libdeflate decompressor.
pub struct Inflater(NonNull<libdeflate_decompressor>);

// SAFETY: a libdeflate decompressor is plain heap state with no thread affinity; `&mut self`
// on every use keeps it to one thread at a time.
unsafe impl Send for Inflater {}

impl Inflater {
    pub fn new() -> Self {
        // SAFETY: no preconditions; a null return means the allocation failed.
        let d = unsafe { libdeflate_alloc_decompressor() };
        Inflater(NonNull::new(d).expect("libdeflate could not allocate a decompressor"))
    }

    /// Decodes one member from the start of `input` into `out` (all of it writable).
    /// Returns (input bytes used, output bytes written) or libdeflate's result code.
    fn member(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize), u32> {
        let (mut used_in, mut used_out) = (0usize, 0usize);
        // SAFETY: the pointers and lengths come from live slices, `out` is writable for its
        // whole length, and libdeflate writes only within the given bounds.
        let r = unsafe {
            libdeflate_gzip_decompress_ex(
                self.0.as_ptr(),
                input.as_ptr().cast(),
                input.len(),
                out.as_mut_ptr().cast(),
                out.len(),
                &mut used_in,
                &mut used_out,
            )
        };
        if r == libdeflate_result_LIBDEFLATE_SUCCESS {
            Ok((used_in, used_out))
        } else {
            Err(r)
        }
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater::new()
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: allocated by libdeflate_alloc_decompressor and freed only here.
        unsafe { libdeflate_free_decompressor(self.0.as_ptr()) }
    }
}

/// Decodes `input` (one or more gzip members) into a new buffer of at most `max` bytes.
pub fn gunzip(inflater: &mut Inflater, input: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    let mut out: Vec<u8> = Vec::new();
    let mut used = 0usize;
    let mut at = 0usize;
    while at < input.len() {
        let rest = &input[at..];
        if rest.len() < MIN_MEMBER {
            return Err(InflateError::BadData { at });
        }
        // The last member's size, from the trailer: exact for the usual one-member body and a
        // first guess otherwise; bounded by what `rest` can decode to.
        let hint = u32::from_le_bytes(rest[rest.len() - 4..].try_into().expect("4 bytes")) as usize;
        let mut want = hint
            .max(rest.len().saturating_mul(2))
            .max(64 << 10)
            .min(rest.len().saturating_mul(MAX_RATIO));
        let (in_n, out_n) = loop {
            let room = want.min(max - used);
            // One byte beyond the limit, so a member that exactly fills it is told apart from
            // one that would pass it.
            let room = if room == max - used { room + 1 } else { room };
            if out.len() < used + room {
                out.resize(used + room, 0);
            }
            match inflater.member(rest, &mut out[used..used + room]) {
                Ok(n) => break n,
                Err(code) if code == libdeflate_result_LIBDEFLATE_INSUFFICIENT_SPACE => {
                    if used + room > max {
                        return Err(InflateError::TooLarge);
                    }
                    want = want.saturating_mul(2);
                }
                Err(_) => return Err(InflateError::BadData { at }),
            }
        };
        used += out_n;
        if used > max {
            return Err(InflateError::TooLarge);
        }
        at += in_n;
    }
    out.truncate(used);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Members are made with flate2, an encoder independent of the decoder under test.
    fn gz(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn lines(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| format!("cpu,host=h{} usage={}i {}\n", i % 17, i * 7, i).into_bytes())
            .collect()
    }

    fn dec(input: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        gunzip(&mut Inflater::new(), input, max)
    }

    #[test]
    fn one_member_at_several_levels() {
        let data = lines(5000);
        for level in [0, 1, 6, 9] {
            assert_eq!(dec(&gz(&data, level), 1 << 26).unwrap(), data);
        }
    }

    #[test]
    fn several_members_including_empty_and_identical_ones() {
        let data = lines(3000);
        let (a, b) = data.split_at(1234);
        let mut body = gz(a, 1);
        body.extend(gz(b"", 1));
        body.extend(gz(b, 6));
        body.extend(gz(b, 6)); // identical members both count
        let mut want = data.clone();
        want.extend_from_slice(b);
        assert_eq!(dec(&body, 1 << 26).unwrap(), want);
    }

    #[test]
    fn ten_thousand_tiny_members_decode_in_order() {
        let mut body = Vec::new();
        let mut want = Vec::new();
        for i in 0..10_000 {
            let line = format!("m v={i}i\n");
            body.extend(gz(line.as_bytes(), 1));
            want.extend_from_slice(line.as_bytes());
        }
        assert_eq!(dec(&body, 1 << 26).unwrap(), want);
    }

    #[test]
    fn a_wrong_size_hint_only_costs_a_retry() {
        // The small last member's trailer is the hint; the first member is far larger.
        let big = vec![b'x'; 3 << 20];
        let mut body = gz(&big, 1);
        body.extend(gz(b"y\n", 1));
        assert_eq!(dec(&body, 1 << 26).unwrap().len(), big.len() + 2);
        // A trailer that lies (claims 4 GiB) does not make it allocate 4 GiB or fail.
        let mut liar = gz(b"m v=1i\n", 1);
        let n = liar.len();
        liar[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(dec(&liar, 1 << 26), Err(InflateError::BadData { at: 0 }));
    }

    #[test]
    fn the_limit_is_exact() {
        let data = vec![b'a'; 100_000];
        let body = gz(&data, 1);
        assert_eq!(dec(&body, 100_000).unwrap().len(), 100_000);
        assert_eq!(dec(&body, 99_999), Err(InflateError::TooLarge));
        let mut two = body.clone();
        two.extend(gz(b"b", 1));
        assert_eq!(dec(&two, 100_000), Err(InflateError::TooLarge));
        assert_eq!(dec(&two, 100_001).unwrap().len(), 100_001);
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let bomb = gz(&vec![0u8; 64 << 20], 9);
        assert!(bomb.len() < 100 << 10);
        assert_eq!(dec(&bomb, 1 << 20), Err(InflateError::TooLarge));
    }

    #[test]
    fn bad_input_names_the_member() {
        let good = gz(&lines(100), 1);
        assert_eq!(
            dec(b"plain text, not gzip at all", 1 << 20),
            Err(InflateError::BadData { at: 0 })
        );
        assert_eq!(dec(b"short", 1 << 20), Err(InflateError::BadData { at: 0 }));
        assert!(dec(&good[..good.len() - 3], 1 << 20).is_err());
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"garbage after the member");
        assert_eq!(
            dec(&trailing, 1 << 20),
            Err(InflateError::BadData { at: good.len() })
        );
        let mut corrupt = good.clone();
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0xff;
        assert!(dec(&corrupt, 1 << 20).is_err());
        assert_eq!(dec(b"", 1 << 20).unwrap(), b"");
    }
}
