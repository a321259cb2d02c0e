//! The UDP receive loop on its own (`input::udp::recv::Worker` on a socket and a channel):
//! truncation, a full channel (held and dropped lines), kernel drops (from the socket's counter,
//! `SO_MEMINFO`, and from `/proc/net/udp`) and stopping. The pipeline and the binary are in `tests/udp.rs`.

mod common;

use std::net::UdpSocket;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lineship::batch::{Chunk, Dest};
use lineship::config::{InputFormat, LineSettings};
use lineship::input::udp::recv::Worker;
use lineship::input::{CancellationToken, Intake};
use lineship::line::Precision;
use lineship::queue::{ChunkRx, ChunkTx};
use lineship::reject::DeadLetter;
use lineship::telemetry::InputStats;

use common::udp::*;

const T: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The receive loop on its own.

struct Loop {
    stats: Arc<InputStats>,
    stop: CancellationToken,
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
        chans: (ChunkTx, ChunkRx),
        stop: CancellationToken,
    ) -> Loop {
        Loop::gathering(
            socket,
            slots,
            slot_bytes,
            hold_bytes,
            chans,
            stop,
            Duration::ZERO,
        )
    }

    /// [`Loop::start`] with a gathering wait after each read that empties the socket.
    fn gathering(
        socket: UdpSocket,
        slots: usize,
        slot_bytes: usize,
        hold_bytes: usize,
        (tx, rx): (ChunkTx, ChunkRx),
        stop: CancellationToken,
        gather: Duration,
    ) -> Loop {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(InputStats::new("udp:test"));
        let line = LineSettings {
            bucket: "b".into(),
            outputs: u64::MAX,
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
            gather,
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
        self.stop.cancel();
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
        CancellationToken::new(),
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
    let l = Loop::start(sock, 64, 1500, 0, (tx, rx), CancellationToken::new());
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
    let l = Loop::start(sock, 64, 1500, 64, (tx, rx), CancellationToken::new());
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
    let l = Loop::start(sock, 64, 1500, 0, (tx, rx), CancellationToken::new());
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
        CancellationToken::new(),
    );
    // Wait until the queued datagrams are read, then send one more: the chunk it makes reads
    // the drop count (SO_MEMINFO; and /proc/net/udp tells the idle loop anyway).
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
        CancellationToken::new(),
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
        CancellationToken::new(),
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
    let stopped = CancellationToken::new();
    stopped.cancel();
    let l = Loop::start(
        sock,
        64,
        2048,
        0,
        lineship::queue::channel(16, 1 << 30),
        stopped,
    );
    let (stats, rx) = l.stop();
    let (lines, _) = chunk_text(&rx);
    assert_eq!(lines, 100, "the datagrams queued before stop were drained");
    assert_eq!(stats.datagrams.load(Relaxed), 100);
}

#[test]
fn a_gathering_wait_makes_fewer_bigger_chunks_and_loses_nothing() {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    socket2::SockRef::from(&sock)
        .set_recv_buffer_size(4 << 20)
        .unwrap();
    let l = Loop::gathering(
        sock,
        64,
        2048,
        0,
        lineship::queue::channel(4096, 1 << 30),
        CancellationToken::new(),
        Duration::from_millis(20),
    );
    let client = client_for(addr);
    // 400 datagrams at about one per 0.5 ms: without the wait, nearly one read (and chunk)
    // per datagram.
    let sent = 400;
    for i in 0..sent {
        client
            .send_to(format!("m v={i}i {i}").as_bytes(), addr)
            .unwrap();
        if i % 8 == 7 {
            std::thread::sleep(Duration::from_millis(4));
        }
    }
    assert!(
        eventually(T, || l.stats.datagrams.load(Relaxed) == sent),
        "read {} of {sent} datagrams",
        l.stats.datagrams.load(Relaxed)
    );
    let (stats, rx) = l.stop();
    let mut chunks = 0;
    let mut seen = Vec::new();
    while let Ok(c) = rx.try_recv() {
        chunks += 1;
        for line in std::str::from_utf8(&c.data).unwrap().lines() {
            seen.push(line.to_string());
        }
    }
    assert_eq!(seen.len() as u64, sent);
    assert_eq!(
        seen,
        (0..sent)
            .map(|i| format!("m v={i}i {i}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(stats.kernel_drops.load(Relaxed), 0);
    eprintln!("{sent} datagrams in {chunks} chunks");
    // About 200 ms of sending in 20 ms waits: ~10-20 reads; a loaded machine only sleeps
    // longer, which makes fewer.
    assert!(
        chunks <= sent / 5,
        "{chunks} chunks for {sent} datagrams: the wait did not gather"
    );
}
