//! Running as a service, through the real binary: sd_notify (READY, WATCHDOG, STOPPING),
//! SIGHUP token rotation, and the startup checks (telemetry bind, state_dir, world-readable
//! secrets). `/metrics` and `/health` are in `service_telemetry.rs`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::service::*;
use common::{lineship_command, toml_path, write_config, Daemon, FakeInflux, Reply};

/// Collects every datagram sent to a unix socket, on a helper thread.
struct NotifySocket {
    path: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NotifySocket {
    fn bind(path: PathBuf) -> Self {
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (messages.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    m.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        });
        NotifySocket {
            path,
            messages,
            stop,
            thread: Some(thread),
        }
    }

    fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    fn wait_for(&self, count: impl Fn(&[String]) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if count(&self.messages()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn finish(mut self) -> Vec<String> {
        // Give datagrams already queued a moment to be read.
        std::thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.messages()
    }
}

fn has(msg: &str, assignment: &str) -> bool {
    msg.lines().any(|l| l == assignment)
}

fn count(msgs: &[String], assignment: &str) -> usize {
    msgs.iter().filter(|m| has(m, assignment)).count()
}

fn first(msgs: &[String], assignment: &str) -> Option<usize> {
    msgs.iter().position(|m| has(m, assignment))
}

#[test]
fn sd_notify_ready_then_watchdog_pings_then_stopping() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), "", "");
    let notify = NotifySocket::bind(dir.path().join("notify.sock"));
    let path = notify.path.to_str().unwrap().to_owned();
    let mut d = daemon(
        &cfg,
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "200000")],
    );
    assert!(
        notify.wait_for(|m| count(m, "WATCHDOG=1") >= 3, T),
        "no watchdog pings; got {:?}\n{}",
        notify.messages(),
        d.stderr_so_far()
    );
    d.write_stdin(&lines(0, 10));
    assert!(fake.wait_for_lines(10, T));
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let msgs = notify.finish();

    assert_eq!(count(&msgs, "READY=1"), 1, "{msgs:?}");
    assert_eq!(count(&msgs, "STOPPING=1"), 1, "{msgs:?}");
    let ready = first(&msgs, "READY=1").unwrap();
    let ping = first(&msgs, "WATCHDOG=1").unwrap();
    let stopping = first(&msgs, "STOPPING=1").unwrap();
    assert!(ready < ping && ping < stopping, "order: {msgs:?}");
    assert!(
        msgs[stopping..].iter().all(|m| !has(m, "WATCHDOG=1")),
        "no pings once stopping: {msgs:?}"
    );
}

#[test]
fn watchdog_meant_for_another_pid_is_not_fed() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), "", "");
    let notify = NotifySocket::bind(dir.path().join("notify.sock"));
    let path = notify.path.to_str().unwrap().to_owned();
    let mut d = daemon(
        &cfg,
        &[
            ("NOTIFY_SOCKET", &path),
            ("WATCHDOG_USEC", "100000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    assert!(notify.wait_for(|m| count(m, "READY=1") == 1, T));
    std::thread::sleep(Duration::from_millis(500));
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let msgs = notify.finish();
    assert_eq!(count(&msgs, "WATCHDOG=1"), 0, "{msgs:?}");
    assert_eq!(count(&msgs, "STOPPING=1"), 1, "{msgs:?}");
}

#[test]
fn sighup_rotates_the_token_without_losing_lines() {
    const OLD: &str = "tok-old-5f2a81";
    const NEW: &str = "tok-new-9c1b07";
    let accepted = Arc::new(Mutex::new(OLD.to_owned()));
    let a = accepted.clone();
    let fake = FakeInflux::with_responder(move |req| {
        let want = format!("Token {}", a.lock().unwrap());
        if req.header("authorization") == Some(want.as_str()) {
            Reply::no_content()
        } else {
            Reply::influx_error(401, "unauthorized access")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{OLD}\n")).unwrap();
    let cfg = config(
        dir.path(),
        &fake.url(),
        &format!("token_file = {}", toml_path(&token_file)),
        "",
    );
    let mut d = daemon(&cfg, &[]);

    d.write_stdin(&lines(0, 50));
    assert!(fake.wait_for_lines(50, T), "{}", d.stderr_so_far());

    // The token is rotated on the server and in the file; until SIGHUP, writes get 401 and
    // their lines wait.
    *accepted.lock().unwrap() = NEW.to_owned();
    let tmp = dir.path().join("token.tmp");
    std::fs::write(&tmp, format!("{NEW}\n")).unwrap();
    std::fs::rename(&tmp, &token_file).unwrap();
    d.write_stdin(&lines(50, 50));
    assert!(fake.wait_until(T, |reqs| reqs.iter().any(|r| r.status == 401)));
    assert_eq!(fake.accepted_line_count(), 50);

    d.signal(libc::SIGHUP);
    assert!(
        d.wait_for_stderr("the next request uses the new token", T),
        "{}",
        d.stderr_so_far()
    );
    d.write_stdin(&lines(100, 50));
    assert!(fake.wait_for_lines(150, T), "{}", d.stderr_so_far());
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    let mut got = fake.accepted_lines();
    got.sort();
    let mut want: Vec<String> = String::from_utf8(lines(0, 150))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    want.sort();
    assert_eq!(got, want, "every line delivered exactly once");
    let after: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.header("authorization") == Some(&format!("Token {NEW}")))
        .collect();
    assert!(after.iter().all(|r| r.status == 204));
    assert!(
        !out.stderr.contains(OLD) && !out.stderr.contains(NEW),
        "token logged"
    );
}

#[test]
fn telemetry_bind_failure_names_the_key() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = config(
        dir.path(),
        &fake.url(),
        "",
        &format!(
            "[telemetry]\nlisten = \"{}\"\n",
            taken.local_addr().unwrap()
        ),
    );
    let mut d = daemon(&cfg, &[]);
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("telemetry.listen"), "{}", out.stderr);
}

#[test]
fn unwritable_state_dir_is_a_clear_startup_error() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    // Not even root may create files in /proc.
    let cfg = write_config(
        dir.path(),
        &format!(
            "state_dir = \"/proc/self\"\n[output]\nurl = \"{}\"\nbucket = \"b\"\n[input.stdin]\nenabled = true\n",
            fake.url()
        ),
    );
    let mut d = daemon(&cfg, &[]);
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("state_dir /proc/self is not writable"),
        "{}",
        out.stderr
    );
}

#[test]
fn check_warns_about_a_world_readable_config_holding_the_token() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "http://127.0.0.1:9", "token = \"hush-77\"", "");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = lineship_command();
    cmd.arg("check").arg("--config").arg(&cfg);
    let out = Daemon::spawn(cmd).wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("chmod 600"), "{}", out.stderr);
    assert!(out.stderr.contains("lineship.toml"), "{}", out.stderr);
    assert!(!out.stderr.contains("hush-77") && !out.stdout.contains("hush-77"));

    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = lineship_command();
    cmd.arg("check").arg("--config").arg(&cfg);
    let out = Daemon::spawn(cmd).wait(T);
    assert!(!out.stderr.contains("chmod"), "{}", out.stderr);
}
