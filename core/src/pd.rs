//! pd (being written)
