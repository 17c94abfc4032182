//! Async commit (client-go's `examples/txnkv/async_commit`): the transaction
//! is committed once every prewrite succeeded; the commit phase runs in the
//! background.
//!
//! `cargo run -p tikv-tokio --example async_commit [-- --pd HOST:PORT]`

mod common;

use tikv_tokio::{TransactionClient, TransactionOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (pd, _server) = common::cluster().await?;
    let client = TransactionClient::connect(pd).await?;
    let mut txn =
        client.begin_with_options(TransactionOptions::default().with_async_commit()).await?;
    // Keys in different regions: the primary's lock lists the secondaries,
    // so a reader can recover the outcome if this client died now.
    txn.put("apple", "1")?;
    txn.put("kiwi", "2")?;
    txn.put("yuzu", "3")?;
    let ts = txn.commit().await?;
    println!("async commit at {ts}");
    let snapshot = client.snapshot(client.current_timestamp().await?);
    println!("read back: {:?}", snapshot.batch_get(["apple", "kiwi", "yuzu"]).await?);
    Ok(())
}
