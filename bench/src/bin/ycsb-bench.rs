//! `ycsb-bench`: YCSB's core workloads A–F through our tokio client beside
//! client-go, on one `tikv-sim` process (issue #19).
//!
//! ```text
//! cargo build --release -p tikv-sim -p tikv-bench
//! (cd tests/peer-client-go && go build -o ../../target/release/peer-client-go .)
//! target/release/ycsb-bench [--workloads a,b,c,d,e,f] [--modes raw,txn] [--conc 64]
//!                           [--secs 2] [--reps 3] [--records 10000] [--fields 10]
//!                           [--field-len 100] [--seed 1]
//!                           [--client-go target/release/peer-client-go]
//! ```
//!
//! The workloads are `tikv_bench::ycsb`'s (YCSB's published proportions and
//! distributions; 10 fields of 100 bytes per record by default). This
//! program loads `records` records into the raw and the transactional key
//! space once, then, per repetition, runs every (workload, mode,
//! concurrency) cell through our client and through client-go's runner
//! (`peer-client-go ycsb`, `tests/peer-client-go/ycsb.go`, a child process
//! on this process's core; `tikv-sim` runs on the other), alternating which
//! goes first. Modes follow go-ycsb's TiKV driver: `raw` is our `RawClient`
//! against client-go's `rawkv.Client`; `txn` runs one optimistic
//! transaction per operation (async commit and 1PC on, go-ycsb's defaults)
//! through our `TransactionClient` and client-go's `txnkv`. Both draw the
//! same operations (same generators and seeds per task); inserts of one run
//! raise the record count the next run starts from. The table shows
//! medians over `reps` of operations per second, the p99 latency of each
//! operation type the workload has, client CPU per operation and failed
//! operations, then ours ÷ client-go per cell.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use tikv_bench::server::{Server, run_on_client_core};
use tikv_bench::ycsb::{
    Mix, OpKind, RecordShape, Rng, RunPlan, YcsbExec, YcsbOp, YcsbResult, record_key, run_ycsb,
};
use tikv_tokio::{Config, RawClient, TransactionClient, TransactionOptions};

/// Records per load request (one raw batch put, or one transaction).
const LOAD_BATCH: u64 = 256;
/// Load requests in flight.
const LOAD_CONC: usize = 8;

struct Args {
    workloads: Vec<String>,
    modes: Vec<String>,
    concs: Vec<usize>,
    secs: f64,
    reps: usize,
    records: u64,
    shape: RecordShape,
    seed: u64,
    client_go: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        workloads: ["a", "b", "c", "d", "e", "f"].map(String::from).to_vec(),
        modes: vec!["raw".into(), "txn".into()],
        concs: vec![64],
        secs: 2.0,
        reps: 3,
        records: 10_000,
        shape: RecordShape::default(),
        seed: 1,
        client_go: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag}: bad value {value:?}");
        let list = |v: &str| v.split(',').map(String::from).collect::<Vec<_>>();
        match flag.as_str() {
            "--workloads" => args.workloads = list(&value),
            "--modes" => args.modes = list(&value),
            "--conc" => {
                args.concs = value
                    .split(',')
                    .map(|c| c.parse().map_err(|_| bad()))
                    .collect::<Result<_, _>>()?
            }
            "--secs" => args.secs = value.parse().map_err(|_| bad())?,
            "--reps" => args.reps = value.parse().map_err(|_| bad())?,
            "--records" => args.records = value.parse().map_err(|_| bad())?,
            "--fields" => args.shape.fields = value.parse().map_err(|_| bad())?,
            "--field-len" => args.shape.field_len = value.parse().map_err(|_| bad())?,
            "--seed" => args.seed = value.parse().map_err(|_| bad())?,
            "--client-go" => args.client_go = Some(value.into()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if let Some(w) = args.workloads.iter().find(|w| Mix::core(w).is_none()) {
        return Err(format!("unknown workload {w} (a..f)"));
    }
    if let Some(m) = args.modes.iter().find(|m| *m != "raw" && *m != "txn") {
        return Err(format!("unknown mode {m} (raw, txn)"));
    }
    if args.reps == 0
        || args.concs.contains(&0)
        || !args.secs.is_normal()
        || args.secs < 0.0
        || args.records < 2
        || args.shape.fields == 0
        || args.shape.field_len == 0
    {
        return Err("--reps, --conc, --secs, --fields and --field-len must be positive, --records at least 2".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "{e}\nusage: ycsb-bench [--workloads a,..,f] [--modes raw,txn] [--conc 64] [--secs S] [--reps N] [--records N] [--fields N] [--field-len N] [--seed N] [--client-go PATH]"
            );
            return ExitCode::from(2);
        }
    };
    run_on_client_core(|pinned| bench(args, pinned))
}

/// Writes records `0..records` into the key space of `mode`.
async fn load(
    raw: &RawClient,
    txn: &TransactionClient,
    mode: &str,
    records: u64,
    shape: RecordShape,
) -> Result<(), String> {
    let batches = (0..records.div_ceil(LOAD_BATCH)).map(|b| {
        let (raw, txn) = (raw.clone(), txn.clone());
        let txn_mode = mode == "txn";
        async move {
            let mut rng = Rng::new(u64::MAX, b);
            let pairs: Vec<_> = (b * LOAD_BATCH..((b + 1) * LOAD_BATCH).min(records))
                .map(|n| (record_key(n), shape.record(&mut rng)))
                .collect();
            if txn_mode {
                let mut t = txn.begin().await.map_err(|e| e.to_string())?;
                for (k, v) in pairs {
                    t.put(k, v).map_err(|e| e.to_string())?;
                }
                t.commit().await.map(|_| ()).map_err(|e| e.to_string())
            } else {
                raw.batch_put(pairs).await.map_err(|e| e.to_string())
            }
        }
    });
    let mut done = futures::stream::iter(batches).buffer_unordered(LOAD_CONC);
    while let Some(r) = done.next().await {
        r.map_err(|e| format!("loading the {mode} records: {e}"))?;
    }
    Ok(())
}

/// One operation through our raw client.
async fn raw_op(
    client: RawClient,
    shape: RecordShape,
    op: YcsbOp,
) -> Result<(), tikv_tokio::Error> {
    match op.kind {
        OpKind::Read => drop(client.get(op.key).await?),
        OpKind::Insert => client.put(op.key, op.value).await?,
        OpKind::Scan => drop(client.scan(op.key.., op.scan_len).await?),
        OpKind::Update | OpKind::ReadModifyWrite => {
            let record = client.get(op.key.clone()).await?;
            let record =
                shape.with_field(record.as_deref().unwrap_or_default(), op.field, &op.value);
            client.put(op.key, record).await?;
        }
    }
    Ok(())
}

/// One operation as one optimistic transaction of ours.
async fn txn_op(
    client: TransactionClient,
    shape: RecordShape,
    op: YcsbOp,
) -> Result<(), tikv_tokio::Error> {
    // go-ycsb's TiKV driver turns both on by default.
    let opts = TransactionOptions::default().with_async_commit().with_one_pc();
    let mut txn = client.begin_with_options(opts).await?;
    match op.kind {
        OpKind::Read => drop(txn.get(op.key).await?),
        OpKind::Insert => txn.put(op.key, op.value)?,
        OpKind::Scan => drop(txn.scan(op.key.., op.scan_len).await?),
        OpKind::Update | OpKind::ReadModifyWrite => {
            let record = txn.get(op.key.clone()).await?;
            let record =
                shape.with_field(record.as_deref().unwrap_or_default(), op.field, &op.value);
            txn.put(op.key, record)?;
        }
    }
    txn.commit().await?;
    Ok(())
}

/// client-go's runner on one cell.
async fn client_go(
    bin: &PathBuf,
    pd: &str,
    (workload, mode, conc): (&str, &str, usize),
    records: u64,
    args: &Args,
) -> Result<YcsbResult, String> {
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("ycsb")
        .args(["--pd", pd, "--workload", workload, "--mode", mode])
        .args(["--conc", &conc.to_string(), "--secs", &args.secs.to_string()])
        .args(["--records", &records.to_string(), "--seed", &args.seed.to_string()])
        .args(["--fields", &args.shape.fields.to_string()])
        .args(["--field-len", &args.shape.field_len.to_string()]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot run {} ({e}); build it first", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().find_map(YcsbResult::parse_line).ok_or_else(|| {
        format!(
            "client-go gave no result for {workload}-{mode} at {conc} (exit {}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0 }
}

/// The medians of a cell's repetitions: ops/s, p99 ms per kind, CPU µs per
/// op, and the errors summed.
struct Summary {
    ops_per_sec: f64,
    p99_ms: [f64; 5],
    cpu_us_per_op: f64,
    errors: u64,
}

fn summarize(runs: &[YcsbResult]) -> Summary {
    let mut p99_ms = [0.0; 5];
    for (i, p) in p99_ms.iter_mut().enumerate() {
        *p = median(runs.iter().map(|r| f64::from(r.kinds[i].p99_us) / 1e3).collect());
    }
    Summary {
        ops_per_sec: median(runs.iter().map(YcsbResult::ops_per_sec).collect()),
        p99_ms,
        cpu_us_per_op: median(
            runs.iter()
                .map(|r| {
                    let ops: u64 = r.kinds.iter().map(|k| k.ops).sum();
                    r.cpu.as_secs_f64() * 1e6 / ops.max(1) as f64
                })
                .collect(),
        ),
        errors: runs.iter().map(|r| r.errors).sum(),
    }
}

async fn bench(args: Args, pinned: bool) -> Result<(), String> {
    let mut server = Server::start("sim", &["--stores", "3", "--regions", "4"], pinned)?;
    let config = || Config::default().with_pd_endpoints([server.pd.clone()]);
    let raw =
        RawClient::connect_with_config(config()).await.map_err(|e| format!("connect: {e}"))?;
    let txn = TransactionClient::connect_with_config(config())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let shape = args.shape;
    // Records per mode, raised by every run's inserts.
    let mut records: BTreeMap<String, u64> = BTreeMap::new();
    for mode in &args.modes {
        let t0 = std::time::Instant::now();
        load(&raw, &txn, mode, args.records, shape).await?;
        eprintln!(
            "# loaded {} {mode} records in {:.1} s",
            args.records,
            t0.elapsed().as_secs_f64()
        );
        records.insert(mode.clone(), args.records);
    }
    println!(
        "# ycsb-bench: {} records of {}×{} B, {} s per cell, median of {}{}",
        args.records,
        shape.fields,
        shape.field_len,
        args.secs,
        args.reps,
        if pinned { "; clients on core 0, tikv-sim on core 1" } else { "; unpinned" }
    );
    let raw_exec: YcsbExec = {
        let raw = raw.clone();
        Arc::new(move |op| raw_op(raw.clone(), shape, op).map(|r| r.is_ok()).boxed())
    };
    let txn_exec: YcsbExec = {
        let txn = txn.clone();
        Arc::new(move |op| txn_op(txn.clone(), shape, op).map(|r| r.is_ok()).boxed())
    };
    // (workload, mode, conc) -> every repetition's result, ours and theirs.
    type Key = (String, String, usize);
    let mut ours: BTreeMap<Key, Vec<YcsbResult>> = BTreeMap::new();
    let mut theirs: BTreeMap<Key, Vec<YcsbResult>> = BTreeMap::new();
    // Runs that completed nothing: the table is printed, then this fails.
    let mut idle = Vec::new();
    for rep in 0..args.reps {
        for workload in &args.workloads {
            let mix = Mix::core(workload).ok_or("unknown workload")?;
            for mode in &args.modes {
                for &conc in &args.concs {
                    let key: Key = (workload.clone(), mode.clone(), conc);
                    // Alternate who goes first, so neither always runs on
                    // the other's freshly inserted records and warm server.
                    for go_turn in [rep % 2 == 1, rep % 2 == 0] {
                        let count = records[mode];
                        let result = if go_turn {
                            let Some(bin) = &args.client_go else { continue };
                            let r =
                                client_go(bin, &server.pd, (workload, mode, conc), count, &args)
                                    .await?;
                            theirs.entry(key.clone()).or_default().push(r.clone());
                            r
                        } else {
                            let plan = Arc::new(RunPlan::new(mix, shape, count));
                            let exec = if mode == "raw" { &raw_exec } else { &txn_exec };
                            let r = run_ycsb(
                                exec.clone(),
                                plan,
                                (workload, mode),
                                conc,
                                args.secs,
                                args.seed,
                            )
                            .await;
                            ours.entry(key.clone()).or_default().push(r.clone());
                            r
                        };
                        if result.kinds.iter().all(|k| k.ops == 0) {
                            let who = if go_turn { "client-go" } else { "ours" };
                            idle.push(format!(
                                "{workload}-{mode} at {conc}: {who} completed no operation in the window ({} failed)",
                                result.errors
                            ));
                        }
                        records.insert(mode.clone(), count + result.inserted);
                    }
                }
            }
        }
    }
    // The server must have answered throughout; a dead one fails here.
    server.stats().ok_or("tikv-sim stopped answering")?;
    print_tables(&ours, &theirs);
    if idle.is_empty() { Ok(()) } else { Err(idle.join("\n")) }
}

type Results = BTreeMap<(String, String, usize), Vec<YcsbResult>>;

fn print_tables(ours: &Results, theirs: &Results) {
    let kinds = |workload: &str| -> Vec<usize> {
        let mix = Mix::core(workload).map(|m| m.proportions).unwrap_or_default();
        (0..5).filter(|&i| mix[i] > 0.0).collect()
    };
    println!(
        "| workload | mode | conc | client | ops/s | p99 ms read | update | insert | scan | rmw | client CPU µs/op | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for (key, runs) in ours {
        let (workload, mode, conc) = key;
        let has = kinds(workload);
        let row = |who: &str, s: &Summary| {
            let p99: Vec<String> = (0..5)
                .map(|i| if has.contains(&i) { format!("{:.2}", s.p99_ms[i]) } else { "—".into() })
                .collect();
            println!(
                "| {} | {mode} | {conc} | {who} | {:.0} | {} | {:.0} | {} |",
                workload.to_uppercase(),
                s.ops_per_sec,
                p99.join(" | "),
                s.cpu_us_per_op,
                s.errors
            );
        };
        let mine = summarize(runs);
        row("ours", &mine);
        if let Some(go) = theirs.get(key) {
            let go = summarize(go);
            row("client-go", &go);
            let p99: Vec<String> = (0..5)
                .map(|i| {
                    if has.contains(&i) {
                        format!("{:.2}×", mine.p99_ms[i] / go.p99_ms[i].max(1e-9))
                    } else {
                        "—".into()
                    }
                })
                .collect();
            ratios.push(format!(
                "| {} | {mode} | {conc} | {:.2}× | {} | {:.2}× |",
                workload.to_uppercase(),
                mine.ops_per_sec / go.ops_per_sec.max(1e-9),
                p99.join(" | "),
                mine.cpu_us_per_op / go.cpu_us_per_op.max(1e-9)
            ));
        }
    }
    if !ratios.is_empty() {
        println!();
        println!(
            "| workload | mode | conc | ours ÷ client-go ops/s | p99 read | update | insert | scan | rmw | client CPU per op |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for r in ratios {
            println!("{r}");
        }
    }
}
