//! What every client shares: the platform (runtime + transport), the
//! cluster view, and the background tasks, plus bootstrapping from PD.

use std::sync::Arc;

use tikv_core::codec::{ApiCodec, ApiVersion, Mode};
use tikv_core::config::Config;
use tikv_core::gc::{
    CachedTxnSafePoint, LoadTxnSafePoint, TXN_SAFE_POINT_POLL_INTERVAL, TxnSafePointCache,
    check_visibility,
};
use tikv_core::op::Operation;
use tikv_core::pd::{
    LoadKeyspace, PdState, ReadTsVerdict, RefreshStores, TsoBatcher, judge_read_ts,
};
use tikv_core::rng::Rng;
use tikv_core::view::ClusterView;
use tikv_core::{Error, backoff::Backoffer};

use crate::collapse::Collapsing;
use crate::oracle::{ClientTransport, Oracle};
use crate::{Background, Runtime, Transport, execute, spawn_periodic};

/// A runtime and a transport that belong together (they share a clock).
///
/// Runtime crates implement it once (`tikv_tokio::Tokio`,
/// `tikv_async_std::AsyncStd`) so users name one type:
/// `tikv_tokio::RawClient` is `RawClient<Tokio>`.
pub trait Platform: Send + Sync + 'static {
    /// Timers, spawning, the clock.
    type Runtime: Runtime;
    /// RPCs to PD and TiKV.
    type Transport: Transport;

    /// Builds the runtime and transport for a client with `config`; the
    /// transport takes all of [`Config::transport`].
    fn build(config: &Config) -> Result<(Self::Runtime, Self::Transport), Error>;
}

/// The machinery one client instance owns.
pub(crate) struct ClientCore<P: Platform> {
    pub(crate) view: Arc<ClusterView>,
    pub(crate) rt: P::Runtime,
    /// The platform's transport behind request collapsing, and the TSO task
    /// answering operations' timestamp needs (they join its batched rounds).
    pub(crate) transport: Arc<ClientTransport<Collapsing<P::Transport>>>,
    /// Timestamps from PD, batched by a background task.
    pub(crate) oracle: Oracle,
    /// The txn safe point reads are checked against (transactional
    /// clients poll it in the background).
    pub(crate) txn_safe_point: Arc<TxnSafePointCache>,
    _background: Vec<Background>,
}

impl<P: Platform> ClientCore<P> {
    /// Connects for data in `mode`: resolves the keyspace (API V2), checks
    /// that PD answers and loads the store list, and starts the background
    /// tasks (store refresher, TSO batching).
    pub(crate) async fn connect(config: Config, mode: Mode) -> Result<Self, Error> {
        if config.pd_endpoints.is_empty() {
            return Err(Error::InvalidArgument("no PD endpoints given".into()));
        }
        let (rt, transport) = P::build(&config)?;
        let transport = Arc::new(transport);
        let pd = Arc::new(PdState::new(config.pd_endpoints.clone()));
        let mut rng = Rng::new(config.rng_seed);
        let budget = config.budget(config.backoff.locate_region);

        let codec = match config.api_version {
            ApiVersion::V1 => ApiCodec::v1(mode),
            ApiVersion::V2 => {
                // client-go resolves the keyspace by name before building
                // the V2 codec; no name means the DEFAULT keyspace.
                let name = config.keyspace.clone().unwrap_or_default();
                let load = LoadKeyspace::new(
                    pd.clone(),
                    &name,
                    config.pd_timeout,
                    Backoffer::new(budget, rng.fork()),
                );
                let meta = execute(load, &rt, &*transport).await?;
                ApiCodec::from_keyspace_meta(mode, &meta)?.with_keyspace_name(meta.name.clone())
            }
        };
        let view = Arc::new(ClusterView::new(config, codec, pd));
        refresh_stores::<P>(&view, &rt, &transport, Backoffer::new(budget, rng.fork())).await?;

        let refresher = {
            let (view, rt2, transport) = (view.clone(), rt.clone(), transport.clone());
            let interval = view.config.store_refresh_interval;
            spawn_periodic(&rt, interval, move || {
                let (view, rt, transport) = (view.clone(), rt2.clone(), transport.clone());
                async move {
                    let budget = view.config.budget(view.config.backoff.locate_region);
                    // A failed refresh is retried at the next tick; the
                    // request path resolves stores on demand anyway.
                    let _ =
                        refresh_stores::<P>(&view, &rt, &transport, view.backoffer(budget)).await;
                }
            })
        };
        let mut background = vec![refresher];
        let txn_safe_point = Arc::new(TxnSafePointCache::default());
        if mode == Mode::Txn {
            // client-go loads the txn safe point when the store opens and
            // polls it every 10 s; a failed load here is left to the first
            // read, which loads it again before checking.
            let loaded = execute(LoadTxnSafePoint::new(&view), &rt, &*transport).await;
            let _ = txn_safe_point.record(loaded, rt.now());
            let (view, rt2, transport, cache) =
                (view.clone(), rt.clone(), transport.clone(), txn_safe_point.clone());
            background.push(spawn_periodic(&rt, TXN_SAFE_POINT_POLL_INTERVAL, move || {
                let (view, rt, transport, cache) =
                    (view.clone(), rt2.clone(), transport.clone(), cache.clone());
                async move {
                    let loaded = execute(LoadTxnSafePoint::new(&view), &rt, &*transport).await;
                    let _ = cache.record(loaded, rt.now());
                }
            }));
        }
        let batcher = TsoBatcher::new(view.clone(), rng.next_u64());
        let oracle = Oracle::start(batcher, rt.clone(), transport.clone());
        let transport = Arc::new(ClientTransport::new(Collapsing::new(transport), oracle.clone()));
        Ok(ClientCore { view, rt, transport, oracle, txn_safe_point, _background: background })
    }

    /// Refuses a read at `ts` below the txn safe point (client-go
    /// `CheckVisibility`, core's [`check_visibility`]). A cached value too
    /// old to trust is reloaded first; a PD without the GC-states API
    /// leaves reads unchecked.
    pub(crate) async fn check_visibility(&self, ts: u64) -> Result<(), Error> {
        let mut cached = self.txn_safe_point.get(self.rt.now());
        if cached == CachedTxnSafePoint::Stale {
            let loaded = self.run(LoadTxnSafePoint::new(&self.view)).await;
            self.txn_safe_point.record(loaded, self.rt.now())?;
            cached = self.txn_safe_point.get(self.rt.now());
        }
        match cached {
            CachedTxnSafePoint::Fresh(txn_safe_point) => check_visibility(ts, txn_safe_point),
            CachedTxnSafePoint::Stale | CachedTxnSafePoint::Unsupported => Ok(()),
        }
    }

    /// Checks that reading at `ts` is safe (client-go's `ValidateReadTS`;
    /// the rule is core's [`judge_read_ts`]): free when the client has seen
    /// a timestamp at least as new, otherwise checked against a fresh one.
    pub(crate) async fn validate_read_ts(&self, ts: u64) -> Result<(), Error> {
        if judge_read_ts(ts, self.view.last_ts.newest())? == ReadTsVerdict::Safe {
            return Ok(());
        }
        let current = self.oracle.get_timestamp().await?.version();
        match judge_read_ts(ts, Some(current))? {
            ReadTsVerdict::Safe => Ok(()),
            ReadTsVerdict::AskPd => Err(Error::FutureReadTs { read_ts: ts, current_ts: current }),
        }
    }

    /// Runs one operation to completion in the caller's task.
    pub(crate) async fn run<O: Operation>(&self, op: O) -> Result<O::Output, Error> {
        execute(op, &self.rt, &*self.transport).await
    }

    /// Runs an operation in the background (secondary commits, cleanup),
    /// ignoring its result: it is an optimisation the protocol does not
    /// depend on (readers resolve whatever it leaves).
    pub(crate) fn spawn_op<O>(&self, op: O)
    where
        O: Operation + Send + 'static,
        O::Output: Send,
    {
        let rt = self.rt.clone();
        let transport = self.transport.clone();
        self.rt.spawn(Box::pin(async move {
            let _ = execute(op, &rt, &*transport).await;
        }));
    }
}

/// Runs core's [`RefreshStores`] (PD's store list into the store table).
async fn refresh_stores<P: Platform>(
    view: &Arc<ClusterView>,
    rt: &P::Runtime,
    transport: &Arc<P::Transport>,
    backoffer: Backoffer,
) -> Result<(), Error> {
    execute(RefreshStores::new(view.clone(), backoffer), rt, &**transport).await.map(drop)
}
