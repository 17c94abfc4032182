//! tikv-async-std
