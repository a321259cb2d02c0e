//! Helpers the UDP test files share (`tests/udp.rs`, `tests/udp_recv.rs`,
//! `tests/udp_victoria.rs`): bounded polling, UDP sockets on loopback, and the pipeline run
//! in-process on injected sockets ([`InProcess`]).

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lineship::telemetry::{InputStats, Stats};
use lineship::{Io, Report, Settings};

use super::toml_path;

/// Polls `done` every 5 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Binds a UDP socket, or prints a SKIPPED notice when the address family is unavailable
/// (IPv6 switched off on the host).
pub fn bind_or_skip(addr: &str, test: &str) -> Option<UdpSocket> {
    match UdpSocket::bind(addr) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("SKIPPED {test}: cannot bind {addr} ({e})");
            None
        }
    }
}

pub fn client_for(addr: SocketAddr) -> UdpSocket {
    let any = if addr.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    UdpSocket::bind(any).expect("bind a client socket")
}

/// Settings for an in-process run: `inputs` is the TOML of the inputs, delivering to `url`.
pub fn settings(state: &Path, url: &str, inputs: &str) -> Settings {
    let text = format!(
        r#"
state_dir = {state}
[agent]
flush_interval = "50ms"
shutdown_timeout = "10s"
[output]
url = "{url}"
org = "o"
bucket = "default-bucket"
token = "t"
{inputs}
"#,
        state = toml_path(state),
    );
    Settings::from_toml(&text, false, |_| None).expect("valid test config")
}

/// `lineship::run` on the test's runtime with injected UDP sockets, stopped on demand.
pub struct InProcess {
    pub stats: Arc<Stats>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<Report>>,
}

impl InProcess {
    pub fn start(settings: Settings, sockets: Vec<UdpSocket>) -> Self {
        let stats = Arc::new(Stats::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let io = Io {
            stats: Some(stats.clone()),
            udp_sockets: Some(sockets),
            ..Default::default()
        };
        let task = tokio::spawn(lineship::run(settings, io, async move {
            let _ = stopped.await;
        }));
        InProcess { stats, stop, task }
    }

    pub async fn stop(self) -> Report {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("run ended in time")
            .expect("run task")
            .expect("run succeeded")
    }

    pub fn input(&self, name_prefix: &str) -> Arc<InputStats> {
        self.stats
            .inputs
            .lock()
            .unwrap()
            .iter()
            .find(|i| i.name.starts_with(name_prefix))
            .cloned()
            .unwrap_or_else(|| panic!("no input named {name_prefix}*"))
    }
}
