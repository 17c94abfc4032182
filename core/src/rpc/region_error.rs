//! client-go's region-error table (`RegionRequestSender.onRegionError`), as a
//! pure function from a TiKV region error to what the sender does next.
//!
//! The sender applies the cache side effects (leader switch, invalidation) and
//! the backoff; this module only decides. Rows follow
//! `research/client-go-features.md` §5.3 on the replica-selector path: the
//! rows whose handling depends on which replica answered (`NotLeader`,
//! `RegionNotFound`, `ServerIsBusy`, `StaleCommand`, `DataIsNotReady`,
//! `FlashbackInProgress`, deadlines, unknown kinds) name the error and the
//! sender asks its [`crate::route::replica::ReplicaSelector`].

use tikv_proto::errorpb;
use tikv_proto::metapb;

use crate::backoff::BackoffKind;
use crate::region::InvalidReason;

/// What the sender does with a region error.
#[derive(Clone, Debug, PartialEq)]
pub enum RegionErrorAction {
    /// `NotLeader`, naming the leader or nobody (an election is under way):
    /// the selector switches to the named leader and retries at once, or
    /// backs off `BoRegionScheduling` and tries another peer.
    NotLeader(Option<metapb::Peer>),
    /// Retry the same region after a backoff of this kind (the cached region
    /// stays valid).
    Backoff(BackoffKind),
    /// `RegionNotFound`: a follower that lacks the region leaves one retry
    /// on the leader; otherwise invalidate and re-locate after `BoRegionMiss`.
    RegionNotFound,
    /// `ServerIsBusy`: try another replica at once or back off
    /// `BoTiKVServerBusy`, as the selector decides. `deadline` when the
    /// reason is TiKV's "deadline is exceeded" (a read that ran out of its
    /// short configurable timeout in TiKV's queue).
    ServerIsBusy {
        /// TiKV's estimate of the queueing time, in milliseconds.
        estimated_wait_ms: u32,
        /// The reason says the request's deadline passed.
        deadline: bool,
    },
    /// `DataIsNotReady` (a stale read above the replica's safe ts): retry
    /// without backoff, that replica allowed one more (replica) read.
    DataIsNotReady,
    /// `FlashbackInProgress`: a replica read on a follower retries on the
    /// leader; otherwise the error goes to the caller.
    FlashbackInProgress,
    /// The message says "Deadline is exceeded": a read with a short
    /// configurable timeout retries another replica at once; anything else
    /// is handled as [`RegionErrorAction::TryNextReplica`].
    DeadlineExceeded,
    /// `StaleCommand` and kinds this client does not know: retry at once on
    /// the replica the selector picks (the attempt limits bound it).
    TryNextReplica,
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
/// set) retry on the next replica, as client-go's selector path does; the
/// selector's attempt limits end in a region reload.
pub fn classify(err: &errorpb::Error) -> RegionErrorAction {
    use RegionErrorAction::*;
    let relocate =
        |reason, backoff| Relocate { invalidate: Some(reason), backoff, invalidate_store: false };

    if err.undetermined_result.is_some() {
        return Undetermined;
    }
    if let Some(nl) = &err.not_leader {
        return match &nl.leader {
            Some(leader) if leader.store_id != 0 => NotLeader(Some(*leader)),
            _ => NotLeader(None),
        };
    }
    if err.disk_full.is_some() {
        return Backoff(BackoffKind::DiskFull);
    }
    if err.recovery_in_progress.is_some() {
        return relocate(InvalidReason::Other, Some(BackoffKind::RegionRecoveryInProgress));
    }
    if err.is_witness.is_some() {
        // Witness peers are experimental in TiKV; client-go invalidates and
        // returns to the caller, which re-locates.
        return relocate(InvalidReason::Other, Some(BackoffKind::RegionMiss));
    }
    if err.flashback_in_progress.is_some() {
        return FlashbackInProgress;
    }
    if err.flashback_not_prepared.is_some() {
        return Fail;
    }
    if err.region_not_found.is_some() {
        return RegionNotFound;
    }
    if err.key_not_in_region.is_some() {
        return relocate(InvalidReason::Other, Some(BackoffKind::RegionMiss));
    }
    if let Some(e) = &err.epoch_not_match {
        return EpochNotMatch(e.current_regions.clone());
    }
    if let Some(busy) = &err.server_is_busy {
        return ServerIsBusy {
            estimated_wait_ms: busy.estimated_wait_ms,
            deadline: busy.reason.contains("deadline is exceeded"),
        };
    }
    if err.stale_command.is_some() {
        // The old leader's term changed: a new leader is elected soon and
        // the selector finds it, without backoff.
        return TryNextReplica;
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
        return Backoff(BackoffKind::MaxTsNotSynced);
    }
    if err.region_not_initialized.is_some() {
        return Backoff(BackoffKind::RegionNotInitialized);
    }
    if err.read_index_not_ready.is_some() || err.proposal_in_merging_mode.is_some() {
        return Backoff(BackoffKind::RegionScheduling);
    }
    if err.data_is_not_ready.is_some() {
        return DataIsNotReady;
    }
    if err.message.contains("Deadline is exceeded") {
        return DeadlineExceeded;
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
    TryNextReplica
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
                "ServerIsBusy with a wait",
                errorpb::Error {
                    server_is_busy: Some(errorpb::ServerIsBusy {
                        estimated_wait_ms: 30,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
            (
                "ServerIsBusy deadline",
                errorpb::Error {
                    server_is_busy: Some(errorpb::ServerIsBusy {
                        reason: "deadline is exceeded".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
            (
                "DataIsNotReady",
                errorpb::Error {
                    data_is_not_ready: Some(Default::default()),
                    ..Default::default()
                },
            ),
            (
                "Deadline is exceeded",
                errorpb::Error { message: "Deadline is exceeded".into(), ..Default::default() },
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
                RegionErrorAction::NotLeader(Some(p)) => {
                    format!("NotLeader(store {})", p.store_id)
                }
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
