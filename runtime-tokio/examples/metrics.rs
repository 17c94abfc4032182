//! Metrics and tracing: the client's series in Prometheus format, and its
//! spans and events on stderr.
//!
//! ```text
//! cargo run -p tikv-tokio --example metrics                    # embedded simulated cluster
//! cargo run -p tikv-tokio --example metrics -- --pd HOST:PORT  # a real cluster
//! RUST_LOG=tikv_driver=debug cargo run -p tikv-tokio --example metrics  # every operation and RPC
//! ```
//!
//! The client records through the `metrics` facade and logs through
//! `tracing`; the application picks the backends. Here: the Prometheus
//! recorder of `metrics-exporter-prometheus` (a real service would serve
//! `handle.render()` on its `/metrics` endpoint, or let the crate's HTTP
//! listener do it) and `tracing-subscriber`'s fmt layer, filtered by
//! `RUST_LOG` (`target=level` pairs; default `tikv_driver=warn`: failures
//! only). Without `--pd` a simulated cluster runs in this process and a
//! few region errors are injected, so the region-error and backoff series
//! have something to show.

use std::process::ExitCode;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use tikv_sim::server::{ServerOptions, SimServer};
use tikv_sim::{Cluster, ClusterConfig, Filter};
use tikv_tokio::proto::errorpb;
use tikv_tokio::{Config, RawClient, TransactionClient};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("metrics failed: {e}");
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
                    "unknown argument {other:?}; usage: metrics [--pd HOST:PORT]..."
                )
                .into());
            }
        }
    }

    // Install both before connecting: a series registered before its
    // recorder is installed is recorded nowhere.
    let filter: Targets =
        std::env::var("RUST_LOG").unwrap_or_else(|_| "tikv_driver=warn".into()).parse()?;
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter))
        .init();
    let handle = PrometheusBuilder::new()
        // Histograms as Prometheus histograms (the default is summaries).
        .set_buckets(&[
            0.000_1, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
        ])?
        .install_recorder()?;
    tikv_tokio::describe_metrics();

    // Keep the embedded server alive for the whole run.
    let server = if pd.is_empty() {
        let cluster = Cluster::new(ClusterConfig {
            v1_txn: true,
            split_keys: vec![b"g".to_vec(), b"n".to_vec()],
            ..ClusterConfig::default()
        });
        let server = SimServer::start(cluster, ServerOptions::default()).await?;
        pd = server.pd_addrs();
        println!("started a simulated cluster: PD at {}", pd.join(", "));
        Some(server)
    } else {
        None
    };
    let config = Config::default().with_pd_endpoints(pd.clone());

    if let Some(server) = &server {
        // A replica answering a stale command twice: the client backs off
        // and retries.
        let stale = errorpb::Error {
            message: "stale command".into(),
            stale_command: Some(Default::default()),
            ..Default::default()
        };
        server.cluster().inject_region_error(Filter::any().command("kv_get"), stale, 2);
    }

    let txn = TransactionClient::connect_with_config(config.clone()).await?;
    for i in 0..20u32 {
        let mut t = txn.begin().await?;
        t.put(format!("account-{:02}", i % 7), i.to_string())?;
        t.put(format!("zz-audit-{i:02}"), "transfer")?;
        t.commit().await?;
    }
    let snapshot = txn.snapshot(txn.current_timestamp().await?);
    let first = snapshot.get("account-00").await?;
    println!("account-00 = {:?}", first.as_deref().map(String::from_utf8_lossy));
    let scanned = snapshot.scan("account-".."account-~", 100).await?;
    println!("{} accounts", scanned.len());
    println!("unfinished background work: {}", txn.close(Duration::from_secs(5)).await);

    let raw = RawClient::connect_with_config(config).await?;
    raw.put("metrics-example", "raw").await?;
    println!("raw get = {:?}", raw.get("metrics-example").await?);
    raw.delete("metrics-example").await?;

    let exposition = handle.render();
    println!("--- Prometheus exposition ({} lines)", exposition.lines().count());
    print!("{exposition}");
    let series = exposition.lines().filter(|l| l.starts_with("tikv_client_")).count();
    if series == 0 {
        return Err("no tikv_client_ series recorded".into());
    }
    println!("done: {series} tikv_client_ samples");
    Ok(())
}
