//! The tail input with the real binary against the fake InfluxDB: rotation while writing,
//! copytruncate, new files under a glob, `from_beginning`, `format = "text"`, restarts, and
//! `kill -9` while 200,000 lines are written across rotations.

mod common;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{toml_path, write_config, Daemon, FakeInflux};

const T: Duration = Duration::from_secs(30);

fn config(dir: &Path, url: &str, tail: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"
state_dir = {state}
[agent]
flush_interval = "50ms"
shutdown_timeout = "3s"
log_level = "info"
[output]
url = "{url}"
org = "o"
bucket = "b"
token = "t"
initial_backoff = "10ms"
max_backoff = "50ms"
[[input.tail]]
{tail}
"#,
            state = toml_path(&dir.join("state")),
        ),
    )
}

fn glob_of(logs: &Path, pattern: &str) -> String {
    format!("paths = [{}]", toml_path(&logs.join(pattern)))
}

fn append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// The sequence number of a line `m v=1i <seq>`.
fn seq_of(line: &str) -> u64 {
    line.rsplit(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
}

/// How often each sequence number arrived.
fn seq_counts(fake: &FakeInflux) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for l in fake.accepted_lines() {
        *m.entry(seq_of(&l)).or_default() += 1;
    }
    m
}

/// The last "tail summary" log line (the one logged at exit).
fn last_tail_summary(stderr: &str) -> &str {
    stderr
        .lines()
        .rfind(|l| l.contains("tail summary"))
        .unwrap_or_else(|| panic!("no tail summary: {stderr}"))
}

fn wait_started(d: &mut Daemon) {
    assert!(
        d.wait_for_stderr("tail input started", T),
        "daemon did not start tailing:\n{}",
        d.stderr_so_far()
    );
}

fn assert_exactly_once(fake: &FakeInflux, expected: std::ops::RangeInclusive<u64>) {
    let counts = seq_counts(fake);
    let want: Vec<u64> = expected.collect();
    let got: Vec<u64> = counts.keys().copied().collect();
    assert_eq!(got.len(), want.len(), "distinct lines delivered");
    assert_eq!(got, want);
    let dups: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).collect();
    assert!(dups.is_empty(), "duplicates without a crash: {dups:?}");
    assert_eq!(fake.empty_posts(), 0);
}

#[test]
fn logrotate_style_rotation_while_writing_loses_nothing() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let live = logs.join("app.log");
    let cfg = config(
        dir.path(),
        &fake.url(),
        &format!("{}\nfrom_beginning = true", glob_of(&logs, "app.log")),
    );
    let mut d = Daemon::start(&cfg);
    wait_started(&mut d);

    const N: u64 = 20_000;
    let mut w = append(&live);
    let mut rotations = 0;
    for seq in 1..=N {
        writeln!(w, "m v=1i {seq}").unwrap();
        if seq % 2_500 == 0 {
            // logrotate: rename; the writer goes on writing to the renamed file for a
            // moment, then reopens its path (postrotate HUP).
            rotations += 1;
            std::fs::rename(&live, logs.join(format!("app.log.{rotations}"))).unwrap();
        }
        if seq % 2_500 == 100 && seq > 2_500 {
            w = append(&live);
        }
        if seq % 500 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(
        fake.wait_for_lines(N as usize, T),
        "only {} of {N} lines arrived:\n{}",
        fake.accepted_line_count(),
        d.stderr_so_far()
    );
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_exactly_once(&fake, 1..=N);
    // The counters saw every rotation (the summary at exit reports them).
    let summary = last_tail_summary(&out.stderr);
    assert!(
        summary.contains(&format!("rotations={rotations}")),
        "{summary}"
    );
    assert!(summary.contains("truncations=0"), "{summary}");
}

/// Overlapping globs in two inputs: each file is read by the first input that matches it,
/// once, and the second input says so.
#[test]
fn a_file_matched_by_two_inputs_is_read_once() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut w = append(&logs.join("app.log"));
    for seq in 1..=100 {
        writeln!(w, "m v=1i {seq}").unwrap();
    }
    let cfg = config(
        dir.path(),
        &fake.url(),
        &format!(
            "{}\nfrom_beginning = true\n\n[[input.tail]]\n{}\nfrom_beginning = true\nbucket = \"other\"",
            glob_of(&logs, "*.log"),
            glob_of(&logs, "app.log")
        ),
    );
    let mut d = Daemon::start(&cfg);
    wait_started(&mut d);
    for seq in 101..=200 {
        writeln!(w, "m v=1i {seq}").unwrap();
    }
    assert!(fake.wait_for_lines(200, T), "{}", d.stderr_so_far());
    // A rescan (every 2 s) must not start a second reader either.
    std::thread::sleep(Duration::from_millis(2500));
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_exactly_once(&fake, 1..=200);
    let warned: Vec<_> = out
        .stderr
        .lines()
        .filter(|l| l.contains("matches the paths of more than one tail input"))
        .collect();
    assert_eq!(warned.len(), 1, "one warning: {}", out.stderr);
    assert!(
        warned[0].contains("input=tail[1]") && warned[0].contains("read_by=tail[0]"),
        "{}",
        warned[0]
    );
}

/// The buckets of the lines the fake accepted, by sequence number.
fn buckets_by_seq(fake: &FakeInflux) -> BTreeMap<u64, Vec<String>> {
    let mut m: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for r in fake.requests().iter().filter(|r| r.accepted()) {
        let bucket = r.param("bucket").unwrap_or_default().to_string();
        for l in r.lines() {
            m.entry(seq_of(&l)).or_default().push(bucket.clone());
        }
    }
    m
}

/// Two inputs with the same glob: files that appear while running also go to the first input
/// (not to whichever thread scans first), each line once.
#[test]
fn new_files_under_overlapping_globs_go_to_the_first_input() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let glob = glob_of(&logs, "*.log");
    let cfg = config(
        dir.path(),
        &fake.url(),
        &format!("{glob}\n\n[[input.tail]]\n{glob}\nbucket = \"second\""),
    );
    let mut d = Daemon::start(&cfg);
    wait_started(&mut d);
    // In waves, so that files appear at different points of both inputs' scan cycles.
    for f in 0..20u64 {
        let mut w = append(&logs.join(format!("f{f}.log")));
        for k in 0..5 {
            writeln!(w, "m v=1i {}", f * 5 + k + 1).unwrap();
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(fake.wait_for_lines(100, T), "{}", d.stderr_so_far());
    std::thread::sleep(Duration::from_millis(2500)); // a rescan of both inputs
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_exactly_once(&fake, 1..=100);
    let wrong: Vec<_> = buckets_by_seq(&fake)
        .into_iter()
        .filter(|(_, b)| b != &["b"])
        .collect();
    assert!(
        wrong.is_empty(),
        "lines read by the second input: {wrong:?}"
    );
}

/// A file rotated into another input's glob stays with the input that read it, also after
/// `rotate_wait` and after a restart: its lines are not read a second time.
#[test]
fn a_file_rotated_into_another_inputs_glob_is_not_read_again() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let cfg = config(
        dir.path(),
        &fake.url(),
        &format!(
            "{}\nfrom_beginning = true\nrotate_wait = \"500ms\"\n\n[[input.tail]]\n{}\nbucket = \"rotated\"",
            glob_of(&logs, "app.log"),
            glob_of(&logs, "*.log.1")
        ),
    );
    let mut d = Daemon::start(&cfg);
    wait_started(&mut d);
    let mut w = append(&logs.join("app.log"));
    for seq in 1..=100 {
        writeln!(w, "m v=1i {seq}").unwrap();
    }
    assert!(fake.wait_for_lines(100, T), "{}", d.stderr_so_far());
    std::fs::rename(logs.join("app.log"), logs.join("app.log.1")).unwrap();
    // Past rotate_wait and a rescan of both inputs.
    std::thread::sleep(Duration::from_millis(3000));
    d.terminate();
    assert_eq!(d.wait(T).code, Some(0));
    let mut d = Daemon::start(&cfg);
    wait_started(&mut d);
    std::thread::sleep(Duration::from_millis(2500));
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_exactly_once(&fake, 1..=100);
    assert!(
        out.stderr.contains("read_by=tail[0]"),
        "the second input says who reads the file: {}",
        out.stderr
    );
}

#[test]
fn copytruncate_is_read_again_from_the_start() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let live = logs.join("app.log");
    let mut w = append(&live);
    let cfg = config(
        dir.path(),
        &fake.url(),
        &format!("{}\nfrom_beginning = true", glob_of(&logs, "*.log")),
    );
    let mut d = Daemon::start(&cfg);
    wait_started(&mut d);
    for seq in 1..=300 {
        writeln!(w, "m v=1i {seq}").unwrap();
    }
    assert!(fake.wait_for_lines(300, T), "{}", d.stderr_so_far());
    // copytruncate: copy (to a name the glob does not match), then truncate in place. The
    // writer keeps its O_APPEND descriptor and continues at the new end.
    std::fs::copy(&live, logs.join("app.log.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&live)
        .unwrap()
        .set_len(0)
        .unwrap();
    // Fewer bytes than before, then more than before: both must be noticed.
    for seq in 301..=310 {
        writeln!(w, "m v=1i {seq}").unwrap();
    }
    assert!(fake.wait_for_lines(310, T), "{}", d.stderr_so_far());
    std::thread::sleep(Duration::from_millis(300));
    OpenOptions::new()
        .write(true)
        .open(&live)
        .unwrap()
        .set_len(0)
        .unwrap();
    for seq in 311..=1000 {
        writeln!(w, "m v=1i {seq}").unwrap();
    }
    assert!(fake.wait_for_lines(1000, T), "{}", d.stderr_so_far());
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("truncated"), "{}", out.stderr);
    assert_exactly_once(&fake, 1..=1000);
    let summary = last_tail_summary(&out.stderr);
    assert!(!summary.contains("truncations=0"), "{summary}");
    assert!(summary.contains("rotations=0"), "{summary}");
}

#[test]
fn a_new_file_under_the_glob_is_read_from_its_start() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("a.log"), "m v=1i 1\n").unwrap();
    // from_beginning = false applies to files present at the first start only.
    let cfg = config(
        dir.path(),
        &fake.url(),
        &format!("{}\nfrom_beginning = false", glob_of(&logs, "*.log")),
    );
    let mut d = Daemon::start(&cfg);
    wait_started(&mut d);
    std::fs::write(logs.join("b.log"), "m v=1i 2\nm v=1i 3\n").unwrap();
    std::fs::create_dir_all(logs.join("sub")).unwrap();
    std::fs::write(logs.join("c.txt"), "m v=1i 99\n").unwrap();
    assert!(fake.wait_for_lines(2, T), "{}", d.stderr_so_far());
    writeln!(append(&logs.join("a.log")), "m v=1i 4").unwrap();
    assert!(fake.wait_for_lines(3, T), "{}", d.stderr_so_far());
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_exactly_once(&fake, 2..=4);
}

#[test]
fn from_beginning_true_reads_existing_lines_and_false_skips_them() {
    for from_beginning in [true, false] {
        let fake = FakeInflux::start();
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let live = logs.join("app.log");
        std::fs::write(&live, "m v=1i 1\nm v=1i 2\n").unwrap();
        let cfg = config(
            dir.path(),
            &fake.url(),
            &format!(
                "{}\nfrom_beginning = {from_beginning}",
                glob_of(&logs, "*.log")
            ),
        );
        let mut d = Daemon::start(&cfg);
        wait_started(&mut d);
        writeln!(append(&live), "m v=1i 3").unwrap();
        let want = if from_beginning { 3 } else { 1 };
        assert!(fake.wait_for_lines(want, T), "{}", d.stderr_so_far());
        std::thread::sleep(Duration::from_millis(300));
        d.terminate();
        let out = d.wait(T);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let first = if from_beginning { 1 } else { 3 };
        assert_exactly_once(&fake, first..=3);

        // A restart is not a first start: lines written while lineship was down are read.
        writeln!(append(&live), "m v=1i 4").unwrap();
        fake.clear();
        let mut d = Daemon::start(&cfg);
        wait_started(&mut d);
        assert!(fake.wait_for_lines(1, T), "{}", d.stderr_so_far());
        std::thread::sleep(Duration::from_millis(300));
        d.terminate();
        let out = d.wait(T);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert_exactly_once(&fake, 4..=4);
    }
}

/// True once `line.rs` holds the real escapers (the placeholder copies bytes unchanged).
#[test]
fn text_format_wraps_awkward_lines_as_points() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("my logs,x=y");
    std::fs::create_dir_all(&logs).unwrap();
    let live = logs.join("app.log");
    let cfg = config(
        dir.path(),
        &fake.url(),
        &format!(
            "{}\nfrom_beginning = true\nformat = \"text\"\nmeasurement = \"applog\"\ntags = {{ app = \"web\", env = \"a b\" }}",
            glob_of(&logs, "*.log")
        ),
    );
    let raw: Vec<&[u8]> = vec![
        b"plain words here",
        b"say \"hi\" and \\ backslash",
        b"commas, equals= and\ttabs",
        b"trailing backslash \\",
        b"bad utf8 \xff\xfe end",
        b"crlf line\r",
        b"", // empty lines carry nothing
        b"# not a comment in text mode",
    ];
    let mut f = append(&live);
    for l in &raw {
        f.write_all(l).unwrap();
        f.write_all(b"\n").unwrap();
    }
    drop(f);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let d = Daemon::start(&cfg);
    assert!(fake.wait_for_lines(7, T), "{}", d.stderr_so_far());
    std::thread::sleep(Duration::from_millis(300));
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let lines = fake.accepted_lines();
    assert_eq!(lines.len(), 7, "{lines:#?}");
    let path = live
        .to_string_lossy()
        .replace(' ', "\\ ")
        .replace(',', "\\,")
        .replace('=', "\\=");
    let prefix = format!("applog,app=web,env=a\\ b,path={path} message=\"");
    let expected_messages = [
        "plain words here",
        "say \\\"hi\\\" and \\\\ backslash",
        "commas, equals= and\ttabs",
        "trailing backslash \\\\",
        "bad utf8 \u{FFFD}\u{FFFD} end",
        "crlf line",
        "# not a comment in text mode",
    ];
    for (l, msg) in lines.iter().zip(expected_messages) {
        let (head, stamp) = l.rsplit_once(' ').unwrap();
        let stamp: i64 = stamp.parse().unwrap();
        assert!(
            stamp >= before - 60_000_000_000,
            "stamped with the read time: {l}"
        );
        assert!(head.starts_with("applog,app=web,"), "{l}");
        assert!(head.contains(" message=\""), "{l}");
        assert_eq!(head, format!("{prefix}{msg}\""));
    }
    assert!(
        lines[4].contains('\u{FFFD}'),
        "invalid UTF-8 replaced: {}",
        lines[4]
    );
}

#[test]
fn restart_resumes_from_the_checkpoint_without_duplicates() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let live = logs.join("app.log");
    let cfg = config(
        dir.path(),
        &fake.url(),
        &format!("{}\nfrom_beginning = true", glob_of(&logs, "*.log")),
    );
    let mut w = append(&live);
    for seq in 1..=1000 {
        writeln!(w, "m v=1i {seq}").unwrap();
    }
    let d = Daemon::start(&cfg);
    assert!(fake.wait_for_lines(1000, T), "{}", d.stderr_so_far());
    d.terminate();
    assert_eq!(d.wait(T).code, Some(0));
    // Written while down, including a partial line finished after the restart.
    for seq in 1001..=1500 {
        writeln!(w, "m v=1i {seq}").unwrap();
    }
    write!(w, "m v=1i ").unwrap();
    let mut d = Daemon::start(&cfg);
    wait_started(&mut d);
    assert!(fake.wait_for_lines(1500, T), "{}", d.stderr_so_far());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fake.accepted_line_count(), 1500, "the partial line waits");
    writeln!(w, "1501").unwrap();
    assert!(fake.wait_for_lines(1501, T), "{}", d.stderr_so_far());
    d.signal(libc::SIGHUP);
    assert!(
        d.wait_for_stderr("SIGHUP: rescanning the tail globs", T),
        "{}",
        d.stderr_so_far()
    );
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_exactly_once(&fake, 1..=1501);
}

/// 200,000 lines across rotations while lineship is `kill -9`ed and restarted several times:
/// every line arrives at least once.
#[test]
fn kill_9_while_writing_across_rotations_loses_nothing() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let cfg = config(
        dir.path(),
        &fake.url(),
        &format!("{}\nfrom_beginning = true", glob_of(&logs, "app.log")),
    );
    const N: u64 = 200_000;
    let writer_logs = logs.clone();
    let writer = std::thread::spawn(move || {
        let live = writer_logs.join("app.log");
        let mut w = std::io::BufWriter::new(append(&live));
        let started = Instant::now();
        for seq in 1..=N {
            writeln!(w, "m v=1i {seq}").unwrap();
            if seq % 25_000 == 0 {
                // Rotate; the next 50 lines still go to the renamed file, then reopen.
                w.flush().unwrap();
                let n = seq / 25_000;
                std::fs::rename(&live, writer_logs.join(format!("app.log.{n}"))).unwrap();
            }
            if seq % 25_000 == 50 && seq > 25_000 {
                w.flush().unwrap();
                w = std::io::BufWriter::new(append(&live));
            }
            if seq % 1_000 == 0 {
                w.flush().unwrap();
                // ~20 s of writing in all.
                let due = Duration::from_micros(seq * 100);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        w.flush().unwrap();
    });
    let mut kills = 0;
    let mut d = Daemon::start(&cfg);
    while !writer.is_finished() {
        std::thread::sleep(Duration::from_millis(2_500 + 700 * (kills % 3)));
        if writer.is_finished() {
            break;
        }
        d.kill9();
        let _ = d.wait(T);
        kills += 1;
        d = Daemon::start(&cfg);
    }
    writer.join().unwrap();
    assert!(
        kills >= 3,
        "only {kills} kills happened; the writer was too fast"
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let counts = seq_counts(&fake);
        if counts.len() as u64 == N || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    d.terminate();
    let out = d.wait(T);
    let counts = seq_counts(&fake);
    let missing: Vec<u64> = (1..=N)
        .filter(|s| !counts.contains_key(s))
        .take(20)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {N} lines never arrived after {kills} kills; first missing: {missing:?}\n{}",
        N - counts.len() as u64,
        out.stderr
    );
    let total: usize = counts.values().sum();
    eprintln!(
        "crash test: {kills} kills, {N} lines, {} delivered ({} duplicates)",
        total,
        total as u64 - N
    );
}

/// Issue 5's crash loop: during an outage (the server answers 503), `kill -9` lineship at
/// random moments ten times while lines keep arriving in a tailed file, then bring the server
/// back: every line is delivered. Checkpoints may only pass lines that are durably spooled.
#[test]
fn kill_9_ten_times_during_an_outage_loses_nothing() {
    let fake = FakeInflux::start().default_reply(common::Reply::status(503));
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let cfg = config(
        dir.path(),
        &fake.url(),
        &format!("{}\nfrom_beginning = true", glob_of(&logs, "app.log")),
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[[input.tail]]",
        "[spool]\nfsync = \"interval\"\nfsync_interval = \"100ms\"\n[[input.tail]]",
    );
    std::fs::write(&cfg, text).unwrap();
    const N: u64 = 60_000;
    let writer_logs = logs.clone();
    let writer = std::thread::spawn(move || {
        let mut w = append(&writer_logs.join("app.log"));
        let started = Instant::now();
        for block in 0..N / 500 {
            let mut buf = String::new();
            for seq in block * 500 + 1..=(block + 1) * 500 {
                buf.push_str(&format!("m v=1i {seq}\n"));
            }
            w.write_all(buf.as_bytes()).unwrap();
            // ~12 s of writing in all.
            let due = Duration::from_millis((block + 1) * 100);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    });
    // Pseudo-random kill moments, reproducible from the printed seed.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    eprintln!("kill moments seed: {seed}");
    for _ in 0..10 {
        let d = Daemon::start(&cfg);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 900));
        d.kill9();
        let _ = d.wait(T);
    }
    writer.join().unwrap();
    assert!(
        fake.accepted_lines().is_empty(),
        "the server was down throughout"
    );
    assert!(!fake.requests().is_empty(), "lineship kept trying");

    fake.set_default_reply(common::Reply::status(204));
    let d = Daemon::start(&cfg);
    let deadline = Instant::now() + Duration::from_secs(60);
    while (seq_counts(&fake).len() as u64) < N && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    d.terminate();
    let out = d.wait(T);
    let counts = seq_counts(&fake);
    let missing: Vec<u64> = (1..=N)
        .filter(|s| !counts.contains_key(s))
        .take(20)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {N} lines never arrived after 10 kills during the outage; first missing: {missing:?}\n{}",
        N - counts.len() as u64,
        out.stderr
    );
}

/// User + system CPU time of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_comm.split(' ').collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no memory-safety preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// 1,000 idle files must not burn CPU: after reading them, lineship stays nearly asleep.
#[test]
fn a_thousand_idle_files_cost_little_cpu() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    for i in 0..1000 {
        std::fs::write(logs.join(format!("f{i:04}.log")), format!("m v=1i {i}\n")).unwrap();
    }
    let cfg = config(
        dir.path(),
        &fake.url(),
        &format!("{}\nfrom_beginning = true", glob_of(&logs, "*.log")),
    );
    let d = Daemon::start(&cfg);
    assert!(fake.wait_for_lines(1000, T), "{}", d.stderr_so_far());
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_seconds(d.pid());
    let window = Duration::from_secs(6);
    std::thread::sleep(window);
    let used = cpu_seconds(d.pid()) - before;
    // Still following: a line appended to one of them arrives.
    writeln!(append(&logs.join("f0500.log")), "m v=1i 1000").unwrap();
    assert!(fake.wait_for_lines(1001, T), "{}", d.stderr_so_far());
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let share = used / window.as_secs_f64();
    eprintln!(
        "1,000 idle files: {used:.3} CPU-s in {window:?} ({:.2}% of a core)",
        share * 100.0
    );
    // Generous for debug builds on a busy CI machine; release measures far less.
    assert!(share < 0.10, "idle CPU {:.1}% of a core", share * 100.0);
    assert_exactly_once(&fake, 0..=1000);
}

/// "The file is the buffer": while the server is down and the spool is full (`when_full =
/// "block"`), the tail input stops reading instead of holding the file in memory; when the
/// server is back, every line arrives once.
#[test]
fn a_blocked_pipeline_stops_the_reading_and_the_file_waits() {
    let fake = FakeInflux::start().default_reply(common::Reply::status(503));
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let live = logs.join("app.log");
    // ~40 MB that gzip cannot shrink much (a pseudo-random field), so the pipeline's buffers
    // hold only a fraction of it.
    const N: u64 = 400_000;
    let mut w = std::io::BufWriter::new(append(&live));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for seq in 1..=N {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        writeln!(
            w,
            "m,host=h r=\"{x:016x}{:016x}{:016x}\" {seq}",
            x.rotate_left(21),
            x.rotate_left(42)
        )
        .unwrap();
    }
    drop(w);
    let size = std::fs::metadata(&live).unwrap().len();
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
state_dir = {state}
[agent]
flush_interval = "50ms"
batch_max_bytes = "1MiB"
shutdown_timeout = "3s"
[output]
url = "{url}"
bucket = "b"
memory_limit = "1MiB"
initial_backoff = "10ms"
max_backoff = "100ms"
[spool]
max_size = "1MiB"
when_full = "block"
[telemetry]
listen = "127.0.0.1:0"
[[input.tail]]
{paths}
from_beginning = true
"#,
            state = toml_path(&dir.path().join("state")),
            url = fake.url(),
            paths = glob_of(&logs, "*.log"),
        ),
    );
    let mut d = Daemon::start(&cfg);
    let addr = common::telemetry_addr(&mut d);
    let read = || {
        common::metric(
            &common::scrape(addr),
            r#"lineship_input_bytes_total{input="tail[0]"}"#,
        )
    };
    // Reading starts, then stalls: the spool is full and blocks, the queue fills, tail waits.
    assert!(common::wait_until(T, || read() > 0));
    let mut last = read();
    let stalled = common::wait_until(T, || {
        std::thread::sleep(Duration::from_millis(500));
        let now = read();
        std::mem::replace(&mut last, now) == now
    });
    assert!(
        stalled,
        "tail never stopped reading: {} of {size} bytes",
        read()
    );
    let held = read();
    assert!(
        held < size / 2,
        "the pipeline took {held} of {size} bytes: the file should be the buffer"
    );
    // The server is back: the rest is read and everything arrives, once.
    fake.set_default_reply(common::Reply::status(204));
    assert!(
        fake.wait_for_lines(N as usize, Duration::from_secs(120)),
        "only {} of {N} lines arrived:\n{}",
        fake.accepted_line_count(),
        d.stderr_so_far()
    );
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    eprintln!("held {held} of {size} bytes while blocked");
    assert_exactly_once(&fake, 1..=N);
}
