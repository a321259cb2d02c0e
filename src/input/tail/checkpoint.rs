//! Tail checkpoints: how far each tailed file has been *delivered*, kept in
//! `state_dir/tail/checkpoints.json` and shared by every tail input.
//!
//! Format (version 1), one JSON document:
//!
//! ```json
//! {"version":1,
//!  "started":["/var/log/app/*.lp"],
//!  "files":[{"dev":2049,"ino":131,"fp_len":256,"fp":1234,"offset":40960,"path":"/var/log/app/a.lp"}]}
//! ```
//!
//! - A file is identified by `(dev, ino)` plus `fp`, the FNV-1a 64 hash of its first `fp_len`
//!   bytes (at most [`FP_MAX`]), so a reused inode is not taken for the old file.
//! - `offset` is the end of the last line whose delivery was acknowledged: after a crash,
//!   reading resumes there (lines after it may be sent again: at-least-once).
//! - `path` is where the file was last seen (lossy UTF-8); after a restart a file that was
//!   rotated away from its glob is looked for by inode in that directory.
//! - `started` lists the inputs (by their sorted, joined globs) that finished a first scan:
//!   `from_beginning` applies only to an input's first start.
//!
//! Writes are atomic: tmp file, fsync, rename, fsync of the directory. Recovery never refuses
//! to start: an unreadable file is logged, and every file is then read from its start (at
//! least once rather than lost).
//!
//! Symlinks in `state_dir/tail/` are never followed: the directory is opened once with
//! `O_NOFOLLOW` (a symlink there is renamed aside first) and everything in it is
//! reached relative to that descriptor. The checkpoint is read with `O_NOFOLLOW | O_NONBLOCK`
//! and only if it is a regular file (a symlink or FIFO planted there counts as unreadable);
//! the tmp file is created with `O_CREAT | O_EXCL | O_NOFOLLOW` after unlinking whatever is in
//! its place, and `renameat` replaces a planted checkpoint entry itself, never its target.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "checkpoints.json";
const VERSION: u32 = 1;
/// Bytes of a file's start that make up its fingerprint.
pub const FP_MAX: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

impl FileKey {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// Hash of a file's first `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub len: u32,
    pub hash: u64,
}

impl Fingerprint {
    pub fn of(prefix: &[u8]) -> Self {
        let prefix = &prefix[..prefix.len().min(FP_MAX)];
        Fingerprint {
            len: prefix.len() as u32,
            hash: fnv1a(prefix),
        }
    }

    /// Whether `prefix` (at least `self.len` bytes of the file's start) begins like the file
    /// this fingerprint was taken of.
    pub fn matches(&self, prefix: &[u8]) -> bool {
        prefix.len() >= self.len as usize && fnv1a(&prefix[..self.len as usize]) == self.hash
    }
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One file's checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub dev: u64,
    pub ino: u64,
    pub fp_len: u32,
    pub fp: u64,
    pub offset: u64,
    pub path: String,
}

impl Entry {
    pub fn key(&self) -> FileKey {
        FileKey {
            dev: self.dev,
            ino: self.ino,
        }
    }
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            len: self.fp_len,
            hash: self.fp,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    #[serde(default)]
    started: BTreeSet<String>,
    #[serde(default)]
    files: Vec<Entry>,
}

/// The checkpoint file of all tail inputs. Inputs claim the entries they find at startup and
/// publish their current entries; every publish rewrites the file.
/// How a path is matched against a tail glob outside a directory walk: as `glob::glob` walks,
/// `*` never crosses a `/`.
pub const GLOB_MATCH: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

pub struct Store {
    dir: PathBuf,
    /// `dir`, opened without following a symlink: every file in it is reached through this.
    dirfd: OwnedFd,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Read at startup and not yet claimed by an input.
    loaded: HashMap<FileKey, Entry>,
    started: BTreeSet<String>,
    /// The entries each input published last, by input id.
    sections: BTreeMap<u32, Vec<Entry>>,
    /// Inputs that have not finished their first scan: until then unclaimed entries are kept.
    pending_inputs: usize,
    /// The file existed but could not be read: treat every input as restarted.
    unreadable: bool,
    /// Which input follows each open file: a file two inputs' globs match is read by one.
    owners: HashMap<FileKey, u32>,
    /// Every tail input's globs, by input id.
    patterns: BTreeMap<u32, Vec<glob::Pattern>>,
}

impl Store {
    /// Opens (creating the directory) and loads `state_dir/tail/checkpoints.json`. `inputs` is
    /// the number of tail inputs that will call [`Store::initial_done`].
    pub fn open(state_dir: &Path, inputs: usize) -> anyhow::Result<Self> {
        let dir = state_dir.join("tail");
        let dirfd = open_dir(&dir)?;
        let path = dir.join(FILE_NAME);
        let (mut loaded, mut started, mut unreadable) = (HashMap::new(), BTreeSet::new(), false);
        match read_regular(&dirfd, FILE_NAME) {
            Ok(bytes) => match serde_json::from_slice::<OnDisk>(&bytes) {
                Ok(d) if d.version == VERSION => {
                    started = d.started;
                    for e in d.files {
                        loaded.insert(e.key(), e);
                    }
                }
                Ok(d) => {
                    tracing::error!(path = %path.display(), version = d.version, "tail checkpoint file has an unknown version; reading every tailed file from its start (lines may be sent twice)");
                    unreadable = true;
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "tail checkpoint file is unreadable; reading every tailed file from its start (lines may be sent twice)");
                    unreadable = true;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read the tail checkpoint file; reading every tailed file from its start (lines may be sent twice); a symlink or special file there is not followed and is replaced by a regular file at the next write");
                unreadable = true;
            }
        }
        Ok(Store {
            dir,
            dirfd,
            inner: Mutex::new(Inner {
                loaded,
                started,
                sections: BTreeMap::new(),
                pending_inputs: inputs,
                unreadable,
                owners: HashMap::new(),
                patterns: BTreeMap::new(),
            }),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Whether the input identified by `input_key` has never finished a first scan.
    pub fn first_start(&self, input_key: &str) -> bool {
        let i = self.inner.lock().unwrap();
        !i.unreadable && !i.started.contains(input_key)
    }

    /// Records the globs of `input`, for [`Store::first_input_matching`].
    pub fn register_patterns(&self, input: u32, patterns: Vec<glob::Pattern>) {
        self.inner.lock().unwrap().patterns.insert(input, patterns);
    }

    /// The lowest-numbered input whose globs match `path`: the one that reads it when several
    /// inputs' paths overlap.
    pub fn first_input_matching(&self, path: &Path) -> Option<u32> {
        let i = self.inner.lock().unwrap();
        i.patterns
            .iter()
            .find(|(_, ps)| ps.iter().any(|p| p.matches_path_with(path, GLOB_MATCH)))
            .map(|(input, _)| *input)
    }

    /// Makes `input` the one input that follows the file `key`. `Err(owner)` when another
    /// input already follows it.
    pub fn own(&self, key: FileKey, input: u32) -> Result<(), u32> {
        let mut i = self.inner.lock().unwrap();
        match *i.owners.entry(key).or_insert(input) {
            owner if owner == input => Ok(()),
            owner => Err(owner),
        }
    }

    /// `input` closed the file `key`: another input may follow it from now on.
    pub fn disown(&self, key: FileKey, input: u32) {
        let mut i = self.inner.lock().unwrap();
        if i.owners.get(&key) == Some(&input) {
            i.owners.remove(&key);
        }
    }

    /// Takes the loaded entry for `key`, if any.
    pub fn claim(&self, key: FileKey) -> Option<Entry> {
        self.inner.lock().unwrap().loaded.remove(&key)
    }

    /// Takes every loaded entry whose recorded path satisfies `wanted`.
    pub fn claim_where(&self, wanted: impl Fn(&Entry) -> bool) -> Vec<Entry> {
        let mut i = self.inner.lock().unwrap();
        let keys: Vec<FileKey> = i
            .loaded
            .values()
            .filter(|e| wanted(e))
            .map(Entry::key)
            .collect();
        keys.iter().filter_map(|k| i.loaded.remove(k)).collect()
    }

    /// Records that an input finished its first scan (and claimed its entries).
    pub fn initial_done(&self, input_key: &str) {
        let mut i = self.inner.lock().unwrap();
        i.started.insert(input_key.to_owned());
        i.pending_inputs = i.pending_inputs.saturating_sub(1);
        if i.pending_inputs == 0 {
            i.loaded.clear();
        }
    }

    /// Replaces an input's entries and rewrites the file atomically.
    pub fn publish(&self, input: u32, entries: Vec<Entry>) -> std::io::Result<()> {
        let mut i = self.inner.lock().unwrap();
        i.sections.insert(input, entries);
        let mut files: Vec<Entry> = i.sections.values().flatten().cloned().collect();
        files.extend(i.loaded.values().cloned());
        let doc = OnDisk {
            version: VERSION,
            started: i.started.clone(),
            files,
        };
        let bytes = serde_json::to_vec(&doc).map_err(std::io::Error::other)?;
        write_atomic(&self.dirfd, FILE_NAME, &bytes)
    }
}

/// Creates (if needed) and opens the checkpoint directory. Whatever else stands in its place
/// (a symlink, a file) is renamed aside untouched, as everywhere in `state_dir`
/// ([`crate::statefile::ensure_dir`]); the open itself never follows a symlink.
fn open_dir(dir: &Path) -> anyhow::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags, CWD};
    let not_followed = || {
        format!(
            "the tail checkpoint directory {} is a symlink or not a directory; lineship does not follow symlinks inside its state directory: remove it (lineship creates the directory)",
            dir.display()
        )
    };
    crate::statefile::ensure_dir(dir).with_context(|| {
        format!(
            "cannot create the tail checkpoint directory {}",
            dir.display()
        )
    })?;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(CWD, dir, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => anyhow::bail!(not_followed()),
        Err(e) => Err(std::io::Error::from(e)).with_context(|| {
            format!(
                "cannot open the tail checkpoint directory {}",
                dir.display()
            )
        }),
    }
}

/// Reads `name` in `dir` if it is a regular file (not through a symlink; a FIFO is not
/// waited on).
fn read_regular(dir: &OwnedFd, name: &str) -> std::io::Result<Vec<u8>> {
    use rustix::fs::{FileType, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(|e| match e {
        rustix::io::Errno::LOOP => std::io::Error::other("it is a symlink"),
        e => e.into(),
    })?;
    if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::RegularFile {
        return Err(std::io::Error::other("it is not a regular file"));
    }
    let mut bytes = Vec::new();
    File::from(fd).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Writes `name` in `dir` as tmp + fsync + rename + fsync of the directory, all relative to
/// `dir` and never through a symlink: whatever is in the tmp file's place is unlinked first
/// (a symlink itself, not its target), the tmp file is created exclusively, and the rename
/// replaces the entry `name`, whatever it is.
fn write_atomic(dir: &OwnedFd, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    let tmp = format!("{name}.tmp");
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let create = || rustix::fs::openat(dir, tmp.as_str(), flags, Mode::from_raw_mode(0o666));
    let fd = match create() {
        Err(rustix::io::Errno::EXIST) => {
            // Left by a crash, or planted.
            rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty())?;
            create()?
        }
        r => r?,
    };
    let mut f = File::from(fd);
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    rustix::fs::renameat(dir, tmp.as_str(), dir, name)?;
    rustix::fs::fsync(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ino: u64, offset: u64, path: &str) -> Entry {
        Entry {
            dev: 1,
            ino,
            fp_len: 3,
            fp: fnv1a(b"abc"),
            offset,
            path: path.into(),
        }
    }

    #[test]
    fn one_input_owns_a_file_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 2).unwrap();
        let k = FileKey { dev: 1, ino: 7 };
        assert_eq!(s.own(k, 0), Ok(()));
        assert_eq!(s.own(k, 0), Ok(()), "owning again is fine");
        assert_eq!(s.own(k, 1), Err(0));
        s.disown(k, 1);
        assert_eq!(s.own(k, 1), Err(0), "only the owner lets go");
        s.disown(k, 0);
        assert_eq!(s.own(k, 1), Ok(()));
    }

    #[test]
    fn round_trip_first_start_and_claims() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1).unwrap();
        assert!(s.first_start("/a/*.log"));
        s.initial_done("/a/*.log");
        s.publish(0, vec![entry(5, 10, "/a/x.log"), entry(6, 20, "/a/y.log")])
            .unwrap();
        assert!(!dir
            .path()
            .join("tail")
            .join("checkpoints.json.tmp")
            .exists());

        let s = Store::open(dir.path(), 1).unwrap();
        assert!(!s.first_start("/a/*.log"));
        assert!(s.first_start("/b/*.log"));
        assert_eq!(
            s.claim(FileKey { dev: 1, ino: 5 }).unwrap().offset,
            10,
            "claimed by key"
        );
        assert!(
            s.claim(FileKey { dev: 1, ino: 5 }).is_none(),
            "claimed once"
        );
        let rest = s.claim_where(|e| e.path.starts_with("/a/"));
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].offset, 20);
    }

    #[test]
    fn unclaimed_entries_survive_until_every_input_has_scanned() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1).unwrap();
        s.publish(0, vec![entry(5, 10, "/a/x.log")]).unwrap();
        let s = Store::open(dir.path(), 2).unwrap();
        s.publish(0, vec![]).unwrap();
        let again = Store::open(dir.path(), 2).unwrap();
        assert!(again.claim(FileKey { dev: 1, ino: 5 }).is_some());
        s.initial_done("k0");
        s.initial_done("k1");
        s.publish(0, vec![]).unwrap();
        let again = Store::open(dir.path(), 1).unwrap();
        assert!(again.claim(FileKey { dev: 1, ino: 5 }).is_none());
    }

    #[test]
    fn a_corrupt_file_means_restart_for_everyone_and_never_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tail")).unwrap();
        std::fs::write(
            dir.path().join("tail").join(FILE_NAME),
            b"{\"version\":1,\"fi",
        )
        .unwrap();
        let s = Store::open(dir.path(), 1).unwrap();
        assert!(!s.first_start("/a/*.log"));
    }

    /// A symlink planted where the checkpoint or its tmp file goes never leads to writing,
    /// truncating or reading its target (outside the state directory): the checkpoint is
    /// written as a regular file in its place.
    #[test]
    fn symlinks_in_the_checkpoint_directory_are_never_followed() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let tail = state.join("tail");
        std::fs::create_dir_all(&tail).unwrap();
        let precious = tmp.path().join("precious");
        let doc = r#"{"version":1,"started":["k"],"files":[]}"#;
        std::fs::write(&precious, doc).unwrap();
        symlink(&precious, tail.join(format!("{FILE_NAME}.tmp"))).unwrap();
        symlink(&precious, tail.join(FILE_NAME)).unwrap();

        let s = Store::open(&state, 1).unwrap();
        assert!(
            !s.first_start("k"),
            "not read through the symlink: unreadable"
        );
        s.publish(0, vec![entry(5, 10, "/a/x.log")]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&precious).unwrap(),
            doc,
            "target untouched"
        );
        let meta = std::fs::symlink_metadata(tail.join(FILE_NAME)).unwrap();
        assert!(meta.file_type().is_file(), "replaced by a regular file");
        let s = Store::open(&state, 1).unwrap();
        assert_eq!(s.claim(FileKey { dev: 1, ino: 5 }).unwrap().offset, 10);

        // A planted FIFO is not opened for reading (that would block), nor written.
        std::fs::remove_file(tail.join(FILE_NAME)).unwrap();
        let fifo = std::ffi::CString::new(tail.join(FILE_NAME).to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let s = Store::open(&state, 1).unwrap();
        assert!(!s.first_start("k"));
        s.publish(0, vec![]).unwrap();
        let meta = std::fs::symlink_metadata(tail.join(FILE_NAME)).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), doc);

        // The directory itself as a symlink: renamed aside, never written through.
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let state2 = tmp.path().join("state2");
        std::fs::create_dir_all(&state2).unwrap();
        symlink(&elsewhere, state2.join("tail")).unwrap();
        let store = Store::open(&state2, 1).unwrap();
        drop(store);
        assert!(std::fs::symlink_metadata(state2.join("tail"))
            .unwrap()
            .is_dir());
        assert!(std::fs::symlink_metadata(state2.join("tail.not-ours"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn fingerprints() {
        let f = Fingerprint::of(b"hello");
        assert_eq!(f.len, 5);
        assert!(f.matches(b"hello world"));
        assert!(!f.matches(b"hell"));
        assert!(!f.matches(b"jello"));
        assert_eq!(Fingerprint::of(&[7u8; 1000]).len as usize, FP_MAX);
    }
}
