//! The store health prober: client-go's per-store health-check loops and
//! its periodic health tick, as one [`ProbeStores`] round every
//! [`HEALTH_CHECK_INTERVAL`] (a round with every store reachable sends
//! nothing). The same tick adds the region cache's lookup counts to their
//! metric, so that counting them costs the lookup path no metrics call.

use std::sync::Arc;

use tikv_core::region::LookupCounts;
use tikv_core::route::store_health::{HEALTH_CHECK_INTERVAL, ProbeStores};
use tikv_core::view::ClusterView;

use crate::client::Platform;
use crate::{Background, Transport, execute, observe, spawn_periodic};

/// Starts the periodic rounds; they stop when the handle is dropped.
pub(crate) fn spawn_store_prober<P: Platform>(
    view: &Arc<ClusterView>,
    rt: &P::Runtime,
    transport: &Arc<P::Transport>,
) -> Background {
    let (view, rt2, transport) = (view.clone(), rt.clone(), transport.clone());
    let mut lookups_exported = LookupCounts::default();
    spawn_periodic(rt, HEALTH_CHECK_INTERVAL, move || {
        lookups_exported =
            observe::region_cache_lookups(view.regions.lookup_counts(), lookups_exported);
        let (view, rt, transport) = (view.clone(), rt2.clone(), transport.clone());
        async move {
            let probe = ProbeStores::new(view).with_feedback(transport.take_health_feedback());
            let round = execute(probe, &rt, &*transport).await;
            if let Ok(round) = &round {
                for store in &round.reachable {
                    tracing::info!(store, "store reachable again");
                }
                for (store, error) in &round.unreachable {
                    tracing::debug!(store, %error, "store still unreachable");
                }
            }
            observe::background_result("store_health_probe", &round);
        }
    })
}
