//! Keys, values and key ranges.
//!
//! A [`Key`] is a cheap, reference-counted byte string (`bytes::Bytes`), so
//! grouping keys by region, retrying a batch or handing a key to the caller
//! never copies it. Ranges follow TiKV's convention: `[start, end)` where an
//! empty `end` means "to the end of the key space".

pub mod memcomparable;

use std::fmt;
use std::ops::{Bound, RangeBounds};

use bytes::Bytes;

/// A key as the user sees it (before any API-version prefix is added).
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(Bytes);

impl Key {
    /// The empty key: the smallest key, and as a range end, "unbounded".
    pub const EMPTY: Key = Key(Bytes::new());

    /// Wraps bytes without copying.
    pub fn new(bytes: impl Into<Bytes>) -> Key {
        Key(bytes.into())
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The underlying shared buffer.
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// Consumes the key, returning its buffer.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty key.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The smallest key greater than `self` (`self + [0]`), client-go's `kv.NextKey`.
    ///
    /// ```
    /// use tikv_core::key::Key;
    /// assert_eq!(Key::from("a").next_key(), Key::from(&b"a\0"[..]));
    /// ```
    pub fn next_key(&self) -> Key {
        let mut v = Vec::with_capacity(self.0.len() + 1);
        v.extend_from_slice(&self.0);
        v.push(0);
        Key(v.into())
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Key {
    fn from(v: Vec<u8>) -> Key {
        Key(v.into())
    }
}

impl From<Bytes> for Key {
    fn from(b: Bytes) -> Key {
        Key(b)
    }
}

/// Borrowed bytes are copied (keys are short; the copy is one allocation),
/// so keys come from any slice, not only from `'static` data.
impl From<&str> for Key {
    fn from(s: &str) -> Key {
        Key(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<&[u8]> for Key {
    fn from(s: &[u8]) -> Key {
        Key(Bytes::copy_from_slice(s))
    }
}

impl<const N: usize> From<&[u8; N]> for Key {
    fn from(s: &[u8; N]) -> Key {
        Key(Bytes::copy_from_slice(s))
    }
}

impl From<&String> for Key {
    fn from(s: &String) -> Key {
        Key::from(s.as_str())
    }
}

impl From<&Vec<u8>> for Key {
    fn from(v: &Vec<u8>) -> Key {
        Key::from(v.as_slice())
    }
}

impl From<&Key> for Key {
    fn from(k: &Key) -> Key {
        k.clone()
    }
}

impl From<String> for Key {
    fn from(s: String) -> Key {
        Key(s.into_bytes().into())
    }
}

impl From<Key> for Bytes {
    fn from(k: Key) -> Bytes {
        k.0
    }
}

/// Writes bytes readably: printable ASCII as is, everything else as `\xNN`.
pub(crate) fn fmt_bytes(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_str("\"")?;
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ' {
            write!(f, "{}", b as char)?;
        } else {
            write!(f, "\\x{b:02x}")?;
        }
    }
    f.write_str("\"")
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_bytes(&self.0, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_bytes(&self.0, f)
    }
}

/// A value stored under a key.
pub type Value = Bytes;

/// A key and its value.
#[derive(Clone, PartialEq, Eq)]
pub struct KvPair {
    /// The key.
    pub key: Key,
    /// The value (empty for key-only scans).
    pub value: Value,
}

impl KvPair {
    /// Builds a pair.
    pub fn new(key: impl Into<Key>, value: impl Into<Value>) -> KvPair {
        KvPair { key: key.into(), value: value.into() }
    }
}

impl<K: Into<Key>, V: Into<Value>> From<(K, V)> for KvPair {
    fn from((key, value): (K, V)) -> KvPair {
        KvPair::new(key, value)
    }
}

impl fmt::Debug for KvPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_bytes(self.key.as_bytes(), f)?;
        f.write_str(" => ")?;
        fmt_bytes(&self.value, f)
    }
}

/// A half-open key range `[start, end)` in TiKV's convention: an empty `end`
/// is unbounded.
///
/// Built from any Rust range over keys; inclusive and excluded-start bounds are
/// converted with [`Key::next_key`].
///
/// ```
/// use tikv_core::key::{Key, KeyRange};
/// let r = KeyRange::from_range(Key::from("a")..=Key::from("c"));
/// assert_eq!(r.start, Key::from("a"));
/// assert_eq!(r.end, Key::from(&b"c\0"[..]));
/// assert!(KeyRange::from_range::<Key, _>(..).end.is_empty());
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyRange {
    /// Inclusive start.
    pub start: Key,
    /// Exclusive end; empty means unbounded.
    pub end: Key,
}

impl KeyRange {
    /// `[start, end)`; an empty `end` is unbounded.
    pub fn new(start: impl Into<Key>, end: impl Into<Key>) -> KeyRange {
        KeyRange { start: start.into(), end: end.into() }
    }

    /// The whole key space.
    pub fn all() -> KeyRange {
        KeyRange::default()
    }

    /// Converts any range of keys.
    pub fn from_range<K: Into<Key> + Clone, R: RangeBounds<K>>(range: R) -> KeyRange {
        let start = match range.start_bound() {
            Bound::Included(k) => k.clone().into(),
            Bound::Excluded(k) => k.clone().into().next_key(),
            Bound::Unbounded => Key::EMPTY,
        };
        let end = match range.end_bound() {
            Bound::Included(k) => k.clone().into().next_key(),
            Bound::Excluded(k) => k.clone().into(),
            Bound::Unbounded => Key::EMPTY,
        };
        KeyRange { start, end }
    }

    /// True if `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_bytes() && (self.end.is_empty() || key < self.end.as_bytes())
    }

    /// True if the range holds no key (`start >= end` with a bounded end).
    pub fn is_empty(&self) -> bool {
        !self.end.is_empty() && self.start >= self.end
    }
}

macro_rules! key_range_from {
    ($($range:ty),*) => {
        $(
            impl<K: Into<Key> + Clone> From<$range> for KeyRange {
                fn from(range: $range) -> KeyRange {
                    KeyRange::from_range(range)
                }
            }
        )*
    };
}
key_range_from!(
    std::ops::Range<K>,
    std::ops::RangeInclusive<K>,
    std::ops::RangeFrom<K>,
    std::ops::RangeTo<K>,
    std::ops::RangeToInclusive<K>,
    (Bound<K>, Bound<K>)
);

impl From<std::ops::RangeFull> for KeyRange {
    fn from(_: std::ops::RangeFull) -> KeyRange {
        KeyRange::all()
    }
}

impl fmt::Debug for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        fmt_bytes(self.start.as_bytes(), f)?;
        f.write_str(", ")?;
        if self.end.is_empty() {
            f.write_str("+inf")?;
        } else {
            fmt_bytes(self.end.as_bytes(), f)?;
        }
        f.write_str(")")
    }
}

/// What a scan reads of its range: at most `limit` pairs, in ascending or
/// descending key order, with or without their values.
///
/// ```
/// use tikv_core::key::ScanSpec;
/// let spec = ScanSpec::reverse(10).keys_only();
/// assert!(spec.reverse && spec.key_only && spec.limit == 10);
/// assert!(!ScanSpec::forward(10).reverse);
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ScanSpec {
    /// The most pairs returned.
    pub limit: u32,
    /// Descending key order (the range's end is still exclusive).
    pub reverse: bool,
    /// Keys only: values are not sent.
    pub key_only: bool,
}

impl ScanSpec {
    /// Up to `limit` pairs in ascending key order, with values.
    pub fn forward(limit: u32) -> ScanSpec {
        ScanSpec { limit, reverse: false, key_only: false }
    }

    /// Up to `limit` pairs in descending key order, with values.
    pub fn reverse(limit: u32) -> ScanSpec {
        ScanSpec { limit, reverse: true, key_only: false }
    }

    /// The same scan without values.
    pub fn keys_only(self) -> ScanSpec {
        ScanSpec { key_only: true, ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_conversion_and_contains() {
        let r = KeyRange::from_range(Key::from("b")..Key::from("d"));
        assert!(r.contains(b"b"));
        assert!(r.contains(b"c\xff"));
        assert!(!r.contains(b"d"));
        assert!(!r.contains(b"a"));
        let open = KeyRange::from_range(Key::from("b")..);
        assert!(open.contains(b"zzzz"));
        let excl = KeyRange::from_range((Bound::Excluded(Key::from("b")), Bound::Unbounded));
        assert!(!excl.contains(b"b"));
        assert!(excl.contains(b"b\0"));
        assert!(KeyRange::new("c", "a").is_empty());
        assert!(!KeyRange::new("c", "").is_empty());
    }

    #[test]
    fn debug_is_readable() {
        assert_eq!(format!("{:?}", Key::from(&b"a\x00\""[..])), "\"a\\x00\\x22\"");
        assert_eq!(format!("{:?}", KeyRange::new("a", "")), "[\"a\", +inf)");
    }

    /// Keys come from borrowed data of any lifetime, not only literals.
    #[test]
    fn keys_come_from_borrowed_and_owned_data() {
        let owned = String::from("user/42");
        let bytes = owned.clone().into_bytes();
        let from_borrowed = {
            let local = owned.clone();
            Key::from(local.as_str())
        };
        assert_eq!(from_borrowed, Key::from(owned.clone()));
        assert_eq!(Key::from(&owned), Key::from(bytes.as_slice()));
        assert_eq!(Key::from(&bytes), Key::from(bytes.clone()));
        assert_eq!(Key::from(b"user/42"), Key::from(&owned));
        assert_eq!(Key::from(&Key::from("k")), Key::from("k"));
        assert_eq!(Key::from(Bytes::from_static(b"k")).as_bytes(), b"k");
    }
}
