//! End-to-end suites: the client over loopback gRPC against `tikv-sim`,
//! checked against plain in-memory models, under every runtime.
//!
//! A suite is a set of `async fn`s generic over a [`Harness`], which names
//! the client platform under test and knows how to run a future on its
//! runtime. The test binaries in `tests/` stamp each suite out once per
//! runtime with its macro ([`raw_suite!`]), so the same bodies run under
//! tokio and under async-std:
//!
//! ```text
//! tikv_tests::raw_suite!(tikv_tests::harness::AsyncStdHarness);
//! ```
//!
//! The simulated cluster always runs on a thread of its own ("sim-server")
//! with a private tokio current-thread runtime ([`harness::SimHandle`]), so
//! the client side of an async-std run has no tokio runtime at all.

pub mod harness;
pub mod raw;

pub use harness::Harness;
