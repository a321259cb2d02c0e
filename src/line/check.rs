//! The full validator: [`check_line`] checks one line's structure (measurement, tag set,
//! field set, optional timestamp) with its escapes, control characters and UTF-8, and reports
//! every rejection with its reason and the offset of the first problem. On x86_64 it asks the
//! fast path (`fast.rs`) first, which can only accept; everything else is judged here.
//!
//! Invariant: a line that passes is one InfluxDB 2.x would parse as the same single point;
//! where InfluxDB and the v2 grammar disagree, the stricter reading wins.

use super::class::{is_ascii, is_ctrl, skip_class, skip_spaces, KEY, MEAS};
use super::error::stop_error;
#[cfg(target_arch = "x86_64")]
use super::fast;
use super::value::{field_value, timestamp};
use super::{LineError, Precision};

/// Result of checking a well-formed line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// The timestamp as written, in the line's precision units.
    pub timestamp: Option<i64>,
}

/// InfluxDB's `models.MaxKeyLength`: measurement + tags + 4 + field key.
const MAX_SERIES_KEY: usize = 65535;

/// Scans a measurement, tag key/value or field key starting at `i`; returns the index of the
/// byte that ends it (an unescaped separator, a control character, or the end).
///
/// Escapes follow the grammar (and InfluxDB 2.x's "preceded by a backslash" rule): a run of
/// backslashes escapes the one character after it, so `a\\ b` is a single token.
///
/// In field keys InfluxDB 2.x reads backslashes in pairs instead, so an even run before a
/// space, comma or `=` would split the key there; such keys are rejected to stay on the strict
/// side of both readings.
#[inline(always)]
fn scan_token<const FIELD_KEY: bool>(
    line: &[u8],
    mut i: usize,
    mask: u8,
) -> Result<usize, LineError> {
    loop {
        i = skip_class(line, i, mask);
        if line.get(i) != Some(&b'\\') {
            return Ok(i);
        }
        let run = i;
        i += 1;
        while line.get(i) == Some(&b'\\') {
            i += 1;
        }
        match line.get(i) {
            None => return Err(LineError::TrailingBackslash { at: run }),
            Some(&b) if is_ctrl(b) => return Err(LineError::ControlChar { at: i }),
            Some(&b) => {
                if FIELD_KEY && (i - run) % 2 == 0 && matches!(b, b' ' | b',' | b'=') {
                    return Err(LineError::BadFieldKey { at: run });
                }
                i += 1;
            }
        }
    }
}

#[inline(always)]
pub(super) fn is_reserved_tag_key(key: &[u8]) -> bool {
    matches!(key.first(), Some(b't' | b'_')) && matches!(key, b"time" | b"_field" | b"_measurement")
}

/// Tag keys held on the stack for the duplicate check; larger tag sets fall back to rescanning.
const TAG_SLOTS: usize = 16;

/// True if `key` equals a tag key in `head` (a measurement plus tags, already validated).
fn tag_key_in(head: &[u8], key: &[u8]) -> bool {
    let Ok(mut i) = scan_token::<false>(head, 0, MEAS) else {
        return false;
    };
    while head.get(i) == Some(&b',') {
        let ks = i + 1;
        let Ok(ke) = scan_token::<false>(head, ks, KEY) else {
            return false;
        };
        if &head[ks..ke] == key {
            return true;
        }
        match scan_token::<false>(head, ke + 1, KEY) {
            Ok(ve) => i = ve,
            Err(_) => return false,
        }
    }
    false
}

/// Validate one line: no trailing `\n` and no trailing `\r` (the caller strips them). It must
/// not be blank or a comment (the caller skips those). Trailing spaces after the timestamp or
/// after the field set are allowed, and so are leading spaces (the grammar permits both).
pub fn check_line(line: &[u8], precision: Precision) -> Result<Checked, LineError> {
    #[cfg(target_arch = "x86_64")]
    if line.len() <= fast::MAX_LEN {
        if let Some(checked) = fast::check(line, precision) {
            return Ok(checked);
        }
    }
    check_line_full(line, precision)
}

/// The complete validator: every rule, escapes, control characters and UTF-8, with the
/// position of the first problem. The fast path defers here whenever it is unsure.
pub(super) fn check_line_full(line: &[u8], precision: Precision) -> Result<Checked, LineError> {
    // Most lines are ASCII and never need std's UTF-8 validator.
    if !is_ascii(line) {
        if let Err(e) = std::str::from_utf8(line) {
            return Err(LineError::InvalidUtf8 {
                at: e.valid_up_to(),
            });
        }
    }

    let n = line.len();
    let head_start = skip_spaces(line, 0);
    let mut i = head_start;

    // Measurement. A leading '#' would make the line a comment, a leading ',' an empty name.
    match line.get(i) {
        None | Some(b'#') | Some(b',') => return Err(LineError::BadMeasurement { at: i }),
        _ => {}
    }
    i = scan_token::<false>(line, i, MEAS)?;
    if i == head_start {
        return Err(stop_error(line, i, LineError::BadMeasurement { at: i }));
    }

    // Tag set.
    let mut keys = [(0usize, 0usize); TAG_SLOTS];
    let mut nkeys = 0usize;
    while line.get(i) == Some(&b',') {
        let ks = i + 1;
        let ke = scan_token::<false>(line, ks, KEY)?;
        if ke == ks || line.get(ke) != Some(&b'=') {
            return Err(stop_error(line, ke, LineError::BadTag { at: ke }));
        }
        let key = &line[ks..ke];
        if is_reserved_tag_key(key) {
            return Err(LineError::ReservedTagKey { at: ks });
        }
        let dup = if nkeys < TAG_SLOTS {
            let dup = keys[..nkeys].iter().any(|&(s, e)| &line[s..e] == key);
            keys[nkeys] = (ks, ke);
            dup
        } else {
            tag_key_in(&line[head_start..ks - 1], key)
        };
        if dup {
            return Err(LineError::DuplicateTagKey { at: ks });
        }
        nkeys += 1;

        let vs = ke + 1;
        i = scan_token::<false>(line, vs, KEY)?;
        if i == vs {
            return Err(stop_error(line, i, LineError::BadTag { at: i }));
        }
    }
    match line.get(i) {
        Some(b' ') => {}
        None => return Err(LineError::MissingFields { at: i }),
        // An unescaped '=' in a tag value, or a control character.
        Some(_) => return Err(stop_error(line, i, LineError::BadTag { at: i })),
    }
    let head_len = i - head_start;

    // Field set.
    i = skip_spaces(line, i);
    if i == n {
        return Err(LineError::MissingFields { at: i });
    }
    let mut longest_field_key = 0;
    loop {
        let ks = i;
        let ke = scan_token::<true>(line, ks, KEY)?;
        if ke == ks || line.get(ke) != Some(&b'=') {
            return Err(stop_error(line, ke, LineError::BadFieldKey { at: ke }));
        }
        longest_field_key = longest_field_key.max(ke - ks);
        i = field_value(line, ke + 1)?;
        match line.get(i) {
            Some(b',') => i += 1,
            Some(b' ') => break,
            None => break,
            Some(_) => return Err(stop_error(line, i, LineError::BadFieldValue { at: i })),
        }
    }
    if head_len + 4 + longest_field_key > MAX_SERIES_KEY {
        return Err(LineError::SeriesKeyTooLong { at: head_start });
    }

    // Optional timestamp, then only trailing spaces.
    i = skip_spaces(line, i);
    if i == n {
        return Ok(Checked { timestamp: None });
    }
    let (ts, end) = timestamp(line, i, precision)?;
    let end = skip_spaces(line, end);
    if end != n {
        return Err(stop_error(line, end, LineError::BadTimestamp { at: end }));
    }
    Ok(Checked {
        timestamp: Some(ts),
    })
}
