//! Properties of the core's state machines over arbitrary inputs, shared by
//! the cargo-fuzz targets in `fuzz/` (coverage-guided, nightly) and the
//! stable `tests/tests/properties.rs` (bounded random runs with arbtest).
//!
//! Each function takes an [`Unstructured`] and panics when a property is
//! broken; running out of bytes just ends the input early.

use std::collections::BTreeSet;
use std::sync::Arc;

use arbitrary::{Result, Unstructured};
use bytes::Bytes;
use tikv_core::codec::{ApiCodec, Mode};
use tikv_core::config::Config;
use tikv_core::error::Error;
use tikv_core::key::{Key, KeyRange, KvPair, ScanSpec};
use tikv_core::op::Operation;
use tikv_core::pd::{PdState, TsoBatcher, TsoRound, TsoRoundCallers, TsoRoundEnd};
use tikv_core::raw::{self, RawOptions};
use tikv_core::region::{RegionCache, RegionVerId};
use tikv_core::rpc::{
    KvRequest, KvResponse, PdRequest, PdResponse, Request, Response, Rpc, RpcError, Target,
};
use tikv_core::time::{Duration, Instant};
use tikv_core::view::ClusterView;
use tikv_proto::{errorpb, kvrpcpb, metapb, pdpb};
use tikv_sim::world::faults::{Fault, Plan, Swarm, TxnParams};
use tikv_sim::world::txn_history::TxnKeys;
use tikv_sim::world::{self, Workload, WorldConfig};

mod txn;
pub use txn::{committer, lock_resolver};

const PD: &str = "pd1:2379";
/// Inputs fed to one machine at most; a machine still running then has been
/// fed nothing but trouble, which is allowed to last.
const MAX_INPUTS: usize = 300;
/// RPCs one input may produce at most: more means a retry storm.
const MAX_RPCS_PER_INPUT: usize = 64;

fn small_key(u: &mut Unstructured<'_>) -> Result<Bytes> {
    Ok(Bytes::from(format!("k{}", u.int_in_range(0..=5u8)?)))
}

fn opt_key(u: &mut Unstructured<'_>) -> Result<Bytes> {
    // Empty means unbounded (as a start: the beginning; as an end: the end).
    if u.ratio(1, 4)? { Ok(Bytes::new()) } else { small_key(u) }
}

fn region(u: &mut Unstructured<'_>) -> Result<metapb::Region> {
    let (a, b) = (opt_key(u)?, opt_key(u)?);
    let (start, end) = if !b.is_empty() && a > b { (b, a) } else { (a, b) };
    let stores = u.int_in_range(1..=3u64)?;
    Ok(metapb::Region {
        id: u.int_in_range(1..=6u64)?,
        start_key: start,
        end_key: end,
        region_epoch: if u.ratio(1, 16)? {
            None
        } else {
            Some(metapb::RegionEpoch {
                conf_ver: u.int_in_range(1..=2)?,
                version: u.int_in_range(1..=5)?,
            })
        },
        peers: (1..=stores)
            .map(|s| metapb::Peer { id: 100 + s, store_id: s, ..Default::default() })
            .collect(),
        ..Default::default()
    })
}

fn region_error(u: &mut Unstructured<'_>) -> Result<Option<errorpb::Error>> {
    let mut e = errorpb::Error { message: "fuzz".into(), ..Default::default() };
    match u.int_in_range(0..=9u8)? {
        0..=3 => return Ok(None),
        4 => {
            e.not_leader = Some(errorpb::NotLeader {
                region_id: u.int_in_range(1..=6)?,
                leader: u.ratio(1, 2)?.then(|| metapb::Peer {
                    id: 101,
                    store_id: 1,
                    ..Default::default()
                }),
            })
        }
        5 => {
            let n = u.int_in_range(0..=2)?;
            let mut current = Vec::new();
            for _ in 0..n {
                current.push(region(u)?);
            }
            e.epoch_not_match = Some(errorpb::EpochNotMatch { current_regions: current })
        }
        6 => e.server_is_busy = Some(errorpb::ServerIsBusy::default()),
        7 => e.region_not_found = Some(errorpb::RegionNotFound { region_id: 1 }),
        8 => e.key_not_in_region = Some(errorpb::KeyNotInRegion::default()),
        _ => {}
    }
    Ok(Some(e))
}

/// A plausible (typed, but otherwise arbitrary) answer to `rpc`, recording
/// every value it hands out in `fed`.
fn answer(
    u: &mut Unstructured<'_>,
    rpc: &Rpc,
    fed: &mut Fed,
) -> Result<Result<Response, RpcError>> {
    answer_in(u, rpc, fed, false)
}

/// A region as PD describes it to a client in txn mode (`txn`: boundaries
/// memcomparable-encoded) or raw mode.
fn region_for(u: &mut Unstructured<'_>, txn: bool) -> Result<metapb::Region> {
    let mut r = region(u)?;
    if txn {
        let enc = |k: &Bytes| {
            if k.is_empty() {
                k.clone()
            } else {
                Bytes::from(tikv_core::key::memcomparable::encode_bytes(k))
            }
        };
        r.start_key = enc(&r.start_key);
        r.end_key = enc(&r.end_key);
    }
    Ok(r)
}

/// [`answer`] for a client in txn mode (`txn`) or raw mode.
fn answer_in(
    u: &mut Unstructured<'_>,
    rpc: &Rpc,
    fed: &mut Fed,
    txn: bool,
) -> Result<Result<Response, RpcError>> {
    if u.ratio(1, 8)? {
        return Ok(Err(match u.int_in_range(0..=2u8)? {
            0 => RpcError::Unavailable("fuzz".into()),
            1 => RpcError::DeadlineExceeded,
            _ => RpcError::Canceled,
        }));
    }
    let header = || Some(pdpb::ResponseHeader { cluster_id: 7, error: None });
    Ok(Ok(match &rpc.request {
        Request::Pd(PdRequest::GetMembers(_)) => {
            Response::Pd(PdResponse::GetMembers(Box::new(pdpb::GetMembersResponse {
                header: header(),
                leader: u
                    .ratio(7, 8)?
                    .then(|| pdpb::Member { client_urls: vec![PD.into()], ..Default::default() }),
                ..Default::default()
            })))
        }
        Request::Pd(PdRequest::GetRegion(_)) | Request::Pd(PdRequest::GetPrevRegion(_)) => {
            let r = if u.ratio(1, 8)? { None } else { Some(region_for(u, txn)?) };
            let leader = r.as_ref().and_then(|r| r.peers.first().copied());
            let resp = pdpb::GetRegionResponse {
                header: header(),
                region: r,
                leader,
                ..Default::default()
            };
            Response::Pd(match &rpc.request {
                Request::Pd(PdRequest::GetRegion(_)) => PdResponse::GetRegion(Box::new(resp)),
                _ => PdResponse::GetPrevRegion(Box::new(resp)),
            })
        }
        Request::Pd(PdRequest::BatchScanRegions(_)) => {
            let mut regions = Vec::new();
            for _ in 0..u.int_in_range(0..=3)? {
                let r = region_for(u, txn)?;
                regions.push(pdpb::Region {
                    leader: r.peers.first().copied(),
                    region: Some(r),
                    ..Default::default()
                });
            }
            Response::Pd(PdResponse::BatchScanRegions(Box::new(pdpb::BatchScanRegionsResponse {
                header: header(),
                regions,
            })))
        }
        Request::Pd(PdRequest::GetStore(r)) => {
            Response::Pd(PdResponse::GetStore(Box::new(pdpb::GetStoreResponse {
                header: header(),
                store: u.ratio(7, 8)?.then(|| metapb::Store {
                    id: r.store_id,
                    address: format!("store{}:20160", r.store_id),
                    ..Default::default()
                }),
                ..Default::default()
            })))
        }
        Request::Pd(PdRequest::Tso(req)) => {
            // PD's clock mostly moves forward.
            fed.physical += i64::from(u.int_in_range(0..=40u8)?);
            Response::Pd(PdResponse::Tso(Box::new(pdpb::TsoResponse {
                header: header(),
                count: req.count,
                timestamp: Some(pdpb::Timestamp {
                    physical: fed.physical,
                    logical: i64::from(u.int_in_range(0..=3u8)?),
                    suffix_bits: 0,
                }),
            })))
        }
        Request::Timestamp => {
            // The client's oracle: a timestamp from a clock that mostly
            // moves forward, or the error its round ended with.
            if u.ratio(1, 10)? {
                let e = Error::NoPdLeader("fuzz".into());
                return Ok(Err(RpcError::NoTimestamp(Box::new(e))));
            }
            fed.physical += i64::from(u.int_in_range(0..=40u8)?);
            let logical = i64::from(u.int_in_range(0..=3u8)?);
            Response::Timestamp(tikv_core::pd::Timestamp::compose(fed.physical, logical))
        }
        Request::Pd(other) => {
            return Ok(Err(RpcError::Unimplemented(format!("{} not fuzzed", other.name()))));
        }
        Request::HealthCheck => Response::HealthCheck(tikv_proto::health::HealthCheckResponse {
            status: u.int_in_range(0..=4)?,
        }),
        Request::StoreSafeTs(_) => {
            Response::StoreSafeTs(Box::new(tikv_proto::kvrpcpb::StoreSafeTsResponse {
                safe_ts: u.arbitrary()?,
            }))
        }
        Request::Kv(req) => {
            let mut resp = req.response_template();
            let value = |u: &mut Unstructured<'_>, fed: &mut Fed| -> Result<Bytes> {
                let v = Bytes::from(format!("v{}", u.int_in_range(0..=9u8)?));
                fed.values.insert(v.clone());
                Ok(v)
            };
            let error = if u.ratio(1, 10)? { "fuzz error".to_string() } else { String::new() };
            match &mut resp {
                KvResponse::RawGet(r) => {
                    r.not_found = u.ratio(1, 3)?;
                    if !r.not_found {
                        r.value = value(u, fed)?;
                    }
                    r.error = error;
                }
                KvResponse::RawBatchGet(r) => {
                    if let KvRequest::RawBatchGet(q) = req {
                        for k in &q.keys {
                            if u.ratio(1, 2)? {
                                r.pairs.push(kvrpcpb::KvPair {
                                    key: k.clone(),
                                    value: value(u, fed)?,
                                    ..Default::default()
                                });
                            }
                        }
                    }
                }
                KvResponse::RawScan(r) => {
                    for _ in 0..u.int_in_range(0..=3)? {
                        r.kvs.push(kvrpcpb::KvPair {
                            key: small_key(u)?,
                            value: value(u, fed)?,
                            ..Default::default()
                        });
                    }
                }
                KvResponse::RawPut(r) => r.error = error,
                KvResponse::RawBatchPut(r) => r.error = error,
                KvResponse::RawDelete(r) => r.error = error,
                KvResponse::RawCompareAndSwap(r) => {
                    r.succeed = u.ratio(1, 2)?;
                    r.previous_not_exist = u.ratio(1, 3)?;
                    if !r.previous_not_exist {
                        r.previous_value = value(u, fed)?;
                    }
                    r.error = error;
                }
                _ => {}
            }
            let region_error = region_error(u)?;
            let clean = region_error.is_none();
            if let Some(e) = region_error {
                set_region_error(&mut resp, e);
            }
            // Now and then the wrong command altogether.
            if u.ratio(1, 32)? {
                resp = KvResponse::RawChecksum(Default::default());
            }
            let clean_write = clean
                && match &resp {
                    KvResponse::RawPut(r) => r.error.is_empty(),
                    KvResponse::RawBatchPut(r) => r.error.is_empty(),
                    KvResponse::RawDelete(r) => r.error.is_empty(),
                    KvResponse::RawCompareAndSwap(r) => r.error.is_empty(),
                    _ => false,
                };
            if clean_write {
                fed.clean_writes += 1;
            }
            Response::Kv(resp)
        }
    }))
}

/// Puts `e` into the response's `region_error` (a store RPC has none: left as is).
fn set_region_error(resp: &mut KvResponse, e: errorpb::Error) {
    if let Some(field) = resp.region_error_mut() {
        *field = Some(e);
    }
}

/// What the fuzzer handed to an operation, for honesty checks.
#[derive(Default)]
struct Fed {
    values: BTreeSet<Bytes>,
    clean_writes: usize,
    /// PD's TSO clock (physical milliseconds) for TSO answers.
    physical: i64,
}

fn view(seed: u64) -> Arc<ClusterView> {
    let config = Config::default().with_pd_endpoints([PD]).with_rng_seed(seed);
    let pd = Arc::new(PdState::new(config.pd_endpoints.clone()));
    Arc::new(ClusterView::new(config, ApiCodec::v1(Mode::Raw), pd))
}

/// Drives `op` with arbitrary events; returns its result if it finished.
fn drive<O: Operation>(
    u: &mut Unstructured<'_>,
    op: O,
    fed: &mut Fed,
) -> Result<Option<Result<O::Output, Error>>> {
    let mut answer_fn = |u: &mut Unstructured<'_>, rpc: &Rpc, fresh: bool| {
        let before = fed.clean_writes;
        let a = answer(u, rpc, fed);
        if !fresh {
            fed.clean_writes = before;
        }
        a
    };
    Ok(drive_with(u, op, &mut answer_fn)?.result)
}

/// How a driven machine's run went.
struct Driven<T> {
    /// Its result, if it finished.
    result: Option<Result<T, Error>>,
    /// Every RPC it sent, with the outcome it was fed for it (`None` while
    /// unanswered). Duplicates and stale answers are not listed.
    rpcs: Vec<(Rpc, Option<Result<Response, RpcError>>)>,
    /// Virtual time that passed while nothing was in flight: the machine
    /// was only sleeping (backoff) or waiting for its own timer.
    slept: Duration,
}

/// Answers an RPC; `fresh` is false for a duplicate or stale answer (which
/// the machine must ignore, so it proves nothing).
type AnswerFn<'a> =
    dyn FnMut(&mut Unstructured<'_>, &Rpc, bool) -> Result<Result<Response, RpcError>> + 'a;

/// Drives `op` with arbitrary events, answering with `answer`.
fn drive_with<O: Operation>(
    u: &mut Unstructured<'_>,
    mut op: O,
    answer: &mut AnswerFn<'_>,
) -> Result<Driven<O::Output>> {
    let mut driven = Driven { result: None, rpcs: Vec::new(), slept: Duration::ZERO };
    let mut now = Instant::ZERO;
    let mut outstanding: Vec<Rpc> = Vec::new();
    let mut answered: Vec<Rpc> = Vec::new();
    op.start(now);
    for _ in 0..MAX_INPUTS {
        let mut emitted = 0;
        while let Some(rpc) = op.poll_rpc() {
            emitted += 1;
            assert!(emitted <= MAX_RPCS_PER_INPUT, "retry storm: {emitted} RPCs from one input");
            if let Target::Store { store_id, .. } = rpc.target {
                assert!(
                    (1..=3).contains(&store_id),
                    "RPC to store {store_id}, which PD never named"
                );
            }
            assert!(rpc.deadline >= now, "deadline in the past");
            driven.rpcs.push((rpc.clone(), None));
            outstanding.push(rpc);
        }
        if let Some(result) = op.poll_result() {
            driven.result = Some(result);
            return Ok(driven);
        }
        let timeout = op.poll_timeout();
        assert!(
            !outstanding.is_empty() || timeout.is_some(),
            "stalled: nothing in flight, no timer, no result"
        );
        if u.is_empty() {
            return Ok(driven);
        }
        let record =
            |driven: &mut Driven<O::Output>, rpc: &Rpc, resp: &Result<Response, RpcError>| {
                if let Some(slot) =
                    driven.rpcs.iter_mut().rev().find(|(r, a)| r.id == rpc.id && a.is_none())
                {
                    slot.1 = Some(resp.clone());
                }
            };
        match u.int_in_range(0..=9u8)? {
            // Answer an outstanding RPC (the most common event).
            0..=6 if !outstanding.is_empty() => {
                let i = u.choose_index(outstanding.len())?;
                let rpc = outstanding.swap_remove(i);
                now += Duration::from_micros(u.int_in_range(0..=5000)?);
                let resp = answer(u, &rpc, true)?;
                record(&mut driven, &rpc, &resp);
                op.on_response(rpc.id, resp, now);
                answered.push(rpc);
            }
            // A duplicate or stale answer: must be ignored.
            7 if !answered.is_empty() => {
                let i = u.choose_index(answered.len())?;
                let rpc = answered[i].clone();
                let resp = answer(u, &rpc, false)?;
                op.on_response(rpc.id, resp, now);
            }
            // Time passes to the timer (or jumps arbitrarily).
            _ => {
                let jump = Duration::from_millis(u.int_in_range(0..=3000)?);
                let to = timeout.map_or(now + jump, |t| t.max(now));
                if outstanding.is_empty() {
                    driven.slept += to.saturating_duration_since(now);
                }
                now = to;
                // Deadlines the world would enforce.
                let expired: Vec<Rpc> =
                    outstanding.iter().filter(|r| r.deadline <= now).cloned().collect();
                outstanding.retain(|r| r.deadline > now);
                for rpc in expired {
                    let resp = Err(RpcError::DeadlineExceeded);
                    record(&mut driven, &rpc, &resp);
                    op.on_response(rpc.id, resp, now);
                    answered.push(rpc);
                }
                op.on_timeout(now);
            }
        }
    }
    Ok(driven)
}

/// A raw operation fed arbitrary responses, errors, duplicates, timeouts
/// and time jumps: it never panics, never storms, never stalls, and what it
/// reports is backed by what it was told.
pub fn raw_op_events(u: &mut Unstructured<'_>) -> Result<()> {
    let view = view(u.arbitrary()?);
    let opts = RawOptions::default().with_atomic(true);
    let mut fed = Fed::default();
    let key = Key::new(small_key(u)?);
    match u.int_in_range(0..=5u8)? {
        0 => {
            if let Some(Ok(Some(v))) = drive(u, raw::get(&view, key, &opts), &mut fed)? {
                assert!(fed.values.contains(&v), "get returned {v:?}, which no response carried");
            }
        }
        1 => {
            let keys = vec![key, Key::new(small_key(u)?), Key::new(small_key(u)?)];
            if let Some(Ok(pairs)) = drive(u, raw::batch_get(&view, keys, &opts), &mut fed)? {
                for p in pairs {
                    assert!(fed.values.contains(&p.value), "batch_get invented {:?}", p.value);
                }
            }
        }
        2 => {
            let put = raw::put(&view, KvPair::new(key, "new"), 0, &opts);
            if let Some(Ok(())) = drive(u, put, &mut fed)? {
                assert!(fed.clean_writes > 0, "put succeeded without a clean answer");
            }
        }
        3 => {
            let cas = raw::compare_and_swap(&view, key, None, Bytes::from("new"), 0, &opts)
                .expect("atomic mode");
            if let Some(Ok(outcome)) = drive(u, cas, &mut fed)? {
                assert!(fed.clean_writes > 0, "CAS succeeded without a clean answer");
                if let Some(prev) = outcome.previous {
                    assert!(fed.values.contains(&prev), "CAS invented {prev:?}");
                }
            }
        }
        4 => {
            let range = KeyRange::new(Key::new(opt_key(u)?), Key::EMPTY);
            let scan = raw::scan(
                &view,
                range,
                ScanSpec {
                    limit: u.int_in_range(1..=5)?,
                    reverse: u.arbitrary()?,
                    key_only: false,
                },
                &opts,
            )
            .expect("limit within bounds");
            if let Some(Ok(pairs)) = drive(u, scan, &mut fed)? {
                for p in pairs {
                    assert!(fed.values.contains(&p.value), "scan invented {:?}", p.value);
                }
            }
        }
        _ => {
            if let Some(Ok(())) = drive(u, raw::delete(&view, key, &opts), &mut fed)? {
                assert!(fed.clean_writes > 0, "delete succeeded without a clean answer");
            }
        }
    }
    Ok(())
}

/// Region cache against a simple model: arbitrary inserts, invalidations
/// and lookups. The cache never holds overlapping regions, a lookup's
/// region contains its key, and lookups agree with the model (the last
/// accepted insert covering the key, unless invalidated since).
pub fn region_cache(u: &mut Unstructured<'_>) -> Result<()> {
    let now = Instant::ZERO;
    let cache = RegionCache::new(Duration::from_secs(600), Duration::ZERO, 1);
    // The model: accepted regions and whether each is still valid.
    let mut model: Vec<(metapb::Region, RegionVerId, bool)> = Vec::new();
    let overlaps = |a: &metapb::Region, b: &metapb::Region| {
        (a.end_key.is_empty() || b.start_key < a.end_key)
            && (b.end_key.is_empty() || a.start_key < b.end_key)
    };
    while !u.is_empty() {
        match u.int_in_range(0..=3u8)? {
            0 | 1 => {
                let r = region(u)?;
                let ver = RegionVerId::of(&r);
                let leader = r.peers.first().copied();
                if cache.insert(r.clone(), leader, now).is_ok() {
                    model.retain(|(m, mv, _)| mv.id != ver.id && !overlaps(m, &r));
                    model.push((r, ver, true));
                }
            }
            2 if !model.is_empty() => {
                let i = u.choose_index(model.len())?;
                cache.invalidate(model[i].1, tikv_core::region::InvalidReason::Other);
                model[i].2 = false;
            }
            _ => {
                let k = small_key(u)?;
                let got = cache.locate_key(&k, now);
                if let Some(r) = &got {
                    assert!(r.contains(&k), "{:?} does not contain {k:?}", r.ver_id());
                }
                let covering = |m: &metapb::Region| {
                    k >= m.start_key && (m.end_key.is_empty() || k < m.end_key)
                };
                let want =
                    model.iter().find(|(m, _, valid)| *valid && covering(m)).map(|(_, v, _)| *v);
                assert_eq!(
                    got.map(|r| r.ver_id()),
                    want,
                    "lookup of {k:?} disagrees with the model"
                );
            }
        }
        let snapshot = cache.snapshot();
        for w in snapshot.windows(2) {
            let (a, b) = (&w[0].to_meta(), &w[1].to_meta());
            assert!(
                !overlaps(a, b),
                "cached regions overlap: {:?} and {:?}",
                w[0].ver_id(),
                w[1].ver_id()
            );
        }
    }
    Ok(())
}

/// The TSO batcher with several rounds in flight, fed arbitrary PD answers
/// (clocks going back, wrong counts, failures) in an arbitrary interleaving
/// across its rounds, with callers giving up: no more rounds are out than
/// allowed, the timestamps it hands out strictly increase in the order
/// handed out, every caller is answered at most once, a caller that gave up
/// before its round left is never asked for, and a requeued round's callers
/// are served later.
pub fn tso_batcher(u: &mut Unstructured<'_>) -> Result<()> {
    /// A round in flight: the machine, its callers, its outstanding RPCs.
    struct Flight {
        round: TsoRound,
        callers: TsoRoundCallers<u32>,
        rpcs: Vec<Rpc>,
    }
    let pd = Arc::new(PdState::new([PD]));
    let max_in_flight = u.int_in_range(1..=4usize)?;
    let config = Config::default()
        .with_pd_endpoints([PD])
        .with_pd_timeout(Duration::from_secs(1))
        .with_tso_max_rounds_in_flight(max_in_flight);
    let view = Arc::new(ClusterView::new(config, ApiCodec::v1(Mode::Txn), pd));
    let mut tso = TsoBatcher::new(view, u.arbitrary()?);
    let mut now = Instant::ZERO;
    let mut gave_up: BTreeSet<u32> = BTreeSet::new();
    let mut next_caller = 0u32;
    let mut answered: BTreeSet<u32> = BTreeSet::new();
    let mut flights: Vec<Flight> = Vec::new();
    let mut last: Option<u64> = None;
    let mut physical: i64 = 1000;
    for _ in 0..MAX_INPUTS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=5u8)? {
            0 | 1 => {
                for _ in 0..u.int_in_range(1..=4u8)? {
                    tso.enqueue(next_caller);
                    next_caller += 1;
                }
                if next_caller > 0 && u.ratio(1, 4)? {
                    gave_up.insert(u.int_in_range(0..=next_caller - 1)?);
                }
            }
            2..=4 if flights.iter().any(|f| !f.rpcs.is_empty()) => {
                // Any outstanding RPC of any round: answers interleave freely.
                let with_rpcs: Vec<usize> =
                    (0..flights.len()).filter(|&i| !flights[i].rpcs.is_empty()).collect();
                let f = with_rpcs[u.choose_index(with_rpcs.len())?];
                let rpc = flights[f].rpcs.remove(0);
                now += Duration::from_millis(u.int_in_range(0..=10)?);
                let resp = match &rpc.request {
                    Request::Pd(PdRequest::Tso(req)) if !u.ratio(1, 8)? => {
                        // PD's clock mostly moves forward; sometimes it
                        // jumps back (a new leader with a lagging clock).
                        physical += i64::from(u.int_in_range(-2..=5i8)?);
                        let count =
                            if u.ratio(1, 16)? { u.int_in_range(0..=3)? } else { req.count };
                        Ok(Response::Pd(PdResponse::Tso(Box::new(pdpb::TsoResponse {
                            header: Some(pdpb::ResponseHeader { cluster_id: 7, error: None }),
                            count,
                            timestamp: Some(pdpb::Timestamp {
                                physical,
                                logical: i64::from(u.int_in_range(0..=300u16)?),
                                suffix_bits: 0,
                            }),
                        }))))
                    }
                    _ => answer(u, &rpc, &mut Fed::default())?,
                };
                flights[f].round.on_response(rpc.id, resp, now);
            }
            _ => {
                now += Duration::from_millis(u.int_in_range(0..=2000)?);
                for f in &mut flights {
                    let expired: Vec<Rpc> =
                        f.rpcs.iter().filter(|r| r.deadline <= now).cloned().collect();
                    f.rpcs.retain(|r| r.deadline > now);
                    for rpc in expired {
                        f.round.on_response(rpc.id, Err(RpcError::DeadlineExceeded), now);
                    }
                    f.round.on_timeout(now);
                }
            }
        }
        // Finished rounds, in an arbitrary order, hand out their timestamps.
        let mut i = 0;
        while i < flights.len() {
            let Some(outcome) = flights[i].round.poll_result() else {
                i += 1;
                continue;
            };
            let f = flights.swap_remove(i);
            let count = f.callers.len();
            match tso.finish_round(f.callers, outcome, now) {
                TsoRoundEnd::Served(served) => {
                    assert_eq!(served.len(), count, "one timestamp per caller");
                    for (caller, ts) in served {
                        let v = ts.version();
                        assert!(last.is_none_or(|l| v > l), "timestamp {v} after {last:?}");
                        last = Some(v);
                        assert!(answered.insert(caller), "caller {caller} answered twice");
                    }
                }
                TsoRoundEnd::Requeued => {}
                TsoRoundEnd::Failed(callers, _) => {
                    assert_eq!(callers.len(), count, "every caller of the round fails");
                    for caller in callers {
                        assert!(answered.insert(caller), "caller {caller} answered twice");
                    }
                }
            }
        }
        while let Some((mut round, callers)) = tso.poll_round(|c| gave_up.contains(c)) {
            assert_eq!(round.count() as usize, callers.len());
            assert!(!callers.callers().iter().any(|c| gave_up.contains(c)), "asked for a quitter");
            round.start(now);
            flights.push(Flight { round, callers, rpcs: Vec::new() });
        }
        for f in &flights {
            assert!(f.callers.len() <= tikv_core::pd::MAX_TSO_BATCH);
        }
        assert!(flights.len() <= max_in_flight, "{} rounds out", flights.len());
        assert_eq!(tso.in_flight(), flights.len());
        let mut emitted = 0;
        for f in &mut flights {
            while let Some(rpc) = f.round.poll_rpc() {
                emitted += 1;
                assert!(emitted <= MAX_RPCS_PER_INPUT, "retry storm");
                f.rpcs.push(rpc);
            }
        }
    }
    Ok(())
}

/// Builds a world plan from fuzzer bytes: the fuzzer picks the universe
/// (network parameters) and the fault schedule; the world must still pass
/// its checkers.
pub fn world_plan(u: &mut Unstructured<'_>) -> Result<(u64, Plan)> {
    let ms = |n: u64| Duration::from_millis(n);
    let keys = u.int_in_range(2..=6u32)?;
    let stores = u.int_in_range(3..=4usize)?;
    let clients = u.int_in_range(1..=3usize)?;
    let ops_per_client = u.int_in_range(1..=8usize)?;
    let mut splits: Vec<u32> = Vec::new();
    for k in 1..keys {
        if u.ratio(1, 3)? {
            splits.push(k);
        }
    }
    let mut swarm = Swarm {
        clients,
        ops_per_client,
        keys,
        stores,
        splits,
        latency_min: Duration::from_micros(u.int_in_range(10..=2000)?),
        latency_jitter: Duration::from_micros(u.int_in_range(0..=5000)?),
        tail_permille: u.int_in_range(0..=200)?,
        tail: ms(u.int_in_range(1..=2000)?),
        drop_request_permille: u.int_in_range(0..=400)?,
        drop_response_permille: u.int_in_range(0..=400)?,
        duplicate_permille: u.int_in_range(0..=400)?,
        think: ms(u.int_in_range(1..=500)?),
        raw_budget: ms(u.int_in_range(5..=20_000)?),
        forwarding: false,
    };
    let active = u.int_in_range(10..=3000u64)?;
    let mut faults: Vec<(Instant, Fault)> = Vec::new();
    for _ in 0..u.int_in_range(0..=12)? {
        let at = Instant::from_millis(u.int_in_range(0..=active)?);
        let dur = ms(u.int_in_range(1..=5000)?);
        let store = u.int_in_range(1..=stores as u64)?;
        let client = u.choose_index(clients)?;
        let fault = match u.int_in_range(0..=8u8)? {
            0 => Fault::Split(u.int_in_range(1..=keys.max(2) - 1)?),
            1 => Fault::Merge(u.int_in_range(0..=7)?),
            2 => Fault::TransferLeader(u.int_in_range(0..=7)?, u.int_in_range(0..=2)?),
            3 => Fault::StoreDown(store, dur),
            4 => Fault::SlowStore(store, u.int_in_range(1..=20)?),
            5 => Fault::PdLeader(u.int_in_range(0..=2)?),
            6 => Fault::PdStale(dur),
            7 => Fault::PartitionStore(client, store, dur),
            _ => Fault::PartitionPd(client, u.int_in_range(0..=2)?, dur),
        };
        faults.push((at, fault));
    }
    faults.sort_by_key(|(at, _)| *at);
    let heal_at = Instant::from_millis(active + u.int_in_range(0..=500)?);
    // Now and then a transactional world: its keys are the families', and
    // it crashes clients and picks commit modes from the bytes too.
    let txn = if u.ratio(1, 2)? {
        let keys = TxnKeys {
            accounts: u.int_in_range(2..=4)?,
            lists: u.int_in_range(1..=3)?,
            registers: u.int_in_range(0..=2)?,
        };
        swarm.keys = keys.total();
        swarm.splits.retain(|&k| k < keys.total());
        faults.retain(|(_, f)| !matches!(f, Fault::Split(k) if *k >= keys.total()));
        Some(TxnParams {
            keys,
            crash_permille: u.int_in_range(0..=500)?,
            async_commit_permille: u.int_in_range(0..=1000)?,
            one_pc_permille: u.int_in_range(0..=1000)?,
            budget_permille: u.int_in_range(5..=1000)?,
        })
    } else {
        None
    };
    Ok((u.arbitrary()?, Plan { swarm, faults, heal_at, txn }))
}

/// Runs a world whose plan came from fuzzer bytes; it must pass. A
/// transactional plan runs now and then as the pessimistic world (locking
/// transfers and increments, shared locks, lock waits, deadlocks, fair
/// locking), whose checkers then judge the pessimistic outcomes too.
pub fn world_schedule(u: &mut Unstructured<'_>) -> Result<()> {
    let (seed, mut plan) = world_plan(u)?;
    let workload = match plan.txn.is_some() && u.ratio(1, 2)? {
        true => Workload::Pessimistic,
        false => Workload::default(),
    };
    // Drawn last, so the stored regression inputs keep their meaning (one
    // that has run out of bytes runs without forwarding).
    plan.swarm.forwarding = u.ratio(1, 2).unwrap_or(false);
    // Drawn after it for the same reason: now and then a slow store, whose
    // answers leave late while it lasts.
    if u.ratio(1, 3).unwrap_or(false) {
        let slow = |u: &mut Unstructured<'_>| -> Result<(Instant, Fault)> {
            let at = Instant::from_millis(u.int_in_range(0..=3000)?);
            let store = u.int_in_range(1..=plan.swarm.stores as u64)?;
            let extra = Duration::from_millis(u.int_in_range(1..=400)?);
            let lasts = Duration::from_millis(u.int_in_range(1..=5000)?);
            Ok((at, Fault::StoreLatency(store, extra, lasts)))
        };
        if let Ok(fault) = slow(u) {
            plan.faults.push(fault);
            plan.faults.sort_by_key(|(at, _)| *at);
        }
    }
    let report =
        world::run(WorldConfig { seed, plan: Some(plan), workload, ..WorldConfig::default() });
    assert!(report.passed(), "{}", report.failure());
    Ok(())
}

/// One store's `BatchCommands` collector over 1 to 4 streams, fed arbitrary
/// arrivals, answers (in full, partial, of the wrong command, for unknown
/// ids, on stale streams), stream breaks and clock jumps. Every caller is
/// answered at most once, and an answer is always its own request's (the
/// server echoes the key); ids are never reused; a stream's probe precedes
/// its requests; requests fall back to unary only when they cannot ride a
/// stream; and once every deadline has passed, every caller has an answer
/// or a fallback and nothing is left pending.
pub fn batch_collector(u: &mut Unstructured<'_>) -> Result<()> {
    use std::collections::{BTreeMap, VecDeque};

    use tikv_core::rpc::batch::{BatchCollector, BatchConfig, BatchPolicy, StreamGen, StreamState};
    use tikv_proto::tikvpb::batch_commands_request::request::Cmd as ReqCmd;
    use tikv_proto::tikvpb::batch_commands_response::Response as RespEntry;
    use tikv_proto::tikvpb::batch_commands_response::response::Cmd as RespCmd;
    use tikv_proto::tikvpb::{BatchCommandsEmptyResponse, BatchCommandsResponse};

    let streams = usize::from(u.int_in_range(1..=4u8)?);
    let policy = *u.choose(&[BatchPolicy::Basic, BatchPolicy::Standard, BatchPolicy::Positive])?;
    let config = BatchConfig::default()
        .streams(streams)
        .policy(policy)
        .max_batch_size(usize::from(u.int_in_range(1..=8u8)?));
    let mut c = BatchCollector::<u64>::new(config);
    let mut now = Instant::ZERO;
    // Per slot: the current stream and its unanswered messages, oldest first.
    let mut current: Vec<Option<StreamGen>> = vec![None; streams];
    let mut wire: Vec<VecDeque<(StreamGen, tikv_proto::tikvpb::BatchCommandsRequest)>> =
        vec![VecDeque::new(); streams];
    // Streams whose first message was seen (it must be the probe).
    let mut started: BTreeSet<StreamGen> = BTreeSet::new();
    let mut ids_seen: BTreeSet<u64> = BTreeSet::new();
    // Caller label -> its key; handled callers are removed.
    let mut callers: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut next_label = 0u64;
    let mut latest_deadline = Instant::ZERO;

    // What a runtime does after every event; checks what comes out.
    let drain =
        |c: &mut BatchCollector<u64>,
         now: Instant,
         current: &mut Vec<Option<StreamGen>>,
         wire: &mut Vec<VecDeque<(StreamGen, tikv_proto::tikvpb::BatchCommandsRequest)>>,
         started: &mut BTreeSet<StreamGen>,
         ids_seen: &mut BTreeSet<u64>,
         callers: &mut BTreeMap<u64, Vec<u8>>| {
            while let Some(slot) = c.wants_stream(now) {
                let stream = c.open_stream(slot, now);
                assert_eq!(stream.slot, slot);
                current[slot] = Some(stream);
                wire[slot].clear();
            }
            while let Some((stream, message)) = c.poll_batch(now) {
                assert_eq!(current[stream.slot], Some(stream), "messages go to current streams");
                let is_probe = matches!(
                    message.requests.first().and_then(|r| r.cmd.as_ref()),
                    Some(ReqCmd::Empty(_))
                );
                if started.insert(stream) {
                    assert!(is_probe, "a new stream's first message is its probe");
                }
                assert_eq!(message.requests.len(), message.request_ids.len());
                assert!(message.requests.len() <= config.max_batch_size.max(1));
                for id in &message.request_ids {
                    assert!(ids_seen.insert(*id), "id {id} reused");
                }
                wire[stream.slot].push_back((stream, message));
            }
            while let Some((label, result)) = c.poll_completion() {
                let key = callers.remove(&label).expect("a caller is answered once");
                if let Ok(KvResponse::RawGet(r)) = &result {
                    assert_eq!(&r.value[..], &key[..], "the answer is the caller's own");
                }
            }
            while let Some(f) = c.poll_fallback() {
                let batchable = tikv_core::rpc::batch::is_batchable(&f.request);
                assert!(
                    !batchable || c.state() == StreamState::Down,
                    "a batchable request falls back only with every stream down"
                );
                assert!(callers.remove(&f.waiter).is_some(), "a fallback is a live caller");
            }
        };

    for _ in 0..MAX_INPUTS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=9u8)? {
            0..=3 => {
                let label = next_label;
                next_label += 1;
                let key = format!("k{label}").into_bytes();
                let request = if u.ratio(1, 16)? {
                    KvRequest::RawChecksum(Default::default())
                } else {
                    KvRequest::RawGet(Box::new(kvrpcpb::RawGetRequest {
                        key: key.clone().into(),
                        ..Default::default()
                    }))
                };
                let deadline = now + Duration::from_micros(u.int_in_range(1..=200_000)?);
                latest_deadline = latest_deadline.max(deadline);
                callers.insert(label, key);
                c.push(request, label, deadline, now);
            }
            4..=6 => {
                let slot = usize::from(u.int_in_range(0..=(streams - 1) as u8)?);
                let Some((stream, message)) = wire[slot].pop_front() else { continue };
                let mut ids = message.request_ids.clone();
                let mut responses: Vec<RespEntry> = message
                    .requests
                    .iter()
                    .map(|r| RespEntry {
                        cmd: match &r.cmd {
                            Some(ReqCmd::Empty(e)) => {
                                Some(RespCmd::Empty(Box::new(BatchCommandsEmptyResponse {
                                    test_id: e.test_id,
                                })))
                            }
                            Some(ReqCmd::RawGet(g)) => {
                                Some(RespCmd::RawGet(Box::new(kvrpcpb::RawGetResponse {
                                    value: g.key.clone(),
                                    ..Default::default()
                                })))
                            }
                            _ => None,
                        },
                    })
                    .collect();
                match u.int_in_range(0..=7u8)? {
                    // A wrong command for the first entry.
                    0 if !responses.is_empty() => {
                        responses[0].cmd = Some(RespCmd::RawPut(Default::default()));
                    }
                    // Fewer responses than ids.
                    1 => {
                        responses.pop();
                    }
                    // An id that was never issued, and a repeated one.
                    2 => {
                        ids.push(u64::MAX - u64::from(u.arbitrary::<u8>()?));
                        responses.push(RespEntry::default());
                        if let Some(first) = ids.first().copied() {
                            ids.push(first);
                            responses.push(RespEntry::default());
                        }
                    }
                    // Half now, the rest in a later message.
                    3 if ids.len() > 1 => {
                        let half = ids.len() / 2;
                        let rest_ids = ids.split_off(half);
                        let rest = responses.split_off(half);
                        let mut later = message.clone();
                        later.request_ids = rest_ids;
                        later.requests = message.requests[half..].to_vec();
                        wire[slot].push_front((stream, later));
                        let _ = rest;
                    }
                    _ => {}
                }
                let answer =
                    BatchCommandsResponse { responses, request_ids: ids, ..Default::default() };
                c.on_response(stream, answer, now);
            }
            7 => {
                let slot = usize::from(u.int_in_range(0..=(streams - 1) as u8)?);
                let stream = match current[slot] {
                    // Sometimes a replaced stream reports late.
                    Some(s) if u.ratio(1, 4)? && s.generation > 1 => {
                        StreamGen { slot, generation: s.generation - 1 }
                    }
                    Some(s) => s,
                    None => continue,
                };
                if current[slot] == Some(stream) {
                    wire[slot].clear();
                }
                c.on_stream_broken(stream, "fuzzed", now);
            }
            _ => {
                now += Duration::from_micros(u.int_in_range(0..=50_000)?);
                c.on_timeout(now);
            }
        }
        drain(&mut c, now, &mut current, &mut wire, &mut started, &mut ids_seen, &mut callers);
    }
    // Every deadline passes: everyone has had an answer or a fallback.
    now = now.max(latest_deadline) + Duration::from_millis(1);
    c.on_timeout(now);
    drain(&mut c, now, &mut current, &mut wire, &mut started, &mut ids_seen, &mut callers);
    assert!(callers.is_empty(), "callers left without an answer: {callers:?}");
    assert_eq!(c.pending(), 0);
    Ok(())
}
