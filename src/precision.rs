//! Timestamp precision of a destination (`precision = "ns" | "us" | "ms" | "s"`): its
//! query-parameter spelling, its unit in nanoseconds, and the stamp for a given time.
//!
//! The validator judges timestamp ranges in these units, the batcher groups by them and the
//! spool records them, so this type stands on its own; `crate::line::Precision` re-exports it.
//!
//! Invariant: `timestamp` rounds towards the past and saturates at the ends of `i64`, so a
//! stamp is never later than the time it stands for.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Timestamp precision of a destination. Query-param spelling: "ns", "us", "ms", "s".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    #[default]
    Ns,
    Us,
    Ms,
    S,
}

impl Precision {
    /// The spelling used in the `precision=` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Ns => "ns",
            Precision::Us => "us",
            Precision::Ms => "ms",
            Precision::S => "s",
        }
    }

    /// How many nanoseconds one unit of this precision is.
    pub fn nanos_per_unit(self) -> i64 {
        match self {
            Precision::Ns => 1,
            Precision::Us => 1_000,
            Precision::Ms => 1_000_000,
            Precision::S => 1_000_000_000,
        }
    }

    /// Now (or any SystemTime) in this precision's units since the Unix epoch.
    ///
    /// Rounds towards the past (floor), so a stamp never lies in the future of the arrival
    /// time; saturates at the ends of `i64`.
    pub fn timestamp(self, t: SystemTime) -> i64 {
        let nanos: i128 = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        let units = nanos.div_euclid(self.nanos_per_unit() as i128);
        units.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ns" => Ok(Precision::Ns),
            // Both the micro sign (U+00B5) and the Greek mu (U+03BC) are in use.
            "us" | "\u{b5}s" | "\u{3bc}s" => Ok(Precision::Us),
            "ms" => Ok(Precision::Ms),
            "s" => Ok(Precision::S),
            other => Err(format!(
                "unknown timestamp precision {other:?}; expected one of \"ns\", \"us\" (or \"µs\"), \"ms\", \"s\""
            )),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_spellings() {
        for (s, p, npu) in [
            ("ns", Precision::Ns, 1),
            ("us", Precision::Us, 1_000),
            ("ms", Precision::Ms, 1_000_000),
            ("s", Precision::S, 1_000_000_000),
        ] {
            assert_eq!(s.parse::<Precision>(), Ok(p));
            assert_eq!(p.as_str(), s);
            assert_eq!(p.to_string(), s);
            assert_eq!(p.nanos_per_unit(), npu);
        }
        assert_eq!("µs".parse::<Precision>(), Ok(Precision::Us));
        assert_eq!(Precision::default(), Precision::Ns);
        let e = "h".parse::<Precision>().unwrap_err();
        for accepted in ["\"ns\"", "\"us\"", "\"µs\"", "\"ms\"", "\"s\""] {
            assert!(e.contains(accepted), "{e}");
        }
    }

    #[test]
    fn precision_timestamp() {
        use std::time::Duration;
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(Precision::Ns.timestamp(t), 1_700_000_000_123_456_789);
        assert_eq!(Precision::Us.timestamp(t), 1_700_000_000_123_456);
        assert_eq!(Precision::Ms.timestamp(t), 1_700_000_000_123);
        assert_eq!(Precision::S.timestamp(t), 1_700_000_000);
        // Before the epoch, stamps round towards the past.
        let before = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(Precision::S.timestamp(before), -2);
        assert_eq!(Precision::Ms.timestamp(before), -1500);
        let now = Precision::Ns.timestamp(SystemTime::now());
        assert!(now > 1_600_000_000_000_000_000);
    }
}
