//! The observability suite ([`tikv_tests::observability`]) under both
//! runtimes. A binary of its own: the suite installs a process-global
//! `tracing` subscriber and `metrics` recorder.

mod on_tokio {
    tikv_tests::observability_suite!(tikv_tests::harness::TokioHarness);
}

mod on_async_std {
    tikv_tests::observability_suite!(tikv_tests::harness::AsyncStdHarness);
}
