//! Raw storage commands, following TiKV's `Storage::raw_*` functions
//! (`src/storage/mod.rs`) and the response shaping of `src/server/service/kv.rs`.
//!
//! Order of checks per command mirrors TiKV: API version (and key mode),
//! key size and TTL validity, column family, then the raftstore checks
//! (store, region, peer, leader, epoch — see `State::check_region`), then
//! key ranges against the region.

use std::ops::Bound;

use bytes::Bytes;
use tikv_core::key::ScanSpec;
use tikv_proto::{kvrpcpb, metapb};

use crate::cluster::{
    ApiVersion, CFS, Entry, Reject, State, check_key_in_region, check_key_seekable, hex,
    key_not_in_region,
};
use crate::crc64;

/// TiKV's default `storage.max-key-size` (8 KiB).
const MAX_KEY_SIZE: usize = 8 * 1024;

/// The API version the request's context claims.
fn req_api(ctx: &Option<kvrpcpb::Context>) -> kvrpcpb::ApiVersion {
    let v = ctx.as_ref().map_or(0, |c| c.api_version);
    kvrpcpb::ApiVersion::try_from(v).unwrap_or(kvrpcpb::ApiVersion::V1)
}

/// How a raw response reports a non-region error.
fn api_name(v: kvrpcpb::ApiVersion) -> &'static str {
    match v {
        kvrpcpb::ApiVersion::V1 => "V1",
        kvrpcpb::ApiVersion::V1ttl => "V1ttl",
        kvrpcpb::ApiVersion::V2 => "V2",
        kvrpcpb::ApiVersion::V3 => "V3",
    }
}

/// A key in API V2 raw mode starts with `r` (`ApiV2::parse_key_mode`).
fn is_raw_mode(key: &[u8]) -> bool {
    key.first() == Some(&b'r')
}

/// `ApiV2::parse_range_mode` for raw: both ends present and non-empty, the
/// same mode byte (or `end` is exactly the next mode byte), and that mode is raw.
fn is_raw_range(start: Option<&[u8]>, end: Option<&[u8]>) -> bool {
    match (start, end) {
        (Some(s), Some(e)) if !s.is_empty() && !e.is_empty() => {
            (s[0] == e[0] || e == [s[0].wrapping_add(1)]) && is_raw_mode(s)
        }
        _ => false,
    }
}

fn key_error(msg: String) -> kvrpcpb::KvPair {
    kvrpcpb::KvPair {
        error: Some(kvrpcpb::KeyError { abort: msg, ..Default::default() }),
        ..Default::default()
    }
}

/// Splits a command result into TiKV's `region_error` / `error` fields.
macro_rules! fill {
    ($resp:ident, $res:expr, |$ok:pat_param| $on_ok:expr) => {
        match $res {
            Ok($ok) => $on_ok,
            Err(Reject::Region(e)) => $resp.region_error = Some(*e),
            Err(Reject::Other(msg)) => $resp.error = msg,
        }
    };
}

/// Same for responses whose errors travel as a single key-error pair
/// (`extract_kv_pairs`).
macro_rules! fill_pairs {
    ($resp:ident, $field:ident, $res:expr) => {
        match $res {
            Ok(pairs) => $resp.$field = pairs,
            Err(Reject::Region(e)) => $resp.region_error = Some(*e),
            Err(Reject::Other(msg)) => $resp.$field = vec![key_error(msg)],
        }
    };
}

impl State {
    /// `Storage::check_api_version` for raw commands and point keys.
    fn check_api_keys<'a>(
        &self,
        cmd: &str,
        ctx: &Option<kvrpcpb::Context>,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), Reject> {
        let req = req_api(ctx);
        let storage = self.storage_api();
        match (storage, req) {
            (kvrpcpb::ApiVersion::V1 | kvrpcpb::ApiVersion::V1ttl, kvrpcpb::ApiVersion::V1) => {
                Ok(())
            }
            (kvrpcpb::ApiVersion::V2, kvrpcpb::ApiVersion::V2) => {
                for key in keys {
                    if !is_raw_mode(key) {
                        return Err(Reject::Other(format!(
                            "Key mode mismatched with the request mode, cmd: {cmd}, storage: V2, key: {}",
                            hex(key)
                        )));
                    }
                }
                Ok(())
            }
            _ => Err(Reject::Other(format!(
                "Api version in request does not match with TiKV storage, cmd: {cmd}, storage: {}, request: {}",
                api_name(storage),
                api_name(req)
            ))),
        }
    }

    /// `Storage::check_api_version_ranges` for raw commands.
    fn check_api_ranges<'a>(
        &self,
        cmd: &str,
        ctx: &Option<kvrpcpb::Context>,
        ranges: impl IntoIterator<Item = (Option<&'a [u8]>, Option<&'a [u8]>)>,
    ) -> Result<(), Reject> {
        let req = req_api(ctx);
        match (self.storage_api(), req) {
            (kvrpcpb::ApiVersion::V1 | kvrpcpb::ApiVersion::V1ttl, kvrpcpb::ApiVersion::V1) => {
                Ok(())
            }
            (kvrpcpb::ApiVersion::V2, kvrpcpb::ApiVersion::V2) => {
                for (s, e) in ranges {
                    if !is_raw_range(s, e) {
                        return Err(Reject::Other(format!(
                            "Key mode mismatched with the request mode, cmd: {cmd}, storage: V2, range: ({:?}, {:?})",
                            s.map(hex),
                            e.map(hex)
                        )));
                    }
                }
                Ok(())
            }
            _ => self.check_api_keys(cmd, ctx, []),
        }
    }

    /// `Storage::rawkv_cf`: empty means `default`; API V1 accepts the three
    /// TiKV column families, API V2 refuses any explicit cf.
    fn raw_cf(&self, cf: &str) -> Result<usize, Reject> {
        if cf.is_empty() {
            return Ok(0);
        }
        match self.cfg.api_version {
            ApiVersion::V1 => CFS
                .iter()
                .position(|c| *c == cf)
                .ok_or_else(|| Reject::Other(format!("invalid cf name: {cf}"))),
            ApiVersion::V2 => {
                Err(Reject::Other(format!("cf is deprecated in API V2, cf name: {cf}")))
            }
        }
    }

    /// `check_key_size!`.
    fn check_key_size<'a>(keys: impl IntoIterator<Item = &'a [u8]>) -> Result<(), Reject> {
        for k in keys {
            if k.len() > MAX_KEY_SIZE {
                return Err(Reject::Other(format!(
                    "max key size exceeded, size: {}, limit: {}",
                    k.len(),
                    MAX_KEY_SIZE
                )));
            }
        }
        Ok(())
    }

    /// `ttl is not enabled`: a TTL needs a storage with TTL (`V1ttl` or
    /// `V2`, TiKV's `F::IS_TTL_ENABLED`).
    fn check_ttl(&self, ttls: &[u64]) -> Result<(), Reject> {
        if self.storage_api() == kvrpcpb::ApiVersion::V1 && ttls.iter().any(|&t| t != 0) {
            return Err(Reject::Other(
                "ttl is not enabled, but get put request with ttl".to_owned(),
            ));
        }
        Ok(())
    }

    /// `ttl_to_expire_ts`.
    fn expire_ts(now_secs: u64, ttl: u64) -> Option<u64> {
        (ttl != 0).then(|| now_secs.saturating_add(ttl))
    }

    fn visible(&self, cf: usize, key: &[u8], now_secs: u64) -> Option<&Entry> {
        self.data[cf].get(key).filter(|e| e.visible(now_secs))
    }

    fn put_entry(&mut self, cf: usize, user_key: Bytes, value: Bytes, expire_ts: Option<u64>) {
        let key = self.enc(&user_key);
        self.data[cf].insert(key, Entry { user_key, value, expire_ts });
    }

    /// Visible entries of `cf` in `[lower, upper)` (region key space; `None`
    /// upper means unbounded), in `spec`'s order, at most its limit.
    fn scan_range(
        &self,
        cf: usize,
        lower: &[u8],
        upper: Option<&[u8]>,
        spec: ScanSpec,
        now_secs: u64,
    ) -> Vec<kvrpcpb::KvPair> {
        let limit = spec.limit as usize;
        if upper.is_some_and(|u| u <= lower) {
            return Vec::new();
        }
        let range = (Bound::Included(lower), upper.map_or(Bound::Unbounded, Bound::Excluded));
        let iter = self.data[cf].range::<[u8], _>(range).map(|(_, e)| e);
        let to_pair = |e: &Entry| kvrpcpb::KvPair {
            key: e.user_key.clone(),
            value: if spec.key_only { Bytes::new() } else { e.value.clone() },
            ..Default::default()
        };
        if spec.reverse {
            iter.rev().filter(|e| e.visible(now_secs)).take(limit).map(to_pair).collect()
        } else {
            iter.filter(|e| e.visible(now_secs)).take(limit).map(to_pair).collect()
        }
    }

    /// One raw scan within `region`, as `RawStore::forward_raw_scan` /
    /// `reverse_raw_scan` over a region snapshot: the seek key must be in
    /// `[start, end]` of the region, the other bound is clamped to the region.
    /// Forward: `[start, end)`. Reverse: `start` is the exclusive upper bound
    /// and `end` the inclusive lower bound.
    fn scan_in_region(
        &self,
        region: &metapb::Region,
        cf: usize,
        start: &[u8],
        end: Option<&[u8]>,
        spec: ScanSpec,
        now_secs: u64,
    ) -> Result<Vec<kvrpcpb::KvPair>, Reject> {
        if spec.limit == 0 {
            return Ok(Vec::new());
        }
        check_key_seekable(start, region)?;
        let region_end = (!region.end_key.is_empty()).then_some(&region.end_key[..]);
        if spec.reverse {
            let lower = end.map_or(&region.start_key[..], |e| e.max(&region.start_key[..]));
            Ok(self.scan_range(cf, lower, Some(start), spec, now_secs))
        } else {
            let upper = match (end, region_end) {
                (Some(e), Some(r)) => Some(e.min(r)),
                (Some(e), None) => Some(e),
                (None, r) => r,
            };
            Ok(self.scan_range(cf, start, upper, spec, now_secs))
        }
    }

    pub(crate) fn raw_get(
        &mut self,
        store: u64,
        r: kvrpcpb::RawGetRequest,
        now: u64,
    ) -> kvrpcpb::RawGetResponse {
        let mut resp = kvrpcpb::RawGetResponse::default();
        let res = (|| {
            self.check_api_keys("raw_get", &r.context, [&r.key[..]])?;
            let region = self.check_region(store, r.context.as_ref(), true)?;
            let cf = self.raw_cf(&r.cf)?;
            let key = self.enc(&r.key);
            check_key_in_region(&key, &region)?;
            Ok(self.visible(cf, &key, now).map(|e| e.value.clone()))
        })();
        fill!(resp, res, |v| match v {
            Some(v) => resp.value = v,
            None => resp.not_found = true,
        });
        resp
    }

    pub(crate) fn raw_batch_get(
        &mut self,
        store: u64,
        r: kvrpcpb::RawBatchGetRequest,
        now: u64,
    ) -> kvrpcpb::RawBatchGetResponse {
        let mut resp = kvrpcpb::RawBatchGetResponse::default();
        let res = (|| {
            self.check_api_keys("raw_batch_get", &r.context, r.keys.iter().map(|k| &k[..]))?;
            let region = self.check_region(store, r.context.as_ref(), true)?;
            let cf = self.raw_cf(&r.cf)?;
            let mut pairs = Vec::new();
            for k in &r.keys {
                let key = self.enc(k);
                check_key_in_region(&key, &region)?;
                // Missing keys are left out, as TiKV's raw_batch_get does.
                if let Some(e) = self.visible(cf, &key, now) {
                    pairs.push(kvrpcpb::KvPair {
                        key: k.clone(),
                        value: e.value.clone(),
                        ..Default::default()
                    });
                }
            }
            Ok(pairs)
        })();
        fill_pairs!(resp, pairs, res);
        resp
    }

    pub(crate) fn raw_put(
        &mut self,
        store: u64,
        r: kvrpcpb::RawPutRequest,
        now: u64,
    ) -> kvrpcpb::RawPutResponse {
        let mut resp = kvrpcpb::RawPutResponse::default();
        let res = (|| {
            self.check_api_keys("raw_put", &r.context, [&r.key[..]])?;
            Self::check_key_size([&r.key[..]])?;
            self.check_ttl(&[r.ttl])?;
            let cf = self.raw_cf(&r.cf)?;
            let region = self.check_region(store, r.context.as_ref(), false)?;
            check_key_in_region(&self.enc(&r.key), &region)?;
            self.put_entry(cf, r.key.clone(), r.value.clone(), Self::expire_ts(now, r.ttl));
            Ok(())
        })();
        fill!(resp, res, |()| ());
        resp
    }

    pub(crate) fn raw_batch_put(
        &mut self,
        store: u64,
        r: kvrpcpb::RawBatchPutRequest,
        now: u64,
    ) -> kvrpcpb::RawBatchPutResponse {
        let mut resp = kvrpcpb::RawBatchPutResponse::default();
        let res = (|| {
            self.check_api_keys("raw_batch_put", &r.context, r.pairs.iter().map(|p| &p.key[..]))?;
            let cf = self.raw_cf(&r.cf)?;
            Self::check_key_size(r.pairs.iter().map(|p| &p.key[..]))?;
            // kv.rs `future_raw_batch_put`: no `ttls` → 0 for every key; one
            // → applied to every key; otherwise one per pair. The scalar
            // `ttl` field is not read by TiKV.
            let ttls = match r.ttls.len() {
                0 => vec![0; r.pairs.len()],
                1 => vec![r.ttls[0]; r.pairs.len()],
                _ => r.ttls.clone(),
            };
            // `check_ttl_valid`: with TTL enabled (`V1ttl`, `V2`) one TTL per pair.
            self.check_ttl(&ttls)?;
            if self.storage_api() != kvrpcpb::ApiVersion::V1 && ttls.len() != r.pairs.len() {
                return Err(Reject::Other(
                    "The length of ttls does not equal to the length of pairs".to_owned(),
                ));
            }
            let region = self.check_region(store, r.context.as_ref(), false)?;
            // All keys are checked before anything is written: the raft
            // command is applied atomically.
            for p in &r.pairs {
                check_key_in_region(&self.enc(&p.key), &region)?;
            }
            for (p, ttl) in r.pairs.iter().zip(ttls) {
                self.put_entry(cf, p.key.clone(), p.value.clone(), Self::expire_ts(now, ttl));
            }
            Ok(())
        })();
        fill!(resp, res, |()| ());
        resp
    }

    pub(crate) fn raw_delete(
        &mut self,
        store: u64,
        r: kvrpcpb::RawDeleteRequest,
    ) -> kvrpcpb::RawDeleteResponse {
        let mut resp = kvrpcpb::RawDeleteResponse::default();
        let res = (|| {
            self.check_api_keys("raw_delete", &r.context, [&r.key[..]])?;
            Self::check_key_size([&r.key[..]])?;
            let cf = self.raw_cf(&r.cf)?;
            let region = self.check_region(store, r.context.as_ref(), false)?;
            let key = self.enc(&r.key);
            check_key_in_region(&key, &region)?;
            self.data[cf].remove(&key);
            Ok(())
        })();
        fill!(resp, res, |()| ());
        resp
    }

    pub(crate) fn raw_batch_delete(
        &mut self,
        store: u64,
        r: kvrpcpb::RawBatchDeleteRequest,
    ) -> kvrpcpb::RawBatchDeleteResponse {
        let mut resp = kvrpcpb::RawBatchDeleteResponse::default();
        let res = (|| {
            self.check_api_keys("raw_batch_delete", &r.context, r.keys.iter().map(|k| &k[..]))?;
            let cf = self.raw_cf(&r.cf)?;
            Self::check_key_size(r.keys.iter().map(|k| &k[..]))?;
            let region = self.check_region(store, r.context.as_ref(), false)?;
            let keys: Vec<Vec<u8>> = r.keys.iter().map(|k| self.enc(k)).collect();
            for k in &keys {
                check_key_in_region(k, &region)?;
            }
            for k in &keys {
                self.data[cf].remove(k);
            }
            Ok(())
        })();
        fill!(resp, res, |()| ());
        resp
    }

    pub(crate) fn raw_delete_range(
        &mut self,
        store: u64,
        r: kvrpcpb::RawDeleteRangeRequest,
    ) -> kvrpcpb::RawDeleteRangeResponse {
        let mut resp = kvrpcpb::RawDeleteRangeResponse::default();
        let res = (|| {
            Self::check_key_size([&r.start_key[..], &r.end_key[..]])?;
            self.check_api_ranges(
                "raw_delete_range",
                &r.context,
                [(Some(&r.start_key[..]), Some(&r.end_key[..]))],
            )?;
            let cf = self.raw_cf(&r.cf)?;
            let region = self.check_region(store, r.context.as_ref(), false)?;
            let start = self.enc(&r.start_key);
            // In API V1 an empty end stays empty (the end of the key space).
            let end = if r.end_key.is_empty() && self.cfg.api_version == ApiVersion::V1 {
                Vec::new()
            } else {
                self.enc(&r.end_key)
            };
            // apply.rs `handle_delete_range`: an inverted range is refused
            // (as a region error carrying only a message), the start must be
            // in the region and the end must not pass the region's end.
            if !end.is_empty() && start >= end {
                return Err(Reject::Region(Box::new(tikv_proto::errorpb::Error {
                    message: format!(
                        "invalid delete range command, start_key: {:?}, end_key: {:?}",
                        r.start_key.to_vec(),
                        r.end_key.to_vec()
                    ),
                    ..Default::default()
                })));
            }
            check_key_in_region(&start, &region)?;
            let past_end = if region.end_key.is_empty() {
                false
            } else {
                end.is_empty() || end[..] > region.end_key[..]
            };
            if past_end {
                return Err(key_not_in_region(&end, &region).into());
            }
            let upper = if end.is_empty() { Bound::Unbounded } else { Bound::Excluded(&end[..]) };
            let doomed: Vec<Vec<u8>> = self.data[cf]
                .range::<[u8], _>((Bound::Included(&start[..]), upper))
                .map(|(k, _)| k.clone())
                .collect();
            for k in doomed {
                self.data[cf].remove(&k);
            }
            Ok(())
        })();
        fill!(resp, res, |()| ());
        resp
    }

    pub(crate) fn raw_scan(
        &mut self,
        store: u64,
        r: kvrpcpb::RawScanRequest,
        now: u64,
    ) -> kvrpcpb::RawScanResponse {
        let mut resp = kvrpcpb::RawScanResponse::default();
        let res = (|| {
            let end = (!r.end_key.is_empty()).then_some(&r.end_key[..]);
            self.check_api_ranges("raw_scan", &r.context, [(Some(&r.start_key[..]), end)])?;
            let region = self.check_region(store, r.context.as_ref(), true)?;
            let cf = self.raw_cf(&r.cf)?;
            let start = self.enc(&r.start_key);
            let end = end.map(|e| self.enc(e));
            self.scan_in_region(
                &region,
                cf,
                &start,
                end.as_deref(),
                ScanSpec { limit: r.limit, reverse: r.reverse, key_only: r.key_only },
                now,
            )
        })();
        fill_pairs!(resp, kvs, res);
        resp
    }

    pub(crate) fn raw_batch_scan(
        &mut self,
        store: u64,
        r: kvrpcpb::RawBatchScanRequest,
        now: u64,
    ) -> kvrpcpb::RawBatchScanResponse {
        let mut resp = kvrpcpb::RawBatchScanResponse::default();
        let res = (|| {
            self.check_api_ranges(
                "raw_batch_scan",
                &r.context,
                r.ranges.iter().map(|k| (Some(&k.start_key[..]), Some(&k.end_key[..]))),
            )?;
            let region = self.check_region(store, r.context.as_ref(), true)?;
            let cf = self.raw_cf(&r.cf)?;
            // `Storage::check_key_ranges`: an empty end borrows the next
            // range's start; each range must be ordered for its direction.
            let n = r.ranges.len();
            let end_of = |i: usize| -> Option<&[u8]> {
                let e = &r.ranges[i].end_key;
                if !e.is_empty() {
                    Some(&e[..])
                } else if i + 1 < n {
                    Some(&r.ranges[i + 1].start_key[..])
                } else {
                    None
                }
            };
            for (i, range) in r.ranges.iter().enumerate() {
                let s = &range.start_key[..];
                if let Some(e) = end_of(i).filter(|e| !e.is_empty())
                    && ((!r.reverse && s >= e) || (r.reverse && s <= e))
                {
                    return Err(Reject::Other("Invalid KeyRanges".to_owned()));
                }
            }
            let mut out = Vec::new();
            for (i, range) in r.ranges.iter().enumerate() {
                let start = self.enc(&range.start_key);
                let end = end_of(i).map(|e| self.enc(e));
                out.extend(self.scan_in_region(
                    &region,
                    cf,
                    &start,
                    end.as_deref(),
                    ScanSpec { limit: r.each_limit, reverse: r.reverse, key_only: r.key_only },
                    now,
                )?);
            }
            Ok(out)
        })();
        fill_pairs!(resp, kvs, res);
        resp
    }

    pub(crate) fn raw_get_key_ttl(
        &mut self,
        store: u64,
        r: kvrpcpb::RawGetKeyTtlRequest,
        now: u64,
    ) -> kvrpcpb::RawGetKeyTtlResponse {
        let mut resp = kvrpcpb::RawGetKeyTtlResponse::default();
        let res = (|| {
            self.check_api_keys("raw_get_key_ttl", &r.context, [&r.key[..]])?;
            let region = self.check_region(store, r.context.as_ref(), true)?;
            let cf = self.raw_cf(&r.cf)?;
            let key = self.enc(&r.key);
            check_key_in_region(&key, &region)?;
            if self.storage_api() == kvrpcpb::ApiVersion::V1 {
                // TiKV panics here ("get ttl on non-ttl store"); the model
                // answers with an error instead.
                return Err(Reject::Other("get ttl on non-ttl store".to_owned()));
            }
            // `get_key_ttl_cf`: remaining seconds, 0 for keys without TTL,
            // not found once expired.
            Ok(self.visible(cf, &key, now).map(|e| e.expire_ts.map_or(0, |t| t - now)))
        })();
        fill!(resp, res, |ttl| match ttl {
            Some(t) => resp.ttl = t,
            None => resp.not_found = true,
        });
        resp
    }

    pub(crate) fn raw_cas(
        &mut self,
        store: u64,
        r: kvrpcpb::RawCasRequest,
        now: u64,
    ) -> kvrpcpb::RawCasResponse {
        let mut resp = kvrpcpb::RawCasResponse::default();
        let res = (|| {
            self.check_api_keys("raw_compare_and_swap", &r.context, [&r.key[..]])?;
            let cf = self.raw_cf(&r.cf)?;
            self.check_ttl(&[r.ttl])?;
            let region = self.check_region(store, r.context.as_ref(), false)?;
            let key = self.enc(&r.key);
            check_key_in_region(&key, &region)?;
            // `RawCompareAndSwap::process_write`: compare the visible old
            // value with the expectation (`None` when `previous_not_exist`).
            let old = self.visible(cf, &key, now).map(|e| e.value.clone());
            let expected = (!r.previous_not_exist).then(|| r.previous_value.clone());
            let succeed = old == expected;
            if succeed {
                if r.delete {
                    if old.is_some() {
                        self.data[cf].remove(&key);
                    }
                } else {
                    self.put_entry(cf, r.key.clone(), r.value.clone(), Self::expire_ts(now, r.ttl));
                }
            }
            Ok((old, succeed))
        })();
        fill!(resp, res, |(old, succeed)| {
            match old {
                Some(v) => resp.previous_value = v,
                None => resp.previous_not_exist = true,
            }
            resp.succeed = succeed;
        });
        resp
    }

    pub(crate) fn raw_checksum(
        &mut self,
        store: u64,
        r: kvrpcpb::RawChecksumRequest,
        now: u64,
    ) -> kvrpcpb::RawChecksumResponse {
        let mut resp = kvrpcpb::RawChecksumResponse::default();
        let res = (|| {
            if r.algorithm != kvrpcpb::ChecksumAlgorithm::Crc64Xor as i32 {
                return Err(Reject::Other(format!("unknown checksum algorithm {}", r.algorithm)));
            }
            self.check_api_ranges(
                "raw_checksum",
                &r.context,
                r.ranges.iter().map(|k| (Some(&k.start_key[..]), Some(&k.end_key[..]))),
            )?;
            let region = self.check_region(store, r.context.as_ref(), true)?;
            let (mut checksum, mut kvs, mut bytes) = (0u64, 0u64, 0u64);
            for range in &r.ranges {
                let start = self.enc(&range.start_key);
                let end = if range.end_key.is_empty() && self.cfg.api_version == ApiVersion::V1 {
                    None
                } else {
                    Some(self.enc(&range.end_key))
                };
                // `raw_checksum_ranges` hashes every visible pair of the
                // default cf: crc64(user key ++ value), XORed together.
                for pair in self.scan_in_region(
                    &region,
                    0,
                    &start,
                    end.as_deref(),
                    ScanSpec::forward(u32::MAX),
                    now,
                )? {
                    checksum = crc64::checksum_crc64_xor(checksum, &pair.key, &pair.value);
                    kvs += 1;
                    bytes += (pair.key.len() + pair.value.len()) as u64;
                }
            }
            Ok((checksum, kvs, bytes))
        })();
        fill!(resp, res, |(c, k, b)| {
            resp.checksum = c;
            resp.total_kvs = k;
            resp.total_bytes = b;
        });
        resp
    }
}
