//! The model's harness: two writers on real files under a glob and a [`Tailer`] driven step by
//! step with a fake clock, and a fake pipeline that delivers chunks out of order and records
//! which lines arrived.

use super::*;

pub(super) struct Stream {
    pub(super) path: PathBuf,
    pub(super) writer: File,
    /// Where the writer's file is now (differs from `path` after a rotation).
    pub(super) current: PathBuf,
    pub(super) rotated_at: Option<Instant>,
    /// A line started but not finished: (seq, rest).
    pub(super) partial: Option<(u64, String)>,
}

pub(super) struct Harness {
    pub(super) _tmp: tempfile::TempDir,
    pub(super) logs: PathBuf,
    pub(super) state: PathBuf,
    pub(super) from_beginning: bool,
    pub(super) streams: Vec<Stream>,
    pub(super) rotated: Vec<PathBuf>,
    pub(super) rotations: u64,
    pub(super) seq: u64,
    pub(super) appended: Vec<u64>,
    pub(super) delivered: Vec<u64>,
    pub(super) inflight: Vec<Chunk>,
    pub(super) inbox: Arc<AckInbox>,
    pub(super) tailer: Option<Tailer>,
    pub(super) now: Instant,
    pub(super) crashed: bool,
    pub(super) max_open_files: usize,
}

impl Harness {
    pub(super) fn new(initial: u8, from_beginning: bool) -> Self {
        Self::with_max_open_files(initial, from_beginning, 64)
    }

    pub(super) fn with_max_open_files(
        initial: u8,
        from_beginning: bool,
        max_open_files: usize,
    ) -> Self {
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

    pub(super) fn start_tailer(&mut self) {
        let intake = lp_intake(&self.state);
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

    pub(super) fn complete_partial(&mut self, s: usize) {
        if let Some((seq, rest)) = self.streams[s].partial.take() {
            writeln!(self.streams[s].writer, "{rest}").unwrap();
            self.appended.push(seq);
        }
    }

    pub(super) fn reopen(&mut self, s: usize) {
        if self.streams[s].rotated_at.is_none() {
            return;
        }
        self.complete_partial(s);
        let st = &mut self.streams[s];
        st.writer = append_file(&st.path);
        st.current = st.path.clone();
        st.rotated_at = None;
    }

    pub(super) fn step(&mut self, rescan: bool, all: bool) -> bool {
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

    pub(super) fn deliver(&mut self, i: usize) {
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
    pub(super) fn sync(&mut self) {
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

    pub(super) fn apply(&mut self, a: &Action) {
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

    /// [`Action::Append`]: `lines` complete lines appended to `stream`.
    pub(super) fn append(&mut self, stream: usize, lines: u8) {
        self.apply(&Action::Append { stream, lines });
    }

    /// [`Action::Rotate`] of `stream`; `matched`: the new name still matches the glob.
    pub(super) fn rotate(&mut self, stream: usize, matched: bool) {
        self.apply(&Action::Rotate { stream, matched });
    }

    pub(super) fn check(mut self) -> Result<(), TestCaseError> {
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

    pub(super) fn rotated_matched(&self) -> usize {
        self.rotated
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .count()
    }
}
