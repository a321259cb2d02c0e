//! The shipped systemd units: what the README's systemd notes promise of them, and
//! `systemd-analyze verify` (through `.ci/verify-units`, which `.ci/run` also calls) when
//! systemd-analyze is installed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn unit(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Values of `key=` in the unit (comments skipped), in order.
fn values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

fn one<'a>(text: &'a str, key: &str) -> &'a str {
    let v = values(text, key);
    assert_eq!(v.len(), 1, "{key}= should be set once: {v:?}");
    v[0]
}

#[test]
fn service_unit_has_what_design_asks_for() {
    let s = unit("lineship.service");
    assert_eq!(one(&s, "Type"), "notify");
    assert_eq!(one(&s, "Restart"), "on-failure");
    assert_eq!(one(&s, "StateDirectory"), "lineship");
    assert_eq!(one(&s, "ConfigurationDirectory"), "lineship");
    assert_eq!(one(&s, "User"), "lineship");
    assert_eq!(one(&s, "SupplementaryGroups"), "adm");
    assert_eq!(one(&s, "UMask"), "0077");
    assert_eq!(one(&s, "ProtectSystem"), "strict");
    assert_eq!(one(&s, "ProtectHome"), "read-only");
    for key in ["PrivateTmp", "NoNewPrivileges"] {
        assert_eq!(one(&s, key), "yes", "{key}");
    }
    assert!(one(&s, "RestrictAddressFamilies").contains("AF_INET6"));
    let start = one(&s, "ExecStart");
    let pre = one(&s, "ExecStartPre");
    assert!(
        start.starts_with("/usr/local/bin/lineship --config /etc/lineship/"),
        "{start}"
    );
    assert_eq!(
        pre,
        start.replacen("lineship --config", "lineship check --config", 1)
    );
    assert!(one(&s, "ExecReload").contains("-HUP"));

    let watchdog = humantime::parse_duration(one(&s, "WatchdogSec")).unwrap();
    assert!(
        watchdog >= Duration::from_secs(10),
        "WatchdogSec too tight: {watchdog:?}"
    );
    // The drain must fit in TimeoutStopSec with room to spool what is left.
    let stop = humantime::parse_duration(one(&s, "TimeoutStopSec")).unwrap();
    let defaults = lineship::Settings::from_toml(
        "[output]\nurl = \"http://localhost:8086\"\nbucket = \"b\"\n",
        false,
        |_| None,
    )
    .unwrap();
    assert!(
        stop >= defaults.agent.shutdown_timeout + Duration::from_secs(10),
        "TimeoutStopSec {stop:?} vs shutdown_timeout {:?}",
        defaults.agent.shutdown_timeout
    );
}

#[test]
fn socket_unit_is_a_udp_example_on_the_design_port() {
    let s = unit("lineship.socket");
    assert_eq!(one(&s, "ListenDatagram"), "127.0.0.1:8089");
    assert_eq!(one(&s, "Service"), "lineship.service");
}

#[test]
fn units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIPPED: systemd-analyze is not installed (apt-get install systemd); .ci/run verifies the units");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(Path::new(root).join(".ci/verify-units"))
        .arg(env!("CARGO_BIN_EXE_lineship"))
        .output()
        .expect("run .ci/verify-units");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
