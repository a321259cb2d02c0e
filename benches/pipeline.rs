//! Batch + gzip throughput: chunks of generated line protocol through `batch::Builder` and
//! `batch::Encoder`, as the batcher thread runs them; then `agent.compress_threads = 1` (on the
//! batcher thread) against 2 (`batch::CompressPool`); then plain gzip on 1 and 2 independent
//! threads, the most two threads can gain on this machine; then what level-1 gzip alone costs
//! per line of the load tool's, with libdeflate and with ISA-L (`agent.gzip_engine`). Every
//! group but the last uses the process default, `auto` (ISA-L where `libisal.so.2` loads).
//!
//! `cargo bench --bench pipeline`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lineship::batch::{
    Builder, Chunk, CompressPool, Dest, Encoded, Encoder, GzipEngine, Limits, RawBatch, Want,
};
use lineship::line::Precision;
use lineship_load::gen::{GenOpts, LineGen};

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

/// Gzips each batch of `part`; the compressed bytes.
fn gzip_all(part: &[Vec<u8>], enc: &mut Encoder) -> usize {
    part.iter().map(|b| enc.encode_slice(b).0.len()).sum()
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

    // The batch + compress stage as `agent.compress_threads` runs it: the same chunks,
    // ready-made outside the timing, gzip level 1. `= 1` compresses on the batcher thread;
    // more hand sealed batches to a pool and take them back in order. One builder for the
    // whole run, as the batcher has: batch buffers come back and are reused
    // (`Builder::recycle`).
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
    // Both groups once per gzip engine (`agent.gzip_engine`, process-wide, as in the daemon):
    // the pool's workers make their encoders with the engine selected here.
    for engine in [GzipEngine::Libdeflate, GzipEngine::Isal] {
        let name = engine.as_str();
        if lineship::batch::select_engine(engine).as_deref() != Ok(name) {
            eprintln!(
                "compress_threads, gzip_ceiling: SKIPPED {name}: libisal.so.2 cannot be loaded"
            );
            continue;
        }
        let every = Duration::from_secs(1);
        let mut g = c.benchmark_group(format!("compress_threads ({name})"));
        g.throughput(Throughput::Bytes(total as u64));
        g.sample_size(10);
        g.bench_function("compress_threads = 1 (batcher thread)", |b| {
            let mut builder = Builder::new(limits);
            let mut enc = Encoder::new(1);
            b.iter_batched(
                ready_made,
                |chunks| {
                    let mut sealed = Vec::new();
                    let mut out_bytes = 0usize;
                    let now = Instant::now();
                    let mut gzip = |sealed: &mut Vec<RawBatch>, builder: &mut Builder| {
                        for raw in sealed.drain(..) {
                            out_bytes += enc.encode_slice(&raw.data).0.len();
                            builder.recycle(raw.data);
                        }
                    };
                    for chunk in chunks {
                        builder.push(chunk, now, &mut sealed);
                        gzip(&mut sealed, &mut builder);
                    }
                    builder.flush_all(&mut sealed);
                    gzip(&mut sealed, &mut builder);
                    out_bytes
                },
                BatchSize::LargeInput,
            )
        });
        g.bench_function("compress_threads = 2 (pool)", |b| {
            let mut pool = CompressPool::start(2).unwrap();
            let mut builder = Builder::new(limits);
            b.iter_batched(
                ready_made,
                |chunks| {
                    let mut sealed = Vec::new();
                    let mut out_bytes = 0usize;
                    let now = Instant::now();
                    let mut beat = || {};
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
        g.finish();

        // What this machine gives two threads at all: the same sealed batches gzipped by 1 thread,
        // then split between 2 threads that share nothing (no batcher, no channels). The pool's
        // scaling can at best match this one's, measured in the same run.
        let mut builder = Builder::new(limits);
        let mut sealed = Vec::new();
        for chunk in ready_made() {
            builder.push(chunk, Instant::now(), &mut sealed);
        }
        builder.flush_all(&mut sealed);
        let batches: Vec<Vec<u8>> = sealed.into_iter().map(|r| r.data).collect();
        let mut g = c.benchmark_group(format!("gzip_ceiling ({name})"));
        g.throughput(Throughput::Bytes(total as u64));
        g.sample_size(10);
        g.bench_function("1 thread", |b| {
            let mut enc = Encoder::new(1);
            b.iter(|| gzip_all(&batches, &mut enc))
        });
        g.bench_function("2 independent threads", |b| {
            let (left, right) = batches.split_at(batches.len() / 2);
            b.iter(|| {
                std::thread::scope(|s| {
                    let other = s.spawn(|| gzip_all(right, &mut Encoder::new(1)));
                    gzip_all(left, &mut Encoder::new(1)) + other.join().unwrap()
                })
            })
        });
        g.finish();
    }
    lineship::batch::select_engine(GzipEngine::Auto).expect("auto always resolves");

    // What gzip level 1 alone costs per line on the load tool's lines (the ones
    // `lineship-load compare` sends: random values, a sequence number and a timestamp per
    // line, so less compressible than the lines above), in batches of 5,000 lines.
    let mut gen = LineGen::new(&GenOpts {
        start: 0,
        tag_cardinality: 1000,
        timestamp_base: Some(1_700_000_000_000_000_000),
        seed: 0x5eed,
    });
    let load_batches: Vec<Vec<u8>> = (0..44)
        .map(|_| {
            let mut v = Vec::new();
            gen.fill_lines(&mut v, 5000);
            v
        })
        .collect();
    let mut g = c.benchmark_group("gzip_floor");
    g.throughput(Throughput::Elements(44 * 5000));
    g.sample_size(10);
    for engine in [GzipEngine::Libdeflate, GzipEngine::Isal] {
        let mut enc = Encoder::with_engine(1, engine);
        if enc.engine() != engine.as_str() {
            eprintln!(
                "gzip_floor: SKIPPED {}: libisal.so.2 cannot be loaded",
                engine.as_str()
            );
            continue;
        }
        let name = format!("level 1 {}, the load tool's lines", engine.as_str());
        g.bench_function(name, |b| b.iter(|| gzip_all(&load_batches, &mut enc)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
