//! `selftest`: the generator and the counting sink checked against each other, and the sink's
//! own throughput measured with raw keep-alive clients.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{ensure, Result};
use clap::Args;
use libdeflater::{CompressionLvl, Compressor};
use lineship_load::client::{RawClient, BENCH_WRITE_PATH as WRITE_PATH};
use lineship_load::fake::Reply;
use lineship_load::gen::{GenOpts, LineGen};
use lineship_load::gunzip::gzip;
use lineship_load::seq::count_lines;

use crate::measure::{process_cpu_s, sink_cpu_s};
use crate::report::{rate, seq_line};
use crate::sink::{Progress, Sink};

#[derive(Args)]
pub struct SelftestArgs {
    /// Lines to send through the sink.
    #[arg(long, default_value_t = 2_000_000)]
    pub lines: u64,
    /// Lines per request body.
    #[arg(long, default_value_t = 5000)]
    pub batch_lines: u64,
    /// libdeflate level for the request bodies.
    #[arg(long, default_value_t = 1)]
    pub gzip_level: u32,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Tokio worker threads for the sink.
    #[arg(long, default_value_t = 2)]
    pub sink_threads: usize,
    #[command(flatten)]
    pub gen: GenOpts,
}

pub fn cmd_selftest(a: &SelftestArgs) -> Result<ExitCode> {
    ensure!(
        a.lines > 0 && a.batch_lines > 0,
        "--lines and --batch-lines must be > 0"
    );
    let level = CompressionLvl::new(a.gzip_level as i32)
        .map_err(|e| anyhow::anyhow!("--gzip-level: {e:?}"))?;
    let mut comp = Compressor::new(level);
    let mut gen = LineGen::new(&a.gen);
    // Body 0 is identity, body 1 is two gzip members, the rest are single gzip members.
    let t = Instant::now();
    let mut bodies: Vec<(bool, Vec<u8>)> = Vec::new();
    let (mut raw_bytes, mut left, mut buf) = (0u64, a.lines, Vec::new());
    while left > 0 {
        let n = left.min(a.batch_lines);
        buf.clear();
        gen.fill_lines(&mut buf, n);
        raw_bytes += buf.len() as u64;
        left -= n;
        let body = match bodies.len() {
            0 => (false, buf.clone()),
            1 => {
                let cut = buf.len() / 3;
                let mut two = gzip(&mut comp, &buf[..cut]);
                two.extend_from_slice(&gzip(&mut comp, &buf[cut..]));
                (true, two)
            }
            _ => (true, gzip(&mut comp, &buf)),
        };
        bodies.push(body);
    }
    let wire: u64 = bodies.iter().map(|(_, b)| b.len() as u64).sum();
    eprintln!(
        "prepared {} bodies: {} lines, {:.1} MB raw ({:.1} B/line), {:.1} MB gzip ({:.2}x) in {:.2}s",
        bodies.len(),
        a.lines,
        raw_bytes as f64 / 1e6,
        raw_bytes as f64 / a.lines as f64,
        wire as f64 / 1e6,
        raw_bytes as f64 / wire as f64,
        t.elapsed().as_secs_f64(),
    );

    let sink = Sink::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Reply::no_content(),
        true,
        a.sink_threads,
        Progress::Off,
    )?;
    let addr = sink.addr();
    let conns = a.connections.max(1);
    let (cpu_before, sink_cpu_before) = (process_cpu_s(), sink_cpu_s());
    let t = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..conns)
            .map(|c| {
                let bodies = &bodies;
                scope.spawn(move || -> Result<()> {
                    let mut client = RawClient::connect(addr)?;
                    for (gz, body) in bodies.iter().skip(c).step_by(conns) {
                        let status = client.request("POST", WRITE_PATH, *gz, body)?;
                        ensure!(status == 204, "write answered {status}");
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().expect("client thread panicked")?;
        }
        Ok(())
    })?;
    let elapsed = t.elapsed().as_secs_f64();
    let cpu = process_cpu_s() - cpu_before;
    let sink_cpu = sink_cpu_s() - sink_cpu_before;
    let snap = sink.fake.counts(Some((a.gen.start, a.lines)));

    let mut failures = Vec::new();
    let mut check = |cond: bool, what: String| {
        if !cond {
            failures.push(what);
        }
    };
    let seq = snap.seq.unwrap_or_default();
    check(
        snap.lines == a.lines,
        format!("lines {} != {}", snap.lines, a.lines),
    );
    check(
        snap.decoded_bytes == raw_bytes,
        format!("decoded bytes {} != {raw_bytes}", snap.decoded_bytes),
    );
    check(
        seq.unique == a.lines,
        format!("unique seqs {} != {}", seq.unique, a.lines),
    );
    check(seq.lost == Some(0), format!("lost {:?}", seq.lost));
    check(seq.dup == 0 && seq.malformed == 0, format!("seq {seq:?}"));

    // Protocol checks after the timed part: re-sending a body shows up as duplicates, bad gzip
    // is a 400, and the probes answer.
    let mut client = RawClient::connect(addr)?;
    let (gz, first) = &bodies[0];
    check(
        client.request("POST", WRITE_PATH, *gz, first)? == 204,
        "resend".into(),
    );
    let resent = count_lines(first);
    let after = sink.fake.counts(Some((a.gen.start, a.lines)));
    check(
        after.seq.map(|s| s.dup) == Some(resent),
        format!(
            "dup after resend {:?} != {resent}",
            after.seq.map(|s| s.dup)
        ),
    );
    let bad = client.request(
        "POST",
        WRITE_PATH,
        true,
        b"\x1f\x8b\x08not gzip at all!!!!!",
    )?;
    check(bad == 400, format!("bad gzip answered {bad}"));
    check(
        client.request("GET", "/ping", false, b"")? == 204,
        "/ping".into(),
    );
    check(
        client.request("GET", "/health", false, b"")? == 200,
        "/health".into(),
    );
    check(
        client.request("GET", "/nope", false, b"")? == 404,
        "404".into(),
    );

    println!(
        "sink throughput: {:.0} lines/s, {:.1} MB/s decoded, {:.1} MB/s on the wire, {} connections; sink CPU {:.2}s = {:.3} s/M lines (whole process {:.2}s)",
        rate(a.lines as f64, elapsed),
        rate(raw_bytes as f64 / 1e6, elapsed),
        rate(wire as f64 / 1e6, elapsed),
        conns,
        sink_cpu,
        sink_cpu / (a.lines as f64 / 1e6),
        cpu,
    );
    println!("{}", seq_line(&seq));
    if failures.is_empty() {
        println!("selftest passed");
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &failures {
            println!("FAILED: {f}");
        }
        Ok(ExitCode::from(1))
    }
}
