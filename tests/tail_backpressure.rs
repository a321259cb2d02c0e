//! The tail input's cost and backpressure, with the real binary against the fake InfluxDB:
//! 1,000 idle files cost little CPU, and a blocked pipeline (server down, spool full) stops the
//! reading, so that the file is the buffer.

mod common;

use std::io::Write;
use std::time::Duration;

use common::tail::*;
use common::{toml_path, write_config, Daemon, FakeInflux};

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
