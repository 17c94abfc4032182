//! Routing machines: they get a request to the leader of the region that
//! holds its keys, through every region error and lost answer TiKV and the
//! network can produce.
//!
//! - [`sender::RegionCall`] drives one request against one region (client-go's
//!   `RegionRequestSender`): it decides each *attempt* (peer, address,
//!   context) and its parent builds the request for it;
//! - [`fanout::KeyFanout`] groups keys by region, batches them and re-splits
//!   what a region error hands back (client-go's batch loops);
//! - [`walk::RangeWalk`] walks a key range region by region (client-go's
//!   range loops).
//!
//! The wire vocabulary they speak (requests, responses, targets, the
//! region-error table) is [`crate::rpc`]'s, which knows nothing of routing.

pub mod fanout;
pub mod sender;
pub mod walk;
