//! Stale reads (TiDB's `AS OF TIMESTAMP`, client-go's
//! `KVSnapshot.SetIsStalenessReadOnly`): a snapshot in the recent past is
//! read from the nearest replica, which serves it from its own data once
//! its safe ts has passed the snapshot's timestamp; a replica that is not
//! there yet answers `DataIsNotReady` and the read goes to the leader.
//!
//! `cargo run -p tikv-tokio --example stale_read [-- --pd HOST:PORT]`

mod common;

use std::time::{Duration, Instant};

use tikv_tokio::{GLOBAL_TXN_SCOPE, Timestamp, TransactionClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (pd, _server) = common::cluster().await?;
    let client = TransactionClient::connect(pd).await?;

    let mut txn = client.begin().await?;
    txn.put("stale-read/k", "first")?;
    let first_commit = txn.commit().await?;
    println!("committed \"first\" at {first_commit}");

    // The client refreshes every store's safe ts in the background (every
    // 2 s); a stale read at or below the min safe ts is served by any
    // replica without a detour to the leader.
    let safe = wait_for_min_safe_ts(&client, first_commit).await?;
    println!("min safe ts {safe} has passed the commit");

    let mut txn = client.begin().await?;
    txn.put("stale-read/k", "second")?;
    let second_commit = txn.commit().await?;
    println!("committed \"second\" at {second_commit}");

    // At the safe ts, the first value: the later commit is not visible.
    let at_safe = client.stale_snapshot(safe).get("stale-read/k").await?;
    println!("stale read at {safe}: {}", show(at_safe.as_deref()));
    assert_eq!(at_safe.as_deref(), Some(&b"first"[..]));

    // At a fresh timestamp a follower whose safe ts is still behind
    // answers `DataIsNotReady`, and the read goes to the leader: the latest
    // value either way.
    let now = client.current_timestamp().await?;
    let latest = client.stale_snapshot(now).get("stale-read/k").await?;
    println!("stale read at a fresh {now}: {}", show(latest.as_deref()));
    assert_eq!(latest.as_deref(), Some(&b"second"[..]));

    // "As of one second ago", once a second has passed since the commit.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let second_ago = client.stale_snapshot_ago(Duration::from_secs(1)).await?;
    let value = second_ago.get("stale-read/k").await?;
    println!("stale read as of 1 s ago ({}): {}", second_ago.timestamp(), show(value.as_deref()));
    assert_eq!(value.as_deref(), Some(&b"second"[..]));
    println!("stale reads done");
    Ok(())
}

/// Waits (at most 30 s) until the global min safe ts has passed `ts`.
async fn wait_for_min_safe_ts(
    client: &TransactionClient,
    ts: Timestamp,
) -> Result<Timestamp, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let min = client.min_safe_ts(GLOBAL_TXN_SCOPE);
        if min > ts {
            return Ok(min);
        }
        if Instant::now() > deadline {
            return Err(format!("min safe ts still {min}, waiting for {ts}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn show(value: Option<&[u8]>) -> String {
    value.map_or("(none)".to_owned(), |v| format!("{:?}", String::from_utf8_lossy(v)))
}
