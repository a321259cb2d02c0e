//! Helpers the service test files share (`tests/service.rs`, `tests/service_telemetry.rs`):
//! a config reading stdin against the fake InfluxDB, the daemon started with an open stdin
//! (and with `/metrics` and `/health` on a free port), and distinct valid lines to feed it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{lineship_command, telemetry_addr, toml_path, write_config, Daemon, FakeInflux};

/// The bound on every wait in the service tests.
pub const T: Duration = Duration::from_secs(60);

/// A config with state under `dir`, the output at `url` (plus `output_extra` in its
/// section), stdin as the input, and `extra` at the end (further sections).
pub fn config(dir: &Path, url: &str, output_extra: &str, extra: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"
state_dir = {state}
[agent]
flush_interval = "50ms"
shutdown_timeout = "20s"
max_line_bytes = "100"
[output]
url = "{url}"
org = "o"
bucket = "b"
initial_backoff = "10ms"
max_backoff = "50ms"
{output_extra}
[input.stdin]
enabled = true
{extra}
"#,
            state = toml_path(&dir.join("state")),
        ),
    )
}

pub fn daemon(cfg: &Path, env: &[(&str, &str)]) -> Daemon {
    let mut cmd = lineship_command();
    cmd.arg("--config").arg(cfg);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Daemon::spawn_with_open_stdin(cmd)
}

/// A daemon with `/metrics` and `/health` on a free port, and that endpoint's address.
pub fn daemon_with_telemetry(
    dir: &Path,
    url: &str,
    output_extra: &str,
) -> (Daemon, std::net::SocketAddr) {
    let cfg = config(
        dir,
        url,
        output_extra,
        "[telemetry]\nlisten = \"127.0.0.1:0\"\n",
    );
    let mut d = daemon(&cfg, &[]);
    let addr = telemetry_addr(&mut d);
    (d, addr)
}

/// `n` distinct valid lines starting at `from`.
pub fn lines(from: usize, n: usize) -> Vec<u8> {
    (from..from + n)
        .map(|i| {
            format!(
                "m,host=h{} v={i}i {}\n",
                i % 5,
                1_700_000_000_000_000_000u64 + i as u64
            )
        })
        .collect::<String>()
        .into_bytes()
}

/// How often each line arrived, over all `fakes` (written by [`lines`]).
pub fn arrivals(fakes: &[&FakeInflux]) -> std::collections::HashMap<String, usize> {
    let mut seen = std::collections::HashMap::new();
    for f in fakes {
        for l in f.accepted_lines() {
            *seen.entry(l).or_default() += 1;
        }
    }
    seen
}

/// `seen` holds exactly `lines(from, n)`, each once; `who` names the server in the message.
pub fn assert_lines_once(
    seen: &std::collections::HashMap<String, usize>,
    from: usize,
    n: usize,
    who: &str,
) {
    let want = String::from_utf8(lines(from, n)).unwrap();
    for l in want.lines() {
        assert_eq!(seen.get(l), Some(&1), "{who}: line {l:?}");
    }
    assert_eq!(seen.len(), n, "{who}: no line that was not sent");
}
