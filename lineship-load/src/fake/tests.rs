//! The fake in count mode, driven over real sockets: the load tool's sink path end to end. Record
//! mode is exercised by every integration test of lineship.

use super::{FakeInflux, Mode};
use crate::client::{RawClient, BENCH_WRITE_PATH as WRITE_PATH};
use crate::gen::tests::lines;
use crate::gunzip::gzip_level;
use crate::seq::count_lines;

fn gz(data: &[u8], level: i32) -> Vec<u8> {
    gzip_level(level, data)
}

#[test]
fn sink_counts_gzip_bodies_end_to_end() {
    let sink = FakeInflux::builder()
        .mode(Mode::Count { check_seq: true })
        .worker_threads(1)
        .start()
        .unwrap();
    let mut c = RawClient::connect(sink.addr()).unwrap();
    let a = lines(0, 700);
    let b = lines(700, 300);
    assert_eq!(
        c.request("POST", WRITE_PATH, true, &gz(&a, 1)).unwrap(),
        204
    );
    assert_eq!(c.request("POST", WRITE_PATH, false, &b).unwrap(), 204);
    assert_eq!(
        c.request("POST", WRITE_PATH, true, &gz(&b[..100], 1))
            .unwrap(),
        204
    );
    let snap = sink.counts(Some((0, 1001)));
    assert_eq!(snap.write_requests, 3);
    assert_eq!(snap.lines, 1000 + count_lines(&b[..100]));
    let seq = snap.seq.unwrap();
    assert_eq!(seq.unique, 1000);
    assert!(seq.dup > 0);
    assert_eq!(seq.lost, Some(1));
    // Count mode keeps no request.
    assert!(sink.all_requests().is_empty());
}
