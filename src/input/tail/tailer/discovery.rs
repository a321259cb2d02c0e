//! Finding files: the glob scans, following a file found by a glob, a rename event or a
//! directory search after a restart, and deciding that a followed file left its path.
//!
//! A file left its path only when `stat` of the path says so (gone, or another file): a
//! directory listing that failed, e.g. for want of descriptors, never makes a rotation.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::super::checkpoint::{Entry, FileKey, Fingerprint, FP_MAX, GLOB_MATCH};
use super::super::fds;
use super::super::file::{read_at_most, Format, TailFile};
use super::{gone, warn_io, Tailer};

impl Tailer {
    /// Finds the files the globs match now: new ones are followed (oldest first, so that
    /// they get the descriptors first), known ones may have moved, and followed files no path
    /// names any more become orphans.
    pub(super) fn scan(&mut self, now: Instant, skip_existing: bool) {
        let mut seen: HashSet<FileKey> = HashSet::new();
        let mut paths = HashMap::new();
        let mut new = Vec::new();
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
                } else {
                    new.push((meta.modified().ok(), path, key));
                }
            }
        }
        new.sort();
        for (_, path, _) in new {
            if let Some(key) = self.discover(&path, now, skip_existing, None, None) {
                // Opened by now: its key is what the descriptor says.
                paths.insert(path, key);
                seen.insert(key);
            } else if !self.slots.may_open(now) {
                break; // out of descriptors: the rest is found at a later scan
            }
        }
        let unseen: Vec<FileKey> = self
            .files
            .values()
            .filter(|f| !seen.contains(&f.key) && (f.orphan_since.is_none() || !f.is_open()))
            .map(|f| f.key)
            .collect();
        for key in unseen {
            self.left_its_path(key, now);
        }
        self.shared.retain(|k| seen.contains(k));
        self.paths = paths;
        self.all_dirty = true;
        self.scans += 1;
    }

    /// A followed file no glob listed: if its path still names it (the listing failed, e.g.
    /// for want of descriptors) nothing changed. Otherwise an open file becomes an orphan,
    /// read through its descriptor; a parked file is looked for by inode in its directory.
    pub(super) fn left_its_path(&mut self, key: FileKey, now: Instant) {
        let Some(f) = self.files.get_mut(&key) else {
            return;
        };
        match std::fs::metadata(&f.path) {
            Ok(m) if FileKey::of(&m) == key => return,
            Ok(_) => {}
            Err(e) if gone(&e) => {}
            Err(e) => {
                let path = f.path.clone();
                warn_io(&mut self.warn, &path, &e, "cannot look at a tailed file");
                return;
            }
        }
        if f.is_open() {
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
        } else {
            self.find_parked(key, now);
        }
    }
    /// A file created under the globs and renamed out of them before a scan saw it (a busy
    /// tailer, a short-lived log) would never be read: the rename names both paths, so it is
    /// followed at its new path from its start, as a rotated file. (Without inotify, or when
    /// it moved again before this runs, only the scans can find files.)
    pub(super) fn follow_missed_renames(&mut self, now: Instant) {
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
        if !self.slots.may_open(now) {
            return None;
        }
        let file = match (self.opener)(path) {
            Ok(f) => f,
            Err(e) if fds::is_exhaustion(&e) => {
                self.exhausted(path, &e, now);
                return None;
            }
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
            meta.modified().ok(),
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
        // Found, fingerprinted and placed: it waits for its turn if the descriptors are taken.
        if self.open >= self.slots.cap(now) {
            f.park();
            self.limit_hit = true;
            if !f.idle() || orphan {
                self.waiting.insert(key);
            }
        } else {
            self.open += 1;
        }
        self.ids.insert(id, key);
        self.files.insert(key, f);
        self.ckpt_dirty = true;
        self.ckpt_urgent = true;
        self.intake.stats().files_open.fetch_add(1, Relaxed);
        Some(key)
    }

    /// After a restart: checkpointed files that no glob matched any more were rotated away
    /// while lineship was down. Look for them by inode next to where they were last seen.
    pub(super) fn recover_rotated(&mut self, now: Instant) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
