//! A relay chain: an agent (stdin in) writes to a relay's `[[input.http]]`, which writes to
//! VictoriaMetrics. The relay is `kill -9`ed mid-stream and restarted; because it answers 204
//! only for durable lines, the agent's retries and spool cover the crash: 0 lines lost.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use common::{lineship_command, toml_path, toml_string, write_config, Daemon, VictoriaMetrics};

const LINES: u64 = 60_000;

#[test]
fn agent_to_relay_to_victoria_metrics_loses_nothing_when_the_relay_is_killed() {
    let Some(vm) = VictoriaMetrics::start_or_skip(
        "agent_to_relay_to_victoria_metrics_loses_nothing_when_the_relay_is_killed",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let relay_dir = dir.path().join("relay");
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&relay_dir).unwrap();
    std::fs::create_dir_all(&agent_dir).unwrap();
    let port = common::free_port();
    let relay_cfg = write_config(
        &relay_dir,
        &format!(
            r#"state_dir = {state}
[agent]
flush_interval = "50ms"
shutdown_timeout = "30s"
[output]
url = {url}
bucket = "b"
max_backoff = "200ms"
[[input.http]]
listen = "127.0.0.1:{port}"
"#,
            state = toml_path(&relay_dir.join("state")),
            url = toml_string(&vm.url()),
        ),
    );
    let agent_cfg = write_config(
        &agent_dir,
        &format!(
            r#"state_dir = {state}
[agent]
flush_interval = "50ms"
batch_max_lines = 1000
shutdown_timeout = "120s"
[output]
url = "http://127.0.0.1:{port}"
bucket = "chain"
initial_backoff = "20ms"
max_backoff = "200ms"
[input.stdin]
enabled = true
precision = "ms"
"#,
            state = toml_path(&agent_dir.join("state")),
        ),
    );
    let run = format!("ch{}", std::process::id());
    let base_ms: u64 = 1_700_000_000_000;
    let mut relay = Daemon::start(&relay_cfg);
    assert!(relay.wait_for_stderr("lineship started", Duration::from_secs(30)));

    let mut cmd = lineship_command();
    cmd.arg("--config").arg(&agent_cfg).arg("--stdin");
    let mut agent = Daemon::spawn_with_open_stdin(cmd);
    let mut sent = 0u64;
    let mut send = |agent: &mut Daemon, upto: u64| {
        while sent < upto {
            let mut chunk = String::new();
            for seq in sent..(sent + 2_000).min(upto) {
                writeln!(chunk, "chain,run={run} v={seq}i {}", base_ms + seq).unwrap();
            }
            agent.write_stdin(chunk.as_bytes());
            sent = (sent + 2_000).min(upto);
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    send(&mut agent, LINES / 3);
    relay.kill9();
    drop(relay.wait(Duration::from_secs(10)));
    // The agent keeps reading while the relay is gone; its batches wait (memory, then spool).
    send(&mut agent, 2 * LINES / 3);
    std::thread::sleep(Duration::from_millis(500));
    let mut relay = Daemon::start(&relay_cfg);
    assert!(relay.wait_for_stderr("lineship started", Duration::from_secs(30)));
    send(&mut agent, LINES);
    agent.close_stdin();
    let out = agent.wait(Duration::from_secs(150));
    assert_eq!(
        out.code,
        Some(0),
        "the agent delivered everything to the relay:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("writes are failing"),
        "the agent noticed the relay was gone:\n{}",
        out.stderr
    );
    relay.terminate();
    let relay_out = relay.wait(Duration::from_secs(60));
    assert_eq!(relay_out.code, Some(0), "{}", relay_out.stderr);

    let selector = format!(r#"{{__name__="chain_v",run="{run}"}}"#);
    let series = vm.wait_for_points(&selector, LINES as usize, Duration::from_secs(60));
    let got: BTreeSet<i64> = series
        .iter()
        .flat_map(|(_, _, points)| points.iter().map(|(ts, _)| *ts))
        .collect();
    let missing: Vec<u64> = (0..LINES)
        .filter(|seq| !got.contains(&((base_ms + seq) as i64)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {LINES} lines lost across the relay's kill -9 (first: {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}
