//! PD's answers, following `server/grpc_service.go`, `server/keyspace_service.go`,
//! `server/gc_service.go` and `pkg/utils/grpcutil/cluster.go` of `tikv/pd`.
//!
//! Every response header carries the cluster id. GetMembers and
//! GetClusterInfo are answered by any member without checks (clients use them
//! to discover the cluster id and leader). Every other unary call goes through
//! `validateRoleInRequest`: a follower answers gRPC `Unavailable` "not leader"
//! (follower handling is not modelled), and a request header with another
//! cluster id gets `FailedPrecondition` "mismatch cluster id". The TSO stream
//! on a follower fails with `Unknown` carrying PD's "is not leader" text.

use std::collections::BTreeMap;

use tikv_core::rpc::{PdRequest, PdResponse, RpcError};
use tikv_core::time::Instant;
use tikv_proto::{keyspacepb, metapb, pdpb};

use crate::cluster::{Region, State, containing};

/// gRPC status codes PD uses here.
const UNKNOWN: i32 = 2;
const FAILED_PRECONDITION: i32 = 9;
const UNAVAILABLE: i32 = 14;

/// PD's logical counter has 18 bits.
const MAX_LOGICAL: i64 = 1 << 18;

fn status(code: i32, message: impl Into<String>) -> RpcError {
    RpcError::Status { code, message: message.into() }
}

impl State {
    pub(crate) fn header(&self) -> Option<pdpb::ResponseHeader> {
        Some(pdpb::ResponseHeader { cluster_id: self.cfg.cluster_id, error: None })
    }

    pub(crate) fn error_header(
        &self,
        kind: pdpb::ErrorType,
        message: &str,
    ) -> Option<pdpb::ResponseHeader> {
        Some(pdpb::ResponseHeader {
            cluster_id: self.cfg.cluster_id,
            error: Some(pdpb::Error { r#type: kind as i32, message: message.to_owned() }),
        })
    }

    /// `validateRoleInRequest` without follower handling.
    fn validate(
        &self,
        member: usize,
        header: Option<&pdpb::RequestHeader>,
    ) -> Result<(), RpcError> {
        if member != self.pd.leader {
            return Err(status(UNAVAILABLE, "not leader"));
        }
        let got = header.map_or(0, |h| h.cluster_id);
        if got != self.cfg.cluster_id {
            return Err(status(
                FAILED_PRECONDITION,
                format!("mismatch cluster id, need {} but got {}", self.cfg.cluster_id, got),
            ));
        }
        Ok(())
    }

    /// The region directory PD answers from: frozen when stale.
    fn pd_regions(&self) -> &BTreeMap<Vec<u8>, Region> {
        self.pd.stale_regions.as_ref().unwrap_or(&self.regions)
    }

    fn region_response(&self, region: Option<&Region>) -> pdpb::GetRegionResponse {
        match region {
            // The leader answers a miss with an empty, error-free response.
            None => pdpb::GetRegionResponse { header: self.header(), ..Default::default() },
            Some(r) => pdpb::GetRegionResponse {
                header: self.header(),
                region: Some(r.meta.clone()),
                leader: r.leader(),
                ..Default::default()
            },
        }
    }

    fn pd_region(r: &Region) -> pdpb::Region {
        pdpb::Region {
            region: Some(r.meta.clone()),
            leader: Some(r.leader().unwrap_or_default()),
            ..Default::default()
        }
    }

    /// Regions overlapping `[start, end)` (empty end: unbounded), in key order.
    fn overlapping<'a>(
        &'a self,
        start: &[u8],
        end: &'a [u8],
    ) -> impl Iterator<Item = &'a Region> + 'a {
        let regions = self.pd_regions();
        let first = containing(regions, start)
            .map(|r| r.meta.start_key.to_vec())
            .unwrap_or_else(|| start.to_vec());
        regions
            .range(first..)
            .map(|(_, r)| r)
            .take_while(move |r| end.is_empty() || &r.meta.start_key[..] < end)
    }

    pub(crate) fn handle_pd(
        &mut self,
        member: usize,
        req: PdRequest,
        now: Instant,
    ) -> Result<PdResponse, RpcError> {
        self.last_now = self.last_now.max(now);
        if member >= self.pd.members.len() {
            return Err(RpcError::Unavailable(format!("PD member {member} does not exist")));
        }
        if let Some(e) = self.take_pd_injection(member, req.name()) {
            return Err(e);
        }
        Ok(match req {
            PdRequest::GetMembers(_) => {
                let leader = self.pd.members.get(self.pd.leader).cloned();
                PdResponse::GetMembers(Box::new(pdpb::GetMembersResponse {
                    header: self.header(),
                    members: self.pd.members.clone(),
                    leader: leader.clone(),
                    etcd_leader: leader,
                    ..Default::default()
                }))
            }
            PdRequest::GetClusterInfo(_) => {
                PdResponse::GetClusterInfo(Box::new(pdpb::GetClusterInfoResponse {
                    header: self.header(),
                    service_modes: vec![pdpb::ServiceMode::PdSvcMode as i32],
                    tso_urls: Vec::new(),
                }))
            }
            PdRequest::Tso(r) => PdResponse::Tso(Box::new(self.tso(member, *r, now)?)),
            PdRequest::GetRegion(r) => {
                self.validate(member, r.header.as_ref())?;
                let region = containing(self.pd_regions(), &r.region_key);
                PdResponse::GetRegion(Box::new(self.region_response(region)))
            }
            PdRequest::GetPrevRegion(r) => {
                self.validate(member, r.header.as_ref())?;
                // `getPrevRegion`: the region just before the one containing the key.
                let regions = self.pd_regions();
                let prev = containing(regions, &r.region_key)
                    .and_then(|cur| regions.range(..cur.meta.start_key.to_vec()).next_back())
                    .map(|(_, r)| r);
                PdResponse::GetPrevRegion(Box::new(self.region_response(prev)))
            }
            PdRequest::GetRegionById(r) => {
                self.validate(member, r.header.as_ref())?;
                let region = self.pd_regions().values().find(|x| x.meta.id == r.region_id);
                PdResponse::GetRegionById(Box::new(self.region_response(region)))
            }
            PdRequest::ScanRegions(r) => {
                self.validate(member, r.header.as_ref())?;
                let limit = if r.limit <= 0 { usize::MAX } else { r.limit as usize };
                let found: Vec<&Region> =
                    self.overlapping(&r.start_key, &r.end_key).take(limit).collect();
                PdResponse::ScanRegions(Box::new(pdpb::ScanRegionsResponse {
                    header: self.header(),
                    region_metas: found.iter().map(|x| x.meta.clone()).collect(),
                    leaders: found.iter().map(|x| x.leader().unwrap_or_default()).collect(),
                    regions: found.iter().map(|x| Self::pd_region(x)).collect(),
                }))
            }
            PdRequest::BatchScanRegions(r) => {
                self.validate(member, r.header.as_ref())?;
                PdResponse::BatchScanRegions(Box::new(self.batch_scan_regions(&r)))
            }
            PdRequest::GetStore(r) => {
                self.validate(member, r.header.as_ref())?;
                PdResponse::GetStore(Box::new(match self.stores.get(&r.store_id) {
                    Some(s) => pdpb::GetStoreResponse {
                        header: self.header(),
                        store: Some(s.meta.clone()),
                        stats: Some(pdpb::StoreStats {
                            store_id: r.store_id,
                            ..Default::default()
                        }),
                    },
                    None => pdpb::GetStoreResponse {
                        header: self.error_header(
                            pdpb::ErrorType::Unknown,
                            &format!("invalid store ID {}, not found", r.store_id),
                        ),
                        ..Default::default()
                    },
                }))
            }
            PdRequest::GetAllStores(r) => {
                self.validate(member, r.header.as_ref())?;
                let stores = self
                    .stores
                    .values()
                    .filter(|s| {
                        !r.exclude_tombstone_stores
                            || s.meta.node_state != metapb::NodeState::Removed as i32
                    })
                    .map(|s| s.meta.clone())
                    .collect();
                PdResponse::GetAllStores(Box::new(pdpb::GetAllStoresResponse {
                    header: self.header(),
                    stores,
                }))
            }
            PdRequest::GetGcState(r) => {
                self.validate(member, r.header.as_ref())?;
                PdResponse::GetGcState(Box::new(self.get_gc_state(&r, now)))
            }
            PdRequest::AdvanceTxnSafePoint(r) => {
                self.validate(member, r.header.as_ref())?;
                PdResponse::AdvanceTxnSafePoint(Box::new(self.advance_txn_safe_point(&r, now)))
            }
            PdRequest::AdvanceGcSafePoint(r) => {
                self.validate(member, r.header.as_ref())?;
                PdResponse::AdvanceGcSafePoint(Box::new(self.advance_gc_safe_point(&r)))
            }
            PdRequest::UpdateGcSafePoint(r) => {
                self.validate(member, r.header.as_ref())?;
                PdResponse::UpdateGcSafePoint(Box::new(self.update_gc_safe_point(&r)?))
            }
            PdRequest::SetGcBarrier(r) => {
                self.validate(member, r.header.as_ref())?;
                PdResponse::SetGcBarrier(Box::new(self.set_gc_barrier(&r, now)))
            }
            PdRequest::DeleteGcBarrier(r) => {
                self.validate(member, r.header.as_ref())?;
                PdResponse::DeleteGcBarrier(Box::new(self.delete_gc_barrier(&r, now)))
            }
            PdRequest::ScatterRegion(r) => {
                self.validate(member, r.header.as_ref())?;
                PdResponse::ScatterRegion(Box::new(self.scatter_region(&r, now)))
            }
            PdRequest::GetOperator(r) => {
                self.validate(member, r.header.as_ref())?;
                PdResponse::GetOperator(Box::new(self.get_operator(&r, now)))
            }
            PdRequest::LoadKeyspace(r) => {
                self.validate(member, r.header.as_ref())?;
                PdResponse::LoadKeyspace(Box::new(match self.pd.keyspaces.get(&r.name) {
                    Some(meta) => keyspacepb::LoadKeyspaceResponse {
                        header: self.header(),
                        keyspace: Some(meta.clone()),
                    },
                    None => keyspacepb::LoadKeyspaceResponse {
                        header: self.error_header(
                            pdpb::ErrorType::EntryNotFound,
                            "[PD:keyspace:ErrKeyspaceNotFound]keyspace does not exist",
                        ),
                        keyspace: None,
                    },
                }))
            }
        })
    }

    /// `GrpcServer.Tso` + the TSO allocator's `GenerateTSO`: physical time
    /// follows the model clock (never backwards), the logical counter
    /// advances by `count`, and the response carries the last timestamp of
    /// the batch.
    pub(crate) fn tso(
        &mut self,
        member: usize,
        r: pdpb::TsoRequest,
        now: Instant,
    ) -> Result<pdpb::TsoResponse, RpcError> {
        if member != self.pd.leader {
            return Err(status(
                UNKNOWN,
                "[PD:tso:ErrGenerateTimestamp]generate timestamp failed, requested pd is not leader of cluster",
            ));
        }
        let got = r.header.as_ref().map_or(0, |h| h.cluster_id);
        if got != self.cfg.cluster_id {
            return Err(status(
                FAILED_PRECONDITION,
                format!("mismatch cluster id, need {} but got {}", self.cfg.cluster_id, got),
            ));
        }
        if r.count == 0 {
            return Err(status(
                UNKNOWN,
                "[PD:tso:ErrGenerateTimestamp]generate timestamp failed, tso count should be positive",
            ));
        }
        if i64::from(r.count) >= MAX_LOGICAL {
            // More logical values than one physical millisecond holds.
            return Err(status(
                UNKNOWN,
                "[PD:tso:ErrGenerateTimestamp]generate timestamp failed, tso count exceeds the logical range",
            ));
        }
        let count = i64::from(r.count);
        let clock = i64::try_from(self.cfg.tso_base_ms.saturating_add(now.as_nanos() / 1_000_000))
            .unwrap_or(i64::MAX);
        let (mut physical, mut logical) = self.pd.tso;
        if clock > physical {
            physical = clock;
            logical = 0;
        }
        if logical + count >= MAX_LOGICAL {
            // PD would wait for the next physical tick; the model moves the
            // physical part one millisecond ahead instead.
            physical += 1;
            logical = 0;
        }
        logical += count;
        self.pd.tso = (physical, logical);
        Ok(pdpb::TsoResponse {
            header: self.header(),
            count: r.count,
            timestamp: Some(pdpb::Timestamp { physical, logical, suffix_bits: 0 }),
        })
    }

    /// `grpcutil.BatchScanRegions`: ranges must be ordered and not overlap;
    /// regions met by several ranges are reported once; `limit` caps the total.
    fn batch_scan_regions(
        &self,
        r: &pdpb::BatchScanRegionsRequest,
    ) -> pdpb::BatchScanRegionsResponse {
        for (i, range) in r.ranges.iter().enumerate() {
            if i > 0 && range.start_key < r.ranges[i - 1].end_key {
                return pdpb::BatchScanRegionsResponse {
                    header: self.error_header(
                        pdpb::ErrorType::Unknown,
                        "invalid key range, ranges overlapped",
                    ),
                    regions: Vec::new(),
                };
            }
            if !range.end_key.is_empty() && range.start_key > range.end_key {
                return pdpb::BatchScanRegionsResponse {
                    header: self.error_header(
                        pdpb::ErrorType::Unknown,
                        "invalid key range, start key > end key",
                    ),
                    regions: Vec::new(),
                };
            }
        }
        let limit = if r.limit <= 0 { usize::MAX } else { r.limit as usize };
        let mut out: Vec<pdpb::Region> = Vec::new();
        let mut last_id = None;
        'ranges: for range in &r.ranges {
            for region in self.overlapping(&range.start_key, &range.end_key) {
                if last_id == Some(region.meta.id) {
                    continue;
                }
                if out.len() >= limit {
                    break 'ranges;
                }
                last_id = Some(region.meta.id);
                out.push(Self::pd_region(region));
            }
        }
        pdpb::BatchScanRegionsResponse { header: self.header(), regions: out }
    }
}
