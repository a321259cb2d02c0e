//! Pure retry policy: what a status means, how long to back off, `Retry-After` parsing, and the
//! per-output backoff gate. Takes statuses, `Instant`s and random numbers; no I/O, no clocks.

use std::time::{Duration, Instant, SystemTime};

/// What to do with a batch after the server answered (the status table in the README, "How
/// lineship treats the server's answers").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Delivered,
    /// 400: the server wrote nothing; bisect down to single lines.
    Bisect,
    /// 413: too large; split in halves.
    Split,
    /// 422: partial write; the server kept the good points. Do not retry.
    Partial,
    /// 401/403/404 and redirects (3xx): configuration or permission problem. Keep the data,
    /// retry slowly.
    Misconfigured,
    /// 408, 429, 5xx (but 501) and transport errors: back off and retry.
    Retry,
    /// Other 4xx and 501: dead-letter the batch.
    Reject,
}

pub fn classify(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        400 => Verdict::Bisect,
        413 => Verdict::Split,
        422 => Verdict::Partial,
        401 | 403 | 404 => Verdict::Misconfigured,
        // Redirects are not followed (a redirected POST can lose its body, and a moved server
        // is the operator's to confirm): like a 404, `output.url` needs fixing, and the data is
        // kept until it is.
        300..=399 => Verdict::Misconfigured,
        408 | 429 => Verdict::Retry,
        501 => Verdict::Reject,
        500..=599 => Verdict::Retry,
        // 1xx should not reach us (hyper consumes them); treat one like server trouble rather
        // than losing the batch.
        100..=199 => Verdict::Retry,
        _ => Verdict::Reject,
    }
}

/// What the operator reads for a [`Verdict::Misconfigured`] answer: the cause, what to fix,
/// and that the data is kept. `location` is the (sanitized) target of a redirect.
pub fn misconfig_cause(
    status: u16,
    message: &str,
    location: Option<&str>,
    retry_every: Duration,
) -> String {
    let what = match status {
        401 => "the server rejected the token (401 Unauthorized): check output.token, output.token_file or LINESHIP_TOKEN".to_owned(),
        403 => "the token may not write to this bucket (403 Forbidden): grant it write permission".to_owned(),
        300..=399 => format!(
            "the server redirects writes ({status}) to {}: lineship does not follow redirects; set output.url to the address the server now answers at (without /api/v2/write)",
            location.unwrap_or("nowhere (no Location header)")
        ),
        _ => "org, bucket or write path not found (404): check output.org, output.bucket and the path in output.url".to_owned(),
    };
    let mut cause = format!("{what}; data is kept and retried every {retry_every:?}");
    if !message.is_empty() {
        cause.push_str("; server said: ");
        cause.push_str(message);
    }
    cause
}

/// Exponential backoff with full jitter: uniform in `[0, min(max, initial * 2^attempt)]`.
/// `unit` is a random number in `[0, 1)`.
pub fn full_jitter(initial: Duration, max: Duration, attempt: u32, unit: f64) -> Duration {
    let ceiling = initial
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// Parses `Retry-After`: delay-seconds or an HTTP date. Dates in the past mean "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Reads `dropped=N` from a 422 message (InfluxDB: "partial write: ... dropped=3").
pub fn parse_dropped(message: &str) -> Option<u64> {
    let i = message.find("dropped=")?;
    let digits: String = message[i + 8..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// One backoff gate per output: when the server says wait, every request waits.
///
/// Failures of requests that started before the gate last moved do not grow the backoff again,
/// so `max_in_flight` requests failing together count as one failure.
#[derive(Debug)]
pub struct Gate {
    open_at: Instant,
    failures: u32,
    epoch: u64,
}

impl Gate {
    pub fn new(now: Instant) -> Self {
        Gate {
            open_at: now,
            failures: 0,
            epoch: 0,
        }
    }

    /// When requests may go again.
    pub fn open_at(&self) -> Instant {
        self.open_at
    }

    /// Token to pass back to [`Gate::failed`]; identifies the gate state a request started in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Records a failed request that started at `epoch`. `wait` is an explicit delay (capped
    /// `Retry-After`, or the slow retry of a misconfiguration); otherwise the jittered
    /// exponential backoff applies. Returns the delay from `now` until the gate opens.
    pub fn failed(
        &mut self,
        now: Instant,
        epoch: u64,
        wait: Option<Duration>,
        policy: (Duration, Duration),
        unit: f64,
    ) -> Duration {
        if epoch == self.epoch {
            let delay = match wait {
                Some(w) => w,
                None => full_jitter(policy.0, policy.1, self.failures, unit),
            };
            self.failures = self.failures.saturating_add(1);
            self.epoch += 1;
            self.open_at = self.open_at.max(crate::clock::after(now, delay));
        } else if let Some(w) = wait {
            // A later explicit instruction from the server still counts.
            self.open_at = self.open_at.max(crate::clock::after(now, w));
        }
        self.open_at.saturating_duration_since(now)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn status_table() {
        use Verdict::*;
        for (s, v) in [
            (200, Delivered),
            (204, Delivered),
            (400, Bisect),
            (413, Split),
            (422, Partial),
            (401, Misconfigured),
            (403, Misconfigured),
            (404, Misconfigured),
            (408, Retry),
            (429, Retry),
            (500, Retry),
            (502, Retry),
            (503, Retry),
            (504, Retry),
            (501, Reject),
            (405, Reject),
            (409, Reject),
            (301, Misconfigured),
            (302, Misconfigured),
            (307, Misconfigured),
            (308, Misconfigured),
            (100, Retry),
        ] {
            assert_eq!(classify(s), v, "status {s}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn dropped_count() {
        assert_eq!(
            parse_dropped("partial write: field type conflict dropped=3"),
            Some(3)
        );
        assert_eq!(parse_dropped("nothing"), None);
    }

    #[test]
    fn gate_counts_concurrent_failures_once() {
        let t = Instant::now();
        let p = (Duration::from_millis(100), Duration::from_secs(30));
        let mut g = Gate::new(t);
        let e = g.epoch();
        g.failed(t, e, None, p, 1.0);
        g.failed(t, e, None, p, 1.0);
        assert_eq!(g.failures(), 1);
        let d = g.failed(t, g.epoch(), None, p, 1.0);
        assert_eq!(d, Duration::from_millis(200));
        g.succeeded();
        assert_eq!(g.failures(), 0);
        let d = g.failed(t, g.epoch(), Some(Duration::from_secs(5)), p, 0.5);
        assert_eq!(d, Duration::from_secs(5));
    }

    #[test]
    fn gate_survives_a_wait_too_long_for_an_instant() {
        let t = Instant::now();
        let p = (Duration::from_millis(100), Duration::MAX);
        let mut g = Gate::new(t);
        let d = g.failed(t, g.epoch(), Some(Duration::MAX), p, 1.0);
        assert!(d > Duration::from_secs(50 * 365 * 86400), "{d:?}");
        let d = g.failed(t, 0, Some(Duration::MAX), p, 1.0);
        assert!(d > Duration::from_secs(50 * 365 * 86400), "{d:?}");
    }

    proptest! {
        #[test]
        fn jitter_stays_within_bounds(attempt in 0u32..100, unit in 0.0f64..1.0) {
            let (i, m) = (Duration::from_millis(100), Duration::from_secs(30));
            let d = full_jitter(i, m, attempt, unit);
            prop_assert!(d <= m);
            let ceiling = if attempt < 20 { (i * 2u32.pow(attempt)).min(m) } else { m };
            prop_assert!(d <= ceiling);
        }
    }
}
