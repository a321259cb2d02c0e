//! The tail input's state machine, free of threads and timers: it is driven by
//! [`Tailer::step`] with the current time, which makes it testable against a model.
//!
//! A step applies the acknowledgements that arrived, rescans the globs when asked to, reads
//! at most one chunk from each file that may have data, closes rotated or deleted files that
//! are drained, delivered and idle, and writes the checkpoint when it is due.
//!
//! File life cycle: found by a glob → followed (`orphan_since = None`) → its path stops
//! naming it (renamed away: a rotation; or deleted) → orphan: still read through the open
//! descriptor, including lines written after the rename → closed once at its end, every
//! line acknowledged, and no new data for `orphan_grace`. A file renamed within the globs
//! stays followed under its new path. A file that shrinks, or whose first bytes change, was
//! truncated (copytruncate) and is read again from 0.
//!
//! Descriptors: at most `max_open_files` followed files are open; the others are parked
//! (`tailer/turns.rs`, `fds.rs`) and read in turn. Whether a file left its path is decided
//! by a `stat` of the path (`tailer/discovery.rs`, which finds and follows files), never by
//! a failed open or directory listing, so running out of descriptors is never a rotation.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::checkpoint::{FileKey, Store};
use super::fds::{self, Slots};
use super::file::{ReadCtx, TailFile};
use crate::batch::{Ack, Chunk};
use crate::input::text::TextFormat;
use crate::input::Intake;
use crate::reject::RateLimited;

/// Static settings of one tail input.
#[derive(Clone, Debug)]
pub struct Config {
    /// Ack routing id (`Ack::input`).
    pub input: u32,
    pub globs: Vec<String>,
    pub from_beginning: bool,
    pub max_line_bytes: usize,
    /// Caps of one chunk (kept below the batch limits so a chunk never spans two batches).
    pub chunk_lines: u32,
    pub chunk_bytes: usize,
    /// How long a rotated or deleted file must stay idle at its end before it is closed.
    pub orphan_grace: Duration,
    /// How often the checkpoint file is rewritten while offsets move.
    pub checkpoint_every: Duration,
    pub text: Option<TextFormat>,
    /// At most this many files open at once (`max_open_files`); the others wait their turn.
    pub max_open_files: usize,
}

/// Opens a file to tail (a seam for tests that simulate running out of descriptors).
pub type Opener = Box<dyn FnMut(&Path) -> std::io::Result<File> + Send>;

/// Acknowledgements handed over by the sender (any thread) to the tail thread.
#[derive(Default)]
pub struct AckInbox(Mutex<Vec<Ack>>);

impl AckInbox {
    pub fn push(&self, a: Ack) {
        self.0.lock().unwrap().push(a);
    }
    fn take(&self) -> Vec<Ack> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// The pipeline is gone: nothing more can be sent.
#[derive(Debug)]
pub struct Closed;

pub struct Tailer {
    cfg: Config,
    patterns: Vec<glob::Pattern>,
    /// Identifies this input in the checkpoint's `started` list.
    key: String,
    intake: Intake,
    store: Arc<Store>,
    inbox: Arc<AckInbox>,
    files: BTreeMap<FileKey, TailFile>,
    ids: HashMap<u64, FileKey>,
    /// Paths the globs matched at the last scan.
    paths: HashMap<PathBuf, FileKey>,
    dirty: BTreeSet<FileKey>,
    all_dirty: bool,
    rescan: bool,
    scans: u64,
    next_id: u64,
    buf: Vec<u8>,
    out: Vec<u8>,
    ckpt_dirty: bool,
    /// A file was found since the last write: write now, so that a file rotated away from
    /// the globs right after being found is still known after a crash.
    ckpt_urgent: bool,
    last_ckpt: Option<Instant>,
    warn: RateLimited,
    /// Files skipped because another input follows them (warned about once each).
    shared: HashSet<FileKey>,
    /// Renames seen by the watcher, `(from, to)`, to look at in the next step.
    renames: Vec<(PathBuf, PathBuf)>,
    /// The cap on open files.
    slots: Slots,
    /// Files with a descriptor now.
    open: usize,
    /// Parked files that want a descriptor.
    waiting: BTreeSet<FileKey>,
    /// A file had to wait for a descriptor (logged once).
    limit_hit: bool,
    limit_logged: bool,
    exhaustion_logged: bool,
    opener: Opener,
    /// After a failed checkpoint write: not again before this (unless forced).
    ckpt_retry_at: Option<Instant>,
    ckpt_failures: u32,
}

impl Tailer {
    pub fn new(
        cfg: Config,
        intake: Intake,
        store: Arc<Store>,
        inbox: Arc<AckInbox>,
    ) -> anyhow::Result<Self> {
        let mut patterns = Vec::new();
        for g in &cfg.globs {
            patterns.push(
                glob::Pattern::new(g)
                    .map_err(|e| anyhow::anyhow!("tail path {g:?} is not a valid glob: {e}"))?,
            );
        }
        store.register_patterns(cfg.input, patterns.clone());
        let mut sorted = cfg.globs.clone();
        sorted.sort();
        let buf = vec![0u8; (256 << 10).max(cfg.max_line_bytes + 2)];
        Ok(Tailer {
            key: sorted.join("\n"),
            patterns,
            intake,
            store,
            inbox,
            files: BTreeMap::new(),
            ids: HashMap::new(),
            paths: HashMap::new(),
            dirty: BTreeSet::new(),
            all_dirty: true,
            rescan: true,
            scans: 0,
            next_id: 1,
            buf,
            out: Vec::with_capacity(cfg.chunk_bytes.min(1 << 20)),
            ckpt_dirty: true,
            ckpt_urgent: false,
            last_ckpt: None,
            warn: RateLimited::new(Duration::from_secs(10)),
            shared: HashSet::new(),
            renames: Vec::new(),
            slots: Slots::new(cfg.max_open_files),
            open: 0,
            waiting: BTreeSet::new(),
            limit_hit: false,
            limit_logged: false,
            exhaustion_logged: false,
            opener: Box::new(|p| File::open(p)),
            ckpt_retry_at: None,
            ckpt_failures: 0,
            cfg,
        })
    }

    pub fn name(&self) -> &str {
        &self.intake.stats().name
    }

    /// The first scan: resumes files from the checkpoint, applies `from_beginning` on the
    /// input's first start, finds files rotated away while lineship was down, and writes the
    /// checkpoint before any line is read.
    pub fn start(&mut self, now: Instant) {
        let first = self.store.first_start(&self.key);
        self.scan(now, first && !self.cfg.from_beginning);
        self.recover_rotated(now);
        self.store.initial_done(&self.key);
        self.checkpoint(now, true);
        tracing::info!(
            input = %self.name(),
            files = self.files.len(),
            open = self.open,
            first_start = first,
            "tail input started"
        );
        self.report_limit();
    }

    pub fn request_rescan(&mut self) {
        self.rescan = true;
    }

    /// The watcher saw `from` renamed to `to` (both paths known from one inotify rename).
    pub fn renamed(&mut self, from: &Path, to: &Path) {
        self.renames.push((from.to_path_buf(), to.to_path_buf()));
        self.rescan = true;
    }

    pub fn mark_all_dirty(&mut self) {
        self.all_dirty = true;
    }

    /// A watch event named `path`.
    pub fn mark_dirty_path(&mut self, path: &Path) {
        if let Some(k) = self.paths.get(path) {
            self.dirty.insert(*k);
        }
    }

    /// Directories worth watching: where the globs start and where followed files live.
    pub fn watch_dirs(&self) -> BTreeSet<PathBuf> {
        let mut dirs: BTreeSet<PathBuf> = self.cfg.globs.iter().map(|g| glob_base(g)).collect();
        for f in self.files.values() {
            if let Some(p) = f.path.parent() {
                dirs.insert(p.to_path_buf());
            }
        }
        dirs
    }

    /// How many scans ran (the watched directories change only with a scan).
    pub fn scans(&self) -> u64 {
        self.scans
    }

    /// Files followed (open or waiting for their turn).
    pub fn files_open(&self) -> usize {
        self.files.len()
    }

    /// Files holding a descriptor.
    pub fn descriptors_open(&self) -> usize {
        self.open
    }

    /// Some file waits for its turn to be read.
    pub fn files_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Every line read so far is acknowledged.
    pub fn all_acked(&self) -> bool {
        self.files.values().all(TailFile::fully_acked)
    }

    /// One round of work. Returns whether some file has more data right now (call again
    /// without waiting). `send` hands a chunk to the pipeline, blocking while it is full, and
    /// returns false when the pipeline is gone.
    pub fn step(
        &mut self,
        now: Instant,
        send: &mut dyn FnMut(Chunk) -> bool,
    ) -> Result<bool, Closed> {
        self.apply_acks();
        if std::mem::take(&mut self.rescan) {
            self.scan(now, false);
        }
        self.follow_missed_renames(now);
        let keys: Vec<FileKey> = if std::mem::take(&mut self.all_dirty) {
            self.files.keys().copied().collect()
        } else {
            let mut k: BTreeSet<FileKey> = std::mem::take(&mut self.dirty);
            // Deleted files send no watch events: look at orphans every time.
            k.extend(
                self.files
                    .values()
                    .filter(|f| f.orphan_since.is_some())
                    .map(|f| f.key),
            );
            k.into_iter().collect()
        };
        let mut more = false;
        for key in keys {
            if !self.files.get(&key).is_some_and(TailFile::is_open) {
                self.peek(key);
            } else if self.poll(key, now, send)? {
                self.dirty.insert(key);
                more = true;
            }
        }
        more |= self.take_turns(now, send)?;
        self.report_limit();
        self.close_drained_orphans(now);
        self.apply_acks();
        self.checkpoint(now, false);
        Ok(more)
    }

    /// Applies pending acks and writes the checkpoint if anything changed (shutdown).
    pub fn finish(&mut self, now: Instant) {
        self.apply_acks();
        self.checkpoint(now, true);
    }

    pub fn apply_acks(&mut self) {
        for a in self.inbox.take() {
            if let Some(f) = self.ids.get(&a.file).and_then(|k| self.files.get_mut(k)) {
                if f.ack(a.offset) {
                    self.ckpt_dirty = true;
                }
            }
        }
    }

    /// Reads one chunk from a file. Returns whether more data is waiting.
    fn poll(
        &mut self,
        key: FileKey,
        now: Instant,
        send: &mut dyn FnMut(Chunk) -> bool,
    ) -> Result<bool, Closed> {
        let Some(f) = self.files.get_mut(&key) else {
            return Ok(false);
        };
        match f.check() {
            Ok(false) => {}
            Ok(true) => {
                let id = self.next_id;
                self.next_id += 1;
                self.ids.remove(&f.id);
                if let Err(e) = f.restart(id) {
                    warn_io(
                        &mut self.warn,
                        &f.path,
                        &e,
                        "cannot re-read a truncated file",
                    );
                    return Ok(false);
                }
                self.ids.insert(id, key);
                self.ckpt_dirty = true;
                self.intake.stats().truncations.fetch_add(1, Relaxed);
                tracing::info!(input = %self.intake.stats().name, path = %f.path.display(), "file was truncated (copytruncate?); reading it again from its start");
            }
            Err(e) => {
                warn_io(&mut self.warn, &f.path, &e, "cannot look at a tailed file");
                return Ok(false);
            }
        }
        let flush_partial = f.orphan_since.is_some_and(|t| {
            now.saturating_duration_since(t.max(f.last_data)) >= self.cfg.orphan_grace
        });
        let (pos_before, committed_before) = (f.pos(), f.committed());
        let mut ctx = ReadCtx {
            intake: &mut self.intake,
            out: &mut self.out,
            input: self.cfg.input,
            max_line_bytes: self.cfg.max_line_bytes,
            max_lines: self.cfg.chunk_lines,
            max_bytes: self.cfg.chunk_bytes,
        };
        let read = match f.read(&mut self.buf, &mut ctx, flush_partial, now) {
            Ok(r) => r,
            Err(e) => {
                warn_io(&mut self.warn, &f.path, &e, "cannot read a tailed file");
                return Ok(false);
            }
        };
        let stats = self.intake.stats().clone();
        stats.bytes.fetch_add(f.pos() - pos_before, Relaxed);
        if f.committed() != committed_before {
            self.ckpt_dirty = true;
        }
        if let Some(chunk) = read.chunk {
            let lines = chunk.lines;
            if !send(chunk) {
                return Err(Closed);
            }
            self.intake.count_sent(lines);
        }
        Ok(read.more)
    }

    fn close_drained_orphans(&mut self, now: Instant) {
        let grace = self.cfg.orphan_grace;
        let done: Vec<FileKey> = self
            .files
            .values()
            .filter(|f| {
                f.is_open() && f.orphan_since.is_some_and(|t| {
                    f.at_eof()
                        && f.fully_acked()
                        && now.saturating_duration_since(t.max(f.last_data)) >= grace
                })
                // Rotated into another input's globs: closing it would let that input read it
                // again from the start. It is kept until it is deleted or leaves every glob.
                && f
                    .current_path()
                    .is_none_or(|p| self.store.first_input_matching(&p).is_none())
            })
            .map(|f| f.key)
            .collect();
        for key in done {
            if let Some(f) = self.forget(key) {
                tracing::debug!(input = %self.intake.stats().name, path = %f.path.display(), "closed a rotated or deleted file after reading and delivering all of it");
            }
        }
    }

    fn checkpoint(&mut self, now: Instant, force: bool) {
        if !self.ckpt_dirty {
            return;
        }
        let due = self
            .last_ckpt
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.checkpoint_every);
        if !force && !due && !self.ckpt_urgent {
            return;
        }
        // After a failure (e.g. out of descriptors) retry with backoff, not at every step.
        if !force && self.ckpt_retry_at.is_some_and(|t| now < t) {
            return;
        }
        let entries = self.files.values().map(TailFile::entry).collect();
        match self.store.publish(self.cfg.input, entries) {
            Ok(()) => {
                self.ckpt_dirty = false;
                self.ckpt_urgent = false;
                self.last_ckpt = Some(now);
                self.ckpt_retry_at = None;
                self.ckpt_failures = 0;
            }
            Err(e) => {
                self.last_ckpt = Some(now);
                self.ckpt_failures = self.ckpt_failures.saturating_add(1);
                let backoff = Duration::from_millis(250 << self.ckpt_failures.min(7));
                self.ckpt_retry_at = Some(now + backoff);
                if let Some(suppressed) = self.warn.check(now) {
                    let hint = if fds::is_exhaustion(&e) {
                        "; the process is out of file descriptors: raise LimitNOFILE= in the systemd unit (or ulimit -n), or lower max_open_files"
                    } else {
                        ""
                    };
                    tracing::error!(path = %self.store.path().display(), error = %e, suppressed, retry_in_ms = backoff.as_millis() as u64, "cannot write the tail checkpoint; after a crash more lines would be sent again{hint}");
                }
            }
        }
    }
}

impl Drop for Tailer {
    fn drop(&mut self) {
        let n = self.files.len() as u64;
        self.intake.stats().files_open.fetch_sub(n, Relaxed);
        for key in self.files.keys() {
            self.store.disown(*key, self.cfg.input);
        }
    }
}

/// The path no longer leads anywhere.
fn gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

fn warn_io(warn: &mut RateLimited, path: &Path, e: &std::io::Error, what: &str) {
    if let Some(suppressed) = warn.check(Instant::now()) {
        tracing::warn!(path = %path.display(), error = %e, suppressed, "{what}");
    }
}

/// The directory a glob starts in: its components before the first one with a wildcard.
fn glob_base(pattern: &str) -> PathBuf {
    let mut base = PathBuf::new();
    let path = Path::new(pattern);
    let comps: Vec<_> = path.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let s = c.as_os_str().to_string_lossy();
        if s.contains(['*', '?', '[', '{']) || i + 1 == comps.len() {
            break;
        }
        base.push(c);
    }
    base
}

mod discovery;
mod turns;
#[cfg(test)]
mod turns_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_bases() {
        assert_eq!(glob_base("/var/log/*.log"), PathBuf::from("/var/log"));
        assert_eq!(glob_base("/var/log/app.log"), PathBuf::from("/var/log"));
        assert_eq!(glob_base("/var/*/x/*.log"), PathBuf::from("/var"));
    }
}
