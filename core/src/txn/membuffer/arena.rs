//! The key bytes of a [`super::MemBuffer`], by dense entry id: shared by
//! both key indexes ([`super::art::ArtIndex`] and the `BTreeMap` baseline).

/// Bytes of keys stored inline in their slot; longer keys go to the
/// shared byte arena.
const INLINE: usize = 28;

/// One key: inline bytes, or (for long keys) the offset into
/// [`KeyArena::long`]. 32 bytes, so a key lookup is one cache line.
#[derive(Debug, Clone, Copy)]
struct KeySlot {
    len: u32,
    data: [u8; INLINE],
}

/// Key bytes of every entry, indexed by dense id. Keys up to 28 bytes (TiDB
/// record keys are 19) live inline in a slot, so reading a key during a tree
/// descent or an iteration costs one cache miss and no per-key allocation;
/// longer keys are appended to one shared byte vector.
#[derive(Debug, Default, Clone)]
pub(crate) struct KeyArena {
    slots: Vec<KeySlot>,
    long: Vec<u8>,
}

impl KeyArena {
    /// Appends a key and returns its id.
    pub(crate) fn push(&mut self, key: &[u8]) -> u32 {
        let id = self.slots.len() as u32;
        let mut slot = KeySlot { len: key.len() as u32, data: [0; INLINE] };
        if key.len() <= INLINE {
            slot.data[..key.len()].copy_from_slice(key);
        } else {
            slot.data[..8].copy_from_slice(&(self.long.len() as u64).to_le_bytes());
            self.long.extend_from_slice(key);
        }
        self.slots.push(slot);
        id
    }

    /// The key with id `id` (ids come from [`KeyArena::push`] only).
    pub(crate) fn get(&self, id: u32) -> &[u8] {
        let slot = &self.slots[id as usize];
        let len = slot.len as usize;
        if len <= INLINE {
            &slot.data[..len]
        } else {
            let mut off = [0u8; 8];
            off.copy_from_slice(&slot.data[..8]);
            let off = u64::from_le_bytes(off) as usize;
            &self.long[off..off + len]
        }
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Heap bytes the keys take, spare capacity not counted.
    pub(crate) fn used_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<KeySlot>() + self.long.len()
    }
}
