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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::Write;
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
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "cannot create the tail checkpoint directory {}",
                dir.display()
            )
        })?;
        let path = dir.join(FILE_NAME);
        let (mut loaded, mut started, mut unreadable) = (HashMap::new(), BTreeSet::new(), false);
        match std::fs::read(&path) {
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
                tracing::error!(path = %path.display(), error = %e, "cannot read the tail checkpoint file; reading every tailed file from its start (lines may be sent twice)");
                unreadable = true;
            }
        }
        Ok(Store {
            dir,
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
        write_atomic(&self.dir, FILE_NAME, &bytes)
    }
}

/// Writes `dir/name` as tmp + fsync + rename + fsync of the directory.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
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
