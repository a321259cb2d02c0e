//! The cost per line of `balance = "shard"`: hashing a line's series (measurement and tag set,
//! order-independent) and picking its URL by rendezvous hashing, alone and with the copy of
//! the line into its URL's piece, as the batcher does it.
//!
//! `cargo bench --bench shard`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lineship::lanes::{series_hash, Shards};

/// ~75-byte lines like the load tool's, 1,000 hosts × 3 regions.
fn lines(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n as u64 {
        out.extend_from_slice(
            format!(
                "cpu,host=host{:04},region=eu-west-{} usage_user={}.{},seq={}i {}\n",
                i % 1000,
                i % 3,
                i % 100,
                i % 7,
                i,
                1_700_000_000_000_000_000u64 + i * 1_000_000
            )
            .as_bytes(),
        );
    }
    out
}

fn bench(c: &mut Criterion) {
    const N: usize = 100_000;
    let data = lines(N);
    let mut g = c.benchmark_group("shard");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("series_hash", |b| {
        b.iter(|| {
            data.split(|&c| c == b'\n')
                .map(series_hash)
                .fold(0u64, |a, h| a ^ h)
        })
    });
    for urls in [2usize, 4, 16, 64] {
        let names: Vec<String> = (0..urls)
            .map(|i| format!("http://vminsert-{i}:8480/"))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let shards = Shards::for_urls(&refs);
        g.bench_with_input(BenchmarkId::new("lane_of", urls), &shards, |b, s| {
            b.iter(|| {
                data.split(|&c| c == b'\n')
                    .map(|l| s.lane_of(l))
                    .sum::<usize>()
            })
        });
        g.bench_with_input(BenchmarkId::new("split_chunk", urls), &shards, |b, s| {
            b.iter(|| {
                let share = data.len() / urls * 5 / 4 + 256;
                let mut parts: Vec<Vec<u8>> =
                    (0..urls).map(|_| Vec::with_capacity(share)).collect();
                for line in data.split_inclusive(|&c| c == b'\n') {
                    let body = line.strip_suffix(b"\n").unwrap_or(line);
                    parts[s.lane_of(body)].extend_from_slice(line);
                }
                parts.iter().map(Vec::len).sum::<usize>()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
