//! Escaping for building lines (`format = "text"` wraps plain text into a line): string field
//! values, tag keys and values, field keys and measurement names. Each helper appends to the
//! caller's buffer; what line protocol cannot carry is said on the helper.

use memchr::memchr2;

/// Escape a raw string for use as a line-protocol string field value (between the quotes):
/// backslash and double quote get a backslash.
pub fn escape_string_field(raw: &[u8], out: &mut Vec<u8>) {
    out.reserve(raw.len());
    let mut start = 0;
    while let Some(k) = memchr2(b'"', b'\\', &raw[start..]) {
        let p = start + k;
        out.extend_from_slice(&raw[start..p]);
        out.push(b'\\');
        out.push(raw[p]);
        start = p + 1;
    }
    out.extend_from_slice(&raw[start..]);
}

/// Escape a tag key, tag value or field key: commas, equals signs and spaces get a backslash.
///
/// A backslash only escapes when it stands right before one of those, so other backslashes are
/// kept as they are. Trailing backslashes are dropped: line protocol cannot carry them, since
/// they would escape the separator that follows. Control characters cannot be carried in a key
/// either and are left for the validator to reject.
pub fn escape_tag(raw: &[u8], out: &mut Vec<u8>) {
    escape_with(raw, out, |b| matches!(b, b',' | b'=' | b' '));
}

/// Escape a measurement name: commas and spaces get a backslash; a leading `#` too, which would
/// otherwise turn the line into a comment. Trailing backslashes are dropped, as in
/// [`escape_tag`].
pub fn escape_measurement(raw: &[u8], out: &mut Vec<u8>) {
    let raw = if let Some(rest) = raw.strip_prefix(b"#") {
        out.extend_from_slice(b"\\#");
        rest
    } else {
        raw
    };
    escape_with(raw, out, |b| matches!(b, b',' | b' '));
}

fn escape_with(raw: &[u8], out: &mut Vec<u8>, special: impl Fn(u8) -> bool) {
    let kept = raw.len() - raw.iter().rev().take_while(|&&b| b == b'\\').count();
    out.reserve(kept);
    for &b in &raw[..kept] {
        if special(b) {
            out.push(b'\\');
        }
        out.push(b);
    }
}
