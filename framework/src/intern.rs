//! Series-name interning: each partition maps series names to dense `u32` ids so that
//! per-window and per-series state can live in flat vectors indexed by id.

use crate::record::SeriesId;

const EMPTY: u32 = u32::MAX;

/// Open-addressing string interner: about 50 bytes per series including the name.
#[derive(Debug, Default)]
pub struct Interner {
    names: Vec<Box<str>>,
    slots: Vec<u32>,
}

impl Interner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, id: SeriesId) -> &str {
        &self.names[id as usize]
    }

    pub fn get(&self, name: &str) -> Option<SeriesId> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = hash(name.as_bytes()) as usize & mask;
        loop {
            let id = self.slots[i];
            if id == EMPTY {
                return None;
            }
            if &*self.names[id as usize] == name {
                return Some(id);
            }
            i = (i + 1) & mask;
        }
    }

    /// Returns the id of `name`, assigning the next id if it is new.
    #[inline]
    pub fn intern(&mut self, name: &str) -> SeriesId {
        if (self.names.len() + 1) * 10 > self.slots.len() * 7 {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = hash(name.as_bytes()) as usize & mask;
        loop {
            let id = self.slots[i];
            if id == EMPTY {
                let new_id = self.names.len() as u32;
                self.names.push(name.into());
                self.slots[i] = new_id;
                return new_id;
            }
            if &*self.names[id as usize] == name {
                return id;
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let capacity = (self.slots.len() * 2).max(64);
        self.slots = vec![EMPTY; capacity];
        let mask = capacity - 1;
        for (id, name) in self.names.iter().enumerate() {
            let mut i = hash(name.as_bytes()) as usize & mask;
            while self.slots[i] != EMPTY {
                i = (i + 1) & mask;
            }
            self.slots[i] = id as u32;
        }
    }
}

/// FxHash-style multiply-rotate hash over 8-byte words; series names are short, trusted
/// to be spread by the producer's partitioner already, and never attacker-chosen per slot.
#[inline]
fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h: u64 = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
    }
    // Final avalanche so the low bits used for the slot index depend on every byte.
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_dense() {
        let mut interner = Interner::new();
        let names: Vec<String> = (0..10_000).map(|i| format!("node-{i}/cpu.user")).collect();
        for (i, name) in names.iter().enumerate() {
            assert_eq!(interner.intern(name), i as u32);
        }
        for (i, name) in names.iter().enumerate() {
            assert_eq!(interner.intern(name), i as u32);
            assert_eq!(interner.get(name), Some(i as u32));
            assert_eq!(interner.name(i as u32), name);
        }
        assert_eq!(interner.get("absent"), None);
        assert_eq!(interner.len(), names.len());
    }
}
