//! The transaction suite ([`tikv_tests::txn`]) and the GC suite
//! ([`tikv_tests::gc`]) under both runtimes.

mod on_tokio {
    tikv_tests::txn_suite!(tikv_tests::harness::TokioHarness);
    tikv_tests::gc_suite!(tikv_tests::harness::TokioHarness);
}

mod on_async_std {
    tikv_tests::txn_suite!(tikv_tests::harness::AsyncStdHarness);
    tikv_tests::gc_suite!(tikv_tests::harness::AsyncStdHarness);
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
