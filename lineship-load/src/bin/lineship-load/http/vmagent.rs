//! `http --vmagent`: the same bodies POSTed to vmagent's `/api/v2/write` (it accepts InfluxDB
//! line protocol), for comparison. vmagent forwards Prometheus remote write, which the counting
//! sink does not speak, so its `-remoteWrite.url` is a local single-node VictoriaMetrics on a
//! free port with a temp `-storageDataPath`. What is timed is ingestion: vmagent answers 204 once
//! it has parsed a body into its queue, not once it is delivered. Delivery is verified after the
//! timed part: VictoriaMetrics' `vm_rows_inserted_total{type="promremotewrite"}` is polled until
//! it has every field of every line (or stops growing), then every `*_seq` sample is exported and
//! run through the same seq check as the sink's.
//!
//! vmagent runs through the `exec-measured` helper like lineship, so its CPU and peak RSS come
//! from `wait4` after SIGTERM; VictoriaMetrics is killed when the run ends, however it ends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use lineship_load::seq::{SeqSet, SeqSummary};
use memchr::memmem;
use serde::Serialize;

use super::post::{post_all, Body, PostStats};
use super::HttpArgs;
use crate::daemon::make_run_dir;
use crate::measure::{pid_cpu_s, spawn_measured_command};
use crate::report::{rate, DaemonUsage, RunOutcome};
use crate::run::{load_average, CpuPressure};

/// How long to wait for vmagent and VictoriaMetrics to answer `/health`.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(20);

/// The export query for every `seq` field (vmagent names a field `<measurement>_<field>`).
const EXPORT_SEQ_PATH: &str = "/api/v1/export?match%5B%5D=%7B__name__%3D~%22.%2A_seq%22%7D";

/// The counter of rows VictoriaMetrics stored from remote write.
const ROWS_METRIC: &str = "vm_rows_inserted_total{type=\"promremotewrite\"}";

/// A child killed (and reaped) when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port of 127.0.0.1 (free when asked; the program binding it races nobody else here).
pub fn free_tcp_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free TCP port")?;
    Ok(l.local_addr()?.port())
}

/// The samples one run of lines becomes in VictoriaMetrics: one per field.
pub fn expected_rows(data: &[u8]) -> u64 {
    data.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            // measurement,tags fields [timestamp]; the generator never escapes spaces.
            let fields = l.split(|&b| b == b' ').nth(1).unwrap_or_default();
            1 + memchr::memchr_iter(b',', fields).count() as u64
        })
        .sum()
}

/// Splits a whole HTTP/1.1 response (read to EOF) into status and body, de-chunking a
/// `Transfer-Encoding: chunked` body.
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>)> {
    let end = memmem::find(raw, b"\r\n\r\n").context("no end of response head")? + 4;
    let head = std::str::from_utf8(&raw[..end]).context("response head is not UTF-8")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no response status")?;
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_ascii_lowercase())
    };
    let body = &raw[end..];
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut out = Vec::with_capacity(body.len());
        let mut rest = body;
        loop {
            let nl = memmem::find(rest, b"\r\n").context("truncated chunk size")?;
            let size_text = std::str::from_utf8(&rest[..nl]).context("chunk size")?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("bad chunk size {size_text:?}"))?;
            rest = &rest[nl + 2..];
            if size == 0 {
                return Ok((status, out));
            }
            ensure!(rest.len() >= size + 2, "truncated chunk");
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
    }
    let len = header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(body.len());
    ensure!(body.len() >= len, "truncated body");
    Ok((status, body[..len].to_vec()))
}

/// `GET path` on a fresh connection closed after the answer; status and (de-chunked) body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept-Encoding: identity\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading GET {path}"))?;
    parse_response(&raw)
}

/// Waits until `GET /health` on `addr` answers 200, or `child` exits, or the timeout passes.
fn wait_healthy(addr: SocketAddr, what: &str, mut exited: impl FnMut() -> bool) -> Result<()> {
    let t = Instant::now();
    loop {
        if matches!(http_get(addr, "/health"), Ok((200, _))) {
            return Ok(());
        }
        ensure!(!exited(), "{what} exited before it answered /health");
        ensure!(
            t.elapsed() < HEALTH_TIMEOUT,
            "{what} did not answer /health on {addr} within {HEALTH_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of the metric line starting `name ` in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Feeds the `values` of every series in a `/api/v1/export` answer (JSON lines) into `seqs`;
/// returns the samples seen.
pub fn scan_export(body: &[u8], seqs: &mut SeqSet) -> Result<u64> {
    #[derive(serde::Deserialize)]
    struct Series {
        values: Vec<f64>,
    }
    let mut n = 0;
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let s: Series = serde_json::from_slice(line).context("an export line")?;
        for v in s.values {
            n += 1;
            if v >= 0.0 && v.fract() == 0.0 {
                seqs.insert(v as u64);
            } else {
                seqs.malformed += 1;
            }
        }
    }
    Ok(n)
}

#[derive(Serialize, Clone, Debug)]
pub struct VmagentRunReport {
    pub run: u32,
    pub lines: u64,
    pub post: PostStats,
    /// From the first request to the last 204 (vmagent's 204 means parsed and queued).
    pub accept_s: f64,
    /// Lines accepted per second (0 unless every body was accepted).
    pub lines_per_sec: f64,
    #[serde(flatten)]
    pub usage: DaemonUsage,
    pub rows_expected: u64,
    /// `vm_rows_inserted_total{type="promremotewrite"}` when the wait for delivery ended.
    pub rows_inserted: u64,
    /// From the first request until VictoriaMetrics had every row (polled every 50 ms).
    pub delivered_s: Option<f64>,
    /// The seq check over every exported `*_seq` sample (None when the export failed).
    pub seq: Option<SeqSummary>,
    pub lost: Option<u64>,
    pub dup: Option<u64>,
    pub delivery_error: Option<String>,
    /// CPU seconds VictoriaMetrics used (receiving vmagent's remote write, the export), which
    /// ran on the same cores while vmagent was timed.
    pub victoria_metrics_cpu_s: f64,
    /// The part of it used while vmagent was being timed (first request to last 204).
    pub victoria_metrics_cpu_accept_s: f64,
    /// Share of the run during which some task on the machine waited for a CPU.
    pub cpu_pressure_pct: Option<f64>,
    /// /proc/loadavg (1, 5, 15 min) when the run started.
    pub load_average: String,
    pub ok: bool,
}

impl RunOutcome for VmagentRunReport {
    fn outcome(&self) -> (f64, f64, &DaemonUsage, bool) {
        (self.lines_per_sec, self.accept_s, &self.usage, self.ok)
    }
}

fn spawn_logged(program: &Path, args: &[String], log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

/// One vmagent run: VictoriaMetrics and vmagent on free ports, every body POSTed, delivery
/// checked, both stopped.
pub fn run_vmagent(
    a: &HttpArgs,
    bodies: &[Body],
    rows_expected: u64,
    run: u32,
) -> Result<VmagentRunReport> {
    for bin in [&a.vmagent_bin, &a.victoria_metrics_bin] {
        if !bin.is_file() {
            bail!(
                "{} not found (Debian package victoria-metrics; or pass --vmagent-bin / --victoria-metrics-bin)",
                bin.display()
            );
        }
    }
    let dir: PathBuf = make_run_dir(run)?;
    let result = run_in(a, bodies, rows_expected, run, &dir);
    if a.d.keep_config {
        eprintln!(
            "kept {} (vmagent and VictoriaMetrics data and logs)",
            dir.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run_in(
    a: &HttpArgs,
    bodies: &[Body],
    rows_expected: u64,
    run: u32,
    dir: &Path,
) -> Result<VmagentRunReport> {
    let lines: u64 = bodies.iter().map(|b| b.lines).sum();
    let load_average = load_average();
    let pressure = CpuPressure::start();
    let vm_addr = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
    let mut vm = KillOnDrop(spawn_logged(
        &a.victoria_metrics_bin,
        &[
            format!("-storageDataPath={}", dir.join("vm-data").display()),
            format!("-httpListenAddr={vm_addr}"),
            "-retentionPeriod=1".into(),
        ],
        &dir.join("victoria-metrics.log"),
    )?);
    wait_healthy(vm_addr, "victoria-metrics", || {
        matches!(vm.0.try_wait(), Ok(Some(_)))
    })?;

    let agent_addr = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
    let log = std::fs::File::create(dir.join("vmagent.log")).context("creating vmagent.log")?;
    let mut agent = spawn_measured_command(
        &a.vmagent_bin,
        &[
            format!("-httpListenAddr={agent_addr}").into(),
            format!("-remoteWrite.url=http://{vm_addr}/api/v1/write").into(),
            format!(
                "-remoteWrite.tmpDataPath={}",
                dir.join("vmagent-data").display()
            )
            .into(),
        ],
        Stdio::null(),
        Stdio::from(log),
    )?;

    // The timed part and the delivery wait; vmagent is stopped and reaped whatever happens.
    let vm_pid = vm.0.id() as libc::pid_t;
    let phase = (|| -> Result<(PostStats, u64, Option<f64>, f64)> {
        wait_healthy(agent_addr, "vmagent", || agent.has_exited())?;
        let deadline = Instant::now() + Duration::from_secs(a.d.timeout_secs);
        let vm_cpu_before = pid_cpu_s(vm_pid);
        let (t0, post) = post_all(
            agent_addr,
            bodies,
            a.clients,
            Duration::from_millis(a.retry_ms),
            deadline,
        )?;
        let vm_cpu_accept = pid_cpu_s(vm_pid) - vm_cpu_before;
        let idle = Duration::from_secs_f64(a.idle_secs.max(0.1));
        let (mut rows, mut last_change, mut delivered_s) = (0u64, Instant::now(), None);
        loop {
            let text = http_get(vm_addr, "/metrics")?.1;
            let now =
                metric_value(&String::from_utf8_lossy(&text), ROWS_METRIC).unwrap_or(0.0) as u64;
            if now >= rows_expected {
                delivered_s = Some(t0.elapsed().as_secs_f64());
                rows = now;
                break;
            }
            if now != rows {
                (rows, last_change) = (now, Instant::now());
            } else if last_change.elapsed() >= idle || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((post, rows, delivered_s, vm_cpu_accept))
    })();
    agent.signal(libc::SIGTERM);
    let exit = agent.wait(Duration::from_secs(60))?;
    let (post, rows_inserted, delivered_s, victoria_metrics_cpu_accept_s) = phase?;

    // Make what arrived searchable, then read back every seq.
    let seq = (|| -> Result<SeqSummary> {
        let (s, _) = http_get(vm_addr, "/internal/force_flush")?;
        ensure!(s < 300, "/internal/force_flush answered {s}");
        let (s, body) = http_get(vm_addr, EXPORT_SEQ_PATH)?;
        ensure!(s == 200, "/api/v1/export answered {s}");
        let mut seqs = SeqSet::default();
        scan_export(&body, &mut seqs)?;
        Ok(seqs.summary(Some((a.gen.start, lines))))
    })();
    let victoria_metrics_cpu_s = pid_cpu_s(vm_pid);
    let cpu_pressure_pct = pressure.pct();
    vm.0.kill().ok();
    let (seq, delivery_error) = match seq {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let usage = DaemonUsage::of(&exit, lines);
    let accepted_all = post.lines_acked == lines;
    let (lost, dup) = (seq.and_then(|s| s.lost), seq.map(|s| s.dup));
    Ok(VmagentRunReport {
        run,
        lines,
        accept_s: post.acked_s,
        lines_per_sec: if accepted_all {
            rate(lines as f64, post.acked_s)
        } else {
            0.0
        },
        ok: accepted_all && lost == Some(0) && dup == Some(0) && usage.clean_exit(),
        post,
        usage,
        rows_expected,
        rows_inserted,
        delivered_s,
        seq,
        lost,
        dup,
        delivery_error,
        victoria_metrics_cpu_s,
        victoria_metrics_cpu_accept_s,
        cpu_pressure_pct,
        load_average,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_one_row_per_field() {
        let data = b"cpu,host=a user=1,system=2,seq=0i 1\nmem,host=b used=3,seq=1i\n\nnet rx=1i,tx=2i,seq=2i 5\n";
        assert_eq!(expected_rows(data), 3 + 2 + 3);
    }

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOKextra";
        assert_eq!(parse_response(plain).unwrap(), (200, b"OK".to_vec()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;x=y\r\n, world\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (200, b"hello, world".to_vec())
        );
        let closed = b"HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n";
        assert_eq!(parse_response(closed).unwrap(), (204, Vec::new()));
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
                .is_err()
        );
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }

    #[test]
    fn reads_a_metric_value() {
        let text = "vm_rows_inserted_total{type=\"influx\"} 7\nvm_rows_inserted_total{type=\"promremotewrite\"} 248\nx 1\n";
        assert_eq!(metric_value(text, ROWS_METRIC), Some(248.0));
        assert_eq!(metric_value(text, "x"), Some(1.0));
        assert_eq!(metric_value(text, "vm_rows_inserted_total"), None);
    }

    #[test]
    fn export_values_go_through_the_seq_check() {
        let body =
            br#"{"metric":{"__name__":"mem_seq","host":"a"},"values":[0,2,2],"timestamps":[1,2,3]}
{"metric":{"__name__":"cpu_seq","host":"b"},"values":[1,3.5],"timestamps":[1,2]}
"#;
        let mut s = SeqSet::default();
        assert_eq!(scan_export(body, &mut s).unwrap(), 5);
        let sum = s.summary(Some((0, 4)));
        assert_eq!(
            (sum.unique, sum.dup, sum.lost, sum.malformed),
            (3, 1, Some(1), 1)
        );
    }
}
