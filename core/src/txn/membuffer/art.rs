//! An adaptive radix tree over a `Vec` arena, indexing keys to entry ids.
//!
//! The shape follows client-go's `internal/unionstore/art` (and the ART
//! paper): inner nodes branch on one key byte, carry a compressed path
//! prefix, and keep a separate "end" slot for the key that ends exactly at
//! the node (client-go's in-place leaf), so a key that is a prefix of another
//! needs no terminator byte. Leaves are lazy: a leaf holds a whole key (by id
//! into the [`KeyArena`]) and is split only when a second key needs its
//! place. Differences from client-go, all for simplicity without `unsafe`:
//! two node sizes instead of four (up to 16 sorted children, then a full
//! 256-slot table), the whole compressed prefix is stored in the node (inline
//! up to 8 bytes), and node references are `u32` indices instead of arena
//! addresses.
//!
//! Nothing is ever removed: the buffer keeps rolled-back keys indexed with a
//! vacant entry, as client-go's ART marks leaves deleted.

use std::ops::Bound;

use smallvec::SmallVec;

use super::arena::KeyArena;

/// No node / no child.
const NONE: u32 = u32::MAX;
/// Tag bit of a reference to a leaf; the rest is the entry id.
const LEAF: u32 = 1 << 31;
/// Ids must stay below this so that they can be tagged as leaves.
pub(crate) const MAX_IDS: usize = (LEAF - 1) as usize;
/// A node with more children than this switches to a full table.
const SMALL: usize = 16;

fn is_leaf(r: u32) -> bool {
    r != NONE && r & LEAF != 0
}

fn leaf_id(r: u32) -> u32 {
    r & !LEAF
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[derive(Debug, Clone)]
enum Kids {
    /// Up to [`SMALL`] children, sorted by byte.
    Small { n: u8, bytes: [u8; SMALL], refs: [u32; SMALL] },
    /// One slot per byte value, [`NONE`] where absent.
    Full(Box<[u32; 256]>),
}

impl Kids {
    fn new() -> Kids {
        Kids::Small { n: 0, bytes: [0; SMALL], refs: [NONE; SMALL] }
    }

    fn get(&self, b: u8) -> u32 {
        match self {
            Kids::Small { n, bytes, refs } => {
                for i in 0..*n as usize {
                    if bytes[i] == b {
                        return refs[i];
                    }
                }
                NONE
            }
            Kids::Full(t) => t[b as usize],
        }
    }

    /// Replaces the child under `b`, or adds it.
    fn put(&mut self, b: u8, r: u32) {
        match self {
            Kids::Small { n, bytes, refs } => {
                let len = *n as usize;
                let pos = bytes[..len].iter().position(|&x| x >= b).unwrap_or(len);
                if pos < len && bytes[pos] == b {
                    refs[pos] = r;
                    return;
                }
                if len < SMALL {
                    bytes.copy_within(pos..len, pos + 1);
                    refs.copy_within(pos..len, pos + 1);
                    bytes[pos] = b;
                    refs[pos] = r;
                    *n += 1;
                    return;
                }
                let mut t = Box::new([NONE; 256]);
                for i in 0..len {
                    t[bytes[i] as usize] = refs[i];
                }
                t[b as usize] = r;
                *self = Kids::Full(t);
            }
            Kids::Full(t) => t[b as usize] = r,
        }
    }

    /// Number of child positions (some may be empty in a full table).
    fn slots(&self) -> usize {
        match self {
            Kids::Small { n, .. } => *n as usize,
            Kids::Full(_) => 256,
        }
    }

    /// The child at position `i < slots()`.
    fn at(&self, i: usize) -> u32 {
        match self {
            Kids::Small { refs, .. } => refs[i],
            Kids::Full(t) => t[i],
        }
    }

    /// Position of the first child whose byte is `>= b`.
    fn lower(&self, b: u8) -> usize {
        match self {
            Kids::Small { n, bytes, .. } => {
                let len = *n as usize;
                bytes[..len].iter().position(|&x| x >= b).unwrap_or(len)
            }
            Kids::Full(_) => b as usize,
        }
    }

    /// Number of positions whose byte is `<= b`.
    fn upper(&self, b: u8) -> usize {
        match self {
            Kids::Small { n, bytes, .. } => {
                let len = *n as usize;
                bytes[..len].iter().position(|&x| x > b).unwrap_or(len)
            }
            Kids::Full(_) => b as usize + 1,
        }
    }
}

#[derive(Debug, Clone)]
struct Inner {
    /// Bytes every key below shares after the parent's branch byte.
    prefix: SmallVec<[u8; 8]>,
    /// The leaf whose key ends exactly after `prefix`.
    end: u32,
    kids: Kids,
}

impl Inner {
    fn new(prefix: &[u8]) -> Inner {
        Inner { prefix: SmallVec::from_slice(prefix), end: NONE, kids: Kids::new() }
    }

    /// Puts `r` (whose key is `key`) below this node, `depth` bytes of
    /// `key` being consumed once `prefix` is.
    fn place(&mut self, key: &[u8], depth: usize, r: u32) {
        match key.get(depth) {
            None => self.end = r,
            Some(&b) => self.kids.put(b, r),
        }
    }

    /// Slot `p` in key order: 0 is the end leaf, `p >= 1` child `p - 1`.
    fn slot(&self, p: usize) -> u32 {
        if p == 0 { self.end } else { self.kids.at(p - 1) }
    }
}

/// Where a reference lives, so an insert can replace it.
#[derive(Clone, Copy)]
enum Loc {
    Root,
    Child(u32, u8),
    End(u32),
}

/// An adaptive radix tree from keys to entry ids.
#[derive(Debug, Clone)]
pub(crate) struct ArtIndex {
    nodes: Vec<Inner>,
    root: u32,
    full_nodes: usize,
}

impl Default for ArtIndex {
    fn default() -> ArtIndex {
        ArtIndex { nodes: Vec::new(), root: NONE, full_nodes: 0 }
    }
}

impl ArtIndex {
    fn read(&self, loc: Loc) -> u32 {
        match loc {
            Loc::Root => self.root,
            Loc::Child(n, b) => self.nodes[n as usize].kids.get(b),
            Loc::End(n) => self.nodes[n as usize].end,
        }
    }

    fn write(&mut self, loc: Loc, r: u32) {
        match loc {
            Loc::Root => self.root = r,
            Loc::Child(n, b) => self.put_child(n, b, r),
            Loc::End(n) => self.nodes[n as usize].end = r,
        }
    }

    fn put_child(&mut self, n: u32, b: u8, r: u32) {
        let kids = &mut self.nodes[n as usize].kids;
        let was_small = matches!(kids, Kids::Small { .. });
        kids.put(b, r);
        if was_small && matches!(kids, Kids::Full(_)) {
            self.full_nodes += 1;
        }
    }

    fn alloc(&mut self, node: Inner) -> u32 {
        self.nodes.push(node);
        (self.nodes.len() - 1) as u32
    }

    /// The id of `key`, if indexed.
    pub(crate) fn find(&self, keys: &KeyArena, key: &[u8]) -> Option<u32> {
        let mut r = self.root;
        let mut depth = 0;
        loop {
            if r == NONE {
                return None;
            }
            if is_leaf(r) {
                let id = leaf_id(r);
                return (keys.get(id) == key).then_some(id);
            }
            let n = &self.nodes[r as usize];
            let rest = key.get(depth..).unwrap_or_default();
            if !rest.starts_with(&n.prefix) {
                return None;
            }
            depth += n.prefix.len();
            match key.get(depth) {
                None => r = n.end,
                Some(&b) => {
                    r = n.kids.get(b);
                    depth += 1;
                }
            }
        }
    }

    /// The id of `key`, inserting it into `keys` and the tree if new.
    pub(crate) fn find_or_insert(&mut self, keys: &mut KeyArena, key: &[u8]) -> (u32, bool) {
        let mut loc = Loc::Root;
        let mut depth = 0;
        loop {
            let r = self.read(loc);
            if r == NONE {
                // Only an empty root or an empty end slot is descended into
                // while empty; absent children are filled below.
                let id = keys.push(key);
                self.write(loc, id | LEAF);
                return (id, true);
            }
            if is_leaf(r) {
                let old = leaf_id(r);
                if keys.get(old) == key {
                    return (old, false);
                }
                // Lazy leaf meets a second key: a node with their common
                // prefix, both leaves below it.
                let id = keys.push(key);
                let old_key = keys.get(old);
                let c = common_prefix(&old_key[depth..], &key[depth..]);
                let mut node = Inner::new(&key[depth..depth + c]);
                node.place(old_key, depth + c, r);
                node.place(key, depth + c, id | LEAF);
                if matches!(node.kids, Kids::Full(_)) {
                    self.full_nodes += 1;
                }
                let ni = self.alloc(node);
                self.write(loc, ni);
                return (id, true);
            }
            let n = &self.nodes[r as usize];
            let c = common_prefix(&n.prefix, &key[depth..]);
            if c < n.prefix.len() {
                // The key leaves the compressed path: a new parent takes
                // the shared part, the old node keeps the rest.
                let id = keys.push(key);
                let mut parent = Inner::new(&n.prefix[..c]);
                let branch = n.prefix[c];
                let n = &mut self.nodes[r as usize];
                n.prefix = SmallVec::from_slice(&n.prefix[c + 1..]);
                parent.kids.put(branch, r);
                parent.place(key, depth + c, id | LEAF);
                let pi = self.alloc(parent);
                self.write(loc, pi);
                return (id, true);
            }
            depth += n.prefix.len();
            match key.get(depth) {
                None => {
                    if n.end == NONE {
                        let id = keys.push(key);
                        self.nodes[r as usize].end = id | LEAF;
                        return (id, true);
                    }
                    loc = Loc::End(r);
                }
                Some(&b) => {
                    if n.kids.get(b) == NONE {
                        let id = keys.push(key);
                        self.put_child(r, b, id | LEAF);
                        return (id, true);
                    }
                    loc = Loc::Child(r, b);
                    depth += 1;
                }
            }
        }
    }

    /// Approximate heap bytes of the nodes (spare capacity not counted;
    /// prefixes longer than the inline 8 bytes not counted either).
    pub(crate) fn mem(&self) -> usize {
        self.nodes.len() * std::mem::size_of::<Inner>()
            + self.full_nodes * std::mem::size_of::<[u32; 256]>()
    }
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    node: u32,
    /// Next slot to visit (see [`Inner::slot`]); walks down in reverse.
    next: isize,
}

/// Range iterator over an [`ArtIndex`]: a stack of positions, seeded by
/// descending along the starting bound, then filtered by both bounds (the
/// seek is exact on the path, the filter keeps the edges right).
pub(crate) struct ArtIter<'a> {
    art: &'a ArtIndex,
    keys: &'a KeyArena,
    stack: Vec<Frame>,
    /// A root that is a single leaf (no frame to hold it).
    pending: u32,
    lo: Bound<Box<[u8]>>,
    hi: Bound<Box<[u8]>>,
    rev: bool,
    /// The starting bound has been passed: later ids need no check against it.
    started: bool,
}

impl<'a> ArtIter<'a> {
    pub(crate) fn new(
        art: &'a ArtIndex,
        keys: &'a KeyArena,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        rev: bool,
    ) -> ArtIter<'a> {
        let own = |b: Bound<&[u8]>| b.map(Box::<[u8]>::from);
        let mut it = ArtIter {
            art,
            keys,
            stack: Vec::with_capacity(16),
            pending: NONE,
            lo: own(lo),
            hi: own(hi),
            rev,
            // Nothing to skip before an open start.
            started: matches!(if rev { hi } else { lo }, Bound::Unbounded),
        };
        if rev {
            match hi {
                Bound::Unbounded => it.seek_rev(None),
                Bound::Included(k) | Bound::Excluded(k) => it.seek_rev(Some(k)),
            }
        } else {
            match lo {
                Bound::Unbounded => it.seek_fwd(None),
                Bound::Included(k) | Bound::Excluded(k) => it.seek_fwd(Some(k)),
            }
        }
        it
    }

    fn push(&mut self, node: u32, next: isize) {
        self.stack.push(Frame { node, next });
    }

    /// Positions the stack at the first key `>= lo` (or a little before it).
    fn seek_fwd(&mut self, lo: Option<&[u8]>) {
        let mut r = self.art.root;
        if r == NONE {
            return;
        }
        if is_leaf(r) {
            self.pending = r;
            return;
        }
        let Some(lo) = lo else {
            self.push(r, 0);
            return;
        };
        let mut depth = 0;
        loop {
            let n = &self.art.nodes[r as usize];
            let seg = &lo[depth..];
            let c = common_prefix(&n.prefix, seg);
            if c < n.prefix.len() {
                // The bound leaves this node's path: the whole subtree is
                // either above it (visit all) or below it (visit none).
                if c == seg.len() || n.prefix[c] > seg[c] {
                    self.push(r, 0);
                }
                return;
            }
            depth += n.prefix.len();
            let Some(&b) = lo.get(depth) else {
                self.push(r, 0);
                return;
            };
            let i = n.kids.lower(b) as isize;
            let child = n.kids.get(b);
            if child != NONE && !is_leaf(child) {
                // Child `i` sits at slot `i + 1`; resume after it.
                self.push(r, i + 2);
                r = child;
                depth += 1;
                continue;
            }
            self.push(r, i + 1);
            return;
        }
    }

    /// Positions the stack at the last key `<= hi` (or a little after it).
    fn seek_rev(&mut self, hi: Option<&[u8]>) {
        let mut r = self.art.root;
        if r == NONE {
            return;
        }
        if is_leaf(r) {
            self.pending = r;
            return;
        }
        let last = |n: &Inner| n.kids.slots() as isize;
        let Some(hi) = hi else {
            let n = &self.art.nodes[r as usize];
            self.push(r, last(n));
            return;
        };
        let mut depth = 0;
        loop {
            let n = &self.art.nodes[r as usize];
            let seg = &hi[depth..];
            let c = common_prefix(&n.prefix, seg);
            if c < n.prefix.len() {
                if c < seg.len() && n.prefix[c] < seg[c] {
                    self.push(r, last(n));
                }
                return;
            }
            depth += n.prefix.len();
            let Some(&b) = hi.get(depth) else {
                // Only the end leaf (the bound itself) can qualify.
                self.push(r, 0);
                return;
            };
            let j = n.kids.upper(b) as isize;
            let child = n.kids.get(b);
            if child != NONE && !is_leaf(child) {
                // Child under `b` is the last one `<= b`, at slot `j`.
                self.push(r, j - 1);
                r = child;
                depth += 1;
                continue;
            }
            self.push(r, j);
            return;
        }
    }

    fn raw_next(&mut self) -> Option<u32> {
        if self.pending != NONE {
            let r = std::mem::replace(&mut self.pending, NONE);
            return Some(leaf_id(r));
        }
        loop {
            let f = self.stack.last_mut()?;
            let n = &self.art.nodes[f.node as usize];
            let mut found = NONE;
            if self.rev {
                while f.next >= 0 {
                    let r = n.slot(f.next as usize);
                    f.next -= 1;
                    if r != NONE {
                        found = r;
                        break;
                    }
                }
            } else {
                let total = n.kids.slots() as isize;
                while f.next <= total {
                    let r = n.slot(f.next as usize);
                    f.next += 1;
                    if r != NONE {
                        found = r;
                        break;
                    }
                }
            }
            if found == NONE {
                self.stack.pop();
            } else if is_leaf(found) {
                return Some(leaf_id(found));
            } else {
                let next =
                    if self.rev { self.art.nodes[found as usize].kids.slots() as isize } else { 0 };
                self.push(found, next);
            }
        }
    }
}

fn below(key: &[u8], lo: &Bound<Box<[u8]>>) -> bool {
    match lo {
        Bound::Unbounded => false,
        Bound::Included(l) => key < &**l,
        Bound::Excluded(l) => key <= &**l,
    }
}

fn above(key: &[u8], hi: &Bound<Box<[u8]>>) -> bool {
    match hi {
        Bound::Unbounded => false,
        Bound::Included(h) => key > &**h,
        Bound::Excluded(h) => key >= &**h,
    }
}

impl Iterator for ArtIter<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        loop {
            let id = self.raw_next()?;
            // A full scan (or one whose start is passed and whose far end is
            // open) needs no key: skip fetching it, it is a cache miss.
            let far = if self.rev { &self.lo } else { &self.hi };
            if self.started && matches!(far, Bound::Unbounded) {
                return Some(id);
            }
            let key = self.keys.get(id);
            let (skip, stop) = if self.rev {
                (!self.started && above(key, &self.hi), below(key, &self.lo))
            } else {
                (!self.started && below(key, &self.lo), above(key, &self.hi))
            };
            if skip {
                continue;
            }
            if stop {
                self.stack.clear();
                return None;
            }
            self.started = true;
            return Some(id);
        }
    }
}
