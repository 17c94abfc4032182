//! Pessimistic transactions (client-go's `examples/txnkv/pessimistic_txn`):
//! locks taken before commit, a no-wait lock and a bounded wait that fail
//! while another transaction holds the key, then succeed once it commits;
//! and a counter incremented with `get_for_update`.
//!
//! `cargo run -p tikv-tokio --example pessimistic [-- --pd HOST:PORT]`

mod common;

use std::time::Duration;

use tikv_tokio::{Error, LockOptions, TransactionClient, TransactionOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (pd, _server) = common::cluster().await?;
    let client = TransactionClient::connect(pd).await?;
    let pessimistic = || TransactionOptions::default().with_pessimistic();

    // txn1 locks k1 (its primary), then k2.
    let mut txn1 = client.begin_with_options(pessimistic()).await?;
    txn1.lock_keys(["k1"], LockOptions::new()).await?;
    println!("txn1: locked k1");
    txn1.lock_keys(["k2"], LockOptions::new()).await?;
    println!("txn1: locked k2");

    // txn2 cannot take k2 while txn1 holds it.
    let mut txn2 = client.begin_with_options(pessimistic()).await?;
    match txn2.lock_keys(["k2"], LockOptions::new().no_wait()).await {
        Err(Error::LockAcquireFailAndNoWaitSet) => println!("txn2: no-wait lock of k2 failed"),
        other => return Err(format!("expected a no-wait failure, got {other:?}").into()),
    }
    let bounded = LockOptions::new().wait_timeout(Duration::from_millis(200));
    match txn2.lock_keys(["k2"], bounded).await {
        Err(Error::LockWaitTimeout) => println!("txn2: waiting 200 ms for k2 timed out"),
        other => return Err(format!("expected a lock wait timeout, got {other:?}").into()),
    }

    txn1.put("k1", "k1")?;
    println!("txn1: committed at {}", txn1.commit().await?);

    // Released by the commit: txn2 locks k2 at a fresh for_update_ts.
    txn2.lock_keys(["k2"], LockOptions::new().no_wait()).await?;
    println!("txn2: locked k2");
    txn2.put("k1", "k1")?;
    txn2.put("k2", "k2")?;
    txn2.delete("k1")?;
    txn2.delete("k2")?;
    println!("txn2: committed at {}", txn2.commit().await?);

    // A read-modify-write that cannot lose an update: the counter is locked
    // before it is read, so the commit never conflicts on it.
    for _ in 0..3 {
        let mut txn = client.begin_with_options(pessimistic()).await?;
        let n: u64 = match txn.get_for_update("counter").await? {
            Some(v) => String::from_utf8_lossy(&v).parse()?,
            None => 0,
        };
        txn.put("counter", (n + 1).to_string())?;
        txn.commit().await?;
        println!("counter: {n} -> {}", n + 1);
    }
    Ok(())
}
