//! raw (being written)
