//! The chunk queue between the inputs and the batcher: a crossbeam channel bounded both in
//! chunks and in bytes.
//!
//! A count bound alone does not bound memory: a UDP read can make a 4 MiB chunk and a tail
//! chunk is a quarter of `batch_max_bytes`, so 64 chunks could hold hundreds of MiB while the
//! batcher is behind. Here a sender first reserves its chunk's bytes, then sends; the receiver
//! gives them back as it takes each chunk. The bytes queued never exceed `max_bytes`, except
//! that one chunk larger than the whole budget may pass alone into an empty queue (it is
//! already in memory; refusing it forever would wedge its input).
//!
//! Blocking senders (stdin, tail) wait on a condition variable that the receiver signals only
//! while someone waits, so the steady state costs two atomic operations per chunk. They may
//! fill only a quarter of the bytes ([`WAITING_SHARE`]): the pipe or the file is their buffer,
//! and more queue would only cost memory. The rest is kept for the UDP input, which cannot
//! wait: it uses [`ChunkTx::try_send`], which may fill the whole budget and never blocks.
//!
//! The batcher may also *hold* the waiting senders ([`ChunkRx::hold_waiting`]) while what they
//! would send could be neither delivered nor spooled (the server is down and spool writes
//! fail): they then wait as if the queue were full, so stdin is not read to its end into memory
//! and lost, and a tailed file stays the buffer.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{
    Receiver, RecvTimeoutError, SendError, Sender, TryRecvError, TrySendError,
};

use crate::batch::Chunk;

/// Chunks queued between the inputs and the batcher (small UDP reads make many small chunks).
pub const MAX_CHUNKS: usize = 1024;
/// Bytes of checked lines queued between the inputs and the batcher: about 200 ms of UDP input
/// at 1M lines/s, and the bound that keeps memory flat when the inputs outrun the batcher.
/// stdin and tail may fill only a quarter of it ([`WAITING_SHARE`]).
pub const MAX_BYTES: usize = 16 << 20;
/// Upper bound on one wait of a blocked sender; a missed wake-up costs at most this.
const WAIT_SLICE: Duration = Duration::from_millis(50);
/// Blocking senders may fill `max_bytes / WAITING_SHARE` of the queue.
pub const WAITING_SHARE: usize = 4;

struct Budget {
    max_bytes: usize,
    used: AtomicUsize,
    waiting: AtomicUsize,
    receiver_gone: AtomicBool,
    /// Waiting senders are held (see the module doc).
    held: AtomicBool,
    lock: Mutex<()>,
    freed: Condvar,
}

impl Budget {
    /// Reserves `n` bytes if the queue stays within `limit`, or if it holds no bytes at all.
    fn try_reserve(&self, n: usize, limit: usize) -> bool {
        let mut cur = self.used.load(SeqCst);
        loop {
            if cur > 0 && cur.saturating_add(n) > limit {
                return false;
            }
            match self
                .used
                .compare_exchange_weak(cur, cur + n, SeqCst, SeqCst)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Reserves `n` bytes within `limit`, waiting for room. False if the receiver went away
    /// meanwhile.
    fn reserve(&self, n: usize, limit: usize) -> bool {
        if !self.held.load(SeqCst) && self.try_reserve(n, limit) {
            return true;
        }
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.waiting.fetch_add(1, SeqCst);
        let ok = loop {
            // Checked after announcing the wait: a release that read `waiting == 0` happened
            // before this check, so its bytes are visible here.
            if !self.held.load(SeqCst) && self.try_reserve(n, limit) {
                break true;
            }
            if self.receiver_gone.load(SeqCst) {
                break false;
            }
            guard = self
                .freed
                .wait_timeout(guard, WAIT_SLICE)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        self.waiting.fetch_sub(1, SeqCst);
        ok
    }

    fn release(&self, n: usize) {
        self.used.fetch_sub(n, SeqCst);
        if self.waiting.load(SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.freed.notify_all();
        }
    }
}

/// The inputs' end. Cloned once per input thread; the queue closes when every clone is dropped.
#[derive(Clone)]
pub struct ChunkTx {
    tx: Sender<Chunk>,
    budget: Arc<Budget>,
}

/// The batcher's end.
pub struct ChunkRx {
    rx: Receiver<Chunk>,
    budget: Arc<Budget>,
}

/// A queue of at most `max_chunks` chunks holding at most `max_bytes` bytes of lines.
pub fn channel(max_chunks: usize, max_bytes: usize) -> (ChunkTx, ChunkRx) {
    let (tx, rx) = crossbeam_channel::bounded(max_chunks);
    let budget = Arc::new(Budget {
        max_bytes,
        used: AtomicUsize::new(0),
        waiting: AtomicUsize::new(0),
        receiver_gone: AtomicBool::new(false),
        held: AtomicBool::new(false),
        lock: Mutex::new(()),
        freed: Condvar::new(),
    });
    (
        ChunkTx {
            tx,
            budget: budget.clone(),
        },
        ChunkRx { rx, budget },
    )
}

impl ChunkTx {
    /// Sends, waiting while the queue is full (in chunks, or past its waiting senders' share of
    /// bytes). Fails only when the receiver is gone, giving the chunk back.
    pub fn send(&self, chunk: Chunk) -> Result<(), SendError<Chunk>> {
        let n = chunk.data.len();
        if !self
            .budget
            .reserve(n, self.budget.max_bytes / WAITING_SHARE)
        {
            return Err(SendError(chunk));
        }
        self.tx.send(chunk).inspect_err(|_| self.budget.release(n))
    }

    /// Sends without waiting: `Full` when the bytes or the chunk slots are used up.
    pub fn try_send(&self, chunk: Chunk) -> Result<(), TrySendError<Chunk>> {
        self.try_send_within(chunk, self.budget.max_bytes, false)
    }

    /// Sends without waiting, as an input that could wait would: within the waiting senders'
    /// share of bytes, and `Full` while they are held. For inputs that answer "try again
    /// later" instead of waiting (HTTP).
    pub fn try_send_waiting(&self, chunk: Chunk) -> Result<(), TrySendError<Chunk>> {
        self.try_send_within(chunk, self.budget.max_bytes / WAITING_SHARE, true)
    }

    fn try_send_within(
        &self,
        chunk: Chunk,
        limit: usize,
        held_is_full: bool,
    ) -> Result<(), TrySendError<Chunk>> {
        if self.budget.receiver_gone.load(SeqCst) {
            return Err(TrySendError::Disconnected(chunk));
        }
        let n = chunk.data.len();
        if (held_is_full && self.budget.held.load(SeqCst)) || !self.budget.try_reserve(n, limit) {
            return Err(TrySendError::Full(chunk));
        }
        self.tx
            .try_send(chunk)
            .inspect_err(|_| self.budget.release(n))
    }

    /// Bytes of lines queued now (for tests and telemetry).
    pub fn queued_bytes(&self) -> usize {
        self.budget.used.load(SeqCst)
    }

    /// Waits while waiting senders are held, or until `stop()`. Inputs that can wait call it
    /// before reading more, so that little is read and in hand when a hold starts.
    pub fn wait_while_held(&self, stop: impl Fn() -> bool) {
        while self.budget.held.load(SeqCst) && !stop() && !self.budget.receiver_gone.load(SeqCst) {
            let guard = self.budget.lock.lock().unwrap_or_else(|e| e.into_inner());
            let _ = self.budget.freed.wait_timeout(guard, WAIT_SLICE);
        }
    }
}

/// A sender that shutdown can take away from an input that may not notice the cancellation
/// for a while (stdin blocked in `read` on a pipe nobody closes, HTTP connections that stay
/// open): the batcher ends when every input's sender is gone.
#[derive(Clone)]
pub struct Detachable(Arc<Mutex<Option<ChunkTx>>>);

impl Detachable {
    pub fn new(tx: ChunkTx) -> Self {
        Detachable(Arc::new(Mutex::new(Some(tx))))
    }

    /// A sender for one wait or send; `None` once detached.
    pub fn get(&self) -> Option<ChunkTx> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Drops the sender (a send in progress keeps its own clone until it returns).
    pub fn detach(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl ChunkRx {
    /// The underlying receiver, for `crossbeam_channel::select!`. A chunk received through it
    /// must be passed to [`ChunkRx::taken`], or its bytes stay reserved.
    pub fn select_handle(&self) -> &Receiver<Chunk> {
        &self.rx
    }

    /// Gives back the bytes of a chunk received through [`ChunkRx::select_handle`].
    pub fn taken(&self, chunk: Chunk) -> Chunk {
        self.budget.release(chunk.data.len());
        chunk
    }

    /// Bytes of lines queued now.
    pub fn queued_bytes(&self) -> usize {
        self.budget.used.load(SeqCst)
    }

    /// Holds (or releases) the waiting senders: while held, [`ChunkTx::send`] waits as if the
    /// queue were full; [`ChunkTx::try_send`] is not affected.
    pub fn hold_waiting(&self, on: bool) {
        if self.budget.held.swap(on, SeqCst) && !on {
            let _guard = self.budget.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.budget.freed.notify_all();
        }
    }

    pub fn recv(&self) -> Option<Chunk> {
        self.rx.recv().ok().map(|c| self.taken(c))
    }

    pub fn try_recv(&self) -> Result<Chunk, TryRecvError> {
        self.rx.try_recv().map(|c| self.taken(c))
    }

    pub fn recv_timeout(&self, timeout: Duration) -> Result<Chunk, RecvTimeoutError> {
        self.rx.recv_timeout(timeout).map(|c| self.taken(c))
    }

    pub fn recv_deadline(&self, deadline: Instant) -> Result<Chunk, RecvTimeoutError> {
        self.rx.recv_deadline(deadline).map(|c| self.taken(c))
    }
}

impl Drop for ChunkRx {
    fn drop(&mut self) {
        self.budget.receiver_gone.store(true, SeqCst);
        let _guard = self.budget.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Dest;
    use crate::line::Precision;

    fn chunk(bytes: usize) -> Chunk {
        Chunk {
            dest: Dest::new("b", Precision::Ns),
            data: vec![b'x'; bytes],
            lines: 1,
            ack: None,
        }
    }

    #[test]
    fn bytes_bound_try_send_and_receiving_gives_them_back() {
        let (tx, rx) = channel(100, 1000);
        tx.try_send(chunk(600)).unwrap();
        tx.try_send(chunk(400)).unwrap();
        assert_eq!(tx.queued_bytes(), 1000);
        assert!(matches!(tx.try_send(chunk(1)), Err(TrySendError::Full(_))));
        assert_eq!(rx.try_recv().unwrap().data.len(), 600);
        assert_eq!(tx.queued_bytes(), 400);
        tx.try_send(chunk(600)).unwrap();
        assert!(matches!(tx.try_send(chunk(1)), Err(TrySendError::Full(_))));
    }

    #[test]
    fn chunk_count_bound_still_holds_and_gives_bytes_back() {
        let (tx, rx) = channel(2, 1 << 20);
        tx.try_send(chunk(10)).unwrap();
        tx.try_send(chunk(10)).unwrap();
        assert!(matches!(tx.try_send(chunk(10)), Err(TrySendError::Full(_))));
        assert_eq!(tx.queued_bytes(), 20, "a refused chunk reserves nothing");
        rx.recv().unwrap();
        rx.recv().unwrap();
        assert_eq!(tx.queued_bytes(), 0);
    }

    #[test]
    fn try_send_waiting_keeps_to_the_waiting_share_and_to_a_hold() {
        let (tx, rx) = channel(100, 1000);
        tx.try_send_waiting(chunk(250)).unwrap();
        assert!(matches!(
            tx.try_send_waiting(chunk(1)),
            Err(TrySendError::Full(_))
        ));
        tx.try_send(chunk(1)).unwrap();
        rx.recv().unwrap();
        rx.recv().unwrap();
        rx.hold_waiting(true);
        assert!(matches!(
            tx.try_send_waiting(chunk(1)),
            Err(TrySendError::Full(_))
        ));
        rx.hold_waiting(false);
        tx.try_send_waiting(chunk(1)).unwrap();
        drop(rx);
        assert!(matches!(
            tx.try_send_waiting(chunk(1)),
            Err(TrySendError::Disconnected(_))
        ));
    }

    #[test]
    fn held_waiting_senders_wait_and_try_send_does_not() {
        let (tx, rx) = channel(100, 1 << 20);
        rx.hold_waiting(true);
        let waiter = {
            let tx = tx.clone();
            std::thread::spawn(move || tx.send(chunk(10)).is_ok())
        };
        tx.try_send(chunk(5)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(tx.queued_bytes(), 5, "the waiting sender is held");
        assert!(!waiter.is_finished());
        rx.hold_waiting(false);
        assert!(waiter.join().unwrap());
        assert_eq!(tx.queued_bytes(), 15);
        // wait_while_held returns at once when nothing is held, and on stop while held.
        tx.wait_while_held(|| false);
        rx.hold_waiting(true);
        tx.wait_while_held(|| true);
    }

    #[test]
    fn an_oversized_chunk_passes_alone_into_an_empty_queue() {
        let (tx, rx) = channel(10, 100);
        tx.try_send(chunk(5000)).unwrap();
        assert!(matches!(tx.try_send(chunk(1)), Err(TrySendError::Full(_))));
        rx.recv().unwrap();
        tx.try_send(chunk(1)).unwrap();
        assert!(matches!(
            tx.try_send(chunk(5000)),
            Err(TrySendError::Full(_))
        ));
    }

    #[test]
    fn waiting_senders_fill_a_quarter_and_leave_the_rest_to_try_send() {
        let (tx, rx) = channel(100, 1000);
        tx.send(chunk(200)).unwrap();
        let t = {
            let tx = tx.clone();
            std::thread::spawn(move || tx.send(chunk(100)).is_ok())
        };
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            tx.queued_bytes(),
            200,
            "past 250 bytes a waiting sender waits"
        );
        tx.try_send(chunk(800)).unwrap();
        assert_eq!(
            tx.queued_bytes(),
            1000,
            "try_send may fill the whole budget"
        );
        rx.recv().unwrap();
        rx.recv().unwrap();
        assert!(t.join().unwrap());
        assert_eq!(tx.queued_bytes(), 100);
    }

    #[test]
    fn blocked_send_wakes_when_the_receiver_takes_a_chunk() {
        let (tx, rx) = channel(10, 100);
        tx.send(chunk(100)).unwrap();
        let t = {
            let tx = tx.clone();
            std::thread::spawn(move || tx.send(chunk(50)).is_ok())
        };
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(tx.queued_bytes(), 100, "the second send waits for room");
        assert_eq!(rx.recv().unwrap().data.len(), 100);
        assert!(t.join().unwrap());
        assert_eq!(rx.recv().unwrap().data.len(), 50);
        assert_eq!(tx.queued_bytes(), 0);
    }

    #[test]
    fn blocked_send_fails_when_the_receiver_goes_away() {
        let (tx, rx) = channel(10, 100);
        tx.send(chunk(100)).unwrap();
        let t = {
            let tx = tx.clone();
            std::thread::spawn(move || tx.send(chunk(50)).map_err(|e| e.0.data.len()))
        };
        std::thread::sleep(Duration::from_millis(30));
        drop(rx);
        assert_eq!(
            t.join().unwrap(),
            Err(50),
            "the chunk comes back to its input"
        );
        assert!(matches!(
            tx.try_send(chunk(1)),
            Err(TrySendError::Disconnected(_))
        ));
    }

    #[test]
    fn many_senders_never_exceed_the_budget_and_lose_nothing() {
        let (tx, rx) = channel(1000, 4096);
        let senders: Vec<_> = (0..4)
            .map(|_| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        tx.send(chunk(1 + i % 700)).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let (mut n, mut peak) = (0, 0);
        while rx.recv().is_some() {
            peak = peak.max(rx.budget.used.load(SeqCst));
            n += 1;
        }
        for s in senders {
            s.join().unwrap();
        }
        assert_eq!(n, 8000);
        assert!(peak <= 4096, "queued bytes peaked at {peak}");
        assert_eq!(rx.budget.used.load(SeqCst), 0);
    }
}
