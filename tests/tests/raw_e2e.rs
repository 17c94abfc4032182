//! The RawKV end-to-end suite ([`tikv_tests::raw`]) on the tokio client.

tikv_tests::raw_suite!(tikv_tests::harness::TokioHarness);
