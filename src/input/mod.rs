//! Inputs and what they share: turning raw bytes into chunks of checked lines.
//!
//! [`Intake`] owns one input's line options, destination and counters. Inputs feed it raw
//! reads; it frames, normalises and checks each line, appends the good ones to a chunk buffer
//! and deals with the bad ones (count, rate-limited warning, dead-letter copy). A bad line
//! never affects its neighbours.
//!
//! How inputs start and stop: see [`lifecycle`] ([`open`], [`Opened::start`], [`Running`]).

pub mod http;
mod lifecycle;
pub mod stdin;
pub mod tail;
pub mod tcp;
pub mod text;
pub mod tls;
pub mod udp;
pub mod wake;

pub use lifecycle::{open, Links, Opened, Running, Sources};
pub use tokio_util::sync::CancellationToken;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::batch::{Chunk, Dest};
use crate::config::{InputFormat, LineSettings};
use crate::line::{normalize_line, Framed, LineError, LineOptions, Outcome, TooLong};
use crate::reject::{self, excerpt, DeadLetter, RateLimited};
use crate::telemetry::InputStats;

/// How often an input may warn about invalid lines.
const INVALID_WARN_EVERY: Duration = Duration::from_secs(10);
/// Dead-letter records gathered beyond this are written at once.
const REJECTED_FLUSH_BYTES: usize = 64 << 10;

pub struct Intake {
    opts: LineOptions,
    dest: Dest,
    stats: Arc<InputStats>,
    dead_letter: Arc<DeadLetter>,
    /// Dead-letter records of the current read, written with the chunk (or sooner, if large).
    rejected: Vec<u8>,
    warn: RateLimited,
    /// `format = "text"`: the prefix every raw line is wrapped in (without a `path` tag; tail
    /// builds its own per file). Such inputs frame with [`crate::line::Framer::raw`].
    text: Option<Vec<u8>>,
    /// Lines accepted into the current chunk buffer.
    pending_lines: u32,
    /// While `Some`, every rejection is also kept here (the HTTP input names them in its
    /// answer): why, and the start of the line.
    reported: Option<Vec<(LineError, String)>>,
}

impl Intake {
    pub fn new(
        line: &LineSettings,
        max_line_bytes: usize,
        stats: Arc<InputStats>,
        dead_letter: Arc<DeadLetter>,
    ) -> Self {
        Intake {
            opts: LineOptions {
                precision: line.precision,
                max_line_bytes,
                stamp_missing: line.stamp_missing,
            },
            dest: Dest::routed(&line.bucket, line.precision, line.outputs),
            stats,
            dead_letter,
            rejected: Vec::new(),
            warn: RateLimited::new(INVALID_WARN_EVERY),
            text: (line.format == InputFormat::Text)
                .then(|| text::TextFormat::new(line).prefix(None)),
            pending_lines: 0,
            reported: None,
        }
    }

    /// Sends the following lines to `bucket` with timestamps in `precision` (the HTTP input
    /// sets them per request).
    pub fn set_destination(&mut self, bucket: &str, precision: crate::line::Precision) {
        self.opts.precision = precision;
        if &*self.dest.bucket != bucket || self.dest.precision != precision {
            self.dest = Dest::routed(bucket, precision, self.dest.route);
        }
    }

    /// Keeps every following rejection for [`Intake::take_reported`] too (`on`), or stops.
    pub fn report_rejections(&mut self, on: bool) {
        self.reported = on.then(Vec::new);
    }

    /// The rejections kept since the last call: why, and the start of the line.
    pub fn take_reported(&mut self) -> Vec<(LineError, String)> {
        self.reported
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Whether lines are raw text to wrap (`format = "text"`) rather than line protocol.
    pub fn is_text(&self) -> bool {
        self.text.is_some()
    }

    pub fn stats(&self) -> &Arc<InputStats> {
        &self.stats
    }

    /// The arrival timestamp for lines read now, in this input's precision (`format = "text"`
    /// stamps every point).
    pub fn stamp_now(&self) -> Option<i64> {
        (self.opts.stamp_missing || self.text.is_some())
            .then(|| self.opts.precision.timestamp(SystemTime::now()))
    }

    /// Handles one framed line: good lines are appended to `out`, bad ones reported. With
    /// `format = "text"` the line is a raw log line and is wrapped as a point.
    pub fn line(&mut self, line: Framed<'_>, stamp: Option<i64>, out: &mut Vec<u8>) {
        if let (Some(prefix), Ok(raw)) = (self.text.take_if(|_| line.is_ok()), line) {
            let stamp = stamp.unwrap_or_else(|| self.read_time());
            // The framer keeps a quoted `\n` inside one line; raw text has no quoting.
            for piece in raw.split(|&b| b == b'\n') {
                if piece.len() > self.opts.max_line_bytes {
                    self.reject(&piece[..self.opts.max_line_bytes], LineError::TooLong);
                } else if text::wrap(&prefix, piece, stamp, out) {
                    self.pending_lines += 1;
                }
            }
            self.text = Some(prefix);
            return;
        }
        match line {
            // The framer dropped the rest of an overlong line to stay bounded in memory.
            Err(TooLong(start)) => self.reject(start, LineError::TooLong),
            Ok(l) => match normalize_line(l, &self.opts, stamp, out) {
                Outcome::Accepted => self.pending_lines += 1,
                Outcome::Skipped => {}
                // The framer keeps a `\n` inside a quoted string value in the line (InfluxDB
                // allows multi-line strings). If such a line is invalid, an unbalanced quote
                // probably swallowed its neighbours: judge each physical line on its own, so a
                // bad line loses only itself.
                Outcome::Rejected(_) if memchr::memchr(b'\n', l).is_some() => {
                    for piece in l.split(|&b| b == b'\n') {
                        self.line(Ok(piece), stamp, out);
                    }
                }
                Outcome::Rejected(e) => self.reject(l, e),
            },
        }
    }

    /// The read time in this input's precision (`format = "text"` stamps every point).
    pub fn read_time(&self) -> i64 {
        self.opts.precision.timestamp(SystemTime::now())
    }

    /// Lines accepted into the current chunk buffer so far.
    pub fn pending_lines(&self) -> u32 {
        self.pending_lines
    }

    /// Counts a line the input built itself into the current chunk (`format = "text"`).
    pub fn accept_built(&mut self) {
        self.pending_lines += 1;
    }

    /// Counts, logs and dead-letters one bad line.
    pub fn reject(&mut self, line: &[u8], err: LineError) {
        self.stats.add_invalid(err.reason(), 1);
        if let Some(r) = self.reported.as_mut() {
            r.push((err, excerpt(line)));
        }
        reject::record(&self.stats.name, err.reason(), line, &mut self.rejected);
        if self.rejected.len() >= REJECTED_FLUSH_BYTES {
            self.flush_rejected();
        }
        if let Some(suppressed) = self.warn.check(Instant::now()) {
            tracing::warn!(
                input = %self.stats.name,
                reason = err.reason(),
                line = %excerpt(line),
                suppressed,
                dead_letter = %self.dead_letter.path().display(),
                "invalid line skipped: {err}; the line was copied to the dead-letter file"
            );
        }
    }

    /// Writes the gathered dead-letter records.
    pub fn flush_rejected(&mut self) {
        self.dead_letter.write_records(&self.rejected);
        self.rejected.clear();
        if self.rejected.capacity() > REJECTED_FLUSH_BYTES * 2 {
            self.rejected = Vec::new();
        }
    }

    /// Takes the accepted lines in `buf` as a chunk (leaving `buf` empty), or `None` if empty.
    /// The read's bad lines go to the dead-letter file now.
    pub fn take_chunk(&mut self, buf: &mut Vec<u8>, capacity: usize) -> Option<Chunk> {
        if !self.rejected.is_empty() {
            self.flush_rejected();
        }
        let lines = std::mem::take(&mut self.pending_lines);
        if buf.is_empty() {
            return None;
        }
        let data = std::mem::replace(buf, Vec::with_capacity(capacity));
        Some(Chunk {
            dest: self.dest.clone(),
            data,
            lines,
            ack: None,
        })
    }

    /// Sends the accepted lines in `buf` as one chunk with a blocking send (it waits while the
    /// queue is full; see [`crate::queue`]) and counts them. `Err` with the line count when the
    /// pipeline is gone: those lines were not accepted.
    pub fn send_blocking(
        &mut self,
        buf: &mut Vec<u8>,
        capacity: usize,
        tx: &crate::queue::ChunkTx,
    ) -> Result<(), u32> {
        let Some(chunk) = self.take_chunk(buf, capacity) else {
            return Ok(());
        };
        let lines = chunk.lines;
        tx.send(chunk).map_err(|_| lines)?;
        self.count_sent(lines);
        Ok(())
    }

    /// Counts a chunk that made it onto the channel.
    pub fn count_sent(&self, chunk_lines: u32) {
        self.stats.lines.fetch_add(chunk_lines as u64, Relaxed);
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        // Not while unwinding: a second panic there would abort the process.
        if !std::thread::panicking() {
            self.flush_rejected();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::Precision;

    fn intake(dir: &std::path::Path, format: InputFormat) -> (Intake, Arc<DeadLetter>) {
        let dl = Arc::new(DeadLetter::open(dir, 1 << 20).unwrap());
        let line = LineSettings {
            bucket: "b".into(),
            outputs: u64::MAX,
            precision: Precision::Ns,
            stamp_missing: false,
            format,
            measurement: "log".into(),
            tags: Vec::new(),
        };
        let i = Intake::new(&line, 64, Arc::new(InputStats::new("udp:x")), dl.clone());
        (i, dl)
    }

    #[test]
    fn bad_lines_of_a_read_reach_the_dead_letter_file_with_its_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let (mut i, dl) = intake(dir.path(), InputFormat::Lp);
        let mut out = Vec::new();
        for l in [&b"m v=1i 1"[..], b"bad one", b"bad two"] {
            i.line(Ok(l), None, &mut out);
        }
        let read = || std::fs::read_to_string(dl.path()).unwrap_or_default();
        assert_eq!(read(), "", "gathered, not written line by line");
        let chunk = i.take_chunk(&mut out, 1024).unwrap();
        assert_eq!(chunk.lines, 1);
        let text = read();
        assert_eq!(text.matches("source=udp:x reason=").count(), 2, "{text}");
        assert!(
            text.contains("\nbad one\n") && text.ends_with("\nbad two\n"),
            "{text}"
        );
        // What is left when the input stops is written too.
        i.line(Ok(b"bad three"), None, &mut out);
        drop(i);
        assert!(read().ends_with("\nbad three\n"));
    }

    #[test]
    fn text_format_wraps_raw_lines_and_rejects_only_overlong_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (mut i, _dl) = intake(dir.path(), InputFormat::Text);
        let mut out = Vec::new();
        i.line(Ok(b"a \"quoted\nb"), Some(7), &mut out);
        i.line(Ok(&[b'x'; 65]), Some(7), &mut out);
        i.line(Err(TooLong(b"yyyy")), Some(7), &mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "log message=\"a \\\"quoted\" 7\nlog message=\"b\" 7\n"
        );
        assert_eq!(i.take_chunk(&mut out, 1024).unwrap().lines, 2);
        assert_eq!(i.stats().invalid.lock().unwrap().get("too_long"), Some(&2));
    }
}
