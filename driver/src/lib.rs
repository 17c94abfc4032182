//! tikv-driver
