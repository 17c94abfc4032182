//! End-to-end suites live in `tests/tests/`: the client over loopback gRPC
//! against `tikv-sim`, checked against plain in-memory models.
