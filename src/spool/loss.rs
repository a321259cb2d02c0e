//! Loss accounting (pure): from the scans of every segment and the cursor, which records and
//! lines were lost to damage, and where.
//!
//! Records are numbered (see [`Seq`]), so a gap between two records read back is exactly what
//! was lost between them, whatever the damage looked like: a record cut short, a region of
//! garbage, a segment zeroed, emptied or removed. The cursor carries the number of the first
//! record to deliver and the numbering reached at the last sync, so damage before the first or
//! after the last surviving record is measured too. Where no numbers exist (version 1 records,
//! a version 1 cursor) each damaged region counts as one record of unknown lines.
//!
//! Invariant: whatever lies before the cursor was delivered and is never counted.

use super::cursor::Cursor;
use super::record::Seq;
use super::SegmentScan;

/// One segment as recovery or inspection found it.
pub struct Found<'a> {
    pub id: u64,
    /// The scan, or why the segment could not be read at all.
    pub scan: Result<&'a SegmentScan, &'a str>,
}

/// Where damage was found, and what it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub segment: u64,
    pub offset: u64,
    pub what: String,
    /// Record bytes were seen here, so without numbers it still counts as one lost record (an
    /// unreadable entry may be no segment of ours at all: only numbers can tell).
    pub record_like: bool,
}

/// Records lost at a place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// The first damage found in the gap; `None` when no damaged bytes were found (records
    /// missing as if a segment file had been removed).
    pub at: Option<Place>,
    pub records: u64,
    /// `None` when it cannot be known.
    pub lines: Option<u64>,
}

/// The losses in `segments` (in id order) after `cursor`. A torn tail of the newest segment
/// (an append interrupted by a crash) is a loss only if the cursor says it had been synced.
pub fn account(segments: &[Found<'_>], cursor: Option<&Cursor>) -> Vec<Loss> {
    let mut acc = Accountant {
        expected: cursor.and_then(|c| c.next),
        damage: Vec::new(),
        losses: Vec::new(),
    };
    let passed = |seg: u64, off: u64| cursor.is_some_and(|c| c.passed(seg, off));
    // The newest segment that could be read: an unreadable entry named like a segment is no
    // reason to take the real newest segment for a finished one.
    let newest = segments.iter().rev().find(|s| s.scan.is_ok()).map(|s| s.id);
    for seg in segments {
        let scan = match seg.scan {
            Ok(scan) => scan,
            Err(why) => {
                if !passed(seg.id, u64::MAX) {
                    acc.damage.push(Place {
                        segment: seg.id,
                        offset: 0,
                        what: format!("unreadable segment ({why})"),
                        record_like: false,
                    });
                }
                continue;
            }
        };
        // Records and damage in offset order.
        let mut damaged = scan.damaged.iter().peekable();
        let mut records = scan.records.iter().peekable();
        loop {
            let next_damage = damaged.peek().map(|d| d.0);
            let next_record = records.peek().map(|r| r.offset);
            let damage_first = match (next_damage, next_record) {
                (None, None) => break,
                (Some(d), Some(r)) => d < r,
                (d, _) => d.is_some(),
            };
            if damage_first {
                let (offset, damage, bytes) = damaged.next().expect("peeked");
                if !passed(seg.id, *offset) {
                    acc.damage.push(Place {
                        segment: seg.id,
                        offset: *offset,
                        what: format!("damaged record ({damage:?}, {bytes} bytes)"),
                        record_like: true,
                    });
                }
            } else {
                let r = records.next().expect("peeked");
                if !passed(seg.id, r.offset) {
                    acc.record(r.seq, r.lines);
                }
            }
        }
        let real_torn = scan
            .torn_tail
            .filter(|t| !scan.damaged.iter().any(|(o, _, _)| o == t));
        if let Some(t) = real_torn.filter(|t| !passed(seg.id, *t)) {
            if Some(seg.id) != newest {
                acc.damage.push(Place {
                    segment: seg.id,
                    offset: t,
                    what: "record cut short in a finished segment".into(),
                    record_like: true,
                });
            } else if cursor.and_then(|c| c.end).is_some() {
                // A loss only if the numbering says it had been synced (see `finish`);
                // without numbers it is taken for an append a crash interrupted.
                acc.damage.push(Place {
                    segment: seg.id,
                    offset: t,
                    what: "record cut short".into(),
                    record_like: true,
                });
            }
        }
    }
    acc.close_gap(cursor.and_then(|c| c.end));
    acc.losses
}

struct Accountant {
    /// The number the next record should have, when known.
    expected: Option<Seq>,
    /// Damage seen since the last record.
    damage: Vec<Place>,
    losses: Vec<Loss>,
}

impl Accountant {
    fn record(&mut self, seq: Option<Seq>, lines: u32) {
        self.close_gap(seq);
        self.expected = seq.map(|s| s.after(lines));
    }

    /// A record numbered `found` (or the end of the spool) follows the damage seen since the
    /// last one.
    fn close_gap(&mut self, found: Option<Seq>) {
        let damage = std::mem::take(&mut self.damage);
        match (self.expected, found) {
            (Some(e), Some(f)) => {
                if f.record > e.record {
                    self.losses.push(Loss {
                        at: damage.into_iter().next(),
                        records: f.record - e.record,
                        lines: Some(f.line.saturating_sub(e.line)),
                    });
                }
                // Otherwise the damaged bytes held no record of ours (or the numbering
                // restarted): nothing lost.
            }
            _ => self
                .losses
                .extend(damage.into_iter().filter(|d| d.record_like).map(|d| Loss {
                    at: Some(d),
                    records: 1,
                    lines: None,
                })),
        }
    }
}
