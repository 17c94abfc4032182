//! What every client shares: the platform (runtime + transport), the
//! cluster view, and the background tasks, plus bootstrapping from PD.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tikv_core::codec::{ApiCodec, ApiVersion, Mode};
use tikv_core::config::Config;
use tikv_core::gc::{
    CachedTxnSafePoint, LoadTxnSafePoint, TXN_SAFE_POINT_POLL_INTERVAL, TxnSafePointCache,
    check_visibility,
};
use tikv_core::op::Operation;
use tikv_core::pd::{
    LoadKeyspace, PdState, ReadTsVerdict, RefreshStores, Timestamp, TsoBatcher, judge_read_ts,
};
use tikv_core::safe_ts::SafeTsTable;
use tikv_core::time::Duration;
use tikv_core::view::ClusterView;
use tikv_core::{Error, backoff::Backoffer};

use crate::collapse::Collapsing;
use crate::execute::execute_from;
use crate::interceptor::{Intercepted, Interceptors};
use crate::observe;
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

/// How often [`ClientCore::close`] looks whether background operations
/// have finished.
const CLOSE_POLL: Duration = Duration::from_millis(5);

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
    /// Each store's safe ts and each txn scope's min (transactional
    /// clients refresh it in the background, for stale reads).
    pub(crate) safe_ts: Arc<SafeTsTable>,
    /// The periodic tasks (store refresh, txn safe point poll, safe ts
    /// update), stopped by
    /// [`ClientCore::close`].
    background: Mutex<Vec<Background>>,
    /// Set by [`ClientCore::close`]: operations then fail with
    /// [`Error::Closed`].
    closed: AtomicBool,
    /// Operations running in the background (secondary commits,
    /// rollbacks), which `close` waits for.
    in_flight: Arc<AtomicUsize>,
}

/// Counts one background operation for as long as it lives (finished or
/// dropped with its runtime).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::SeqCst);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<P: Platform> ClientCore<P> {
    /// Connects for data in `mode`: resolves the keyspace (API V2), checks
    /// that PD answers and loads the store list, and starts the background
    /// tasks (store refresher, TSO batching).
    pub(crate) async fn connect(config: Config, mode: Mode) -> Result<Self, Error> {
        if config.pd_endpoints.is_empty() {
            return Err(Error::InvalidArgument("no PD endpoints given".into()));
        }
        let config = with_process_seed(config);
        let (rt, transport) = P::build(&config)?;
        let transport = Arc::new(transport);
        let pd = Arc::new(PdState::new(config.pd_endpoints.clone()));
        let mut rng = config.rng();
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
        crate::store_health::install_health_feedback_sink(&view, &*transport);
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
                    let refreshed =
                        refresh_stores::<P>(&view, &rt, &transport, view.backoffer(budget)).await;
                    observe::background_result("store_refresh", &refreshed);
                }
            })
        };
        // client-go's region cache probes unreachable stores and ticks
        // their health whatever the client's mode.
        // The prober's liveness probes and those of failed calls share one
        // collapsing table (one probe per store address in flight).
        let collapsing = Collapsing::new(transport.clone());
        let prober =
            crate::store_health::spawn_store_prober(&view, &rt, &Arc::new(collapsing.clone()));
        let mut background = vec![refresher, prober];
        let txn_safe_point = Arc::new(TxnSafePointCache::default());
        let safe_ts = Arc::new(SafeTsTable::new());
        if mode == Mode::Txn {
            // client-go's KVStore starts its safe-ts updater with the store.
            background
                .push(crate::safe_ts::spawn_safe_ts_updater::<P>(&view, &rt, &transport, &safe_ts));
            // client-go loads the txn safe point when the store opens and
            // polls it every 10 s; a failed load here is left to the first
            // read, which loads it again before checking.
            let loaded = execute(LoadTxnSafePoint::new(&view), &rt, &*transport).await;
            // A PD without the GC-states API is recorded, not an error.
            let recorded = txn_safe_point.record(loaded, rt.now());
            observe::background_result("txn_safe_point_load", &recorded);
            let (view, rt2, transport, cache) =
                (view.clone(), rt.clone(), transport.clone(), txn_safe_point.clone());
            background.push(spawn_periodic(&rt, TXN_SAFE_POINT_POLL_INTERVAL, move || {
                let (view, rt, transport, cache) =
                    (view.clone(), rt2.clone(), transport.clone(), cache.clone());
                async move {
                    let loaded = execute(LoadTxnSafePoint::new(&view), &rt, &*transport).await;
                    let recorded = cache.record(loaded, rt.now());
                    observe::background_result("txn_safe_point_poll", &recorded);
                }
            }));
        }
        let batcher = TsoBatcher::new(view.clone(), rng.next_u64());
        let oracle = Oracle::start(batcher, rt.clone(), transport.clone());
        let transport = Arc::new(ClientTransport::new(collapsing, oracle.clone()));
        Ok(ClientCore {
            view,
            rt,
            transport,
            oracle,
            txn_safe_point,
            safe_ts,
            background: Mutex::new(background),
            closed: AtomicBool::new(false),
            in_flight: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Refuses a read at `ts` below the txn safe point (client-go
    /// `CheckVisibility`, core's [`check_visibility`]). A cached value too
    /// old to trust is reloaded first; a PD without the GC-states API
    /// leaves reads unchecked.
    pub(crate) async fn check_visibility(&self, ts: Timestamp) -> Result<(), Error> {
        let mut cached = self.txn_safe_point.get(self.rt.now());
        if cached == CachedTxnSafePoint::Stale {
            let load = LoadTxnSafePoint::new(&self.view);
            let loaded = self.run("load_txn_safe_point", load, &Interceptors::default()).await;
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
    pub(crate) async fn validate_read_ts(&self, ts: Timestamp) -> Result<(), Error> {
        if judge_read_ts(ts, self.view.last_ts.newest())? == ReadTsVerdict::Safe {
            return Ok(());
        }
        let current = self.timestamp().await?;
        match judge_read_ts(ts, Some(current))? {
            ReadTsVerdict::Safe => Ok(()),
            ReadTsVerdict::AskPd => Err(Error::FutureReadTs { read_ts: ts, current_ts: current }),
        }
    }

    /// A fresh timestamp from the client's TSO task.
    pub(crate) async fn timestamp(&self) -> Result<Timestamp, Error> {
        self.check_usable()?;
        self.oracle.get_timestamp().await
    }

    /// Refuses new work once the client is closed, or once the runtime its
    /// background tasks (TSO, store refresh, connections) ran on has shut
    /// down: without them a call would wait for answers nobody sends.
    fn check_usable(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        if self.rt.is_shut_down() {
            return Err(Error::RuntimeShutDown);
        }
        Ok(())
    }

    /// Runs one operation to completion in the caller's task, in a span
    /// named by `kind` (see [`crate::observe`]).
    /// Its store RPCs go through `chain` first.
    pub(crate) async fn run<O: Operation>(
        &self,
        kind: &'static str,
        mut op: O,
        chain: &Interceptors,
    ) -> Result<O::Output, Error> {
        self.check_usable()?;
        let transport = self.transport_through(chain);
        execute_observed(kind, &mut op, &self.rt, &*transport, own_budget).await
    }

    /// The transport an operation with `chain` sends through: the client's
    /// own when the chain is empty (no cost per RPC), else the chain in
    /// front of it.
    fn transport_through(&self, chain: &Interceptors) -> Arc<dyn Transport> {
        if chain.is_empty() {
            self.transport.clone()
        } else {
            Arc::new(Intercepted { chain: chain.clone(), transport: self.transport.clone() })
        }
    }

    /// [`ClientCore::run`] for an operation whose backoff is spread over
    /// several budgets, which `budgets` lists (a commit's phases).
    pub(crate) async fn run_with_budgets<O: Operation>(
        &self,
        kind: &'static str,
        mut op: O,
        budgets: Budgets<O>,
        chain: &Interceptors,
    ) -> Result<O::Output, Error> {
        self.check_usable()?;
        let transport = self.transport_through(chain);
        execute_observed(kind, &mut op, &self.rt, &*transport, budgets).await
    }

    /// Closes the client: new operations fail with [`Error::Closed`], the
    /// periodic tasks and the TSO task stop (waiting timestamp callers get
    /// `Closed`), and background operations already started (secondary
    /// commits, rollbacks) are waited for, at most `wait`. Returns how many
    /// were still running then; they go on in the runtime, and whatever
    /// lock they leave is resolved by later readers.
    pub(crate) async fn close(&self, wait: Duration) -> usize {
        self.closed.store(true, Ordering::SeqCst);
        self.background.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let deadline = self.rt.now() + wait;
        // A close is rare and short: polling the count costs nothing that
        // matters and needs no notification machinery.
        let mut left = self.in_flight.load(Ordering::SeqCst);
        while left > 0 && self.rt.now() < deadline {
            let tick = (self.rt.now() + CLOSE_POLL).min(deadline);
            self.rt.sleep_until(tick).await;
            left = self.in_flight.load(Ordering::SeqCst);
        }
        self.oracle.stop();
        left
    }

    /// Runs an operation in the background until it ends or the returned
    /// handle is dropped (a pessimistic transaction's TTL keep-alive).
    pub(crate) fn spawn_op_until_dropped<O>(
        &self,
        task: &'static str,
        op: O,
        chain: &Interceptors,
    ) -> crate::Background
    where
        O: Operation + Send + 'static,
        O::Output: Send,
    {
        let rt = self.rt.clone();
        let transport = self.transport_through(chain);
        crate::background::spawn_until_dropped(&self.rt, async move {
            let mut op = op;
            let result = execute_observed(task, &mut op, &rt, &*transport, own_budget).await;
            observe::background_result(task, &result);
        })
    }

    /// Runs `task` in the background, counted among the work
    /// [`ClientCore::close`] waits for (a dropped pipelined transaction's
    /// rollback, which first waits for its flush in flight).
    pub(crate) fn spawn_counted(
        &self,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let counted = InFlight::enter(&self.in_flight);
        self.rt.spawn(Box::pin(async move {
            let _counted = counted;
            task.await;
        }));
    }

    /// Runs an operation in the background (secondary commits, cleanup).
    /// Its failure is logged at WARN and counted, nothing more: the work is
    /// an optimisation the protocol does not depend on (readers resolve
    /// whatever it leaves).
    pub(crate) fn spawn_op<O>(&self, task: &'static str, op: O, chain: &Interceptors)
    where
        O: Operation + Send + 'static,
        O::Output: Send,
    {
        let rt = self.rt.clone();
        let transport = self.transport_through(chain);
        let counted = InFlight::enter(&self.in_flight);
        self.rt.spawn(Box::pin(async move {
            let _counted = counted;
            let mut op = op;
            let result = execute_observed(task, &mut op, &rt, &*transport, own_budget).await;
            observe::background_result(task, &result);
        }));
    }
}

/// Hands each backoff budget of an operation to the callback, once it
/// has ended.
pub(crate) type Budgets<O> = fn(&O, &mut dyn FnMut(&Backoffer));

/// The budget an operation reports itself ([`Operation::backoff_spent`]).
fn own_budget<O: Operation>(op: &O, report: &mut dyn FnMut(&Backoffer)) {
    if let Some(budget) = op.backoff_spent() {
        report(budget);
    }
}

/// [`execute`] inside an operation span named `kind`, reporting the
/// operation's duration, outcome and backoff sleeps (from `budgets`) when
/// it ends.
///
/// The operation is borrowed: the caller's future owns it, so it is moved
/// once per call instead of into each nested future as it is created.
async fn execute_observed<O, R, T>(
    kind: &'static str,
    op: &mut O,
    rt: &R,
    transport: &T,
    budgets: Budgets<O>,
) -> Result<O::Output, Error>
where
    O: Operation,
    R: Runtime,
    T: Transport + ?Sized,
{
    let span = observe::operation_span(kind);
    let started = rt.now();
    let (result, ended) = tracing::Instrument::instrument(
        execute_from(&mut *op, rt, transport, started),
        span.clone(),
    )
    .await;
    let elapsed = ended.saturating_duration_since(started);
    budgets(op, &mut |budget| observe::backoff_slept(&span, budget));
    observe::operation_finished(kind, &span, elapsed, &result);
    result
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

/// `config` with a seed: the one it pins, else one from this process's
/// entropy, so clients of different processes (and different clients of
/// one) draw different backoff and TTL jitter.
fn with_process_seed(mut config: Config) -> Config {
    if config.rng_seed.is_none() {
        use std::hash::BuildHasher;
        // `RandomState` carries per-process random keys (advanced for each
        // instance); hashing the clock in as well costs nothing.
        let now = std::time::SystemTime::now();
        config.rng_seed = Some(std::collections::hash_map::RandomState::new().hash_one(now));
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unpinned clients get different seeds, so a fleet does not retry in
    /// lockstep; a pinned seed is kept for replay.
    #[test]
    fn unpinned_clients_draw_their_own_seeds() {
        let a = with_process_seed(Config::default()).rng_seed;
        let b = with_process_seed(Config::default()).rng_seed;
        assert!(a.is_some() && b.is_some());
        assert_ne!(a, b);
        assert_eq!(with_process_seed(Config::default().with_rng_seed(7)).rng_seed, Some(7));
    }
}
