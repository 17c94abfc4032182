//! End-to-end suites live in `tests/tests/`: the client over loopback gRPC
//! against `tikv-sim`, checked against plain in-memory models, and the
//! deterministic simulation sweep (`simulation.rs`).
//!
//! The library part holds [`props`]: properties of the core's machines over
//! arbitrary inputs, shared by the cargo-fuzz targets and the stable
//! bounded runs in `tests/tests/properties.rs`.

pub mod props;
