//! The transactional client. So far it hands out timestamps; snapshot
//! reads, transactions and commit protocols come with issue #3.

use std::sync::Arc;

use tikv_core::Error;
use tikv_core::codec::Mode;
use tikv_core::config::Config;
use tikv_core::pd::Timestamp;

use crate::client::{ClientCore, Platform};

/// A client for transactional data (client-go's `txnkv.Client`).
///
/// Cheap to clone; clones share connections, caches and background tasks.
/// Today it offers [`TransactionClient::current_timestamp`]; `begin`,
/// `snapshot` and the commit protocols are being built (issue #3) and are
/// not part of the API until they work.
pub struct TransactionClient<P: Platform> {
    core: Arc<ClientCore<P>>,
}

impl<P: Platform> Clone for TransactionClient<P> {
    fn clone(&self) -> Self {
        TransactionClient { core: self.core.clone() }
    }
}

impl<P: Platform> std::fmt::Debug for TransactionClient<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionClient").field("pd", &self.core.view.pd.endpoints()).finish()
    }
}

impl<P: Platform> TransactionClient<P> {
    /// Connects to the cluster behind these PD endpoints (API V1).
    pub async fn connect<S: Into<String>>(
        pd_endpoints: impl IntoIterator<Item = S>,
    ) -> Result<Self, Error> {
        Self::connect_with_config(Config::default().with_pd_endpoints(pd_endpoints)).await
    }

    /// Connects with an explicit configuration.
    pub async fn connect_with_config(config: Config) -> Result<Self, Error> {
        let core = ClientCore::<P>::connect(config, Mode::Txn).await?;
        Ok(TransactionClient { core: Arc::new(core) })
    }

    /// A fresh timestamp from PD's TSO, strictly greater than every
    /// timestamp this client handed out before (client-go
    /// `KVStore.CurrentTimestamp`). Concurrent callers share TSO rounds.
    pub async fn current_timestamp(&self) -> Result<Timestamp, Error> {
        self.core.oracle.get_timestamp().await
    }

    /// The PD cluster id.
    pub fn cluster_id(&self) -> u64 {
        self.core.view.pd.cluster_id()
    }
}
