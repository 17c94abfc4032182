//! The store health prober: client-go's per-store health-check loops and
//! its periodic health tick, as one [`ProbeStores`] round every
//! [`HEALTH_CHECK_INTERVAL`] (a round with every store reachable sends
//! nothing). The same tick adds the region cache's lookup counts to their
//! metric, so that counting them costs the lookup path no metrics call.
//! TiKV's health feedback arrives outside the rounds: the transport hands it
//! to the sink [`install_health_feedback_sink`] installs as it arrives. A
//! round that ticks asks the stores whose feedback went stale for more
//! (`GetHealthFeedback`).

use std::sync::{Arc, Weak};

use tikv_core::pd::ResolveStore;
use tikv_core::region::LookupCounts;
use tikv_core::route::store_health::{HEALTH_CHECK_INTERVAL, ProbeStores, on_health_feedback};
use tikv_core::time::Duration;
use tikv_core::view::ClusterView;

use crate::{Background, Runtime, Transport, execute, observe, spawn_periodic};

/// Has `transport` hand each health feedback TiKV sends to the store
/// health of `view` as it arrives (client-go's region cache registers its
/// `OnHealthFeedback` listener with the RPC client when the store opens).
/// The sink holds the view weakly: the transport's stream tasks must not
/// keep a closed client's view alive.
pub(crate) fn install_health_feedback_sink<T: Transport>(view: &Arc<ClusterView>, transport: &T) {
    let view: Weak<ClusterView> = Arc::downgrade(view);
    transport.set_health_feedback_sink(Arc::new(move |feedback, now| {
        if let Some(view) = view.upgrade() {
            on_health_feedback(&view, &feedback, now);
        }
    }));
}

/// Starts the periodic rounds; they stop when the handle is dropped.
pub(crate) fn spawn_store_prober<R: Runtime, T: Transport>(
    view: &Arc<ClusterView>,
    rt: &R,
    transport: &Arc<T>,
) -> Background {
    let (view, rt2, transport) = (view.clone(), rt.clone(), transport.clone());
    let mut lookups_exported = LookupCounts::default();
    spawn_periodic(rt, HEALTH_CHECK_INTERVAL, move || {
        lookups_exported =
            observe::region_cache_lookups(view.regions.lookup_counts(), lookups_exported);
        let (view, rt, transport) = (view.clone(), rt2.clone(), transport.clone());
        async move {
            let probe = ProbeStores::new(view.clone());
            let round = execute(probe, &rt, &*transport).await;
            if let Ok(round) = &round {
                for store in &round.reachable {
                    tracing::info!(store, "store reachable again");
                }
                for (store, error) in &round.unreachable {
                    tracing::debug!(store, %error, "store still unreachable");
                }
                for (store, error) in &round.feedback_failed {
                    tracing::warn!(store, %error, "asking a store for health feedback failed");
                }
                // One attempt each, as client-go's loop: the next is due in
                // 30 s.
                for &store in &round.re_resolve {
                    let again =
                        ResolveStore::again(view.clone(), store, view.backoffer(Duration::ZERO));
                    match execute(again, &rt, &*transport).await {
                        Ok(info) if info.is_tombstone() => {
                            tracing::info!(
                                store,
                                "unreachable store removed from the cluster: no longer probed"
                            );
                        }
                        Ok(info) => {
                            tracing::debug!(store, addr = %info.address, "unreachable store re-resolved")
                        }
                        Err(e) => {
                            tracing::warn!(store, error = %e, "re-resolving an unreachable store failed")
                        }
                    }
                }
            }
            observe::background_result("store_health_probe", &round);
        }
    })
}
