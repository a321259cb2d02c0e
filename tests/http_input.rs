//! The HTTP write listener with the real binary against the fake InfluxDB: every endpoint,
//! auth form and precision, gzip, partial writes (400 naming each rejected line, the good
//! ones delivered byte for byte), 413, 503 under pushback, bad requests, slow clients, and
//! `ack = "durable"` answering only once the lines are delivered.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{toml_path, write_config, Daemon, FakeInflux, Reply};

const T: Duration = Duration::from_secs(30);

/// A config with one `[[input.http]]` on a port the kernel picks, holding `http`, plus
/// `extra` TOML (further sections).
fn config(dir: &Path, url: &str, http: &str, extra: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"
state_dir = {state}
[agent]
flush_interval = "20ms"
shutdown_timeout = "3s"
[output]
url = "{url}"
bucket = "default-bucket"
token = "upstream-token"
initial_backoff = "10ms"
max_backoff = "100ms"
{extra}
[[input.http]]
listen = "127.0.0.1:0"
{http}
"#,
            state = toml_path(&dir.join("state")),
        ),
    )
}

fn start(cfg: &Path) -> (Daemon, SocketAddr) {
    let mut d = Daemon::start(cfg);
    let addr = d
        .log_field("lineship started", "http input listening", "listen")
        .parse()
        .unwrap();
    (d, addr)
}

/// A plain HTTP/1.1 request on a new connection: (status, headers, body).
fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, head.to_owned(), body.to_owned())
}

fn post(addr: SocketAddr, target: &str, body: &[u8]) -> (u16, String, String) {
    request(addr, "POST", target, &[], body)
}

fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    common::wait_until(T, &mut f)
}

#[test]
fn every_endpoint_and_precision_reaches_its_destination_byte_for_byte() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let (d, addr) = start(&config(dir.path(), &fake.url(), "", ""));
    let gz = common::gzip(b"m,api=v2 v=1i 1\n");
    // Two gzip members in one body (RFC 1952 allows it; some clients append): both count.
    let mut two_members = common::gzip(b"m,api=gz1 v=5i 5\n");
    two_members.extend(common::gzip(b"m,api=gz2 v=6i 6\n"));
    // (request target, body, headers, bucket and precision expected upstream)
    type Case<'a> = (String, Vec<u8>, Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "/api/v2/write?org=o&bucket=b2&precision=s".into(),
            gz,
            vec![("Content-Encoding", "gzip")],
            "b2",
            "s",
        ),
        (
            "/write?db=d&rp=r&precision=ms".into(),
            b"m,api=v1 v=2i 2\n".to_vec(),
            vec![],
            "d/r",
            "ms",
        ),
        (
            "/write?db=d&precision=u".into(),
            b"m,api=v1u v=3i 3\n".to_vec(),
            vec![],
            "d",
            "us",
        ),
        (
            "/api/v3/write_lp?db=d3&precision=nanosecond".into(),
            b"m,api=v3 v=4i 4".to_vec(),
            vec![],
            "d3",
            "ns",
        ),
        (
            "/api/v2/write?org=o&bucket=b2m&precision=s".into(),
            two_members,
            vec![("Content-Encoding", "gzip")],
            "b2m",
            "s",
        ),
    ];
    for (target, body, headers, bucket, precision) in &cases {
        let (status, _, text) = request(addr, "POST", target, headers, body);
        assert_eq!(status, 204, "{target}: {text}");
        assert!(
            wait_until(|| fake
                .requests()
                .iter()
                .any(|r| r.accepted() && r.param("bucket") == Some(bucket))),
            "{target}: nothing arrived for bucket {bucket}"
        );
        let r = fake
            .requests()
            .into_iter()
            .find(|r| r.accepted() && r.param("bucket") == Some(bucket))
            .unwrap();
        assert_eq!(r.param("precision"), Some(*precision), "{target}");
        assert_eq!(
            r.header("authorization"),
            Some("Token upstream-token"),
            "the output's own token goes upstream"
        );
    }
    let lines = fake.accepted_lines();
    for want in [
        "m,api=v2 v=1i 1",
        "m,api=v1 v=2i 2",
        "m,api=v1u v=3i 3",
        "m,api=v3 v=4i 4",
        "m,api=gz1 v=5i 5",
        "m,api=gz2 v=6i 6",
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "{want} missing from {lines:?}"
        );
    }
    // /ping and /health, as client libraries call them before writing.
    let (status, head, _) = request(addr, "GET", "/ping", &[], b"");
    assert_eq!(status, 204);
    assert!(
        head.to_ascii_lowercase()
            .contains("x-influxdb-version: lineship-"),
        "{head}"
    );
    let (status, _, body) = request(addr, "GET", "/health", &[], b"");
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "pass");
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("http summary"), "{}", out.stderr);
}

#[test]
fn tokens_are_checked_in_every_form_and_never_forwarded() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("tokens");
    std::fs::write(&token_file, "# clients\nfile-token\n").unwrap();
    let http = format!(
        "tokens = [\"client-secret\"]\ntoken_file = {}",
        toml_path(&token_file)
    );
    let (d, addr) = start(&config(dir.path(), &fake.url(), &http, ""));
    let w = "/api/v2/write?bucket=b";
    let (status, _, body) = post(addr, w, b"m v=1i 1\n");
    assert_eq!(status, 401, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["code"], "unauthorized");
    let wrong = request(
        addr,
        "POST",
        w,
        &[("Authorization", "Token nope")],
        b"m v=1i 1\n",
    );
    assert_eq!(wrong.0, 401);
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "u:client-secret"
        )
    );
    let forms: Vec<(String, Vec<(&str, String)>)> = vec![
        (
            w.into(),
            vec![("Authorization", "Token client-secret".into())],
        ),
        (
            w.into(),
            vec![("Authorization", "Bearer file-token".into())],
        ),
        (w.into(), vec![("Authorization", basic)]),
        ("/write?db=b&u=x&p=client-secret".into(), vec![]),
    ];
    for (i, (target, headers)) in forms.iter().enumerate() {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let body = format!("m v={i}i {i}\n");
        let (status, _, text) = request(addr, "POST", target, &h, body.as_bytes());
        assert_eq!(status, 204, "{target} {headers:?}: {text}");
    }
    assert!(wait_until(|| fake.accepted_line_count() == forms.len()));
    for r in fake.requests() {
        let auth = r.header("authorization").unwrap_or("");
        assert_eq!(auth, "Token upstream-token");
    }
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for secret in ["client-secret", "file-token"] {
        assert!(!out.stderr.contains(secret), "a client token was logged");
    }
}

#[test]
fn a_partial_write_names_each_rejected_line_and_delivers_the_rest_byte_for_byte() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let (d, addr) = start(&config(dir.path(), &fake.url(), "", ""));
    let body =
        b"m,t=a v=1i 1\nno fields here\nm,t=b  v=2i,s=\"x y\" 2\nm v=bogus 3\nm,t=c v=3i 4\n";
    let (status, _, text) = post(addr, "/api/v2/write?bucket=b", body);
    assert_eq!(status, 400, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["code"], "invalid");
    let data = answer["data"].as_array().unwrap();
    let numbers: Vec<u64> = data
        .iter()
        .map(|r| r["line_number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [2, 4], "{text}");
    assert_eq!(data[0]["original_line"], "no fields here");
    assert!(
        data[1]["error_message"]
            .as_str()
            .unwrap()
            .contains("field value"),
        "{text}"
    );
    assert!(
        answer["message"].as_str().unwrap().contains("line 2"),
        "{text}"
    );
    // The good lines were accepted (and delivered before the answer came).
    assert_eq!(
        fake.accepted_lines(),
        ["m,t=a v=1i 1", "m,t=b  v=2i,s=\"x y\" 2", "m,t=c v=3i 4"]
    );
    // Only bad lines: 400 too, nothing sent.
    let (status, _, text) = post(addr, "/api/v2/write?bucket=b", b"bad\n");
    assert_eq!(status, 400, "{text}");
    d.terminate();
    assert_eq!(d.wait(T).code, Some(0));
    assert_eq!(fake.accepted_line_count(), 3);
}

#[test]
fn bad_requests_are_answered_with_a_clear_reason() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let (d, addr) = start(&config(
        dir.path(),
        &fake.url(),
        "max_body_size = \"1MiB\"",
        "",
    ));
    let check = |(status, _, body): (u16, String, String), want: u16, says: &str| {
        assert_eq!(status, want, "{body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
        assert!(
            v["message"].as_str().unwrap().contains(says),
            "{want}: {body} should say {says:?}"
        );
    };
    check(post(addr, "/api/v2/write?bucket=b", b""), 400, "empty");
    check(
        post(addr, "/api/v2/write?org=o", b"m v=1i 1\n"),
        400,
        "bucket=",
    );
    check(
        post(addr, "/api/v2/write?bucket=b&precision=h", b"m v=1i 1\n"),
        400,
        "\"h\"",
    );
    check(
        post(addr, "/api/v3/write_lp?db=d", b"m v=1i 1\n"),
        400,
        "precision=auto",
    );
    check(post(addr, "/nowhere", b"m v=1i 1\n"), 404, "no endpoint");
    check(
        request(addr, "GET", "/api/v2/write", &[], b""),
        405,
        "takes POST",
    );
    check(
        request(
            addr,
            "POST",
            "/api/v2/write?bucket=b",
            &[("Content-Encoding", "gzip")],
            b"not gzip at all",
        ),
        400,
        "gzip",
    );
    check(
        post(addr, "/api/v2/write?bucket=b", &vec![b'x'; 2 << 20]),
        413,
        "max_body_size",
    );
    // A gzip bomb: 16 MiB of zeros in far less than the cap, stopped at the cap once inflated.
    let bomb = common::gzip(&vec![b'0'; 16 << 20]);
    assert!(bomb.len() < 512 << 10, "{} bytes", bomb.len());
    check(
        request(
            addr,
            "POST",
            "/api/v2/write?bucket=b",
            &[("Content-Encoding", "gzip")],
            &bomb,
        ),
        413,
        "after decompression",
    );
    // Garbage instead of HTTP: the connection is closed, the listener lives on.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"\x16\x03\x01 not http at all\r\n\r\n")
        .unwrap();
    let mut sink = Vec::new();
    s.set_read_timeout(Some(T)).unwrap();
    let _ = s.read_to_end(&mut sink);
    assert_eq!(post(addr, "/api/v2/write?bucket=b", b"m v=1i 1\n").0, 204);
    assert_eq!(fake.accepted_lines(), ["m v=1i 1"]);
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0));
    // Logged with the peer, rate-limited: one line for the whole burst.
    let refused: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("http request refused"))
        .collect();
    assert_eq!(refused.len(), 1, "{}", out.stderr);
    assert!(refused[0].contains("peer=127.0.0.1:"), "{}", refused[0]);
}

#[test]
fn slow_clients_are_cut_off_after_read_timeout() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let (d, addr) = start(&config(
        dir.path(),
        &fake.url(),
        "read_timeout = \"1s\"",
        "",
    ));
    // Headers that never end.
    let mut slow_head = TcpStream::connect(addr).unwrap();
    slow_head
        .write_all(b"POST /api/v2/write?bucket=b HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A body that never comes.
    let mut slow_body = TcpStream::connect(addr).unwrap();
    slow_body
        .write_all(
            b"POST /api/v2/write?bucket=b HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nm v=1",
        )
        .unwrap();
    let t = Instant::now();
    for s in [&mut slow_head, &mut slow_body] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(got.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    // A keep-alive connection left idle after its request does not hold its slot for ever.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let _ = idle.read_to_end(&mut got);
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 204"));
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "an idle keep-alive connection stayed open {:?}",
        t.elapsed()
    );
    assert_eq!(post(addr, "/api/v2/write?bucket=b", b"m v=1i 1\n").0, 204);
    d.terminate();
    assert_eq!(d.wait(T).code, Some(0));
    assert_eq!(fake.accepted_lines(), ["m v=1i 1"]);
}

/// `ack = "durable"`: while the server fails and the spool cannot take more, writes are
/// answered 503 with Retry-After (the client keeps the data); every write answered 204 is
/// delivered once the server is back.
#[test]
fn writes_get_503_under_pushback_and_every_204_is_delivered() {
    let fake = FakeInflux::start().default_reply(Reply::status(503));
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[spool]
max_size = "1MiB"
when_full = "block"
"#;
    let cfg = config(dir.path(), &fake.url(), "ack_timeout = \"1s\"", extra);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[output]", "[output]\nmemory_limit = \"1MiB\"");
    std::fs::write(&cfg, text).unwrap();
    let (d, addr) = start(&cfg);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut retry_after = false;
    for req in 0..200u64 {
        let mut body = Vec::new();
        for i in 0..2000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            writeln!(
                body,
                "m r=\"{x:016x}{:016x}\" {}",
                x.rotate_left(21),
                req * 2000 + i
            )
            .unwrap();
        }
        let (status, head, text) = post(addr, "/api/v2/write?bucket=b", &body);
        match status {
            204 => accepted.push(req),
            503 => {
                refused += 1;
                retry_after |= head.to_ascii_lowercase().contains("retry-after: 1");
                if refused >= 3 {
                    break;
                }
            }
            other => panic!("{other}: {text}"),
        }
    }
    assert!(
        refused >= 3,
        "the pipeline never pushed back ({} accepted)",
        accepted.len()
    );
    assert!(retry_after, "503 carries Retry-After");
    fake.set_default_reply(Reply::status(204));
    // Every line of every write that got 204 arrives (lines of refused writes may arrive too:
    // part of a request may have been queued before it was refused).
    let delivered = || {
        let mut per_request: std::collections::BTreeMap<u64, std::collections::BTreeSet<u64>> =
            Default::default();
        for l in fake.accepted_lines() {
            let seq: u64 = l.rsplit(' ').next().unwrap().parse().unwrap();
            per_request.entry(seq / 2000).or_default().insert(seq);
        }
        accepted
            .iter()
            .filter(|r| per_request.get(r).map_or(0, |s| s.len()) == 2000)
            .count()
    };
    assert!(
        common::wait_until(Duration::from_secs(60), || delivered() == accepted.len()),
        "{} of {} acknowledged writes arrived whole",
        delivered(),
        accepted.len()
    );
    d.terminate();
    assert_eq!(d.wait(T).code, Some(0));
}

/// With `ack = "durable"` the 204 waits for delivery (here the server answers after 300 ms);
/// with `ack = "queued"` it comes at once.
#[test]
fn durable_answers_wait_for_delivery_and_queued_ones_do_not() {
    for (ack, waits) in [("durable", true), ("queued", false)] {
        let fake = FakeInflux::start();
        fake.set_response_delay(Duration::from_millis(300));
        let dir = tempfile::tempdir().unwrap();
        let (d, addr) = start(&config(
            dir.path(),
            &fake.url(),
            &format!("ack = \"{ack}\""),
            "",
        ));
        let t = Instant::now();
        assert_eq!(post(addr, "/api/v2/write?bucket=b", b"m v=1i 1\n").0, 204);
        let took = t.elapsed();
        if waits {
            assert!(
                took >= Duration::from_millis(300),
                "{ack}: answered after {took:?}"
            );
            assert_eq!(fake.accepted_line_count(), 1, "delivered before the answer");
        } else {
            assert!(
                took < Duration::from_millis(300),
                "{ack}: answered after {took:?}"
            );
        }
        d.terminate();
        assert_eq!(d.wait(T).code, Some(0));
    }
}
