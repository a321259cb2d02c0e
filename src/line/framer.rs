//! Framing: [`Framer`] splits a byte stream into lines across arbitrary read boundaries. A
//! `"` string field value may hold raw newlines, so the line-protocol framer follows a line's
//! structure (the `Scan` state machine) just far enough to know whether a `\n` ends it;
//! [`Framer::raw`] frames plain text, where every `\n` does.
//!
//! Invariants: feeding a stream whole or in pieces yields the same lines and errors; lines
//! lying wholly inside one read are borrowed, not copied; memory per framer is bounded by
//! `max_line_bytes + 1`, and an overlong line is reported once.

use memchr::memchr;

use super::class::{self, find_byte, skip_class, MEAS};

/// Where the framer is inside the current line. Only string field values can hold a raw `\n`,
/// so this follows the line's structure just far enough to know when one is open. As soon as
/// the line is known to be malformed (`Tail`), quotes stop mattering and the next `\n` ends
/// it, so a bad line swallows as little of its neighbours as possible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Scan {
    /// At the start of a line, possibly after spaces.
    Start,
    /// In the measurement or tag set.
    Head,
    HeadEsc,
    /// In the spaces between the tag set and the field set.
    FieldWs,
    /// Right after a ',' in the field set.
    KeyStart,
    Key,
    KeyEsc,
    /// Right after a field key's '='.
    ValueStart,
    Value,
    StrEsc,
    AfterStr,
    // The states from here on are left by searching rather than byte by byte.
    Str,
    /// Timestamp, comment, or a line already known to be malformed: only `\n` matters.
    Tail,
}

const SCAN_STATES: [Scan; 13] = [
    Scan::Start,
    Scan::Head,
    Scan::HeadEsc,
    Scan::FieldWs,
    Scan::KeyStart,
    Scan::Key,
    Scan::KeyEsc,
    Scan::ValueStart,
    Scan::Value,
    Scan::StrEsc,
    Scan::AfterStr,
    Scan::Str,
    Scan::Tail,
];

/// Marks "this `\n` ends the line" in the transition table.
const LINE_END: u8 = 0xff;

/// `SCAN_NEXT[state][byte]`: one lookup per byte while a line with quotes is being framed.
static SCAN_NEXT: [[u8; 256]; 13] = build_scan_next();

const fn scan_step(state: Scan, b: u8) -> Option<Scan> {
    use Scan::*;
    let ctrl = b < 0x20 || b == 0x7f;
    if b == b'\n' && !matches!(state, Str | StrEsc) {
        return None;
    }
    Some(match state {
        Start => match b {
            b' ' => Start,
            b'#' => Tail,
            b'\\' => HeadEsc,
            _ if ctrl => Tail,
            _ => Head,
        },
        Head => match b {
            b' ' => FieldWs,
            b'\\' => HeadEsc,
            _ if ctrl => Tail,
            _ => Head,
        },
        HeadEsc => match b {
            b'\\' => HeadEsc,
            _ if ctrl => Tail,
            _ => Head,
        },
        FieldWs => match b {
            b' ' => FieldWs,
            b'\\' => KeyEsc,
            b'=' | b',' => Tail,
            _ if ctrl => Tail,
            _ => Key,
        },
        KeyStart => match b {
            b'\\' => KeyEsc,
            b' ' | b'=' | b',' => Tail,
            _ if ctrl => Tail,
            _ => Key,
        },
        Key => match b {
            b'=' => ValueStart,
            b'\\' => KeyEsc,
            b' ' | b',' => Tail,
            _ if ctrl => Tail,
            _ => Key,
        },
        KeyEsc => match b {
            b'\\' => KeyEsc,
            _ if ctrl => Tail,
            _ => Key,
        },
        ValueStart => match b {
            b'"' => Str,
            b' ' | b',' => Tail,
            _ if ctrl => Tail,
            _ => Value,
        },
        Value => match b {
            b',' => KeyStart,
            b' ' => Tail,
            _ if ctrl => Tail,
            _ => Value,
        },
        Str => match b {
            b'"' => AfterStr,
            b'\\' => StrEsc,
            _ => Str,
        },
        StrEsc => Str,
        AfterStr => match b {
            b',' => KeyStart,
            _ => Tail,
        },
        Tail => Tail,
    })
}

const fn build_scan_next() -> [[u8; 256]; 13] {
    let mut t = [[0u8; 256]; 13];
    let mut s = 0;
    while s < SCAN_STATES.len() {
        let mut b = 0;
        while b < 256 {
            t[s][b] = match scan_step(SCAN_STATES[s], b as u8) {
                Some(next) => next as u8,
                None => LINE_END,
            };
            b += 1;
        }
        s += 1;
    }
    t
}

impl Scan {
    /// Finds the `\n` that ends the current line in `bytes`, updating the state; `None` if the
    /// line goes on past `bytes`. On `Some`, the state is reset for the next line.
    #[inline]
    fn find_end(&mut self, bytes: &[u8]) -> Option<usize> {
        if *self == Scan::Start {
            // Fast path: a newline before any quote ends the line, as no string can be open.
            let k = find_byte(bytes, 0, b'\n', b'"');
            if k < bytes.len() && bytes[k] == b'\n' {
                return Some(k);
            }
            // A quote, or the end of the bytes: the state must follow the structure.
        }
        self.walk(bytes)
    }

    fn walk(&mut self, bytes: &[u8]) -> Option<usize> {
        const HEAD: u8 = Scan::Head as u8;
        const KEY: u8 = Scan::Key as u8;
        const VALUE: u8 = Scan::Value as u8;
        const STR: u8 = Scan::Str as u8;
        const TAIL: u8 = Scan::Tail as u8;
        let mut state = *self as u8;
        let mut i = 0;
        loop {
            // Jump over the bytes that cannot change the state.
            i = match state {
                HEAD => skip_class(bytes, i, MEAS),
                KEY | VALUE => skip_class(bytes, i, class::KEY),
                STR => find_byte(bytes, i, b'"', b'\\'),
                TAIL => find_byte(bytes, i, b'\n', b'\n'),
                _ => i,
            };
            let Some(&b) = bytes.get(i) else {
                *self = SCAN_STATES[state as usize];
                return None;
            };
            state = SCAN_NEXT[state as usize][b as usize];
            if state == LINE_END {
                *self = Scan::Start;
                return Some(i);
            }
            i += 1;
        }
    }
}

/// Splits a byte stream into lines across arbitrary read boundaries, bounded in memory.
///
/// A line ends at a `\n` that is not inside a `"` string field value. A line longer than
/// `max_line_bytes + 1` bytes (room for a CR) is reported once as `Err(TooLong)`, wherever the
/// read boundaries fall, and the stream resynchronises at the first raw `\n` after the limit:
/// an unterminated quote can therefore cost at most about `max_line_bytes` of what follows it.
/// (Inputs re-split an invalid multi-line result on raw `\n`, so within that limit the lines
/// after an unterminated quote are still judged one by one.)
///
/// [`Framer::raw`] frames plain text (`format = "text"`): every `\n` ends a line.
#[derive(Debug)]
pub struct Framer {
    /// The start of a line that spans feeds; never longer than `max_line_bytes + 2`.
    partial: Vec<u8>,
    max_line_bytes: usize,
    scan: Scan,
    /// Plain text: quotes mean nothing.
    raw: bool,
    /// Dropping the rest of an overlong line, up to the next `\n`.
    discarding: bool,
}

/// What the framer yields: a line (without its `\n`), or the start of one that was too long.
pub type Framed<'a> = Result<&'a [u8], TooLong<'a>>;

/// A line longer than `max_line_bytes`: its first `max_line_bytes` bytes (for the warning and
/// the dead-letter copy); the rest was dropped unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong<'a>(pub &'a [u8]);

impl Framer {
    pub fn new(max_line_bytes: usize) -> Self {
        Framer {
            partial: Vec::new(),
            max_line_bytes,
            scan: Scan::Start,
            raw: false,
            discarding: false,
        }
    }

    /// A framer for plain text lines, where a `\n` inside quotes ends the line too.
    pub fn raw(max_line_bytes: usize) -> Self {
        Framer {
            raw: true,
            ..Framer::new(max_line_bytes)
        }
    }

    /// Feeds the next bytes of the stream. For each complete line (without its `\n`) calls
    /// `f(Ok(line))`; lines lying wholly inside `data` are borrowed from it, only a line that
    /// spans feeds is copied. An overlong line gives one `f(Err(TooLong(start)))`.
    pub fn feed(&mut self, data: &[u8], mut f: impl FnMut(Framed<'_>)) {
        // A line may hold at most max+1 bytes, so looking at max+2 without finding its end
        // proves it too long.
        let limit = self.max_line_bytes.saturating_add(2);
        let mut pos = 0;
        while pos < data.len() {
            if self.discarding {
                match memchr(b'\n', &data[pos..]) {
                    Some(k) => {
                        pos += k + 1;
                        self.discarding = false;
                    }
                    None => return,
                }
                continue;
            }
            let room = limit - self.partial.len();
            let window_end = data.len().min(pos.saturating_add(room));
            let window = &data[pos..window_end];
            let end = if self.raw {
                memchr(b'\n', window)
            } else {
                self.scan.find_end(window)
            };
            match end {
                Some(k) => {
                    if self.partial.is_empty() {
                        f(Ok(&data[pos..pos + k]));
                    } else {
                        self.partial.extend_from_slice(&data[pos..pos + k]);
                        f(Ok(&self.partial));
                        self.partial.clear();
                    }
                    pos += k + 1;
                }
                None if window_end - pos == room => {
                    let keep = self.max_line_bytes;
                    if self.partial.is_empty() {
                        f(Err(TooLong(&window[..keep.min(window.len())])));
                    } else {
                        let need = keep.saturating_sub(self.partial.len()).min(window.len());
                        self.partial.extend_from_slice(&window[..need]);
                        f(Err(TooLong(&self.partial[..keep.min(self.partial.len())])));
                    }
                    self.partial.clear();
                    self.scan = Scan::Start;
                    self.discarding = true;
                    pos = window_end;
                }
                None => {
                    self.partial.extend_from_slice(&data[pos..]);
                    pos = data.len();
                }
            }
        }
    }

    /// End of stream: a final line without `\n` is emitted (if non-empty). The framer is then
    /// ready for a new stream.
    pub fn finish(&mut self, mut f: impl FnMut(Framed<'_>)) {
        if !self.discarding && !self.partial.is_empty() {
            f(Ok(&self.partial));
        }
        self.partial.clear();
        self.scan = Scan::Start;
        self.discarding = false;
    }

    /// End of a stream that was cut off (a connection closed mid-line): the incomplete last
    /// line, if any, is handed to `f` instead of being emitted as a line (an overlong one being
    /// discarded was reported already). The framer is then ready for a new stream.
    pub fn abandon(&mut self, f: impl FnOnce(&[u8])) {
        if !self.discarding && !self.partial.is_empty() {
            f(&self.partial);
        }
        self.partial.clear();
        self.scan = Scan::Start;
        self.discarding = false;
    }

    /// Bytes currently held for an incomplete line.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }
}
