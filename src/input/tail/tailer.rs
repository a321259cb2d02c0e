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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::checkpoint::{Entry, FileKey, Fingerprint, Store, FP_MAX, GLOB_MATCH};
use super::file::{read_at_most, Format, ReadCtx, TailFile};
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
}

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
            first_start = first,
            "tail input started"
        );
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

    pub fn files_open(&self) -> usize {
        self.files.len()
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
            if self.poll(key, now, send)? {
                self.dirty.insert(key);
                more = true;
            }
        }
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

    /// Finds the files the globs match now: new ones are followed, known ones may have moved,
    /// and followed files no path names any more become orphans.
    fn scan(&mut self, now: Instant, skip_existing: bool) {
        let mut seen: HashSet<FileKey> = HashSet::new();
        let mut paths = HashMap::new();
        for pattern in self.cfg.globs.clone() {
            let found = match glob::glob(&pattern) {
                Ok(found) => found,
                Err(e) => {
                    tracing::error!(pattern, error = %e, "invalid tail glob");
                    continue;
                }
            };
            for entry in found {
                let path = match entry {
                    Ok(p) => p,
                    Err(e) => {
                        warn_io(
                            &mut self.warn,
                            e.path(),
                            e.error(),
                            "cannot list a directory a tail glob needs",
                        );
                        continue;
                    }
                };
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue; // vanished since it was listed
                };
                if !meta.is_file() {
                    continue;
                }
                let key = FileKey::of(&meta);
                if !seen.insert(key) {
                    continue;
                }
                paths.insert(path.clone(), key);
                if let Some(f) = self.files.get_mut(&key) {
                    if f.path != path {
                        tracing::info!(input = %self.intake.stats().name, from = %f.path.display(), to = %path.display(), "tailed file was renamed within the globs; still following it");
                        self.intake.stats().rotations.fetch_add(1, Relaxed);
                        f.path = path.clone();
                        f.origin = path;
                        self.ckpt_dirty = true;
                    }
                    f.orphan_since = None;
                } else if let Some(key) = self.discover(&path, now, skip_existing, None, None) {
                    // Opened by now: its key is what the descriptor says.
                    paths.insert(path, key);
                    seen.insert(key);
                }
            }
        }
        for f in self.files.values_mut() {
            if f.orphan_since.is_none() && !seen.contains(&f.key) {
                f.orphan_since = Some(now);
                let deleted = f.nlink().is_ok_and(|n| n == 0);
                if !deleted {
                    self.intake.stats().rotations.fetch_add(1, Relaxed);
                }
                tracing::info!(
                    input = %self.intake.stats().name,
                    path = %f.path.display(),
                    deleted,
                    "tailed file left its path (rotated or deleted); reading it to its end before closing it"
                );
            }
        }
        self.shared.retain(|k| seen.contains(k));
        self.paths = paths;
        self.all_dirty = true;
        self.scans += 1;
    }

    /// A file created under the globs and renamed out of them before a scan saw it (a busy
    /// tailer, a short-lived log) would never be read: the rename names both paths, so it is
    /// followed at its new path from its start, as a rotated file. (Without inotify, or when
    /// it moved again before this runs, only the scans can find files.)
    fn follow_missed_renames(&mut self, now: Instant) {
        for (from, to) in std::mem::take(&mut self.renames) {
            // Ours if this is the first input whose globs matched `from`; still under some
            // input's globs, the scans follow it.
            let ours = self.store.first_input_matching(&from) == Some(self.cfg.input);
            if !ours || self.store.first_input_matching(&to).is_some() {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&to) else {
                continue;
            };
            if !meta.is_file() || self.files.contains_key(&FileKey::of(&meta)) {
                continue;
            }
            if let Some(key) = self.discover(&to, now, false, None, Some(from.clone())) {
                self.intake.stats().rotations.fetch_add(1, Relaxed);
                self.dirty.insert(key);
                tracing::info!(
                    input = %self.intake.stats().name,
                    from = %from.display(),
                    to = %to.display(),
                    "a file was rotated before lineship first read it; reading it from its start"
                );
            }
        }
    }

    /// Opens and follows a file not followed yet. `resume` is a checkpoint entry found by a
    /// directory search (an orphan); otherwise the store is asked for one by key.
    /// `rotated_from`: the file was found renamed away from this path (an orphan, read from
    /// its start).
    fn discover(
        &mut self,
        path: &Path,
        now: Instant,
        skip_existing: bool,
        resume: Option<Entry>,
        rotated_from: Option<PathBuf>,
    ) -> Option<FileKey> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                warn_io(
                    &mut self.warn,
                    path,
                    &e,
                    "cannot open a file to tail; will retry at the next scan",
                );
                return None;
            }
        };
        let meta = file.metadata().ok()?;
        let key = FileKey::of(&meta);
        if self.files.contains_key(&key) {
            return None;
        }
        let size = meta.len();
        let mut prefix = vec![0u8; FP_MAX.min(size as usize)];
        let n = read_at_most(&file, &mut prefix, 0).ok()?;
        prefix.truncate(n);
        // Overlapping paths: a file found by a glob belongs to the first input whose globs
        // match it (that input picks it up at its own scan), and a file some input already
        // follows, e.g. one rotated into this input's globs, stays with that input.
        let first = self.store.first_input_matching(path);
        let owner = match first.filter(|f| resume.is_none() && *f < self.cfg.input) {
            Some(f) => Err(f),
            None => self.store.own(key, self.cfg.input),
        };
        if let Err(owner) = owner {
            if self.shared.insert(key) {
                tracing::warn!(
                    input = %self.intake.stats().name,
                    path = %path.display(),
                    read_by = %format!("tail[{owner}]"),
                    "this file matches the paths of more than one tail input; only the input named in read_by reads it (once, not twice); remove the overlap from one input's paths"
                );
            }
            return None;
        }
        let fp = Fingerprint::of(&prefix);
        let orphan = resume.is_some() || rotated_from.is_some();
        let origin = resume
            .as_ref()
            .map(|e| PathBuf::from(&e.path))
            .or(rotated_from);
        let entry = resume.or_else(|| self.store.claim(key));
        let offset = match entry {
            Some(e) if e.fingerprint().matches(&prefix) => {
                if e.offset > size {
                    self.intake.stats().truncations.fetch_add(1, Relaxed);
                    0
                } else {
                    e.offset
                }
            }
            // The inode was reused by a different file: it is new.
            Some(_) => 0,
            None if skip_existing => end_of_last_line(&file, size, self.cfg.max_line_bytes),
            None => 0,
        };
        let id = self.next_id;
        self.next_id += 1;
        // The `path` tag names the path the globs matched, also for a file found rotated.
        let format = match &self.cfg.text {
            Some(t) => Format::Text(t.prefix(Some(origin.as_deref().unwrap_or(path)))),
            None => Format::Lp,
        };
        let mut f = TailFile::new(
            id,
            key,
            path.to_path_buf(),
            file,
            fp,
            size,
            offset,
            format,
            now,
        );
        if let Some(origin) = origin {
            f.origin = origin;
        }
        if orphan {
            f.orphan_since = Some(now);
        }
        tracing::debug!(input = %self.intake.stats().name, path = %path.display(), offset, size, "following file");
        self.ids.insert(id, key);
        self.files.insert(key, f);
        self.ckpt_dirty = true;
        self.ckpt_urgent = true;
        self.intake.stats().files_open.fetch_add(1, Relaxed);
        Some(key)
    }

    /// After a restart: checkpointed files that no glob matched any more were rotated away
    /// while lineship was down. Look for them by inode next to where they were last seen.
    fn recover_rotated(&mut self, now: Instant) {
        let patterns = self.patterns.clone();
        let lost = self
            .store
            .claim_where(|e| patterns.iter().any(|p| p.matches_with(&e.path, GLOB_MATCH)));
        for e in lost {
            let dir = Path::new(&e.path).parent().unwrap_or(Path::new("/"));
            let found = std::fs::read_dir(dir).ok().and_then(|rd| {
                rd.flatten().map(|d| d.path()).find(|p| {
                    std::fs::metadata(p).is_ok_and(|m| m.is_file() && FileKey::of(&m) == e.key())
                })
            });
            match found {
                Some(p) => {
                    tracing::info!(input = %self.intake.stats().name, was = %e.path, now = %p.display(), offset = e.offset, "found a file rotated while lineship was down; reading it to its end");
                    self.discover(&p, now, false, Some(e), None);
                }
                None => tracing::info!(
                    input = %self.intake.stats().name,
                    path = %e.path,
                    offset = e.offset,
                    "a checkpointed file is gone (rotated elsewhere or deleted while lineship was down); lines written to it after the checkpoint were not shipped"
                ),
            }
        }
    }

    fn close_drained_orphans(&mut self, now: Instant) {
        let grace = self.cfg.orphan_grace;
        let done: Vec<FileKey> = self
            .files
            .values()
            .filter(|f| {
                f.orphan_since.is_some_and(|t| {
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
            if let Some(f) = self.files.remove(&key) {
                self.store.disown(key, self.cfg.input);
                self.ids.remove(&f.id);
                self.dirty.remove(&key);
                self.ckpt_dirty = true;
                self.intake.stats().files_open.fetch_sub(1, Relaxed);
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
        let entries = self.files.values().map(TailFile::entry).collect();
        match self.store.publish(self.cfg.input, entries) {
            Ok(()) => {
                self.ckpt_dirty = false;
                self.ckpt_urgent = false;
                self.last_ckpt = Some(now);
            }
            Err(e) => {
                self.last_ckpt = Some(now);
                if let Some(suppressed) = self.warn.check(now) {
                    tracing::error!(path = %self.store.path().display(), error = %e, suppressed, "cannot write the tail checkpoint; after a crash more lines would be sent again");
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

fn warn_io(warn: &mut RateLimited, path: &Path, e: &std::io::Error, what: &str) {
    if let Some(suppressed) = warn.check(Instant::now()) {
        tracing::warn!(path = %path.display(), error = %e, suppressed, "{what}");
    }
}

/// Where reading starts in a file that existed before the input's first start with
/// `from_beginning = false`: after its last complete line, so a line being written is read
/// whole. (A last line longer than `max_line_bytes` is skipped to the end of the file.)
fn end_of_last_line(file: &File, size: u64, max_line_bytes: usize) -> u64 {
    let window = (max_line_bytes as u64 + 1).min(size);
    let mut tail = vec![0u8; window as usize];
    let Ok(n) = read_at_most(file, &mut tail, size - window) else {
        return size;
    };
    match memchr::memrchr(b'\n', &tail[..n]) {
        Some(i) => size - window + i as u64 + 1,
        None if window == size => 0,
        None => size,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_bases() {
        assert_eq!(glob_base("/var/log/*.log"), PathBuf::from("/var/log"));
        assert_eq!(glob_base("/var/log/app.log"), PathBuf::from("/var/log"));
        assert_eq!(glob_base("/var/*/x/*.log"), PathBuf::from("/var"));
    }

    #[test]
    fn start_offsets_for_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let check = |content: &[u8], max: usize| {
            std::fs::write(&p, content).unwrap();
            let f = File::open(&p).unwrap();
            end_of_last_line(&f, content.len() as u64, max)
        };
        assert_eq!(check(b"", 10), 0);
        assert_eq!(check(b"a\nb\n", 10), 4);
        assert_eq!(check(b"a\nbc", 10), 2);
        assert_eq!(check(b"abc", 10), 0);
        assert_eq!(check(b"a\nbcdefghijklmnop", 5), 17);
    }
}
