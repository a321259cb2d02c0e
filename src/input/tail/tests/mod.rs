//! Unit tests of the tailer, driven step by step without threads or timers.
//!
//! - `model.rs`: model-based tests: random sequences of writer actions ([`Action`]) checked
//!   against a model of the lines appended.
//! - `harness.rs`: the [`Harness`] the model and the other tests run on: real files, a fake
//!   clock and a fake pipeline that delivers chunks out of order.
//! - `checkpoint.rs`: acks and the checkpoint; `rotation.rs`: rotated files.
//! - This file: the writer actions and the helpers the tests share (also with
//!   `tailer/turns_tests.rs`: [`lp_intake`]).

mod checkpoint;
mod harness;
mod model;
mod rotation;

use harness::Harness;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{AckInbox, Config, Store, Tailer};
use crate::batch::Chunk;
use crate::config::{InputFormat, LineSettings};
use crate::input::Intake;
use crate::line::Precision;
use crate::reject::DeadLetter;
use crate::telemetry::InputStats;

const GRACE: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
enum Action {
    /// Complete lines appended to a stream's current file.
    Append {
        stream: usize,
        lines: u8,
    },
    /// The first bytes of a line, completed by the stream's next append.
    AppendPartial {
        stream: usize,
    },
    /// logrotate: rename the live file (after the tailer scanned at least once since it was
    /// created); the writer keeps writing to it until `Reopen`.
    /// `matched`: the new name still matches the glob.
    Rotate {
        stream: usize,
        matched: bool,
    },
    /// The writer reopens its path (a new file), after finishing a partial line.
    Reopen {
        stream: usize,
    },
    /// logrotate's copytruncate, after the tailer caught up (lines in flight at the moment of
    /// truncation are lost by the method itself).
    CopyTruncate {
        stream: usize,
    },
    /// Delete a rotated file once it was shipped.
    Delete {
        which: usize,
    },
    Step {
        rescan: bool,
        all: bool,
    },
    /// The pipeline delivers some chunks, in any order.
    Deliver {
        pick: usize,
        count: u8,
    },
    /// Much time passes (writers reopen first, as a writer signalled by logrotate does).
    Sleep,
    /// kill -9: chunks in flight are lost, the tailer restarts from its checkpoint.
    Crash,
}

fn line(seq: u64) -> String {
    format!("m v={seq}i")
}

fn append_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// The intake of input `tail[0]`: line protocol into bucket `b`, lines of at most 1000
/// bytes, with its dead-letter file in `state`.
pub(super) fn lp_intake(state: &Path) -> Intake {
    let settings = LineSettings {
        bucket: "b".into(),
        outputs: u64::MAX,
        precision: Precision::Ns,
        stamp_missing: false,
        format: InputFormat::Lp,
        measurement: "log".into(),
        tags: vec![],
    };
    let dl = Arc::new(DeadLetter::open(state, 1 << 20).unwrap());
    Intake::new(&settings, 1000, Arc::new(InputStats::new("tail[0]")), dl)
}
