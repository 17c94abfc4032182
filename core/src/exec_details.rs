//! Execution details TiKV reports on its responses (`ExecDetailsV2`),
//! summed over the requests of one operation or more (client-go's
//! `util.TimeDetail`, `ScanDetail` and `WriteDetail` with their
//! `MergeFrom...` rules).
//!
//! ```
//! use tikv_core::exec_details::ExecDetails;
//! use tikv_core::rpc::KvResponse;
//! use tikv_proto::kvrpcpb;
//!
//! let mut get = kvrpcpb::GetResponse::default();
//! get.exec_details_v2 = Some(kvrpcpb::ExecDetailsV2 {
//!     scan_detail_v2: Some(kvrpcpb::ScanDetailV2 { processed_versions: 1, ..Default::default() }),
//!     ..Default::default()
//! });
//! let mut details = ExecDetails::default();
//! details.merge(&KvResponse::Get(Box::new(get.clone())));
//! details.merge(&KvResponse::Get(Box::new(get)));
//! assert_eq!(details.requests, 2);
//! assert_eq!(details.scan.processed_keys, 2);
//! ```

use tikv_proto::kvrpcpb;

use crate::rpc::KvResponse;
use crate::time::Duration;

/// Where TiKV spent the requests' time (client-go `util.TimeDetail`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TimeDetail {
    /// Time spent processing (executing) the requests.
    pub process: Duration,
    /// Time processing was suspended (yielded to other work).
    pub suspend: Duration,
    /// Time the requests waited in TiKV's queues before processing.
    pub wait: Duration,
    /// Time spent reading from the storage engine.
    pub kv_read_wall: Duration,
    /// Time in TiKV's gRPC layer processing the requests.
    pub kv_grpc_process: Duration,
    /// Time in TiKV's gRPC layer waiting.
    pub kv_grpc_wait: Duration,
    /// Total time TiKV spent on the requests, from arrival to answer.
    pub total_rpc_wall: Duration,
}

impl TimeDetail {
    /// Adds one response's timings: the nanosecond `TimeDetailV2` when
    /// TiKV sent it, else the older millisecond `TimeDetail` (client-go
    /// `MergeFromTimeDetail`).
    fn merge(&mut self, v2: Option<&kvrpcpb::TimeDetailV2>, v1: Option<&kvrpcpb::TimeDetail>) {
        let ns = Duration::from_nanos;
        let ms = Duration::from_millis;
        if let Some(t) = v2 {
            self.wait += ns(t.wait_wall_time_ns);
            self.process += ns(t.process_wall_time_ns);
            self.suspend += ns(t.process_suspend_wall_time_ns);
            self.kv_read_wall += ns(t.kv_read_wall_time_ns);
            self.kv_grpc_process += ns(t.kv_grpc_process_time_ns);
            self.kv_grpc_wait += ns(t.kv_grpc_wait_time_ns);
            self.total_rpc_wall += ns(t.total_rpc_wall_time_ns);
        } else if let Some(t) = v1 {
            self.wait += ms(t.wait_wall_time_ms);
            self.process += ms(t.process_wall_time_ms);
            self.kv_read_wall += ms(t.kv_read_wall_time_ms);
            self.total_rpc_wall += ns(t.total_rpc_wall_time_ns);
        }
    }
}

/// What the requests read (client-go `util.ScanDetail`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScanDetail {
    /// MVCC versions looked at, deleted and old ones included.
    pub total_keys: u64,
    /// Versions that were read and processed.
    pub processed_keys: u64,
    /// Bytes of the processed versions.
    pub processed_keys_size: u64,
    /// Tombstones RocksDB skipped.
    pub rocksdb_delete_skipped_count: u64,
    /// Internal keys RocksDB skipped.
    pub rocksdb_key_skipped_count: u64,
    /// RocksDB block cache hits.
    pub rocksdb_block_cache_hit_count: u64,
    /// RocksDB blocks read from disk.
    pub rocksdb_block_read_count: u64,
    /// Bytes of the blocks read from disk.
    pub rocksdb_block_read_byte: u64,
    /// Time reading blocks from disk.
    pub rocksdb_block_read: Duration,
    /// Time taking the storage snapshot.
    pub get_snapshot: Duration,
}

impl ScanDetail {
    /// client-go `MergeFromScanDetailV2`.
    fn merge(&mut self, s: &kvrpcpb::ScanDetailV2) {
        self.total_keys += s.total_versions;
        self.processed_keys += s.processed_versions;
        self.processed_keys_size += s.processed_versions_size;
        self.rocksdb_delete_skipped_count += s.rocksdb_delete_skipped_count;
        self.rocksdb_key_skipped_count += s.rocksdb_key_skipped_count;
        self.rocksdb_block_cache_hit_count += s.rocksdb_block_cache_hit_count;
        self.rocksdb_block_read_count += s.rocksdb_block_read_count;
        self.rocksdb_block_read_byte += s.rocksdb_block_read_byte;
        self.rocksdb_block_read += Duration::from_nanos(s.rocksdb_block_read_nanos);
        self.get_snapshot += Duration::from_nanos(s.get_snapshot_nanos);
    }
}

/// Where the writes' time went in TiKV's scheduler, raftstore and apply
/// (client-go `util.WriteDetail`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteDetail {
    /// Waiting to be batched by the store loop.
    pub store_batch_wait: Duration,
    /// Waiting to send the proposal.
    pub propose_send_wait: Duration,
    /// Persisting the raft log.
    pub persist_log: Duration,
    /// Waiting to become the raft DB write leader.
    pub raft_db_write_leader_wait: Duration,
    /// Syncing the raft log.
    pub raft_db_sync_log: Duration,
    /// Writing the raft DB memtable.
    pub raft_db_write_memtable: Duration,
    /// Committing the log (quorum).
    pub commit_log: Duration,
    /// Waiting to be batched for apply.
    pub apply_batch_wait: Duration,
    /// Applying the log.
    pub apply_log: Duration,
    /// Waiting for the apply mutex.
    pub apply_mutex_lock: Duration,
    /// Waiting to become the apply write leader.
    pub apply_write_leader_wait: Duration,
    /// Writing the apply WAL.
    pub apply_write_wal: Duration,
    /// Writing the apply memtable.
    pub apply_write_memtable: Duration,
    /// Waiting for the scheduler's latches.
    pub scheduler_latch_wait: Duration,
    /// Processing in the scheduler.
    pub scheduler_process: Duration,
    /// Throttled by flow control.
    pub scheduler_throttle: Duration,
    /// Waiting for pessimistic locks.
    pub scheduler_pessimistic_lock_wait: Duration,
}

impl WriteDetail {
    /// client-go `MergeFromWriteDetailPb`.
    fn merge(&mut self, w: &kvrpcpb::WriteDetail) {
        let ns = Duration::from_nanos;
        self.store_batch_wait += ns(w.store_batch_wait_nanos);
        self.propose_send_wait += ns(w.propose_send_wait_nanos);
        self.persist_log += ns(w.persist_log_nanos);
        self.raft_db_write_leader_wait += ns(w.raft_db_write_leader_wait_nanos);
        self.raft_db_sync_log += ns(w.raft_db_sync_log_nanos);
        self.raft_db_write_memtable += ns(w.raft_db_write_memtable_nanos);
        self.commit_log += ns(w.commit_log_nanos);
        self.apply_batch_wait += ns(w.apply_batch_wait_nanos);
        self.apply_log += ns(w.apply_log_nanos);
        self.apply_mutex_lock += ns(w.apply_mutex_lock_nanos);
        self.apply_write_leader_wait += ns(w.apply_write_leader_wait_nanos);
        self.apply_write_wal += ns(w.apply_write_wal_nanos);
        self.apply_write_memtable += ns(w.apply_write_memtable_nanos);
        self.scheduler_latch_wait += ns(w.latch_wait_nanos);
        self.scheduler_process += ns(w.process_nanos);
        self.scheduler_throttle += ns(w.throttle_nanos);
        self.scheduler_pessimistic_lock_wait += ns(w.pessimistic_lock_wait_nanos);
    }
}

/// The execution details of a set of store responses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecDetails {
    /// Responses merged (every answer counts, with or without details).
    pub requests: u64,
    /// Responses that carried `ExecDetailsV2`.
    pub with_details: u64,
    /// Where TiKV spent the time.
    pub time: TimeDetail,
    /// What was read.
    pub scan: ScanDetail,
    /// Where the writes' time went.
    pub write: WriteDetail,
}

impl ExecDetails {
    /// Adds one response.
    pub fn merge(&mut self, response: &KvResponse) {
        self.requests += 1;
        let Some(d) = exec_details_v2(response) else {
            return;
        };
        self.with_details += 1;
        self.time.merge(d.time_detail_v2.as_ref(), d.time_detail.as_ref());
        if let Some(s) = &d.scan_detail_v2 {
            self.scan.merge(s);
        }
        if let Some(w) = &d.write_detail {
            self.write.merge(w);
        }
    }
}

/// The `ExecDetailsV2` of a response, for the responses TiKV puts one on.
pub fn exec_details_v2(response: &KvResponse) -> Option<&kvrpcpb::ExecDetailsV2> {
    match response {
        KvResponse::Get(r) => r.exec_details_v2.as_ref(),
        KvResponse::BatchGet(r) => r.exec_details_v2.as_ref(),
        KvResponse::Prewrite(r) => r.exec_details_v2.as_ref(),
        KvResponse::Commit(r) => r.exec_details_v2.as_ref(),
        KvResponse::PessimisticLock(r) => r.exec_details_v2.as_ref(),
        KvResponse::PessimisticRollback(r) => r.exec_details_v2.as_ref(),
        KvResponse::TxnHeartBeat(r) => r.exec_details_v2.as_ref(),
        KvResponse::CheckTxnStatus(r) => r.exec_details_v2.as_ref(),
        KvResponse::CheckSecondaryLocks(r) => r.exec_details_v2.as_ref(),
        KvResponse::BatchRollback(r) => r.exec_details_v2.as_ref(),
        KvResponse::ScanLock(r) => r.exec_details_v2.as_ref(),
        KvResponse::ResolveLock(r) => r.exec_details_v2.as_ref(),
        KvResponse::Flush(r) => r.exec_details_v2.as_ref(),
        KvResponse::BufferBatchGet(r) => r.exec_details_v2.as_ref(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit_with(details: kvrpcpb::ExecDetailsV2) -> KvResponse {
        KvResponse::Commit(Box::new(kvrpcpb::CommitResponse {
            exec_details_v2: Some(details),
            ..Default::default()
        }))
    }

    /// Sums follow client-go's merge rules: nanosecond V2 timings win over
    /// the millisecond V1 ones, scan and write details add up field by
    /// field, and answers without details count as requests only.
    #[test]
    fn details_sum_over_responses_with_v2_timings_preferred() {
        let mut d = ExecDetails::default();
        d.merge(&commit_with(kvrpcpb::ExecDetailsV2 {
            time_detail: Some(kvrpcpb::TimeDetail {
                process_wall_time_ms: 7,
                wait_wall_time_ms: 1,
                ..Default::default()
            }),
            time_detail_v2: Some(kvrpcpb::TimeDetailV2 {
                process_wall_time_ns: 1_500,
                total_rpc_wall_time_ns: 4_000,
                ..Default::default()
            }),
            write_detail: Some(kvrpcpb::WriteDetail {
                latch_wait_nanos: 10,
                commit_log_nanos: 20,
                ..Default::default()
            }),
            ..Default::default()
        }));
        d.merge(&commit_with(kvrpcpb::ExecDetailsV2 {
            time_detail: Some(kvrpcpb::TimeDetail {
                process_wall_time_ms: 2,
                total_rpc_wall_time_ns: 1_000,
                ..Default::default()
            }),
            write_detail: Some(kvrpcpb::WriteDetail { latch_wait_nanos: 5, ..Default::default() }),
            ..Default::default()
        }));
        d.merge(&KvResponse::Get(Box::new(kvrpcpb::GetResponse {
            exec_details_v2: Some(kvrpcpb::ExecDetailsV2 {
                scan_detail_v2: Some(kvrpcpb::ScanDetailV2 {
                    total_versions: 3,
                    processed_versions: 1,
                    processed_versions_size: 9,
                    get_snapshot_nanos: 100,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })));
        d.merge(&KvResponse::Get(Box::default()));
        assert_eq!((d.requests, d.with_details), (4, 3));
        assert_eq!(d.time.process, Duration::from_nanos(1_500) + Duration::from_millis(2));
        assert_eq!(d.time.wait, Duration::ZERO, "the first answer's V1 wait is ignored");
        assert_eq!(d.time.total_rpc_wall, Duration::from_nanos(5_000));
        assert_eq!(d.write.scheduler_latch_wait, Duration::from_nanos(15));
        assert_eq!(d.write.commit_log, Duration::from_nanos(20));
        assert_eq!(
            (d.scan.total_keys, d.scan.processed_keys, d.scan.processed_keys_size),
            (3, 1, 9)
        );
        assert_eq!(d.scan.get_snapshot, Duration::from_nanos(100));
    }

    #[test]
    fn responses_without_the_field_have_no_details() {
        let raw = KvResponse::RawGet(Box::default());
        assert!(exec_details_v2(&raw).is_none());
        let mut d = ExecDetails::default();
        d.merge(&raw);
        assert_eq!((d.requests, d.with_details), (1, 0));
    }
}

/// One store request of an operation with what it cost (client-go
/// `util.ReqDetailInfo`): the slowest lock request of a lock call, the
/// slowest prewrite and the primary's commit of a commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestDetail {
    /// From send to answer.
    pub time: Duration,
    /// The region it was sent for.
    pub region_id: u64,
    /// The store that answered.
    pub store_id: u64,
    /// That store's address.
    pub store_addr: String,
    /// What TiKV reported on the answer (`ExecDetailsV2`).
    pub exec_details: ExecDetails,
}

impl RequestDetail {
    /// Keeps the slower of `slowest` and `other` in `slowest` (client-go's
    /// `MergeReqDetails`: a later request replaces the kept one only when
    /// it took longer).
    pub fn keep_slowest(slowest: &mut Option<RequestDetail>, other: Option<&RequestDetail>) {
        if let Some(other) = other
            && slowest.as_ref().is_none_or(|mine| mine.time < other.time)
        {
            *slowest = Some(other.clone());
        }
    }
}

/// Times the store requests an operation sends: [`RequestTimer::sent`] as
/// each leaves (with the operation's current time: RPCs are polled right
/// after the input that produced them), [`RequestTimer::answered`] as its
/// answer arrives.
#[derive(Debug, Default)]
pub(crate) struct RequestTimer {
    in_flight: Vec<SentRequest>,
}

/// A request the [`RequestTimer`] waits on.
#[derive(Debug)]
struct SentRequest {
    id: crate::rpc::RpcId,
    sent_at: crate::time::Instant,
    region_id: u64,
    store_id: u64,
    addr: std::sync::Arc<str>,
}

/// A timed request's answer: its time, and where it went.
#[derive(Debug)]
pub(crate) struct TimedAnswer {
    pub(crate) time: Duration,
    pub(crate) region_id: u64,
    pub(crate) store_id: u64,
    addr: std::sync::Arc<str>,
}

impl TimedAnswer {
    /// True if this answer took longer than `slowest` (or there is none).
    pub(crate) fn is_slower_than(&self, slowest: Option<&RequestDetail>) -> bool {
        slowest.is_none_or(|s| s.time < self.time)
    }

    /// The detail of this answer's request, with the exec details of
    /// `response`.
    pub(crate) fn detail(&self, response: &KvResponse) -> RequestDetail {
        let mut exec_details = ExecDetails::default();
        exec_details.merge(response);
        RequestDetail {
            time: self.time,
            region_id: self.region_id,
            store_id: self.store_id,
            store_addr: self.addr.to_string(),
            exec_details,
        }
    }
}

impl RequestTimer {
    /// Starts timing `rpc` at `now` if it is a store request `wanted`
    /// picks; returns whether it did.
    pub(crate) fn sent(
        &mut self,
        rpc: &crate::rpc::Rpc,
        now: crate::time::Instant,
        wanted: impl FnOnce(&crate::rpc::KvRequest) -> bool,
    ) -> bool {
        use crate::rpc::{Request, Target};
        let (Request::Kv(request), Target::Store { store_id, addr, .. }) =
            (&rpc.request, &rpc.target)
        else {
            return false;
        };
        if !wanted(request) {
            return false;
        }
        self.in_flight.push(SentRequest {
            id: rpc.id,
            sent_at: now,
            region_id: request.context().map_or(0, |c| c.region_id),
            store_id: *store_id,
            addr: addr.clone(),
        });
        true
    }

    /// The answer of timed request `id` at `now`; `None` for a request
    /// not timed (or already answered).
    pub(crate) fn answered(
        &mut self,
        id: crate::rpc::RpcId,
        now: crate::time::Instant,
    ) -> Option<TimedAnswer> {
        let i = self.in_flight.iter().position(|s| s.id == id)?;
        let sent = self.in_flight.swap_remove(i);
        Some(TimedAnswer {
            time: now.saturating_duration_since(sent.sent_at),
            region_id: sent.region_id,
            store_id: sent.store_id,
            addr: sent.addr,
        })
    }
}
