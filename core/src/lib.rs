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
//! - [`error`]: the typed errors, with the transport's [`error::RpcError`].
//! - [`backoff`]: client-go's backoff kinds and budgets.
//! - [`region`]: the region cache and store table.
//! - [`rpc`]: the wire vocabulary: typed requests and responses, targets,
//!   request tags, the region-error table, and the `BatchCommands` batching
//!   policy (a wire-level protocol that packs requests already routed, so
//!   it needs nothing from routing).
//! - [`view`]: [`view::ClusterView`], the knowledge every machine of a
//!   client shares.
//! - [`op`]: the contract every machine follows, and [`op::StepSlot`], the
//!   one place composite machines (the lock resolver, snapshot reads, the
//!   committer and its keep-alive, the range walk) keep their current
//!   child: id mapping, late answers of replaced steps dropped, the child's
//!   backoff sleeps and lost answers handed back, a built-in sleep
//!   ([`op::HandBack`] for a child handed the parent's own backoffer).
//! - [`pd`]: PD member discovery, region/store lookups, TSO, keyspaces;
//!   [`pd::Timestamp`] is the one timestamp type (start, commit,
//!   for-update, read and lock timestamps), `u64` only on the wire.
//!   A machine that needs a timestamp runs the leaf [`pd::GetTimestamp`]:
//!   it emits [`rpc::Request::Timestamp`] to [`rpc::Target::Oracle`], which
//!   the runtime answers from the client's [`pd::TsoBatcher`] (the driver's
//!   TSO task, or the simulated world's per-process batcher in virtual time),
//!   so every need of a client shares its batched `Tso` rounds.
//! - [`route`]: the routing machines: one request to one region's leader
//!   ([`route::sender::RegionCall`], which decides each attempt while its
//!   parent builds the request for it), key batches fanned out by region
//!   ([`route::fanout`]), ranges walked region by region ([`route::walk`]).
//! - [`range_task`]: the range-task runner: a range cut into tasks of N
//!   regions, run with bounded concurrency (client-go's `rangetask`).
//! - [`raw`]: RawKV operations.
//! - [`gc`]: GC (locks resolved below a safe point, the safe points
//!   advanced), `delete_range`, `unsafe_destroy_range`, lock scans.
//! - [`split`]: region splits and PD scatters.
//! - [`lock`]: the lock resolver.
//! - [`txn`]: snapshot reads, the transaction write buffer and the commit
//!   protocols. What follows a commit (the secondaries' commit, a failed
//!   transaction's rollback, or nothing when the outcome is undetermined)
//!   is the committer's decision ([`txn::commit::Committer::take_follow_up`]);
//!   runtimes only run it.
//!
//! Layers. A module uses only modules of its own layer listed before it or
//! of lower layers, so no two modules import each other, directly or
//! around a loop (`layering_has_no_loop` checks the source against this
//! list). `lock` and `pd` each hold plain data the view keeps
//! (`lock::status`, `pd::state`, `pd::timestamp`) below the machines that
//! use the view; the rest of the core names that data by those paths.
//! 1. Values: `time`, `rng`, `key`, `backoff`, `pd::timestamp`, `pd::state`,
//!    `error`, `region`, `lock::status`.
//! 2. Vocabulary and environment: `rpc`, `exec_details`, `codec`, `config`,
//!    `op`.
//! 3. Shared knowledge: `view`.
//! 4. PD machines: `pd` (`call`, `keyspace`, `locate`, `stores`, `tso`).
//! 5. Routing: `route` (`sender`, then `fanout`, `walk` and `replica`).
//! 6. Operations: `range_task`, `safe_ts`, `split`, `raw`, `lock`, then
//!    `txn` and `gc`.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod codec;
pub mod config;
pub mod error;
pub mod exec_details;
pub mod gc;
pub mod key;
pub mod lock;
pub mod op;
pub mod pd;
pub mod range_task;
pub mod raw;
pub mod region;
pub mod rng;
pub mod route;
pub mod rpc;
pub mod safe_ts;
pub mod split;
pub mod time;
pub mod txn;
pub mod view;

#[cfg(test)]
mod layering;
#[cfg(test)]
mod testing;

pub use error::{Error, Result};
