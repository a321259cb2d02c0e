//! Rotation: files rotated out of the globs before a crash or before any scan saw them, and
//! rotated files that their writer finishes late (`rotate_wait`).

use super::*;

/// Rotated away from the glob and then the daemon crashes before reading it: after the
/// restart the file is found by inode and read to its end.
#[test]
fn file_rotated_away_before_a_crash_is_found_again() {
    let mut h = Harness::new(0, false);
    h.sync();
    h.append(0, 3);
    h.rotate(0, false);
    h.append(0, 2);
    h.apply(&Action::Crash);
    h.apply(&Action::Reopen { stream: 0 });
    h.append(0, 2);
    h.check().unwrap();
}

/// Two lines appended to stream 0, which is then rotated out of the globs and synced;
/// returns the harness and the application's handle, still on the renamed file.
fn rotated_with_writer_handle() -> (Harness, File) {
    let mut h = Harness::new(0, false);
    h.sync();
    let app = append_file(&h.streams[0].path);
    h.append(0, 2);
    h.rotate(0, false);
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
