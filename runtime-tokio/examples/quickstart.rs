//! Quickstart: RawKV through the tokio client.
//!
//! ```text
//! cargo run -p tikv-tokio --example quickstart                 # embedded simulated cluster
//! cargo run -p tikv-tokio --example quickstart -- --pd HOST:PORT  # a real cluster
//! ```
//!
//! Without `--pd` it starts a simulated cluster (one PD, three stores, four
//! regions) in this process, served over real gRPC on loopback, so the client
//! below does exactly what it would do against TiKV.

use std::process::ExitCode;
use std::time::Duration;

use tikv_sim::server::{ServerOptions, SimServer};
use tikv_sim::{Cluster, ClusterConfig};
use tikv_tokio::{ColumnFamily, Config, RawClient};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut pd: Vec<String> = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--pd" => pd.push(args.next().ok_or("--pd needs HOST:PORT")?),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: quickstart [--pd HOST:PORT]..."
                )
                .into());
            }
        }
    }

    // Keep the embedded server alive for the whole run.
    let _server = if pd.is_empty() {
        let cluster = Cluster::new(ClusterConfig {
            split_keys: vec![b"g".to_vec(), b"n".to_vec(), b"t".to_vec()],
            ..ClusterConfig::default()
        });
        let server = SimServer::start(cluster, ServerOptions::default()).await?;
        pd = server.pd_addrs();
        println!("started a simulated cluster: PD at {}", pd.join(", "));
        Some(server)
    } else {
        None
    };

    let config = Config::default()
        .with_pd_endpoints(pd.clone())
        .with_read_timeout_short(Duration::from_secs(5));
    let client = RawClient::connect_with_config(config).await?;
    println!("connected to cluster {}", client.cluster_id());

    client.put("apple", "red").await?;
    client
        .batch_put([
            ("banana", "yellow"),
            ("kiwi", "green"),
            ("plum", "purple"),
            ("yuzu", "yellow"),
        ])
        .await?;
    println!("get apple       = {:?}", client.get("apple").await?);
    println!("get missing     = {:?}", client.get("missing").await?);

    let found = client.batch_get(["kiwi", "yuzu", "nope"]).await?;
    println!("batch_get       = {found:?}");

    // The scan crosses every region boundary (g, n, t).
    let all = client.scan("a".."z", 100).await?;
    println!("scan a..z       = {all:?}");
    let back = client.scan_reverse_keys("a".."z", 3).await?;
    println!("reverse 3 keys  = {back:?}");

    let sum = client.checksum("a".."z").await?;
    println!("checksum        = {sum:?}");

    let cas = client.with_atomic_for_cas();
    let swapped = cas.compare_and_swap("apple", Some("red".into()), "green").await?;
    println!("cas apple       = {swapped:?}");

    let lock_cf = client.with_cf(ColumnFamily::Lock);
    lock_cf.put("apple", "in another column family").await?;
    println!("lock cf apple   = {:?}", lock_cf.get("apple").await?);

    client.delete_range("a".."m").await?;
    println!("after delete_range a..m = {:?}", client.scan_keys(.., 100).await?);
    client.batch_delete(["plum", "yuzu"]).await?;
    println!("after batch_delete      = {:?}", client.scan_keys(.., 100).await?);
    lock_cf.delete("apple").await?;
    println!("done");
    Ok(())
}
