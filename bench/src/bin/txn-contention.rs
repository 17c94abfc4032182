//! `txn-contention`: a contended counter, pessimistic against optimistic
//! with retries, our tokio client beside client-go, on one `tikv-sim`
//! process (the benchmark issue #14 asks for).
//!
//! ```text
//! cargo build --release -p tikv-sim -p tikv-bench
//! (cd tests/peer-client-go && go build -o ../../target/release/peer-client-go .)
//! target/release/txn-contention [--keys 8] [--conc 64] [--secs 3] [--reps 3]
//!                               [--client-go target/release/peer-client-go]
//! ```
//!
//! `conc` tasks each pick one of `keys` counters at random and add one to it
//! in a transaction of its own, over and over:
//!
//! - pessimistic: `get_for_update` (lock with the value returned, waiting
//!   as long as it takes), put value + 1, commit; a newer write met while
//!   locking is retried with a fresh `for_update_ts` (TiDB's statement
//!   retry, inside `lock_keys` here);
//! - optimistic: get, put value + 1, commit; a write conflict at commit
//!   restarts the transaction, as an application retries.
//!
//! client-go runs the same workload (`peer-client-go contention`, in
//! `tests/peer-client-go/contention.go`) as a child process on this
//! process's core. Default transaction options on both sides (2PC; no async
//! commit, no 1PC). Each cell warms up for 300 ms and is measured for
//! `secs`; the table shows medians over `reps` of committed increments per
//! second, p50/p99 of a whole increment (retries included), retries per
//! increment and client CPU per increment, then ours ÷ client-go. After
//! every cell the counters are read back: they must add up to the
//! increments committed, or the run fails.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tikv_bench::server::{Server, run_on_client_core};
use tikv_bench::workload::{cpu_time, percentile};
use tikv_tokio::{Config, Error, TransactionClient, TransactionOptions};

const WARM: Duration = Duration::from_millis(300);

/// One cell's measurement.
#[derive(Clone, Copy, Debug, Default)]
struct Cell {
    /// Increments committed in the measured window.
    increments: u64,
    /// Increments committed in all (warm-up and tail included).
    total: u64,
    /// Write conflicts retried in the window.
    retries: u64,
    /// Other failed attempts in the window (retried too).
    errors: u64,
    elapsed: Duration,
    cpu: Duration,
    p50_us: u32,
    p99_us: u32,
}

impl Cell {
    fn per_sec(&self) -> f64 {
        self.increments as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    fn retries_per_increment(&self) -> f64 {
        self.retries as f64 / (self.increments as f64).max(1.0)
    }
    fn cpu_us_per_increment(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / (self.increments as f64).max(1.0)
    }

    /// client-go's `RESULT` line.
    fn parse(line: &str) -> Option<Cell> {
        let rest = line.strip_prefix("RESULT ")?;
        let field = |name: &str| {
            rest.split_whitespace()
                .find_map(|f| f.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
        };
        Some(Cell {
            increments: field("increments")?,
            total: field("total")?,
            retries: field("retries")?,
            errors: field("errors")?,
            elapsed: Duration::from_micros(field("elapsed_us")?),
            cpu: Duration::from_micros(field("cpu_us")?),
            p50_us: u32::try_from(field("p50_us")?).ok()?,
            p99_us: u32::try_from(field("p99_us")?).ok()?,
        })
    }
}

fn counter_key(prefix: &str, i: u64) -> Vec<u8> {
    format!("{prefix}-{i:03}").into_bytes()
}

fn counter_value(v: Option<&[u8]>) -> Result<u64, String> {
    match v {
        None => Ok(0),
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("counter value {v:?} is not a number")),
    }
}

/// One increment attempt of ours.
async fn increment(
    client: &TransactionClient,
    pessimistic: bool,
    key: Vec<u8>,
) -> Result<(), Error> {
    if pessimistic {
        let mut t =
            client.begin_with_options(TransactionOptions::default().with_pessimistic()).await?;
        let n = t.get_for_update(key.clone()).await?;
        let n = counter_value(n.as_deref()).map_err(Error::InvalidArgument)?;
        t.put(key, (n + 1).to_string())?;
        t.commit().await.map(drop)
    } else {
        let mut t = client.begin().await?;
        let n = t.get(key.clone()).await?;
        let n = counter_value(n.as_deref()).map_err(Error::InvalidArgument)?;
        t.put(key, (n + 1).to_string())?;
        t.commit().await.map(drop)
    }
}

/// Our client on one cell.
async fn ours(
    client: &TransactionClient,
    pessimistic: bool,
    conc: usize,
    keys: u64,
    secs: f64,
    prefix: &str,
) -> Cell {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..conc)
        .map(|task| {
            let (client, prefix) = (client.clone(), prefix.to_owned());
            let (measuring, stop, total, retries, errors) =
                (measuring.clone(), stop.clone(), total.clone(), retries.clone(), errors.clone());
            tokio::spawn(async move {
                // xorshift64, seeded per task: the same picks every run.
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (task as u64 + 1);
                let mut latencies = Vec::with_capacity(1 << 12);
                while !stop.load(Ordering::Relaxed) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let key = counter_key(&prefix, rng % keys);
                    let start = Instant::now();
                    loop {
                        match increment(&client, pessimistic, key.clone()).await {
                            Ok(()) => break,
                            Err(e) if e.is_write_conflict() => {
                                retries.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    total.fetch_add(1, Ordering::Relaxed);
                    if measuring.load(Ordering::Relaxed) {
                        let us = start.elapsed().as_micros();
                        latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
                    }
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(WARM).await;
    let (t0, cpu0) = (Instant::now(), cpu_time());
    let (retries0, errors0) = (retries.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let (elapsed, cpu) = (t0.elapsed(), cpu_time().saturating_sub(cpu0));
    let window_retries = retries.load(Ordering::Relaxed) - retries0;
    let window_errors = errors.load(Ordering::Relaxed) - errors0;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort_unstable();
    Cell {
        increments: all.len() as u64,
        total: total.load(Ordering::Relaxed),
        retries: window_retries,
        errors: window_errors,
        elapsed,
        cpu,
        p50_us: percentile(&all, 0.50),
        p99_us: percentile(&all, 0.99),
    }
}

/// client-go on one cell, as a child process.
async fn client_go(
    bin: &PathBuf,
    pd: &str,
    pessimistic: bool,
    conc: usize,
    keys: u64,
    secs: f64,
    prefix: &str,
) -> Result<Cell, String> {
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("contention")
        .args(["--pd", pd, "--prefix", prefix])
        .args(["--mode", if pessimistic { "pessimistic" } else { "optimistic" }])
        .args(["--conc", &conc.to_string(), "--keys", &keys.to_string()])
        .args(["--secs", &secs.to_string(), "--warm-ms", &WARM.as_millis().to_string()]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().find_map(Cell::parse).ok_or_else(|| {
        format!(
            "client-go gave no RESULT (exit {}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The counters of `prefix` must add up to the increments committed.
async fn check_counters(
    client: &TransactionClient,
    prefix: &str,
    keys: u64,
    cell: &Cell,
) -> Result<(), String> {
    let ts = client.current_timestamp().await.map_err(|e| format!("timestamp: {e}"))?;
    let snap = client.snapshot(ts);
    let mut sum = 0;
    for i in 0..keys {
        let v = snap.get(counter_key(prefix, i)).await.map_err(|e| format!("read back: {e}"))?;
        sum += counter_value(v.as_deref())?;
    }
    if sum != cell.total {
        return Err(format!(
            "{prefix}: the counters add up to {sum}, but {} increments were committed",
            cell.total
        ));
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0 }
}

struct Args {
    keys: u64,
    conc: usize,
    secs: f64,
    reps: usize,
    client_go: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { keys: 8, conc: 64, secs: 3.0, reps: 3, client_go: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag}: bad value {value:?}");
        match flag.as_str() {
            "--keys" => args.keys = value.parse().map_err(|_| bad())?,
            "--conc" => args.conc = value.parse().map_err(|_| bad())?,
            "--secs" => args.secs = value.parse().map_err(|_| bad())?,
            "--reps" => args.reps = value.parse().map_err(|_| bad())?,
            "--client-go" => args.client_go = Some(value.into()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.keys == 0
        || args.conc == 0
        || args.reps == 0
        || !args.secs.is_normal()
        || args.secs < 0.0
    {
        return Err("--keys, --conc, --reps and --secs must be positive".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "{e}\nusage: txn-contention [--keys N] [--conc N] [--secs S] [--reps N] [--client-go PATH]"
            );
            return ExitCode::from(2);
        }
    };
    run_on_client_core(|pinned| run(args, pinned))
}

async fn run(args: Args, pinned: bool) -> Result<(), String> {
    let server = Server::start("sim", &["--txn", "--stores", "3", "--regions", "4"], pinned)?;
    let config = Config::default().with_pd_endpoints([server.pd.clone()]);
    let client = TransactionClient::connect_with_config(config)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    println!(
        "# txn-contention: {} counters, concurrency {}, {} s per cell, median of {}{}",
        args.keys,
        args.conc,
        args.secs,
        args.reps,
        if pinned { "; clients on core 0, tikv-sim on core 1" } else { "; unpinned" }
    );
    let mut clients = vec!["ours"];
    if args.client_go.is_some() {
        clients.push("client-go");
    }
    // (client, mode) -> the cells of every repetition.
    let mut cells: BTreeMap<(&str, &str), Vec<Cell>> = BTreeMap::new();
    for rep in 0..args.reps {
        for mode in ["pessimistic", "optimistic"] {
            for &who in &clients {
                let prefix = format!("ctr-{rep}-{mode}-{who}");
                let pessimistic = mode == "pessimistic";
                let cell = match (who, &args.client_go) {
                    ("client-go", Some(bin)) => {
                        client_go(
                            bin,
                            &server.pd,
                            pessimistic,
                            args.conc,
                            args.keys,
                            args.secs,
                            &prefix,
                        )
                        .await?
                    }
                    _ => ours(&client, pessimistic, args.conc, args.keys, args.secs, &prefix).await,
                };
                check_counters(&client, &prefix, args.keys, &cell).await?;
                eprintln!(
                    "rep {rep} {mode} {who}: {:.0} increments/s, {} retries, {} errors",
                    cell.per_sec(),
                    cell.retries,
                    cell.errors
                );
                cells.entry((who, mode)).or_default().push(cell);
            }
        }
    }
    println!(
        "| client | mode | increments/s | p50 ms | p99 ms | retries/increment | client CPU µs/increment |"
    );
    println!("|---|---|---|---|---|---|---|");
    let med = |cs: &[Cell], f: &dyn Fn(&Cell) -> f64| median(cs.iter().map(f).collect());
    for mode in ["pessimistic", "optimistic"] {
        for &who in &clients {
            let cs = &cells[&(who, mode)];
            println!(
                "| {who} | {mode} | {:.0} | {:.1} | {:.1} | {:.2} | {:.0} |",
                med(cs, &Cell::per_sec),
                med(cs, &|c| f64::from(c.p50_us) / 1e3),
                med(cs, &|c| f64::from(c.p99_us) / 1e3),
                med(cs, &Cell::retries_per_increment),
                med(cs, &Cell::cpu_us_per_increment),
            );
        }
    }
    if args.client_go.is_some() {
        println!();
        println!("| ours ÷ client-go | increments/s | p99 | client CPU per increment |");
        println!("|---|---|---|---|");
        for mode in ["pessimistic", "optimistic"] {
            let (a, b) = (&cells[&("ours", mode)], &cells[&("client-go", mode)]);
            let ratio = |f: &dyn Fn(&Cell) -> f64| med(a, f) / med(b, f).max(1e-9);
            println!(
                "| {mode} | {:.2}× | {:.2}× | {:.2}× |",
                ratio(&Cell::per_sec),
                ratio(&|c| f64::from(c.p99_us)),
                ratio(&Cell::cpu_us_per_increment),
            );
        }
    }
    Ok(())
}
