//! Rejected lines: the dead-letter files under `state_dir/rejected/` and the rate-limited
//! warning that tells the operator about them.
//!
//! Every rejected line is written with a comment header naming its source and reason, so the
//! file can be fixed up and replayed with `lineship --stdin`. The directory is capped: the live
//! file rotates to `rejected.lp.1` at half the cap, so at most the cap is kept, and what rotates
//! out is gone (the count stays in the metrics).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

const FILE: &str = "rejected.lp";
const OLD: &str = "rejected.lp.1";

/// Where the dead-letter file of `state_dir` is.
pub fn dead_letter_path(state_dir: &Path) -> PathBuf {
    state_dir.join("rejected").join(FILE)
}
/// How much of a bad line is quoted in a log message.
const LOG_PREFIX_BYTES: usize = 120;

pub struct DeadLetter {
    dir: PathBuf,
    max_bytes: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    file: Option<File>,
    size: u64,
}

impl DeadLetter {
    pub fn open(state_dir: &Path, max_bytes: u64) -> anyhow::Result<Self> {
        use anyhow::Context;
        let dir = state_dir.join("rejected");
        crate::statefile::ensure_dir(&dir)
            .with_context(|| format!("cannot create dead-letter directory {}", dir.display()))?;
        let size = std::fs::symlink_metadata(dir.join(FILE))
            .map(|m| m.len())
            .unwrap_or(0);
        Ok(DeadLetter {
            dir,
            max_bytes,
            inner: Mutex::new(Inner { file: None, size }),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Appends lines (each `\n`-terminated or not) under one header comment. Errors are logged,
    /// never returned: failing to keep a copy of a bad line must not stop good ones.
    pub fn write(&self, source: &str, reason: &str, lines: &[u8]) {
        let mut rec = Vec::with_capacity(lines.len() + 128);
        record(source, reason, lines, &mut rec);
        self.write_records(&rec);
    }

    /// Appends records built with [`record`] (inputs gather a read's bad lines and write them
    /// with one call, so a flood of bad lines costs one write per read, not one per line).
    pub fn write_records(&self, rec: &[u8]) {
        if rec.is_empty() {
            return;
        }
        // A panic while writing leaves the file state usable; keep going.
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.append(&mut g, rec) {
            tracing::error!(dir = %self.dir.display(), error = %e, "cannot write rejected lines to the dead-letter file; check the disk and permissions of state_dir");
        }
    }

    fn append(&self, g: &mut Inner, rec: &[u8]) -> std::io::Result<()> {
        let half = (self.max_bytes / 2).max(1);
        if g.size > 0 && g.size + rec.len() as u64 > half {
            g.file = None;
            std::fs::rename(self.dir.join(FILE), self.dir.join(OLD))?;
            g.size = 0;
        }
        if g.file.is_none() {
            // Never through a symlink planted in state_dir (see `statefile`): whatever is not
            // a regular file is renamed aside, and a file of ours takes its place.
            let path = self.dir.join(FILE);
            if let Ok(m) = std::fs::symlink_metadata(&path) {
                if !m.is_file() {
                    let aside = self.dir.join(format!("{FILE}.not-ours"));
                    std::fs::rename(&path, &aside)?;
                    tracing::warn!(path = %path.display(), moved_to = %aside.display(), kind = crate::statefile::kind_name(m.file_type()), "the dead-letter file was not a regular file; it was renamed aside, untouched");
                    g.size = 0;
                }
            }
            g.file = Some(crate::statefile::open_append(&path)?);
        }
        g.file.as_mut().expect("opened above").write_all(rec)?;
        g.size += rec.len() as u64;
        Ok(())
    }
}

/// Appends one dead-letter record to `out`: a header comment naming the source and reason,
/// then the lines, `\n`-terminated.
pub fn record(source: &str, reason: &str, lines: &[u8], out: &mut Vec<u8>) {
    let ts = humantime::format_rfc3339_seconds(SystemTime::now());
    let reason = reason.replace('\n', " ");
    let _ = writeln!(out, "# {ts} source={source} reason={reason}");
    out.extend_from_slice(lines);
    if !lines.ends_with(b"\n") {
        out.push(b'\n');
    }
}

/// A warning that fires at most once per `every`, reporting how many were suppressed.
pub struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    pub fn new(every: Duration) -> Self {
        RateLimited {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Returns `Some(suppressed_since_last)` when a message may be logged now.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The start of a line, printable, for log messages.
pub fn excerpt(line: &[u8]) -> String {
    let cut = &line[..line.len().min(LOG_PREFIX_BYTES)];
    let mut s = String::from_utf8_lossy(cut).escape_debug().to_string();
    if line.len() > LOG_PREFIX_BYTES {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_writes_headers_and_rotates_within_cap() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetter::open(dir.path(), 400).unwrap();
        dl.write("stdin", "bad_field_value", b"m f=x");
        let text = std::fs::read_to_string(dl.path()).unwrap();
        assert!(text.starts_with("# "));
        assert!(
            text.contains("source=stdin reason=bad_field_value\nm f=x\n"),
            "{text}"
        );
        for _ in 0..20 {
            dl.write("stdin", "r", b"0123456789012345678901234567890123456789\n");
        }
        let live = std::fs::metadata(dl.path()).unwrap().len();
        let old = std::fs::metadata(dir.path().join("rejected").join(OLD))
            .unwrap()
            .len();
        assert!(live + old <= 400, "{live} + {old}");
    }

    #[test]
    fn a_symlinked_dead_letter_file_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::fs::create_dir_all(dir.path().join("rejected")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("rejected").join(FILE)).unwrap();
        let dl = DeadLetter::open(dir.path(), 1 << 20).unwrap();
        dl.write("stdin", "bad", b"m f=x");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        let text = std::fs::read_to_string(dl.path()).unwrap();
        assert!(text.contains("m f=x\n"), "{text}");
        // A symlinked rejected/ directory is renamed aside, never written through.
        let other = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), other.path().join("rejected")).unwrap();
        let dl = DeadLetter::open(other.path(), 1 << 20).unwrap();
        dl.write("stdin", "bad", b"m f=y");
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
        assert!(std::fs::read_to_string(dl.path())
            .unwrap()
            .contains("m f=y"));
    }

    #[test]
    fn rate_limit_counts_suppressed() {
        let mut r = RateLimited::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(r.check(t), Some(0));
        assert_eq!(r.check(t + Duration::from_secs(1)), None);
        assert_eq!(r.check(t + Duration::from_secs(2)), None);
        assert_eq!(r.check(t + Duration::from_secs(10)), Some(2));
    }

    #[test]
    fn excerpt_is_bounded_and_printable() {
        assert_eq!(excerpt(b"a\tb"), "a\\tb");
        assert!(excerpt(&[b'x'; 500]).chars().count() <= LOG_PREFIX_BYTES + 1);
    }
}
