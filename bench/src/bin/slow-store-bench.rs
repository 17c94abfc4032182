//! `slow-store-bench`: snapshot gets by replica read type while one store
//! of `tikv-sim` is slow or black-holed, our tokio client beside client-go
//! (issue #16's slow-store benchmark).
//!
//! ```text
//! cargo build --release -p tikv-sim -p tikv-bench
//! (cd tests/peer-client-go && go build -o ../../target/release/peer-client-go .)
//! target/release/slow-store-bench [--reads leader,prefer-leader,follower]
//!     [--faults none,slow-20,slow-100,black-hole] [--conc 64] [--secs 2]
//!     [--warm-secs 1] [--reps 3] [--read-timeout-ms 0]
//!     [--client-go target/release/peer-client-go]
//! ```
//!
//! One `tikv-sim` (3 stores, 8 regions, a replica of each region on every
//! store, leaders placed by its seed) serves both clients. The fault store is
//! the one that leads the most regions. Faults: `none`; `slow-MS` (that
//! store answers every request and every `BatchCommands` message `MS` ms
//! late, and reports a slow score of 1 + `MS`, capped at 100, in its health
//! feedback, so TiKV's slow threshold of 80 is crossed from 79 ms); and
//! `black-hole` (it takes connections and requests but answers nothing,
//! health probes included, while the model keeps its leaders there: a store
//! cut off from the client only).
//!
//! A cell is (fault, read type): a fresh client (nothing learned in one cell
//! carries into the next) takes one timestamp, then `conc` tasks each get
//! one key after another through a snapshot at it with that replica read
//! type (`Snapshot::with_replica_read`; client-go `KVSnapshot.SetReplicaRead`
//! in `peer-client-go slowstore`, tests/peer-client-go/slowstore.go), over
//! 512 keys written once, 64 per region, for `warm-secs` and then `secs`
//! measured. `--read-timeout-ms` gives both clients a read timeout shorter
//! than the default 30 s (ours: `Config::with_read_timeout_short`; client-go:
//! `KVSnapshot.SetKVReadTimeout`), after which each tries another replica
//! at once. The table shows medians over `reps` (after one discarded
//! warm-up round) of gets per second, p50/p99 of the gets that finished,
//! the errors, and the gets hung at the end of the window (waiting longer
//! than a second), then ours ÷ client-go.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tikv_bench::server::{Server, run_on_client_core};
use tikv_bench::workload::{CellResult, cpu_time, percentile};
use tikv_tokio::{Config, ReplicaRead, ReplicaReadType, TransactionClient};

/// Regions of the simulated cluster (`tikv-sim --regions 8`: split at
/// first bytes that are multiples of 0x20).
const REGIONS: usize = 8;
/// Keys per region.
const SLOTS: usize = 64;
/// A get waiting longer than this at the end of a window is hung.
const HUNG_AFTER: Duration = Duration::from_secs(1);

/// Key `slot` of region `region`: the same keys client-go's runner reads
/// (`slowStoreKey`).
fn key(region: usize, slot: usize) -> Vec<u8> {
    let mut key = vec![(0x10 + region * 0x20) as u8];
    key.extend_from_slice(format!("-slow-{slot:04}").as_bytes());
    key
}

/// The key get `i` of task `t` reads (`slowStoreTaskKey`): the regions in
/// turn, a new slot every round of them.
fn task_key(t: usize, i: u64) -> Vec<u8> {
    let (t, n) = (t as u64, REGIONS as u64);
    key(((t + i) % n) as usize, ((t + i / n) % SLOTS as u64) as usize)
}

fn read_type(name: &str) -> Result<ReplicaReadType, String> {
    Ok(match name {
        "leader" => ReplicaReadType::Leader,
        "follower" => ReplicaReadType::Follower,
        "prefer-leader" => ReplicaReadType::PreferLeader,
        other => return Err(format!("unknown read type {other}")),
    })
}

/// A fault: `none`, `slow-MS` or `black-hole`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    Slow(u64),
    BlackHole,
}

impl Fault {
    fn parse(name: &str) -> Result<Fault, String> {
        match name {
            "none" => Ok(Fault::None),
            "black-hole" => Ok(Fault::BlackHole),
            _ => name
                .strip_prefix("slow-")
                .and_then(|ms| ms.parse().ok())
                .map(Fault::Slow)
                .ok_or_else(|| format!("unknown fault {name} (none, slow-MS, black-hole)")),
        }
    }

    /// The simulator commands that set it on `store`, and then clear it.
    fn commands(self, store: u64) -> (Option<String>, Option<String>) {
        match self {
            Fault::None => (None, None),
            Fault::Slow(ms) => {
                (Some(format!("latency {store} {ms}")), Some(format!("latency {store} 0")))
            }
            Fault::BlackHole => {
                (Some(format!("black-hole {store} on")), Some(format!("black-hole {store} off")))
            }
        }
    }
}

/// One cell's outcome: the usual result line, plus the hung gets.
#[derive(Clone, Debug)]
struct Outcome {
    result: CellResult,
    hung: u64,
}

impl Outcome {
    /// Parses client-go's line: [`CellResult`]'s format and `hung=N`.
    fn parse_line(line: &str) -> Option<Outcome> {
        let result = CellResult::parse_line(line)?;
        let hung = line.split_whitespace().find_map(|f| f.strip_prefix("hung=")?.parse().ok())?;
        Some(Outcome { result, hung })
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0 }
}

struct Args {
    reads: Vec<String>,
    faults: Vec<String>,
    conc: usize,
    secs: f64,
    warm_secs: f64,
    reps: usize,
    read_timeout_ms: u64,
    client_go: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let list = |s: &str| s.split(',').map(String::from).collect::<Vec<_>>();
    let mut args = Args {
        reads: list("leader,prefer-leader,follower"),
        faults: list("none,slow-20,slow-100,black-hole"),
        conc: 64,
        secs: 2.0,
        warm_secs: 1.0,
        reps: 3,
        read_timeout_ms: 0,
        client_go: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag}: bad value {value:?}");
        match flag.as_str() {
            "--reads" => args.reads = list(&value),
            "--faults" => args.faults = list(&value),
            "--conc" => args.conc = value.parse().map_err(|_| bad())?,
            "--secs" => args.secs = value.parse().map_err(|_| bad())?,
            "--warm-secs" => args.warm_secs = value.parse().map_err(|_| bad())?,
            "--reps" => args.reps = value.parse().map_err(|_| bad())?,
            "--read-timeout-ms" => args.read_timeout_ms = value.parse().map_err(|_| bad())?,
            "--client-go" => args.client_go = Some(value.into()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    for read in &args.reads {
        read_type(read)?;
    }
    for fault in &args.faults {
        Fault::parse(fault)?;
    }
    if args.reps == 0 || args.conc == 0 || !args.secs.is_normal() || args.secs < 0.0 {
        return Err("--reps, --conc and --secs must be positive".into());
    }
    if !(args.warm_secs >= 0.0 && args.warm_secs.is_finite()) {
        return Err("--warm-secs must be zero or more".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "{e}\nusage: slow-store-bench [--reads leader,prefer-leader,follower] \
                 [--faults none,slow-MS,black-hole] [--conc 64] [--secs S] [--warm-secs S] \
                 [--reps N] [--read-timeout-ms MS] [--client-go PATH]"
            );
            return ExitCode::from(2);
        }
    };
    run_on_client_core(|pinned| bench(args, pinned))
}

/// One task's record: its measured latencies (µs) and when its get in
/// flight started (µs since the cell's start, plus one; 0 when idle).
type TaskRecord = (Arc<Mutex<Vec<u32>>>, Arc<AtomicU64>);

/// Our client's cell: a fresh client, one snapshot per task at one
/// timestamp. Tasks still hung at the end are aborted (their gets
/// cancelled), so they do not hold up the next cell.
async fn our_cell(pd: &str, read: &str, label: &str, args: &Args) -> Result<Outcome, String> {
    let mut config = Config::default().with_pd_endpoints([pd.to_owned()]);
    if args.read_timeout_ms > 0 {
        config = config.with_read_timeout_short(Duration::from_millis(args.read_timeout_ms));
    }
    let client = TransactionClient::connect_with_config(config)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let ts = client.current_timestamp().await.map_err(|e| format!("timestamp: {e}"))?;
    let replica_read = ReplicaRead::of(read_type(read)?);
    let (measure, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let epoch = Instant::now();
    let tasks: Vec<TaskRecord> = (0..args.conc)
        .map(|_| (Arc::new(Mutex::new(Vec::with_capacity(1 << 12))), Arc::default()))
        .collect();
    let handles: Vec<_> = tasks
        .iter()
        .enumerate()
        .map(|(t, (lat, in_flight))| {
            let snapshot = client.snapshot(ts).with_replica_read(replica_read.clone());
            let (lat, in_flight) = (lat.clone(), in_flight.clone());
            let (measure, stop, errors, first_error) =
                (measure.clone(), stop.clone(), errors.clone(), first_error.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    in_flight.store(
                        start.duration_since(epoch).as_micros() as u64 + 1,
                        Ordering::Relaxed,
                    );
                    let got = snapshot.get(task_key(t, i)).await;
                    in_flight.store(0, Ordering::Relaxed);
                    i += 1;
                    if !measure.load(Ordering::Relaxed) {
                        continue;
                    }
                    match got {
                        Ok(_) => {
                            let us = u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX);
                            lat.lock().unwrap_or_else(|e| e.into_inner()).push(us);
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            let mut first = first_error.lock().unwrap_or_else(|e| e.into_inner());
                            first.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(args.warm_secs)).await;
    let (t0, cpu0) = (Instant::now(), cpu_time());
    measure.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(args.secs)).await;
    measure.store(false, Ordering::Relaxed);
    let end = Instant::now();
    let (elapsed, cpu) = (end - t0, cpu_time().saturating_sub(cpu0));
    stop.store(true, Ordering::Relaxed);
    let now_us = end.duration_since(epoch).as_micros() as u64 + 1;
    let hung = tasks
        .iter()
        .filter(|(_, f)| {
            let since = f.load(Ordering::Relaxed);
            since != 0 && now_us.saturating_sub(since) > HUNG_AFTER.as_micros() as u64
        })
        .count() as u64;
    let mut latencies = Vec::new();
    for (lat, _) in &tasks {
        latencies.extend(lat.lock().unwrap_or_else(|e| e.into_inner()).iter().copied());
    }
    // The tasks that are not hung finish their get; then every task goes.
    let grace = tokio::time::Instant::now() + Duration::from_secs(2);
    for handle in &handles {
        let _ = tokio::time::timeout_at(grace, async {
            while !handle.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
    for handle in handles {
        handle.abort();
    }
    if let Some(e) = first_error.lock().unwrap_or_else(|e| e.into_inner()).take() {
        eprintln!("{label}: first error: {e}");
    }
    latencies.sort_unstable();
    let result = CellResult {
        op: label.to_owned(),
        conc: args.conc,
        ops: latencies.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        cpu,
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
        // Not a memory benchmark: 0 is "not measured" in a RESULT line.
        peak_rss_kib: 0,
    };
    Ok(Outcome { result, hung })
}

/// client-go's runner on every read type under one fault, once.
async fn client_go(
    bin: &PathBuf,
    pd: &str,
    fault: &str,
    args: &Args,
) -> Result<Vec<Outcome>, String> {
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("slowstore")
        .args(["--pd", pd, "--fault", fault, "--reads", &args.reads.join(",")])
        .args(["--conc", &args.conc.to_string(), "--secs", &args.secs.to_string()])
        .args(["--warm-ms", &((args.warm_secs * 1000.0).round() as u64).to_string()])
        .args(["--read-timeout-ms", &args.read_timeout_ms.to_string()]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Its first errors, as ours are printed.
    for line in stderr.lines().filter(|l| l.contains("first error")) {
        eprintln!("client-go {line}");
    }
    let results: Vec<_> = stdout.lines().filter_map(Outcome::parse_line).collect();
    if results.len() != args.reads.len() {
        return Err(format!(
            "client-go gave {} results for {} read types (exit {}): {stdout}{stderr}",
            results.len(),
            args.reads.len(),
            out.status,
        ));
    }
    Ok(results)
}

/// The 512 keys every cell reads, 128-byte values, in one transaction.
async fn write_keys(pd: &str) -> Result<(), String> {
    let config = Config::default().with_pd_endpoints([pd.to_owned()]);
    let client = TransactionClient::connect_with_config(config)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut txn = client.begin().await.map_err(|e| format!("begin: {e}"))?;
    for region in 0..REGIONS {
        for slot in 0..SLOTS {
            txn.put(key(region, slot), vec![b'v'; 128]).map_err(|e| format!("put: {e}"))?;
        }
    }
    txn.commit().await.map_err(|e| format!("writing the keys: {e}"))?;
    // The secondaries commit in the background after `commit` returns: a
    // fault set while one is in flight would leave its lock for the cells,
    // whose reads then wait on resolving it through the faulty store.
    match client.close(Duration::from_secs(10)).await {
        0 => Ok(()),
        n => Err(format!("{n} secondary commits of the keys still running after 10 s")),
    }
}

/// The store leading the most regions (the smallest id among equals), and
/// how many it leads of how many, from `tikv-sim`'s `leaders` answer.
fn busiest_leader(answer: &str) -> Result<(u64, usize, usize), String> {
    let mut led: BTreeMap<u64, usize> = BTreeMap::new();
    let pairs: Vec<&str> = answer.split_whitespace().skip(1).collect();
    for pair in &pairs {
        let store = pair
            .split_once(':')
            .and_then(|(_, s)| s.parse().ok())
            .ok_or_else(|| format!("bad leaders answer {answer:?}"))?;
        *led.entry(store).or_default() += 1;
    }
    let (store, count) = led
        .iter()
        .max_by_key(|&(store, count)| (*count, std::cmp::Reverse(*store)))
        .ok_or("no regions")?;
    Ok((*store, *count, pairs.len()))
}

async fn bench(args: Args, pinned: bool) -> Result<(), String> {
    let regions = REGIONS.to_string();
    let mut server = Server::start("sim", &["--stores", "3", "--regions", &regions], pinned)?;
    let (store, led, regions) = busiest_leader(&server.command("leaders")?)?;
    write_keys(&server.pd).await?;
    println!(
        "# slow-store-bench: conc {}, {} s per cell after {} s of warm-up, median of {} after a warm-up round; \
         faults on store {store} (leader of {led} of {regions} regions); read timeout {}{}",
        args.conc,
        args.secs,
        args.warm_secs,
        args.reps,
        if args.read_timeout_ms == 0 {
            "default (30 s)".to_owned()
        } else {
            format!("{} ms", args.read_timeout_ms)
        },
        if pinned { "; clients on core 0, tikv-sim on core 1" } else { "; unpinned" }
    );
    // (fault index, read index) -> the outcomes of every measured round.
    type Cell = (usize, usize);
    let mut ours: BTreeMap<Cell, Vec<Outcome>> = BTreeMap::new();
    let mut theirs: BTreeMap<Cell, Vec<Outcome>> = BTreeMap::new();
    for round in 0..=args.reps {
        for (f, fault) in args.faults.iter().enumerate() {
            let (set, clear) = Fault::parse(fault)?.commands(store);
            if let Some(set) = set {
                server.command(&set)?;
            }
            for (r, read) in args.reads.iter().enumerate() {
                let outcome = our_cell(&server.pd, read, &format!("{fault}:{read}"), &args).await?;
                if round > 0 {
                    ours.entry((f, r)).or_default().push(outcome);
                }
            }
            if let Some(bin) = &args.client_go {
                for (r, outcome) in
                    client_go(bin, &server.pd, fault, &args).await?.into_iter().enumerate()
                {
                    if round > 0 {
                        theirs.entry((f, r)).or_default().push(outcome);
                    }
                }
            }
            if let Some(clear) = clear {
                server.command(&clear)?;
            }
        }
    }
    println!("| fault | read | client | gets/s | p50 ms | p99 ms | errors | hung |");
    println!("|---|---|---|---|---|---|---|---|");
    let med = |v: &[Outcome], f: &dyn Fn(&Outcome) -> f64| median(v.iter().map(f).collect());
    let ops = |o: &Outcome| o.result.ops_per_sec();
    let p50 = |o: &Outcome| f64::from(o.result.p50_us) / 1e3;
    let p99 = |o: &Outcome| f64::from(o.result.p99_us) / 1e3;
    let errors = |o: &Outcome| o.result.errors as f64;
    let hung = |o: &Outcome| o.hung as f64;
    let mut ratios = Vec::new();
    for ((f, r), mine) in &ours {
        let (fault, read) = (&args.faults[*f], &args.reads[*r]);
        let row = |who: &str, v: &[Outcome]| {
            println!(
                "| {fault} | {read} | {who} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} |",
                med(v, &ops),
                med(v, &p50),
                med(v, &p99),
                med(v, &errors),
                med(v, &hung),
            );
        };
        row("ours", mine);
        if let Some(go) = theirs.get(&(*f, *r)) {
            row("client-go", go);
            let ratio = |g: &dyn Fn(&Outcome) -> f64| {
                let (a, b) = (med(mine, g), med(go, g));
                if b > 0.0 { format!("{:.2}×", a / b) } else { "—".to_owned() }
            };
            ratios.push(format!("| {fault} | {read} | {} | {} |", ratio(&ops), ratio(&p99)));
        }
    }
    if !ratios.is_empty() {
        println!();
        println!("| fault | read | ours ÷ client-go gets/s | p99 |");
        println!("|---|---|---|---|");
        for r in ratios {
            println!("{r}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_go_runner_and_spread_over_the_regions() {
        assert_eq!(key(0, 5), b"\x10-slow-0005".to_vec());
        assert_eq!(key(7, 63)[0], 0xf0);
        // Task 3's first eight gets visit every region once.
        let firsts: std::collections::BTreeSet<u8> = (0..8).map(|i| task_key(3, i)[0]).collect();
        assert_eq!(firsts.len(), REGIONS);
        assert_eq!(task_key(3, 0), key(3, 3));
        assert_eq!(task_key(3, 8), key(3, 4));
    }

    #[test]
    fn faults_parse_into_simulator_commands() {
        assert_eq!(Fault::parse("slow-20"), Ok(Fault::Slow(20)));
        assert!(Fault::parse("slow-").is_err() && Fault::parse("down").is_err());
        let (set, clear) = Fault::parse("black-hole").unwrap().commands(2);
        assert_eq!(set.as_deref(), Some("black-hole 2 on"));
        assert_eq!(clear.as_deref(), Some("black-hole 2 off"));
        assert_eq!(Fault::None.commands(1), (None, None));
    }

    #[test]
    fn the_busiest_leader_is_found_and_client_go_lines_parse() {
        assert_eq!(busiest_leader("leaders 2:3 3:1 4:3 5:2").unwrap(), (3, 2, 4));
        assert_eq!(busiest_leader("leaders 2:2 3:1").unwrap(), (1, 1, 2));
        assert!(busiest_leader("leaders").is_err());
        let line = "RESULT op=black-hole:leader conc=64 ops=0 errors=0 elapsed_us=2000000 \
                    cpu_us=1000 p50_us=0 p99_us=0 hung=64";
        let o = Outcome::parse_line(line).unwrap();
        assert_eq!((o.result.op.as_str(), o.hung), ("black-hole:leader", 64));
        assert!(
            Outcome::parse_line(
                "RESULT op=x conc=1 ops=1 errors=0 elapsed_us=1 cpu_us=1 p50_us=1 p99_us=1"
            )
            .is_none()
        );
    }
}
