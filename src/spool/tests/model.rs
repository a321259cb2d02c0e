//! A model-based property test: random appends, hand-outs, acks, syncs and crashes (some
//! damaging the newest segment) checked against a model of what must come back.

use super::*;

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
