//! PLACEHOLDER: replaced by the real validator.
use std::time::SystemTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    #[default]
    Ns,
    Us,
    Ms,
    S,
}
impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Ns => "ns",
            Precision::Us => "us",
            Precision::Ms => "ms",
            Precision::S => "s",
        }
    }
    pub fn nanos_per_unit(self) -> i64 {
        match self {
            Precision::Ns => 1,
            Precision::Us => 1_000,
            Precision::Ms => 1_000_000,
            Precision::S => 1_000_000_000,
        }
    }
    pub fn timestamp(self, t: SystemTime) -> i64 {
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        (d.as_nanos() / self.nanos_per_unit() as u128) as i64
    }
}
impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "ns" => Precision::Ns,
            "us" | "µs" => Precision::Us,
            "ms" => Precision::Ms,
            "s" => Precision::S,
            _ => return Err(format!("unknown precision {s:?}; use ns, us, ms or s")),
        })
    }
}
impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line is longer than max_line_bytes")]
    TooLong,
    #[error("bad line")]
    Bad,
}
impl LineError {
    pub fn reason(self) -> &'static str {
        match self {
            LineError::TooLong => "too_long",
            LineError::Bad => "bad",
        }
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub timestamp: Option<i64>,
}
pub fn check_line(line: &[u8], _precision: Precision) -> Result<Checked, LineError> {
    let s = std::str::from_utf8(line).map_err(|_| LineError::Bad)?;
    let parts: Vec<&str> = s.split(' ').collect();
    match parts.len() {
        2 => Ok(Checked { timestamp: None }),
        3 => Ok(Checked {
            timestamp: Some(parts[2].parse().map_err(|_| LineError::Bad)?),
        }),
        _ => Err(LineError::Bad),
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Skipped,
    Rejected(LineError),
}
#[derive(Debug, Clone, Copy)]
pub struct LineOptions {
    pub precision: Precision,
    pub max_line_bytes: usize,
    pub stamp_missing: bool,
}
pub fn normalize_line(
    line: &[u8],
    opts: &LineOptions,
    stamp: Option<i64>,
    out: &mut Vec<u8>,
) -> Outcome {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(|b| *b == b' ' || *b == b'\t') || line.trim_ascii_start().starts_with(b"#") {
        return Outcome::Skipped;
    }
    if line.len() > opts.max_line_bytes {
        return Outcome::Rejected(LineError::TooLong);
    }
    match check_line(line, opts.precision) {
        Ok(c) => {
            out.extend_from_slice(line);
            if c.timestamp.is_none() && opts.stamp_missing {
                if let Some(ts) = stamp {
                    out.push(b' ');
                    out.extend_from_slice(ts.to_string().as_bytes());
                }
            }
            out.push(b'\n');
            Outcome::Accepted
        }
        Err(e) => Outcome::Rejected(e),
    }
}
pub struct Framer {
    partial: Vec<u8>,
    max: usize,
    discarding: bool,
}
impl Framer {
    pub fn new(max_line_bytes: usize) -> Self {
        Framer {
            partial: Vec::new(),
            max: max_line_bytes,
            discarding: false,
        }
    }
    pub fn feed(&mut self, mut data: &[u8], mut f: impl FnMut(Result<&[u8], LineError>)) {
        while let Some(i) = data.iter().position(|b| *b == b'\n') {
            let (line, rest) = (&data[..i], &data[i + 1..]);
            if self.discarding {
                self.discarding = false;
            } else if self.partial.is_empty() {
                f(Ok(line));
            } else {
                self.partial.extend_from_slice(line);
                let p = std::mem::take(&mut self.partial);
                f(Ok(&p));
                self.partial = p;
                self.partial.clear();
            }
            data = rest;
        }
        if !self.discarding {
            self.partial.extend_from_slice(data);
            if self.partial.len() > self.max + 1 {
                self.partial.clear();
                self.discarding = true;
                f(Err(LineError::TooLong));
            }
        }
    }
    pub fn finish(&mut self, mut f: impl FnMut(Result<&[u8], LineError>)) {
        if !self.discarding && !self.partial.is_empty() {
            f(Ok(&self.partial));
        }
        self.partial.clear();
        self.discarding = false;
    }
    pub fn pending(&self) -> usize {
        self.partial.len()
    }
}
pub fn escape_string_field(raw: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(raw)
}
pub fn escape_tag(raw: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(raw)
}
pub fn escape_measurement(raw: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(raw)
}
