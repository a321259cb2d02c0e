//! `Framer`: lines across read boundaries, newlines inside strings, overlong lines and bounded
//! memory, and the raw framer for plain text.

use super::*;

#[test]
fn framer_splits_lines_zero_copy() {
    let data = b"a f=1\r\nb f=2\n\nc f=3";
    let mut framer = Framer::new(100);
    let mut lines = Vec::new();
    framer.feed(data, |r| {
        let l = r.unwrap();
        let range = data.as_ptr_range();
        assert!(
            range.contains(&l.as_ptr()) || l.is_empty(),
            "borrowed from data"
        );
        lines.push(l.to_vec());
    });
    assert_eq!(lines, [&b"a f=1\r"[..], b"b f=2", b""]);
    assert_eq!(framer.pending(), 5);
    framer.finish(|r| lines.push(r.unwrap().to_vec()));
    assert_eq!(lines.last().unwrap(), b"c f=3");
    assert_eq!(framer.pending(), 0);
    // Nothing pending: finish emits nothing.
    framer.finish(|_| panic!("no line expected"));
}

#[test]
fn abandon_hands_over_the_incomplete_last_line_instead_of_emitting_it() {
    let mut framer = Framer::new(100);
    let mut lines = Vec::new();
    framer.feed(b"a f=1\nb f=", |r| lines.push(r.unwrap().to_vec()));
    let mut cut = Vec::new();
    framer.abandon(|p| cut = p.to_vec());
    assert_eq!(lines, [b"a f=1".to_vec()]);
    assert_eq!(cut, b"b f=");
    assert_eq!(framer.pending(), 0);
    // Nothing pending, or an overlong line already reported: nothing to hand over.
    framer.abandon(|_| panic!("nothing pending"));
    let mut framer = Framer::new(4);
    framer.feed(b"toolong", |r| assert!(r.is_err()));
    framer.abandon(|_| panic!("the overlong line was reported already"));
}

#[test]
fn framer_joins_across_feeds() {
    assert_eq!(
        frame(b"cpu,h=a f=1 1\ncpu,h=b f=2 2\n", 100, &[3, 9, 14, 20]),
        oks(&["cpu,h=a f=1 1", "cpu,h=b f=2 2"])
    );
}

#[test]
fn framer_keeps_newlines_inside_strings() {
    let data = b"m s=\"a\nb\" 1\nm,t=\"x f=\"q\\\"\n\\\\\n\",g=1\n# \"c\nn \"s\"=\"\n\"\n";
    let expected = oks(&[
        "m s=\"a\nb\" 1",
        "m,t=\"x f=\"q\\\"\n\\\\\n\",g=1",
        "# \"c",
        "n \"s\"=\"\n\"",
    ]);
    for cut in 0..data.len() {
        assert_eq!(frame(data, 100, &[cut]), expected, "cut at {cut}");
    }
    let o = opts(100, false);
    let outcomes: Vec<Outcome> = expected
        .iter()
        .map(|l| normalize(l.as_ref().unwrap(), &o, None).0)
        .collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Accepted,
            Outcome::Accepted,
            Outcome::Skipped,
            Outcome::Accepted
        ]
    );
}

#[test]
fn framer_quotes_outside_field_values_do_not_open_strings() {
    assert_eq!(
        frame(
            b"\"m,\"t\"=\"v\" \"k\"=1\nm f=a\"b\nm f=1 \"\nx f=1\n",
            100,
            &[]
        ),
        oks(&["\"m,\"t\"=\"v\" \"k\"=1", "m f=a\"b", "m f=1 \"", "x f=1"])
    );
    // Malformed before the quote: the line ends at the next newline.
    assert_eq!(
        frame(b"m ,f=\"a\nb f=1\n", 100, &[]),
        oks(&["m ,f=\"a", "b f=1"])
    );
}

#[test]
fn framer_too_long_is_reported_once_and_skipped() {
    let data = b"ok f=1\nthis line is far too long\nok f=2\n";
    let expected = vec![
        Ok(b"ok f=1".to_vec()),
        Err(LineError::TooLong),
        Ok(b"ok f=2".to_vec()),
    ];
    for cut in 0..data.len() {
        assert_eq!(frame(data, 8, &[cut]), expected, "cut at {cut}");
    }
    // max + 1 bytes fit (room for a CR); max + 2 do not.
    assert_eq!(frame(b"12345678\r\n", 8, &[]), oks(&["12345678\r"]));
    assert_eq!(frame(b"123456789\n", 8, &[]), oks(&["123456789"]));
    assert_eq!(
        frame(b"1234567890\n", 8, &[]),
        vec![Err(LineError::TooLong)]
    );
    // An overlong final line without newline is reported, then dropped at finish.
    assert_eq!(
        frame(b"a f=1\n1234567890", 8, &[7]),
        vec![Ok(b"a f=1".to_vec()), Err(LineError::TooLong)]
    );
}

#[test]
fn framer_unterminated_quote_costs_at_most_max_line_bytes() {
    let mut data = b"bad s=\"oops\n".to_vec();
    for i in 0..100 {
        data.extend_from_slice(format!("m f={i}\n").as_bytes());
    }
    let lines = frame(&data, 64, &[]);
    assert_eq!(lines[0], Err(LineError::TooLong));
    let good = lines
        .iter()
        .filter(|l| matches!(l, Ok(l) if l.starts_with(b"m f=")))
        .count();
    assert!(good >= 100 - 64 / 6 - 1, "only {good} lines survived");
    // The same stream at end of input: the bad line is emitted and rejected.
    assert_eq!(
        frame(b"bad s=\"oops\nm f=1", 64, &[]),
        oks(&["bad s=\"oops\nm f=1"])
    );
}

#[test]
fn framer_bounded_memory() {
    let mut framer = Framer::new(16);
    let mut events = 0;
    for _ in 0..1000 {
        framer.feed(b"xxxxxxxx", |r| {
            // The start of the line comes along, for the warning and the dead-letter copy.
            assert_eq!(r, Err(TooLong(&[b'x'; 16][..])));
            events += 1;
        });
        assert!(framer.pending() <= 17);
    }
    assert_eq!(events, 1);
    framer.feed(b"\nm f=1\n", |r| assert_eq!(r, Ok(&b"m f=1"[..])));
    // Within one feed, too.
    framer.feed(b"0123456789abcdefghij\nm f=2\n", |r| match r {
        Err(TooLong(start)) => assert_eq!(start, b"0123456789abcdef"),
        Ok(l) => assert_eq!(l, b"m f=2"),
    });
}

#[test]
fn raw_framer_ends_lines_at_every_newline() {
    let data = b"log msg=\"a\nb\" 1\nlast";
    let (mut quoted, mut raw) = (Vec::new(), Vec::new());
    for (framer, lines) in [
        (&mut Framer::new(100), &mut quoted),
        (&mut Framer::raw(100), &mut raw),
    ] {
        framer.feed(data, |r| lines.push(r.unwrap().to_vec()));
        framer.finish(|r| lines.push(r.unwrap().to_vec()));
    }
    assert_eq!(quoted.len(), 2, "line protocol keeps a quoted newline");
    assert_eq!(raw, [&b"log msg=\"a"[..], b"b\" 1", b"last"]);
}
