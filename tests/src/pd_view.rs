//! What a test reads of a real PD ([`tikv_sim::real_pd`]) with simulated
//! stores joined to it ([`tikv_sim::join`]): PD's region view beside the
//! stores' own, and a wait until the two agree. PD applies region
//! heartbeats asynchronously, so a change the stores made is visible to
//! clients routing through PD only once PD's view has caught up.

use std::time::Duration;

use tikv_proto::metapb::PeerRole;
use tikv_sim::Cluster;
use tikv_sim::real_pd::get_json;

/// `bytes` as PD's HTTP API writes keys (upper-case hex).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// A region as PD's HTTP API and the simulator both describe it: id, start
/// and end key (hex), `conf_ver`, `version`, peers as `(peer, store, role)`
/// sorted, and the leader's store (0 for none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionView {
    /// Region id.
    pub id: u64,
    /// Start key, hex.
    pub start: String,
    /// End key, hex.
    pub end: String,
    /// `RegionEpoch.conf_ver`.
    pub conf_ver: u64,
    /// `RegionEpoch.version`.
    pub version: u64,
    /// `(peer id, store id, role name)`, sorted.
    pub peers: Vec<(u64, u64, String)>,
    /// The leader's store id, 0 when there is none.
    pub leader_store: u64,
}

/// PD's regions (`GET /pd/api/v1/regions`), in key order.
pub fn pd_regions(pd: &str) -> Vec<RegionView> {
    let json = get_json(pd, "/pd/api/v1/regions");
    let mut out: Vec<RegionView> = json
        .get("regions")
        .items()
        .iter()
        .map(|r| {
            let mut peers: Vec<(u64, u64, String)> = r
                .get("peers")
                .items()
                .iter()
                .map(|p| {
                    // PD leaves the role out for voters.
                    let role = match p.get("role_name").str() {
                        "" => "Voter".to_owned(),
                        other => other.to_owned(),
                    };
                    (p.get("id").u64(), p.get("store_id").u64(), role)
                })
                .collect();
            peers.sort();
            RegionView {
                id: r.get("id").u64(),
                start: r.get("start_key").str().to_owned(),
                end: r.get("end_key").str().to_owned(),
                conf_ver: r.get("epoch").get("conf_ver").u64(),
                version: r.get("epoch").get("version").u64(),
                peers,
                leader_store: r.get("leader").get("store_id").u64(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.start.cmp(&b.start));
    out
}

/// The stores' regions (the model they serve), in key order.
pub fn sim_regions(cluster: &Cluster) -> Vec<RegionView> {
    cluster
        .regions()
        .into_iter()
        .map(|r| {
            let epoch = r.region_epoch.unwrap_or_default();
            let mut peers: Vec<(u64, u64, String)> = r
                .peers
                .iter()
                .map(|p| {
                    let role =
                        PeerRole::try_from(p.role).map_or("?".to_owned(), |r| format!("{r:?}"));
                    (p.id, p.store_id, role)
                })
                .collect();
            peers.sort();
            RegionView {
                id: r.id,
                start: hex(&r.start_key),
                end: hex(&r.end_key),
                conf_ver: epoch.conf_ver,
                version: epoch.version,
                peers,
                leader_store: cluster.leader_of(r.id).map_or(0, |p| p.store_id),
            }
        })
        .collect()
}

/// At least three regions (PD's own splits at the DEFAULT keyspace's
/// boundaries happened) and three voters in every one (PD's replica checker
/// added the missing replicas).
pub fn all_replicated(regions: &[RegionView]) -> bool {
    regions.len() >= 3
        && regions.iter().all(|r| r.peers.len() == 3 && r.peers.iter().all(|p| p.2 == "Voter"))
}

/// Polls until PD runs no operator, its region view equals the stores',
/// and `done` holds for it; gives up after `within`, describing both views
/// and PD's pending operators. Runs inside a tokio runtime (its timer), as
/// the joined stores do.
pub async fn converge(
    pd: &str,
    cluster: &Cluster,
    within: Duration,
    done: impl Fn(&[RegionView]) -> bool,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let operators = get_json(pd, "/pd/api/v1/operators");
        let sim = sim_regions(cluster);
        let pd_view = pd_regions(pd);
        if operators.items().is_empty() && sim == pd_view && done(&sim) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "PD and the stores disagree after {within:?}\n  stores: {sim:?}\n  pd:     \
                 {pd_view:?}\n  PD's operators: {operators:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
