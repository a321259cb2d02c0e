//! Measuring the daemon: it is started through a small helper process (`exec-measured`, hidden)
//! that reaps it with `wait4` and reports its exit, CPU time and peak RSS as JSON; plus the CPU
//! accounting of this process's own threads (the sink's, the senders') and of the daemon's.

use std::ffi::OsString;
use std::io::{self, BufRead, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicI32, Ordering::Relaxed};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::sink::SINK_THREAD;

pub const HELPER_SUBCOMMAND: &str = "exec-measured";

/// How the daemon process ended, from `wait4` in the `exec-measured` helper.
#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
pub struct DaemonExit {
    /// Exit status, or 128 + signal number when killed by a signal.
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub cpu_user_s: f64,
    pub cpu_sys_s: f64,
    pub peak_rss_kib: u64,
    /// The helper's own peak RSS when it spawned the daemon: `peak_rss_kib` cannot be lower.
    pub rss_floor_kib: u64,
    pub timed_out: bool,
}

impl DaemonExit {
    pub fn cpu_s(&self) -> f64 {
        self.cpu_user_s + self.cpu_sys_s
    }
}

/// Reaps `pid` with `wait4` and returns its status and resource usage.
pub fn reap(pid: libc::pid_t) -> io::Result<DaemonExit> {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `ru` are valid out-parameters; `pid` is our unreaped child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let (exit_code, signal) = if libc::WIFEXITED(status) {
        (libc::WEXITSTATUS(status), None)
    } else {
        let sig = libc::WTERMSIG(status);
        (128 + sig, Some(sig))
    };
    Ok(DaemonExit {
        exit_code,
        signal,
        cpu_user_s: tv(ru.ru_utime),
        cpu_sys_s: tv(ru.ru_stime),
        // Linux reports ru_maxrss in KiB.
        peak_rss_kib: ru.ru_maxrss.max(0) as u64,
        rss_floor_kib: 0,
        timed_out: false,
    })
}

/// `VmHWM` of this process in KiB, or 0.
pub fn own_peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The daemon's pid, for the helper's signal handler.
pub static HELPER_CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = HELPER_CHILD.load(Relaxed);
    if pid > 0 {
        let sig = if sig == libc::SIGUSR1 {
            libc::SIGKILL
        } else {
            sig
        };
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// The `exec-measured` helper: runs `command` with this process's stdin, prints `spawned <pid>`,
/// forwards SIGTERM/SIGINT (and SIGUSR1 as SIGKILL), and prints a [`DaemonExit`] as JSON when it
/// has exited.
///
/// Why a helper: on Linux a child's `ru_maxrss` starts at the peak RSS of the process that
/// spawned it (the kernel records the old mm's high-water mark at exec, and with vfork/CLONE_VM
/// that is the parent's). Spawned from `stdin`, which holds all the generated input, the daemon
/// would report hundreds of MiB it never used. This helper is freshly exec'd and small.
pub fn cmd_exec_measured(command: &[OsString]) -> Result<ExitCode> {
    let (program, args) = command.split_first().context("no command given")?;
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1] {
        // SAFETY: installs a handler that only calls async-signal-safe functions.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
    let rss_floor_kib = own_peak_rss_kib();
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::inherit())
        // Our stdout is the report channel to `stdin`; the daemon's output goes to stderr.
        .stdout(Stdio::from(io::stderr()))
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawning {}", Path::new(program).display()))?;
    let pid = child.id() as libc::pid_t;
    HELPER_CHILD.store(pid, Relaxed);
    // Leave the daemon the only reader of the input pipe, so the writer sees EPIPE if it exits.
    let devnull = std::fs::File::open("/dev/null").context("opening /dev/null")?;
    // SAFETY: dup2 onto fd 0, which nothing in this process reads.
    unsafe { libc::dup2(devnull.as_raw_fd(), 0) };
    let mut out = io::stdout().lock();
    writeln!(out, "spawned {pid}")?;
    out.flush()?;
    let mut exit = reap(pid).context("wait4 on the daemon")?;
    exit.rss_floor_kib = rss_floor_kib;
    writeln!(out, "{}", serde_json::to_string(&exit)?)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// A daemon started through the `exec-measured` helper.
pub struct Measured {
    pub helper: std::process::Child,
    pub helper_pid: libc::pid_t,
    /// The daemon's own pid, as the helper reported it.
    pub pid: libc::pid_t,
    pub reports: io::BufReader<std::process::ChildStdout>,
}

/// Starts `lineship --config CFG [extra...]` through the `exec-measured` helper and waits for it
/// to say the daemon was spawned. `stdin` and `stderr` are the helper's, which the daemon
/// inherits (its stdout goes to the same place as its stderr).
pub fn spawn_measured(
    lineship: &Path,
    config: &Path,
    extra: &[&str],
    stdin: Stdio,
    stderr: Stdio,
) -> Result<Measured> {
    let mut args: Vec<OsString> = vec!["--config".into(), config.into()];
    args.extend(extra.iter().map(OsString::from));
    spawn_measured_command(lineship, &args, stdin, stderr)
}

/// Starts `program args...` through the `exec-measured` helper (any program, e.g. vmagent for
/// `http --vmagent`) and waits for it to say the program was spawned.
pub fn spawn_measured_command(
    program: &Path,
    args: &[OsString],
    stdin: Stdio,
    stderr: Stdio,
) -> Result<Measured> {
    let this = std::env::current_exe().context("locating this executable")?;
    let mut helper = Command::new(this)
        .arg(HELPER_SUBCOMMAND)
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("spawning the exec-measured helper")?;
    let helper_pid = helper.id() as libc::pid_t;
    let mut reports = io::BufReader::new(helper.stdout.take().context("helper stdout")?);
    let mut line = String::new();
    reports.read_line(&mut line)?;
    let Some(pid) = line
        .strip_prefix("spawned ")
        .and_then(|p| p.trim().parse().ok())
    else {
        // Closes the helper's stdin before waiting.
        let _ = helper.wait();
        bail!("could not start {}", program.display());
    };
    Ok(Measured {
        helper,
        helper_pid,
        pid,
        reports,
    })
}

impl Measured {
    /// Sends `sig` to the helper, which forwards it to the daemon (SIGUSR1 as SIGKILL).
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: the helper is our child and is reaped only in `wait`, which consumes self.
        unsafe { libc::kill(self.helper_pid, sig) };
    }

    /// True once the helper (and so the daemon) has exited.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.helper.try_wait(), Ok(Some(_)))
    }

    /// Waits for the daemon to exit and returns the helper's report. After `timeout` the daemon
    /// gets SIGTERM, and SIGKILL 10 s later.
    pub fn wait(mut self, timeout: Duration) -> Result<DaemonExit> {
        let helper_pid = self.helper_pid;
        let (cancel_tx, cancel_rx) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if cancel_rx.recv_timeout(timeout).is_ok() {
                return false;
            }
            eprintln!("lineship-load: run exceeded {timeout:?}; sending SIGTERM");
            // SAFETY: the helper is our child and is not reaped before this thread is joined;
            // it forwards the signal to the daemon.
            unsafe { libc::kill(helper_pid, libc::SIGTERM) };
            if cancel_rx.recv_timeout(Duration::from_secs(10)).is_err() {
                eprintln!("lineship-load: still running; sending SIGKILL");
                // SAFETY: as above; the helper turns SIGUSR1 into SIGKILL for the daemon.
                unsafe { libc::kill(helper_pid, libc::SIGUSR1) };
            }
            true
        });
        let mut line = String::new();
        let read = self.reports.read_line(&mut line);
        let _ = cancel_tx.send(());
        let timed_out = watchdog.join().expect("watchdog thread panicked");
        let _ = self.helper.wait();
        read.context("reading the helper's report")?;
        let mut exit: DaemonExit = serde_json::from_str(line.trim())
            .with_context(|| format!("the exec-measured helper reported {line:?}"))?;
        exit.timed_out = timed_out;
        Ok(exit)
    }
}

pub fn process_cpu_s() -> f64 {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU seconds used so far by this process's threads named [`SINK_THREAD`] (the sink's), from
/// /proc; 0 where that is unavailable.
pub fn sink_cpu_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut total = 0u64;
    for task in tasks.flatten() {
        let path = task.path();
        let is_sink =
            std::fs::read_to_string(path.join("comm")).is_ok_and(|c| c.trim() == SINK_THREAD);
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if is_sink && fields.len() > 12 {
            total +=
                fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        }
    }
    total as f64 / ticks
}

/// CPU seconds (user + sys) so far of each thread of process `pid`, summed per thread name
/// with trailing digits dropped (`lineship-udp0` and `lineship-udp1` are `lineship-udp`),
/// from /proc; empty where that is unavailable.
pub fn threads_cpu_s(pid: libc::pid_t) -> Vec<(String, f64)> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut by_name: Vec<(String, f64)> = Vec::new();
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close]
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.len() <= 12 {
            continue;
        }
        let t = (fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0))
            as f64
            / ticks;
        match by_name.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => *v += t,
            None => by_name.push((name, t)),
        }
    }
    by_name.sort_by(|a, b| b.1.total_cmp(&a.1));
    by_name
}

/// CPU seconds (user + sys) so far of process `pid` (all its threads, live or exited), from
/// /proc/PID/stat; 0 where that is unavailable.
pub fn pid_cpu_s(pid: libc::pid_t) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (field(11) + field(12)) as f64 / ticks
}

pub fn thread_cpu_s() -> f64 {
    // SAFETY: zeroed timespec is a valid out-parameter.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
