//! `normalize_line`: CR stripping, skipped and rejected lines, the length limit and stamping.

use super::*;

#[test]
fn normalize_strips_cr_and_skips() {
    let o = opts(1024, false);
    assert_eq!(
        normalize(b"cpu f=1\r", &o, None),
        (Outcome::Accepted, b"cpu f=1\n".to_vec())
    );
    assert_eq!(
        normalize(b"cpu f=1 5", &o, None),
        (Outcome::Accepted, b"cpu f=1 5\n".to_vec())
    );
    for skipped in [
        &b""[..],
        b"\r",
        b"   ",
        b"   \r",
        b"#",
        b"# hi",
        b"   # hi\tthere\r",
    ] {
        assert_eq!(
            normalize(skipped, &o, None),
            (Outcome::Skipped, vec![]),
            "{skipped:?}"
        );
    }
    assert_eq!(
        normalize(b"# bad \x01 comment", &o, None),
        (Outcome::Rejected(LineError::ControlChar { at: 6 }), vec![])
    );
    assert_eq!(
        normalize(b"# \xff", &o, None).0,
        Outcome::Rejected(LineError::InvalidUtf8 { at: 2 })
    );
    // The grammar has no tab in a blank line and the corpus rejects one.
    assert_eq!(
        normalize(b"\t", &o, None).0,
        Outcome::Rejected(LineError::ControlChar { at: 0 })
    );
    assert_eq!(
        normalize(b"\r\r", &o, None).0,
        Outcome::Rejected(LineError::ControlChar { at: 0 })
    );
    assert!(matches!(normalize(b"cpu f=x", &o, None), (Outcome::Rejected(_), v) if v.is_empty()));
}

#[test]
fn normalize_appends_without_clearing() {
    let o = opts(1024, false);
    let mut out = b"prev\n".to_vec();
    assert_eq!(
        normalize_line(b"a f=1", &o, None, &mut out),
        Outcome::Accepted
    );
    assert_eq!(
        normalize_line(b"bad", &o, None, &mut out),
        Outcome::Rejected(LineError::MissingFields { at: 3 })
    );
    assert_eq!(out, b"prev\na f=1\n");
}

#[test]
fn normalize_too_long() {
    let o = opts(7, false);
    assert_eq!(normalize(b"a f=123", &o, None).0, Outcome::Accepted);
    assert_eq!(normalize(b"a f=123\r", &o, None).0, Outcome::Accepted);
    assert_eq!(
        normalize(b"a f=1234", &o, None).0,
        Outcome::Rejected(LineError::TooLong)
    );
    assert_eq!(
        normalize(b"# long comment", &o, None).0,
        Outcome::Rejected(LineError::TooLong)
    );
    assert_eq!(
        normalize(b"        ", &o, None).0,
        Outcome::Rejected(LineError::TooLong)
    );
}

#[test]
fn normalize_stamps_missing_timestamps() {
    let on = opts(1024, true);
    let stamp = Some(1_700_000_000_000_000_000);
    assert_eq!(
        normalize(b"a f=1", &on, stamp).1,
        b"a f=1 1700000000000000000\n"
    );
    assert_eq!(
        normalize(b"a f=1\r", &on, stamp).1,
        b"a f=1 1700000000000000000\n"
    );
    assert_eq!(
        normalize(b"a f=1  ", &on, stamp).1,
        b"a f=1  1700000000000000000\n"
    );
    assert_eq!(
        normalize(b"a s=\"x \"", &on, Some(-5)).1,
        b"a s=\"x \" -5\n"
    );
    // Lines that carry a timestamp, stamping off, or no stamp: untouched.
    assert_eq!(normalize(b"a f=1 42", &on, stamp).1, b"a f=1 42\n");
    assert_eq!(normalize(b"a f=1", &opts(1024, false), stamp).1, b"a f=1\n");
    assert_eq!(normalize(b"a f=1", &on, None).1, b"a f=1\n");
    for stamped in [
        &b"a f=1 1700000000000000000"[..],
        b"a f=1  1700000000000000000",
    ] {
        assert_eq!(ok(std::str::from_utf8(stamped).unwrap()), stamp);
    }
}
