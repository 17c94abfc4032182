//! The stale-read suite ([`tikv_tests::stale_read`]) under both runtimes,
//! each on both beds: the in-process simulator and a real PD with
//! simulated stores joined to it (`tikv_tests::harness::Bed`).

mod on_tokio {
    tikv_tests::stale_read_suite!(tikv_tests::harness::TokioHarness);
}

mod on_async_std {
    tikv_tests::stale_read_suite!(tikv_tests::harness::AsyncStdHarness);
}

mod on_tokio_real_pd {
    tikv_tests::stale_read_suite!(tikv_tests::harness::TokioHarness, RealPd);
}

mod on_async_std_real_pd {
    tikv_tests::stale_read_suite!(tikv_tests::harness::AsyncStdHarness, RealPd);
}
