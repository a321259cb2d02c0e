//! `format = "text"`: wraps raw log lines as line protocol points.
//!
//! A raw line `GET /x "ok"` read from `/var/log/app.log` becomes
//! `log,app=web,path=/var/log/app.log message="GET /x \"ok\"" 1700000000000000000`:
//! the configured measurement, the configured tags (sorted by key), a `path` tag, the line as
//! the escaped string field `message`, and the read time in the input's precision. Bytes that
//! are not UTF-8 are replaced with U+FFFD; nothing here can fail. The escaping itself is the
//! validator's (`line::escape_*`), so wrapped lines are valid by construction.

use std::path::Path;

use crate::config::LineSettings;
use crate::line::{escape_measurement, escape_string_field, escape_tag};

/// The part of every wrapped line that does not depend on the file: `measurement,k=v,...`.
#[derive(Clone, Debug)]
pub struct TextFormat {
    head: Vec<u8>,
}

impl TextFormat {
    pub fn new(line: &LineSettings) -> Self {
        let mut head = Vec::new();
        escape_measurement(line.measurement.as_bytes(), &mut head);
        let mut tags: Vec<&(String, String)> = line.tags.iter().collect();
        tags.sort();
        for (k, v) in tags {
            head.push(b',');
            escape_tag(k.as_bytes(), &mut head);
            head.push(b'=');
            escape_tag(v.as_bytes(), &mut head);
        }
        TextFormat { head }
    }

    /// The prefix of every line wrapped from `path`, up to and including `message="`.
    /// `path = None` (inputs without a file) leaves the `path` tag out.
    pub fn prefix(&self, path: Option<&Path>) -> Vec<u8> {
        let mut p = self.head.clone();
        if let Some(path) = path {
            // A file name may hold anything but `/` and NUL; line protocol cannot carry
            // control characters in a tag, so they become U+FFFD like invalid UTF-8.
            let s: String = path
                .to_string_lossy()
                .chars()
                .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
                .collect();
            if !s.is_empty() {
                p.extend_from_slice(b",path=");
                escape_tag(s.as_bytes(), &mut p);
            }
        }
        p.extend_from_slice(b" message=\"");
        p
    }
}

/// Appends `raw` (one log line without its `\n`; a trailing `\r` is dropped) wrapped as a
/// point to `out`. Returns false, appending nothing, for an empty line.
pub fn wrap(prefix: &[u8], raw: &[u8], stamp: i64, out: &mut Vec<u8>) -> bool {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    if raw.is_empty() {
        return false;
    }
    out.extend_from_slice(prefix);
    let text = String::from_utf8_lossy(raw);
    escape_string_field(text.as_bytes(), out);
    out.extend_from_slice(b"\" ");
    out.extend_from_slice(stamp.to_string().as_bytes());
    out.push(b'\n');
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InputFormat;
    use crate::line::Precision;

    fn settings(tags: &[(&str, &str)]) -> LineSettings {
        LineSettings {
            bucket: "b".into(),
            outputs: u64::MAX,
            precision: Precision::Ns,
            stamp_missing: true,
            format: InputFormat::Text,
            measurement: "log".into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn wraps_with_sorted_tags_path_and_stamp() {
        let f = TextFormat::new(&settings(&[("z", "1"), ("app", "web")]));
        let p = f.prefix(Some(Path::new("/var/log/app.log")));
        let mut out = Vec::new();
        assert!(wrap(&p, b"hello world\r", 42, &mut out));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "log,app=web,z=1,path=/var/log/app.log message=\"hello world\" 42\n"
        );
    }

    #[test]
    fn skips_empty_lines_and_replaces_invalid_utf8() {
        let f = TextFormat::new(&settings(&[]));
        let p = f.prefix(None);
        let mut out = Vec::new();
        assert!(!wrap(&p, b"", 1, &mut out));
        assert!(!wrap(&p, b"\r", 1, &mut out));
        assert!(out.is_empty());
        assert!(wrap(&p, b"a\xff\xfeb", 7, &mut out));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "log message=\"a\u{FFFD}\u{FFFD}b\" 7\n"
        );
    }

    #[test]
    fn escapes_awkward_characters() {
        let f = TextFormat::new(&settings(&[("k y", "v,=")]));
        let p = f.prefix(Some(Path::new("/tmp/a b,c=d.log")));
        let mut out = Vec::new();
        assert!(wrap(&p, b"say \"hi\" \\ a,b=c\td", 5, &mut out));
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "log,k\\ y=v\\,\\=,path=/tmp/a\\ b\\,c\\=d.log message=\"say \\\"hi\\\" \\\\ a,b=c\td\" 5\n"
        );
        assert_eq!(
            crate::line::check_line(&out[..out.len() - 1], Precision::Ns).map(|_| ()),
            Ok(())
        );
    }

    #[test]
    fn control_characters_in_a_file_name_still_make_valid_lines() {
        let f = TextFormat::new(&settings(&[]));
        let p = f.prefix(Some(Path::new("/tmp/odd\tname\nwith\rcontrols.log")));
        let mut out = Vec::new();
        assert!(wrap(&p, b"x", 5, &mut out));
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "log,path=/tmp/odd\u{FFFD}name\u{FFFD}with\u{FFFD}controls.log message=\"x\" 5\n"
        );
        assert_eq!(
            crate::line::check_line(&out[..out.len() - 1], Precision::Ns).map(|_| ()),
            Ok(())
        );
    }
}
