//! Several outputs (`[outputs.NAME]`) and sharding (`balance = "shard"`), against fakes: every
//! output gets every line, byte for byte, with its own bucket; an output that fails waits in
//! its own spool while the others keep delivering, and catches up; an input can name its
//! outputs; shard keeps each series on one URL and a stopped URL's share waits for it;
//! `spool status`, `check`, `/health` and `/metrics` show each output.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::service::{arrivals, assert_lines_once, lines};
use common::{
    get, lineship_command, metric, run_stdin, scrape, telemetry_addr, toml_path, wait_until,
    write_config, Daemon, FakeInflux, Reply,
};

const T: Duration = Duration::from_secs(60);

fn config(dir: &Path, outputs: &str, stdin_extra: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            r#"
state_dir = {state}
[agent]
flush_interval = "50ms"
batch_max_lines = 100
shutdown_timeout = "20s"
{outputs}
[input.stdin]
enabled = true
{stdin_extra}
[telemetry]
listen = "127.0.0.1:0"
"#,
            state = toml_path(&dir.join("state")),
        ),
    )
}

/// What `config` writes for `agent.shutdown_timeout`.
const SHUTDOWN_20S: &str = "shutdown_timeout = \"20s\"";

/// Replaces `from` by `to` in the config file `cfg` (which must hold it); returns the new text.
fn edit(cfg: &Path, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(cfg).unwrap();
    assert!(text.contains(from), "{from:?} not in {text}");
    let text = text.replace(from, to);
    std::fs::write(cfg, &text).unwrap();
    text
}

fn start(cfg: &Path) -> (Daemon, std::net::SocketAddr) {
    let mut cmd = lineship_command();
    cmd.arg("--config").arg(cfg);
    let mut d = Daemon::spawn_with_open_stdin(cmd);
    let addr = telemetry_addr(&mut d);
    (d, addr)
}

fn two_outputs(a: &FakeInflux, b: &FakeInflux, lake_extra: &str) -> String {
    format!(
        r#"
[output]
url = "{a}"
bucket = "main"
timeout = "2s"
[outputs.lake]
url = "{b}"
bucket = "raw"
gzip_level = 6
timeout = "2s"
initial_backoff = "100ms"
max_backoff = "200ms"
{lake_extra}
"#,
        a = a.url(),
        b = b.url()
    )
}

fn assert_exactly(f: &FakeInflux, from: usize, n: usize, who: &str) {
    assert_lines_once(&arrivals(&[f]), from, n, who);
}

#[test]
fn every_output_gets_every_line_and_a_failing_one_catches_up_from_its_own_spool() {
    let dir = tempfile::tempdir().unwrap();
    let main = FakeInflux::start();
    let lake = FakeInflux::start();
    let cfg = config(dir.path(), &two_outputs(&main, &lake, ""), "");
    let (mut d, addr) = start(&cfg);
    d.write_stdin(&lines(0, 1000));
    assert!(main.wait_for_lines(1000, T) && lake.wait_for_lines(1000, T));

    // The lake fails: the main output never waits for it.
    lake.set_default_reply(Reply::influx_error(503, "lake is down"));
    lake.set_ping_reply(Reply::status(503));
    d.write_stdin(&lines(1000, 1000));
    // Once the lake is known to fail, its batches go to its spool (before, they may all have
    // been handed to its sender, which holds them in memory while it retries).
    assert!(wait_until(Duration::from_secs(10), || {
        metric(&scrape(addr), r#"lineship_output_healthy{output="lake"}"#) == 0
    }));
    d.write_stdin(&lines(2000, 1000));
    let t = Instant::now();
    assert!(
        main.wait_for_lines(3000, Duration::from_secs(10)),
        "main delivers while the lake fails ({} lines)",
        main.accepted_line_count()
    );
    println!("main had every line {:?} after the write", t.elapsed());
    assert!(wait_until(Duration::from_secs(10), || {
        let m = scrape(addr);
        metric(&m, r#"lineship_spool_lines{output="lake"}"#) > 0
            && metric(&m, r#"lineship_output_healthy{output="lake"}"#) == 0
    }));
    let m = scrape(addr);
    assert_eq!(metric(&m, r#"lineship_spool_lines{output="default"}"#), 0);
    assert_eq!(
        metric(&m, r#"lineship_output_healthy{output="default"}"#),
        1
    );
    let (code, _, body) = get(addr, "/health");
    assert_eq!(code, 503, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["output"]["name"], "lake", "the worst output leads: {h}");
    assert_eq!(h["outputs"][0]["name"], "default");
    assert_eq!(h["outputs"][0]["healthy"], true);
    assert_eq!(h["outputs"][1]["healthy"], false);
    assert!(
        h["outputs"][1]["spool"]["lines"].as_u64().unwrap() > 0,
        "{h}"
    );
    assert!(
        h["reason"].as_str().unwrap().starts_with("output lake:"),
        "{h}"
    );
    // Its spool is its own directory; the default's stays where it always was.
    assert!(dir.path().join("state/spool/lake").is_dir());

    // The lake returns and catches up.
    lake.set_default_reply(Reply::no_content());
    lake.set_ping_reply(Reply::no_content());
    assert!(
        lake.wait_for_lines(3000, T),
        "the lake caught up ({} lines)",
        lake.accepted_line_count()
    );
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_exactly(&main, 0, 3000, "main");
    assert_exactly(&lake, 0, 3000, "lake");
    // Each output's bucket and gzip level; one summary line per output.
    assert!(main.requests().iter().all(|r| r.query["bucket"] == "main"));
    assert!(lake.requests().iter().all(|r| r.query["bucket"] == "raw"));
    assert!(
        out.stderr.contains("output summary") && out.stderr.contains("output=lake"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("delivered 3000 to default, 3000 to lake"),
        "{}",
        out.stderr
    );
}

#[test]
fn stdin_exits_75_when_one_output_could_not_deliver_and_the_next_run_delivers_it() {
    let dir = tempfile::tempdir().unwrap();
    let main = FakeInflux::start();
    let lake = FakeInflux::start();
    lake.set_default_reply(Reply::influx_error(503, "down"));
    lake.set_ping_reply(Reply::status(503));
    let cfg = config(dir.path(), &two_outputs(&main, &lake, ""), "");
    edit(&cfg, SHUTDOWN_20S, "shutdown_timeout = \"1s\"");
    let out = run_stdin(&cfg, &lines(0, 500), T);
    assert_eq!(out.code, Some(75), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("delivered 500 to default, 0 to lake, invalid 0, left in the spool 500"),
        "{}",
        out.stderr
    );
    assert_exactly(&main, 0, 500, "main");
    // spool status shows each output's spool.
    let status = common::lineship_cli(&["spool", "status"], &cfg);
    assert!(
        status.stdout.contains("output default:") && status.stdout.contains("output lake:"),
        "{}",
        status.stdout
    );
    let lake_part = status.stdout.split("output lake:").nth(1).unwrap();
    assert!(lake_part.contains("lines:    500"), "{}", status.stdout);
    let verify = common::lineship_cli(&["spool", "verify"], &cfg);
    assert_eq!(verify.code, Some(0), "{}", verify.stdout);
    assert_eq!(
        verify.stdout.matches("is intact").count(),
        2,
        "each output's spool is verified: {}",
        verify.stdout
    );
    assert!(verify.stdout.contains("spool/lake"), "{}", verify.stdout);

    // The next run delivers the lake's share from its spool, and nothing twice to main.
    lake.set_default_reply(Reply::no_content());
    lake.set_ping_reply(Reply::no_content());
    let out = run_stdin(&cfg, b"", T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_exactly(&main, 0, 500, "main");
    assert_exactly(&lake, 0, 500, "lake");
}

#[test]
fn an_input_sends_only_to_the_outputs_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let main = FakeInflux::start();
    let lake = FakeInflux::start();
    let cfg = config(
        dir.path(),
        &two_outputs(&main, &lake, ""),
        "outputs = [\"lake\"]\nbucket = \"mine\"",
    );
    let out = run_stdin(&cfg, &lines(0, 300), T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_exactly(&lake, 0, 300, "lake");
    assert_eq!(main.accepted_line_count(), 0, "main is not named");
    // The input's own bucket wins over the output's.
    assert!(lake.requests().iter().all(|r| r.query["bucket"] == "mine"));
}

#[test]
fn a_removed_output_leaves_its_spool_and_check_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let main = FakeInflux::start();
    let lake = FakeInflux::start();
    lake.set_default_reply(Reply::influx_error(503, "down"));
    let cfg = config(dir.path(), &two_outputs(&main, &lake, ""), "");
    let text = edit(&cfg, SHUTDOWN_20S, "shutdown_timeout = \"1s\"");
    let out = run_stdin(&cfg, &lines(0, 100), T);
    assert_eq!(out.code, Some(75), "{}", out.stderr);
    // The lake is taken out of the config.
    let only_main = text.split("[outputs.lake]").next().unwrap().to_owned()
        + &text[text.find("[input.stdin]").unwrap()..];
    std::fs::write(&cfg, only_main).unwrap();
    let check = common::lineship_cli(&["check"], &cfg);
    assert_eq!(check.code, Some(0), "{}", check.stderr);
    let lake_dir = dir.path().join("state/spool/lake");
    assert!(
        check.stderr.contains(&lake_dir.display().to_string())
            && check.stderr.contains("no configured output"),
        "{}",
        check.stderr
    );
    let status = common::lineship_cli(&["spool", "status"], &cfg);
    assert!(
        status
            .stdout
            .contains("no output (removed from the config):"),
        "{}",
        status.stdout
    );
    // A run of the daemon leaves it in place.
    let out = run_stdin(&cfg, &lines(100, 10), T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(std::fs::read_dir(&lake_dir).unwrap().count() > 0);
}

fn shard_config(dir: &Path, fakes: &[&FakeInflux]) -> std::path::PathBuf {
    let urls: Vec<String> = fakes.iter().map(|f| format!("{:?}", f.url())).collect();
    // The shard run also goes through the compression pool.
    let cfg = config(
        dir,
        &format!(
            r#"
[output]
urls = [{}]
balance = "shard"
bucket = "b"
timeout = "2s"
initial_backoff = "100ms"
max_backoff = "200ms"
"#,
            urls.join(", ")
        ),
        "",
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("[agent]\n", "[agent]\ncompress_threads = 2\n"),
    )
    .unwrap();
    cfg
}

/// 50 series, `per` points each, starting at point `from`.
fn series_lines(from: usize, per: usize) -> Vec<u8> {
    let mut out = String::new();
    for p in from..from + per {
        for s in 0..50 {
            // Tags written in either order: still one series.
            if p % 2 == 0 {
                out.push_str(&format!("cpu,host=h{s},dc=x v={p}i {}\n", 1_000 + p));
            } else {
                out.push_str(&format!("cpu,dc=x,host=h{s} v={p}i {}\n", 1_000 + p));
            }
        }
    }
    out.into_bytes()
}

fn host_of(line: &str) -> String {
    line.split([',', ' '])
        .find_map(|p| p.strip_prefix("host="))
        .unwrap()
        .to_owned()
}

/// The hosts each fake received.
fn hosts(f: &FakeInflux) -> BTreeSet<String> {
    f.accepted_lines().iter().map(|l| host_of(l)).collect()
}

#[test]
fn shard_keeps_each_series_on_one_url_and_a_stopped_urls_share_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let fakes = [
        FakeInflux::start(),
        FakeInflux::start(),
        FakeInflux::start(),
    ];
    let refs: Vec<&FakeInflux> = fakes.iter().collect();
    let cfg = shard_config(dir.path(), &refs);
    let (mut d, addr) = start(&cfg);
    d.write_stdin(&series_lines(0, 20));
    assert!(wait_until(T, || fakes
        .iter()
        .map(|f| f.accepted_line_count())
        .sum::<usize>()
        == 1000));
    let first: Vec<BTreeSet<String>> = fakes.iter().map(hosts).collect();
    for (i, a) in first.iter().enumerate() {
        assert!(!a.is_empty(), "every URL has a share: {first:?}");
        for b in &first[i + 1..] {
            assert!(a.is_disjoint(b), "a series went to two URLs: {first:?}");
        }
    }
    let share: Vec<usize> = fakes.iter().map(|f| f.accepted_line_count()).collect();

    // The second URL fails: its share waits in its own spool, the others keep flowing.
    fakes[1].set_default_reply(Reply::influx_error(503, "down"));
    fakes[1].set_ping_reply(Reply::status(503));
    d.write_stdin(&series_lines(20, 10));
    // Once the URL is known to fail, its share goes to its spool.
    let down = format!(
        "lineship_url_up{{output=\"default\",url=\"{}/\"}}",
        fakes[1].url()
    );
    assert!(wait_until(Duration::from_secs(10), || metric(
        &scrape(addr),
        &down
    ) == 0));
    d.write_stdin(&series_lines(30, 10));
    // A sharded output with a URL down is failing: part of its series wait.
    let (code, _, body) = get(addr, "/health");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains(&fakes[1].url()),
        "the message names the URL: {body}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            fakes[0].accepted_line_count() == 2 * share[0]
                && fakes[2].accepted_line_count() == 2 * share[2]
        }),
        "the other URLs delivered their shares at once"
    );
    assert_eq!(fakes[1].accepted_line_count(), share[1]);
    assert!(wait_until(Duration::from_secs(10), || {
        metric(&scrape(addr), r#"lineship_spool_lines{output="default"}"#) > 0
    }));
    // Only the stopped URL's spool holds anything (once written out to its segment).
    let empty_shards = || {
        let status = common::lineship_cli(&["spool", "status"], &cfg);
        fakes
            .iter()
            .map(|f| {
                let block = status
                    .stdout
                    .split(&format!("shard {}/:", f.url()))
                    .nth(1)
                    .unwrap_or_else(|| panic!("no block for {}: {}", f.url(), status.stdout));
                let block = block.split("\n\n").next().unwrap();
                block.contains("lines:    0\n")
            })
            .collect::<Vec<bool>>()
    };
    assert!(
        wait_until(Duration::from_secs(10), || empty_shards()
            == [true, false, true]),
        "{:?}",
        empty_shards()
    );
    fakes[1].set_default_reply(Reply::no_content());
    fakes[1].set_ping_reply(Reply::no_content());
    assert!(wait_until(T, || fakes[1].accepted_line_count() == 2 * share[1]));
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // Across the whole run each series stayed on its URL, and every point arrived once.
    let after: Vec<BTreeSet<String>> = fakes.iter().map(hosts).collect();
    assert_eq!(first, after, "no series moved");
    let mut all = BTreeMap::new();
    for f in &fakes {
        for l in f.accepted_lines() {
            *all.entry(l).or_insert(0) += 1;
        }
    }
    assert_eq!(all.len(), 2000);
    assert!(all.values().all(|&n| n == 1));
}

/// A tailed line's checkpoint waits for every output: the main output has delivered it, the
/// lake still has it in flight (a slow server), and a `kill -9` then must not lose it for the
/// lake: the restart reads it again.
#[test]
fn a_tail_checkpoint_waits_for_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let main = FakeInflux::start();
    let lake = FakeInflux::start();
    lake.set_response_delay(Duration::from_secs(8));
    let log = dir.path().join("app.lp");
    std::fs::write(&log, b"").unwrap();
    let outputs = two_outputs(&main, &lake, "").replace("timeout = \"2s\"", "timeout = \"60s\"");
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
state_dir = {state}
[agent]
flush_interval = "50ms"
{outputs}
[[input.tail]]
paths = [{log}]
from_beginning = true
"#,
            state = toml_path(&dir.path().join("state")),
            log = toml_path(&log),
        ),
    );
    let mut d = Daemon::start(&cfg);
    assert!(
        d.wait_for_stderr("lineship started", T),
        "{}",
        d.stderr_so_far()
    );
    std::fs::write(&log, lines(0, 100)).unwrap();
    assert!(main.wait_for_lines(100, T));
    assert!(
        wait_until(T, || lake.max_writes_in_flight() >= 1),
        "the lake's write is in flight"
    );
    // Several checkpoint intervals: a checkpoint that followed the main output alone would
    // be written by now.
    std::thread::sleep(Duration::from_secs(3));
    d.kill9();
    drop(d.wait(T));
    // What the lake was sent was never answered: forget it.
    assert!(lake.statuses().is_empty(), "the lake answered nothing yet");
    lake.clear();
    lake.set_response_delay(Duration::ZERO);
    let d = Daemon::start(&cfg);
    assert!(
        lake.wait_for_lines(100, T),
        "the lake got its lines after the restart ({}): {}",
        lake.accepted_line_count(),
        d.stderr_so_far()
    );
    let seen = arrivals(&[&lake]);
    let want = String::from_utf8(lines(0, 100)).unwrap();
    for l in want.lines() {
        assert!(seen.contains_key(l), "lake: line {l:?}");
    }
    d.terminate();
    assert_eq!(d.wait(T).code, Some(0));
}
