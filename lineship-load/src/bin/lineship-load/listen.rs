//! What the modes driving a listening input (`http`, `tcp`) share: the input section with
//! `listen = "127.0.0.1:0"`, waiting until the daemon has logged the address it bound and that
//! it started ([`wait_listening`]), and cutting the pre-generated lines into pieces that end at
//! line ends ([`chunks_of_lines`], [`shares`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};

use crate::daemon_log::Logged;

/// How long a run waits for the daemon to log its listening address.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Once the address is logged, how long to wait for "lineship started" before sending anyway.
pub const STARTED_GRACE: Duration = Duration::from_millis(500);

/// `[[input.KIND]]` on a free port of 127.0.0.1 with `extra` keys (one `key = value` a line),
/// stdin off.
pub fn input_section(kind: &str, extra: &[String]) -> String {
    let mut s = format!("[[input.{kind}]]\nlisten = \"127.0.0.1:0\"\n");
    for kv in extra {
        s.push_str(kv);
        s.push('\n');
    }
    s.push_str("\n[input.stdin]\nenabled = false");
    s
}

/// Waits until the daemon has logged `<kind> input listening ... listen=ADDR` (and "lineship
/// started", or [`STARTED_GRACE`] has passed since), and returns ADDR.
pub fn wait_listening(logged: &mut Logged) -> Result<SocketAddr> {
    let t = Instant::now();
    let mut seen: Option<(SocketAddr, Instant)> = None;
    loop {
        ensure!(
            !logged.daemon.has_exited(),
            "lineship exited before it was listening"
        );
        let (addr, started) = {
            let log = logged.log.lock().unwrap();
            (log.listen_addr(), log.started)
        };
        if seen.is_none() {
            seen = addr.map(|a| (a, Instant::now()));
        }
        if let Some((addr, at)) = seen {
            if started || at.elapsed() >= STARTED_GRACE {
                return Ok(addr);
            }
        }
        if t.elapsed() >= LISTEN_TIMEOUT {
            bail!("no \"input listening ... listen=ADDR\" log line within {LISTEN_TIMEOUT:?} (is --log-level below info?)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `data` cut after every `n` lines (the last piece may hold fewer), each piece with its line
/// count.
pub fn chunks_of_lines(data: &[u8], n: u64) -> Vec<(&[u8], u64)> {
    assert!(n > 0);
    let mut out = Vec::new();
    let (mut start, mut count) = (0, 0);
    for nl in memchr::memchr_iter(b'\n', data) {
        count += 1;
        if count == n {
            out.push((&data[start..=nl], count));
            (start, count) = (nl + 1, 0);
        }
    }
    if start < data.len() {
        // A last line without a newline still counts.
        let rest = &data[start..];
        out.push((rest, count + u64::from(rest.last() != Some(&b'\n'))));
    }
    out
}

/// `data` (holding `lines` lines) cut into `parts` pieces of about equal line counts, each
/// ending at a line end; fewer pieces when there are fewer lines than parts.
pub fn shares(data: &[u8], lines: u64, parts: usize) -> Vec<(&[u8], u64)> {
    assert!(parts > 0);
    let per = lines.div_ceil(parts as u64).max(1);
    chunks_of_lines(data, per)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::example_config;

    #[test]
    fn input_sections_are_valid_toml() {
        let c = example_config(
            "info",
            &input_section("http", &["ack = \"durable\"".into()]),
            "/tmp/s",
        );
        let v: toml::Value = toml::from_str(&c).unwrap();
        let http = &v["input"]["http"][0];
        assert_eq!(http["listen"].as_str(), Some("127.0.0.1:0"));
        assert_eq!(http["ack"].as_str(), Some("durable"));
        assert_eq!(v["input"]["stdin"]["enabled"].as_bool(), Some(false));
        let c = example_config("info", &input_section("tcp", &[]), "/tmp/s");
        let v: toml::Value = toml::from_str(&c).unwrap();
        assert_eq!(v["input"]["tcp"][0]["listen"].as_str(), Some("127.0.0.1:0"));
    }

    #[test]
    fn chunks_hold_n_lines_each() {
        let data = b"a\nbb\nc\ndd\ne\n";
        let c = chunks_of_lines(data, 2);
        assert_eq!(
            c,
            vec![(&b"a\nbb\n"[..], 2), (&b"c\ndd\n"[..], 2), (&b"e\n"[..], 1)]
        );
        assert_eq!(chunks_of_lines(data, 5), vec![(&data[..], 5)]);
        assert_eq!(chunks_of_lines(data, 100), vec![(&data[..], 5)]);
        assert_eq!(
            chunks_of_lines(b"a\nb", 1),
            vec![(&b"a\n"[..], 1), (&b"b"[..], 1)]
        );
        assert!(chunks_of_lines(b"", 3).is_empty());
    }

    #[test]
    fn shares_split_lines_evenly() {
        let data: Vec<u8> = (0..10)
            .flat_map(|i| format!("l{i}\n").into_bytes())
            .collect();
        let s = shares(&data, 10, 4);
        assert_eq!(s.iter().map(|p| p.1).collect::<Vec<_>>(), vec![3, 3, 3, 1]);
        assert_eq!(
            s.iter().flat_map(|p| p.0.to_vec()).collect::<Vec<_>>(),
            data
        );
        assert_eq!(shares(&data, 10, 20).len(), 10);
        assert_eq!(shares(&data, 10, 1), vec![(&data[..], 10)]);
    }
}
