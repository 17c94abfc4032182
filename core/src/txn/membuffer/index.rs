//! The ordered key index under [`super::MemBuffer`]: key bytes in one arena
//! ([`super::arena::KeyArena`]), and a map from key to a dense entry id, either an adaptive radix tree
//! ([`super::art::ArtIndex`], the default) or a `BTreeMap` (the baseline the
//! benchmark compares against).
//!
//! The index only ever grows: a key whose write is rolled back stays indexed
//! with a vacant entry (client-go's ART marks such leaves deleted instead of
//! removing them too), so rolling back never searches the tree.

use std::collections::BTreeMap;
use std::collections::btree_map;
use std::ops::Bound;

use super::arena::KeyArena;
use super::art::{ArtIndex, ArtIter};

/// Which ordered structure indexes the keys of a [`super::MemBuffer`].
///
/// Both give the same results; they differ only in speed and memory. The
/// adaptive radix tree is the default because it won the benchmark (see the
/// [module docs](super)); the `BTreeMap` stays as the baseline to measure
/// against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IndexKind {
    /// An adaptive radix tree in a `Vec` arena with `u32` node indices
    /// (client-go's default memdb is an ART as well).
    #[default]
    Art,
    /// `std::collections::BTreeMap<Box<[u8]>, u32>`.
    BTreeMap,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct BTreeIndex {
    map: BTreeMap<Box<[u8]>, u32>,
}

#[derive(Debug, Clone)]
pub(crate) enum Index {
    Art(ArtIndex),
    BTree(BTreeIndex),
}

impl Index {
    pub(crate) fn new(kind: IndexKind) -> Index {
        match kind {
            IndexKind::Art => Index::Art(ArtIndex::default()),
            IndexKind::BTreeMap => Index::BTree(BTreeIndex::default()),
        }
    }

    pub(crate) fn kind(&self) -> IndexKind {
        match self {
            Index::Art(_) => IndexKind::Art,
            Index::BTree(_) => IndexKind::BTreeMap,
        }
    }

    /// The id of `key`, if it was ever indexed.
    pub(crate) fn find(&self, keys: &KeyArena, key: &[u8]) -> Option<u32> {
        match self {
            Index::Art(a) => a.find(keys, key),
            Index::BTree(b) => b.map.get(key).copied(),
        }
    }

    /// The id of `key`, indexing it (and pushing it into `keys`) if new.
    /// The flag is true when the key was inserted.
    pub(crate) fn find_or_insert(&mut self, keys: &mut KeyArena, key: &[u8]) -> (u32, bool) {
        match self {
            Index::Art(a) => a.find_or_insert(keys, key),
            Index::BTree(b) => {
                if let Some(&id) = b.map.get(key) {
                    return (id, false);
                }
                let id = keys.push(key);
                b.map.insert(key.into(), id);
                (id, true)
            }
        }
    }

    /// Ids of the keys within `(lo, hi)`, in key order or reversed. The
    /// bounds must describe a non-empty, well-ordered range (the caller
    /// checks; `BTreeMap::range` panics otherwise).
    pub(crate) fn range<'a>(
        &'a self,
        keys: &'a KeyArena,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        rev: bool,
    ) -> IndexIter<'a> {
        match self {
            Index::Art(a) => IndexIter::Art(ArtIter::new(a, keys, lo, hi, rev)),
            Index::BTree(b) => {
                let r = b.map.range::<[u8], _>((lo, hi));
                if rev { IndexIter::BTreeRev(r.rev()) } else { IndexIter::BTree(r) }
            }
        }
    }

    /// Approximate heap bytes of the index structure (not the keys).
    pub(crate) fn mem(&self) -> usize {
        match self {
            Index::Art(a) => a.mem(),
            // A B-tree leaf holds up to 11 entries of (Box<[u8]>, u32) plus
            // the boxed key itself; count per entry, ignoring slack.
            Index::BTree(b) => b.map.len() * (16 + 8 + 8),
        }
    }
}

/// Iterator over entry ids of an [`Index`] range.
pub(crate) enum IndexIter<'a> {
    Art(ArtIter<'a>),
    BTree(btree_map::Range<'a, Box<[u8]>, u32>),
    BTreeRev(std::iter::Rev<btree_map::Range<'a, Box<[u8]>, u32>>),
    Empty,
}

impl Iterator for IndexIter<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        match self {
            IndexIter::Art(a) => a.next(),
            IndexIter::BTree(r) => r.next().map(|(_, &id)| id),
            IndexIter::BTreeRev(r) => r.next().map(|(_, &id)| id),
            IndexIter::Empty => None,
        }
    }
}
