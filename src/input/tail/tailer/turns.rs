//! Taking turns with descriptors: the part of the [`Tailer`] that parks files and opens
//! them again, so that an input follows more files than it keeps open (see `fds.rs`).
//!
//! - A parked file is looked at with `stat` of its path ([`Tailer::peek`]); when it changed
//!   (or the last read left bytes to read) it waits for a descriptor.
//! - Each step [`Tailer::take_turns`] parks idle files, and busy ones that had a turn, for
//!   the waiting files, and opens the waiting ones: rotated files first, then oldest
//!   modification time first. Reopening checks the (device, inode) behind the path; a file
//!   that moved while parked is looked for by inode in its directory at the next scan
//!   ([`Tailer::find_parked`]).
//! - Running out of descriptors (EMFILE/ENFILE) lowers the cap and pauses opening
//!   ([`Tailer::exhausted`]); the file keeps its state and waits. It is logged once.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::super::checkpoint::FileKey;
use super::super::fds;
use super::super::file::TailFile;
use super::{gone, warn_io, Closed, Tailer};
use crate::batch::Chunk;

impl Tailer {
    /// A parked file may have something to read: `stat` its path.
    pub(super) fn peek(&mut self, key: FileKey) {
        let Some(f) = self.files.get(&key) else {
            return;
        };
        if self.waiting.contains(&key) {
            return;
        }
        // Moved or deleted: the scan looks for it (a rename or delete event, or the periodic
        // rescan, brings one).
        if std::fs::metadata(&f.path).is_ok_and(|m| FileKey::of(&m) == key && f.wants(&m)) {
            self.waiting.insert(key);
        }
    }

    /// Parks files for the waiting ones and opens as many waiting files as the cap allows,
    /// reading a chunk from each. Returns whether some file has more data right now.
    pub(super) fn take_turns(
        &mut self,
        now: Instant,
        send: &mut dyn FnMut(Chunk) -> bool,
    ) -> Result<bool, Closed> {
        let cap = self.slots.cap(now);
        if self.waiting.is_empty() && self.open <= cap {
            return Ok(false);
        }
        let files = &self.files;
        self.waiting
            .retain(|k| files.get(k).is_some_and(|f| !f.is_open()));
        let may_open = self.slots.may_open(now);
        let waiting = if may_open { self.waiting.len() } else { 0 };
        self.park_for(waiting, cap, now);
        if !may_open || self.waiting.is_empty() {
            return Ok(false);
        }
        let room = cap.saturating_sub(self.open);
        if room < self.waiting.len() {
            self.limit_hit = true;
        }
        // Rotated files first (only their descriptor leads to them once they are opened
        // again), then the oldest modification time lineship saw.
        let mut order: Vec<_> = self
            .waiting
            .iter()
            .filter_map(|k| self.files.get(k))
            .map(|f| (f.orphan_since.is_none(), f.mtime(), f.key))
            .collect();
        order.sort();
        let mut more = false;
        for (_, _, key) in order.into_iter().take(room) {
            self.waiting.remove(&key);
            match self.reopen(key, now) {
                Ok(true) => {
                    if self.poll(key, now, send)? {
                        self.dirty.insert(key);
                        more = true;
                    }
                }
                Ok(false) => {}
                Err(()) => {
                    // Out of descriptors: the pause starts now, no busy loop.
                    self.waiting.insert(key);
                    return Ok(more);
                }
            }
        }
        Ok(more || (room > 0 && !self.waiting.is_empty()))
    }

    /// Parks open files (see [`fds::plan`]) to make room for `waiting` files under `cap`.
    fn park_for(&mut self, waiting: usize, cap: usize, now: Instant) {
        let open: Vec<fds::Open> = self
            .files
            .values()
            .filter(|f| f.is_open())
            .map(|f| fds::Open {
                key: f.key,
                pinned: f.orphan_since.is_some(),
                idle: f.idle(),
                last_data: f.last_data,
                opened_at: f.opened_at,
            })
            .collect();
        for key in fds::plan(&open, waiting, cap, now) {
            if let Some(f) = self.files.get_mut(&key) {
                f.park();
                self.open -= 1;
                self.dirty.remove(&key);
                if !f.idle() {
                    self.waiting.insert(key);
                }
            }
        }
    }

    /// Opens a parked file again at its path. `Ok(false)`: the path no longer names it (it
    /// is looked for at the next scan) or cannot be opened (it is tried again when it
    /// changes). `Err`: out of descriptors.
    fn reopen(&mut self, key: FileKey, now: Instant) -> Result<bool, ()> {
        let Some(path) = self.files.get(&key).map(|f| f.path.clone()) else {
            return Ok(false);
        };
        let file = match (self.opener)(&path) {
            Ok(file) => file,
            Err(e) if fds::is_exhaustion(&e) => {
                self.exhausted(&path, &e, now);
                return Err(());
            }
            Err(e) => {
                if gone(&e) {
                    self.rescan = true;
                } else {
                    warn_io(
                        &mut self.warn,
                        &path,
                        &e,
                        "cannot open a tailed file again; will retry when it changes",
                    );
                }
                return Ok(false);
            }
        };
        if file.metadata().map(|m| FileKey::of(&m)).ok() != Some(key) {
            self.rescan = true;
            return Ok(false);
        }
        let f = self.files.get_mut(&key).expect("looked up above");
        f.attach(file, now);
        self.open += 1;
        Ok(true)
    }

    /// A parked file's path no longer names it: look for its inode in the directory it was
    /// in. Found: it was rotated, and is read to its end first. Not found: it was deleted (or
    /// moved elsewhere) before it could be read again.
    pub(super) fn find_parked(&mut self, key: FileKey, now: Instant) {
        let Some(f) = self.files.get(&key) else {
            return;
        };
        let dir = f.path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let listing = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                // Out of descriptors or unreadable for now: decided at a later scan.
                warn_io(
                    &mut self.warn,
                    &dir,
                    &e,
                    "cannot list the directory of a tailed file waiting for its turn",
                );
                return;
            }
        };
        let found = listing.flatten().map(|d| d.path()).find(|p| {
            std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file() && FileKey::of(&m) == key)
        });
        let name = self.intake.stats().name.clone();
        match found {
            Some(p) => {
                let f = self.files.get_mut(&key).expect("looked up above");
                tracing::info!(input = %name, from = %f.path.display(), to = %p.display(), "tailed file left its path (rotated) while it waited for its turn; reading it to its end before closing it");
                if f.orphan_since.is_none() {
                    f.orphan_since = Some(now);
                    self.intake.stats().rotations.fetch_add(1, Relaxed);
                }
                f.path = p;
                self.waiting.insert(key);
            }
            None => {
                let Some(f) = self.forget(key) else {
                    return;
                };
                let (offset, size) = (f.pos(), f.size());
                if offset < size {
                    tracing::error!(input = %name, path = %f.path.display(), offset, size, "a tailed file was deleted (or moved out of its directory) while it waited for its turn; the lines after offset were not shipped; raise max_open_files (and the open-file limit) so that every file stays open");
                } else {
                    tracing::warn!(input = %name, path = %f.path.display(), offset, "a tailed file was deleted (or moved out of its directory) while it waited for its turn; anything written to it after offset was not shipped; raise max_open_files (and the open-file limit) so that every file stays open");
                }
            }
        }
    }

    /// Stops following a file.
    pub(super) fn forget(&mut self, key: FileKey) -> Option<TailFile> {
        let f = self.files.remove(&key)?;
        if f.is_open() {
            self.open -= 1;
        }
        self.store.disown(key, self.cfg.input);
        self.ids.remove(&f.id);
        self.dirty.remove(&key);
        self.waiting.remove(&key);
        self.ckpt_dirty = true;
        self.intake.stats().files_open.fetch_sub(1, Relaxed);
        Some(f)
    }

    /// An open failed for want of descriptors: follow fewer files at once for a while.
    pub(super) fn exhausted(&mut self, path: &Path, e: &std::io::Error, now: Instant) {
        let open = self.open;
        self.slots.exhausted(open, now);
        let cap = self.slots.cap(now);
        // Give the rest of the process (sockets, checkpoints, inotify) descriptors now.
        self.park_for(0, cap, now);
        let limit = fds::nofile();
        if !std::mem::replace(&mut self.exhaustion_logged, true) {
            tracing::warn!(
                input = %self.intake.stats().name,
                path = %path.display(),
                error = %e,
                open,
                max_open_files_now = cap,
                nofile_soft = limit.soft,
                nofile_hard = limit.hard,
                "the process ran out of file descriptors; following fewer files at once for a while (no file is taken for rotated, none loses its place); raise LimitNOFILE= in the systemd unit (or ulimit -n), or lower max_open_files"
            );
        } else {
            tracing::debug!(input = %self.intake.stats().name, path = %path.display(), error = %e, max_open_files_now = cap, "out of file descriptors again");
        }
    }

    /// Says once that files wait for their turn.
    pub(super) fn report_limit(&mut self) {
        if !self.limit_hit || std::mem::replace(&mut self.limit_logged, true) {
            return;
        }
        let limit = fds::nofile();
        let now = self.slots.cap(Instant::now());
        tracing::warn!(
            input = %self.intake.stats().name,
            files = self.files.len(),
            max_open_files = self.slots.max(),
            max_open_files_now = now,
            nofile_soft = limit.soft,
            nofile_hard = limit.hard,
            "more files match than max_open_files; reading them in turn, oldest first (a file waiting for its turn that is rotated is found again by inode in its directory; one deleted before its turn loses what was not read yet); to keep every file open raise max_open_files in [[input.tail]] and the open-file limit (LimitNOFILE= in the systemd unit, or ulimit -n)"
        );
    }
}
