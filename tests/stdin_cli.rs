//! The real binary in stdin mode: exit codes, config errors that name the key, `check`,
//! and the state_dir lock.

mod common;

use std::time::Duration;

use common::{lineship_command, run_stdin, run_with_timeout, write_config, FakeInflux, Reply};

fn config(dir: &std::path::Path, url: &str, extra: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            r#"
state_dir = "{}"
[agent]
flush_interval = "50ms"
shutdown_timeout = "1s"
log_level = "info"
[output]
url = "{url}"
org = "o"
bucket = "b"
token = "super-secret-token"
initial_backoff = "10ms"
max_backoff = "50ms"
{extra}
"#,
            dir.join("state").display()
        ),
    )
}

const T: Duration = Duration::from_secs(60);

#[test]
fn exit_0_when_everything_is_delivered() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), "");
    let out = run_stdin(&cfg, b"m v=1i 1\nm v=2i 2\n", T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(fake.accepted_lines(), vec!["m v=1i 1", "m v=2i 2"]);
    assert!(!out.stderr.contains("super-secret-token"));
}

#[test]
fn exit_65_when_some_lines_are_invalid_and_the_rest_is_delivered() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), "");
    let out = run_stdin(&cfg, b"m v=1i 1\nthis is bad\nm v=2i 2\n", T);
    assert_eq!(out.code, Some(65), "{}", out.stderr);
    assert_eq!(fake.accepted_lines(), vec!["m v=1i 1", "m v=2i 2"]);
    assert!(out.stderr.contains("invalid line"), "{}", out.stderr);
}

#[test]
fn format_text_wraps_each_raw_line_as_a_point() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &fake.url(),
        "[input.stdin]\nformat = \"text\"\nmeasurement = \"app log\"\ntags = { env = \"prod,eu\" }\nprecision = \"s\"\nstamp_missing_timestamps = false",
    );
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // An odd quote must not swallow the lines after it (the line-protocol framer would).
    let input =
        b"GET /a?x=1,y=2 \"ok\" C:\\tmp\tdone\r\nbad \xff utf8\n\n# kept\nhalf \" quote\nm v=1i";
    let out = run_stdin(&cfg, input, T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let lines = fake.accepted_lines();
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| {
            let (head, stamp) = l.rsplit_once(' ').unwrap();
            let stamp: i64 = stamp.parse().unwrap();
            // Always stamped (whatever stamp_missing_timestamps says), in the input's precision.
            assert!((before..before + 60).contains(&stamp), "{l}");
            head.strip_prefix("app\\ log,env=prod\\,eu message=\"")
                .and_then(|m| m.strip_suffix('"'))
                .unwrap_or_else(|| panic!("{l}"))
        })
        .collect();
    assert_eq!(
        messages,
        [
            "GET /a?x=1,y=2 \\\"ok\\\" C:\\\\tmp\tdone",
            "bad \u{FFFD} utf8",
            "# kept",
            "half \\\" quote",
            "m v=1i",
        ]
    );
}

#[test]
fn an_overlong_line_is_dead_lettered_with_its_start() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[agent]\n", "[agent]\nmax_line_bytes = \"1KiB\"\n");
    std::fs::write(&cfg, text).unwrap();
    let mut input = b"m v=1i 1\nlong,tag=start v=\"".to_vec();
    input.resize(input.len() + 300_000, b'x');
    input.extend_from_slice(b"\"\nm v=2i 2\n");
    let out = run_stdin(&cfg, &input, T);
    assert_eq!(out.code, Some(65), "{}", out.stderr);
    assert_eq!(fake.accepted_lines(), vec!["m v=1i 1", "m v=2i 2"]);
    assert!(out.stderr.contains("long,tag=start"), "{}", out.stderr);
    let dead = std::fs::read(dir.path().join("state/rejected/rejected.lp")).unwrap();
    let dead = String::from_utf8_lossy(&dead);
    let (header, body) = dead.split_once('\n').unwrap();
    assert!(header.contains("reason=too_long"), "{header}");
    assert!(body.starts_with("long,tag=start v=\"xxx"), "{body}");
    assert_eq!(
        body.trim_end().len(),
        1024,
        "the first max_line_bytes bytes are kept"
    );
}

#[test]
fn exit_75_when_the_server_is_down_and_the_data_waits_in_the_spool() {
    let fake = FakeInflux::start().default_reply(Reply::status(503));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), "");
    let out = run_stdin(&cfg, b"m v=1i 1\nm v=2i 2\n", T);
    assert_eq!(out.code, Some(75), "{}", out.stderr);
    assert!(out.stderr.contains("kept in the spool"), "{}", out.stderr);
    assert!(out.stderr.contains("lines=2"), "{}", out.stderr);
    // The next run, with the server back, delivers the spooled lines first.
    fake.set_default_reply(Reply::status(204));
    let out = run_stdin(&cfg, b"m v=3i 3\n", T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // Spooled records are handed out first, but with max_in_flight > 1 they may arrive in
    // any order.
    let mut got = fake.accepted_lines();
    got.sort();
    assert_eq!(got, vec!["m v=1i 1", "m v=2i 2", "m v=3i 3"]);
}

#[test]
fn unreachable_server_is_logged_once_with_url_and_reason() {
    // Bind and drop a listener so nothing listens on the port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &url, "");
    let out = run_stdin(&cfg, b"m v=1i 1\n", T);
    assert_eq!(out.code, Some(75), "{}", out.stderr);
    let failing: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("writes are failing"))
        .collect();
    assert_eq!(
        failing.len(),
        1,
        "logged once per state change, not per retry:\n{}",
        out.stderr
    );
    assert!(
        failing[0].contains(&format!("127.0.0.1:{port}")),
        "{}",
        failing[0]
    );
    assert!(failing[0].contains("connect"), "{}", failing[0]);
}

#[test]
fn bad_config_exits_2_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[agent]\nflush_intervall = \"1s\"\n", "flush_intervall"),
        ("[agent]\nbatch_max_bytes = \"lots\"\n", "batch_max_bytes"),
        ("[output]\nmax_in_flight = 0\n", "output.max_in_flight"),
        // toml's own message would quote the line, and with it the secret.
        ("[agent]\ntokn = \"leaked-secret\"\n", "agent.tokn"),
        (
            "[output]\ntoken_file = leaked-secret\n",
            "output.token_file",
        ),
    ];
    for (i, (extra, key)) in cases.iter().enumerate() {
        let sub = dir.path().join(i.to_string());
        std::fs::create_dir_all(&sub).unwrap();
        // Append to the base config; for [output] keys, splice into the existing table.
        let cfg = if extra.starts_with("[output]") {
            config(&sub, "http://127.0.0.1:1", &extra.replace("[output]\n", ""))
        } else {
            let c = config(&sub, "http://127.0.0.1:1", "");
            let text = std::fs::read_to_string(&c)
                .unwrap()
                .replace("[agent]\n", extra);
            std::fs::write(&c, text).unwrap();
            c
        };
        // `check`, and the daemon itself: both refuse to start.
        for args in [&["check", "--config"][..], &["--stdin", "--config"][..]] {
            let out = run_with_timeout(
                {
                    let mut c = lineship_command();
                    c.args(args).arg(&cfg);
                    c
                },
                b"",
                T,
            );
            assert_eq!(out.code, Some(2), "{key} {args:?}: {}", out.stderr);
            assert!(
                out.stderr.contains(key),
                "error names {key}: {}",
                out.stderr
            );
            assert!(!out.stderr.contains("leaked-secret"), "{}", out.stderr);
            assert!(!out.stderr.contains("super-secret"), "{}", out.stderr);
        }
    }
}

#[test]
fn logs_are_json_or_journald_text_and_rust_log_overrides_the_level() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), "");
    let with = |format: &str, env: &[(&str, &str)]| {
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "log_level = \"info\"\n",
            &format!("log_level = \"info\"\nlog_format = \"{format}\"\n"),
        );
        let names: Vec<&str> = env.iter().map(|(k, _)| *k).collect();
        let cfg = dir
            .path()
            .join(format!("{format}-{}.toml", names.join("-")));
        std::fs::write(&cfg, text).unwrap();
        let mut c = lineship_command();
        c.arg("--config").arg(&cfg).arg("--stdin");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = run_with_timeout(c, b"m v=1i 1\nnot line protocol\n", T);
        assert_eq!(out.code, Some(65), "{}", out.stderr);
        out.stderr
    };

    // JSON: one object per line, with the level and the message's fields.
    let json = with("json", &[]);
    let mut warned = false;
    for line in json.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["timestamp"].is_string(), "{line}");
        if v["level"] == "WARN" && v["fields"]["reason"].is_string() {
            warned = true;
        }
    }
    assert!(warned, "the invalid line is a WARN with its reason: {json}");

    // Under journald: journald stamps the time itself, and there are no colour codes.
    let journal = with("text", &[("JOURNAL_STREAM", "8:12345")]);
    for line in journal.lines().filter(|l| !l.is_empty()) {
        let first = line.split_whitespace().next().unwrap();
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&first),
            "no timestamp under journald: {line}"
        );
        assert!(!line.contains('\x1b'), "no ANSI codes: {line:?}");
    }

    // RUST_LOG wins over log_level.
    let quiet = with("text", &[("RUST_LOG", "error")]);
    assert!(!quiet.contains(" INFO "), "{quiet}");
    assert!(!quiet.contains(" WARN "), "{quiet}");
}

#[test]
fn the_example_config_is_valid() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let mut c = lineship_command();
    c.arg("check").arg("--config").arg(&example);
    let out = run_with_timeout(c, b"", T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // Every table the README documents is shown in the example (some commented out).
    let text = std::fs::read_to_string(&example).unwrap();
    for table in [
        "[agent]",
        "[output]",
        "[spool]",
        "[[input.udp]]",
        "[[input.tail]]",
        "[input.stdin]",
        "[telemetry]",
    ] {
        assert!(
            text.contains(table),
            "{table} is missing from config.example.toml"
        );
    }
}

#[test]
fn check_prints_effective_settings_with_the_token_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "http://127.0.0.1:1", "");
    let mut c = lineship_command();
    c.arg("--config").arg(&cfg).arg("check");
    let out = run_with_timeout(c, b"", T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("batch_max_lines: 5000"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("[redacted]"));
    assert!(!out.stdout.contains("super-secret-token"));
}

#[test]
fn a_second_process_on_the_same_state_dir_is_refused() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), "");
    // The first run holds the lock while its stdin stays open.
    let mut c = lineship_command();
    c.arg("--config").arg(&cfg).arg("--stdin");
    let mut first = common::Daemon::spawn_with_open_stdin(c);
    assert!(
        first.wait_for_stderr("lineship started", Duration::from_secs(20)),
        "{}",
        first.stderr_so_far()
    );
    let out = run_stdin(&cfg, b"m v=1i 1\n", T);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("in use by another lineship process"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("pid {}", first.pid())),
        "{}",
        out.stderr
    );
    first.write_stdin(b"m v=2i 2\n");
    first.close_stdin();
    let res = first.wait(T);
    assert_eq!(res.code, Some(0), "{}", res.stderr);
    assert_eq!(
        fake.accepted_lines(),
        vec!["m v=2i 2"],
        "only the lock holder delivered"
    );
}

#[test]
fn sigterm_drains_the_pipeline_and_delivers_what_was_read() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    // A long flush interval: only the shutdown drain can seal this batch.
    let cfg = config(dir.path(), &fake.url(), "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("flush_interval = \"50ms\"", "flush_interval = \"1h\"");
    std::fs::write(&cfg, text).unwrap();
    let mut c = lineship_command();
    c.arg("--config").arg(&cfg).arg("--stdin");
    let mut d = common::Daemon::spawn_with_open_stdin(c);
    assert!(
        d.wait_for_stderr("lineship started", Duration::from_secs(20)),
        "{}",
        d.stderr_so_far()
    );
    d.write_stdin(b"m v=1i 1\nm v=2i 2\n");
    // Give the stdin thread a moment to read and queue the lines (stdin stays open).
    std::thread::sleep(Duration::from_millis(300));
    assert!(fake.requests().is_empty(), "nothing sealed before shutdown");
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(fake.accepted_lines(), vec!["m v=1i 1", "m v=2i 2"]);
    assert!(out.stderr.contains("shutting down"), "{}", out.stderr);
}

#[test]
fn completions_and_the_man_page_print_without_a_config() {
    for args in [
        &["completions", "bash"][..],
        &["completions", "zsh"],
        &["man"],
    ] {
        let out = common::lineship_command().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("lineship") && text.contains("spool"),
            "{args:?}"
        );
    }
    let out = common::lineship_command()
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}

#[test]
fn every_stdin_run_ends_with_one_summary_line_and_a_pipe_gets_no_escape_codes() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), "");
    let out = run_stdin(&cfg, b"m v=1i 1\nnot lp\nm v=2i 2\n", T);
    assert_eq!(out.code, Some(65), "{}", out.stderr);
    let summary: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("lineship: read "))
        .collect();
    assert_eq!(summary.len(), 1, "{}", out.stderr);
    let s = summary[0];
    assert!(
        s.starts_with("lineship: read 3 lines, delivered 2, invalid 1 (in "),
        "{s}"
    );
    assert!(s.contains("rejected.lp"), "{s}");
    assert!(s.contains("left in the spool 0;"), "{s}");
    assert!(s.contains("exit 65: some lines were invalid"), "{s}");
    assert_eq!(
        out.stderr.lines().last(),
        Some(s),
        "the summary is the last line"
    );
    assert!(!out.stderr.contains('\x1b'), "no escape codes into a pipe");
}

/// Under a terminal (`script` gives the daemon a pty), replaying a file shows a progress bar
/// with bytes of the file's size, lines/s, delivered, invalid and spooled lines.
#[test]
fn a_terminal_gets_a_progress_bar_for_a_file_on_stdin() {
    let script = std::path::Path::new("/usr/bin/script");
    if !script.exists() {
        eprintln!("SKIPPED a_terminal_gets_a_progress_bar_for_a_file_on_stdin: /usr/bin/script (util-linux) is not installed");
        return;
    }
    let fake = FakeInflux::start().default_reply(Reply::status(204));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.url(), "");
    let input = dir.path().join("backlog.lp");
    let body: String = (0..20_000)
        .map(|i| format!("m,host=h v={i}i {i}\n"))
        .collect();
    std::fs::write(&input, &body).unwrap();
    let typescript = dir.path().join("pty.out");
    let command = format!(
        "{} --config {} --stdin < {}",
        common::lineship_bin().display(),
        cfg.display(),
        input.display()
    );
    let mut cmd = std::process::Command::new(script);
    cmd.arg("-qec").arg(&command).arg(&typescript);
    let out = run_with_timeout(cmd, b"", T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let seen = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned();
    assert!(seen.contains("lines/s · delivered"), "{seen}");
    let size = format!("/{:.2} KiB", body.len() as f64 / 1024.0);
    assert!(
        seen.contains(&size),
        "the bar counts bytes of {size}: {seen}"
    );
    assert!(
        seen.contains("lineship: read 20000 lines, delivered 20000"),
        "{seen}"
    );
    assert!(fake.wait_for_lines(20_000, T));
}

/// `lineship spool verify` on a terminal shows how far it has read; into a pipe it does not.
#[test]
fn spool_verify_shows_progress_on_a_terminal_only() {
    let script = std::path::Path::new("/usr/bin/script");
    if !script.exists() {
        eprintln!("SKIPPED spool_verify_shows_progress_on_a_terminal_only: /usr/bin/script (util-linux) is not installed");
        return;
    }
    let down = FakeInflux::start();
    let url = down.url();
    drop(down);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &url, "");
    let body: String = (0..5_000)
        .map(|i| format!("m,host=h v={i}i {i}\n"))
        .collect();
    let out = run_stdin(&cfg, body.as_bytes(), T);
    assert_eq!(
        out.code,
        Some(75),
        "the lines wait in the spool: {}",
        out.stderr
    );
    let typescript = dir.path().join("pty.out");
    let command = format!(
        "{} spool verify --config {}",
        common::lineship_bin().display(),
        cfg.display()
    );
    let mut cmd = std::process::Command::new(script);
    cmd.arg("-qec").arg(&command).arg(&typescript);
    let out = run_with_timeout(cmd, b"", T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let seen = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned();
    assert!(seen.contains("verifying ["), "{seen}");
    assert!(seen.contains("is intact"), "{seen}");
    let mut piped = lineship_command();
    piped.args(["spool", "verify", "--config"]).arg(&cfg);
    let out = run_with_timeout(piped, b"", T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        !out.stderr.contains("verifying") && !out.stderr.contains('\x1b'),
        "{}",
        out.stderr
    );
}
