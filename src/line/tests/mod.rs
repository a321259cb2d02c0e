//! Tests of the line module, one file per concept (the validator's verdicts, normalising,
//! framing, escaping, and the properties that hold them together, the fast path's agreement
//! with the full validator among them). The helpers here are shared by those files.

use super::*;

mod check;
mod escape;
mod framer;
mod normalize;
mod props;

fn ok(line: &str) -> Option<i64> {
    match check_line(line.as_bytes(), Precision::Ns) {
        Ok(c) => c.timestamp,
        Err(e) => panic!(
            "{line:?} rejected: {e} ({}) at {:?}",
            e.reason(),
            e.offset()
        ),
    }
}

fn err(line: &str) -> &'static str {
    err_bytes(line.as_bytes())
}

fn err_bytes(line: &[u8]) -> &'static str {
    match check_line(line, Precision::Ns) {
        Ok(c) => panic!("{:?} accepted ({c:?})", String::from_utf8_lossy(line)),
        Err(e) => e.reason(),
    }
}

fn opts(max_line_bytes: usize, stamp_missing: bool) -> LineOptions {
    LineOptions {
        precision: Precision::Ns,
        max_line_bytes,
        stamp_missing,
    }
}

fn normalize(line: &[u8], o: &LineOptions, stamp: Option<i64>) -> (Outcome, Vec<u8>) {
    let mut out = Vec::new();
    let outcome = normalize_line(line, o, stamp, &mut out);
    (outcome, out)
}

type Framed = Vec<Result<Vec<u8>, LineError>>;

/// Feeds `data` cut at `cuts` (sorted, deduplicated here), then finishes.
fn frame(data: &[u8], max: usize, cuts: &[usize]) -> Framed {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(data.len())).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut framer = Framer::new(max);
    let mut lines = Vec::new();
    let mut push = |r: super::Framed<'_>| {
        if let Err(TooLong(start)) = r {
            assert!(
                start.len() <= max,
                "the start of an overlong line is capped"
            );
        }
        lines.push(r.map(<[u8]>::to_vec).map_err(|_| LineError::TooLong));
    };
    let mut start = 0;
    for cut in cuts.into_iter().chain([data.len()]) {
        framer.feed(&data[start..cut], &mut push);
        assert!(framer.pending() <= max.saturating_add(1));
        start = cut;
    }
    framer.finish(&mut push);
    assert_eq!(framer.pending(), 0);
    lines
}

fn oks(lines: &[&str]) -> Framed {
    lines.iter().map(|l| Ok(l.as_bytes().to_vec())).collect()
}
