//! A raw operation (get, batch_get, put, CAS, scan, delete) fed an arbitrary
//! sequence of typed responses, region errors, transport errors, duplicate
//! answers, deadlines and time jumps: no panic, no retry storm, no stall, and
//! every value it returns was carried by some response.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Running out of bytes ends an input early; that is not a failure.
    let _ = tikv_tests::props::raw_op_events(&mut arbitrary::Unstructured::new(data));
});
