//! Destroying a key range on every store at once, bypassing Raft
//! (client-go's `examples/txnkv/unsafedestoryrange`): only for ranges no one
//! reads or writes any more, such as a dropped table's.
//!
//! `cargo run -p tikv-tokio --example unsafe_destroy_range [-- --pd HOST:PORT]`

mod common;

use tikv_tokio::TransactionClient;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (pd, _server) = common::cluster().await?;
    let client = TransactionClient::connect(pd).await?;

    let mut txn = client.begin().await?;
    for key in ["table1_a", "table1_b", "table2_a"] {
        txn.put(key, "v")?;
    }
    txn.commit().await?;

    client.unsafe_destroy_range("table1_".."table1`").await?;
    let snapshot = client.snapshot(client.current_timestamp().await?);
    println!("keys left: {:?}", snapshot.scan_keys(.., 100).await?);
    Ok(())
}
