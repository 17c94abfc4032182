//! The transport suite ([`tikv_tests::transport`]) under both runtimes.

mod on_tokio {
    tikv_tests::transport_suite!(tikv_tests::harness::TokioHarness);
}

mod on_async_std {
    tikv_tests::transport_suite!(tikv_tests::harness::AsyncStdHarness);
}
