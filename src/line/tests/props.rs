//! Properties over generated lines and bytes: nothing panics, framing ignores read boundaries,
//! valid lines are accepted and stamped lines validate, and the fast path agrees with the full
//! validator (and takes the plain lines it is meant for).

use proptest::prelude::*;

use super::*;
use crate::line::check::check_line_full;
#[cfg(target_arch = "x86_64")]
use crate::line::fast;
use crate::line::value::MAX_NANOS;

/// Bytes that exercise the grammar's interesting corners more often than uniform bytes.
fn lp_bytes(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => prop::sample::select(b"ab09 ,=\"\\\n\r#-.eiu tTfF".to_vec()),
        1 => any::<u8>(),
    ];
    prop::collection::vec(byte, 0..max_len)
}

fn piece(options: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(options), 1..6).prop_map(|v| v.concat())
}

/// A valid field value. `plain` leaves out control characters (allowed in strings, but
/// outside the fast path).
fn field_value(plain: bool) -> impl Strategy<Value = String> {
    let mut string_pieces = vec!["a", " ", ",", "=", "\\\\", "\\\"", "\u{e9}", "#", "\\n"];
    if !plain {
        string_pieces.extend(["\n", "\t", "\r"]);
    }
    prop_oneof![
        "-?[0-9]{1,6}(\\.[0-9]{0,4})?([eE][+-]?[0-9]{1,2})?",
        "-?\\.[0-9]{1,4}",
        "-?[0-9]{1,18}i",
        "[0-9]{1,19}u",
        prop::sample::select(vec![
            "t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"
        ])
        .prop_map(str::to_string),
        prop::collection::vec(prop::sample::select(string_pieces), 0..8)
            .prop_map(|v| format!("\"{}\"", v.concat())),
        // Long strings carry lines across the bitmap's 64-byte words and its size limit.
        "\"[a-z ,=]{0,400}\"",
    ]
}

/// A valid line without timestamp, with unique tag keys. `plain` leaves out what the fast
/// path hands to the full validator: leading spaces, escapes outside strings and control
/// characters.
fn line_with(plain: bool) -> impl Strategy<Value = String> {
    let (names, keys): (&'static [&'static str], &'static [&'static str]) = if plain {
        (
            &["cpu", "m", "_", "=", "\"", "\u{e9}", "0"],
            &["a", "z", "0", "_", "\"", "\u{e9}"],
        )
    } else {
        (
            &["cpu", "m", "_", "\\,", "\\ ", "=", "\"", "\u{e9}", "0"],
            &["a", "z", "0", "_", "\\ ", "\\,", "\\=", "\"", "\u{e9}"],
        )
    };
    let tags = prop::collection::vec((piece(keys), piece(keys)), 0..5);
    let fields = prop::collection::vec((piece(keys), field_value(plain)), 1..5);
    let lead = if plain { 0..1usize } else { 0..3usize };
    (piece(names), tags, fields, lead, 0..3usize).prop_map(|(name, tags, fields, lead, trail)| {
        let mut line = " ".repeat(lead) + &name;
        for (i, (k, v)) in tags.iter().enumerate() {
            line += &format!(",t{i}_{k}={v}");
        }
        let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        line + " " + &fields.join(",") + &" ".repeat(trail)
    })
}

fn valid_line() -> impl Strategy<Value = String> {
    line_with(false)
}

/// A timestamp: small, or near the end of the range for one of the precisions.
fn some_timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i32>().prop_map(i64::from),
        (
            prop::sample::select(vec![1, 1_000, 1_000_000, 1_000_000_000]),
            -2i64..=2,
            any::<bool>()
        )
            .prop_map(|(npu, delta, neg)| {
                let edge = (MAX_NANOS / npu).saturating_add(delta);
                if neg {
                    -edge
                } else {
                    edge
                }
            }),
    ]
}

/// A valid line, with or without a timestamp (which may be out of range).
fn stamped(line: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    (line, prop::option::of(some_timestamp())).prop_map(|(line, ts)| match ts {
        Some(ts) => format!("{} {ts}", line.trim_end()),
        None => line,
    })
}

/// One byte for an edit: mostly the bytes that carry line-protocol structure.
fn edit_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop::sample::select(b" ,=\"\\\n\t\r#-.019eEiutTfF".to_vec()),
        1 => any::<u8>(),
    ]
}

fn precision() -> impl Strategy<Value = Precision> {
    prop::sample::select(vec![
        Precision::Ns,
        Precision::Us,
        Precision::Ms,
        Precision::S,
    ])
}

proptest! {
    #[test]
    fn never_panics(data in lp_bytes(120), p in precision(), max in 0usize..150,
                    stamp in any::<Option<i64>>(), cuts in prop::collection::vec(0usize..120, 0..4)) {
        let _ = check_line(&data, p);
        let o = LineOptions { precision: p, max_line_bytes: max, stamp_missing: true };
        let mut out = Vec::new();
        let _ = normalize_line(&data, &o, stamp, &mut out);
        let _ = frame(&data, max, &cuts);
    }

    #[test]
    fn never_panics_on_any_bytes(data in prop::collection::vec(any::<u8>(), 0..200), p in precision()) {
        let _ = check_line(&data, p);
        let _ = frame(&data, 50, &[data.len() / 2]);
    }

    #[test]
    fn framing_ignores_read_boundaries(data in lp_bytes(300), max in prop_oneof![0usize..40, Just(1 << 20)],
                                       cuts in prop::collection::vec(0usize..300, 0..12)) {
        let whole = frame(&data, max, &[]);
        prop_assert_eq!(frame(&data, max, &cuts), whole.clone());
        let bytewise: Vec<usize> = (0..data.len()).collect();
        prop_assert_eq!(frame(&data, max, &bytewise), whole);
    }

    #[test]
    fn valid_lines_are_accepted_and_framed_back(lines in prop::collection::vec((valid_line(), any::<Option<i32>>(), any::<bool>()), 1..6),
                                                cuts in prop::collection::vec(0usize..600, 0..6)) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (line, ts, crlf) in &lines {
            let line = match ts {
                Some(ts) => format!("{} {ts}", line.trim_end()),
                None => line.clone(),
            };
            let checked = check_line(line.as_bytes(), Precision::Ns);
            prop_assert_eq!(checked, Ok(Checked { timestamp: ts.map(i64::from) }), "{:?}", line);
            stream.extend_from_slice(line.as_bytes());
            stream.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
            expected.push(Ok(if *crlf { format!("{line}\r") } else { line }.into_bytes()));
        }
        prop_assert_eq!(frame(&stream, 4096, &cuts), expected);
    }

    #[test]
    fn stamped_lines_validate_with_the_stamp(line in valid_line(), p in precision(), frac in -1.0f64..=1.0) {
        let bound = MAX_NANOS / p.nanos_per_unit();
        let ts = (bound as f64 * frac) as i64;
        let o = LineOptions { precision: p, max_line_bytes: 1 << 16, stamp_missing: true };
        let mut out = Vec::new();
        prop_assert_eq!(normalize_line(line.as_bytes(), &o, Some(ts), &mut out), Outcome::Accepted);
        prop_assert_eq!(out.pop(), Some(b'\n'));
        prop_assert!(out.starts_with(line.as_bytes()));
        prop_assert_eq!(check_line(&out, p), Ok(Checked { timestamp: Some(ts) }));
    }
}

/// What the fast path says, or `None` where there is no fast path.
fn fast_check(line: &[u8], p: Precision) -> Option<Checked> {
    #[cfg(target_arch = "x86_64")]
    if line.len() <= fast::MAX_LEN {
        return fast::check(line, p);
    }
    let _ = (line, p);
    None
}

proptest! {
    #[test]
    fn fast_path_agrees_with_full_validator(line in stamped(valid_line()), p in precision(),
                                            edit in prop::option::of((any::<prop::sample::Index>(), edit_byte(), any::<bool>()))) {
        // Valid lines, and lines one edit away from valid: where mistakes would hide.
        let mut bytes = line.into_bytes();
        if let Some((at, b, insert)) = edit {
            let at = at.index(bytes.len() + 1);
            if insert || at == bytes.len() {
                bytes.insert(at, b);
            } else {
                bytes[at] = b;
            }
        }
        if let Some(checked) = fast_check(&bytes, p) {
            prop_assert_eq!(check_line_full(&bytes, p), Ok(checked));
        }
        prop_assert_eq!(check_line(&bytes, p), check_line_full(&bytes, p));
    }

    #[test]
    fn fast_path_agrees_on_random_bytes(data in lp_bytes(600), p in precision()) {
        prop_assert_eq!(check_line(&data, p), check_line_full(&data, p));
    }

    #[test]
    fn fast_path_takes_plain_lines(line in stamped(line_with(true))) {
        // Lines without escapes outside strings or control characters must not fall back
        // to the full validator, or the fast path would go untested and unused.
        let expected = check_line_full(line.as_bytes(), Precision::S);
        if cfg!(target_arch = "x86_64") && line.len() <= 512 && expected.is_ok() {
            prop_assert_eq!(fast_check(line.as_bytes(), Precision::S).ok_or(()), expected.map_err(|_| ()));
        }
    }
}

#[cfg(target_arch = "x86_64")]
proptest! {
    #[test]
    fn classifiers_agree(data in prop::collection::vec(any::<u8>(), 32..=fast::MAX_LEN)) {
        if std::is_x86_feature_detected!("avx2") {
            let mut with_sse2 = [0u64; 8];
            let mut with_avx2 = [0u64; 8];
            let a = fast::classify_sse2(&data, &mut with_sse2);
            // SAFETY: the CPU has AVX2, checked above.
            let b = unsafe { fast::classify_avx2(&data, &mut with_avx2) };
            prop_assert_eq!(a, b);
            prop_assert_eq!(with_sse2, with_avx2);
        }
    }
}
