//! The allowed range of every numeric config value, and what a token may hold.
//!
//! Every duration, size and count has a maximum (listed in the README's config reference), so
//! a config that passes `lineship check` cannot overflow the arithmetic later done with it
//! (`Instant + Duration`, byte sums), allocate absurd buffers, or write spool records too large
//! to read back; zero is refused where it makes no sense. An error names the key and states
//! the range.
//!
//! A token goes into the `Authorization` header, so it must be visible ASCII without spaces;
//! anything else would pass `check` and then fail every write. Token errors say what kind of
//! character is wrong and where, never the token.

use std::time::Duration;

use super::key_err;

pub const HOUR: Duration = Duration::from_secs(3600);
pub const DAY: Duration = Duration::from_secs(86400);

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
pub const TIB: u64 = 1 << 40;

/// Whether zero is a meaningful value for a duration key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Zero {
    Allowed,
    Refused,
}

/// `v` must be at most `max`, and non-zero unless `zero` allows it.
pub fn duration(key: &str, v: Duration, zero: Zero, max: Duration) -> anyhow::Result<()> {
    if v > max || (v.is_zero() && zero == Zero::Refused) {
        let max = humantime::format_duration(max);
        return Err(key_err(
            key,
            match zero {
                Zero::Allowed => format!("must be between 0s and {max}"),
                Zero::Refused => format!("must be greater than 0 and at most {max}"),
            },
        ));
    }
    Ok(())
}

/// `v` bytes must lie in `min..=max`.
pub fn size(key: &str, v: u64, min: u64, max: u64) -> anyhow::Result<()> {
    if !(min..=max).contains(&v) {
        return Err(key_err(
            key,
            format!("must be between {} and {}", fmt_size(min), fmt_size(max)),
        ));
    }
    Ok(())
}

/// `v` must lie in `min..=max`.
pub fn count(key: &str, v: u64, min: u64, max: u64) -> anyhow::Result<()> {
    if !(min..=max).contains(&v) {
        return Err(key_err(key, format!("must be between {min} and {max}")));
    }
    Ok(())
}

/// A size as the config would write it: the largest binary unit that divides it exactly.
fn fmt_size(n: u64) -> String {
    for (unit, name) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (1 << 10, "KiB")] {
        if n >= unit && n % unit == 0 {
            return format!("{}{name}", n / unit);
        }
    }
    format!("{n} bytes")
}

/// Checks that `token` can be sent as `Authorization: Token <token>`: visible ASCII
/// (`!` to `~`), no spaces. The error describes the first bad character and its position,
/// never the token.
pub fn token(token: &str) -> Result<(), String> {
    let Some((i, c)) = token
        .chars()
        .enumerate()
        .find(|(_, c)| !c.is_ascii_graphic())
    else {
        return Ok(());
    };
    let what = match c {
        '\n' | '\r' => "a line break",
        ' ' => "a space",
        c if c.is_control() => "a control character",
        _ => "a non-ASCII character",
    };
    Err(format!(
        "the token holds {what} (character {} of {}), which an HTTP header cannot carry; a token is printable ASCII without spaces (check for a pasted line break or quote)",
        i + 1,
        token.chars().count()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_stated_as_the_config_writes_them() {
        let e = duration("agent.x", DAY * 2, Zero::Allowed, DAY).unwrap_err();
        assert_eq!(
            format!("{e}"),
            "config key `agent.x`: must be between 0s and 1day"
        );
        let e = duration("agent.x", Duration::ZERO, Zero::Refused, HOUR).unwrap_err();
        assert!(format!("{e}").ends_with("must be greater than 0 and at most 1h"));
        assert!(duration("agent.x", HOUR, Zero::Refused, HOUR).is_ok());
        assert!(duration("agent.x", Duration::ZERO, Zero::Allowed, HOUR).is_ok());
        let e = size("spool.max_size", u64::MAX, MIB, 64 * TIB).unwrap_err();
        assert!(format!("{e}").ends_with("must be between 1MiB and 64TiB"));
        assert_eq!(fmt_size(16), "16 bytes");
        assert_eq!(fmt_size(128 * MIB), "128MiB");
        assert!(count("output.max_in_flight", 256, 1, 256).is_ok());
        let e = count("output.max_in_flight", u64::MAX, 1, 256).unwrap_err();
        assert!(format!("{e}").ends_with("must be between 1 and 256"));
    }

    #[test]
    fn tokens_must_be_visible_ascii_and_errors_never_show_them() {
        assert!(token("AbC-123_xyz==").is_ok());
        for (bad, what) in [
            ("SECRET\nPART", "line break"),
            ("SECRET\rPART", "line break"),
            ("SECRET PART", "space"),
            ("SECRET\tPART", "control character"),
            ("SECRET\u{7f}PART", "control character"),
            ("SECRET\u{1}PART", "control character"),
            ("SECRET\u{e9}PART", "non-ASCII"),
            ("SECRET\u{a0}PART", "non-ASCII"),
        ] {
            let e = token(bad).unwrap_err();
            assert!(e.contains(what), "{bad:?}: {e}");
            assert!(e.contains("character 7 of 11"), "{bad:?}: {e}");
            assert!(!e.contains("SECRET") && !e.contains("PART"), "{e}");
        }
    }
}
