//! Batch + gzip throughput: chunks of generated line protocol through `batch::Builder` and
//! `batch::Encoder`, as the batcher thread runs them; then the same with the compression pool
//! (`batch::CompressPool`) on 1 and 2 threads.
//!
//! `cargo bench --bench pipeline`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lineship::batch::{Builder, Chunk, CompressPool, Dest, Encoded, Encoder, Limits, Want};
use lineship::line::Precision;

/// ~75-byte lines like the load tool's, in 64 KiB chunks.
fn chunks(total_bytes: usize) -> Vec<(Vec<u8>, u32)> {
    let mut out = Vec::new();
    let mut cur = Vec::with_capacity(64 << 10);
    let mut lines = 0u32;
    let mut i = 0u64;
    let mut produced = 0;
    while produced < total_bytes {
        let line = format!(
            "cpu,host=host{:04},region=eu-west-{} usage_user={}.{},seq={}i {}\n",
            i % 1000,
            i % 3,
            i % 100,
            i % 7,
            i,
            1_700_000_000_000_000_000u64 + i * 1_000_000
        );
        cur.extend_from_slice(line.as_bytes());
        lines += 1;
        produced += line.len();
        i += 1;
        if cur.len() >= 64 << 10 {
            out.push((
                std::mem::replace(&mut cur, Vec::with_capacity(64 << 10)),
                lines,
            ));
            lines = 0;
        }
    }
    if !cur.is_empty() {
        out.push((cur, lines));
    }
    out
}

fn bench(c: &mut Criterion) {
    let input = chunks(16 << 20);
    let total: usize = input.iter().map(|(d, _)| d.len()).sum();
    let dest = Dest::new("bench", Precision::Ns);
    let limits = Limits {
        max_lines: 5000,
        max_bytes: 4 << 20,
        flush_interval: Duration::from_secs(1),
    };
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Bytes(total as u64));
    g.sample_size(10);
    for level in [0u32, 1, 3] {
        g.bench_function(format!("batch+encode level {level}"), |b| {
            let mut enc = Encoder::new(level);
            b.iter(|| {
                let mut builder = Builder::new(limits);
                let mut sealed = Vec::new();
                let mut out_bytes = 0usize;
                let now = Instant::now();
                for (data, lines) in &input {
                    builder.push(
                        Chunk {
                            dest: dest.clone(),
                            data: data.clone(),
                            lines: *lines,
                            ack: None,
                        },
                        now,
                        &mut sealed,
                    );
                    for raw in sealed.drain(..) {
                        out_bytes += enc.encode(raw).body.len();
                    }
                }
                builder.flush_all(&mut sealed);
                for raw in sealed.drain(..) {
                    out_bytes += enc.encode(raw).body.len();
                }
                out_bytes
            })
        });
    }
    g.finish();

    // The batch + compress stage with the compression pool (`agent.compress_threads`): the
    // same chunks, ready-made outside the timing, gzip level 1, sealed batches compressed on 1
    // or 2 threads and taken back in order.
    let mut g = c.benchmark_group("compress_threads");
    g.throughput(Throughput::Bytes(total as u64));
    g.sample_size(10);
    for threads in [1usize, 2] {
        g.bench_function(format!("batch+pool level 1, {threads} thread(s)"), |b| {
            let mut pool = CompressPool::start(threads).unwrap();
            // One builder for the whole run, as the batcher has: batch buffers come back
            // from the pool and are reused (`Builder::recycle`).
            let mut builder = Builder::new(limits);
            let ready_made = || -> Vec<Chunk> {
                input
                    .iter()
                    .map(|(data, lines)| Chunk {
                        dest: dest.clone(),
                        data: data.clone(),
                        lines: *lines,
                        ack: None,
                    })
                    .collect()
            };
            b.iter_batched(
                ready_made,
                |chunks| {
                    let mut sealed = Vec::new();
                    let mut out_bytes = 0usize;
                    let now = Instant::now();
                    let mut beat = || {};
                    let every = Duration::from_secs(1);
                    let mut take = |e: Encoded<()>, builder: &mut Builder| {
                        out_bytes += e.bodies.iter().map(|b| b.1.len()).sum::<usize>();
                        builder.recycle(e.raw.data);
                    };
                    for chunk in chunks {
                        builder.push(chunk, now, &mut sealed);
                        for raw in sealed.drain(..) {
                            pool.submit(raw, vec![Want { level: 1, tag: () }], every, &mut beat);
                        }
                        for e in pool.ready() {
                            take(e, &mut builder);
                        }
                    }
                    builder.flush_all(&mut sealed);
                    for raw in sealed.drain(..) {
                        pool.submit(raw, vec![Want { level: 1, tag: () }], every, &mut beat);
                    }
                    for e in pool.finish(every, &mut beat) {
                        take(e, &mut builder);
                    }
                    out_bytes
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
