//! A GC worker (client-go's `examples/gcworker`): leaves an old version
//! behind, runs one GC round to a fresh safe point (resolving any lock at or
//! below it, then letting the stores collect old versions), and shows that
//! reads below the safe point are refused.
//!
//! `cargo run -p tikv-tokio --example gc_worker [-- --pd HOST:PORT]`

mod common;

use tikv_tokio::{Error, TransactionClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (pd, _server) = common::cluster().await?;
    let client = TransactionClient::connect(pd).await?;

    let mut txn = client.begin().await?;
    txn.put("gc-key", "old")?;
    txn.commit().await?;
    let before = client.current_timestamp().await?;
    let mut txn = client.begin().await?;
    txn.put("gc-key", "new")?;
    txn.commit().await?;

    let safe_point = client.current_timestamp().await?;
    println!(
        "locks at or below the safe point: {}",
        client.scan_locks(.., safe_point, 100).await?.len()
    );
    let outcome = client.gc(safe_point).await?;
    println!(
        "GC reached safe point {} over {} regions (held back by: {:?})",
        outcome.safe_point, outcome.resolved_regions, outcome.blocker
    );
    println!("locks left: {}", client.scan_locks(.., safe_point, 100).await?.len());

    let snapshot = client.snapshot(client.current_timestamp().await?);
    println!("current value: {:?}", snapshot.get("gc-key").await?);
    match client.snapshot(before).get("gc-key").await {
        Err(Error::TxnAbortedByGc { start_ts, txn_safe_point }) => {
            println!("a read at {start_ts} is refused: below the txn safe point {txn_safe_point}")
        }
        other => return Err(format!("expected TxnAbortedByGc, got {other:?}").into()),
    }
    Ok(())
}
