//! Config as a whole, through `Settings::from_toml`: defaults, errors that name their key and
//! never quote a token, token sources, per-input overrides.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::line::Precision;

const MINIMAL: &str = r#"
state_dir = "/tmp/x"
[output]
url = "http://localhost:8086/"
org = "o"
bucket = "b"
token = "s3cret"
"#;

fn load(text: &str) -> anyhow::Result<Settings> {
    Settings::from_toml(text, false, |_| None)
}

#[test]
fn minimal_config_gets_design_defaults() {
    let s = load(MINIMAL).unwrap();
    assert_eq!(
        s.outputs[0].urls[0].write.as_str(),
        "http://localhost:8086/api/v2/write"
    );
    assert_eq!(s.agent.batch_max_lines, 5000);
    assert_eq!(s.agent.batch_max_bytes, 4 << 20);
    assert_eq!(s.agent.flush_interval, Duration::from_secs(1));
    assert_eq!(s.outputs[0].memory_limit, 64 << 20);
    assert_eq!(s.outputs[0].max_retry_after, Duration::from_secs(300));
    assert_eq!(s.spool.when_full, WhenFull::DropOldest);
    assert!(s.inputs.stdin.is_none());
    let t = load(&format!(
        "{MINIMAL}\n[[input.tail]]\npaths = [\"/x/*.log\"]\n"
    ))
    .unwrap();
    assert_eq!(t.inputs.tail[0].rotate_wait, Duration::from_secs(60));
    let t = load(&format!(
        "{MINIMAL}\n[[input.tail]]\npaths = [\"/x/*.log\"]\nrotate_wait = \"5m\"\n"
    ))
    .unwrap();
    assert_eq!(t.inputs.tail[0].rotate_wait, Duration::from_secs(300));
}

#[test]
fn url_path_prefix_is_kept() {
    let s = load(&MINIMAL.replace("http://localhost:8086/", "https://h/influx")).unwrap();
    assert_eq!(
        s.outputs[0].urls[0].write.as_str(),
        "https://h/influx/api/v2/write"
    );
}

#[test]
fn unknown_key_is_named() {
    let err = load(&format!("{MINIMAL}\n[agent]\nflush_intervall = \"1s\"\n")).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("flush_intervall"), "{msg}");
}

#[test]
fn bad_values_name_their_key() {
    for (snippet, key) in [
        ("[agent]\nflush_interval = \"soon\"\n", "flush_interval"),
        (
            "[agent]\nbatch_max_bytes = \"4 parsecs\"\n",
            "batch_max_bytes",
        ),
        ("[agent]\nbatch_max_lines = 0\n", "agent.batch_max_lines"),
        (
            "[agent]\nrejected_max_size = 0\n",
            "agent.rejected_max_size",
        ),
        (
            "[input.stdin]\nprecision = \"minutes\"\n",
            "input.stdin.precision",
        ),
        ("[[input.udp]]\nlisten = \"nope\"\n", "input.udp[0].listen"),
        ("[[input.tcp]]\nlisten = \"nope\"\n", "input.tcp[0].listen"),
        (
            "[[input.http]]\nlisten = \"0.0.0.0:8086\"\n",
            "input.http[0].tokens",
        ),
        (
            "[[input.http]]\nlisten = \"127.0.0.1:8086\"\ntls_cert_file = \"/c.pem\"\n",
            "input.http[0].tls_key_file",
        ),
        (
            "[[input.tcp]]\nlisten = \"127.0.0.1:8094\"\ntls_key_file = \"/k.pem\"\n",
            "input.tcp[0].tls_cert_file",
        ),
        (
            "[[input.http]]\nlisten = \"127.0.0.1:8086\"\ntokens = [\"a b\"]\n",
            "input.http[0].tokens",
        ),
        (
            "[[input.http]]\nlisten = \"127.0.0.1:8086\"\ntoken_file = \"/nonexistent/tokens\"\n",
            "input.http[0].token_file",
        ),
        (
            "[[input.http]]\nlisten = \"127.0.0.1:8086\"\nack = \"eventually\"\n",
            "ack",
        ),
        (
            "[[input.http]]\nlisten = \"127.0.0.1:8086\"\nmax_body_size = 0\n",
            "input.http[0].max_body_size",
        ),
        (
            "[[input.tcp]]\nlisten = \"127.0.0.1:8094\"\nmax_connections = 0\n",
            "input.tcp[0].max_connections",
        ),
        (
            "[[input.tcp]]\nlisten = \"127.0.0.1:8094\"\nidle_timeout = \"0s\"\n",
            "input.tcp[0].idle_timeout",
        ),
        (
            "[[input.tcp]]\nlisten = \"127.0.0.1:8094\"\nworkers = 2\n",
            "workers",
        ),
        ("[telemetry]\nlisten = \"x\"\n", "telemetry.listen"),
        (
            "[[input.tail]]\npaths = [\"/x\"]\nrotate_wait = \"soon\"\n",
            "rotate_wait",
        ),
        (
            "[[input.tail]]\npaths = [\"/x\"]\nformat = \"text\"\ntags = { app = \"a\\tb\" }\n",
            "input.tail[0].tags",
        ),
        (
            "[input.stdin]\nformat = \"text\"\nmeasurement = 'logs\\'\n",
            "input.stdin.measurement",
        ),
    ] {
        let err = load(&format!("{MINIMAL}\n{snippet}")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(key), "{snippet:?} -> {msg}");
    }
    let err = load(&MINIMAL.replace("http://localhost:8086/", "ftp://x")).unwrap_err();
    assert!(format!("{err:#}").contains("output.url"));
    let err = load(
        &MINIMAL
            .replace("gzip", "x")
            .replace("token = \"s3cret\"", "gzip_level = 13"),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("output.gzip_level"));
}

#[test]
fn token_sources_and_redaction() {
    let s = load(MINIMAL).unwrap();
    assert_eq!(s.outputs[0].token.expose(), "s3cret");
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("s3cret"), "{dbg}");
    assert!(dbg.contains("[redacted]"));

    let no_token = MINIMAL.replace("token = \"s3cret\"", "");
    let s = Settings::from_toml(&no_token, false, |k| {
        (k == TOKEN_ENV).then(|| "envtok".into())
    })
    .unwrap();
    assert_eq!(s.outputs[0].token.expose(), "envtok");

    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("tok");
    std::fs::write(&f, "filetok\n").unwrap();
    let with_file = MINIMAL.replace("token = \"s3cret\"", &format!("token_file = {:?}", f));
    let s = load(&with_file).unwrap();
    assert_eq!(s.outputs[0].token.expose(), "filetok");
    let both = format!("{with_file}token = \"x\"\n");
    assert!(format!("{:#}", load(&both).unwrap_err()).contains("output.token_file"));

    let empty = MINIMAL.replace("token = \"s3cret\"", "token = \"\"");
    let s =
        Settings::from_toml(&empty, false, |k| (k == TOKEN_ENV).then(|| "envtok".into())).unwrap();
    assert_eq!(
        s.outputs[0].token.expose(),
        "envtok",
        "an empty token counts as unset"
    );
}

#[test]
fn parse_errors_name_the_key_under_its_table() {
    let text = format!(
        "{MINIMAL}[[input.udp]]\nlisten = \"127.0.0.1:1\"\n[[input.udp]] # two\nlisten = 5\n"
    );
    let err = format!("{:#}", load(&text).unwrap_err());
    assert!(err.contains("config key `input.udp[1].listen`"), "{err}");
    // Entries of one array count across other tables in between.
    let text = format!(
        "{MINIMAL}[[input.udp]]\nlisten = \"127.0.0.1:1\"\n[[input.tail]]\npaths = [\"/x\"]\n[[input.udp]]\nlisten = 5\n"
    );
    let err = format!("{:#}", load(&text).unwrap_err());
    assert!(err.contains("config key `input.udp[1].listen`"), "{err}");
    let err = format!("{:#}", load("state_dir = 5\n").unwrap_err());
    assert!(
        err.starts_with("config key `state_dir` (line 1, column 13)"),
        "{err}"
    );
}

#[test]
fn type_errors_name_the_key_by_its_path_also_in_inline_tables() {
    for (snippet, key) in [
        (
            "[input]\nudp = [{ listen = \"127.0.0.1:1\" }, { listen = 5 }]\n",
            "`input.udp[1].listen`",
        ),
        (
            "[[input.tail]]\npaths = [\"/x\"]\n[[input.tail]]\nfrom_beginning = true\n",
            "`input.tail[1]`",
        ),
        (
            "[[input.tail]]\npaths = [\"/x\", 5]\n",
            "`input.tail[0].paths[1]`",
        ),
        (
            "[input.stdin]\ntags = { app = 5 }\n",
            "`input.stdin.tags.app`",
        ),
    ] {
        let err = format!("{:#}", load(&format!("{MINIMAL}{snippet}")).unwrap_err());
        assert!(
            err.contains(&format!("config key {key}")),
            "{snippet:?} -> {err}"
        );
    }
}

#[test]
fn syntax_errors_name_the_key_from_the_table_headers() {
    // No serde path exists before the text parses; the table headers above the line tell.
    let text = format!(
        "{MINIMAL}[[input.udp]]\nlisten = \"127.0.0.1:1\"\n[[input.tail]]\npaths = [\"/x\"]\n[[input.udp]]\nlisten = 127.0.0.1:2\n"
    );
    let err = format!("{:#}", load(&text).unwrap_err());
    assert!(err.contains("config key `input.udp[1].listen`"), "{err}");
    let err = format!(
        "{:#}",
        load("[agent]\nflush_interval = soon\n").unwrap_err()
    );
    assert!(
        err.starts_with("config key `agent.flush_interval` (line 2, column 18)"),
        "{err}"
    );
}

#[test]
fn a_token_key_spelled_with_escapes_is_still_redacted() {
    // The line never says "tok", but the key serde was reading is `output.token`.
    let text = MINIMAL.replace("token = \"s3cret\"", "\"\\u0074oken\" = 123456789");
    let err = format!("{:#}", load(&text).unwrap_err());
    assert!(!err.contains("123456789"), "{err}");
    assert!(err.contains("config key `output.token`"), "{err}");
}

#[test]
fn parse_errors_never_quote_a_token() {
    for bad in [
        "tokn = \"s3cret\"",
        "token = s3cret",
        "token = 123456789",
        "token = \"s3cret",
        "token = [\"s3cret\"]",
        // Mangled lines where the secret sits before the first `=` (base64 padding).
        "token: \"s3cret==\"",
        "token \"s3cret==\"",
        "s3cret==",
    ] {
        let text = MINIMAL.replace("token = \"s3cret\"", bad);
        let err = format!("{:#}", load(&text).unwrap_err());
        assert!(!err.contains("s3cret"), "{bad}: {err}");
        assert!(!err.contains("123456789"), "{bad}: {err}");
        let line = MINIMAL.lines().position(|l| l.contains("s3cret")).unwrap() + 1;
        assert!(
            err.contains(&format!("line {line}, column ")),
            "{bad}: {err}"
        );
    }
    // Elsewhere the message keeps the value it complains about.
    let text = MINIMAL.replace("[output]", "[output]\ngzip_level = \"high\"");
    let err = format!("{:#}", load(&text).unwrap_err());
    assert!(err.contains("high"), "{err}");
}

#[test]
fn world_readable_secrets_are_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lineship.toml");
    std::fs::write(&cfg, MINIMAL).unwrap();
    let chmod =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    chmod(&cfg, 0o644);
    let s = load(MINIMAL).unwrap();
    assert_eq!(s.outputs[0].token_source, TokenSource::Config);
    let w = secret_file_warnings(&cfg, &s);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("chmod 600") && w[0].contains("lineship.toml"),
        "{w:?}"
    );
    assert!(!w[0].contains("s3cret"));
    chmod(&cfg, 0o640);
    assert!(secret_file_warnings(&cfg, &s).is_empty());

    // A config without a token may be world-readable; a world-readable token_file may not.
    let tok = dir.path().join("tok");
    std::fs::write(&tok, "t\n").unwrap();
    chmod(&tok, 0o604);
    chmod(&cfg, 0o644);
    let s = load(&MINIMAL.replace("token = \"s3cret\"", &format!("token_file = {tok:?}"))).unwrap();
    let w = secret_file_warnings(&cfg, &s);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("output.token_file"), "{w:?}");
}

#[test]
fn per_input_overrides() {
    let s = Settings::from_toml(
        &format!("{MINIMAL}\n[input.stdin]\nbucket = \"other\"\nprecision = \"ms\"\nstamp_missing_timestamps = false\n"),
        true,
        |_| None,
    )
    .unwrap();
    let st = s.inputs.stdin.unwrap();
    assert_eq!(st.line.bucket, "other");
    assert_eq!(st.line.precision, Precision::Ms);
    assert!(!st.line.stamp_missing);
}

#[test]
fn state_dir_defaults_to_systemd_state_directory() {
    let text = MINIMAL.replace("state_dir = \"/tmp/x\"", "");
    let s = Settings::from_toml(&text, false, |k| {
        (k == "STATE_DIRECTORY").then(|| "/var/lib/lineship:/x".into())
    })
    .unwrap();
    assert_eq!(s.state_dir, PathBuf::from("/var/lib/lineship"));
}

#[test]
fn tail_max_open_files_is_optional_and_positive() {
    let tail = |extra: &str| {
        load(&format!(
            "{MINIMAL}\n[[input.tail]]\npaths = [\"/x/*.log\"]\n{extra}"
        ))
    };
    assert_eq!(tail("").unwrap().inputs.tail[0].max_open_files, None);
    let t = tail("max_open_files = 100\n").unwrap();
    assert_eq!(t.inputs.tail[0].max_open_files, Some(100));
    let e = format!("{:#}", tail("max_open_files = 0\n").unwrap_err());
    assert!(e.contains("input.tail[0].max_open_files"), "{e}");
}

#[test]
fn several_urls_and_their_errors_name_the_key() {
    let several = MINIMAL.replace(
        "url = \"http://localhost:8086/\"",
        "urls = [\"http://a:8086\", \"https://b/influx\"]\nbalance = \"round_robin\"",
    );
    let s = load(&several).unwrap();
    assert_eq!(s.outputs[0].balance, Balance::RoundRobin);
    let writes: Vec<&str> = s.outputs[0].urls.iter().map(|u| u.write.as_str()).collect();
    assert_eq!(
        writes,
        [
            "http://a:8086/api/v2/write",
            "https://b/influx/api/v2/write"
        ]
    );
    assert_eq!(s.outputs[0].urls[1].ping.as_str(), "https://b/influx/ping");
    assert_eq!(load(MINIMAL).unwrap().outputs[0].balance, Balance::Failover);
    let err = |text: &str| format!("{:#}", load(text).unwrap_err());
    let both = MINIMAL.replace(
        "url = \"http://localhost:8086/\"",
        "url = \"http://a:8086\"\nurls = [\"http://b:8086\"]",
    );
    let e = err(&both);
    assert!(e.contains("output.urls") && e.contains("output.url"), "{e}");
    let e = err(&MINIMAL.replace("url = \"http://localhost:8086/\"", "urls = []"));
    assert!(e.contains("`output.urls`") && e.contains("empty"), "{e}");
    let e = err(&MINIMAL.replace(
        "url = \"http://localhost:8086/\"",
        "urls = [\"http://a:8086\", \"ftp://b\"]",
    ));
    assert!(e.contains("`output.urls[1]`"), "{e}");
    let e = err(&MINIMAL.replace(
        "url = \"http://localhost:8086/\"",
        "urls = [\"http://a:8086\", \"http://a:8086/\"]",
    ));
    assert!(e.contains("`output.urls[1]`") && e.contains("twice"), "{e}");
    let e = err(&MINIMAL.replace(
        "url = \"http://localhost:8086/\"",
        "urls = [\"http://a:8086\"]\nbalance = \"random\"",
    ));
    assert!(e.contains("balance") && e.contains("random"), "{e}");
    let many: Vec<String> = (0..65).map(|i| format!("\"http://h{i}:8086\"")).collect();
    let e = err(&MINIMAL.replace(
        "url = \"http://localhost:8086/\"",
        &format!("urls = [{}]", many.join(", ")),
    ));
    assert!(
        e.contains("`output.urls`") && e.contains("at most 64"),
        "{e}"
    );
    let e = err(&MINIMAL.replace("url = \"http://localhost:8086/\"", ""));
    assert!(
        e.contains("`output.url`") && e.contains("output.urls"),
        "{e}"
    );
}

#[test]
fn a_missing_or_empty_token_file_is_named_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("token");
    let text = MINIMAL.replace("token = \"s3cret\"", &format!("token_file = {missing:?}"));
    let e = format!("{:#}", load(&text).unwrap_err());
    assert!(
        e.contains("`output.token_file`") && e.contains("does not exist"),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "install -m 640 -g lineship /dev/null {}",
            missing.display()
        )),
        "{e}"
    );
    // Empty (as the package installs it): no token yet, which `check` warns about.
    std::fs::write(&missing, "\n").unwrap();
    let s = load(&text).unwrap();
    assert!(s.outputs[0].token.is_empty());
    let w = secret_file_warnings(Path::new("/nonexistent.toml"), &s);
    assert!(
        w.iter()
            .any(|w| w.contains("is empty") && w.contains("write the token into it")),
        "{w:?}"
    );
    // A SIGHUP that finds it empty keeps the current token.
    assert!(read_token_file(&missing).unwrap_err().contains("is empty"));
}

const TWO_OUTPUTS: &str = r#"
state_dir = "/tmp/x"
[output]
url = "http://localhost:8086/"
bucket = "b"
[outputs.lake]
urls = ["http://lake-a:8428", "http://lake-b:8428"]
balance = "shard"
bucket = "raw"
gzip_level = 6
token = "laketoken"
"#;

#[test]
fn named_outputs_and_the_outputs_an_input_names() {
    let s = load(&format!(
        "{TWO_OUTPUTS}[[input.udp]]\nlisten = \"127.0.0.1:8089\"\noutputs = [\"lake\"]\n[[input.tcp]]\nlisten = \"127.0.0.1:8094\"\nbucket = \"own\"\n"
    ))
    .unwrap();
    let names: Vec<&str> = s.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["default", "lake"]);
    assert_eq!(s.outputs[1].key, "outputs.lake");
    assert_eq!(s.outputs[1].balance, Balance::Shard);
    assert_eq!(s.outputs[1].gzip_level, 6);
    assert_eq!(s.outputs[1].token.expose(), "laketoken");
    assert_eq!(s.inputs.udp[0].line.outputs, 0b10);
    // No list: every output; no bucket: each output's own.
    assert_eq!(s.inputs.tcp[0].line.outputs, 0b11);
    assert_eq!(s.inputs.tcp[0].line.bucket, "own");
    assert_eq!(s.inputs.udp[0].line.bucket, "");
    assert_eq!(s.outputs[1].bucket, "raw");
    // Only [outputs.NAME] tables: no default output.
    let only = TWO_OUTPUTS.replace(
        "[output]\nurl = \"http://localhost:8086/\"\nbucket = \"b\"\n",
        "",
    );
    let s = load(&only).unwrap();
    assert_eq!(s.outputs.len(), 1);
    assert_eq!(s.outputs[0].name, "lake");
}

#[test]
fn output_errors_name_the_key() {
    let err = |text: &str| format!("{:#}", load(text).unwrap_err());
    for bad in [
        "Lake",
        "la-ke",
        "1lake",
        "\"l a\"",
        "\"\"",
        "\"lake.x\"",
        "\"../x\"",
        "corrupt",
        "abcdefghijklmnopqrstuvwxyz_0123456",
    ] {
        let e = err(&TWO_OUTPUTS.replace("[outputs.lake]", &format!("[outputs.{bad}]")));
        assert!(
            e.contains("outputs.") && e.contains("simple word"),
            "{bad}: {e}"
        );
    }
    let e = err(&TWO_OUTPUTS.replace("[outputs.lake]", "[outputs.default]"));
    assert!(
        e.contains("`outputs.default`") && e.contains("[output]"),
        "{e}"
    );
    let e = err(&format!(
        "{TWO_OUTPUTS}[[input.udp]]\nlisten = \"127.0.0.1:8089\"\noutputs = [\"default\", \"laek\"]\n"
    ));
    assert!(
        e.contains("`input.udp[0].outputs`")
            && e.contains("\"laek\"")
            && e.contains("default, lake"),
        "{e}"
    );
    let e = err(&format!(
        "{TWO_OUTPUTS}[input.stdin]\nenabled = true\noutputs = []\n"
    ));
    assert!(
        e.contains("`input.stdin.outputs`") && e.contains("empty"),
        "{e}"
    );
    // Keys of a named output are named with its table.
    let e = err(&TWO_OUTPUTS.replace("gzip_level = 6", "gzip_level = 13"));
    assert!(e.contains("`outputs.lake.gzip_level`"), "{e}");
    let e = err(&TWO_OUTPUTS.replace("bucket = \"raw\"\n", ""));
    assert!(e.contains("`outputs.lake.bucket`"), "{e}");
    let e = err(&TWO_OUTPUTS.replace(
        "urls = [\"http://lake-a:8428\", \"http://lake-b:8428\"]",
        "url = \"http://x\"\nurls = [\"http://y\"]",
    ));
    assert!(
        e.contains("`outputs.lake.urls`") && e.contains("outputs.lake.url"),
        "{e}"
    );
    let e = err(&TWO_OUTPUTS.replace(
        "urls = [\"http://lake-a:8428\", \"http://lake-b:8428\"]",
        "urls = []",
    ));
    assert!(
        e.contains("`outputs.lake.urls`") && e.contains("empty"),
        "{e}"
    );
    let e = err(&TWO_OUTPUTS.replace("token = \"laketoken\"", "token = \"a b\""));
    assert!(
        e.contains("`outputs.lake.token`") && !e.contains("a b"),
        "{e}"
    );
    let e = err(&TWO_OUTPUTS.replace("bucket = \"raw\"", "bucket = \"raw\"\nflavour = 1"));
    assert!(e.contains("flavour"), "{e}");
    // Too many lanes: 2 outputs of 64 sharded URLs each.
    let urls: Vec<String> = (0..64).map(|i| format!("\"http://h{i}:1\"")).collect();
    let big = TWO_OUTPUTS.replace(
        "urls = [\"http://lake-a:8428\", \"http://lake-b:8428\"]",
        &format!("urls = [{}]", urls.join(", ")),
    );
    let e = err(&big);
    assert!(
        e.contains("`outputs`") && e.contains("65 delivery lanes"),
        "{e}"
    );
}

#[test]
fn lineship_token_goes_only_to_the_default_output() {
    let no_tokens = TWO_OUTPUTS.replace("token = \"laketoken\"\n", "");
    let s = Settings::from_toml(&no_tokens, false, |k| {
        (k == "LINESHIP_TOKEN").then(|| "envtok".to_owned())
    })
    .unwrap();
    assert_eq!(s.outputs[0].token.expose(), "envtok");
    assert!(s.outputs[1].token.is_empty());
}

#[test]
fn gzip_engine_default_values_and_a_bad_one_names_the_key() {
    use crate::batch::GzipEngine;
    assert_eq!(load(MINIMAL).unwrap().agent.gzip_engine, GzipEngine::Auto);
    let with = |v: &str| load(&format!("{MINIMAL}[agent]\ngzip_engine = {v}\n"));
    for (v, want) in [
        ("\"auto\"", GzipEngine::Auto),
        ("\"libdeflate\"", GzipEngine::Libdeflate),
        ("\"isal\"", GzipEngine::Isal),
    ] {
        assert_eq!(with(v).unwrap().agent.gzip_engine, want, "{v}");
    }
    for bad in ["\"zlib\"", "\"ISAL\"", "1"] {
        let e = format!("{:#}", with(bad).unwrap_err());
        assert!(e.contains("gzip_engine"), "{bad}: {e}");
    }
}

#[test]
fn compress_threads_default_and_range_name_the_key() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The default: a thread per core, at most 4.
    assert_eq!(load(MINIMAL).unwrap().agent.compress_threads, cores.min(4));
    let with = |n: &str| load(&format!("{MINIMAL}[agent]\ncompress_threads = {n}\n"));
    assert_eq!(with("1").unwrap().agent.compress_threads, 1);
    assert_eq!(with("2").unwrap().agent.compress_threads, 2);
    assert_eq!(
        with(&(cores * 4).to_string())
            .unwrap()
            .agent
            .compress_threads,
        cores * 4
    );
    for bad in ["0".to_owned(), (cores * 4 + 1).to_string()] {
        let e = format!("{:#}", with(&bad).unwrap_err());
        assert!(
            e.contains("`agent.compress_threads`") && e.contains("cores"),
            "{bad}: {e}"
        );
    }
}
