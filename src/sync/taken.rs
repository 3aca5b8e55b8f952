//! The addresses taken in one run of the diff, for duplicate detection: the one structure of a
//! sync whose memory grows with the number of members, kept to 16 bytes a slot. Each address is
//! held as a 64-bit keyed hash (SipHash with this process's random keys, so no one can choose an
//! address to collide with another's), beside the member who took it: an integer key as itself,
//! any other key as an offset into one growing text buffer.
//!
//! Open addressing with linear probing, at most 80% full; sized up front from what the state DB
//! holds, so a resync of an unchanged audience never grows it. Before a first sync the state DB
//! holds nothing, and not every member row takes an address (invalid, duplicate, not in the
//! audience): given the number of rows to come, the table's first growth sizes it for the share
//! of rows that took an address so far, instead of doubling until it fits (which held the old
//! slots beside the new ones, and ended up to twice the size needed). A slot holds the hash beside its
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
    /// The member rows the run will read, when known ([`TakenAddresses::expect_rows`]).
    rows_expected: Option<usize>,
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
            rows_expected: None,
        }
    }

    /// Tells the table how many member rows the run will read: its growth then forecasts how
    /// many addresses they will take.
    pub(super) fn expect_rows(&mut self, rows: usize) {
        self.rows_expected = Some(rows);
    }

    /// Takes `address` (identity form) for `member`, or returns the member who took it first.
    /// `rows_seen` is how many member rows the run has read so far (this one included).
    pub(super) fn take(
        &mut self,
        address: &str,
        member: &MemberKey,
        rows_seen: usize,
    ) -> Option<MemberKey> {
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
            self.resize(self.grown(rows_seen));
        }
        None
    }

    /// The size to grow to: double, or, with the rows to come known, room for the addresses they
    /// are forecast to take at the rate so far, with a sixteenth to spare.
    fn grown(&self, rows_seen: usize) -> usize {
        let double = self.slots.len() * 2;
        let Some(rows) = self.rows_expected.filter(|r| *r > rows_seen) else {
            return double;
        };
        let forecast =
            (self.len as u128 * rows as u128 / rows_seen.max(1) as u128).min(rows as u128) as usize;
        slots_for(forecast + forecast / 16).max(self.slots.len() + self.slots.len() / 4)
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

    fn resize(&mut self, size: usize) {
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
            assert_eq!(t.take(&format!("a{i}@x.org"), &key(k), i + 1), None);
        }
        for (i, k) in ["7", "M-17", "-3", "007", "ü-key"].iter().enumerate() {
            assert_eq!(
                t.take(&format!("a{i}@x.org"), &key("99"), 6 + i).as_ref(),
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
                t.take(
                    &format!("m{i}@x.org"),
                    &MemberKey::from_int(i),
                    i as usize + 1
                ),
                None
            );
        }
        assert!(t.slots.len() > slots_for(10));
        for i in 0..n {
            assert_eq!(
                t.take(
                    &format!("m{i}@x.org"),
                    &MemberKey::from_int(n + i),
                    (n + i) as usize + 1
                ),
                Some(MemberKey::from_int(i))
            );
        }
    }

    /// Rows `0..rows`, every `share`-th taking an address; returns the table.
    fn fill(rows: usize, share: usize, expected: Option<usize>) -> TakenAddresses {
        let mut t = TakenAddresses::with_capacity(0);
        if let Some(e) = expected {
            t.expect_rows(e);
        }
        for i in (0..rows).filter(|i| i % share == 0) {
            let member = MemberKey::from_int(i as i64);
            assert_eq!(t.take(&format!("m{i}@x.org"), &member, i + 1), None);
        }
        t
    }

    #[test]
    fn with_the_rows_known_it_grows_to_the_forecast_once() {
        let rows = 200_000;
        // A third of the rows take an address: about 66,667 addresses.
        let forecast = fill(rows, 3, Some(rows));
        let doubled = fill(rows, 3, None);
        assert_eq!(forecast.len, doubled.len);
        let needed = slots_for(forecast.len);
        assert!(forecast.slots.len() >= needed);
        assert!(
            forecast.slots.len() < needed + needed / 8,
            "{} slots for {} addresses",
            forecast.slots.len(),
            forecast.len
        );
        assert!(forecast.slots.len() < doubled.slots.len());
        // Everything taken is still found.
        let mut t = forecast;
        for i in (0..rows).filter(|i| i % 3 == 0) {
            let later = MemberKey::from_int((rows + i) as i64);
            assert_eq!(
                t.take(&format!("m{i}@x.org"), &later, rows),
                Some(MemberKey::from_int(i as i64))
            );
        }
    }

    #[test]
    fn a_forecast_too_low_still_grows() {
        // The first rows take few addresses, the later ones all: the forecast falls short, and
        // the table grows again as it fills.
        let rows = 50_000;
        let mut t = TakenAddresses::with_capacity(0);
        t.expect_rows(rows);
        for i in 0..rows {
            if i < rows / 2 && i % 10 != 0 {
                continue;
            }
            let member = MemberKey::from_int(i as i64);
            assert_eq!(t.take(&format!("m{i}@x.org"), &member, i + 1), None);
        }
        assert!(t.len * 5 <= t.slots.len() * 4);
        assert_eq!(
            t.take("m0@x.org", &MemberKey::from_int(-1), rows),
            Some(MemberKey::from_int(0))
        );
    }
}
