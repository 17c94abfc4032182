//! RawKV through the async-std client, on smol's executor.
//!
//! ```text
//! cargo run -p tikv-async-std --example smol                   # embedded simulated cluster
//! cargo run -p tikv-async-std --example smol -- --pd HOST:PORT  # a real cluster
//! ```
//!
//! The client is `tikv_async_std::RawClient`: it is built on async-io, the
//! reactor smol also uses, so a smol application awaits it directly. Without
//! `--pd` the example serves a simulated cluster (one PD, three stores) in
//! this process; that server is tokio-based and runs on a thread of its own
//! with a private runtime, so the client side stays tokio-free.

use std::process::ExitCode;
use std::time::Duration;

use tikv_async_std::{Config, RawClient};
use tikv_sim::server::{ServerOptions, SimServer};
use tikv_sim::{Cluster, ClusterConfig};

fn main() -> ExitCode {
    match smol::block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smol example failed: {e}");
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
                return Err(
                    format!("unknown argument {other:?}; usage: smol [--pd HOST:PORT]...").into()
                );
            }
        }
    }
    // Keep the embedded server alive for the whole run.
    let _server = if pd.is_empty() {
        let (server, addrs) = serve_simulated_cluster()?;
        println!("started a simulated cluster: PD at {}", addrs.join(", "));
        pd = addrs;
        Some(server)
    } else {
        None
    };

    let config =
        Config::default().with_pd_endpoints(pd).with_read_timeout_short(Duration::from_secs(5));
    let client = RawClient::connect_with_config(config).await?;
    println!("connected to cluster {}", client.cluster_id());

    client.batch_put([("apple", "red"), ("kiwi", "green"), ("yuzu", "yellow")]).await?;
    println!("get apple  = {:?}", client.get("apple").await?);
    println!("scan a..z  = {:?}", client.scan("a".."z", 10).await?);
    client.delete_range("a".."z").await?;
    println!("after delete_range = {:?}", client.scan_keys(.., 10).await?);
    Ok(())
}

/// Serves a simulated cluster on a "sim-server" thread with its own tokio
/// runtime; dropping the returned sender stops it (the example just exits).
fn serve_simulated_cluster()
-> Result<(futures::channel::oneshot::Sender<()>, Vec<String>), Box<dyn std::error::Error>> {
    let (stop, stopped) = futures::channel::oneshot::channel::<()>();
    let (ready, addrs) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("sim-server".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return drop(ready.send(Err(e.to_string()))),
        };
        rt.block_on(async move {
            let cluster = Cluster::new(ClusterConfig {
                split_keys: vec![b"g".to_vec(), b"n".to_vec(), b"t".to_vec()],
                ..ClusterConfig::default()
            });
            match SimServer::start(cluster, ServerOptions::default()).await {
                Ok(server) => {
                    let _ = ready.send(Ok(server.pd_addrs()));
                    // Serve until the sender is dropped; the server's tasks
                    // run while this thread waits on the runtime.
                    let _ = stopped.await;
                    server.shutdown().await;
                }
                Err(e) => drop(ready.send(Err(e.to_string()))),
            }
        });
    })?;
    let addrs = addrs.recv()??;
    Ok((stop, addrs))
}
