//! Normalising one raw line for forwarding: strip one trailing CR, enforce `max_line_bytes`,
//! skip blank and comment lines, validate, and stamp a missing timestamp if asked to.
//!
//! Invariant: an accepted line is appended to the caller's buffer byte for byte (minus the
//! CR, plus the optional stamp) and ends in `\n`; nothing is appended for a skipped or rejected
//! line, and nothing is allocated beyond the buffer's growth.

use super::check::check_line;
use super::class::{is_ctrl, skip_spaces};
use super::{LineError, Precision};

/// What happened to one raw line in [`normalize_line`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Skipped,
    Rejected(LineError),
}

/// Per-input options for normalising.
#[derive(Debug, Clone, Copy)]
pub struct LineOptions {
    pub precision: Precision,
    pub max_line_bytes: usize,
    pub stamp_missing: bool,
}

/// A comment line: `#` then anything printable or tab, as valid UTF-8.
fn check_comment(line: &[u8], hash: usize) -> Result<(), LineError> {
    if let Some(k) = line[hash..].iter().position(|&b| is_ctrl(b) && b != b'\t') {
        return Err(LineError::ControlChar { at: hash + k });
    }
    if let Err(e) = std::str::from_utf8(&line[hash..]) {
        return Err(LineError::InvalidUtf8 {
            at: hash + e.valid_up_to(),
        });
    }
    Ok(())
}

/// Normalise and check one raw line (without its `\n`; may end in `\r`).
///
/// Strips one trailing `\r`; rejects lines longer than `max_line_bytes` (after the strip) as
/// `TooLong`, whatever they hold, so the verdict agrees with [`Framer`]'s; skips blank lines
/// (empty or only spaces) and `#` comments (optionally preceded by spaces) as `Skipped`; a
/// comment holding a control character other than tab, or invalid UTF-8, is rejected as the
/// v2 corpus requires. A line holding a tab where a blank line would hold spaces is not blank:
/// the grammar has no tab there, and the corpus rejects it.
///
/// On `Accepted`, appends the line bytes exactly as given (minus the `\r`) to `out`, then, if
/// it had no timestamp and `opts.stamp_missing` and `stamp` is `Some(ts)`, the timestamp
/// (after a space unless the line already ends in one), then `\n`. Nothing is appended for
/// `Skipped` or `Rejected`.
///
/// [`Framer`]: super::Framer
pub fn normalize_line(
    line: &[u8],
    opts: &LineOptions,
    stamp: Option<i64>,
    out: &mut Vec<u8>,
) -> Outcome {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > opts.max_line_bytes {
        return Outcome::Rejected(LineError::TooLong);
    }
    let first = skip_spaces(line, 0);
    match line.get(first) {
        None => return Outcome::Skipped,
        Some(b'#') => {
            return match check_comment(line, first) {
                Ok(()) => Outcome::Skipped,
                Err(e) => Outcome::Rejected(e),
            }
        }
        Some(_) => {}
    }
    match check_line(line, opts.precision) {
        Ok(checked) => {
            out.extend_from_slice(line);
            if let (None, true, Some(ts)) = (checked.timestamp, opts.stamp_missing, stamp) {
                // A valid line can only end in a space as trailing whitespace (field values
                // cannot end in an escaped space), so the digits land in the timestamp slot.
                if line.last() != Some(&b' ') {
                    out.push(b' ');
                }
                out.extend_from_slice(itoa::Buffer::new().format(ts).as_bytes());
            }
            out.push(b'\n');
            Outcome::Accepted
        }
        Err(e) => Outcome::Rejected(e),
    }
}
