//! Running the `lineship` binary from tests: config files, a clean environment, and child
//! processes with a hard timeout. A `Daemon` collects stdout/stderr while it runs and is
//! SIGKILLed on Drop, so no test leaves a process behind or hangs CI.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub fn lineship_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lineship"))
}

/// Writes `dir/lineship.toml` with mode 0600 (lineship warns about world-readable configs
/// holding a token) and returns its path.
pub fn write_config(dir: &Path, toml_body: &str) -> PathBuf {
    let path = dir.join("lineship.toml");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    file.write_all(toml_body.as_bytes())
        .expect("write lineship config");
    path
}

/// A TOML basic string holding `path`, for building configs with `format!`.
pub fn toml_path(path: &Path) -> String {
    toml_string(&path.to_string_lossy())
}

pub fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A `Command` for the lineship binary with an environment that cannot leak into the test:
/// no proxies, no token, no systemd variables.
pub fn lineship_command() -> Command {
    let mut command = Command::new(lineship_bin());
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "LINESHIP_TOKEN",
        "STATE_DIRECTORY",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "JOURNAL_STREAM",
    ] {
        command.env_remove(var);
    }
    command
}

/// How a finished lineship run ended.
#[derive(Debug)]
pub struct RunOutput {
    pub status: ExitStatus,
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl RunOutput {
    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }
}

/// Runs `lineship --config CFG --stdin` fed with `stdin`. Panics (after SIGKILL) if it has not
/// exited within `timeout`.
pub fn run_stdin(config: &Path, stdin: &[u8], timeout: Duration) -> RunOutput {
    let mut command = lineship_command();
    command.arg("--config").arg(config).arg("--stdin");
    run_with_timeout(command, stdin, timeout)
}

/// Runs a command fed with `stdin`, collecting its output. Panics (after SIGKILL) if it has not
/// exited within `timeout`.
pub fn run_with_timeout(command: Command, stdin: &[u8], timeout: Duration) -> RunOutput {
    Daemon::spawn_with_stdin(command, stdin.to_vec()).wait(timeout)
}

/// A running lineship process: its output is collected while it runs, and it is SIGKILLed
/// on Drop.
pub struct Daemon {
    child: Option<Child>,
    started: Instant,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    threads: Vec<JoinHandle<()>>,
    /// Held open by `spawn_with_open_stdin` until `close_stdin` or drop.
    stdin_pipe: Option<ChildStdin>,
}

impl Daemon {
    /// Starts `lineship --config CFG` (stdin is /dev/null).
    pub fn start(config: &Path) -> Self {
        let mut command = lineship_command();
        command.arg("--config").arg(config);
        Self::spawn(command)
    }

    /// Starts a command with stdin from /dev/null.
    pub fn spawn(mut command: Command) -> Self {
        command.stdin(Stdio::null());
        Self::spawn_inner(command, None)
    }

    /// Starts a command and writes `stdin` to it from a helper thread, then closes it.
    pub fn spawn_with_stdin(mut command: Command, stdin: Vec<u8>) -> Self {
        command.stdin(Stdio::piped());
        Self::spawn_inner(command, Some(stdin))
    }

    /// Starts a command with a piped stdin that stays open: write with `write_stdin`, end it
    /// with `close_stdin`.
    pub fn spawn_with_open_stdin(mut command: Command) -> Self {
        command.stdin(Stdio::piped());
        let mut d = Self::spawn_inner(command, None);
        d.stdin_pipe = d.child.as_mut().and_then(|c| c.stdin.take());
        d
    }

    pub fn write_stdin(&mut self, data: &[u8]) {
        use std::io::Write;
        let pipe = self
            .stdin_pipe
            .as_mut()
            .expect("spawned with an open stdin");
        pipe.write_all(data).expect("write to the daemon's stdin");
        pipe.flush().expect("flush the daemon's stdin");
    }

    pub fn close_stdin(&mut self) {
        self.stdin_pipe = None;
    }

    fn spawn_inner(mut command: Command, stdin: Option<Vec<u8>>) -> Self {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut threads = vec![
            collect(
                child.stdout.take().expect("piped stdout"),
                Arc::clone(&stdout),
            ),
            collect(
                child.stderr.take().expect("piped stderr"),
                Arc::clone(&stderr),
            ),
        ];
        if let Some(data) = stdin {
            let pipe = child.stdin.take().expect("piped stdin");
            threads.push(feed(pipe, data));
        }
        Daemon {
            child: Some(child),
            started: Instant::now(),
            stdout,
            stderr,
            threads,
            stdin_pipe: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon already waited for").id()
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends a signal (e.g. `libc::SIGTERM`, `libc::SIGHUP`) if the process was not reaped yet.
    pub fn signal(&self, signal_number: i32) {
        if let Some(child) = self.child.as_ref() {
            signal(child, signal_number);
        }
    }

    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// `kill -9`.
    pub fn kill9(&self) {
        self.signal(libc::SIGKILL);
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|e| e.into_inner())).into()
    }

    /// Waits until stderr contains `needle`; false on timeout or if the process exited first.
    /// Waits for `wait_for` in stderr, then returns the value of `field=` in the first log line
    /// holding `line_with` (values end at whitespace; quotes are not handled).
    pub fn log_field(&mut self, wait_for: &str, line_with: &str, field: &str) -> String {
        assert!(
            self.wait_for_stderr(wait_for, Duration::from_secs(60)),
            "no {wait_for:?} in stderr:\n{}",
            self.stderr_so_far()
        );
        let log = self.stderr_so_far();
        let line = log
            .lines()
            .find(|l| l.contains(line_with))
            .unwrap_or_else(|| panic!("no line with {line_with:?} in stderr:\n{log}"));
        let key = format!("{field}=");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key.as_str()))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            .to_owned()
    }

    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr_so_far().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline || !self.is_running() {
                return self.stderr_so_far().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit and returns its output. Panics (after SIGKILL) if it is
    /// still running after `timeout`, showing what it wrote to stderr.
    pub fn wait(mut self, timeout: Duration) -> RunOutput {
        let mut child = self.child.take().expect("daemon already waited for");
        let status = match wait_timeout(&mut child, timeout) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                self.join_threads();
                panic!(
                    "lineship did not exit within {timeout:?} and was killed; stderr:\n{}",
                    self.stderr_so_far()
                );
            }
        };
        self.join_threads();
        let take = |buffer: &Arc<Mutex<Vec<u8>>>| {
            String::from_utf8_lossy(&buffer.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
        };
        RunOutput {
            status,
            code: status.code(),
            stdout: take(&self.stdout),
            stderr: take(&self.stderr),
            elapsed: self.started.elapsed(),
        }
    }

    /// Joins the output threads, but gives up after a moment: a grandchild that inherited the
    /// pipes could otherwise keep them open long after the process itself is gone.
    fn join_threads(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !self.threads.iter().all(JoinHandle::is_finished) {
            std::thread::sleep(Duration::from_millis(5));
        }
        for thread in self.threads.drain(..) {
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.join_threads();
            if std::thread::panicking() {
                eprintln!("--- lineship stderr ---\n{}", self.stderr_so_far());
            }
        }
    }
}

fn collect(mut pipe: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        loop {
            match pipe.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => into
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&buffer[..n]),
            }
        }
    })
}

fn feed(mut pipe: ChildStdin, data: Vec<u8>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        // A process that exits without reading everything closes the pipe: not our failure.
        let _ = pipe.write_all(&data);
    })
}

pub(super) fn signal(child: &Child, signal_number: i32) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped yet, so the
    // pid still names it.
    unsafe {
        libc::kill(pid, signal_number);
    }
}

/// Polls until the child exits or `timeout` passes.
pub(super) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `lineship ARGS --config CFG` (a subcommand such as `check` or `spool status`), with no
/// stdin and a minute's timeout.
pub fn lineship_cli(args: &[&str], cfg: &Path) -> RunOutput {
    let mut c = lineship_command();
    c.args(args).arg("--config").arg(cfg);
    run_with_timeout(c, b"", Duration::from_secs(60))
}
