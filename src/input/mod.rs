//! Inputs and what they share: turning raw bytes into chunks of checked lines.
//!
//! [`Intake`] owns one input's line options, destination and counters. Inputs feed it raw
//! reads; it frames, normalises and checks each line, appends the good ones to a chunk buffer
//! and deals with the bad ones (count, rate-limited warning, dead-letter copy). A bad line
//! never affects its neighbours.

pub mod stdin;
pub mod tail;
pub mod text;
pub mod udp;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::batch::{Chunk, Dest};
use crate::config::{InputFormat, LineSettings};
use crate::line::{normalize_line, Framed, LineError, LineOptions, Outcome, TooLong};
use crate::reject::{excerpt, DeadLetter, RateLimited};
use crate::telemetry::InputStats;

/// How often an input may warn about invalid lines.
const INVALID_WARN_EVERY: Duration = Duration::from_secs(10);

pub struct Intake {
    opts: LineOptions,
    dest: Dest,
    stats: Arc<InputStats>,
    dead_letter: Arc<DeadLetter>,
    warn: RateLimited,
    /// `format = "text"`: the prefix every raw line is wrapped in (without a `path` tag; tail
    /// builds its own per file). Such inputs frame with [`crate::line::Framer::raw`].
    text: Option<Vec<u8>>,
    /// Lines accepted into the current chunk buffer.
    pending_lines: u32,
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
            dest: Dest::new(&line.bucket, line.precision),
            stats,
            dead_letter,
            warn: RateLimited::new(INVALID_WARN_EVERY),
            text: (line.format == InputFormat::Text)
                .then(|| text::TextFormat::new(line).prefix(None)),
            pending_lines: 0,
        }
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

    /// Counts a line the input built itself into the current chunk (`format = "text"`).
    pub fn accept_built(&mut self) {
        self.pending_lines += 1;
    }

    /// Counts, logs and dead-letters one bad line.
    pub fn reject(&mut self, line: &[u8], err: LineError) {
        self.stats.add_invalid(err.reason(), 1);
        self.dead_letter.write(&self.stats.name, err.reason(), line);
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

    /// Takes the accepted lines in `buf` as a chunk (leaving `buf` empty), or `None` if empty.
    pub fn take_chunk(&mut self, buf: &mut Vec<u8>, capacity: usize) -> Option<Chunk> {
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

    /// Counts a chunk that made it onto the channel.
    pub fn count_sent(&self, chunk_lines: u32) {
        self.stats.lines.fetch_add(chunk_lines as u64, Relaxed);
    }
}
