//! Whole lines of a body: the longest prefix that fits a limit, and halves by line count.

/// The longest prefix of whole lines of `data` holding at most `max_lines` lines and
/// `max_bytes` bytes: (bytes, lines). `lines` is how many lines `data` holds; when that differs
/// from its count of `\n` bytes, some line carries a newline inside a quoted string value, and
/// line ends are found with the framer (rare, and only when a chunk must be split).
pub(super) fn fitting_prefix(
    data: &[u8],
    lines: u32,
    max_lines: usize,
    max_bytes: usize,
) -> (usize, u32) {
    let mut end = 0;
    let mut taken = 0u32;
    let mut take = |line_end: usize| {
        if taken as usize >= max_lines || line_end > max_bytes {
            return false;
        }
        end = line_end;
        taken += 1;
        true
    };
    if memchr::memchr_iter(b'\n', data).count() == lines as usize {
        for i in memchr::memchr_iter(b'\n', data) {
            if !take(i + 1) {
                break;
            }
        }
    } else {
        let mut framer = crate::line::Framer::new(usize::MAX / 4);
        let base = data.as_ptr() as usize;
        let mut ends = Vec::new();
        framer.feed(data, |l| {
            if let Ok(l) = l {
                ends.push(l.as_ptr() as usize - base + l.len() + 1);
            }
        });
        for e in ends {
            if !take(e) {
                break;
            }
        }
    }
    (end, taken)
}

/// Some whole lines and their count.
pub type Lines<'a> = (&'a [u8], u32);

/// Splits the lines of `data` into two halves by line count (both non-empty when `lines >= 2`).
pub fn split_lines(data: &[u8], lines: u32) -> (Lines<'_>, Lines<'_>) {
    let half = lines / 2;
    let (at, _) = fitting_prefix(data, lines, half as usize, usize::MAX);
    ((&data[..at], half), (&data[at..], lines - half))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_lines_halves() {
        let ((a, na), (b, nb)) = split_lines(b"1\n2\n3\n", 3);
        assert_eq!((a, na, b, nb), (&b"1\n"[..], 1, &b"2\n3\n"[..], 2));
    }
}
