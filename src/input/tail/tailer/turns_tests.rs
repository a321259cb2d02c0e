//! Tests of taking turns with descriptors: more files than `max_open_files` are all read,
//! oldest first, and running out of descriptors is neither a rotation nor a lost place.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{AckInbox, Config, Store, Tailer};
use crate::batch::Chunk;
use crate::input::tail::fds;
use crate::input::tail::tests::lp_intake;

struct Rig {
    _tmp: tempfile::TempDir,
    logs: PathBuf,
    tailer: Tailer,
    inbox: Arc<AckInbox>,
    now: Instant,
    /// Lines delivered, in order.
    delivered: Vec<String>,
}

/// `files` files `f0.log`… of two lines each; `f0` is the newest, the last one the oldest.
fn rig(files: usize, max_open_files: usize) -> Rig {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let t0 = SystemTime::now() - Duration::from_secs(3600);
    for i in 0..files {
        let path = logs.join(format!("f{i}.log"));
        let mut f = File::create(&path).unwrap();
        writeln!(f, "m,f={i} v=1i\nm,f={i} v=2i").unwrap();
        f.set_modified(t0 - Duration::from_secs(60 * i as u64))
            .unwrap();
    }
    let intake = lp_intake(&state);
    let store = Arc::new(Store::open(&state, 1).unwrap());
    let inbox = Arc::new(AckInbox::default());
    let cfg = Config {
        input: 0,
        globs: vec![format!("{}/*.log", logs.display())],
        from_beginning: true,
        max_line_bytes: 1000,
        chunk_lines: 100,
        chunk_bytes: 4096,
        orphan_grace: Duration::from_secs(5),
        checkpoint_every: Duration::from_millis(300),
        text: None,
        max_open_files,
    };
    let tailer = Tailer::new(cfg, intake, store, inbox.clone()).unwrap();
    Rig {
        _tmp: tmp,
        logs,
        tailer,
        inbox,
        now: Instant::now(),
        delivered: Vec::new(),
    }
}

impl Rig {
    /// One step; every chunk is delivered at once. Returns the step's `more`.
    fn step(&mut self) -> bool {
        self.now += Duration::from_millis(100);
        let mut chunks: Vec<Chunk> = Vec::new();
        let more = self
            .tailer
            .step(self.now, &mut |c| {
                chunks.push(c);
                true
            })
            .unwrap();
        for c in chunks {
            let text = String::from_utf8(c.data).unwrap();
            self.delivered.extend(text.lines().map(str::to_owned));
            self.inbox.push(c.ack.unwrap());
        }
        assert!(
            self.tailer.descriptors_open() <= self.tailer.slots.max(),
            "{} open, max {}",
            self.tailer.descriptors_open(),
            self.tailer.slots.max()
        );
        more
    }

    fn run_until_idle(&mut self) {
        for _ in 0..1000 {
            let more = self.step();
            if !more && self.tailer.files_waiting() == 0 && self.tailer.all_acked() {
                return;
            }
        }
        panic!("never caught up");
    }

    /// The files in the order their first line was delivered.
    fn file_order(&self) -> Vec<String> {
        let mut order: Vec<String> = Vec::new();
        for l in &self.delivered {
            let f = l.split([',', ' ']).nth(1).unwrap().to_owned();
            if !order.contains(&f) {
                order.push(f);
            }
        }
        order
    }

    fn rotations(&self) -> u64 {
        self.tailer.intake.stats().rotations.load(Relaxed)
    }
}

#[test]
fn more_files_than_descriptors_are_all_read_oldest_first() {
    // One at a time, so that the order is the order of the turns.
    let mut r = rig(6, 1);
    r.tailer.start(r.now);
    assert_eq!(r.tailer.files_open(), 6, "all six followed");
    assert_eq!(r.tailer.descriptors_open(), 1, "one of them open");
    r.run_until_idle();
    assert_eq!(r.delivered.len(), 12, "{:?}", r.delivered);
    assert_eq!(
        r.file_order(),
        ["f=5", "f=4", "f=3", "f=2", "f=1", "f=0"],
        "oldest first"
    );
    assert_eq!(r.rotations(), 0);
    assert!(r.tailer.limit_logged, "the limit was reported");

    // A parked file that grows gets its turn again, and only its new line is read.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(r.logs.join("f3.log"))
        .unwrap();
    writeln!(f, "m,f=3 v=3i").unwrap();
    r.tailer.mark_all_dirty();
    r.run_until_idle();
    assert_eq!(r.delivered.len(), 13);
    assert_eq!(r.delivered.last().unwrap(), "m,f=3 v=3i");
    assert_eq!(r.rotations(), 0);
}

/// Opens through the real `File::open` unless `fail` is set, then with EMFILE; counts the
/// calls.
fn failing_opener(fail: Arc<AtomicBool>, calls: Arc<AtomicU64>) -> super::Opener {
    Box::new(move |p: &Path| {
        calls.fetch_add(1, Relaxed);
        if fail.load(Relaxed) {
            Err(std::io::Error::from_raw_os_error(libc::EMFILE))
        } else {
            File::open(p)
        }
    })
}

#[test]
fn running_out_of_descriptors_is_not_a_rotation_and_loses_no_place() {
    let mut r = rig(5, 2);
    let (fail, calls) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    r.tailer.opener = failing_opener(fail.clone(), calls.clone());
    r.tailer.start(r.now);
    r.step();
    let read_before = r.delivered.len();
    assert!(read_before > 0);

    fail.store(true, Relaxed);
    // Steps and rescans while every open fails: nobody is taken for rotated, and the
    // tailer pauses instead of trying again at every step.
    for _ in 0..30 {
        r.tailer.request_rescan();
        r.tailer.mark_all_dirty();
        assert!(!r.step(), "no busy loop while out of descriptors");
    }
    let tries = calls.load(Relaxed);
    assert!(
        tries <= 3 + 3 * 30 / 10,
        "{tries} opens in 3 s: at most one every {:?}",
        fds::PAUSE
    );
    assert!(r.tailer.exhaustion_logged);
    assert_eq!(r.rotations(), 0);
    assert!(r.tailer.files.values().all(|f| f.orphan_since.is_none()));

    // The same while a file's path is no longer listed but still names it.
    let key = *r.tailer.files.keys().next().unwrap();
    r.tailer.left_its_path(key, r.now);
    assert!(r.tailer.files[&key].orphan_since.is_none());

    fail.store(false, Relaxed);
    r.now += fds::PAUSE;
    r.run_until_idle();
    let mut got = r.delivered.clone();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 10, "every line once: {:?}", r.delivered);
    assert_eq!(r.delivered.len(), 10, "no line twice");
    assert_eq!(r.rotations(), 0);
}
