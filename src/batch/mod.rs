//! Pure batching: chunks of checked lines in, sealed batches out, plus the gzip step.
//!
//! [`Builder`] keeps one open batch per destination (bucket, precision) and seals it when it
//! reaches `max_lines` or `max_bytes` (uncompressed), or when `flush_interval` has passed since
//! its first line. It never looks at a clock: callers pass `now`.
//!
//! Invariants (property-tested below): the concatenation of all sealed bodies for a destination
//! equals the concatenation of its chunks; no sealed batch is empty; no batch exceeds either
//! limit unless it holds a single line that alone exceeds `max_bytes` (config validation keeps
//! `max_line_bytes` below `batch_max_bytes`, so that cannot happen in the daemon).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::line::Precision;

/// Where a batch goes: one bucket at one precision.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dest {
    pub bucket: Arc<str>,
    pub precision: Precision,
}

impl Dest {
    pub fn new(bucket: &str, precision: Precision) -> Self {
        Dest {
            bucket: Arc::from(bucket),
            precision,
        }
    }
}

/// Acknowledgement token of a tail input: once the lines of the chunk carrying it are delivered
/// (or durably spooled), the file `file` may be checkpointed at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub input: u32,
    pub file: u64,
    pub offset: u64,
}

/// Routes acknowledgements of delivered batches back to the inputs that asked for them
/// (by `Ack::input`). Inputs that need acks register a handler before the pipeline starts.
#[derive(Default)]
pub struct AckRouter {
    routes: std::sync::RwLock<HashMap<u32, AckHandler>>,
}

type AckHandler = Box<dyn Fn(Ack) + Send + Sync>;

impl AckRouter {
    pub fn register(&self, input: u32, handler: impl Fn(Ack) + Send + Sync + 'static) {
        self.routes
            .write()
            .unwrap()
            .insert(input, Box::new(handler));
    }

    /// Called once a batch's lines are delivered, dead-lettered or durably stored.
    pub fn ack(&self, acks: &[Ack]) {
        if acks.is_empty() {
            return;
        }
        let routes = self.routes.read().unwrap();
        for a in acks {
            if let Some(h) = routes.get(&a.input) {
                h(*a);
            }
        }
    }
}

/// One channel message: many complete, checked, `\n`-terminated lines for one destination.
#[derive(Debug)]
pub struct Chunk {
    pub dest: Dest,
    pub data: Vec<u8>,
    pub lines: u32,
    pub ack: Option<Ack>,
}

/// A sealed, not yet encoded batch.
#[derive(Debug)]
pub struct RawBatch {
    pub dest: Dest,
    pub data: Vec<u8>,
    pub lines: u32,
    pub acks: Vec<Ack>,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_lines: usize,
    pub max_bytes: usize,
    pub flush_interval: Duration,
}

struct Open {
    data: Vec<u8>,
    lines: u32,
    first_at: Instant,
    acks: Vec<Ack>,
}

/// The open batches, one per destination.
pub struct Builder {
    limits: Limits,
    open: HashMap<Dest, Open>,
}

impl Builder {
    pub fn new(limits: Limits) -> Self {
        Builder {
            limits,
            open: HashMap::new(),
        }
    }

    /// Adds a chunk; batches that reach a size limit are appended to `sealed`.
    pub fn push(&mut self, chunk: Chunk, now: Instant, sealed: &mut Vec<RawBatch>) {
        if chunk.lines == 0 {
            return;
        }
        let Chunk {
            dest,
            data,
            mut lines,
            ack,
        } = chunk;
        let lim = self.limits;
        let mut rest: &[u8] = &data;
        while !rest.is_empty() {
            let open = self.open.entry(dest.clone()).or_insert_with(|| Open {
                data: Vec::with_capacity(lim.max_bytes.min(rest.len().max(64 << 10))),
                lines: 0,
                first_at: now,
                acks: Vec::new(),
            });
            let room_lines = lim.max_lines - open.lines as usize;
            let room_bytes = lim.max_bytes.saturating_sub(open.data.len());
            // A chunk with an ack is never split when it fits a batch of its own: its ack
            // must not fire while a first part could still be undelivered in another batch
            // (batches complete out of order).
            let fits_alone = lines as usize <= lim.max_lines && rest.len() <= lim.max_bytes;
            let fits_here = lines as usize <= room_lines && rest.len() <= room_bytes;
            if ack.is_some() && open.lines > 0 && fits_alone && !fits_here {
                let o = self.open.remove(&dest).expect("open batch exists");
                sealed.push(seal(dest.clone(), o));
                continue;
            }
            let (take_bytes, take_lines) =
                if lines as usize <= room_lines && rest.len() <= room_bytes {
                    (rest.len(), lines)
                } else {
                    fitting_prefix(rest, lines, room_lines, room_bytes)
                };
            let (take_bytes, take_lines) = if take_lines == 0 && open.lines == 0 {
                // A single line larger than max_bytes: it travels alone rather than being lost.
                let (end, _) = fitting_prefix(rest, lines, 1, usize::MAX);
                (end, 1)
            } else {
                (take_bytes, take_lines)
            };
            open.data.extend_from_slice(&rest[..take_bytes]);
            open.lines += take_lines;
            rest = &rest[take_bytes..];
            lines -= take_lines;
            if rest.is_empty() {
                if let Some(a) = ack {
                    open.acks.push(a);
                }
            }
            let full = open.lines as usize >= lim.max_lines
                || open.data.len() >= lim.max_bytes
                || !rest.is_empty();
            if full {
                let o = self.open.remove(&dest).expect("open batch exists");
                sealed.push(seal(dest.clone(), o));
            }
        }
    }

    /// Seals every batch whose flush interval has passed.
    pub fn poll(&mut self, now: Instant, sealed: &mut Vec<RawBatch>) {
        let due: Vec<Dest> = self
            .open
            .iter()
            .filter(|(_, o)| {
                now.saturating_duration_since(o.first_at) >= self.limits.flush_interval
            })
            .map(|(d, _)| d.clone())
            .collect();
        for d in due {
            let o = self.open.remove(&d).expect("due batch exists");
            sealed.push(seal(d, o));
        }
    }

    /// When the next open batch falls due, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open
            .values()
            .map(|o| crate::clock::after(o.first_at, self.limits.flush_interval))
            .min()
    }

    /// Seals everything (shutdown, end of input).
    pub fn flush_all(&mut self, sealed: &mut Vec<RawBatch>) {
        for (d, o) in self.open.drain() {
            sealed.push(seal(d, o));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

fn seal(dest: Dest, o: Open) -> RawBatch {
    debug_assert!(o.lines > 0 && !o.data.is_empty());
    RawBatch {
        dest,
        data: o.data,
        lines: o.lines,
        acks: o.acks,
    }
}

/// The longest prefix of whole lines of `data` holding at most `max_lines` lines and
/// `max_bytes` bytes: (bytes, lines). `lines` is how many lines `data` holds; when that differs
/// from its count of `\n` bytes, some line carries a newline inside a quoted string value, and
/// line ends are found with the framer (rare, and only when a chunk must be split).
fn fitting_prefix(data: &[u8], lines: u32, max_lines: usize, max_bytes: usize) -> (usize, u32) {
    let mut end = 0;
    let mut taken = 0u32;
    let mut take = |line_end: usize| {
        if taken as usize >= max_lines || line_end > max_bytes {
            return false;
        }
        end = line_end;
        taken += 1;
        true
    };
    if memchr::memchr_iter(b'\n', data).count() == lines as usize {
        for i in memchr::memchr_iter(b'\n', data) {
            if !take(i + 1) {
                break;
            }
        }
    } else {
        let mut framer = crate::line::Framer::new(usize::MAX / 4);
        let base = data.as_ptr() as usize;
        let mut ends = Vec::new();
        framer.feed(data, |l| {
            if let Ok(l) = l {
                ends.push(l.as_ptr() as usize - base + l.len() + 1);
            }
        });
        for e in ends {
            if !take(e) {
                break;
            }
        }
    }
    (end, taken)
}

/// How a body is encoded on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

/// A sealed, encoded batch ready to send. `body` is cheap to clone for retries.
#[derive(Clone, Debug)]
pub struct Batch {
    pub dest: Dest,
    pub body: Bytes,
    pub encoding: Encoding,
    pub lines: u32,
    /// Uncompressed size.
    pub raw_len: usize,
    pub acks: Vec<Ack>,
}

/// Compresses sealed batches. One per thread: it owns libdeflate's compressor state and a
/// scratch buffer, so the worst-case output size is not allocated (and page-faulted) per batch.
pub struct Encoder {
    compressor: Option<libdeflater::Compressor>,
    scratch: Vec<u8>,
}

impl Encoder {
    /// `level` 0 means identity (no compression); 1..=12 are libdeflate's gzip levels.
    pub fn new(level: u32) -> Self {
        let compressor = (level > 0).then(|| {
            let lvl = libdeflater::CompressionLvl::new(level as i32).unwrap_or_default();
            libdeflater::Compressor::new(lvl)
        });
        Encoder {
            compressor,
            scratch: Vec::new(),
        }
    }

    /// Encodes the data of `raw` (the lines are not changed).
    pub fn encode(&mut self, raw: RawBatch) -> Batch {
        let raw_len = raw.data.len();
        let (body, encoding) = match &mut self.compressor {
            None => (Bytes::from(raw.data), Encoding::Identity),
            Some(c) => (
                Bytes::from(gzip(c, &raw.data, &mut self.scratch)),
                Encoding::Gzip,
            ),
        };
        Batch {
            dest: raw.dest,
            body,
            encoding,
            lines: raw.lines,
            raw_len,
            acks: raw.acks,
        }
    }
}

fn gzip(c: &mut libdeflater::Compressor, data: &[u8], scratch: &mut Vec<u8>) -> Vec<u8> {
    scratch.resize(c.gzip_compress_bound(data.len()), 0);
    let n = c
        .gzip_compress(data, scratch)
        .expect("output buffer sized by gzip_compress_bound");
    scratch[..n].to_vec()
}

/// Decodes a batch body back into its lines (used when a batch must be split).
pub fn decode(batch: &Batch) -> std::io::Result<Vec<u8>> {
    match batch.encoding {
        Encoding::Identity => Ok(batch.body.to_vec()),
        Encoding::Gzip => {
            let mut out = vec![0u8; batch.raw_len];
            let n = libdeflater::Decompressor::new()
                .gzip_decompress(&batch.body, &mut out)
                .map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e:?}"))
                })?;
            out.truncate(n);
            Ok(out)
        }
    }
}

/// Some whole lines and their count.
pub type Lines<'a> = (&'a [u8], u32);

/// Splits the lines of `data` into two halves by line count (both non-empty when `lines >= 2`).
pub fn split_lines(data: &[u8], lines: u32) -> (Lines<'_>, Lines<'_>) {
    let half = lines / 2;
    let (at, _) = fitting_prefix(data, lines, half as usize, usize::MAX);
    ((&data[..at], half), (&data[at..], lines - half))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk(dest: &Dest, lines: &[&str]) -> Chunk {
        let mut data = Vec::new();
        for l in lines {
            data.extend_from_slice(l.as_bytes());
            data.push(b'\n');
        }
        Chunk {
            dest: dest.clone(),
            data,
            lines: lines.len() as u32,
            ack: None,
        }
    }

    fn limits(lines: usize, bytes: usize) -> Limits {
        Limits {
            max_lines: lines,
            max_bytes: bytes,
            flush_interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn seals_on_line_limit_and_splits_chunks() {
        let d = Dest::new("b", Precision::Ns);
        let mut b = Builder::new(limits(3, 1 << 20));
        let mut sealed = Vec::new();
        let now = Instant::now();
        b.push(
            chunk(&d, &["a x=1", "b x=2", "c x=3", "d x=4", "e x=5"]),
            now,
            &mut sealed,
        );
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].data, b"a x=1\nb x=2\nc x=3\n");
        assert_eq!(sealed[0].lines, 3);
        b.flush_all(&mut sealed);
        assert_eq!(sealed[1].data, b"d x=4\ne x=5\n");
        assert!(b.is_empty());
    }

    #[test]
    fn seals_on_byte_limit() {
        let d = Dest::new("b", Precision::Ns);
        let mut b = Builder::new(limits(100, 12));
        let mut sealed = Vec::new();
        b.push(
            chunk(&d, &["a x=1", "b x=2", "c x=3"]),
            Instant::now(),
            &mut sealed,
        );
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].data, b"a x=1\nb x=2\n");
    }

    #[test]
    fn flush_interval_counts_from_first_line() {
        let d = Dest::new("b", Precision::Ns);
        let mut b = Builder::new(limits(100, 1 << 20));
        let mut sealed = Vec::new();
        let t0 = Instant::now();
        b.push(chunk(&d, &["a x=1"]), t0, &mut sealed);
        b.push(
            chunk(&d, &["b x=1"]),
            t0 + Duration::from_millis(900),
            &mut sealed,
        );
        assert_eq!(b.next_deadline(), Some(t0 + Duration::from_secs(1)));
        b.poll(t0 + Duration::from_millis(999), &mut sealed);
        assert!(sealed.is_empty());
        b.poll(t0 + Duration::from_secs(1), &mut sealed);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].lines, 2);
        assert_eq!(b.next_deadline(), None);
        // An interval past what `Instant` can hold falls due in a century, without a panic.
        let mut b = Builder::new(Limits {
            flush_interval: Duration::MAX,
            ..limits(100, 1 << 20)
        });
        b.push(chunk(&d, &["a x=1"]), t0, &mut sealed);
        assert!(b.next_deadline().unwrap() > t0 + Duration::from_secs(50 * 365 * 86400));
    }

    #[test]
    fn destinations_are_kept_apart() {
        let d1 = Dest::new("b1", Precision::Ns);
        let d2 = Dest::new("b1", Precision::Ms);
        let mut b = Builder::new(limits(100, 1 << 20));
        let mut sealed = Vec::new();
        b.push(chunk(&d1, &["a x=1"]), Instant::now(), &mut sealed);
        b.push(chunk(&d2, &["b x=1"]), Instant::now(), &mut sealed);
        b.flush_all(&mut sealed);
        assert_eq!(sealed.len(), 2);
        for s in &sealed {
            assert_eq!(s.lines, 1);
        }
    }

    #[test]
    fn ack_rides_with_the_chunks_last_line() {
        let d = Dest::new("b", Precision::Ns);
        let mut b = Builder::new(limits(2, 1 << 20));
        let mut sealed = Vec::new();
        let mut c = chunk(&d, &["a x=1", "b x=1", "c x=1"]);
        c.ack = Some(Ack {
            input: 0,
            file: 1,
            offset: 42,
        });
        b.push(c, Instant::now(), &mut sealed);
        b.flush_all(&mut sealed);
        assert!(sealed[0].acks.is_empty());
        assert_eq!(
            sealed[1].acks,
            vec![Ack {
                input: 0,
                file: 1,
                offset: 42
            }]
        );
    }

    #[test]
    fn a_chunk_with_an_ack_is_not_split_when_it_fits_a_batch_alone() {
        let d = Dest::new("b", Precision::Ns);
        let mut b = Builder::new(limits(3, 1 << 20));
        let mut sealed = Vec::new();
        let now = Instant::now();
        b.push(chunk(&d, &["a x=1", "b x=1"]), now, &mut sealed);
        let mut c = chunk(&d, &["c x=1", "d x=1"]);
        let ack = Ack {
            input: 0,
            file: 1,
            offset: 7,
        };
        c.ack = Some(ack);
        b.push(c, now, &mut sealed);
        b.flush_all(&mut sealed);
        assert_eq!(sealed.len(), 2);
        assert_eq!(sealed[0].data, b"a x=1\nb x=1\n");
        assert!(sealed[0].acks.is_empty());
        assert_eq!(sealed[1].data, b"c x=1\nd x=1\n");
        assert_eq!(sealed[1].acks, vec![ack]);
    }

    #[test]
    fn gzip_round_trip_and_identity() {
        let d = Dest::new("b", Precision::Ns);
        let raw = || RawBatch {
            dest: d.clone(),
            data: b"m f=1\nm f=2\n".to_vec(),
            lines: 2,
            acks: vec![],
        };
        let g = Encoder::new(1).encode(raw());
        assert_eq!(g.encoding, Encoding::Gzip);
        assert_eq!(&g.body[..2], &[0x1f, 0x8b]);
        assert_eq!(decode(&g).unwrap(), b"m f=1\nm f=2\n");
        let i = Encoder::new(0).encode(raw());
        assert_eq!(i.encoding, Encoding::Identity);
        assert_eq!(&i.body[..], b"m f=1\nm f=2\n");
    }

    #[test]
    fn a_newline_inside_a_string_value_never_splits_its_line() {
        let d = Dest::new("b", Precision::Ns);
        let mut b = Builder::new(limits(2, 1 << 20));
        let mut sealed = Vec::new();
        let data = b"a f=1\nm s=\"x\ny\" 1\nc f=3\n".to_vec();
        b.push(
            Chunk {
                dest: d,
                data,
                lines: 3,
                ack: None,
            },
            Instant::now(),
            &mut sealed,
        );
        b.flush_all(&mut sealed);
        assert_eq!(sealed[0].data, b"a f=1\nm s=\"x\ny\" 1\n");
        assert_eq!(sealed[0].lines, 2);
        assert_eq!(sealed[1].data, b"c f=3\n");
        let ((a, na), (c, nc)) = split_lines(b"m s=\"x\ny\" 1\nc f=3\n", 2);
        assert_eq!(
            (a, na, c, nc),
            (&b"m s=\"x\ny\" 1\n"[..], 1, &b"c f=3\n"[..], 1)
        );
    }

    #[test]
    fn split_lines_halves() {
        let ((a, na), (b, nb)) = split_lines(b"1\n2\n3\n", 3);
        assert_eq!((a, na, b, nb), (&b"1\n"[..], 1, &b"2\n3\n"[..], 2));
    }

    proptest! {
        #[test]
        fn batches_preserve_lines_and_respect_limits(
            chunks in proptest::collection::vec(
                (0u8..3, proptest::collection::vec("[a-z]{1,20} f=[0-9]{1,5}", 1..30), 0u64..3000),
                1..40),
            max_lines in 1usize..50,
            max_bytes in 40usize..2000,
        ) {
            let dests = [Dest::new("a", Precision::Ns), Dest::new("b", Precision::Ns), Dest::new("a", Precision::S)];
            let mut b = Builder::new(limits(max_lines, max_bytes));
            let mut sealed = Vec::new();
            let mut expected: HashMap<Dest, Vec<u8>> = HashMap::new();
            let t0 = Instant::now();
            let mut now = t0;
            for (d, lines, dt) in &chunks {
                now += Duration::from_millis(*dt);
                let dest = &dests[*d as usize];
                let refs: Vec<&str> = lines.iter().map(|s| s.as_str()).collect();
                let c = chunk(dest, &refs);
                expected.entry(dest.clone()).or_default().extend_from_slice(&c.data);
                b.poll(now, &mut sealed);
                b.push(c, now, &mut sealed);
            }
            b.flush_all(&mut sealed);
            let mut got: HashMap<Dest, Vec<u8>> = HashMap::new();
            for s in &sealed {
                prop_assert!(s.lines > 0 && !s.data.is_empty(), "empty batch");
                prop_assert!(s.lines as usize <= max_lines);
                prop_assert!(s.data.len() <= max_bytes);
                prop_assert_eq!(s.data.iter().filter(|&&c| c == b'\n').count(), s.lines as usize);
                got.entry(s.dest.clone()).or_default().extend_from_slice(&s.data);
            }
            prop_assert_eq!(got, expected);
        }
    }
}
