//! The servers (URLs) of one output and which one a write goes to.
//!
//! Each [`Server`] has its own backoff gate, health and requests in flight. A failed write
//! (connect error, timeout, 5xx, 429, or a 401/403/404 that says the URL is misconfigured)
//! takes its server out of rotation (`down`) and backs it off; the write is retried at once on
//! another server that is up. A down server comes back when a `GET /ping` answers it after its
//! backoff (the probe in `health.rs`), or when a write to it succeeds. While every server is
//! down, a write waits for the first gate to open and goes there: with one URL, exactly the
//! single-server behaviour (the write is the probe).
//!
//! [`pick`] is the pure choice among the servers that are up.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::retry::Gate;
use crate::config::{Balance, ServerUrl};
use crate::telemetry::ServerStats;

/// One server of an output.
pub(super) struct Server {
    pub url: ServerUrl,
    pub stats: Arc<ServerStats>,
    pub gate: Mutex<Gate>,
    /// Write requests to it under way.
    pub in_flight: AtomicUsize,
    /// When the last write request to it ended (any outcome): the idle probe pings only
    /// servers no write has been to for a while.
    pub last_write: Mutex<Option<Instant>>,
    /// Wakes its probe loop when it is taken out of rotation.
    pub went_down: tokio::sync::Notify,
}

impl Server {
    pub fn new(url: ServerUrl, stats: Arc<ServerStats>) -> Self {
        Server {
            url,
            stats,
            gate: Mutex::new(Gate::new(Instant::now())),
            in_flight: AtomicUsize::new(0),
            last_write: Mutex::new(None),
            went_down: tokio::sync::Notify::new(),
        }
    }

    pub fn is_down(&self) -> bool {
        self.stats.down.load(Relaxed)
    }

    pub fn set_down(&self, down: bool) {
        let was = self.stats.down.swap(down, Relaxed);
        if down && !was {
            self.went_down.notify_one();
        }
    }

    pub fn open_at(&self) -> Instant {
        self.gate.lock().unwrap().open_at()
    }
}

/// Which server, of those with `up[i]`, the next try goes to: failover takes the first in
/// order; round_robin the one with the fewest requests in flight, ties broken by `turn` (a
/// counter the caller advances per pick) so equal servers take turns. `None` when none is up.
pub fn pick(balance: Balance, up: &[bool], in_flight: &[usize], turn: usize) -> Option<usize> {
    let n = up.len();
    match balance {
        Balance::Failover | Balance::Shard => up.iter().position(|&u| u),
        Balance::RoundRobin => (0..n)
            .map(|k| (turn + k) % n)
            .filter(|&i| up[i])
            .min_by_key(|&i| in_flight[i]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn failover_takes_the_first_server_that_is_up() {
        let f = |up: &[bool]| pick(Balance::Failover, up, &vec![0; up.len()], 7);
        assert_eq!(f(&[true, true, true]), Some(0));
        assert_eq!(f(&[false, true, true]), Some(1));
        assert_eq!(f(&[false, false, true]), Some(2));
        assert_eq!(f(&[false, false, false]), None);
    }

    #[test]
    fn round_robin_prefers_fewest_in_flight_then_takes_turns() {
        let rr = |up: &[bool], fl: &[usize], t| pick(Balance::RoundRobin, up, fl, t);
        assert_eq!(rr(&[true, true, true], &[2, 0, 1], 0), Some(1));
        assert_eq!(rr(&[true, false, true], &[2, 0, 1], 0), Some(2));
        let turns: Vec<_> = (0..6)
            .map(|t| rr(&[true, true, true], &[0, 0, 0], t).unwrap())
            .collect();
        assert_eq!(turns, [0, 1, 2, 0, 1, 2]);
        assert_eq!(rr(&[false, false], &[0, 0], 3), None);
    }

    proptest! {
        #[test]
        fn a_pick_is_always_up_and_round_robin_is_never_busier_than_another(
            up in proptest::collection::vec(any::<bool>(), 1..8),
            fl in proptest::collection::vec(0usize..5, 8),
            turn in 0usize..100,
        ) {
            let fl = &fl[..up.len()];
            for b in [Balance::Failover, Balance::RoundRobin] {
                match pick(b, &up, fl, turn) {
                    Some(i) => prop_assert!(up[i]),
                    None => prop_assert!(up.iter().all(|u| !u)),
                }
            }
            if let Some(i) = pick(Balance::RoundRobin, &up, fl, turn) {
                prop_assert!((0..up.len()).filter(|&j| up[j]).all(|j| fl[i] <= fl[j]));
            }
        }
    }
}
