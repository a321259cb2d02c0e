//! The UDP input: the receive loop on its own (truncation, a full channel, kernel drops,
//! stopping), the whole pipeline in-process against the fake InfluxDB (IPv4, IPv6, several
//! inputs), the real binary (binding with workers, SIGTERM, systemd socket activation), and
//! 200,000 lines into a real VictoriaMetrics.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use lineship::batch::{Chunk, Dest};
use lineship::config::{InputFormat, LineSettings};
use lineship::input::udp::recv::Worker;
use lineship::input::Intake;
use lineship::line::Precision;
use lineship::queue::{ChunkRx, ChunkTx};
use lineship::reject::DeadLetter;
use lineship::telemetry::{InputStats, Stats};
use lineship::{Io, Report, Settings};

const T: Duration = Duration::from_secs(30);

/// Polls `done` every 5 ms until it holds or `timeout` passes.
fn eventually(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Binds a UDP socket, or prints a SKIPPED notice when the address family is unavailable
/// (IPv6 switched off on the host).
fn bind_or_skip(addr: &str, test: &str) -> Option<UdpSocket> {
    match UdpSocket::bind(addr) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("SKIPPED {test}: cannot bind {addr} ({e})");
            None
        }
    }
}

fn client_for(addr: SocketAddr) -> UdpSocket {
    let any = if addr.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    UdpSocket::bind(any).expect("bind a client socket")
}

// ---------------------------------------------------------------------------------------------
// The receive loop on its own.

struct Loop {
    stats: Arc<InputStats>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
    rx: ChunkRx,
    _dir: tempfile::TempDir,
}

impl Loop {
    /// Runs a `Worker` on `socket` with `slots` buffers of `slot_bytes`, sending to `tx`.
    fn start(
        socket: UdpSocket,
        slots: usize,
        slot_bytes: usize,
        hold_bytes: usize,
        (tx, rx): (ChunkTx, ChunkRx),
        stop: Arc<AtomicBool>,
    ) -> Loop {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(InputStats::new("udp:test"));
        let line = LineSettings {
            bucket: "b".into(),
            precision: Precision::Ns,
            stamp_missing: false,
            format: InputFormat::Lp,
            measurement: "log".into(),
            tags: Vec::new(),
        };
        let worker = Worker {
            socket: socket2::Socket::from(OwnedFd::from(socket)),
            intake: Intake::new(
                &line,
                64 << 10,
                stats.clone(),
                Arc::new(DeadLetter::open(dir.path(), 1 << 20).unwrap()),
            ),
            tx,
            stop: stop.clone(),
            slots,
            slot_bytes,
            hold_bytes,
            drops_baseline: 0,
        };
        let thread = std::thread::spawn(move || worker.run());
        Loop {
            stats,
            stop,
            thread,
            rx,
            _dir: dir,
        }
    }

    /// Stops the loop and asserts that it returns promptly.
    fn stop(self) -> (Arc<InputStats>, ChunkRx) {
        let asked = Instant::now();
        self.stop.store(true, Relaxed);
        assert!(
            eventually(Duration::from_secs(2), || self.thread.is_finished()),
            "the receive loop did not stop within 2 s of being asked"
        );
        self.thread.join().expect("receive loop panicked");
        eprintln!(
            "receive loop stopped {:?} after being asked",
            asked.elapsed()
        );
        (self.stats, self.rx)
    }

    fn dropped(&self, reason: &str) -> u64 {
        self.stats
            .dropped
            .lock()
            .unwrap()
            .get(reason)
            .copied()
            .unwrap_or(0)
    }
}

/// Queues one chunk of `data` (a filler that takes the room a test needs taken).
fn fill(tx: &ChunkTx, data: &[u8]) {
    tx.send(Chunk {
        dest: Dest::new("b", Precision::Ns),
        data: data.to_vec(),
        lines: 1,
        ack: None,
    })
    .unwrap();
}

fn chunk_text(chunks: &ChunkRx) -> (u32, String) {
    let mut lines = 0;
    let mut text = String::new();
    while let Ok(c) = chunks.try_recv() {
        lines += c.lines;
        text.push_str(std::str::from_utf8(&c.data).unwrap());
    }
    (lines, text)
}

#[test]
fn truncated_datagram_is_counted_and_keeps_only_complete_lines() {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let l = Loop::start(
        sock,
        4,
        64,
        0,
        lineship::queue::channel(16, 1 << 30),
        Arc::new(AtomicBool::new(false)),
    );
    let client = client_for(addr);
    // Three complete 19-byte lines (57 bytes), then a line the 64-byte buffer cuts at
    // "m,host=" ... whose cut-off head must not be forwarded.
    let big = b"m,host=aaaa v=1i 1\nm,host=aaaa v=2i 2\nm,host=aaaa v=3i 3\nm,host=bbbb v=4i 1700000000000000000\n";
    assert!(big.len() > 64);
    client.send_to(big, addr).unwrap();
    client.send_to(b"m v=5i 5", addr).unwrap();
    assert!(eventually(T, || l.stats.datagrams.load(Relaxed) == 2));
    let (stats, rx) = l.stop();
    assert_eq!(stats.truncated.load(Relaxed), 1);
    let (lines, text) = chunk_text(&rx);
    assert_eq!(
        text,
        "m,host=aaaa v=1i 1\nm,host=aaaa v=2i 2\nm,host=aaaa v=3i 3\nm v=5i 5\n"
    );
    assert_eq!(lines, 4);
    assert_eq!(stats.lines.load(Relaxed), 4);
    assert_eq!(
        stats.invalid_total(),
        0,
        "the cut line is not an invalid line"
    );
}

#[test]
fn full_channel_drops_and_counts_instead_of_blocking() {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let (tx, rx) = lineship::queue::channel(1, 1 << 30);
    // Fill the channel before the loop starts: every chunk it makes finds it full.
    fill(&tx, b"filler 1i\n");
    let l = Loop::start(
        sock,
        64,
        1500,
        0,
        (tx, rx),
        Arc::new(AtomicBool::new(false)),
    );
    let client = client_for(addr);
    for i in 0..5 {
        let d = format!("m v={i}i 1\nm v={i}i 2\nm v={i}i 3\n");
        client.send_to(d.as_bytes(), addr).unwrap();
    }
    assert!(
        eventually(T, || l.dropped("channel_full") == 15),
        "the loop must keep reading and count the 15 lines it could not queue; dropped {:?}",
        l.stats.dropped.lock().unwrap()
    );
    assert_eq!(l.stats.datagrams.load(Relaxed), 5);
    assert_eq!(l.stats.lines.load(Relaxed), 0, "nothing was queued");
    // Room again: the next datagram goes through.
    let filler = l.rx.recv().unwrap();
    assert_eq!(filler.data, b"filler 1i\n");
    client.send_to(b"m v=9i 9\n", addr).unwrap();
    assert!(eventually(T, || l.stats.lines.load(Relaxed) == 1));
    let (stats, rx) = l.stop();
    assert_eq!(chunk_text(&rx), (1, "m v=9i 9\n".to_string()));
    assert_eq!(stats.dropped.lock().unwrap().get("channel_full"), Some(&15));
}

#[test]
fn full_channel_holds_a_bounded_amount_and_sends_it_when_there_is_room() {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let (tx, rx) = lineship::queue::channel(1, 1 << 30);
    fill(&tx, b"filler 1i\n");
    // Each datagram is 3 lines of 9 bytes: the 64-byte hold takes two datagrams, not three.
    let l = Loop::start(
        sock,
        64,
        1500,
        64,
        (tx, rx),
        Arc::new(AtomicBool::new(false)),
    );
    let client = client_for(addr);
    for i in 0..3 {
        let d = format!("m v={i}i 1\nm v={i}i 2\nm v={i}i 3\n");
        client.send_to(d.as_bytes(), addr).unwrap();
        // One read per datagram, so the hold fills step by step.
        assert!(eventually(T, || l.stats.datagrams.load(Relaxed) == i + 1));
    }
    assert_eq!(
        l.dropped("channel_full"),
        3,
        "the third datagram did not fit the hold"
    );
    assert_eq!(l.stats.lines.load(Relaxed), 0);
    // Room again: the held lines go through without another datagram (the idle retry).
    assert_eq!(l.rx.recv().unwrap().data, b"filler 1i\n");
    assert!(eventually(T, || l.stats.lines.load(Relaxed) == 6));
    let (stats, rx) = l.stop();
    assert_eq!(
        chunk_text(&rx),
        (
            6,
            "m v=0i 1\nm v=0i 2\nm v=0i 3\nm v=1i 1\nm v=1i 2\nm v=1i 3\n".into()
        )
    );
    assert_eq!(stats.dropped.lock().unwrap().get("channel_full"), Some(&3));
}

#[test]
fn queue_full_in_bytes_drops_and_counts_even_with_free_slots() {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    // Room for 1,024 chunks but only 100 bytes, all taken by the filler.
    let (tx, rx) = lineship::queue::channel(1024, 100);
    fill(&tx, &[b'#'; 100]);
    let l = Loop::start(
        sock,
        64,
        1500,
        0,
        (tx, rx),
        Arc::new(AtomicBool::new(false)),
    );
    let client = client_for(addr);
    client
        .send_to(
            b"m v=1i 1
m v=2i 2
",
            addr,
        )
        .unwrap();
    assert!(
        eventually(T, || l.dropped("channel_full") == 2),
        "a queue full in bytes must drop and count, not grow; dropped {:?}",
        l.stats.dropped.lock().unwrap()
    );
    assert_eq!(l.rx.recv().unwrap().data.len(), 100);
    client
        .send_to(
            b"m v=3i 3
",
            addr,
        )
        .unwrap();
    assert!(eventually(T, || l.stats.lines.load(Relaxed) == 1));
    let (_, rx) = l.stop();
    assert_eq!(chunk_text(&rx), (1, "m v=3i 3\n".to_string()));
}

#[test]
fn kernel_drops_are_counted_exactly() {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    // The smallest receive buffer the kernel allows: a few datagrams fill it.
    socket2::SockRef::from(&sock)
        .set_recv_buffer_size(1)
        .unwrap();
    let client = client_for(addr);
    let payload = vec![b'#'; 1000]; // a comment line: read, counted, skipped
    let flood = 300;
    for _ in 0..flood {
        client.send_to(&payload, addr).unwrap();
    }
    let l = Loop::start(
        sock,
        64,
        2048,
        0,
        lineship::queue::channel(1024, 1 << 30),
        Arc::new(AtomicBool::new(false)),
    );
    // Wait until the queued datagrams are read, then send one more: it carries the drop
    // count in its SO_RXQ_OVFL message (and /proc/net/udp tells the idle loop anyway).
    let read = |l: &Loop| l.stats.datagrams.load(Relaxed) + l.stats.kernel_drops.load(Relaxed);
    assert!(eventually(T, || l.stats.datagrams.load(Relaxed) > 0));
    std::thread::sleep(Duration::from_millis(50));
    client.send_to(&payload, addr).unwrap();
    assert!(
        eventually(T, || read(&l) == flood + 1),
        "read {} + kernel drops {} != sent {}",
        l.stats.datagrams.load(Relaxed),
        l.stats.kernel_drops.load(Relaxed),
        flood + 1
    );
    let (stats, _rx) = l.stop();
    let drops = stats.kernel_drops.load(Relaxed);
    assert!(
        drops > 0,
        "a tiny buffer flooded with 300 datagrams dropped nothing?"
    );
    assert_eq!(stats.datagrams.load(Relaxed) + drops, flood + 1);
    eprintln!("kernel dropped {drops} of {} datagrams", flood + 1);
}

#[test]
fn kernel_drops_after_the_last_datagram_are_found_through_proc() {
    if std::fs::metadata("/proc/net/udp").is_err() {
        eprintln!("SKIPPED: /proc/net/udp is not readable here");
        return;
    }
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    socket2::SockRef::from(&sock)
        .set_recv_buffer_size(1)
        .unwrap();
    let client = client_for(addr);
    let flood = 300;
    for _ in 0..flood {
        client.send_to(&[b'#'; 1000], addr).unwrap();
    }
    // No datagram arrives after the drops, so none carries the count: the idle loop must
    // find it in /proc/net/udp (within about a second).
    let l = Loop::start(
        sock,
        64,
        2048,
        0,
        lineship::queue::channel(1024, 1 << 30),
        Arc::new(AtomicBool::new(false)),
    );
    assert!(
        eventually(Duration::from_secs(10), || l.stats.datagrams.load(Relaxed)
            + l.stats.kernel_drops.load(Relaxed)
            == flood),
        "read {} + kernel drops {} != sent {flood}",
        l.stats.datagrams.load(Relaxed),
        l.stats.kernel_drops.load(Relaxed)
    );
    let (stats, _rx) = l.stop();
    assert!(stats.kernel_drops.load(Relaxed) > 0);
}

#[test]
fn stop_is_prompt_without_traffic_and_drains_what_arrived() {
    // Idle: stop is noticed without any datagram arriving.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let l = Loop::start(
        sock,
        64,
        2048,
        0,
        lineship::queue::channel(16, 1 << 30),
        Arc::new(AtomicBool::new(false)),
    );
    std::thread::sleep(Duration::from_millis(150));
    let started = Instant::now();
    let (stats, _) = l.stop();
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert_eq!(stats.datagrams.load(Relaxed), 0);

    // Stopped before it ever read: what had already arrived is still read and sent.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let client = client_for(addr);
    for i in 0..100 {
        client
            .send_to(format!("m v={i}i {i}").as_bytes(), addr)
            .unwrap();
    }
    let l = Loop::start(
        sock,
        64,
        2048,
        0,
        lineship::queue::channel(16, 1 << 30),
        Arc::new(AtomicBool::new(true)),
    );
    let (stats, rx) = l.stop();
    let (lines, _) = chunk_text(&rx);
    assert_eq!(lines, 100, "the datagrams queued before stop were drained");
    assert_eq!(stats.datagrams.load(Relaxed), 100);
}

// ---------------------------------------------------------------------------------------------
// The pipeline in-process.

fn settings(state: &Path, url: &str, inputs: &str) -> Settings {
    let text = format!(
        r#"
state_dir = {state}
[agent]
flush_interval = "50ms"
shutdown_timeout = "10s"
[output]
url = "{url}"
org = "o"
bucket = "default-bucket"
token = "t"
{inputs}
"#,
        state = toml_path(state),
    );
    Settings::from_toml(&text, false, |_| None).expect("valid test config")
}

struct InProcess {
    stats: Arc<Stats>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<Report>>,
}

impl InProcess {
    fn start(settings: Settings, sockets: Vec<UdpSocket>) -> Self {
        let stats = Arc::new(Stats::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let io = Io {
            stats: Some(stats.clone()),
            udp_sockets: Some(sockets),
            ..Default::default()
        };
        let task = tokio::spawn(lineship::run(settings, io, async move {
            let _ = stopped.await;
        }));
        InProcess { stats, stop, task }
    }

    async fn stop(self) -> Report {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("run ended in time")
            .expect("run task")
            .expect("run succeeded")
    }

    fn input(&self, name_prefix: &str) -> Arc<InputStats> {
        self.stats
            .inputs
            .lock()
            .unwrap()
            .iter()
            .find(|i| i.name.starts_with(name_prefix))
            .cloned()
            .unwrap_or_else(|| panic!("no input named {name_prefix}*"))
    }
}

/// Datagrams holding several lines each: good ones, bad ones, CRLF, a comment, a blank line,
/// a last line without `\n`, and one line without a timestamp (stamped on arrival).
const MIXED: [&str; 4] = [
    "m,host=a v=1i 1000\nm,host=a v=2i 1001\nm,host=a v=3i 1002\n",
    "m,host=b v=4i 1003\nbad-no-fields\nm,host=b v=5i 1004",
    "m,host=c v=6i 1005\r\nm v=7i notatime\r\n# comment\n\nm,host=c v=8i 1006\r\n",
    "m,host=d v=9i 1007\nm,host=e v=10i",
];
const MIXED_TIMESTAMPED: [&str; 9] = [
    "m,host=a v=1i 1000",
    "m,host=a v=2i 1001",
    "m,host=a v=3i 1002",
    "m,host=b v=4i 1003",
    "m,host=b v=5i 1004",
    "m,host=c v=6i 1005",
    "m,host=c v=8i 1006",
    "m,host=d v=9i 1007",
    "m,host=e v=10i",
];

async fn mixed_datagrams_arrive_exactly(bind: &str, test: &str) {
    let Some(sock) = bind_or_skip(bind, test) else {
        return;
    };
    let addr = sock.local_addr().unwrap();
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let p = InProcess::start(
        settings(
            dir.path(),
            &fake.url(),
            &format!("[[input.udp]]\nlisten = \"{addr}\"\n"),
        ),
        vec![sock],
    );
    let client = client_for(addr);
    for d in MIXED {
        client.send_to(d.as_bytes(), addr).unwrap();
    }
    assert!(
        fake.wait_for_lines_async(9, T).await,
        "got {:?}",
        fake.accepted_lines()
    );
    let input = p.input("udp:");
    let report = p.stop().await;

    let mut got = sorted(fake.accepted_lines());
    // The line without a timestamp got the arrival time in ns.
    let stamped = got.pop().unwrap();
    let ts: u128 = stamped
        .strip_prefix("m,host=e v=10i ")
        .unwrap_or_else(|| panic!("{stamped:?} was not stamped"))
        .parse()
        .unwrap();
    assert!(
        ts >= before.as_nanos()
            && ts
                <= SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
    );
    assert_eq!(got, MIXED_TIMESTAMPED[..8].to_vec());
    assert!(fake
        .requests()
        .iter()
        .all(|r| r.param("bucket") == Some("default-bucket")));
    assert_eq!(fake.empty_posts(), 0);

    assert_eq!(report.lines_received, 9);
    assert_eq!(report.lines_invalid, 2);
    assert_eq!(report.lines_delivered, 9);
    assert_eq!(report.lines_dropped, 0);
    assert_eq!(input.datagrams.load(Relaxed), 4);
    assert_eq!(
        input.bytes.load(Relaxed),
        MIXED.iter().map(|d| d.len() as u64).sum::<u64>()
    );
    assert_eq!(input.kernel_drops.load(Relaxed), 0);
    assert_eq!(input.truncated.load(Relaxed), 0);
    let rejected = std::fs::read_to_string(dir.path().join("rejected/rejected.lp")).unwrap();
    assert!(rejected.contains("bad-no-fields\n"), "{rejected}");
    assert!(rejected.contains("m v=7i notatime"), "{rejected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_datagrams_over_ipv4_reach_influx_exactly() {
    mixed_datagrams_arrive_exactly("127.0.0.1:0", "mixed_datagrams_over_ipv4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_datagrams_over_ipv6_reach_influx_exactly() {
    mixed_datagrams_arrive_exactly("[::1]:0", "mixed_datagrams_over_ipv6").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_udp_inputs_keep_their_bucket_and_precision() {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (addr_a, addr_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let p = InProcess::start(
        settings(
            dir.path(),
            &fake.url(),
            &format!(
                "[[input.udp]]\nlisten = \"{addr_a}\"\nbucket = \"one\"\n\n[[input.udp]]\nlisten = \"{addr_b}\"\nbucket = \"two\"\nprecision = \"ms\"\n"
            ),
        ),
        vec![b, a],
    );
    let client = client_for(addr_a);
    client.send_to(b"a v=1i 1\na v=2i 2", addr_a).unwrap();
    client
        .send_to(b"b v=1i 1\nb v=2i 2\nb v=3i 3", addr_b)
        .unwrap();
    assert!(fake.wait_for_lines_async(5, T).await);
    let report = p.stop().await;
    assert_eq!(report.lines_received, 5);
    let mut by_dest: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for r in fake.requests() {
        by_dest
            .entry((
                r.param("bucket").unwrap_or("").to_string(),
                r.param("precision").unwrap_or("").to_string(),
            ))
            .or_default()
            .extend(r.lines());
    }
    let key = |b: &str, p: &str| (b.to_string(), p.to_string());
    assert_eq!(by_dest[&key("one", "ns")], vec!["a v=1i 1", "a v=2i 2"]);
    assert_eq!(
        by_dest[&key("two", "ms")],
        vec!["b v=1i 1", "b v=2i 2", "b v=3i 3"]
    );
    assert_eq!(by_dest.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_text_wraps_each_line_of_a_datagram_as_a_point() {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let p = InProcess::start(
        settings(
            dir.path(),
            &fake.url(),
            &format!(
                "[[input.udp]]\nlisten = \"{addr}\"\nformat = \"text\"\nmeasurement = \"syslog\"\ntags = {{ via = \"udp\" }}\n"
            ),
        ),
        vec![sock],
    );
    let client = client_for(addr);
    client
        .send_to(
            b"<13>Dec  1 app: user=\"bob\" ok\nsecond \\ line\r\n\n",
            addr,
        )
        .unwrap();
    client
        .send_to(b"not line protocol, and that is fine", addr)
        .unwrap();
    assert!(fake.wait_for_lines_async(3, T).await);
    let report = p.stop().await;
    assert_eq!(report.lines_received, 3);
    let heads: Vec<String> = fake
        .accepted_lines()
        .iter()
        .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
        .collect();
    assert_eq!(
        heads,
        [
            "syslog,via=udp message=\"<13>Dec  1 app: user=\\\"bob\\\" ok\"",
            "syslog,via=udp message=\"second \\\\ line\"",
            "syslog,via=udp message=\"not line protocol, and that is fine\"",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// The real binary.

fn daemon_config(dir: &Path, url: &str, inputs: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            r#"
state_dir = {state}
[agent]
flush_interval = "50ms"
shutdown_timeout = "5s"
[output]
url = "{url}"
org = "o"
bucket = "b"
token = "t"
{inputs}
"#,
            state = toml_path(&dir.join("state")),
        ),
    )
}

/// The address in the daemon's "udp input listening" log line, once it has started (and
/// installs its signal handlers right after).
fn listening_addr(d: &mut Daemon) -> SocketAddr {
    d.log_field("lineship started", "udp input listening", "listen")
        .parse()
        .unwrap()
}

#[test]
fn daemon_with_two_workers_delivers_and_exits_cleanly_on_sigterm() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(
        dir.path(),
        &fake.url(),
        "[[input.udp]]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nreceive_buffer = \"1MiB\"\n",
    );
    let mut d = Daemon::start(&cfg);
    let addr = listening_addr(&mut d);
    assert!(d.stderr_so_far().contains("workers=2"));
    if let Ok(table) = std::fs::read_to_string("/proc/net/udp") {
        let local = format!("0100007F:{:04X}", addr.port());
        let sockets = table.lines().filter(|l| l.contains(&local)).count();
        assert_eq!(sockets, 2, "two sockets share {addr} through SO_REUSEPORT");
    }
    // Many senders (source ports), so SO_REUSEPORT spreads them over both sockets.
    let mut expected = Vec::new();
    for c in 0..16 {
        let client = client_for(addr);
        for k in 0..10 {
            let mut d = String::new();
            for j in 0..5 {
                let line = format!("w,c=c{c} v={k}i {}", 1_000 + j);
                writeln!(d, "{line}").unwrap();
                expected.push(line);
            }
            client.send_to(d.as_bytes(), addr).unwrap();
        }
    }
    // SIGTERM right away: the receive threads drain what already arrived.
    std::thread::sleep(Duration::from_millis(50));
    let asked = Instant::now();
    d.terminate();
    let out = d.wait(T);
    let took = asked.elapsed();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    assert_eq!(sorted(fake.accepted_lines()), sorted(expected));
    assert!(out.stderr.contains("udp_kernel_drops=0"), "{}", out.stderr);
    assert!(out.stderr.contains("lines_in=800"), "{}", out.stderr);
}

#[test]
fn a_port_in_use_fails_at_start_naming_the_config_key() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = daemon_config(
        dir.path(),
        &fake.url(),
        &format!("[[input.udp]]\nlisten = \"127.0.0.1:0\"\n\n[[input.udp]]\nlisten = \"{addr}\"\n"),
    );
    let out = Daemon::start(&cfg).wait(T);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("config key `input.udp[1].listen` = \"{addr}\"")),
        "the error must name the key and the address: {}",
        out.stderr
    );
    assert!(out.stderr.contains("another process"), "{}", out.stderr);
}

#[test]
fn socket_activation_uses_the_passed_socket() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    // Bound here and kept open here too: had lineship tried to bind the address itself, the
    // bind would fail (no SO_REUSEPORT) and the daemon would exit.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    // Passed in non-blocking mode (some socket managers do): lineship must not spin on it.
    sock.set_nonblocking(true).unwrap();
    let cfg = daemon_config(
        dir.path(),
        &fake.url(),
        &format!("[[input.udp]]\nlisten = \"{addr}\"\n"),
    );
    // systemd sets LISTEN_PID to the service's pid; the shell learns its pid ($$) and execs
    // lineship, which keeps it.
    let mut command = std::process::Command::new("/bin/sh");
    command
        .env_clear()
        .env("LISTEN_FDS", "1")
        .arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(lineship_bin())
        .arg("--config")
        .arg(&cfg);
    let fd = sock.as_raw_fd();
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(move || {
            if fd == 3 {
                // dup2 onto itself would keep FD_CLOEXEC; clear it instead.
                libc::fcntl(3, libc::F_SETFD, 0);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut d = Daemon::spawn(command);
    let listening = listening_addr(&mut d);
    assert_eq!(listening, addr);
    assert!(
        d.stderr_so_far().contains("passed_by_systemd=1"),
        "{}",
        d.stderr_so_far()
    );
    let client = client_for(addr);
    client
        .send_to(b"act v=1i 1\nact v=2i 2\nact v=3i 3\n", addr)
        .unwrap();
    assert!(fake.wait_for_lines(3, T), "{}", d.stderr_so_far());
    // Idle for a second: a receive loop spinning on EAGAIN would burn the whole second.
    let cpu_ticks = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after_comm.split_whitespace().collect();
        // utime and stime: fields 14 and 15 of stat(5), 12 and 13 after the command name.
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let before = cpu_ticks(d.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(d.pid()) - before;
    assert!(used < 30, "{used} ticks of CPU in an idle second");
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        fake.accepted_lines(),
        vec!["act v=1i 1", "act v=2i 2", "act v=3i 3"]
    );
}

#[test]
fn a_capped_receive_buffer_is_reported_naming_rmem_max() {
    // Without CAP_NET_ADMIN, SO_RCVBUFFORCE is refused and SO_RCVBUF is capped at
    // net.core.rmem_max, which is far below 1GiB on any ordinary host.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("SKIPPED a_capped_receive_buffer_is_reported_naming_rmem_max: needs root and /usr/bin/setpriv to drop CAP_NET_ADMIN");
        return;
    }
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(
        dir.path(),
        &fake.url(),
        "[[input.udp]]\nlisten = \"127.0.0.1:0\"\nreceive_buffer = \"1GiB\"\n",
    );
    let mut command = std::process::Command::new("/usr/bin/setpriv");
    command
        .env_clear()
        .args(["--inh-caps=-net_admin", "--bounding-set=-net_admin"])
        .arg(lineship_bin())
        .arg("--config")
        .arg(&cfg);
    let mut d = Daemon::spawn(command);
    listening_addr(&mut d);
    let log = d.stderr_so_far();
    let line = log
        .lines()
        .find(|l| l.contains("udp input listening"))
        .unwrap();
    let applied: u64 = line
        .split("receive_buffer_applied=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no applied size in {line}"));
    assert!(applied > 0 && applied < 2 << 30, "{line}");
    assert!(
        log.contains("WARN") && log.contains("net.core.rmem_max"),
        "no capped warning:\n{log}"
    );
    d.terminate();
    assert_eq!(d.wait(T).code, Some(0));
}

// ---------------------------------------------------------------------------------------------
// A real server.

const VM_LINES: usize = 200_000;
const VM_HOSTS: usize = 50;
const LINES_PER_DATAGRAM: usize = 10;
/// 2020-09-13T12:26:40Z in ms; each line has its own millisecond.
const BASE_MS: i64 = 1_600_000_000_000;
/// How many datagrams the sender may be ahead of what the input has read. 1,000 datagrams of
/// ~700 bytes take ~2-3 MB of kernel buffer (with overhead), far below the 64 MiB asked for,
/// so the kernel never drops however late the receive thread is scheduled.
const WINDOW: u64 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_200k_lines_land_in_victoria_metrics() {
    let Some(vm) = VictoriaMetrics::start_or_skip("udp_200k_lines_land_in_victoria_metrics") else {
        return;
    };
    let run = format!(
        "u{}x{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = InProcess::start(
        settings(
            dir.path(),
            &vm.url(),
            &format!(
                "[[input.udp]]\nlisten = \"{addr}\"\nreceive_buffer = \"32MiB\"\nprecision = \"ms\"\n"
            ),
        ),
        vec![sock],
    );
    // Wait for the input to exist, then send paced by what it has read.
    assert!(
        eventually(T, || p.stats.inputs.lock().unwrap().len() == 1),
        "the UDP input did not start"
    );
    let input = p.input("udp:");
    let sender_input = input.clone();
    let run_in = run.clone();
    let sent = tokio::task::spawn_blocking(move || {
        let client = client_for(addr);
        let started = Instant::now();
        let mut datagrams = 0u64;
        let mut body = String::with_capacity(1024);
        for first in (0..VM_LINES).step_by(LINES_PER_DATAGRAM) {
            body.clear();
            for i in first..(first + LINES_PER_DATAGRAM).min(VM_LINES) {
                writeln!(
                    body,
                    "udptest,host=h{},run={run_in} value={i}.5,n={i}i {}",
                    i % VM_HOSTS,
                    BASE_MS + i as i64
                )
                .unwrap();
            }
            while datagrams
                >= sender_input.datagrams.load(Relaxed)
                    + sender_input.kernel_drops.load(Relaxed)
                    + WINDOW
            {
                std::thread::sleep(Duration::from_micros(200));
            }
            client.send_to(body.as_bytes(), addr).unwrap();
            datagrams += 1;
        }
        (datagrams, started.elapsed())
    })
    .await
    .unwrap();
    let (datagrams, took) = sent;
    assert!(
        eventually(T, || input.datagrams.load(Relaxed)
            + input.kernel_drops.load(Relaxed)
            >= datagrams),
        "read {} of {datagrams} datagrams",
        input.datagrams.load(Relaxed)
    );
    let report = p.stop().await;
    eprintln!(
        "sent {VM_LINES} lines in {datagrams} datagrams in {took:?}; report {report:?}; kernel drops {}",
        input.kernel_drops.load(Relaxed)
    );
    assert_eq!(input.kernel_drops.load(Relaxed), 0);
    assert_eq!(input.truncated.load(Relaxed), 0);
    assert_eq!(report.lines_dropped, 0);
    assert_eq!(report.lines_invalid, 0);
    assert_eq!(report.lines_received, VM_LINES as u64);
    assert_eq!(report.lines_delivered, VM_LINES as u64);

    let selector = format!(r#"{{__name__=~"udptest_.*",run="{run}"}}"#);
    let series = tokio::task::block_in_place(|| {
        vm.wait_for_points(&selector, 2 * VM_LINES, Duration::from_secs(60))
    });
    if let Err(problems) = verify(&series, &run) {
        panic!("VictoriaMetrics does not hold the {VM_LINES} lines sent over UDP: {problems}");
    }
}

/// Exactly one `udptest_value` and one `udptest_n` point per line, on the right series, at the
/// right timestamp, with the right value.
fn verify(series: &[ExportedSeries], run: &str) -> Result<(), String> {
    let mut errors = Vec::new();
    let mut seen = [vec![false; VM_LINES], vec![false; VM_LINES]];
    for (name, labels, points) in series {
        let (which, offset) = match name.as_str() {
            "udptest_value" => (0, 0.5),
            "udptest_n" => (1, 0.0),
            other => {
                errors.push(format!("unexpected series {other} {labels:?}"));
                continue;
            }
        };
        if labels.get("run").map(String::as_str) != Some(run) {
            errors.push(format!("{name} {labels:?}: wrong run label"));
        }
        let host = labels.get("host").cloned().unwrap_or_default();
        for &(ts, value) in points {
            let i = ts - BASE_MS;
            if !(0..VM_LINES as i64).contains(&i) {
                errors.push(format!("{name}: timestamp {ts} out of range"));
                continue;
            }
            let i = i as usize;
            if host != format!("h{}", i % VM_HOSTS) {
                errors.push(format!("{name}: line {i} landed on host {host}"));
            }
            if value != i as f64 + offset {
                errors.push(format!("{name}: line {i} has value {value}"));
            }
            if std::mem::replace(&mut seen[which][i], true) {
                errors.push(format!("{name}: line {i} exported twice"));
            }
        }
    }
    for (which, name) in ["udptest_value", "udptest_n"].iter().enumerate() {
        let missing: Vec<usize> = (0..VM_LINES).filter(|&i| !seen[which][i]).collect();
        if !missing.is_empty() {
            errors.push(format!(
                "{name}: {} of {VM_LINES} lines missing, first {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        let shown = errors.len().min(20);
        Err(format!(
            "{} problems, first {shown}:\n{}",
            errors.len(),
            errors[..shown].join("\n")
        ))
    }
}
