//! The keyed hash of the keys users choose (post ids, cluster ids, PDQ hashes), for the
//! core's hash tables: foldhash, keyed at random from the operating system.
//!
//! Why not SipHash (the standard library's `RandomState`, which these tables used): it
//! was about a tenth of a platform replay's instructions (4,200 an event of 43,000,
//! callgrind: 23 keys of 8 to 32 bytes hashed an event, and each table's keys again at
//! every doubling), and foldhash hashes such a key in a few multiplications.
//!
//! Why it still resists a flood of colliding keys: foldhash's output depends on a
//! 64-bit seed per table and a shared seed (expanded from 64 bits), both drawn here from the standard
//! library's `RandomState` (the operating system's randomness), not from foldhash's own
//! global seed (addresses and time). To make keys collide an attacker must know the
//! seeds; nothing hashed leaves the process (no hash is logged, written or used for an
//! order anything depends on: the goldens are the same whatever the seeds), so the
//! seeds can be learnt only from timing, through a Kafka pipeline that batches. That is
//! foldhash's own claim ("minimally DoS-resistant": safe against an attacker who can
//! see neither hashes nor seeds); an event id, whose 128-bit digest must not collide at
//! all, keeps SipHash (`dedupe.rs`). The flood tests (`tests/test_core_posts.py`,
//! `test_core_route.py`, `test_core_unbanked.py`) keep the tables' memory bounded.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::OnceLock;

use foldhash::fast::{FoldHasher, SeedableRandomState};
use foldhash::SharedSeed;

/// 64 bits of the operating system's randomness, through the standard library.
fn os_random() -> u64 {
    RandomState::new().hash_one(0_u8)
}

fn shared() -> &'static SharedSeed {
    static SHARED: OnceLock<SharedSeed> = OnceLock::new();
    SHARED.get_or_init(|| SharedSeed::from_u64(os_random()))
}

/// A table's hasher (see the module doc): its own seed, the process's shared one.
#[derive(Clone, Debug)]
pub struct Keyed(SeedableRandomState);

impl Default for Keyed {
    fn default() -> Self {
        Self(SeedableRandomState::with_seed(os_random(), shared()))
    }
}

impl BuildHasher for Keyed {
    type Hasher = FoldHasher<'static>;

    #[inline]
    fn build_hasher(&self) -> FoldHasher<'static> {
        self.0.build_hasher()
    }
}

/// The process's one table-less hasher, drawn once: for a hash computed once and carried to
/// every table it is looked up in (a cluster id's, `content`'s `id_hasher`), and for tables
/// that keep no hasher of their own (a large unbanked cluster's post index).
pub fn process_hasher() -> &'static Keyed {
    static KEY: OnceLock<Keyed> = OnceLock::new();
    KEY.get_or_init(Keyed::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_table_has_its_own_key_and_a_key_hashes_alike() {
        let (a, b) = (Keyed::default(), Keyed::default());
        assert_eq!(a.hash_one("p1"), a.clone().hash_one("p1"));
        assert_ne!(a.hash_one("p1"), b.hash_one("p1"));
        assert_ne!(a.hash_one("p1"), a.hash_one("p2"));
    }
}
