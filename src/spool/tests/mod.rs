//! Spool tests: framing, scanning, policies, recovery, and a model-based property test with
//! crashes and damage.

use super::cursor::CURSOR;
use super::record::{record_crc, MAX_PAYLOAD, META_MAX as META_FIXED, VERSION};
use super::*;
use crate::batch::{Dest, Encoding};
use crate::line::Precision;
use bytes::Bytes;
use proptest::prelude::*;
use std::io::Read;

fn settings(max_size: u64, when_full: WhenFull, fsync: FsyncPolicy) -> SpoolSettings {
    SpoolSettings {
        max_size,
        when_full,
        fsync,
        fsync_interval: Duration::from_millis(500),
    }
}

fn batch(tag: u32, body_len: usize) -> Batch {
    let mut body = format!("m,t={tag} v=1i\n").into_bytes();
    body.resize(body_len.max(body.len()), b'x');
    Batch {
        dest: Dest::new(&format!("bucket{}", tag % 3), Precision::Ms),
        body: Bytes::from(body),
        encoding: if tag % 2 == 0 {
            Encoding::Gzip
        } else {
            Encoding::Identity
        },
        lines: tag % 7 + 1,
        raw_len: body_len * 3,
        acks: vec![Ack {
            input: 1,
            file: tag as u64,
            offset: 9,
        }],
    }
}

fn same(a: &Batch, b: &Batch) -> bool {
    a.dest == b.dest
        && a.body == b.body
        && a.encoding == b.encoding
        && a.lines == b.lines
        && a.raw_len == b.raw_len
}

fn open(dir: &Path, s: &SpoolSettings) -> Spool {
    Spool::open(dir, s, Arc::new(SpoolStats::default())).unwrap()
}

#[test]
fn record_round_trip() {
    let b = batch(4, 100);
    let rec = encode_record(&b, 1234, Seq::default());
    let (meta, back) = parse_record(&rec).unwrap();
    assert_eq!(meta.len, rec.len());
    assert_eq!(meta.created_at_ms, 1234);
    assert!(same(&b, &back));
    assert!(back.acks.is_empty(), "acks are not persisted");
}

#[test]
fn scan_finds_torn_tails_and_skips_damage() {
    let a = encode_record(&batch(1, 50), 1, Seq::default());
    let b = encode_record(&batch(2, 60), 2, Seq::default());
    let c = encode_record(&batch(3, 70), 3, Seq::default());
    // Torn tail.
    let mut buf = [a.clone(), b.clone()].concat();
    buf.extend_from_slice(&c[..c.len() - 5]);
    let scan = scan_segment(&buf);
    assert_eq!(scan.records.len(), 2);
    assert_eq!(scan.torn_tail, Some((a.len() + b.len()) as u64));
    assert!(scan.damaged.is_empty());
    // A flipped byte in the middle record: skipped, the rest survives.
    let mut buf = [a.clone(), b.clone(), c.clone()].concat();
    buf[a.len() + 40] ^= 0xff;
    let scan = scan_segment(&buf);
    assert_eq!(
        scan.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![0, (a.len() + b.len()) as u64]
    );
    assert_eq!(scan.damaged.len(), 1);
    assert_eq!(scan.damaged[0].1, Damage::BadChecksum);
    // Garbage between records: resynchronised.
    let buf = [a.clone(), b"garbage garbage".to_vec(), c.clone()].concat();
    let scan = scan_segment(&buf);
    assert_eq!(scan.records.len(), 2);
    assert_eq!(scan.damaged.len(), 1);
    assert_eq!(scan.torn_tail, None);
}

#[test]
fn fifo_across_reopen_with_out_of_order_acks() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(1 << 30, WhenFull::DropOldest, FsyncPolicy::Interval);
    let sp = open(dir.path(), &s);
    for i in 0..5 {
        sp.append(&batch(i, 100), || false).unwrap();
    }
    let acks = sp.sync().unwrap();
    assert_eq!(acks.len(), 5, "interval: acks released by sync");
    let got: Vec<_> = (0..3).map(|_| sp.next().unwrap()).collect();
    assert!(same(&got[0].1, &batch(0, 100)));
    // Ack 1 and 2 but not 0: the cursor may not move.
    sp.ack(got[1].0);
    sp.ack(got[2].0);
    sp.sync().unwrap();
    drop(sp);
    let sp = open(dir.path(), &s);
    let order: Vec<Batch> = std::iter::from_fn(|| sp.next().map(|(_, b)| b)).collect();
    assert_eq!(
        order.len(),
        5,
        "un-acked head keeps everything after it (at-least-once)"
    );
    for (i, b) in order.iter().enumerate() {
        assert!(same(b, &batch(i as u32, 100)));
    }
}

#[test]
fn acked_records_are_not_replayed_and_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    // Tiny segments: max_size 1 MiB -> 128 KiB segments; 40 KiB records -> 3 per segment.
    let s = settings(1 << 20, WhenFull::DropOldest, FsyncPolicy::Always);
    let sp = open(dir.path(), &s);
    for i in 0..12 {
        let (r, acks) = sp.append(&batch(i, 40 << 10), || false).unwrap();
        assert_eq!(r, Appended::Stored);
        assert_eq!(acks.len(), 1, "always: durable at once");
    }
    let segs_before = list_segments(&sp.dir).unwrap().len();
    assert!(segs_before >= 4, "{segs_before}");
    for _ in 0..9 {
        let (id, _) = sp.next().unwrap();
        sp.ack(id);
    }
    sp.sync().unwrap();
    assert!(list_segments(&sp.dir).unwrap().len() < segs_before);
    drop(sp);
    let sp = open(dir.path(), &s);
    let rest: Vec<Batch> = std::iter::from_fn(|| sp.next().map(|(_, b)| b)).collect();
    assert_eq!(rest.len(), 3);
    assert!(same(&rest[0], &batch(9, 40 << 10)));
}

#[test]
fn drop_oldest_deletes_whole_segments_and_counts_lines() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(1 << 20, WhenFull::DropOldest, FsyncPolicy::Never);
    let stats = Arc::new(SpoolStats::default());
    let sp = Spool::open(dir.path(), &s, stats.clone()).unwrap();
    let mut lines = 0u64;
    for i in 0..60 {
        sp.append(&batch(i, 40 << 10), || false).unwrap();
        lines += batch(i, 0).lines as u64;
    }
    let b = sp.backlog();
    assert!(b.bytes <= 1 << 20, "{} bytes kept", b.bytes);
    let dropped = stats.dropped_lines.load(Relaxed);
    assert!(dropped > 0);
    assert_eq!(
        dropped + b.lines,
        lines,
        "every line is either kept or counted as dropped"
    );
    // What is left is the newest, in order.
    let first = sp.next().unwrap().1;
    assert!(first.lines > 0);
}

#[test]
fn drop_newest_refuses_new_batches_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(1 << 20, WhenFull::DropNewest, FsyncPolicy::Never);
    let stats = Arc::new(SpoolStats::default());
    let sp = Spool::open(dir.path(), &s, stats.clone()).unwrap();
    let mut dropped = 0;
    for i in 0..40 {
        let (r, acks) = sp.append(&batch(i, 40 << 10), || false).unwrap();
        if r == Appended::DroppedNewest {
            dropped += batch(i, 0).lines as u64;
            // Dropped by policy: the inputs may forget the lines (checkpoints move on).
            assert_eq!(acks, batch(i, 0).acks);
        }
    }
    assert!(dropped > 0);
    assert_eq!(stats.dropped_lines.load(Relaxed), dropped);
    assert!(
        same(&sp.next().unwrap().1, &batch(0, 40 << 10)),
        "the oldest are kept"
    );
}

#[test]
fn block_waits_for_space_then_gives_up_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(1 << 20, WhenFull::Block, FsyncPolicy::Never);
    let sp = Arc::new(open(dir.path(), &s));
    let mut n = 0;
    while sp.backlog().bytes + (41 << 10) <= 1 << 20 {
        sp.append(&batch(n, 40 << 10), || false).unwrap();
        n += 1;
    }
    // Full: an append blocks until a record is delivered.
    let sp2 = sp.clone();
    let t = std::thread::spawn(move || sp2.append(&batch(999, 40 << 10), || false).unwrap().0);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!t.is_finished(), "append must block while full");
    for _ in 0..4 {
        let (id, _) = sp.next().unwrap();
        sp.ack(id);
    }
    assert_eq!(t.join().unwrap(), Appended::Stored);
    // At shutdown, a blocked append gives up (and counts the drop) instead of hanging.
    let mut last = (Appended::Stored, Vec::new());
    for i in 0..40 {
        last = sp.append(&batch(i, 40 << 10), || true).unwrap();
    }
    // Its acks are withheld: a tailed file reads the lines again after the restart.
    assert_eq!(last, (Appended::GaveUp, Vec::new()));
}

#[test]
fn recovery_never_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(1 << 30, WhenFull::DropOldest, FsyncPolicy::Always);
    let sp = open(dir.path(), &s);
    for i in 0..4 {
        sp.append(&batch(i, 100), || false).unwrap();
    }
    drop(sp);
    let spool_dir = dir.path().join("spool");
    let (_, seg) = list_segments(&spool_dir).unwrap().pop().unwrap();
    // Torn tail + a flipped byte in record 1 + an unreadable "segment" + a garbage cursor.
    let mut bytes = fs::read(&seg).unwrap();
    let rec = encode_record(&batch(0, 100), 0, Seq::default()).len();
    bytes[rec + 30] ^= 0x55;
    bytes.extend_from_slice(&encode_record(&batch(9, 100), 0, Seq::default())[..20]);
    fs::write(&seg, &bytes).unwrap();
    fs::create_dir(spool_dir.join("00000000000000ff.seg")).unwrap();
    fs::write(spool_dir.join(CURSOR), b"nonsense").unwrap();
    let stats = Arc::new(SpoolStats::default());
    let sp = Spool::open(dir.path(), &s, stats.clone()).unwrap();
    let got: Vec<Batch> = std::iter::from_fn(|| sp.next().map(|(_, b)| b)).collect();
    assert_eq!(got.len(), 3);
    assert!(
        same(&got[0], &batch(0, 100))
            && same(&got[1], &batch(2, 100))
            && same(&got[2], &batch(3, 100))
    );
    assert_eq!(stats.corrupt_records.load(Relaxed), 1);
    assert!(
        spool_dir.join("corrupt/00000000000000ff.seg").exists(),
        "moved aside"
    );
    // The torn tail was cut: appending works and is read back after the survivors.
    sp.append(&batch(5, 100), || false).unwrap();
    let (_, b) = sp.next().unwrap();
    assert!(same(&b, &batch(5, 100)));
}

#[derive(Debug, Clone)]
enum Op {
    Append(u32),
    Next,
    /// Ack the k-th handed-out record (modulo how many there are).
    Ack(usize),
    Sync,
    Crash,
    CrashTruncate(u16),
    CrashFlip(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..10_000).prop_map(Op::Append),
        3 => Just(Op::Next),
        3 => (0usize..8).prop_map(Op::Ack),
        2 => Just(Op::Sync),
        1 => Just(Op::Crash),
        1 => any::<u16>().prop_map(Op::CrashTruncate),
        1 => any::<u16>().prop_map(Op::CrashFlip),
    ]
}

/// The newest segment file, for damage injection.
fn newest_segment(dir: &Path) -> Option<PathBuf> {
    list_segments(&dir.join("spool"))
        .ok()?
        .pop()
        .map(|(_, p)| p)
}

/// The sequence number a model batch carries in its body.
fn seq_of(b: &Batch) -> u64 {
    std::str::from_utf8(&b.body[4..])
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Against a model: nothing durable and undamaged is ever lost, nothing corrupt or
    /// acknowledged-for-good is returned as data, and order is FIFO. Acknowledged records may
    /// come back after a crash only while the persisted cursor had not passed them
    /// (at-least-once).
    #[test]
    fn spool_matches_model(ops in proptest::collection::vec(op(), 1..60), always in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(8 << 20, WhenFull::DropOldest, if always { FsyncPolicy::Always } else { FsyncPolicy::Interval });
        let mut sp = open(dir.path(), &s);
        let mut next_seq = 0u64;
        // Appended and not acknowledged, oldest first: (seq, durable).
        let mut live: Vec<(u64, bool)> = Vec::new();
        // Acknowledged, but the persisted cursor may not be past them yet.
        let mut ghosts: Vec<u64> = Vec::new();
        let mut handed: Vec<(RecordId, u64)> = Vec::new();
        for op in ops {
            match op {
                Op::Append(size) => {
                    let mut b = batch(next_seq as u32, 200 + (size as usize % 5000));
                    b.lines = 1;
                    let (r, _) = sp.append(&b, || false).unwrap();
                    prop_assert_eq!(r, Appended::Stored);
                    live.push((next_seq, always));
                    next_seq += 1;
                }
                Op::Next => {
                    let expect = live.iter().map(|(q, _)| *q).find(|q| !handed.iter().any(|(_, h)| h == q));
                    match sp.next() {
                        Some((id, b)) => {
                            prop_assert_eq!(Some(seq_of(&b)), expect, "not the oldest pending record");
                            handed.push((id, seq_of(&b)));
                        }
                        None => prop_assert_eq!(expect, None, "a pending record was not returned"),
                    }
                }
                Op::Ack(k) => {
                    if !handed.is_empty() {
                        let (id, q) = handed.remove(k % handed.len());
                        sp.ack(id);
                        live.retain(|(l, _)| *l != q);
                        ghosts.push(q);
                    }
                }
                Op::Sync => {
                    sp.sync().unwrap();
                    for l in live.iter_mut() {
                        l.1 = true;
                    }
                    let head = live.first().map(|(q, _)| *q);
                    ghosts.retain(|g| head.is_some_and(|h| *g > h));
                }
                Op::Crash | Op::CrashTruncate(_) | Op::CrashFlip(_) => {
                    drop(sp); // no sync: a crash
                    // Damage the newest segment; note which records it may cost.
                    let mut lost_ok: Vec<u64> = Vec::new();
                    if let (Some(seg), Op::CrashTruncate(x) | Op::CrashFlip(x)) = (newest_segment(dir.path()), &op) {
                        let mut bytes = fs::read(&seg).unwrap();
                        if !bytes.is_empty() {
                            let at = *x as usize % bytes.len();
                            let truncate = matches!(op, Op::CrashTruncate(_));
                            for r in scan_segment(&bytes).records {
                                let (start, end) = (r.offset as usize, (r.offset + r.len as u64) as usize);
                                let hit = if truncate { end > at } else { start <= at && at < end };
                                if hit {
                                    let (_, b) = parse_record(&bytes[start..]).unwrap();
                                    lost_ok.push(seq_of(&b));
                                }
                            }
                            if truncate { bytes.truncate(at) } else { bytes[at] ^= 0x5a }
                            fs::write(&seg, &bytes).unwrap();
                        }
                    }
                    sp = open(dir.path(), &s);
                    let got: Vec<u64> = std::iter::from_fn(|| sp.next().map(|(_, b)| seq_of(&b))).collect();
                    prop_assert!(got.windows(2).all(|w| w[0] < w[1]), "not FIFO: {:?}", got);
                    for q in &got {
                        prop_assert!(live.iter().any(|(l, _)| l == q) || ghosts.contains(q), "returned {} which was acknowledged for good or never appended", q);
                    }
                    for (q, durable) in &live {
                        if *durable && !lost_ok.contains(q) {
                            prop_assert!(got.contains(q), "durable record {} lost; got {:?}", q, got);
                        }
                    }
                    // Reopen once more for a clean slate: everything that came back is pending.
                    drop(sp);
                    sp = open(dir.path(), &s);
                    live = got.iter().map(|q| (*q, true)).collect();
                    ghosts.clear();
                    handed.clear();
                }
            }
            // The spool's running counts agree with the model (every batch is one line).
            let b = sp.backlog();
            prop_assert_eq!(sp.unacked(), live.len() as u64);
            prop_assert_eq!((b.records, b.lines), (live.len() as u64, live.len() as u64));
            prop_assert_eq!(sp.has_pending(), live.len() > handed.len());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The streaming scan against `scan_segment`.

/// A reader that hands out the bytes in short reads of the given sizes, in turn; a size of 0
/// is an `Interrupted` error, which a reader may return at any time.
struct ShortReads {
    data: io::Cursor<Vec<u8>>,
    sizes: Vec<usize>,
    turn: usize,
}

impl ShortReads {
    fn new(data: Vec<u8>, sizes: Vec<usize>) -> ShortReads {
        assert!(sizes.iter().any(|s| *s > 0), "some read must make progress");
        ShortReads {
            data: io::Cursor::new(data),
            sizes,
            turn: 0,
        }
    }
}

impl Read for ShortReads {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.sizes[self.turn % self.sizes.len()];
        self.turn += 1;
        if size == 0 {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = size.min(buf.len());
        self.data.read(&mut buf[..n])
    }
}

impl io::Seek for ShortReads {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        self.data.seek(to)
    }
}

fn scan_streaming(bytes: &[u8], window: usize, sizes: Vec<usize>) -> SegmentScan {
    let mut scanner = scan::Scanner::new(
        ShortReads::new(bytes.to_vec(), sizes),
        bytes.len() as u64,
        window,
    );
    let scan = scanner.scan().unwrap();
    assert!(
        scanner.held() <= window + u16::MAX as usize,
        "held {} bytes with a {window}-byte window",
        scanner.held()
    );
    scan
}

/// Sets the checksum of an edited record so that only the edit is wrong with it.
fn reseal(rec: &mut [u8]) {
    let crc = record_crc(&rec[4..12], &rec[HEADER..]);
    rec[12..16].copy_from_slice(&crc.to_le_bytes());
}

#[derive(Debug, Clone)]
enum Piece {
    Record(u32, usize),
    Garbage(Vec<u8>),
    /// A record cut short after this many bytes (modulo its length).
    Torn(u32, usize, usize),
    /// A sane header (magic, version, flags) with this length and a wrong checksum.
    FakeHeader(u32),
    /// A record whose checksum matches but whose metadata does not (kind 0..4).
    BadMeta(u32, u8),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        6 => (any::<u32>(), 0usize..300).prop_map(|(t, n)| Piece::Record(t, n)),
        2 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Piece::Garbage),
        2 => (any::<u32>(), 0usize..300, any::<usize>()).prop_map(|(t, n, c)| Piece::Torn(t, n, c)),
        1 => prop_oneof![0u32..400, Just(MAX_PAYLOAD as u32), any::<u32>()].prop_map(Piece::FakeHeader),
        1 => (any::<u32>(), 0u8..4).prop_map(|(t, k)| Piece::BadMeta(t, k)),
    ]
}

fn render(p: &Piece) -> Vec<u8> {
    match *p {
        Piece::Record(tag, n) => encode_record(&batch(tag, n), tag as u64, Seq::default()),
        Piece::Garbage(ref g) => g.clone(),
        Piece::Torn(tag, n, cut) => {
            let mut rec = encode_record(&batch(tag, n), 7, Seq::default());
            rec.truncate(cut % rec.len());
            rec
        }
        Piece::FakeHeader(len) => {
            let mut h = MAGIC.to_vec();
            h.extend_from_slice(&[VERSION, 0, 2, 0]);
            h.extend_from_slice(&len.to_le_bytes());
            h.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
            h
        }
        Piece::BadMeta(tag, kind) => {
            let mut rec = encode_record(&batch(tag, 40), 9, Seq::default());
            let bucket_len = u16::from_le_bytes(rec[HEADER + 16..HEADER + 18].try_into().unwrap());
            match kind {
                0 => rec[HEADER + 8..HEADER + 12].fill(0),     // no lines
                1 => rec[HEADER + 16..HEADER + 18].fill(0xff), // bucket longer than the payload
                2 => rec[HEADER + META_FIXED] = 0xff,          // bucket not UTF-8
                _ => {
                    // No body: the bucket takes all of it.
                    let body = rec.len() - HEADER - META_FIXED - bucket_len as usize;
                    let all = (bucket_len as usize + body) as u16;
                    rec[HEADER + 16..HEADER + 18].copy_from_slice(&all.to_le_bytes());
                    rec[HEADER + META_FIXED..].fill(b'b');
                }
            }
            reseal(&mut rec);
            rec
        }
    }
}

#[test]
fn streaming_scan_sees_what_the_whole_buffer_scan_sees() {
    let a = encode_record(&batch(1, 50), 1, Seq::default());
    let b = encode_record(&batch(2, 60), 2, Seq::default());
    let c = encode_record(&batch(3, 70), 3, Seq::default());
    let mut flipped = [a.clone(), b.clone(), c.clone()].concat();
    flipped[a.len() + 40] ^= 0xff;
    let mut torn = [a.clone(), b.clone()].concat();
    torn.extend_from_slice(&c[..c.len() - 5]);
    let cases = [
        Vec::new(),
        b"LS".to_vec(),
        b"garbage".to_vec(),
        [a.clone(), b.clone(), c.clone()].concat(),
        flipped,
        torn,
        [a.clone(), b"garbage LSPL garbage".to_vec(), c.clone()].concat(),
    ];
    for bytes in &cases {
        let want = scan_segment(bytes);
        for window in [HEADER, 17, 64, WINDOW_FOR_TESTS] {
            assert_eq!(scan_streaming(bytes, window, vec![1, 3, 0, 7]), want);
        }
        let got = scan_segment_reader(io::Cursor::new(bytes.clone()), bytes.len() as u64).unwrap();
        assert_eq!(got, want);
    }
}

const WINDOW_FOR_TESTS: usize = 4096;

#[test]
fn a_huge_claimed_length_reads_nothing_and_allocates_nothing() {
    // A header claiming MAX_PAYLOAD at the start of a small segment, then a good record.
    let mut bytes = render(&Piece::FakeHeader(MAX_PAYLOAD as u32));
    let good = encode_record(&batch(5, 100), 5, Seq::default());
    bytes.extend_from_slice(&good);
    let want = scan_segment(&bytes);
    assert_eq!(want.damaged, vec![(0, Damage::Truncated, HEADER as u64)]);
    assert_eq!(want.records.len(), 1);
    assert_eq!(scan_streaming(&bytes, 32, vec![5]), want);
    // A claimed length that fits in the segment is checked without holding it.
    let mut bytes = render(&Piece::FakeHeader(60_000));
    bytes.resize(70_000, b'z');
    bytes.extend_from_slice(&good);
    let want = scan_segment(&bytes);
    assert_eq!(want.damaged[0].1, Damage::BadChecksum);
    assert_eq!(want.records.len(), 1);
    assert_eq!(scan_streaming(&bytes, 1024, vec![1000]), want);
}

#[test]
fn a_segment_shorter_than_its_length_is_a_read_error() {
    let bytes = encode_record(&batch(1, 50), 1, Seq::default());
    let short = bytes.len() as u64 + 10;
    assert!(scan_segment_reader(io::Cursor::new(bytes), short).is_err());
}

#[test]
fn a_directory_is_not_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    assert!(scan::scan_segment_file(dir.path()).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// The streaming scan, through short reads of random sizes and a tiny window, finds exactly
    /// what `scan_segment` finds in the whole buffer: records, damaged regions, torn tail.
    #[test]
    fn streaming_scan_matches_scan_segment(
        pieces in proptest::collection::vec(piece(), 0..12),
        flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 0..4),
        cut in proptest::option::of(any::<usize>()),
        window in HEADER..96,
        sizes in proptest::collection::vec(0usize..40, 1..8),
    ) {
        let mut bytes: Vec<u8> = pieces.iter().flat_map(render).collect();
        if !bytes.is_empty() {
            for (at, mask) in &flips {
                let i = at % bytes.len();
                bytes[i] ^= mask;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut % (bytes.len() + 1));
            }
        }
        let mut sizes = sizes;
        sizes.push(1 + window % 13);
        let want = scan_segment(&bytes);
        prop_assert_eq!(&scan_streaming(&bytes, window, sizes), &want);
        let whole = scan_segment_reader(io::Cursor::new(bytes.clone()), bytes.len() as u64).unwrap();
        prop_assert_eq!(&whole, &want);
    }
}
