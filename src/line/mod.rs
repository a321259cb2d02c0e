//! Line handling: framing, validation and normalising of InfluxDB line protocol.
//!
//! Every line lineship forwards passes through this module first. InfluxDB 2.x rejects a whole
//! write when one line in it is bad, so the validator here must reject at least everything 2.x
//! rejects; where 2.x and the v2 grammar (`tests/data/conformance/line-protocol.ebnf`) disagree we
//! take the stricter side. The acceptance bar is the public line-protocol v2 corpus, matched
//! verdict for verdict (`tests/conformance.rs`).
//!
//! What this module owns:
//! - [`Framer`] splits a byte stream into lines across arbitrary read boundaries. A `"` string
//!   field value may contain raw newlines (InfluxDB and the grammar allow it), so the framer
//!   tracks just enough of the line structure to know whether a `\n` ends the line.
//! - [`check_line`] validates one line; [`normalize_line`] strips CR, skips blank and comment
//!   lines, enforces `max_line_bytes`, validates and stamps a missing timestamp.
//! - The escaping helpers used to build lines (`format = "text"`).
//!
//! The validator has two tiers. `check_line_full` implements every rule byte by byte (with
//! vector help to skip runs) and produces every rejection with its reason and offset. On
//! x86_64 a fast path handles the common line first (no escapes outside strings, no control
//! characters, at most 512 bytes): it finds all separators of the line at once with SSE2/AVX2
//! and steps between them. It can only accept, never reject; when unsure it defers to the full
//! validator, and property tests hold the two to the same verdicts.
//!
//! Where the corpus and the brief's wording differ, the corpus wins: a line of tabs is not
//! blank (the grammar's blank is spaces only), and a comment holding a control character other
//! than tab, or invalid UTF-8, is rejected rather than skipped.
//!
//! Invariants:
//! - Zero-copy and allocation-free on the hot path: lines are borrowed slices of the caller's
//!   buffer, the validator only reads, and accepted lines are appended to the caller's `Vec`
//!   byte for byte (minus a trailing CR, plus an optional timestamp).
//! - Framing does not depend on where reads are split: feeding a stream whole or in pieces
//!   yields the same sequence of lines and errors. Memory per framer is bounded by
//!   `max_line_bytes + 1`.
//! - A line that passes [`check_line`] is one InfluxDB 2.x would parse as the same single point.

mod check;
mod class;
mod error;
mod escape;
#[cfg(target_arch = "x86_64")]
mod fast;
mod framer;
mod normalize;
mod value;

pub use crate::precision::Precision;
pub use check::{check_line, Checked};
pub use error::LineError;
pub use escape::{escape_measurement, escape_string_field, escape_tag};
pub use framer::{Framed, Framer, TooLong};
pub use normalize::{normalize_line, LineOptions, Outcome};

#[cfg(test)]
mod tests {
    use super::check::check_line_full;
    use super::value::MAX_NANOS;
    use super::*;
    use proptest::prelude::*;

    fn ok(line: &str) -> Option<i64> {
        match check_line(line.as_bytes(), Precision::Ns) {
            Ok(c) => c.timestamp,
            Err(e) => panic!(
                "{line:?} rejected: {e} ({}) at {:?}",
                e.reason(),
                e.offset()
            ),
        }
    }

    fn err(line: &str) -> &'static str {
        err_bytes(line.as_bytes())
    }

    fn err_bytes(line: &[u8]) -> &'static str {
        match check_line(line, Precision::Ns) {
            Ok(c) => panic!("{:?} accepted ({c:?})", String::from_utf8_lossy(line)),
            Err(e) => e.reason(),
        }
    }

    fn opts(max_line_bytes: usize, stamp_missing: bool) -> LineOptions {
        LineOptions {
            precision: Precision::Ns,
            max_line_bytes,
            stamp_missing,
        }
    }

    fn normalize(line: &[u8], o: &LineOptions, stamp: Option<i64>) -> (Outcome, Vec<u8>) {
        let mut out = Vec::new();
        let outcome = normalize_line(line, o, stamp, &mut out);
        (outcome, out)
    }

    type Framed = Vec<Result<Vec<u8>, LineError>>;

    /// Feeds `data` cut at `cuts` (sorted, deduplicated here), then finishes.
    fn frame(data: &[u8], max: usize, cuts: &[usize]) -> Framed {
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(data.len())).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut framer = Framer::new(max);
        let mut lines = Vec::new();
        let mut push = |r: super::Framed<'_>| {
            if let Err(TooLong(start)) = r {
                assert!(
                    start.len() <= max,
                    "the start of an overlong line is capped"
                );
            }
            lines.push(r.map(<[u8]>::to_vec).map_err(|_| LineError::TooLong));
        };
        let mut start = 0;
        for cut in cuts.into_iter().chain([data.len()]) {
            framer.feed(&data[start..cut], &mut push);
            assert!(framer.pending() <= max.saturating_add(1));
            start = cut;
        }
        framer.finish(&mut push);
        assert_eq!(framer.pending(), 0);
        lines
    }

    fn oks(lines: &[&str]) -> Framed {
        lines.iter().map(|l| Ok(l.as_bytes().to_vec())).collect()
    }

    // --- Accepted shapes ------------------------------------------------------------------

    #[test]
    fn accepts_common_lines() {
        assert_eq!(ok("cpu value=1"), None);
        assert_eq!(
            ok("cpu,host=server042,region=eu-west-1,dc=ams3 usage_user=12.5,usage_system=3.25,idle=84i,ok=true 1700000000000000000"),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(ok("  cpu value=1"), None, "leading spaces are allowed");
        assert_eq!(ok("cpu    value=1     42    "), Some(42));
        assert_eq!(
            ok("cpu value=1 "),
            None,
            "trailing space after the field set"
        );
        assert_eq!(
            ok("cpu=load,a\"b=\"c\" x=1"),
            None,
            "= and \" are plain in names"
        );
        assert_eq!(ok("cpu value=\"wè\" 1"), Some(1));
    }

    #[test]
    fn escapes_in_names() {
        ok(r"c\,pu,t\ ag\=k=v\,a\ l\=ue f\,i\ e\=ld=1");
        ok(r"\,cpu f=1");
        ok(r"cpu,host=two\\ words value=42"); // a backslash run escapes the space
        ok(r"cpu,host=two\\\ words value=42");
        ok(r"cpu,ho\st=a value=42"); // a backslash before an ordinary character stays
        assert_eq!(err(r"cpu\ "), "missing_fields");
        assert_eq!(err(r"cpu f=1,g\"), "trailing_backslash");
        assert_eq!(err("cpu\\\tx f=1"), "control_char");
    }

    #[test]
    fn field_key_backslash_pairs_are_rejected() {
        // InfluxDB 2.x would end the key at the '=' after an even backslash run.
        assert_eq!(err(r"cpu a\\=b=1"), "bad_field_key");
        assert_eq!(err(r"cpu a\\,b=1"), "bad_field_key");
        assert_eq!(err(r"cpu a\\ b=1"), "bad_field_key");
        ok(r"cpu a\\\=b=1");
        ok(r"cpu a\\b=1");
    }

    // --- Field values ---------------------------------------------------------------------

    #[test]
    fn float_syntax() {
        for v in [
            "1",
            "-1",
            "1.",
            "-0.",
            ".5",
            "-.5",
            "1.5",
            "1e5",
            "1E5",
            "1e+5",
            "1e-5",
            "1.e5",
            ".5e-3",
            "000.000",
            "1e308",
            "1.7976931348623157e308",
            "0e99999999999999999999",
            "1e-400",
            "179769313486231570814527423731704356798070567525844996",
        ] {
            ok(&format!("m f={v}"));
        }
        for v in [
            ".", "-", "-.", "e5", ".e5", "1e", "1e+", "+1", "1..2", "1.2.3", "0x10", "1_000",
            "inf", "Inf", "-inf", "NaN", "nan", "Infinity", "1.0i", "1e5i", "1ee5", "1f",
        ] {
            assert_eq!(err(&format!("m f={v}")), "bad_field_value", "{v}");
        }
    }

    #[test]
    fn float_overflow() {
        for v in ["1.8e308", "1e309", "-1e400", "1797693134862315808e290"] {
            assert_eq!(err(&format!("m f={v}")), "value_out_of_range", "{v}");
        }
        let max_digits = format!("{:.0}", f64::MAX);
        ok(&format!("m f={max_digits}"));
        ok(&format!("m f=-{max_digits}.0"));
        assert_eq!(err(&format!("m f=1{max_digits}")), "value_out_of_range");
    }

    #[test]
    fn integer_ranges() {
        ok("m f=9223372036854775807i");
        ok("m f=-9223372036854775808i");
        ok("m f=0009223372036854775807i");
        ok("m f=-0i");
        assert_eq!(err("m f=9223372036854775808i"), "value_out_of_range");
        assert_eq!(err("m f=-9223372036854775809i"), "value_out_of_range");
        assert_eq!(err("m f=99999999999999999999i"), "value_out_of_range");
        assert_eq!(err("m f=i"), "bad_field_value");
        assert_eq!(err("m f=-i"), "bad_field_value");
        assert_eq!(err("m f=1i2"), "bad_field_value");

        ok("m f=18446744073709551615u");
        ok("m f=0u");
        ok("m f=00018446744073709551615u");
        assert_eq!(err("m f=18446744073709551616u"), "value_out_of_range");
        assert_eq!(err("m f=-1u"), "bad_field_value");
        assert_eq!(err("m f=-0u"), "bad_field_value");
        assert_eq!(err("m f=u"), "bad_field_value");
        assert_eq!(err("m f=1.0u"), "bad_field_value");
    }

    #[test]
    fn booleans() {
        for v in [
            "t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE",
        ] {
            ok(&format!("m a={v},b={v} 1"));
        }
        for v in ["tRUE", "tru", "truee", "yes", "FaLsE", "no", "y"] {
            assert_eq!(err(&format!("m a={v}")), "bad_field_value", "{v}");
        }
    }

    #[test]
    fn strings() {
        ok(r#"m s="" 1"#);
        ok(r#"m s="a \" b \\ c, d=e f" 1"#);
        ok("m s=\"line\nbreak\r\n and \t tab \x01\",t=1");
        ok(r#"m s="\n\q" 1"#); // any character may follow a backslash
        assert_eq!(err(r#"m s="abc"#), "unbalanced_quotes");
        assert_eq!(err(r#"m s="abc\""#), "unbalanced_quotes");
        assert_eq!(err(r#"m s="abc\"#), "unbalanced_quotes");
        assert_eq!(err(r##"m s="a"""##), "bad_field_value");
        assert_eq!(err(r#"m s="a"x"#), "bad_field_value");
        assert_eq!(err(r#"m s=a"b""#), "bad_field_value");
    }

    #[test]
    fn field_set_shape() {
        assert_eq!(err("cpu"), "missing_fields");
        assert_eq!(err("cpu "), "missing_fields");
        assert_eq!(err("cpu,a=b"), "missing_fields");
        assert_eq!(err("cpu,a=b   "), "missing_fields");
        assert_eq!(err("cpu f"), "bad_field_key");
        assert_eq!(err("cpu =1"), "bad_field_key");
        assert_eq!(err("cpu f=1,"), "bad_field_key");
        assert_eq!(err("cpu f=1,,g=2"), "bad_field_key");
        assert_eq!(err("cpu f=1, g=2"), "bad_field_key");
        assert_eq!(err("cpu f="), "bad_field_value");
        assert_eq!(err("cpu f= 1"), "bad_field_value");
        assert_eq!(err("cpu f=,g=1"), "bad_field_value");
        assert_eq!(err("cpu f=1 g=2"), "bad_timestamp");
    }

    // --- Measurement and tags -------------------------------------------------------------

    #[test]
    fn measurement_shape() {
        assert_eq!(err(",a=b f=1"), "bad_measurement");
        assert_eq!(err("#cpu f=1"), "bad_measurement");
        assert_eq!(err(" "), "bad_measurement");
        assert_eq!(err(""), "bad_measurement");
        assert_eq!(err("\tcpu f=1"), "control_char");
        ok(r"\#cpu f=1");
        ok("c#pu f=1");
    }

    #[test]
    fn tag_shape() {
        assert_eq!(err("cpu, f=1"), "bad_tag");
        assert_eq!(err("cpu,=v f=1"), "bad_tag");
        assert_eq!(err("cpu,k f=1"), "bad_tag");
        assert_eq!(err("cpu,k= f=1"), "bad_tag");
        assert_eq!(err("cpu,k=,j=2 f=1"), "bad_tag");
        assert_eq!(err("cpu,k=v=w f=1"), "bad_tag");
        assert_eq!(err("cpu,k=v, f=1"), "bad_tag");
        assert_eq!(err("cpu,k=v,"), "bad_tag");
        assert_eq!(err("cpu,k=v\x7f f=1"), "control_char");
        ok(r"cpu,k=v\=w f=1");
    }

    #[test]
    fn reserved_tag_keys() {
        for key in ["time", "_field", "_measurement"] {
            assert_eq!(err(&format!("cpu,a=1,{key}=x f=1")), "reserved_tag_key");
        }
        ok("cpu,times=x,_fields=y,Time=z f=1");
        // Field keys and measurements may use the names.
        ok("_measurement,a=1 time=1,_field=2");
    }

    #[test]
    fn duplicate_tag_keys() {
        assert_eq!(err("cpu,a=1,a=2 f=1"), "duplicate_tag_key");
        assert_eq!(err("cpu,b=2,c=3,b=1 f=1"), "duplicate_tag_key");
        assert_eq!(err(r"cpu,a\ b=1,c=2,a\ b=3 f=1"), "duplicate_tag_key");
        ok("cpu,a=1,b=1,ab=1,ba=1 f=1");
        // Beyond the stack slots the check rescans the tag set.
        let many: Vec<String> = (0..40).map(|i| format!("k{i}=v")).collect();
        ok(&format!("cpu,{} f=1", many.join(",")));
        for dup in ["k0", "k17", "k39"] {
            assert_eq!(
                err(&format!("cpu,{},{dup}=w f=1", many.join(","))),
                "duplicate_tag_key",
                "{dup}"
            );
        }
        assert_eq!(
            check_line(b"cpu,a=1,b=2,a=3 f=1", Precision::Ns),
            Err(LineError::DuplicateTagKey { at: 12 })
        );
    }

    #[test]
    fn series_key_limit() {
        let name = "m".repeat(65535 - 4 - 1);
        ok(&format!("{name} f=1"));
        assert_eq!(err(&format!("{name} ff=1")), "series_key_too_long");
    }

    // --- Timestamps -----------------------------------------------------------------------

    #[test]
    fn timestamp_ranges() {
        assert_eq!(
            ok("m f=1 9223372036854775806"),
            Some(9_223_372_036_854_775_806)
        );
        assert_eq!(
            ok("m f=1 -9223372036854775806"),
            Some(-9_223_372_036_854_775_806)
        );
        assert_eq!(ok("m f=1 000000"), Some(0));
        assert_eq!(ok("m f=1 -0"), Some(0));
        assert_eq!(ok("m f=1 0000000000000000000000000042"), Some(42));
        for ts in [
            "9223372036854775807",
            "-9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "99999999999999999999",
        ] {
            assert_eq!(
                err(&format!("m f=1 {ts}")),
                "timestamp_out_of_range",
                "{ts}"
            );
        }
        let check = |ts: i64, p: Precision| check_line(format!("m f=1 {ts}").as_bytes(), p);
        let s_max = MAX_NANOS / 1_000_000_000;
        assert_eq!(
            check(s_max, Precision::S),
            Ok(Checked {
                timestamp: Some(s_max)
            })
        );
        assert!(check(s_max + 1, Precision::S).is_err());
        assert!(check(-s_max - 1, Precision::S).is_err());
        let ms_max = MAX_NANOS / 1_000_000;
        assert!(check(ms_max, Precision::Ms).is_ok());
        assert!(check(ms_max + 1, Precision::Ms).is_err());
        let us_max = MAX_NANOS / 1_000;
        assert!(check(us_max, Precision::Us).is_ok());
        assert!(check(-us_max - 1, Precision::Us).is_err());
    }

    #[test]
    fn timestamp_syntax() {
        for bad in [
            "m f=1 -",
            "m f=1 1.5",
            "m f=1 12a",
            "m f=1 1 2",
            "m f=1 +5",
            "m f=1 1e9",
        ] {
            assert_eq!(err(bad), "bad_timestamp", "{bad}");
        }
        assert_eq!(err("m f=1 1\x00"), "control_char");
    }

    // --- Bytes ----------------------------------------------------------------------------

    #[test]
    fn control_characters_and_utf8() {
        assert_eq!(err("cpu f=1\r"), "control_char");
        assert_eq!(err("cpu f=1\n"), "control_char");
        assert_eq!(err("cpu\x7f f=1"), "control_char");
        assert_eq!(err("cpu,a=\tb f=1"), "control_char");
        assert_eq!(err("cpu f=1\t"), "control_char");
        assert_eq!(err_bytes(b"cpu,a=\xff f=1"), "invalid_utf8");
        assert_eq!(err_bytes(b"cpu s=\"\xc3\" 1"), "invalid_utf8");
        assert_eq!(
            check_line(b"cpu,a=\xe2\x82 f=1", Precision::Ns),
            Err(LineError::InvalidUtf8 { at: 6 })
        );
        ok("m\u{e9}tric,\u{1f600}=\u{4e2d} f\u{fc}r=1");
    }

    #[test]
    fn error_labels() {
        assert_eq!(LineError::TooLong.reason(), "too_long");
        assert_eq!(LineError::TooLong.offset(), None);
        let e = LineError::BadFieldValue { at: 7 };
        assert_eq!(e.reason(), "bad_field_value");
        assert_eq!(e.offset(), Some(7));
        assert!(e.to_string().contains("not a valid number"));
    }

    // --- normalize_line -------------------------------------------------------------------

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
        assert!(
            matches!(normalize(b"cpu f=x", &o, None), (Outcome::Rejected(_), v) if v.is_empty())
        );
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

    // --- Framer ---------------------------------------------------------------------------

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

    // --- Escaping -------------------------------------------------------------------------

    #[test]
    fn escaping() {
        let esc = |f: fn(&[u8], &mut Vec<u8>), raw: &str| {
            let mut out = Vec::new();
            f(raw.as_bytes(), &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            esc(escape_string_field, r#"say "hi" \ bye"#),
            r#"say \"hi\" \\ bye"#
        );
        assert_eq!(esc(escape_tag, "a b,c=d"), r"a\ b\,c\=d");
        assert_eq!(esc(escape_tag, r"C:\logs\a,b\"), r"C:\logs\a\,b");
        assert_eq!(esc(escape_measurement, "a b,c=d"), r"a\ b\,c=d");
        assert_eq!(esc(escape_measurement, "#x"), r"\#x");

        let line = format!(
            "{},path={} message=\"{}\"",
            esc(escape_measurement, "#my log,x"),
            esc(escape_tag, r"/var/log/a b=c,d\"),
            esc(escape_string_field, "GET \"/\" 200 \\o/\t\u{1}")
        );
        ok(&line);
    }

    // --- Properties -----------------------------------------------------------------------

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
        (piece(names), tags, fields, lead, 0..3usize).prop_map(
            |(name, tags, fields, lead, trail)| {
                let mut line = " ".repeat(lead) + &name;
                for (i, (k, v)) in tags.iter().enumerate() {
                    line += &format!(",t{i}_{k}={v}");
                }
                let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                line + " " + &fields.join(",") + &" ".repeat(trail)
            },
        )
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
}
