//! What a client knows about its PD cluster, as a value the shared view
//! holds and every PD call consults: under the machines that update it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the client knows about the PD cluster: the configured endpoints, the
/// current leader and the cluster id. Shared by every PD call of a client.
#[derive(Debug)]
pub struct PdState {
    endpoints: Vec<Arc<str>>,
    leader: Mutex<Option<Arc<str>>>,
    cluster_id: AtomicU64,
}

impl PdState {
    /// Starts with the user's PD endpoints; the leader is found on first use.
    pub fn new<S: AsRef<str>>(endpoints: impl IntoIterator<Item = S>) -> PdState {
        PdState {
            endpoints: endpoints.into_iter().map(|s| Arc::from(s.as_ref())).collect(),
            leader: Mutex::new(None),
            cluster_id: AtomicU64::new(0),
        }
    }

    /// The configured endpoints.
    pub fn endpoints(&self) -> &[Arc<str>] {
        &self.endpoints
    }

    /// The leader's client URL, if known.
    pub fn leader(&self) -> Option<Arc<str>> {
        self.leader.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records a newly discovered leader.
    pub fn set_leader(&self, addr: Arc<str>) {
        *self.leader.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
    }

    /// Forgets the leader if it is still `addr` (a concurrent call may have
    /// found a newer one already).
    pub fn forget_leader(&self, addr: &str) {
        let mut leader = self.leader.lock().unwrap_or_else(|e| e.into_inner());
        if leader.as_deref() == Some(addr) {
            *leader = None;
        }
    }

    /// The cluster id (0 until the first `GetMembers` answer).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::Relaxed)
    }

    /// Records the cluster id from a PD response header.
    pub fn set_cluster_id(&self, id: u64) {
        if id != 0 {
            self.cluster_id.store(id, Ordering::Relaxed);
        }
    }
}
