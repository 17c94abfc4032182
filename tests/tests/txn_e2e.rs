//! The transaction suite ([`tikv_tests::txn`]) under both runtimes, each on
//! both beds: the in-process simulator and a real PD with simulated stores
//! joined to it (`tikv_tests::harness::Bed`); the GC suite
//! ([`tikv_tests::gc`]) under both runtimes on the in-process bed.

mod on_tokio {
    tikv_tests::txn_suite!(tikv_tests::harness::TokioHarness);
    tikv_tests::gc_suite!(tikv_tests::harness::TokioHarness);
}

mod on_async_std {
    tikv_tests::txn_suite!(tikv_tests::harness::AsyncStdHarness);
    tikv_tests::gc_suite!(tikv_tests::harness::AsyncStdHarness);
}

mod on_tokio_real_pd {
    tikv_tests::txn_suite!(tikv_tests::harness::TokioHarness, RealPd);
}

mod on_async_std_real_pd {
    tikv_tests::txn_suite!(tikv_tests::harness::AsyncStdHarness, RealPd);
}

/// The public futures are `Send`, so applications can spawn them on a
/// multi-threaded runtime (tokio's, async-std's); checked at compile time,
/// never called.
macro_rules! public_futures_are_send {
    ($name:ident, $client:ident) => {
        #[allow(dead_code)]
        fn $name(
            raw: $client::RawClient,
            client: $client::TransactionClient,
            txn: &mut $client::Transaction,
            owned: $client::Transaction,
        ) {
            fn is_send<T: Send>(_: T) {}
            is_send(raw.get(b"k".to_vec()));
            is_send(raw.put(b"k".to_vec(), b"v".to_vec()));
            is_send(raw.scan(b"a".to_vec()..b"z".to_vec(), 10));
            is_send(client.begin());
            is_send(client.current_timestamp());
            let snapshot = client.snapshot($client::Timestamp::from_version(1));
            is_send(snapshot.get(b"k".to_vec()));
            is_send(snapshot.scan_iter(b"a".to_vec()..b"z".to_vec()).collect(10));
            is_send(snapshot.scan_iter(b"a".to_vec()..b"z".to_vec()).into_stream());
            is_send(txn.get(b"k".to_vec()));
            is_send(txn.scan_iter(b"a".to_vec()..b"z".to_vec()).collect(10));
            is_send(owned.commit());
        }
    };
}

public_futures_are_send!(public_futures_are_send_on_tokio, tikv_tokio);
public_futures_are_send!(public_futures_are_send_on_async_std, tikv_async_std);
