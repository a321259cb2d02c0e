//! The stdin input: reads until EOF on its own thread, blocking when the pipeline is full
//! (the pipe is the buffer).

use std::io::Read;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::Context;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Intake, Links};
use crate::config::StdinSettings;
use crate::line::Framer;
use crate::queue::Detachable;

const READ_BUF: usize = 256 << 10;

/// Starts the stdin input's thread. The returned receiver resolves when it has read everything
/// it will (EOF, a read error, or cancellation). The thread is never joined: at a shutdown
/// before EOF it may stay blocked in `read` until the process exits, having dropped its sender.
pub fn start(
    settings: &StdinSettings,
    reader: Box<dyn Read + Send>,
    max_line_bytes: usize,
    links: &Links,
) -> anyhow::Result<oneshot::Receiver<()>> {
    let intake = Intake::new(
        &settings.line,
        max_line_bytes,
        links.stats.register_input("stdin"),
        links.dead_letter.clone(),
    );
    let tx = Detachable::new(links.chunks.clone());
    let (done_tx, done_rx) = oneshot::channel();
    let (thread_tx, cancel) = (tx.clone(), links.cancel.clone());
    std::thread::Builder::new()
        .name("lineship-stdin".into())
        .spawn(move || {
            run(reader, intake, max_line_bytes, thread_tx, cancel);
            let _ = done_tx.send(());
        })
        .context("cannot start the stdin thread")?;
    let cancel = links.cancel.clone();
    tokio::spawn(async move {
        cancel.cancelled().await;
        tx.detach();
    });
    Ok(done_rx)
}

/// Reads `reader` to EOF (or until `cancel`), sending one chunk per read. Returns when done.
pub fn run(
    mut reader: Box<dyn Read + Send>,
    mut intake: Intake,
    max_line_bytes: usize,
    tx: Detachable,
    cancel: CancellationToken,
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
        if let Some(tx) = tx.get() {
            tx.wait_while_held(|| cancel.is_cancelled());
        }
        if cancel.is_cancelled() {
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
            tx.detach();
            return;
        }
    }
    let stamp = intake.stamp_now();
    framer.finish(|l| intake.line(l, stamp, &mut out));
    send(&mut intake, &mut out, &tx);
    tx.detach();
}

/// Sends the accepted lines in `out`, blocking while the channel is full. Returns false when the
/// pipeline is gone.
fn send(intake: &mut Intake, out: &mut Vec<u8>, tx: &Detachable) -> bool {
    let sent = match tx.get() {
        Some(tx) => intake.send_blocking(out, READ_BUF + READ_BUF / 4, &tx),
        None => intake
            .take_chunk(out, READ_BUF + READ_BUF / 4)
            .map_or(Ok(()), |c| Err(c.lines)),
    };
    match sent {
        Ok(()) => true,
        Err(lines) => {
            tracing::error!(lines, "the pipeline shut down before these stdin lines could be queued; they were not accepted");
            false
        }
    }
}
