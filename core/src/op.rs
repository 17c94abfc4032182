//! The contract every protocol state machine follows.
//!
//! An [`Operation`] is driven by a runtime (the driver loop, the simulator, a
//! fuzzer) with this loop, after every input:
//!
//! 1. drain [`Operation::poll_rpc`] and send each RPC;
//! 2. check [`Operation::poll_result`]: when it is `Some`, the operation is over;
//! 3. read [`Operation::poll_timeout`] and arm one timer for it.
//!
//! Inputs are [`Operation::start`] (once), [`Operation::on_response`] for each
//! RPC outcome (exactly one per emitted RPC id, in any order), and
//! [`Operation::on_timeout`] whenever the armed instant is reached (spurious
//! early calls are no-ops). Every input carries `now`, which must not go
//! backwards; when a timer fires, pass the current time, not the deadline.
//!
//! Operations nest: a parent keeps children and maps their RPC ids onto its
//! own (see [`crate::op::IdMap`]).

use crate::error::Error;
use crate::rpc::{Response, Rpc, RpcError, RpcId};
use crate::time::Instant;

/// A sans-IO protocol state machine producing one result.
pub trait Operation {
    /// What the operation returns on success.
    type Output;

    /// Begins the operation.
    fn start(&mut self, now: Instant);

    /// The next RPC to send, if any.
    fn poll_rpc(&mut self) -> Option<Rpc>;

    /// Feeds the outcome of an RPC previously emitted under `id`. Unknown ids
    /// (for example a duplicated response) are ignored.
    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant);

    /// Called when the instant from [`Operation::poll_timeout`] has passed.
    fn on_timeout(&mut self, now: Instant);

    /// The one instant at which the operation next wants [`Operation::on_timeout`].
    fn poll_timeout(&self) -> Option<Instant>;

    /// The result, once; `None` while the operation is still running.
    fn poll_result(&mut self) -> Option<Result<Self::Output, Error>>;
}

impl<O: Operation + ?Sized> Operation for Box<O> {
    type Output = O::Output;
    fn start(&mut self, now: Instant) {
        (**self).start(now)
    }
    fn poll_rpc(&mut self) -> Option<Rpc> {
        (**self).poll_rpc()
    }
    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        (**self).on_response(id, response, now)
    }
    fn on_timeout(&mut self, now: Instant) {
        (**self).on_timeout(now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        (**self).poll_timeout()
    }
    fn poll_result(&mut self) -> Option<Result<Self::Output, Error>> {
        (**self).poll_result()
    }
}

/// Maps a parent's RPC ids onto `(child, child id)` pairs, so children can
/// choose ids freely. Lookups are by id; nothing iterates the map, so hash
/// order never influences a decision.
#[derive(Debug, Default)]
pub struct IdMap<C> {
    next: u64,
    map: hashbrown::HashMap<RpcId, (C, RpcId)>,
}

impl<C: Copy> IdMap<C> {
    /// An empty map.
    pub fn new() -> Self {
        IdMap { next: 0, map: hashbrown::HashMap::new() }
    }

    /// Allocates a fresh parent id for nothing in particular (a parent's own RPC).
    pub fn fresh(&mut self) -> RpcId {
        self.next += 1;
        RpcId(self.next)
    }

    /// Rewrites a child's RPC to carry a fresh parent id, remembering the origin.
    pub fn wrap(&mut self, child: C, mut rpc: Rpc) -> Rpc {
        let id = self.fresh();
        self.map.insert(id, (child, rpc.id));
        rpc.id = id;
        rpc
    }

    /// Resolves (and forgets) a parent id.
    pub fn take(&mut self, id: RpcId) -> Option<(C, RpcId)> {
        self.map.remove(&id)
    }

    /// Number of RPCs in flight.
    pub fn in_flight(&self) -> usize {
        self.map.len()
    }
}
