//! The TLS suite ([`tikv_tests::tls`]) under both runtimes, on the
//! in-process bed (the real PD of the other bed serves no TLS).

mod on_tokio {
    tikv_tests::tls_suite!(tikv_tests::harness::TokioHarness);
}

mod on_async_std {
    tikv_tests::tls_suite!(tikv_tests::harness::AsyncStdHarness);
}
