//! The transaction write buffer over its two indexes, side by side: the
//! adaptive radix tree (default) and the `BTreeMap` baseline.
//!
//! Workloads (16-byte random keys, 64-byte values, as the issue asks): random
//! inserts into an empty buffer, point gets in random order, a full ordered
//! iteration, each at 100k and 1M keys; and the rollback (`cleanup`) of a
//! staging that overwrote 100k keys. Run with a short measurement time:
//!
//! ```text
//! cargo bench -p tikv-core --bench membuffer -- --measurement-time 2
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_main};
use tikv_core::rng::Rng;
use tikv_core::txn::membuffer::{IndexKind, MemBuffer};

const KINDS: [(IndexKind, &str); 2] = [(IndexKind::Art, "art"), (IndexKind::BTreeMap, "btreemap")];
const SIZES: [usize; 2] = [100_000, 1_000_000];

fn random_keys(n: usize, seed: u64) -> Vec<[u8; 16]> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&rng.next_u64().to_be_bytes());
            k[8..].copy_from_slice(&rng.next_u64().to_be_bytes());
            k
        })
        .collect()
}

fn shuffled(keys: &[[u8; 16]], seed: u64) -> Vec<[u8; 16]> {
    let mut rng = Rng::new(seed);
    let mut out = keys.to_vec();
    for i in (1..out.len()).rev() {
        let j = rng.gen_range(0, i as u64 + 1) as usize;
        out.swap(i, j);
    }
    out
}

fn build(kind: IndexKind, keys: &[[u8; 16]], value: &Bytes) -> MemBuffer {
    let mut buf = MemBuffer::with_index(kind);
    for k in keys {
        buf.set(k, value.clone()).expect("no limits set");
    }
    buf
}

fn bench(c: &mut Criterion) {
    let value = Bytes::from(vec![0x5a; 64]);
    for n in SIZES {
        let keys = random_keys(n, 42);
        let probes = shuffled(&keys, 7);

        let mut g = c.benchmark_group(format!("insert/{n}"));
        g.throughput(Throughput::Elements(n as u64));
        g.sample_size(10);
        for (kind, name) in KINDS {
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_batched(|| (), |()| build(kind, &keys, &value), BatchSize::PerIteration)
            });
        }
        g.finish();

        let bufs: Vec<_> =
            KINDS.iter().map(|&(kind, name)| (name, build(kind, &keys, &value))).collect();
        for (name, buf) in &bufs {
            eprintln!("{name} {n} keys: ~{} bytes held ({} per key)", buf.mem(), buf.mem() / n);
        }

        let mut g = c.benchmark_group(format!("get/{n}"));
        g.throughput(Throughput::Elements(n as u64));
        g.sample_size(10);
        for (name, buf) in &bufs {
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    let mut hits = 0usize;
                    for k in &probes {
                        hits += usize::from(buf.get(black_box(k)).is_some());
                    }
                    assert_eq!(hits, n);
                    hits
                })
            });
        }
        g.finish();

        let mut g = c.benchmark_group(format!("iter/{n}"));
        g.throughput(Throughput::Elements(n as u64));
        g.sample_size(10);
        for (name, buf) in &bufs {
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    let mut bytes = 0usize;
                    for (k, e) in buf.iter(..) {
                        bytes += k.len() + usize::from(e.flags.bits());
                    }
                    bytes
                })
            });
        }
        g.finish();
    }

    // Rollback of a staging that overwrote 100k existing keys: only the
    // `cleanup` is timed; the same buffer is reused, since cleanup restores
    // it exactly.
    let n = 100_000;
    let keys = random_keys(n, 43);
    let writes = shuffled(&keys, 9);
    let staged = Bytes::from(vec![0xa5; 64]);
    let mut g = c.benchmark_group("rollback/100k");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(1));
    for (kind, name) in KINDS {
        let mut buf = build(kind, &keys, &value);
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let h = buf.staging();
                    for k in &writes {
                        buf.set(k, staged.clone()).expect("no limits set");
                    }
                    let t = Instant::now();
                    buf.cleanup(h).expect("innermost staging");
                    total += t.elapsed();
                }
                assert_eq!(buf.len(), n);
                total
            })
        });
    }
    g.finish();
}

// The macro generates an undocumented `pub fn benches`.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
use group::benches;
criterion_main!(benches);
