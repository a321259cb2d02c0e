//! Runs the public line-protocol v2 corpus through the framer and the normaliser and requires
//! every verdict to match (the acceptance bar in `tests/data/conformance/README.md`, a copy of
//! the corpus kept in the repo so a lone clone's `cargo test` runs it).
//!
//! An input is an error when any of its lines is rejected. The keys in
//! `reject-overrides.json` use reserved tag keys that the v2 decoder accepts but InfluxDB 2.x
//! rejects, so they count as errors. For accepted inputs, every parsed timestamp must equal the
//! expected `time` once the case's precision is applied.

use std::collections::HashSet;
use std::path::PathBuf;

use base64::Engine as _;
use lineship::line::{check_line, normalize_line, Framer, LineOptions, Outcome, Precision};
use serde_json::Value;

const EXPECTED_CASES: usize = 6615;

fn corpus_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/conformance/"
    ))
}

fn read_json(name: &str) -> Value {
    let path = corpus_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()))
}

fn precision_of(s: &str) -> Precision {
    match s {
        "1ns" => Precision::Ns,
        "1us" | "1\u{b5}s" | "1\u{3bc}s" => Precision::Us,
        "1ms" => Precision::Ms,
        "1s" => Precision::S,
        other => panic!("unknown corpus precision {other:?}"),
    }
}

fn input_bytes(input: &Value) -> Vec<u8> {
    match &input["text"] {
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Object(o) => {
            let b64 = o["binary"]
                .as_str()
                .expect("binary input is a base64 string");
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("binary input decodes")
        }
        other => panic!("unexpected input text {other:?}"),
    }
}

/// What lineship made of one input: `Ok(timestamps of the accepted points)` or the first
/// rejection.
fn run(input: &[u8], precision: Precision) -> Result<Vec<Option<i64>>, String> {
    let opts = LineOptions {
        precision,
        max_line_bytes: 1 << 20,
        stamp_missing: false,
    };
    let mut lines: Vec<Result<Vec<u8>, String>> = Vec::new();
    let mut framer = Framer::new(opts.max_line_bytes);
    let mut collect = |r: lineship::line::Framed<'_>| {
        lines.push(
            r.map(<[u8]>::to_vec)
                .map_err(|_| lineship::line::LineError::TooLong.reason().to_string()),
        );
    };
    framer.feed(input, &mut collect);
    framer.finish(&mut collect);

    let mut stamps = Vec::new();
    let mut out = Vec::new();
    for line in lines {
        let line = line?;
        out.clear();
        match normalize_line(&line, &opts, None, &mut out) {
            Outcome::Accepted => {
                // Accepted output is the line itself, byte for byte, plus '\n'.
                let body = &out[..out.len() - 1];
                assert_eq!(body, line.strip_suffix(b"\r").unwrap_or(&line));
                let checked = check_line(body, precision).expect("accepted line re-checks");
                stamps.push(checked.timestamp);
            }
            Outcome::Skipped => assert!(out.is_empty()),
            Outcome::Rejected(e) => {
                assert!(out.is_empty());
                return Err(format!("{} at {:?}", e.reason(), e.offset()));
            }
        }
    }
    Ok(stamps)
}

#[test]
fn corpus_verdicts_match() {
    let corpus = read_json("line-protocol-v2-corpus.json");
    let overrides = read_json("reject-overrides.json");
    let overrides: HashSet<&str> = overrides["keys"]
        .as_array()
        .expect("overrides list")
        .iter()
        .map(|k| k.as_str().expect("override key"))
        .collect();
    assert_eq!(
        overrides.len(),
        11,
        "reject-overrides.json should list 11 keys"
    );

    let cases = corpus["decode"].as_object().expect("decode cases");
    let mut checked = 0;
    let mut overrides_seen = 0;
    let mut mismatches = Vec::new();
    for (key, case) in cases {
        checked += 1;
        let input = &case["input"];
        let precision = precision_of(input["precision"].as_str().expect("precision"));
        let bytes = input_bytes(input);
        let got = run(&bytes, precision);
        let expect_error =
            case["output"].get("error").is_some() || overrides.contains(key.as_str());
        overrides_seen += overrides.contains(key.as_str()) as usize;

        let problem = match (&got, expect_error) {
            (Err(_), true) => None,
            (Ok(_), true) => Some("accepted, corpus rejects".to_string()),
            (Err(e), false) => Some(format!("rejected ({e}), corpus accepts")),
            (Ok(stamps), false) => {
                let results = case["output"]["result"].as_array().expect("result list");
                if results.len() != stamps.len() {
                    Some(format!(
                        "{} points, corpus has {}",
                        stamps.len(),
                        results.len()
                    ))
                } else {
                    results.iter().zip(stamps).find_map(|(r, ts)| {
                        let want = r["time"].as_i64().expect("time");
                        match ts {
                            Some(ts) if ts * precision.nanos_per_unit() != want => Some(format!(
                                "timestamp {ts} ({precision}) but corpus time is {want}"
                            )),
                            _ => None,
                        }
                    })
                }
            }
        };
        if let Some(problem) = problem {
            mismatches.push(format!(
                "{key}: {problem}; input {:?}",
                String::from_utf8_lossy(&bytes)
            ));
        }
    }

    assert_eq!(checked, EXPECTED_CASES, "decode cases read from the corpus");
    assert_eq!(overrides_seen, 11, "override keys found in the corpus");
    println!(
        "{checked} corpus cases checked, {} mismatches",
        mismatches.len()
    );
    assert!(
        mismatches.is_empty(),
        "{} of {checked} corpus verdicts differ; first ones:\n{}",
        mismatches.len(),
        mismatches
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
