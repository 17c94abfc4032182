//! The TSO suite ([`tikv_tests::tso`]) under both runtimes.

mod on_tokio {
    tikv_tests::tso_suite!(tikv_tests::harness::TokioHarness);
}

mod on_async_std {
    tikv_tests::tso_suite!(tikv_tests::harness::AsyncStdHarness);
}
