//! `tikv-bench`'s library: the benchmark workload shared with the peer
//! runners ([`workload`]), and the peers run in their own processes for the
//! side-by-side table ([`peers`]). The binary (`src/main.rs`) runs our
//! clients and the floors in-process.

pub mod peers;
pub mod server;
pub mod workload;
