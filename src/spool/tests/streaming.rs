//! The streaming scan (through a fixed window and short reads) against `scan_segment` on the
//! whole buffer.

use super::*;

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
