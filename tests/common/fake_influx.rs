//! `FakeInflux`: an InfluxDB `/api/v2/write` stand-in for tests. It owns a listener on
//! 127.0.0.1 and a tokio runtime on its own thread, records every request (headers, raw and
//! gunzipped body, the status it answered) and answers writes from a script, a responder or a
//! default. Invariant: an empty or undecodable write is always answered 400 and recorded, so a
//! test can assert that lineship never sends one. A reply may also behave like a hostile server:
//! a huge or endless body ([`BodyStream`]), header values that are not UTF-8, or closing the
//! connection after answering without saying so (no `Connection: close`).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::fake_body::{BodyStream, FakeBody};
use super::{gunzip, percent_decode, split_lines};

/// The write endpoint lineship posts to.
pub const WRITE_PATH: &str = "/api/v2/write";

/// One scripted answer of [`FakeInflux`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
    /// Headers whose values need not be UTF-8 (sent after `headers`).
    pub raw_headers: Vec<(String, Vec<u8>)>,
    /// A generated body sent instead of `body`.
    pub stream: Option<BodyStream>,
    /// Close the connection once this reply is sent, without a `Connection: close` header
    /// (the client only learns of it when it tries the connection again).
    pub close_after: bool,
}

impl Reply {
    /// A reply with this status, no headers and an empty body.
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            body: String::new(),
            headers: Vec::new(),
            raw_headers: Vec::new(),
            stream: None,
            close_after: false,
        }
    }

    /// `204 No Content`, what InfluxDB answers to a good write.
    pub fn no_content() -> Self {
        Self::status(204)
    }

    /// An error shaped like InfluxDB 2.x's: JSON `{"code": ..., "message": ...}`.
    pub fn influx_error(status: u16, message: &str) -> Self {
        let code = match status {
            400 => "invalid",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not found",
            413 => "request too large",
            422 => "unprocessable entity",
            429 => "too many requests",
            503 => "unavailable",
            _ => "internal error",
        };
        let body = serde_json::json!({ "code": code, "message": message }).to_string();
        Self::status(status)
            .with_header("Content-Type", "application/json; charset=utf-8")
            .with_body(body)
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    pub fn with_raw_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.raw_headers.push((name.into(), value.into()));
        self
    }

    pub fn with_stream(mut self, stream: BodyStream) -> Self {
        self.stream = Some(stream);
        self
    }

    pub fn closing(mut self) -> Self {
        self.close_after = true;
        self
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One request the fake received, as recorded after it was answered.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Query parameters, percent-decoded; a repeated key keeps its last value.
    pub query: BTreeMap<String, String>,
    /// Header names lowercased; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    /// The body as it came over the wire.
    pub body: Vec<u8>,
    /// The body gunzipped when `Content-Encoding` is `gzip`, otherwise the raw body.
    pub decoded: Vec<u8>,
    /// Set when the body could not be read or claimed gzip but did not gunzip; `decoded` is
    /// then empty and the fake answered 400.
    pub decode_error: Option<String>,
    /// The status the fake answered. It is 0 while a responder is looking at the request.
    pub status: u16,
    /// When the request's head arrived.
    pub at: Instant,
    /// Which TCP connection carried it (1, 2, ... in accept order): keep-alive shows as reuse.
    pub connection: u64,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    pub fn is_gzip(&self) -> bool {
        self.header("content-encoding")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"))
    }

    /// The decoded body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.decoded).into_owned()
    }

    /// The decoded body split into lines, without their `\n`.
    pub fn lines(&self) -> Vec<String> {
        split_lines(&self.decoded)
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.text().contains(needle)
    }

    pub fn is_write(&self) -> bool {
        self.path == WRITE_PATH
    }

    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// True for a write whose decoded body holds nothing but whitespace.
    pub fn is_empty_write(&self) -> bool {
        self.is_write()
            && self.decode_error.is_none()
            && self.decoded.iter().all(u8::is_ascii_whitespace)
    }
}

/// A programmable answer: sees the recorded request (with `status == 0`) and picks the reply.
pub type Responder = Arc<dyn Fn(&Request) -> Reply + Send + Sync + 'static>;

/// An InfluxDB stand-in on `127.0.0.1:<port 0>`.
///
/// `POST /api/v2/write` is answered, in order of precedence, by:
/// 1. a 400 when the body is empty (or only whitespace) or does not gunzip: lineship must never
///    send one, so tests assert `empty_posts() == 0`;
/// 2. the next reply left in the script;
/// 3. the responder, when one is set;
/// 4. the default reply (204 unless changed).
///
/// `GET /ping` answers 204 (changeable with [`FakeInflux::set_ping_reply`]), `GET /health` 200,
/// anything else 404. Every request is recorded; [`FakeInflux::requests`] returns the writes.
pub struct FakeInflux {
    addr: SocketAddr,
    shared: Arc<Shared>,
    streamed: Arc<AtomicU64>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<FakeState>,
    changed: Condvar,
    /// Reply body bytes handed to hyper, on all paths.
    streamed: Arc<AtomicU64>,
}

struct FakeState {
    requests: Vec<Request>,
    script: VecDeque<Reply>,
    default: Reply,
    responder: Option<Responder>,
    ping: Reply,
    delay: Duration,
    connections: u64,
    accepted_lines: usize,
    writes: usize,
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

impl FakeInflux {
    /// Answers 204 to every write.
    pub fn start() -> Self {
        Self::with_script(Vec::new())
    }

    /// Answers the given replies in order, then the default reply.
    pub fn with_script(replies: Vec<Reply>) -> Self {
        Self::spawn(0, replies.into(), None)
    }

    /// Answers every write with `responder(&request)`.
    pub fn with_responder<F>(responder: F) -> Self
    where
        F: Fn(&Request) -> Reply + Send + Sync + 'static,
    {
        Self::spawn(0, VecDeque::new(), Some(Arc::new(responder)))
    }

    /// Like [`FakeInflux::start`] but on a given port: lets an outage test bring the "server"
    /// back where the daemon expects it after dropping the previous fake.
    pub fn start_on_port(port: u16) -> Self {
        Self::spawn(port, VecDeque::new(), None)
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

    fn spawn(port: u16, script: VecDeque<Reply>, responder: Option<Responder>) -> Self {
        let listener = StdTcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("fake influx: cannot bind 127.0.0.1:{port}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("fake influx: set_nonblocking");
        let addr = listener.local_addr().expect("fake influx: local_addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(FakeState {
                requests: Vec::new(),
                script,
                default: Reply::no_content(),
                responder,
                ping: Reply::no_content().with_header("X-Influxdb-Version", "v2-fake"),
                delay: Duration::ZERO,
                connections: 0,
                accepted_lines: 0,
                writes: 0,
                writes_in_flight: 0,
                max_writes_in_flight: 0,
            }),
            changed: Condvar::new(),
            streamed: Arc::new(AtomicU64::new(0)),
        });
        let streamed = Arc::clone(&shared.streamed);
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel();
        let server_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("fake-influx-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("fake influx: tokio runtime");
                runtime.block_on(serve(listener, server_shared, shutdown_rx));
                // Dropping the runtime closes every open keep-alive connection.
                runtime.shutdown_timeout(Duration::from_secs(2));
            })
            .expect("fake influx: spawn thread");
        FakeInflux {
            addr,
            shared,
            streamed,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
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
        self.shared.lock().accepted_lines
    }

    /// Writes rejected because their body was empty. lineship must never send one.
    pub fn empty_posts(&self) -> usize {
        let state = self.shared.lock();
        state.requests.iter().filter(|r| r.is_empty_write()).count()
    }

    /// Reply body bytes sent so far (generated bodies included), on every path.
    pub fn body_bytes_sent(&self) -> u64 {
        self.streamed.load(Ordering::Relaxed)
    }

    /// The most writes that were being answered at the same moment.
    pub fn max_writes_in_flight(&self) -> usize {
        self.shared.lock().max_writes_in_flight
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.lock().connections
    }

    /// Forgets the recorded requests (the script, responder and default stay).
    pub fn clear(&self) {
        let mut state = self.shared.lock();
        state.requests.clear();
        state.accepted_lines = 0;
        state.writes = 0;
    }

    /// Blocks until at least `n` lines were accepted. Blocking: from an async test whose
    /// runtime also drives the code under test, use [`FakeInflux::wait_for_lines_async`].
    pub fn wait_for_lines(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.accepted_lines >= n)
    }

    /// Blocks until at least `n` write requests were answered.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.writes >= n)
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
            if self.shared.lock().writes >= n {
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

async fn serve(
    listener: StdTcpListener,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("fake influx: listener");
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = {
            let mut state = shared.lock();
            state.connections += 1;
            state.connections
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let close = Arc::new(tokio::sync::Notify::new());
            let close_on = Arc::clone(&close);
            let service = service_fn(move |req| {
                handle(Arc::clone(&shared), connection, Arc::clone(&close_on), req)
            });
            let conn = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                // The handler signals before returning its reply, and hyper writes the head in
                // the same poll that takes the reply: the head is out (without
                // `Connection: close`) before this disables keep-alive, so the connection
                // closes right after this reply.
                _ = close.notified() => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
}

async fn handle(
    shared: Arc<Shared>,
    connection: u64,
    close: Arc<tokio::sync::Notify>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<FakeBody>, Infallible> {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_ascii_lowercase())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let (body, body_error) = match body.collect().await {
        Ok(collected) => (collected.to_bytes().to_vec(), None),
        Err(e) => (Vec::new(), Some(format!("reading the body failed: {e}"))),
    };
    let mut request = Request {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parse_query(parts.uri.query().unwrap_or("")),
        headers,
        body,
        decoded: Vec::new(),
        decode_error: body_error,
        status: 0,
        at,
        connection,
    };
    if request.decode_error.is_none() {
        if request.is_gzip() {
            match gunzip(&request.body) {
                Ok(decoded) => request.decoded = decoded,
                Err(e) => request.decode_error = Some(format!("gunzip failed: {e}")),
            }
        } else {
            request.decoded = request.body.clone();
        }
    }

    let reply = match (request.method.as_str(), request.path.as_str()) {
        ("POST", WRITE_PATH) => {
            {
                let mut state = shared.lock();
                state.writes_in_flight += 1;
                state.max_writes_in_flight = state.max_writes_in_flight.max(state.writes_in_flight);
            }
            let reply = write_reply(&shared, &request);
            let delay = shared.lock().delay;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            shared.lock().writes_in_flight -= 1;
            reply
        }
        ("GET" | "HEAD", "/ping") => shared.lock().ping.clone(),
        ("GET", "/health") => Reply::status(200)
            .with_header("Content-Type", "application/json; charset=utf-8")
            .with_body(
                r#"{"name":"influxdb","message":"ready for queries and writes","status":"pass"}"#,
            ),
        _ => Reply::influx_error(404, "path not found"),
    };

    request.status = reply.status;
    {
        let mut state = shared.lock();
        if request.is_write() {
            state.writes += 1;
            if request.accepted() {
                state.accepted_lines += request.lines().len();
            }
        }
        state.requests.push(request);
    }
    shared.changed.notify_all();
    if reply.close_after {
        close.notify_one();
    }
    Ok(to_response(reply, &shared.streamed))
}

/// Picks the answer to a write: bad bodies first, then script, responder, default.
fn write_reply(shared: &Shared, request: &Request) -> Reply {
    if let Some(error) = &request.decode_error {
        return Reply::influx_error(400, &format!("fake influx: {error}"));
    }
    if request.is_empty_write() {
        return Reply::influx_error(
            400,
            "fake influx: empty request body (lineship must never send one)",
        );
    }
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

fn to_response(reply: Reply, streamed: &Arc<AtomicU64>) -> hyper::Response<FakeBody> {
    let mut builder = hyper::Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    for (name, value) in &reply.raw_headers {
        builder = builder.header(name.as_str(), value.as_slice());
    }
    let body = match reply.stream {
        Some(plan) => FakeBody::stream(plan, Arc::clone(streamed)),
        None => FakeBody::full(Bytes::from(reply.body), Arc::clone(streamed)),
    };
    builder.body(body).unwrap_or_else(|e| {
        let text = Bytes::from(format!("bad scripted reply: {e}"));
        let mut response = hyper::Response::new(FakeBody::full(text, Arc::clone(streamed)));
        *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        response
    })
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}
