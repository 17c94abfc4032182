//! The snapshot suite ([`tikv_tests::snapshot`]) under both runtimes.

mod on_tokio {
    tikv_tests::snapshot_suite!(tikv_tests::harness::TokioHarness);
}

mod on_async_std {
    tikv_tests::snapshot_suite!(tikv_tests::harness::AsyncStdHarness);
}
