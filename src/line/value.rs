//! Field values and timestamps: floats, `i` integers, `u` unsigned integers, booleans,
//! `"`-quoted strings, and the optional timestamp in the destination's precision.
//!
//! Invariant: a value passes only if InfluxDB 2.x stores it: integers within their type's
//! range, floats finite, timestamps within `MIN_NANOS..=MAX_NANOS` once scaled to nanoseconds.

use memchr::memchr2;

use super::class::{skip_class, DIGIT};
use super::error::stop_error;
use super::{LineError, Precision};

/// InfluxDB's storable time range in nanoseconds (`models.MinNanoTime` / `MaxNanoTime`).
const MIN_NANOS: i64 = i64::MIN + 2;
pub(super) const MAX_NANOS: i64 = i64::MAX - 1;

/// Validates the field value starting at `i`; returns the index just past it. The caller checks
/// what follows (',', ' ' or the end).
#[inline(always)]
pub(super) fn field_value(line: &[u8], i: usize) -> Result<usize, LineError> {
    match line.get(i) {
        Some(b'"') => string_value(line, i),
        Some(b'-' | b'.' | b'0'..=b'9') => number_value(line, i),
        Some(b't' | b'T' | b'f' | b'F') => {
            let end = match line[i..].iter().position(|&b| b == b',' || b == b' ') {
                Some(k) => i + k,
                None => line.len(),
            };
            match &line[i..end] {
                b"t" | b"T" | b"true" | b"True" | b"TRUE" | b"f" | b"F" | b"false" | b"False"
                | b"FALSE" => Ok(end),
                _ => Err(LineError::BadFieldValue { at: i }),
            }
        }
        _ => Err(stop_error(line, i, LineError::BadFieldValue { at: i })),
    }
}

/// A `"`-quoted string: any byte except an unescaped `"`; a backslash escapes any one byte,
/// newlines and control characters included (as in the grammar and in InfluxDB).
#[inline(always)]
fn string_value(line: &[u8], open: usize) -> Result<usize, LineError> {
    let mut j = open + 1;
    loop {
        match memchr2(b'"', b'\\', &line[j..]) {
            None => return Err(LineError::UnbalancedQuotes { at: open }),
            Some(k) => {
                let p = j + k;
                if line[p] == b'"' {
                    return Ok(p + 1);
                }
                if p + 1 >= line.len() {
                    return Err(LineError::UnbalancedQuotes { at: open });
                }
                j = p + 2;
            }
        }
    }
}

/// Float (`[-](digits[.digits*]|.digits)[(e|E)[+|-]digits]`), `[-]digits i` or `digits u`.
/// The float grammar cannot spell NaN or Inf; the only way to get Inf is overflow, which is
/// checked exactly but only for the rare literals that could reach it.
#[inline(always)]
fn number_value(line: &[u8], start: usize) -> Result<usize, LineError> {
    let neg = line[start] == b'-';
    let ds = start + neg as usize;
    let mut i = skip_class(line, ds, DIGIT);
    let int_end = i;
    match line.get(i) {
        Some(b'i') => {
            if i == ds {
                return Err(LineError::BadFieldValue { at: start });
            }
            let limit: &[u8] = if neg {
                b"9223372036854775808"
            } else {
                b"9223372036854775807"
            };
            if !digits_within(&line[ds..i], limit) {
                return Err(LineError::ValueOutOfRange { at: start });
            }
            return Ok(i + 1);
        }
        Some(b'u') => {
            if i == ds || neg {
                return Err(LineError::BadFieldValue { at: start });
            }
            if !digits_within(&line[ds..i], b"18446744073709551615") {
                return Err(LineError::ValueOutOfRange { at: start });
            }
            return Ok(i + 1);
        }
        _ => {}
    }
    let mut mantissa_digits = int_end - ds;
    if line.get(i) == Some(&b'.') {
        let fs = i + 1;
        i = skip_class(line, fs, DIGIT);
        mantissa_digits += i - fs;
    }
    if mantissa_digits == 0 {
        return Err(LineError::BadFieldValue { at: start });
    }
    let mut exp: i64 = 0;
    if let Some(b'e' | b'E') = line.get(i) {
        i += 1;
        let exp_neg = match line.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let es = i;
        i = skip_digits(line, es);
        if i == es {
            return Err(LineError::BadFieldValue { at: start });
        }
        for &d in &line[es..i] {
            exp = (exp * 10 + (d - b'0') as i64).min(1 << 40);
        }
        if exp_neg {
            exp = -exp;
        }
    }
    // The value is below 10^(significant integer digits + exponent); f64::MAX is ~1.8e308.
    let int_digits = &line[ds..int_end];
    if int_digits.len() as i64 + exp > 308
        && (int_digits.len() - int_digits.iter().take_while(|&&d| d == b'0').count()) as i64 + exp
            > 308
    {
        let text = std::str::from_utf8(&line[start..i]).expect("float literal is ASCII");
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => {}
            _ => return Err(LineError::ValueOutOfRange { at: start }),
        }
    }
    Ok(i)
}

/// Field values are short, so a plain loop beats setting up a vector compare.
#[inline(always)]
fn skip_digits(line: &[u8], mut i: usize) -> usize {
    while let Some(b) = line.get(i) {
        if !b.is_ascii_digit() {
            break;
        }
        i += 1;
    }
    i
}

/// `digits` (possibly with leading zeros) is at most `limit` (no leading zeros).
#[inline(always)]
fn digits_within(digits: &[u8], limit: &[u8]) -> bool {
    if digits.len() < limit.len() {
        return true;
    }
    let zeros = digits.iter().take_while(|&&d| d == b'0').count();
    let sig = &digits[zeros..];
    sig.len() < limit.len() || (sig.len() == limit.len() && sig <= limit)
}

/// Parses `[-]digits` at `start`; returns the value in the line's units and the index past it.
#[inline(always)]
pub(super) fn timestamp(
    line: &[u8],
    start: usize,
    precision: Precision,
) -> Result<(i64, usize), LineError> {
    let neg = line[start] == b'-';
    let ds = start + neg as usize;
    let out_of_range = LineError::TimestampOutOfRange { at: start };
    // Timestamps are mostly 19 digits: take them eight at a time. Leading zeros cost nothing,
    // and any value that overflows u64 is out of range anyway.
    let mut v: u64 = 0;
    let mut i = ds;
    while let Some(chunk) = line.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        if !eight_digits(word) {
            break;
        }
        v = v
            .checked_mul(100_000_000)
            .and_then(|v| v.checked_add(parse_eight_digits(word)))
            .ok_or(out_of_range)?;
        i += 8;
    }
    while let Some(&d) = line.get(i) {
        if !d.is_ascii_digit() {
            break;
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add((d - b'0') as u64))
            .ok_or(out_of_range)?;
        i += 1;
    }
    if i == ds {
        return Err(stop_error(line, ds, LineError::BadTimestamp { at: start }));
    }
    let ts: i64 = if neg {
        if v > 1 << 63 {
            return Err(out_of_range);
        }
        (v as i64).wrapping_neg()
    } else {
        i64::try_from(v).map_err(|_| out_of_range)?
    };
    match ts.checked_mul(precision.nanos_per_unit()) {
        Some(ns) if (MIN_NANOS..=MAX_NANOS).contains(&ns) => Ok((ts, i)),
        _ => Err(out_of_range),
    }
}

/// All eight bytes of `word` are ASCII digits: the high nibble is 3, and adding 6 keeps it 3.
/// (When the first test passes no byte can carry into its neighbour.)
#[inline(always)]
pub(super) fn eight_digits(word: u64) -> bool {
    const HIGH_NIBBLES: u64 = 0xf0f0_f0f0_f0f0_f0f0;
    const THREES: u64 = 0x3030_3030_3030_3030;
    word & HIGH_NIBBLES == THREES
        && word.wrapping_add(0x0606_0606_0606_0606) & HIGH_NIBBLES == THREES
}

/// The value of eight ASCII digits read little-endian (first digit in the lowest byte):
/// combine neighbouring digits, then pairs, then quads.
#[inline(always)]
pub(super) fn parse_eight_digits(word: u64) -> u64 {
    let d = word - 0x3030_3030_3030_3030;
    let pairs = (d * 10 + (d >> 8)) & 0x00ff_00ff_00ff_00ff;
    let quads = (pairs * 100 + (pairs >> 16)) & 0x0000_ffff_0000_ffff;
    (quads * 10_000 + (quads >> 32)) & 0xffff_ffff
}
