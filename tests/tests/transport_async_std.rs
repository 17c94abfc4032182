//! The transport suite ([`tikv_tests::transport`]) on
//! `tikv_async_std::GrpcTransport`.

tikv_tests::transport_suite!(tikv_tests::harness::AsyncStdHarness);
