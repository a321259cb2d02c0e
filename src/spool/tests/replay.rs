//! Replay: FIFO order across a reopen with out-of-order acks, acknowledged records not
//! replayed and their segments deleted, and replay of what survives damage at recovery.

use super::*;

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

#[test]
fn needs_sync_says_when_a_sync_has_work_and_changes_are_signalled() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    // Whether a notification is waiting (a notified() future completes at once).
    fn signalled(sp: &Spool) -> bool {
        let mut f = std::pin::pin!(sp.sync_wanted().notified());
        matches!(
            f.as_mut().poll(&mut Context::from_waker(Waker::noop())),
            Poll::Ready(())
        )
    }
    let dir = tempfile::tempdir().unwrap();
    let s = settings(1 << 30, WhenFull::DropOldest, FsyncPolicy::Interval);
    let sp = open(dir.path(), &s);
    // A new spool has no cursor on disk yet.
    assert!(sp.needs_sync());
    sp.sync().unwrap();
    assert!(!sp.needs_sync(), "synced and unchanged: nothing to do");
    assert!(!signalled(&sp));

    let (_, acks) = sp.append(&batch(1, 100), || false).unwrap();
    assert!(
        acks.is_empty(),
        "interval: durable only after the next sync"
    );
    assert!(signalled(&sp), "an append wakes the sync task");
    assert!(sp.needs_sync());
    sp.append(&batch(2, 100), || false).unwrap();
    assert_eq!(sp.sync().unwrap().len(), 2);
    assert!(!sp.needs_sync());

    // The first of two records delivered: the cursor moves within the segment, written
    // without fsync at most (the next sync makes it durable).
    let (id, _) = sp.next().unwrap();
    signalled(&sp);
    sp.ack(id);
    assert!(signalled(&sp), "an acknowledgement wakes the sync task");
    assert!(sp.needs_sync(), "the cursor moved and is not yet durable");
    sp.sync().unwrap();
    assert!(!sp.needs_sync());
    // The last one: the segment goes, and its cursor is written durably with it.
    let (id, _) = sp.next().unwrap();
    sp.ack(id);
    sp.sync().unwrap();
    assert!(!sp.needs_sync());

    // Reopened: at most one sync brings the cursor on disk up to date, then none is needed.
    drop(sp);
    let sp = open(dir.path(), &s);
    sp.sync().unwrap();
    assert!(!sp.needs_sync());
}
