//! Byte classes of line protocol and the scans over them, shared by the full validator, the
//! value parsers and the framer: a 256-entry table for line tails and other targets, and SSE2
//! versions (sixteen bytes per compare, part of the x86_64 baseline) for the rest.
//!
//! Invariant: the SSE2 versions give exactly the answers of the table; they only get there in
//! fewer steps.

/// Byte classes of the full validator, for line tails and targets without SSE2.
const CTRL: u8 = 1; // nonprintable: 0x00-0x1f and 0x7f (the grammar's nonprintable_char)
pub(super) const MEAS: u8 = 2; // may appear unescaped in a measurement name
pub(super) const KEY: u8 = 4; // may appear unescaped in a tag key, tag value or field key
pub(super) const DIGIT: u8 = 8;

static CLASS: [u8; 256] = build_class();

const fn build_class() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut c = 0;
        if b < 0x20 || b == 0x7f {
            c |= CTRL;
        } else if b != b' ' && b != b',' && b != b'\\' {
            c |= MEAS;
            if b != b'=' {
                c |= KEY;
            }
        }
        if b.is_ascii_digit() {
            c |= DIGIT;
        }
        t[i] = c;
        i += 1;
    }
    t
}

#[inline(always)]
pub(super) fn is_ctrl(b: u8) -> bool {
    CLASS[b as usize] & CTRL != 0
}

/// Index of the first byte at or after `i` that is not in `mask` (or `line.len()`). `mask` is
/// one of `MEAS`, `KEY`, `DIGIT`.
#[inline(always)]
pub(super) fn skip_class(line: &[u8], i: usize, mask: u8) -> usize {
    #[cfg(target_arch = "x86_64")]
    let i = {
        let mut i = i;
        while let Some(chunk) = line.get(i..i + 16) {
            let outside = simd::outside(chunk.try_into().expect("16 bytes"), mask);
            if outside != 0 {
                return i + outside.trailing_zeros() as usize;
            }
            i += 16;
        }
        i
    };
    match line[i..]
        .iter()
        .position(|&b| CLASS[b as usize] & mask == 0)
    {
        Some(k) => i + k,
        None => line.len(),
    }
}

/// Index of the first `a` or `b` at or after `i` (or `bytes.len()`). Inline rather than
/// `memchr`, whose call costs more than the short distances searched here.
#[inline(always)]
pub(super) fn find_byte(bytes: &[u8], i: usize, a: u8, b: u8) -> usize {
    #[cfg(target_arch = "x86_64")]
    let i = {
        let mut i = i;
        while let Some(chunk) = bytes.get(i..i + 16) {
            let hits = simd::find2(chunk.try_into().expect("16 bytes"), a, b);
            if hits != 0 {
                return i + hits.trailing_zeros() as usize;
            }
            i += 16;
        }
        i
    };
    match bytes[i..].iter().position(|&c| c == a || c == b) {
        Some(k) => i + k,
        None => bytes.len(),
    }
}

/// Sixteen bytes at a time with SSE2, which every x86_64 CPU has. Tokens are mostly shorter
/// than sixteen bytes, so one compare usually finds the end of one; the byte table remains
/// for line tails and other targets.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{DIGIT, KEY};
    use std::arch::x86_64::*;

    /// Bit k is set when byte k is `a` or `b`.
    #[inline(always)]
    pub(super) fn find2(chunk: &[u8; 16], a: u8, b: u8) -> u32 {
        // SAFETY: SSE2 is part of the x86_64 baseline, so the intrinsics are always available;
        // the load reads exactly the 16 bytes of `chunk` and has no alignment requirement.
        unsafe {
            let v = _mm_loadu_si128(chunk.as_ptr().cast());
            let hit = _mm_or_si128(
                _mm_cmpeq_epi8(v, _mm_set1_epi8(a as i8)),
                _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8)),
            );
            _mm_movemask_epi8(hit) as u32
        }
    }

    /// Bit k is set when byte k is not in the class `mask` (see `CLASS`).
    #[inline(always)]
    pub(super) fn outside(chunk: &[u8; 16], mask: u8) -> u32 {
        // SAFETY: SSE2 is part of the x86_64 baseline, so the intrinsics are always available;
        // the load reads exactly the 16 bytes of `chunk` and has no alignment requirement.
        unsafe {
            let v = _mm_loadu_si128(chunk.as_ptr().cast());
            if mask == DIGIT {
                // A digit is a byte whose distance from '0' is at most 9 (unsigned).
                let d = _mm_sub_epi8(v, _mm_set1_epi8(b'0' as i8));
                let digit = _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(9)), d);
                return !(_mm_movemask_epi8(digit) as u32) & 0xffff;
            }
            let eq = |b: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8));
            let below_space = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
            let ctrl = _mm_or_si128(below_space, eq(0x7f));
            let seps = _mm_or_si128(_mm_or_si128(eq(b' '), eq(b',')), eq(b'\\'));
            let mut hit = _mm_or_si128(seps, ctrl);
            if mask == KEY {
                hit = _mm_or_si128(hit, eq(b'='));
            }
            _mm_movemask_epi8(hit) as u32
        }
    }
}

/// Word-at-a-time ASCII test; std's `is_ascii` is slower on line-sized slices.
#[inline(always)]
pub(super) fn is_ascii(line: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let chunks = line.chunks_exact(8);
    let mut acc = chunks.remainder().iter().fold(0u64, |a, &b| a | b as u64);
    for c in chunks {
        acc |= u64::from_le_bytes(c.try_into().expect("8 bytes"));
    }
    acc & HIGH == 0
}

#[inline(always)]
pub(super) fn skip_spaces(line: &[u8], i: usize) -> usize {
    match line[i..].iter().position(|&b| b != b' ') {
        Some(k) => i + k,
        None => line.len(),
    }
}
