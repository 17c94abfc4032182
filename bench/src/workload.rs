//! The benchmark workload, shared by every client that runs it: our modes
//! in `tikv-bench`, the tikv-client 0.4 runner (`tests/peer-tikv-client`,
//! bin `tikv-client-bench`) and, mirrored in Go, client-go's
//! (`tests/peer-client-go/bench.go`).
//!
//! A cell is one operation (`get` or `put`) at one concurrency: `conc` tasks
//! each issue one operation after another on their own keys, for a warm-up
//! and then for the measured seconds. Keys are [`Workload::key`]; CPU is the
//! whole client process's user+system time over the measured window. A
//! peer process reports each cell as one [`CellResult`] line.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

/// The warm-up before each measured window.
pub const WARM_UP: Duration = Duration::from_millis(300);

/// Key and value shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Key length in bytes (at least [`Workload::MIN_KEY_LEN`]).
    pub key_len: usize,
    /// Value length in bytes (puts).
    pub value_len: usize,
    /// How many distinct keys each task cycles through.
    pub keys_per_task: u64,
}

impl Default for Workload {
    /// Issue #7's B2 shape (`perf-reliability-anchors.md` §3.2): 24-byte
    /// keys, 128-byte values.
    fn default() -> Workload {
        Workload { key_len: 24, value_len: 128, keys_per_task: 64 }
    }
}

impl Workload {
    /// The digits a key ends with (task and sequence number, six each).
    pub const MIN_KEY_LEN: usize = 13;

    /// Key `i` of task `task`: `key_len - 12` bytes of `k`, then the task
    /// and `i % keys_per_task`, six decimal digits each.
    pub fn key(&self, task: usize, i: u64) -> Vec<u8> {
        let pad = self.key_len.saturating_sub(12);
        let mut key = vec![b'k'; pad];
        key.extend_from_slice(format!("{task:06}{:06}", i % self.keys_per_task.max(1)).as_bytes());
        key
    }

    /// The value every put writes.
    pub fn value(&self) -> Vec<u8> {
        vec![b'v'; self.value_len]
    }
}

/// One operation of a client, by task and sequence number; `true` when it
/// succeeded.
pub type Op = Arc<dyn Fn(usize, u64) -> BoxFuture<'static, bool> + Send + Sync>;

/// What one cell measured.
#[derive(Clone, Debug, PartialEq)]
pub struct CellResult {
    /// `get` or `put`.
    pub op: String,
    /// Concurrent tasks.
    pub conc: usize,
    /// Operations completed in the measured window.
    pub ops: u64,
    /// Operations that failed in the measured window.
    pub errors: u64,
    /// The measured window.
    pub elapsed: Duration,
    /// The client process's CPU time in the window.
    pub cpu: Duration,
    /// Median latency, microseconds.
    pub p50_us: u32,
    /// 99th percentile latency, microseconds.
    pub p99_us: u32,
    /// The client process's peak resident set during the cell, KiB (0:
    /// not measured). A process that ran earlier cells starts the cell
    /// with what it still holds from them.
    pub peak_rss_kib: u64,
}

impl CellResult {
    /// Operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Client CPU microseconds per operation.
    pub fn cpu_us_per_op(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }

    /// The machine-readable line a peer prints for this cell.
    pub fn to_line(&self) -> String {
        format!(
            "RESULT op={} conc={} ops={} errors={} elapsed_us={} cpu_us={} p50_us={} p99_us={} rss_kib={}",
            self.op,
            self.conc,
            self.ops,
            self.errors,
            self.elapsed.as_micros(),
            self.cpu.as_micros(),
            self.p50_us,
            self.p99_us,
            self.peak_rss_kib
        )
    }

    /// Parses a line from [`CellResult::to_line`]; `None` for any other line.
    pub fn parse_line(line: &str) -> Option<CellResult> {
        let rest = line.strip_prefix("RESULT ")?;
        let mut fields = std::collections::HashMap::new();
        for field in rest.split_whitespace() {
            let (k, v) = field.split_once('=')?;
            fields.insert(k, v);
        }
        let num = |k: &str| fields.get(k)?.parse::<u64>().ok();
        Some(CellResult {
            op: (*fields.get("op")?).to_owned(),
            conc: usize::try_from(num("conc")?).ok()?,
            ops: num("ops")?,
            errors: num("errors")?,
            elapsed: Duration::from_micros(num("elapsed_us")?),
            cpu: Duration::from_micros(num("cpu_us")?),
            p50_us: u32::try_from(num("p50_us")?).ok()?,
            p99_us: u32::try_from(num("p99_us")?).ok()?,
            peak_rss_kib: num("rss_kib").unwrap_or(0),
        })
    }
}

/// This process's CPU time so far (user + system, all threads), from
/// `/proc/self/stat` (10 ms ticks); zero where that file does not exist.
pub fn cpu_time() -> Duration {
    cpu_time_of("/proc/self/stat")
}

/// This process's peak resident set size in KiB (`VmHWM` in
/// `/proc/self/status`): since it started, or since the last
/// [`reset_peak_rss`]. Zero where that file does not exist.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

/// Restarts [`peak_rss_kib`] from the current resident set (Linux's
/// `/proc/self/clear_refs`, value 5), so that one benchmark cell's peak is
/// its own. False where that is not supported.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Another process's CPU time so far (the benchmark's server), as
/// [`cpu_time`] reads its own.
pub fn process_cpu_time(pid: u32) -> Duration {
    cpu_time_of(&format!("/proc/{pid}/stat"))
}

fn cpu_time_of(stat_path: &str) -> Duration {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the command name (which may contain spaces): state is
    // field 3, utime 14, stime 15, i.e. 0, 11 and 12 counting from state.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// The `p` quantile of sorted samples (nearest rank), 0 when empty.
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Starts one caller task of a cell on some executor and gives a future of
/// its latencies. The cell's timing always runs on the current tokio
/// runtime; the callers run where an application of the measured client
/// would run them (an async-std client's on async-std's executor).
pub type Spawn = fn(BoxFuture<'static, Vec<u32>>) -> BoxFuture<'static, Vec<u32>>;

/// [`Spawn`] on the current tokio runtime.
pub fn spawn_on_tokio(task: BoxFuture<'static, Vec<u32>>) -> BoxFuture<'static, Vec<u32>> {
    let handle = tokio::spawn(task);
    Box::pin(async move { handle.await.unwrap_or_default() })
}

/// Runs one cell on the current tokio runtime: `conc` tasks loop on `op`
/// for [`WARM_UP`], then for `secs` measured.
pub async fn run(op: Op, op_name: &str, conc: usize, secs: f64) -> CellResult {
    run_with_server(op, spawn_on_tokio, op_name, conc, secs, || Duration::ZERO).await.0
}

/// [`run`] with the caller tasks started by `spawn`, also returning how
/// much `server_cpu` (a clock of the server process's CPU time) advanced in
/// the measured window.
pub async fn run_with_server(
    op: Op,
    spawn: Spawn,
    op_name: &str,
    conc: usize,
    secs: f64,
    server_cpu: impl Fn() -> Duration,
) -> (CellResult, Duration) {
    let rss_measured = reset_peak_rss();
    let measure = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..conc)
        .map(|t| {
            let (op, measure, stop, errors) =
                (op.clone(), measure.clone(), stop.clone(), errors.clone());
            spawn(Box::pin(async move {
                let mut lat = Vec::with_capacity(1 << 14);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let ok = op(t, i).await;
                    i += 1;
                    if measure.load(Ordering::Relaxed) {
                        if ok {
                            lat.push(
                                u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX),
                            );
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat
            }))
        })
        .collect();
    tokio::time::sleep(WARM_UP).await;
    let (t0, cpu0, server0) = (Instant::now(), cpu_time(), server_cpu());
    measure.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    measure.store(false, Ordering::Relaxed);
    let (elapsed, cpu) = (t0.elapsed(), cpu_time().saturating_sub(cpu0));
    let server = server_cpu().saturating_sub(server0);
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await);
    }
    latencies.sort_unstable();
    let result = CellResult {
        op: op_name.to_owned(),
        conc,
        ops: latencies.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        cpu,
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
        peak_rss_kib: if rss_measured { peak_rss_kib() } else { 0 },
    };
    (result, server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_length_and_cycle() {
        let w = Workload::default();
        assert_eq!(w.key(3, 5), b"kkkkkkkkkkkk000003000005".to_vec());
        assert_eq!(w.key(3, 5 + 64), w.key(3, 5));
        assert_ne!(w.key(4, 5), w.key(3, 5));
        let short = Workload { key_len: 16, ..w };
        assert_eq!(short.key(0, 1).len(), 16);
        assert_eq!(w.value().len(), 128);
    }

    #[test]
    fn result_lines_round_trip() {
        let r = CellResult {
            op: "put".into(),
            conc: 64,
            ops: 12_345,
            errors: 2,
            elapsed: Duration::from_micros(3_000_123),
            cpu: Duration::from_micros(2_500_000),
            p50_us: 410,
            p99_us: 1_900,
            peak_rss_kib: 81_920,
        };
        assert_eq!(CellResult::parse_line(&r.to_line()), Some(r));
        assert_eq!(CellResult::parse_line("PASS something"), None);
        assert_eq!(CellResult::parse_line("RESULT op=get conc=x"), None);
        // The line client-go's bench mode prints (bench.go).
        let go = "RESULT op=get conc=1 ops=2037 errors=0 elapsed_us=1000259 cpu_us=326236 p50_us=451 p99_us=1072 rss_kib=51200";
        let parsed = CellResult::parse_line(go).expect("client-go's line parses");
        assert_eq!((parsed.ops, parsed.p99_us, parsed.peak_rss_kib), (2037, 1072, 51_200));
        // A peer that does not measure its memory.
        let old = go.trim_end_matches(" rss_kib=51200");
        assert_eq!(CellResult::parse_line(old).map(|r| r.peak_rss_kib), Some(0));
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(percentile(&[], 0.5), 0);
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 51);
        assert_eq!(percentile(&v, 0.99), 99);
    }
}
