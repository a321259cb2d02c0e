//! One tailed file: reading whole lines from an offset, noticing truncation, and turning
//! out-of-order acknowledgements into a checkpoint offset.
//!
//! Invariants:
//! - `pos` is the next byte to read. It sits at a line boundary except while `discarding`
//!   the rest of an overlong line. A partial last line is not consumed: it is read again once
//!   its `\n` has arrived.
//! - `boundary` is the end of the last line handled (sent, skipped or rejected).
//! - `outstanding` holds, in increasing order, the end offsets of chunks sent and not yet
//!   contiguously acknowledged (and of stretches without any accepted line, which are
//!   acknowledged at once). `committed`, the checkpoint, is the highest offset below which
//!   every entry has been acknowledged, so it never passes a line that was not delivered.
//! - After a truncation the file gets a new ack id: acks for chunks of the old contents are
//!   ignored, and the checkpoint restarts at 0.
//! - A file may be *parked*: its descriptor is closed (see `fds.rs`) and everything else
//!   kept; acks still apply. Only an open file is looked at or read; the tailer reattaches a
//!   descriptor after checking that the path still names the same (device, inode).

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;

use super::checkpoint::{Entry, FileKey, Fingerprint, FP_MAX};
use crate::batch::{Ack, Chunk};
use crate::input::text;
use crate::input::Intake;
use crate::line::LineError;

/// How lines are turned into chunk bytes.
pub(super) enum Format {
    Lp,
    /// `format = "text"`: the per-file prefix up to `message="`.
    Text(Vec<u8>),
}

/// What one read produced.
pub(super) struct Read {
    pub chunk: Option<Chunk>,
    /// More bytes are waiting right now.
    pub more: bool,
}

pub(super) struct TailFile {
    /// Ack id of the current contents (changes on truncation).
    pub id: u64,
    pub key: FileKey,
    /// Where the file was last seen.
    pub path: PathBuf,
    /// The last path a glob matched it at (kept in the checkpoint: after a restart, a file
    /// rotated away is looked for next to it).
    pub origin: PathBuf,
    /// `None` while parked.
    file: Option<File>,
    /// When the descriptor was (re)attached.
    pub opened_at: Instant,
    /// The last read left bytes to read right away (a parked file with this set wants its
    /// descriptor back even if the file did not change).
    more: bool,
    pub fp: Fingerprint,
    pub format: Format,
    pos: u64,
    boundary: u64,
    discarding: bool,
    /// File size and modification time at the last look.
    size: u64,
    mtime: Option<std::time::SystemTime>,
    outstanding: VecDeque<(u64, bool)>,
    committed: u64,
    /// Set when the file left its glob (renamed away or deleted).
    pub orphan_since: Option<Instant>,
    /// Last time the file was seen to grow (or was found; after a truncation, the first read
    /// counts as growth).
    /// Re-reading a trailing partial line is not new data: a rotated file whose writer left a
    /// last line without a newline must still reach `rotate_wait` of quiet.
    pub last_data: Instant,
    /// The size the file had at `last_data`.
    grown_to: u64,
}

impl TailFile {
    /// Starts following `file` at `offset` (a line boundary).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        key: FileKey,
        path: PathBuf,
        file: File,
        fp: Fingerprint,
        size: u64,
        mtime: Option<std::time::SystemTime>,
        offset: u64,
        format: Format,
        now: Instant,
    ) -> Self {
        TailFile {
            id,
            key,
            origin: path.clone(),
            path,
            file: Some(file),
            opened_at: now,
            more: offset < size,
            fp,
            format,
            pos: offset,
            boundary: offset,
            discarding: false,
            size,
            mtime,
            outstanding: VecDeque::new(),
            committed: offset,
            orphan_since: None,
            last_data: now,
            grown_to: size,
        }
    }

    pub fn pos(&self) -> u64 {
        self.pos
    }

    fn fd(&self) -> std::io::Result<&File> {
        self.file
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the file is parked (no descriptor)"))
    }

    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }

    /// Closes the descriptor, keeping the state.
    pub fn park(&mut self) {
        self.file = None;
    }

    /// Gives a parked file its descriptor back; `file` must be the same (device, inode).
    pub fn attach(&mut self, file: File, now: Instant) {
        self.file = Some(file);
        self.opened_at = now;
    }

    /// The file's size at the last look.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The modification time seen at the last look.
    pub fn mtime(&self) -> Option<std::time::SystemTime> {
        self.mtime
    }

    /// The last read found nothing more to read right away.
    pub fn idle(&self) -> bool {
        !self.more
    }

    /// For a parked file: whether it should be opened again, given what `stat` of its path
    /// says now (it changed, or the last read left bytes to read).
    pub fn wants(&self, meta: &std::fs::Metadata) -> bool {
        self.more || meta.len() != self.size || meta.modified().ok() != self.mtime
    }

    /// Where the file is now, as the kernel knows it through the open descriptor; `None` once
    /// it is deleted (or if /proc is not mounted).
    pub fn current_path(&self) -> Option<PathBuf> {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_ref()?.as_raw_fd();
        let p = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
        (self.nlink().ok()? > 0).then_some(p)
    }

    /// Links to the file (0 once it is deleted).
    pub fn nlink(&self) -> std::io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.fd()?.metadata()?.nlink())
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Every line read so far is acknowledged.
    pub fn fully_acked(&self) -> bool {
        self.outstanding.is_empty()
    }

    /// Nothing is left to read (a trailing partial line counts as unread).
    pub fn at_eof(&self) -> bool {
        self.pos >= self.size
    }

    pub fn entry(&self) -> Entry {
        Entry {
            dev: self.key.dev,
            ino: self.key.ino,
            fp_len: self.fp.len,
            fp: self.fp.hash,
            offset: self.committed,
            path: self.origin.to_string_lossy().into_owned(),
        }
    }

    /// Marks the chunk ending at `offset` delivered. Returns true when the checkpoint moved.
    pub fn ack(&mut self, offset: u64) -> bool {
        if let Ok(i) = self.outstanding.binary_search_by_key(&offset, |e| e.0) {
            self.outstanding[i].1 = true;
        }
        self.advance()
    }

    fn advance(&mut self) -> bool {
        let before = self.committed;
        while let Some(&(end, true)) = self.outstanding.front() {
            self.committed = end;
            self.outstanding.pop_front();
        }
        self.committed != before
    }

    /// Looks at the file's size and start. Returns `Ok(true)` when the file was truncated (or
    /// rewritten from its start): the caller gives it a new id with [`TailFile::restart`].
    pub fn check(&mut self) -> std::io::Result<bool> {
        let meta = self.fd()?.metadata()?;
        let (size, mtime) = (meta.len(), meta.modified().ok());
        if size < self.size || size < self.pos {
            return Ok(true);
        }
        if size != self.size || mtime != self.mtime {
            // Grown or rewritten: confirm the start is unchanged, and extend the fingerprint.
            let mut prefix = vec![0u8; FP_MAX.min(size as usize)];
            let n = read_at_most(self.fd()?, &mut prefix, 0)?;
            prefix.truncate(n);
            if !self.fp.matches(&prefix) {
                return Ok(true);
            }
            self.fp = Fingerprint::of(&prefix);
        }
        self.size = size;
        self.mtime = mtime;
        Ok(false)
    }

    /// Starts over at offset 0 with ack id `id` (after a truncation).
    pub fn restart(&mut self, id: u64) -> std::io::Result<()> {
        let size = self.fd()?.metadata()?.len();
        let mut prefix = vec![0u8; FP_MAX.min(size as usize)];
        let n = read_at_most(self.fd()?, &mut prefix, 0)?;
        prefix.truncate(n);
        self.fp = Fingerprint::of(&prefix);
        self.id = id;
        self.size = size;
        self.mtime = None;
        self.pos = 0;
        self.boundary = 0;
        self.discarding = false;
        self.outstanding.clear();
        self.committed = 0;
        self.grown_to = 0;
        self.more = size > 0;
        Ok(())
    }

    /// Reads from `pos` into `buf` and turns whole lines into at most one chunk holding at
    /// most `max_lines` lines and at most `max_bytes` bytes (unless its single line is
    /// larger). With `flush_partial`, bytes after the last `\n` at the end of the file count
    /// as a last line (for a file that will not grow any more).
    pub fn read(
        &mut self,
        buf: &mut [u8],
        ctx: &mut ReadCtx<'_>,
        flush_partial: bool,
        now: Instant,
    ) -> std::io::Result<Read> {
        let nothing = Read {
            chunk: None,
            more: false,
        };
        self.more = false;
        if self.pos >= self.size {
            return Ok(nothing);
        }
        let n = read_at_most(self.fd()?, buf, self.pos)?;
        if n == 0 {
            return Ok(nothing);
        }
        if self.size > self.grown_to {
            self.last_data = now;
            self.grown_to = self.size;
        }
        let data = &buf[..n];
        let mut start = 0usize;
        if self.discarding {
            let Some(i) = memchr::memchr(b'\n', data) else {
                self.pos += n as u64;
                self.more = self.pos < self.size;
                return Ok(Read {
                    chunk: None,
                    more: self.more,
                });
            };
            self.discarding = false;
            start = i + 1;
        }
        let stamp = match self.format {
            Format::Lp => ctx.intake.stamp_now(),
            Format::Text(_) => Some(ctx.intake.read_time()),
        };
        let mut accepted = 0u32;
        while accepted < ctx.max_lines {
            let Some(i) = memchr::memchr(b'\n', &data[start..]) else {
                break;
            };
            let line = &data[start..start + i];
            if accepted > 0 && ctx.out.len() + self.bound(line) > ctx.max_bytes {
                break;
            }
            accepted += self.line(line, ctx, stamp);
            start += i + 1;
        }
        let rest = &data[start..];
        if !rest.is_empty() && memchr::memchr(b'\n', rest).is_none() {
            if rest.len() > ctx.max_line_bytes {
                // No newline within max_line_bytes: reject the line and skip to its end.
                ctx.intake
                    .reject(&rest[..ctx.max_line_bytes], LineError::TooLong);
                self.discarding = true;
            } else if flush_partial && self.pos + n as u64 >= self.size {
                self.line(rest, ctx, stamp);
                start = n;
            }
        }
        if self.discarding {
            // `boundary` stays at the overlong line's start until its end is found.
            self.boundary = self.pos + start as u64;
            self.pos += n as u64;
        } else {
            self.pos += start as u64;
            self.boundary = self.pos;
        }
        let more = self.pos < self.size && (start > 0 || self.discarding);
        self.more = more;
        let chunk = ctx
            .intake
            .take_chunk(ctx.out, ctx.max_bytes.min(1 << 20))
            .map(|mut c| {
                c.ack = Some(Ack {
                    input: ctx.input,
                    file: self.id,
                    offset: self.boundary,
                });
                c
            });
        let last = self.outstanding.back().map_or(self.committed, |e| e.0);
        if self.boundary > last {
            self.outstanding.push_back((self.boundary, chunk.is_none()));
            self.advance();
        }
        Ok(Read { chunk, more })
    }

    /// An upper bound of the bytes `line` adds to a chunk.
    fn bound(&self, line: &[u8]) -> usize {
        match &self.format {
            Format::Lp => line.len() + 24,
            Format::Text(prefix) => prefix.len() + 3 * line.len() + 26,
        }
    }

    /// Handles one line; returns 1 if it was accepted into the chunk.
    fn line(&self, line: &[u8], ctx: &mut ReadCtx<'_>, stamp: Option<i64>) -> u32 {
        if line.len() > ctx.max_line_bytes {
            ctx.intake
                .reject(&line[..ctx.max_line_bytes], LineError::TooLong);
            return 0;
        }
        let before = ctx.out.len();
        match &self.format {
            Format::Lp => ctx.intake.line(Ok(line), stamp, ctx.out),
            Format::Text(prefix) => {
                if text::wrap(prefix, line, stamp.unwrap_or(0), ctx.out) {
                    ctx.intake.accept_built();
                }
            }
        }
        u32::from(ctx.out.len() > before)
    }
}

/// What reading needs besides the file: the input's intake and limits.
pub(super) struct ReadCtx<'a> {
    pub intake: &'a mut Intake,
    pub out: &'a mut Vec<u8>,
    pub input: u32,
    pub max_line_bytes: usize,
    pub max_lines: u32,
    pub max_bytes: usize,
}

/// `pread` until `buf` is full or the end of the file.
pub(super) fn read_at_most(file: &File, buf: &mut [u8], mut offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                offset += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
