//! sender (being written)
