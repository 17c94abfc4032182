//! The transport suite ([`tikv_tests::transport`]) on `tikv_tokio::GrpcTransport`.

tikv_tests::transport_suite!(tikv_tests::harness::TokioHarness);
