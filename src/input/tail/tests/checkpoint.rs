//! Acks and the checkpoint: out-of-order acks, and overlong lines the checkpoint passes.

use super::*;

/// Acks arriving out of order move the checkpoint only over contiguous delivered chunks.
#[test]
fn checkpoint_waits_for_contiguous_acks() {
    let mut h = Harness::new(0, true);
    h.append(0, 9);
    h.step(true, true);
    h.step(false, true);
    h.step(false, true);
    assert_eq!(h.inflight.len(), 3, "three chunks of three lines");
    h.deliver(2);
    h.deliver(1);
    h.tailer.as_mut().unwrap().apply_acks();
    h.now += Duration::from_secs(1);
    h.step(false, false);
    let ck = std::fs::read_to_string(h.state.join("tail/checkpoints.json")).unwrap();
    assert!(ck.contains("\"offset\":0"), "{ck}");
    h.deliver(0);
    h.tailer.as_mut().unwrap().apply_acks();
    h.now += Duration::from_secs(1);
    h.step(false, false);
    let ck = std::fs::read_to_string(h.state.join("tail/checkpoints.json")).unwrap();
    let size = std::fs::metadata(h.logs.join("a.log")).unwrap().len();
    assert!(ck.contains(&format!("\"offset\":{size}")), "{ck}");
}

/// A line longer than max_line_bytes is rejected whole, its neighbours are kept, and the
/// checkpoint passes it.
#[test]
fn overlong_lines_are_skipped_without_losing_neighbours() {
    let mut h = Harness::new(0, true);
    let long = format!("m v={}i", "9".repeat(5000));
    writeln!(h.streams[0].writer, "m v=1i\n{long}\nm v=2i").unwrap();
    h.appended.extend([1, 2]);
    h.check().unwrap();
}
