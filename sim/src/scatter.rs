//! PD's region scatter as operators over time (`ScatterRegion` and
//! `GetOperator` of `server/grpc_service.go`).
//!
//! A scatter gives the region a `scatter-region` operator that runs for
//! [`SCATTER_DURATION`] of model time and then moves the region's leader
//! to its next running peer (every region already has a peer on up to three
//! stores, so leadership is what a scatter can spread here). `GetOperator`
//! reports the operator `RUNNING` until then and `SUCCESS` after; a region
//! that never had one is PD's `REGION_NOT_FOUND` "Not Found" header.
//! Simplified: no placement rules, no store limits, no groups
//! (`group`, `retry_limit` and `skip_store_limit` are ignored), and an
//! operator never fails or times out.

use tikv_core::time::{Duration, Instant};
use tikv_proto::pdpb;

use crate::cluster::State;

/// How long a scatter operator runs.
pub const SCATTER_DURATION: Duration = Duration::from_millis(200);

/// One region's latest operator.
#[derive(Clone, Debug)]
pub(crate) struct Operator {
    finish_at: Instant,
    /// Its effect (the leader move) has been applied.
    done: bool,
}

impl State {
    /// Applies every operator whose time has come.
    fn settle_operators(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .pd
            .operators
            .iter()
            .filter(|(_, op)| !op.done && now >= op.finish_at)
            .map(|(id, _)| *id)
            .collect();
        for region_id in due {
            if let Some(op) = self.pd.operators.get_mut(&region_id) {
                op.done = true;
            }
            let Some(region) = self.region_by_id(region_id) else { continue };
            let stores: Vec<u64> = region.meta.peers.iter().map(|p| p.store_id).collect();
            let leader = region.leader_store;
            let at = stores.iter().position(|s| *s == leader).unwrap_or(0);
            let next = (1..=stores.len())
                .map(|i| stores[(at + i) % stores.len()])
                .find(|s| self.stores.get(s).is_some_and(|st| st.running));
            if let Some(store) = next {
                let _ = self.transfer_leader(region_id, store);
            }
        }
    }

    /// `ScatterRegion`: with `regions_id`, one operator per known region
    /// (unknown ones are reported failed, the percentage counts the rest);
    /// with the deprecated single `region_id`, that region or
    /// `REGION_NOT_FOUND`.
    pub(crate) fn scatter_region(
        &mut self,
        r: &pdpb::ScatterRegionRequest,
        now: Instant,
    ) -> pdpb::ScatterRegionResponse {
        self.settle_operators(now);
        #[allow(deprecated)]
        let single = r.region_id;
        let ids = if r.regions_id.is_empty() { vec![single] } else { r.regions_id.clone() };
        let mut failed = Vec::new();
        for id in &ids {
            if self.region_by_id(*id).is_none() {
                failed.push(*id);
                continue;
            }
            let op = Operator { finish_at: now + SCATTER_DURATION, done: false };
            self.pd.operators.insert(*id, op);
        }
        if r.regions_id.is_empty() && !failed.is_empty() {
            return pdpb::ScatterRegionResponse {
                header: self.error_header(
                    pdpb::ErrorType::RegionNotFound,
                    &format!("region {single} not found"),
                ),
                ..Default::default()
            };
        }
        let ok = ids.len() - failed.len();
        pdpb::ScatterRegionResponse {
            header: self.header(),
            finished_percentage: (ok * 100 / ids.len().max(1)) as u64,
            failed_regions_id: failed,
        }
    }

    /// `GetOperator`: the region's latest operator and its status.
    pub(crate) fn get_operator(
        &mut self,
        r: &pdpb::GetOperatorRequest,
        now: Instant,
    ) -> pdpb::GetOperatorResponse {
        self.settle_operators(now);
        match self.pd.operators.get(&r.region_id) {
            None => pdpb::GetOperatorResponse {
                header: self.error_header(pdpb::ErrorType::RegionNotFound, "Not Found"),
                ..Default::default()
            },
            Some(op) => pdpb::GetOperatorResponse {
                header: self.header(),
                region_id: r.region_id,
                desc: "scatter-region".into(),
                status: if op.done {
                    pdpb::OperatorStatus::Success as i32
                } else {
                    pdpb::OperatorStatus::Running as i32
                },
                kind: "admin,leader".into(),
            },
        }
    }
}
