//! Counting what arrived: [`count_lines`] and [`scan_seqs`] read a decoded body once (memchr and
//! memmem, no per-line work), and [`SeqSet`] records every generated `seq=<n>i` in a bitset to
//! count lost and duplicated lines.
//!
//! Invariant: the bitset never grows past `MAX_SEQ` bits (512 MiB); larger sequence numbers are
//! counted as out of range instead.

use std::sync::OnceLock;

use memchr::memmem;
use serde::Serialize;

/// Sequence numbers at or above this are counted as out of range (the bitset stays ≤ 512 MiB).
pub const MAX_SEQ: u64 = 1 << 32;

/// Lines in `body`: newline-terminated ones plus an unterminated tail.
pub fn count_lines(body: &[u8]) -> u64 {
    let n = memchr::memchr_iter(b'\n', body).count() as u64;
    n + u64::from(body.last().is_some_and(|&b| b != b'\n'))
}

/// Appends every `seq=<digits>i` (or `u`) field value in `body` to `out`; returns how many `seq=`
/// occurrences in field position could not be parsed. Scans the whole body once with memmem
/// rather than line by line.
pub fn scan_seqs(body: &[u8], out: &mut Vec<u64>) -> u64 {
    static FINDER: OnceLock<memmem::Finder<'static>> = OnceLock::new();
    let finder = FINDER.get_or_init(|| memmem::Finder::new(b"seq="));
    let mut malformed = 0;
    for p in finder.find_iter(body) {
        if p > 0 && !matches!(body[p - 1], b',' | b' ') {
            continue;
        }
        let mut value = Some(0u64);
        let mut len = 0;
        for &b in &body[p + 4..] {
            if !b.is_ascii_digit() {
                break;
            }
            value = value
                .and_then(|v| v.checked_mul(10))
                .and_then(|v| v.checked_add(u64::from(b - b'0')));
            len += 1;
        }
        match (value, body.get(p + 4 + len)) {
            (Some(v), Some(b'i' | b'u')) if len > 0 => out.push(v),
            _ => malformed += 1,
        }
    }
    malformed
}

/// Which sequence numbers arrived, as a growable bitset.
#[derive(Default)]
pub struct SeqSet {
    words: Vec<u64>,
    unique: u64,
    dup: u64,
    out_of_range: u64,
    /// `seq=` fields that did not parse (see [`scan_seqs`]).
    pub malformed: u64,
    min: Option<u64>,
    max: Option<u64>,
}

impl SeqSet {
    pub fn insert(&mut self, s: u64) {
        if s >= MAX_SEQ {
            self.out_of_range += 1;
            return;
        }
        let w = (s >> 6) as usize;
        if w >= self.words.len() {
            let len = (w + 1)
                .max(self.words.len() * 2)
                .min((MAX_SEQ >> 6) as usize);
            self.words.resize(len, 0);
        }
        let bit = 1u64 << (s & 63);
        if self.words[w] & bit != 0 {
            self.dup += 1;
        } else {
            self.words[w] |= bit;
            self.unique += 1;
            self.min = Some(self.min.map_or(s, |m| m.min(s)));
            self.max = Some(self.max.map_or(s, |m| m.max(s)));
        }
    }

    /// Distinct sequence numbers seen in `start..end`.
    pub fn count_range(&self, start: u64, end: u64) -> u64 {
        let end = end.min(MAX_SEQ);
        if start >= end {
            return 0;
        }
        let (first, last) = ((start >> 6) as usize, ((end - 1) >> 6) as usize);
        let mut n = 0;
        for (w, &word) in self.words.iter().enumerate().take(last + 1).skip(first) {
            let mut mask = !0u64;
            if w == first {
                mask &= !0u64 << (start & 63);
            }
            if w == last {
                let hi = ((end - 1) & 63) + 1;
                if hi < 64 {
                    mask &= (1u64 << hi) - 1;
                }
            }
            n += u64::from((word & mask).count_ones());
        }
        n
    }

    pub fn summary(&self, expect: Option<(u64, u64)>) -> SeqSummary {
        let span = match (self.min, self.max) {
            (Some(lo), Some(hi)) => hi - lo + 1,
            _ => 0,
        };
        SeqSummary {
            unique: self.unique,
            dup: self.dup,
            min: self.min,
            max: self.max,
            gaps_in_span: span - self.unique,
            lost: expect.map(|(start, n)| n - self.count_range(start, start.saturating_add(n))),
            out_of_range: self.out_of_range,
            malformed: self.malformed,
        }
    }
}

#[derive(Serialize, Clone, Copy, Debug, Default)]
pub struct SeqSummary {
    pub unique: u64,
    pub dup: u64,
    pub min: Option<u64>,
    pub max: Option<u64>,
    /// Sequence numbers missing between the smallest and largest seen.
    pub gaps_in_span: u64,
    /// Expected sequence numbers never seen (only when the expected range is known).
    pub lost: Option<u64>,
    pub out_of_range: u64,
    pub malformed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::tests::lines;

    #[test]
    fn counts_lines_and_seqs() {
        assert_eq!(count_lines(b""), 0);
        assert_eq!(count_lines(b"a\nb\n"), 2);
        assert_eq!(count_lines(b"a\nb"), 2);
        let mut seqs = Vec::new();
        let body = b"m,seq=9 f=1,seq=3i 1\nm f=1i,seq=4u\nm myseq=7i\nm seq=5i\nm seq=x\nm seq=99999999999999999999i\n";
        // `seq=9 ` (a tag), `seq=x` and an overflowing value are not counted.
        assert_eq!(scan_seqs(body, &mut seqs), 3);
        assert_eq!(seqs, vec![3, 4, 5]);

        let data = lines(100, 2000);
        seqs.clear();
        assert_eq!(scan_seqs(&data, &mut seqs), 0);
        assert_eq!(seqs, (100..2100).collect::<Vec<_>>());
    }

    #[test]
    fn seqset_counts_lost_and_dup() {
        let mut set = SeqSet::default();
        for s in (5..200).filter(|s| s % 7 != 0) {
            set.insert(s);
        }
        set.insert(8);
        set.insert(8);
        set.insert(MAX_SEQ);
        let sum = set.summary(Some((0, 300)));
        assert_eq!(sum.dup, 2);
        assert_eq!(sum.out_of_range, 1);
        let expected_unique = (5..200).filter(|s| s % 7 != 0).count() as u64;
        assert_eq!(sum.unique, expected_unique);
        assert_eq!(sum.lost, Some(300 - expected_unique));
        assert_eq!(sum.gaps_in_span, 195 - expected_unique);
        assert_eq!(set.count_range(6, 7), 1);
        assert_eq!(set.count_range(7, 8), 0);
        assert_eq!(
            set.count_range(63, 129),
            66 - (63..=126).step_by(7).count() as u64
        );
    }
}
