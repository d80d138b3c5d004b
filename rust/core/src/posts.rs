//! The post -> cluster map: which cluster each live post belongs to, so that a
//! reshare (which carries no content) joins its parent's cluster and a
//! takedown its target's.
//!
//! It holds one entry per live post (a banked cluster's node, an unbanked
//! cluster's post), so it is sized for millions:
//!
//! - a post id is kept as its bytes: up to 15 bytes inline, with its
//!   cluster's slot, in a 20-byte entry and no allocation, and a longer
//!   decimal id (a 64-bit number's digits: 16 to 20 of them) inline as its
//!   value; any other on the heap, in a table of its own. Not a digest: a
//!   resolve partition's snapshot lists its posts, and a registration for
//!   another partition carries the id. The entries are a dense array, found
//!   through a hash table of their 4-byte indexes: the table's load (7/8 at
//!   most, under half just past a doubling) costs 5 bytes a bucket, not an
//!   entry's 21 (20-byte entries in the table were 44 B a post at a million,
//!   24-byte ones 52 B);
//! - a cluster id is interned once, with the count of posts that hold it, and
//!   freed with its last post: the map is bounded by the live clusters'
//!   posts, as eviction forgets them ([`PostClusters::remove`]). It is kept
//!   compact ([`ClusterId`]: `x-` and 16 hex digits as a letter and 64 bits),
//!   found by a keyed 64-bit hash of its text, and its text is made where a
//!   caller asks for it: 24 bytes a cluster and a table entry, where an
//!   interned string, its Python string and a table keyed by it took about 190
//!   (60 B a live post at 3 posts a cluster, `bench/bench_core.py`).
//!
//! A resolve partition of the streaming worker keeps only its own posts (the
//! partition of a post is [`partition_for`], `zlib.crc32` of its id, as
//! `streams.stages.partition_for` says): a post of another partition is not
//! kept, its registration is queued for its own partition
//! ([`PostClusters::take_foreign`]), marked if it is a released event's (see
//! [`Foreign`]); the posts added are recorded for the partition's state log
//! ([`PostClusters::take_new`]).
//!
//! [`Resolver`] joins the map and the held orphans ([`crate::route::Orphans`]):
//! routing a reshare is one lookup, and registering a post releases, in the
//! router's order, every held reshare whose chain of parents waited for it.
//!
//! ```
//! use viralwatch_core::posts::PostClusters;
//! let mut posts: PostClusters<()> = PostClusters::new();
//! assert!(posts.register(b"p1", "b-1", |_| ()));
//! assert!(!posts.register(b"p1", "b-2", |_| ())); // the first cluster stays
//! assert_eq!(posts.cluster_of(b"p1").as_deref(), Some("b-1"));
//! assert!(posts.remove(b"p1") && posts.is_empty() && posts.clusters() == 0);
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

pub use crate::content::ClusterId;
use crate::content::{hash_of, AsCid, Cid, IdSlots};
use crate::keyed::Keyed;
use crate::prefetch::{prefetch, prefetch_ref};
use crate::route::{Orphans, Refusal};

/// CRC-32 (IEEE 802.3, zlib's) of `data`.
///
/// ```
/// assert_eq!(viralwatch_core::posts::crc32(b"123456789"), 0xCBF4_3926);
/// ```
pub fn crc32(data: &[u8]) -> u32 {
    static ZLIB: [[u32; 256]; 8] = crate::crc::tables8(0xEDB8_8320);
    !crate::crc::update8(&ZLIB, !0, data)
}

/// The partition of an internal topic that `key` belongs to: `crc32(key) % partitions`.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    crc32(key) % partitions.max(1)
}

/// The longest post id kept inline in the map's table (a longer decimal id, a 64-bit
/// number's digits, is kept inline as its value).
pub const SHORT_ID: usize = 15;

/// Ids read ahead together at most ([`IdTable::warm_many`]: their keys and hashes on the stack).
const WARM_MAX: usize = 64;

/// A post id as the table keys it: its length then its bytes (zeros after them), or, for a
/// decimal id longer than [`SHORT_ID`] that a `u64` holds (digits only, no leading zero),
/// [`NUMERIC`] then the value's 8 bytes. One form for each id, so equal ids have equal keys.
type ShortKey = [u8; SHORT_ID + 1];
const NUMERIC: u8 = 0xFF;

/// The key of `id`, if it is kept inline.
fn short_key(id: &[u8]) -> Option<ShortKey> {
    let mut key = [0_u8; SHORT_ID + 1];
    if id.len() <= SHORT_ID {
        key[0] = id.len() as u8;
        key[1..=id.len()].copy_from_slice(id);
        return Some(key);
    }
    if id.len() > 20 || id[0] == b'0' {
        return None;
    }
    let mut value = 0_u64;
    for &c in id {
        if !c.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    key[0] = NUMERIC;
    key[1..9].copy_from_slice(&value.to_le_bytes());
    Some(key)
}

/// The id a key was made of.
fn key_id(key: &ShortKey) -> Cow<'_, [u8]> {
    if key[0] == NUMERIC {
        let value = u64::from_le_bytes(key[1..9].try_into().expect("8 bytes"));
        Cow::Owned(value.to_string().into_bytes())
    } else {
        Cow::Borrowed(&key[1..=key[0] as usize])
    }
}

/// A short post id with its cluster's slot: 20 bytes (the entries are most of a live
/// post's cost in the map), looked up by its key.
#[derive(Clone, Copy)]
struct Short {
    key: ShortKey,
    slot: u32,
}

/// Post id -> cluster slot: short ids inline, long ones boxed (see the module doc). The
/// short ones are a dense array of 20-byte entries, found through a table of their 4-byte
/// indexes: at hashbrown's load (7/8 at most, half that just past a doubling) a table of
/// the entries themselves took 21 bytes a bucket, 44 B a post at a million.
#[derive(Default)]
struct IdTable {
    entries: Vec<Short>,
    index: hashbrown::HashTable<u32>,
    hasher: Keyed,
    long: HashMap<Box<[u8]>, u32, Keyed>,
}

impl IdTable {
    fn len(&self) -> usize {
        self.entries.len() + self.long.len()
    }

    fn hash(&self, key: &ShortKey) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    /// The index of the entry keyed `key`.
    fn find(&self, key: &ShortKey) -> Option<u32> {
        let entries = &self.entries;
        self.index
            .find(self.hash(key), |&i| entries[i as usize].key == *key)
            .copied()
    }

    /// Read ahead the look-ups of `ids` (see [`PostClusters::warm_many`]), in passes over
    /// them all, each pass's reads independent of one another so that their cache misses
    /// overlap: every id's first bucket (its control bytes read, its index slot hinted),
    /// then the entry that slot names (hinted), then the entry read and the cluster slot of
    /// a match hinted in `slots`. A look-up's three misses are dependent, one after the
    /// other, so a look-up read ahead whole still waited for each in turn. Nothing changes
    /// (a hint on a wrong bucket, 1 in 128, costs a read).
    fn warm_many<C>(&self, ids: &[&[u8]], slots: &[C], found: &mut Vec<u32>) {
        for ids in ids.chunks(WARM_MAX) {
            let mut keys = [[0_u8; SHORT_ID + 1]; WARM_MAX];
            let mut hashes = [0_u64; WARM_MAX];
            let mut n = 0;
            for id in ids {
                if let Some(key) = short_key(id) {
                    (keys[n], hashes[n]) = (key, self.hash(&key));
                    n += 1;
                }
            }
            let (keys, hashes) = (&keys[..n], &hashes[..n]);
            for &h in hashes {
                if let Some(i) = self.index.iter_hash(h).next() {
                    prefetch_ref(i);
                }
            }
            for &h in hashes {
                if let Some(&i) = self.index.iter_hash(h).next() {
                    prefetch(&self.entries, i as usize);
                }
            }
            for (key, &h) in keys.iter().zip(hashes) {
                let entries = &self.entries;
                if let Some(&i) = self.index.find(h, |&i| entries[i as usize].key == *key) {
                    let s = entries[i as usize].slot;
                    prefetch(slots, s as usize);
                    found.push(s);
                }
            }
        }
    }

    fn get(&self, id: &[u8]) -> Option<u32> {
        match short_key(id) {
            Some(key) => self.find(&key).map(|i| self.entries[i as usize].slot),
            None => self.long.get(id).copied(),
        }
    }

    /// Add `id` (not there yet) with `slot`.
    fn insert(&mut self, id: &[u8], slot: u32) {
        match short_key(id) {
            Some(key) => {
                let i = u32::try_from(self.entries.len()).expect("under 2^32 posts");
                self.entries.push(Short { key, slot });
                let (entries, hasher) = (&self.entries, &self.hasher);
                self.index.insert_unique(self.hash(&key), i, |&j| {
                    use std::hash::BuildHasher;
                    hasher.hash_one(entries[j as usize].key)
                });
            }
            None => {
                self.long.insert(id.into(), slot);
            }
        }
    }

    fn remove(&mut self, id: &[u8]) -> Option<u32> {
        let slot = match short_key(id) {
            Some(key) => self.remove_short(&key),
            None => self.long.remove(id),
        }?;
        // a flood gone leaves its table's room behind: give most of it back
        let n = self.entries.len();
        if self.entries.capacity() > 4 * n.max(1024) || n == 0 {
            self.entries.shrink_to(2 * n);
            let (entries, hasher) = (&self.entries, &self.hasher);
            self.index.shrink_to(2 * n, |&j| {
                use std::hash::BuildHasher;
                hasher.hash_one(entries[j as usize].key)
            });
        }
        if self.long.capacity() > 4 * self.long.len().max(1024) || self.long.is_empty() {
            self.long.shrink_to(2 * self.long.len());
        }
        Some(slot)
    }

    /// Take the entry keyed `key` out: the last entry moves into its place.
    fn remove_short(&mut self, key: &ShortKey) -> Option<u32> {
        let hash = self.hash(key);
        let entries = &self.entries;
        let i = self
            .index
            .find_entry(hash, |&i| entries[i as usize].key == *key)
            .ok()?
            .remove()
            .0;
        let last = (self.entries.len() - 1) as u32;
        if i != last {
            let moved = self.hash(&self.entries[last as usize].key);
            *self
                .index
                .find_mut(moved, |&j| j == last)
                .expect("every entry is indexed") = i;
        }
        Some(self.entries.swap_remove(i as usize).slot)
    }

    fn iter(&self) -> impl Iterator<Item = (Cow<'_, [u8]>, u32)> {
        self.entries
            .iter()
            .map(|s| (key_id(&s.key), s.slot))
            .chain(self.long.iter().map(|(k, &s)| (Cow::Borrowed(&**k), s)))
    }

    fn heap_bytes(&self) -> usize {
        let long: usize = self.long.keys().map(|k| k.len()).sum();
        self.entries.capacity() * std::mem::size_of::<Short>()
            + self.index.capacity() * 5
            + self.long.capacity() * (std::mem::size_of::<(Box<[u8]>, u32)>() + 1)
            + long
    }
}

struct Cluster<T> {
    id: ClusterId,
    /// posts mapped to it (its slot is freed at 0)
    posts: u32,
    extra: T,
}

/// The posts a partition kept since its log last took them, in order, each with its
/// cluster ([`PostClusters::take_new`]): the ids end to end in one buffer and each one's
/// end and compact cluster id, where a boxed id and the cluster id's text were two
/// allocations a post (the log writes the text from the compact id).
#[derive(Debug, Default)]
pub struct NewPosts {
    bytes: Vec<u8>,
    posts: Vec<(usize, Cid)>,
}

impl NewPosts {
    fn push(&mut self, post: &[u8], cluster: Cid) {
        self.bytes.extend_from_slice(post);
        self.posts.push((self.bytes.len(), cluster));
    }

    pub fn len(&self) -> usize {
        self.posts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.posts.is_empty()
    }

    /// Each post's id and cluster, in the order kept.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Cid)> + '_ {
        let starts = std::iter::once(0).chain(self.posts.iter().map(|&(end, _)| end));
        starts
            .zip(&self.posts)
            .map(|(start, (end, c))| (&self.bytes[start..*end], c))
    }
}

/// A registration queued for another partition: the post's partition, the post, its
/// cluster, and whether it is a released event's that a replacement would not route again
/// (held before a checkpoint began and released since: a reshare whose parent came, an
/// unbanked upload the index's owner clustered; an event a log read back kept held). The
/// streaming worker copies only those to the receiver's topic: a sender whose log says the
/// event is released does not register its post again, and the input that brought it may
/// be committed, where an event held and released since the checkpoint began, or routed
/// at once, is routed again from the input a replacement reads again
/// (`streams.runtime.topology.Topology._copy_handed`).
pub type Foreign = (u32, Box<[u8]>, Arc<str>, bool);

/// Post -> cluster, clusters interned (see the module doc). `T` is what a
/// caller keeps beside each cluster id (the bindings: its Python string).
pub struct PostClusters<T> {
    posts: IdTable,
    clusters: Vec<Option<Cluster<T>>>,
    free: Vec<u32>,
    /// cluster id -> slot
    by_id: IdSlots,
    /// `(partition, partitions)`: keep only this partition's posts
    own: Option<(u32, u32)>,
    new: NewPosts,
    foreign: Vec<Foreign>,
    /// whether the posts registered now are released events' (see [`Foreign`]): set by
    /// [`Resolver::register`] for what a post released that was held before the orphans'
    /// last seal, and by a caller routing held events (the index's owner clustering an
    /// upload held before its seal, a partition routing what its log kept held)
    pub released: bool,
}

impl<T> Default for PostClusters<T> {
    fn default() -> Self {
        Self {
            posts: IdTable::default(),
            clusters: Vec::new(),
            free: Vec::new(),
            by_id: IdSlots::default(),
            own: None,
            new: NewPosts::default(),
            foreign: Vec::new(),
            released: false,
        }
    }
}

impl<T> PostClusters<T> {
    /// A map keeping every post (replay's).
    pub fn new() -> Self {
        Self::default()
    }

    /// A resolve partition's map: its own posts kept (and recorded), the others' queued.
    pub fn partition(partition: u32, partitions: u32) -> Self {
        Self {
            own: Some((partition, partitions.max(1))),
            ..Self::default()
        }
    }

    /// Posts held.
    pub fn len(&self) -> usize {
        self.posts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.posts.len() == 0
    }

    /// Distinct clusters the posts belong to.
    pub fn clusters(&self) -> usize {
        self.by_id.len()
    }

    /// Whether this map keeps `post` (always, unless it is a partition's).
    pub fn is_local(&self, post: &[u8]) -> bool {
        match self.own {
            None => true,
            Some((p, n)) => partition_for(post, n) == p,
        }
    }

    fn slot(&self, s: u32) -> &Cluster<T> {
        self.clusters[s as usize]
            .as_ref()
            .expect("a live cluster's slot")
    }

    /// The cluster of `post` (its id and what the caller keeps with it).
    pub fn get(&self, post: &[u8]) -> Option<(&ClusterId, &T)> {
        let c = self.slot(self.posts.get(post)?);
        Some((&c.id, &c.extra))
    }

    /// Read ahead the way to each of `posts`' clusters (their buckets, entries and cluster
    /// slots: [`IdTable::warm_many`]), so that their look-ups soon find them in cache (see
    /// [`Resolver::warm_many`]), then the buckets of those clusters' ids (a reshare
    /// registers its post with its cluster). Their keyed hashes ([`hash_of`]) go into
    /// `clusters`, for the tables the events reach next. Nothing changes.
    pub fn warm_many(&self, posts: &[&[u8]], clusters: &mut Vec<u64>) {
        let mut found = Vec::with_capacity(posts.len());
        self.posts.warm_many(posts, &self.clusters, &mut found);
        let start = clusters.len();
        for s in found {
            if let Some(Some(c)) = self.clusters.get(s as usize) {
                clusters.push(hash_of(&c.id));
            }
        }
        for &h in &clusters[start..] {
            self.by_id.prefetch_bucket(h);
        }
    }

    /// The id of `post`'s cluster, as text.
    pub fn cluster_of(&self, post: &[u8]) -> Option<String> {
        self.get(post).map(|(id, _)| id.to_string())
    }

    pub fn contains(&self, post: &[u8]) -> bool {
        self.posts.get(post).is_some()
    }

    /// What the caller keeps with `cluster`, if a post holds it.
    pub fn extra_of(&self, cluster: &(impl AsCid + ?Sized)) -> Option<&T> {
        self.find(cluster).map(|s| &self.slot(s).extra)
    }

    /// The slot of a live `cluster`.
    fn find(&self, cluster: &(impl AsCid + ?Sized)) -> Option<u32> {
        self.by_id.find(&cluster.as_cid(), id_in(&self.clusters))
    }

    /// The slot of `cluster`, interned now if new (`make` gives what is kept with it).
    fn intern(&mut self, cluster: &(impl AsCid + ?Sized), make: impl FnOnce(&str) -> T) -> u32 {
        let cluster = cluster.as_cid();
        if let Some(s) = self.find(&*cluster) {
            return s;
        }
        let c = Cluster {
            id: cluster.to_id(),
            posts: 0,
            extra: cluster.with_str(make),
        };
        let s = match self.free.pop() {
            Some(s) => {
                self.clusters[s as usize] = Some(c);
                s
            }
            None => {
                self.clusters.push(Some(c));
                (self.clusters.len() - 1) as u32
            }
        };
        self.by_id.insert(&cluster, s, id_in(&self.clusters));
        s
    }

    fn unref(&mut self, s: u32) {
        let c = self.clusters[s as usize]
            .as_mut()
            .expect("a live cluster's slot");
        c.posts -= 1;
        if c.posts == 0 {
            let gone = self.clusters[s as usize].take().expect("just seen");
            self.by_id.remove(&gone.id, s);
            self.free.push(s);
            if self.clusters() == 0 {
                *self = Self {
                    posts: std::mem::take(&mut self.posts),
                    own: self.own,
                    new: std::mem::take(&mut self.new),
                    foreign: std::mem::take(&mut self.foreign),
                    released: self.released,
                    ..Self::default()
                };
            } else if self.by_id.capacity() > 4 * self.by_id.len().max(1024) {
                self.trim();
            }
        }
    }

    /// Give back the room of clusters gone (after a flood): the interning table's, and
    /// the free slots at the end of the slots.
    fn trim(&mut self) {
        self.by_id.shrink(id_in(&self.clusters));
        while matches!(self.clusters.last(), Some(None)) {
            self.clusters.pop();
        }
        let live = self.clusters.len() as u32;
        self.free.retain(|&s| s < live);
        self.clusters.shrink_to(2 * self.clusters.len());
        self.free.shrink_to(2 * self.free.len());
    }

    /// Map `post` to `cluster` unless it is mapped already (kept without recording it:
    /// a state log read back, or a test). `false` if it was there.
    pub fn insert(
        &mut self,
        post: &[u8],
        cluster: &(impl AsCid + ?Sized),
        make: impl FnOnce(&str) -> T,
    ) -> bool {
        if self.contains(post) {
            return false;
        }
        let s = self.intern(cluster, make);
        self.clusters[s as usize]
            .as_mut()
            .expect("a live cluster's slot")
            .posts += 1;
        self.posts.insert(post, s);
        true
    }

    /// Map `post` to `cluster`, replacing what it had.
    pub fn set(
        &mut self,
        post: &[u8],
        cluster: &(impl AsCid + ?Sized),
        make: impl FnOnce(&str) -> T,
    ) {
        self.remove(post);
        self.insert(post, cluster, make);
    }

    /// `post` was routed to `cluster`: kept unless mapped already (and, in a partition's
    /// map, recorded for its log); a post of another partition is queued for it instead
    /// (marked [`Self::released`] as the map is now). `true` if it was kept now.
    pub fn register(
        &mut self,
        post: &[u8],
        cluster: &(impl AsCid + ?Sized),
        make: impl FnOnce(&str) -> T,
    ) -> bool {
        if let Some((p, n)) = self.own {
            let home = partition_for(post, n);
            if home != p {
                let id = self.interned_or_new(cluster);
                self.foreign.push((home, post.into(), id, self.released));
                return false;
            }
        }
        if !self.insert(post, cluster, make) {
            return false;
        }
        if self.own.is_some() {
            self.new.push(post, cluster.as_cid().into_owned());
        }
        true
    }

    /// `cluster` as the queues keep it (they are taken at each batch: not interned).
    fn interned_or_new(&self, cluster: &(impl AsCid + ?Sized)) -> Arc<str> {
        cluster.as_cid().with_str(|s| Arc::from(s))
    }

    /// Forget `post` (its cluster evicted); `false` if it was not there.
    pub fn remove(&mut self, post: &[u8]) -> bool {
        let Some(s) = self.posts.remove(post) else {
            return false;
        };
        self.unref(s);
        true
    }

    /// The posts kept since the last call, in order, with their clusters (a partition's).
    pub fn take_new(&mut self) -> NewPosts {
        std::mem::take(&mut self.new)
    }

    /// Posts of other partitions routed here since the last call: `(their partition,
    /// post, cluster, released)` ([`Foreign`]), in order.
    pub fn take_foreign(&mut self) -> Vec<Foreign> {
        std::mem::take(&mut self.foreign)
    }

    /// Every post with its cluster, by post id (bytes): the same order whatever the
    /// order they came in.
    pub fn items(&self) -> Vec<(Cow<'_, [u8]>, &ClusterId, &T)> {
        let mut out: Vec<_> = self
            .posts
            .iter()
            .map(|(k, s)| {
                let c = self.slot(s);
                (k, &c.id, &c.extra)
            })
            .collect();
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Bytes the map holds on the heap (tables at capacity, long ids, cluster ids).
    pub fn heap_bytes(&self) -> usize {
        let texts: usize = self
            .clusters
            .iter()
            .flatten()
            .map(|c| match &c.id {
                ClusterId::Text(t) => 16 + t.len(),
                ClusterId::Hex(..) => 0,
            })
            .sum();
        self.posts.heap_bytes()
            + self.clusters.capacity() * std::mem::size_of::<Option<Cluster<T>>>()
            + self.by_id.capacity() * 5
            + texts
    }
}

/// The id a live slot of `clusters` holds.
fn id_in<'a, T>(clusters: &'a [Option<Cluster<T>>]) -> impl Fn(u32) -> &'a ClusterId + 'a {
    |s| {
        &clusters[s as usize]
            .as_ref()
            .expect("a live cluster's slot")
            .id
    }
}

/// What routing a reshare or a takedown gave (see [`Resolver::route`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Routed<E> {
    /// Its target's cluster is known: the cluster, and (a reshare) what its post released
    /// (to the same cluster).
    Found(Cid, Vec<E>),
    /// Held until its target is routed.
    Held,
    /// Not held (see [`Refusal`]).
    Refused(Refusal),
}

/// The router's state: the post -> cluster map and the held orphans (events
/// `E`), so that a reshare is routed, or held, in one call.
pub struct Resolver<T, E> {
    pub posts: PostClusters<T>,
    pub orphans: Orphans<E>,
}

impl<T, E> Resolver<T, E> {
    pub fn new(posts: PostClusters<T>) -> Self {
        Self {
            posts,
            orphans: Orphans::new(),
        }
    }

    /// Read ahead what routing reshares and takedowns reads first: `posts` are their targets
    /// and their own posts (a new post's place, or the post). Replay calls it for a few
    /// dozen events before their turn, so that the misses of their look-ups overlap rather
    /// than queue, each behind its event's work ([`PostClusters::warm_many`]); nothing
    /// changes.
    pub fn warm_many(&self, posts: &[&[u8]], clusters: &mut Vec<u64>) {
        self.posts.warm_many(posts, clusters);
    }

    /// Route a reshare of `post` (`share`) or a takedown of `target`: joined to its
    /// target's cluster, or held (or refused) until the target is routed. A reshare
    /// routed registers its post ([`Self::register`]).
    #[allow(clippy::too_many_arguments)]
    pub fn route(
        &mut self,
        target: &[u8],
        post: &[u8],
        share: bool,
        ts_ms: i64,
        item: E,
        max_held: usize,
        make: impl FnMut(&str) -> T,
    ) -> Routed<E> {
        let Some((cluster, _)) = self.posts.get(target) else {
            return match self
                .orphans
                .hold(target, post, share, ts_ms, item, max_held)
            {
                Ok(()) => Routed::Held,
                Err(r) => Routed::Refused(r),
            };
        };
        // the cluster read once, here (its hash): every table the event reaches finds it by this
        let cluster = Cid::from_id(cluster.clone());
        drop(item);
        let released = if share {
            self.register(post, &cluster, make)
        } else {
            Vec::new()
        };
        Routed::Found(cluster, released)
    }

    /// `post` was routed to `cluster`: kept (see [`PostClusters::register`]), and what
    /// waited for it released with its cluster, then what waited for those (a reshare's
    /// own post), depth first: the last released is the next registered, as the Python
    /// router's stack did. A released one's post is queued marked released ([`Foreign`])
    /// if it was held before the orphans' last seal ([`Orphans::seal`]: a replacement would
    /// not release it again), or if the map is marked now; `post`'s as the map is marked.
    pub fn register(
        &mut self,
        post: &[u8],
        cluster: &Cid,
        mut make: impl FnMut(&str) -> T,
    ) -> Vec<E> {
        // the post itself first, with no copy of it: most posts release nothing
        self.posts.register(post, cluster, &mut make);
        let first = self.orphans.release_with_posts(post);
        if first.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut stack: Vec<(Box<[u8]>, bool)> = Vec::new();
        let mut released = first;
        let ambient = self.posts.released;
        loop {
            for (child, own, before) in released {
                if let Some(own) = own {
                    stack.push((own, before));
                }
                out.push(child);
            }
            let Some((p, before)) = stack.pop() else {
                break;
            };
            self.posts.released = ambient || before;
            self.posts.register(&p, cluster, &mut make);
            released = self.orphans.release_with_posts(&p);
        }
        self.posts.released = ambient;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_ahead_changes_no_answer() {
        let mut m: PostClusters<()> = PostClusters::new();
        let long = vec![b'x'; 100];
        let ids: Vec<Vec<u8>> = (0..300)
            .map(|i| format!("p{i}").into_bytes())
            .chain([long.clone(), b"12345678901234567".to_vec(), Vec::new()])
            .collect();
        for (i, id) in ids.iter().enumerate().step_by(2) {
            assert!(m.insert(id, &format!("c{}", i % 7), |_| ()));
        }
        let before: Vec<Option<String>> = ids.iter().map(|id| m.cluster_of(id)).collect();
        let asked: Vec<&[u8]> = ids.iter().map(Vec::as_slice).collect();
        let mut clusters = Vec::new();
        // more than one pass's worth, missing and boxed ids among them
        m.warm_many(&asked, &mut clusters);
        m.warm_many(&[], &mut clusters);
        assert_eq!(clusters.len(), 151); // the kept ids' clusters but the boxed one's
        let after: Vec<Option<String>> = ids.iter().map(|id| m.cluster_of(id)).collect();
        assert_eq!(before, after);
        assert_eq!(after.iter().flatten().count(), 152); // every other id of 303 kept
        assert_eq!(after[300].as_deref(), Some("c6")); // the long id, boxed
        assert_eq!(after[301].as_deref(), None); // the numeric one, not kept
        assert_eq!(after[302].as_deref(), Some("c1"));
        assert_eq!(after[298].as_deref(), Some("c4"));
        assert_eq!(m.len(), 152);
    }

    #[test]
    fn keys_short_long_and_numeric_are_found_by_their_bytes() {
        assert_eq!(std::mem::size_of::<Short>(), 20);
        let mut m: PostClusters<()> = PostClusters::new();
        let long = vec![b'x'; 100];
        let ids: [&[u8]; 12] = [
            b"",
            b"p",
            &[b'a'; 15],
            &[b'a'; 16],
            &long,
            b"1234567890123456789", // a 64-bit number's digits: inline, as its value
            b"18446744073709551615", // u64::MAX
            b"18446744073709551616", // past it: boxed
            b"0123456789012345678", // a leading zero: boxed (not the value's digits)
            b"9999999999999999",
            b"99999999999999999999",
            b"123456789012345a",
        ];
        for id in ids {
            assert!(m.insert(id, "c", |_| ()));
            assert_eq!(m.cluster_of(id).as_deref(), Some("c"), "{id:?}");
        }
        assert_eq!((m.len(), m.clusters()), (ids.len(), 1));
        assert!(!m.contains(&[b'a'; 14]) && !m.contains(&[b'a'; 17]));
        assert!(!m.contains(b"123456789012345678") && !m.contains(b"01234567890123456789"));
        let mut want: Vec<Vec<u8>> = ids.iter().map(|id| id.to_vec()).collect();
        want.sort();
        let got: Vec<Vec<u8>> = m.items().iter().map(|(k, _, _)| k.to_vec()).collect();
        assert_eq!(got, want); // every id back as given, in bytes order
        for id in &ids[5..] {
            assert!(m.remove(id) && !m.remove(id));
        }
        assert!(m.remove(&long) && m.remove(&[b'a'; 15]) && !m.remove(&long));
        assert_eq!(m.len(), 3);
        let keys: Vec<Vec<u8>> = m.items().iter().map(|(k, _, _)| k.to_vec()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn clusters_are_interned_and_freed_with_their_last_post() {
        let mut m: PostClusters<u32> = PostClusters::new();
        let mut made = 0;
        for i in 0..10 {
            m.insert(format!("p{i}").as_bytes(), &format!("c{}", i % 3), |_| {
                made += 1;
                made
            });
        }
        assert_eq!((made, m.clusters()), (3, 3));
        for i in (0..10).step_by(3) {
            assert!(m.remove(format!("p{i}").as_bytes())); // c0's posts
        }
        assert_eq!(m.clusters(), 2);
        assert!(!m.remove(b"p0"));
        m.insert(b"q", "c9", |_| 99);
        assert_eq!(
            m.get(b"q").map(|(c, &x)| (c.to_string(), x)),
            Some(("c9".into(), 99))
        );
        m.set(b"q", "c1", |_| 0);
        assert_eq!(m.cluster_of(b"q").as_deref(), Some("c1"));
        assert_eq!(m.clusters(), 2); // c9 gone with its post
    }

    #[test]
    fn the_dense_table_agrees_with_a_map_over_adds_and_removes() {
        // entries move as others are taken out: every lookup must still find its own
        let mut t = IdTable::default();
        let mut model: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut x = 12_345_u64;
        for step in 0..60_000u32 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let id = match x >> 62 {
                0 => format!("p{}", (x >> 40) % 5_000).into_bytes(),
                1 => format!("{}", 10_u64.pow(17) + (x >> 40) % 5_000).into_bytes(),
                _ => format!("post-with-a-long-id-{}", (x >> 40) % 3_000).into_bytes(),
            };
            if (x >> 20) % 3 == 0 {
                assert_eq!(t.remove(&id), model.remove(&id), "step {step}");
            } else if !model.contains_key(&id) {
                t.insert(&id, step);
                model.insert(id.clone(), step);
            }
            assert_eq!(t.get(&id), model.get(&id).copied());
            assert_eq!(t.len(), model.len());
        }
        for (id, slot) in &model {
            assert_eq!(t.get(id), Some(*slot));
        }
        let listed: HashMap<Vec<u8>, u32> = t.iter().map(|(k, s)| (k.into_owned(), s)).collect();
        assert_eq!(listed, model);
        let ids: Vec<Vec<u8>> = model.keys().cloned().collect();
        for id in ids {
            assert!(t.remove(&id).is_some());
        }
        assert_eq!((t.len(), t.entries.capacity()), (0, 0));
    }

    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn a_partition_keeps_its_own_posts_and_queues_the_others() {
        let mut m: PostClusters<()> = PostClusters::partition(0, 2);
        let (mut own, mut other) = (Vec::new(), Vec::new());
        for i in 0..20 {
            let p = format!("p{i}").into_bytes();
            if partition_for(&p, 2) == 0 {
                own.push(p);
            } else {
                other.push(p);
            }
        }
        for p in own.iter().chain(&other) {
            m.register(p, "b-1", |_| ());
        }
        m.register(&own[0], "b-2", |_| ()); // kept already: not recorded again
        assert_eq!(m.len(), own.len());
        let taken = m.take_new();
        let new: Vec<Vec<u8>> = taken.iter().map(|(k, _)| k.to_vec()).collect();
        assert_eq!(new, own);
        assert!(taken.iter().all(|(_, c)| c.to_string() == "b-1"));
        let foreign = m.take_foreign();
        assert_eq!(foreign.len(), other.len());
        assert!(foreign
            .iter()
            .all(|(p, _, c, r)| *p == 1 && &**c == "b-1" && !r));
        assert!(m.take_new().is_empty() && m.take_foreign().is_empty());
    }

    #[test]
    fn a_released_events_post_is_queued_marked_released() {
        // partition 0 of 2: a parent of its own, reshares whose posts are partition 1's
        let mut r: Resolver<(), &str> = Resolver::new(PostClusters::partition(0, 2));
        let ids: Vec<Vec<u8>> = (0..40).map(|i| format!("p{i}").into_bytes()).collect();
        let parent = ids.iter().find(|p| partition_for(p, 2) == 0).expect("one");
        let mut others = ids.iter().filter(|p| partition_for(p, 2) == 1);
        let (a, b, c) = (
            others.next().expect("one"),
            others.next().expect("two"),
            others.next().expect("three"),
        );
        // a waits for the parent, from before a checkpoint; d waits since (released, not
        // marked: a replacement would read its input again); b finds the parent at once
        let d = others.next().expect("four");
        assert_eq!(r.route(parent, a, true, 1, "a", 10, |_| ()), Routed::Held);
        r.orphans.seal();
        assert_eq!(r.route(parent, d, true, 1, "d", 10, |_| ()), Routed::Held);
        assert_eq!(r.register(parent, &Cid::of("u-1"), |_| ()), ["a", "d"]);
        assert!(!r.posts.released); // the caller's mark is back
        assert!(matches!(
            r.route(parent, b, true, 2, "b", 10, |_| ()),
            Routed::Found(_, ref released) if released.is_empty()
        ));
        // a caller routing held events (a partition read back from its log) marks the map
        r.posts.released = true;
        r.posts.register(c, &Cid::of("u-1"), |_| ());
        r.posts.released = false;
        let queued: Vec<(Vec<u8>, bool)> = (r.posts.take_foreign().into_iter())
            .map(|(home, post, _, released)| {
                assert_eq!(home, 1);
                (post.to_vec(), released)
            })
            .collect();
        // (depth first: the last released is registered first)
        let want = [
            (d.clone(), false),
            (a.clone(), true),
            (b.clone(), false),
            (c.clone(), true),
        ];
        assert_eq!(queued, want);
    }

    #[test]
    fn registering_releases_chains_depth_first() {
        let mut r: Resolver<(), &str> = Resolver::new(PostClusters::new());
        // s2 reshares p1, s3 reshares s2, t takes p1 down, s4 reshares p1: all held
        for (t, p, share, ts, e) in [
            (b"p1", b"s2", true, 1, "s2"),
            (b"s2", b"s3", true, 2, "s3"),
            (b"p1", b"p1", false, 3, "t"),
            (b"p1", b"s4", true, 4, "s4"),
        ] {
            assert_eq!(r.route(t, p, share, ts, e, 10, |_| ()), Routed::Held);
        }
        let c = Cid::of("u-1");
        let out = r.register(b"p1", &c, |_| ());
        // released in the order held; s4's post (pushed last) registered first, then s2's
        assert_eq!(out, ["s2", "t", "s4", "s3"]);
        assert_eq!(r.posts.len(), 4);
        assert!(r.orphans.is_empty());
        match r.route(b"s3", b"s5", true, 5, "s5", 10, |_| ()) {
            Routed::Found(c, released) => assert!(c.to_string() == "u-1" && released.is_empty()),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r.route(b"x", b"s5", true, 6, "s6", 0, |_| ()),
            Routed::Refused(Refusal::Overflow { held: 0 })
        );
    }
}
