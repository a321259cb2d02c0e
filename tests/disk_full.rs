//! A spool on a disk that fills up: an outage long enough to fill a small tmpfs, then a second
//! outage. Nothing stdin handed over may be lost, a drained spool must give its space back,
//! and a full disk is logged once per change, not once per batch.
//!
//! Needs to mount a tmpfs (root with CAP_SYS_ADMIN, as on the dev and CI machines). Where
//! mounting is not permitted the test skips with a loud notice: a sandbox without that
//! capability says nothing about lineship.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{lineship_command, run_stdin, write_config, Daemon, FakeInflux, Reply};

const T: Duration = Duration::from_secs(180);

/// A tmpfs of `size` mounted at `dir` for the life of the value.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(Tmpfs(dir.to_path_buf()));
        }
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn lines(from: usize, to: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in from..to {
        // Varied enough that gzip does not shrink it to nothing.
        s.push_str(&format!(
            "diskfull,host=h{},k={:x} seq={i}i,v={} {}\n",
            i % 97,
            i.wrapping_mul(2_654_435_761) % 1_000_003,
            i.wrapping_mul(40503) % 65_521,
            1_600_000_000_000_000_000u64 + i as u64
        ));
    }
    s.into_bytes()
}

fn seq_counts(fake: &FakeInflux) -> HashMap<usize, usize> {
    let mut m = HashMap::new();
    for l in fake.accepted_lines() {
        let i = l.find("seq=").expect("seq field") + 4;
        let n: usize = l[i..l[i..].find('i').unwrap() + i].parse().unwrap();
        *m.entry(n).or_default() += 1;
    }
    m
}

fn used_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=used", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_disk_full_outage_then_a_second_outage_lose_nothing_and_the_space_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let Some(_mount) = Tmpfs::mount(&state, "3m") else {
        return;
    };
    let fake = FakeInflux::start().default_reply(Reply::status(503));
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
state_dir = "{}"
[agent]
flush_interval = "100ms"
batch_max_lines = 2000
shutdown_timeout = "2s"
summary_interval = "1h"
[output]
url = "{}"
org = "o"
bucket = "b"
token = "t"
initial_backoff = "10ms"
max_backoff = "200ms"
[spool]
fsync = "never"
"#,
            state.display(),
            fake.url()
        ),
    );

    // Outage 1: far more than the 3 MiB disk holds (about 20 MB of lines, 6 MB gzipped).
    let n = 250_000;
    let mut c = lineship_command();
    c.arg("--config").arg(&cfg).arg("--stdin");
    let mut run = Daemon::spawn_with_stdin(c, lines(0, n));
    assert!(
        run.wait_for_stderr("cannot write to the spool", T),
        "the disk fills: {}",
        run.stderr_so_far()
    );
    // Held while the disk is full: stdin is not read to its end into memory.
    std::thread::sleep(Duration::from_secs(2));
    assert!(run.is_running(), "{}", run.stderr_so_far());
    fake.set_default_reply(Reply::status(204));
    let out = run.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let errors = out
        .stderr
        .lines()
        .filter(|l| l.contains("cannot write to the spool"))
        .count();
    assert_eq!(errors, 1, "logged once per change: {}", out.stderr);
    assert!(!out.stderr.contains("LOST"), "{}", out.stderr);
    let got = seq_counts(&fake);
    let missing: Vec<usize> = (0..n).filter(|i| !got.contains_key(i)).take(10).collect();
    assert!(missing.is_empty(), "lost lines, first {missing:?}");

    // The drained spool gave its disk back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while used_bytes(&state) > 256 << 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        used_bytes(&state) <= 256 << 10,
        "spool space returned: {} bytes used",
        used_bytes(&state)
    );

    // Outage 2: what fits on the disk is spooled, not lost.
    fake.set_default_reply(Reply::status(503));
    let before = fake.accepted_lines().len();
    let out = run_stdin(&cfg, &lines(n, n + 20_000), T);
    assert_eq!(out.code, Some(75), "{}", out.stderr);
    assert!(!out.stderr.contains("LOST"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("cannot write to the spool"),
        "{}",
        out.stderr
    );
    assert_eq!(fake.accepted_lines().len(), before);
    fake.set_default_reply(Reply::status(204));
    let out = run_stdin(&cfg, b"", T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let got = seq_counts(&fake);
    let missing: Vec<usize> = (n..n + 20_000)
        .filter(|i| !got.contains_key(i))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "lost lines of the second outage, first {missing:?}"
    );
}
