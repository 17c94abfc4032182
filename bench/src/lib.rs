//! `tikv-bench`'s library: the benchmark workload shared with the peer
//! runners ([`workload`]), the peers run in their own processes for the
//! side-by-side table ([`peers`]), and the `tikv-sim` process the
//! benchmarks run against ([`sim_process`]). The binary (`src/main.rs`) runs our
//! clients and the floors in-process.

pub mod peers;
pub mod sim_process;
pub mod workload;
