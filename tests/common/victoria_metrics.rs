//! `VictoriaMetrics`: a real server from the Debian package, for end-to-end checks. It owns
//! the child process, its temporary data directory and log, and the port (kept across
//! `stop`/`restart` so a daemon under test can reconnect). The process is killed on Drop.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::future::Future;
use std::io::Write;
use std::net::TcpListener as StdTcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::lineship::{signal, wait_timeout};
use super::{gzip, percent_encode, WRITE_PATH};

/// Where Debian's `victoria-metrics` package puts the server. `LINESHIP_VM_BIN` overrides it.
pub const VICTORIA_METRICS_BIN: &str = "/usr/bin/victoria-metrics";

/// One series from `/api/v1/export`: metric name (`measurement_field`), labels without
/// `__name__`, and `(timestamp in ms, value)` points sorted by time.
pub type ExportedSeries = (String, Labels, Vec<(i64, f64)>);

/// Label name to value, without `__name__`.
pub type Labels = BTreeMap<String, String>;

/// Total points over exported series.
pub fn point_count(series: &[ExportedSeries]) -> usize {
    series.iter().map(|(_, _, points)| points.len()).sum()
}

/// A real VictoriaMetrics server on `127.0.0.1:<free port>` with its own temporary data
/// directory. What it does with InfluxDB line protocol (observed with 1.79.5 from Debian):
/// - `m,tag=v f1=1,f2=2i TS` becomes series `m_f1{tag="v"}` and `m_f2{tag="v"}`; integer and
///   unsigned fields become floats, booleans 1/0, and a string field is stored as 0;
/// - `org` and `bucket` are ignored: no label is added for them (only a `db` query parameter
///   would add a `db` label);
/// - timestamps are stored in milliseconds: `precision=ns`/`us` values are truncated to ms,
///   and two points of one series within the same ms are both kept, at the same timestamp;
/// - there is no deduplication (no `-dedup.minScrapeInterval`): a point written twice is
///   exported twice, so replay tests should compare sets of (series, timestamp);
/// - an unparsable line is skipped and the write still answers 204: VictoriaMetrics cannot
///   stand in for InfluxDB's 400 on a bad line (use [`super::FakeInflux`] for that);
/// - rows become visible to export only after an internal flush (1 to 10 s), so the export
///   helpers call `/internal/force_flush` first, after which rows are visible at once;
/// - on SIGKILL it loses every row it acknowledged in roughly the last 6 to 12 s, even after a
///   force_flush (which makes rows searchable, not durable). Outage tests must use
///   [`VictoriaMetrics::stop`], which shuts down gracefully and keeps everything.
pub struct VictoriaMetrics {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    client: reqwest::Client,
}

enum StartFailure {
    Exited(ExitStatus),
    NotHealthy,
}

impl VictoriaMetrics {
    pub fn binary() -> PathBuf {
        std::env::var_os("LINESHIP_VM_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(VICTORIA_METRICS_BIN))
    }

    pub fn is_installed() -> bool {
        Self::binary().is_file()
    }

    /// Starts the server, or returns `None` after printing a notice when it is not installed.
    /// With `LINESHIP_REQUIRE_REAL_SERVER=1` (set by `.ci/run`) a missing server panics instead.
    pub fn start_or_skip(test_name: &str) -> Option<Self> {
        if Self::is_installed() {
            return Some(Self::start());
        }
        if std::env::var("LINESHIP_REQUIRE_REAL_SERVER").as_deref() == Ok("1") {
            panic!(
                "{test_name}: victoria-metrics not found at {} and LINESHIP_REQUIRE_REAL_SERVER=1 \
                 turns a skip into a failure (apt-get install victoria-metrics)",
                Self::binary().display()
            );
        }
        // Straight to the process's stderr: the test harness captures eprintln! output of
        // passing tests, and a skip must be visible.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test_name}: victoria-metrics not installed (apt-get install victoria-metrics)"
        );
        None
    }

    /// Starts the server on a free port, retrying with a new port if another process took the
    /// one picked between its release and the server's bind. Panics if it cannot start.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lineship-vm-")
            .tempdir()
            .expect("tempdir for victoria-metrics");
        let client = reqwest::Client::builder()
            .no_proxy()
            // Each call runs on its own short-lived runtime: never reuse a pooled connection.
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("reqwest client");
        let mut vm = VictoriaMetrics {
            bin: Self::binary(),
            dir,
            port: 0,
            child: None,
            client,
        };
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            vm.port = free_port();
            match vm.launch() {
                Ok(()) => return vm,
                Err(StartFailure::Exited(status)) if attempt < ATTEMPTS => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "victoria-metrics exited at startup ({status}) on port {}; retrying on \
                         another port",
                        vm.port
                    );
                }
                Err(StartFailure::Exited(status)) => panic!(
                    "victoria-metrics exited at startup ({status}) {ATTEMPTS} times; log:\n{}",
                    vm.log_tail(40)
                ),
                Err(StartFailure::NotHealthy) => panic!(
                    "victoria-metrics on port {} did not answer /health in time; log:\n{}",
                    vm.port,
                    vm.log_tail(40)
                ),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The command line. Deliberately absent: `-dedup.minScrapeInterval` (it would merge
    /// points), so every write stays countable.
    fn args(&self) -> Vec<String> {
        vec![
            format!("-storageDataPath={}", self.data_dir().display()),
            format!("-httpListenAddr=127.0.0.1:{}", self.port),
            // Tests use fixed timestamps from years ago; the default retention is one month.
            "-retentionPeriod=100y".into(),
            // Query results are not delayed 30 s or served from a stale response cache.
            "-search.latencyOffset=0s".into(),
            "-search.disableCache".into(),
            // stop() does not wait 7 s for the daemon's idle keep-alive connections.
            "-http.maxGracefulShutdownDuration=1s".into(),
            // Several servers may run in parallel tests; keep their caches small.
            "-memory.allowedBytes=256MiB".into(),
        ]
    }

    /// Spawns the process on `self.port` and waits for `/health`.
    fn launch(&mut self) -> Result<(), StartFailure> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("victoria-metrics log file");
        let log_err = log.try_clone().expect("victoria-metrics log file");
        let child = Command::new(&self.bin)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let child = self.child.as_mut().expect("just spawned");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(StartFailure::Exited(status));
            }
            if let Ok((200, _)) = self.get("/health", Duration::from_secs(2)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(StartFailure::NotHealthy);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("victoria-metrics.log")
    }

    /// The last `n` lines of the server's own log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Makes every row received so far visible to export (`/internal/force_flush`).
    pub fn force_flush(&self) {
        match self.get("/internal/force_flush", Duration::from_secs(30)) {
            Ok((200, _)) => {}
            other => panic!("victoria-metrics force_flush failed: {other:?}"),
        }
    }

    /// Graceful stop: flush, SIGTERM, wait (SIGKILL after 15 s). Data written before is kept.
    pub fn stop(&mut self) {
        if !self.is_running() {
            self.child = None;
            return;
        }
        let _ = self.get("/internal/force_flush", Duration::from_secs(10));
        let mut child = self.child.take().expect("running");
        signal(&child, libc::SIGTERM);
        if wait_timeout(&mut child, Duration::from_secs(15)).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL, like a crash. VictoriaMetrics then loses the rows it acknowledged in roughly the
    /// last 6 to 12 s, so outage tests that count lines must use [`VictoriaMetrics::stop`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs and starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(StartFailure::Exited(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(_) => panic!(
                    "victoria-metrics could not restart on port {}; log:\n{}",
                    self.port,
                    self.log_tail(40)
                ),
            }
        }
    }

    /// Posts gzipped line protocol to `/api/v2/write` the way lineship does; returns the
    /// status and response body. `precision` is `ns`, `us`, `ms` or `s`.
    pub fn write_lines(&self, lines: &[u8], precision: &str) -> (u16, String) {
        let url = format!(
            "{}{WRITE_PATH}?org=lineship&bucket=lineship&precision={}",
            self.url(),
            percent_encode(precision)
        );
        let request = self
            .client
            .post(url)
            .header("Content-Encoding", "gzip")
            .header("Content-Type", "text/plain; charset=utf-8")
            .header("Authorization", "Token x")
            .body(gzip(lines));
        on_helper_thread(async move {
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body = response.text().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body))
        })
        .unwrap_or_else(|e| panic!("write to victoria-metrics failed: {e}"))
    }

    /// Every series matching the selector (e.g. `{__name__=~"cpu_.*",host="a"}`), over all time
    /// from 1970 to ten days ahead. Panics if the request fails.
    pub fn export(&self, match_selector: &str) -> Vec<ExportedSeries> {
        self.try_export(match_selector)
            .unwrap_or_else(|e| panic!("victoria-metrics export failed: {e}"))
    }

    pub fn try_export(&self, match_selector: &str) -> Result<Vec<ExportedSeries>, String> {
        let end = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
            + 10 * 86_400;
        let path = format!(
            "/api/v1/export?match[]={}&start=0&end={end}",
            percent_encode(match_selector)
        );
        match self.get(&path, Duration::from_secs(60))? {
            (200, body) => parse_export(&body),
            (status, body) => Err(format!("status {status}: {body}")),
        }
    }

    /// Points matching the selector right now (after a flush).
    pub fn count_points(&self, match_selector: &str) -> usize {
        self.force_flush();
        point_count(&self.export(match_selector))
    }

    /// Flushes and exports until at least `n` points match or `timeout` passes; returns the
    /// last export either way, so the caller asserts on the exact contents.
    pub fn wait_for_points(
        &self,
        match_selector: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<ExportedSeries> {
        let deadline = Instant::now() + timeout;
        let mut last = Vec::new();
        loop {
            let _ = self.get("/internal/force_flush", Duration::from_secs(30));
            if let Ok(series) = self.try_export(match_selector) {
                last = series;
            }
            if point_count(&last) >= n || Instant::now() >= deadline {
                return last;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Imports Prometheus exposition text (a `/metrics` scrape) at the current time, with
    /// `instance=<instance>` added to every sample, as a scraper would.
    pub fn import_prometheus(&self, text: &str, instance: &str) {
        let url = format!(
            "{}/api/v1/import/prometheus?extra_label=instance={}",
            self.url(),
            percent_encode(instance)
        );
        let request = self.client.post(url).body(text.to_owned());
        let status = on_helper_thread(async move {
            let response = request.send().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(response.status().as_u16())
        })
        .unwrap_or_else(|e| panic!("import into victoria-metrics failed: {e}"));
        assert_eq!(status, 204, "import into victoria-metrics");
    }

    /// An instant PromQL query now: (HTTP status, JSON body).
    pub fn query(&self, promql: &str) -> (u16, String) {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        self.get(&path, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("query to victoria-metrics failed: {e}"))
    }

    fn get(&self, path_and_query: &str, timeout: Duration) -> Result<(u16, String), String> {
        let request = self
            .client
            .get(format!("{}{path_and_query}", self.url()))
            .timeout(timeout);
        on_helper_thread(async move {
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body = response.text().await.map_err(|e| e.to_string())?;
            Ok((status, body))
        })
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- victoria-metrics log (last 40 lines) ---\n{}",
                self.log_tail(40)
            );
        }
    }
}

/// Parses `/api/v1/export` JSON lines, merging lines that belong to the same series.
fn parse_export(body: &str) -> Result<Vec<ExportedSeries>, String> {
    let mut merged: BTreeMap<(String, Labels), Vec<(i64, f64)>> = BTreeMap::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let row: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("bad export line {line:?}: {e}"))?;
        let mut labels = BTreeMap::new();
        let mut name = String::new();
        for (key, value) in row["metric"]
            .as_object()
            .ok_or("export line without metric")?
        {
            let value = value.as_str().unwrap_or_default().to_string();
            if key == "__name__" {
                name = value;
            } else {
                labels.insert(key.clone(), value);
            }
        }
        let values = row["values"]
            .as_array()
            .ok_or("export line without values")?;
        let timestamps = row["timestamps"]
            .as_array()
            .ok_or("export line without timestamps")?;
        if values.len() != timestamps.len() {
            return Err(format!("values and timestamps differ in length: {line}"));
        }
        let points = merged.entry((name, labels)).or_default();
        for (value, ts) in values.iter().zip(timestamps) {
            let ts = ts.as_i64().ok_or("non-integer timestamp")?;
            let value = match value {
                serde_json::Value::Number(n) => n.as_f64().ok_or("bad number")?,
                // Non-finite values are exported as strings.
                serde_json::Value::String(s) => match s.as_str() {
                    "NaN" => f64::NAN,
                    "Inf" | "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    other => other.parse().map_err(|_| format!("bad value {other:?}"))?,
                },
                other => return Err(format!("bad value {other}")),
            };
            points.push((ts, value));
        }
    }
    Ok(merged
        .into_iter()
        .map(|((name, labels), mut points)| {
            points.sort_by_key(|&(ts, _)| ts);
            (name, labels, points)
        })
        .collect())
}

/// A port that was free a moment ago. Only for servers that cannot take port 0 themselves;
/// callers must retry when they lose the race for it.
pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Runs a future to completion on a fresh thread with its own runtime, so sync helpers work
/// from plain tests and from inside async tests alike.
fn on_helper_thread<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("helper runtime")
                    .block_on(future)
            })
            .join()
            .expect("helper thread panicked")
    })
}
