//! The sans-IO protocol core of the TiKV client.
//!
//! Everything here is deterministic: no I/O, no threads, no clocks, no OS
//! randomness. Time arrives as [`time::Instant`] arguments, randomness from a
//! seeded [`rng::Rng`], and every protocol decision (routing, retries, backoff,
//! region-error handling, batching) is made by state machines implementing
//! [`op::Operation`]. Runtimes (`tikv-driver` with tokio or async-std), the
//! simulator and the fuzzers all drive the same machines.
//!
//! Map:
//! - [`time`], [`rng`], [`config`]: the environment a machine is given.
//! - [`key`], [`codec`]: keys, ranges, memcomparable encoding, API V1/V2 keyspaces.
//! - [`backoff`]: client-go's backoff kinds and budgets.
//! - [`region`]: the region cache and store table.
//! - [`pd`]: PD member discovery, region/store lookups, TSO, keyspaces.
//!   A machine that needs a timestamp runs the leaf [`pd::GetTimestamp`]:
//!   it emits [`rpc::Request::Timestamp`] to [`rpc::Target::Oracle`], which
//!   the runtime answers from the client's [`pd::TsoBatcher`] (the driver's
//!   TSO task, or the simulated world's per-client batcher in virtual time),
//!   so every need of a client shares its batched `Tso` rounds.
//! - [`rpc`]: typed requests, the region-error table and the retrying sender.
//! - [`raw`]: RawKV operations.
//! - [`lock`]: the lock resolver.
//! - [`txn`]: snapshot reads, the transaction write buffer and the commit
//!   protocols. What follows a commit (the secondaries' commit, a failed
//!   transaction's rollback, or nothing when the outcome is undetermined)
//!   is the committer's decision ([`txn::commit::Committer::take_follow_up`]);
//!   runtimes only run it.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod codec;
pub mod config;
pub mod error;
pub mod key;
pub mod lock;
pub mod op;
pub mod pd;
pub mod raw;
pub mod region;
pub mod rng;
pub mod route;
pub mod rpc;
pub mod time;
pub mod txn;
pub mod view;

#[cfg(test)]
mod testing;

pub use error::{Error, Result};
