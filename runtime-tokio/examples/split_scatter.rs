//! Splitting regions at chosen keys and scattering the new ones (client-go
//! `KVStore.SplitRegions` with scatter, then `WaitScatterRegionFinish`).
//!
//! `cargo run -p tikv-tokio --example split_scatter [-- --pd HOST:PORT]`

mod common;

use tikv_tokio::TransactionClient;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (pd, _server) = common::cluster().await?;
    let client = TransactionClient::connect(pd).await?;

    let outcome = client.split_regions(["user100", "user200", "user300"], true).await?;
    println!("new regions: {:?}", outcome.region_ids);
    if let Some(e) = &outcome.scatter_error {
        println!("a scatter failed (the splits stand): {e}");
    }
    for id in &outcome.region_ids {
        client.wait_scatter_finish(*id).await?;
    }
    println!("every scatter finished");
    Ok(())
}
