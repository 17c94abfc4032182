//! One store's `BatchCommands` collector over several streams, fed
//! arbitrary arrivals, answers, breaks and clock jumps: every caller is
//! answered once, with its own answer, and nothing is left pending.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Running out of bytes ends an input early; that is not a failure.
    let _ = tikv_tests::props::batch_collector(&mut arbitrary::Unstructured::new(data));
});
