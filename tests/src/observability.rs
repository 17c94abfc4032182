//! The observability suite: the spans, events and metrics the client
//! reports (`tikv_driver`'s `observe` module) for raw and transactional
//! operations, an injected region error and a failing background commit,
//! captured by a `tracing` subscriber and a `metrics` recorder written here.
//!
//! Both are process-global (an operation's RPCs run on whatever thread
//! polls them), so the suite runs in a test binary of its own, one test at
//! a time ([`serial`]), each starting from an empty [`capture`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use tikv_driver::metric_names as names;
use tikv_proto::errorpb;
use tikv_sim::{ClusterConfig, Filter};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};

use crate::harness::{Bed, Harness, SimHandle};

/// Stamps out the observability suite as `#[test]` functions on the given
/// [`Harness`](crate::Harness) (in-process bed: region errors and failures
/// are injected into the simulated stores).
///
/// ```text
/// tikv_tests::observability_suite!(tikv_tests::harness::TokioHarness);
/// ```
#[macro_export]
macro_rules! observability_suite {
    ($harness:ty) => {
        $crate::observability_suite!(@each $harness;
            operations_and_their_rpcs_are_traced_with_region_and_store,
            a_region_error_is_counted_by_kind_with_its_backoff,
            a_failing_secondary_commit_is_logged_as_a_warning,
            region_cache_lookups_are_counted_as_hits_and_misses,
            pending_batch_requests_are_gauged_per_address,
        );
    };
    (@each $harness:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let _serial = $crate::observability::serial();
                <$harness as $crate::Harness>::block_on(
                    $crate::observability::$name::<$harness>($crate::harness::Bed::InProcess),
                );
            }
        )*
    };
}

/// A span the subscriber saw.
#[derive(Clone, Debug)]
pub struct SpanRecord {
    /// Its id (never reused by [`Capture`]).
    pub id: u64,
    /// Its name (`tikv_op`, `tikv_rpc`).
    pub name: &'static str,
    /// Its parent span, if any.
    pub parent: Option<u64>,
    /// Its fields, rendered.
    pub fields: BTreeMap<String, String>,
}

/// An event the subscriber saw.
#[derive(Clone, Debug)]
pub struct EventRecord {
    /// Its level.
    pub level: Level,
    /// The span it happened in.
    pub span: Option<u64>,
    /// Its fields, rendered (the message under `message`).
    pub fields: BTreeMap<String, String>,
}

#[derive(Default)]
struct Traces {
    next_id: u64,
    spans: BTreeMap<u64, SpanRecord>,
    events: Vec<EventRecord>,
}

/// A `tracing` subscriber that keeps every span and event of the client
/// (target `tikv_driver`), and a `metrics` recorder that keeps every
/// counter and histogram sample, keyed `name{label=value,...}` with the
/// labels sorted.
#[derive(Default)]
pub struct Capture {
    traces: Mutex<Traces>,
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<BTreeMap<String, Arc<Samples>>>,
    gauges: Mutex<BTreeMap<String, Arc<Samples>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    /// The spans entered on this thread, innermost last.
    static ENTERED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn current_span() -> Option<u64> {
    ENTERED.with(|e| e.borrow().last().copied())
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// The client's own spans and events: transport crates' (h2, hyper)
/// are not this suite's subject.
fn ours(target: &str) -> bool {
    target.starts_with("tikv")
}

/// The subscriber installed globally; a clone of the [`capture`] handle.
struct CaptureSubscriber(&'static Capture);

impl Subscriber for CaptureSubscriber {
    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if ours(metadata.target()) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        ours(metadata.target())
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut traces = lock(&self.0.traces);
        traces.next_id += 1;
        let id = traces.next_id;
        let parent = if let Some(p) = attrs.parent() {
            Some(p.into_u64())
        } else if attrs.is_contextual() {
            current_span()
        } else {
            None
        };
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let name = attrs.metadata().name();
        traces.spans.insert(id, SpanRecord { id, name, parent, fields });
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut traces = lock(&self.0.traces);
        if let Some(s) = traces.spans.get_mut(&span.into_u64()) {
            values.record(&mut Fields(&mut s.fields));
        }
    }
    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let span = if let Some(p) = event.parent() {
            Some(p.into_u64())
        } else if event.is_contextual() {
            current_span()
        } else {
            None
        };
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let level = *event.metadata().level();
        lock(&self.0.traces).events.push(EventRecord { level, span, fields });
    }
    fn enter(&self, span: &Id) {
        ENTERED.with(|e| e.borrow_mut().push(span.into_u64()));
    }
    fn exit(&self, span: &Id) {
        ENTERED.with(|e| {
            let mut e = e.borrow_mut();
            if let Some(i) = e.iter().rposition(|&s| s == span.into_u64()) {
                e.remove(i);
            }
        });
    }
}

/// One histogram's samples.
#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl metrics::HistogramFn for Samples {
    fn record(&self, value: f64) {
        lock(&self.0).push(value);
    }
}

/// A gauge keeps every value it was set to (increments and decrements
/// are recorded as the value they lead to).
impl metrics::GaugeFn for Samples {
    fn increment(&self, value: f64) {
        let mut values = lock(&self.0);
        let next = values.last().copied().unwrap_or(0.0) + value;
        values.push(next);
    }
    fn decrement(&self, value: f64) {
        self.increment(-value);
    }
    fn set(&self, value: f64) {
        lock(&self.0).push(value);
    }
}

struct CounterCell(Arc<AtomicU64>);

impl metrics::CounterFn for CounterCell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::SeqCst);
    }
}

fn render_key(key: &Key) -> String {
    let mut labels: Vec<String> =
        key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

/// The recorder installed globally.
struct CaptureRecorder(&'static Capture);

impl metrics::Recorder for CaptureRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let cell = lock(&self.0.counters).entry(render_key(key)).or_default().clone();
        Counter::from_arc(Arc::new(CounterCell(cell)))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let values = lock(&self.0.gauges).entry(render_key(key)).or_default().clone();
        Gauge::from_arc(values)
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let samples = lock(&self.0.histograms).entry(render_key(key)).or_default().clone();
        Histogram::from_arc(samples)
    }
}

/// The process's capture, installed as the global subscriber and recorder
/// on first use.
pub fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture: &'static Capture = Box::leak(Box::default());
        tracing::subscriber::set_global_default(CaptureSubscriber(capture))
            .expect("no other global subscriber in this test binary");
        metrics::set_global_recorder(CaptureRecorder(capture))
            .expect("no other global recorder in this test binary");
        capture
    })
}

/// Runs the suite's tests one at a time, each from an empty capture.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    let guard = lock(&SERIAL);
    capture().clear();
    guard
}

impl Capture {
    fn clear(&self) {
        let mut traces = lock(&self.traces);
        traces.spans.clear();
        traces.events.clear();
        lock(&self.counters).values().for_each(|c| c.store(0, Ordering::SeqCst));
        lock(&self.histograms).values().for_each(|h| lock(&h.0).clear());
        lock(&self.gauges).values().for_each(|g| lock(&g.0).clear());
    }

    /// The values set, in order, on each gauge named `name` whose labels
    /// include `labels`, by rendered key.
    pub fn gauges(&self, name: &str, labels: &[(&str, &str)]) -> BTreeMap<String, Vec<f64>> {
        lock(&self.gauges)
            .iter()
            .filter(|(key, _)| key_matches(key, name, labels))
            .map(|(key, g)| (key.clone(), lock(&g.0).clone()))
            .collect()
    }

    /// Every span named `name` whose fields include all of `fields`.
    pub fn spans(&self, name: &str, fields: &[(&str, &str)]) -> Vec<SpanRecord> {
        let traces = lock(&self.traces);
        traces
            .spans
            .values()
            .filter(|s| s.name == name && has_fields(&s.fields, fields))
            .cloned()
            .collect()
    }

    /// Every event at `level` whose fields include all of `fields`.
    pub fn events(&self, level: Level, fields: &[(&str, &str)]) -> Vec<EventRecord> {
        let traces = lock(&self.traces);
        traces
            .events
            .iter()
            .filter(|e| e.level == level && has_fields(&e.fields, fields))
            .cloned()
            .collect()
    }

    /// The span `id`.
    pub fn span(&self, id: u64) -> Option<SpanRecord> {
        lock(&self.traces).spans.get(&id).cloned()
    }

    /// The sum of the counters named `name` whose labels include `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        lock(&self.counters)
            .iter()
            .filter(|(key, _)| key_matches(key, name, labels))
            .map(|(_, c)| c.load(Ordering::SeqCst))
            .sum()
    }

    /// The samples of the histograms named `name` whose labels include
    /// `labels`.
    pub fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        lock(&self.histograms)
            .iter()
            .filter(|(key, _)| key_matches(key, name, labels))
            .flat_map(|(_, h)| lock(&h.0).clone())
            .collect()
    }
}

fn has_fields(have: &BTreeMap<String, String>, want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| have.get(*k).is_some_and(|x| x == v))
}

fn key_matches(key: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    let Some(rest) = key.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
        return false;
    };
    let inner = rest.strip_suffix('}').unwrap_or(rest);
    let have: Vec<&str> = inner.split(',').collect();
    labels.iter().all(|(k, v)| have.contains(&format!("{k}={v}").as_str()))
}

/// The value of a numeric field (`region_id=3`).
fn number(fields: &BTreeMap<String, String>, name: &str) -> u64 {
    fields.get(name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

type RawClient<H> = tikv_driver::RawClient<<H as Harness>::Platform>;
type TransactionClient<H> = tikv_driver::TransactionClient<<H as Harness>::Platform>;

async fn raw_cluster(bed: Bed) -> SimHandle {
    SimHandle::start(bed, ClusterConfig { split_keys: vec![b"m".to_vec()], ..Default::default() })
        .await
}

async fn txn_cluster(bed: Bed) -> SimHandle {
    let config =
        ClusterConfig { v1_txn: true, split_keys: vec![b"m".to_vec()], ..Default::default() };
    SimHandle::start(bed, config).await
}

/// A raw get and a transaction commit each get an operation span, and
/// each of their RPCs a child span naming the region, store id and
/// address it went to; the request series counts them by command and
/// store; the commit's series (size, mode) and its prewrite's backoff
/// after an injected `MaxTimestampNotSynced` are recorded.
pub async fn operations_and_their_rpcs_are_traced_with_region_and_store<H: Harness>(bed: Bed) {
    let server = raw_cluster(bed).await;
    let raw = RawClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    raw.put("k", "v").await.expect("put");
    assert_eq!(raw.get("k").await.expect("get").as_deref(), Some(&b"v"[..]));
    let cap = capture();

    let ops = cap.spans("tikv_op", &[("kind", "raw_get")]);
    assert_eq!(ops.len(), 1, "one raw_get operation span: {ops:?}");
    let rpcs: Vec<_> = cap
        .spans("tikv_rpc", &[("cmd", "raw_get")])
        .into_iter()
        .filter(|s| s.parent == Some(ops[0].id))
        .collect();
    assert_eq!(rpcs.len(), 1, "the get's RPC is a child of its operation: {rpcs:?}");
    let rpc = &rpcs[0];
    let leader = {
        let cluster = server.cluster();
        let region = cluster.region_for_region_key(&cluster.region_key(b"k")).expect("region");
        assert_eq!(number(&rpc.fields, "region_id"), region.id, "{rpc:?}");
        cluster.leader_of(region.id).expect("leader").store_id
    };
    assert_eq!(number(&rpc.fields, "store_id"), leader, "{rpc:?}");
    assert!(rpc.fields.get("addr").is_some_and(|a| a.contains("127.0.0.1")), "{rpc:?}");
    assert_eq!(rpc.fields.get("retry").map(String::as_str), Some("false"));
    let store = leader.to_string();
    let got = cap.samples(names::REQUEST_DURATION, &[("cmd", "raw_get"), ("store", &store)]);
    assert_eq!(got.len(), 1, "one raw_get to store {store}: {got:?}");
    let ops = cap.samples(names::OPERATION_DURATION, &[("kind", "raw_get"), ("result", "ok")]);
    assert_eq!(ops.len(), 1);
    assert_eq!(
        cap.events(Level::DEBUG, &[("outcome", "ok")])
            .iter()
            .filter(|e| e.span == Some(rpc.parent.unwrap_or(0)))
            .count(),
        1
    );

    let server_txn = txn_cluster(bed).await;
    let txn = TransactionClient::<H>::connect(server_txn.pd_addrs()).await.expect("connect");
    let not_synced = errorpb::Error {
        message: "max timestamp not synced".into(),
        max_timestamp_not_synced: Some(Default::default()),
        ..Default::default()
    };
    server_txn.cluster().inject_region_error(Filter::any().command("kv_prewrite"), not_synced, 1);
    let mut t = txn.begin().await.expect("begin");
    t.put("a", "1").expect("put");
    t.put("z", "22").expect("put");
    t.commit().await.expect("commit");
    let commits = cap.spans("tikv_op", &[("kind", "txn_commit")]);
    assert_eq!(commits.len(), 1, "{commits:?}");
    for cmd in ["kv_prewrite", "kv_commit"] {
        let children: Vec<_> = cap
            .spans("tikv_rpc", &[("cmd", cmd)])
            .into_iter()
            .filter(|s| s.parent == Some(commits[0].id))
            .collect();
        assert!(!children.is_empty(), "{cmd} under the commit span");
        assert!(children.iter().all(|s| number(&s.fields, "region_id") != 0));
        assert!(children.iter().all(|s| number(&s.fields, "store_id") != 0));
    }
    assert_eq!(cap.samples(names::TXN_WRITE_KEYS, &[]), vec![2.0]);
    assert_eq!(cap.samples(names::TXN_WRITE_BYTES, &[]), vec![(1 + 1 + 1 + 2) as f64]);
    assert_eq!(
        cap.samples(names::TXN_COMMIT_DURATION, &[("mode", "2pc"), ("result", "ok")]).len(),
        1
    );
    assert!(cap.counter(names::TXN_PHASE, &[("phase", "prewrite"), ("result", "ok")]) >= 2);
    assert!(!cap.samples(names::TSO_BATCH_SIZE, &[]).is_empty(), "timestamps came in TSO rounds");
    assert!(!cap.samples(names::TSO_WAIT, &[]).is_empty());
    // The prewrite's backoff is the commit's, reported in its span.
    let backoff = cap.events(Level::DEBUG, &[("backoff", "maxTsNotSynced"), ("sleeps", "1")]);
    assert_eq!(backoff.len(), 1, "{backoff:?}");
    assert_eq!(backoff[0].span, Some(commits[0].id));
    assert_eq!(cap.counter(names::BACKOFF_SLEEPS, &[("kind", "maxTsNotSynced")]), 1);
    server.shutdown().await;
    server_txn.shutdown().await;
}

/// An injected `MaxTimestampNotSynced` region error on a raw get (which
/// backs off; `StaleCommand` retries another replica at once, as client-go
/// does with its replica selector) is counted by its
/// kind and store, the backoff it caused by kind, and both show up in the
/// traces: a DEBUG event in the RPC's span and a backoff event in the
/// operation's.
pub async fn a_region_error_is_counted_by_kind_with_its_backoff<H: Harness>(bed: Bed) {
    let server = raw_cluster(bed).await;
    let raw = RawClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    raw.put("k", "v").await.expect("put");
    let not_synced = errorpb::Error {
        message: "max timestamp not synced".into(),
        max_timestamp_not_synced: Some(Default::default()),
        ..Default::default()
    };
    server.cluster().inject_region_error(Filter::any().command("raw_get"), not_synced, 2);
    assert_eq!(raw.get("k").await.expect("retried").as_deref(), Some(&b"v"[..]));
    let cap = capture();

    assert_eq!(cap.counter(names::REGION_ERRORS, &[("kind", "max_timestamp_not_synced")]), 2);
    let leader = {
        let cluster = server.cluster();
        let region = cluster.region_for_region_key(&cluster.region_key(b"k")).expect("region");
        cluster.leader_of(region.id).expect("leader").store_id.to_string()
    };
    assert_eq!(
        cap.counter(
            names::REGION_ERRORS,
            &[("kind", "max_timestamp_not_synced"), ("store", &leader)]
        ),
        2
    );
    assert_eq!(cap.counter(names::BACKOFF_SLEEPS, &[("kind", "maxTsNotSynced")]), 2);
    let slept = cap.samples(names::BACKOFF_SECONDS, &[("kind", "maxTsNotSynced")]);
    // BoMaxTsNotSynced sleeps 2 ms, then 4 ms (no jitter).
    assert_eq!(slept.len(), 1, "{slept:?}");
    assert!((slept[0] - 0.006).abs() < 1e-9, "{slept:?}");
    assert_eq!(cap.samples(names::REQUEST_DURATION, &[("cmd", "raw_get")]).len(), 3);

    let op = cap.spans("tikv_op", &[("kind", "raw_get")]);
    assert_eq!(op.len(), 1);
    let errors = cap.events(Level::DEBUG, &[("region_error", "max_timestamp_not_synced")]);
    assert_eq!(errors.len(), 2, "{errors:?}");
    for e in &errors {
        let rpc = cap.span(e.span.expect("in a span")).expect("span");
        assert_eq!(rpc.name, "tikv_rpc");
        assert_eq!(rpc.parent, Some(op[0].id));
    }
    let retries = cap.spans("tikv_rpc", &[("cmd", "raw_get"), ("retry", "true")]);
    assert_eq!(retries.len(), 2, "two retries after the errors: {retries:?}");
    let backoff = cap.events(Level::DEBUG, &[("backoff", "maxTsNotSynced"), ("sleeps", "2")]);
    assert_eq!(backoff.len(), 1, "{backoff:?}");
    assert_eq!(backoff[0].span, Some(op[0].id));

    // A region error that is not retried fails the operation: a WARN.
    let too_large = errorpb::Error {
        message: "raft entry too large".into(),
        raft_entry_too_large: Some(Default::default()),
        ..Default::default()
    };
    server.cluster().inject_region_error(Filter::any().command("raw_put"), too_large, 1);
    assert!(raw.put("k", "w").await.is_err());
    let failed = cap.events(Level::WARN, &[("outcome", "Region")]);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        cap.samples(names::OPERATION_DURATION, &[("kind", "raw_put"), ("result", "Region")]).len(),
        1
    );
    server.shutdown().await;
}

/// Region-cache lookups reach their series on the store health tick: the
/// first lookup of each region misses (the client loads it from PD), the
/// following ones hit.
pub async fn region_cache_lookups_are_counted_as_hits_and_misses<H: Harness>(bed: Bed) {
    let server = raw_cluster(bed).await;
    let raw = RawClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    // One key on each side of the split at "m", each read ten times.
    for key in ["a", "z"] {
        raw.put(key, "v").await.expect("put");
        for _ in 0..10 {
            assert_eq!(raw.get(key).await.expect("get").as_deref(), Some(&b"v"[..]));
        }
    }
    // Past one health tick (every second) after the reads.
    H::sleep(std::time::Duration::from_millis(1_500)).await;
    let cap = capture();
    let hits = cap.counter(names::REGION_CACHE_LOOKUPS, &[("result", "hit")]);
    let misses = cap.counter(names::REGION_CACHE_LOOKUPS, &[("result", "miss")]);
    assert!(hits >= 20, "each of the 20 reads found its region cached: {hits} hits");
    assert!((2..=4).contains(&misses), "a miss per region, maybe one more per put: {misses}");
    let loads =
        cap.counter(names::REGION_CACHE_OPERATIONS, &[("type", "get_region"), ("result", "ok")]);
    assert!(
        loads >= 2 && loads <= misses,
        "each miss loads from PD: {loads} loads, {misses} misses"
    );
    server.shutdown().await;
}

/// The `BatchCommands` requests of a store address waiting for their
/// answers are gauged: concurrent reads raise the gauge, and it is back at
/// zero once they are answered.
pub async fn pending_batch_requests_are_gauged_per_address<H: Harness>(bed: Bed) {
    let server = raw_cluster(bed).await;
    let raw = RawClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    raw.put("a", "v").await.expect("put");
    let reads = (0..64).map(|_| raw.get("a"));
    for read in futures::future::join_all(reads).await {
        assert_eq!(read.expect("get").as_deref(), Some(&b"v"[..]));
    }
    // Gauges of earlier tests' addresses stay registered, emptied.
    let mut gauges = capture().gauges(names::BATCH_PENDING, &[]);
    gauges.retain(|_, values| !values.is_empty());
    assert_eq!(gauges.len(), 1, "one store address served the reads: {gauges:?}");
    let values = gauges.values().next().expect("one gauge");
    let peak = values.iter().copied().fold(0.0, f64::max);
    assert!(peak >= 2.0, "concurrent reads were pending together: {values:?}");
    assert_eq!(values.last(), Some(&0.0), "every read was answered: {values:?}");
    server.shutdown().await;
}

/// A secondary commit that fails in the background (its region answers
/// `RaftEntryTooLarge`, which is not retried) does not fail the commit,
/// whose primary is committed, and is not dropped silently: a WARN event
/// names the task and the failure is counted.
pub async fn a_failing_secondary_commit_is_logged_as_a_warning<H: Harness>(bed: Bed) {
    let server = txn_cluster(bed).await;
    let client = TransactionClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    let secondary_region = {
        let cluster = server.cluster();
        cluster.region_for_region_key(&cluster.txn_region_key(b"z")).expect("region").id
    };
    let too_large = errorpb::Error {
        message: "raft entry too large".into(),
        raft_entry_too_large: Some(Default::default()),
        ..Default::default()
    };
    let filter = Filter::any().command("kv_commit").region(secondary_region);
    server.cluster().inject_region_error(filter, too_large, 1);
    let mut t = client.begin().await.expect("begin");
    t.put("a", "1").expect("put");
    t.put("z", "2").expect("put");
    t.commit().await.expect("the primary's commit is the commit point");
    assert_eq!(client.close(Duration::from_secs(30)).await, 0, "the secondary commit ended");
    let cap = capture();

    let warned = cap.events(Level::WARN, &[("task", "secondary_commit")]);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].fields.get("error").is_some_and(|e| e.contains("raft entry too large")));
    assert_eq!(cap.counter(names::BACKGROUND_FAILURES, &[("task", "secondary_commit")]), 1);
    assert_eq!(cap.counter(names::REGION_ERRORS, &[("kind", "raft_entry_too_large")]), 1);
    assert_eq!(
        cap.counter(names::TXN_PHASE, &[("phase", "commit"), ("result", "region_error")]),
        1
    );
    // The background work has its own operation span.
    assert_eq!(cap.spans("tikv_op", &[("kind", "secondary_commit")]).len(), 1);
    server.shutdown().await;
}
