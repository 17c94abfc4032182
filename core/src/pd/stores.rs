//! The periodic store refresh: PD's store list into the store table.

use std::sync::Arc;

use tikv_proto::pdpb;

use crate::backoff::Backoffer;
use crate::error::Error;
use crate::op::Operation;
use crate::pd::PdCall;
use crate::region::StoreListChanges;
use crate::rpc::{PdRequest, PdResponse, Response, Rpc, RpcError, RpcId};
use crate::time::Instant;
use crate::view::ClusterView;

/// Loads every store from PD (`GetAllStores` without tombstones) and
/// applies the list to the store table
/// ([`StoreTable::apply_store_list`](crate::region::StoreTable::apply_store_list)), as client-go's store cache updater
/// does every `StoresRefreshInterval`. A client runs it when it connects
/// and then periodically; a failed refresh changes nothing.
#[derive(Debug)]
pub struct RefreshStores {
    view: Arc<ClusterView>,
    call: PdCall,
    result: Option<Result<StoreListChanges, Error>>,
}

impl RefreshStores {
    /// A refresh of `view`'s store table with a retry budget.
    pub fn new(view: Arc<ClusterView>, backoffer: Backoffer) -> RefreshStores {
        let request = PdRequest::GetAllStores(Box::new(pdpb::GetAllStoresRequest {
            exclude_tombstone_stores: true,
            ..Default::default()
        }));
        let call = PdCall::new(view.pd.clone(), request, view.config.pd_timeout, backoffer);
        RefreshStores { view, call, result: None }
    }

    fn check(&mut self) {
        if let Some(outcome) = self.call.poll_result() {
            self.result = Some(match outcome {
                Ok(PdResponse::GetAllStores(r)) => Ok(self.view.stores.apply_store_list(r.stores)),
                Ok(other) => {
                    Err(Error::malformed(format!("GetAllStores answered by {}", other.name())))
                }
                Err(e) => Err(e),
            });
        }
    }
}

impl Operation for RefreshStores {
    type Output = StoreListChanges;

    fn start(&mut self, now: Instant) {
        self.call.start(now);
        self.check();
    }
    fn poll_rpc(&mut self) -> Option<Rpc> {
        self.call.poll_rpc()
    }
    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        self.call.on_response(id, response, now);
        self.check();
    }
    fn on_timeout(&mut self, now: Instant) {
        self.call.on_timeout(now);
        self.check();
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.call.poll_timeout()
    }
    fn poll_result(&mut self) -> Option<Result<StoreListChanges, Error>> {
        self.result.take()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::fmt::Write;

    use tikv_proto::metapb;

    use super::*;
    use crate::region::ResolveState;
    use crate::rpc::Request;
    use crate::testing::FakeCluster;
    use crate::time::Duration;

    fn store(id: u64, address: &str, state: metapb::StoreState) -> metapb::Store {
        metapb::Store { id, address: address.into(), state: state as i32, ..Default::default() }
    }

    fn all_stores(stores: Vec<metapb::Store>) -> Result<Response, RpcError> {
        Ok(Response::Pd(PdResponse::GetAllStores(Box::new(pdpb::GetAllStoresResponse {
            header: Some(pdpb::ResponseHeader { cluster_id: 7, error: None }),
            stores,
        }))))
    }

    fn refresh(view: &Arc<ClusterView>) -> RefreshStores {
        RefreshStores::new(view.clone(), view.backoffer(Duration::from_secs(2)))
    }

    /// Runs `op`: the fake PD answers member discovery, `answers` (in
    /// order) the store-list requests. Returns the transcript.
    fn script(
        mut op: RefreshStores,
        mut answers: VecDeque<Result<Response, RpcError>>,
    ) -> (String, Result<StoreListChanges, Error>) {
        let mut pd = FakeCluster::new(&[]);
        let mut now = Instant::ZERO;
        let mut log = String::new();
        op.start(now);
        for _ in 0..100 {
            while let Some(rpc) = op.poll_rpc() {
                now += Duration::from_millis(1);
                let answer = match &rpc.request {
                    Request::Pd(PdRequest::GetAllStores(r)) => {
                        assert!(r.exclude_tombstone_stores);
                        answers.pop_front().expect("an answer for every store-list request")
                    }
                    _ => pd.handle(&rpc),
                };
                let shown = match &answer {
                    Ok(r) => r.name().to_string(),
                    Err(e) => format!("error: {e}"),
                };
                let _ = writeln!(log, "{now} {} -> {shown}", rpc.request.name());
                op.on_response(rpc.id, answer, now);
            }
            if let Some(result) = op.poll_result() {
                let _ = writeln!(log, "{now} done");
                return (log, result);
            }
            let Some(at) = op.poll_timeout() else { panic!("stalled:\n{log}") };
            now = now.max(at);
            let _ = writeln!(log, "{now} timer");
            op.on_timeout(now);
        }
        panic!("did not finish:\n{log}");
    }

    /// Connect time, then a later refresh that sees a moved store, a
    /// removed one and a new one, after a failed first attempt.
    #[test]
    fn refreshes_fill_and_update_the_store_table() {
        use metapb::StoreState::{Tombstone, Up};
        let view = crate::testing::view();
        let (log, changes) = script(
            refresh(&view),
            [all_stores(vec![store(1, "s1:20160", Up), store(2, "s2:20160", Up)])].into(),
        );
        let changes = changes.unwrap();
        assert_eq!(changes.added, [1, 2]);
        let mut out = format!("# connect\n{log}{changes:?}\n{:?}\n", view.stores);

        let old = view.stores.get(1).unwrap();
        let (log, changes) = script(
            refresh(&view),
            [
                Err(RpcError::Unavailable("PD leader moved".into())),
                all_stores(vec![
                    store(1, "s1b:20160", Up),
                    store(3, "s3:20160", Up),
                    store(4, "", Tombstone),
                ]),
            ]
            .into(),
        );
        let changes = changes.unwrap();
        assert_eq!(
            (changes.added, changes.updated, changes.tombstoned, changes.unlisted),
            (vec![3], vec![1], vec![4], vec![2])
        );
        assert_eq!(old.resolve_state(), ResolveState::Deleted);
        assert!(view.stores.get(2).is_none(), "store 2 is asked about before its next use");
        let _ = write!(out, "\n# refresh\n{log}{:?}\n", view.stores);
        insta::assert_snapshot!(out);
    }

    /// A TLS refusal ends a PD call at once, from the leader as in member
    /// discovery: every member shares the one TLS configuration, so no
    /// other member or later attempt would be accepted.
    #[test]
    fn tls_refusals_end_pd_calls_at_once() {
        let refused = || Err(RpcError::Tls("invalid peer certificate: UnknownIssuer".into()));
        let view = crate::testing::view();
        let (log, result) = script(refresh(&view), [refused()].into());
        assert_eq!(result.unwrap_err(), Error::Rpc(refused().unwrap_err()));
        assert!(!log.contains("timer"), "no backoff:\n{log}");

        let view = crate::testing::view();
        let mut op = refresh(&view);
        op.start(Instant::ZERO);
        let rpc = op.poll_rpc().expect("member discovery");
        assert!(matches!(rpc.request, Request::Pd(PdRequest::GetMembers(_))), "{rpc:?}");
        op.on_response(rpc.id, refused(), Instant::ZERO);
        assert!(op.poll_rpc().is_none(), "no other member is asked");
        let result = op.poll_result().expect("done");
        assert_eq!(result.unwrap_err(), Error::Rpc(refused().unwrap_err()));
    }

    /// A PD error or an answer of the wrong type fails the refresh and
    /// leaves the table as it was.
    #[test]
    fn failed_refreshes_change_nothing() {
        let view = crate::testing::view();
        view.stores.insert(store(1, "s1:20160", metapb::StoreState::Up)).unwrap();
        let pd_error =
            Ok(Response::Pd(PdResponse::GetAllStores(Box::new(pdpb::GetAllStoresResponse {
                header: Some(pdpb::ResponseHeader {
                    cluster_id: 7,
                    error: Some(pdpb::Error {
                        r#type: pdpb::ErrorType::Unknown as i32,
                        message: "not bootstrapped".into(),
                    }),
                }),
                stores: Vec::new(),
            }))));
        let (_, result) = script(refresh(&view), [pd_error].into());
        assert!(matches!(result, Err(Error::Pd { .. })), "{result:?}");
        let wrong = Ok(Response::Pd(PdResponse::GetStore(Box::default())));
        let (_, result) = script(refresh(&view), [wrong].into());
        assert!(matches!(result, Err(Error::MalformedResponse(_))), "{result:?}");
        assert_eq!(view.stores.resolve_state(1), ResolveState::Resolved);
        assert_eq!(view.stores.len(), 1);
    }
}
