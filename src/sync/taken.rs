//! The addresses taken in one run of the diff, for duplicate detection: the one structure of a
//! sync whose memory grows with the number of members, kept to 16 bytes a slot. Each address is
//! held as a 64-bit keyed hash (SipHash with this process's random keys, so no one can choose an
//! address to collide with another's), beside the member who took it: an integer key as itself,
//! any other key as an offset into one growing text buffer.
//!
//! Open addressing with linear probing, at most 80% full; sized up front from what the state DB
//! holds, so a resync of an unchanged audience never grows it. A slot holds the hash beside its
//! member, so a lookup touches one cache line: the table of a large audience is far bigger than
//! the caches, and a resync of 1,000,000 spent 15% of its planning thread here with the two in
//! separate vectors.

use std::hash::{BuildHasher, RandomState};

use crate::domain::MemberKey;

/// An empty slot (a real hash of 0 is stored as 1).
const EMPTY: u64 = 0;
/// Marks a member reference as an offset into `text_keys` rather than an integer key.
const TEXT: u64 = 1 << 63;
const MIN_SLOTS: usize = 1024;

pub(super) struct TakenAddresses {
    hasher: RandomState,
    /// Each slot: the address's hash (`EMPTY` when free) and the member who took it.
    slots: Vec<[u64; 2]>,
    len: usize,
    /// Keys that are not non-negative integers, each as a little-endian u32 length and its bytes.
    text_keys: Vec<u8>,
}

impl TakenAddresses {
    /// A table that holds `expected` addresses without growing.
    pub(super) fn with_capacity(expected: usize) -> TakenAddresses {
        let slots = slots_for(expected);
        TakenAddresses {
            hasher: RandomState::new(),
            slots: vec![[EMPTY, 0]; slots],
            len: 0,
            text_keys: Vec::new(),
        }
    }

    /// Takes `address` (identity form) for `member`, or returns the member who took it first.
    pub(super) fn take(&mut self, address: &str, member: &MemberKey) -> Option<MemberKey> {
        let hash = self.hash(address);
        let mut i = self.slot(hash);
        loop {
            match self.slots[i] {
                [EMPTY, _] => break,
                [h, m] if h == hash => return Some(self.member(m)),
                _ => i = next(i, self.slots.len()),
            }
        }
        let reference = self.reference(member);
        self.slots[i] = [hash, reference];
        self.len += 1;
        if self.len * 5 > self.slots.len() * 4 {
            self.grow();
        }
        None
    }

    fn hash(&self, address: &str) -> u64 {
        self.hasher.hash_one(address).max(1)
    }

    /// The home slot of a hash: its high bits scaled to the table (no power-of-two size needed).
    fn slot(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.slots.len() as u128) >> 64) as usize
    }

    fn reference(&mut self, member: &MemberKey) -> u64 {
        if let Some(n) = member.as_int().and_then(|n| u64::try_from(n).ok()) {
            return n;
        }
        let offset = self.text_keys.len() as u64;
        let key = member.as_str().as_bytes();
        // A key longer than 4 GiB cannot come out of a database row.
        self.text_keys
            .extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_le_bytes());
        self.text_keys.extend_from_slice(key);
        TEXT | offset
    }

    fn member(&self, reference: u64) -> MemberKey {
        let fallback = || MemberKey::from_int(0);
        if reference & TEXT == 0 {
            return i64::try_from(reference).map_or_else(|_| fallback(), MemberKey::from_int);
        }
        let at = (reference & !TEXT) as usize;
        let Some(len) = self
            .text_keys
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
        else {
            return fallback();
        };
        self.text_keys
            .get(at + 4..at + 4 + u32::from_le_bytes(len) as usize)
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(MemberKey::parse)
            .unwrap_or_else(fallback)
    }

    fn grow(&mut self) {
        let size = self.slots.len() * 2;
        let old = std::mem::replace(&mut self.slots, vec![[EMPTY, 0]; size]);
        for [hash, member] in old {
            if hash == EMPTY {
                continue;
            }
            let mut i = self.slot(hash);
            while self.slots[i][0] != EMPTY {
                i = next(i, size);
            }
            self.slots[i] = [hash, member];
        }
    }
}

/// The slot after `i`, wrapping (without a division: probing is on the hot path).
fn next(i: usize, len: usize) -> usize {
    if i + 1 == len { 0 } else { i + 1 }
}

fn slots_for(expected: usize) -> usize {
    (expected.saturating_mul(5) / 4 + 1).max(MIN_SLOTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> MemberKey {
        MemberKey::parse(k).unwrap()
    }

    #[test]
    fn the_first_member_keeps_an_address_whatever_its_key() {
        let mut t = TakenAddresses::with_capacity(0);
        for (i, k) in ["7", "M-17", "-3", "007", "ü-key"].iter().enumerate() {
            assert_eq!(t.take(&format!("a{i}@x.org"), &key(k)), None);
        }
        for (i, k) in ["7", "M-17", "-3", "007", "ü-key"].iter().enumerate() {
            assert_eq!(
                t.take(&format!("a{i}@x.org"), &key("99")).as_ref(),
                Some(&key(k))
            );
        }
    }

    #[test]
    fn grows_past_its_size_and_forgets_nothing() {
        let mut t = TakenAddresses::with_capacity(10);
        let n = 5000;
        for i in 0..n {
            assert_eq!(
                t.take(&format!("m{i}@x.org"), &MemberKey::from_int(i)),
                None
            );
        }
        assert!(t.slots.len() > slots_for(10));
        for i in 0..n {
            assert_eq!(
                t.take(&format!("m{i}@x.org"), &MemberKey::from_int(n + i)),
                Some(MemberKey::from_int(i))
            );
        }
    }
}
