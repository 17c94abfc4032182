//! rng (being written)
