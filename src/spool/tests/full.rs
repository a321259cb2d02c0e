//! The size cap: `when_full = "drop_oldest"`, `"drop_newest"` and `"block"`.

use super::*;

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
