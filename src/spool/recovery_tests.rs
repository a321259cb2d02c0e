//! Recovery against damaged and hostile spools: symlinks and foreign files where segments go,
//! garbage, segments cut short, zeroed or emptied in the middle, and a drained spool giving its
//! space back. Every loss must be counted exactly, and nothing outside the spool touched.

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sync::PROGRESS_EVERY;
use super::*;
use crate::batch::{Ack, Batch, Dest, Encoding};
use crate::config::{FsyncPolicy, SpoolSettings, WhenFull};
use crate::line::Precision;

fn settings(max_size: u64) -> SpoolSettings {
    SpoolSettings {
        max_size,
        when_full: WhenFull::DropOldest,
        fsync: FsyncPolicy::Always,
        fsync_interval: Duration::from_millis(500),
    }
}

/// A batch of `lines` lines tagged `tag`, about `len` bytes.
fn batch(tag: u32, lines: u32, len: usize) -> Batch {
    let mut body = format!("m,t={tag} v=1i\n").into_bytes();
    body.resize(len.max(body.len()), b'x');
    Batch {
        dest: Dest::new("b", Precision::Ns),
        body: body.into(),
        encoding: Encoding::Identity,
        lines,
        raw_len: len,
        acks: Vec::new(),
    }
}

fn tag_of(b: &Batch) -> u32 {
    let s = std::str::from_utf8(&b.body[..]).unwrap();
    s["m,t=".len()..s.find(' ').unwrap()].parse().unwrap()
}

fn open(dir: &Path, s: &SpoolSettings) -> (Spool, Arc<SpoolStats>) {
    let stats = Arc::new(SpoolStats::default());
    (Spool::open(dir, s, stats.clone()).unwrap(), stats)
}

fn drain(sp: &Spool) -> Vec<u32> {
    std::iter::from_fn(|| {
        sp.next().map(|(id, b)| {
            sp.ack(id);
            tag_of(&b)
        })
    })
    .collect()
}

/// 12 records of 40 KiB (3 per 128 KiB segment, so 4 segments), record `i` holding `i + 1`
/// lines; the spool is closed after a sync.
fn four_segments(dir: &Path) -> Vec<PathBuf> {
    let (sp, _) = open(dir, &settings(1 << 20));
    for i in 0..12 {
        sp.append(&batch(i, i + 1, 40 << 10), || false).unwrap();
    }
    sp.sync().unwrap();
    drop(sp);
    let segs: Vec<PathBuf> = list_segments(&dir.join("spool"))
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(segs.len(), 4, "{segs:?}");
    segs
}

#[test]
fn a_symlink_named_like_a_segment_is_moved_aside_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, b"precious bytes that look like nothing").unwrap();
    let spool_dir = dir.path().join("spool");
    fs::create_dir_all(&spool_dir).unwrap();
    let link = spool_dir.join("0000000000000100.seg");
    symlink(&victim, &link).unwrap();
    // Also where the next segment, the cursor's tmp file and the cursor go.
    symlink(&victim, spool_dir.join("0000000000000101.seg")).unwrap();
    symlink(&victim, spool_dir.join("cursor.tmp")).unwrap();
    symlink(&victim, spool_dir.join("cursor")).unwrap();

    let (sp, stats) = open(dir.path(), &settings(1 << 20));
    sp.append(&batch(1, 3, 100), || false).unwrap();
    sp.sync().unwrap();
    assert_eq!(drain(&sp), vec![1]);
    sp.sync().unwrap();
    drop(sp);
    let (sp, _) = open(dir.path(), &settings(1 << 20));
    assert_eq!(drain(&sp), Vec::<u32>::new(), "delivered once");

    assert_eq!(
        fs::read(&victim).unwrap(),
        b"precious bytes that look like nothing"
    );
    let aside = spool_dir.join("corrupt/0000000000000100.seg");
    assert!(fs::symlink_metadata(&aside)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::symlink_metadata(&link).is_err(), "moved, not copied");
    assert_eq!(
        stats.corrupt_records.load(Relaxed),
        0,
        "no record of ours was lost"
    );
}

#[test]
fn a_segment_of_garbage_is_moved_aside_untouched_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    fs::create_dir_all(&spool_dir).unwrap();
    let garbage: Vec<u8> = (0..100_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    fs::write(spool_dir.join("0000000000000001.seg"), &garbage).unwrap();
    let (sp, _) = open(dir.path(), &settings(1 << 20));
    sp.append(&batch(1, 1, 100), || false).unwrap();
    assert_eq!(drain(&sp), vec![1]);
    assert_eq!(
        fs::read(spool_dir.join("corrupt/0000000000000001.seg")).unwrap(),
        garbage
    );
    // A second garbage file of the same name does not replace the first one set aside.
    fs::write(spool_dir.join("0000000000000001.seg"), b"more garbage").unwrap();
    drop(sp);
    let _ = open(dir.path(), &settings(1 << 20));
    assert_eq!(
        fs::read(spool_dir.join("corrupt/0000000000000001.seg.1")).unwrap(),
        b"more garbage"
    );
}

#[test]
fn a_record_cut_short_in_a_middle_segment_is_counted_with_its_lines() {
    let dir = tempfile::tempdir().unwrap();
    let segs = four_segments(dir.path());
    // Segment 2 holds records 3, 4, 5 (4 + 5 + 6 lines): cut into record 4.
    let len = fs::metadata(&segs[1]).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&segs[1])
        .unwrap()
        .set_len(len - (40 << 10) - 100)
        .unwrap();
    let before = inspect(dir.path()).unwrap();
    assert_eq!(before.losses.len(), 1, "{:?}", before.losses);
    assert_eq!(
        (before.losses[0].records, before.losses[0].lines),
        (2, Some(11))
    );
    assert!(!before.problems().is_empty());

    let (sp, stats) = open(dir.path(), &settings(1 << 20));
    assert_eq!(stats.corrupt_records.load(Relaxed), 2);
    assert_eq!(stats.corrupt_lines.load(Relaxed), 11);
    assert_eq!(drain(&sp), vec![0, 1, 2, 3, 6, 7, 8, 9, 10, 11]);
    // The finished segment was not truncated.
    assert_eq!(
        fs::metadata(&segs[1]).map(|m| m.len()).ok(),
        None,
        "delivered and deleted"
    );
    drop(sp);
    // Counted once: the cursor moved past the gap.
    let (_, stats) = open(dir.path(), &settings(1 << 20));
    assert_eq!(stats.corrupt_records.load(Relaxed), 0);
}

#[test]
fn a_zeroed_or_emptied_middle_segment_is_counted_exactly_and_fails_verify() {
    for how in ["zeroed", "emptied", "removed"] {
        let dir = tempfile::tempdir().unwrap();
        let segs = four_segments(dir.path());
        // Segment 3 holds records 6, 7, 8: 7 + 8 + 9 = 24 lines.
        let len = fs::metadata(&segs[2]).unwrap().len();
        match how {
            "zeroed" => fs::write(&segs[2], vec![0u8; len as usize]).unwrap(),
            "emptied" => fs::write(&segs[2], b"").unwrap(),
            _ => fs::remove_file(&segs[2]).unwrap(),
        }
        let found = inspect(dir.path()).unwrap();
        assert_eq!(found.losses.len(), 1, "{how}: {:?}", found.losses);
        assert_eq!(
            (found.losses[0].records, found.losses[0].lines),
            (3, Some(24)),
            "{how}"
        );
        assert!(
            found
                .problems()
                .iter()
                .any(|p| p.contains("LOST") || p.contains("missing")),
            "{how}: {:?}",
            found.problems()
        );

        let (sp, stats) = open(dir.path(), &settings(1 << 20));
        assert_eq!(stats.corrupt_records.load(Relaxed), 3, "{how}");
        assert_eq!(stats.corrupt_lines.load(Relaxed), 24, "{how}");
        assert_eq!(drain(&sp), vec![0, 1, 2, 3, 4, 5, 9, 10, 11], "{how}");
        if how == "zeroed" {
            let aside = dir
                .path()
                .join("spool/corrupt")
                .join(segs[2].file_name().unwrap());
            assert_eq!(
                fs::read(aside).unwrap(),
                vec![0u8; len as usize],
                "untouched"
            );
        }
    }
}

#[test]
fn a_zeroed_newest_segment_is_counted_from_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let segs = four_segments(dir.path());
    // Segment 4 holds records 9, 10, 11: 10 + 11 + 12 = 33 lines, synced before the close.
    let len = fs::metadata(&segs[3]).unwrap().len();
    fs::write(&segs[3], vec![0u8; len as usize]).unwrap();
    let found = inspect(dir.path()).unwrap();
    assert_eq!(found.losses.len(), 1, "{:?}", found.losses);
    assert_eq!(
        (found.losses[0].records, found.losses[0].lines),
        (3, Some(33))
    );
    let (sp, stats) = open(dir.path(), &settings(1 << 20));
    assert_eq!(stats.corrupt_lines.load(Relaxed), 33);
    assert_eq!(drain(&sp), (0..9).collect::<Vec<_>>());
    // New records go after the zeroed segment's id, never under it.
    sp.append(&batch(20, 1, 100), || false).unwrap();
    sp.sync().unwrap();
    drop(sp);
    let (sp, _) = open(dir.path(), &settings(1 << 20));
    assert_eq!(drain(&sp), vec![20]);
}

#[test]
fn a_torn_append_to_the_newest_segment_is_truncated_and_not_a_loss() {
    let dir = tempfile::tempdir().unwrap();
    let segs = four_segments(dir.path());
    // A crash in the middle of an append after the last sync.
    let partial = encode_record(
        &batch(99, 5, 1000),
        0,
        Seq {
            record: 12,
            line: 78,
        },
    );
    let mut f = fs::OpenOptions::new().append(true).open(&segs[3]).unwrap();
    f.write_all(&partial[..500]).unwrap();
    let len = fs::metadata(&segs[3]).unwrap().len();
    let (sp, stats) = open(dir.path(), &settings(1 << 20));
    assert_eq!(stats.corrupt_records.load(Relaxed), 0);
    assert_eq!(
        fs::metadata(&segs[3]).unwrap().len(),
        len - 500,
        "truncated"
    );
    assert_eq!(drain(&sp).len(), 12);
}

#[test]
fn a_drained_spool_gives_its_space_back_and_numbering_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(1 << 20);
    let (sp, stats) = open(dir.path(), &s);
    for i in 0..5 {
        sp.append(&batch(i, 1, 40 << 10), || false).unwrap();
    }
    assert_eq!(drain(&sp).len(), 5);
    sp.sync().unwrap();
    assert_eq!(sp.backlog().bytes, 0, "{:?}", sp.backlog());
    assert_eq!(stats.bytes.load(Relaxed), 0);
    assert!(
        list_segments(sp.dir()).unwrap().is_empty(),
        "segment files removed"
    );
    drop(sp);
    // After a restart with no segment left, new records must not be taken for delivered ones
    // (the cursor names a segment id that no longer exists).
    for round in 0..3 {
        let (sp, stats) = open(dir.path(), &s);
        assert_eq!(stats.corrupt_records.load(Relaxed), 0, "round {round}");
        sp.append(&batch(100 + round, 1, 100), || false).unwrap();
        sp.sync().unwrap();
        drop(sp);
        let (sp, stats) = open(dir.path(), &s);
        assert_eq!(drain(&sp), vec![100 + round], "round {round}");
        assert_eq!(stats.corrupt_records.load(Relaxed), 0, "round {round}");
        sp.sync().unwrap();
    }
}

#[test]
fn replay_progress_is_written_as_records_are_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(1 << 30);
    let (sp, _) = open(dir.path(), &s);
    for i in 0..50 {
        sp.append(&batch(i, 1, 1000), || false).unwrap();
    }
    sp.sync().unwrap();
    // Deliver 30 without any sync, a little apart, then "crash" (no sync, no drop handler).
    let t0 = Instant::now();
    for k in 1..=30 {
        let (id, _) = sp.next().unwrap();
        sp.ack_at(id, t0 + PROGRESS_EVERY * k);
    }
    std::mem::forget(sp);
    let (sp, _) = open(dir.path(), &s);
    let again = drain(&sp);
    assert_eq!(
        again.first(),
        Some(&30),
        "nothing delivered is sent again: {again:?}"
    );
    assert_eq!(again.len(), 20);
}

#[test]
fn a_symlinked_spool_directory_is_renamed_aside_never_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    symlink(elsewhere.path(), dir.path().join("spool")).unwrap();
    let (sp, _) = open(dir.path(), &settings(1 << 20));
    sp.append(&batch(1, 1, 100), || false).unwrap();
    sp.sync().unwrap();
    assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    assert!(fs::symlink_metadata(dir.path().join("spool"))
        .unwrap()
        .is_dir());
    assert_eq!(drain(&sp), vec![1]);
}

/// A named output's spool (`state_dir/spool/NAME/`) gets the same treatment.
#[test]
fn a_symlinked_output_spool_directory_is_renamed_aside_never_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("spool")).unwrap();
    let lake = dir.path().join("spool/lake");
    symlink(elsewhere.path(), &lake).unwrap();
    let sp = Spool::open_dir(lake.clone(), &settings(1 << 20), Default::default()).unwrap();
    sp.append(&batch(1, 1, 100), || false).unwrap();
    sp.sync().unwrap();
    assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    assert!(fs::symlink_metadata(&lake).unwrap().is_dir());
    assert_eq!(drain(&sp), vec![1]);
}

#[test]
fn a_directory_where_the_cursor_goes_is_set_aside_and_acks_still_flow() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    fs::create_dir_all(spool_dir.join("cursor")).unwrap();
    fs::create_dir_all(spool_dir.join("cursor.tmp")).unwrap();
    let s = SpoolSettings {
        fsync: FsyncPolicy::Interval,
        ..settings(1 << 20)
    };
    let (sp, _) = open(dir.path(), &s);
    let mut b = batch(1, 1, 100);
    b.acks = vec![Ack {
        input: 1,
        file: 7,
        offset: 9,
    }];
    let (_, now) = sp.append(&b, || false).unwrap();
    assert!(now.is_empty(), "interval: acks wait for the sync");
    assert_eq!(sp.sync().unwrap().len(), 1, "the sync releases them");
    assert!(spool_dir.join("cursor").is_file());
    drop(sp);
    let (sp, _) = open(dir.path(), &s);
    assert_eq!(drain(&sp), vec![1]);
}

#[test]
fn a_segment_named_at_the_top_of_the_id_range_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    fs::create_dir_all(&spool_dir).unwrap();
    fs::write(spool_dir.join("ffffffffffffffff.seg"), b"planted").unwrap();
    let (sp, _) = open(dir.path(), &settings(1 << 20));
    for i in 0..3 {
        sp.append(&batch(i, 1, 100), || false).unwrap();
    }
    sp.sync().unwrap();
    drop(sp);
    assert!(spool_dir.join("corrupt/ffffffffffffffff.seg").exists());
    let (sp, _) = open(dir.path(), &settings(1 << 20));
    assert_eq!(drain(&sp), vec![0, 1, 2]);
}

/// A version 1 record, as lineship wrote them before records were numbered.
fn v1_record(b: &Batch) -> Vec<u8> {
    let bucket = b.dest.bucket.as_bytes();
    let payload_len = 18 + bucket.len() + b.body.len();
    let mut rec = Vec::new();
    rec.extend_from_slice(b"LSPL");
    rec.extend_from_slice(&[1, 0, 0, 0]);
    rec.extend_from_slice(&(payload_len as u32).to_le_bytes());
    rec.extend_from_slice(&[0; 4]);
    rec.extend_from_slice(&7u64.to_le_bytes());
    rec.extend_from_slice(&b.lines.to_le_bytes());
    rec.extend_from_slice(&(b.raw_len as u32).to_le_bytes());
    rec.extend_from_slice(&(bucket.len() as u16).to_le_bytes());
    rec.extend_from_slice(bucket);
    rec.extend_from_slice(&b.body);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[4..12]), &rec[16..]);
    rec[12..16].copy_from_slice(&crc.to_le_bytes());
    rec
}

#[test]
fn a_spool_written_before_records_were_numbered_replays_without_false_losses() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    fs::create_dir_all(&spool_dir).unwrap();
    let mut seg = Vec::new();
    let mut offsets = Vec::new();
    for i in 0..4 {
        offsets.push(seg.len() as u64);
        seg.extend_from_slice(&v1_record(&batch(i, 2, 200)));
    }
    // Record 2 damaged: without numbers it counts as one record of unknown lines.
    seg[offsets[2] as usize + 40] ^= 0xff;
    fs::write(spool_dir.join("0000000000000001.seg"), &seg).unwrap();
    // A version 1 cursor past record 0.
    let mut cursor = Vec::new();
    cursor.extend_from_slice(&1u64.to_le_bytes());
    cursor.extend_from_slice(&offsets[1].to_le_bytes());
    cursor.extend_from_slice(&crc32c::crc32c(&cursor).to_le_bytes());
    fs::write(spool_dir.join("cursor"), &cursor).unwrap();

    let (sp, stats) = open(dir.path(), &settings(1 << 20));
    assert_eq!(stats.corrupt_records.load(Relaxed), 1);
    assert_eq!(
        stats.corrupt_lines.load(Relaxed),
        0,
        "unknown without numbers"
    );
    sp.append(&batch(10, 1, 100), || false).unwrap();
    // Deliver the first old record only, then restart: no gap may be invented.
    let (id, b) = sp.next().unwrap();
    assert_eq!(tag_of(&b), 1);
    sp.ack(id);
    sp.sync().unwrap();
    drop(sp);
    let (sp, stats) = open(dir.path(), &settings(1 << 20));
    assert_eq!(drain(&sp), vec![3, 10]);
    assert_eq!(stats.corrupt_lines.load(Relaxed), 0);
    sp.sync().unwrap();
    drop(sp);
    let (sp, stats) = open(dir.path(), &settings(1 << 20));
    assert_eq!(drain(&sp), Vec::<u32>::new());
    assert_eq!(stats.corrupt_records.load(Relaxed), 0);
}
