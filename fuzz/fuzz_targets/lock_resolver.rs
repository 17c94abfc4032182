//! The lock resolver fed arbitrary `CheckTxnStatus`, `CheckSecondaryLocks`,
//! `ResolveLock` and `PessimisticRollback` answers, key errors, region and
//! transport errors, duplicates, deadlines and time jumps, for arbitrary
//! locks met by a reader or a writer: no panic, no retry storm, no stall,
//! sleeps within its budget, and it commits, rolls back, reads through or
//! skips a lock only as the answers justify.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Running out of bytes ends an input early; that is not a failure.
    let _ = tikv_tests::props::lock_resolver(&mut arbitrary::Unstructured::new(data));
});
