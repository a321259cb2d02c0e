//! The stdin input: reads until EOF on its own thread, blocking when the pipeline is full
//! (the pipe is the buffer).

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use super::Intake;
use crate::line::Framer;
use crate::queue::ChunkTx;

const READ_BUF: usize = 256 << 10;

/// Reads `reader` to EOF (or until `stop`), sending one chunk per read. Returns when done.
pub fn run(
    mut reader: Box<dyn Read + Send>,
    mut intake: Intake,
    max_line_bytes: usize,
    tx: ChunkTx,
    stop: Arc<AtomicBool>,
) {
    let mut framer = if intake.is_text() {
        Framer::raw(max_line_bytes)
    } else {
        Framer::new(max_line_bytes)
    };
    let mut buf = vec![0u8; READ_BUF];
    let mut out = Vec::with_capacity(READ_BUF + READ_BUF / 4);
    loop {
        // While nothing read now could be delivered or spooled, leave it in the pipe.
        tx.wait_while_held(|| stop.load(Relaxed));
        if stop.load(Relaxed) {
            break;
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "cannot read stdin; treating it as end of input");
                break;
            }
        };
        intake.stats().bytes.fetch_add(n as u64, Relaxed);
        let stamp = intake.stamp_now();
        framer.feed(&buf[..n], |l| intake.line(l, stamp, &mut out));
        if !send(&mut intake, &mut out, &tx) {
            return;
        }
    }
    let stamp = intake.stamp_now();
    framer.finish(|l| intake.line(l, stamp, &mut out));
    send(&mut intake, &mut out, &tx);
}

/// Sends the accepted lines in `out`, blocking while the channel is full. Returns false when the
/// pipeline is gone.
fn send(intake: &mut Intake, out: &mut Vec<u8>, tx: &ChunkTx) -> bool {
    let Some(chunk) = intake.take_chunk(out, READ_BUF + READ_BUF / 4) else {
        return true;
    };
    let lines = chunk.lines;
    match tx.send(chunk) {
        Ok(()) => {
            intake.count_sent(lines);
            true
        }
        Err(_) => {
            tracing::error!(lines, "the pipeline shut down before these stdin lines could be queued; they were not accepted");
            false
        }
    }
}
