//! `pipelined-bench`: one large transaction (1M keys by default) committed
//! through pipelined DML and through the normal committer, ours and
//! client-go's, against one `tikv-sim --txn` process, side by side (issue
//! #18's benchmark).
//!
//! ```text
//! cargo build --release -p tikv-sim -p tikv-bench
//! (cd tests/peer-client-go && go build -o ../../target/release/peer-client-go .)
//! target/release/pipelined-bench [--keys 1000000] [--reps 1] [--client-go target/release/peer-client-go]
//! ```
//!
//! Every transaction runs in a process of its own (this binary with
//! `--child MODE`, or client-go's runner in its `pipelinedbench` mode), so
//! that its peak resident memory is the transaction's alone. The clients
//! share core 0 (this process pins itself there and the children inherit
//! it); `tikv-sim` runs on core 1. Keys are 24 bytes spread evenly over 16
//! regions by their first byte, written in key order; values are 64 bytes.
//! Per run: the time to write the keys into the transaction, the time its
//! commit takes to return, the time until the server stops receiving the
//! transaction's locks are all gone from the server (secondary commits; the
//! pipelined transaction's range resolution) measured from the commit's
//! return, the
//! client's CPU over all of it, the client's peak RSS, and the TiKV
//! requests the server received for it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tikv_bench::server::{Server, run_on_client_core};
use tikv_bench::workload::{cpu_time, peak_rss_kib};
use tikv_tokio::interceptor::interceptor_fn;
use tikv_tokio::{Config, PipelinedOptions, TransactionClient, TransactionOptions};

const REGIONS: &str = "16";
/// How long a transaction's locks may stay after its commit returned.
const SETTLE_LIMIT: Duration = Duration::from_secs(300);
const KEY_LEN: usize = 24;
const VALUE_LEN: usize = 64;
/// The `sent` entry counting requests that got no answer (a broken
/// stream, a timeout): each is retried, so it explains extra requests.
const TRANSPORT_ERRORS: &str = "transport_errors";
/// The runs in table order: (client, committer).
const MODES: [(&str, &str); 4] = [
    ("ours", "pipelined"),
    ("client-go", "pipelined"),
    ("ours", "normal"),
    ("client-go", "normal"),
];

/// Key `i` of `n` in run `run`: the same bytes client-go's runner writes
/// (`pipelinedBenchKey`).
fn key(run: usize, i: usize, n: usize) -> Vec<u8> {
    let mut k = vec![(i * 256 / n) as u8];
    k.extend_from_slice(format!("{run:03}{i:020}").as_bytes());
    k.truncate(KEY_LEN);
    k
}

fn field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace().find_map(|f| f.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

struct Args {
    keys: usize,
    reps: usize,
    client_go: Option<String>,
    child: Option<(String, String, usize)>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args { keys: 1_000_000, reps: 1, client_go: None, child: None };
    let (mut mode, mut pd, mut run) = (None, None, 0);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|_| format!("{flag}: not a number"));
        match flag.as_str() {
            "--keys" => a.keys = number()?.max(1),
            "--reps" => a.reps = number()?.max(1),
            "--run" => run = number()?,
            "--client-go" => a.client_go = Some(value),
            "--child" => mode = Some(value),
            "--pd" => pd = Some(value),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if let Some(mode) = mode {
        a.child = Some((mode, pd.ok_or("--child needs --pd")?, run));
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "{e}\nusage: pipelined-bench [--keys N] [--reps N] [--client-go PATH_TO_peer-client-go]"
            );
            return ExitCode::from(2);
        }
    };
    if let Some((mode, pd, run)) = args.child {
        return child(&mode, &pd, run, args.keys);
    }
    run_on_client_core(|pinned| bench(args, pinned))
}

/// One transaction in this process, reported as client-go's runner does.
fn child(mode: &str, pd: &str, run: usize, keys: usize) -> ExitCode {
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("cannot start the tokio runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
    match rt.block_on(one_transaction(mode, pd, run, keys)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{mode}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn one_transaction(mode: &str, pd: &str, run: usize, keys: usize) -> Result<(), String> {
    let config = Config::default().with_pd_endpoints([pd.to_owned()]);
    // Counts the transaction's TiKV requests by name, and those without an
    // answer, for the PEAK line.
    let sent: Arc<Mutex<BTreeMap<&'static str, u64>>> = Arc::default();
    let counter = sent.clone();
    let client = TransactionClient::connect_with_config(config)
        .await
        .map_err(|e| format!("connect: {e}"))?
        .with_interceptor(interceptor_fn("count", move |rpc, next| {
            let mut sent = counter.lock().unwrap_or_else(PoisonError::into_inner);
            *sent.entry(rpc.request.name()).or_default() += 1;
            drop(sent);
            let failed = counter.clone();
            let answer = next.run(rpc);
            Box::pin(async move {
                let answer = answer.await;
                if answer.is_err() {
                    let mut sent = failed.lock().unwrap_or_else(PoisonError::into_inner);
                    *sent.entry(TRANSPORT_ERRORS).or_default() += 1;
                }
                answer
            })
        }));
    let value = vec![b'v'; VALUE_LEN];
    let (cpu0, t0) = (cpu_time(), Instant::now());
    let written;
    match mode {
        "pipelined" => {
            let mut txn = client
                .begin_pipelined(TransactionOptions::default(), PipelinedOptions::default())
                .await
                .map_err(|e| format!("begin: {e}"))?;
            for i in 0..keys {
                txn.put(key(run, i, keys), value.clone()).await.map_err(|e| format!("put: {e}"))?;
            }
            written = t0.elapsed();
            // How the writes were cut into generations (the commit flushes
            // what is still buffered as one more).
            let p = txn.progress();
            eprintln!(
                "ours pipelined: {} generations handed off while writing ({} keys), {} keys left for the commit",
                p.generations, p.flushed_keys, p.buffered_keys
            );
            txn.commit().await.map_err(|e| format!("commit: {e}"))?;
        }
        "normal" => {
            let mut txn = client.begin().await.map_err(|e| format!("begin: {e}"))?;
            for i in 0..keys {
                txn.put(key(run, i, keys), value.clone()).map_err(|e| format!("put: {e}"))?;
            }
            written = t0.elapsed();
            txn.commit().await.map_err(|e| format!("commit: {e}"))?;
        }
        other => return Err(format!("unknown mode {other}")),
    }
    let total = t0.elapsed();
    println!(
        "RESULT mode={mode} keys={keys} write_us={} commit_us={} cpu_us={}",
        written.as_micros(),
        (total - written).as_micros(),
        cpu_time().saturating_sub(cpu0).as_micros()
    );
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    // The background work goes on until the bench says the server is quiet.
    let mut line = String::new();
    tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let by_name = {
        let sent = sent.lock().unwrap_or_else(PoisonError::into_inner);
        sent.iter().map(|(name, n)| format!("{name}:{n}")).collect::<Vec<_>>().join(",")
    };
    println!(
        "PEAK rss_kib={} cpu_us={} sent={by_name}",
        peak_rss_kib(),
        cpu_time().saturating_sub(cpu0).as_micros()
    );
    Ok(())
}

/// One run's numbers, in milliseconds and MiB.
#[derive(Clone, Default)]
struct Run {
    write_ms: f64,
    commit_ms: f64,
    settle_ms: f64,
    cpu_ms: f64,
    rss_mib: f64,
    /// TiKV requests the server received for the transaction (stream
    /// entries and unary calls, from begin until its locks were gone).
    rpcs: f64,
    /// The requests the client sent, by kind in client-go's names
    /// (`Flush`, `ResolveLock`, ...), background work included.
    sent: BTreeMap<String, u64>,
}

/// A request kind in client-go's `tikvrpc.CmdType` spelling: ours are
/// tonic method names (`kv_txn_heart_beat` is `TxnHeartBeat`).
fn client_go_kind(method: &str) -> String {
    let method = method.strip_prefix("kv_").unwrap_or(method);
    method
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map_or(String::new(), |c| c.to_ascii_uppercase().to_string() + chars.as_str())
        })
        .collect()
}

/// `Kind:N,...` from a child's `sent=` field.
fn parse_sent(field: &str) -> BTreeMap<String, u64> {
    field
        .split(',')
        .filter_map(|part| {
            let (kind, n) = part.split_once(':')?;
            Some((client_go_kind(kind), n.parse().ok()?))
        })
        .collect()
}

async fn bench(args: Args, pinned: bool) -> Result<(), String> {
    let mut server =
        Server::start("sim", &["--txn", "--stores", "3", "--regions", REGIONS], pinned)?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    println!(
        "# pipelined-bench: one transaction of {} keys ({KEY_LEN} B, values {VALUE_LEN} B) over {REGIONS} regions, 3 stores{}; medians of {}",
        args.keys,
        if pinned { ", clients on core 0, tikv-sim on core 1" } else { ", unpinned" },
        args.reps
    );
    println!(
        "| client | committer | write s | commit s | locks gone s | client CPU s | peak RSS MiB | TiKV RPCs |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut medians = Vec::new();
    let mut run_no = 0;
    for (who, committer) in MODES {
        let mut cmd = match (who, &args.client_go) {
            ("ours", _) => {
                let mut c = Command::new(&me);
                c.args(["--child", committer]);
                c
            }
            (_, Some(go)) => {
                let mut c = Command::new(go);
                c.args(["pipelinedbench", "--mode", committer]);
                c.arg("--value-len").arg(VALUE_LEN.to_string());
                c
            }
            (_, None) => continue,
        };
        cmd.arg("--pd").arg(&server.pd).arg("--keys").arg(args.keys.to_string());
        let mut runs = Vec::new();
        for _ in 0..args.reps {
            run_no += 1;
            let mut c = Command::new(cmd.get_program());
            c.args(cmd.get_args()).arg("--run").arg(run_no.to_string());
            let r = measure(&mut server, c).map_err(|e| format!("{who} {committer}: {e}"))?;
            runs.push(r);
        }
        let m = median_run(&runs);
        println!(
            "| {who} | {committer} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} |",
            m.write_ms / 1e3,
            m.commit_ms / 1e3,
            m.settle_ms / 1e3,
            m.cpu_ms / 1e3,
            m.rss_mib,
            m.rpcs
        );
        medians.push((who, committer, m));
    }
    println!();
    println!(
        "| committer | ours / client-go: write + commit time | client CPU | peak RSS | TiKV RPCs |"
    );
    println!("|---|---|---|---|---|");
    for committer in ["pipelined", "normal"] {
        let get = |who: &str| {
            medians.iter().find(|(w, c, _)| *w == who && *c == committer).map(|(_, _, r)| r.clone())
        };
        if let (Some(o), Some(g)) = (get("ours"), get("client-go")) {
            println!(
                "| {committer} | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
                (o.write_ms + o.commit_ms) / (g.write_ms + g.commit_ms),
                o.cpu_ms / g.cpu_ms,
                o.rss_mib / g.rss_mib,
                o.rpcs / g.rpcs
            );
        }
    }
    // The requests each client counted itself, by kind.
    let kinds: std::collections::BTreeSet<&String> =
        medians.iter().flat_map(|(_, _, r)| r.sent.keys()).collect();
    println!();
    let columns: Vec<String> = medians.iter().map(|(w, c, _)| format!("{w} {c}")).collect();
    println!("| requests sent, by kind | {} |", columns.join(" | "));
    println!("|---|{}", "---|".repeat(columns.len()));
    for kind in kinds {
        let counts: Vec<String> = medians
            .iter()
            .map(|(_, _, r)| r.sent.get(kind).copied().unwrap_or(0).to_string())
            .collect();
        println!("| {kind} | {} |", counts.join(" | "));
    }
    Ok(())
}

/// Runs one child to its end: its result line, then every lock of its
/// transaction resolved on the server (secondary commits, or the flushed
/// range's resolution, go on in the background after the commit returns),
/// then its peak.
fn measure(server: &mut Server, mut cmd: Command) -> Result<Run, String> {
    let before = server.stats().ok_or("tikv-sim reports no stats")?;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let result = lines.find(|l| l.starts_with("RESULT ")).ok_or("the child failed")?;
    let returned = Instant::now();
    let (settled, after) = loop {
        let now = server.stats().ok_or("tikv-sim reports no stats")?;
        let locks = now.locks.ok_or("tikv-sim reports no lock count")?;
        if locks == 0 {
            break (returned.elapsed(), now);
        }
        if returned.elapsed() > SETTLE_LIMIT {
            return Err(format!("{locks} locks left {SETTLE_LIMIT:?} after the commit"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    writeln!(stdin, "done").map_err(|e| e.to_string())?;
    let peak = lines.find(|l| l.starts_with("PEAK ")).ok_or("the child gave no peak")?;
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("the child exited with {status}"));
    }
    let us = |line: &str, name| field(line, name).map(|v| v as f64 / 1e3).ok_or(name);
    Ok(Run {
        write_ms: us(&result, "write_us")?,
        commit_ms: us(&result, "commit_us")?,
        settle_ms: settled.as_secs_f64() * 1e3,
        cpu_ms: us(&peak, "cpu_us")?,
        rss_mib: field(&peak, "rss_kib").ok_or("rss_kib")? as f64 / 1024.0,
        sent: peak
            .split_whitespace()
            .find_map(|f| f.strip_prefix("sent="))
            .map(parse_sent)
            .unwrap_or_default(),
        rpcs: {
            let d = before.delta(after);
            (d.entries + d.kv_unary.unwrap_or(0)) as f64
        },
    })
}

/// The median of each column on its own.
fn median_run(runs: &[Run]) -> Run {
    let col = |f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
    };
    Run {
        write_ms: col(|r| r.write_ms),
        commit_ms: col(|r| r.commit_ms),
        settle_ms: col(|r| r.settle_ms),
        cpu_ms: col(|r| r.cpu_ms),
        rss_mib: col(|r| r.rss_mib),
        rpcs: col(|r| r.rpcs),
        sent: {
            let kinds: std::collections::BTreeSet<&String> =
                runs.iter().flat_map(|r| r.sent.keys()).collect();
            kinds
                .into_iter()
                .map(|kind| {
                    let mut v: Vec<u64> =
                        runs.iter().map(|r| r.sent.get(kind).copied().unwrap_or(0)).collect();
                    v.sort_unstable();
                    (kind.clone(), v[(v.len() - 1) / 2])
                })
                .collect()
        },
    }
}
