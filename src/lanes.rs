//! Delivery lanes: where sealed batches go. A lane is one output, or one URL of an output with
//! `balance = "shard"`; each has its own sender, backoff, memory bound and spool.
//!
//! - [`plan`] turns the settings into lanes (pure), and names each lane's spool directory:
//!   `state_dir/spool/` for the `default` output (so nothing an earlier version spooled is
//!   stranded), `state_dir/spool/NAME/` for `[outputs.NAME]`, and `shard-<hash of the URL>/`
//!   under the output's directory for each URL of a sharded output.
//! - [`Shards`] picks a series' URL: rendezvous (highest random weight) hashing of the series
//!   key, so adding a URL moves only the series that the new URL wins, and removing one moves
//!   only its own. The series key is the measurement and the tag set, independent of the
//!   order the tags are written in.
//! - [`orphaned_spools`] lists spool directories no configured lane uses any more.

use std::path::{Path, PathBuf};

use crate::config::{Balance, OutputSettings, Settings};

/// One delivery lane.
#[derive(Debug, Clone)]
pub struct LanePlan {
    /// Index of its output in [`Settings::outputs`].
    pub output: usize,
    /// The output's settings, with only the shard's URL for a shard lane (`balance` stays
    /// `shard`, which with one URL sends like `failover`).
    pub settings: OutputSettings,
    pub spool_dir: PathBuf,
    /// The URL this lane holds, for a shard lane.
    pub shard: Option<String>,
}

/// How one output's lines reach its lanes.
#[derive(Debug, Clone)]
pub struct OutputRoute {
    /// The output's lanes, a bit per lane.
    pub lanes: u64,
    /// For a sharded output: which lane each series goes to.
    pub shards: Option<Shards>,
}

/// The lanes, in output order, and each output's route.
#[derive(Debug, Clone)]
pub struct Plan {
    pub lanes: Vec<LanePlan>,
    pub routes: Vec<OutputRoute>,
}

/// The spool directory of an output.
pub fn output_spool_dir(state_dir: &Path, output: &str) -> PathBuf {
    let base = state_dir.join("spool");
    if output == "default" {
        base
    } else {
        base.join(output)
    }
}

/// The spool directory of one URL of a sharded output, under the output's directory.
pub fn shard_spool_dir(output_dir: &Path, url: &str) -> PathBuf {
    output_dir.join(format!("shard-{:016x}", url_seed(url)))
}

pub fn plan(settings: &Settings) -> Plan {
    let mut lanes = Vec::new();
    let mut routes = Vec::new();
    for (i, o) in settings.outputs.iter().enumerate() {
        let dir = output_spool_dir(&settings.state_dir, &o.name);
        let first = lanes.len();
        if o.balance == Balance::Shard {
            for u in &o.urls {
                let mut one = o.clone();
                // Still `shard`: one URL, and the output is healthy only while all are.
                one.urls = vec![u.clone()];
                lanes.push(LanePlan {
                    output: i,
                    settings: one,
                    spool_dir: shard_spool_dir(&dir, u.base.as_str()),
                    shard: Some(u.base.to_string()),
                });
            }
        } else {
            lanes.push(LanePlan {
                output: i,
                settings: o.clone(),
                spool_dir: dir,
                shard: None,
            });
        }
        let ids: Vec<usize> = (first..lanes.len()).collect();
        let mask = ids.iter().fold(0u64, |m, &l| m | 1 << l);
        // One URL needs no hashing: its lane takes everything.
        let shards = (o.balance == Balance::Shard && o.urls.len() > 1).then(|| Shards {
            seeds: o.urls.iter().map(|u| url_seed(u.base.as_str())).collect(),
            lanes: ids,
        });
        routes.push(OutputRoute {
            lanes: mask,
            shards,
        });
    }
    Plan { lanes, routes }
}

/// Spool directories under `state_dir/spool/` that hold segments but belong to no lane of
/// `settings`: an output (or a shard URL) removed from the config. Their data stays where it
/// is; `lineship check` names them.
pub fn orphaned_spools(settings: &Settings) -> Vec<PathBuf> {
    let plan = plan(settings);
    let used: Vec<&Path> = plan.lanes.iter().map(|l| l.spool_dir.as_path()).collect();
    let mut found = Vec::new();
    let root = settings.state_dir.join("spool");
    collect_spools(&root, 0, &mut found);
    found.retain(|d| !used.contains(&d.as_path()));
    found.sort();
    found
}

/// Directories at most two levels under `dir` (an output, a shard of one) that hold spool
/// segments. Symlinks are not followed.
fn collect_spools(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut has_segments = false;
    for e in entries.flatten() {
        let Ok(kind) = e.file_type() else { continue };
        let name = e.file_name();
        let name = name.to_string_lossy();
        if kind.is_file() && name.ends_with(".seg") {
            has_segments = true;
        } else if kind.is_dir() && depth < 2 && name != "corrupt" {
            collect_spools(&e.path(), depth + 1, found);
        }
    }
    if has_segments {
        found.push(dir.to_path_buf());
    }
}

/// The URLs of a sharded output, as hash seeds, and the lane of each.
#[derive(Debug, Clone)]
pub struct Shards {
    pub seeds: Vec<u64>,
    pub lanes: Vec<usize>,
}

impl Shards {
    /// Shards over `urls`, lane `i` for `urls[i]`.
    pub fn for_urls(urls: &[&str]) -> Shards {
        Shards {
            seeds: urls.iter().map(|u| url_seed(u)).collect(),
            lanes: (0..urls.len()).collect(),
        }
    }

    /// The lane of the series of `line` (a checked line, without its `\n`).
    pub fn lane_of(&self, line: &[u8]) -> usize {
        self.lanes[pick(&self.seeds, series_hash(line))]
    }
}

/// A URL's seed: stable across runs and versions (xxh3 is specified), so a series keeps its
/// URL after a restart.
fn url_seed(url: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(url.as_bytes())
}

/// The URL with the highest score for `series`. Adding a URL takes only the series whose
/// highest score it has; the others keep theirs.
pub fn pick(seeds: &[u64], series: u64) -> usize {
    let mut best = (0u64, 0usize);
    for (i, &s) in seeds.iter().enumerate() {
        let score = mix(series ^ s);
        if i == 0 || score > best.0 {
            best = (score, i);
        }
    }
    best.1
}

/// A 64-bit finalizer (from SplitMix64): every input bit affects every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash of a line's series: its measurement and its tags, each `key=value` hashed alone and
/// the tag hashes added, so `m,a=1,b=2` and `m,b=2,a=1` are the same series. Escapes are kept
/// as written (a backslash escapes the next byte).
pub fn series_hash(line: &[u8]) -> u64 {
    let mut parts = Parts {
        line,
        at: 0,
        done: false,
    };
    let Some(measurement) = parts.next() else {
        return 0;
    };
    let mut h = xxhash_rust::xxh3::xxh3_64(measurement);
    for tag in parts {
        h = h.wrapping_add(mix(xxhash_rust::xxh3::xxh3_64(tag)));
    }
    h
}

/// The comma-separated parts of a line's series key, up to its first unescaped space.
struct Parts<'a> {
    line: &'a [u8],
    at: usize,
    done: bool,
}

impl<'a> Iterator for Parts<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        // A byte loop: the parts are a few bytes long, too short for memchr to pay off
        // (measured: memchr3 was 12% slower on the bench's lines).
        let start = self.at;
        let mut i = start;
        while i < self.line.len() {
            match self.line[i] {
                b'\\' => i += 2,
                b',' => {
                    self.at = i + 1;
                    return Some(&self.line[start..i]);
                }
                b' ' => break,
                _ => i += 1,
            }
        }
        self.done = true;
        Some(&self.line[start..i.min(self.line.len())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_series_is_the_measurement_and_the_tag_set_in_any_order() {
        let h = series_hash(b"cpu,host=a,dc=x usage=1 1");
        assert_eq!(h, series_hash(b"cpu,dc=x,host=a usage=2 2"));
        assert_eq!(h, series_hash(b"cpu,host=a,dc=x v=1"));
        assert_ne!(h, series_hash(b"cpu,host=b,dc=x usage=1 1"));
        assert_ne!(h, series_hash(b"mem,host=a,dc=x usage=1 1"));
        assert_ne!(h, series_hash(b"cpu,host=a usage=1 1"));
        // An escaped comma or space stays inside its part.
        assert_ne!(
            series_hash(b"cpu,host=a\\,dc=x v=1"),
            series_hash(b"cpu,host=a,dc=x v=1")
        );
        assert_eq!(
            series_hash(b"c\\ pu,host=a v=1"),
            series_hash(b"c\\ pu,host=a v=2")
        );
        // A trailing backslash cannot run past the end.
        let _ = series_hash(b"cpu\\");
    }

    #[test]
    fn spool_directories_keep_the_default_where_it_was() {
        let d = Path::new("/s");
        assert_eq!(output_spool_dir(d, "default"), Path::new("/s/spool"));
        assert_eq!(output_spool_dir(d, "lake"), Path::new("/s/spool/lake"));
        let a = shard_spool_dir(Path::new("/s/spool"), "http://a:8428/");
        assert!(a.starts_with("/s/spool"));
        assert!(a
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("shard-"));
        assert_ne!(a, shard_spool_dir(Path::new("/s/spool"), "http://b:8428/"));
    }

    #[test]
    fn orphaned_spools_are_the_ones_no_lane_uses_and_symlinks_are_not_followed() {
        let state = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let spool = state.path().join("spool");
        let seg = |d: &Path| {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("0000000000000001.seg"), b"x").unwrap();
        };
        seg(&spool); // the default output's: in use
        seg(&spool.join("lake")); // a removed output
        seg(&spool.join("lake").join("shard-00000000000000aa")); // a removed shard of it
        seg(&spool.join("corrupt")); // damaged files set aside: not a spool
        std::fs::create_dir_all(spool.join("empty")).unwrap(); // nothing to deliver
        seg(elsewhere.path());
        std::os::unix::fs::symlink(elsewhere.path(), spool.join("link")).unwrap();
        let settings = Settings::from_toml(
            &format!(
                "state_dir = {:?}\n[output]\nurl = \"http://a:1\"\nbucket = \"b\"\n",
                state.path()
            ),
            false,
            |_| None,
        )
        .unwrap();
        assert_eq!(
            orphaned_spools(&settings),
            [
                spool.join("lake"),
                spool.join("lake/shard-00000000000000aa")
            ]
        );
        // Sharding the default output strands what its unsharded spool holds: named too.
        let sharded = Settings::from_toml(
            &format!(
                "state_dir = {:?}\n[output]\nurls = [\"http://a:1\", \"http://b:1\"]\nbalance = \"shard\"\nbucket = \"b\"\n[outputs.lake]\nurl = \"http://c:1\"\nbucket = \"b\"\n",
                state.path()
            ),
            false,
            |_| None,
        )
        .unwrap();
        assert_eq!(
            orphaned_spools(&sharded),
            [spool.clone(), spool.join("lake/shard-00000000000000aa")]
        );
    }

    fn seeds(n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| url_seed(&format!("http://h{i}:8086/")))
            .collect()
    }

    #[test]
    fn series_spread_evenly_over_the_urls() {
        let s = seeds(4);
        let mut n = [0usize; 4];
        for i in 0..40_000 {
            n[pick(&s, series_hash(format!("m,host=h{i} v=1").as_bytes()))] += 1;
        }
        for c in n {
            assert!((9_000..11_000).contains(&c), "{n:?}");
        }
    }

    /// The parts of a series key, found independently of [`Parts`].
    fn naive_parts(line: &[u8]) -> Vec<&[u8]> {
        let (mut out, mut start, mut i) = (Vec::new(), 0, 0);
        while i < line.len() {
            match line[i] {
                b'\\' => i += 2,
                b',' => {
                    out.push(&line[start..i]);
                    start = i + 1;
                    i += 1;
                }
                b' ' => break,
                _ => i += 1,
            }
        }
        out.push(&line[start..i.min(line.len())]);
        out
    }

    proptest! {
        #[test]
        fn parts_match_a_byte_by_byte_scan(line in proptest::collection::vec(
            prop_oneof![Just(b'\\'), Just(b','), Just(b' '), Just(b'='), Just(b'a'), Just(b'b')],
            0..40,
        )) {
            let parts: Vec<&[u8]> = Parts { line: &line, at: 0, done: false }.collect();
            prop_assert_eq!(parts, naive_parts(&line));
        }

        /// Adding a URL moves a series only to the new URL; removing it moves back only those.
        #[test]
        fn adding_a_url_moves_only_its_share(n in 1usize..8, keys in proptest::collection::vec(any::<u64>(), 1..200)) {
            let before = seeds(n);
            let after = seeds(n + 1);
            for k in keys {
                let (a, b) = (pick(&before, k), pick(&after, k));
                prop_assert!(b == a || b == n, "{k}: {a} -> {b}");
            }
        }
    }
}
