//! The ordered half of the region cache: cached regions by start key, in a
//! B+tree whose nodes compare fixed-width key fingerprints.
//!
//! Region keys share long prefixes (TiDB's `t{table}_r{handle}` keys share 11
//! bytes before the handle), so an ordered map of plain keys pays a `memcmp`
//! through a pointer, usually a cache miss, at every step of every lookup.
//! Here each node stores the longest prefix its keys share and, per key, a
//! code: the next 7 bytes after that prefix as a big-endian integer plus
//! the suffix length, which orders like the keys themselves. A lookup computes
//! the probe's code ([`code_at`]) once per node and searches the node's array
//! of codes (binary search in inner nodes, which stay cached; a forward scan
//! in leaves, which usually do not); the full keys are only read when a probe
//! and a key agree on all 7 bytes and both go on beyond them.
//!
//! Each leaf entry also carries a *joined* bit: the region's end is unbounded
//! or equals the next cached region's start. Since a lookup lands on the
//! greatest start `<=` the key, a joined entry contains the key without
//! reading its end key; only regions before a gap in the cache compare it.
//!
//! Nodes split when full and are dropped when empty; they are not merged.
//! Instead the whole tree is rebuilt densely once it holds fewer than a
//! quarter of the entries its leaves could, which costs one pass over the
//! entries after at least as many removals.

use std::cmp::Ordering;

use smallvec::SmallVec;

use super::{Region, RegionRef};
use crate::key::Key;

/// Entries per leaf: four cache lines of codes, four of region pointers.
const LEAF_CAP: usize = 32;
/// Children per inner node.
const INNER_CAP: usize = 64;
/// Bytes of the suffix (after the node prefix) a code holds.
const CODE_BYTES: usize = 7;
/// Low byte of the code of a suffix longer than [`CODE_BYTES`]: two keys
/// with this same code are only ordered by their full bytes.
const LONG_SUFFIX: u64 = CODE_BYTES as u64 + 2;
/// The code of an unused slot: above every real code, so counting codes
/// `<=` a probe's can run over the whole fixed-size array.
const UNUSED: u64 = u64::MAX;
/// The code of the empty key (the first region's start): below every real
/// code, which is never 0. The empty key shares no prefix, so it is kept out
/// of the node prefix and compared by this code alone.
const EMPTY_KEY: u64 = 0;

const _: () = assert!(LEAF_CAP < 64, "joined bits live in a u64");

/// The code of `key[prefix_len..]`, the suffix of a key after its node's
/// prefix: the first [`CODE_BYTES`] bytes, zero-padded, then
/// `min(len, CODE_BYTES + 1) + 1`.
///
/// For suffixes `a <= b`, `code(a) <= code(b)`; equal codes mean equal
/// suffixes unless the low byte is [`LONG_SUFFIX`] (both go on past the
/// fingerprint). Zero-padding alone would tie `"ab"` with `"ab\0"`; the
/// length byte orders the shorter first, as byte-wise comparison does.
///
/// This runs at every node of every lookup, so it reads whole words of
/// `key` where it can instead of copying bytes into a buffer (a store that
/// the following load must wait for).
fn code_at(key: &[u8], prefix_len: usize) -> u64 {
    let n = key.len() - prefix_len;
    let len = n.min(CODE_BYTES + 1) as u64 + 1;
    let bytes = if let Some(eight) = key[prefix_len..].first_chunk::<8>() {
        // The 8th byte is masked off.
        u64::from_be_bytes(*eight) & !0xff
    } else if n == 0 {
        0
    } else if let Some(last) = key.last_chunk::<8>() {
        // The suffix is the key's tail: shift the last word's other bytes out.
        u64::from_be_bytes(*last) << (8 * (8 - n))
    } else {
        let mut bytes = [0u8; 8];
        bytes[..n].copy_from_slice(&key[prefix_len..]);
        u64::from_be_bytes(bytes)
    };
    bytes | len
}

/// Where a probe falls relative to a node's prefix.
enum Side {
    /// Before every non-empty key of the node.
    Below,
    /// After every key of the node.
    Above,
    /// Shares the prefix; the code of the rest.
    Within(u64),
}

/// Longest common prefix of two keys.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Prefix plus per-key codes of one node (`CAP` slots).
///
/// `repr(C)`: the prefix, read first by every search, sits right before the
/// codes, so a cold node costs as few cache lines as possible.
#[derive(Clone)]
#[repr(C)]
struct Codes<const CAP: usize> {
    /// Shared by every non-empty key of the node (not necessarily the
    /// longest such prefix: removals leave it as it was).
    prefix: SmallVec<[u8; 24]>,
    codes: [u64; CAP],
}

impl<const CAP: usize> Codes<CAP> {
    fn new() -> Self {
        Codes { codes: [UNUSED; CAP], prefix: SmallVec::new() }
    }

    /// Recomputes the prefix and every code from the node's `len` keys.
    fn rebuild<'a>(&mut self, len: usize, key_at: impl Fn(usize) -> &'a [u8]) {
        self.prefix.clear();
        if len > 0 {
            let first = if key_at(0).is_empty() { 1 } else { 0 };
            if first < len {
                let (lo, hi) = (key_at(first), key_at(len - 1));
                self.prefix.extend_from_slice(&lo[..common_prefix(lo, hi)]);
            }
        }
        for i in 0..CAP {
            self.codes[i] = if i < len { self.code_of(key_at(i)) } else { UNUSED };
        }
    }

    /// The code of a key of this node (it shares the prefix or is empty).
    fn code_of(&self, key: &[u8]) -> u64 {
        if key.is_empty() { EMPTY_KEY } else { code_at(key, self.prefix.len()) }
    }

    /// True if `key` can be stored under the current prefix.
    fn fits(&self, key: &[u8]) -> bool {
        key.is_empty() || key.starts_with(&self.prefix)
    }

    fn side(&self, probe: &[u8]) -> Side {
        let p = self.prefix.len();
        if probe.starts_with(&self.prefix) {
            // The usual case: an equality test is cheaper than an ordering.
            return Side::Within(code_at(probe, p));
        }
        if probe.len() >= p {
            match probe[..p].cmp(&self.prefix) {
                Ordering::Less => Side::Below,
                Ordering::Greater => Side::Above,
                Ordering::Equal => Side::Within(code_at(probe, p)),
            }
        } else {
            // A probe that is a proper prefix of the prefix sorts before it.
            match probe.cmp(&self.prefix[..probe.len()]) {
                Ordering::Greater => Side::Above,
                _ => Side::Below,
            }
        }
    }

    /// How many of the node's `len` keys are `<= probe` (`strict`: `< probe`).
    fn count<'a>(
        &self,
        len: usize,
        probe: &[u8],
        strict: bool,
        key_at: impl Fn(usize) -> &'a [u8],
    ) -> usize {
        if strict && probe.is_empty() {
            return 0;
        }
        let lead = usize::from(len > 0 && self.codes[0] == EMPTY_KEY);
        let pc = match self.side(probe) {
            // Only the empty key can be below the prefix and `<=` the probe.
            Side::Below => return lead,
            Side::Above => return len,
            Side::Within(pc) => pc,
        };
        // Codes are sorted (unused slots last).
        let codes = &self.codes[..len];
        let below = if CAP <= LEAF_CAP {
            // Leaves are usually cold: a forward scan streams their lines in
            // one go, where a binary search waits for each line in turn.
            codes.iter().take_while(|&&c| c < pc).count()
        } else {
            codes.partition_point(|&c| c < pc)
        };
        let equal = codes[below..].iter().take_while(|&&c| c == pc).count();
        if equal == 0 {
            return below;
        }
        if pc & 0xff != LONG_SUFFIX {
            // Equal codes of short suffixes are the probe itself.
            return if strict { below } else { below + equal };
        }
        // Keys agreeing on the whole fingerprint: order them by their bytes.
        let run = below..below + equal;
        let before = run.clone().filter(|&i| {
            let ord = key_at(i).cmp(probe);
            ord == Ordering::Less || (!strict && ord == Ordering::Equal)
        });
        below + before.count()
    }

    /// Inserts `key` at `at` of `len` keys (`len < CAP`), rebuilding if it
    /// does not share the prefix.
    fn insert<'a>(
        &mut self,
        at: usize,
        len: usize,
        key: &[u8],
        key_at: impl Fn(usize) -> &'a [u8],
    ) {
        if self.fits(key) && !(len == 0 || (len == 1 && self.codes[0] == EMPTY_KEY)) {
            self.codes.copy_within(at..len, at + 1);
            self.codes[at] = self.code_of(key);
        } else {
            // `key_at` already sees the new key at `at`.
            self.rebuild(len + 1, key_at);
        }
    }

    /// Removes slot `at` of `len`.
    fn remove(&mut self, at: usize, len: usize) {
        self.codes.copy_within(at + 1..len, at);
        self.codes[len - 1] = UNUSED;
    }

    /// Replaces the key at `at` of `len` keys.
    fn replace<'a>(
        &mut self,
        at: usize,
        len: usize,
        key: &[u8],
        key_at: impl Fn(usize) -> &'a [u8],
    ) {
        if self.fits(key) {
            self.codes[at] = self.code_of(key);
        } else {
            self.rebuild(len, key_at);
        }
    }
}

/// A leaf: up to [`LEAF_CAP`] regions in start-key order.
#[repr(C)]
struct Leaf {
    codes: Codes<LEAF_CAP>,
    /// Bit `i`: entry `i`'s end is unbounded or the next entry's start.
    joined: u64,
    /// Inline, so a lookup touches one allocation (one page) per node.
    regions: SmallVec<[RegionRef; LEAF_CAP]>,
}

/// An inner node: children with the smallest start key under each.
#[repr(C)]
struct Inner {
    codes: Codes<INNER_CAP>,
    /// `keys[i]` is the smallest start key under `children[i]` (read on
    /// fingerprint ties and rebuilds only, so not inline).
    keys: Vec<Key>,
    /// Inline, so a lookup touches one allocation (one page) per node.
    children: SmallVec<[Node; INNER_CAP]>,
}

enum Node {
    Leaf(Box<Leaf>),
    Inner(Box<Inner>),
}

fn insert_bit(mask: u64, at: usize, bit: bool) -> u64 {
    let low = mask & ((1u64 << at) - 1);
    ((mask & !((1u64 << at) - 1)) << 1) | low | (u64::from(bit) << at)
}

fn remove_bit(mask: u64, at: usize) -> u64 {
    let low = mask & ((1u64 << at) - 1);
    ((mask >> 1) & !((1u64 << at) - 1)) | low
}

impl Leaf {
    fn new() -> Leaf {
        Leaf { codes: Codes::new(), joined: 0, regions: SmallVec::new() }
    }

    /// A full leaf of `regions` (at most [`LEAF_CAP`]) with their joined bits.
    fn from_entries(entries: &[(RegionRef, bool)]) -> Leaf {
        let mut leaf = Leaf::new();
        for (i, (r, joined)) in entries.iter().enumerate() {
            leaf.regions.push(r.clone());
            leaf.joined |= u64::from(*joined) << i;
        }
        leaf.rebuild();
        leaf
    }

    fn rebuild(&mut self) {
        let regions = &self.regions;
        self.codes.rebuild(regions.len(), |i| regions[i].start.as_bytes());
    }

    fn count(&self, probe: &[u8], strict: bool) -> usize {
        let regions = &self.regions;
        self.codes.count(regions.len(), probe, strict, |i| regions[i].start.as_bytes())
    }

    fn first_key(&self) -> &Key {
        &self.regions[0].start
    }

    fn set_joined(&mut self, at: usize, joined: bool) {
        self.joined = (self.joined & !(1 << at)) | (u64::from(joined) << at);
    }
}

impl Inner {
    fn count(&self, probe: &[u8], strict: bool) -> usize {
        let keys = &self.keys;
        self.codes.count(keys.len(), probe, strict, |i| keys[i].as_bytes())
    }

    fn rebuild(&mut self) {
        let keys = &self.keys;
        self.codes.rebuild(keys.len(), |i| keys[i].as_bytes());
    }

    /// Refreshes `keys[at]` after the smallest key under `children[at]` changed.
    fn refresh_key(&mut self, at: usize) {
        let first = self.children[at].first_key().clone();
        if self.keys[at] != first {
            self.keys[at] = first;
            let keys = &self.keys;
            self.codes.replace(at, keys.len(), keys[at].as_bytes(), |i| keys[i].as_bytes());
        }
    }

    /// Inserts `child` (whose smallest key is `key`) at `at`.
    fn insert_child(&mut self, at: usize, key: Key, child: Node) {
        self.keys.insert(at, key);
        self.children.insert(at, child);
        let keys = &self.keys;
        self.codes.insert(at, keys.len() - 1, keys[at].as_bytes(), |i| keys[i].as_bytes());
    }

    fn remove_child(&mut self, at: usize) {
        self.keys.remove(at);
        self.children.remove(at);
        self.codes.remove(at, self.keys.len() + 1);
    }
}

impl Node {
    fn first_key(&self) -> &Key {
        match self {
            Node::Leaf(l) => l.first_key(),
            Node::Inner(n) => &n.keys[0],
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Node::Leaf(l) => l.regions.is_empty(),
            Node::Inner(n) => n.children.is_empty(),
        }
    }

    /// Inserts `region` (whose start is not in the tree). Returns a new right
    /// sibling (and its smallest key) if this node split.
    fn insert(&mut self, region: RegionRef, leaves: &mut usize) -> Option<(Key, Node)> {
        match self {
            Node::Leaf(leaf) => {
                let at = leaf.count(region.start.as_bytes(), true);
                let len = leaf.regions.len();
                if len < LEAF_CAP {
                    leaf_insert(leaf, at, region);
                    return None;
                }
                // Appends (PD scans load regions in key order) keep the full
                // leaf and start a new one; other inserts split in the middle.
                let mid = if at == len { len } else { len / 2 };
                let mut right = Leaf::new();
                right.regions.extend(leaf.regions.drain(mid..));
                right.joined = leaf.joined >> mid;
                leaf.joined &= (1u64 << mid) - 1;
                if at < mid {
                    leaf.rebuild();
                    right.rebuild();
                    leaf_insert(leaf, at, region);
                } else {
                    leaf.rebuild();
                    right.rebuild();
                    leaf_insert(&mut right, at - mid, region);
                }
                *leaves += 1;
                Some((right.first_key().clone(), Node::Leaf(Box::new(right))))
            }
            Node::Inner(inner) => {
                let at = inner.count(region.start.as_bytes(), false).max(1) - 1;
                let split = inner.children[at].insert(region, leaves);
                inner.refresh_key(at);
                let (key, child) = split?;
                if inner.children.len() < INNER_CAP {
                    inner.insert_child(at + 1, key, child);
                    return None;
                }
                let len = inner.children.len();
                let mid = if at + 1 == len { len } else { len / 2 };
                let mut right = Inner {
                    codes: Codes::new(),
                    keys: inner.keys.drain(mid..).collect(),
                    children: inner.children.drain(mid..).collect(),
                };
                inner.rebuild();
                right.rebuild();
                if at + 1 < mid {
                    inner.insert_child(at + 1, key, child);
                } else {
                    right.insert_child(at + 1 - mid, key, child);
                }
                Some((right.keys[0].clone(), Node::Inner(Box::new(right))))
            }
        }
    }

    /// Removes the entry starting at `start`, if any.
    fn remove(&mut self, start: &[u8], leaves: &mut usize) -> Option<RegionRef> {
        match self {
            Node::Leaf(leaf) => {
                let at = leaf.count(start, true);
                if leaf.regions.get(at)?.start.as_bytes() != start {
                    return None;
                }
                let len = leaf.regions.len();
                leaf.codes.remove(at, len);
                leaf.joined = remove_bit(leaf.joined, at);
                Some(leaf.regions.remove(at))
            }
            Node::Inner(inner) => {
                let at = inner.count(start, false).checked_sub(1)?;
                let removed = inner.children[at].remove(start, leaves)?;
                if inner.children[at].is_empty() {
                    if matches!(inner.children[at], Node::Leaf(_)) {
                        *leaves -= 1;
                    }
                    inner.remove_child(at);
                } else {
                    inner.refresh_key(at);
                }
                Some(removed)
            }
        }
    }

    /// The leaf entry with the greatest start `<= probe` (`strict`: `<`).
    fn find(&self, probe: &[u8], strict: bool) -> Option<(&Leaf, usize)> {
        let mut node = self;
        loop {
            match node {
                Node::Inner(inner) => {
                    node = &inner.children[inner.count(probe, strict).checked_sub(1)?];
                }
                Node::Leaf(leaf) => return Some((leaf, leaf.count(probe, strict).checked_sub(1)?)),
            }
        }
    }

    fn find_mut(&mut self, probe: &[u8], strict: bool) -> Option<(&mut Leaf, usize)> {
        let mut node = self;
        loop {
            match node {
                Node::Inner(inner) => {
                    let at = inner.count(probe, strict).checked_sub(1)?;
                    node = &mut inner.children[at];
                }
                Node::Leaf(leaf) => {
                    let at = leaf.count(probe, strict).checked_sub(1)?;
                    return Some((leaf, at));
                }
            }
        }
    }
}

fn leaf_insert(leaf: &mut Leaf, at: usize, region: RegionRef) {
    let len = leaf.regions.len();
    leaf.regions.insert(at, region);
    leaf.joined = insert_bit(leaf.joined, at, false);
    let regions = &leaf.regions;
    leaf.codes.insert(at, len, regions[at].start.as_bytes(), |i| regions[i].start.as_bytes());
}

/// Cached regions by start key (see the module docs). Starts are unique:
/// the cache removes every overlapping region before inserting.
pub(super) struct RegionTree {
    root: Node,
    len: usize,
    leaves: usize,
}

impl Default for RegionTree {
    fn default() -> Self {
        RegionTree { root: Node::Leaf(Box::new(Leaf::new())), len: 0, leaves: 1 }
    }
}

/// A found entry: the region and its joined bit.
pub(super) type Entry<'a> = (&'a RegionRef, bool);

impl RegionTree {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The region with the greatest start `<= key`, and whether it is joined
    /// to the next (then it contains every key below the next start).
    pub(super) fn find_le(&self, key: &[u8]) -> Option<Entry<'_>> {
        let (leaf, at) = self.root.find(key, false)?;
        Some((&leaf.regions[at], leaf.joined >> at & 1 == 1))
    }

    /// The region with the greatest start `< key`.
    pub(super) fn find_lt(&self, key: &[u8]) -> Option<&RegionRef> {
        let (leaf, at) = self.root.find(key, true)?;
        Some(&leaf.regions[at])
    }

    /// The region with the greatest start.
    pub(super) fn last(&self) -> Option<&RegionRef> {
        let mut node = &self.root;
        loop {
            match node {
                Node::Inner(inner) => node = inner.children.last()?,
                Node::Leaf(leaf) => return leaf.regions.last(),
            }
        }
    }

    /// The region starting exactly at `start`.
    pub(super) fn get(&self, start: &[u8]) -> Option<&RegionRef> {
        self.find_le(start).map(|(r, _)| r).filter(|r| r.start.as_bytes() == start)
    }

    /// Sets the joined bit of the region starting exactly at `start`.
    pub(super) fn set_joined(&mut self, start: &[u8], joined: bool) {
        if let Some((leaf, at)) = self.root.find_mut(start, false)
            && leaf.regions[at].start.as_bytes() == start
        {
            leaf.set_joined(at, joined);
        }
    }

    /// Sets the joined bit of the region with the greatest start `< key` to
    /// `joined(region)`.
    pub(super) fn set_joined_before(&mut self, key: &[u8], joined: impl FnOnce(&Region) -> bool) {
        if let Some((leaf, at)) = self.root.find_mut(key, true) {
            let bit = joined(&leaf.regions[at]);
            leaf.set_joined(at, bit);
        }
    }

    /// Inserts a region whose start is not cached yet (a region with the same
    /// start is replaced and returned), with its joined bit clear.
    pub(super) fn insert(&mut self, region: RegionRef) -> Option<RegionRef> {
        let replaced = self.remove(region.start.as_bytes());
        if let Some((key, right)) = self.root.insert(region, &mut self.leaves) {
            let left = std::mem::replace(&mut self.root, Node::Leaf(Box::new(Leaf::new())));
            let mut root = Inner {
                codes: Codes::new(),
                keys: vec![left.first_key().clone(), key],
                children: [left, right].into_iter().collect(),
            };
            root.rebuild();
            self.root = Node::Inner(Box::new(root));
        }
        self.len += 1;
        replaced
    }

    /// Removes the region starting exactly at `start`.
    pub(super) fn remove(&mut self, start: &[u8]) -> Option<RegionRef> {
        let removed = self.root.remove(start, &mut self.leaves)?;
        self.len -= 1;
        // Collapse roots left with a single child.
        while let Node::Inner(inner) = &mut self.root
            && inner.children.len() <= 1
        {
            self.root = inner.children.pop().unwrap_or_else(|| Node::Leaf(Box::new(Leaf::new())));
        }
        if self.root.is_empty() {
            self.root = Node::Leaf(Box::new(Leaf::new()));
            self.leaves = 1;
        }
        if self.leaves > 4 && self.len * 4 < self.leaves * LEAF_CAP {
            self.compact();
        }
        Some(removed)
    }

    /// Rebuilds the tree with full nodes.
    fn compact(&mut self) {
        let entries: Vec<(RegionRef, bool)> = self.iter().map(|(r, j)| (r.clone(), j)).collect();
        *self = RegionTree::from_sorted(&entries);
    }

    /// A dense tree of entries sorted by start.
    fn from_sorted(entries: &[(RegionRef, bool)]) -> RegionTree {
        if entries.is_empty() {
            return RegionTree::default();
        }
        let mut level: Vec<Node> = entries
            .chunks(LEAF_CAP)
            .map(|chunk| Node::Leaf(Box::new(Leaf::from_entries(chunk))))
            .collect();
        let leaves = level.len();
        while level.len() > 1 {
            let mut next = Vec::with_capacity(level.len().div_ceil(INNER_CAP));
            let mut nodes = level.into_iter().peekable();
            while nodes.peek().is_some() {
                let children: SmallVec<[Node; INNER_CAP]> =
                    nodes.by_ref().take(INNER_CAP).collect();
                let keys = children.iter().map(|c| c.first_key().clone()).collect();
                let mut inner = Inner { codes: Codes::new(), keys, children };
                inner.rebuild();
                next.push(Node::Inner(Box::new(inner)));
            }
            level = next;
        }
        let root = level.pop().unwrap_or_else(|| Node::Leaf(Box::new(Leaf::new())));
        RegionTree { root, len: entries.len(), leaves }
    }

    /// Every entry in key order.
    pub(super) fn iter(&self) -> Iter<'_> {
        let mut it = Iter { stack: SmallVec::new(), leaf: None };
        it.descend_leftmost(&self.root);
        it
    }

    /// Entries in key order from the one with the greatest start `<= key`
    /// (or from the first entry if there is none).
    pub(super) fn iter_from_le(&self, key: &[u8]) -> Iter<'_> {
        self.iter_from(key, false)
    }

    /// Entries in key order from the first with start `>= key`.
    pub(super) fn iter_from_ge(&self, key: &[u8]) -> Iter<'_> {
        let mut it = self.iter_from(key, true);
        // Positioned at the greatest start `< key`: step past it.
        if let Some((leaf, at)) = it.leaf
            && leaf.regions[at].start.as_bytes() < key
        {
            it.next();
        }
        it
    }

    /// Positioned at the greatest start `<= key` (`strict`: `<`), or at the
    /// first entry if none.
    fn iter_from(&self, key: &[u8], strict: bool) -> Iter<'_> {
        let mut it = Iter { stack: SmallVec::new(), leaf: None };
        let mut node = &self.root;
        loop {
            match node {
                Node::Inner(inner) => {
                    let at = inner.count(key, strict).max(1) - 1;
                    it.stack.push((inner, at));
                    node = &inner.children[at];
                }
                Node::Leaf(leaf) => {
                    let at = leaf.count(key, strict).max(1) - 1;
                    if at < leaf.regions.len() {
                        it.leaf = Some((leaf, at));
                    }
                    return it;
                }
            }
        }
    }
}

/// An in-order walk over the tree's entries.
pub(super) struct Iter<'a> {
    /// Inner nodes on the path to the current leaf, with the child taken.
    stack: SmallVec<[(&'a Inner, usize); 8]>,
    leaf: Option<(&'a Leaf, usize)>,
}

impl<'a> Iter<'a> {
    fn descend_leftmost(&mut self, mut node: &'a Node) {
        loop {
            match node {
                Node::Inner(inner) => {
                    self.stack.push((inner, 0));
                    node = &inner.children[0];
                }
                Node::Leaf(leaf) => {
                    self.leaf = (!leaf.regions.is_empty()).then_some((leaf, 0));
                    return;
                }
            }
        }
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = Entry<'a>;

    fn next(&mut self) -> Option<Entry<'a>> {
        let (leaf, at) = self.leaf?;
        let item = (&leaf.regions[at], leaf.joined >> at & 1 == 1);
        if at + 1 < leaf.regions.len() {
            self.leaf = Some((leaf, at + 1));
            return Some(item);
        }
        self.leaf = None;
        while let Some((inner, child)) = self.stack.pop() {
            if child + 1 < inner.children.len() {
                self.stack.push((inner, child + 1));
                self.descend_leftmost(&inner.children[child + 1]);
                break;
            }
        }
        Some(item)
    }
}

#[cfg(test)]
impl RegionTree {
    /// Panics unless every node's prefix, codes and separator keys agree
    /// with its keys, keys strictly increase, and the counts are right.
    pub(super) fn check(&self) {
        fn check_codes<const CAP: usize>(codes: &Codes<CAP>, keys: &[&[u8]]) {
            for (i, c) in codes.codes.iter().enumerate() {
                match keys.get(i) {
                    Some(k) => {
                        assert!(codes.fits(k), "{k:?} outside prefix {:?}", codes.prefix);
                        assert_eq!(*c, codes.code_of(k), "stale code for {k:?}");
                    }
                    None => assert_eq!(*c, UNUSED),
                }
            }
            for w in keys.windows(2) {
                assert!(w[0] < w[1], "keys out of order: {:?} {:?}", w[0], w[1]);
            }
        }
        /// Returns (entries, leaves, depth).
        fn walk(node: &Node, is_root: bool) -> (usize, usize, usize) {
            match node {
                Node::Leaf(leaf) => {
                    let keys: Vec<&[u8]> =
                        leaf.regions.iter().map(|r| r.start.as_bytes()).collect();
                    check_codes(&leaf.codes, &keys);
                    assert!(is_root || !keys.is_empty(), "empty non-root leaf");
                    assert!(leaf.regions.len() <= LEAF_CAP);
                    assert_eq!(leaf.joined >> leaf.regions.len(), 0, "stray joined bits");
                    (keys.len(), 1, 1)
                }
                Node::Inner(inner) => {
                    let keys: Vec<&[u8]> = inner.keys.iter().map(|k| k.as_bytes()).collect();
                    check_codes(&inner.codes, &keys);
                    assert_eq!(inner.keys.len(), inner.children.len());
                    assert!(inner.children.len() <= INNER_CAP);
                    assert!(!is_root || inner.children.len() > 1, "root with one child");
                    let mut depth = None;
                    let (mut n, mut leaves) = (0, 0);
                    for (k, child) in inner.keys.iter().zip(&inner.children) {
                        assert_eq!(k, child.first_key(), "separator is not the child's first key");
                        let (cn, cl, cd) = walk(child, false);
                        assert!(depth.is_none_or(|d| d == cd), "unbalanced");
                        depth = Some(cd);
                        n += cn;
                        leaves += cl;
                    }
                    (n, leaves, depth.unwrap_or(0) + 1)
                }
            }
        }
        let (n, leaves, _) = walk(&self.root, true);
        assert_eq!(n, self.len, "entry count");
        assert_eq!(leaves, self.leaves, "leaf count");
        let starts: Vec<&Key> = self.iter().map(|(r, _)| &r.start).collect();
        assert_eq!(starts.len(), self.len, "iteration visits every entry");
        assert!(starts.windows(2).all(|w| w[0] < w[1]), "iteration order");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use tikv_proto::metapb;

    use super::*;
    use crate::rng::Rng;

    /// The code of a whole key, byte by byte (the model for [`code_at`]).
    fn code(suffix: &[u8]) -> u64 {
        let mut bytes = [0u8; 8];
        let n = suffix.len().min(CODE_BYTES);
        bytes[..n].copy_from_slice(&suffix[..n]);
        u64::from_be_bytes(bytes) | (suffix.len().min(CODE_BYTES + 1) as u64 + 1)
    }

    fn region(start: &[u8]) -> RegionRef {
        let meta = metapb::Region {
            id: 1,
            start_key: start.to_vec().into(),
            region_epoch: Some(metapb::RegionEpoch { conf_ver: 1, version: 1 }),
            peers: vec![metapb::Peer { id: 1, store_id: 1, ..Default::default() }],
            ..Default::default()
        };
        Arc::new(Region::new(meta, None).expect("valid region"))
    }

    /// Keys built to stress the fingerprints: a shared 11-byte prefix, then
    /// either a short handle, or a long tail that agrees with other keys on
    /// the 7 bytes a code holds (ties), or prefixes of other keys.
    fn key(rng: &mut Rng) -> Vec<u8> {
        let mut k = b"t\x80\0\0\0\0\0\0\x2a_r".to_vec();
        match rng.gen_range(0, 6) {
            0 => k.extend_from_slice(&rng.gen_range(0, 4000).to_be_bytes()),
            1 => {
                k.extend_from_slice(&[0, 0, 0, 0, 0, 0, 7]);
                k.extend_from_slice(&rng.gen_range(0, 300).to_be_bytes()[6..]);
                k.extend(std::iter::repeat_n(0, rng.gen_range(0, 3) as usize));
            }
            2 => k.truncate(rng.gen_range(1, 12) as usize),
            3 => k = vec![rng.gen_range(0, 256) as u8; rng.gen_range(1, 4) as usize],
            4 => k.extend(std::iter::repeat_n(0, rng.gen_range(0, 10) as usize)),
            _ => k.extend_from_slice(&rng.gen_range(0, 1 << 20).to_be_bytes()[5..]),
        }
        k
    }

    #[test]
    fn codes_order_like_keys() {
        let mut rng = Rng::new(3);
        let mut keys: Vec<Vec<u8>> = (0..3000).map(|_| key(&mut rng)).collect();
        keys.extend([vec![], vec![0], vec![0, 0], b"ab".to_vec(), b"ab\0".to_vec()]);
        keys.sort();
        keys.dedup();
        for w in keys.windows(2) {
            let (a, b) = (code(&w[0]), code(&w[1]));
            assert!(a <= b, "{:?} < {:?} but codes {a:x} > {b:x}", w[0], w[1]);
            assert!(a < b || a & 0xff == LONG_SUFFIX, "{:?} and {:?} tie at {a:x}", w[0], w[1]);
        }
        // Word loads at an offset agree with the byte-wise code of the suffix.
        for k in &keys {
            for p in 0..=k.len() {
                assert_eq!(code_at(k, p), code(&k[p..]), "{k:?} at {p}");
            }
        }
        assert_eq!(code(b"ab") & 0xff, 3);
        assert!(code(b"ab") < code(b"ab\0"));
        assert_eq!(code(b"abcdefgh"), code(b"abcdefgz"), "past the fingerprint: a tie");
    }

    /// The model's answer for "greatest key `<=` probe" (`strict`: `<`).
    fn model_find(model: &BTreeMap<Vec<u8>, ()>, probe: &[u8], strict: bool) -> Option<Vec<u8>> {
        let mut below = model
            .range::<[u8], _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(probe)))
            .rev();
        below.find(|(k, _)| !strict || k.as_slice() < probe).map(|(k, _)| k.clone())
    }

    /// Random inserts and removals (growing past three levels, then shrinking
    /// until compaction) checked against a `BTreeMap` after every step:
    /// lookups, predecessor lookups, seeks and the tree's own invariants.
    #[test]
    fn random_operations_match_an_ordered_map() {
        let mut rng = Rng::new(11);
        let mut tree = RegionTree::default();
        let mut model: BTreeMap<Vec<u8>, ()> = BTreeMap::new();
        let mut compacted = false;
        for step in 0..30_000u32 {
            // Grow for the first half, shrink in the second.
            let grow = if step < 15_000 { 4 } else { 1 };
            let k = key(&mut rng);
            if rng.gen_range(0, 5) < grow {
                let replaced = tree.insert(region(&k));
                assert_eq!(replaced.is_some(), model.insert(k.clone(), ()).is_some());
            } else {
                // Uniform victims thin every leaf, which is what compaction is for.
                let victim = match model.len() {
                    0 => None,
                    len => model.keys().nth(rng.gen_range(0, len as u64) as usize).cloned(),
                };
                if let Some(v) = victim {
                    let leaves_before = tree.leaves;
                    assert!(tree.remove(&v).is_some_and(|r| r.start.as_bytes() == v.as_slice()));
                    model.remove(&v);
                    compacted |= tree.leaves + 1 < leaves_before;
                }
                assert!(tree.remove(b"\xff\xff not cached").is_none());
            }
            assert_eq!(tree.len(), model.len());
            assert!(tree.leaves <= 4 || tree.len() * 4 >= tree.leaves * LEAF_CAP, "sparse tree");
            for _ in 0..4 {
                let probe = key(&mut rng);
                let le = tree.find_le(&probe).map(|(r, _)| r.start.as_bytes().to_vec());
                assert_eq!(le, model_find(&model, &probe, false), "find_le {probe:?}");
                let lt = tree.find_lt(&probe).map(|r| r.start.as_bytes().to_vec());
                assert_eq!(lt, model_find(&model, &probe, true), "find_lt {probe:?}");
                let ge: Vec<Vec<u8>> = tree
                    .iter_from_ge(&probe)
                    .take(3)
                    .map(|(r, _)| r.start.as_bytes().to_vec())
                    .collect();
                let want: Vec<Vec<u8>> = model
                    .range::<[u8], _>((
                        std::ops::Bound::Included(probe.as_slice()),
                        std::ops::Bound::Unbounded,
                    ))
                    .take(3)
                    .map(|(k, _)| k.clone())
                    .collect();
                assert_eq!(ge, want, "iter_from_ge {probe:?}");
                let from = le.clone().or_else(|| model.keys().next().cloned());
                let got =
                    tree.iter_from_le(&probe).next().map(|(r, _)| r.start.as_bytes().to_vec());
                assert_eq!(got, from, "iter_from_le {probe:?}");
            }
            assert_eq!(
                tree.last().map(|r| r.start.as_bytes().to_vec()),
                model.keys().next_back().cloned()
            );
            if step % 500 == 0 || model.len() < 60 {
                tree.check();
            }
        }
        tree.check();
        assert!(compacted, "the shrinking half compacts the tree");
        // Every key of the model, exactly and just above.
        for k in model.keys() {
            assert_eq!(tree.get(k).map(|r| r.start.as_bytes().to_vec()), Some(k.clone()));
            let mut above = k.clone();
            above.push(0);
            assert_eq!(
                tree.find_le(&above).map(|(r, _)| r.start.as_bytes().to_vec()),
                Some(k.clone())
            );
        }
    }

    /// Keys whose codes tie (same 7 bytes after the node prefix, longer
    /// than that) are told apart by their bytes. `a` and `z` keep the node
    /// prefix empty, so every `prefix/...` key has the code of `prefix/`.
    #[test]
    fn fingerprint_ties_fall_back_to_full_keys() {
        let mut tree = RegionTree::default();
        for k in ["", "a", "prefix/1", "prefix/3", "prefix/5", "prefix/50", "prefix/7", "z"] {
            tree.insert(region(k.as_bytes()));
        }
        tree.check();
        let Node::Leaf(leaf) = &tree.root else { panic!("one leaf") };
        assert!(leaf.codes.prefix.is_empty());
        assert_eq!(leaf.codes.codes[2], leaf.codes.codes[6], "prefix/1 and prefix/7 tie");
        let show = |r: Option<&RegionRef>| {
            r.map(|r| String::from_utf8_lossy(r.start.as_bytes()).into_owned())
        };
        let le = |p: &str| show(tree.find_le(p.as_bytes()).map(|(r, _)| r));
        let lt = |p: &str| show(tree.find_lt(p.as_bytes()));
        assert_eq!(le("prefix/").as_deref(), Some("a"));
        assert_eq!(le("prefix/0").as_deref(), Some("a"));
        assert_eq!(le("prefix/1").as_deref(), Some("prefix/1"));
        assert_eq!(lt("prefix/1").as_deref(), Some("a"));
        assert_eq!(le("prefix/4zzz").as_deref(), Some("prefix/3"));
        assert_eq!(le("prefix/5").as_deref(), Some("prefix/5"));
        assert_eq!(le("prefix/5\0").as_deref(), Some("prefix/5"));
        assert_eq!(le("prefix/50").as_deref(), Some("prefix/50"));
        assert_eq!(lt("prefix/50").as_deref(), Some("prefix/5"));
        assert_eq!(le("prefix/9").as_deref(), Some("prefix/7"));
        assert_eq!(le("prefix").as_deref(), Some("a"));
        assert_eq!(le("zzz").as_deref(), Some("z"));
        assert_eq!(le("").as_deref(), Some(""));
        assert_eq!(lt(""), None);
        assert_eq!(lt("\0").as_deref(), Some(""));
        let from: Vec<_> =
            tree.iter_from_ge(b"prefix/4").map(|(r, _)| show(Some(r)).unwrap()).collect();
        assert_eq!(from, ["prefix/5", "prefix/50", "prefix/7", "z"]);
    }

    /// Loading in key order (as PD scans deliver regions) fills leaves and
    /// inner nodes completely, over three levels; removing in key order
    /// empties and compacts them.
    #[test]
    fn appends_fill_nodes_and_ordered_removals_empty_them() {
        let n = LEAF_CAP * INNER_CAP * 2 + 7;
        let key = |i: usize| format!("t_r{i:08}").into_bytes();
        let mut tree = RegionTree::default();
        tree.insert(region(b""));
        for i in 1..n {
            tree.insert(region(&key(i)));
        }
        tree.check();
        assert_eq!(tree.len(), n);
        assert_eq!(tree.leaves, n.div_ceil(LEAF_CAP), "appended leaves are full");
        let Node::Inner(root) = &tree.root else { panic!("a tree of {n} is not one leaf") };
        assert!(matches!(root.children[0], Node::Inner(_)), "three levels");
        for i in (1..n).step_by(97) {
            let mut probe = key(i);
            probe.push(b'x');
            assert_eq!(
                tree.find_le(&probe).map(|(r, _)| r.start.as_bytes().to_vec()),
                Some(key(i))
            );
        }
        for i in 1..n {
            assert!(tree.remove(&key(i)).is_some(), "remove {i}");
            if i % 1000 == 0 {
                tree.check();
            }
        }
        tree.check();
        assert_eq!((tree.len(), tree.leaves), (1, 1));
    }

    #[test]
    fn joined_bits_shift_with_their_entries() {
        assert_eq!(insert_bit(0b1011, 2, true), 0b10111);
        assert_eq!(insert_bit(0b1011, 0, false), 0b10110);
        assert_eq!(remove_bit(0b10111, 2), 0b1011);
        assert_eq!(remove_bit(0b1, 0), 0);
    }
}
