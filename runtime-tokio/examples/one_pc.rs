//! One-phase commit (client-go's `examples/txnkv/1pc_txn`): a transaction
//! whose keys all live in one region commits in its prewrite.
//!
//! `cargo run -p tikv-tokio --example one_pc [-- --pd HOST:PORT]`

mod common;

use tikv_tokio::{TransactionClient, TransactionOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (pd, _server) = common::cluster().await?;
    let client = TransactionClient::connect(pd).await?;
    // 1PC needs the region in the client's cache: a first read loads it.
    let warmup = client.begin().await?;
    let _ = warmup.get("a").await?;
    let mut txn = client.begin_with_options(TransactionOptions::default().with_one_pc()).await?;
    txn.put("a", "one")?;
    txn.put("b", "phase")?;
    let ts = txn.commit().await?;
    println!("committed at {ts}");
    let snapshot = client.snapshot(client.current_timestamp().await?);
    println!("read back: {:?}", snapshot.batch_get(["a", "b"]).await?);
    Ok(())
}
