//! Loading regions and stores from PD into the client's caches.

use std::sync::Arc;

use tikv_proto::{metapb, pdpb};

use crate::backoff::{BackoffKind, Backoffer};
use crate::error::Error;
use crate::key::Key;
use crate::op::Operation;
use crate::pd::PdCall;
use crate::region::{InsertError, RegionRef, StoreInfo};
use crate::rpc::{PdRequest, PdResponse, Response, Rpc, RpcError, RpcId};
use crate::time::Instant;
use crate::view::ClusterView;

/// Which region to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocateBy {
    /// The region containing this key.
    Key(Key),
    /// The region containing the keys just below this key (reverse scans);
    /// client-go's `LocateEndKey`.
    EndKey(Key),
    /// The region with this id.
    Id(u64),
}

/// Finds a region: from the cache if it is there, else from PD (then cached).
///
/// Follows client-go's `loadRegion`: `GetRegion(key)`; for an end key whose
/// region starts exactly at the key, ask again with `GetPrevRegion`; a missing
/// region or one without peers backs off `BoRegionMiss` and asks again.
#[derive(Debug)]
pub struct LocateRegion {
    view: Arc<ClusterView>,
    by: LocateBy,
    search_prev: bool,
    call: Option<PdCall>,
    backoffer: Option<Backoffer>,
    sleep_until: Option<Instant>,
    result: Option<Result<RegionRef, Error>>,
}

impl LocateRegion {
    /// Locates `by` with a retry budget.
    pub fn new(view: Arc<ClusterView>, by: LocateBy, backoffer: Backoffer) -> LocateRegion {
        LocateRegion {
            view,
            by,
            search_prev: false,
            call: None,
            backoffer: Some(backoffer),
            sleep_until: None,
            result: None,
        }
    }

    /// The backoffer, after the operation finished (for merging).
    pub fn take_backoffer(&mut self) -> Option<Backoffer> {
        self.backoffer.take().or_else(|| self.call.take().map(PdCall::into_backoffer))
    }

    fn cached(&self, now: Instant) -> Option<RegionRef> {
        match &self.by {
            LocateBy::Key(k) => self.view.regions.locate_key(k.as_bytes(), now),
            LocateBy::EndKey(k) => self.view.regions.locate_end_key(k.as_bytes(), now),
            LocateBy::Id(id) => self.view.regions.get_by_id(*id, now),
        }
    }

    /// The PD region key to ask about: the encoded key, or for an unbounded
    /// end key the end of the keyspace (API V2). In API V1 there is no such
    /// key: PD has no query for "the last region" and `GetRegion("")` is the
    /// first region, so client-go cannot locate it either.
    fn region_key(&self, key: &Key, is_end: bool) -> Result<Vec<u8>, Error> {
        let codec = &self.view.codec;
        if is_end && key.is_empty() {
            let (_, end) = codec.encode_region_range(&crate::key::KeyRange::all());
            if end.is_empty() {
                return Err(Error::Unsupported(
                    "locating the last region (a reverse scan without an upper bound) needs API V2"
                        .into(),
                ));
            }
            return Ok(end);
        }
        Ok(codec.encode_region_key(key))
    }

    fn request(&self) -> Result<PdRequest, Error> {
        Ok(match &self.by {
            LocateBy::Key(k) => PdRequest::GetRegion(Box::new(pdpb::GetRegionRequest {
                region_key: self.region_key(k, false)?.into(),
                ..Default::default()
            })),
            LocateBy::EndKey(k) => {
                let req = pdpb::GetRegionRequest {
                    region_key: self.region_key(k, true)?.into(),
                    ..Default::default()
                };
                if self.search_prev {
                    PdRequest::GetPrevRegion(Box::new(req))
                } else {
                    PdRequest::GetRegion(Box::new(req))
                }
            }
            LocateBy::Id(id) => PdRequest::GetRegionById(Box::new(pdpb::GetRegionByIdRequest {
                region_id: *id,
                ..Default::default()
            })),
        })
    }

    fn ask_pd(&mut self, now: Instant) {
        let Some(backoffer) = self.backoffer.take() else {
            return;
        };
        match self.request() {
            Ok(request) => {
                let mut call = PdCall::new(
                    self.view.pd.clone(),
                    request,
                    self.view.config.pd_timeout,
                    backoffer,
                );
                call.start(now);
                self.call = Some(call);
            }
            Err(e) => {
                self.backoffer = Some(backoffer);
                self.result = Some(Err(e));
            }
        }
    }

    fn retry_later(&mut self, mut backoffer: Backoffer, reason: String, now: Instant) {
        match backoffer.backoff(BackoffKind::RegionMiss, reason) {
            Ok(sleep) => self.sleep_until = Some(now + sleep),
            Err(e) => self.result = Some(Err(e)),
        }
        self.backoffer = Some(backoffer);
    }

    fn on_answer(
        &mut self,
        resp: Box<pdpb::GetRegionResponse>,
        backoffer: Backoffer,
        now: Instant,
    ) {
        let Some(region) = resp.region else {
            if let LocateBy::Id(id) = self.by {
                self.backoffer = Some(backoffer);
                self.result = Some(Err(Error::Pd {
                    code: pdpb::ErrorType::RegionNotFound as i32,
                    message: format!("region {id} not found"),
                }));
            } else {
                self.retry_later(backoffer, format!("PD has no region for {:?}", self.by), now);
            }
            return;
        };
        if region.peers.is_empty() {
            self.retry_later(backoffer, format!("region {} has no available peer", region.id), now);
            return;
        }
        if let LocateBy::EndKey(k) = &self.by {
            let encoded = self.view.codec.encode_region_key(k);
            if !self.search_prev
                && !region.start_key.is_empty()
                && region.start_key[..] == encoded[..]
            {
                // The key is this region's start: the keys below it live in
                // the previous region.
                self.search_prev = true;
                self.backoffer = Some(backoffer);
                self.ask_pd(now);
                return;
            }
        }
        self.backoffer = Some(backoffer);
        let decoded = match self.view.codec.decode_region(region) {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.result = Some(Err(Error::malformed(format!(
                    "PD returned a region outside the keyspace for {:?}",
                    self.by
                ))));
                return;
            }
            Err(e) => {
                self.result = Some(Err(e));
                return;
            }
        };
        match self.view.regions.insert(decoded, resp.leader, now) {
            Ok(region) => self.result = Some(Ok(region)),
            // PD handed out a region older than one we cached (client-go
            // reloads from the leader): ask again after a short sleep.
            Err(InsertError::Stale { offered, cached }) => {
                let backoffer = self.backoffer.take();
                if let Some(backoffer) = backoffer {
                    self.retry_later(
                        backoffer,
                        format!("PD returned {offered}, older than {cached}"),
                        now,
                    );
                }
            }
            Err(e) => self.result = Some(Err(e.into())),
        }
    }
}

impl Operation for LocateRegion {
    type Output = RegionRef;

    fn start(&mut self, now: Instant) {
        if let Some(region) = self.cached(now) {
            self.result = Some(Ok(region));
            return;
        }
        self.ask_pd(now);
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        self.call.as_mut().and_then(|c| c.poll_rpc())
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        let Some(call) = self.call.as_mut() else {
            return;
        };
        call.on_response(id, response, now);
        if let Some(outcome) = call.poll_result() {
            let backoffer = self.call.take().map(PdCall::into_backoffer);
            let Some(backoffer) = backoffer else {
                return;
            };
            match outcome {
                Ok(PdResponse::GetRegion(r))
                | Ok(PdResponse::GetPrevRegion(r))
                | Ok(PdResponse::GetRegionById(r)) => self.on_answer(r, backoffer, now),
                Ok(other) => {
                    self.backoffer = Some(backoffer);
                    self.result =
                        Some(Err(Error::malformed(format!("unexpected {}", other.name()))));
                }
                Err(e) => {
                    self.backoffer = Some(backoffer);
                    self.result = Some(Err(e));
                }
            }
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        if let Some(call) = self.call.as_mut() {
            call.on_timeout(now);
            if let Some(Err(e)) = call.poll_result() {
                self.backoffer = self.call.take().map(PdCall::into_backoffer);
                self.result = Some(Err(e));
            }
            return;
        }
        if let Some(until) = self.sleep_until
            && now >= until
        {
            self.sleep_until = None;
            if let Some(region) = self.cached(now) {
                self.result = Some(Ok(region));
            } else {
                self.ask_pd(now);
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match &self.call {
            Some(call) => call.poll_timeout(),
            None => self.sleep_until,
        }
    }

    fn poll_result(&mut self) -> Option<Result<RegionRef, Error>> {
        self.result.take()
    }
}

/// Loads one store's address from PD into the store table (client-go's
/// store resolve: `GetStore`).
#[derive(Debug)]
pub struct ResolveStore {
    view: Arc<ClusterView>,
    store_id: u64,
    /// Asks PD even if the table holds a usable entry, and records a store
    /// PD no longer knows as a tombstone ([`ResolveStore::again`]).
    again: bool,
    call: Option<PdCall>,
    result: Option<Result<Arc<StoreInfo>, Error>>,
}

impl ResolveStore {
    /// Resolves `store_id` with a retry budget.
    pub fn new(view: Arc<ClusterView>, store_id: u64, backoffer: Backoffer) -> ResolveStore {
        let request =
            PdRequest::GetStore(Box::new(pdpb::GetStoreRequest { store_id, ..Default::default() }));
        let call = PdCall::new(view.pd.clone(), request, view.config.pd_timeout, backoffer);
        ResolveStore { view, store_id, again: false, call: Some(call), result: None }
    }

    /// client-go `Store.reResolve`, which its health-check loop runs for a
    /// store that stays unreachable: asks PD about `store_id` even though
    /// the table holds it. A changed address or labels replace the entry
    /// (holders see the old one deleted and look it up again); a store PD
    /// no longer knows (no store, or PD's "invalid store ID .. not found")
    /// or a tombstone is recorded as a tombstone, so it is no longer
    /// probed or chosen.
    pub fn again(view: Arc<ClusterView>, store_id: u64, backoffer: Backoffer) -> ResolveStore {
        ResolveStore { again: true, ..ResolveStore::new(view, store_id, backoffer) }
    }

    /// The backoffer, once finished.
    pub fn take_backoffer(&mut self) -> Option<Backoffer> {
        self.call.take().map(PdCall::into_backoffer)
    }

    fn check(&mut self) {
        let Some(call) = self.call.as_mut() else {
            return;
        };
        if let Some(outcome) = call.poll_result() {
            let removed = || metapb::Store {
                id: self.store_id,
                state: metapb::StoreState::Tombstone as i32,
                ..Default::default()
            };
            self.result = Some(match outcome {
                Ok(PdResponse::GetStore(r)) => match r.store {
                    Some(store) => self.view.stores.insert(store),
                    None if self.again => self.view.stores.insert(removed()),
                    None => Err(Error::Pd {
                        code: pdpb::ErrorType::Unknown as i32,
                        message: format!("store {} not found", self.store_id),
                    }),
                },
                // client-go's `isStoreNotFoundError`.
                Err(Error::Pd { message, .. })
                    if self.again
                        && message.contains("invalid store ID")
                        && message.contains("not found") =>
                {
                    self.view.stores.insert(removed())
                }
                Ok(other) => Err(Error::malformed(format!("unexpected {}", other.name()))),
                Err(e) => Err(e),
            });
        }
    }
}

impl Operation for ResolveStore {
    type Output = Arc<StoreInfo>;

    fn start(&mut self, now: Instant) {
        if !self.again
            && let Some(store) = self.view.stores.get(self.store_id)
        {
            self.result = Some(Ok(store));
            return;
        }
        if let Some(call) = self.call.as_mut() {
            call.start(now);
        }
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        if self.result.is_some() {
            return None;
        }
        self.call.as_mut().and_then(|c| c.poll_rpc())
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        if let Some(call) = self.call.as_mut() {
            call.on_response(id, response, now);
        }
        self.check();
    }

    fn on_timeout(&mut self, now: Instant) {
        if let Some(call) = self.call.as_mut() {
            call.on_timeout(now);
        }
        self.check();
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.result.is_some() {
            return None;
        }
        self.call.as_ref().and_then(|c| c.poll_timeout())
    }

    fn poll_result(&mut self) -> Option<Result<Arc<StoreInfo>, Error>> {
        self.result.take()
    }
}

/// Loads up to `limit` consecutive regions covering `range` with one PD
/// `BatchScanRegions` call and caches them (client-go's
/// `BatchLoadRegionsWithKeyRange`). A range walk uses it on a cache miss, so
/// a scan over many uncached regions costs one PD round per `limit` regions
/// instead of one per region.
#[derive(Debug)]
pub struct LoadRegions {
    view: Arc<ClusterView>,
    call: Option<PdCall>,
    backoffer: Option<Backoffer>,
    result: Option<Result<Vec<RegionRef>, Error>>,
}

impl LoadRegions {
    /// Loads the regions of `range` (user keys), at most `limit` of them.
    pub fn new(
        view: Arc<ClusterView>,
        range: &crate::key::KeyRange,
        limit: usize,
        backoffer: Backoffer,
    ) -> LoadRegions {
        let (start_key, end_key) = view.codec.encode_region_range(range);
        let request = PdRequest::BatchScanRegions(Box::new(pdpb::BatchScanRegionsRequest {
            ranges: vec![pdpb::KeyRange { start_key: start_key.into(), end_key: end_key.into() }],
            limit: i32::try_from(limit).unwrap_or(i32::MAX),
            ..Default::default()
        }));
        let call = PdCall::new(view.pd.clone(), request, view.config.pd_timeout, backoffer);
        LoadRegions { view, call: Some(call), backoffer: None, result: None }
    }

    /// The backoffer, once finished.
    pub fn take_backoffer(&mut self) -> Option<Backoffer> {
        self.backoffer.take().or_else(|| self.call.take().map(PdCall::into_backoffer))
    }

    fn check(&mut self, now: Instant) {
        let Some(outcome) = self.call.as_mut().and_then(|c| c.poll_result()) else {
            return;
        };
        self.backoffer = self.call.take().map(PdCall::into_backoffer);
        self.result = Some(match outcome {
            Ok(PdResponse::BatchScanRegions(r)) => {
                let mut loaded = Vec::with_capacity(r.regions.len());
                for region in r.regions {
                    let Some(meta) = region.region else {
                        continue;
                    };
                    // Regions outside our keyspace, or ones the cache refuses
                    // (stale, no peers), are skipped: a later locate asks PD
                    // for that key alone.
                    if let Ok(Some(decoded)) = self.view.codec.decode_region(meta)
                        && let Ok(cached) = self.view.regions.insert(decoded, region.leader, now)
                    {
                        loaded.push(cached);
                    }
                }
                Ok(loaded)
            }
            Ok(other) => Err(Error::malformed(format!("unexpected {}", other.name()))),
            Err(e) => Err(e),
        });
    }
}

impl Operation for LoadRegions {
    type Output = Vec<RegionRef>;

    fn start(&mut self, now: Instant) {
        if let Some(call) = self.call.as_mut() {
            call.start(now);
        }
        self.check(now);
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        self.call.as_mut().and_then(|c| c.poll_rpc())
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        if let Some(call) = self.call.as_mut() {
            call.on_response(id, response, now);
        }
        self.check(now);
    }

    fn on_timeout(&mut self, now: Instant) {
        if let Some(call) = self.call.as_mut() {
            call.on_timeout(now);
        }
        self.check(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.call.as_ref().and_then(|c| c.poll_timeout())
    }

    fn poll_result(&mut self) -> Option<Result<Vec<RegionRef>, Error>> {
        self.result.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::Request;
    use crate::testing::FakeCluster;
    use crate::time::Duration;

    fn store(id: u64, address: &str) -> metapb::Store {
        metapb::Store { id, address: address.into(), ..Default::default() }
    }

    /// Runs `op` against a fake PD whose `GetStore` answers `answer`.
    fn run_again(
        view: &Arc<ClusterView>,
        store_id: u64,
        answer: Result<Response, RpcError>,
    ) -> Result<Arc<StoreInfo>, Error> {
        let mut pd = FakeCluster::new(&[]);
        let mut op = ResolveStore::again(view.clone(), store_id, view.backoffer(Duration::ZERO));
        let mut now = Instant::ZERO;
        op.start(now);
        let mut asked = 0;
        for _ in 0..10 {
            while let Some(rpc) = op.poll_rpc() {
                now += Duration::from_millis(1);
                let response = match &rpc.request {
                    Request::Pd(PdRequest::GetStore(r)) => {
                        assert_eq!(r.store_id, store_id);
                        asked += 1;
                        answer.clone()
                    }
                    _ => pd.handle(&rpc),
                };
                op.on_response(rpc.id, response, now);
            }
            if let Some(result) = op.poll_result() {
                assert_eq!(asked, 1, "PD is asked once, though the table holds the store");
                return result;
            }
        }
        panic!("did not finish");
    }

    fn get_store(store: Option<metapb::Store>, error: Option<&str>) -> Result<Response, RpcError> {
        let error = error.map(|message| pdpb::Error {
            r#type: pdpb::ErrorType::Unknown as i32,
            message: message.into(),
        });
        Ok(Response::Pd(PdResponse::GetStore(Box::new(pdpb::GetStoreResponse {
            header: Some(pdpb::ResponseHeader { cluster_id: 7, error }),
            store,
            ..Default::default()
        }))))
    }

    /// client-go's `reResolve`: PD is asked even though the table holds the
    /// store; a moved store replaces its entry (the old one reads deleted),
    /// an unchanged one keeps it, and a store PD no longer knows becomes a
    /// tombstone, whether PD answers without a store or with its "not
    /// found" error.
    #[test]
    fn again_asks_pd_and_records_a_move_or_a_removal() {
        let view = crate::testing::view();
        let old = view.stores.insert(store(1, "s1:20160")).unwrap();
        view.stores.insert(store(2, "s2:20160")).unwrap();
        view.stores.insert(store(3, "s3:20160")).unwrap();

        let same = run_again(&view, 1, get_store(Some(store(1, "s1:20160")), None)).unwrap();
        assert!(Arc::ptr_eq(&same, &old), "unchanged: the entry is kept");
        let moved = run_again(&view, 1, get_store(Some(store(1, "s1b:20160")), None)).unwrap();
        assert_eq!(&*moved.address, "s1b:20160");
        assert_eq!(old.resolve_state(), crate::region::ResolveState::Deleted);
        assert_eq!(&*view.stores.get(1).unwrap().address, "s1b:20160");

        let gone = run_again(&view, 2, get_store(None, None)).unwrap();
        assert!(gone.is_tombstone());
        let not_found = "invalid store ID 3, not found";
        let gone = run_again(&view, 3, get_store(None, Some(not_found))).unwrap();
        assert!(gone.is_tombstone());
        assert!(view.stores.get(3).unwrap().is_tombstone());

        // Any other failure changes nothing.
        view.stores.insert(store(4, "s4:20160")).unwrap();
        let failed = run_again(&view, 4, get_store(None, Some("PD is busy")));
        assert!(matches!(failed, Err(Error::Pd { .. })), "{failed:?}");
        assert!(!view.stores.get(4).unwrap().is_tombstone());
    }
}
