//! `txn-commit`: benchmark B7 of issue #7, a 10,000-key transaction over 100
//! regions on 3 stores, committed through our tokio client against
//! `tikv-sim --txn` in its own process (pinned to core 1, this process to
//! core 0, as `tikv-bench` does).
//!
//! ```text
//! cargo build --release -p tikv-sim -p tikv-bench
//! target/release/txn-commit [--keys 10000] [--reps 3]
//! ```
//!
//! Keys are 24 bytes, values 128 (anchors §3.2 B7), spread evenly over the
//! regions by first byte. A cold run (streams and regions not yet loaded)
//! comes first and is left out of the medians. Each repetition writes fresh
//! keys, commits, then
//! waits for the secondaries (committed in the background) to reach the
//! server. Reported per repetition and as medians: the commit's wall time
//! (until `commit` returns: prewrites plus the primary's commit), client
//! CPU (buffering and commit), the `BatchCommands` entries the stores
//! received (every prewrite and commit RPC rides the stream), the count
//! client-go's 16 KiB batch rule gives for the same keys (prewrite: key +
//! value bytes per region batch; commit: the primary alone, then key bytes
//! per region batch), and peak resident memory. The RPC count itself is
//! asserted exactly by the core test
//! `txn::commit::tests::a_large_commit_sends_client_go_batch_counts`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use tikv_bench::server::{Server, run_on_client_core};
use tikv_bench::workload::{cpu_time, peak_rss_kib};
use tikv_tokio::{Config, TransactionClient};

const REGIONS: usize = 100;
const KEY_LEN: usize = 24;
const VALUE_LEN: usize = 128;
/// client-go's `txnCommitBatchSize`.
const BATCH_BYTES: usize = 16 * 1024;

/// Key `i` of repetition `rep`: a first byte spreading keys over the
/// regions (split by first byte), then the repetition and the index.
fn key(rep: usize, i: usize, keys: usize) -> Vec<u8> {
    let first = (i * 256 / keys) as u8;
    let mut k = vec![first];
    k.extend_from_slice(format!("{rep:03}{i:020}").as_bytes());
    k.truncate(KEY_LEN);
    k
}

/// The region (by `tikv-sim --regions`' split rule) of a key.
fn region_of(key: &[u8]) -> usize {
    // Splits at i * 256 / REGIONS for i in 1..REGIONS.
    (1..REGIONS).take_while(|i| (i * 256 / REGIONS) as u8 <= key[0]).count()
}

/// client-go's batch count for `n` items of `size` bytes each.
fn batches(n: usize, size: usize) -> usize {
    let per_batch = BATCH_BYTES.div_ceil(size);
    n.div_ceil(per_batch)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
}

fn main() -> ExitCode {
    let mut keys = 10_000usize;
    let mut reps = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|v| v.parse::<usize>().ok());
        match (flag.as_str(), value) {
            ("--keys", Some(v)) if v > 0 => keys = v,
            ("--reps", Some(v)) if v > 0 => reps = v,
            _ => {
                eprintln!("usage: txn-commit [--keys N] [--reps N]");
                return ExitCode::from(2);
            }
        }
    }
    run_on_client_core(|pinned| run(keys, reps, pinned))
}

async fn run(keys: usize, reps: usize, pinned: bool) -> Result<(), String> {
    let regions = REGIONS.to_string();
    let mut server =
        Server::start("sim", &["--txn", "--stores", "3", "--regions", &regions], pinned)?;
    let config = Config::default().with_pd_endpoints([server.pd.clone()]);
    let client = TransactionClient::connect_with_config(config)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // client-go's count for these keys.
    let mut per_region = vec![0usize; REGIONS];
    for i in 0..keys {
        per_region[region_of(&key(0, i, keys))] += 1;
    }
    let expected: usize = per_region
        .iter()
        .map(|&n| batches(n, KEY_LEN + VALUE_LEN) + batches(n, KEY_LEN))
        .sum::<usize>()
        + 1;
    println!(
        "# txn-commit: {keys} keys ({KEY_LEN} B, values {VALUE_LEN} B) over {} regions with keys, 3 stores{}",
        per_region.iter().filter(|n| **n > 0).count(),
        if pinned { ", client on core 0, tikv-sim on core 1" } else { ", unpinned" }
    );
    println!("| rep | commit ms | client CPU ms | RPCs received | client-go rule | peak RSS MiB |");
    println!("|---|---|---|---|---|---|");
    let (mut walls, mut cpus, mut rpcs) = (Vec::new(), Vec::new(), Vec::new());
    // Repetition 0 is cold (streams opened, with their probe entries;
    // regions loaded from PD): shown, left out of the medians.
    for rep in 0..=reps {
        let before = server.stats().ok_or("tikv-sim does not report stats")?;
        let cpu0 = cpu_time();
        let mut txn = client.begin().await.map_err(|e| format!("begin: {e}"))?;
        for i in 0..keys {
            txn.put(key(rep + 1, i, keys), vec![b'v'; VALUE_LEN])
                .map_err(|e| format!("put: {e}"))?;
        }
        let t0 = Instant::now();
        txn.commit().await.map_err(|e| format!("commit: {e}"))?;
        let wall = t0.elapsed();
        let cpu = cpu_time().saturating_sub(cpu0);
        // The secondaries are committed in the background: wait until the
        // count stops moving.
        let mut after = server.stats().ok_or("no stats")?;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = server.stats().ok_or("no stats")?;
            if now == after {
                break;
            }
            after = now;
        }
        let received = before.delta(after).entries;
        println!(
            "| {} | {:.1} | {:.1} | {received} | {expected} | {:.1} |",
            if rep == 0 { "cold".to_owned() } else { rep.to_string() },
            wall.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e3,
            peak_rss_kib() as f64 / 1024.0
        );
        if rep == 0 {
            continue;
        }
        walls.push(wall.as_secs_f64() * 1e3);
        cpus.push(cpu.as_secs_f64() * 1e3);
        rpcs.push(received as f64);
    }
    println!(
        "| median | {:.1} | {:.1} | {:.0} | {expected} | {:.1} |",
        median(walls),
        median(cpus),
        median(rpcs),
        peak_rss_kib() as f64 / 1024.0
    );
    Ok(())
}
