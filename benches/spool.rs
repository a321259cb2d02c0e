//! Spool append and replay throughput with `fsync = "interval"` (one sync per iteration, as
//! the periodic sync would do), on ~100 KB compressed batches like the batcher produces.
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
use lineship::telemetry::Stats;

const RECORD: usize = 100 << 10;
const RECORDS: usize = 640; // 64 MiB per iteration

fn batch(i: usize) -> Batch {
    // Incompressible-looking bytes: the spool stores what it is given either way.
    let body: Vec<u8> = (0..RECORD)
        .map(|j| (j as u32).wrapping_mul(2654435761).wrapping_add(i as u32) as u8)
        .collect();
    Batch {
        dest: Dest::new("bench", Precision::Ns),
        body: Bytes::from(body),
        encoding: Encoding::Gzip,
        lines: 5000,
        raw_len: RECORD * 4,
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
    let mut g = c.benchmark_group("spool");
    g.throughput(Throughput::Bytes((RECORD * RECORDS) as u64));
    g.sample_size(10);
    g.bench_function("append 64 MiB + sync", |b| {
        b.iter_with_setup(
            || tempfile::tempdir().unwrap(),
            |dir| {
                let sp = Spool::open(dir.path(), &settings, Arc::new(Stats::default())).unwrap();
                for batch in &batches {
                    sp.append(batch, || false).unwrap();
                }
                sp.sync().unwrap();
                dir
            },
        )
    });
    g.bench_function("replay 64 MiB (next + ack)", |b| {
        b.iter_with_setup(
            || {
                let dir = tempfile::tempdir().unwrap();
                let sp = Spool::open(dir.path(), &settings, Arc::new(Stats::default())).unwrap();
                for batch in &batches {
                    sp.append(batch, || false).unwrap();
                }
                sp.sync().unwrap();
                drop(sp);
                dir
            },
            |dir| {
                let sp = Spool::open(dir.path(), &settings, Arc::new(Stats::default())).unwrap();
                let mut n = 0;
                while let Some((id, _)) = sp.next() {
                    sp.ack(id);
                    n += 1;
                }
                assert_eq!(n, RECORDS);
                sp.sync().unwrap();
                dir
            },
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
