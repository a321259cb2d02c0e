//! The counting sink: the fake InfluxDB ([`FakeInflux`]) in count mode, with a stats line every
//! second. Every daemon mode starts one per run ([`Sink::for_run`]); `sink` runs one standalone:
//! the first stdout line is `listening ADDR`, and a summary (text, then JSON) comes on
//! SIGINT/SIGTERM or after `--duration-secs`.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Args;
use lineship_load::fake::{FakeInflux, Mode, Reply};

use crate::report::seq_line;

/// The name of the sink's threads, whose CPU time [`crate::measure::sink_cpu_s`] adds up.
pub const SINK_THREAD: &str = "sink";

/// Where the stats lines go.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Stdout,
    Stderr,
    Off,
}

/// A running counting sink. Dropping it (or [`Sink::stop_progress`]) stops the stats lines;
/// dropping the fake stops serving.
pub struct Sink {
    pub fake: Arc<FakeInflux>,
    ticker: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Sink {
    /// Starts a counting sink on `listen` answering every write with `reply`.
    pub fn start(
        listen: SocketAddr,
        reply: Reply,
        check_seq: bool,
        threads: usize,
        progress: Progress,
    ) -> Result<Self> {
        let fake = FakeInflux::builder()
            .listen(listen)
            .mode(Mode::Count { check_seq })
            .default_reply(reply)
            .worker_threads(threads)
            .thread_name(SINK_THREAD)
            .start()
            .with_context(|| format!("starting the sink on {listen}"))?;
        let fake = Arc::new(fake);
        let ticker = (progress != Progress::Off).then(|| {
            let (stop, stopped) = mpsc::channel::<()>();
            let f = Arc::clone(&fake);
            let thread = std::thread::spawn(move || ticker(&f, &stopped, progress));
            (stop, thread)
        });
        Ok(Sink { fake, ticker })
    }

    /// The sink of one daemon run: 127.0.0.1:0, 204 to every write, stats on stderr.
    pub fn for_run(check_seq: bool, threads: usize) -> Result<Self> {
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start(
            listen,
            Reply::no_content(),
            check_seq,
            threads,
            Progress::Stderr,
        )
    }

    pub fn addr(&self) -> SocketAddr {
        self.fake.addr()
    }

    /// Lines accepted so far.
    pub fn lines(&self) -> u64 {
        self.fake.accepted_line_count() as u64
    }

    pub fn stop_progress(&mut self) {
        if let Some((stop, thread)) = self.ticker.take() {
            drop(stop);
            let _ = thread.join();
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop_progress();
    }
}

/// Prints a stats line every second until `stopped` is signalled or dropped.
fn ticker(fake: &FakeInflux, stopped: &mpsc::Receiver<()>, to: Progress) {
    let started = Instant::now();
    let mut prev = fake.counts(None);
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(Duration::from_secs(1)) {
        let cur = fake.counts(None);
        let line = format!(
            "sink t={:.0}s lines={} (+{}/s) decoded={:.1} MB (+{:.1} MB/s) wire={:.1} MB writes={} rejected={} bad={}",
            started.elapsed().as_secs_f64(),
            cur.lines,
            cur.lines - prev.lines,
            cur.decoded_bytes as f64 / 1e6,
            (cur.decoded_bytes - prev.decoded_bytes) as f64 / 1e6,
            cur.body_bytes as f64 / 1e6,
            cur.write_requests,
            cur.rejected_requests,
            cur.bad_requests,
        );
        if to == Progress::Stdout {
            println!("{line}");
        } else {
            eprintln!("{line}");
        }
        prev = cur;
    }
}

#[derive(Args)]
pub struct SinkArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Status answered to writes (2xx counts the lines as accepted).
    #[arg(long, default_value_t = 204)]
    pub status: u16,
    /// Record every `seq=<n>i` to count lost and duplicated lines.
    #[arg(long)]
    pub check_seq: bool,
    /// Expect sequence numbers start..start+N; the summary reports the missing ones and the
    /// exit code is 1 when any are missing.
    #[arg(long, value_name = "N")]
    pub expect_lines: Option<u64>,
    /// First expected sequence number (with --expect-lines).
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

pub fn cmd_sink(a: &SinkArgs) -> Result<ExitCode> {
    ensure!(
        (200..=599).contains(&a.status),
        "--status {} is not an HTTP status to answer writes with (200..=599)",
        a.status
    );
    let reply = if (200..300).contains(&a.status) {
        Reply::status(a.status)
    } else {
        Reply::influx_error(
            a.status,
            "lineship-load sink answers this status by request (--status)",
        )
    };
    let check_seq = a.check_seq || a.expect_lines.is_some();
    let sink = Sink::start(a.listen, reply, check_seq, a.threads, Progress::Stdout)?;
    println!("listening {}", sink.addr());
    io::stdout().flush()?;
    let duration = a.duration_secs.map(Duration::from_secs);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let timer = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = timer => {}
        }
        anyhow::Ok(())
    })?;
    let expect = a.expect_lines.map(|n| (a.start, n));
    let snap = sink.fake.counts(expect);
    println!(
        "summary: {} writes, {} lines in {:.3}s active ({:.0} lines/s), decoded {:.1} MB, wire {:.1} MB, rejected {} writes/{} lines, bad {}",
        snap.write_requests,
        snap.lines,
        snap.active_secs,
        snap.lines_per_sec(),
        snap.decoded_bytes as f64 / 1e6,
        snap.body_bytes as f64 / 1e6,
        snap.rejected_requests,
        snap.rejected_lines,
        snap.bad_requests,
    );
    if let Some(s) = snap.seq {
        println!("{}", seq_line(&s));
    }
    println!("{}", serde_json::to_string(&snap)?);
    let missing = snap.seq.and_then(|s| s.lost).unwrap_or(0);
    Ok(if missing > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
