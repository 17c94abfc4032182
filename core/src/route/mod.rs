//! Routing machines: they get a request to the leader (or, for replica
//! reads, the chosen replica) of the region that holds its keys, through
//! every region error and lost answer TiKV and the network can produce.
//!
//! - [`sender::RegionCall`] drives one request against one region (client-go's
//!   `RegionRequestSender`): it decides each *attempt* (peer, address,
//!   context) and its parent builds the request for it;
//! - [`replica::ReplicaSelector`] picks each attempt's peer: the leader, or
//!   a follower or learner for replica reads (client-go's `replicaSelector`);
//! - [`fanout::KeyFanout`] groups keys by region, batches them and re-splits
//!   what a region error hands back (client-go's batch loops);
//! - [`walk::RangeWalk`] walks a key range region by region (client-go's
//!   range loops);
//! - [`store_health::ProbeStores`] probes unreachable stores until they
//!   answer again and ticks the stores' slow scores.
//!
//! The wire vocabulary they speak (requests, responses, targets, the
//! region-error table) is [`crate::rpc`]'s, which knows nothing of routing.

pub mod fanout;
pub mod replica;
pub mod sender;
pub mod store_health;
pub mod walk;
