//! Scripted-event harness for the core's unit tests.
//!
//! [`FakeCluster`] answers RPCs from a tiny model (one PD, stores, regions
//! over raw V1 keys, one raw map) and lets a test queue region errors or
//! transport failures for the next matching requests. [`drive`] runs an
//! [`Operation`] against it in virtual time — each RPC takes 1 ms, timers
//! jump the clock — and records a transcript of every action and input.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::Arc;

use bytes::Bytes;
use tikv_proto::{errorpb, kvrpcpb, metapb, pdpb};

use crate::codec::{ApiCodec, Mode};
use crate::config::Config;
use crate::error::Error;
use crate::op::Operation;
use crate::pd::{PdState, TsoBatcher, TsoRoundEnd};
use crate::rpc::{
    KvRequest, KvResponse, PdRequest, PdResponse, Request, Response, Rpc, RpcError, Target,
};
use crate::time::{Duration, Instant};
use crate::view::ClusterView;

/// A scripted fault for the next request whose name contains `method`
/// (`"*"` matches any TiKV request).
pub(crate) enum Fault {
    Region(Box<errorpb::Error>),
    Rpc(RpcError),
    /// Apply a split at this key before answering (the request then meets
    /// the server's epoch check).
    SplitAt(Vec<u8>),
    /// Answer with this response (no region checks): scripts commands the
    /// fake does not model, such as the transactional ones.
    Respond(Box<KvResponse>),
}

pub(crate) struct FakeRegion {
    pub(crate) meta: metapb::Region,
    pub(crate) leader_store: u64,
}

pub(crate) struct FakeCluster {
    pub(crate) regions: Vec<FakeRegion>,
    pub(crate) stores: BTreeMap<u64, String>,
    pub(crate) pd_members: Vec<String>,
    pub(crate) pd_leader: Option<usize>,
    /// PD members that refuse connections.
    pub(crate) pd_down: Vec<usize>,
    pub(crate) data: BTreeMap<Vec<u8>, Bytes>,
    pub(crate) faults: VecDeque<(String, Fault)>,
    /// Answer `BatchScanRegions` with `Unimplemented`, as an old PD does.
    pub(crate) no_batch_scan: bool,
    /// Every TiKV request received, in order (for asserting on contexts).
    pub(crate) received: Vec<KvRequest>,
    /// PD's GC state (null keyspace): txn and GC safe points, and the ts
    /// of one GC barrier holding the txn safe point back, if set.
    pub(crate) txn_safe_point: u64,
    pub(crate) gc_safe_point: u64,
    pub(crate) gc_barrier: Option<u64>,
    /// Stores PD lists as tombstones.
    pub(crate) tombstones: Vec<u64>,
    /// Stores the client cannot reach (every request sent to them fails as
    /// a refused connection) while the cluster still can: they keep their
    /// leaders, and forwarded requests reach them.
    pub(crate) cut_from_client: Vec<u64>,
    /// Regions PD was asked to scatter, in order; `GetOperator` answers
    /// `RUNNING` for a scattered region this many more times, then `SUCCESS`.
    pub(crate) scattered: Vec<u64>,
    pub(crate) operator_running_polls: u32,
    /// TiKV's own slow score per store, which `GetHealthFeedback` answers
    /// (1, healthy, for a store not listed).
    pub(crate) slow_scores: BTreeMap<u64, i32>,
    feedback_seq: u64,
    /// The client's timestamp oracle: answers [`Request::Timestamp`] with a
    /// real [`TsoBatcher`] whose one-caller rounds this fake's PD serves at
    /// once. Built on first use over a default view; tests that look at the
    /// client's newest timestamp install the view under test
    /// ([`FakeCluster::set_oracle_view`]).
    oracle: Option<TsoBatcher<()>>,
    next_id: u64,
    tso: i64,
    /// The physical part of the fake PD's timestamps (milliseconds).
    pub(crate) tso_physical: i64,
}

impl FakeCluster {
    /// Three stores, one PD, regions split at `splits` (leaders rotate
    /// over the stores).
    pub(crate) fn new(splits: &[&str]) -> FakeCluster {
        let mut c = FakeCluster {
            regions: Vec::new(),
            stores: (1..=3).map(|i| (i, format!("store{i}:20160"))).collect(),
            pd_members: vec!["pd1:2379".into()],
            pd_leader: Some(0),
            pd_down: Vec::new(),
            data: BTreeMap::new(),
            faults: VecDeque::new(),
            no_batch_scan: false,
            received: Vec::new(),
            txn_safe_point: 0,
            gc_safe_point: 0,
            gc_barrier: None,
            tombstones: Vec::new(),
            cut_from_client: Vec::new(),
            scattered: Vec::new(),
            operator_running_polls: 0,
            slow_scores: BTreeMap::new(),
            feedback_seq: 0,
            oracle: None,
            next_id: 100,
            tso: 0,
            tso_physical: 1000,
        };
        let mut bounds: Vec<Vec<u8>> = vec![Vec::new()];
        bounds.extend(splits.iter().map(|s| s.as_bytes().to_vec()));
        bounds.push(Vec::new());
        for (i, w) in bounds.windows(2).enumerate() {
            let id = i as u64 + 1;
            c.regions.push(FakeRegion {
                meta: metapb::Region {
                    id,
                    start_key: w[0].clone().into(),
                    end_key: w[1].clone().into(),
                    region_epoch: Some(metapb::RegionEpoch { conf_ver: 1, version: 1 }),
                    peers: (1..=3)
                        .map(|s| metapb::Peer {
                            id: id * 10 + s,
                            store_id: s,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                },
                leader_store: (i as u64 % 3) + 1,
            });
        }
        c
    }

    pub(crate) fn fault(&mut self, method: &str, fault: Fault) {
        self.faults.push_back((method.to_string(), fault));
    }

    fn region_of(&self, key: &[u8]) -> Option<&FakeRegion> {
        self.regions.iter().find(|r| {
            key >= &r.meta.start_key[..] && (r.meta.end_key.is_empty() || key < &r.meta.end_key[..])
        })
    }

    /// Splits the region containing `key` at `key`, as TiKV does: the
    /// left part gets a new id, both get a bumped version.
    pub(crate) fn split(&mut self, key: &[u8]) {
        let Some(idx) = self.regions.iter().position(|r| {
            key > &r.meta.start_key[..] && (r.meta.end_key.is_empty() || key < &r.meta.end_key[..])
        }) else {
            return;
        };
        self.next_id += 1;
        let new_id = self.next_id;
        let right = &mut self.regions[idx];
        let mut left_meta = right.meta.clone();
        let epoch = right.meta.region_epoch.get_or_insert_with(Default::default);
        epoch.version += 1;
        let epoch = *epoch;
        right.meta.start_key = Bytes::copy_from_slice(key);
        left_meta.id = new_id;
        left_meta.end_key = Bytes::copy_from_slice(key);
        left_meta.region_epoch = Some(epoch);
        for p in &mut left_meta.peers {
            p.id += new_id * 100;
        }
        let leader_store = right.leader_store;
        self.regions.insert(idx, FakeRegion { meta: left_meta, leader_store });
    }

    fn take_fault(&mut self, name: &str) -> Option<Fault> {
        let idx = self.faults.iter().position(|(m, _)| m == "*" || name.contains(m.as_str()))?;
        self.faults.remove(idx).map(|(_, f)| f)
    }

    pub(crate) fn handle(&mut self, rpc: &Rpc) -> Result<Response, RpcError> {
        match (&rpc.target, &rpc.request) {
            (Target::Pd { addr }, Request::Pd(req)) => self.handle_pd(addr, req).map(Response::Pd),
            // As TiKV: a store asked to forward hands the request to the
            // store at the forwarded host, whose answer comes back.
            (Target::Store { store_id, forwarded_host, .. }, Request::Kv(req)) => {
                if self.cut_from_client.contains(store_id) {
                    return Err(RpcError::Unavailable("connection refused".into()));
                }
                let store_id = match forwarded_host {
                    None => *store_id,
                    Some(host) => match self.stores.iter().find(|(_, a)| **a == **host) {
                        Some((id, _)) => *id,
                        None => return Err(RpcError::Unavailable(format!("no store at {host}"))),
                    },
                };
                self.handle_kv(store_id, req.clone()).map(Response::Kv)
            }
            (Target::Oracle, Request::Timestamp) => self.timestamp(),
            // Every store is alive unless cut off from the client, or a
            // fault scripted for `health_check` says otherwise.
            (Target::Store { store_id, .. }, Request::HealthCheck) => {
                if self.cut_from_client.contains(store_id) {
                    return Err(RpcError::Unavailable("connection refused".into()));
                }
                if let Some(i) = self.faults.iter().position(|(m, _)| m == "health_check")
                    && let Some((_, Fault::Rpc(e))) = self.faults.remove(i)
                {
                    return Err(e);
                }
                Ok(Response::HealthCheck(tikv_proto::health::HealthCheckResponse {
                    status: tikv_proto::health::health_check_response::ServingStatus::Serving
                        as i32,
                }))
            }
            _ => Err(RpcError::Unavailable("wrong target".into())),
        }
    }

    /// Makes the oracle record the timestamps it hands out in `view`.
    pub(crate) fn set_oracle_view(&mut self, view: Arc<ClusterView>) {
        self.oracle = Some(TsoBatcher::new(view, 0));
    }

    /// One timestamp from the oracle: a round of the real batcher, its PD
    /// calls served synchronously by this fake.
    fn timestamp(&mut self) -> Result<Response, RpcError> {
        let mut oracle = self.oracle.take().unwrap_or_else(|| TsoBatcher::new(view(), 0));
        oracle.enqueue(());
        let (mut round, callers) = oracle.poll_round(|_| false).expect("one round at a time");
        round.start(Instant::ZERO);
        let outcome = loop {
            if let Some(outcome) = round.poll_result() {
                break outcome;
            }
            let rpc = round.poll_rpc().expect("a round in progress sends");
            let resp = self.handle(&rpc);
            round.on_response(rpc.id, resp, Instant::ZERO);
        };
        let end = oracle.finish_round(callers, outcome, Instant::ZERO);
        self.oracle = Some(oracle);
        match end {
            TsoRoundEnd::Served(served) => Ok(Response::Timestamp(served[0].1)),
            TsoRoundEnd::Failed(_, e) => Err(RpcError::NoTimestamp(Box::new(e))),
            TsoRoundEnd::Requeued => Err(RpcError::Unavailable("a lone round requeued".into())),
        }
    }

    fn header(&self) -> Option<pdpb::ResponseHeader> {
        Some(pdpb::ResponseHeader { cluster_id: 7, error: None })
    }

    fn handle_pd(&mut self, addr: &str, req: &PdRequest) -> Result<PdResponse, RpcError> {
        let me = self.pd_members.iter().position(|m| m == addr);
        if me.is_none_or(|m| self.pd_down.contains(&m)) {
            return Err(RpcError::Unavailable(format!("{addr} refused")));
        }
        if let Some(Fault::Rpc(e)) = self.take_fault(req.name()) {
            return Err(e);
        }
        let leader_member = self.pd_leader.map(|l| pdpb::Member {
            name: format!("pd{}", l + 1),
            client_urls: vec![self.pd_members[l].clone()],
            ..Default::default()
        });
        if !matches!(req, PdRequest::GetMembers(_)) && self.pd_leader != me {
            return Err(RpcError::Status { code: 14, message: "not leader".into() });
        }
        let region_resp = |r: Option<&FakeRegion>| pdpb::GetRegionResponse {
            header: Some(pdpb::ResponseHeader { cluster_id: 7, error: None }),
            region: r.map(|r| r.meta.clone()),
            leader: r
                .and_then(|r| r.meta.peers.iter().find(|p| p.store_id == r.leader_store).copied()),
            ..Default::default()
        };
        Ok(match req {
            PdRequest::GetMembers(_) => {
                PdResponse::GetMembers(Box::new(pdpb::GetMembersResponse {
                    header: self.header(),
                    leader: leader_member,
                    ..Default::default()
                }))
            }
            PdRequest::GetRegion(r) => {
                PdResponse::GetRegion(Box::new(region_resp(self.region_of(&r.region_key))))
            }
            PdRequest::GetPrevRegion(r) => {
                let idx = self.regions.iter().position(|x| x.meta.start_key == r.region_key);
                let prev = idx.and_then(|i| i.checked_sub(1)).and_then(|i| self.regions.get(i));
                PdResponse::GetPrevRegion(Box::new(region_resp(prev)))
            }
            PdRequest::BatchScanRegions(_) if self.no_batch_scan => {
                return Err(RpcError::Unimplemented("unknown method".into()));
            }
            PdRequest::BatchScanRegions(r) => {
                let Some(range) = r.ranges.first() else {
                    return Err(RpcError::Status { code: 3, message: "no range".into() });
                };
                let regions = self
                    .regions
                    .iter()
                    .filter(|x| {
                        (x.meta.end_key.is_empty() || x.meta.end_key[..] > range.start_key[..])
                            && (range.end_key.is_empty()
                                || x.meta.start_key[..] < range.end_key[..])
                    })
                    .take(usize::try_from(r.limit).unwrap_or(0))
                    .map(|x| pdpb::Region {
                        region: Some(x.meta.clone()),
                        leader: x.meta.peers.iter().find(|p| p.store_id == x.leader_store).copied(),
                        ..Default::default()
                    })
                    .collect();
                PdResponse::BatchScanRegions(Box::new(pdpb::BatchScanRegionsResponse {
                    header: self.header(),
                    regions,
                }))
            }
            PdRequest::GetStore(r) => PdResponse::GetStore(Box::new(pdpb::GetStoreResponse {
                header: self.header(),
                store: self.stores.get(&r.store_id).map(|addr| metapb::Store {
                    id: r.store_id,
                    address: addr.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            PdRequest::GetAllStores(_) => {
                PdResponse::GetAllStores(Box::new(pdpb::GetAllStoresResponse {
                    header: self.header(),
                    stores: self
                        .stores
                        .iter()
                        .map(|(id, addr)| metapb::Store {
                            id: *id,
                            address: addr.clone(),
                            state: if self.tombstones.contains(id) {
                                metapb::StoreState::Tombstone as i32
                            } else {
                                metapb::StoreState::Up as i32
                            },
                            ..Default::default()
                        })
                        .collect(),
                }))
            }
            // PD's rules in short: the txn safe point stops at the barrier,
            // the GC safe point may not pass the txn safe point.
            PdRequest::AdvanceTxnSafePoint(r) => {
                let old = self.txn_safe_point;
                let new = old.max(self.gc_barrier.map_or(r.target, |b| b.min(r.target)));
                self.txn_safe_point = new;
                PdResponse::AdvanceTxnSafePoint(Box::new(pdpb::AdvanceTxnSafePointResponse {
                    header: self.header(),
                    old_txn_safe_point: old,
                    new_txn_safe_point: new,
                    blocker_description: if new < r.target {
                        "barrier".into()
                    } else {
                        String::new()
                    },
                }))
            }
            PdRequest::ScatterRegion(r) => {
                self.scattered.extend(&r.regions_id);
                PdResponse::ScatterRegion(Box::new(pdpb::ScatterRegionResponse {
                    header: self.header(),
                    finished_percentage: 100,
                    ..Default::default()
                }))
            }
            PdRequest::GetOperator(r) if !self.scattered.contains(&r.region_id) => {
                PdResponse::GetOperator(Box::new(pdpb::GetOperatorResponse {
                    header: Some(pdpb::ResponseHeader {
                        cluster_id: 7,
                        error: Some(pdpb::Error {
                            r#type: pdpb::ErrorType::RegionNotFound as i32,
                            message: "Not Found".into(),
                        }),
                    }),
                    ..Default::default()
                }))
            }
            PdRequest::GetOperator(r) => {
                let running = self.operator_running_polls > 0;
                self.operator_running_polls = self.operator_running_polls.saturating_sub(1);
                PdResponse::GetOperator(Box::new(pdpb::GetOperatorResponse {
                    header: self.header(),
                    region_id: r.region_id,
                    desc: "scatter-region".into(),
                    status: if running {
                        pdpb::OperatorStatus::Running as i32
                    } else {
                        pdpb::OperatorStatus::Success as i32
                    },
                    ..Default::default()
                }))
            }
            PdRequest::GetGcState(_) => {
                PdResponse::GetGcState(Box::new(pdpb::GetGcStateResponse {
                    header: self.header(),
                    gc_state: Some(pdpb::GcState {
                        txn_safe_point: self.txn_safe_point,
                        gc_safe_point: self.gc_safe_point,
                        ..Default::default()
                    }),
                    ..Default::default()
                }))
            }
            PdRequest::AdvanceGcSafePoint(r) => {
                let old = self.gc_safe_point;
                if r.target > self.txn_safe_point {
                    return Ok(PdResponse::AdvanceGcSafePoint(Box::new(
                        pdpb::AdvanceGcSafePointResponse {
                            header: Some(pdpb::ResponseHeader {
                                cluster_id: 7,
                                error: Some(pdpb::Error {
                                    r#type: pdpb::ErrorType::Unknown as i32,
                                    message: "exceeds the txn safe point".into(),
                                }),
                            }),
                            ..Default::default()
                        },
                    )));
                }
                self.gc_safe_point = r.target;
                PdResponse::AdvanceGcSafePoint(Box::new(pdpb::AdvanceGcSafePointResponse {
                    header: self.header(),
                    old_gc_safe_point: old,
                    new_gc_safe_point: r.target,
                }))
            }
            PdRequest::Tso(r) => {
                self.tso += i64::from(r.count);
                PdResponse::Tso(Box::new(pdpb::TsoResponse {
                    header: self.header(),
                    count: r.count,
                    timestamp: Some(pdpb::Timestamp {
                        physical: self.tso_physical,
                        logical: self.tso,
                        suffix_bits: 0,
                    }),
                }))
            }
            other => {
                return Err(RpcError::Unimplemented(format!("{} unimplemented", other.name())));
            }
        })
    }

    fn handle_kv(&mut self, store_id: u64, mut req: KvRequest) -> Result<KvResponse, RpcError> {
        self.received.push(req.clone());
        match self.take_fault(req.name()) {
            Some(Fault::Rpc(e)) => return Err(e),
            Some(Fault::Region(e)) => {
                let mut resp = req.response_template();
                set_region_error(&mut resp, *e);
                return Ok(resp);
            }
            Some(Fault::SplitAt(key)) => self.split(&key),
            Some(Fault::Respond(resp)) => return Ok(*resp),
            None => {}
        }
        // Store RPCs: TiKV takes them whatever regions it holds.
        if let KvRequest::BroadcastTxnStatus(_) = req {
            return Ok(req.response_template());
        }
        if let KvRequest::GetHealthFeedback(_) = req {
            self.feedback_seq += 1;
            let feedback = kvrpcpb::HealthFeedback {
                store_id,
                feedback_seq_no: self.feedback_seq,
                slow_score: self.slow_scores.get(&store_id).copied().unwrap_or(1),
            };
            return Ok(KvResponse::from(kvrpcpb::GetHealthFeedbackResponse {
                region_error: None,
                health_feedback: Some(feedback),
            }));
        }
        let ctx = req.context_mut().clone();
        // TiKV's checks: the region exists here, we lead it, the epoch matches.
        let Some(region) = self.regions.iter().find(|r| r.meta.id == ctx.region_id) else {
            let mut resp = req.response_template();
            set_region_error(
                &mut resp,
                errorpb::Error {
                    message: "region not found".into(),
                    region_not_found: Some(errorpb::RegionNotFound { region_id: ctx.region_id }),
                    ..Default::default()
                },
            );
            return Ok(resp);
        };
        if !region.meta.peers.iter().any(|p| p.store_id == store_id) {
            let mut resp = req.response_template();
            set_region_error(
                &mut resp,
                errorpb::Error {
                    message: "region not found".into(),
                    region_not_found: Some(errorpb::RegionNotFound { region_id: ctx.region_id }),
                    ..Default::default()
                },
            );
            return Ok(resp);
        }
        // A follower serves a replica read (TiKV first asks the leader for
        // a read index, which this fake's leaders always grant).
        let replica_read = ctx.replica_read && req.is_snapshot_read();
        if region.leader_store != store_id && !replica_read {
            let mut resp = req.response_template();
            let leader =
                region.meta.peers.iter().find(|p| p.store_id == region.leader_store).copied();
            set_region_error(
                &mut resp,
                errorpb::Error {
                    message: "not leader".into(),
                    not_leader: Some(errorpb::NotLeader { region_id: region.meta.id, leader }),
                    ..Default::default()
                },
            );
            return Ok(resp);
        }
        if ctx.region_epoch != region.meta.region_epoch {
            let mut resp = req.response_template();
            let current = self
                .regions
                .iter()
                .filter(|r| r.meta.id == region.meta.id || r.meta.id > 100)
                .map(|r| r.meta.clone())
                .collect();
            set_region_error(
                &mut resp,
                errorpb::Error {
                    message: "epoch not match".into(),
                    epoch_not_match: Some(errorpb::EpochNotMatch { current_regions: current }),
                    ..Default::default()
                },
            );
            return Ok(resp);
        }
        let (start, end) = (region.meta.start_key.clone(), region.meta.end_key.clone());
        let inside = |k: &[u8]| k >= &start[..] && (end.is_empty() || k < &end[..]);
        Ok(match req {
            KvRequest::RawGet(r) => {
                assert!(inside(&r.key), "test bug: key outside region");
                let v = self.data.get(&r.key[..]).cloned();
                KvResponse::RawGet(Box::new(kvrpcpb::RawGetResponse {
                    not_found: v.is_none(),
                    value: v.unwrap_or_default(),
                    ..Default::default()
                }))
            }
            KvRequest::RawBatchGet(r) => {
                KvResponse::RawBatchGet(Box::new(kvrpcpb::RawBatchGetResponse {
                    pairs: r
                        .keys
                        .iter()
                        .filter_map(|k| {
                            self.data.get(&k[..]).map(|v| kvrpcpb::KvPair {
                                key: k.clone(),
                                value: v.clone(),
                                ..Default::default()
                            })
                        })
                        .collect(),
                    ..Default::default()
                }))
            }
            KvRequest::RawPut(r) => {
                self.data.insert(r.key.to_vec(), r.value);
                KvResponse::RawPut(Default::default())
            }
            KvRequest::RawBatchPut(r) => {
                for p in r.pairs {
                    self.data.insert(p.key.to_vec(), p.value);
                }
                KvResponse::RawBatchPut(Default::default())
            }
            KvRequest::RawScan(r) => {
                let pairs: Vec<_> = if r.reverse {
                    self.data
                        .iter()
                        .rev()
                        .filter(|(k, _)| {
                            (r.start_key.is_empty() || k[..] < r.start_key[..])
                                && k[..] >= r.end_key[..]
                        })
                        .take(r.limit as usize)
                        .collect()
                } else {
                    self.data
                        .iter()
                        .filter(|(k, _)| {
                            k[..] >= r.start_key[..]
                                && (r.end_key.is_empty() || k[..] < r.end_key[..])
                        })
                        .take(r.limit as usize)
                        .collect()
                };
                KvResponse::RawScan(Box::new(kvrpcpb::RawScanResponse {
                    kvs: pairs
                        .into_iter()
                        .map(|(k, v)| kvrpcpb::KvPair {
                            key: k.clone().into(),
                            value: v.clone(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }))
            }
            KvRequest::RawDelete(r) => {
                self.data.remove(&r.key[..]);
                KvResponse::RawDelete(Default::default())
            }
            KvRequest::RawBatchDelete(r) => {
                for k in r.keys {
                    self.data.remove(&k[..]);
                }
                KvResponse::RawBatchDelete(Default::default())
            }
            KvRequest::RawDeleteRange(r) => {
                assert!(inside(&r.start_key), "test bug: range outside region");
                self.data.retain(|k, _| {
                    !(k[..] >= r.start_key[..] && (r.end_key.is_empty() || k[..] < r.end_key[..]))
                });
                KvResponse::RawDeleteRange(Default::default())
            }
            KvRequest::RawGetKeyTtl(r) => {
                KvResponse::RawGetKeyTtl(Box::new(kvrpcpb::RawGetKeyTtlResponse {
                    not_found: !self.data.contains_key(&r.key[..]),
                    ..Default::default()
                }))
            }
            KvRequest::RawCompareAndSwap(r) => {
                let current = self.data.get(&r.key[..]).cloned();
                let matches = match &current {
                    None => r.previous_not_exist,
                    Some(v) => !r.previous_not_exist && *v == r.previous_value,
                };
                if matches {
                    self.data.insert(r.key.to_vec(), r.value);
                }
                KvResponse::RawCompareAndSwap(Box::new(kvrpcpb::RawCasResponse {
                    succeed: matches,
                    previous_not_exist: current.is_none(),
                    previous_value: current.unwrap_or_default(),
                    ..Default::default()
                }))
            }
            KvRequest::RawChecksum(r) => {
                // Not TiKV's CRC: the client only XORs region answers, so any
                // per-pair digest shows that it combines them correctly.
                let mut resp = kvrpcpb::RawChecksumResponse::default();
                for range in &r.ranges {
                    let within = |k: &[u8]| {
                        k >= &range.start_key[..]
                            && (range.end_key.is_empty() || k < &range.end_key[..])
                    };
                    for (k, v) in self.data.iter().filter(|(k, _)| within(k)) {
                        resp.checksum ^= fake_digest(k, v);
                        resp.total_kvs += 1;
                        resp.total_bytes += (k.len() + v.len()) as u64;
                    }
                }
                KvResponse::RawChecksum(Box::new(resp))
            }
            other => {
                let mut resp = other.response_template();
                set_region_error(
                    &mut resp,
                    errorpb::Error {
                        message: "unsupported by the fake".into(),
                        ..Default::default()
                    },
                );
                resp
            }
        })
    }
}

/// The fake's per-pair checksum digest (FNV-1a over key and value).
pub(crate) fn fake_digest(key: &[u8], value: &[u8]) -> u64 {
    key.iter()
        .chain(value)
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// Puts `e` into the response's `region_error` (a store RPC has none: left as is).
fn set_region_error(resp: &mut KvResponse, e: errorpb::Error) {
    if let Some(field) = resp.region_error_mut() {
        *field = Some(e);
    }
}

/// TiKV store `id` at `store{id}:20160` with `labels` (an `engine` label
/// of `tiflash` makes it a TiFlash store).
pub(crate) fn labelled_store(id: u64, labels: &[(&str, &str)]) -> metapb::Store {
    metapb::Store {
        id,
        address: format!("store{id}:20160"),
        labels: labels
            .iter()
            .map(|(k, v)| metapb::StoreLabel { key: (*k).into(), value: (*v).into() })
            .collect(),
        ..Default::default()
    }
}

/// A view over `pd1:2379` with the default config, API V1 raw.
pub(crate) fn view() -> Arc<ClusterView> {
    view_with(Config::default())
}

/// A view over `config` with the fake cluster's PD endpoint.
pub(crate) fn view_with(config: Config) -> Arc<ClusterView> {
    let config = config.with_pd_endpoints(["pd1:2379"]);
    let pd = Arc::new(PdState::new(config.pd_endpoints.clone()));
    Arc::new(ClusterView::new(config, ApiCodec::v1(Mode::Raw), pd))
}

fn summarize(resp: &Result<Response, RpcError>) -> String {
    match resp {
        Err(e) => format!("error: {e}"),
        Ok(Response::Pd(r)) => r.name().to_string(),
        Ok(Response::Timestamp(ts)) => format!("timestamp {ts:#}"),
        Ok(Response::StoreSafeTs(r)) => format!("safe ts {}", r.safe_ts),
        Ok(Response::HealthCheck(r)) => format!("health {:?}", r.status()),
        Ok(Response::Kv(r)) => match r.region_error() {
            Some(e) => format!("{} region error: {}", r.name(), e.message),
            None => format!("{} ok", r.name()),
        },
    }
}

/// Runs `op` to completion against `cluster` in virtual time, returning
/// the transcript and the result. Panics if the operation stalls (no RPC,
/// no timer, no result) or takes more than 10,000 steps.
pub(crate) fn drive<O: Operation>(
    mut op: O,
    cluster: &mut FakeCluster,
) -> (String, Result<O::Output, Error>) {
    let mut now = Instant::ZERO;
    let mut log = String::new();
    let mut queue: VecDeque<Rpc> = VecDeque::new();
    op.start(now);
    for _ in 0..10_000 {
        while let Some(rpc) = op.poll_rpc() {
            let _ = writeln!(log, "{now} send {} {:?} -> {:?}", rpc.id, rpc.request, rpc.target);
            queue.push_back(rpc);
        }
        if let Some(result) = op.poll_result() {
            let _ = writeln!(
                log,
                "{now} done: {}",
                match &result {
                    Ok(_) => "ok".to_string(),
                    Err(e) => format!("error: {e}"),
                }
            );
            return (log, result);
        }
        if let Some(rpc) = queue.pop_front() {
            now += Duration::from_millis(1);
            let resp = cluster.handle(&rpc);
            let _ = writeln!(log, "{now} recv {} {}", rpc.id, summarize(&resp));
            op.on_response(rpc.id, resp, now);
        } else if let Some(t) = op.poll_timeout() {
            now = now.max(t);
            let _ = writeln!(log, "{now} timer");
            op.on_timeout(now);
        } else {
            panic!("operation stalled:\n{log}");
        }
    }
    panic!("operation did not finish in 10,000 steps:\n{log}");
}
