//! The escaping helpers: each escaped piece, and a line built from them that validates.

use super::*;

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
