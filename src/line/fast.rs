//! The common case, validated with a separator bitmap: lines of at most `MAX_LEN` bytes with
//! no control characters, and backslashes only inside string field values. There the structure
//! of a line is fully given by the positions of ' ', ',', '=', '"' and '\', found 32 bytes at
//! a time with AVX2 where the CPU has it, else 16 at a time with SSE2 (part of the x86_64
//! baseline); the walk then steps from separator to separator instead of looking at every
//! byte.
//!
//! `check` only ever says "valid" (with the timestamp [`check_line_full`] would give) or "not
//! sure"; every rejection, with its reason and offset, comes from the full validator.
//!
//! [`check_line_full`]: super::check::check_line_full
//!
//! All of the fast path's `unsafe` is here: SSE2 intrinsics (part of the x86_64 baseline) and
//! AVX2 ones behind a runtime feature check; each block says why it is sound.

use std::arch::x86_64::*;

use super::check::is_reserved_tag_key;
use super::class::skip_spaces;
use super::value::{eight_digits, field_value, parse_eight_digits, MAX_NANOS};
use super::{Checked, Precision};

pub(super) const MAX_LEN: usize = 512;
const WORDS: usize = MAX_LEN / 64;

/// The separators of a line in order: bit k of the bitmap is set when byte k is one of
/// ' ', ',', '=', '"', '\'.
struct Seps {
    bits: [u64; WORDS],
    words: usize,
    len: usize,
    /// Word being consumed and its bits not yet consumed.
    w: usize,
    rest: u64,
}

impl Seps {
    /// `None` if the line holds a control character, or is not valid UTF-8.
    #[inline(always)]
    fn classify(line: &[u8]) -> Option<Seps> {
        let n = line.len();
        debug_assert!(n <= MAX_LEN);
        let words = n.div_ceil(64);
        let mut bits = [0u64; WORDS];
        let (control, non_ascii) = if n >= 32 && std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            unsafe { classify_avx2(line, &mut bits) }
        } else {
            classify_sse2(line, &mut bits)
        };
        if control || (non_ascii && std::str::from_utf8(line).is_err()) {
            return None;
        }
        Some(Seps {
            bits,
            words,
            len: n,
            w: 0,
            rest: bits[0],
        })
    }

    /// Consumes the next separator and returns its position, or the line length.
    #[inline(always)]
    fn pop(&mut self) -> usize {
        while self.rest == 0 {
            self.w += 1;
            if self.w >= self.words {
                return self.len;
            }
            self.rest = self.bits[self.w];
        }
        let p = self.w * 64 + self.rest.trailing_zeros() as usize;
        self.rest &= self.rest - 1;
        p
    }

    /// Consumes separators up to the next '=' (a '"' is ordinary there) and returns its
    /// position: the end of a tag or field key. `None` at any other separator or the end.
    #[inline(always)]
    fn key_end(&mut self, line: &[u8]) -> Option<usize> {
        loop {
            let p = self.pop();
            match line.get(p) {
                Some(b'"') => continue,
                Some(b'=') => return Some(p),
                _ => return None,
            }
        }
    }

    /// Consumes separators up to the next ',' or ' ' (a '"' is ordinary there, and a '=' too
    /// with `eq_ordinary`) and returns its position: the end of the measurement or of a tag
    /// value. `None` at any other separator or the end.
    #[inline(always)]
    fn name_end(&mut self, line: &[u8], eq_ordinary: bool) -> Option<usize> {
        loop {
            let p = self.pop();
            match line.get(p) {
                Some(b'"') => continue,
                Some(b'=') if eq_ordinary => continue,
                Some(b',' | b' ') => return Some(p),
                _ => return None,
            }
        }
    }
}

/// Fills `bits` with the separator bitmap of `line`; returns whether it holds control
/// characters and non-ASCII bytes.
pub(super) fn classify_sse2(line: &[u8], bits: &mut [u64; WORDS]) -> (bool, bool) {
    let n = line.len();
    let words = n.div_ceil(64);
    let mut odd = Odd::default();
    for (w, word) in bits.iter_mut().enumerate().take(words) {
        let mut m = 0u64;
        for k in 0..4 {
            let at = w * 64 + k * 16;
            if at >= n {
                break;
            }
            let seps = match line.get(at..at + 16) {
                Some(chunk) => odd.classify16(chunk.try_into().expect("16 bytes")),
                // The last, partial chunk: classify the line's last 16 bytes and keep
                // the bits of the new ones.
                None if n >= 16 => {
                    let last = odd.classify16(line[n - 16..].try_into().expect("16 bytes"));
                    last >> (at + 16 - n)
                }
                None => {
                    // 'a' is neither a separator nor odd, so the padding adds nothing.
                    let mut tail = [b'a'; 16];
                    tail[..n].copy_from_slice(line);
                    odd.classify16(&tail)
                }
            };
            m |= (seps as u64) << (k * 16);
        }
        *word = m;
    }
    (odd.control(), odd.non_ascii())
}

/// The same with AVX2, 32 bytes per step; `line` must be at least 32 bytes long.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn classify_avx2(line: &[u8], bits: &mut [u64; WORDS]) -> (bool, bool) {
    let n = line.len();
    debug_assert!(n >= 32);
    // SAFETY (for the whole body): the caller guarantees AVX2; every load reads exactly
    // the 32 bytes of a `[u8; 32]`, and loadu needs no alignment.
    unsafe {
        let mut control = _mm256_setzero_si256();
        let mut high = _mm256_setzero_si256();
        let blocks = line.chunks_exact(64);
        let rest = blocks.remainder().len();
        let mut w = 0;
        for block in blocks {
            let lo = seps32(block[..32].try_into().expect("32"), &mut control, &mut high);
            let hi = seps32(block[32..].try_into().expect("32"), &mut control, &mut high);
            bits[w] = lo | hi << 32;
            w += 1;
        }
        // The rest (under 64 bytes) re-reads the line's last 32 bytes as needed and keeps
        // only the bits of the bytes not yet classified.
        let at = n - rest;
        let last: &[u8; 32] = line[n - 32..].try_into().expect("32");
        if rest > 32 {
            let lo = seps32(
                line[at..at + 32].try_into().expect("32"),
                &mut control,
                &mut high,
            );
            let hi = seps32(last, &mut control, &mut high) >> (64 - rest);
            bits[w] = lo | hi << 32;
        } else if rest > 0 {
            bits[w] = seps32(last, &mut control, &mut high) >> (32 - rest);
        }
        (
            _mm256_movemask_epi8(control) != 0,
            _mm256_movemask_epi8(high) != 0,
        )
    }
}

/// Separator bits of 32 bytes; ORs their control and non-ASCII bytes into the vectors.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn seps32(chunk: &[u8; 32], control: &mut __m256i, high: &mut __m256i) -> u64 {
    // SAFETY: the caller guarantees AVX2; the load reads exactly the 32 bytes of `chunk`.
    unsafe {
        let v = _mm256_loadu_si256(chunk.as_ptr().cast());
        let space = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b' ' as i8));
        let comma = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b',' as i8));
        let equals = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'=' as i8));
        let quote = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'"' as i8));
        let backslash = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\\' as i8));
        let seps = _mm256_or_si256(
            _mm256_or_si256(
                _mm256_or_si256(space, comma),
                _mm256_or_si256(equals, quote),
            ),
            backslash,
        );
        let below_space = _mm256_cmpeq_epi8(_mm256_min_epu8(v, _mm256_set1_epi8(0x1f)), v);
        let del = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(0x7f));
        *control = _mm256_or_si256(*control, _mm256_or_si256(below_space, del));
        // Non-ASCII bytes are the ones with the top bit set.
        *high = _mm256_or_si256(*high, v);
        _mm256_movemask_epi8(seps) as u32 as u64
    }
}

/// Control characters (and DEL) and non-ASCII bytes seen so far, kept as vectors so that
/// each chunk costs two ORs; read once at the end.
struct Odd {
    control: __m128i,
    high: __m128i,
}

impl Default for Odd {
    fn default() -> Self {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        let zero = unsafe { _mm_setzero_si128() };
        Odd {
            control: zero,
            high: zero,
        }
    }
}

impl Odd {
    /// Separator bits of 16 bytes; notes their odd bytes.
    #[inline(always)]
    fn classify16(&mut self, chunk: &[u8; 16]) -> u32 {
        // SAFETY: SSE2 is part of the x86_64 baseline, so the intrinsics are always
        // available; the load reads exactly the 16 bytes of `chunk`, unaligned.
        unsafe {
            let v = _mm_loadu_si128(chunk.as_ptr().cast());
            let eq = |b: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8));
            let seps = _mm_or_si128(
                _mm_or_si128(
                    _mm_or_si128(eq(b' '), eq(b',')),
                    _mm_or_si128(eq(b'='), eq(b'"')),
                ),
                eq(b'\\'),
            );
            let below_space = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
            self.control = _mm_or_si128(self.control, _mm_or_si128(below_space, eq(0x7f)));
            // Non-ASCII bytes are the ones with the top bit set.
            self.high = _mm_or_si128(self.high, v);
            _mm_movemask_epi8(seps) as u32
        }
    }

    fn control(&self) -> bool {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        unsafe { _mm_movemask_epi8(self.control) != 0 }
    }

    fn non_ascii(&self) -> bool {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        unsafe { _mm_movemask_epi8(self.high) != 0 }
    }
}

/// `Some` only for a line [`super::check::check_line_full`] accepts, with the same result.
#[inline(always)]
pub(super) fn check(line: &[u8], precision: Precision) -> Option<Checked> {
    let n = line.len();
    // A leading '#' makes a comment, a leading space or ',' is left to the full path.
    if matches!(line.first(), None | Some(b' ' | b',' | b'#')) {
        return None;
    }
    let mut seps = Seps::classify(line)?;

    // Measurement: '=' and '"' are ordinary characters in it.
    let mut q = seps.name_end(line, true)?;

    // Tag set. '"' is ordinary in keys and values.
    let mut keys = [(0u16, 0u16); 16];
    let mut nkeys = 0;
    while line[q] == b',' {
        let ks = q + 1;
        let ke = seps.key_end(line)?;
        if ke == ks || nkeys == keys.len() {
            return None;
        }
        let key = &line[ks..ke];
        if is_reserved_tag_key(key) {
            return None;
        }
        for &(s, e) in &keys[..nkeys] {
            // Tag keys are short: an inline loop beats calling memcmp.
            let other = &line[s as usize..e as usize];
            if other.len() == key.len() && other.iter().zip(key).all(|(a, b)| a == b) {
                return None;
            }
        }
        keys[nkeys] = (ks as u16, ke as u16);
        nkeys += 1;
        let vs = ke + 1;
        q = seps.name_end(line, false)?;
        if q == vs {
            return None;
        }
    }

    // Field set, after one or more spaces (each space is a separator to consume).
    let mut i = q + 1;
    while line.get(i) == Some(&b' ') {
        seps.pop();
        i += 1;
    }
    loop {
        let ks = i;
        let ke = seps.key_end(line)?;
        if ke == ks {
            return None;
        }
        let vs = ke + 1;
        let ve = if line.get(vs) == Some(&b'"') {
            seps.pop(); // the opening quote
            loop {
                let p = seps.pop();
                match line.get(p) {
                    Some(b'"') => break p + 1,
                    Some(b'\\') => {
                        // Any byte may follow; if it is a separator it is consumed too.
                        match line.get(p + 1) {
                            Some(b' ' | b',' | b'=' | b'"' | b'\\') => {
                                seps.pop();
                            }
                            Some(_) => {}
                            None => return None,
                        }
                    }
                    Some(_) => continue,
                    None => return None,
                }
            }
        } else {
            // Numbers and booleans hold no separators, so the next one must follow
            // the value directly.
            field_value(line, vs).ok()?
        };
        if ve == n {
            return Some(Checked { timestamp: None });
        }
        if seps.pop() != ve {
            return None;
        }
        match line[ve] {
            b',' => i = ve + 1,
            b' ' => {
                i = ve;
                break;
            }
            _ => return None,
        }
    }
    // A line this short cannot reach the series key limit.

    // Optional timestamp, then only spaces.
    let ts_start = skip_spaces(line, i);
    if ts_start == n {
        return Some(Checked { timestamp: None });
    }
    let mut end = seps.pop();
    while end < ts_start {
        end = seps.pop(); // the spaces before the timestamp
    }
    if end < n && skip_spaces(line, end) != n {
        return None;
    }
    let ts = short_timestamp(&line[ts_start..end], precision)?;
    Some(Checked {
        timestamp: Some(ts),
    })
}

/// `[-]digits` making up all of `text`, at most 19 digits, within InfluxDB's time range.
/// Longer spellings (leading zeros) are left to the full validator.
#[inline(always)]
fn short_timestamp(text: &[u8], precision: Precision) -> Option<i64> {
    let (neg, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    // The odd digits one by one, then eight at a time; 19 digits cannot overflow u64.
    let (head, chunks) = digits.split_at(digits.len() % 8);
    let mut v: u64 = 0;
    for &d in head {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (d - b'0') as u64;
    }
    for chunk in chunks.chunks_exact(8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        if !eight_digits(word) {
            return None;
        }
        v = v * 100_000_000 + parse_eight_digits(word);
    }
    // Constants per precision rather than a division on every line.
    let limit = match precision {
        Precision::Ns => MAX_NANOS,
        Precision::Us => MAX_NANOS / 1_000,
        Precision::Ms => MAX_NANOS / 1_000_000,
        Precision::S => MAX_NANOS / 1_000_000_000,
    } as u64;
    if v > limit {
        return None;
    }
    Some(if neg { -(v as i64) } else { v as i64 })
}
