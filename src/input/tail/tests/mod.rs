//! Model-based tests of the tailer (STYLE principle 9): random sequences of writer actions
//! (append, partial line, rotate by rename, late writes to the renamed file, copytruncate,
//! delete, crash-and-restart) run against real files and a [`Tailer`] driven step by step
//! with a fake clock and a fake pipeline that delivers chunks out of order. The model is a
//! list of the lines appended; the check: every appended line is delivered, nothing else is,
//! and a line is delivered twice only if a crash happened.

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

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0..2usize, 1..6u8).prop_map(|(stream, lines)| Action::Append { stream, lines }),
        2 => (0..2usize).prop_map(|stream| Action::AppendPartial { stream }),
        2 => (0..2usize, any::<bool>()).prop_map(|(stream, matched)| Action::Rotate { stream, matched }),
        1 => (0..2usize).prop_map(|stream| Action::Reopen { stream }),
        1 => (0..2usize).prop_map(|stream| Action::CopyTruncate { stream }),
        1 => (0..8usize).prop_map(|which| Action::Delete { which }),
        6 => (any::<bool>(), any::<bool>()).prop_map(|(rescan, all)| Action::Step { rescan, all }),
        4 => (0..64usize, 1..4u8).prop_map(|(pick, count)| Action::Deliver { pick, count }),
        1 => Just(Action::Sleep),
        1 => Just(Action::Crash),
    ]
}

struct Stream {
    path: PathBuf,
    writer: File,
    /// Where the writer's file is now (differs from `path` after a rotation).
    current: PathBuf,
    rotated_at: Option<Instant>,
    /// A line started but not finished: (seq, rest).
    partial: Option<(u64, String)>,
}

struct Harness {
    _tmp: tempfile::TempDir,
    logs: PathBuf,
    state: PathBuf,
    from_beginning: bool,
    streams: Vec<Stream>,
    rotated: Vec<PathBuf>,
    rotations: u64,
    seq: u64,
    appended: Vec<u64>,
    delivered: Vec<u64>,
    inflight: Vec<Chunk>,
    inbox: Arc<AckInbox>,
    tailer: Option<Tailer>,
    now: Instant,
    crashed: bool,
    max_open_files: usize,
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

impl Harness {
    fn new(initial: u8, from_beginning: bool) -> Self {
        Self::with_max_open_files(initial, from_beginning, 64)
    }

    fn with_max_open_files(initial: u8, from_beginning: bool, max_open_files: usize) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        let state = tmp.path().join("state");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        let streams = ["a", "b"]
            .iter()
            .map(|n| {
                let path = logs.join(format!("{n}.log"));
                Stream {
                    writer: append_file(&path),
                    current: path.clone(),
                    path,
                    rotated_at: None,
                    partial: None,
                }
            })
            .collect();
        let mut h = Harness {
            _tmp: tmp,
            logs,
            state,
            from_beginning,
            streams,
            rotated: Vec::new(),
            rotations: 0,
            seq: 0,
            appended: Vec::new(),
            delivered: Vec::new(),
            inflight: Vec::new(),
            inbox: Arc::new(AckInbox::default()),
            tailer: None,
            now: Instant::now(),
            crashed: false,
            max_open_files,
        };
        for _ in 0..initial {
            h.seq += 1;
            let s = h.seq;
            writeln!(h.streams[0].writer, "{}", line(s)).unwrap();
            if from_beginning {
                h.appended.push(s);
            }
        }
        h.start_tailer();
        h
    }

    fn start_tailer(&mut self) {
        let settings = LineSettings {
            bucket: "b".into(),
            precision: Precision::Ns,
            stamp_missing: false,
            format: InputFormat::Lp,
            measurement: "log".into(),
            tags: vec![],
        };
        let dl = Arc::new(DeadLetter::open(&self.state, 1 << 20).unwrap());
        let intake = Intake::new(&settings, 1000, Arc::new(InputStats::new("tail[0]")), dl);
        let store = Arc::new(Store::open(&self.state, 1).unwrap());
        self.inbox = Arc::new(AckInbox::default());
        let cfg = Config {
            input: 0,
            globs: vec![format!("{}/*.log", self.logs.display())],
            from_beginning: self.from_beginning,
            max_line_bytes: 1000,
            chunk_lines: 3,
            chunk_bytes: 64,
            orphan_grace: GRACE,
            checkpoint_every: Duration::from_millis(300),
            text: None,
            max_open_files: self.max_open_files,
        };
        let mut t = Tailer::new(cfg, intake, store, self.inbox.clone()).unwrap();
        t.start(self.now);
        self.tailer = Some(t);
    }

    fn complete_partial(&mut self, s: usize) {
        if let Some((seq, rest)) = self.streams[s].partial.take() {
            writeln!(self.streams[s].writer, "{rest}").unwrap();
            self.appended.push(seq);
        }
    }

    fn reopen(&mut self, s: usize) {
        if self.streams[s].rotated_at.is_none() {
            return;
        }
        self.complete_partial(s);
        let st = &mut self.streams[s];
        st.writer = append_file(&st.path);
        st.current = st.path.clone();
        st.rotated_at = None;
    }

    fn step(&mut self, rescan: bool, all: bool) -> bool {
        self.now += TICK;
        // A writer reopens well within the grace after a rotation.
        for s in 0..self.streams.len() {
            if self.streams[s]
                .rotated_at
                .is_some_and(|t| self.now.duration_since(t) >= GRACE / 2)
            {
                self.reopen(s);
            }
        }
        let t = self.tailer.as_mut().unwrap();
        if rescan {
            t.request_rescan();
        }
        if all {
            t.mark_all_dirty();
        }
        let inflight = &mut self.inflight;
        t.step(self.now, &mut |c| {
            inflight.push(c);
            true
        })
        .unwrap()
    }

    fn deliver(&mut self, i: usize) {
        let c = self.inflight.remove(i);
        for l in c.data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let s = std::str::from_utf8(l).unwrap();
            let seq: u64 = s
                .strip_prefix("m v=")
                .and_then(|r| r.strip_suffix('i'))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {s:?}"));
            self.delivered.push(seq);
        }
        if let Some(a) = c.ack {
            self.inbox.push(a);
        }
    }

    /// Runs the tailer and the pipeline until everything readable is delivered.
    fn sync(&mut self) {
        let mut idle = 0;
        for _ in 0..10_000 {
            let more = self.step(true, true);
            while !self.inflight.is_empty() {
                self.deliver(0);
            }
            self.tailer.as_mut().unwrap().apply_acks();
            let t = self.tailer.as_ref().unwrap();
            // A file waiting for its turn behind a rotated one gets it after rotate_wait.
            if !more && t.all_acked() && t.files_waiting() == 0 {
                idle += 1;
                if idle >= 2 {
                    return;
                }
            } else {
                idle = 0;
            }
        }
        panic!("tailer never caught up");
    }

    fn apply(&mut self, a: &Action) {
        match *a {
            Action::Append { stream, lines } => {
                self.complete_partial(stream);
                for _ in 0..lines {
                    self.seq += 1;
                    let s = self.seq;
                    writeln!(self.streams[stream].writer, "{}", line(s)).unwrap();
                    self.appended.push(s);
                }
            }
            Action::AppendPartial { stream } => {
                if self.streams[stream].partial.is_none() {
                    self.seq += 1;
                    let l = line(self.seq);
                    let (head, rest) = l.split_at(3);
                    write!(self.streams[stream].writer, "{head}").unwrap();
                    self.streams[stream].partial = Some((self.seq, rest.to_string()));
                }
            }
            Action::Rotate { stream, matched } => {
                if self.streams[stream].rotated_at.is_some() {
                    return;
                }
                // A file that lived at its path only between two scans is never seen by any
                // tailer; logrotate rotates files that have existed for a while.
                self.step(true, false);
                self.rotations += 1;
                let name = if matched {
                    format!("r{}-{}.log", stream, self.rotations)
                } else {
                    format!("x{}.log.{}", stream, self.rotations)
                };
                let to = self.logs.join(name);
                std::fs::rename(&self.streams[stream].path, &to).unwrap();
                // As the watcher reports it (a known file: nothing to do but rescan).
                let from = self.streams[stream].path.clone();
                self.tailer.as_mut().unwrap().renamed(&from, &to);
                self.streams[stream].current = to.clone();
                self.streams[stream].rotated_at = Some(self.now);
                self.rotated.push(to);
            }
            Action::Reopen { stream } => self.reopen(stream),
            Action::CopyTruncate { stream } => {
                self.reopen(stream);
                self.sync();
                // The partial line was in the copy; this file starts over.
                self.streams[stream].partial = None;
                let f = OpenOptions::new()
                    .write(true)
                    .open(&self.streams[stream].path)
                    .unwrap();
                f.set_len(0).unwrap();
            }
            Action::Delete { which } => {
                if self.rotated.is_empty() {
                    return;
                }
                let i = which % self.rotated.len();
                // A file the writer still writes to is not deleted.
                if self.streams.iter().any(|s| s.current == self.rotated[i]) {
                    return;
                }
                self.sync();
                let p = self.rotated.remove(i);
                std::fs::remove_file(p).unwrap();
            }
            Action::Step { rescan, all } => {
                self.step(rescan, all);
            }
            Action::Deliver { pick, count } => {
                for _ in 0..count {
                    if self.inflight.is_empty() {
                        break;
                    }
                    let i = pick % self.inflight.len();
                    self.deliver(i);
                }
                self.tailer.as_mut().unwrap().apply_acks();
            }
            Action::Sleep => {
                for s in 0..self.streams.len() {
                    self.reopen(s);
                }
                self.now += Duration::from_secs(30);
                self.step(true, true);
            }
            Action::Crash => {
                self.tailer = None;
                self.inflight.clear();
                self.crashed = true;
                self.start_tailer();
            }
        }
    }

    fn check(mut self) -> Result<(), TestCaseError> {
        for s in 0..self.streams.len() {
            self.reopen(s);
        }
        self.sync();
        let mut appended = self.appended.clone();
        appended.sort_unstable();
        let mut delivered = self.delivered.clone();
        delivered.sort_unstable();
        let mut unique = delivered.clone();
        unique.dedup();
        prop_assert_eq!(&unique, &appended, "delivered set differs from appended");
        if !self.crashed {
            prop_assert_eq!(&delivered, &appended, "duplicates without a crash");
        }
        // Drained orphans are closed after the grace.
        self.now += GRACE * 2;
        self.sync();
        let t = self.tailer.as_ref().unwrap();
        prop_assert!(t.files_open() <= self.streams.len() + self.rotated_matched());
        Ok(())
    }

    fn rotated_matched(&self) -> usize {
        self.rotated
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .count()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn tail_delivers_every_line_at_least_once(
        initial in 0..5u8,
        from_beginning in any::<bool>(),
        // 1 and 2: fewer descriptors than files, which then take turns.
        max_open_files in prop_oneof![Just(1usize), Just(2), Just(64)],
        actions in proptest::collection::vec(action(), 1..60),
    ) {
        let mut h = Harness::with_max_open_files(initial, from_beginning, max_open_files);
        for a in &actions {
            h.apply(a);
        }
        h.check()?;
    }
}

/// Acks arriving out of order move the checkpoint only over contiguous delivered chunks.
#[test]
fn checkpoint_waits_for_contiguous_acks() {
    let mut h = Harness::new(0, true);
    h.apply(&Action::Append {
        stream: 0,
        lines: 9,
    });
    h.step(true, true);
    h.step(false, true);
    h.step(false, true);
    assert_eq!(h.inflight.len(), 3, "three chunks of three lines");
    h.deliver(2);
    h.deliver(1);
    h.tailer.as_mut().unwrap().apply_acks();
    h.now += Duration::from_secs(1);
    h.step(false, false);
    let ck = std::fs::read_to_string(h.state.join("tail/checkpoints.json")).unwrap();
    assert!(ck.contains("\"offset\":0"), "{ck}");
    h.deliver(0);
    h.tailer.as_mut().unwrap().apply_acks();
    h.now += Duration::from_secs(1);
    h.step(false, false);
    let ck = std::fs::read_to_string(h.state.join("tail/checkpoints.json")).unwrap();
    let size = std::fs::metadata(h.logs.join("a.log")).unwrap().len();
    assert!(ck.contains(&format!("\"offset\":{size}")), "{ck}");
}

/// A line longer than max_line_bytes is rejected whole, its neighbours are kept, and the
/// checkpoint passes it.
#[test]
fn overlong_lines_are_skipped_without_losing_neighbours() {
    let mut h = Harness::new(0, true);
    let long = format!("m v={}i", "9".repeat(5000));
    writeln!(h.streams[0].writer, "m v=1i\n{long}\nm v=2i").unwrap();
    h.appended.extend([1, 2]);
    h.check().unwrap();
}

/// Rotated away from the glob and then the daemon crashes before reading it: after the
/// restart the file is found by inode and read to its end.
#[test]
fn file_rotated_away_before_a_crash_is_found_again() {
    let mut h = Harness::new(0, false);
    h.sync();
    h.apply(&Action::Append {
        stream: 0,
        lines: 3,
    });
    h.apply(&Action::Rotate {
        stream: 0,
        matched: false,
    });
    h.apply(&Action::Append {
        stream: 0,
        lines: 2,
    });
    h.apply(&Action::Crash);
    h.apply(&Action::Reopen { stream: 0 });
    h.apply(&Action::Append {
        stream: 0,
        lines: 2,
    });
    h.check().unwrap();
}

/// Two lines appended to stream 0, which is then rotated out of the globs and synced;
/// returns the harness and the application's handle, still on the renamed file.
fn rotated_with_writer_handle() -> (Harness, File) {
    let mut h = Harness::new(0, false);
    h.sync();
    let app = append_file(&h.streams[0].path);
    h.apply(&Action::Append {
        stream: 0,
        lines: 2,
    });
    h.apply(&Action::Rotate {
        stream: 0,
        matched: false,
    });
    h.sync();
    (h, app)
}

/// A writer that logs rarely can finish with a rotated file long after the rename: the file
/// stays open, and is read, until it has had no new data for `orphan_grace` (the input's
/// `rotate_wait`); then it is closed.
#[test]
fn rotated_file_is_read_until_idle_for_rotate_wait_then_closed() {
    // The application's own handle: it keeps writing to the old file after the rename.
    let (mut h, mut app) = rotated_with_writer_handle();
    // Quiet for most of the wait, then one late line into the renamed file.
    h.now += GRACE - Duration::from_secs(1);
    h.seq += 1;
    writeln!(app, "{}", line(h.seq)).unwrap();
    h.appended.push(h.seq);
    h.sync();
    assert_eq!(h.delivered.last(), Some(&h.seq), "the late line was read");
    // Open now: b.log, the new a.log (the harness's writer reopened its path) and the old one.
    let open = h.tailer.as_ref().unwrap().files_open();
    assert_eq!(open, 3);
    // The late line restarted the wait; after a full wait of silence the file is closed.
    h.now += GRACE - Duration::from_secs(1);
    h.sync();
    assert_eq!(h.tailer.as_ref().unwrap().files_open(), open);
    h.now += Duration::from_secs(2);
    h.sync();
    assert_eq!(h.tailer.as_ref().unwrap().files_open(), open - 1);
    h.check().unwrap();
}

#[test]
fn a_rotated_file_ending_without_a_newline_ships_its_last_line_and_closes() {
    // The application's own handle: it keeps writing to the old file after the rename.
    let (mut h, mut app) = rotated_with_writer_handle();
    // The writer's last words, without a newline, and then it goes away for good.
    h.seq += 1;
    write!(app, "{}", line(h.seq)).unwrap();
    drop(app);
    h.appended.push(h.seq);
    h.reopen(0);
    h.sync();
    // b.log, the new a.log and the rotated one.
    let open = h.tailer.as_ref().unwrap().files_open();
    assert_eq!(open, 3);
    assert_ne!(h.delivered.last(), Some(&h.seq), "a partial line waits");
    // Polling the orphan again and again (it re-reads the partial line each time) must not
    // count as new data: after rotate_wait without growth the line ships and the file closes.
    for _ in 0..(2 * GRACE.as_millis() / TICK.as_millis()) {
        h.now += TICK;
        h.sync();
    }
    assert_eq!(
        h.delivered.last(),
        Some(&h.seq),
        "the unterminated last line shipped"
    );
    assert_eq!(h.tailer.as_ref().unwrap().files_open(), open - 1);
    h.check().unwrap();
}

#[test]
fn a_file_rotated_away_before_any_scan_saw_it_is_read_from_the_rename_event() {
    let mut h = Harness::new(0, false);
    h.sync();
    // Created under the glob and renamed out of it between two steps: no scan ever lists it.
    let live = h.logs.join("short.log");
    let gone = h.logs.join("short.log.1");
    let mut w = append_file(&live);
    for _ in 0..5 {
        h.seq += 1;
        writeln!(w, "{}", line(h.seq)).unwrap();
        h.appended.push(h.seq);
    }
    std::fs::rename(&live, &gone).unwrap();
    // A late line into the renamed file, as a writer that has not reopened yet would add.
    h.seq += 1;
    writeln!(w, "{}", line(h.seq)).unwrap();
    h.appended.push(h.seq);
    drop(w);
    // What the watcher reports: one rename naming both paths.
    h.tailer.as_mut().unwrap().renamed(&live, &gone);
    h.sync();
    let mut got = h.delivered.clone();
    got.sort_unstable();
    assert_eq!(got, h.appended, "every line of the short-lived file");
    h.check().unwrap();
}
