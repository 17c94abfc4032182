//! One unary PD request, sent to the PD leader with discovery and failover.

use std::sync::Arc;

use tikv_proto::pdpb;

use crate::backoff::{BackoffKind, Backoffer};
use crate::error::Error;
use crate::op::Operation;
use crate::pd::PdState;
use crate::rpc::{PdRequest, PdResponse, Request, Response, Rpc, RpcError, RpcId, Target};
use crate::time::{Duration, Instant};

#[derive(Debug)]
enum Phase {
    /// Not started.
    Idle,
    /// Asking `endpoints[index]` for the member list; `tried` endpoints
    /// have failed in this round.
    Discovering { index: usize, tried: usize },
    /// The request is out to the leader at `addr`.
    Calling { addr: Arc<str> },
    /// Sleeping before a new discovery round.
    Sleeping { until: Instant },
    /// Result produced.
    Done,
}

/// Sends one PD request to the leader (client-go's PD client does this under
/// every `pd.Client` method).
///
/// - No known leader: ask each configured endpoint in turn for `GetMembers`
///   and take the reported leader's first client URL. A round in which no
///   endpoint names a leader sleeps `BoPDRPC` and starts over.
/// - A transport error from the leader forgets it and rediscovers after a
///   `BoPDRPC` sleep (PD followers refuse requests with a gRPC error, so a
///   leader change looks the same).
/// - A PD error header is returned as [`Error::Pd`] without retry.
/// - The backoff budget bounds everything: on exhaustion the error is
///   [`Error::BackoffExhausted`] with the PD-timeout class.
#[derive(Debug)]
pub struct PdCall {
    pd: Arc<PdState>,
    request: PdRequest,
    timeout: Duration,
    backoffer: Backoffer,
    phase: Phase,
    next_id: u64,
    in_flight: Option<RpcId>,
    outbox: Option<Rpc>,
    result: Option<Result<PdResponse, Error>>,
}

impl PdCall {
    /// A call of `request` with a per-RPC `timeout` and a retry budget.
    pub fn new(
        pd: Arc<PdState>,
        request: PdRequest,
        timeout: Duration,
        backoffer: Backoffer,
    ) -> PdCall {
        PdCall {
            pd,
            request,
            timeout,
            backoffer,
            phase: Phase::Idle,
            next_id: 0,
            in_flight: None,
            outbox: None,
            result: None,
        }
    }

    /// The backoffer, with whatever this call slept (for the parent to merge).
    pub fn backoffer(&self) -> &Backoffer {
        &self.backoffer
    }

    fn send(&mut self, target: Target, request: PdRequest, now: Instant) {
        self.next_id += 1;
        let id = RpcId(self.next_id);
        self.in_flight = Some(id);
        self.outbox =
            Some(Rpc { id, target, request: Request::Pd(request), deadline: now + self.timeout });
    }

    fn call_leader(&mut self, addr: Arc<str>, now: Instant) {
        let mut request = self.request.clone();
        request.set_cluster_id(self.pd.cluster_id());
        self.phase = Phase::Calling { addr: addr.clone() };
        self.send(Target::Pd { addr }, request, now);
    }

    fn discover(&mut self, index: usize, tried: usize, now: Instant) {
        let endpoints = self.pd.endpoints();
        if endpoints.is_empty() {
            self.finish(Err(Error::NoPdLeader("no PD endpoints configured".into())));
            return;
        }
        if tried >= endpoints.len() {
            self.back_off("no PD member named a reachable leader", now);
            return;
        }
        let addr = endpoints[index % endpoints.len()].clone();
        self.phase = Phase::Discovering { index: index % endpoints.len(), tried };
        let req = pdpb::GetMembersRequest {
            header: Some(pdpb::RequestHeader {
                cluster_id: self.pd.cluster_id(),
                ..Default::default()
            }),
        };
        self.send(Target::Pd { addr }, PdRequest::GetMembers(Box::new(req)), now);
    }

    fn back_off(&mut self, reason: impl std::fmt::Display, now: Instant) {
        match self.backoffer.backoff(BackoffKind::PdRpc, reason) {
            Ok(sleep) => self.phase = Phase::Sleeping { until: now + sleep },
            Err(e) => self.finish(Err(e)),
        }
    }

    fn finish(&mut self, result: Result<PdResponse, Error>) {
        self.phase = Phase::Done;
        self.in_flight = None;
        self.result = Some(result);
    }

    fn on_members(
        &mut self,
        index: usize,
        tried: usize,
        resp: Result<Response, RpcError>,
        now: Instant,
    ) {
        if let Err(e @ RpcError::Tls(_)) = resp {
            // Every member shares the one security configuration: asking
            // the next one would be refused the same way.
            self.finish(Err(Error::Rpc(e)));
            return;
        }
        let leader = match resp {
            Ok(Response::Pd(PdResponse::GetMembers(m))) => {
                if let Some(h) = &m.header {
                    self.pd.set_cluster_id(h.cluster_id);
                }
                m.leader.and_then(|l| l.client_urls.into_iter().find(|u| !u.is_empty()))
            }
            _ => None,
        };
        match leader {
            Some(url) => {
                let addr: Arc<str> = Arc::from(url.as_str());
                self.pd.set_leader(addr.clone());
                self.call_leader(addr, now);
            }
            None => self.discover(index + 1, tried + 1, now),
        }
    }

    fn on_call(&mut self, addr: Arc<str>, resp: Result<Response, RpcError>, now: Instant) {
        match resp {
            Ok(Response::Pd(r)) if std::mem::discriminant(&r) == self.expected() => {
                if let Some(h) = r.header() {
                    self.pd.set_cluster_id(h.cluster_id);
                }
                match r.pd_error() {
                    Some(e) => {
                        let err = Error::Pd { code: e.r#type, message: e.message.clone() };
                        self.finish(Err(err));
                    }
                    None => self.finish(Ok(r)),
                }
            }
            Ok(other) => {
                self.finish(Err(Error::malformed(format!(
                    "PD answered {} to {}",
                    other.name(),
                    self.request.name()
                ))));
            }
            Err(e @ (RpcError::Unimplemented(_) | RpcError::Tls(_))) => {
                // Not a leadership problem: the server does not know the
                // method, or TLS is misconfigured.
                self.finish(Err(Error::Rpc(e)));
            }
            Err(e) => {
                self.pd.forget_leader(&addr);
                self.back_off(format!("PD {addr} {}: {e}", self.request.name()), now);
            }
        }
    }

    fn expected(&self) -> std::mem::Discriminant<PdResponse> {
        std::mem::discriminant(&response_template(&self.request))
    }
}

/// An empty response of the kind that answers `req`.
fn response_template(req: &PdRequest) -> PdResponse {
    match req {
        PdRequest::GetMembers(_) => PdResponse::GetMembers(Default::default()),
        PdRequest::GetClusterInfo(_) => PdResponse::GetClusterInfo(Default::default()),
        PdRequest::GetRegion(_) => PdResponse::GetRegion(Default::default()),
        PdRequest::GetPrevRegion(_) => PdResponse::GetPrevRegion(Default::default()),
        PdRequest::GetRegionById(_) => PdResponse::GetRegionById(Default::default()),
        PdRequest::ScanRegions(_) => PdResponse::ScanRegions(Default::default()),
        PdRequest::BatchScanRegions(_) => PdResponse::BatchScanRegions(Default::default()),
        PdRequest::GetStore(_) => PdResponse::GetStore(Default::default()),
        PdRequest::GetAllStores(_) => PdResponse::GetAllStores(Default::default()),
        PdRequest::GetGcState(_) => PdResponse::GetGcState(Default::default()),
        PdRequest::AdvanceTxnSafePoint(_) => PdResponse::AdvanceTxnSafePoint(Default::default()),
        PdRequest::AdvanceGcSafePoint(_) => PdResponse::AdvanceGcSafePoint(Default::default()),
        PdRequest::UpdateGcSafePoint(_) => PdResponse::UpdateGcSafePoint(Default::default()),
        PdRequest::SetGcBarrier(_) => PdResponse::SetGcBarrier(Default::default()),
        PdRequest::DeleteGcBarrier(_) => PdResponse::DeleteGcBarrier(Default::default()),
        PdRequest::ScatterRegion(_) => PdResponse::ScatterRegion(Default::default()),
        PdRequest::GetOperator(_) => PdResponse::GetOperator(Default::default()),
        PdRequest::LoadKeyspace(_) => PdResponse::LoadKeyspace(Default::default()),
        PdRequest::Tso(_) => PdResponse::Tso(Default::default()),
    }
}

impl Operation for PdCall {
    type Output = PdResponse;

    fn start(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Idle) {
            return;
        }
        match self.pd.leader() {
            Some(addr) => self.call_leader(addr, now),
            None => self.discover(0, 0, now),
        }
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        self.outbox.take()
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        if self.in_flight != Some(id) {
            return;
        }
        self.in_flight = None;
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Discovering { index, tried } => self.on_members(index, tried, response, now),
            Phase::Calling { addr } => self.on_call(addr, response, now),
            other => self.phase = other,
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        if let Phase::Sleeping { until } = self.phase
            && now >= until
        {
            // Try the leader someone else may have found meanwhile.
            match self.pd.leader() {
                Some(addr) => self.call_leader(addr, now),
                None => self.discover(0, 0, now),
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Sleeping { until } => Some(until),
            _ => None,
        }
    }

    fn poll_result(&mut self) -> Option<Result<PdResponse, Error>> {
        self.result.take()
    }

    fn backoff_spent(&self) -> Option<&Backoffer> {
        Some(&self.backoffer)
    }
}

impl PdCall {
    /// Consumes the call, returning its backoffer (for a retry by the caller).
    pub fn into_backoffer(self) -> Backoffer {
        self.backoffer
    }
}
