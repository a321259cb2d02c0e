//! Spool append and replay throughput with `fsync = "interval"` (one sync per iteration, as
//! the periodic sync would do), on ~100 KB compressed batches like the batcher produces, and
//! the per-record cost on many small records (a quiet host's backlog after a long outage:
//! one small batch per `flush_interval`).
//!
//! `cargo bench --bench spool`

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lineship::batch::{Batch, Dest, Encoding};
use lineship::config::{FsyncPolicy, SpoolSettings, WhenFull};
use lineship::line::Precision;
use lineship::spool::Spool;
use lineship::spool::SpoolStats;

const RECORD: usize = 100 << 10;
const RECORDS: usize = 640; // 64 MiB per iteration

/// Small records: 20,000 of 1 KiB, like a day of 1 s flushes of a few dozen lines.
const SMALL: usize = 1 << 10;
const SMALL_RECORDS: usize = 20_000;

fn batch(i: usize) -> Batch {
    sized_batch(i, RECORD)
}

fn sized_batch(i: usize, size: usize) -> Batch {
    // Incompressible-looking bytes: the spool stores what it is given either way.
    let body: Vec<u8> = (0..size)
        .map(|j| (j as u32).wrapping_mul(2654435761).wrapping_add(i as u32) as u8)
        .collect();
    Batch {
        dest: Dest::new("bench", Precision::Ns),
        body: Bytes::from(body),
        encoding: Encoding::Gzip,
        lines: 5000,
        raw_len: size * 4,
        acks: Vec::new(),
    }
}

fn bench(c: &mut Criterion) {
    let settings = SpoolSettings {
        max_size: 4 << 30,
        when_full: WhenFull::DropOldest,
        fsync: FsyncPolicy::Interval,
        fsync_interval: Duration::from_millis(500),
    };
    let batches: Vec<Batch> = (0..RECORDS).map(batch).collect();
    append_and_replay(
        c,
        "spool",
        Throughput::Bytes((RECORD * RECORDS) as u64),
        "64 MiB",
        &batches,
        &settings,
    );
    let small: Vec<Batch> = (0..SMALL_RECORDS).map(|i| sized_batch(i, SMALL)).collect();
    append_and_replay(
        c,
        "spool small records",
        Throughput::Elements(SMALL_RECORDS as u64),
        "20k x 1 KiB",
        &small,
        &settings,
    );
}

/// Appends `batches` to an empty spool and syncs.
fn filled(dir: &std::path::Path, batches: &[Batch], settings: &SpoolSettings) -> Spool {
    let sp = Spool::open(dir, settings, Arc::new(SpoolStats::default())).unwrap();
    for batch in batches {
        sp.append(batch, || false).unwrap();
    }
    sp.sync().unwrap();
    sp
}

/// Benchmarks `append {what} + sync` and `replay {what} (next + ack)` in group `group`.
fn append_and_replay(
    c: &mut Criterion,
    group: &str,
    throughput: Throughput,
    what: &str,
    batches: &[Batch],
    settings: &SpoolSettings,
) {
    let mut g = c.benchmark_group(group);
    g.throughput(throughput);
    g.sample_size(10);
    g.bench_function(format!("append {what} + sync"), |b| {
        b.iter_with_setup(
            || tempfile::tempdir().unwrap(),
            |dir| {
                filled(dir.path(), batches, settings);
                dir
            },
        )
    });
    g.bench_function(format!("replay {what} (next + ack)"), |b| {
        b.iter_with_setup(
            || {
                let dir = tempfile::tempdir().unwrap();
                filled(dir.path(), batches, settings);
                dir
            },
            |dir| {
                let sp =
                    Spool::open(dir.path(), settings, Arc::new(SpoolStats::default())).unwrap();
                let mut n = 0;
                while let Some((id, _)) = sp.next() {
                    sp.ack(id);
                    n += 1;
                }
                assert_eq!(n, batches.len());
                sp.sync().unwrap();
                dir
            },
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
