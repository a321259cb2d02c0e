//! Fan-out into two real VictoriaMetrics servers: a tailed file goes to both outputs; the
//! second server is down for part of the run, lineship is `kill -9`ed during that outage and
//! started again; the first server never waits for the second, and at the end each holds every
//! line of the file (counted by sequence number), the second caught up from its own spool.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{toml_path, toml_string, write_config, Daemon, VictoriaMetrics};

const LINES: u64 = 40_000;
const PER_TICK: u64 = 200;

/// Sequence numbers (the timestamps, in ms from `base`) of the points in `vm`.
fn seqs(vm: &VictoriaMetrics, run: &str, base: u64) -> BTreeSet<u64> {
    vm.force_flush();
    vm.export(&format!("{{__name__=\"fo_v\",run=\"{run}\"}}"))
        .iter()
        .flat_map(|(_, _, points)| points.iter().map(|(ts, _)| *ts as u64 - base))
        .collect()
}

fn start(cfg: &Path) -> Daemon {
    let mut d = Daemon::start(cfg);
    assert!(
        d.wait_for_stderr("lineship started", Duration::from_secs(30)),
        "{}",
        d.stderr_so_far()
    );
    d
}

#[test]
fn each_output_gets_every_line_through_an_outage_of_one_and_a_kill_9() {
    let Some(main) = VictoriaMetrics::start_or_skip(
        "each_output_gets_every_line_through_an_outage_of_one_and_a_kill_9",
    ) else {
        return;
    };
    let mut lake = VictoriaMetrics::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.lp");
    std::fs::write(&log, b"").unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"state_dir = {state}
[agent]
flush_interval = "50ms"
shutdown_timeout = "10s"
[output]
url = {main}
bucket = "main"
max_backoff = "200ms"
[outputs.lake]
url = {lake}
bucket = "lake"
gzip_level = 6
timeout = "2s"
initial_backoff = "100ms"
max_backoff = "300ms"
[[input.tail]]
paths = [{log}]
from_beginning = true
precision = "ms"
"#,
            state = toml_path(&dir.path().join("state")),
            main = toml_string(&main.url()),
            lake = toml_string(&lake.url()),
            log = toml_path(&log),
        ),
    );
    let run = format!("fo{}", std::process::id());
    let base: u64 = 1_700_000_000_000;
    let d = start(&cfg);

    // The writer appends PER_TICK lines every 10 ms until LINES are written.
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (written, stop, run, log) = (written.clone(), stop.clone(), run.clone(), log.clone());
        std::thread::spawn(move || {
            let mut f = common::tail::append(&log);
            let mut seq = 0;
            while seq < LINES && !stop.load(Relaxed) {
                let mut chunk = String::new();
                for _ in 0..PER_TICK {
                    chunk.push_str(&format!("fo,run={run} v={seq}i {}\n", base + seq));
                    seq += 1;
                }
                f.write_all(chunk.as_bytes()).unwrap();
                written.store(seq, Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let wait_written = |n: u64| {
        let t = Instant::now();
        while written.load(Relaxed) < n && t.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    wait_written(LINES / 4);
    // The lake goes down (gracefully: VictoriaMetrics keeps what it acknowledged).
    lake.stop();
    let at_outage = written.load(Relaxed);
    wait_written(LINES / 2);
    // Main keeps up while the lake is down: it never waits for it.
    let t = Instant::now();
    let target = written.load(Relaxed);
    let mut main_seen = 0;
    while t.elapsed() < Duration::from_secs(30) {
        main_seen = seqs(&main, &run, base).len() as u64;
        if main_seen >= target {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        main_seen >= target,
        "main had {main_seen} of the {target} lines written during the lake's outage"
    );
    println!(
        "during the lake's outage, main had all {target} lines {:?} after they were written",
        t.elapsed()
    );

    // kill -9 in the middle of the outage, and start again.
    d.kill9();
    drop(d.wait(Duration::from_secs(10)));
    let mut d = start(&cfg);
    // The lake's share waited in its own spool across the kill -9; main's spool is empty.
    let replay = d.log_field("lineship started", "replaying it first", "output");
    assert_eq!(replay, "lake", "{}", d.stderr_so_far());
    wait_written(LINES * 3 / 4);
    lake.restart();
    writer.join().unwrap();
    stop.store(true, Relaxed);

    // Both hold every line.
    let all: BTreeSet<u64> = (0..LINES).collect();
    for (name, vm) in [("main", &main), ("lake", &lake)] {
        let t = Instant::now();
        let mut got = BTreeSet::new();
        while t.elapsed() < Duration::from_secs(90) {
            got = seqs(vm, &run, base);
            if got.len() as u64 == LINES {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let missing: Vec<&u64> = all.difference(&got).take(10).collect();
        assert!(
            missing.is_empty(),
            "{name} lacks {} lines (first {missing:?}); outage began after line {at_outage}; lineship log:\n{}",
            LINES as usize - got.len(),
            d.stderr_so_far()
        );
        println!(
            "{name}: every one of {LINES} lines, {:?} after the writer ended",
            t.elapsed()
        );
    }
    d.terminate();
    let out = d.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}
