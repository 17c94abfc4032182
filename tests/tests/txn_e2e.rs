//! The transaction suite ([`tikv_tests::txn`]) under both runtimes.

mod on_tokio {
    tikv_tests::txn_suite!(tikv_tests::harness::TokioHarness);
}

mod on_async_std {
    tikv_tests::txn_suite!(tikv_tests::harness::AsyncStdHarness);
}

/// The public futures are `Send`, so applications can spawn them on a
/// multi-threaded runtime (checked at compile time; never called).
#[allow(dead_code)]
fn public_futures_are_send(
    raw: tikv_tokio::RawClient,
    client: tikv_tokio::TransactionClient,
    txn: &mut tikv_tokio::Transaction,
    owned: tikv_tokio::Transaction,
) {
    fn is_send<T: Send>(_: T) {}
    is_send(raw.get(b"k".to_vec()));
    is_send(raw.put(b"k".to_vec(), b"v".to_vec()));
    is_send(raw.scan(b"a".to_vec()..b"z".to_vec(), 10));
    is_send(client.begin());
    is_send(client.current_timestamp());
    let snapshot = client.snapshot(tikv_tokio::Timestamp::from_version(1));
    is_send(snapshot.get(b"k".to_vec()));
    is_send(snapshot.scan_iter(b"a".to_vec()..b"z".to_vec()).collect(10));
    is_send(snapshot.scan_iter(b"a".to_vec()..b"z".to_vec()).into_stream());
    is_send(txn.get(b"k".to_vec()));
    is_send(txn.scan_iter(b"a".to_vec()..b"z".to_vec()).collect(10));
    is_send(owned.commit());
}

/// The same for the async-std client (async-std's executor is
/// multi-threaded too).
#[allow(dead_code)]
fn public_futures_are_send_on_async_std(
    raw: tikv_async_std::RawClient,
    client: tikv_async_std::TransactionClient,
    txn: &mut tikv_async_std::Transaction,
    owned: tikv_async_std::Transaction,
) {
    fn is_send<T: Send>(_: T) {}
    is_send(raw.get(b"k".to_vec()));
    is_send(raw.put(b"k".to_vec(), b"v".to_vec()));
    is_send(raw.scan(b"a".to_vec()..b"z".to_vec(), 10));
    is_send(client.begin());
    is_send(client.current_timestamp());
    let snapshot = client.snapshot(tikv_async_std::Timestamp::from_version(1));
    is_send(snapshot.get(b"k".to_vec()));
    is_send(snapshot.scan_iter(b"a".to_vec()..b"z".to_vec()).collect(10));
    is_send(snapshot.scan_iter(b"a".to_vec()..b"z".to_vec()).into_stream());
    is_send(txn.get(b"k".to_vec()));
    is_send(txn.scan_iter(b"a".to_vec()..b"z".to_vec()).collect(10));
    is_send(owned.commit());
}
