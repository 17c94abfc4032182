//! The TSO batcher with several rounds in flight, fed arbitrary PD answers
//! (including clocks going back and wrong counts) in arbitrary interleavings
//! across its rounds: no more rounds out than allowed, handed-out timestamps
//! strictly increase, and every caller is answered at most once.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Running out of bytes ends an input early; that is not a failure.
    let _ = tikv_tests::props::tso_batcher(&mut arbitrary::Unstructured::new(data));
});
