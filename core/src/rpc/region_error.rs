//! region errors (being written)
