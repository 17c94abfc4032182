//! Transactions: snapshot reads (and, as issue #3 lands, the write buffer
//! and the commit protocols).

pub mod snapshot;
