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
    parse_vmhwm_kib(&status).unwrap_or(0)
}

/// `VmHWM` (peak RSS since exec) of process `pid` in KiB, from /proc/PID/status; None once it
/// has exited or where that is unavailable.
pub fn pid_peak_rss_kib(pid: libc::pid_t) -> Option<u64> {
    parse_vmhwm_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The `VmHWM:` line of /proc/PID/status text (`VmHWM:\t   12345 kB`), in KiB.
pub fn parse_vmhwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Makes the program `cmd` starts get SIGKILL when this process dies (`PR_SET_PDEATHSIG`), so
/// nothing this tool starts outlives it, even when it is killed. The signal comes when the
/// spawning *thread* exits, so `cmd` must be spawned from a thread that outlives the child (here
/// always the main thread).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and makes only async-signal-safe
    // calls (prctl, getppid), allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent died before the prctl took effect: no signal is coming.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        })
    }
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
    let child = die_with_parent(&mut Command::new(program))
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
    let mut helper = die_with_parent(&mut Command::new(this))
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

/// A helper (and so its program) still running when its [`Measured`] is dropped, e.g. on an
/// error path, is killed (SIGUSR1: the helper SIGKILLs the program and reaps it) and reaped.
impl Drop for Measured {
    fn drop(&mut self) {
        // `try_wait` keeps answering once the helper has been reaped, so a reaped helper's pid
        // (perhaps reused by now) is never signalled.
        if matches!(self.helper.try_wait(), Ok(None)) {
            self.signal(libc::SIGUSR1);
            let _ = self.helper.wait();
        }
    }
}

impl Measured {
    /// Sends `sig` to the helper, which forwards it to the daemon (SIGUSR1 as SIGKILL).
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: the helper is our child and is reaped only in `wait`, which consumes self,
        // and in `drop`.
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

/// CPU seconds (user + sys) so far of process `pid` (all its threads, live or exited): from its
/// process CPU clock (`clock_getcpuclockid`, ns resolution), else from /proc/PID/stat (clock
/// ticks, 10 ms); 0 where neither is available.
pub fn pid_cpu_s(pid: libc::pid_t) -> f64 {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: zeroed timespec is a valid out-parameter.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointers; a clock id from clock_getcpuclockid is valid for clock_gettime.
    if pid > 0
        && unsafe { libc::clock_getcpuclockid(pid, &mut clock) } == 0
        && unsafe { libc::clock_gettime(clock, &mut ts) } == 0
    {
        return ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9;
    }
    pid_stat_cpu_s(pid)
}

/// CPU seconds (utime + stime) of process `pid` from /proc/PID/stat, in clock ticks; 0 where
/// that is unavailable.
fn pid_stat_cpu_s(pid: libc::pid_t) -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vmhwm() {
        let status =
            "Name:\tlineship\nVmPeak:\t  123456 kB\nVmHWM:\t   34816 kB\nVmRSS:\t   30000 kB\n";
        assert_eq!(parse_vmhwm_kib(status), Some(34816));
        assert_eq!(parse_vmhwm_kib("Name:\tx\nVmRSS:\t 1 kB\n"), None);
        assert_eq!(parse_vmhwm_kib("VmHWM:\t many kB\n"), None);
        // This process has a peak RSS, and a pid that does not exist has none.
        assert!(pid_peak_rss_kib(std::process::id() as libc::pid_t).is_some_and(|k| k > 0));
        assert_eq!(pid_peak_rss_kib(-1), None);
    }

    #[test]
    fn a_process_cpu_clock_agrees_with_rusage() {
        let pid = std::process::id() as libc::pid_t;
        // Burn a few ms so there is something to measure.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let (before, clock, after) = (process_cpu_s(), pid_cpu_s(pid), process_cpu_s());
        assert!(
            clock >= before - 0.02 && clock <= after + 0.02,
            "{before} <= {clock} <= {after}"
        );
        let (a, b) = (pid_cpu_s(pid), pid_cpu_s(pid));
        assert!(b >= a, "{a} {b}");
        assert!(pid_stat_cpu_s(pid) > 0.0);
        // No pid reaches pid_max. (A pid beyond 2^28 would not fit the clock id and could name
        // this process instead.)
        let pid_max: libc::pid_t = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(pid_cpu_s(pid_max), 0.0);
    }
}
