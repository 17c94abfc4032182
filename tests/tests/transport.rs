//! The transport suite ([`tikv_tests::transport`]) under both runtimes:
//! against scripted peers, and its PD paths against a real PD.

mod on_tokio {
    tikv_tests::transport_suite!(tikv_tests::harness::TokioHarness);
}

mod on_async_std {
    tikv_tests::transport_suite!(tikv_tests::harness::AsyncStdHarness);
}

mod on_tokio_real_pd {
    tikv_tests::transport_suite!(tikv_tests::harness::TokioHarness, RealPd);
}

mod on_async_std_real_pd {
    tikv_tests::transport_suite!(tikv_tests::harness::AsyncStdHarness, RealPd);
}
