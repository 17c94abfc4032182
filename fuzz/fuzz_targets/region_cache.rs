//! The region cache against a simple model: arbitrary inserts, invalidations
//! and lookups never leave overlapping regions, and every lookup agrees with
//! the model and contains its key.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Running out of bytes ends an input early; that is not a failure.
    let _ = tikv_tests::props::region_cache(&mut arbitrary::Unstructured::new(data));
});
