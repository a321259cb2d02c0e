//! Why a line was rejected: [`LineError`], with the short stable label (`reason`) that metrics
//! and log fields carry and the byte offset (`offset`) where the problem was found.
//!
//! Invariant: the `reason` labels are stable, since metrics and log fields carry them.

use super::class::is_ctrl;

/// Why a line was rejected. `at` is the byte offset in the line (after CR stripping) where the
/// problem was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line is longer than max_line_bytes")]
    TooLong,
    #[error("the connection closed in the middle of the line (no newline after it)")]
    Truncated,
    #[error("line is not valid UTF-8")]
    InvalidUtf8 { at: usize },
    #[error("line contains a control character outside a string field value")]
    ControlChar { at: usize },
    #[error("measurement name is missing or starts with an invalid character")]
    BadMeasurement { at: usize },
    #[error("tag is malformed (it needs a non-empty key, '=' and a non-empty value)")]
    BadTag { at: usize },
    #[error("tag key is reserved (time, _field and _measurement are not allowed)")]
    ReservedTagKey { at: usize },
    #[error("tag key appears more than once")]
    DuplicateTagKey { at: usize },
    #[error("line has no field set")]
    MissingFields { at: usize },
    #[error("field key is missing or malformed")]
    BadFieldKey { at: usize },
    #[error("field value is not a valid number, boolean or string")]
    BadFieldValue { at: usize },
    #[error("field value is out of range for its type")]
    ValueOutOfRange { at: usize },
    #[error("string field value has no closing quote")]
    UnbalancedQuotes { at: usize },
    #[error("backslash at the end of the line escapes nothing")]
    TrailingBackslash { at: usize },
    #[error("timestamp is not an integer, or is followed by other text")]
    BadTimestamp { at: usize },
    #[error("timestamp is outside the range InfluxDB can store")]
    TimestampOutOfRange { at: usize },
    #[error("measurement, tag set and field key exceed InfluxDB's 65535-byte series key limit")]
    SeriesKeyTooLong { at: usize },
}

impl LineError {
    /// Short stable snake_case label for metrics and log fields.
    pub fn reason(self) -> &'static str {
        match self {
            LineError::TooLong => "too_long",
            LineError::Truncated => "truncated",
            LineError::InvalidUtf8 { .. } => "invalid_utf8",
            LineError::ControlChar { .. } => "control_char",
            LineError::BadMeasurement { .. } => "bad_measurement",
            LineError::BadTag { .. } => "bad_tag",
            LineError::ReservedTagKey { .. } => "reserved_tag_key",
            LineError::DuplicateTagKey { .. } => "duplicate_tag_key",
            LineError::MissingFields { .. } => "missing_fields",
            LineError::BadFieldKey { .. } => "bad_field_key",
            LineError::BadFieldValue { .. } => "bad_field_value",
            LineError::ValueOutOfRange { .. } => "value_out_of_range",
            LineError::UnbalancedQuotes { .. } => "unbalanced_quotes",
            LineError::TrailingBackslash { .. } => "trailing_backslash",
            LineError::BadTimestamp { .. } => "bad_timestamp",
            LineError::TimestampOutOfRange { .. } => "timestamp_out_of_range",
            LineError::SeriesKeyTooLong { .. } => "series_key_too_long",
        }
    }

    /// Byte offset in the line where the problem was found, when known.
    pub fn offset(self) -> Option<usize> {
        match self {
            LineError::TooLong | LineError::Truncated => None,
            LineError::InvalidUtf8 { at }
            | LineError::ControlChar { at }
            | LineError::BadMeasurement { at }
            | LineError::BadTag { at }
            | LineError::ReservedTagKey { at }
            | LineError::DuplicateTagKey { at }
            | LineError::MissingFields { at }
            | LineError::BadFieldKey { at }
            | LineError::BadFieldValue { at }
            | LineError::ValueOutOfRange { at }
            | LineError::UnbalancedQuotes { at }
            | LineError::TrailingBackslash { at }
            | LineError::BadTimestamp { at }
            | LineError::TimestampOutOfRange { at }
            | LineError::SeriesKeyTooLong { at } => Some(at),
        }
    }
}

/// The error for a token that stopped at `i` on something other than the expected separator.
#[inline(always)]
pub(super) fn stop_error(line: &[u8], i: usize, otherwise: LineError) -> LineError {
    match line.get(i) {
        Some(&b) if is_ctrl(b) => LineError::ControlChar { at: i },
        _ => otherwise,
    }
}
