//! [`ClusterView`]: what one client knows about the cluster, shared by all
//! of its operations.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backoff::Backoffer;
use crate::codec::ApiCodec;
use crate::config::Config;
use crate::lock::status::TxnStatusCache;
use crate::pd::state::PdState;
use crate::pd::timestamp::LastTimestamp;
use crate::region::{RegionCache, StoreTable};
use crate::rng::Rng;
use crate::time::Duration;

/// The client's shared knowledge: configuration, the API codec, the region
/// cache, the store table and the PD state.
///
/// `Send + Sync`; every operation holds an `Arc` of it. Locks inside are held
/// only for short lookups, never across an RPC.
#[derive(Debug)]
pub struct ClusterView {
    /// The client configuration.
    pub config: Config,
    /// The key codec for the API version and keyspace in use.
    pub codec: ApiCodec,
    /// Cached regions.
    pub regions: RegionCache,
    /// Known stores.
    pub stores: StoreTable,
    /// PD endpoints, leader and cluster id.
    pub pd: Arc<PdState>,
    /// Outcomes of transactions found committed or rolled back.
    pub txn_status: TxnStatusCache,
    /// The newest timestamp seen (the low-resolution "now" of TTL checks).
    pub last_ts: LastTimestamp,
    /// Seeds backoffers deterministically: the n-th operation of a client
    /// gets `seed + n`, so a simulation replays exactly.
    backoff_seq: AtomicU64,
    /// Seeds replica selectors the same way, on a sequence of their own so
    /// that backoff seeds do not depend on how many calls were made.
    replica_seq: AtomicU64,
}

impl ClusterView {
    /// Assembles a view. `pd` is shared with calls made before the view
    /// existed (keyspace loading).
    pub fn new(config: Config, codec: ApiCodec, pd: Arc<PdState>) -> ClusterView {
        let regions = RegionCache::new(
            config.region_cache_ttl,
            config.region_cache_ttl_jitter,
            config.seed() ^ 0x5eed_cac4e,
        );
        ClusterView {
            config,
            codec,
            regions,
            stores: StoreTable::new(),
            pd,
            txn_status: TxnStatusCache::default(),
            last_ts: LastTimestamp::default(),
            backoff_seq: AtomicU64::new(0),
            replica_seq: AtomicU64::new(0),
        }
    }

    /// A fresh backoffer with `budget` (already weighted by the caller).
    pub fn backoffer(&self, budget: Duration) -> Backoffer {
        let n = self.backoff_seq.fetch_add(1, Ordering::Relaxed);
        Backoffer::new(budget, Rng::new(self.config.seed().wrapping_add(n)))
    }

    /// A fresh generator for a replica selector's tie-breaks: the n-th
    /// selector of a client gets its own deterministic stream.
    pub fn replica_rng(&self) -> Rng {
        let n = self.replica_seq.fetch_add(1, Ordering::Relaxed);
        Rng::new((self.config.seed() ^ 0x7e91_1ca5).wrapping_add(n))
    }
}
