//! Pipelined DML (client-go's pipelined transactions, TiDB's bulk DML): one
//! transaction writes a million keys, flushed to TiKV as locks while it
//! runs, so the client's memory stays near the flush threshold whatever
//! the transaction's size.
//!
//! ```text
//! cargo run --release -p tikv-tokio --example pipelined_dml                       # embedded simulated cluster
//! cargo run --release -p tikv-tokio --example pipelined_dml -- --keys 20000       # fewer keys
//! cargo run --release -p tikv-tokio --example pipelined_dml -- --pd HOST:PORT     # a real cluster
//! ```

use std::time::Instant;

use tikv_sim::server::{ServerOptions, SimServer};
use tikv_sim::{Cluster, ClusterConfig};
use tikv_tokio::{PipelinedOptions, TransactionClient, TransactionOptions};

/// Every key starts with it: `pdml-<letter><index>`, spread over the
/// letters so the writes cross regions.
const PREFIX: &str = "pdml-";

fn key(i: u64) -> String {
    let letter = (b'a' + (i % 26) as u8) as char;
    format!("{PREFIX}{letter}{i:010}")
}

fn value(i: u64) -> String {
    format!("value-{i:010}-................")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut pd: Vec<String> = Vec::new();
    let mut keys: u64 = 1_000_000;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--pd" => pd.push(args.next().ok_or("--pd needs HOST:PORT")?),
            "--keys" => keys = args.next().ok_or("--keys needs a number")?.parse()?,
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: pipelined_dml [--pd HOST:PORT]... [--keys N]"
                )
                .into());
            }
        }
    }
    if keys == 0 {
        return Err("--keys must be at least 1".into());
    }
    // Keep the embedded server alive for the whole run.
    let _server = if pd.is_empty() {
        let splits = ["g", "n", "t"].map(|s| format!("{PREFIX}{s}").into_bytes());
        let cluster = Cluster::new(ClusterConfig {
            v1_txn: true,
            split_keys: splits.to_vec(),
            ..Default::default()
        });
        let server = SimServer::start(cluster, ServerOptions::default()).await?;
        pd = server.pd_addrs();
        println!("started a simulated cluster: PD at {}", pd.join(", "));
        Some(server)
    } else {
        None
    };
    let client = TransactionClient::connect(pd).await?;

    let began = Instant::now();
    let mut txn =
        client.begin_pipelined(TransactionOptions::default(), PipelinedOptions::default()).await?;
    let mut peak_memory = 0;
    let report_every = (keys / 10).max(1);
    for i in 0..keys {
        txn.put(key(i), value(i)).await?;
        peak_memory = peak_memory.max(txn.progress().memory_bytes);
        if (i + 1) % report_every == 0 {
            let p = txn.progress();
            println!(
                "{:>10} keys written, {:>10} flushed ({:.1} MiB) in {} generations, {:.1} MiB in memory, {:.1} s",
                i + 1,
                p.flushed_keys,
                p.flushed_bytes as f64 / (1 << 20) as f64,
                p.generations,
                p.memory_bytes as f64 / (1 << 20) as f64,
                began.elapsed().as_secs_f64()
            );
        }
    }
    let written = began.elapsed();
    let commit_ts = txn.commit().await?;
    let total = began.elapsed();

    // A few keys read back at a fresh snapshot.
    let snapshot = client.snapshot(client.current_timestamp().await?);
    let sample: Vec<u64> = [0, keys / 2, keys - 1].into_iter().collect();
    for &i in &sample {
        let got = snapshot.get(key(i)).await?;
        if got.as_deref() != Some(value(i).as_bytes()) {
            return Err(format!("key {} reads {got:?} after the commit", key(i)).into());
        }
    }
    println!(
        "committed {keys} keys in one pipelined transaction at {commit_ts}: {:.2} s ({:.2} s writing, {:.2} s committing), {:.0} keys/s, peak buffer memory {:.1} MiB",
        total.as_secs_f64(),
        written.as_secs_f64(),
        (total - written).as_secs_f64(),
        keys as f64 / total.as_secs_f64(),
        peak_memory as f64 / (1 << 20) as f64
    );
    Ok(())
}
