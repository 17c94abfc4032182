//! YCSB's core workloads A–F (`workloads/workloada`..`workloadf` of
//! brianfrankcooper/YCSB), shared by `ycsb-bench` and mirrored in Go by
//! client-go's runner (`tests/peer-client-go/ycsb.go`, same constants, same
//! random sequence per task).
//!
//! What follows YCSB's `CoreWorkload`:
//! - record `n`'s key is `user` + the decimal FNV-1a hash of `n`
//!   (`buildKeyName`, hashed insert order), behind go-ycsb's TiKV driver's
//!   `usertable:` table prefix;
//! - a record is `fields` fields of `field_len` random printable bytes
//!   (YCSB's defaults: 10 × 100), stored as one value, field `i` at offset
//!   `i × field_len` (go-ycsb encodes a row the same way, with field names);
//! - reads read the whole record (`readallfields=true`); an update rewrites
//!   one random field (`writeallfields=false`), which on a key-value store
//!   means reading the record and writing it back, as go-ycsb's driver does;
//!   read-modify-write is a read and then that write of the read record;
//! - request keys are scrambled zipfian (constant 0.99, over the records
//!   plus twice the inserts expected, keys not yet inserted skipped) or, for
//!   D, skewed-latest over the acknowledged inserts; scan lengths are
//!   uniform in 1..=100; inserts take the next record number.
//!
//! YCSB runs a fixed operation count; this runs for a duration after a
//! warm-up (like the other benchmarks here), and sizes the zipfian key space
//! as if the operation count equalled the record count, as the published
//! workload files set them.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::workload::{WARM_UP, cpu_time, percentile};

/// YCSB's `ZipfianGenerator.ZIPFIAN_CONSTANT`.
pub const ZIPFIAN_CONSTANT: f64 = 0.99;
/// `ScrambledZipfianGenerator.ITEM_COUNT`: the scrambled generator draws
/// from this many items and hashes the draw into the key space.
pub const SCRAMBLED_ITEM_COUNT: u64 = 10_000_000_000;
/// `ScrambledZipfianGenerator.ZETAN`: zeta(ITEM_COUNT, 0.99), precomputed.
pub const SCRAMBLED_ZETAN: f64 = 26.469_028_201_783_02;
/// Workload E's `maxscanlength`.
pub const MAX_SCAN_LENGTH: u64 = 100;
/// go-ycsb's TiKV driver prefixes every key with the table name.
pub const KEY_PREFIX: &str = "usertable:user";

const FNV_OFFSET_BASIS_64: u64 = 0xCBF2_9CE4_8422_2325;
const FNV_PRIME_64: u64 = 1_099_511_628_211;

/// YCSB's `Utils.fnvhash64`: FNV-1a over the eight low-first bytes of
/// `val`, then Java's `Math.abs` of the signed result (which leaves
/// `i64::MIN` negative; its `u64` bits are returned then).
pub fn fnv_hash64(val: u64) -> u64 {
    let mut hash = FNV_OFFSET_BASIS_64;
    let mut v = val;
    for _ in 0..8 {
        hash ^= v & 0xff;
        hash = hash.wrapping_mul(FNV_PRIME_64);
        v >>= 8;
    }
    (hash as i64).wrapping_abs() as u64
}

/// Record `n`'s key.
pub fn record_key(n: u64) -> Vec<u8> {
    format!("{KEY_PREFIX}{}", fnv_hash64(n)).into_bytes()
}

/// SplitMix64: a small seeded generator both runners implement the same
/// way, so a task draws the same operations in either.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// The generator of task `task` in a run seeded `seed`.
    pub fn new(seed: u64, task: u64) -> Rng {
        Rng(seed ^ task.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `lo..=hi` (YCSB's `UniformLongGenerator`).
    pub fn uniform(&mut self, lo: u64, hi: u64) -> u64 {
        lo + (self.next_f64() * (hi - lo + 1) as f64) as u64
    }
}

fn zeta(from: u64, to: u64, theta: f64, initial: f64) -> f64 {
    (from..to).fold(initial, |sum, i| sum + 1.0 / ((i + 1) as f64).powf(theta))
}

/// YCSB's `ZipfianGenerator` (Gray et al., "Quickly generating
/// billion-record synthetic databases"): item `base + i` with probability
/// ∝ 1/(i+1)^θ; the item count may grow between draws (zeta is extended
/// incrementally, as YCSB does for the latest distribution).
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    base: u64,
    theta: f64,
    zeta2theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    count_for_zeta: u64,
}

impl Zipfian {
    /// Items `min..=max`, zeta computed here (linear in the item count).
    pub fn new(min: u64, max: u64) -> Zipfian {
        let items = max - min + 1;
        Zipfian::with_zetan(min, max, zeta(0, items, ZIPFIAN_CONSTANT, 0.0))
    }

    /// Items `min..=max` with zeta(items) given.
    pub fn with_zetan(min: u64, max: u64, zetan: f64) -> Zipfian {
        let items = max - min + 1;
        let theta = ZIPFIAN_CONSTANT;
        let zeta2theta = zeta(0, 2, theta, 0.0);
        Zipfian {
            items,
            base: min,
            theta,
            zeta2theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta: (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2theta / zetan),
            count_for_zeta: items,
        }
    }

    /// A draw over `item_count` items (YCSB's `nextLong(itemcount)`).
    pub fn next_with(&mut self, rng: &mut Rng, item_count: u64) -> u64 {
        if item_count > self.count_for_zeta {
            self.zetan = zeta(self.count_for_zeta, item_count, self.theta, self.zetan);
            self.count_for_zeta = item_count;
            // YCSB keeps `items` (the constructor's count) in eta here.
            self.eta = (1.0 - (2.0 / self.items as f64).powf(1.0 - self.theta))
                / (1.0 - self.zeta2theta / self.zetan);
        }
        let u = rng.next_f64();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return self.base;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return self.base + 1;
        }
        self.base + (item_count as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64
    }

    /// A draw over the constructor's items.
    pub fn next(&mut self, rng: &mut Rng) -> u64 {
        self.next_with(rng, self.items)
    }
}

/// YCSB's `ScrambledZipfianGenerator`: zipfian popularity, the popular
/// items spread over `min..=max` by hashing.
#[derive(Clone, Debug)]
pub struct ScrambledZipfian {
    popularity: Zipfian,
    min: u64,
    item_count: u64,
}

impl ScrambledZipfian {
    /// Items `min..=max`.
    pub fn new(min: u64, max: u64) -> ScrambledZipfian {
        ScrambledZipfian {
            popularity: Zipfian::with_zetan(0, SCRAMBLED_ITEM_COUNT, SCRAMBLED_ZETAN),
            min,
            item_count: max - min + 1,
        }
    }

    /// The next item.
    pub fn next(&mut self, rng: &mut Rng) -> u64 {
        self.min + fnv_hash64(self.popularity.next(rng)) % self.item_count
    }
}

/// YCSB's `AcknowledgedCounterGenerator`: insert numbers are handed out in
/// order, and [`InsertCounter::last`] is the highest number below which
/// every insert has completed, so reads never pick a record still being
/// written. Shared by a run's tasks.
#[derive(Debug)]
pub struct InsertCounter {
    next: AtomicU64,
    /// The acknowledged limit and the numbers completed above it.
    acked: Mutex<(u64, BTreeSet<u64>)>,
}

impl InsertCounter {
    /// Records `0..records` exist; inserts start at `records` (≥ 1).
    pub fn new(records: u64) -> InsertCounter {
        InsertCounter {
            next: AtomicU64::new(records),
            acked: Mutex::new((records - 1, BTreeSet::new())),
        }
    }

    /// The next record number to insert.
    pub fn claim(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Insert `n` completed (successfully or not, as YCSB's `finally`).
    pub fn ack(&self, n: u64) {
        let mut guard = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        let (limit, done) = &mut *guard;
        done.insert(n);
        while done.remove(&(*limit + 1)) {
            *limit += 1;
        }
    }

    /// The highest record every read may pick.
    pub fn last(&self) -> u64 {
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Record numbers handed out so far (the next run's record count).
    pub fn claimed(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }
}

/// YCSB's `SkewedLatestGenerator`: zipfian over the distance from the
/// latest acknowledged insert.
#[derive(Clone, Debug)]
pub struct SkewedLatest {
    zipfian: Zipfian,
}

impl SkewedLatest {
    /// Over the records `counter` has acknowledged now.
    pub fn new(counter: &InsertCounter) -> SkewedLatest {
        SkewedLatest { zipfian: Zipfian::new(0, counter.last() - 1) }
    }

    /// The next record: `last - zipfian(last)`.
    pub fn next(&mut self, rng: &mut Rng, counter: &InsertCounter) -> u64 {
        let max = counter.last();
        max.saturating_sub(self.zipfian.next_with(rng, max))
    }
}

/// One YCSB operation type, in `CoreWorkload`'s chooser order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Read one record.
    Read,
    /// Rewrite one field of a record.
    Update,
    /// Write a new record.
    Insert,
    /// Read up to [`MAX_SCAN_LENGTH`] records from a key on.
    Scan,
    /// Read a record, then rewrite one of its fields.
    ReadModifyWrite,
}

impl OpKind {
    /// Every kind, in table order.
    pub const ALL: [OpKind; 5] =
        [OpKind::Read, OpKind::Update, OpKind::Insert, OpKind::Scan, OpKind::ReadModifyWrite];

    /// Its name in tables and result lines.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::Scan => "scan",
            OpKind::ReadModifyWrite => "rmw",
        }
    }
}

/// A core workload: its operation proportions (read, update, insert, scan,
/// read-modify-write) and request distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mix {
    /// Proportions in [`OpKind::ALL`] order.
    pub proportions: [f64; 5],
    /// `requestdistribution=latest` (D) rather than zipfian.
    pub latest: bool,
}

impl Mix {
    /// The published core workload `name` (`a`..`f`).
    pub fn core(name: &str) -> Option<Mix> {
        let (proportions, latest) = match name {
            "a" => ([0.5, 0.5, 0.0, 0.0, 0.0], false),
            "b" => ([0.95, 0.05, 0.0, 0.0, 0.0], false),
            "c" => ([1.0, 0.0, 0.0, 0.0, 0.0], false),
            "d" => ([0.95, 0.0, 0.05, 0.0, 0.0], true),
            "e" => ([0.0, 0.0, 0.05, 0.95, 0.0], false),
            "f" => ([0.5, 0.0, 0.0, 0.0, 0.5], false),
            _ => return None,
        };
        Some(Mix { proportions, latest })
    }

    /// YCSB's `DiscreteGenerator` over the proportions.
    pub fn choose(&self, rng: &mut Rng) -> OpKind {
        let sum: f64 = self.proportions.iter().sum();
        let mut u = rng.next_f64();
        let mut last = OpKind::Read;
        for (kind, p) in OpKind::ALL.into_iter().zip(self.proportions) {
            if p <= 0.0 {
                continue;
            }
            if u < p / sum {
                return kind;
            }
            u -= p / sum;
            last = kind;
        }
        last
    }
}

/// The record shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordShape {
    /// Fields per record (YCSB: 10).
    pub fields: usize,
    /// Bytes per field (YCSB: 100).
    pub field_len: usize,
}

impl Default for RecordShape {
    fn default() -> RecordShape {
        RecordShape { fields: 10, field_len: 100 }
    }
}

impl RecordShape {
    /// A record of random printable bytes.
    pub fn record(&self, rng: &mut Rng) -> Vec<u8> {
        random_printable(rng, self.fields * self.field_len)
    }

    /// `record` with field `field` replaced by `bytes` (a whole new record
    /// when `record` is not of this shape, e.g. missing).
    pub fn with_field(&self, record: &[u8], field: usize, bytes: &[u8]) -> Vec<u8> {
        let mut out = if record.len() == self.fields * self.field_len {
            record.to_vec()
        } else {
            vec![b' '; self.fields * self.field_len]
        };
        out[field * self.field_len..(field + 1) * self.field_len].copy_from_slice(bytes);
        out
    }
}

/// `len` bytes in `' '..='~'`, eight per draw (as YCSB's
/// `RandomByteIterator` fills from one random number at a time).
fn random_printable(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let mut r = rng.next_u64();
        for _ in 0..8.min(len - out.len()) {
            out.push(b' ' + (r & 0xff) as u8 % 95);
            r >>= 8;
        }
    }
    out
}

/// One operation to run, drawn by a [`TaskGen`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YcsbOp {
    /// What to do.
    pub kind: OpKind,
    /// The record's key (a scan's first key).
    pub key: Vec<u8>,
    /// Records to scan.
    pub scan_len: u32,
    /// The field an update or read-modify-write rewrites.
    pub field: usize,
    /// The new record (insert) or the new field's bytes (update, rmw).
    pub value: Vec<u8>,
    /// The record number an insert takes (to acknowledge afterwards).
    pub insert: Option<u64>,
}

/// What a run's tasks share.
#[derive(Debug)]
pub struct RunPlan {
    /// The workload.
    pub mix: Mix,
    /// The record shape.
    pub shape: RecordShape,
    /// Insert numbers and the acknowledged limit.
    pub counter: InsertCounter,
    zipfian: ScrambledZipfian,
    latest: Option<SkewedLatest>,
}

impl RunPlan {
    /// A run of `mix` over `records` existing records (numbers
    /// `0..records`, at least 2).
    pub fn new(mix: Mix, shape: RecordShape, records: u64) -> RunPlan {
        let insert = mix.proportions[OpKind::Insert as usize];
        // CoreWorkload: `insertcount + operationcount × insertproportion ×
        // 2`, with the operation count taken equal to the record count.
        let expected_new = (records as f64 * insert * 2.0) as u64;
        let counter = InsertCounter::new(records);
        let latest = mix.latest.then(|| SkewedLatest::new(&counter));
        RunPlan {
            mix,
            shape,
            zipfian: ScrambledZipfian::new(0, records + expected_new),
            latest,
            counter,
        }
    }

    /// Task `task`'s generator in a run seeded `seed`.
    pub fn task(&self, seed: u64, task: u64) -> TaskGen {
        TaskGen {
            rng: Rng::new(seed, task),
            zipfian: self.zipfian.clone(),
            latest: self.latest.clone(),
        }
    }
}

/// One task's generators.
#[derive(Clone, Debug)]
pub struct TaskGen {
    rng: Rng,
    zipfian: ScrambledZipfian,
    latest: Option<SkewedLatest>,
}

impl TaskGen {
    /// CoreWorkload's `nextKeynum`: a request record, never one past the
    /// acknowledged inserts.
    fn key_number(&mut self, counter: &InsertCounter) -> u64 {
        loop {
            let n = match &mut self.latest {
                Some(latest) => latest.next(&mut self.rng, counter),
                None => self.zipfian.next(&mut self.rng),
            };
            if n <= counter.last() {
                return n;
            }
        }
    }

    /// The next operation of `plan`, as `CoreWorkload.doTransaction` draws
    /// it.
    pub fn next_op(&mut self, plan: &RunPlan) -> YcsbOp {
        let kind = plan.mix.choose(&mut self.rng);
        let shape = plan.shape;
        let mut op = YcsbOp {
            kind,
            key: Vec::new(),
            scan_len: 0,
            field: 0,
            value: Vec::new(),
            insert: None,
        };
        match kind {
            OpKind::Insert => {
                let n = plan.counter.claim();
                op.key = record_key(n);
                op.value = shape.record(&mut self.rng);
                op.insert = Some(n);
            }
            OpKind::Read => op.key = record_key(self.key_number(&plan.counter)),
            OpKind::Scan => {
                op.key = record_key(self.key_number(&plan.counter));
                op.scan_len = self.rng.uniform(1, MAX_SCAN_LENGTH) as u32;
            }
            OpKind::Update | OpKind::ReadModifyWrite => {
                op.key = record_key(self.key_number(&plan.counter));
                op.field = self.rng.uniform(0, shape.fields as u64 - 1) as usize;
                op.value = random_printable(&mut self.rng, shape.field_len);
            }
        }
        op
    }
}

/// Runs one operation of a client; true when it succeeded.
pub type YcsbExec = Arc<dyn Fn(YcsbOp) -> BoxFuture<'static, bool> + Send + Sync>;

/// Latency of one operation kind over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindStats {
    /// Operations completed in the measured window.
    pub ops: u64,
    /// Their 99th percentile latency, microseconds.
    pub p99_us: u32,
}

/// What one run (workload, mode, concurrency) measured.
#[derive(Clone, Debug, PartialEq)]
pub struct YcsbResult {
    /// `a`..`f`.
    pub workload: String,
    /// `raw` or `txn`.
    pub mode: String,
    /// Concurrent tasks.
    pub conc: usize,
    /// The measured window.
    pub elapsed: Duration,
    /// The client process's CPU time in it.
    pub cpu: Duration,
    /// Failed operations in it.
    pub errors: u64,
    /// Record numbers inserts took, warm-up included (the records the next
    /// run starts from are the old count plus these).
    pub inserted: u64,
    /// Per kind, in [`OpKind::ALL`] order.
    pub kinds: [KindStats; 5],
}

impl YcsbResult {
    /// Operations of every kind per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.kinds.iter().map(|k| k.ops).sum::<u64>() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The line a runner prints for this run.
    pub fn to_line(&self) -> String {
        let mut line = format!(
            "YCSB workload={} mode={} conc={} elapsed_us={} cpu_us={} errors={} inserted={}",
            self.workload,
            self.mode,
            self.conc,
            self.elapsed.as_micros(),
            self.cpu.as_micros(),
            self.errors,
            self.inserted
        );
        for (kind, stats) in OpKind::ALL.iter().zip(&self.kinds) {
            line.push_str(&format!(
                " {0}_ops={1} {0}_p99_us={2}",
                kind.name(),
                stats.ops,
                stats.p99_us
            ));
        }
        line
    }

    /// Parses a line from [`YcsbResult::to_line`]; `None` for any other.
    pub fn parse_line(line: &str) -> Option<YcsbResult> {
        let rest = line.strip_prefix("YCSB ")?;
        let mut fields = std::collections::HashMap::new();
        for field in rest.split_whitespace() {
            let (k, v) = field.split_once('=')?;
            fields.insert(k.to_owned(), v);
        }
        let num = |k: &str| fields.get(k)?.parse::<u64>().ok();
        let mut kinds = [KindStats::default(); 5];
        for (kind, stats) in OpKind::ALL.iter().zip(&mut kinds) {
            stats.ops = num(&format!("{}_ops", kind.name()))?;
            stats.p99_us = u32::try_from(num(&format!("{}_p99_us", kind.name()))?).ok()?;
        }
        Some(YcsbResult {
            workload: (*fields.get("workload")?).to_owned(),
            mode: (*fields.get("mode")?).to_owned(),
            conc: usize::try_from(num("conc")?).ok()?,
            elapsed: Duration::from_micros(num("elapsed_us")?),
            cpu: Duration::from_micros(num("cpu_us")?),
            errors: num("errors")?,
            inserted: num("inserted")?,
            kinds,
        })
    }
}

/// Runs `plan` on the current tokio runtime: `conc` tasks draw and run
/// operations through `exec` for [`WARM_UP`], then for `secs` measured.
pub async fn run_ycsb(
    exec: YcsbExec,
    plan: Arc<RunPlan>,
    (workload, mode): (&str, &str),
    conc: usize,
    secs: f64,
    seed: u64,
) -> YcsbResult {
    let measure = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let start_records = plan.counter.claimed();
    let tasks: Vec<_> = (0..conc)
        .map(|t| {
            let (exec, plan, measure, stop, errors) =
                (exec.clone(), plan.clone(), measure.clone(), stop.clone(), errors.clone());
            tokio::spawn(async move {
                let mut draws = plan.task(seed, t as u64);
                let mut lat: [Vec<u32>; 5] = Default::default();
                while !stop.load(Ordering::Relaxed) {
                    let op = draws.next_op(&plan);
                    let (kind, insert) = (op.kind, op.insert);
                    let start = Instant::now();
                    let ok = exec(op).await;
                    if let Some(n) = insert {
                        plan.counter.ack(n);
                    }
                    if measure.load(Ordering::Relaxed) {
                        if ok {
                            let us = u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX);
                            lat[kind as usize].push(us);
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat
            })
        })
        .collect();
    tokio::time::sleep(WARM_UP).await;
    let (t0, cpu0) = (Instant::now(), cpu_time());
    measure.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    measure.store(false, Ordering::Relaxed);
    let (elapsed, cpu) = (t0.elapsed(), cpu_time().saturating_sub(cpu0));
    stop.store(true, Ordering::Relaxed);
    let mut all: [Vec<u32>; 5] = Default::default();
    for task in tasks {
        for (into, from) in all.iter_mut().zip(task.await.unwrap_or_default()) {
            into.extend(from);
        }
    }
    let mut kinds = [KindStats::default(); 5];
    for (stats, lat) in kinds.iter_mut().zip(&mut all) {
        lat.sort_unstable();
        *stats = KindStats { ops: lat.len() as u64, p99_us: percentile(lat, 0.99) };
    }
    YcsbResult {
        workload: workload.to_owned(),
        mode: mode.to_owned(),
        conc,
        elapsed,
        cpu,
        errors: errors.load(Ordering::Relaxed),
        inserted: plan.counter.claimed() - start_records,
        kinds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_hash_matches_ycsb() {
        // FNV-1a of eight zero bytes, then Math.abs of the signed value.
        let mut h = FNV_OFFSET_BASIS_64;
        for _ in 0..8 {
            h = h.wrapping_mul(FNV_PRIME_64);
        }
        assert_eq!(fnv_hash64(0), (h as i64).wrapping_abs() as u64);
        assert!(fnv_hash64(1) < 1 << 63);
        assert_ne!(fnv_hash64(1), fnv_hash64(2));
        assert!(record_key(7).starts_with(b"usertable:user"));
        assert_eq!(record_key(7), format!("usertable:user{}", fnv_hash64(7)).into_bytes());
    }

    #[test]
    fn zipfian_is_skewed_toward_low_items() {
        let mut z = Zipfian::new(0, 999);
        let mut rng = Rng::new(1, 0);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[z.next(&mut rng) as usize] += 1;
        }
        // θ = 0.99 over 1000 items: P(0) = 1/zeta(1000) ≈ 0.134, P(1) ≈
        // 0.067; the top 10 items draw ~39 % of the requests.
        let p0 = f64::from(counts[0]) / 1e5;
        assert!((0.12..0.15).contains(&p0), "P(item 0) = {p0}");
        assert!(counts[0] > counts[1] && counts[1] > counts[10], "{:?}", &counts[..12]);
        let top10: u32 = counts[..10].iter().sum();
        assert!((35_000..44_000).contains(&top10), "top 10 drew {top10}");
        assert!(counts[500..].iter().sum::<u32>() < 10_000);
    }

    #[test]
    fn scrambled_zipfian_spreads_the_popular_items() {
        let mut z = ScrambledZipfian::new(0, 9_999);
        let mut rng = Rng::new(2, 0);
        let mut counts = vec![0u32; 10_000];
        for _ in 0..200_000 {
            let n = z.next(&mut rng);
            assert!(n < 10_000);
            counts[n as usize] += 1;
        }
        // Skewed: the hottest item draws far more than the mean of 20...
        let hottest = counts.iter().enumerate().max_by_key(|(_, c)| **c).map(|(i, _)| i);
        assert!(counts[hottest.unwrap_or(0)] > 1_000);
        // ...but the hot items are spread over the key space: every tenth
        // of it gets a share, none more than a third.
        for tenth in counts.chunks(1_000) {
            let share: u32 = tenth.iter().sum();
            assert!((2_000..70_000).contains(&share), "a tenth drew {share}");
        }
        // Not a low-items-first zipfian: item 0 is not the hottest.
        assert_ne!(hottest, Some(0));
    }

    #[test]
    fn latest_follows_acknowledged_inserts() {
        let counter = InsertCounter::new(1_000);
        let mut latest = SkewedLatest::new(&counter);
        let mut rng = Rng::new(3, 0);
        let near = |latest: &mut SkewedLatest, rng: &mut Rng, last: u64| {
            (0..10_000).filter(|_| latest.next(rng, &counter) + 10 > last).count()
        };
        // Most draws land within 10 of the newest record.
        assert!(near(&mut latest, &mut rng, 999) > 3_000);
        // Inserts 1000 and 1001 claimed; 1001 acknowledged first: the limit
        // waits for 1000.
        let (a, b) = (counter.claim(), counter.claim());
        assert_eq!((a, b), (1_000, 1_001));
        counter.ack(b);
        assert_eq!(counter.last(), 999);
        counter.ack(a);
        assert_eq!(counter.last(), 1_001);
        for _ in 0..500 {
            counter.ack(counter.claim());
        }
        assert_eq!(counter.last(), 1_501);
        let draws: Vec<u64> = (0..10_000).map(|_| latest.next(&mut rng, &counter)).collect();
        assert!(draws.iter().all(|&n| n <= 1_501));
        assert!(draws.iter().filter(|&&n| n + 10 > 1_501).count() > 3_000);
        assert!(draws.iter().filter(|&&n| n < 1_000).count() < 2_000);
    }

    #[test]
    fn mixes_follow_the_published_proportions() {
        let mut rng = Rng::new(4, 0);
        let count = |mix: Mix, rng: &mut Rng| {
            let mut c = [0u32; 5];
            for _ in 0..100_000 {
                c[mix.choose(rng) as usize] += 1;
            }
            c
        };
        let a = count(Mix::core("a").expect("a"), &mut rng);
        assert!((48_500..51_500).contains(&a[0]) && a[0] + a[1] == 100_000, "{a:?}");
        let e = count(Mix::core("e").expect("e"), &mut rng);
        assert!((4_400..5_600).contains(&e[2]) && e[2] + e[3] == 100_000, "{e:?}");
        let f = count(Mix::core("f").expect("f"), &mut rng);
        assert!((48_500..51_500).contains(&f[4]) && f[0] + f[4] == 100_000, "{f:?}");
        assert_eq!(count(Mix::core("c").expect("c"), &mut rng)[0], 100_000);
        assert!(Mix::core("d").expect("d").latest);
        assert_eq!(Mix::core("g"), None);
    }

    #[test]
    fn tasks_draw_valid_operations() {
        let shape = RecordShape::default();
        let plan = RunPlan::new(Mix::core("e").expect("e"), shape, 100);
        let mut draws = plan.task(9, 3);
        let mut inserts = 0;
        for _ in 0..2_000 {
            let op = draws.next_op(&plan);
            match op.kind {
                OpKind::Scan => assert!((1..=100).contains(&op.scan_len)),
                OpKind::Insert => {
                    assert_eq!(op.value.len(), 1_000);
                    assert_eq!(op.insert, Some(100 + inserts));
                    inserts += 1;
                }
                other => panic!("workload E drew {other:?}"),
            }
            assert!(op.key.starts_with(b"usertable:user"));
        }
        // The same seed and task draw the same operations.
        let (p1, p2) = (RunPlan::new(Mix::core("a").expect("a"), shape, 100), {
            RunPlan::new(Mix::core("a").expect("a"), shape, 100)
        });
        let (mut draws1, mut draws2) = (p1.task(5, 1), p2.task(5, 1));
        for _ in 0..100 {
            assert_eq!(draws1.next_op(&p1), draws2.next_op(&p2));
        }
        let record = shape.record(&mut Rng::new(0, 0));
        assert!(record.iter().all(|b| (b' '..=b'~').contains(b)));
        let updated = shape.with_field(&record, 3, &[b'x'; 100]);
        assert_eq!(&updated[300..400], &[b'x'; 100][..]);
        assert_eq!(&updated[..300], &record[..300]);
        assert_eq!(&updated[400..], &record[400..]);
    }

    /// client-go's runner draws the same operations
    /// (`tests/peer-client-go/ycsb_test.go` checks these values too).
    #[test]
    fn draws_match_the_go_runner() {
        let draws = |workload: &str| {
            let plan =
                RunPlan::new(Mix::core(workload).expect("core"), RecordShape::default(), 1000);
            let mut task = plan.task(7, 3);
            (0..6)
                .map(|_| {
                    let op = task.next_op(&plan);
                    if let Some(n) = op.insert {
                        plan.counter.ack(n);
                    }
                    let head =
                        String::from_utf8_lossy(&op.value[..op.value.len().min(8)]).into_owned();
                    format!(
                        "{} {} {} {} {head}",
                        op.kind.name(),
                        String::from_utf8_lossy(&op.key),
                        op.scan_len,
                        op.field
                    )
                })
                .collect::<Vec<_>>()
        };
        let a = draws("a");
        assert_eq!(a[0], "read usertable:user4524463943485837295 0 0 ");
        assert_eq!(a[1], "update usertable:user7938248813704665638 0 0 #@@7X@T'");
        assert_eq!(a[5], "update usertable:user7123510772490260851 0 6 4BPpcK>A");
        let d = draws("d");
        assert_eq!(d[0], "read usertable:user4505159254896626123 0 0 ");
        assert_eq!(d[5], "read usertable:user2398657855368200810 0 0 ");
        let e = draws("e");
        assert_eq!(e[0], "scan usertable:user5827061232156972644 81 0 ");
        assert_eq!(e[5], "scan usertable:user2056258949234144081 11 0 ");
    }

    #[test]
    fn result_lines_round_trip() {
        let mut kinds = [KindStats::default(); 5];
        kinds[0] = KindStats { ops: 900, p99_us: 1_200 };
        kinds[2] = KindStats { ops: 50, p99_us: 3_000 };
        let r = YcsbResult {
            workload: "d".into(),
            mode: "txn".into(),
            conc: 64,
            elapsed: Duration::from_micros(2_000_100),
            cpu: Duration::from_micros(1_500_000),
            errors: 1,
            inserted: 60,
            kinds,
        };
        assert_eq!(YcsbResult::parse_line(&r.to_line()), Some(r.clone()));
        assert!((r.ops_per_sec() - 950.0 / 2.0001).abs() < 1e-6);
        assert_eq!(YcsbResult::parse_line("RESULT op=get"), None);
        assert_eq!(YcsbResult::parse_line("YCSB workload=a mode=raw conc=1"), None);
    }
}
