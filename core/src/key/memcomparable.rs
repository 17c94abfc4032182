//! placeholder: memcomparable codec (being written)
