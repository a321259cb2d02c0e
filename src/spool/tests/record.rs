//! Framing: a record's round trip, and what the whole-buffer scan finds in damaged bytes.

use super::*;

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
