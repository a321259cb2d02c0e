//! The disk spool with the real binary: outages across runs lose nothing, and the spool
//! commands report what is there.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{run_stdin, write_config, FakeInflux, Reply};

const T: Duration = Duration::from_secs(120);

fn config(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            r#"
state_dir = "{}"
[agent]
flush_interval = "100ms"
shutdown_timeout = "1s"
[output]
url = "{url}"
org = "o"
bucket = "b"
token = "t"
initial_backoff = "10ms"
max_backoff = "100ms"
"#,
            dir.join("state").display()
        ),
    )
}

fn lines(from: usize, to: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in from..to {
        s.push_str(&format!(
            "spooltest,host=h{} seq={i}i {}\n",
            i % 10,
            1_600_000_000_000_000_000u64 + i as u64
        ));
    }
    s.into_bytes()
}

fn seqs(fake: &FakeInflux) -> HashSet<usize> {
    fake.accepted_lines()
        .iter()
        .map(|l| {
            let i = l.find("seq=").expect("seq field") + 4;
            l[i..l[i..].find('i').unwrap() + i].parse().unwrap()
        })
        .collect()
}

fn lineship(args: &[&str], cfg: &std::path::Path) -> common::RunOutput {
    common::lineship_cli(args, cfg)
}

#[test]
fn outage_across_runs_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Run 1: nothing listens (connection refused).
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config(dir.path(), &format!("http://127.0.0.1:{dead_port}"));
    let out = run_stdin(&cfg, &lines(0, 100_000), T);
    assert_eq!(out.code, Some(75), "{}", out.stderr);
    assert!(out.stderr.contains("kept in the spool"), "{}", out.stderr);

    let status = lineship(&["spool", "status"], &cfg);
    assert_eq!(status.code, Some(0), "{}", status.stderr);
    assert!(
        status.stdout.contains("lines:    100000"),
        "{}",
        status.stdout
    );
    let verify = lineship(&["spool", "verify"], &cfg);
    assert_eq!(verify.code, Some(0), "{}", verify.stdout);
    assert!(verify.stdout.contains("intact"), "{}", verify.stdout);

    // Run 2: the server answers 503. The spool is replayed (and fails), new lines queue behind.
    let fake = FakeInflux::start().default_reply(Reply::status(503));
    let cfg = config(dir.path(), &fake.url());
    let out = run_stdin(&cfg, &lines(100_000, 200_000), T);
    assert_eq!(out.code, Some(75), "{}", out.stderr);
    assert!(
        !fake.requests().is_empty(),
        "the spool was retried while the server failed"
    );
    assert!(seqs(&fake).is_empty());

    // Run 3: the server is back. Everything from both outages arrives.
    fake.set_default_reply(Reply::status(204));
    let out = run_stdin(&cfg, b"", T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let got = seqs(&fake);
    let missing: Vec<usize> = (0..200_000).filter(|i| !got.contains(i)).take(10).collect();
    assert!(missing.is_empty(), "lost lines, first {missing:?}");
    assert_eq!(got.len(), 200_000);
    let status = lineship(&["spool", "status"], &cfg);
    assert!(status.stdout.contains("lines:    0"), "{}", status.stdout);
}

#[test]
fn verify_names_damage_and_the_daemon_still_starts() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeInflux::start().default_reply(Reply::status(503));
    let cfg = config(dir.path(), &fake.url());
    let out = run_stdin(&cfg, &lines(0, 20_000), T);
    assert_eq!(out.code, Some(75), "{}", out.stderr);

    // Flip a byte inside the first record's body.
    let spool = dir.path().join("state/spool");
    let seg = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .min()
        .expect("a segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();

    let verify = lineship(&["spool", "verify"], &cfg);
    assert_eq!(verify.code, Some(1), "{}", verify.stdout);
    assert!(
        verify.stdout.contains(&seg.display().to_string()),
        "{}",
        verify.stdout
    );
    assert!(verify.stdout.contains("offset 0"), "{}", verify.stdout);

    fake.set_default_reply(Reply::status(204));
    let out = run_stdin(&cfg, b"", T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("damaged"),
        "the skipped record is reported: {}",
        out.stderr
    );
    let got = seqs(&fake);
    assert!(
        got.len() > 10_000 && got.len() < 20_000,
        "only the damaged record is lost: {}",
        got.len()
    );
}

#[test]
fn a_zeroed_middle_segment_is_counted_exactly_and_fails_verify() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeInflux::start().default_reply(Reply::status(503));
    let cfg = config(dir.path(), &fake.url());
    // 1 MiB segments of identity batches: about 6 MB of lines makes several segments.
    let text =
        std::fs::read_to_string(&cfg).unwrap() + "gzip_level = 0\n[spool]\nmax_size = \"8MiB\"\n";
    std::fs::write(&cfg, text).unwrap();
    let out = run_stdin(&cfg, &lines(0, 100_000), T);
    assert_eq!(out.code, Some(75), "{}", out.stderr);

    let spool = dir.path().join("state/spool");
    let mut segs: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 3, "{segs:?}");
    let len = std::fs::metadata(&segs[1]).unwrap().len() as usize;
    std::fs::write(&segs[1], vec![0u8; len]).unwrap();

    let verify = lineship(&["spool", "verify"], &cfg);
    assert_eq!(verify.code, Some(1), "{}", verify.stdout);
    assert!(
        verify.stdout.contains(&segs[1].display().to_string()),
        "{}",
        verify.stdout
    );
    let lost: usize = verify
        .stdout
        .lines()
        .find_map(|l| {
            let at = l.find(" lines LOST")?;
            l[..at].rsplit(' ').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no count of lost lines: {}", verify.stdout));
    assert!(lost > 0);

    fake.set_default_reply(Reply::status(204));
    let out = run_stdin(&cfg, b"", T);
    assert!(
        out.stderr.contains("LOST") && out.stderr.contains(&format!("lines={lost}")),
        "the loss is logged with its lines: {}",
        out.stderr
    );
    assert_eq!(
        seqs(&fake).len() + lost,
        100_000,
        "every line is delivered or counted as lost"
    );
    let verify = lineship(&["spool", "verify"], &cfg);
    assert_eq!(verify.code, Some(0), "{}", verify.stdout);
    assert!(
        verify.stdout.contains("corrupt"),
        "the file set aside is noted: {}",
        verify.stdout
    );
}

/// Replay progress is kept as records are delivered: each `kill -9` during the replay of a
/// spool re-sends about one `max_in_flight` window, not everything since the last sync.
/// `LINESHIP_REPLAY_LINES` sizes the spool (200,000 lines by default; the README's figure for
/// 1,000,000 comes from `LINESHIP_REPLAY_LINES=1000000`).
#[test]
fn kill_9_during_replay_resends_about_one_window() {
    let n: usize = std::env::var("LINESHIP_REPLAY_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    const BATCH: usize = 500;
    const IN_FLIGHT: usize = 4;
    const KILLS: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeInflux::start().default_reply(Reply::status(503));
    let cfg = config(dir.path(), &fake.url());
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[output]\n",
        &format!("batch_max_lines = {BATCH}\n[output]\nmax_in_flight = {IN_FLIGHT}\n"),
    );
    std::fs::write(&cfg, text).unwrap();
    let out = run_stdin(&cfg, &lines(0, n), T);
    assert_eq!(out.code, Some(75), "{}", out.stderr);

    // Replay at a pace a kill can land in the middle of: 4 writes per 10 ms.
    fake.set_default_reply(Reply::status(204));
    fake.set_response_delay(Duration::from_millis(10));
    for kill in 0..KILLS {
        let mut c = common::lineship_command();
        c.arg("--config").arg(&cfg).arg("--stdin");
        let d = common::Daemon::spawn_with_open_stdin(c);
        let target = (kill + 1) * n / (KILLS + 2);
        assert!(
            fake.wait_for_lines(target, T),
            "replay reached {target}: {}",
            d.stderr_so_far()
        );
        d.kill9();
        drop(d);
    }
    fake.set_response_delay(Duration::ZERO);
    let out = run_stdin(&cfg, b"", T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    let accepted = fake.accepted_lines().len();
    let unique = seqs(&fake);
    let missing: Vec<usize> = (0..n).filter(|i| !unique.contains(i)).take(10).collect();
    assert!(missing.is_empty(), "lost lines, first {missing:?}");
    let duplicates = accepted - unique.len();
    // In flight at the kill, plus what was acknowledged in the last 2 ms before it.
    let bound = KILLS * (IN_FLIGHT + 4) * BATCH;
    eprintln!("{KILLS} kills during replay: {duplicates} duplicate lines (bound {bound})");
    assert!(duplicates <= bound, "{duplicates} duplicates > {bound}");
}
