//! RawKV operations (client-go `rawkv.Client`), as state machines.
//!
//! Each operation is a [`KeyFanout`] (keyed commands: grouped by region and
//! batched) or a [`RangeWalk`] (range commands: region by region) with a
//! plan that builds the kvproto request and merges the answers. Every
//! operation gets a backoff budget of client-go's `rawkvMaxBackoff` (20 s,
//! times the backoff weight).

use std::sync::Arc;

use bytes::Bytes;
use tikv_proto::kvrpcpb;

use crate::error::Error;
use crate::key::{Key, KeyRange, KvPair, ScanSpec, Value};
use crate::route::fanout::{KeyFanout, KeyPlan, Point, PointPlan};
use crate::route::replica::ReplicaRead;
use crate::route::walk::{RangePlan, RangeWalk};
use crate::rpc::{KvRequest, KvResponse};
use crate::time::Duration;
use crate::view::ClusterView;

/// A TiKV column family for raw commands.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum ColumnFamily {
    /// `default` (what TiKV uses when none is named).
    #[default]
    Default,
    /// `lock`.
    Lock,
    /// `write`.
    Write,
}

impl ColumnFamily {
    /// The column family's name in TiKV.
    pub fn name(self) -> &'static str {
        match self {
            ColumnFamily::Default => "default",
            ColumnFamily::Lock => "lock",
            ColumnFamily::Write => "write",
        }
    }

    /// What goes in a request's `cf` field. The default column family is
    /// sent as the empty string, as client-go does: TiKV reads "" as
    /// `default`, and in API V2 it refuses any explicit name
    /// (`CfDeprecated`).
    pub fn wire_name(self) -> &'static str {
        match self {
            ColumnFamily::Default => "",
            other => other.name(),
        }
    }
}

/// Options shared by raw operations of one client (client-go sets the
/// column family per client or per call, and atomic mode per client).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RawOptions {
    /// Column family of the data.
    pub cf: ColumnFamily,
    /// Atomic mode (client-go `SetAtomicForCAS`): every write sets
    /// `for_cas` so TiKV serialises it with compare-and-swap.
    pub atomic: bool,
    /// Which replica serves the reads (`get`, `batch_get`, `get_key_ttl`,
    /// scans); writes always go to the leader. TiKV serves a raw replica
    /// read after a read index on the leader, so it is as fresh as a
    /// leader read.
    pub replica_read: ReplicaRead,
}

impl RawOptions {
    /// Reads and writes column family `cf`.
    pub fn with_cf(mut self, cf: ColumnFamily) -> RawOptions {
        self.cf = cf;
        self
    }

    /// Atomic mode: every write sets `for_cas`.
    pub fn with_atomic(mut self, atomic: bool) -> RawOptions {
        self.atomic = atomic;
        self
    }

    /// Serves the reads from the replicas `read` chooses.
    pub fn with_replica_read(mut self, read: ReplicaRead) -> RawOptions {
        self.replica_read = read;
        self
    }
}

/// The result of [`checksum`]: XOR of per-pair CRC-64 digests, pair count
/// and byte count over a range (client-go `RawChecksum`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RawChecksum {
    /// XOR of the CRC-64 digests of every pair.
    pub crc64_xor: u64,
    /// Number of pairs.
    pub total_kvs: u64,
    /// Total bytes of keys and values.
    pub total_bytes: u64,
}

fn raw_budget(view: &ClusterView) -> Duration {
    view.config.budget(view.config.backoff.raw)
}

fn server_error(error: &str) -> Result<(), Error> {
    if error.is_empty() { Ok(()) } else { Err(Error::Server(error.to_string())) }
}

fn unexpected(resp: &KvResponse) -> Error {
    Error::malformed(format!("unexpected response {}", resp.name()))
}

// ---------------------------------------------------------------- keyed plans

/// `RawGet` of one key.
#[derive(Debug)]
pub struct GetPlan {
    cf: ColumnFamily,
    value: Option<Value>,
}

impl PointPlan for GetPlan {
    type Output = Option<Value>;
    fn build(&mut self, key: &Key) -> KvRequest {
        KvRequest::RawGet(Box::new(kvrpcpb::RawGetRequest {
            key: key.to_bytes(),
            cf: self.cf.wire_name().into(),
            ..Default::default()
        }))
    }
    fn merge(&mut self, response: KvResponse) -> Result<(), Error> {
        let KvResponse::RawGet(r) = response else {
            return Err(unexpected(&response));
        };
        server_error(&r.error)?;
        // `not_found` distinguishes a missing key from an empty value.
        self.value = if r.not_found { None } else { Some(r.value) };
        Ok(())
    }
    fn finish(self) -> Option<Value> {
        self.value
    }
}

/// `RawBatchGet`: found pairs, sorted by key.
#[derive(Debug)]
pub struct BatchGetPlan {
    opts: RawOptions,
    timeout: Duration,
    max_keys: usize,
    pairs: Vec<KvPair>,
}

impl KeyPlan for BatchGetPlan {
    type Item = Key;
    type Output = Vec<KvPair>;
    fn key(item: &Key) -> &Key {
        item
    }
    fn size(item: &Key) -> usize {
        item.len()
    }
    fn batch_limits(&self) -> (usize, usize) {
        (self.max_keys, usize::MAX)
    }
    fn build(&mut self, batch: &[Key]) -> KvRequest {
        KvRequest::RawBatchGet(Box::new(kvrpcpb::RawBatchGetRequest {
            keys: batch.iter().map(Key::to_bytes).collect(),
            cf: self.opts.cf.wire_name().into(),
            ..Default::default()
        }))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, _batch: Vec<Key>, response: KvResponse) -> Result<(), Error> {
        let KvResponse::RawBatchGet(r) = response else {
            return Err(unexpected(&response));
        };
        for pair in r.pairs {
            if let Some(e) = pair.error {
                return Err(Error::KeyError(Box::new(e)));
            }
            self.pairs.push(KvPair { key: pair.key.into(), value: pair.value });
        }
        Ok(())
    }
    fn finish(mut self) -> Vec<KvPair> {
        self.pairs.sort_by(|a, b| a.key.cmp(&b.key));
        self.pairs.dedup_by(|a, b| a.key == b.key);
        self.pairs
    }
}

/// One write of a batch put: key, value and TTL in seconds (0 = none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutItem {
    /// The pair.
    pub pair: KvPair,
    /// Time to live in seconds; 0 means forever.
    pub ttl: u64,
}

/// `RawPut` (one pair) or `RawBatchPut`.
#[derive(Debug)]
pub struct PutPlan {
    opts: RawOptions,
    timeout: Duration,
    single: bool,
    limits: (usize, usize),
}

impl KeyPlan for PutPlan {
    type Item = PutItem;
    type Output = ();
    fn key(item: &PutItem) -> &Key {
        &item.pair.key
    }
    fn size(item: &PutItem) -> usize {
        item.pair.key.len() + item.pair.value.len()
    }
    fn batch_limits(&self) -> (usize, usize) {
        self.limits
    }
    fn build(&mut self, batch: &[PutItem]) -> KvRequest {
        let cf = self.opts.cf.wire_name().to_string();
        if self.single
            && let Some(item) = batch.first()
        {
            return KvRequest::RawPut(Box::new(kvrpcpb::RawPutRequest {
                key: item.pair.key.to_bytes(),
                value: item.pair.value.clone(),
                ttl: item.ttl,
                cf,
                for_cas: self.opts.atomic,
                ..Default::default()
            }));
        }
        let mut request = kvrpcpb::RawBatchPutRequest {
            pairs: batch
                .iter()
                .map(|i| kvrpcpb::KvPair {
                    key: i.pair.key.to_bytes(),
                    value: i.pair.value.clone(),
                    ..Default::default()
                })
                .collect(),
            ttls: batch.iter().map(|i| i.ttl).collect(),
            cf,
            for_cas: self.opts.atomic,
            ..Default::default()
        };
        // Old servers read the deprecated scalar `ttl`; client-go sends the
        // first TTL there as well as the per-key list.
        #[allow(deprecated)]
        {
            request.ttl = batch.first().map_or(0, |i| i.ttl);
        }
        KvRequest::RawBatchPut(Box::new(request))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, _batch: Vec<PutItem>, response: KvResponse) -> Result<(), Error> {
        match response {
            KvResponse::RawPut(r) => server_error(&r.error),
            KvResponse::RawBatchPut(r) => server_error(&r.error),
            other => Err(unexpected(&other)),
        }
    }
    fn finish(self) {}
}

/// `RawDelete` (one key) or `RawBatchDelete`.
#[derive(Debug)]
pub struct DeletePlan {
    opts: RawOptions,
    timeout: Duration,
    single: bool,
    max_keys: usize,
}

impl KeyPlan for DeletePlan {
    type Item = Key;
    type Output = ();
    fn key(item: &Key) -> &Key {
        item
    }
    fn size(item: &Key) -> usize {
        item.len()
    }
    fn batch_limits(&self) -> (usize, usize) {
        (self.max_keys, usize::MAX)
    }
    fn build(&mut self, batch: &[Key]) -> KvRequest {
        let cf = self.opts.cf.wire_name().to_string();
        if self.single
            && let Some(key) = batch.first()
        {
            return KvRequest::RawDelete(Box::new(kvrpcpb::RawDeleteRequest {
                key: key.to_bytes(),
                cf,
                for_cas: self.opts.atomic,
                ..Default::default()
            }));
        }
        KvRequest::RawBatchDelete(Box::new(kvrpcpb::RawBatchDeleteRequest {
            keys: batch.iter().map(Key::to_bytes).collect(),
            cf,
            for_cas: self.opts.atomic,
            ..Default::default()
        }))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, _batch: Vec<Key>, response: KvResponse) -> Result<(), Error> {
        match response {
            KvResponse::RawDelete(r) => server_error(&r.error),
            KvResponse::RawBatchDelete(r) => server_error(&r.error),
            other => Err(unexpected(&other)),
        }
    }
    fn finish(self) {}
}

/// `RawGetKeyTTL`: remaining TTL in seconds, `None` if the key is missing.
#[derive(Debug)]
pub struct GetKeyTtlPlan {
    cf: ColumnFamily,
    ttl: Option<u64>,
}

impl PointPlan for GetKeyTtlPlan {
    type Output = Option<u64>;
    fn build(&mut self, key: &Key) -> KvRequest {
        KvRequest::RawGetKeyTtl(Box::new(kvrpcpb::RawGetKeyTtlRequest {
            key: key.to_bytes(),
            cf: self.cf.wire_name().into(),
            ..Default::default()
        }))
    }
    fn merge(&mut self, response: KvResponse) -> Result<(), Error> {
        let KvResponse::RawGetKeyTtl(r) = response else {
            return Err(unexpected(&response));
        };
        server_error(&r.error)?;
        self.ttl = if r.not_found { None } else { Some(r.ttl) };
        Ok(())
    }
    fn finish(self) -> Option<u64> {
        self.ttl
    }
}

/// What a compare-and-swap found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasOutcome {
    /// The value before the call (`None`: the key did not exist).
    pub previous: Option<Value>,
    /// Whether the new value was written.
    pub succeeded: bool,
}

/// `RawCompareAndSwap`.
#[derive(Debug)]
pub struct CasPlan {
    cf: ColumnFamily,
    expected: Option<Value>,
    new_value: Value,
    ttl: u64,
    outcome: Option<CasOutcome>,
}

impl PointPlan for CasPlan {
    type Output = CasOutcome;
    fn build(&mut self, key: &Key) -> KvRequest {
        KvRequest::RawCompareAndSwap(Box::new(kvrpcpb::RawCasRequest {
            key: key.to_bytes(),
            value: self.new_value.clone(),
            previous_not_exist: self.expected.is_none(),
            previous_value: self.expected.clone().unwrap_or_default(),
            cf: self.cf.wire_name().into(),
            ttl: self.ttl,
            ..Default::default()
        }))
    }
    fn merge(&mut self, response: KvResponse) -> Result<(), Error> {
        let KvResponse::RawCompareAndSwap(r) = response else {
            return Err(unexpected(&response));
        };
        server_error(&r.error)?;
        self.outcome = Some(CasOutcome {
            previous: if r.previous_not_exist { None } else { Some(r.previous_value) },
            succeeded: r.succeed,
        });
        Ok(())
    }
    fn finish(self) -> CasOutcome {
        // `merge` ran once the fan-out finished without error.
        self.outcome.unwrap_or(CasOutcome { previous: None, succeeded: false })
    }
}

// ---------------------------------------------------------------- range plans

/// `RawScan`, forward or reverse, up to `limit` pairs.
#[derive(Debug)]
pub struct ScanPlan {
    opts: RawOptions,
    timeout: Duration,
    limit: u32,
    key_only: bool,
    reverse: bool,
    pairs: Vec<KvPair>,
}

impl RangePlan for ScanPlan {
    type Output = Vec<KvPair>;
    fn build(&mut self, part: &KeyRange) -> KvRequest {
        let remaining = self.limit.saturating_sub(self.pairs.len() as u32);
        // TiKV's reverse raw scan takes the upper bound (exclusive) in
        // `start_key` and the lower bound (inclusive) in `end_key`.
        let (start_key, end_key) = if self.reverse {
            (part.end.to_bytes(), part.start.to_bytes())
        } else {
            (part.start.to_bytes(), part.end.to_bytes())
        };
        KvRequest::RawScan(Box::new(kvrpcpb::RawScanRequest {
            start_key,
            end_key,
            limit: remaining,
            key_only: self.key_only,
            cf: self.opts.cf.wire_name().into(),
            reverse: self.reverse,
            ..Default::default()
        }))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, _part: &KeyRange, response: KvResponse) -> Result<bool, Error> {
        let KvResponse::RawScan(r) = response else {
            return Err(unexpected(&response));
        };
        for pair in r.kvs {
            if let Some(e) = pair.error {
                return Err(Error::KeyError(Box::new(e)));
            }
            if self.pairs.len() as u32 >= self.limit {
                break;
            }
            let value = if self.key_only { Bytes::new() } else { pair.value };
            self.pairs.push(KvPair { key: pair.key.into(), value });
        }
        Ok((self.pairs.len() as u32) < self.limit)
    }
    fn finish(self) -> Vec<KvPair> {
        self.pairs
    }
}

/// `RawDeleteRange`, region by region (not atomic across regions, as in
/// client-go).
#[derive(Debug)]
pub struct DeleteRangePlan {
    opts: RawOptions,
    timeout: Duration,
}

impl RangePlan for DeleteRangePlan {
    type Output = ();
    fn build(&mut self, part: &KeyRange) -> KvRequest {
        KvRequest::RawDeleteRange(Box::new(kvrpcpb::RawDeleteRangeRequest {
            start_key: part.start.to_bytes(),
            end_key: part.end.to_bytes(),
            cf: self.opts.cf.wire_name().into(),
            ..Default::default()
        }))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, _part: &KeyRange, response: KvResponse) -> Result<bool, Error> {
        let KvResponse::RawDeleteRange(r) = response else {
            return Err(unexpected(&response));
        };
        server_error(&r.error)?;
        Ok(true)
    }
    fn finish(self) {}
}

/// `RawChecksum` with CRC-64 XOR, region by region.
#[derive(Debug)]
pub struct ChecksumPlan {
    timeout: Duration,
    sum: RawChecksum,
}

impl RangePlan for ChecksumPlan {
    type Output = RawChecksum;
    fn build(&mut self, part: &KeyRange) -> KvRequest {
        KvRequest::RawChecksum(Box::new(kvrpcpb::RawChecksumRequest {
            algorithm: kvrpcpb::ChecksumAlgorithm::Crc64Xor as i32,
            ranges: vec![kvrpcpb::KeyRange {
                start_key: part.start.to_bytes(),
                end_key: part.end.to_bytes(),
            }],
            ..Default::default()
        }))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, _part: &KeyRange, response: KvResponse) -> Result<bool, Error> {
        let KvResponse::RawChecksum(r) = response else {
            return Err(unexpected(&response));
        };
        server_error(&r.error)?;
        self.sum.crc64_xor ^= r.checksum;
        self.sum.total_kvs += r.total_kvs;
        self.sum.total_bytes += r.total_bytes;
        Ok(true)
    }
    fn finish(self) -> RawChecksum {
        self.sum
    }
}

// ---------------------------------------------------------------- constructors

/// A raw operation over keys.
pub type RawKeyOp<P> = KeyFanout<P>;
/// A raw operation over a range.
pub type RawRangeOp<P> = RangeWalk<P>;

/// `get(key)`: the value, or `None` if absent.
pub fn get(view: &Arc<ClusterView>, key: Key, opts: &RawOptions) -> RawKeyOp<Point<GetPlan>> {
    // Set in place: the hottest operation is built without moving it.
    let mut op = point(view, GetPlan { cf: opts.cf, value: None }, key);
    op.set_replica_read(&opts.replica_read);
    op
}

fn point<P: PointPlan>(view: &Arc<ClusterView>, plan: P, key: Key) -> RawKeyOp<Point<P>> {
    Point::fanout(view, plan, key, view.config.read_timeout_short, view.backoffer(raw_budget(view)))
}

/// `batch_get(keys)`: the pairs found, sorted by key.
pub fn batch_get(
    view: &Arc<ClusterView>,
    keys: Vec<Key>,
    opts: &RawOptions,
) -> RawKeyOp<BatchGetPlan> {
    let plan = BatchGetPlan {
        opts: opts.clone(),
        timeout: view.config.read_timeout_medium,
        max_keys: view.config.raw_batch_get_pair_count,
        pairs: Vec::new(),
    };
    KeyFanout::new(view.clone(), plan, keys, view.backoffer(raw_budget(view)))
        .with_replica_read(&opts.replica_read)
}

/// `put(key, value)` with an optional TTL in seconds (0 = none).
pub fn put(
    view: &Arc<ClusterView>,
    pair: KvPair,
    ttl: u64,
    opts: &RawOptions,
) -> RawKeyOp<PutPlan> {
    let plan = PutPlan {
        opts: opts.clone(),
        timeout: view.config.read_timeout_short,
        single: true,
        limits: (1, usize::MAX),
    };
    KeyFanout::new(
        view.clone(),
        plan,
        vec![PutItem { pair, ttl }],
        view.backoffer(raw_budget(view)),
    )
}

/// `batch_put(items)`: duplicate keys keep the last value (client-go
/// de-duplicates through a map).
pub fn batch_put(
    view: &Arc<ClusterView>,
    items: Vec<PutItem>,
    opts: &RawOptions,
) -> RawKeyOp<PutPlan> {
    let plan = PutPlan {
        opts: opts.clone(),
        timeout: view.config.read_timeout_short,
        single: false,
        limits: (view.config.raw_batch_pair_count, view.config.raw_batch_put_size),
    };
    KeyFanout::new(view.clone(), plan, dedup_last(items), view.backoffer(raw_budget(view)))
}

/// Keeps the last item of each key.
fn dedup_last(mut items: Vec<PutItem>) -> Vec<PutItem> {
    // Stable sort keeps input order among equal keys; keep the last of each run.
    items.sort_by(|a, b| a.pair.key.cmp(&b.pair.key));
    let mut out: Vec<PutItem> = Vec::with_capacity(items.len());
    for item in items {
        match out.last_mut() {
            Some(last) if last.pair.key == item.pair.key => *last = item,
            _ => out.push(item),
        }
    }
    out
}

/// `delete(key)`.
pub fn delete(view: &Arc<ClusterView>, key: Key, opts: &RawOptions) -> RawKeyOp<DeletePlan> {
    let plan = DeletePlan {
        opts: opts.clone(),
        timeout: view.config.read_timeout_short,
        single: true,
        max_keys: 1,
    };
    KeyFanout::new(view.clone(), plan, vec![key], view.backoffer(raw_budget(view)))
}

/// `batch_delete(keys)`.
pub fn batch_delete(
    view: &Arc<ClusterView>,
    keys: Vec<Key>,
    opts: &RawOptions,
) -> RawKeyOp<DeletePlan> {
    let plan = DeletePlan {
        opts: opts.clone(),
        timeout: view.config.read_timeout_short,
        single: false,
        max_keys: view.config.raw_batch_pair_count,
    };
    KeyFanout::new(view.clone(), plan, keys, view.backoffer(raw_budget(view)))
}

/// `get_key_ttl(key)`: remaining TTL in seconds, `None` if absent.
pub fn get_key_ttl(
    view: &Arc<ClusterView>,
    key: Key,
    opts: &RawOptions,
) -> RawKeyOp<Point<GetKeyTtlPlan>> {
    point(view, GetKeyTtlPlan { cf: opts.cf, ttl: None }, key).with_replica_read(&opts.replica_read)
}

/// `compare_and_swap(key, expected, new)`: writes `new` if the current value
/// equals `expected` (`None`: the key must not exist). Requires atomic mode,
/// as client-go's `CompareAndSwap` does.
pub fn compare_and_swap(
    view: &Arc<ClusterView>,
    key: Key,
    expected: Option<Value>,
    new_value: Value,
    ttl: u64,
    opts: &RawOptions,
) -> Result<RawKeyOp<Point<CasPlan>>, Error> {
    if !opts.atomic {
        return Err(Error::InvalidArgument(
            "compare_and_swap needs atomic mode (RawClient::with_atomic_for_cas)".into(),
        ));
    }
    Ok(point(view, CasPlan { cf: opts.cf, expected, new_value, ttl, outcome: None }, key))
}

/// `scan` / `scan_reverse` of `range` as `spec` says: at most `spec.limit`
/// pairs (≤ the configured maximum, client-go's 10240), in key order
/// (descending for a reverse scan).
pub fn scan(
    view: &Arc<ClusterView>,
    range: KeyRange,
    spec: ScanSpec,
    opts: &RawOptions,
) -> Result<RawRangeOp<ScanPlan>, Error> {
    let ScanSpec { limit, reverse, key_only } = spec;
    let max = view.config.max_raw_scan_limit;
    if limit > max {
        return Err(Error::ScanLimitExceeded { limit, max });
    }
    let plan = ScanPlan {
        opts: opts.clone(),
        timeout: view.config.read_timeout_medium,
        limit,
        key_only,
        reverse,
        pairs: Vec::new(),
    };
    Ok(RangeWalk::new(view.clone(), plan, range, reverse, view.backoffer(raw_budget(view)))
        .with_replica_read(&opts.replica_read))
}

/// `delete_range(range)`.
pub fn delete_range(
    view: &Arc<ClusterView>,
    range: KeyRange,
    opts: &RawOptions,
) -> RawRangeOp<DeleteRangePlan> {
    let plan = DeleteRangePlan { opts: opts.clone(), timeout: view.config.read_timeout_medium };
    RangeWalk::new(view.clone(), plan, range, false, view.backoffer(raw_budget(view)))
}

/// `checksum(range)`.
pub fn checksum(view: &Arc<ClusterView>, range: KeyRange) -> RawRangeOp<ChecksumPlan> {
    let plan =
        ChecksumPlan { timeout: view.config.read_timeout_medium, sum: RawChecksum::default() };
    RangeWalk::new(view.clone(), plan, range, false, view.backoffer(raw_budget(view)))
}

#[cfg(test)]
mod tests;
