//! Config values that used to pass `lineship check` and fail later: a duration, size or count
//! beyond its documented range, or a token no HTTP header can carry. Each is a config error
//! (exit 2) naming the key and its range, never showing the token; every value at its maximum
//! runs and shuts down; a deadline past what an `Instant` can hold does not panic; and a bad
//! token on SIGHUP keeps the token in use.

mod common;

use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use common::{lineship_command, run_with_timeout, toml_path, write_config, Daemon, FakeInflux};
use common::{toml_string, Reply, RunOutput};

const T: Duration = Duration::from_secs(60);
/// Parses (it is below u64::MAX seconds) but overflows `Instant::now() + d`.
const HUGE: &str = "\"5124095576030431h\"";
const HUGE_SIZE: &str = "\"16EiB\"";
/// The largest integer TOML can write.
const I64_MAX: &str = "9223372036854775807";
const U32_MAX: &str = "4294967295";
/// Halves of every bad token in these tests; neither may appear in any output.
const SECRET: [&str; 2] = ["TOPSECRET", "TOKENTAIL"];

/// A config whose tables get `agent`, `output` (which includes the token line), `spool` and
/// `inputs` spliced in.
fn config_text(
    dir: &Path,
    url: &str,
    agent: &str,
    output: &str,
    spool: &str,
    inputs: &str,
) -> String {
    // Fast defaults for keys the snippets leave alone.
    let agent = with_defaults(
        agent,
        &[
            ("flush_interval", "\"50ms\""),
            ("shutdown_timeout", "\"5s\""),
        ],
    );
    let output = with_defaults(
        output,
        &[("initial_backoff", "\"10ms\""), ("max_backoff", "\"50ms\"")],
    );
    format!(
        r#"
state_dir = {state}
[agent]
{agent}
[output]
url = "{url}"
org = "o"
bucket = "b"
{output}
[spool]
{spool}
{inputs}
"#,
        state = toml_path(&dir.join("state")),
    )
}

fn with_defaults(table: &str, defaults: &[(&str, &str)]) -> String {
    let mut out = table.to_owned();
    for (key, value) in defaults {
        if !table.lines().any(|l| l.starts_with(&format!("{key} ="))) {
            out.push_str(&format!("\n{key} = {value}"));
        }
    }
    out
}

fn check(cfg: &Path, env: Option<&str>) -> RunOutput {
    let mut c = lineship_command();
    c.arg("check").arg("--config").arg(cfg);
    if let Some(t) = env {
        c.env("LINESHIP_TOKEN", t);
    }
    run_with_timeout(c, b"", T)
}

#[derive(Clone, Copy)]
enum Table {
    Agent,
    Output,
    Spool,
    Udp,
    Tail,
}

#[test]
fn check_refuses_values_out_of_range_naming_the_key_and_the_range() {
    use Table::*;
    let zero = "\"0s\"";
    let cases: &[(Table, &str, &str, &str)] = &[
        // Durations: at most an hour or a day; zero where it means nothing.
        (
            Agent,
            "flush_interval",
            HUGE,
            "greater than 0 and at most 1h",
        ),
        (
            Agent,
            "flush_interval",
            zero,
            "greater than 0 and at most 1h",
        ),
        (Agent, "shutdown_timeout", HUGE, "between 0s and 1day"),
        (Agent, "shutdown_timeout", "\"25h\"", "between 0s and 1day"),
        (
            Agent,
            "summary_interval",
            HUGE,
            "greater than 0 and at most 1day",
        ),
        (
            Agent,
            "summary_interval",
            zero,
            "greater than 0 and at most 1day",
        ),
        (Output, "timeout", HUGE, "greater than 0 and at most 1h"),
        (Output, "timeout", zero, "greater than 0 and at most 1h"),
        (
            Output,
            "initial_backoff",
            HUGE,
            "greater than 0 and at most 1h",
        ),
        (
            Output,
            "initial_backoff",
            zero,
            "greater than 0 and at most 1h",
        ),
        (Output, "max_backoff", HUGE, "greater than 0 and at most 1h"),
        (
            Output,
            "max_retry_after",
            HUGE,
            "greater than 0 and at most 1day",
        ),
        (
            Output,
            "max_retry_after",
            zero,
            "greater than 0 and at most 1day",
        ),
        (
            Spool,
            "fsync_interval",
            HUGE,
            "greater than 0 and at most 1h",
        ),
        (
            Spool,
            "fsync_interval",
            zero,
            "greater than 0 and at most 1h",
        ),
        (Tail, "rotate_wait", HUGE, "between 0s and 1day"),
        // Sizes.
        (
            Agent,
            "batch_max_bytes",
            HUGE_SIZE,
            "between 1KiB and 128MiB",
        ),
        (
            Agent,
            "batch_max_bytes",
            "\"129MiB\"",
            "between 1KiB and 128MiB",
        ),
        (
            Agent,
            "max_line_bytes",
            HUGE_SIZE,
            "between 16 bytes and 64MiB",
        ),
        (
            Agent,
            "max_line_bytes",
            I64_MAX,
            "between 16 bytes and 64MiB",
        ),
        (
            Agent,
            "rejected_max_size",
            HUGE_SIZE,
            "between 1MiB and 1TiB",
        ),
        (Output, "memory_limit", HUGE_SIZE, "between 1MiB and 1TiB"),
        (Spool, "max_size", HUGE_SIZE, "between 1MiB and 64TiB"),
        (Spool, "max_size", I64_MAX, "between 1MiB and 64TiB"),
        (Udp, "receive_buffer", HUGE_SIZE, "between 0 bytes and 1GiB"),
        // Counts at their type's maximum.
        (Agent, "batch_max_lines", I64_MAX, "between 1 and 10000000"),
        (Agent, "batch_max_lines", U32_MAX, "between 1 and 10000000"),
        (Output, "max_in_flight", I64_MAX, "between 1 and 256"),
        (Output, "poison_retries", I64_MAX, "between 1 and 1000"),
        (Output, "poison_retries", U32_MAX, "between 1 and 1000"),
        (Output, "gzip_level", I64_MAX, "between 0 and 12"),
        (Output, "gzip_level", U32_MAX, "between 0 and 12"),
        (Udp, "workers", I64_MAX, "between 1 and 64"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let token = "token = \"super-secret-token\"";
    for (i, &(table, key, value, range)) in cases.iter().enumerate() {
        let sub = dir.path().join(i.to_string());
        std::fs::create_dir_all(&sub).unwrap();
        let line = format!("{key} = {value}");
        let (mut agent, mut output, mut spool) = (String::new(), token.to_owned(), String::new());
        let inputs = match table {
            Agent => {
                agent = line.clone();
                String::new()
            }
            Output => {
                output = format!("{token}\n{line}");
                String::new()
            }
            Spool => {
                spool = line.clone();
                String::new()
            }
            Udp => format!("[[input.udp]]\nlisten = \"127.0.0.1:0\"\n{line}"),
            Tail => format!("[[input.tail]]\npaths = [\"/nonexistent/*.log\"]\n{line}"),
        };
        let full_key = match table {
            Agent => format!("agent.{key}"),
            Output => format!("output.{key}"),
            Spool => format!("spool.{key}"),
            Udp => format!("input.udp[0].{key}"),
            Tail => format!("input.tail[0].{key}"),
        };
        let text = config_text(&sub, "http://127.0.0.1:1", &agent, &output, &spool, &inputs);
        let out = check(&write_config(&sub, &text), None);
        assert_eq!(out.code, Some(2), "{line}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains(&format!("`{full_key}`")) && out.stderr.contains(range),
            "{line}: the error names {full_key} and says {range:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("super-secret"), "{}", out.stderr);
    }
}

#[test]
fn check_refuses_tokens_an_http_header_cannot_carry_without_showing_them() {
    let bad = [
        ("\n", "line break"),
        ("\r", "line break"),
        ("\u{1}", "control character"),
        ("\t", "control character"),
        ("\u{7f}", "control character"),
        (" ", "space"),
        ("\u{e9}", "non-ASCII character"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for (c, what) in bad {
        let token = format!("{}{c}{}", SECRET[0], SECRET[1]);
        for source in ["token", "token_file", "LINESHIP_TOKEN"] {
            n += 1;
            let sub = dir.path().join(n.to_string());
            std::fs::create_dir_all(&sub).unwrap();
            let file = sub.join("token");
            // A token file's trailing newline is normal and trimmed; what is inside is not.
            std::fs::write(&file, format!("{token}\n")).unwrap();
            let (output, env, key) = match source {
                "token" => (
                    format!("token = {}", toml_string(&token)),
                    None,
                    "`output.token`",
                ),
                "token_file" => (
                    format!("token_file = {}", toml_path(&file)),
                    None,
                    "`output.token_file`",
                ),
                _ => (String::new(), Some(token.as_str()), "LINESHIP_TOKEN"),
            };
            let text = config_text(&sub, "http://127.0.0.1:1", "", &output, "", "");
            let out = check(&write_config(&sub, &text), env);
            let all = format!("{}{}", out.stdout, out.stderr);
            assert_eq!(out.code, Some(2), "{source} {what}: {all}");
            assert!(
                all.contains(key) && all.contains(what),
                "{source} {what}: {all}"
            );
            if source == "token_file" {
                assert!(all.contains(&file.display().to_string()), "{all}");
            }
            for part in SECRET {
                assert!(
                    !all.contains(part),
                    "{source} {what}: the token is shown: {all}"
                );
            }
        }
    }
    // Trailing line ends in a token file are not part of the token.
    for content in ["good-token\n", "good-token\r\n", "good-token"] {
        let file = dir.path().join("good");
        std::fs::write(&file, content).unwrap();
        let output = format!("token_file = {}", toml_path(&file));
        let text = config_text(dir.path(), "http://127.0.0.1:1", "", &output, "", "");
        let out = check(&write_config(dir.path(), &text), None);
        assert_eq!(out.code, Some(0), "{content:?}: {}", out.stderr);
    }
}

/// Every duration and size at its maximum: `check` accepts it and the daemon runs, drains on
/// SIGTERM and exits cleanly (the shutdown deadline is a day away, not an overflow).
#[test]
fn every_value_at_its_maximum_runs_and_shuts_down_on_sigterm() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let agent = r#"flush_interval = "1h"
shutdown_timeout = "1day"
summary_interval = "1day"
batch_max_lines = 10000000
batch_max_bytes = "128MiB"
max_line_bytes = "64MiB"
rejected_max_size = "1TiB""#;
    let output = r#"token = "t"
timeout = "1h"
max_backoff = "1h"
max_in_flight = 256
memory_limit = "1TiB"
max_retry_after = "1day"
poison_retries = 1000
gzip_level = 12"#;
    let spool = "max_size = \"64TiB\"\nfsync_interval = \"1h\"";
    let inputs = format!(
        "[[input.udp]]\nlisten = \"127.0.0.1:0\"\nreceive_buffer = \"1GiB\"\n[[input.tail]]\npaths = [{}]\nrotate_wait = \"1day\"",
        toml_path(&dir.path().join("*.log"))
    );
    let text = config_text(dir.path(), &fake.url(), agent, output, spool, &inputs);
    let cfg = write_config(dir.path(), &text);
    let out = check(&cfg, None);
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    let mut c = lineship_command();
    c.arg("--config").arg(&cfg).arg("--stdin");
    let mut d = Daemon::spawn_with_open_stdin(c);
    assert!(
        d.wait_for_stderr("lineship started", T),
        "{}",
        d.stderr_so_far()
    );
    d.write_stdin(b"m v=1i 1\nm v=2i 2\n");
    // Only the drain can seal the batch (flush_interval is an hour); wait until it is read.
    std::thread::sleep(Duration::from_millis(300));
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert_eq!(fake.accepted_lines(), vec!["m v=1i 1", "m v=2i 2"]);
}

/// The checked arithmetic itself: `run` given durations no config can hold (the limits stop
/// them in `check`) still delivers and stops, instead of panicking on `Instant + Duration`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_past_what_an_instant_holds_do_not_panic() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        dir.path(),
        &fake.url(),
        "",
        "token = \"t\"",
        "",
        "[input.stdin]\nenabled = true",
    );
    let mut s = lineship::Settings::from_toml(&text, false, |_| None).unwrap();
    s.agent.shutdown_timeout = Duration::MAX;
    s.agent.flush_interval = Duration::MAX;
    s.agent.summary_interval = Duration::MAX;
    s.outputs[0].timeout = Duration::MAX;
    s.outputs[0].max_retry_after = Duration::MAX;
    s.spool.fsync_interval = Duration::MAX;
    let io = lineship::Io {
        stdin: Some(Box::new(Cursor::new(b"m v=1i 1\nm v=2i 2\n".to_vec()))),
        ..Default::default()
    };
    let report = tokio::time::timeout(T, lineship::run(s, io, std::future::pending()))
        .await
        .expect("run ends at stdin EOF")
        .expect("run succeeds");
    assert_eq!(report.lines_delivered, 2);
    assert_eq!(fake.accepted_lines(), vec!["m v=1i 1", "m v=2i 2"]);
}

/// SIGHUP re-reads token_file; a token there that no header can carry is refused with an error
/// naming the file (not the token), and writes go on with the token in use.
#[test]
fn sighup_with_a_bad_token_file_keeps_the_current_token() {
    const OLD: &str = "tok-old-7d3e55";
    let fake = FakeInflux::with_responder(move |req| {
        if req.header("authorization") == Some(&format!("Token {OLD}")) {
            Reply::no_content()
        } else {
            Reply::influx_error(401, "unauthorized access")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{OLD}\n")).unwrap();
    let output = format!("token_file = {}", toml_path(&file));
    let text = config_text(dir.path(), &fake.url(), "", &output, "", "");
    let mut c = lineship_command();
    c.arg("--config")
        .arg(write_config(dir.path(), &text))
        .arg("--stdin");
    let mut d = Daemon::spawn_with_open_stdin(c);
    d.write_stdin(b"m v=1i 1\n");
    assert!(fake.wait_for_lines(1, T), "{}", d.stderr_so_far());

    let tmp = dir.path().join("token.tmp");
    std::fs::write(&tmp, format!("{}\n{}\n", SECRET[0], SECRET[1])).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    d.signal(libc::SIGHUP);
    assert!(
        d.wait_for_stderr("keeping the current token", T),
        "{}",
        d.stderr_so_far()
    );
    let log = d.stderr_so_far();
    let line = log
        .lines()
        .find(|l| l.contains("keeping the current token"))
        .unwrap();
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(&file.display().to_string()), "{line}");
    assert!(line.contains("line break"), "{line}");

    d.write_stdin(b"m v=2i 2\n");
    assert!(fake.wait_for_lines(2, T), "{}", d.stderr_so_far());
    d.close_stdin();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(fake.accepted_lines(), vec!["m v=1i 1", "m v=2i 2"]);
    let auth: Vec<_> = fake
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or("").to_owned())
        .collect();
    assert!(
        auth.iter().all(|a| a == &format!("Token {OLD}")),
        "every write carried the old token: {auth:?}"
    );
    for part in SECRET {
        assert!(
            !out.stderr.contains(part),
            "the token is logged: {}",
            out.stderr
        );
    }
}
