//! Transactions: the client-side pieces of client-go's `txnkv`.
//!
//! - [`membuffer`]: the transaction's ordered write buffer with key flags,
//!   nested staging and checkpoints (client-go's `MemDB`).

pub mod membuffer;
