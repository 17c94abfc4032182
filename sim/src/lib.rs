//! tikv-sim
