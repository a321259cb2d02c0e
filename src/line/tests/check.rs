//! The validator's verdicts, rule by rule: accepted shapes, field values, measurement and
//! tags, timestamps, bytes, and the labels of its errors.

use super::*;
use crate::line::value::MAX_NANOS;

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
        ".", "-", "-.", "e5", ".e5", "1e", "1e+", "+1", "1..2", "1.2.3", "0x10", "1_000", "inf",
        "Inf", "-inf", "NaN", "nan", "Infinity", "1.0i", "1e5i", "1ee5", "1f",
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
