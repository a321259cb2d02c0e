//! A write's body: read within `max_body_size` (counted after decompression, so a gzip bomb
//! stops early), checked line by line into chunks, and — with `ack = "durable"` — waited on
//! until every chunk is delivered or durably spooled ([`Waiters`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::oneshot;

use super::inflate::{self, InflateError, Inflater};
use super::request::Refusal;
use crate::batch::{Ack, Chunk, Fate};
use crate::input::Intake;
use crate::line::Framer;

/// Reads a request body of at most `max` bytes within `timeout`, and decompresses it when
/// `gzip`. 413 past `max` (before or after decompression), 400 for a broken gzip stream, 408
/// when the client is too slow.
pub async fn read_body<B>(mut body: B, max: usize, timeout: Duration) -> Result<Vec<u8>, Refusal>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut raw = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| Refusal::invalid(format!("cannot read the request body: {e}")))?;
            if let Some(data) = frame.data_ref() {
                if raw.len() + data.len() > max {
                    return Err(too_large(max));
                }
                raw.extend_from_slice(data);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(Refusal::new(
                408,
                "request timeout",
                format!("the request body did not arrive within read_timeout ({timeout:?})"),
            ))
        }
    }
    Ok(raw)
}

fn too_large(max: usize) -> Refusal {
    Refusal::new(
        413,
        "request too large",
        format!("the request body is larger than max_body_size ({max} bytes, counted after decompression): send smaller batches"),
    )
}

/// Decompresses a gzip body (one or more members), stopping as soon as it passes `max` bytes.
pub fn gunzip(raw: &[u8], max: usize) -> Result<Vec<u8>, Refusal> {
    thread_local! {
        static INFLATER: std::cell::RefCell<Inflater> = std::cell::RefCell::new(Inflater::new());
    }
    INFLATER
        .with_borrow_mut(|inflater| inflate::gunzip(inflater, raw, max))
        .map_err(|e| match e {
            InflateError::TooLarge => too_large(max),
            InflateError::BadData { at } => Refusal::invalid(format!(
                "the body is sent with Content-Encoding: gzip but is not a valid gzip stream \
                 (corrupt, truncated or not gzip at byte {at} of {}): send it plain or as valid gzip",
                raw.len()
            )),
        })
}

/// One rejected line of a request, as InfluxDB 3 reports partial writes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RejectedLine {
    pub line_number: usize,
    pub error_message: String,
    pub original_line: String,
}

/// A checked request body.
#[derive(Debug, Default)]
pub struct Checked {
    pub chunks: Vec<Chunk>,
    pub accepted: u64,
    pub rejected: Vec<RejectedLine>,
}

/// How large a request's chunks may be: each fits a batch alone, so that its acknowledgement
/// means all of its lines.
#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    pub lines: u32,
    pub bytes: usize,
}

/// Checks `body` line by line into chunks (the intake's destination must be set). Bad lines are
/// counted, dead-lettered and listed with their 1-based line numbers.
pub fn check(
    intake: &mut Intake,
    body: &[u8],
    max_line_bytes: usize,
    limits: ChunkLimits,
) -> Checked {
    let mut checked = Checked::default();
    let mut framer = Framer::new(max_line_bytes);
    let mut out = Vec::with_capacity(limits.bytes.min(body.len() + 64));
    let stamp = intake.stamp_now();
    let mut n = 0usize;
    intake.report_rejections(true);
    let mut on_line = |l: crate::line::Framed<'_>,
                       intake: &mut Intake,
                       out: &mut Vec<u8>,
                       checked: &mut Checked| {
        n += 1;
        intake.line(l, stamp, out);
        for (err, start) in intake.take_reported() {
            checked.rejected.push(RejectedLine {
                line_number: n,
                error_message: err.to_string(),
                original_line: start,
            });
        }
        if out.len() >= limits.bytes || intake.pending_lines() >= limits.lines {
            take(intake, out, limits, checked);
        }
    };
    framer.feed(body, |l| on_line(l, intake, &mut out, &mut checked));
    framer.finish(|l| on_line(l, intake, &mut out, &mut checked));
    take(intake, &mut out, limits, &mut checked);
    intake.report_rejections(false);
    checked
}

fn take(intake: &mut Intake, out: &mut Vec<u8>, limits: ChunkLimits, checked: &mut Checked) {
    if let Some(c) = intake.take_chunk(out, limits.bytes) {
        checked.accepted += c.lines as u64;
        checked.chunks.push(c);
    }
}

/// Requests waiting for their chunks to be acknowledged (`ack = "durable"`).
#[derive(Default)]
pub struct Waiters {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, Waiter>>,
}

struct Waiter {
    remaining: usize,
    dropped: bool,
    done: oneshot::Sender<bool>,
}

impl Waiters {
    /// Registers a request of `chunks` chunks: its id (the `Ack::file` of its chunks) and what
    /// resolves once every chunk is acknowledged (true) or some were dropped (false).
    pub fn register(&self, chunks: usize) -> (u64, oneshot::Receiver<bool>) {
        let id = self.next.fetch_add(1, Relaxed);
        let (done, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(
            id,
            Waiter {
                remaining: chunks,
                dropped: false,
                done,
            },
        );
        (id, rx)
    }

    /// The request stopped waiting (answered 503): later acknowledgements are ignored.
    pub fn forget(&self, id: u64) {
        self.waiting.lock().unwrap().remove(&id);
    }

    /// One chunk of request `ack.file` was acknowledged.
    pub fn on_ack(&self, ack: Ack, fate: Fate) {
        let mut waiting = self.waiting.lock().unwrap();
        let Some(w) = waiting.get_mut(&ack.file) else {
            return;
        };
        w.remaining = w.remaining.saturating_sub(1);
        w.dropped |= fate == Fate::Dropped;
        if w.remaining == 0 {
            let w = waiting.remove(&ack.file).expect("present");
            let _ = w.done.send(!w.dropped);
        }
    }

    /// Requests waiting now.
    pub fn len(&self) -> usize {
        self.waiting.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// When a request that waits for room or acknowledgements gives up.
pub fn deadline(started: Instant, ack_timeout: Duration) -> Instant {
    crate::clock::after(started, ack_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InputFormat, LineSettings};
    use crate::line::Precision;
    use crate::reject::DeadLetter;
    use crate::telemetry::InputStats;
    use std::sync::Arc;

    fn intake(dir: &std::path::Path) -> Intake {
        let line = LineSettings {
            bucket: "b".into(),
            outputs: u64::MAX,
            precision: Precision::Ns,
            stamp_missing: false,
            format: InputFormat::Lp,
            measurement: "log".into(),
            tags: Vec::new(),
        };
        let dl = Arc::new(DeadLetter::open(dir, 1 << 20).unwrap());
        Intake::new(&line, 64, Arc::new(InputStats::new("http:x")), dl)
    }

    #[test]
    fn bad_lines_are_listed_by_number_and_good_ones_chunked_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut i = intake(dir.path());
        i.set_destination("req", Precision::S);
        let body = b"m v=1i 1\nnot lp\n\nm v=2i 2\nm v=\"unclosed 3\nm v=3i 3";
        let c = check(
            &mut i,
            body,
            64,
            ChunkLimits {
                lines: 2,
                bytes: 1 << 20,
            },
        );
        assert_eq!(c.accepted, 3);
        let text: Vec<String> = c
            .chunks
            .iter()
            .map(|c| String::from_utf8(c.data.clone()).unwrap())
            .collect();
        assert_eq!(text, ["m v=1i 1\nm v=2i 2\n", "m v=3i 3\n"]);
        assert!(c
            .chunks
            .iter()
            .all(|c| &*c.dest.bucket == "req" && c.dest.precision == Precision::S));
        let numbers: Vec<usize> = c.rejected.iter().map(|r| r.line_number).collect();
        assert_eq!(numbers, [2, 5]);
        assert_eq!(c.rejected[0].original_line, "not lp");
        assert!(!c.rejected[1].error_message.is_empty());
    }

    #[test]
    fn gunzip_stops_past_the_limit_and_names_a_broken_stream() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &vec![b'a'; 10 << 20]).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 100 << 10);
        assert_eq!(gunzip(&bomb, 1 << 20).unwrap_err().status, 413);
        assert_eq!(gunzip(&bomb, 10 << 20).unwrap().len(), 10 << 20);
        let r = gunzip(b"not gzip", 100).unwrap_err();
        assert_eq!(r.status, 400);
        assert!(r.message.contains("gzip"), "{}", r.message);
    }

    #[test]
    fn a_request_is_done_when_every_chunk_is_kept_and_fails_if_one_was_dropped() {
        let w = Waiters::default();
        let ack = |file, offset| Ack {
            input: 0,
            file,
            offset,
        };
        let (a, mut a_rx) = w.register(2);
        let (b, mut b_rx) = w.register(2);
        w.on_ack(ack(a, 0), Fate::Kept);
        assert!(a_rx.try_recv().is_err(), "one chunk is still out");
        w.on_ack(ack(a, 1), Fate::Kept);
        assert_eq!(a_rx.try_recv(), Ok(true));
        w.on_ack(ack(b, 0), Fate::Dropped);
        w.on_ack(ack(b, 1), Fate::Kept);
        assert_eq!(b_rx.try_recv(), Ok(false));
        let (c, _c_rx) = w.register(1);
        w.forget(c);
        w.on_ack(ack(c, 0), Fate::Kept);
        assert!(w.is_empty());
    }
}
