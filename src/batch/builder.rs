//! [`Builder`]: one open batch per destination (bucket, precision), sealed when it reaches
//! `max_lines` or `max_bytes` (uncompressed), or when `flush_interval` has passed since its first
//! line. It never looks at a clock: callers pass `now`.
//!
//! Invariants (property-tested below): the concatenation of all sealed bodies for a destination
//! equals the concatenation of its chunks; no sealed batch is empty; no batch exceeds either
//! limit unless it holds a single line that alone exceeds `max_bytes` (config validation keeps
//! `max_line_bytes` below `batch_max_bytes`, so that cannot happen in the daemon).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::lines::fitting_prefix;
use super::{Ack, Chunk, Dest, RawBatch};

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
    /// Buffers of batches already compressed, kept to start new batches in (see
    /// [`Builder::recycle`]).
    spare: Vec<Vec<u8>>,
}

/// Most buffers [`Builder::recycle`] keeps.
const SPARE_MAX: usize = 8;

impl Builder {
    pub fn new(limits: Limits) -> Self {
        Builder {
            limits,
            open: HashMap::new(),
            spare: Vec::new(),
        }
    }

    /// Takes back the buffer of a batch whose bytes are no longer needed (compressed and
    /// handed on), to start a later batch in: memory the process already has, instead of
    /// fresh pages the kernel must fault in and zero for every batch. At most [`SPARE_MAX`]
    /// are kept, and none larger than `max_bytes`, so idle memory stays bounded.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < SPARE_MAX
            && buf.capacity() >= 64 << 10
            && buf.capacity() <= self.limits.max_bytes.max(64 << 10)
        {
            buf.clear();
            self.spare.push(buf);
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
            let spare = &mut self.spare;
            let open = self.open.entry(dest.clone()).or_insert_with(|| Open {
                data: {
                    let want = expected_batch_bytes(&lim, rest.len(), lines);
                    match spare.pop() {
                        Some(mut buf) => {
                            buf.reserve(want);
                            buf
                        }
                        None => Vec::with_capacity(want),
                    }
                },
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

/// The room a new batch starts with: what `max_lines` lines of the first chunk's average
/// length take, at least 64 KiB and at most `max_bytes`, so that a batch is not grown
/// (and copied) several times while it fills. Only the bytes written are touched, so a
/// batch sealed early by the flush interval costs no more memory than its lines.
fn expected_batch_bytes(lim: &Limits, chunk_bytes: usize, chunk_lines: u32) -> usize {
    let per_line = chunk_bytes.div_ceil(chunk_lines.max(1) as usize);
    let want = per_line.saturating_mul(lim.max_lines.saturating_add(1));
    want.max(64 << 10).min(lim.max_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::split_lines;
    use crate::line::Precision;
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
    fn a_new_batch_has_room_for_its_lines_and_reuses_recycled_buffers() {
        // 5,000 lines of ~75 bytes: room for all of them at once, within max_bytes.
        let lim = limits(5000, 4 << 20);
        let room = expected_batch_bytes(&lim, 75 * 100, 100);
        assert!((375_000..=400_000).contains(&room), "{room}");
        assert_eq!(
            expected_batch_bytes(&limits(5000, 100 << 10), 7500, 100),
            100 << 10
        );
        assert_eq!(expected_batch_bytes(&limits(10, 4 << 20), 20, 2), 64 << 10);
        assert_eq!(
            expected_batch_bytes(&limits(usize::MAX, 4 << 20), 20, 0),
            4 << 20
        );

        let d = Dest::new("b", Precision::Ns);
        let mut b = Builder::new(limits(2, 1 << 20));
        let mut sealed = Vec::new();
        b.push(chunk(&d, &["m v=1", "m v=2"]), Instant::now(), &mut sealed);
        let first = sealed.pop().unwrap();
        let ptr = first.data.as_ptr();
        b.recycle(first.data);
        b.push(chunk(&d, &["m v=3", "m v=4"]), Instant::now(), &mut sealed);
        let second = sealed.pop().unwrap();
        assert_eq!(second.data.as_ptr(), ptr, "the recycled buffer was used");
        assert_eq!(second.data, b"m v=3\nm v=4\n", "and started empty");

        // Bounded: at most SPARE_MAX kept, none too small or larger than max_bytes.
        for _ in 0..SPARE_MAX + 5 {
            b.recycle(Vec::with_capacity(64 << 10));
        }
        b.recycle(Vec::with_capacity(16));
        b.recycle(Vec::with_capacity(4 << 20));
        assert_eq!(b.spare.len(), SPARE_MAX);
        assert!(b.spare.iter().all(|v| v.capacity() == 64 << 10));
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
