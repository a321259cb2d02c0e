//! The HTTP listener's promise, against a real VictoriaMetrics: clients write while lineship is
//! `kill -9`ed twice and the server is down for part of the run; every write answered 204 is
//! in VictoriaMetrics at the end, counted point by point (clients retry the writes that were
//! not answered 204, as client libraries do).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{toml_path, toml_string, write_config, Daemon, VictoriaMetrics};

const CLIENTS: u64 = 2;
const WRITES: u64 = 120;
const LINES_PER_WRITE: u64 = 500;

/// One POST; the status, or an error when lineship is not there (killed, restarting).
fn try_post(addr: SocketAddr, target: &str, body: &[u8]) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "POST {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {text:?}")))
}

#[test]
fn every_write_answered_204_survives_two_kill_9s_and_an_outage() {
    let Some(mut vm) = VictoriaMetrics::start_or_skip(
        "every_write_answered_204_survives_two_kill_9s_and_an_outage",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"state_dir = {state}
[agent]
flush_interval = "50ms"
shutdown_timeout = "30s"
[output]
url = {url}
bucket = "b"
max_backoff = "200ms"
[[input.http]]
listen = "{addr}"
ack_timeout = "5s"
"#,
            state = toml_path(&dir.path().join("state")),
            url = toml_string(&vm.url()),
        ),
    );
    let run = format!("hc{}", std::process::id());
    let base_ms: u64 = 1_700_000_000_000;
    let start = |cfg: &std::path::Path| {
        let mut d = Daemon::start(cfg);
        assert!(
            d.wait_for_stderr("lineship started", Duration::from_secs(30)),
            "{}",
            d.stderr_so_far()
        );
        d
    };
    let d = start(&cfg);

    // Clients: each write is retried until it is answered 204.
    let acknowledged = Arc::new(Mutex::new(BTreeSet::<(u64, u64)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let failed_tries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (acknowledged, stop, run) = (acknowledged.clone(), stop.clone(), run.clone());
            let failed_tries = failed_tries.clone();
            std::thread::spawn(move || {
                let target = "/api/v2/write?bucket=b&precision=ms";
                for w in 0..WRITES {
                    let mut body = Vec::new();
                    for i in 0..LINES_PER_WRITE {
                        let seq = w * LINES_PER_WRITE + i;
                        writeln!(body, "hc,client={c},run={run} v={seq}i {}", base_ms + seq)
                            .unwrap();
                    }
                    loop {
                        if stop.load(Relaxed) {
                            return;
                        }
                        match try_post(addr, target, &body) {
                            Ok(204) => {
                                acknowledged.lock().unwrap().insert((c, w));
                                break;
                            }
                            Ok(400) => panic!("a good write was refused"),
                            _ => {
                                failed_tries.fetch_add(1, Relaxed);
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        })
        .collect();
    let acked = || acknowledged.lock().unwrap().len();
    let wait_for_more = |than: usize| {
        let t = Instant::now();
        while acked() < than + 10 && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let mut phases = Vec::new();
    wait_for_more(0);
    phases.push(("before the first kill -9", acked()));
    d.kill9();
    drop(d.wait(Duration::from_secs(10)));
    let d = start(&cfg);
    wait_for_more(acked());
    // The server goes away; writes are spooled (and acknowledged once durable).
    vm.stop();
    phases.push(("at the outage", acked()));
    wait_for_more(acked());
    phases.push(("before the second kill -9", acked()));
    d.kill9();
    drop(d.wait(Duration::from_secs(10)));
    let d = start(&cfg);
    wait_for_more(acked());
    vm.restart();
    phases.push(("when the server came back", acked()));
    let t = Instant::now();
    while acked() < (CLIENTS * WRITES) as usize && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    d.terminate();
    let out = d.wait(Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    let acknowledged = acknowledged.lock().unwrap().clone();
    eprintln!(
        "writes answered 204 {phases:?}; failed tries (refused, 503 or cut off) that clients retried: {}",
        failed_tries.load(Relaxed)
    );
    assert!(
        failed_tries.load(Relaxed) > 0,
        "the kills and the outage interrupted no write"
    );
    assert_eq!(
        acknowledged.len() as u64,
        CLIENTS * WRITES,
        "every write was answered 204 in the end"
    );
    let want = acknowledged.len() * LINES_PER_WRITE as usize;
    let selector = format!(r#"{{__name__="hc_v",run="{run}"}}"#);
    let series = vm.wait_for_points(&selector, want, Duration::from_secs(60));
    let mut got: BTreeMap<u64, BTreeSet<i64>> = BTreeMap::new();
    for (_, labels, points) in &series {
        let c: u64 = labels["client"].parse().unwrap();
        got.entry(c)
            .or_default()
            .extend(points.iter().map(|(ts, _)| *ts));
    }
    let mut missing = 0;
    for (c, w) in &acknowledged {
        for i in 0..LINES_PER_WRITE {
            let ts = (base_ms + w * LINES_PER_WRITE + i) as i64;
            if !got.get(c).is_some_and(|s| s.contains(&ts)) {
                missing += 1;
            }
        }
    }
    assert_eq!(
        missing, 0,
        "points of writes answered 204 are missing from VictoriaMetrics"
    );
}
