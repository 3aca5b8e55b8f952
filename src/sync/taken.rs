//! The addresses taken in one run of the diff, for duplicate detection: the one structure of a
//! sync whose memory grows with the number of members, kept to 16 bytes a slot. Each address is
//! held as a 64-bit keyed hash (SipHash with this process's random keys, so no one can choose an
//! address to collide with another's), beside the member who took it: an integer key as itself,
//! any other key as an offset into one growing text buffer.
//!
//! Open addressing with linear probing in two parallel vectors, at most 80% full; sized up front
//! from what the state DB holds, so a resync of an unchanged audience never grows it.

use std::hash::{BuildHasher, RandomState};

use crate::domain::MemberKey;

/// An empty slot (a real hash of 0 is stored as 1).
const EMPTY: u64 = 0;
/// Marks a member reference as an offset into `text_keys` rather than an integer key.
const TEXT: u64 = 1 << 63;
const MIN_SLOTS: usize = 1024;

pub(super) struct TakenAddresses {
    hasher: RandomState,
    hashes: Vec<u64>,
    members: Vec<u64>,
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
            hashes: vec![EMPTY; slots],
            members: vec![0; slots],
            len: 0,
            text_keys: Vec::new(),
        }
    }

    /// Takes `address` (identity form) for `member`, or returns the member who took it first.
    pub(super) fn take(&mut self, address: &str, member: &MemberKey) -> Option<MemberKey> {
        let hash = self.hash(address);
        let mut i = self.slot(hash);
        loop {
            match self.hashes[i] {
                EMPTY => break,
                h if h == hash => return Some(self.member(self.members[i])),
                _ => i = (i + 1) % self.hashes.len(),
            }
        }
        let reference = self.reference(member);
        self.hashes[i] = hash;
        self.members[i] = reference;
        self.len += 1;
        if self.len * 5 > self.hashes.len() * 4 {
            self.grow();
        }
        None
    }

    fn hash(&self, address: &str) -> u64 {
        self.hasher.hash_one(address).max(1)
    }

    /// The home slot of a hash: its high bits scaled to the table (no power-of-two size needed).
    fn slot(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.hashes.len() as u128) >> 64) as usize
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
        let slots = self.hashes.len() * 2;
        let hashes = std::mem::replace(&mut self.hashes, vec![EMPTY; slots]);
        let members = std::mem::replace(&mut self.members, vec![0; slots]);
        for (hash, member) in hashes.into_iter().zip(members) {
            if hash == EMPTY {
                continue;
            }
            let mut i = self.slot(hash);
            while self.hashes[i] != EMPTY {
                i = (i + 1) % slots;
            }
            self.hashes[i] = hash;
            self.members[i] = member;
        }
    }
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
        assert!(t.hashes.len() > slots_for(10));
        for i in 0..n {
            assert_eq!(
                t.take(&format!("m{i}@x.org"), &MemberKey::from_int(n + i)),
                Some(MemberKey::from_int(i))
            );
        }
    }
}
