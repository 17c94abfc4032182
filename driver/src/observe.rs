//! Tracing spans/events and `metrics` series for what the driver executes.
//!
//! The core is sans-IO and deterministic, so nothing in it logs or counts:
//! the driver observes what the core emits (each RPC with its target and
//! `kvrpcpb::Context`, each answer, each operation's result and the backoff
//! budget it slept against) and reports it through the ecosystem's facades,
//! `tracing` and `metrics`. Without a subscriber a span is a disabled
//! callsite check; without a recorder a series is the facade's no-op.
//!
//! The spans, events and series, with their levels and labels, are
//! documented for users in the README's production section; the series
//! names are [`names`].

use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use tikv_core::Error;
use tikv_core::backoff::{BackoffKind, Backoffer, KindSleeps};
use tikv_core::region::LookupCounts;
use tikv_core::rpc::{KvRequest, KvResponse, PdRequest, Request, Response, Rpc, RpcError, Target};
use tikv_core::time::Instant;
use tikv_proto::{errorpb, kvrpcpb};
use tracing::{Level, Span};

/// The names of the `metrics` series the client records (all prefixed
/// `tikv_client_`, units in the names as Prometheus does).
pub mod names {
    /// Histogram, seconds: one RPC from send to answer (or failure).
    /// Labels `cmd` (`kv_get`, `raw_put`, `get_region`, `tso`, ...) and
    /// `store` (the store id, `pd`, or `oracle` for the client's TSO
    /// batcher). Its `_count` is the request count. client-go
    /// `tikv_client_go_request_seconds`.
    pub const REQUEST_DURATION: &str = "tikv_client_request_duration_seconds";
    /// Counter: RPCs that failed in transport (no answer). Labels `cmd`,
    /// `store`, `kind` (`unavailable`, `deadline_exceeded`, ...).
    pub const RPC_ERRORS: &str = "tikv_client_rpc_errors_total";
    /// Counter: region errors in answers. Labels `kind` (`not_leader`,
    /// `epoch_not_match`, `server_is_busy`, ...) and `store`. client-go
    /// `tikv_client_go_region_err_total`.
    pub const REGION_ERRORS: &str = "tikv_client_region_errors_total";
    /// Counter: backoff sleeps. Label `kind`, client-go's name of the
    /// backoff type (`regionMiss`, `tikvRPC`, `txnLockFast`, ...).
    pub const BACKOFF_SLEEPS: &str = "tikv_client_backoff_sleeps_total";
    /// Histogram, seconds: per operation and backoff kind, the time it
    /// slept on that kind. Label `kind`. client-go
    /// `tikv_client_go_backoff_seconds`.
    pub const BACKOFF_SECONDS: &str = "tikv_client_backoff_seconds";
    /// Histogram, seconds: one operation of the public API, start to
    /// result. Labels `kind` (`raw_get`, `txn_commit`, `snapshot_get`, ...)
    /// and `result` (`ok` or the error kind). client-go
    /// `tikv_client_go_txn_cmd_duration_seconds` / `rawkv_cmd_seconds`.
    pub const OPERATION_DURATION: &str = "tikv_client_operation_duration_seconds";
    /// Counter: region-cache loads from PD. Labels `type` (`get_region`,
    /// `get_prev_region`, `get_region_by_id`, `scan_regions`,
    /// `batch_scan_regions`) and `result` (`ok`, `err`); each is a cache
    /// miss. Label `type=invalidate` counts region errors that dropped a
    /// cached region (`result` is the region-error kind). client-go
    /// `tikv_client_go_region_cache_operations_total`.
    pub const REGION_CACHE_OPERATIONS: &str = "tikv_client_region_cache_operations_total";
    /// Counter: region-cache lookups by `result` (`hit`: a usable region
    /// was cached; `miss`: none was, and the caller loads it from PD).
    /// Counted on the lookup path and added to the series once a second,
    /// on the store health tick. client-go counts only the misses (the
    /// `get_region_when_miss` loads).
    pub const REGION_CACHE_LOOKUPS: &str = "tikv_client_region_cache_lookups_total";
    /// Histogram: requests per `BatchCommands` message. client-go
    /// `tikv_client_go_batch_requests`.
    pub const BATCH_SIZE: &str = "tikv_client_batch_requests";
    /// Histogram, seconds: how long a `BatchCommands` request waited in its
    /// queue before its message was written. client-go
    /// `tikv_client_go_batch_wait_duration`.
    pub const BATCH_WAIT: &str = "tikv_client_batch_wait_seconds";
    /// Gauge: `BatchCommands` requests of one store address queued or
    /// sent and not yet answered. Label `addr` (the store's address: the
    /// transport knows no store id). client-go
    /// `tikv_client_go_pending_batch_requests` (its queue only).
    pub const BATCH_PENDING: &str = "tikv_client_batch_pending_requests";
    /// Histogram: callers served by one PD `Tso` round. client-go/PD
    /// `pd_client_request_handle_tso_batch_size`.
    pub const TSO_BATCH_SIZE: &str = "tikv_client_tso_batch_size";
    /// Histogram, seconds: a caller's wait for a timestamp. client-go
    /// `tikv_client_go_ts_future_wait_seconds`.
    pub const TSO_WAIT: &str = "tikv_client_tso_wait_seconds";
    /// Histogram, seconds: `Transaction::commit`, start to result. Labels
    /// `mode` (`2pc`, `async_commit`, `1pc`, `none` when it failed) and
    /// `result`. client-go `tikv_client_go_txn_cmd_duration_seconds{type="commit"}`.
    pub const TXN_COMMIT_DURATION: &str = "tikv_client_txn_commit_duration_seconds";
    /// Histogram: keys written by one commit. client-go
    /// `tikv_client_go_txn_write_kv_num`.
    pub const TXN_WRITE_KEYS: &str = "tikv_client_txn_write_keys";
    /// Histogram, bytes: keys and values written by one commit. client-go
    /// `tikv_client_go_txn_write_size_bytes`.
    pub const TXN_WRITE_BYTES: &str = "tikv_client_txn_write_size_bytes";
    /// Counter: transaction RPCs by phase (`prewrite`, `commit`,
    /// `pessimistic_lock`, `rollback`, `heartbeat`, ...) and `result`
    /// (`ok`, `region_error`, `key_error`, `rpc_error`).
    pub const TXN_PHASE: &str = "tikv_client_txn_phase_total";
    /// Counter: lock resolutions by `outcome`: `committed` /
    /// `rolled_back` (`ResolveLock` sent with or without a commit ts),
    /// and the action of `CheckTxnStatus` answers (`ttl_expire_rollback`,
    /// `lock_not_exist_rollback`, `min_commit_ts_pushed`, `alive`, ...).
    /// client-go `tikv_client_go_lock_resolver_actions_total`.
    pub const LOCK_RESOLUTIONS: &str = "tikv_client_lock_resolutions_total";
    /// Counter: background work that failed (the client logs each at
    /// WARN). Label `task`.
    pub const BACKGROUND_FAILURES: &str = "tikv_client_background_failures_total";
}

/// Registers the description and unit of every series in [`names`] with
/// the installed `metrics` recorder (call it once after installing one;
/// recording works without it, exporters then show no help text).
///
/// ```
/// tikv_driver::describe_metrics(); // a no-op without a recorder
/// ```
pub fn describe_metrics() {
    use names::*;
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "RPCs by command and store");
    describe_counter!(RPC_ERRORS, "RPCs that failed in transport, by command, store and kind");
    describe_counter!(REGION_ERRORS, "Region errors in TiKV answers, by kind and store");
    describe_counter!(BACKOFF_SLEEPS, "Backoff sleeps, by backoff kind");
    describe_histogram!(BACKOFF_SECONDS, Unit::Seconds, "Per operation, sleep per backoff kind");
    describe_histogram!(OPERATION_DURATION, Unit::Seconds, "Operations, by kind and result");
    describe_counter!(REGION_CACHE_OPERATIONS, "Region cache loads from PD and invalidations");
    describe_counter!(REGION_CACHE_LOOKUPS, "Region cache lookups, by hit or miss");
    describe_histogram!(BATCH_SIZE, Unit::Count, "Requests per BatchCommands message");
    describe_histogram!(BATCH_WAIT, Unit::Seconds, "Queueing of a BatchCommands request");
    describe_gauge!(BATCH_PENDING, Unit::Count, "BatchCommands requests pending, by address");
    describe_histogram!(TSO_BATCH_SIZE, Unit::Count, "Callers served per PD Tso round");
    describe_histogram!(TSO_WAIT, Unit::Seconds, "A caller's wait for a timestamp");
    describe_histogram!(TXN_COMMIT_DURATION, Unit::Seconds, "Transaction commits, by mode");
    describe_histogram!(TXN_WRITE_KEYS, Unit::Count, "Keys written per commit");
    describe_histogram!(TXN_WRITE_BYTES, Unit::Bytes, "Bytes written per commit");
    describe_counter!(TXN_PHASE, "Transaction RPCs by phase and result");
    describe_counter!(LOCK_RESOLUTIONS, "Lock resolutions, by outcome");
    describe_counter!(BACKGROUND_FAILURES, "Failed background work, by task");
}

/// Records one `BatchCommands` message of `requests` requests, the oldest
/// of which waited `oldest_wait` in the queue (for transports; series
/// [`names::BATCH_SIZE`] and [`names::BATCH_WAIT`]).
///
/// ```
/// // A message of 12 requests whose oldest queued 300 µs (a no-op
/// // without a metrics recorder).
/// tikv_driver::record_batch(12, std::time::Duration::from_micros(300));
/// ```
pub fn record_batch(requests: usize, oldest_wait: Duration) {
    histogram!(names::BATCH_SIZE).record(requests as f64);
    histogram!(names::BATCH_WAIT).record(oldest_wait.as_secs_f64());
}

/// What the loop keeps about one RPC in flight, to report its answer.
pub(crate) struct RpcObserver {
    span: Span,
    cmd: &'static str,
    store: StoreKey,
    facts: RequestFacts,
    sent: Instant,
}

/// What an answer is judged against, taken from the request before the
/// transport consumes it.
#[derive(Clone, Copy)]
enum RequestFacts {
    Other,
    /// A transaction RPC of this phase.
    Txn(&'static str),
    /// `ResolveLock`: `true` when it commits the locks.
    ResolveLock(bool),
    /// A PD region load (a region-cache miss).
    RegionLoad,
}

/// Where an RPC went, as the `store` label names it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum StoreKey {
    Store(u64),
    Pd,
    Oracle,
}

impl StoreKey {
    fn of(target: &Target) -> StoreKey {
        match target {
            Target::Store { store_id, .. } => StoreKey::Store(*store_id),
            Target::Pd { .. } => StoreKey::Pd,
            Target::Oracle => StoreKey::Oracle,
        }
    }

    fn label(self) -> metrics::SharedString {
        match self {
            StoreKey::Store(id) => metrics::SharedString::from(id.to_string()),
            StoreKey::Pd => metrics::SharedString::const_str("pd"),
            StoreKey::Oracle => metrics::SharedString::const_str("oracle"),
        }
    }
}

/// A `&'static str` compared and hashed by address: the label values of
/// the hot series are literals, and a literal duplicated at two addresses
/// only costs a second cache entry for the same series.
#[derive(Clone, Copy)]
struct Literal(&'static str);

impl PartialEq for Literal {
    fn eq(&self, other: &Literal) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}

impl Eq for Literal {}

impl std::hash::Hash for Literal {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_usize(self.0.as_ptr() as usize);
    }
}

/// Hashes the few machine words of a handle key (addresses, a store id):
/// SipHash would cost more than the lookup saves.
#[derive(Default)]
struct WordHasher(u64);

impl std::hash::Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }
}

type WordMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<WordHasher>>;

/// Handles of the series recorded on every RPC or operation, registered
/// once per thread: building a labelled key allocates, and without this a
/// client with no recorder installed would pay that on every RPC. The
/// price: a recorder installed after a thread first recorded a series is
/// not seen by that thread (install it before connecting).
#[derive(Default)]
struct HotHandles {
    requests: WordMap<(Literal, StoreKey), Histogram>,
    histograms: WordMap<(Literal, Literal, Literal), Histogram>,
    counters: WordMap<(Literal, Literal, Literal), Counter>,
}

thread_local! {
    static HOT: std::cell::RefCell<HotHandles> = std::cell::RefCell::new(HotHandles::default());
}

/// `tikv_client_request_duration_seconds{cmd, store}`.
fn request_histogram(cmd: &'static str, store: StoreKey) -> Histogram {
    HOT.with(|hot| {
        hot.borrow_mut()
            .requests
            .entry((Literal(cmd), store))
            .or_insert_with(
                || histogram!(names::REQUEST_DURATION, "cmd" => cmd, "store" => store.label()),
            )
            .clone()
    })
}

/// A label: key and literal value.
type Label = (&'static str, &'static str);

/// The histogram `name{l1, l2}` of literal label values; the label keys
/// are fixed per name, so `name` and the values identify it.
fn hot_histogram(name: &'static str, l1: Label, l2: Label) -> Histogram {
    HOT.with(|hot| {
        hot.borrow_mut()
            .histograms
            .entry((Literal(name), Literal(l1.1), Literal(l2.1)))
            .or_insert_with(|| histogram!(name, l1.0 => l1.1, l2.0 => l2.1))
            .clone()
    })
}

/// The counter `name{l1, l2}`, as [`hot_histogram`].
fn hot_counter(name: &'static str, l1: Label, l2: Label) -> Counter {
    HOT.with(|hot| {
        hot.borrow_mut()
            .counters
            .entry((Literal(name), Literal(l1.1), Literal(l2.1)))
            .or_insert_with(|| counter!(name, l1.0 => l1.1, l2.0 => l2.1))
            .clone()
    })
}

fn facts_of(request: &Request) -> RequestFacts {
    match request {
        Request::Kv(kv) => match kv {
            KvRequest::ResolveLock(r) => RequestFacts::ResolveLock(r.commit_version != 0),
            KvRequest::Prewrite(_) => RequestFacts::Txn("prewrite"),
            KvRequest::Commit(_) => RequestFacts::Txn("commit"),
            KvRequest::BatchRollback(_) => RequestFacts::Txn("rollback"),
            KvRequest::Cleanup(_) => RequestFacts::Txn("cleanup"),
            KvRequest::PessimisticLock(_) => RequestFacts::Txn("pessimistic_lock"),
            KvRequest::PessimisticRollback(_) => RequestFacts::Txn("pessimistic_rollback"),
            KvRequest::TxnHeartBeat(_) => RequestFacts::Txn("heartbeat"),
            KvRequest::CheckTxnStatus(_) => RequestFacts::Txn("check_txn_status"),
            KvRequest::CheckSecondaryLocks(_) => RequestFacts::Txn("check_secondary_locks"),
            _ => RequestFacts::Other,
        },
        Request::Pd(
            PdRequest::GetRegion(_)
            | PdRequest::GetPrevRegion(_)
            | PdRequest::GetRegionById(_)
            | PdRequest::ScanRegions(_)
            | PdRequest::BatchScanRegions(_),
        ) => RequestFacts::RegionLoad,
        _ => RequestFacts::Other,
    }
}

impl RpcObserver {
    /// Opens the RPC's span (a child of the operation's) as it is sent.
    pub(crate) fn sent(rpc: &Rpc, seq: u64, now: Instant) -> RpcObserver {
        let cmd = rpc.request.name();
        let span = if tracing::enabled!(target: "tikv_driver", Level::DEBUG) {
            let ctx = match &rpc.request {
                Request::Kv(kv) => kv.context(),
                _ => None,
            };
            let (store_id, addr) = match &rpc.target {
                Target::Store { store_id, addr, .. } => (*store_id, Some(&**addr)),
                Target::Pd { addr } => (0, Some(&**addr)),
                Target::Oracle => (0, None),
            };
            tracing::debug_span!(
                target: "tikv_driver",
                "tikv_rpc",
                cmd,
                region_id = ctx.map_or(0, |c| c.region_id),
                store_id,
                addr,
                retry = ctx.is_some_and(|c| c.is_retry_request),
                seq,
            )
        } else {
            Span::none()
        };
        RpcObserver {
            span,
            cmd,
            store: StoreKey::of(&rpc.target),
            facts: facts_of(&rpc.request),
            sent: now,
        }
    }

    /// The span to run the transport's call in.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Reports the answer (or failure) of the RPC.
    pub(crate) fn answered(self, result: &Result<Response, RpcError>, now: Instant) {
        let elapsed = now.saturating_duration_since(self.sent);
        let elapsed_us = elapsed.as_micros() as u64;
        let (cmd, store) = (self.cmd, self.store);
        request_histogram(cmd, store).record(elapsed.as_secs_f64());
        let _entered = self.span.enter();
        match result {
            Ok(Response::Kv(resp)) => {
                if let Some(e) = resp.region_error() {
                    let kind = region_error_kind(e);
                    counter!(names::REGION_ERRORS, "kind" => kind, "store" => store.label())
                        .increment(1);
                    if invalidates_region(e) {
                        counter!(names::REGION_CACHE_OPERATIONS, "type" => "invalidate", "result" => kind)
                            .increment(1);
                    }
                    if let RequestFacts::Txn(phase) = self.facts {
                        counter!(names::TXN_PHASE, "phase" => phase, "result" => "region_error")
                            .increment(1);
                    }
                    tracing::debug!(target: "tikv_driver", region_error = kind, elapsed_us, "region error");
                    return;
                }
                match self.facts {
                    RequestFacts::Txn(phase) => {
                        let result = if has_key_error(resp) { "key_error" } else { "ok" };
                        hot_counter(names::TXN_PHASE, ("phase", phase), ("result", result))
                            .increment(1);
                        if let Some(outcome) = check_txn_status_action(resp) {
                            counter!(names::LOCK_RESOLUTIONS, "outcome" => outcome).increment(1);
                        }
                    }
                    RequestFacts::ResolveLock(commit) if !has_key_error(resp) => {
                        let outcome = if commit { "committed" } else { "rolled_back" };
                        counter!(names::LOCK_RESOLUTIONS, "outcome" => outcome).increment(1);
                    }
                    _ => {}
                }
                tracing::trace!(target: "tikv_driver", elapsed_us, "answered");
            }
            Ok(_) => {
                if let RequestFacts::RegionLoad = self.facts {
                    counter!(names::REGION_CACHE_OPERATIONS, "type" => cmd, "result" => "ok")
                        .increment(1);
                }
                tracing::trace!(target: "tikv_driver", elapsed_us, "answered");
            }
            Err(e) => {
                let kind = rpc_error_kind(e);
                counter!(names::RPC_ERRORS, "cmd" => cmd, "store" => store.label(), "kind" => kind)
                    .increment(1);
                match self.facts {
                    RequestFacts::RegionLoad => {
                        counter!(names::REGION_CACHE_OPERATIONS, "type" => cmd, "result" => "err")
                            .increment(1);
                    }
                    RequestFacts::Txn(phase) => {
                        counter!(names::TXN_PHASE, "phase" => phase, "result" => "rpc_error")
                            .increment(1);
                    }
                    _ => {}
                }
                tracing::debug!(target: "tikv_driver", error = %e, elapsed_us, "rpc failed");
            }
        }
    }
}

fn has_key_error(resp: &KvResponse) -> bool {
    match resp {
        KvResponse::Prewrite(r) => !r.errors.is_empty(),
        KvResponse::Commit(r) => r.error.is_some(),
        KvResponse::BatchRollback(r) => r.error.is_some(),
        KvResponse::Cleanup(r) => r.error.is_some(),
        KvResponse::PessimisticLock(r) => !r.errors.is_empty(),
        KvResponse::PessimisticRollback(r) => !r.errors.is_empty(),
        KvResponse::TxnHeartBeat(r) => r.error.is_some(),
        KvResponse::CheckTxnStatus(r) => r.error.is_some(),
        KvResponse::CheckSecondaryLocks(r) => r.error.is_some(),
        KvResponse::ResolveLock(r) => r.error.is_some(),
        _ => false,
    }
}

/// The lock-resolution outcome a `CheckTxnStatus` answer reports (client-go
/// counts these actions in `lock_resolver_actions_total`).
fn check_txn_status_action(resp: &KvResponse) -> Option<&'static str> {
    let KvResponse::CheckTxnStatus(r) = resp else { return None };
    if r.error.is_some() {
        return None;
    }
    Some(match kvrpcpb::Action::try_from(r.action).unwrap_or(kvrpcpb::Action::NoAction) {
        kvrpcpb::Action::NoAction if r.commit_version != 0 => "committed",
        kvrpcpb::Action::NoAction if r.lock_ttl != 0 => "alive",
        kvrpcpb::Action::NoAction => "rolled_back",
        kvrpcpb::Action::TtlExpireRollback => "ttl_expire_rollback",
        kvrpcpb::Action::LockNotExistRollback => "lock_not_exist_rollback",
        kvrpcpb::Action::MinCommitTsPushed => "min_commit_ts_pushed",
        kvrpcpb::Action::TtlExpirePessimisticRollback => "ttl_expire_pessimistic_rollback",
        kvrpcpb::Action::LockNotExistDoNothing => "lock_not_exist_do_nothing",
    })
}

/// Region errors after which the client drops (or re-checks) the cached
/// region (the `Relocate`/`EpochNotMatch` rows of core's region-error
/// table).
fn invalidates_region(e: &errorpb::Error) -> bool {
    e.epoch_not_match.is_some()
        || e.region_not_found.is_some()
        || e.key_not_in_region.is_some()
        || e.store_not_match.is_some()
        || e.recovery_in_progress.is_some()
        || e.mismatch_peer_id.is_some()
        || e.is_witness.is_some()
}

/// client-go's label for a region error (`regionErrorToLabel`).
pub(crate) fn region_error_kind(e: &errorpb::Error) -> &'static str {
    let kinds: [(bool, &'static str); 21] = [
        (e.not_leader.is_some(), "not_leader"),
        (e.region_not_found.is_some(), "region_not_found"),
        (e.key_not_in_region.is_some(), "key_not_in_region"),
        (e.epoch_not_match.is_some(), "epoch_not_match"),
        (e.server_is_busy.is_some(), "server_is_busy"),
        (e.stale_command.is_some(), "stale_command"),
        (e.store_not_match.is_some(), "store_not_match"),
        (e.raft_entry_too_large.is_some(), "raft_entry_too_large"),
        (e.max_timestamp_not_synced.is_some(), "max_timestamp_not_synced"),
        (e.read_index_not_ready.is_some(), "read_index_not_ready"),
        (e.proposal_in_merging_mode.is_some(), "proposal_in_merging_mode"),
        (e.data_is_not_ready.is_some(), "data_is_not_ready"),
        (e.region_not_initialized.is_some(), "region_not_initialized"),
        (e.disk_full.is_some(), "disk_full"),
        (e.recovery_in_progress.is_some(), "recovery_in_progress"),
        (e.flashback_in_progress.is_some(), "flashback_in_progress"),
        (e.flashback_not_prepared.is_some(), "flashback_not_prepared"),
        (e.is_witness.is_some(), "is_witness"),
        (e.mismatch_peer_id.is_some(), "mismatch_peer_id"),
        (e.bucket_version_not_match.is_some(), "bucket_version_not_match"),
        (e.undetermined_result.is_some(), "undetermined_result"),
    ];
    kinds.iter().find(|(set, _)| *set).map_or("unknown", |(_, kind)| kind)
}

fn rpc_error_kind(e: &RpcError) -> &'static str {
    match e {
        RpcError::Unavailable(_) => "unavailable",
        RpcError::DeadlineExceeded => "deadline_exceeded",
        RpcError::Canceled => "canceled",
        RpcError::Decode(_) => "decode",
        RpcError::Unimplemented(_) => "unimplemented",
        RpcError::Status { .. } => "status",
        RpcError::Mismatch => "mismatch",
        RpcError::NoTimestamp(_) => "no_timestamp",
        _ => "other",
    }
}

/// The variant name of `e` (`WriteConflict`, `BackoffExhausted`, ...), the
/// outcome label of a failed operation.
pub(crate) fn error_kind(e: &Error) -> String {
    let debug = format!("{e:?}");
    let end = debug.find(|c: char| !c.is_alphanumeric() && c != '_').unwrap_or(debug.len());
    debug[..end].to_owned()
}

/// The span of one operation of the public API.
pub(crate) fn operation_span(kind: &'static str) -> Span {
    tracing::debug_span!(target: "tikv_driver", "tikv_op", kind)
}

/// Reports an operation's end inside its span: its duration and outcome.
pub(crate) fn operation_finished<T>(
    kind: &'static str,
    span: &Span,
    elapsed: Duration,
    result: &Result<T, Error>,
) {
    let _entered = span.enter();
    let elapsed_ms = elapsed.as_secs_f64() * 1e3;
    match result {
        Ok(_) => {
            hot_histogram(names::OPERATION_DURATION, ("kind", kind), ("result", "ok"))
                .record(elapsed.as_secs_f64());
            tracing::debug!(target: "tikv_driver", outcome = "ok", elapsed_ms, "operation finished");
        }
        Err(e) => {
            let outcome = error_kind(e);
            histogram!(names::OPERATION_DURATION, "kind" => kind, "result" => outcome.clone())
                .record(elapsed.as_secs_f64());
            tracing::warn!(target: "tikv_driver", outcome, error = %e, elapsed_ms, "operation failed");
        }
    }
}

/// Reports the sleeps one budget of an ended operation took, by kind, in
/// the operation's span.
pub(crate) fn backoff_slept(span: &Span, bo: &Backoffer) {
    let _entered = span.enter();
    if bo.total_sleep().is_zero() && !bo.has_attempts() {
        return;
    }
    for KindSleeps { kind, sleeps, slept } in bo.sleeps_by_kind() {
        let label = backoff_label(kind);
        counter!(names::BACKOFF_SLEEPS, "kind" => label).increment(u64::from(sleeps));
        histogram!(names::BACKOFF_SECONDS, "kind" => label).record(slept.as_secs_f64());
        tracing::debug!(
            target: "tikv_driver",
            backoff = label,
            sleeps,
            slept_ms = slept.as_millis() as u64,
            "backoff"
        );
    }
}

/// client-go's backoff type names (`retry.BoRegionMiss` is `regionMiss`).
fn backoff_label(kind: BackoffKind) -> &'static str {
    match kind {
        BackoffKind::TikvRpc => "tikvRPC",
        BackoffKind::TxnLock => "txnLock",
        BackoffKind::TxnLockFast => "txnLockFast",
        BackoffKind::PdRpc => "pdRPC",
        BackoffKind::RegionMiss => "regionMiss",
        BackoffKind::RegionScheduling => "regionScheduling",
        BackoffKind::ServerBusy => "tikvServerBusy",
        BackoffKind::DiskFull => "tikvDiskFull",
        BackoffKind::RegionRecoveryInProgress => "regionRecoveryInProgress",
        BackoffKind::TxnNotFound => "txnNotFound",
        BackoffKind::StaleCommand => "staleCommand",
        BackoffKind::MaxTsNotSynced => "maxTsNotSynced",
        BackoffKind::RegionNotInitialized => "regionNotInitialized",
        BackoffKind::CommitTsLag => "commitTsLag",
    }
}

/// Adds the region-cache lookups counted since `exported` to
/// [`names::REGION_CACHE_LOOKUPS`]; returns the new totals, to pass next
/// time. Per client: several clients in one process add to one series.
pub(crate) fn region_cache_lookups(now: LookupCounts, exported: LookupCounts) -> LookupCounts {
    let new = now.since(exported);
    if new.hits > 0 {
        counter!(names::REGION_CACHE_LOOKUPS, "result" => "hit").increment(new.hits);
    }
    if new.misses > 0 {
        counter!(names::REGION_CACHE_LOOKUPS, "result" => "miss").increment(new.misses);
    }
    now
}

/// The [`names::BATCH_PENDING`] gauge of one store address, for
/// transports: set it whenever the count may have changed (under the lock
/// that guards the count, so that sets land in order); only changes reach
/// the recorder, and it drops to zero with the handle.
///
/// ```
/// let pending = tikv_driver::PendingRequests::of("127.0.0.1:20160");
/// pending.set(3); // a no-op without a metrics recorder
/// ```
pub struct PendingRequests {
    gauge: Gauge,
    last: std::sync::atomic::AtomicUsize,
}

impl PendingRequests {
    /// The gauge of `addr`.
    ///
    /// ```
    /// let pending = tikv_driver::PendingRequests::of("10.0.0.7:20160");
    /// # drop(pending);
    /// ```
    pub fn of(addr: &str) -> PendingRequests {
        PendingRequests {
            gauge: gauge!(names::BATCH_PENDING, "addr" => addr.to_owned()),
            last: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Records `pending` requests.
    ///
    /// ```
    /// let pending = tikv_driver::PendingRequests::of("10.0.0.7:20160");
    /// pending.set(12); // 12 requests queued or awaiting their answers
    /// pending.set(0);
    /// ```
    pub fn set(&self, pending: usize) {
        if self.last.swap(pending, std::sync::atomic::Ordering::Relaxed) != pending {
            self.gauge.set(pending as f64);
        }
    }
}

impl Drop for PendingRequests {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// Logs (WARN) and counts a failure of background work the caller does not
/// wait for: client-go logs these too, and a reader resolves whatever they
/// leave, but an operator must be able to see them.
pub(crate) fn background_failed(task: &'static str, error: &Error) {
    counter!(names::BACKGROUND_FAILURES, "task" => task).increment(1);
    tracing::warn!(target: "tikv_driver", task, error = %error, "background work failed");
}

/// Logs (INFO, as client-go) each store a `BroadcastTxnStatus` did not
/// reach: the broadcast is best effort.
pub(crate) fn broadcast_failures(outcome: &tikv_core::txn::pipelined::BroadcastOutcome) {
    for (store_id, why) in &outcome.failed {
        tracing::info!(target: "tikv_driver", store_id, error = %why, "broadcast txn status failed");
    }
}

/// Reports a background result: nothing on success, a WARN on failure.
pub(crate) fn background_result<T>(task: &'static str, result: &Result<T, Error>) {
    if let Err(e) = result {
        background_failed(task, e);
    }
}

/// The size of a transaction's writes, for the commit series.
pub(crate) struct WriteSize {
    keys: usize,
    bytes: usize,
}

impl WriteSize {
    /// Keys and key + value bytes of `mutations` (client-go counts the
    /// same in `txn_write_kv_num` / `txn_write_size_bytes`).
    pub(crate) fn of(mutations: &[tikv_core::txn::commit::Mutation]) -> WriteSize {
        let bytes = mutations.iter().map(|m| m.key.as_bytes().len() + m.value.len()).sum();
        WriteSize { keys: mutations.len(), bytes }
    }
}

/// Records a transaction commit: its mode, duration and size.
pub(crate) fn commit_finished(
    size: &WriteSize,
    elapsed: Duration,
    result: &Result<tikv_core::txn::commit::CommitOutcome, Error>,
) {
    use tikv_core::txn::commit::CommitMode;
    let duration = match result {
        Ok(o) => {
            let mode = match o.mode {
                CommitMode::TwoPhase => "2pc",
                CommitMode::AsyncCommit => "async_commit",
                CommitMode::OnePhase => "1pc",
            };
            hot_histogram(names::TXN_COMMIT_DURATION, ("mode", mode), ("result", "ok"))
        }
        Err(e) => {
            histogram!(names::TXN_COMMIT_DURATION, "mode" => "none", "result" => error_kind(e))
        }
    };
    duration.record(elapsed.as_secs_f64());
    histogram!(names::TXN_WRITE_KEYS).record(size.keys as f64);
    histogram!(names::TXN_WRITE_BYTES).record(size.bytes as f64);
}
