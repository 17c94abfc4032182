//! tikv-tokio
