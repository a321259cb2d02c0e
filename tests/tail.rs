//! The tail input with the real binary against the fake InfluxDB: rotation while writing,
//! copytruncate, files matched by two inputs' globs, new files under a glob,
//! `from_beginning`, and `format = "text"`. Restarts and `kill -9` are in `tail_crash.rs`,
//! idle cost and a blocked pipeline in `tail_backpressure.rs`.

mod common;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use common::tail::*;
use common::{Daemon, FakeInflux};

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
