//! Throughput of the line validator (`check_line`) and of the input path that frames a byte
//! stream and normalises every line (`Framer` + `normalize_line`), over ~1 MB of varied,
//! realistic line protocol. Target: ≥ 1 GB/s for `check_line` on one core.
//!
//! Run: `cargo bench --bench validator`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lineship::line::{check_line, normalize_line, Framer, LineOptions, Outcome, Precision};

/// Small deterministic generator, so every run measures the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const REGIONS: [&str; 4] = ["eu-west-1", "us-east-2", "ap-south-1", "eu-central-1"];
const PATHS: [&str; 4] = [
    "/api/v2/write",
    "/health",
    "/metrics",
    "/api/v2/query?org=ops",
];

/// About 1 MB of lines shaped like Telegraf output: cpu, mem, disk, net, plus log lines with
/// string fields (some with escapes) and a share of lines without timestamps.
fn corpus() -> Vec<u8> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = Vec::with_capacity(1 << 20);
    let mut ts: u64 = 1_700_000_000_000_000_000;
    while buf.len() < 1_000_000 {
        ts += rng.below(1_000_000_000);
        let host = rng.below(500);
        let region = REGIONS[rng.below(4) as usize];
        let line = match rng.below(6) {
            0 | 1 => format!(
                "cpu,host=server{host:03},region={region},dc=ams{} usage_user={}.{},usage_system={}.{},idle={}i,ok=true {ts}",
                rng.below(9),
                rng.below(100),
                rng.below(100),
                rng.below(100),
                rng.below(1000),
                rng.below(100)
            ),
            2 => format!(
                "mem,host=server{host:03},region={region} used={}i,free={}u,used_percent={}.{:06} {ts}",
                rng.below(1 << 40),
                rng.below(1 << 40),
                rng.below(100),
                rng.below(1_000_000)
            ),
            3 => format!(
                "disk,device=nvme{}n1,fstype=ext4,host=server{host:03},mode=rw,path=/var/lib free={}i,inodes_free={}i,used_percent={}.{}e1",
                rng.below(4),
                rng.below(1 << 42),
                rng.below(1 << 24),
                rng.below(10),
                rng.below(1000)
            ),
            4 => format!(
                "net,host=server{host:03},interface=eth{} bytes_recv={}i,bytes_sent={}i,drop_in=0i,err_in=F {ts}",
                rng.below(4),
                rng.below(1 << 45),
                rng.below(1 << 45)
            ),
            _ => format!(
                "http_log,app=web,host=server{host:03},status={} message=\"GET {} took {}ms \\\"ok\\\"\",bytes={}i {ts}",
                200 + rng.below(4),
                PATHS[rng.below(4) as usize],
                rng.below(5000),
                rng.below(100_000)
            ),
        };
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
    }
    buf
}

fn benches(c: &mut Criterion) {
    let data = corpus();
    let lines: Vec<&[u8]> = data
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    for line in &lines {
        check_line(line, Precision::Ns).expect("generated lines are valid");
    }

    let mut group = c.benchmark_group("validator");
    group.throughput(Throughput::Bytes(data.len() as u64));

    group.bench_function("check_line", |b| {
        b.iter(|| {
            let mut accepted = 0usize;
            for line in &lines {
                accepted += check_line(black_box(line), Precision::Ns).is_ok() as usize;
            }
            assert_eq!(accepted, lines.len());
        })
    });

    let opts = LineOptions {
        precision: Precision::Ns,
        max_line_bytes: 64 * 1024,
        stamp_missing: true,
    };
    let mut out = Vec::with_capacity(data.len() + lines.len() * 24);
    group.bench_function("framer_normalize", |b| {
        b.iter(|| {
            out.clear();
            let mut framer = Framer::new(opts.max_line_bytes);
            let mut accepted = 0usize;
            let mut handle = |r: lineship::line::Framed<'_>| {
                if let Ok(line) = r {
                    accepted +=
                        (normalize_line(line, &opts, Some(1_700_000_000_000_000_000), &mut out)
                            == Outcome::Accepted) as usize;
                }
            };
            // 64 KiB reads, like a file tail or a pipe.
            for chunk in black_box(&data).chunks(64 * 1024) {
                framer.feed(chunk, &mut handle);
            }
            framer.finish(&mut handle);
            assert_eq!(accepted, lines.len());
        })
    });
    group.finish();
}

criterion_group! {
    name = validator;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = benches
}
criterion_main!(validator);
