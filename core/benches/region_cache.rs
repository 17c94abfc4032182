//! Region cache lookups (benchmarks B4 and B5 of the README's suite).
//!
//! - B4: `locate_key` of random keys in a cache of 100k and 1M regions with
//!   TiDB-like 19-byte start keys (`t` + table id + `_r` + handle, sharing a
//!   long prefix; each probe is a random handle inside a region), from 1
//!   reader thread and from 2 at once (each thread's time per lookup is
//!   reported, so the two-thread figure shows contention), each with and
//!   without a writer that re-inserts existing regions (a refresh from PD) at
//!   1 % of the lookup rate. `*-same-region` has the readers hit one region:
//!   with one reader, the cost of a lookup whose memory is all cached; with
//!   two, plus the cost of handing out a shared handle to a hot region;
//!   `2-threads-handle-clone-only` is that handle's share alone (two threads
//!   cloning and dropping one `Arc<Region>`).
//! - `insert/{n}/refresh`: re-inserting one existing region (the writer's cost).
//! - B5: a full-range walk (`group_ranges_by_region`) over 10k regions; the
//!   allocations per walk are printed.
//!
//! ```text
//! cargo bench -p tikv-core --bench region_cache -- --measurement-time 2
//! ```
//!
//! Per-region memory is printed once per size: bytes live on the heap per
//! cached region (a counting global allocator: requested sizes, no malloc
//! overhead) and resident set growth per region while building the cache
//! (Linux `/proc/self/statm`, which includes malloc's overhead).
//!
//! With `REGION_CACHE_PLAIN=1` the B4 lookup cases run without criterion
//! (1 s warm-up, 2 s measured) and print plain lines, each reader timed by
//! the clock and by its thread's CPU time: the shape of client-go's
//! `peer-client-go regioncachebench`, which runs the same cases through
//! client-go's `RegionCache`. `bench/region-cache-vs-client-go.sh` runs both
//! alternately and prints them side by side. Its run of 2026-12-06 on the
//! project's 2-vCPU KVM box (Intel Xeon, load average 7-8 from other work),
//! medians of 3 rounds, CPU time per lookup per reader thread (the machine's
//! load inflates elapsed times several-fold, both sides alike):
//!
//! | case | ours | client-go | ours/client-go |
//! |---|---|---|---|
//! | locate_key/100000/1-thread | 270 ns | 2.16 µs | 0.13 |
//! | locate_key/100000/2-threads | 284 ns | 1.81 µs | 0.16 |
//! | locate_key/100000/1-thread+1%-inserts | 331 ns | 1.89 µs | 0.18 |
//! | locate_key/100000/2-threads+1%-inserts | 278 ns | 1.94 µs | 0.14 |
//! | locate_key/100000/1-thread-same-region | 76 ns | 376 ns | 0.20 |
//! | locate_key/100000/2-threads-same-region | 85 ns | 399 ns | 0.21 |
//! | locate_key/1000000/1-thread | 667 ns | 3.22 µs | 0.21 |
//! | locate_key/1000000/2-threads | 663 ns | 3.21 µs | 0.21 |
//! | locate_key/1000000/1-thread+1%-inserts | 683 ns | 3.06 µs | 0.22 |
//! | locate_key/1000000/2-threads+1%-inserts | 704 ns | 2.93 µs | 0.24 |
//! | locate_key/1000000/1-thread-same-region | 89 ns | 454 ns | 0.20 |
//! | locate_key/1000000/2-threads-same-region | 122 ns | 498 ns | 0.25 |
//! | heap bytes per region, 100k / 1M | 293 / 300 | 716 / 778 | 0.41 / 0.39 |
//! | resident bytes per region, 100k / 1M | 337 / 309 | | |
//!
//! Criterion's figures for the cases client-go has no counterpart of,
//! measured 2026-11-22 on the project's earlier 2-vCPU box (AMD EPYC, load
//! average 6-8): `insert/1000000/refresh` 10.5 µs,
//! `group_ranges_by_region/10000/full-range` 1.16 ms,
//! `2-threads-handle-clone-only` 33 ns; a full-range walk allocates 10,012
//! times the first time and 13 times after.
//!
//! Random lookups over 1M regions stay memory-bound here: each needs at least
//! the leaf and the region record from DRAM (the record for its TTL and
//! invalidation state and its `Arc` count), which alone exceeds 100 ns on
//! this machine; a cached lookup (`same-region`) is ~80 ns of CPU, of
//! which ~35 ns are the lock and `Arc` atomics. The first walk allocates once
//! per region: it clones each end key, turning its buffer into a shared one
//! (the cache keeps keys unshared until then, 32 bytes less per key).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration as StdDuration, Instant as StdInstant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use tikv_core::key::KeyRange;
use tikv_core::region::RegionCache;
use tikv_core::rng::Rng;
use tikv_core::time::{Duration, Instant};
use tikv_proto::metapb;

/// Counts live heap bytes and allocation calls, for bytes per region and
/// allocations per walk.
struct CountingAlloc;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
// SAFETY: forwards every call to the system allocator unchanged; the counters
// are only statistics.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const TABLE_PREFIX_LEN: usize = 11;

/// TiDB's record key for `handle` in table 42: `t`, the table id, `_r`, then
/// the memcomparable handle.
fn record_key(handle: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(TABLE_PREFIX_LEN + 8);
    k.push(b't');
    k.extend_from_slice(&(42u64 ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(b"_r");
    k.extend_from_slice(&handle.to_be_bytes());
    k
}

/// Region `i` holds handles `[1000 i, 1000 (i + 1))`.
fn start_key(i: u64) -> Vec<u8> {
    record_key(i * 1000)
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

/// Region `i` of a cache of `n` adjacent regions covering the whole key space.
fn region_of(i: u64, n: u64) -> (metapb::Region, Option<metapb::Peer>) {
    let start = if i == 0 { Vec::new() } else { start_key(i) };
    let end = if i + 1 == n { Vec::new() } else { start_key(i + 1) };
    let meta = region(i + 1, start, end);
    let leader = meta.peers.first().cloned();
    (meta, leader)
}

/// A cache of `n` adjacent regions covering the whole key space, loaded in
/// key order (as a PD scan delivers them).
fn cache(n: u64) -> RegionCache {
    let cache = RegionCache::new(Duration::from_secs(600), Duration::from_secs(60), 1);
    for i in 0..n {
        let (meta, leader) = region_of(i, n);
        cache.insert(meta, leader, Instant::ZERO).expect("fresh region");
    }
    cache
}

/// Random keys inside the cached regions.
fn probes(n: u64, count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(7);
    (0..count).map(|_| record_key(rng.gen_range(0, n * 1000))).collect()
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Lookups done by all readers, published in steps so that counting does not
/// put a shared write on every lookup.
static LOOKUPS: AtomicU64 = AtomicU64::new(0);
const PUBLISH_EVERY: usize = 1024;

/// Re-inserts random existing regions until `stop`, keeping the number of
/// inserts at 1 % of [`LOOKUPS`]; sleeps between catch-ups so it does not
/// take a core from the readers when it has nothing to do.
fn spawn_writer(
    cache: Arc<RegionCache>,
    n: u64,
    now: Instant,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut rng = Rng::new(9);
        let mut inserted = 0u64;
        let base = LOOKUPS.load(Ordering::Relaxed);
        while !stop.load(Ordering::Relaxed) {
            let target = (LOOKUPS.load(Ordering::Relaxed) - base) / 100;
            while inserted < target && !stop.load(Ordering::Relaxed) {
                let (meta, leader) = region_of(rng.gen_range(1, n - 1), n);
                let _ = cache.insert(meta, leader, now);
                inserted += 1;
            }
            std::thread::sleep(StdDuration::from_micros(50));
        }
        inserted
    })
}

/// The shape of one lookup benchmark.
#[derive(Copy, Clone)]
struct Load {
    /// Reader threads.
    threads: usize,
    /// A concurrent writer inserts at 1 % of the lookup rate.
    writer: bool,
    /// Every reader looks up the same key.
    same_region: bool,
}

/// `load.threads` readers each doing `iters` lookups; returns the mean time
/// per reader.
fn run_readers(
    cache: &Arc<RegionCache>,
    keys: &Arc<Vec<Vec<u8>>>,
    n: u64,
    now: Instant,
    load: Load,
    iters: u64,
) -> StdDuration {
    let Load { threads, writer, same_region } = load;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = writer.then(|| spawn_writer(cache.clone(), n, now, stop.clone()));
    let readers: Vec<_> = (0..threads)
        .map(|t| {
            let (cache, keys) = (cache.clone(), keys.clone());
            std::thread::spawn(move || {
                let mask = keys.len() - 1;
                let offset = t * 12_345;
                let started = StdInstant::now();
                for i in 0..iters as usize {
                    let key = if same_region { &keys[0] } else { &keys[(i + offset) & mask] };
                    black_box(cache.locate_key(black_box(key), now));
                    if i % PUBLISH_EVERY == PUBLISH_EVERY - 1 {
                        LOOKUPS.fetch_add(PUBLISH_EVERY as u64, Ordering::Relaxed);
                    }
                }
                started.elapsed()
            })
        })
        .collect();
    let total: StdDuration = readers.into_iter().map(|r| r.join().expect("reader")).sum();
    stop.store(true, Ordering::Relaxed);
    if let Some(w) = writer {
        w.join().expect("writer");
    }
    total / threads as u32
}

/// Cache sizes of the lookup benchmarks.
const SIZES: [u64; 2] = [100_000, 1_000_000];

/// The lookup benchmarks' cases, by name.
const LOADS: [(&str, Load); 6] = [
    ("1-thread", Load { threads: 1, writer: false, same_region: false }),
    ("2-threads", Load { threads: 2, writer: false, same_region: false }),
    ("1-thread+1%-inserts", Load { threads: 1, writer: true, same_region: false }),
    ("2-threads+1%-inserts", Load { threads: 2, writer: true, same_region: false }),
    ("1-thread-same-region", Load { threads: 1, writer: false, same_region: true }),
    ("2-threads-same-region", Load { threads: 2, writer: false, same_region: true }),
];

/// Bytes per cached region.
struct RegionMemory {
    /// Live heap bytes (requested sizes).
    heap: u64,
    /// Resident set growth while building, where Linux tells it.
    resident: Option<u64>,
}

/// [`cache`] of `n` regions, with the memory it took.
fn measured_cache(n: u64) -> (Arc<RegionCache>, RegionMemory) {
    let (rss_before, heap_before) = (resident_bytes(), LIVE_BYTES.load(Ordering::Relaxed));
    let cache = Arc::new(cache(n));
    let heap = (LIVE_BYTES.load(Ordering::Relaxed) - heap_before) as u64 / n;
    let resident = rss_before.zip(resident_bytes()).map(|(b, a)| a.saturating_sub(b) / n);
    (cache, RegionMemory { heap, resident })
}

/// [`probes`] for a cache of `n` regions, each checked to be covered.
fn checked_probes(cache: &RegionCache, n: u64, now: Instant) -> Arc<Vec<Vec<u8>>> {
    let keys = probes(n, 1 << 16);
    for k in &keys {
        assert!(cache.locate_key(k, now).is_some_and(|r| r.contains(k)), "probe not covered");
    }
    Arc::new(keys)
}

/// The calling thread's time on a CPU so far, in nanoseconds (Linux's
/// per-thread schedstat): on a machine shared with other work, lookups
/// timed by it do not count the time the thread waited for a core.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// This process's CPU time so far (all its threads, exited ones too), in
/// nanoseconds, from `/proc/self/stat`'s clock ticks (Linux's USER_HZ, 100 a
/// second).
fn process_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields 14 and 15 (utime, stime), counted after the parenthesised
    // command name, which may hold spaces; field 3 follows it.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 10_000_000)
}

/// What [`run_readers_for`] measured.
struct Measured {
    /// Mean over readers of each one's elapsed time per lookup.
    wall_ns: f64,
    /// Mean over readers of each one's CPU time per lookup.
    cpu_ns: Option<f64>,
    /// The whole process's CPU time (the writer's too) per lookup.
    process_cpu_ns: Option<f64>,
    lookups: u64,
    inserts: u64,
}

/// `load.threads` readers looking up keys for `duration`, as [`run_readers`]
/// but timed by the clock and by each thread's CPU time.
fn run_readers_for(
    cache: &Arc<RegionCache>,
    keys: &Arc<Vec<Vec<u8>>>,
    n: u64,
    now: Instant,
    load: Load,
    duration: StdDuration,
) -> Measured {
    let Load { threads, writer, same_region } = load;
    let process_cpu_before = process_cpu_ns();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = writer.then(|| spawn_writer(cache.clone(), n, now, stop.clone()));
    let readers: Vec<_> = (0..threads)
        .map(|t| {
            let (cache, keys, stop) = (cache.clone(), keys.clone(), stop.clone());
            std::thread::spawn(move || {
                let mask = keys.len() - 1;
                let offset = t * 12_345;
                let (started, cpu_before) = (StdInstant::now(), thread_cpu_ns());
                let mut i = 0;
                loop {
                    let key = if same_region { &keys[0] } else { &keys[(i + offset) & mask] };
                    black_box(cache.locate_key(black_box(key), now));
                    i += 1;
                    if i % PUBLISH_EVERY == 0 {
                        LOOKUPS.fetch_add(PUBLISH_EVERY as u64, Ordering::Relaxed);
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
                let wall = started.elapsed().as_nanos() as f64 / i as f64;
                let cpu = cpu_before.zip(thread_cpu_ns()).map(|(b, a)| (a - b) as f64 / i as f64);
                (wall, cpu, i as u64)
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let done: Vec<_> = readers.into_iter().map(|r| r.join().expect("reader")).collect();
    let inserts = writer.map_or(0, |w| w.join().expect("writer"));
    let lookups: u64 = done.iter().map(|d| d.2).sum();
    let process_cpu = process_cpu_before.zip(process_cpu_ns()).map(|(b, a)| a - b);
    let mean = |v: f64| v / threads as f64;
    Measured {
        wall_ns: mean(done.iter().map(|d| d.0).sum()),
        cpu_ns: done.iter().map(|d| d.1).sum::<Option<f64>>().map(mean),
        process_cpu_ns: process_cpu.map(|c| c as f64 / lookups as f64),
        lookups,
        inserts,
    }
}

/// Plain-text mode for `bench/region-cache-vs-client-go.sh`, which runs the
/// same cases through client-go's cache (`peer-client-go regioncachebench`)
/// and prints lines of the same shape: each case warms up for a second and
/// is measured for two, with no statistics of criterion's.
fn plain() {
    let now = Instant::ZERO + Duration::from_secs(1);
    for n in SIZES {
        let (cache, memory) = measured_cache(n);
        let resident = memory.resident.map_or(String::from("?"), |r| r.to_string());
        println!(
            "HEAP regions={n} heap_bytes_per_region={} resident_bytes_per_region={resident}",
            memory.heap
        );
        let keys = checked_probes(&cache, n, now);
        for (name, load) in LOADS {
            run_readers_for(&cache, &keys, n, now, load, StdDuration::from_secs(1));
            let m = run_readers_for(&cache, &keys, n, now, load, StdDuration::from_secs(2));
            let show = |ns: Option<f64>| ns.map_or(String::from("?"), |c| format!("{c:.1}"));
            println!(
                "RESULT regions={n} case={name} ns_per_lookup={:.1} cpu_ns_per_lookup={} \
                 process_cpu_ns_per_lookup={} lookups={} inserts={}",
                m.wall_ns,
                show(m.cpu_ns),
                show(m.process_cpu_ns),
                m.lookups,
                m.inserts
            );
        }
    }
}

fn bench(c: &mut Criterion) {
    let now = Instant::ZERO + Duration::from_secs(1);
    for n in SIZES {
        let (cache, memory) = measured_cache(n);
        eprintln!("{n} regions: {} heap bytes per cached region", memory.heap);
        if let Some(resident) = memory.resident {
            eprintln!("{n} regions: ~{resident} bytes resident per cached region");
        }
        let keys = checked_probes(&cache, n, now);

        let mut g = c.benchmark_group(format!("locate_key/{n}"));
        g.throughput(Throughput::Elements(1));
        for (name, load) in LOADS {
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_custom(|iters| run_readers(&cache, &keys, n, now, load, iters))
            });
        }
        // What `2-threads-same-region` pays for the shared handle alone: both
        // threads clone and drop one `RegionRef` (an `Arc`), no lookup.
        g.bench_function(BenchmarkId::from_parameter("2-threads-handle-clone-only"), |b| {
            let region = cache.locate_key(&keys[0], now).expect("cached");
            b.iter_custom(|iters| {
                let threads: Vec<_> = (0..2)
                    .map(|_| {
                        let region = region.clone();
                        std::thread::spawn(move || {
                            let started = StdInstant::now();
                            for _ in 0..iters {
                                black_box(black_box(&region).clone());
                            }
                            started.elapsed()
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().expect("thread")).sum::<StdDuration>() / 2
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("insert/{n}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("refresh", |b| {
            let mut rng = Rng::new(11);
            b.iter_batched(
                || region_of(rng.gen_range(1, n - 1), n),
                |(meta, leader)| cache.insert(meta, leader, now).expect("refresh"),
                criterion::BatchSize::SmallInput,
            )
        });
        g.finish();
    }

    let n = 10_000;
    let cache = cache(n);
    for walk in ["first", "second"] {
        let allocs = ALLOCS.load(Ordering::Relaxed);
        let groups = cache.group_ranges_by_region(&KeyRange::all(), now);
        let allocs = ALLOCS.load(Ordering::Relaxed) - allocs;
        eprintln!("group_ranges_by_region over {n} regions, {walk} walk: {allocs} allocations");
        assert_eq!(groups.ranges.len(), n as usize);
    }
    let mut g = c.benchmark_group(format!("group_ranges_by_region/{n}"));
    g.throughput(Throughput::Elements(n));
    g.bench_function("full-range", |b| {
        b.iter(|| {
            let groups = cache.group_ranges_by_region(&KeyRange::all(), now);
            assert_eq!(groups.ranges.len(), n as usize);
            black_box(groups)
        })
    });
    g.finish();
}

fn benches() {
    if std::env::var_os("REGION_CACHE_PLAIN").is_some() {
        return plain();
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
}

criterion_main!(benches);
