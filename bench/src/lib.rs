//! `tikv-bench`'s library: the benchmark workload shared with the peer
//! runners ([`workload`]), the peers run in their own processes for the
//! side-by-side table ([`peers`]), and the server processes the benchmarks
//! run against ([`server`]: `tikv-echo`, `tikv-sim`). The binaries run our
//! clients in-process: `tikv-bench` (raw get/put, the floors and peers),
//! `txn-commit` (B7) and `tso-bench` (B8), `alloc-audit` (B10); [`ycsb`]
//! holds YCSB's core workloads for `ycsb-bench`.

pub mod peers;
pub mod server;
pub mod workload;
pub mod ycsb;
