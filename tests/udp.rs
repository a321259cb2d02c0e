//! The UDP input: the whole pipeline in-process against the fake InfluxDB (IPv4, IPv6, several
//! inputs), and the real binary (binding with workers, SIGTERM, systemd socket activation, a
//! capped receive buffer). The receive loop on its own is in `tests/udp_recv.rs`, 200,000
//! lines into a real VictoriaMetrics in `tests/udp_victoria.rs`.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::udp::*;
use common::*;

const T: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The pipeline in-process.

/// Datagrams holding several lines each: good ones, bad ones, CRLF, a comment, a blank line,
/// a last line without `\n`, and one line without a timestamp (stamped on arrival).
const MIXED: [&str; 4] = [
    "m,host=a v=1i 1000\nm,host=a v=2i 1001\nm,host=a v=3i 1002\n",
    "m,host=b v=4i 1003\nbad-no-fields\nm,host=b v=5i 1004",
    "m,host=c v=6i 1005\r\nm v=7i notatime\r\n# comment\n\nm,host=c v=8i 1006\r\n",
    "m,host=d v=9i 1007\nm,host=e v=10i",
];
const MIXED_TIMESTAMPED: [&str; 9] = [
    "m,host=a v=1i 1000",
    "m,host=a v=2i 1001",
    "m,host=a v=3i 1002",
    "m,host=b v=4i 1003",
    "m,host=b v=5i 1004",
    "m,host=c v=6i 1005",
    "m,host=c v=8i 1006",
    "m,host=d v=9i 1007",
    "m,host=e v=10i",
];

async fn mixed_datagrams_arrive_exactly(bind: &str, test: &str) {
    let Some(sock) = bind_or_skip(bind, test) else {
        return;
    };
    let addr = sock.local_addr().unwrap();
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let p = InProcess::start(
        settings(
            dir.path(),
            &fake.url(),
            &format!("[[input.udp]]\nlisten = \"{addr}\"\n"),
        ),
        vec![sock],
    );
    let client = client_for(addr);
    for d in MIXED {
        client.send_to(d.as_bytes(), addr).unwrap();
    }
    assert!(
        fake.wait_for_lines_async(9, T).await,
        "got {:?}",
        fake.accepted_lines()
    );
    let input = p.input("udp:");
    let report = p.stop().await;

    let mut got = sorted(fake.accepted_lines());
    // The line without a timestamp got the arrival time in ns.
    let stamped = got.pop().unwrap();
    let ts: u128 = stamped
        .strip_prefix("m,host=e v=10i ")
        .unwrap_or_else(|| panic!("{stamped:?} was not stamped"))
        .parse()
        .unwrap();
    assert!(
        ts >= before.as_nanos()
            && ts
                <= SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
    );
    assert_eq!(got, MIXED_TIMESTAMPED[..8].to_vec());
    assert!(fake
        .requests()
        .iter()
        .all(|r| r.param("bucket") == Some("default-bucket")));
    assert_eq!(fake.empty_posts(), 0);

    assert_eq!(report.lines_received, 9);
    assert_eq!(report.lines_invalid, 2);
    assert_eq!(report.lines_delivered, 9);
    assert_eq!(report.lines_dropped, 0);
    assert_eq!(input.datagrams.load(Relaxed), 4);
    assert_eq!(
        input.bytes.load(Relaxed),
        MIXED.iter().map(|d| d.len() as u64).sum::<u64>()
    );
    assert_eq!(input.kernel_drops.load(Relaxed), 0);
    assert_eq!(input.truncated.load(Relaxed), 0);
    let rejected = std::fs::read_to_string(dir.path().join("rejected/rejected.lp")).unwrap();
    assert!(rejected.contains("bad-no-fields\n"), "{rejected}");
    assert!(rejected.contains("m v=7i notatime"), "{rejected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_datagrams_over_ipv4_reach_influx_exactly() {
    mixed_datagrams_arrive_exactly("127.0.0.1:0", "mixed_datagrams_over_ipv4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_datagrams_over_ipv6_reach_influx_exactly() {
    mixed_datagrams_arrive_exactly("[::1]:0", "mixed_datagrams_over_ipv6").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_udp_inputs_keep_their_bucket_and_precision() {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (addr_a, addr_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let p = InProcess::start(
        settings(
            dir.path(),
            &fake.url(),
            &format!(
                "[[input.udp]]\nlisten = \"{addr_a}\"\nbucket = \"one\"\n\n[[input.udp]]\nlisten = \"{addr_b}\"\nbucket = \"two\"\nprecision = \"ms\"\n"
            ),
        ),
        vec![b, a],
    );
    let client = client_for(addr_a);
    client.send_to(b"a v=1i 1\na v=2i 2", addr_a).unwrap();
    client
        .send_to(b"b v=1i 1\nb v=2i 2\nb v=3i 3", addr_b)
        .unwrap();
    assert!(fake.wait_for_lines_async(5, T).await);
    let report = p.stop().await;
    assert_eq!(report.lines_received, 5);
    let mut by_dest: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for r in fake.requests() {
        by_dest
            .entry((
                r.param("bucket").unwrap_or("").to_string(),
                r.param("precision").unwrap_or("").to_string(),
            ))
            .or_default()
            .extend(r.lines());
    }
    let key = |b: &str, p: &str| (b.to_string(), p.to_string());
    assert_eq!(by_dest[&key("one", "ns")], vec!["a v=1i 1", "a v=2i 2"]);
    assert_eq!(
        by_dest[&key("two", "ms")],
        vec!["b v=1i 1", "b v=2i 2", "b v=3i 3"]
    );
    assert_eq!(by_dest.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_text_wraps_each_line_of_a_datagram_as_a_point() {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let p = InProcess::start(
        settings(
            dir.path(),
            &fake.url(),
            &format!(
                "[[input.udp]]\nlisten = \"{addr}\"\nformat = \"text\"\nmeasurement = \"syslog\"\ntags = {{ via = \"udp\" }}\n"
            ),
        ),
        vec![sock],
    );
    let client = client_for(addr);
    client
        .send_to(
            b"<13>Dec  1 app: user=\"bob\" ok\nsecond \\ line\r\n\n",
            addr,
        )
        .unwrap();
    client
        .send_to(b"not line protocol, and that is fine", addr)
        .unwrap();
    assert!(fake.wait_for_lines_async(3, T).await);
    let report = p.stop().await;
    assert_eq!(report.lines_received, 3);
    let heads: Vec<String> = fake
        .accepted_lines()
        .iter()
        .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
        .collect();
    assert_eq!(
        heads,
        [
            "syslog,via=udp message=\"<13>Dec  1 app: user=\\\"bob\\\" ok\"",
            "syslog,via=udp message=\"second \\\\ line\"",
            "syslog,via=udp message=\"not line protocol, and that is fine\"",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// The real binary.

fn daemon_config(dir: &Path, url: &str, inputs: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            r#"
state_dir = {state}
[agent]
flush_interval = "50ms"
shutdown_timeout = "5s"
[output]
url = "{url}"
org = "o"
bucket = "b"
token = "t"
{inputs}
"#,
            state = toml_path(&dir.join("state")),
        ),
    )
}

/// The address in the daemon's "udp input listening" log line, once it has started (and
/// installs its signal handlers right after).
fn listening_addr(d: &mut Daemon) -> SocketAddr {
    d.log_field("lineship started", "udp input listening", "listen")
        .parse()
        .unwrap()
}

#[test]
fn daemon_with_two_workers_delivers_and_exits_cleanly_on_sigterm() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(
        dir.path(),
        &fake.url(),
        "[[input.udp]]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nreceive_buffer = \"1MiB\"\n",
    );
    let mut d = Daemon::start(&cfg);
    let addr = listening_addr(&mut d);
    assert!(d.stderr_so_far().contains("workers=2"));
    if let Ok(table) = std::fs::read_to_string("/proc/net/udp") {
        let local = format!("0100007F:{:04X}", addr.port());
        let sockets = table.lines().filter(|l| l.contains(&local)).count();
        assert_eq!(sockets, 2, "two sockets share {addr} through SO_REUSEPORT");
    }
    // Many senders (source ports), so SO_REUSEPORT spreads them over both sockets.
    let mut expected = Vec::new();
    for c in 0..16 {
        let client = client_for(addr);
        for k in 0..10 {
            let mut d = String::new();
            for j in 0..5 {
                let line = format!("w,c=c{c} v={k}i {}", 1_000 + j);
                writeln!(d, "{line}").unwrap();
                expected.push(line);
            }
            client.send_to(d.as_bytes(), addr).unwrap();
        }
    }
    // SIGTERM right away: the receive threads drain what already arrived.
    std::thread::sleep(Duration::from_millis(50));
    let asked = Instant::now();
    d.terminate();
    let out = d.wait(T);
    let took = asked.elapsed();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    assert_eq!(sorted(fake.accepted_lines()), sorted(expected));
    assert!(out.stderr.contains("udp_kernel_drops=0"), "{}", out.stderr);
    assert!(out.stderr.contains("lines_in=800"), "{}", out.stderr);
}

#[test]
fn a_port_in_use_fails_at_start_naming_the_config_key() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = daemon_config(
        dir.path(),
        &fake.url(),
        &format!("[[input.udp]]\nlisten = \"127.0.0.1:0\"\n\n[[input.udp]]\nlisten = \"{addr}\"\n"),
    );
    let out = Daemon::start(&cfg).wait(T);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("config key `input.udp[1].listen` = \"{addr}\"")),
        "the error must name the key and the address: {}",
        out.stderr
    );
    assert!(out.stderr.contains("another process"), "{}", out.stderr);
}

#[test]
fn socket_activation_uses_the_passed_socket() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    // Bound here and kept open here too: had lineship tried to bind the address itself, the
    // bind would fail (no SO_REUSEPORT) and the daemon would exit.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    // Passed in non-blocking mode (some socket managers do): lineship must not spin on it.
    sock.set_nonblocking(true).unwrap();
    let cfg = daemon_config(
        dir.path(),
        &fake.url(),
        &format!("[[input.udp]]\nlisten = \"{addr}\"\n"),
    );
    // systemd sets LISTEN_PID to the service's pid; the shell learns its pid ($$) and execs
    // lineship, which keeps it.
    let mut command = std::process::Command::new("/bin/sh");
    command
        .env_clear()
        .env("LISTEN_FDS", "1")
        .arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(lineship_bin())
        .arg("--config")
        .arg(&cfg);
    let fd = sock.as_raw_fd();
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(move || {
            if fd == 3 {
                // dup2 onto itself would keep FD_CLOEXEC; clear it instead.
                libc::fcntl(3, libc::F_SETFD, 0);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut d = Daemon::spawn(command);
    let listening = listening_addr(&mut d);
    assert_eq!(listening, addr);
    assert!(
        d.stderr_so_far().contains("passed_by_systemd=1"),
        "{}",
        d.stderr_so_far()
    );
    let client = client_for(addr);
    client
        .send_to(b"act v=1i 1\nact v=2i 2\nact v=3i 3\n", addr)
        .unwrap();
    assert!(fake.wait_for_lines(3, T), "{}", d.stderr_so_far());
    // Idle for a second: a receive loop spinning on EAGAIN would burn the whole second.
    let cpu_ticks = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after_comm.split_whitespace().collect();
        // utime and stime: fields 14 and 15 of stat(5), 12 and 13 after the command name.
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let before = cpu_ticks(d.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(d.pid()) - before;
    assert!(used < 30, "{used} ticks of CPU in an idle second");
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        fake.accepted_lines(),
        vec!["act v=1i 1", "act v=2i 2", "act v=3i 3"]
    );
}

#[test]
fn a_capped_receive_buffer_is_reported_naming_rmem_max() {
    // Without CAP_NET_ADMIN, SO_RCVBUFFORCE is refused and SO_RCVBUF is capped at
    // net.core.rmem_max, which is far below 1GiB on any ordinary host.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("SKIPPED a_capped_receive_buffer_is_reported_naming_rmem_max: needs root and /usr/bin/setpriv to drop CAP_NET_ADMIN");
        return;
    }
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(
        dir.path(),
        &fake.url(),
        "[[input.udp]]\nlisten = \"127.0.0.1:0\"\nreceive_buffer = \"1GiB\"\n",
    );
    let mut command = std::process::Command::new("/usr/bin/setpriv");
    command
        .env_clear()
        .args(["--inh-caps=-net_admin", "--bounding-set=-net_admin"])
        .arg(lineship_bin())
        .arg("--config")
        .arg(&cfg);
    let mut d = Daemon::spawn(command);
    listening_addr(&mut d);
    let log = d.stderr_so_far();
    let line = log
        .lines()
        .find(|l| l.contains("udp input listening"))
        .unwrap();
    let applied: u64 = line
        .split("receive_buffer_applied=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no applied size in {line}"));
    assert!(applied > 0 && applied < 2 << 30, "{line}");
    assert!(
        log.contains("WARN") && log.contains("net.core.rmem_max"),
        "no capped warning:\n{log}"
    );
    d.terminate();
    assert_eq!(d.wait(T).code, Some(0));
}
