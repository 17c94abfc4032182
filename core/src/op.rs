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

/// Lets a runtime drive an operation it keeps, to ask it more after the
/// result (e.g. `Committer::take_follow_up`).
impl<O: Operation + ?Sized> Operation for &mut O {
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
///
/// The first few entries live inline (most parents have one or two RPCs in
/// flight at a time, and a hash table was an allocation per operation in
/// issue #7's audit); beyond [`IdMap::INLINE`] the rest go to a hash map.
#[derive(Debug, Default)]
pub struct IdMap<C> {
    next: u64,
    inline: smallvec::SmallVec<[(RpcId, C, RpcId); IdMap::<()>::INLINE]>,
    map: hashbrown::HashMap<RpcId, (C, RpcId)>,
}

impl IdMap<()> {
    /// Entries kept inline before the hash map is used.
    pub const INLINE: usize = 4;
}

impl<C: Copy> IdMap<C> {
    /// An empty map.
    pub fn new() -> Self {
        IdMap { next: 0, inline: smallvec::SmallVec::new(), map: hashbrown::HashMap::new() }
    }

    /// Allocates a fresh parent id for nothing in particular (a parent's own RPC).
    pub fn fresh(&mut self) -> RpcId {
        self.next += 1;
        RpcId(self.next)
    }

    /// Rewrites a child's RPC to carry a fresh parent id, remembering the origin.
    pub fn wrap(&mut self, child: C, mut rpc: Rpc) -> Rpc {
        let id = self.fresh();
        if self.inline.len() < IdMap::<()>::INLINE {
            self.inline.push((id, child, rpc.id));
        } else {
            self.map.insert(id, (child, rpc.id));
        }
        rpc.id = id;
        rpc
    }

    /// Resolves (and forgets) a parent id.
    pub fn take(&mut self, id: RpcId) -> Option<(C, RpcId)> {
        match self.inline.iter().position(|&(parent, _, _)| parent == id) {
            // Order inside the inline set does not matter: lookups are by id.
            Some(i) => {
                let (_, child, child_id) = self.inline.swap_remove(i);
                Some((child, child_id))
            }
            None => self.map.remove(&id),
        }
    }

    /// Number of RPCs in flight.
    pub fn in_flight(&self) -> usize {
        self.inline.len() + self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{KvRequest, Request, Target};
    use crate::time::Instant;

    fn rpc(id: u64) -> Rpc {
        Rpc {
            id: RpcId(id),
            target: Target::Pd { addr: "pd:2379".into() },
            request: Request::Kv(KvRequest::RawGet(Default::default())),
            deadline: Instant::MAX,
        }
    }

    /// Ids resolve to their origin whether they sit inline or in the hash
    /// map, in any order, once each.
    #[test]
    fn id_map_resolves_inline_and_spilled_entries() {
        let mut ids = IdMap::<usize>::new();
        let parents: Vec<RpcId> =
            (0..10).map(|child| ids.wrap(child, rpc(100 + child as u64)).id).collect();
        assert_eq!(ids.in_flight(), 10);
        for &child in &[7usize, 0, 9, 3, 1, 2, 8, 4, 6, 5] {
            assert_eq!(ids.take(parents[child]), Some((child, RpcId(100 + child as u64))));
            assert_eq!(ids.take(parents[child]), None, "an id resolves once");
        }
        assert_eq!(ids.in_flight(), 0);
        // Freed inline room is used again; ids never repeat.
        let again = ids.wrap(42, rpc(5)).id;
        assert!(!parents.contains(&again));
        assert_eq!(ids.take(again), Some((42, RpcId(5))));
    }
}
