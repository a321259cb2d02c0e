//! `FakeInflux`: the one InfluxDB `/api/v2/write` stand-in of lineship's integration tests and
//! of the load tool's counting sink. It owns a listener and a tokio runtime on its own thread
//! and answers writes from a script, a responder or a default. It runs in one of two modes:
//!
//! - [`Mode::Record`] (the tests'): every request is recorded with its headers, raw and
//!   gunzipped body and the status it answered, for assertions.
//! - [`Mode::Count`] (the load tool's): nothing is kept but counters, so it can take millions of
//!   lines a second; bodies are gunzipped into per-thread scratch buffers (libdeflate), lines
//!   are counted and, with `check_seq`, every `seq=<n>i` goes into a bitset ([`crate::seq`]).
//!
//! Both modes share the serving (`serve.rs`), the decoding and judging of a write (`write.rs`),
//! the replies (`reply.rs`, `body.rs`) and the counters (`counts.rs`).
//!
//! Invariants: an empty, blank or undecodable write is always answered 4xx and counted as bad
//! (and recorded, in record mode), so a test can assert that lineship never sends one; a write's
//! lines are counted before its answer goes out, so whatever the client saw acknowledged is in
//! the counts; every wait is bounded.

mod body;
mod counts;
mod reply;
mod request;
mod serve;
mod write;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use body::{BodyStream, FakeBody};
pub use counts::Counts;
pub use reply::{Reply, Responder};
pub use request::{percent_decode, split_lines, Request};

use crate::seq::SeqSet;
use counts::Counters;

/// The write endpoint lineship posts to.
pub const WRITE_PATH: &str = "/api/v2/write";

/// What the fake keeps of the writes it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every request, bodies included (the integration tests).
    Record,
    /// Counters only; with `check_seq`, also which `seq=<n>i` values arrived (the load tool).
    Count { check_seq: bool },
}

/// An InfluxDB stand-in, by default on `127.0.0.1:<port 0>` in record mode.
///
/// `POST /api/v2/write` is answered, in order of precedence, by:
/// 1. a 4xx when the body is empty (or only whitespace), too large, in an unknown encoding or
///    does not gunzip: lineship must never send one, so tests assert `empty_posts() == 0`;
/// 2. the next reply left in the script;
/// 3. the responder, when one is set;
/// 4. the default reply (204 unless changed).
///
/// `GET /ping` answers 204 (changeable with [`FakeInflux::set_ping_reply`]), `GET /health` 200,
/// anything else 404. In record mode every request is recorded and [`FakeInflux::requests`]
/// returns the writes; in count mode the request lists stay empty and [`FakeInflux::counts`]
/// says what arrived.
pub struct FakeInflux {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    mode: Mode,
    state: Mutex<FakeState>,
    changed: Condvar,
    /// Reply body bytes handed to hyper, on all paths.
    streamed: Arc<AtomicU64>,
    /// Count mode with `check_seq`: taken once per write, apart from `state`.
    seqs: Mutex<SeqSet>,
}

struct FakeState {
    /// Record mode only.
    requests: Vec<Request>,
    script: VecDeque<Reply>,
    default: Reply,
    responder: Option<Responder>,
    ping: Reply,
    delay: Duration,
    connections: u64,
    counters: Counters,
    /// Writes being answered right now, and the most there ever were at once.
    writes_in_flight: usize,
    max_writes_in_flight: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A panicking responder must not poison every later assertion.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How to start a [`FakeInflux`]; [`FakeInflux::builder`] makes one.
pub struct Builder {
    listen: SocketAddr,
    mode: Mode,
    script: Vec<Reply>,
    responder: Option<Responder>,
    default: Reply,
    worker_threads: usize,
    thread_name: Option<String>,
}

impl Builder {
    /// The address to listen on (default `127.0.0.1:0`).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Replies answered in order before the responder and the default.
    pub fn script(mut self, replies: Vec<Reply>) -> Self {
        self.script = replies;
        self
    }

    pub fn responder<F>(mut self, responder: F) -> Self
    where
        F: Fn(&Request) -> Reply + Send + Sync + 'static,
    {
        self.responder = Some(Arc::new(responder));
        self
    }

    /// The reply once the script is exhausted and no responder is set (default 204).
    pub fn default_reply(mut self, reply: Reply) -> Self {
        self.default = reply;
        self
    }

    /// Tokio worker threads (default 2).
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.worker_threads = n.max(1);
        self
    }

    /// The name of the fake's threads, e.g. so the load tool can add up their CPU time
    /// (default `fake-influx-<port>` for the serving thread and tokio's for the workers).
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread_name = Some(name.into());
        self
    }

    /// Binds the listener (so the address is usable at once) and starts serving.
    pub fn start(self) -> io::Result<FakeInflux> {
        let listener = StdTcpListener::bind(self.listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            mode: self.mode,
            state: Mutex::new(FakeState {
                requests: Vec::new(),
                script: self.script.into(),
                default: self.default,
                responder: self.responder,
                ping: Reply::no_content().with_header("X-Influxdb-Version", "v2-fake"),
                delay: Duration::ZERO,
                connections: 0,
                counters: Counters::default(),
                writes_in_flight: 0,
                max_writes_in_flight: 0,
            }),
            changed: Condvar::new(),
            streamed: Arc::new(AtomicU64::new(0)),
            seqs: Mutex::new(SeqSet::default()),
        });
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        runtime.worker_threads(self.worker_threads).enable_all();
        if let Some(name) = &self.thread_name {
            runtime.thread_name(name);
        }
        let runtime = runtime.build()?;
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel();
        let server_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(
                self.thread_name
                    .unwrap_or_else(|| format!("fake-influx-{}", addr.port())),
            )
            .spawn(move || {
                runtime.block_on(serve::serve(listener, server_shared, shutdown_rx));
                // Dropping the runtime closes every open keep-alive connection.
                runtime.shutdown_timeout(Duration::from_secs(2));
            })?;
        Ok(FakeInflux {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }
}

impl FakeInflux {
    /// A builder for a fake on `127.0.0.1:0` in record mode answering 204.
    pub fn builder() -> Builder {
        Builder {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            mode: Mode::Record,
            script: Vec::new(),
            responder: None,
            default: Reply::no_content(),
            worker_threads: 2,
            thread_name: None,
        }
    }

    /// Answers 204 to every write.
    pub fn start() -> Self {
        Self::with_script(Vec::new())
    }

    /// Answers the given replies in order, then the default reply.
    pub fn with_script(replies: Vec<Reply>) -> Self {
        Self::started(Self::builder().script(replies))
    }

    /// Answers every write with `responder(&request)`.
    pub fn with_responder<F>(responder: F) -> Self
    where
        F: Fn(&Request) -> Reply + Send + Sync + 'static,
    {
        Self::started(Self::builder().responder(responder))
    }

    /// Like [`FakeInflux::start`] but on a given port: lets an outage test bring the "server"
    /// back where the daemon expects it after dropping the previous fake.
    pub fn start_on_port(port: u16) -> Self {
        Self::started(Self::builder().listen(SocketAddr::from(([127, 0, 0, 1], port))))
    }

    /// Starts `builder`, panicking (this is for tests) when it cannot.
    fn started(builder: Builder) -> Self {
        let listen = builder.listen;
        builder
            .start()
            .unwrap_or_else(|e| panic!("fake influx: cannot start on {listen}: {e}"))
    }

    /// Sets the reply used once the script is exhausted and no responder is set.
    pub fn default_reply(self, reply: Reply) -> Self {
        self.set_default_reply(reply);
        self
    }

    pub fn set_default_reply(&self, reply: Reply) {
        self.shared.lock().default = reply;
    }

    pub fn set_responder<F>(&self, responder: F)
    where
        F: Fn(&Request) -> Reply + Send + Sync + 'static,
    {
        self.shared.lock().responder = Some(Arc::new(responder));
    }

    pub fn clear_responder(&self) {
        self.shared.lock().responder = None;
    }

    /// Appends replies to the script; they are used before the responder and the default.
    pub fn push_replies(&self, replies: Vec<Reply>) {
        self.shared.lock().script.extend(replies);
    }

    pub fn set_ping_reply(&self, reply: Reply) {
        self.shared.lock().ping = reply;
    }

    /// Delays every write's answer (after its body was read), e.g. to provoke client timeouts.
    pub fn set_response_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    pub fn mode(&self) -> Mode {
        self.shared.mode
    }

    /// What arrived so far; `expect` is the `(start, count)` of the sequence numbers that
    /// should have (count mode with `check_seq`), to count the lost ones.
    pub fn counts(&self, expect: Option<(u64, u64)>) -> Counts {
        let counters = self.shared.lock().counters.clone();
        let seq = match self.shared.mode {
            Mode::Count { check_seq: true } => Some(
                self.shared
                    .seqs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .summary(expect),
            ),
            _ => None,
        };
        counters.snapshot(seq)
    }

    /// When the last accepted write was answered.
    pub fn last_write_at(&self) -> Option<Instant> {
        self.shared.lock().counters.last_write
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request to the write endpoint, in the order they were answered.
    pub fn requests(&self) -> Vec<Request> {
        let state = self.shared.lock();
        state
            .requests
            .iter()
            .filter(|r| r.is_write())
            .cloned()
            .collect()
    }

    /// Every request on any path (pings, health checks, stray paths) in answer order.
    pub fn all_requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// Arrival times of the write requests, for backoff assertions.
    pub fn request_times(&self) -> Vec<Instant> {
        self.requests().iter().map(|r| r.at).collect()
    }

    /// Statuses answered to the write requests, in order.
    pub fn statuses(&self) -> Vec<u16> {
        self.requests().iter().map(|r| r.status).collect()
    }

    /// Lines of every write answered 2xx, in arrival order.
    pub fn accepted_lines(&self) -> Vec<String> {
        let state = self.shared.lock();
        state
            .requests
            .iter()
            .filter(|r| r.is_write() && r.accepted())
            .flat_map(Request::lines)
            .collect()
    }

    pub fn accepted_line_count(&self) -> usize {
        self.shared.lock().counters.totals.lines as usize
    }

    /// Writes rejected because their body was empty. lineship must never send one.
    pub fn empty_posts(&self) -> usize {
        let state = self.shared.lock();
        state.requests.iter().filter(|r| r.is_empty_write()).count()
    }

    /// Reply body bytes sent so far (generated bodies included), on every path.
    pub fn body_bytes_sent(&self) -> u64 {
        self.shared.streamed.load(Ordering::Relaxed)
    }

    /// The most writes that were being answered at the same moment.
    pub fn max_writes_in_flight(&self) -> usize {
        self.shared.lock().max_writes_in_flight
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.lock().connections
    }

    /// Forgets the recorded requests and the counts (the script, responder, default and the
    /// connection count stay).
    pub fn clear(&self) {
        let mut state = self.shared.lock();
        state.requests.clear();
        state.counters = Counters::default();
        *self.shared.seqs.lock().unwrap_or_else(|e| e.into_inner()) = SeqSet::default();
    }

    /// Blocks until at least `n` lines were accepted. Blocking: from an async test whose
    /// runtime also drives the code under test, use [`FakeInflux::wait_for_lines_async`].
    pub fn wait_for_lines(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.counters.totals.lines >= n as u64)
    }

    /// Blocks until at least `n` write requests were answered.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.counters.totals.write_requests >= n as u64)
    }

    /// Blocks until `done` holds for the recorded requests (all paths).
    pub fn wait_until<F>(&self, timeout: Duration, mut done: F) -> bool
    where
        F: FnMut(&[Request]) -> bool,
    {
        self.wait_for(timeout, |s| done(&s.requests))
    }

    pub async fn wait_for_lines_async(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.accepted_line_count() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn wait_for_requests_async(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.shared.lock().counters.totals.write_requests >= n as u64 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn wait_for<F>(&self, timeout: Duration, mut done: F) -> bool
    where
        F: FnMut(&FakeState) -> bool,
    {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if done(&state) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for FakeInflux {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
