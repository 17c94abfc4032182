//! The transaction's write buffer (client-go's `MemDB`, `internal/unionstore`).
//!
//! A [`MemBuffer`] holds every write of a transaction until commit: an
//! ordered map from key to an optional buffered value (a put, or a delete
//! tombstone, or nothing for a key that only carries flags, e.g. a key locked
//! by a pessimistic `LockKeys`) plus 16-bit [`KeyFlags`]. The committer walks
//! it in key order to build mutations (client-go's `initKeysAndMutations`).
//!
//! # Staging and checkpoints
//!
//! TiDB runs each statement inside a [`MemBuffer::staging`]: if the statement
//! fails, [`MemBuffer::cleanup`] rolls back everything it wrote; if it
//! succeeds, [`MemBuffer::release`] merges its writes into the enclosing
//! level. Stagings nest and must be closed in LIFO order. A
//! [`MemBuffer::checkpoint`] marks a point inside the current level that
//! [`MemBuffer::revert_to_checkpoint`] can roll back to (client-go's
//! `Checkpoint`/`RevertToCheckpoint`, used for row-level rollback).
//!
//! Rollback uses an undo log: the first time a key is written at a level (or
//! after a checkpoint), its previous value and flags are recorded, and later
//! writes of that key at the same level record nothing (client-go's vlog
//! overwrites in place a value written in the current stage for the same
//! reason). Each record points at the entry directly, so rolling back is one
//! backward pass over the log with no tree search. When a staging is
//! released, its records are merged into the parent's by one pass that drops
//! those of keys the parent had already recorded, so the log never holds more
//! than one old version of a key per level. Outside any staging no undo is
//! kept at all, until a checkpoint is taken there.
//!
//! # Flag rules on rollback
//!
//! Flags split into *persistent* ones ([`KeyFlags::PERSISTENT`]: the key is
//! locked, its locked value exists, constraint check postponed to prewrite,
//! locked in share mode) and statement-level ones. Persistent flags describe
//! state held in TiKV (a pessimistic lock taken by a statement stays taken
//! when the statement is rolled back), so a rollback keeps them as they are
//! now; statement-level flags and the value go back to what they were. A key
//! that had nothing before the staging and is left with no persistent flag
//! disappears; one with a persistent flag stays as a flags-only key. This is
//! client-go's `RevertVAddr` rule (`flags.AndPersistent()` when the old value
//! was absent), extended: client-go does not roll back flags at all when the
//! key had a value before the stage, and clears a pre-existing flags-only
//! key's statement-level flags; here statement-level flags are restored in
//! both cases.
//!
//! Writing a value (set or delete) first clears
//! `NeedConstraintCheckInPrewrite`, as client-go's `setValue` does.
//!
//! # Limits
//!
//! Keys longer than [`MAX_KEY_LEN`] (client-go's `MaxKeyLen`, 65535) fail with
//! [`Error::KeyTooLarge`]; a key plus value larger than the entry limit with
//! [`Error::EntryTooLarge`]; a write that would take [`MemBuffer::size`] past
//! the buffer limit with [`Error::TxnTooLarge`] (both limits set by
//! [`MemBuffer::set_entry_size_limit`], client-go's `SetEntrySizeLimit`,
//! unlimited by default). Unlike client-go, which applies the write and then
//! reports `ErrTxnTooLarge`, a refused write leaves the buffer unchanged.
//!
//! # Data structure, chosen by benchmark
//!
//! Keys live in one byte arena, entries in a vector indexed by a dense id,
//! and an ordered index maps keys to ids. Two indexes are implemented
//! ([`IndexKind`]): an adaptive radix tree over a `Vec` arena with `u32`
//! node indices (the default, like client-go's ART memdb) and
//! `std::collections::BTreeMap` (the baseline). `cargo bench -p tikv-core
//! --bench membuffer` compares them. One run on the shared 2-core dev box
//! (16-byte random keys, 64-byte values; time of ART / time of BTreeMap,
//! below 1 means the ART is faster; the box was busy, absolute times moved
//! by 2x between runs, the ratios much less):
//!
//! | workload | 100k keys | 1M keys |
//! |---|---|---|
//! | random insert | 0.28 (53 ms vs 191 ms) | 0.29 (0.99 s vs 3.38 s) |
//! | point get, random order | 0.46 (70 ms vs 151 ms) | 0.28 (0.69 s vs 2.48 s) |
//! | full iteration | 1.47 (30 ms vs 21 ms) | 1.69 (188 ms vs 112 ms) |
//! | cleanup of a staging that overwrote 100k keys | 1.19 (6.9 ms vs 5.8 ms) | |
//!
//! The ART is the default: inserts and point gets dominate a transaction's
//! use of its buffer (every write and every read-your-own-write), while the
//! buffer is iterated about once (at commit). Rollback never touches the
//! index (it walks the undo log only), so its ratio is noise. Memory is
//! about the same with either index; with the ART, an entry takes less heap
//! than in client-go's ART memdb for the same keys and values
//! (`membuffer-mem` in `tikv-bench` measures both; the README has the
//! figures).
//!
//! ```
//! use tikv_core::txn::membuffer::{FlagsOp, KeyFlags, MemBuffer};
//!
//! let mut buf = MemBuffer::new();
//! buf.set(b"a", "1")?;
//! let stmt = buf.staging();
//! buf.set(b"a", "2")?;
//! buf.update_flags(b"b", &[FlagsOp::SetKeyLocked])?; // a lock taken by the statement
//! buf.cleanup(stmt)?; // the statement failed
//! assert_eq!(buf.get(b"a").unwrap().value_bytes(), Some(&b"1"[..]));
//! // The pessimistic lock is still held in TiKV, so its flag survives.
//! assert!(buf.get(b"b").unwrap().flags.contains(KeyFlags::KEY_LOCKED));
//! # Ok::<(), tikv_core::Error>(())
//! ```

mod arena;
mod art;
mod index;
#[cfg(test)]
mod tests;

use std::fmt;
use std::ops::{Bound, RangeBounds};

use crate::error::{Error, Result};
use crate::key::Value;

use self::arena::KeyArena;
use self::index::{Index, IndexIter};

pub use self::index::IndexKind;

/// The longest key the buffer accepts (client-go's `MaxKeyLen`,
/// `math.MaxUint16`).
pub const MAX_KEY_LEN: usize = u16::MAX as usize;

/// Metadata attached to a buffered key (client-go's `kv.KeyFlags`), a 16-bit
/// set with the same bit assignment as client-go.
///
/// Change flags through [`FlagsOp`]s, which carry client-go's compound rules
/// (e.g. setting presume-not-exists also sets need-check-exists); the
/// constants and [`KeyFlags::with`]/[`KeyFlags::without`] are for reading
/// and for tests.
///
/// ```
/// use tikv_core::txn::membuffer::{FlagsOp, KeyFlags};
///
/// let f = KeyFlags::EMPTY.apply(FlagsOp::SetPresumeKeyNotExists);
/// assert!(f.contains(KeyFlags::PRESUME_KNE | KeyFlags::NEED_CHECK_EXISTS));
/// assert!(f.has_presume_key_not_exists());
/// assert_eq!(f.persistent(), KeyFlags::EMPTY);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct KeyFlags(u16);

impl KeyFlags {
    /// No flag.
    pub const EMPTY: KeyFlags = KeyFlags(0);
    /// The key is presumed not to exist; its existence is checked lazily
    /// (client-go's `flagPresumeKNE`).
    pub const PRESUME_KNE: KeyFlags = KeyFlags(1 << 0);
    /// The key holds a pessimistic lock (`flagKeyLocked`). Persistent.
    pub const KEY_LOCKED: KeyFlags = KeyFlags(1 << 1);
    /// The key needs a pessimistic lock (`flagNeedLocked`).
    pub const NEED_LOCKED: KeyFlags = KeyFlags(1 << 2);
    /// The value existed when the key was locked (`flagKeyLockedValExist`).
    /// Persistent.
    pub const KEY_LOCKED_VAL_EXIST: KeyFlags = KeyFlags(1 << 3);
    /// Existence must be checked when the key is locked (`flagNeedCheckExists`).
    pub const NEED_CHECK_EXISTS: KeyFlags = KeyFlags(1 << 4);
    /// Prewrite only: left out of the commit phase (`flagPrewriteOnly`).
    pub const PREWRITE_ONLY: KeyFlags = KeyFlags(1 << 5);
    /// Left out of 2PC entirely (`flagIgnoredIn2PC`).
    pub const IGNORED_IN_2PC: KeyFlags = KeyFlags(1 << 6);
    /// Readable by in-transaction reads although only locked
    /// (`flagReadable`, client-go's `ReadableByPessimisticLock` use).
    pub const READABLE: KeyFlags = KeyFlags(1 << 7);
    /// The key was written by an insert (`flagNewlyInserted`).
    pub const NEWLY_INSERTED: KeyFlags = KeyFlags(1 << 8);
    /// Assert the key exists at prewrite (`flagAssertExist`); together with
    /// [`KeyFlags::ASSERT_NOT_EXIST`] it means "unknown".
    pub const ASSERT_EXIST: KeyFlags = KeyFlags(1 << 9);
    /// Assert the key does not exist at prewrite (`flagAssertNotExist`).
    pub const ASSERT_NOT_EXIST: KeyFlags = KeyFlags(1 << 10);
    /// The conflict check of the key is postponed to prewrite
    /// (`flagNeedConstraintCheckInPrewrite`). Persistent.
    pub const NEED_CONSTRAINT_CHECK_IN_PREWRITE: KeyFlags = KeyFlags(1 << 11);
    /// A presume-not-exists from an earlier statement that must not be unset
    /// (`flagPreviousPresumeKNE`, lazy uniqueness checks).
    pub const PREVIOUS_PRESUME_KNE: KeyFlags = KeyFlags(1 << 12);
    /// The lock is a shared lock (`flagKeyLockedInShareMode`). Persistent.
    pub const KEY_LOCKED_IN_SHARE_MODE: KeyFlags = KeyFlags(1 << 13);
    /// Flags that survive the rollback of a staging (client-go's
    /// `persistentFlags`): they mirror locks held in TiKV.
    pub const PERSISTENT: KeyFlags = KeyFlags(
        Self::KEY_LOCKED.0
            | Self::KEY_LOCKED_VAL_EXIST.0
            | Self::NEED_CONSTRAINT_CHECK_IN_PREWRITE.0
            | Self::KEY_LOCKED_IN_SHARE_MODE.0,
    );

    const NAMES: [(KeyFlags, &'static str); 14] = [
        (Self::PRESUME_KNE, "PresumeKNE"),
        (Self::KEY_LOCKED, "KeyLocked"),
        (Self::NEED_LOCKED, "NeedLocked"),
        (Self::KEY_LOCKED_VAL_EXIST, "KeyLockedValExist"),
        (Self::NEED_CHECK_EXISTS, "NeedCheckExists"),
        (Self::PREWRITE_ONLY, "PrewriteOnly"),
        (Self::IGNORED_IN_2PC, "IgnoredIn2PC"),
        (Self::READABLE, "Readable"),
        (Self::NEWLY_INSERTED, "NewlyInserted"),
        (Self::ASSERT_EXIST, "AssertExist"),
        (Self::ASSERT_NOT_EXIST, "AssertNotExist"),
        (Self::NEED_CONSTRAINT_CHECK_IN_PREWRITE, "NeedConstraintCheckInPrewrite"),
        (Self::PREVIOUS_PRESUME_KNE, "PreviousPresumeKNE"),
        (Self::KEY_LOCKED_IN_SHARE_MODE, "KeyLockedInShareMode"),
    ];

    /// The raw bits (client-go's layout).
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Flags from raw bits; unknown bits are kept as they are.
    pub const fn from_bits(bits: u16) -> KeyFlags {
        KeyFlags(bits)
    }

    /// True if no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True if every flag of `other` is set.
    pub const fn contains(self, other: KeyFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if any flag of `other` is set.
    pub const fn intersects(self, other: KeyFlags) -> bool {
        self.0 & other.0 != 0
    }

    /// These flags plus `other`.
    #[must_use]
    pub const fn with(self, other: KeyFlags) -> KeyFlags {
        KeyFlags(self.0 | other.0)
    }

    /// These flags minus `other`.
    #[must_use]
    pub const fn without(self, other: KeyFlags) -> KeyFlags {
        KeyFlags(self.0 & !other.0)
    }

    /// Only the persistent flags (client-go's `AndPersistent`).
    #[must_use]
    pub const fn persistent(self) -> KeyFlags {
        KeyFlags(self.0 & Self::PERSISTENT.0)
    }

    /// These flags after `op` (client-go's `ApplyFlagsOps` for one op).
    #[must_use]
    pub const fn apply(self, op: FlagsOp) -> KeyFlags {
        op.apply(self)
    }

    /// Assert-exist is set and assert-not-exist is not (`HasAssertExist`).
    pub const fn has_assert_exist(self) -> bool {
        self.contains(Self::ASSERT_EXIST) && !self.intersects(Self::ASSERT_NOT_EXIST)
    }

    /// Assert-not-exist is set and assert-exist is not (`HasAssertNotExist`).
    pub const fn has_assert_not_exist(self) -> bool {
        self.contains(Self::ASSERT_NOT_EXIST) && !self.intersects(Self::ASSERT_EXIST)
    }

    /// Both assertion bits: no assertion can be made (`HasAssertUnknown`).
    pub const fn has_assert_unknown(self) -> bool {
        self.contains(Self::ASSERT_EXIST.with(Self::ASSERT_NOT_EXIST))
    }

    /// Some assertion is set and may no longer change (`HasAssertionFlags`).
    pub const fn has_assertion_flags(self) -> bool {
        self.intersects(Self::ASSERT_EXIST.with(Self::ASSERT_NOT_EXIST))
    }

    /// Presume-not-exists, from this statement or an earlier one
    /// (`HasPresumeKeyNotExists`).
    pub const fn has_presume_key_not_exists(self) -> bool {
        self.intersects(Self::PRESUME_KNE.with(Self::PREVIOUS_PRESUME_KNE))
    }
}

impl std::ops::BitOr for KeyFlags {
    type Output = KeyFlags;
    fn bitor(self, rhs: KeyFlags) -> KeyFlags {
        self.with(rhs)
    }
}

impl std::ops::BitOrAssign for KeyFlags {
    fn bitor_assign(&mut self, rhs: KeyFlags) {
        *self = self.with(rhs);
    }
}

impl fmt::Debug for KeyFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut rest = self.0;
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
                rest &= !flag.0;
            }
        }
        if rest != 0 {
            if !first {
                f.write_str("|")?;
            }
            write!(f, "{rest:#06x}")?;
        }
        Ok(())
    }
}

/// A change to a key's flags (client-go's `kv.FlagsOp`), with client-go's
/// compound effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FlagsOp {
    /// Sets presume-not-exists and need-check-exists.
    SetPresumeKeyNotExists,
    /// Clears presume-not-exists and need-check-exists.
    DelPresumeKeyNotExists,
    /// Sets key-locked.
    SetKeyLocked,
    /// Clears key-locked.
    DelKeyLocked,
    /// Sets need-locked.
    SetNeedLocked,
    /// Clears need-locked.
    DelNeedLocked,
    /// Sets locked-value-exists and clears need-constraint-check-in-prewrite.
    SetKeyLockedValueExists,
    /// Clears locked-value-exists and need-constraint-check-in-prewrite.
    SetKeyLockedValueNotExists,
    /// Clears need-check-exists.
    DelNeedCheckExists,
    /// Sets prewrite-only.
    SetPrewriteOnly,
    /// Sets ignored-in-2PC.
    SetIgnoredIn2PC,
    /// Sets readable.
    SetReadable,
    /// Sets newly-inserted.
    SetNewlyInserted,
    /// Asserts the key exists (clears assert-not-exist).
    SetAssertExist,
    /// Asserts the key does not exist (clears assert-exist).
    SetAssertNotExist,
    /// Marks the assertion unknown (both bits).
    SetAssertUnknown,
    /// Clears the assertion.
    SetAssertNone,
    /// Sets need-constraint-check-in-prewrite.
    SetNeedConstraintCheckInPrewrite,
    /// Clears need-constraint-check-in-prewrite.
    DelNeedConstraintCheckInPrewrite,
    /// Sets previous-presume-not-exists.
    SetPreviousPresumeKNE,
    /// Sets locked-in-share-mode.
    SetKeyLockedInShareMode,
    /// Clears locked-in-share-mode (the lock is exclusive).
    SetKeyLockedInExclusiveMode,
}

impl FlagsOp {
    /// `flags` after this op.
    pub const fn apply(self, flags: KeyFlags) -> KeyFlags {
        use FlagsOp::*;
        type F = KeyFlags;
        match self {
            SetPresumeKeyNotExists => flags.with(F::PRESUME_KNE.with(F::NEED_CHECK_EXISTS)),
            DelPresumeKeyNotExists => flags.without(F::PRESUME_KNE.with(F::NEED_CHECK_EXISTS)),
            SetKeyLocked => flags.with(F::KEY_LOCKED),
            DelKeyLocked => flags.without(F::KEY_LOCKED),
            SetNeedLocked => flags.with(F::NEED_LOCKED),
            DelNeedLocked => flags.without(F::NEED_LOCKED),
            SetKeyLockedValueExists => {
                flags.with(F::KEY_LOCKED_VAL_EXIST).without(F::NEED_CONSTRAINT_CHECK_IN_PREWRITE)
            }
            SetKeyLockedValueNotExists => {
                flags.without(F::KEY_LOCKED_VAL_EXIST.with(F::NEED_CONSTRAINT_CHECK_IN_PREWRITE))
            }
            DelNeedCheckExists => flags.without(F::NEED_CHECK_EXISTS),
            SetPrewriteOnly => flags.with(F::PREWRITE_ONLY),
            SetIgnoredIn2PC => flags.with(F::IGNORED_IN_2PC),
            SetReadable => flags.with(F::READABLE),
            SetNewlyInserted => flags.with(F::NEWLY_INSERTED),
            SetAssertExist => flags.without(F::ASSERT_NOT_EXIST).with(F::ASSERT_EXIST),
            SetAssertNotExist => flags.without(F::ASSERT_EXIST).with(F::ASSERT_NOT_EXIST),
            SetAssertUnknown => flags.with(F::ASSERT_EXIST.with(F::ASSERT_NOT_EXIST)),
            SetAssertNone => flags.without(F::ASSERT_EXIST.with(F::ASSERT_NOT_EXIST)),
            SetNeedConstraintCheckInPrewrite => flags.with(F::NEED_CONSTRAINT_CHECK_IN_PREWRITE),
            DelNeedConstraintCheckInPrewrite => flags.without(F::NEED_CONSTRAINT_CHECK_IN_PREWRITE),
            SetPreviousPresumeKNE => flags.with(F::PREVIOUS_PRESUME_KNE),
            SetKeyLockedInShareMode => flags.with(F::KEY_LOCKED_IN_SHARE_MODE),
            SetKeyLockedInExclusiveMode => flags.without(F::KEY_LOCKED_IN_SHARE_MODE),
        }
    }

    /// `flags` after each op in order.
    pub fn apply_all(ops: &[FlagsOp], flags: KeyFlags) -> KeyFlags {
        ops.iter().fold(flags, |f, op| op.apply(f))
    }
}

/// A buffered write of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferedValue<'a> {
    /// The key is written with this value.
    Put(&'a Value),
    /// The key is deleted (client-go stores an empty value as tombstone).
    Delete,
}

/// What the buffer holds for a key: its write, if any, and its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The buffered write; `None` for a key that only carries flags (e.g.
    /// locked but not written).
    pub value: Option<BufferedValue<'a>>,
    /// The key's flags.
    pub flags: KeyFlags,
}

impl<'a> Entry<'a> {
    /// The value bytes of a put; `None` for a delete or a flags-only key.
    pub fn value_bytes(&self) -> Option<&'a [u8]> {
        match self.value {
            Some(BufferedValue::Put(v)) => Some(v),
            _ => None,
        }
    }

    /// True for a delete tombstone.
    pub fn is_delete(&self) -> bool {
        self.value == Some(BufferedValue::Delete)
    }
}

/// A stored value state (private twin of [`BufferedValue`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Slot {
    #[default]
    Absent,
    Tombstone,
    Put(Value),
}

impl Slot {
    fn len(&self) -> usize {
        match self {
            Slot::Put(v) => v.len(),
            _ => 0,
        }
    }

    fn view(&self) -> Option<BufferedValue<'_>> {
        match self {
            Slot::Absent => None,
            Slot::Tombstone => Some(BufferedValue::Delete),
            Slot::Put(v) => Some(BufferedValue::Put(v)),
        }
    }
}

/// No undo record.
const NO_UNDO: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Node {
    value: Slot,
    flags: KeyFlags,
    /// Index of this key's latest undo record, or [`NO_UNDO`]; only trusted
    /// after checking the record there is this key's.
    last_undo: u32,
}

impl Node {
    fn present(&self) -> bool {
        self.value != Slot::Absent || !self.flags.is_empty()
    }
}

/// The state of a key before its first write at some level.
#[derive(Debug, Clone)]
struct Undo {
    id: u32,
    /// The key's previous record (an older level), or [`NO_UNDO`].
    prev: u32,
    flags: KeyFlags,
    value: Slot,
    /// Unique per record, so a checkpoint can tell that the log below it
    /// is still the one it saw.
    serial: u64,
}

#[derive(Debug, Clone, Copy)]
struct Stage {
    start: usize,
    /// The parent's dedup floor, restored when this stage closes.
    parent_floor: usize,
    id: u64,
}

/// A nested staging level, returned by [`MemBuffer::staging`] and closed by
/// [`MemBuffer::release`] or [`MemBuffer::cleanup`] (client-go's integer
/// staging handle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagingHandle {
    depth: u32,
    id: u64,
}

impl StagingHandle {
    /// Nesting depth of this staging (1 = outermost).
    pub fn depth(&self) -> u32 {
        self.depth
    }
}

/// A point in the current staging level to roll back to
/// (client-go's `MemDBCheckpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pos: usize,
    stage: u64,
    serial: u64,
}

/// The transaction's write buffer; see the [module docs](self).
///
/// ```
/// use tikv_core::txn::membuffer::{BufferedValue, MemBuffer};
///
/// let mut buf = MemBuffer::new();
/// buf.set(b"k1", "v1")?;
/// buf.delete(b"k2")?;
/// let keys: Vec<_> = buf.iter(..).map(|(k, e)| (k.to_vec(), e.is_delete())).collect();
/// assert_eq!(keys, vec![(b"k1".to_vec(), false), (b"k2".to_vec(), true)]);
/// assert_eq!((buf.len(), buf.size()), (2, 6));
/// # Ok::<(), tikv_core::Error>(())
/// ```
#[derive(Clone)]
pub struct MemBuffer {
    keys: KeyArena,
    index: Index,
    nodes: Vec<Node>,
    undo: Vec<Undo>,
    stages: Vec<Stage>,
    /// Records at or above this index belong to the current level since its
    /// last boundary (staging start or checkpoint): a key recorded there
    /// needs no second record.
    floor: usize,
    /// A checkpoint was taken outside any staging, so writes there keep undo.
    base_undo: bool,
    next_stage_id: u64,
    next_serial: u64,
    len: usize,
    size: usize,
    /// Bytes of the values held by entries, and by undo records.
    value_bytes: usize,
    undo_value_bytes: usize,
    dirty: bool,
    entry_limit: u64,
    buffer_limit: u64,
}

impl Default for MemBuffer {
    fn default() -> MemBuffer {
        MemBuffer::new()
    }
}

impl fmt::Debug for MemBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemBuffer")
            .field("index", &self.index.kind())
            .field("len", &self.len)
            .field("size", &self.size)
            .field("stagings", &self.stages.len())
            .field("undo_records", &self.undo.len())
            .field("dirty", &self.dirty)
            .finish()
    }
}

impl MemBuffer {
    /// An empty buffer over the default index, without size limits.
    pub fn new() -> MemBuffer {
        MemBuffer::with_index(IndexKind::default())
    }

    /// An empty buffer over the given index (the `BTreeMap` one is the
    /// benchmark baseline).
    pub fn with_index(kind: IndexKind) -> MemBuffer {
        MemBuffer {
            keys: KeyArena::default(),
            index: Index::new(kind),
            nodes: Vec::new(),
            undo: Vec::new(),
            stages: Vec::new(),
            floor: 0,
            base_undo: false,
            next_stage_id: 1,
            next_serial: 1,
            len: 0,
            size: 0,
            value_bytes: 0,
            undo_value_bytes: 0,
            dirty: false,
            entry_limit: u64::MAX,
            buffer_limit: u64::MAX,
        }
    }

    /// Sets the limit of one key plus its value, and of the whole buffer's
    /// [`size`](Self::size) (client-go's `SetEntrySizeLimit(entry, buffer)`).
    ///
    /// ```
    /// use tikv_core::{Error, txn::membuffer::MemBuffer};
    ///
    /// let mut buf = MemBuffer::new();
    /// buf.set_entry_size_limit(8, 12);
    /// assert!(matches!(buf.set(b"k", "123456789"), Err(Error::EntryTooLarge { size: 10, limit: 8 })));
    /// buf.set(b"k1", "123456")?;
    /// assert!(matches!(buf.set(b"k2", "1234"), Err(Error::TxnTooLarge { size: 14, limit: 12 })));
    /// assert_eq!(buf.len(), 1); // the refused write left nothing behind
    /// # Ok::<(), Error>(())
    /// ```
    pub fn set_entry_size_limit(&mut self, entry: u64, buffer: u64) {
        self.entry_limit = entry;
        self.buffer_limit = buffer;
    }

    /// The entry and buffer size limits.
    pub fn entry_size_limit(&self) -> (u64, u64) {
        (self.entry_limit, self.buffer_limit)
    }

    /// Which index this buffer uses.
    pub fn index_kind(&self) -> IndexKind {
        self.index.kind()
    }

    /// What the buffer holds for `key`: a put, a delete, or flags only.
    /// `None` if the key was never written, or its writes were rolled back.
    pub fn get(&self, key: &[u8]) -> Option<Entry<'_>> {
        let id = self.index.find(&self.keys, key)?;
        self.entry(id)
    }

    fn entry(&self, id: u32) -> Option<Entry<'_>> {
        let n = &self.nodes[id as usize];
        n.present().then(|| Entry { value: n.value.view(), flags: n.flags })
    }

    /// Buffers a put of `value` under `key`. Empty values are refused, as
    /// client-go's `ErrCannotSetNilValue` (TiKV reads an empty value as a
    /// delete).
    pub fn set(&mut self, key: &[u8], value: impl Into<Value>) -> Result<()> {
        self.set_with_flags(key, value, &[])
    }

    /// [`set`](Self::set), then applies `ops` to the key's flags
    /// (client-go's `SetWithFlags`).
    pub fn set_with_flags(
        &mut self,
        key: &[u8],
        value: impl Into<Value>,
        ops: &[FlagsOp],
    ) -> Result<()> {
        let value = value.into();
        if value.is_empty() {
            return Err(Error::InvalidArgument(
                "cannot set an empty value (client-go's ErrCannotSetNilValue)".into(),
            ));
        }
        self.write(key, Some(Slot::Put(value)), ops)
    }

    /// Buffers a delete of `key` (a tombstone).
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.write(key, Some(Slot::Tombstone), &[])
    }

    /// [`delete`](Self::delete), then applies `ops` to the key's flags
    /// (client-go's `DeleteWithFlags`).
    pub fn delete_with_flags(&mut self, key: &[u8], ops: &[FlagsOp]) -> Result<()> {
        self.write(key, Some(Slot::Tombstone), ops)
    }

    /// Applies `ops` to the key's flags without touching its value; a key
    /// not in the buffer becomes a flags-only key (client-go's `UpdateFlags`).
    pub fn update_flags(&mut self, key: &[u8], ops: &[FlagsOp]) -> Result<()> {
        self.write(key, None, ops)
    }

    fn write(&mut self, key: &[u8], value: Option<Slot>, ops: &[FlagsOp]) -> Result<()> {
        if key.len() > MAX_KEY_LEN {
            return Err(Error::KeyTooLarge { size: key.len(), limit: MAX_KEY_LEN });
        }
        if let Some(v) = &value {
            let size = (key.len() + v.len()) as u64;
            if size > self.entry_limit {
                return Err(Error::EntryTooLarge { size, limit: self.entry_limit });
            }
        }
        let id = if self.keys.len() < art::MAX_IDS {
            // One descent for both cases; a key inserted by a write that is
            // then refused (or changes nothing) stays as a vacant entry.
            let (id, inserted) = self.index.find_or_insert(&mut self.keys, key);
            if inserted {
                self.nodes.push(Node {
                    value: Slot::Absent,
                    flags: KeyFlags::EMPTY,
                    last_undo: NO_UNDO,
                });
            }
            id
        } else {
            // Entry ids are tagged `u32`s: no room for another key.
            self.index
                .find(&self.keys, key)
                .ok_or(Error::TxnTooLarge { size: self.size as u64, limit: self.buffer_limit })?
        };
        let node = &self.nodes[id as usize];
        let flags = match value {
            // Writing a value drops a postponed constraint check, as
            // client-go's setValue prepends DelNeedConstraintCheckInPrewrite.
            Some(_) => {
                FlagsOp::apply_all(ops, FlagsOp::DelNeedConstraintCheckInPrewrite.apply(node.flags))
            }
            None => FlagsOp::apply_all(ops, node.flags),
        };
        let new_len = value.as_ref().map_or(node.value.len(), Slot::len);
        let was = node.present();
        let now = value.as_ref().map_or(node.value != Slot::Absent, |_| true) || !flags.is_empty();
        if value.is_none() && flags == node.flags {
            return Ok(());
        }
        let before = if was { key.len() + node.value.len() } else { 0 };
        let after = if now { key.len() + new_len } else { 0 };
        let size = self.size - before + after;
        if size as u64 > self.buffer_limit {
            return Err(Error::TxnTooLarge { size: size as u64, limit: self.buffer_limit });
        }
        self.record(id);
        let node = &mut self.nodes[id as usize];
        node.flags = flags;
        if let Some(v) = value {
            self.value_bytes = self.value_bytes - node.value.len() + v.len();
            node.value = v;
        }
        self.len = self.len + usize::from(now) - usize::from(was);
        self.size = size;
        if self.stages.is_empty() || flags.intersects(KeyFlags::PERSISTENT) {
            self.dirty = true;
        }
        Ok(())
    }

    /// Records the state of entry `id` before a write, unless no rollback
    /// can reach it or it is already recorded at this level.
    fn record(&mut self, id: u32) {
        if self.stages.is_empty() && !self.base_undo {
            return;
        }
        let node = &self.nodes[id as usize];
        let last = node.last_undo as usize;
        let mine = node.last_undo != NO_UNDO && self.undo.get(last).is_some_and(|u| u.id == id);
        if mine && last >= self.floor {
            return;
        }
        let Ok(at) = u32::try_from(self.undo.len()) else {
            // Past 4G records the pointer cannot be stored: the record is
            // still written (rollback stays right), only dedup is lost.
            self.push_undo(id, if mine { node.last_undo } else { NO_UNDO });
            return;
        };
        self.push_undo(id, if mine { node.last_undo } else { NO_UNDO });
        self.nodes[id as usize].last_undo = at;
    }

    fn push_undo(&mut self, id: u32, prev: u32) {
        let node = &self.nodes[id as usize];
        let serial = self.next_serial;
        self.next_serial += 1;
        self.undo_value_bytes += node.value.len();
        self.undo.push(Undo { id, prev, flags: node.flags, value: node.value.clone(), serial });
    }

    /// Pops undo records down to `pos`, restoring each entry.
    fn revert_to(&mut self, pos: usize) {
        while self.undo.len() > pos {
            let Some(u) = self.undo.pop() else { break };
            self.undo_value_bytes -= u.value.len();
            let key_len = self.keys.get(u.id).len();
            let node = &mut self.nodes[u.id as usize];
            self.value_bytes = self.value_bytes - node.value.len() + u.value.len();
            if node.present() {
                self.len -= 1;
                self.size -= key_len + node.value.len();
            }
            // Persistent flags mirror locks held in TiKV: keep them as they
            // are; the rest of the state goes back.
            node.flags = u.flags.without(KeyFlags::PERSISTENT) | node.flags.persistent();
            node.value = u.value;
            node.last_undo = u.prev;
            if node.present() {
                self.len += 1;
                self.size += key_len + node.value.len();
            }
        }
    }

    /// Opens a nested staging level (client-go's `Staging`); everything
    /// written until it is closed can be rolled back at once.
    pub fn staging(&mut self) -> StagingHandle {
        let id = self.next_stage_id;
        self.next_stage_id += 1;
        self.stages.push(Stage { start: self.undo.len(), parent_floor: self.floor, id });
        self.floor = self.undo.len();
        StagingHandle { depth: self.stages.len() as u32, id }
    }

    /// Number of open stagings.
    pub fn staging_depth(&self) -> usize {
        self.stages.len()
    }

    fn order_error(&self, h: StagingHandle) -> Error {
        Error::StagingOrder { handle: h.depth, open: self.stages.len() as u32 }
    }

    /// Closes the innermost staging keeping its writes, which now belong to
    /// the parent level (client-go's `Release`). Fails with
    /// [`Error::StagingOrder`] if `h` is not the innermost open staging.
    pub fn release(&mut self, h: StagingHandle) -> Result<()> {
        if self.stages.last().is_none_or(|s| s.id != h.id) {
            return Err(self.order_error(h));
        }
        let Some(stage) = self.stages.pop() else {
            return Err(self.order_error(h));
        };
        self.floor = stage.parent_floor;
        if self.stages.is_empty() {
            // client-go marks the buffer dirty when the outermost stage
            // is released with writes in it.
            if self.undo.len() > stage.start {
                self.dirty = true;
            }
            if !self.base_undo {
                self.undo.clear();
                self.undo_value_bytes = 0;
                self.floor = 0;
                return Ok(());
            }
        }
        self.merge_into_parent(stage.start);
        Ok(())
    }

    /// One pass over a released stage's records: keep a key's first record
    /// unless the parent already holds one since its boundary, so the
    /// parent level keeps one old version per key.
    fn merge_into_parent(&mut self, start: usize) {
        let parent_floor = self.floor;
        let mut w = start;
        for i in start..self.undo.len() {
            let (id, prev) = (self.undo[i].id, self.undo[i].prev);
            let prev_at = prev as usize;
            if prev == NO_UNDO || prev_at < parent_floor {
                self.undo.swap(w, i);
                self.nodes[id as usize].last_undo = u32::try_from(w).unwrap_or(NO_UNDO);
                w += 1;
            } else {
                self.undo_value_bytes -= self.undo[i].value.len();
                if prev_at < start {
                    // The parent's record stays the key's latest.
                    self.nodes[id as usize].last_undo = prev;
                }
            }
        }
        self.undo.truncate(w);
    }

    /// Closes the innermost staging rolling back everything written since it
    /// was opened (client-go's `Cleanup`): values and statement-level flags
    /// return to what they were; persistent flags stay. Cleaning up a
    /// staging that is already closed does nothing, as in client-go (TiDB
    /// defers `Cleanup(h)` after `Release(h)`); cleaning up an open staging
    /// that is not the innermost fails with [`Error::StagingOrder`].
    pub fn cleanup(&mut self, h: StagingHandle) -> Result<()> {
        match self.stages.last() {
            Some(s) if s.id == h.id => {}
            _ if self.stages.iter().any(|s| s.id == h.id) => return Err(self.order_error(h)),
            _ => return Ok(()),
        }
        let Some(stage) = self.stages.pop() else {
            return Ok(());
        };
        self.revert_to(stage.start);
        self.floor = stage.parent_floor;
        Ok(())
    }

    /// A point in the current level to roll back to
    /// (client-go's `Checkpoint`).
    ///
    /// ```
    /// use tikv_core::txn::membuffer::MemBuffer;
    ///
    /// let mut buf = MemBuffer::new();
    /// let stmt = buf.staging();
    /// buf.set(b"row1", "a")?;
    /// let cp = buf.checkpoint();
    /// buf.set(b"row1", "b")?;
    /// buf.set(b"row2", "c")?;
    /// buf.revert_to_checkpoint(cp)?;
    /// assert_eq!(buf.get(b"row1").unwrap().value_bytes(), Some(&b"a"[..]));
    /// assert!(buf.get(b"row2").is_none());
    /// buf.release(stmt)?;
    /// # Ok::<(), tikv_core::Error>(())
    /// ```
    pub fn checkpoint(&mut self) -> Checkpoint {
        if self.stages.is_empty() {
            self.base_undo = true;
        }
        self.floor = self.undo.len();
        Checkpoint {
            pos: self.undo.len(),
            stage: self.stages.last().map_or(0, |s| s.id),
            serial: self.undo.last().map_or(0, |u| u.serial),
        }
    }

    /// Rolls back everything written since `cp` (client-go's
    /// `RevertToCheckpoint`), with the flag rules of [`cleanup`](Self::cleanup).
    /// Fails with [`Error::StaleCheckpoint`] if `cp` was taken in a
    /// different staging level, or the buffer was already rolled back below
    /// it.
    pub fn revert_to_checkpoint(&mut self, cp: Checkpoint) -> Result<()> {
        let stage = self.stages.last().map_or(0, |s| s.id);
        let start = self.stages.last().map_or(0, |s| s.start);
        let serial = match cp.pos {
            0 => Some(0),
            p => self.undo.get(p - 1).map(|u| u.serial),
        };
        if cp.stage != stage || cp.pos < start || serial != Some(cp.serial) {
            return Err(Error::StaleCheckpoint);
        }
        self.revert_to(cp.pos);
        self.floor = cp.pos;
        Ok(())
    }

    /// Number of keys in the buffer (puts, deletes and flags-only keys).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the buffer holds no key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of keys plus values in the buffer (client-go's `Size`); the
    /// buffer limit applies to it.
    pub fn size(&self) -> usize {
        self.size
    }

    /// True once something that must be committed was written: a write
    /// outside any staging, a persistent flag, or the release of an
    /// outermost staging that wrote (client-go's `Dirty`).
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// Heap bytes the buffer's content takes (client-go's `Mem`, which the
    /// pipelined flush thresholds compare): its keys, entries, index nodes
    /// and undo records, and the bytes of the values they hold.
    ///
    /// Vectors are counted by length, not capacity: client-go's arenas grow
    /// by adding blocks and never copy, while a vector doubles, so counting
    /// its spare capacity would make this figure jump to twice the content
    /// at each doubling and hand pipelined generations off well below the
    /// memory the thresholds allow. A large vector's untouched spare
    /// capacity is address space, not resident memory. A value shared with
    /// an undo record counts twice. `membuffer-mem` in `tikv-bench` checks
    /// this figure against the allocator's count.
    pub fn mem(&self) -> usize {
        self.keys.used_bytes()
            + self.index.mem()
            + self.nodes.len() * std::mem::size_of::<Node>()
            + self.undo.len() * std::mem::size_of::<Undo>()
            + self.value_bytes
            + self.undo_value_bytes
    }

    /// Entries in `range`, in key order: puts, deletes and flags-only keys
    /// (client-go's `IterWithFlags`; readers skip deletes and flags-only
    /// keys, the committer needs them).
    ///
    /// ```
    /// use std::ops::Bound;
    /// use tikv_core::txn::membuffer::MemBuffer;
    ///
    /// let mut buf = MemBuffer::new();
    /// for k in [&b"a"[..], b"b", b"c", b"d"] {
    ///     buf.set(k, "v")?;
    /// }
    /// let r = (Bound::Included(&b"b"[..]), Bound::Excluded(&b"d"[..]));
    /// let fwd: Vec<_> = buf.iter(r).map(|(k, _)| k.to_vec()).collect();
    /// let rev: Vec<_> = buf.iter_rev(r).map(|(k, _)| k.to_vec()).collect();
    /// assert_eq!(fwd, vec![b"b".to_vec(), b"c".to_vec()]);
    /// assert_eq!(rev, vec![b"c".to_vec(), b"b".to_vec()]);
    /// # Ok::<(), tikv_core::Error>(())
    /// ```
    pub fn iter<R: RangeBounds<[u8]>>(&self, range: R) -> Iter<'_> {
        self.iter_dir(range, false)
    }

    /// Entries in `range`, in reverse key order (client-go's `IterReverse`
    /// with flags).
    pub fn iter_rev<R: RangeBounds<[u8]>>(&self, range: R) -> Iter<'_> {
        self.iter_dir(range, true)
    }

    fn iter_dir<R: RangeBounds<[u8]>>(&self, range: R, rev: bool) -> Iter<'_> {
        let (lo, hi) = (range.start_bound(), range.end_bound());
        let empty = match (lo, hi) {
            (Bound::Included(l), Bound::Included(h)) => l > h,
            (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(h))
            | (Bound::Excluded(l), Bound::Included(h)) => l >= h,
            _ => false,
        };
        let inner =
            if empty { IndexIter::Empty } else { self.index.range(&self.keys, lo, hi, rev) };
        Iter { buf: self, inner }
    }
}

/// Iterator over buffered entries, from [`MemBuffer::iter`] and
/// [`MemBuffer::iter_rev`].
pub struct Iter<'a> {
    buf: &'a MemBuffer,
    inner: IndexIter<'a>,
}

impl fmt::Debug for Iter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter").finish_non_exhaustive()
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], Entry<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let id = self.inner.next()?;
            // Rolled-back keys stay indexed with a vacant entry.
            if let Some(e) = self.buf.entry(id) {
                return Some((self.buf.keys.get(id), e));
            }
        }
    }
}
