//! tikv-tests
