//! Region cache lookups (issue #7's B4 and B5).
//!
//! - B4: `locate_key` of random keys in a cache of 100k and 1M regions with
//!   TiDB-like 19-byte start keys (`t` + table id + `_r` + handle, sharing a
//!   long prefix), from 1 thread and from 2 threads at once (each thread's
//!   time per lookup is reported, so the two-thread figure shows contention),
//!   and from 1 thread while another inserts 1 % as many regions
//!   (re-inserting existing ones, as a refresh from PD does).
//! - B5: a full-range walk (`group_ranges_by_region`) over 10k regions.
//!
//! ```text
//! cargo bench -p tikv-core --bench region_cache -- --measurement-time 2
//! ```
//!
//! Per-region memory is printed once: resident set growth per cached region
//! while building the 1M cache (Linux `/proc/self/statm`), which counts the
//! maps, the `Arc<Region>` and the decoded `metapb::Region`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration as StdDuration, Instant as StdInstant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use tikv_core::key::KeyRange;
use tikv_core::region::RegionCache;
use tikv_core::rng::Rng;
use tikv_core::time::{Duration, Instant};
use tikv_proto::metapb;

/// TiDB's record key prefix for `table`, then a memcomparable handle.
fn start_key(i: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(19);
    k.push(b't');
    k.extend_from_slice(&(42u64 ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(b"_r");
    k.extend_from_slice(&(i * 1000).to_be_bytes());
    k
}

fn region(id: u64, start: Vec<u8>, end: Vec<u8>) -> metapb::Region {
    metapb::Region {
        id,
        start_key: start.into(),
        end_key: end.into(),
        region_epoch: Some(metapb::RegionEpoch { conf_ver: 1, version: 1 }),
        peers: (1..=3)
            .map(|s| metapb::Peer { id: id * 10 + s, store_id: s, ..Default::default() })
            .collect(),
        ..Default::default()
    }
}

/// A cache of `n` adjacent regions covering the whole key space.
fn cache(n: u64) -> RegionCache {
    let cache = RegionCache::new(Duration::from_secs(600), Duration::from_secs(60), 1);
    for i in 0..n {
        let start = if i == 0 { Vec::new() } else { start_key(i) };
        let end = if i + 1 == n { Vec::new() } else { start_key(i + 1) };
        let meta = region(i + 1, start, end);
        let leader = meta.peers.first().cloned();
        cache.insert(meta, leader, Instant::ZERO).expect("fresh region");
    }
    cache
}

/// Random keys inside the cached regions.
fn probes(n: u64, count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(7);
    (0..count).map(|_| start_key(rng.gen_range(0, n * 1000) / 1000).to_vec()).collect()
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn bench(c: &mut Criterion) {
    let now = Instant::ZERO + Duration::from_secs(1);
    for n in [100_000u64, 1_000_000] {
        let before = resident_bytes();
        let cache = Arc::new(cache(n));
        if let (Some(b), Some(a)) = (before, resident_bytes()) {
            eprintln!("{n} regions: ~{} bytes resident per cached region", (a - b) / n);
        }
        let keys = Arc::new(probes(n, 1 << 16));

        let mut g = c.benchmark_group(format!("locate_key/{n}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::from_parameter("1-thread"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (keys.len() - 1);
                black_box(cache.locate_key(&keys[i], now))
            })
        });
        g.bench_function(BenchmarkId::from_parameter("2-threads"), |b| {
            b.iter_custom(|iters| {
                let run = |cache: Arc<RegionCache>, keys: Arc<Vec<Vec<u8>>>, offset: usize| {
                    std::thread::spawn(move || {
                        let started = StdInstant::now();
                        for i in 0..iters as usize {
                            let key = &keys[(i + offset) & (keys.len() - 1)];
                            black_box(cache.locate_key(key, now));
                        }
                        started.elapsed()
                    })
                };
                let a = run(cache.clone(), keys.clone(), 0);
                let b2 = run(cache.clone(), keys.clone(), 12_345);
                let (ta, tb) = (a.join().expect("thread"), b2.join().expect("thread"));
                (ta + tb) / 2
            })
        });
        g.bench_function(BenchmarkId::from_parameter("1-thread+inserts"), |b| {
            let stop = Arc::new(AtomicBool::new(false));
            let writer = {
                let (cache, stop) = (cache.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut rng = Rng::new(9);
                    while !stop.load(Ordering::Relaxed) {
                        // One refresh per ~100 lookups' worth of time.
                        let i = rng.gen_range(1, n - 1);
                        let meta = region(i + 1, start_key(i), start_key(i + 1));
                        let leader = meta.peers.first().cloned();
                        let _ = cache.insert(meta, leader, now);
                        std::thread::sleep(StdDuration::from_micros(5));
                    }
                })
            };
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (keys.len() - 1);
                black_box(cache.locate_key(&keys[i], now))
            });
            stop.store(true, Ordering::Relaxed);
            writer.join().expect("writer");
        });
        g.finish();
    }

    let cache = cache(10_000);
    let mut g = c.benchmark_group("group_ranges_by_region/10000");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("full-range", |b| {
        b.iter(|| {
            let groups = cache.group_ranges_by_region(&KeyRange::all(), now);
            assert_eq!(groups.ranges.len(), 10_000);
            black_box(groups)
        })
    });
    g.finish();
}

fn benches() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
}

criterion_main!(benches);
