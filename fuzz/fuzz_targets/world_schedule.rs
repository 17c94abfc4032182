//! A whole simulated world whose universe (latencies, loss, duplication,
//! budgets) and fault schedule come from the fuzzer's bytes, so coverage
//! steers the faults; the world's checkers must pass.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Running out of bytes ends an input early; that is not a failure.
    let _ = tikv_tests::props::world_schedule(&mut arbitrary::Unstructured::new(data));
});
