//! PD protocol machines.
//!
//! - [`PdCall`]: one unary PD request sent to the current PD leader, with
//!   member discovery (`GetMembers`) and leader failover.
//! - [`LocateRegion`] / [`ResolveStore`]: fill the region cache and store
//!   table from PD.
//! - [`GetTimestamp`]: an operation's need for a timestamp, answered by the
//!   client's [`TsoBatcher`], which coalesces every caller's need into
//!   pipelined rounds on the `Tso` stream; [`TsoStreamOrder`] checks that
//!   stream's answers.
//! - [`LoadKeyspace`]: resolves a keyspace name to its metadata.
//! - [`RefreshStores`]: PD's store list into the store table, at connect
//!   and periodically.

mod call;
mod keyspace;
mod locate;
pub mod state;
mod stores;
pub mod timestamp;
mod tso;

pub use crate::config::DEFAULT_TSO_MAX_ROUNDS_IN_FLIGHT;
pub use call::PdCall;
pub use keyspace::LoadKeyspace;
pub use locate::{LoadRegions, LocateBy, LocateRegion, ResolveStore};
pub use state::PdState;
pub use stores::RefreshStores;
pub use timestamp::{LOGICAL_BITS, LastTimestamp, Timestamp};
pub use tso::{
    GetTimestamp, MAX_TSO_BATCH, ReadTsVerdict, TsoBatch, TsoBatcher, TsoRound, TsoRoundCallers,
    TsoRoundEnd, TsoStreamError, TsoStreamOrder, judge_read_ts,
};
