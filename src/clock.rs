//! Deadline arithmetic that cannot panic. `Instant + Duration` panics when the sum overflows;
//! the config limits keep configured durations small, but a deadline built from a duration
//! (a configured one, or a server's `Retry-After`) must never take the daemon down with it,
//! so [`after`] saturates at an instant a century away instead.

use std::time::{Duration, Instant};

/// So far away that nothing waiting for it ever sees it come.
const FAR: Duration = Duration::from_secs(100 * 365 * 86400);

/// `t + d`, or a century after `t` when that overflows (or, where even that overflows, `t`).
pub fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).or_else(|| t.checked_add(FAR)).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturates_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        let far = after(now, Duration::MAX);
        assert!(far >= now + FAR, "{:?}", far.duration_since(now));
    }
}
