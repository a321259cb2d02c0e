//! A local single-node VictoriaMetrics as the receiving end of a comparison with vmagent
//! (`http --vmagent`, `compare`): started on a free port with its own `-storageDataPath`
//! ([`VictoriaMetrics::start`], killed and reaped when dropped), its row counter polled until a
//! run's rows are in ([`VictoriaMetrics::wait_rows`]), and every `*_seq` sample exported and run
//! through the same seq check as the sink's ([`VictoriaMetrics::seq_summary`]); vmagent started
//! in front of it ([`start_vmagent`]); and the small HTTP/1.1 GET client all that needs
//! ([`http_get`]).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use lineship_load::seq::{SeqSet, SeqSummary};
use memchr::memmem;

use crate::measure::{die_with_parent, pid_cpu_s, spawn_measured_command, Measured};

/// How long to wait for vmagent and VictoriaMetrics to answer `/health`.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(20);

/// The export query for every `seq` field (VictoriaMetrics and vmagent name an InfluxDB field
/// `<measurement>_<field>`).
pub const EXPORT_SEQ_PATH: &str = "/api/v1/export?match%5B%5D=%7B__name__%3D~%22.%2A_seq%22%7D";

/// How often [`VictoriaMetrics::wait_rows`] reads `/metrics`.
pub const ROWS_POLL: Duration = Duration::from_millis(50);

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

/// Where vmagent and VictoriaMetrics are, for the modes that compare with vmagent.
#[derive(Args)]
pub struct VictoriaOpts {
    /// The vmagent binary (Debian package victoria-metrics).
    #[arg(long, default_value = "/usr/bin/vmagent")]
    pub vmagent_bin: PathBuf,
    /// The VictoriaMetrics binary (Debian package victoria-metrics).
    #[arg(long, default_value = "/usr/bin/victoria-metrics")]
    pub victoria_metrics_bin: PathBuf,
}

impl VictoriaOpts {
    /// Fails unless VictoriaMetrics is installed, saying how to install it.
    pub fn check_victoria_metrics(&self) -> Result<()> {
        check_installed(&self.victoria_metrics_bin, "--victoria-metrics-bin")
    }

    /// Fails unless vmagent is installed, saying how to install it.
    pub fn check_vmagent(&self) -> Result<()> {
        check_installed(&self.vmagent_bin, "--vmagent-bin")
    }
}

/// Fails unless `bin` exists, naming the Debian package and the flag that overrides the path.
pub fn check_installed(bin: &Path, flag: &str) -> Result<()> {
    if !bin.is_file() {
        bail!(
            "{} not found (install the Debian package victoria-metrics, or pass {flag} PATH)",
            bin.display()
        );
    }
    Ok(())
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

/// Waits until `GET /health` on `addr` answers 200, or `exited` says the program has exited, or
/// [`HEALTH_TIMEOUT`] passes.
pub fn wait_healthy(addr: SocketAddr, what: &str, mut exited: impl FnMut() -> bool) -> Result<()> {
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

/// Starts `program args...` with stdin from /dev/null and stdout and stderr to the file `log`;
/// it is killed if this process dies.
pub fn spawn_logged(program: &Path, args: &[String], log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    die_with_parent(&mut Command::new(program))
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

/// Starts vmagent (`bin`) through the `exec-measured` helper, so its CPU and peak RSS come from
/// `wait4`, with its HTTP API on a free port of 127.0.0.1, its remote write going to
/// VictoriaMetrics at `vm`, its buffer in `dir/vmagent-data`, its log in `dir/vmagent.log`, and
/// the flags `extra`. Returns it and its HTTP address (for `/health` and `/api/v2/write`).
pub fn start_vmagent(
    bin: &Path,
    dir: &Path,
    vm: SocketAddr,
    extra: &[String],
) -> Result<(Measured, SocketAddr)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
    let log = std::fs::File::create(dir.join("vmagent.log")).context("creating vmagent.log")?;
    let mut args: Vec<OsString> = vec![
        format!("-httpListenAddr={addr}").into(),
        format!("-remoteWrite.url=http://{vm}/api/v1/write").into(),
        format!(
            "-remoteWrite.tmpDataPath={}",
            dir.join("vmagent-data").display()
        )
        .into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    let agent = spawn_measured_command(bin, &args, Stdio::null(), Stdio::from(log))?;
    Ok((agent, addr))
}

/// Where [`VictoriaMetrics::wait_rows`] stopped waiting.
pub struct RowsWait {
    /// The row counter when the wait ended.
    pub rows: u64,
    /// When the counter reached the expected rows (None: it stopped short).
    pub complete_at: Option<Instant>,
    /// When the counter last changed (the start of the wait if it never did).
    pub last_change: Instant,
}

/// A single-node VictoriaMetrics on a free port of 127.0.0.1, killed and reaped when dropped.
pub struct VictoriaMetrics {
    pub proc: KillOnDrop,
    pub addr: SocketAddr,
}

impl VictoriaMetrics {
    /// Starts `bin` with its data in `dir/vm-data` and its log in `dir/victoria-metrics.log`,
    /// and waits until it answers `/health`. `-retentionPeriod=1` (a month) keeps the
    /// generator's timestamps, which are based on now.
    pub fn start(bin: &Path, dir: &Path) -> Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
        let mut proc = KillOnDrop(spawn_logged(
            bin,
            &[
                format!("-storageDataPath={}", dir.join("vm-data").display()),
                format!("-httpListenAddr={addr}"),
                "-retentionPeriod=1".into(),
            ],
            &dir.join("victoria-metrics.log"),
        )?);
        wait_healthy(addr, "victoria-metrics", || {
            matches!(proc.0.try_wait(), Ok(Some(_)))
        })?;
        Ok(VictoriaMetrics { proc, addr })
    }

    pub fn pid(&self) -> libc::pid_t {
        self.proc.0.id() as libc::pid_t
    }

    /// CPU seconds VictoriaMetrics has used so far.
    pub fn cpu_s(&self) -> f64 {
        pid_cpu_s(self.pid())
    }

    /// `vm_rows_inserted_total{type="<kind>"}`: rows stored from one protocol (`influx` for
    /// InfluxDB line protocol, `promremotewrite` for what vmagent forwards).
    pub fn rows_inserted(&self, kind: &str) -> Result<u64> {
        let (status, text) = http_get(self.addr, "/metrics")?;
        ensure!(status == 200, "victoria-metrics /metrics answered {status}");
        let name = format!("vm_rows_inserted_total{{type=\"{kind}\"}}");
        Ok(metric_value(&String::from_utf8_lossy(&text), &name).unwrap_or(0.0) as u64)
    }

    /// Polls [`Self::rows_inserted`] every [`ROWS_POLL`] until it reaches `expected`, has not
    /// changed for `idle`, or `deadline` passes; `on_change` is called each time it changed.
    pub fn wait_rows(
        &self,
        kind: &str,
        expected: u64,
        idle: Duration,
        deadline: Instant,
        mut on_change: impl FnMut(u64),
    ) -> Result<RowsWait> {
        let mut w = RowsWait {
            rows: 0,
            complete_at: None,
            last_change: Instant::now(),
        };
        loop {
            let now = self.rows_inserted(kind)?;
            if now != w.rows {
                (w.rows, w.last_change) = (now, Instant::now());
                on_change(now);
            }
            if now >= expected {
                w.complete_at = Some(Instant::now());
                return Ok(w);
            }
            if w.last_change.elapsed() >= idle || Instant::now() >= deadline {
                return Ok(w);
            }
            std::thread::sleep(ROWS_POLL);
        }
    }

    /// Makes what arrived searchable, exports every `*_seq` sample and checks the seqs against
    /// `lines` lines from `start`.
    ///
    /// `/internal/force_flush` is no barrier: an export right after it can miss samples stored
    /// moments before (seen: 11% of a run at 300k lines/s, all there a second later). So while
    /// lines are missing, it flushes and exports again a second later, until two exports agree
    /// (at most [`EXPORT_ATTEMPTS`]).
    pub fn seq_summary(&self, start: u64, lines: u64) -> Result<SeqSummary> {
        let mut first: Option<SeqSummary> = None;
        let mut last: Option<SeqSummary> = None;
        for attempt in 1..=EXPORT_ATTEMPTS {
            let (s, _) = http_get(self.addr, "/internal/force_flush")?;
            ensure!(s < 300, "/internal/force_flush answered {s}");
            let (s, body) = http_get(self.addr, EXPORT_SEQ_PATH)?;
            ensure!(s == 200, "/api/v1/export answered {s}");
            let mut seqs = SeqSet::default();
            scan_export(&body, &mut seqs)?;
            let sum = seqs.summary(Some((start, lines)));
            let settled = sum.lost == Some(0) || last.is_some_and(|l| same_seqs(&l, &sum));
            first.get_or_insert(sum);
            if settled || attempt == EXPORT_ATTEMPTS {
                if let Some(f) = first.filter(|f| !same_seqs(f, &sum)) {
                    eprintln!(
                        "note: VictoriaMetrics' export {attempt} had {} distinct seqs, its first {} (an export right after a flush can miss recent samples)",
                        sum.unique, f.unique
                    );
                }
                return Ok(sum);
            }
            last = Some(sum);
            std::thread::sleep(Duration::from_secs(1));
        }
        unreachable!("the last attempt returns")
    }
}

/// How often [`VictoriaMetrics::seq_summary`] exports at most.
pub const EXPORT_ATTEMPTS: u32 = 10;

/// The same seqs counted (distinct, duplicated, unusable).
fn same_seqs(a: &SeqSummary, b: &SeqSummary) -> bool {
    (a.unique, a.dup, a.out_of_range, a.malformed) == (b.unique, b.dup, b.out_of_range, b.malformed)
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
        assert_eq!(
            metric_value(text, "vm_rows_inserted_total{type=\"promremotewrite\"}"),
            Some(248.0)
        );
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
