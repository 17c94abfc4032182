//! `txn-bench`: small transactions through our tokio client beside
//! client-go, on one `tikv-sim` process (issue #19's transactional
//! benchmark).
//!
//! ```text
//! cargo build --release -p tikv-sim -p tikv-bench
//! (cd tests/peer-client-go && go build -o ../../target/release/peer-client-go .)
//! target/release/txn-bench [--cells rw-2pc,rw-async,rw-1pc,rw-pessimistic,w4-2pc,w4-async,ro16-snapshot]
//!                          [--conc 1,64,256] [--secs 2] [--reps 3]
//!                          [--client-go target/release/peer-client-go]
//! ```
//!
//! A cell is `WORKLOAD-MODE`; each runs `conc` tasks that each run one
//! transaction after another on their own keys (no contention: that is
//! `txn-contention`'s subject):
//!
//! - `rw`: read one key, write another, commit (both in one region);
//! - `w4`: write four keys in four regions, commit;
//! - `ro16`: a snapshot at a fresh timestamp batch-reads 16 keys over four
//!   regions (the mode is ignored).
//!
//! Modes: `2pc`, `async` (async commit), `1pc` (1PC; keys over several
//! regions fall back to 2PC), `pessimistic` (`rw`: the read locks its key
//! with its value, `get_for_update`). client-go runs the same cells
//! (`peer-client-go txnbench`, `tests/peer-client-go/txnbench.go`) with the
//! same keys, as a child process on this process's core; `tikv-sim` runs on
//! the other core. The table shows medians over `reps` of transactions per
//! second, p50/p99 latency, client CPU per transaction, the store requests
//! one transaction costs (`BatchCommands` entries plus unary calls,
//! counted by `tikv-sim` over transactions run one at a time after the
//! cell, each client's on the same keys) and
//! failed transactions, then ours ÷ client-go per cell. The client's peak
//! RSS is the process's during the cell (its kernel count reset at the
//! cell's start), so ours includes what earlier cells left allocated.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use futures::FutureExt;
use tikv_bench::server::{Server, run_on_client_core};
use tikv_bench::workload::{CellResult, Op, run};
use tikv_tokio::{Config, TransactionClient, TransactionOptions};

/// Key `n` of task `t` in region `region` of `tikv-sim --regions 4`
/// (split at first bytes 0x40, 0x80, 0xc0): the same keys client-go's
/// runner uses (`txnKey`).
fn txn_key(region: usize, t: usize, n: u64) -> Vec<u8> {
    // The first byte as a byte: formatted as a char, 0xa0 and 0xe0 would
    // become two-byte UTF-8 sequences in another region.
    let mut key = vec![(0x20 + region * 0x40) as u8];
    key.extend_from_slice(format!("-{:06}-{:06}", t % 1_000_000, n % 64).as_bytes());
    key
}

fn options(mode: &str) -> Result<TransactionOptions, String> {
    let o = TransactionOptions::default();
    Ok(match mode {
        "2pc" | "snapshot" => o,
        "async" => o.with_async_commit(),
        "1pc" => o.with_async_commit().with_one_pc(),
        "pessimistic" => o.with_pessimistic(),
        other => return Err(format!("unknown mode {other}")),
    })
}

/// One transaction of `workload`; true if it committed (or read).
async fn run_txn(
    client: TransactionClient,
    workload: &'static str,
    opts: TransactionOptions,
    t: usize,
    i: u64,
) -> bool {
    let attempt = async {
        if workload == "ro16" {
            let snap = client.snapshot(client.current_timestamp().await?);
            let keys: Vec<_> = (0..16u64).map(|k| txn_key(k as usize % 4, t, i + k)).collect();
            snap.batch_get(keys).await?;
            return Ok::<_, tikv_tokio::Error>(());
        }
        let pessimistic = opts.pessimistic;
        let mut txn = client.begin_with_options(opts).await?;
        match workload {
            "rw" => {
                let (read, write) = (txn_key(1, t, i), txn_key(1, t, i + 32));
                if pessimistic {
                    txn.get_for_update(read).await?;
                } else {
                    txn.get(read).await?;
                }
                txn.put(write, "v")?;
            }
            _ => {
                for region in 0..4 {
                    txn.put(txn_key(region, t, i), "v")?;
                }
            }
        }
        txn.commit().await?;
        Ok(())
    };
    attempt.await.is_ok()
}

/// Transactions run one at a time to count a transaction's store requests.
const RPC_SAMPLE: u64 = 50;

/// How long background work (the secondaries a 2PC or async commit commits
/// after returning) is given before the server's counts are read, before
/// the sample (the cell's last transactions') and after it (its own).
const SETTLE: std::time::Duration = std::time::Duration::from_millis(500);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0 }
}

struct Args {
    cells: Vec<String>,
    concs: Vec<usize>,
    secs: f64,
    reps: usize,
    client_go: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        cells: [
            "rw-2pc",
            "rw-async",
            "rw-1pc",
            "rw-pessimistic",
            "w4-2pc",
            "w4-async",
            "ro16-snapshot",
        ]
        .map(String::from)
        .to_vec(),
        concs: vec![1, 64, 256],
        secs: 2.0,
        reps: 3,
        client_go: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag}: bad value {value:?}");
        match flag.as_str() {
            "--cells" => args.cells = value.split(',').map(String::from).collect(),
            "--conc" => {
                args.concs = value
                    .split(',')
                    .map(|c| c.parse().map_err(|_| bad()))
                    .collect::<Result<_, _>>()?
            }
            "--secs" => args.secs = value.parse().map_err(|_| bad())?,
            "--reps" => args.reps = value.parse().map_err(|_| bad())?,
            "--client-go" => args.client_go = Some(value.into()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    for cell in &args.cells {
        let (workload, mode) = cell.split_once('-').ok_or(format!("cell {cell}: WORKLOAD-MODE"))?;
        if !["rw", "w4", "ro16"].contains(&workload) {
            return Err(format!("cell {cell}: unknown workload"));
        }
        options(mode)?;
    }
    if args.reps == 0 || args.concs.contains(&0) || !args.secs.is_normal() || args.secs < 0.0 {
        return Err("--reps, --conc and --secs must be positive".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "{e}\nusage: txn-bench [--cells WORKLOAD-MODE,...] [--conc 1,64,256] [--secs S] [--reps N] [--client-go PATH]"
            );
            return ExitCode::from(2);
        }
    };
    run_on_client_core(|pinned| bench(args, pinned))
}

/// client-go's runner on the given cells, once.
/// The store requests per transaction of `RPC_SAMPLE` transactions, from
/// the server's counts before and after them: `BatchCommands` entries plus
/// unary calls.
fn rpcs_per_txn(
    before: Option<tikv_bench::server::ServerStats>,
    after: Option<tikv_bench::server::ServerStats>,
) -> Result<f64, String> {
    let (Some(before), Some(after)) = (before, after) else {
        return Err("tikv-sim does not report stats".into());
    };
    let delta = before.delta(after);
    let unary = delta.kv_unary.ok_or("tikv-sim does not count unary calls")?;
    Ok((delta.entries + unary) as f64 / RPC_SAMPLE as f64)
}

/// Runs client-go's cells (`peer-client-go txnbench --sample`): each
/// cell's result, with the store requests per transaction of its sample,
/// counted on `server` between the runner's two handshakes (see
/// `txnbench.go`). The exchange blocks this thread, which is `block_on`'s
/// and not the runtime's worker: our client's tasks keep running.
fn client_go(
    bin: &PathBuf,
    server: &mut Server,
    cells: &[String],
    concs: &[usize],
    secs: f64,
) -> Result<Vec<(CellResult, f64)>, String> {
    use std::io::{BufRead, Write};
    let mut child = std::process::Command::new(bin)
        .arg("txnbench")
        .args(["--pd", &server.pd, "--cells", &cells.join(",")])
        .args(["--conc", &concs.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")])
        .args(["--secs", &secs.to_string(), "--sample", &RPC_SAMPLE.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let (Some(mut to_runner), Some(from_runner), Some(mut runner_log)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("client-go's runner has no pipes".into());
    };
    // Drained beside stdout: a runner logging more than a pipe holds would
    // otherwise block while this thread waits for its next handshake.
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut runner_log, &mut text);
        text
    });
    let mut results = Vec::new();
    let mut pending: Option<CellResult> = None;
    let mut before = None;
    let mut transcript = String::new();
    for line in std::io::BufReader::new(from_runner).lines() {
        let line = line.map_err(|e| format!("reading client-go's runner: {e}"))?;
        transcript.push_str(&line);
        transcript.push('\n');
        if let Some(result) = CellResult::parse_line(&line) {
            pending = Some(result);
        } else if line.starts_with("SAMPLE-READY ") {
            before = server.stats();
            writeln!(to_runner).map_err(|e| format!("client-go's runner: {e}"))?;
        } else if line.starts_with("SAMPLE-DONE ") {
            let rpcs = rpcs_per_txn(before.take(), server.stats())?;
            let result = pending.take().ok_or("client-go sampled before its cell's result")?;
            results.push((result, rpcs));
            writeln!(to_runner).map_err(|e| format!("client-go's runner: {e}"))?;
        } else if line.starts_with("SAMPLE-FAILED ") {
            let _ = child.kill();
            return Err(format!("client-go: a sampled transaction failed: {line}"));
        }
    }
    drop(to_runner);
    let status = child.wait().map_err(|e| e.to_string())?;
    let log = log.join().unwrap_or_default();
    if results.len() != cells.len() * concs.len() {
        return Err(format!(
            "client-go gave {} results for {} cells (exit {}): {}{}",
            results.len(),
            cells.len() * concs.len(),
            status,
            transcript,
            log
        ));
    }
    Ok(results)
}

async fn bench(args: Args, pinned: bool) -> Result<(), String> {
    let mut server = Server::start("sim", &["--txn", "--stores", "3", "--regions", "4"], pinned)?;
    let config = Config::default().with_pd_endpoints([server.pd.clone()]);
    let client = TransactionClient::connect_with_config(config)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    println!(
        "# txn-bench: {} s per cell, median of {}{}",
        args.secs,
        args.reps,
        if pinned { "; clients on core 0, tikv-sim on core 1" } else { "; unpinned" }
    );
    // (cell, conc) -> the results of every repetition.
    type Key = (String, usize);
    let mut ours: BTreeMap<Key, Vec<(CellResult, f64)>> = BTreeMap::new();
    let mut theirs: BTreeMap<Key, Vec<(CellResult, f64)>> = BTreeMap::new();
    for _ in 0..args.reps {
        for cell in &args.cells {
            let (workload, mode) = cell.split_once('-').unwrap_or_default();
            let workload: &'static str = match workload {
                "rw" => "rw",
                "w4" => "w4",
                _ => "ro16",
            };
            let opts = options(mode)?;
            for &conc in &args.concs {
                let op: Op = {
                    let (client, opts) = (client.clone(), opts.clone());
                    Arc::new(move |t, i| {
                        run_txn(client.clone(), workload, opts.clone(), t, i).boxed()
                    })
                };
                let result = run(op.clone(), cell, conc, args.secs).await;
                // The store requests one transaction costs (stream entries
                // and unary calls), over transactions run one at a time on
                // keys of a task the cell does not use, once the cell's
                // last transactions have finished in the background: else
                // their requests would be counted too.
                tokio::time::sleep(SETTLE).await;
                let before = server.stats();
                for i in 0..RPC_SAMPLE {
                    if !op(999_999, i).await {
                        return Err(format!("{cell}: a sampled transaction failed"));
                    }
                }
                tokio::time::sleep(SETTLE).await;
                let rpcs = rpcs_per_txn(before, server.stats())?;
                ours.entry((cell.clone(), conc)).or_default().push((result, rpcs));
            }
        }
        if let Some(bin) = &args.client_go {
            for (r, rpcs) in client_go(bin, &mut server, &args.cells, &args.concs, args.secs)? {
                theirs.entry((r.op.clone(), r.conc)).or_default().push((r, rpcs));
            }
        }
    }
    println!(
        "| cell | conc | client | txn/s | p50 ms | p99 ms | client CPU µs/txn | client peak RSS MiB | store RPCs/txn | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let med = |v: &[CellResult], f: &dyn Fn(&CellResult) -> f64| median(v.iter().map(f).collect());
    let mut ratios = Vec::new();
    for ((cell, conc), runs) in &ours {
        let results: Vec<CellResult> = runs.iter().map(|(r, _)| r.clone()).collect();
        let rpcs = median(runs.iter().map(|(_, n)| *n).collect());
        let errors: u64 = results.iter().map(|r| r.errors).sum();
        let row = |who: &str, v: &[CellResult], rpcs: String, errors: u64| {
            println!(
                "| {cell} | {conc} | {who} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | {rpcs} | {errors} |",
                med(v, &CellResult::ops_per_sec),
                med(v, &|r| f64::from(r.p50_us) / 1e3),
                med(v, &|r| f64::from(r.p99_us) / 1e3),
                med(v, &CellResult::cpu_us_per_op),
                med(v, &|r| r.peak_rss_kib as f64 / 1024.0),
            );
        };
        row("ours", &results, format!("{rpcs:.1}"), errors);
        if let Some(go_runs) = theirs.get(&(cell.clone(), *conc)) {
            let go: Vec<CellResult> = go_runs.iter().map(|(r, _)| r.clone()).collect();
            let go_rpcs = median(go_runs.iter().map(|(_, n)| *n).collect());
            row("client-go", &go, format!("{go_rpcs:.1}"), go.iter().map(|r| r.errors).sum());
            let ratio = |f: &dyn Fn(&CellResult) -> f64| med(&results, f) / med(&go, f).max(1e-9);
            ratios.push(format!(
                "| {cell} | {conc} | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
                ratio(&CellResult::ops_per_sec),
                ratio(&|r| f64::from(r.p99_us)),
                ratio(&CellResult::cpu_us_per_op),
                ratio(&|r| r.peak_rss_kib as f64),
                rpcs / go_rpcs.max(1e-9),
            ));
        }
    }
    if !ratios.is_empty() {
        println!();
        println!(
            "| cell | conc | ours ÷ client-go txn/s | p99 | client CPU per txn | client peak RSS | store RPCs per txn |"
        );
        println!("|---|---|---|---|---|---|---|");
        for r in ratios {
            println!("{r}");
        }
    }
    Ok(())
}
