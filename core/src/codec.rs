//! API-version codecs: how user keys become wire keys (client-go
//! `internal/apicodec`).
//!
//! - **API V1**: keys travel as the user gave them. Region boundaries that PD
//!   and TiKV report are raw in raw mode but memcomparable-encoded in txn mode
//!   (TiKV stores transactional region boundaries encoded), so the region
//!   cache must decode them.
//! - **API V2** (keyspaces): every key is prefixed with a mode byte (`'r'`
//!   raw, `'x'` txn) and the 3-byte big-endian keyspace id; region boundaries
//!   are always memcomparable. Responses are stripped back to user keys, and
//!   regions are clipped to the keyspace.
//! - **API V3** (`KeyspaceIdentity` with a namespace) is not supported: as in
//!   client-go, such a keyspace is refused instead of being mistaken for
//!   keyspace 0.
//!
//! The codec is applied to every request just before it is sent
//! ([`ApiCodec::encode_request`]; encode a clone, the original is reused on
//! retry) and to every response as it arrives ([`ApiCodec::decode_response`]).

use bytes::{BufMut, Bytes, BytesMut};
use tikv_proto::{errorpb, keyspacepb, kvrpcpb, metapb};

use crate::error::Error;
use crate::key::memcomparable;
use crate::key::{Key, KeyRange};
use crate::rpc::{KvRequest, KvResponse};

/// The largest keyspace id: ids are 3 bytes on the wire (client-go
/// `maxKeyspaceID`).
pub const MAX_KEYSPACE_ID: u32 = 0xFF_FFFF;

/// The keyspace id sent in the context by API V1 requests, which belong to
/// no keyspace (PD `constants.NullKeyspaceID`).
pub const NULL_KEYSPACE_ID: u32 = u32::MAX;

/// The keyspace PD resolves an empty name to (client-go
/// `DefaultKeyspaceName`).
pub const DEFAULT_KEYSPACE_NAME: &str = "DEFAULT";

/// Mode byte of raw keys in API V2 (client-go `RawModePrefix`).
pub const RAW_MODE_PREFIX: u8 = b'r';
/// Mode byte of transactional keys in API V2 (client-go `TxnModePrefix`).
pub const TXN_MODE_PREFIX: u8 = b'x';

/// The API versions this client speaks.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum ApiVersion {
    /// Keys as given; no keyspaces (`kvrpcpb::ApiVersion::V1`).
    #[default]
    V1,
    /// Keyspace-prefixed keys (`kvrpcpb::ApiVersion::V2`).
    V2,
}

impl From<ApiVersion> for kvrpcpb::ApiVersion {
    fn from(v: ApiVersion) -> kvrpcpb::ApiVersion {
        match v {
            ApiVersion::V1 => kvrpcpb::ApiVersion::V1,
            ApiVersion::V2 => kvrpcpb::ApiVersion::V2,
        }
    }
}

impl TryFrom<kvrpcpb::ApiVersion> for ApiVersion {
    type Error = Error;

    /// `V1TTL` maps to V1 as in client-go's raw client (TTL is a TiKV-side
    /// storage format, not a key encoding); `V3` is refused.
    fn try_from(v: kvrpcpb::ApiVersion) -> Result<ApiVersion, Error> {
        match v {
            kvrpcpb::ApiVersion::V1 | kvrpcpb::ApiVersion::V1ttl => Ok(ApiVersion::V1),
            kvrpcpb::ApiVersion::V2 => Ok(ApiVersion::V2),
            kvrpcpb::ApiVersion::V3 => Err(Error::Unsupported("API V3".into())),
        }
    }
}

/// Whether keys belong to the raw or the transactional key space.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// RawKV.
    Raw,
    /// Transactional KV.
    Txn,
}

impl Mode {
    /// The API V2 mode byte.
    pub fn prefix_byte(self) -> u8 {
        match self {
            Mode::Raw => RAW_MODE_PREFIX,
            Mode::Txn => TXN_MODE_PREFIX,
        }
    }
}

/// Encodes requests and decodes responses for one API version, mode and
/// keyspace (client-go `apicodec.Codec`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiCodec {
    version: ApiVersion,
    mode: Mode,
    /// V2: the keyspace id.
    keyspace_id: Option<u32>,
    keyspace_name: Option<String>,
    /// V2: mode byte + 3-byte id; empty for V1.
    prefix: Bytes,
    /// V2: the prefix incremented as a 4-byte big-endian number (the first
    /// key after the keyspace); empty for V1.
    end: Bytes,
}

impl ApiCodec {
    /// An API V1 codec (client-go `NewCodecV1`).
    pub fn v1(mode: Mode) -> ApiCodec {
        ApiCodec {
            version: ApiVersion::V1,
            mode,
            keyspace_id: None,
            keyspace_name: None,
            prefix: Bytes::new(),
            end: Bytes::new(),
        }
    }

    /// An API V2 codec for keyspace `keyspace_id` (at most
    /// [`MAX_KEYSPACE_ID`]).
    pub fn v2(mode: Mode, keyspace_id: u32) -> Result<ApiCodec, Error> {
        if keyspace_id > MAX_KEYSPACE_ID {
            return Err(Error::InvalidArgument(format!(
                "keyspace id {keyspace_id} is out of range, maximum is {MAX_KEYSPACE_ID}"
            )));
        }
        let prefix_num = (u32::from(mode.prefix_byte()) << 24) | keyspace_id;
        // The mode byte is 'r' or 'x', so the increment cannot overflow.
        let end_num = prefix_num + 1;
        Ok(ApiCodec {
            version: ApiVersion::V2,
            mode,
            keyspace_id: Some(keyspace_id),
            keyspace_name: None,
            prefix: Bytes::copy_from_slice(&prefix_num.to_be_bytes()),
            end: Bytes::copy_from_slice(&end_num.to_be_bytes()),
        })
    }

    /// An API V2 codec for a keyspace PD returned from `LoadKeyspace`
    /// (client-go `NewCodecV2`). The keyspace must be `ENABLED`
    /// ([`Error::Keyspace`] otherwise); an API V3 `KeyspaceIdentity` is
    /// [`Error::Unsupported`], as client-go rejects it rather than treating
    /// it as keyspace 0. An absent id means keyspace 0 (protobuf's default).
    pub fn from_keyspace_meta(
        mode: Mode,
        meta: &keyspacepb::KeyspaceMeta,
    ) -> Result<ApiCodec, Error> {
        use keyspacepb::keyspace_meta::Keyspace;
        let id = match meta.keyspace {
            Some(Keyspace::Id(id)) => id,
            None => 0,
            Some(Keyspace::KeyspaceIdentity(ident)) => {
                return Err(Error::Unsupported(format!(
                    "keyspace {:?} has an API V3 identity (namespace {}, keyspace {}); \
                     only numeric API V2 keyspace ids are supported",
                    meta.name, ident.namespace_id, ident.keyspace_id
                )));
            }
        };
        if meta.state != keyspacepb::KeyspaceState::Enabled as i32 {
            let state = keyspacepb::KeyspaceState::try_from(meta.state)
                .map_or_else(|_| format!("unknown state {}", meta.state), |s| format!("{s:?}"));
            return Err(Error::Keyspace {
                name: meta.name.clone(),
                reason: format!("keyspace is not enabled (state {state})"),
            });
        }
        let mut codec = ApiCodec::v2(mode, id)?;
        codec.keyspace_name = Some(meta.name.clone());
        Ok(codec)
    }

    /// Sets the keyspace name sent in `Context.keyspace_name` (V2 only;
    /// ignored for V1, which has no keyspace).
    pub fn with_keyspace_name(mut self, name: impl Into<String>) -> ApiCodec {
        if self.version == ApiVersion::V2 {
            self.keyspace_name = Some(name.into());
        }
        self
    }

    /// The API version.
    pub fn api_version(&self) -> ApiVersion {
        self.version
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The keyspace id (V2 only).
    pub fn keyspace_id(&self) -> Option<u32> {
        self.keyspace_id
    }

    /// The keyspace name, if known.
    pub fn keyspace_name(&self) -> Option<&str> {
        self.keyspace_name.as_deref()
    }

    /// The 4-byte key prefix (empty for V1).
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The wire keys of the whole keyspace, `[prefix, prefix + 1)`; `None`
    /// for V1.
    pub fn keyspace_range(&self) -> Option<KeyRange> {
        (self.version == ApiVersion::V2)
            .then(|| KeyRange::new(self.prefix.clone(), self.end.clone()))
    }

    fn is_v2(&self) -> bool {
        self.version == ApiVersion::V2
    }

    /// Region boundaries are memcomparable in V1 txn mode and in V2.
    fn memcomparable_regions(&self) -> bool {
        self.is_v2() || self.mode == Mode::Txn
    }

    fn prefixed(&self, key: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(self.prefix.len() + key.len());
        b.put_slice(&self.prefix);
        b.put_slice(key);
        b.freeze()
    }

    /// The wire key of a user key (V2: prefixed; V1: unchanged).
    pub fn encode_key(&self, key: &Key) -> Key {
        if self.is_v2() { Key::from(self.prefixed(key.as_bytes())) } else { key.clone() }
    }

    /// The wire range of a user range. In V2 an empty (unbounded) end
    /// becomes the keyspace end, so a scan never leaves the keyspace.
    pub fn encode_range(&self, range: &KeyRange) -> KeyRange {
        if !self.is_v2() {
            return range.clone();
        }
        let (start, end) = self.encode_range_bytes(&range.start.to_bytes(), &range.end.to_bytes());
        KeyRange::new(start, end)
    }

    fn encode_range_bytes(&self, start: &Bytes, end: &Bytes) -> (Bytes, Bytes) {
        let end = if end.is_empty() { self.end.clone() } else { self.prefixed(end) };
        (self.prefixed(start), end)
    }

    /// Encodes a range carried in request fields. For reverse scans TiKV
    /// reads `start_key` as the upper bound, so the roles swap (client-go
    /// `encodeRange(..., reverse)`): an empty upper bound still maps to the
    /// keyspace end, an empty lower bound to the keyspace start.
    fn encode_range_fields(&self, start: &mut Bytes, end: &mut Bytes, reverse: bool) {
        if reverse {
            let (lower, upper) = self.encode_range_bytes(end, start);
            *start = upper;
            *end = lower;
        } else {
            let (s, e) = self.encode_range_bytes(start, end);
            *start = s;
            *end = e;
        }
    }

    /// The user key of a wire key. In V2 a non-empty key outside the
    /// keyspace is [`Error::MalformedResponse`] (TiKV must not return it);
    /// the empty key stays empty, as client-go does for unset fields.
    pub fn decode_key(&self, key: &[u8]) -> Result<Key, Error> {
        if !self.is_v2() || key.is_empty() {
            return Ok(Key::from(key.to_vec()));
        }
        match key.strip_prefix(&self.prefix[..]) {
            Some(user) => Ok(Key::from(user.to_vec())),
            None => Err(self.out_of_keyspace(key)),
        }
    }

    fn out_of_keyspace(&self, key: &[u8]) -> Error {
        Error::malformed(format_args!(
            "key {:?} is outside keyspace {:?}",
            Key::from(key.to_vec()),
            self.keyspace_id.unwrap_or(NULL_KEYSPACE_ID)
        ))
    }

    /// Strips the prefix of a field in place, without copying the data.
    fn decode_field(&self, key: &mut Bytes) -> Result<(), Error> {
        if !self.is_v2() || key.is_empty() {
            return Ok(());
        }
        if !key.starts_with(&self.prefix) {
            return Err(self.out_of_keyspace(key));
        }
        *key = key.slice(self.prefix.len()..);
        Ok(())
    }

    /// The key to send to PD for region lookups (`GetRegion`, `ScanRegions`
    /// ...): V1 raw as is, V1 txn memcomparable, V2 prefixed then
    /// memcomparable (client-go `EncodeRegionKey`, used by `CodecPDClient`).
    pub fn encode_region_key(&self, key: &Key) -> Vec<u8> {
        if self.memcomparable_regions() {
            memcomparable::encode_bytes(self.encode_key(key).as_bytes())
        } else {
            key.as_bytes().to_vec()
        }
    }

    /// The PD-side boundaries of a user range (client-go
    /// `EncodeRegionRange`). V1 keeps an empty end empty; V2 maps it to the
    /// keyspace end.
    pub fn encode_region_range(&self, range: &KeyRange) -> (Vec<u8>, Vec<u8>) {
        if self.is_v2() {
            let r = self.encode_range(range);
            (
                memcomparable::encode_bytes(r.start.as_bytes()),
                memcomparable::encode_bytes(r.end.as_bytes()),
            )
        } else {
            let end =
                if range.end.is_empty() { Vec::new() } else { self.encode_region_key(&range.end) };
            (self.encode_region_key(&range.start), end)
        }
    }

    fn decode_memcomparable(key: &Bytes) -> Result<Bytes, Error> {
        if key.is_empty() {
            return Ok(Bytes::new());
        }
        // Bytes after the encoded value are ignored, as client-go does.
        Ok(memcomparable::decode_bytes(key).map(|(v, _)| Bytes::from(v))?)
    }

    /// Decodes region boundaries as reported by PD or TiKV into user keys;
    /// `None` if the range lies entirely outside the keyspace (client-go
    /// `DecodeRegionRange` / `DecodeRange`).
    fn decode_region_range(
        &self,
        start: &Bytes,
        end: &Bytes,
    ) -> Result<Option<(Bytes, Bytes)>, Error> {
        let (start, end) = if self.memcomparable_regions() {
            (Self::decode_memcomparable(start)?, Self::decode_memcomparable(end)?)
        } else {
            (start.clone(), end.clone())
        };
        if !self.is_v2() {
            return Ok(Some((start, end)));
        }
        if start >= self.end || (!end.is_empty() && end <= self.prefix) {
            return Ok(None);
        }
        // A boundary outside the keyspace is clamped to the keyspace edge,
        // which for user keys is the empty key (unbounded). Keys in
        // [prefix, end) always start with the prefix.
        let clamp = |k: Bytes| {
            if k.starts_with(&self.prefix) { k.slice(self.prefix.len()..) } else { Bytes::new() }
        };
        Ok(Some((clamp(start), clamp(end))))
    }

    /// A region from PD or TiKV with its boundaries turned into user keys.
    ///
    /// V1 raw keeps the keys; V1 txn and V2 decode them from memcomparable
    /// form; V2 then clips the region to the keyspace: `None` when it does
    /// not overlap the keyspace, an empty start or end where it reaches
    /// beyond it. Malformed boundaries are [`Error::MalformedResponse`].
    pub fn decode_region(
        &self,
        mut region: metapb::Region,
    ) -> Result<Option<metapb::Region>, Error> {
        match self.decode_region_range(&region.start_key, &region.end_key)? {
            Some((start, end)) => {
                region.start_key = start;
                region.end_key = end;
                Ok(Some(region))
            }
            None => Ok(None),
        }
    }

    /// Stamps the API version and keyspace into a request context
    /// (client-go `setAPICtx`): V1 sends [`NULL_KEYSPACE_ID`], V2 its id and
    /// the keyspace name when known.
    pub fn stamp_context(&self, ctx: &mut kvrpcpb::Context) {
        ctx.api_version = kvrpcpb::ApiVersion::from(self.version) as i32;
        ctx.keyspace = Some(kvrpcpb::context::Keyspace::KeyspaceId(
            self.keyspace_id.unwrap_or(NULL_KEYSPACE_ID),
        ));
        if let Some(name) = &self.keyspace_name {
            ctx.keyspace_name.clone_from(name);
        }
    }

    /// Stamps the context and encodes every key-bearing field of `req` for
    /// the wire (client-go `EncodeRequest`). Call it on the copy about to be
    /// sent, once.
    pub fn encode_request(&self, req: &mut KvRequest) -> Result<(), Error> {
        self.stamp_context(req.context_mut());
        if !self.is_v2() {
            return Ok(());
        }
        let key = |k: &mut Bytes| *k = self.prefixed(k);
        let opt_key = |k: &mut Bytes| {
            // Commit/Flush leave an unset primary unset (client-go).
            if !k.is_empty() {
                *k = self.prefixed(k);
            }
        };
        let keys = |ks: &mut Vec<Bytes>| ks.iter_mut().for_each(key);
        let mutations =
            |ms: &mut Vec<kvrpcpb::Mutation>| ms.iter_mut().for_each(|m| key(&mut m.key));
        let ranges = |rs: &mut Vec<kvrpcpb::KeyRange>, reverse: bool| {
            for r in rs {
                self.encode_range_fields(&mut r.start_key, &mut r.end_key, reverse);
            }
        };
        match req {
            KvRequest::Get(r) => key(&mut r.key),
            KvRequest::Scan(r) => {
                self.encode_range_fields(&mut r.start_key, &mut r.end_key, r.reverse)
            }
            KvRequest::Prewrite(r) => {
                mutations(&mut r.mutations);
                key(&mut r.primary_lock);
                keys(&mut r.secondaries);
            }
            KvRequest::PessimisticLock(r) => {
                mutations(&mut r.mutations);
                key(&mut r.primary_lock);
            }
            KvRequest::PessimisticRollback(r) => keys(&mut r.keys),
            KvRequest::TxnHeartBeat(r) => key(&mut r.primary_lock),
            KvRequest::CheckTxnStatus(r) => key(&mut r.primary_key),
            KvRequest::CheckSecondaryLocks(r) => keys(&mut r.keys),
            KvRequest::Commit(r) => {
                keys(&mut r.keys);
                opt_key(&mut r.primary_key);
            }
            KvRequest::Cleanup(r) => key(&mut r.key),
            KvRequest::BatchGet(r) => keys(&mut r.keys),
            KvRequest::BatchRollback(r) => keys(&mut r.keys),
            KvRequest::ScanLock(r) => {
                self.encode_range_fields(&mut r.start_key, &mut r.end_key, false)
            }
            KvRequest::ResolveLock(r) => keys(&mut r.keys),
            KvRequest::DeleteRange(r) => {
                self.encode_range_fields(&mut r.start_key, &mut r.end_key, false)
            }
            KvRequest::Flush(r) => {
                mutations(&mut r.mutations);
                opt_key(&mut r.primary_key);
            }
            KvRequest::BufferBatchGet(r) => keys(&mut r.keys),
            KvRequest::RawGet(r) => key(&mut r.key),
            KvRequest::RawBatchGet(r) => keys(&mut r.keys),
            KvRequest::RawPut(r) => key(&mut r.key),
            KvRequest::RawBatchPut(r) => r.pairs.iter_mut().for_each(|p| key(&mut p.key)),
            KvRequest::RawDelete(r) => key(&mut r.key),
            KvRequest::RawBatchDelete(r) => keys(&mut r.keys),
            KvRequest::RawScan(r) => {
                self.encode_range_fields(&mut r.start_key, &mut r.end_key, r.reverse)
            }
            KvRequest::RawDeleteRange(r) => {
                self.encode_range_fields(&mut r.start_key, &mut r.end_key, false)
            }
            // Not covered by client-go's V2 codec; TiKV reads each range of a
            // reverse batch scan like a reverse RawScan (start is the upper
            // bound), so the same swap applies.
            KvRequest::RawBatchScan(r) => ranges(&mut r.ranges, r.reverse),
            KvRequest::RawGetKeyTtl(r) => key(&mut r.key),
            KvRequest::RawCompareAndSwap(r) => key(&mut r.key),
            KvRequest::RawChecksum(r) => ranges(&mut r.ranges, false),
            KvRequest::SplitRegion(r) => {
                keys(&mut r.split_keys);
                // The deprecated single-key field, which TiKV still reads when
                // `split_keys` is empty.
                #[allow(deprecated)]
                opt_key(&mut r.split_key);
            }
            KvRequest::UnsafeDestroyRange(r) => {
                self.encode_range_fields(&mut r.start_key, &mut r.end_key, false)
            }
            // Timestamps only; no fields at all for health feedback.
            KvRequest::BroadcastTxnStatus(_) | KvRequest::GetHealthFeedback(_) => {}
        }
        Ok(())
    }

    /// Turns every key in `resp` back into user keys (client-go
    /// `DecodeResponse`): returned pairs, key errors (locks, conflicts,
    /// deadlocks, ...), lock infos and region errors (`EpochNotMatch`
    /// regions decoded and clipped, those outside the keyspace dropped;
    /// `KeyNotInRegion`). In V1 only region boundaries change (txn mode).
    /// A key outside the keyspace or a malformed boundary is
    /// [`Error::MalformedResponse`].
    pub fn decode_response(&self, resp: &mut KvResponse) -> Result<(), Error> {
        self.decode_region_error_of(resp)?;
        if !self.is_v2() {
            // Split results carry region boundaries, in TiKV's encoded form
            // in txn mode.
            if let KvResponse::SplitRegion(r) = resp {
                self.decode_split_regions(r)?;
            }
            return Ok(());
        }
        match resp {
            KvResponse::Get(r) => self.decode_key_error(r.error.as_mut())?,
            KvResponse::Scan(r) => {
                self.decode_pairs(&mut r.pairs)?;
                self.decode_key_error(r.error.as_mut())?;
            }
            KvResponse::Prewrite(r) => self.decode_key_errors(&mut r.errors)?,
            KvResponse::PessimisticLock(r) => self.decode_key_errors(&mut r.errors)?,
            KvResponse::PessimisticRollback(r) => self.decode_key_errors(&mut r.errors)?,
            KvResponse::TxnHeartBeat(r) => self.decode_key_error(r.error.as_mut())?,
            KvResponse::CheckTxnStatus(r) => {
                self.decode_key_error(r.error.as_mut())?;
                if let Some(lock) = r.lock_info.as_mut() {
                    self.decode_lock_info(lock)?;
                }
            }
            KvResponse::CheckSecondaryLocks(r) => {
                self.decode_key_error(r.error.as_mut())?;
                self.decode_lock_infos(&mut r.locks)?;
            }
            KvResponse::Commit(r) => self.decode_key_error(r.error.as_mut())?,
            KvResponse::Cleanup(r) => self.decode_key_error(r.error.as_mut())?,
            KvResponse::BatchGet(r) => {
                self.decode_pairs(&mut r.pairs)?;
                self.decode_key_error(r.error.as_mut())?;
            }
            KvResponse::BatchRollback(r) => self.decode_key_error(r.error.as_mut())?,
            KvResponse::ScanLock(r) => {
                self.decode_key_error(r.error.as_mut())?;
                self.decode_lock_infos(&mut r.locks)?;
            }
            KvResponse::ResolveLock(r) => self.decode_key_error(r.error.as_mut())?,
            KvResponse::Flush(r) => self.decode_key_errors(&mut r.errors)?,
            KvResponse::BufferBatchGet(r) => {
                self.decode_pairs(&mut r.pairs)?;
                self.decode_key_error(r.error.as_mut())?;
            }
            KvResponse::RawBatchGet(r) => self.decode_pairs(&mut r.pairs)?,
            KvResponse::RawScan(r) => self.decode_pairs(&mut r.kvs)?,
            KvResponse::RawBatchScan(r) => self.decode_pairs(&mut r.kvs)?,
            KvResponse::SplitRegion(r) => {
                self.decode_split_regions(r)?;
                self.decode_key_errors(&mut r.errors)?;
            }
            // No keys beyond the region error (none at all for a broadcast).
            KvResponse::BroadcastTxnStatus(_)
            | KvResponse::GetHealthFeedback(_)
            | KvResponse::DeleteRange(_)
            | KvResponse::RawGet(_)
            | KvResponse::RawPut(_)
            | KvResponse::RawBatchPut(_)
            | KvResponse::RawDelete(_)
            | KvResponse::RawBatchDelete(_)
            | KvResponse::RawDeleteRange(_)
            | KvResponse::RawGetKeyTtl(_)
            | KvResponse::RawCompareAndSwap(_)
            | KvResponse::RawChecksum(_)
            | KvResponse::UnsafeDestroyRange(_) => {}
        }
        Ok(())
    }

    fn decode_region_error_of(&self, resp: &mut KvResponse) -> Result<(), Error> {
        match resp.region_error_mut().and_then(Option::as_mut) {
            Some(e) => self.decode_region_error(e),
            None => Ok(()),
        }
    }

    /// Decodes the keys of a region error in place.
    pub fn decode_region_error(&self, err: &mut errorpb::Error) -> Result<(), Error> {
        if !self.memcomparable_regions() {
            return Ok(());
        }
        if let Some(e) = err.key_not_in_region.as_mut() {
            // The key is the request's key (not memcomparable); the range is
            // the region's.
            self.decode_field(&mut e.key)?;
            let (start, end) = self
                .decode_region_range(&e.start_key, &e.end_key)?
                .ok_or_else(|| Error::malformed("KeyNotInRegion: region outside the keyspace"))?;
            e.start_key = start;
            e.end_key = end;
        }
        if let Some(e) = err.epoch_not_match.as_mut() {
            let regions = std::mem::take(&mut e.current_regions);
            for region in regions {
                if let Some(region) = self.decode_region(region)? {
                    e.current_regions.push(region);
                }
            }
        }
        Ok(())
    }

    fn decode_split_regions(&self, r: &mut kvrpcpb::SplitRegionResponse) -> Result<(), Error> {
        if !self.memcomparable_regions() {
            return Ok(());
        }
        let outside = || Error::malformed("SplitRegion: region outside the keyspace");
        // `left`/`right` are deprecated in favour of `regions`, but an older
        // server may still fill them.
        #[allow(deprecated)]
        let legacy = [&mut r.left, &mut r.right];
        for slot in legacy {
            if let Some(region) = slot.take() {
                *slot = Some(self.decode_region(region)?.ok_or_else(outside)?);
            }
        }
        let regions = std::mem::take(&mut r.regions);
        for region in regions {
            r.regions.push(self.decode_region(region)?.ok_or_else(outside)?);
        }
        Ok(())
    }

    fn decode_pairs(&self, pairs: &mut [kvrpcpb::KvPair]) -> Result<(), Error> {
        for p in pairs {
            self.decode_key_error(p.error.as_mut())?;
            self.decode_field(&mut p.key)?;
        }
        Ok(())
    }

    fn decode_key_errors(&self, errors: &mut [kvrpcpb::KeyError]) -> Result<(), Error> {
        errors.iter_mut().try_for_each(|e| self.decode_key_error(Some(e)))
    }

    fn decode_key_error(&self, err: Option<&mut kvrpcpb::KeyError>) -> Result<(), Error> {
        let Some(e) = err else { return Ok(()) };
        if let Some(lock) = e.locked.as_mut() {
            self.decode_lock_info(lock)?;
        }
        if let Some(c) = e.conflict.as_mut() {
            self.decode_field(&mut c.key)?;
            self.decode_field(&mut c.primary)?;
        }
        if let Some(a) = e.already_exist.as_mut() {
            self.decode_field(&mut a.key)?;
        }
        if let Some(d) = e.deadlock.as_mut() {
            self.decode_field(&mut d.lock_key)?;
            self.decode_field(&mut d.deadlock_key)?;
            for w in &mut d.wait_chain {
                self.decode_field(&mut w.key)?;
            }
        }
        if let Some(c) = e.commit_ts_expired.as_mut() {
            self.decode_field(&mut c.key)?;
        }
        if let Some(t) = e.txn_not_found.as_mut() {
            self.decode_field(&mut t.primary_key)?;
        }
        if let Some(a) = e.assertion_failed.as_mut() {
            self.decode_field(&mut a.key)?;
        }
        if let Some(lock) = e.primary_mismatch.as_mut().and_then(|p| p.lock_info.as_mut()) {
            self.decode_lock_info(lock)?;
        }
        if let Some(t) = e.txn_lock_not_found.as_mut() {
            self.decode_field(&mut t.key)?;
        }
        if let Some(l) = e.lock_upgrade_conflict.as_mut() {
            self.decode_field(&mut l.key)?;
        }
        if let Some(s) = e.shared_lock_lost.as_mut() {
            self.decode_field(&mut s.key)?;
        }
        if let Some(debug) = e.debug_info.as_mut() {
            for m in &mut debug.mvcc_info {
                self.decode_field(&mut m.key)?;
                if let Some(lock) = m.mvcc.as_mut().and_then(|i| i.lock.as_mut()) {
                    self.decode_field(&mut lock.primary)?;
                    for s in &mut lock.secondaries {
                        self.decode_field(s)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn decode_lock_infos(&self, locks: &mut [kvrpcpb::LockInfo]) -> Result<(), Error> {
        locks.iter_mut().try_for_each(|l| self.decode_lock_info(l))
    }

    /// Recursion follows `shared_lock_infos`, whose depth prost already
    /// bounds when decoding.
    fn decode_lock_info(&self, lock: &mut kvrpcpb::LockInfo) -> Result<(), Error> {
        self.decode_field(&mut lock.key)?;
        self.decode_field(&mut lock.primary_lock)?;
        for s in &mut lock.secondaries {
            self.decode_field(s)?;
        }
        self.decode_lock_infos(&mut lock.shared_lock_infos)
    }
}

// SplitRegion's deprecated fields are exercised on purpose.
#[cfg(test)]
#[allow(deprecated)]
mod tests;
