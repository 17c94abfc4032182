//! Deleting a key range (client-go's `examples/txnkv/delete_range`): every
//! version of every key in the range goes, region by region, outside any
//! transaction; the notify-only variant deletes nothing.
//!
//! `cargo run -p tikv-tokio --example delete_range [-- --pd HOST:PORT]`

mod common;

use tikv_tokio::TransactionClient;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (pd, _server) = common::cluster().await?;
    let client = TransactionClient::connect(pd).await?;

    let mut txn = client.begin().await?;
    for key in ["a", "c", "h", "m", "p", "z"] {
        txn.put(key, "v")?;
    }
    txn.commit().await?;

    let stat = client.delete_range_notify_only("b".."q").await?;
    println!("notified {} regions; nothing deleted", stat.completed_regions);
    let stat = client.delete_range("b".."q").await?;
    println!("deleted [b, q) in {} regions", stat.completed_regions);

    let snapshot = client.snapshot(client.current_timestamp().await?);
    let keys: Vec<_> = snapshot.scan_keys(.., 100).await?;
    println!("keys left: {keys:?}");
    Ok(())
}
