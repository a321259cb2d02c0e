//! One write, from body to verdict: decode it (identity, or gzip through libdeflate into a
//! per-thread scratch buffer), refuse what lineship must never send, pick the reply (script,
//! responder, default) and count its lines and, in count mode with `check_seq`, its sequence
//! numbers.
//!
//! Invariant: [`answer`] is synchronous and runs inside the request future without an await, so
//! the thread-local scratch buffers are never shared; in the steady state decoding a write
//! allocates nothing (count mode) or just the recorded copies (record mode).

use std::cell::RefCell;
use std::sync::Arc;

use bytes::Bytes;
use libdeflater::Decompressor;

use super::counts::Verdict;
use super::request::is_blank;
use super::{Mode, Reply, Request, Shared};
use crate::gunzip::{gunzip_into, GunzipError};
use crate::seq::{count_lines, scan_seqs};

/// Largest request body read, compressed or not.
pub(super) const MAX_BODY_BYTES: usize = 512 << 20;
/// Largest decoded body; a gzip bomb gets 413 instead of eating memory.
const MAX_DECODED_BYTES: usize = 1 << 30;
/// A scratch buffer grown past this by one outsized body is not kept for the next.
const KEEP_SCRATCH_BYTES: usize = 64 << 20;

/// Why a body could not be used: the status to answer and what to record.
pub(super) type BodyError = (u16, String);

thread_local! {
    /// Per worker thread, so decoding never allocates in the steady state.
    static DECODE: RefCell<(Decompressor, Vec<u8>, Vec<u64>)> =
        RefCell::new((Decompressor::new(), Vec::new(), Vec::new()));
}

/// Decodes the write `body` (or the error reading it), picks the reply and judges the write.
/// Fills `request.decode_error`, and in record mode `request.body` and `request.decoded`.
pub(super) fn answer(
    shared: &Shared,
    request: &mut Request,
    body: Result<Bytes, BodyError>,
) -> (Reply, Verdict) {
    DECODE.with(|cell| {
        let (dec, scratch, seqs) = &mut *cell.borrow_mut();
        if scratch.len() > KEEP_SCRATCH_BYTES {
            *scratch = Vec::new();
        }
        let (body, read_error) = match body {
            Ok(body) => (body, None),
            Err(e) => (Bytes::new(), Some(e)),
        };
        if shared.mode == Mode::Record {
            request.body = body.to_vec();
        }
        let decoded = match read_error {
            Some(e) => Err(e),
            None => decode(request, &body, dec, scratch),
        };
        let decoded = match decoded {
            Ok(d) => d,
            Err((status, error)) => {
                let reply = Reply::influx_error(status, &format!("fake influx: {error}"));
                request.decode_error = Some(error);
                return (reply, Verdict::Bad);
            }
        };
        if shared.mode == Mode::Record {
            request.decoded = decoded.to_vec();
        }
        if is_blank(decoded) {
            let reply = Reply::influx_error(
                400,
                "fake influx: empty request body (lineship must never send one)",
            );
            return (reply, Verdict::Bad);
        }
        let reply = pick_reply(shared, request);
        let lines = count_lines(decoded);
        if !reply.is_success() {
            return (reply, Verdict::Rejected { lines });
        }
        if let Mode::Count { check_seq: true } = shared.mode {
            seqs.clear();
            let malformed = scan_seqs(decoded, seqs);
            let mut set = shared.seqs.lock().unwrap_or_else(|e| e.into_inner());
            set.malformed += malformed;
            for &s in seqs.iter() {
                set.insert(s);
            }
        }
        let verdict = Verdict::Accepted {
            lines,
            decoded_bytes: decoded.len() as u64,
        };
        (reply, verdict)
    })
}

/// The decoded body: `body` itself, or gunzipped into `scratch`.
fn decode<'a>(
    request: &Request,
    body: &'a [u8],
    dec: &mut Decompressor,
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8], BodyError> {
    let encoding = request.header("content-encoding").map(str::trim);
    match encoding {
        None => Ok(body),
        Some(e) if e.eq_ignore_ascii_case("identity") => Ok(body),
        Some(e) if e.eq_ignore_ascii_case("gzip") => {
            match gunzip_into(dec, body, scratch, MAX_DECODED_BYTES) {
                Ok(n) => Ok(&scratch[..n]),
                Err(GunzipError::BadData) => Err((400, "gunzip failed: not valid gzip".into())),
                Err(GunzipError::TooLarge) => Err((
                    413,
                    format!("gunzip failed: decodes to more than {MAX_DECODED_BYTES} bytes"),
                )),
            }
        }
        Some(e) => Err((415, format!("unsupported Content-Encoding {e:?}"))),
    }
}

/// The script's next reply, else the responder's, else the default.
fn pick_reply(shared: &Shared, request: &Request) -> Reply {
    let responder = {
        let mut state = shared.lock();
        if let Some(reply) = state.script.pop_front() {
            return reply;
        }
        match &state.responder {
            Some(responder) => Arc::clone(responder),
            None => return state.default.clone(),
        }
    };
    // Called without the lock so a responder may use the fake's own accessors.
    responder(request)
}
