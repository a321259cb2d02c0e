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
//! A loop with nothing to do may park instead ([`Progress::park`]): while every running loop
//! of a stage is parked (waiting for work, not inside any wait that could wedge), the stage
//! counts as fresh, so an idle agent need not wake just to beat. Leaving the park beats.
//!
//! `WATCHDOG=1` is sent every `WATCHDOG_USEC / 2` only while no stage is older than the stall
//! limit (`max(WATCHDOG_USEC, MIN_STALL)`); otherwise the pings are withheld and systemd,
//! after `WatchdogSec`, kills and restarts the service (`Restart=on-failure`). The decision is
//! the pure [`verdict`]; the loop around it is [`run_pinger`].
//!
//! Not progress: the server accepting data. An outage is reported by `/health`, not by a
//! restart, which would not help.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sd_notify::Notifier;

/// Longest a stage loop sleeps before going round again (and beating) when idle.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// Longest a stage loop with nothing open sleeps before beating (the batcher with no batch
/// open): idle, it wakes every 2 s rather than every second.
pub const IDLE_BEAT_EVERY: Duration = Duration::from_secs(2);

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
    /// Loops of each stage that are running ([`Progress::running`]), and of those, parked.
    running: [AtomicU32; 2],
    parked: [AtomicU32; 2],
}

/// A loop of a stage, counted while this lives (see [`Progress::running`]).
#[must_use]
pub struct Running {
    progress: Arc<Progress>,
    stage: Stage,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.progress.running[self.stage as usize].fetch_sub(1, SeqCst);
    }
}

/// A parked loop (see [`Progress::park`]); dropping it beats and unparks.
#[must_use]
pub struct Parked<'a> {
    progress: &'a Progress,
    stage: Stage,
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        // Beat first: the stage must not look stale in between.
        self.progress.beat(self.stage);
        self.progress.parked[self.stage as usize].fetch_sub(1, SeqCst);
    }
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
            running: [AtomicU32::new(0), AtomicU32::new(0)],
            parked: [AtomicU32::new(0), AtomicU32::new(0)],
        }
    }

    /// Counts a loop of `stage` as running until the guard is dropped. Only a stage whose
    /// running loops are all parked is exempt from beating.
    pub fn running(self: &Arc<Self>, stage: Stage) -> Running {
        self.beat(stage);
        self.running[stage as usize].fetch_add(1, SeqCst);
        Running {
            progress: self.clone(),
            stage,
        }
    }

    /// Parks a running loop of `stage` while it waits for work with nothing else to watch
    /// (call it only from a loop that holds a [`Running`]).
    pub fn park(&self, stage: Stage) -> Parked<'_> {
        self.parked[stage as usize].fetch_add(1, SeqCst);
        Parked {
            progress: self,
            stage,
        }
    }

    /// Whether every running loop of `stage` is parked (and there is one).
    fn all_parked(&self, stage: Stage) -> bool {
        let running = self.running[stage as usize].load(SeqCst);
        running > 0 && self.parked[stage as usize].load(SeqCst) >= running
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
            if self.all_parked(s) {
                return (s, Duration::ZERO);
            }
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
    fn a_stage_whose_loops_are_all_parked_is_not_stalled() {
        let t0 = Instant::now();
        let p = Arc::new(Progress::new(t0));
        let late = t0 + Duration::from_secs(60);
        let one = p.running(Stage::Sender);
        let two = p.running(Stage::Sender);
        {
            let _a = p.park(Stage::Sender);
            // One loop of two parked: the other must still beat.
            assert_eq!(p.stalled(late, LIMIT).map(|s| s.0), Some(Stage::Sender));
            let _b = p.park(Stage::Sender);
            p.beat_at(Stage::Batcher, late);
            assert_eq!(p.stalled(late, LIMIT), None);
        }
        // Leaving the park beat (at the real clock, after t0), so the stage is fresh...
        assert!(p.ages(Instant::now())[1].1 < LIMIT);
        // ...and ages again from there.
        assert!(p.stalled(Instant::now() + LIMIT * 2, LIMIT).is_some());
        drop((one, two));
        // No loop running: parking has nothing to exempt.
        let _p = p.park(Stage::Sender);
        assert!(p.stalled(Instant::now() + LIMIT * 2, LIMIT).is_some());
    }

    #[test]
    fn stall_limit_is_never_shorter_than_a_few_beats() {
        assert_eq!(stall_limit(Duration::from_millis(200)), MIN_STALL);
        assert_eq!(
            stall_limit(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert!(MIN_STALL >= BEAT_EVERY * 3);
        assert!(MIN_STALL >= IDLE_BEAT_EVERY * 2);
    }
}
