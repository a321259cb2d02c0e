//! Helpers the tail test files share (`tests/tail.rs`, `tests/tail_crash.rs`,
//! `tests/tail_backpressure.rs`): a config with one tail input against the fake InfluxDB,
//! writers appending to log files, and checks on the lines `m v=1i <seq>` that arrived.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{toml_path, write_config, Daemon, FakeInflux};

/// The bound on every wait in the tail tests.
pub const T: Duration = Duration::from_secs(30);

/// A config with state under `dir`, the output at `url` and one `[[input.tail]]` holding
/// `tail` (which may open further sections).
pub fn config(dir: &Path, url: &str, tail: &str) -> PathBuf {
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

pub fn glob_of(logs: &Path, pattern: &str) -> String {
    format!("paths = [{}]", toml_path(&logs.join(pattern)))
}

pub fn append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// The sequence number of a line `m v=1i <seq>`.
pub fn seq_of(line: &str) -> u64 {
    line.rsplit(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
}

/// How often each sequence number arrived.
pub fn seq_counts(fake: &FakeInflux) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for l in fake.accepted_lines() {
        *m.entry(seq_of(&l)).or_default() += 1;
    }
    m
}

/// The last "tail summary" log line (the one logged at exit).
pub fn last_tail_summary(stderr: &str) -> &str {
    stderr
        .lines()
        .rfind(|l| l.contains("tail summary"))
        .unwrap_or_else(|| panic!("no tail summary: {stderr}"))
}

pub fn wait_started(d: &mut Daemon) {
    assert!(
        d.wait_for_stderr("tail input started", T),
        "daemon did not start tailing:\n{}",
        d.stderr_so_far()
    );
}

pub fn assert_exactly_once(fake: &FakeInflux, expected: std::ops::RangeInclusive<u64>) {
    let counts = seq_counts(fake);
    let want: Vec<u64> = expected.collect();
    let got: Vec<u64> = counts.keys().copied().collect();
    assert_eq!(got.len(), want.len(), "distinct lines delivered");
    assert_eq!(got, want);
    let dups: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).collect();
    assert!(dups.is_empty(), "duplicates without a crash: {dups:?}");
    assert_eq!(fake.empty_posts(), 0);
}
