//! The TiKV client on async-std (and smol): not built yet.
//!
//! This crate will provide a `tikv_driver::Runtime` and `Transport` on
//! async-io (hyper HTTP/2 under the tonic stubs, no tokio runtime), and the
//! same client types as `tikv-tokio` with that runtime filled in. Until then
//! it exports nothing; use `tikv-tokio`.
