//! Transactions: the client-side pieces of client-go's `txnkv`.
//!
//! - [`snapshot`]: reads at a timestamp that resolve the locks they meet.
//! - [`commit`]: two-phase commit, async commit and 1PC.
//! - [`pessimistic`]: pessimistic locks: acquiring them and rolling them back.
//! - [`fair_locking`]: the bookkeeping of fair (aggressive) locking sessions.
//! - [`pipelined`]: the write buffer of a pipelined DML transaction.
//! - [`membuffer`]: the transaction's ordered write buffer with key flags,
//!   nested staging and checkpoints (client-go's `MemDB`).
//! - [`union`]: read-your-writes, the buffer merged over snapshot reads
//!   (client-go's `KVUnionStore` / `UnionIter`).

pub mod commit;
pub mod fair_locking;
pub mod membuffer;
pub mod pessimistic;
pub mod pipelined;
pub mod snapshot;
pub mod union;
