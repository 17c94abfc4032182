//! The safe-ts updater: client-go's `safeTSUpdater`, every
//! [`SAFE_TS_UPDATE_INTERVAL`] one [`UpdateSafeTs`] round over the known
//! stores, recorded in the client's [`SafeTsTable`].

use std::sync::Arc;

use tikv_core::safe_ts::{SAFE_TS_UPDATE_INTERVAL, SafeTsTable, UpdateSafeTs};
use tikv_core::view::ClusterView;

use crate::client::Platform;
use crate::{Background, execute, observe, spawn_periodic};

/// Starts the periodic rounds; they stop when the handle is dropped. A
/// store that does not answer keeps its last safe ts (client-go logs it at
/// DEBUG and moves on), and so is each failed store here.
pub(crate) fn spawn_safe_ts_updater<P: Platform>(
    view: &Arc<ClusterView>,
    rt: &P::Runtime,
    transport: &Arc<P::Transport>,
    table: &Arc<SafeTsTable>,
) -> Background {
    let (view, rt2, transport, table) =
        (view.clone(), rt.clone(), transport.clone(), table.clone());
    spawn_periodic(rt, SAFE_TS_UPDATE_INTERVAL, move || {
        let (view, rt, transport, table) =
            (view.clone(), rt2.clone(), transport.clone(), table.clone());
        async move {
            let round = execute(UpdateSafeTs::new(&view, table), &rt, &*transport).await;
            if let Ok(round) = &round {
                for (store, error) in &round.failed {
                    tracing::debug!(store, %error, "safe ts update failed");
                }
            }
            observe::background_result("safe_ts_update", &round);
        }
    })
}
