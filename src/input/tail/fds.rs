//! The tail inputs' budget of file descriptors.
//!
//! Every followed file that is *open* holds a descriptor; the process also needs descriptors
//! for the spool, the checkpoints, the dead letters, HTTP connections, the telemetry endpoint
//! and its clients, inotify and the runtime. So each tail input keeps at most
//! `max_open_files` files open and *parks* the others: a parked file keeps its whole state
//! (offsets, outstanding acks, fingerprint) without a descriptor, and is reopened by path,
//! identity checked by (device, inode), when its turn comes.
//!
//! - [`raise_nofile`] raises the soft `RLIMIT_NOFILE` to the hard limit at startup, and
//!   [`budgets`] gives each input a default under it: the soft limit minus [`reserve`],
//!   shared evenly.
//! - [`plan`] (pure) decides which open files to park so that waiting files get a turn:
//!   idle ones first (read to their end), then those open for at least a turn; rotated files
//!   (orphans) are never parked, because their path no longer leads to them.
//! - [`Slots`] is the current cap: `max_open_files`, lowered for a while after the process
//!   ran out of descriptors anyway (EMFILE/ENFILE, [`is_exhaustion`]), with a pause before
//!   the next open, so the tailer neither spins nor takes a failed open for a rotation.

use std::time::{Duration, Instant};

use super::checkpoint::FileKey;

/// Descriptors kept free for everything but tailed files: a quarter of the soft limit, at
/// least 64 and at most 1,024.
pub fn reserve(soft: u64) -> u64 {
    (soft / 4).clamp(64, 1024)
}

/// The limit on open files: `u64::MAX` stands for unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nofile {
    pub soft: u64,
    pub hard: u64,
}

/// The current `RLIMIT_NOFILE`.
pub fn nofile() -> Nofile {
    let r = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    Nofile {
        soft: r.current.unwrap_or(u64::MAX),
        hard: r.maximum.unwrap_or(u64::MAX),
    }
}

/// Raises the soft limit on open files to the hard limit (systemd's default soft limit is
/// 1,024, its hard limit 524,288) and returns the limit in force.
pub fn raise_nofile() -> Nofile {
    let now = nofile();
    if now.soft < now.hard {
        let new = rustix::process::Rlimit {
            current: (now.hard != u64::MAX).then_some(now.hard),
            maximum: (now.hard != u64::MAX).then_some(now.hard),
        };
        if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Nofile, new) {
            tracing::debug!(soft = now.soft, hard = now.hard, error = %e, "cannot raise the open file limit");
        }
    }
    nofile()
}

/// Each tail input's `max_open_files`: the configured value, or an even share of the soft
/// limit minus [`reserve`] (at least 1). Warns when the inputs together may open more than
/// the limit leaves them.
pub fn budgets(configured: &[Option<usize>], limit: Nofile) -> Vec<usize> {
    let usable = limit.soft.saturating_sub(reserve(limit.soft));
    let share = (usable / configured.len().max(1) as u64).clamp(1, usize::MAX as u64) as usize;
    let out: Vec<usize> = configured.iter().map(|c| c.unwrap_or(share)).collect();
    let total: u64 = out.iter().map(|&n| n as u64).sum();
    if total > usable {
        tracing::warn!(
            max_open_files = total,
            nofile_soft = limit.soft,
            reserve = reserve(limit.soft),
            "the tail inputs may keep more files open than the open-file limit leaves them (the soft limit minus a reserve for the spool, checkpoints, sockets and the telemetry endpoint); when descriptors run out lineship follows fewer files at once; raise LimitNOFILE= in the systemd unit (or ulimit -n), or lower max_open_files"
        );
    }
    out
}

/// The process or the system ran out of file descriptors: not a fact about the file.
pub fn is_exhaustion(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// How long a busy file stays open before it may be parked for a file that waits.
pub const TURN: Duration = Duration::from_secs(1);
/// After running out of descriptors: no open is tried for this long.
pub const PAUSE: Duration = Duration::from_secs(1);
/// After running out of descriptors: the cap stays lowered for this long.
pub const LOWERED_FOR: Duration = Duration::from_secs(60);

/// An open file, as [`plan`] sees it.
#[derive(Clone, Copy, Debug)]
pub struct Open {
    pub key: FileKey,
    /// Rotated or deleted: only its descriptor leads to it.
    pub pinned: bool,
    /// The last read found nothing more to read.
    pub idle: bool,
    pub last_data: Instant,
    pub opened_at: Instant,
}

/// Which open files to park, given `waiting` files that want a descriptor and room for
/// `cap` open files: first enough to get under the cap (any unpinned file), then one for
/// each waiting file that has no room, among the idle files (longest without new data
/// first) and the files open for at least [`TURN`] (longest open first).
pub fn plan(open: &[Open], waiting: usize, cap: usize, now: Instant) -> Vec<FileKey> {
    let over = open.len().saturating_sub(cap);
    let short = waiting.saturating_sub(cap.saturating_sub(open.len()));
    if over == 0 && short == 0 {
        return Vec::new();
    }
    let mut order: Vec<&Open> = open.iter().filter(|o| !o.pinned).collect();
    order.sort_by_key(|o| {
        (
            !o.idle,
            if o.idle { o.last_data } else { o.opened_at },
            o.key,
        )
    });
    let mut out: Vec<FileKey> = order.iter().take(over).map(|o| o.key).collect();
    out.extend(
        order
            .iter()
            .skip(over)
            .filter(|o| o.idle || now.saturating_duration_since(o.opened_at) >= TURN)
            .take(short)
            .map(|o| o.key),
    );
    out
}

/// The cap on open files of one input, lowered for a while after descriptors ran out.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    lowered: Option<(usize, Instant)>,
    pause_until: Option<Instant>,
}

impl Slots {
    pub fn new(max: usize) -> Self {
        Slots {
            max: max.max(1),
            lowered: None,
            pause_until: None,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// How many files may be open now.
    pub fn cap(&mut self, now: Instant) -> usize {
        match self.lowered {
            Some((_, since)) if now.saturating_duration_since(since) >= LOWERED_FOR => {
                self.lowered = None;
                self.max
            }
            Some((cap, _)) => cap,
            None => self.max,
        }
    }

    /// Whether an open may be tried now.
    pub fn may_open(&self, now: Instant) -> bool {
        self.pause_until.is_none_or(|t| now >= t)
    }

    /// An open failed for want of descriptors while `open` files were open: lower the cap
    /// below that (freeing some for the rest of the process) and pause opening.
    pub fn exhausted(&mut self, open: usize, now: Instant) {
        let cap = open.saturating_sub((open / 8).max(8)).max(1);
        self.lowered = Some((cap.min(self.max), now));
        self.pause_until = Some(now + PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ino: u64) -> FileKey {
        FileKey { dev: 1, ino }
    }

    #[test]
    fn defaults_leave_a_reserve_and_share_the_rest() {
        let l = |soft| Nofile { soft, hard: soft };
        assert_eq!(reserve(256), 64);
        assert_eq!(reserve(1024), 256);
        assert_eq!(reserve(1 << 20), 1024);
        assert_eq!(budgets(&[None], l(256)), vec![192]);
        assert_eq!(budgets(&[None, Some(10)], l(1024)), vec![384, 10]);
        assert_eq!(budgets(&[None], l(32)), vec![1], "always at least one");
        assert!(budgets(&[None], l(u64::MAX))[0] > 1 << 40, "unlimited");
    }

    #[test]
    fn idle_files_make_room_first_and_busy_ones_after_a_turn() {
        let t0 = Instant::now();
        let open = |ino, pinned, idle, opened: u64| Open {
            key: key(ino),
            pinned,
            idle,
            last_data: t0 + Duration::from_millis(ino),
            opened_at: t0 + Duration::from_millis(opened),
        };
        let files = [
            open(1, false, false, 0),
            open(2, true, true, 0),
            open(3, false, true, 500),
            open(4, false, true, 400),
        ];
        // Room for everyone: nothing to do.
        assert!(plan(&files, 2, 6, t0).is_empty());
        // Two waiting, full: the idle unpinned ones go, longest without data first.
        assert_eq!(plan(&files, 2, 4, t0), vec![key(3), key(4)]);
        // Three waiting: the busy one only once it has had its turn.
        assert_eq!(plan(&files, 3, 4, t0), vec![key(3), key(4)]);
        assert_eq!(plan(&files, 3, 4, t0 + TURN), vec![key(3), key(4), key(1)]);
        // Over the cap: parked even before its turn; the pinned orphan never.
        assert_eq!(plan(&files, 0, 1, t0), vec![key(3), key(4), key(1)]);
    }

    #[test]
    fn running_out_lowers_the_cap_and_pauses_for_a_while() {
        let t0 = Instant::now();
        let mut s = Slots::new(100);
        assert_eq!(s.cap(t0), 100);
        s.exhausted(80, t0);
        assert_eq!(s.cap(t0), 70);
        assert!(!s.may_open(t0));
        assert!(s.may_open(t0 + PAUSE));
        assert_eq!(s.cap(t0 + LOWERED_FOR / 2), 70);
        assert_eq!(s.cap(t0 + LOWERED_FOR), 100);
        s.exhausted(3, t0);
        assert_eq!(s.cap(t0), 1, "never below one");
    }

    #[test]
    fn emfile_and_enfile_are_exhaustion_others_are_not() {
        assert!(is_exhaustion(&std::io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(is_exhaustion(&std::io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!is_exhaustion(&std::io::Error::from_raw_os_error(
            libc::ENOENT
        )));
        assert!(!is_exhaustion(&std::io::Error::other("x")));
    }
}
