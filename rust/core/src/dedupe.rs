//! Duplicate event ids: the ids a cluster has applied, kept as 128-bit keyed
//! hashes rather than as strings.
//!
//! Kafka delivers at least once, so the same event can reach a cluster twice;
//! the detector applies it once. What it must remember per live event is only
//! "this id was applied here", so each id is kept as 16 bytes: SipHash-1-3's
//! 128-bit output under a secret key drawn once per process.
//!
//! Why a collision cannot matter. Two distinct ids are confused only if they
//! agree on all 128 bits. The ids compared are those of one live cluster, so
//! for a cluster holding `n` ids the chance that any two agree is at most
//! `n² / 2¹²⁹`: 1.5e-21 for a billion. The key is random per process and
//! never leaves it (no hash is logged or sent: a restarted worker rebuilds the
//! sets from the ids in its state log), so an id cannot be chosen to collide
//! with another, and a collision that did happen would not outlive the
//! process. Its whole effect would be one share counted as a duplicate
//! (`Stats.duplicates`): nothing fails.
//!
//! ```
//! use viralwatch_core::dedupe::EventIdSet;
//! let mut ids = EventIdSet::new();
//! assert!(ids.insert(b"e1") && !ids.insert(b"e1"));
//! assert!(ids.contains(b"e1") && !ids.contains(b"e2"));
//! assert_eq!(ids.len(), 1);
//! ```

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::OnceLock;

use siphasher::sip128::SipHasher13;

/// The process's secret SipHash key, drawn from the OS's randomness (through
/// the standard library's `RandomState`) the first time an id is hashed.
fn hasher() -> &'static SipHasher13 {
    static KEY: OnceLock<SipHasher13> = OnceLock::new();
    KEY.get_or_init(|| {
        let seed = RandomState::new();
        SipHasher13::new_with_keys(seed.hash_one(0_u8), seed.hash_one(1_u8))
    })
}

/// The 128-bit keyed digest an id is kept as.
pub fn id_digest(id: &[u8]) -> u128 {
    hasher().hash(id).as_u128()
}

/// The table's own hash of a digest: its low 64 bits, already uniform (a
/// digest hashed again would cost a second SipHash for nothing).
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // only u128 digests are hashed (below); any other input still gets a fair hash
        for chunk in bytes.chunks(8) {
            let mut word = [0_u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).rotate_left(29);
        }
    }

    fn write_u128(&mut self, digest: u128) {
        self.0 = digest as u64;
    }
}

type Digests = HashSet<u128, BuildHasherDefault<DigestHasher>>;

/// The ids one cluster has applied (see the module's docs).
#[derive(Default, Clone, PartialEq, Eq, Debug)]
pub struct EventIdSet {
    digests: Digests,
}

impl EventIdSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `id`; `false` if it was here already.
    pub fn insert(&mut self, id: &[u8]) -> bool {
        self.digests.insert(id_digest(id))
    }

    /// Add an id already hashed ([`id_digest`]); `false` if it was here already.
    pub fn insert_digest(&mut self, digest: u128) -> bool {
        self.digests.insert(digest)
    }

    pub fn contains(&self, id: &[u8]) -> bool {
        self.digests.contains(&id_digest(id))
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Add a batch of ids in order: for each, whether it was new (an id twice
    /// in the batch is new the first time only).
    pub fn insert_many<'a>(&mut self, ids: impl IntoIterator<Item = &'a [u8]>) -> Vec<bool> {
        ids.into_iter().map(|id| self.insert(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_new_once() {
        let mut ids = EventIdSet::new();
        assert_eq!(
            ids.insert_many([&b"a"[..], b"b", b"a", b"", b"b", b""]),
            [true, true, false, true, false, false]
        );
        assert_eq!(ids.len(), 3);
        assert!(ids.contains(b"") && ids.contains(b"a") && !ids.contains(b"c"));
    }

    #[test]
    fn digests_are_stable_within_the_process_and_tell_ids_apart() {
        assert_eq!(id_digest(b"e1"), id_digest(b"e1"));
        let many: HashSet<u128> = (0..100_000_u32)
            .map(|i| id_digest(format!("e{i}").as_bytes()))
            .collect();
        assert_eq!(many.len(), 100_000);
        // prefixes and lengths are not confused
        assert_ne!(id_digest(b"e1"), id_digest(b"e1\0"));
    }

    #[test]
    fn sets_of_the_same_ids_are_equal_whatever_the_order() {
        let mut a = EventIdSet::new();
        let mut b = EventIdSet::new();
        a.insert_many([&b"x"[..], b"y", b"z"]);
        b.insert_many([&b"z"[..], b"x", b"y", b"x"]);
        assert_eq!(a, b);
        b.insert(b"w");
        assert_ne!(a, b);
    }

    #[test]
    fn the_table_hash_of_other_input_still_spreads() {
        let mut h = DigestHasher::default();
        h.write(b"abcdefghij");
        let mut g = DigestHasher::default();
        g.write(b"abcdefghik");
        assert_ne!(h.finish(), g.finish());
    }
}
