//! The tail input under a low limit on open files: more files under the globs than the
//! process may open. The real binary runs with `RLIMIT_NOFILE` set to 256 (soft and hard, so
//! it cannot raise it) against the fake InfluxDB.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{lineship_command, toml_path, write_config, Daemon, FakeInflux};

const FILES: u64 = 2_000;
const LINES_PER_FILE: u64 = 10;
const NOFILE: u64 = 256;

/// One GET with short timeouts: the status, or `None` when the endpoint did not answer.
fn try_get(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.split_whitespace().nth(1)?.parse().ok()
}

fn write_files(logs: &Path) {
    std::fs::create_dir_all(logs).unwrap();
    for f in 0..FILES {
        let mut body = String::new();
        for l in 0..LINES_PER_FILE {
            body.push_str(&format!("m,f={f} v=1i {}\n", f * LINES_PER_FILE + l + 1));
        }
        std::fs::write(logs.join(format!("f{f:04}.lp")), body).unwrap();
    }
}

/// Runs the daemon under `ulimit -n 256` over 2,000 files (`extra` goes into the tail
/// table) and checks what must hold however the descriptors are shared: every line
/// delivered exactly once, the endpoint answering while the files are read and after, no
/// file taken for rotated. Returns the daemon's stderr.
fn run_many_files(extra: &str) -> String {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    write_files(&logs);
    let cfg = write_config(
        dir.path(),
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
paths = [{glob}]
from_beginning = true
{extra}
[telemetry]
listen = "127.0.0.1:0"
"#,
            state = toml_path(&dir.path().join("state")),
            url = fake.url(),
            glob = toml_path(&logs.join("*.lp")),
        ),
    );
    let mut command = lineship_command();
    command.arg("--config").arg(&cfg);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let r = libc::rlimit {
                rlim_cur: NOFILE,
                rlim_max: NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut d = Daemon::spawn(command);
    let addr: SocketAddr = {
        let needle = "telemetry endpoint listening";
        d.log_field(needle, needle, "addr").parse().unwrap()
    };

    let total = (FILES * LINES_PER_FILE) as usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut metrics_ok, mut health_ok) = (0, 0);
    // The endpoint answers while the files are being read (probed at least once).
    loop {
        if try_get(addr, "/metrics") == Some(200) {
            metrics_ok += 1;
        }
        if try_get(addr, "/health") == Some(200) {
            health_ok += 1;
        }
        if fake.accepted_line_count() >= total || Instant::now() >= deadline || !d.is_running() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        fake.accepted_line_count(),
        total,
        "lines delivered:\n{}",
        d.stderr_so_far()
    );
    assert!(
        metrics_ok > 0 && health_ok > 0,
        "/metrics answered {metrics_ok}x, /health {health_ok}x:\n{}",
        d.stderr_so_far()
    );
    assert_eq!(
        try_get(addr, "/metrics"),
        Some(200),
        "{}",
        d.stderr_so_far()
    );
    assert_eq!(try_get(addr, "/health"), Some(200), "{}", d.stderr_so_far());
    d.terminate();
    let out = d.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    // Exactly once.
    let mut seen = vec![0u32; total + 1];
    for l in fake.accepted_lines() {
        let seq: usize = l.rsplit(' ').next().unwrap().parse().unwrap();
        seen[seq] += 1;
    }
    let wrong: Vec<_> = (1..=total).filter(|&s| seen[s] != 1).take(10).collect();
    assert!(
        wrong.is_empty(),
        "lines not delivered exactly once: {wrong:?}"
    );

    // Nothing moved: no file may be taken for rotated, no descriptor may run out.
    assert!(
        !out.stderr.contains("rotated or deleted"),
        "a file was taken for rotated:\n{}",
        out.stderr
    );
    let summary = out
        .stderr
        .lines()
        .rfind(|l| l.contains("tail summary"))
        .unwrap_or_else(|| panic!("no tail summary: {}", out.stderr));
    assert!(summary.contains("rotations=0"), "{summary}");
    eprintln!("endpoint answered /metrics {metrics_ok}x, /health {health_ok}x during the run");
    out.stderr
}

#[test]
fn more_files_than_descriptors_are_read_in_turn_and_the_endpoint_stays_up() {
    let stderr = run_many_files("");
    assert!(
        !stderr.contains("Too many open files"),
        "a descriptor ran out:\n{stderr}"
    );
    let limit_lines: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("more files match than max_open_files"))
        .collect();
    assert_eq!(limit_lines.len(), 1, "the limit is logged once:\n{stderr}");
    assert!(
        limit_lines[0].contains("max_open_files=192") && limit_lines[0].contains("nofile_soft=256"),
        "{}",
        limit_lines[0]
    );
}

/// `max_open_files` set above what the limit allows: the tailer runs out of descriptors for
/// real (EMFILE), says so once, follows fewer files for a while, and still loses nothing and
/// takes nothing for a rotation.
#[test]
fn running_out_of_descriptors_for_real_is_survived() {
    let stderr = run_many_files("max_open_files = 1000");
    assert!(
        stderr.contains("the tail inputs may keep more files open than the open-file limit"),
        "warned at startup:\n{stderr}"
    );
    let ran_out = stderr
        .lines()
        .filter(|l| l.contains("the process ran out of file descriptors"))
        .count();
    assert_eq!(ran_out, 1, "logged once:\n{stderr}");
}
