//! region (being written)
