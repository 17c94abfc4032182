//! client-go's region-error table (`RegionRequestSender.onRegionError`), as a
//! pure function from a TiKV region error to what the sender does next.
//!
//! The sender applies the cache side effects (leader switch, invalidation) and
//! the backoff; this module only decides. Rows follow
//! `research/client-go-features.md` §5.3 for the leader-only path (no replica
//! or stale reads yet).

use tikv_proto::errorpb;
use tikv_proto::metapb;

use crate::backoff::BackoffKind;
use crate::region::InvalidReason;

/// What the sender does with a region error.
#[derive(Clone, Debug, PartialEq)]
pub enum RegionErrorAction {
    /// `NotLeader` naming a leader: switch the cached leader to it and retry
    /// at once, without backoff.
    SwitchLeader(metapb::Peer),
    /// Retry the same region after a backoff of this kind (the cached region
    /// stays valid). `try_next_peer` asks to try another peer first
    /// (`NotLeader` without a leader: the old leader may be gone).
    Backoff {
        /// The backoff kind to sleep on.
        kind: BackoffKind,
        /// Rotate to the next peer before retrying.
        try_next_peer: bool,
    },
    /// The cached region is wrong: invalidate it for this reason and hand the
    /// request back to the caller to re-locate (and re-split a batch). With
    /// `backoff`, sleep first (client-go's `MayBackoffForRegionError`:
    /// `BoRegionMiss` unless it is a real `EpochNotMatch` that carried the
    /// current regions).
    Relocate {
        /// Invalidate the cached region for this reason (`None`: the region
        /// is still right, only the request must be rebuilt).
        invalidate: Option<InvalidReason>,
        /// Sleep before re-locating.
        backoff: Option<BackoffKind>,
        /// Also mark the store as needing a reload (`StoreNotMatch`).
        invalidate_store: bool,
    },
    /// `EpochNotMatch`: update the cache from `current_regions` (possibly empty)
    /// and re-locate.
    EpochNotMatch(Vec<metapb::Region>),
    /// The request may or may not have been applied (`UndeterminedResult`).
    Undetermined,
    /// Not retried: return the region error to the caller as
    /// [`crate::Error::Region`] (`RaftEntryTooLarge`, `FlashbackInProgress`,
    /// `FlashbackNotPrepared`, "invalid max_ts update", `BucketVersionNotMatch`
    /// on a non-coprocessor request).
    Fail,
}

/// Decides what to do with `err` (client-go `onRegionError`).
///
/// Unknown kinds (a field this client does not know, so only `message` is
/// set) invalidate the region and re-locate with backoff, as client-go's
/// no-selector fallback does: the next attempt starts from fresh PD data.
pub fn classify(err: &errorpb::Error) -> RegionErrorAction {
    use RegionErrorAction::*;
    let relocate =
        |reason, backoff| Relocate { invalidate: Some(reason), backoff, invalidate_store: false };

    if err.undetermined_result.is_some() {
        return Undetermined;
    }
    if let Some(nl) = &err.not_leader {
        return match &nl.leader {
            Some(leader) if leader.store_id != 0 => SwitchLeader(*leader),
            _ => Backoff { kind: BackoffKind::RegionScheduling, try_next_peer: true },
        };
    }
    if err.disk_full.is_some() {
        return Backoff { kind: BackoffKind::DiskFull, try_next_peer: false };
    }
    if err.recovery_in_progress.is_some() {
        return relocate(InvalidReason::Other, Some(BackoffKind::RegionRecoveryInProgress));
    }
    if err.is_witness.is_some() {
        // Witness peers are experimental in TiKV; client-go invalidates and
        // returns to the caller, which re-locates.
        return relocate(InvalidReason::Other, Some(BackoffKind::RegionMiss));
    }
    if err.flashback_in_progress.is_some() || err.flashback_not_prepared.is_some() {
        return Fail;
    }
    if err.region_not_found.is_some() {
        return relocate(InvalidReason::RegionNotFound, Some(BackoffKind::RegionMiss));
    }
    if err.key_not_in_region.is_some() {
        return relocate(InvalidReason::Other, Some(BackoffKind::RegionMiss));
    }
    if let Some(e) = &err.epoch_not_match {
        return EpochNotMatch(e.current_regions.clone());
    }
    if err.server_is_busy.is_some() {
        return Backoff { kind: BackoffKind::ServerBusy, try_next_peer: false };
    }
    if err.stale_command.is_some() {
        // client-go's selector would move to the next replica without
        // backoff; this sender talks to the leader only, so it takes the
        // no-selector path and backs off `BoStaleCmd` (bounded by the budget).
        return Backoff { kind: BackoffKind::StaleCommand, try_next_peer: false };
    }
    if err.store_not_match.is_some() {
        return Relocate {
            invalidate: Some(InvalidReason::StoreNotMatch),
            backoff: Some(BackoffKind::RegionMiss),
            invalidate_store: true,
        };
    }
    if err.raft_entry_too_large.is_some() {
        return Fail;
    }
    if err.max_timestamp_not_synced.is_some() {
        return Backoff { kind: BackoffKind::MaxTsNotSynced, try_next_peer: false };
    }
    if err.region_not_initialized.is_some() {
        return Backoff { kind: BackoffKind::RegionNotInitialized, try_next_peer: false };
    }
    if err.read_index_not_ready.is_some() || err.proposal_in_merging_mode.is_some() {
        return Backoff { kind: BackoffKind::RegionScheduling, try_next_peer: false };
    }
    if err.data_is_not_ready.is_some() {
        // Only stale reads get this; a leader read never should. Retry after
        // a short backoff rather than failing.
        return Backoff { kind: BackoffKind::RegionMiss, try_next_peer: false };
    }
    if err.mismatch_peer_id.is_some() {
        return relocate(InvalidReason::Other, Some(BackoffKind::RegionMiss));
    }
    if err.bucket_version_not_match.is_some() {
        // client-go hands it back without invalidating: the region is right,
        // only bucket-split (coprocessor) requests must be rebuilt.
        return Relocate {
            invalidate: None,
            backoff: Some(BackoffKind::RegionMiss),
            invalidate_store: false,
        };
    }
    if err.message.contains("invalid max_ts update") {
        return Fail;
    }
    relocate(InvalidReason::Other, Some(BackoffKind::RegionMiss))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(store: u64) -> metapb::Peer {
        metapb::Peer { id: store * 10, store_id: store, ..Default::default() }
    }

    /// One line per row of client-go's table: error kind → action.
    #[test]
    fn region_error_table() {
        let rows: Vec<(&str, errorpb::Error)> = vec![
            (
                "NotLeader with leader",
                errorpb::Error {
                    not_leader: Some(errorpb::NotLeader { region_id: 1, leader: Some(peer(2)) }),
                    ..Default::default()
                },
            ),
            (
                "NotLeader without leader",
                errorpb::Error {
                    not_leader: Some(errorpb::NotLeader { region_id: 1, leader: None }),
                    ..Default::default()
                },
            ),
            (
                "EpochNotMatch with regions",
                errorpb::Error {
                    epoch_not_match: Some(errorpb::EpochNotMatch {
                        current_regions: vec![metapb::Region { id: 7, ..Default::default() }],
                    }),
                    ..Default::default()
                },
            ),
            (
                "EpochNotMatch empty",
                errorpb::Error { epoch_not_match: Some(Default::default()), ..Default::default() },
            ),
            (
                "RegionNotFound",
                errorpb::Error { region_not_found: Some(Default::default()), ..Default::default() },
            ),
            (
                "KeyNotInRegion",
                errorpb::Error {
                    key_not_in_region: Some(Default::default()),
                    ..Default::default()
                },
            ),
            (
                "ServerIsBusy",
                errorpb::Error { server_is_busy: Some(Default::default()), ..Default::default() },
            ),
            (
                "StaleCommand",
                errorpb::Error { stale_command: Some(Default::default()), ..Default::default() },
            ),
            (
                "StoreNotMatch",
                errorpb::Error { store_not_match: Some(Default::default()), ..Default::default() },
            ),
            (
                "MaxTimestampNotSynced",
                errorpb::Error {
                    max_timestamp_not_synced: Some(Default::default()),
                    ..Default::default()
                },
            ),
            (
                "ReadIndexNotReady",
                errorpb::Error {
                    read_index_not_ready: Some(Default::default()),
                    ..Default::default()
                },
            ),
            (
                "ProposalInMergingMode",
                errorpb::Error {
                    proposal_in_merging_mode: Some(Default::default()),
                    ..Default::default()
                },
            ),
            (
                "RegionNotInitialized",
                errorpb::Error {
                    region_not_initialized: Some(Default::default()),
                    ..Default::default()
                },
            ),
            (
                "DiskFull",
                errorpb::Error { disk_full: Some(Default::default()), ..Default::default() },
            ),
            (
                "RecoveryInProgress",
                errorpb::Error {
                    recovery_in_progress: Some(Default::default()),
                    ..Default::default()
                },
            ),
            (
                "FlashbackInProgress",
                errorpb::Error {
                    flashback_in_progress: Some(Default::default()),
                    ..Default::default()
                },
            ),
            (
                "FlashbackNotPrepared",
                errorpb::Error {
                    flashback_not_prepared: Some(Default::default()),
                    ..Default::default()
                },
            ),
            (
                "RaftEntryTooLarge",
                errorpb::Error {
                    raft_entry_too_large: Some(Default::default()),
                    ..Default::default()
                },
            ),
            (
                "MismatchPeerId",
                errorpb::Error { mismatch_peer_id: Some(Default::default()), ..Default::default() },
            ),
            (
                "UndeterminedResult",
                errorpb::Error {
                    undetermined_result: Some(Default::default()),
                    ..Default::default()
                },
            ),
            (
                "invalid max_ts update",
                errorpb::Error {
                    message: "invalid max_ts update: too large".into(),
                    ..Default::default()
                },
            ),
            (
                "unknown kind (message only)",
                errorpb::Error { message: "something new".into(), ..Default::default() },
            ),
        ];
        let mut out = String::new();
        for (name, err) in rows {
            let action = classify(&err);
            let shown = match action {
                RegionErrorAction::SwitchLeader(p) => format!("SwitchLeader(store {})", p.store_id),
                RegionErrorAction::EpochNotMatch(r) => {
                    format!("EpochNotMatch({} regions)", r.len())
                }
                other => format!("{other:?}"),
            };
            out.push_str(&format!("{name:<28} => {shown}\n"));
        }
        insta::assert_snapshot!(out);
    }
}
