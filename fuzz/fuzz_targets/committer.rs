//! The committer (2PC, async commit, 1PC) fed arbitrary prewrite and commit
//! answers, locks met while prewriting and their statuses, key errors,
//! region and transport errors, duplicates, deadlines and time jumps: no
//! panic, no retry storm, no stall, sleeps within its budgets; a commit is
//! reported only when the primary's commit was acknowledged (or async
//! commit / 1PC made it so, at the ts TiKV gave), "undetermined" only when
//! a deciding answer was lost, a definite failure only when nothing could
//! have committed.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Running out of bytes ends an input early; that is not a failure.
    let _ = tikv_tests::props::committer(&mut arbitrary::Unstructured::new(data));
});
