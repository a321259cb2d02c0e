//! The UDP input end to end into a real server: 200,000 lines through the in-process
//! pipeline into VictoriaMetrics, each checked on its series, timestamp and value.

mod common;

use std::fmt::Write as _;
use std::net::UdpSocket;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::udp::*;
use common::*;

const T: Duration = Duration::from_secs(30);

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
