//! End-to-end suites: the client over loopback gRPC against `tikv-sim`,
//! checked against plain in-memory models, under every runtime; the
//! deterministic simulation sweep (`tests/simulation.rs`); and properties of
//! the core's machines over arbitrary inputs ([`props`]), shared by the
//! cargo-fuzz targets and the stable bounded runs in `tests/properties.rs`.
//!
//! A suite is a set of `async fn`s generic over a [`Harness`], which names
//! the client platform under test and knows how to run a future on its
//! runtime. The test binaries in `tests/` stamp each suite out once per
//! runtime with its macro ([`raw_suite!`], [`txn_suite!`], [`gc_suite!`],
//! [`snapshot_suite!`], [`replica_suite!`], [`stale_read_suite!`], [`tso_suite!`], [`tls_suite!`],
//! [`observability_suite!`], and
//! [`transport_suite!`] for the
//! gRPC transport alone), so the same bodies run under tokio, under
//! async-std and, in virtual time, on the simulated platform
//! ([`harness::SimPlatformHarness`], `tests/platform_e2e.rs`):
//!
//! ```text
//! tikv_tests::raw_suite!(tikv_tests::harness::AsyncStdHarness);
//! tikv_tests::raw_suite!(tikv_tests::harness::AsyncStdHarness, RealPd);
//! ```
//!
//! Each cluster-backed test also takes the [`harness::Bed`] it runs on: the
//! simulator's own PD in-process, or a real PD with the simulated stores
//! joined to it, where splits and leader moves are PD operators; the
//! second argument of a suite's macro picks it. The simulated stores always
//! run on a thread of their own ("sim-server") with a private tokio
//! current-thread runtime ([`harness::SimHandle`]), so the client side of
//! an async-std run has no tokio runtime at all.

#[cfg(feature = "e2e")]
pub mod gc;
#[cfg(feature = "e2e")]
pub mod harness;
#[cfg(feature = "e2e")]
pub mod observability;
#[cfg(feature = "e2e")]
pub mod pd_view;
pub mod props;
#[cfg(feature = "e2e")]
pub mod raw;
#[cfg(feature = "e2e")]
pub mod replica;
#[cfg(feature = "e2e")]
pub mod snapshot;
#[cfg(feature = "e2e")]
pub mod stale_read;
#[cfg(feature = "e2e")]
pub mod tls;
#[cfg(feature = "e2e")]
pub mod transport;
#[cfg(feature = "e2e")]
pub mod tso;
#[cfg(feature = "e2e")]
pub mod txn;

#[cfg(feature = "e2e")]
pub use harness::Harness;
