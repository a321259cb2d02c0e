//! Pipeline progress and the systemd watchdog.
//!
//! "Progress" means: each long-lived stage loop of the pipeline — the batcher thread and the
//! sender task — went round recently. Each loop calls [`Progress::beat`] every iteration, and
//! wakes at least every [`BEAT_EVERY`] when idle, and from inside the waits it may legitimately
//! sit in for long (a full memory gate, a full spool with `when_full = "block"`, all
//! `max_in_flight` slots busy with retries): so a stage that is merely waiting for a slow or
//! failing server keeps beating, and one that is deadlocked, spinning inside one iteration or
//! stuck in a syscall (a hung disk under the spool) stops.
//!
//! `WATCHDOG=1` is sent every `WATCHDOG_USEC / 2` only while no stage is older than the stall
//! limit (`max(WATCHDOG_USEC, MIN_STALL)`); otherwise the pings are withheld and systemd,
//! after `WatchdogSec`, kills and restarts the service (`Restart=on-failure`). The decision is
//! the pure [`verdict`]; the loop around it is [`run_pinger`].
//!
//! Not progress: the server accepting data. An outage is reported by `/health`, not by a
//! restart, which would not help.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sd_notify::Notifier;

/// Longest a stage loop sleeps before going round again (and beating) when idle.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// A stage is stalled only after at least this long without a beat, however short
/// `WatchdogSec` is: a few missed beats on a loaded machine are not a wedge.
pub const MIN_STALL: Duration = Duration::from_secs(5);

/// The pipeline stages whose loops report progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Batcher,
    Sender,
}

impl Stage {
    pub const ALL: [Stage; 2] = [Stage::Batcher, Stage::Sender];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Batcher => "batcher",
            Stage::Sender => "sender",
        }
    }
}

/// When each stage last went round, as milliseconds since `epoch`. Lock-free: a beat is one
/// relaxed store.
#[derive(Debug)]
pub struct Progress {
    epoch: Instant,
    beats: [AtomicU64; 2],
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new(Instant::now())
    }
}

impl Progress {
    /// Every stage counts as having beaten at `epoch`.
    pub fn new(epoch: Instant) -> Self {
        Progress {
            epoch,
            beats: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    pub fn beat(&self, stage: Stage) {
        self.beat_at(stage, Instant::now());
    }

    pub fn beat_at(&self, stage: Stage, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.beats[stage as usize].fetch_max(ms, Relaxed);
    }

    /// How long ago each stage last beat, as seen at `now`.
    pub fn ages(&self, now: Instant) -> [(Stage, Duration); 2] {
        let since = now.saturating_duration_since(self.epoch).as_millis() as u64;
        Stage::ALL.map(|s| {
            let last = self.beats[s as usize].load(Relaxed);
            (s, Duration::from_millis(since.saturating_sub(last)))
        })
    }

    /// The stage that has gone longest without a beat, if that is longer than `limit`.
    pub fn stalled(&self, now: Instant, limit: Duration) -> Option<(Stage, Duration)> {
        match verdict(&self.ages(now), limit) {
            Verdict::Ping => None,
            Verdict::Withhold { stage, age } => Some((stage, age)),
        }
    }
}

/// What the watchdog loop should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ping,
    /// `stage` has not gone round for `age` (the oldest stage, if several are stalled).
    Withhold {
        stage: Stage,
        age: Duration,
    },
}

/// Pure: ping only while every stage beat within `limit`.
pub fn verdict(ages: &[(Stage, Duration)], limit: Duration) -> Verdict {
    match ages.iter().max_by_key(|(_, age)| *age) {
        Some(&(stage, age)) if age > limit => Verdict::Withhold { stage, age },
        _ => Verdict::Ping,
    }
}

/// The stall limit for a given watchdog interval.
pub fn stall_limit(watchdog: Duration) -> Duration {
    watchdog.max(MIN_STALL)
}

/// Sends `WATCHDOG=1` every `interval / 2` while the pipeline makes progress. Runs until the
/// task is aborted (at shutdown: systemd stops enforcing the watchdog once `STOPPING=1` is
/// sent, and `TimeoutStopSec` bounds the drain instead).
pub async fn run_pinger(notifier: Arc<Notifier>, interval: Duration, progress: Arc<Progress>) {
    let limit = stall_limit(interval);
    let mut tick = tokio::time::interval((interval / 2).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut withholding = false;
    loop {
        tick.tick().await;
        match verdict(&progress.ages(Instant::now()), limit) {
            Verdict::Ping => {
                if withholding {
                    tracing::warn!("the pipeline makes progress again; watchdog pings resume");
                    withholding = false;
                }
                notifier.notify("WATCHDOG=1");
            }
            Verdict::Withhold { stage, age } => {
                if !withholding {
                    tracing::error!(
                        stage = stage.name(),
                        stalled_for_ms = age.as_millis() as u64,
                        "the {} has made no progress for {age:?}; withholding watchdog pings so systemd restarts lineship (undelivered data is in the spool or will be re-read)",
                        stage.name()
                    );
                    withholding = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    #[test]
    fn pings_while_every_stage_beats() {
        let t0 = Instant::now();
        let p = Progress::new(t0);
        assert_eq!(verdict(&p.ages(t0), LIMIT), Verdict::Ping);
        for s in 1..=60 {
            let now = t0 + Duration::from_secs(s);
            p.beat_at(Stage::Batcher, now);
            p.beat_at(Stage::Sender, now);
            assert_eq!(verdict(&p.ages(now), LIMIT), Verdict::Ping);
        }
    }

    #[test]
    fn a_stage_that_stops_beating_stops_the_pings_and_is_named() {
        let t0 = Instant::now();
        let p = Progress::new(t0);
        // The sender keeps going; the batcher wedges after 3 s.
        p.beat_at(Stage::Batcher, t0 + Duration::from_secs(3));
        for s in 4..=13 {
            p.beat_at(Stage::Sender, t0 + Duration::from_secs(s));
        }
        let at = t0 + Duration::from_secs(13);
        assert_eq!(
            verdict(&p.ages(at), LIMIT),
            Verdict::Ping,
            "10 s is not yet over the limit"
        );
        let at = t0 + Duration::from_millis(13_001);
        assert_eq!(
            verdict(&p.ages(at), LIMIT),
            Verdict::Withhold {
                stage: Stage::Batcher,
                age: Duration::from_millis(10_001)
            }
        );
        assert_eq!(
            p.stalled(at, LIMIT),
            Some((Stage::Batcher, Duration::from_millis(10_001)))
        );
        // It recovers: pings resume.
        p.beat_at(Stage::Batcher, at);
        assert_eq!(verdict(&p.ages(at), LIMIT), Verdict::Ping);
    }

    #[test]
    fn the_oldest_stalled_stage_is_reported() {
        let t0 = Instant::now();
        let p = Progress::new(t0);
        p.beat_at(Stage::Batcher, t0 + Duration::from_secs(5));
        let at = t0 + Duration::from_secs(30);
        assert_eq!(
            verdict(&p.ages(at), LIMIT),
            Verdict::Withhold {
                stage: Stage::Sender,
                age: Duration::from_secs(30)
            }
        );
    }

    #[test]
    fn beats_never_go_backwards() {
        let t0 = Instant::now();
        let p = Progress::new(t0);
        p.beat_at(Stage::Sender, t0 + Duration::from_secs(20));
        // A late store from a thread that read the clock earlier must not age the stage.
        p.beat_at(Stage::Sender, t0 + Duration::from_secs(2));
        let ages = p.ages(t0 + Duration::from_secs(21));
        assert_eq!(ages[1], (Stage::Sender, Duration::from_secs(1)));
    }

    #[test]
    fn stall_limit_is_never_shorter_than_a_few_beats() {
        assert_eq!(stall_limit(Duration::from_millis(200)), MIN_STALL);
        assert_eq!(
            stall_limit(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert!(MIN_STALL >= BEAT_EVERY * 3);
    }
}
