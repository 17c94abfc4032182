//! Optimistic transactions with two-phase commit (client-go's
//! `examples/txnkv`): writes, read-your-writes, a conflict, a snapshot read.
//!
//! `cargo run -p tikv-tokio --example transaction [-- --pd HOST:PORT]`

mod common;

use tikv_tokio::{Error, TransactionClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (pd, _server) = common::cluster().await?;
    let client = TransactionClient::connect(pd).await?;

    let mut txn = client.begin().await?;
    txn.put("alice", "100")?;
    txn.put("bob", "100")?;
    txn.put("zed", "100")?;
    println!("own write before commit: {:?}", txn.get("bob").await?);
    let ts = txn.commit().await?;
    println!("committed at {ts}");

    // Two transactions write the same key: the second to commit conflicts.
    let mut first = client.begin().await?;
    let mut second = client.begin().await?;
    first.put("alice", "90")?;
    second.put("alice", "80")?;
    first.commit().await?;
    match second.commit().await {
        Err(Error::WriteConflict { key, conflict_ts, .. }) => {
            println!("second writer conflicted on {key:?} (committed at {conflict_ts})")
        }
        other => return Err(format!("expected a conflict, got {other:?}").into()),
    }

    let snapshot = client.snapshot(client.current_timestamp().await?);
    println!("snapshot: {:?}", snapshot.scan(.., 10).await?);
    Ok(())
}
