//! [`LineGen`]: a fast generator of realistic line protocol (~76 B/line, well over 10 M lines/s
//! on one core), for the load tool's inputs and for tests that want many distinct lines.
//!
//! Every line carries a unique, consecutive `seq=<n>i` field, so a receiver can count lost and
//! duplicated lines ([`crate::seq`]); 1 line in 16 has no timestamp, so the daemon's stamping
//! path runs too. [`LineGen::fill_lines`] appends any number of lines, e.g. ten per datagram.

use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;

/// Average generated line length, used to size buffers.
pub const APPROX_LINE_BYTES: u64 = 76;

/// What to generate: the `gen` options of every load-tool mode.
#[derive(Args, Clone, Copy, Debug)]
pub struct GenOpts {
    /// First sequence number.
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// Number of distinct hosts, i.e. series per measurement (at most 1,000,000).
    #[arg(long, default_value_t = 1000)]
    pub tag_cardinality: u64,
    /// Timestamp of sequence number 0, in ns since the epoch (default: now).
    #[arg(long)]
    pub timestamp_base: Option<u64>,
    /// Seed for the value generator.
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
}

impl GenOpts {
    /// These options with the timestamp base fixed (to now, if unset), so that every generator
    /// made from them, e.g. one per repeat of a run, produces the same bytes.
    pub fn fixed(mut self) -> Self {
        self.timestamp_base.get_or_insert_with(now_whole_second_ns);
        self
    }

    /// Options that never change, for tests: 100 hosts, a fixed timestamp base (so line `seq`
    /// is stamped `1_700_000_000_000_000_000 + seq * 1000`), seed 1.
    pub fn fixed_example(start: u64) -> Self {
        GenOpts {
            start,
            tag_cardinality: 100,
            timestamp_base: Some(1_700_000_000_000_000_000),
            seed: 1,
        }
    }
}

const REGIONS: [&str; 6] = [
    "eu-west-1",
    "eu-central-1",
    "us-east-1",
    "us-west-2",
    "ap-south-1",
    "sa-east-1",
];
const DISK_PATHS: [&str; 4] = ["/", "/data", "/var", "/home"];

/// Most distinct hosts `--tag-cardinality` accepts; each costs 256 bytes of prefixes.
const MAX_CARDINALITY: u64 = 1_000_000;
/// Slot size of a precomputed line prefix; copied whole, then trimmed (see `put_padded`).
const PREFIX_SLOT: usize = 64;

/// Generates line protocol with unique, consecutive sequence numbers.
///
/// Four shapes (cpu, mem, disk, net) averaging ~75 bytes. Line `seq` is stamped
/// `timestamp_base + seq * 1000` ns, except when `seq % 16 == 15`, which has no timestamp.
///
/// Speed comes from doing almost nothing per line: everything up to the first field value is
/// precomputed per (shape, host); `seq` and the timestamp are ASCII counters incremented in
/// place; and every copy is a fixed-size one the compiler inlines, trimmed afterwards.
pub struct LineGen {
    next_seq: u64,
    cardinality: u64,
    /// `4 * cardinality` prefixes such as `cpu,host=host0042,region=eu-west-1 user=`, indexed by
    /// `shape * cardinality + host`.
    prefixes: Vec<([u8; PREFIX_SLOT], u8)>,
    /// `,seq=<n>i`
    seq_text: AsciiCounter,
    /// ` <timestamp>\n`
    ts_text: AsciiCounter,
    rng: u64,
}

/// A decimal counter kept as text between a fixed head and tail, e.g. `,seq=` `41` `i`.
struct AsciiCounter {
    text: [u8; 32],
    len: usize,
    head: usize,
    tail: usize,
}

impl AsciiCounter {
    fn new(head: &[u8], value: u64, tail: &[u8]) -> Self {
        let digits = value.to_string();
        let parts = [head, digits.as_bytes(), tail];
        let len = parts.iter().map(|p| p.len()).sum();
        let mut text = [0u8; 32];
        text[..len].copy_from_slice(&parts.concat());
        AsciiCounter {
            text,
            len,
            head: head.len(),
            tail: tail.len(),
        }
    }

    fn increment(&mut self) {
        let mut i = self.len - self.tail;
        while i > self.head {
            i -= 1;
            if self.text[i] != b'9' {
                self.text[i] += 1;
                return;
            }
            self.text[i] = b'0';
        }
        // All nines: one more digit.
        assert!(self.len < self.text.len(), "counter overflow");
        self.text.copy_within(self.head..self.len, self.head + 1);
        self.text[self.head] = b'1';
        self.len += 1;
    }

    fn push(&self, buf: &mut Vec<u8>) {
        put_padded(buf, &self.text, self.len);
    }
}

/// The current time in ns, rounded down to the second.
pub fn now_whole_second_ns() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.as_secs() * 1_000_000_000
}

/// Appends `src[..len]` by copying all of `src` and trimming: a fixed-size copy is a few vector
/// moves, where a variable-length one is a `memmove` call.
#[inline(always)]
fn put_padded<const N: usize>(buf: &mut Vec<u8>, src: &[u8; N], len: usize) {
    let end = buf.len() + len;
    buf.extend_from_slice(src);
    buf.truncate(end);
}

/// Appends `v` in decimal, writing the digits in place.
#[inline(always)]
fn put_u64(buf: &mut Vec<u8>, mut v: u64) {
    let digits = v.checked_ilog10().unwrap_or(0) as usize + 1;
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 20]);
    let out = &mut buf[start..start + digits];
    for d in out.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    buf.truncate(start + digits);
}

/// Appends `v / 10^frac_digits` with exactly `frac_digits` (1 or 2) decimals, e.g. `12.5`.
#[inline(always)]
fn put_decimal(buf: &mut Vec<u8>, v: u64, frac_digits: u32) {
    let scale = 10u64.pow(frac_digits);
    put_u64(buf, v / scale);
    let frac = v % scale;
    if frac_digits == 2 {
        buf.extend_from_slice(&[b'.', b'0' + (frac / 10) as u8, b'0' + (frac % 10) as u8]);
    } else {
        buf.extend_from_slice(&[b'.', b'0' + frac as u8]);
    }
}

impl LineGen {
    pub fn new(opts: &GenOpts) -> Self {
        let cardinality = opts.tag_cardinality.clamp(1, MAX_CARDINALITY);
        let digits = ((cardinality - 1).checked_ilog10().unwrap_or(0) as usize + 1).max(4);
        let mut prefixes = vec![([0u8; PREFIX_SLOT], 0u8); 4 * cardinality as usize];
        for host in 0..cardinality as usize {
            let name = format!("host{host:0digits$}");
            let region = REGIONS[host % REGIONS.len()];
            let path = DISK_PATHS[(host / REGIONS.len()) % DISK_PATHS.len()];
            let shapes = [
                format!("cpu,host={name},region={region} user="),
                format!("mem,host={name} used_percent="),
                format!("disk,host={name},path={path} free="),
                format!("net,host={name} rx="),
            ];
            for (shape, text) in shapes.iter().enumerate() {
                let slot = &mut prefixes[shape * cardinality as usize + host];
                slot.0[..text.len()].copy_from_slice(text.as_bytes());
                slot.1 = text.len() as u8;
            }
        }
        let ts_base = opts.timestamp_base.unwrap_or_else(now_whole_second_ns);
        // The timestamp counter counts microseconds; the nanosecond digits are its fixed tail.
        let ts_us = ts_base / 1000 + opts.start;
        let ns_tail = format!("{:03}\n", ts_base % 1000);
        LineGen {
            next_seq: opts.start,
            cardinality,
            prefixes,
            seq_text: AsciiCounter::new(b",seq=", opts.start, b"i"),
            ts_text: AsciiCounter::new(b" ", ts_us, ns_tail.as_bytes()),
            rng: opts.seed ^ 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// splitmix64: cheap, and good enough for picking hosts and values.
    fn next_rand(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Appends one newline-terminated line.
    fn push_line(&mut self, buf: &mut Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let r = self.next_rand();
        let host = ((r >> 32) * self.cardinality) >> 32;
        let shape = r & 3;
        let (prefix, len) = &self.prefixes[(shape * self.cardinality + host) as usize];
        put_padded(buf, prefix, usize::from(*len));
        match shape {
            0 => {
                put_decimal(buf, (r >> 8) & 0x3ff, 1);
                buf.extend_from_slice(b",system=");
                put_decimal(buf, (r >> 18) & 0xfff, 2);
            }
            1 => put_decimal(buf, ((r >> 8) & 0x3ff) % 1000, 1),
            2 => {
                put_u64(buf, (r >> 8) & 0xf_ffff_ffff);
                buf.push(b'i');
            }
            _ => {
                put_u64(buf, (r >> 8) & 0xf_ffff);
                buf.extend_from_slice(b"i,tx=");
                put_u64(buf, (r >> 28) & 0xffff);
                buf.push(b'i');
            }
        }
        self.seq_text.push(buf);
        self.seq_text.increment();
        if seq & 15 == 15 {
            buf.push(b'\n');
        } else {
            self.ts_text.push(buf);
        }
        self.ts_text.increment();
    }

    /// Appends `n` lines.
    pub fn fill_lines(&mut self, buf: &mut Vec<u8>, n: u64) {
        // Room for the overcopies of the last line too.
        buf.reserve((n * (APPROX_LINE_BYTES + 8)) as usize + 2 * PREFIX_SLOT);
        for _ in 0..n {
            self.push_line(buf);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `n` generated lines from `start`, with [`GenOpts::fixed_example`].
    pub(crate) fn lines(start: u64, n: u64) -> Vec<u8> {
        let mut v = Vec::new();
        LineGen::new(&GenOpts::fixed_example(start)).fill_lines(&mut v, n);
        v
    }

    #[test]
    fn generator_lines_are_well_formed() {
        // Starts just below a power of ten, so the ASCII counters gain a digit on the way.
        let start = 9_990;
        let data = lines(start, 1600);
        let text = std::str::from_utf8(&data).unwrap();
        let all: Vec<&str> = text.lines().collect();
        assert_eq!(all.len(), 1600);
        let mut without_ts = 0;
        for (i, line) in all.iter().enumerate() {
            let seq = start + i as u64;
            let parts: Vec<&str> = line.split(' ').collect();
            assert!(parts.len() == 2 || parts.len() == 3, "{line}");
            assert!(parts[0].contains(",host=host00"), "{line}");
            let field = format!(",seq={seq}i");
            assert!(parts[1].ends_with(&field), "{line} lacks {field}");
            if parts.len() == 2 {
                assert_eq!(seq % 16, 15, "{line}");
                without_ts += 1;
            } else {
                let ts: u64 = parts[2].parse().unwrap();
                assert_eq!(ts, 1_700_000_000_000_000_000 + seq * 1000, "{line}");
            }
        }
        assert_eq!(without_ts, 100);
        let avg = data.len() as f64 / 1600.0;
        assert!((65.0..85.0).contains(&avg), "average line length {avg}");
    }
}
