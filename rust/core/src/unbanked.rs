//! Unbanked clusters' detector state: content no bank knows, most of a
//! platform's traffic, kept as compact records rather than one Python object
//! per post.
//!
//! An unbanked cluster never alerts. The detector keeps, per cluster, only
//! what the review queue, retroaction and the views read: its posts (id,
//! parent, user, event time, still up), the event times within the velocity
//! horizon, the ids of the events applied (16-byte keyed digests, as
//! [`crate::dedupe`]), the reshares and takedowns waiting for a post of the
//! cluster that has not come yet, when it was first and last seen, and
//! whether (and when) it met each velocity rule: the crossing that puts it on
//! the review queue. Idle clusters are evicted least recently used first, as
//! the detector's single order of clusters (banked ones included, kept by the
//! caller) says: every touch takes a number from [`Store::next_seq`], and
//! [`Store::evict`] stops at the caller's oldest cluster (`barrier`).
//!
//! A cluster's lists live in one allocation ([`Lists`]): its event-id digests
//! while few, its event times within the horizon, its posts (a 12-byte record
//! each), their ids' and users' texts and its signals; a cluster of more than
//! [`INDEX_FROM`] posts also gets a hash index of its post ids (a 4-byte post
//! index a bucket) and where each post's text starts.
//!
//! The rules applied are those of `streams.detector.Detector` for a cluster
//! that is not banked, in the same order, so the Python it replaces gives
//! the same figures, crossings, rejections and evictions.
//!
//! ```
//! use viralwatch_core::unbanked::{Event, Kind, Outcome, Rule, Store};
//! let rules = vec![Rule { severity: 0, window_ms: 60_000, shares: 2 }];
//! let mut store: Store<&str> = Store::new(rules, 1_200_000, 3_600_000);
//! let mut out = Outcome::default();
//! let up = Event { event_id: b"e0", kind: Kind::Upload, ts_ms: 0, post: b"p0", user: b"u0", parent: None };
//! let share = Event { event_id: b"e1", kind: Kind::Share, ts_ms: 5, post: b"p1", user: b"u1", parent: Some(b"p0") };
//! store.apply("u-1", &up, "e0", &mut out);
//! store.apply("u-1", &share, "e1", &mut out);
//! store.apply("u-1", &share, "e1", &mut out); // a copy: applied once
//! assert_eq!((out.duplicates, out.crossings.len(), store.size("u-1")), (1, 1, Some(2)));
//! ```

use std::collections::HashSet;
use std::hash::BuildHasherDefault;
use std::ops::Range;

use crate::content::{AsCid, AsSignal, BadSignal, ClusterId, IdSlots, Kind as SignalKind};
use crate::dedupe::{id_digest, DigestHasher};
use crate::event::same_id;
use crate::hex;
use crate::pdq::{self, Hash};
use crate::slab::Slab;

/// The longest horizon a store keeps event times for ([`Store::new`]): within it, a
/// cluster's times fit in 32 bits from one another.
pub const MAX_HORIZON_MS: i64 = u32::MAX as i64;

/// A post index meaning "none" (an upload's parent, an empty list's end).
const NONE: u32 = u32::MAX;
/// Posts a cluster holds before its post ids get a hash index (below: a scan).
pub const INDEX_FROM: usize = 12;
/// Event ids a cluster holds before they get a hash set (below: a scan).
const ID_SET_FROM: usize = 24;

type DigestSet = HashSet<u128, BuildHasherDefault<DigestHasher>>;

/// An event id's digest as a cluster's lists keep it: its low word, then its high one
/// (word-aligned: see [`Lists::ALIGN`]).
type Stored = [u64; 2];

fn stored(digest: u128) -> Stored {
    [digest as u64, (digest >> 64) as u64]
}

fn digest_of(s: Stored) -> u128 {
    u128::from(s[0]) | u128::from(s[1]) << 64
}

/// A cluster's lists, by section: the digests of the event ids it applied (while few: see
/// [`Cluster::insert_id`]), its event times within the horizon (sorted), its posts, and
/// their text (then its signals).
const IDS: usize = 0;
const TIMES: usize = 1;
const POSTS: usize = 2;
const TEXT: usize = 3;
/// Bytes an item of each section takes ([`Stored`], `u32`, [`Post`], `u8`: no padding in
/// any).
/// An event time is 4 bytes: an offset from its cluster's [`Cluster::times_base`].
const ITEM: [usize; 4] = [16, 4, 12, 1];

/// A cluster's four lists in one allocation, one after another, each with room of its own
/// (40 bytes in the record): four `Vec`s each had an allocation of their own, whose
/// header and rounding up (a glibc chunk is the size plus 8 rounded up to 16, 32 at the
/// least) cost more than their contents in the clusters of a post or three most are (27
/// bytes a post resident beyond the heap, measured with the chunk sizes counted). The
/// sections are in order of alignment (8, 4, 4, 1), so each is aligned after those before.
/// A section that grows moves those after it; a length or room past `u32` is refused (a
/// panic, which the bindings catch): no cluster comes near it.
struct Lists {
    ptr: std::ptr::NonNull<u8>,
    len: [u32; 4],
    cap: [u32; 4],
}

// SAFETY: Lists owns its allocation, which holds plain values only.
unsafe impl Send for Lists {}
unsafe impl Sync for Lists {}

impl Default for Lists {
    fn default() -> Self {
        Self {
            ptr: std::ptr::NonNull::<u64>::dangling().cast(),
            len: [0; 4],
            cap: [0; 4],
        }
    }
}

/// A value's bytes: only for the sections' item types, which have no padding.
fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: `v` is a valid `T`, readable for its size; the types used have no padding
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

impl Lists {
    /// A word's: the digests are kept as two words ([`Stored`]), not as `u128` (16-byte
    /// aligned). Why: the extension's allocator asks mimalloc's aligned calls of a block
    /// aligned past a word, and a cluster's lists grow one item at a time while small
    /// (the memory's rule): the aligned `realloc` was 225 instructions a growth, most of
    /// the growth's cost (callgrind, a platform replay: 19,311 growths in 56,754 events).
    const ALIGN: usize = 8;

    fn offset(cap: &[u32; 4], s: usize) -> usize {
        (0..s).map(|i| cap[i] as usize * ITEM[i]).sum()
    }

    fn layout(cap: &[u32; 4]) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(Self::offset(cap, 4), Self::ALIGN)
            .expect("a cluster's lists within isize")
    }

    /// Heap bytes.
    fn bytes(&self) -> usize {
        Self::offset(&self.cap, 4)
    }

    fn len(&self, s: usize) -> usize {
        self.len[s] as usize
    }

    /// Section `s`, typed (`T` its item type).
    fn get<T: Copy>(&self, s: usize) -> &[T] {
        debug_assert_eq!(std::mem::size_of::<T>(), ITEM[s]);
        // SAFETY: the section's first `len` items are initialised `T`s, aligned (see the
        // type's doc), inside the allocation (or none, at an aligned dangling pointer)
        unsafe {
            let at = self.ptr.as_ptr().add(Self::offset(&self.cap, s));
            std::slice::from_raw_parts(at.cast::<T>(), self.len(s))
        }
    }

    fn get_mut<T: Copy>(&mut self, s: usize) -> &mut [T] {
        debug_assert_eq!(std::mem::size_of::<T>(), ITEM[s]);
        // SAFETY: as `get`, and `&mut self` is the only access
        unsafe {
            let at = self.ptr.as_ptr().add(Self::offset(&self.cap, s));
            std::slice::from_raw_parts_mut(at.cast::<T>(), self.len(s))
        }
    }

    /// Section `s` with room for `cap` items (at least its length).
    fn set_cap(&mut self, s: usize, cap: usize) {
        let mut new = self.cap;
        new[s] = u32::try_from(cap).expect("a cluster's list past 2^32 items");
        self.relayout(new);
    }

    /// Room for `more[s]` items more in each section `s`, in one allocation made anew:
    /// exactly, or doubled (as a `Vec` grows) unless `exact`.
    fn reserve(&mut self, more: [usize; 4], exact: bool) {
        self.reserve_each(more, [exact; 4]);
    }

    /// The room for `need` items in a section of `cap`: exactly `need` if `exact`, else
    /// doubled (as a `Vec` grows, at least 4): the one growth rule of `reserve_each`,
    /// `insert` and `push`.
    #[inline]
    fn grown(need: usize, cap: usize, exact: bool) -> usize {
        if exact {
            need
        } else {
            need.max(2 * cap).max(4)
        }
    }

    /// [`Lists::reserve`] with each section's own rule (`exact[s]`).
    fn reserve_each(&mut self, more: [usize; 4], exact: [bool; 4]) {
        let mut new = self.cap;
        for s in 0..4 {
            let (need, cap) = (self.len(s) + more[s], self.cap[s] as usize);
            if need > cap {
                new[s] = u32::try_from(Self::grown(need, cap, exact[s]))
                    .expect("a cluster's list past 2^32 items");
            }
        }
        self.relayout(new);
    }

    /// The sections with room for `new` items each (at least their lengths): the
    /// allocation made anew to size, the sections moved to their new places.
    fn relayout(&mut self, new: [u32; 4]) {
        let old = self.cap;
        if old == new {
            return;
        }
        assert!(
            (0..4).all(|s| new[s] >= self.len[s]),
            "room for a section's items"
        );
        let (old_layout, new_layout) = (Self::layout(&old), Self::layout(&new));
        let shrinks = (0..4).all(|s| new[s] <= old[s]);
        let len = self.len;
        // SAFETY: `ptr` is the allocation of `old_layout` (or dangling when it is empty).
        // Each section's live bytes go from its old place to its new one: in place
        // before a shrink (each moves down, the first first), so that none is
        // overwritten before it moves; else (a growth among them) into a new allocation.
        // A growth is not a `realloc`: a small block's moves (nearly always: one item at
        // a time while small) copied the whole and then moved the sections again.
        unsafe {
            // each section in turn, the first first (in place, before a shrink, each
            // moves down: none is overwritten before it moves)
            let moves = |from: *mut u8, to: *mut u8| {
                for i in 0..4 {
                    let (a, b) = (Self::offset(&old, i), Self::offset(&new, i));
                    let n = len[i] as usize * ITEM[i];
                    // an empty section, or one left where it was (the first, in place),
                    // is not a `memmove` call
                    if n > 0 && (from != to || a != b) {
                        std::ptr::copy(from.add(a), to.add(b), n);
                    }
                }
            };
            let old_ptr = self.ptr.as_ptr();
            let ptr = if new_layout.size() == 0 {
                std::alloc::dealloc(old_ptr, old_layout);
                std::ptr::NonNull::<u64>::dangling().cast().as_ptr()
            } else if old_layout.size() == 0 {
                std::alloc::alloc(new_layout)
            } else if shrinks {
                moves(old_ptr, old_ptr);
                std::alloc::realloc(old_ptr, old_layout, new_layout.size())
            } else {
                let p = std::alloc::alloc(new_layout);
                if !p.is_null() {
                    moves(old_ptr, p);
                    std::alloc::dealloc(old_ptr, old_layout);
                }
                p
            };
            let Some(ptr) = std::ptr::NonNull::new(ptr) else {
                std::alloc::handle_alloc_error(new_layout)
            };
            self.ptr = ptr;
        }
        self.cap = new;
    }

    /// Insert `parts` (whole items, one after another) at item `at` of section `s`; room
    /// made exactly if `exact`, else doubled (as a `Vec` grows).
    fn insert(&mut self, s: usize, at: usize, parts: &[&[u8]], exact: bool) {
        let bytes: usize = parts.iter().map(|p| p.len()).sum();
        debug_assert_eq!(bytes % ITEM[s], 0);
        let (len, add) = (self.len(s), bytes / ITEM[s]);
        assert!(at <= len, "an insertion inside the list");
        let need = len + add;
        let cap = self.cap[s] as usize;
        if need > cap {
            self.set_cap(s, Self::grown(need, cap, exact));
        }
        // SAFETY: the section has room for `need` items; the items from `at` move up
        // by `add` inside it, then `parts` fill the gap
        unsafe {
            let base = self.ptr.as_ptr().add(Self::offset(&self.cap, s));
            let from = base.add(at * ITEM[s]);
            if at < len {
                std::ptr::copy(from, from.add(bytes), (len - at) * ITEM[s]);
            }
            let mut to = from;
            for p in parts.iter().filter(|p| !p.is_empty()) {
                std::ptr::copy_nonoverlapping(p.as_ptr(), to, p.len());
                to = to.add(p.len());
            }
        }
        self.len[s] = need as u32;
    }

    /// Append `value` to section `s`: room made one at a time while the section holds
    /// fewer than [`SMALL`] items, else doubled (as [`Lists::insert`] at the end makes it).
    /// Written in place, inlined where `s` is known: through `insert` an item took a call,
    /// the section's place summed at run time and two `memcpy` calls (the items after it,
    /// none, and its bytes), about 170 instructions (callgrind, a platform replay: three
    /// an event, an id's digest, a time and a post).
    #[inline]
    fn push<T: Copy>(&mut self, s: usize, value: T) {
        debug_assert_eq!(std::mem::size_of::<T>(), ITEM[s]);
        let len = self.len(s);
        if len == self.cap[s] as usize {
            self.set_cap(s, Self::grown(len + 1, len, len < SMALL));
        }
        // SAFETY: the section has room for `len + 1` items and is aligned for `T` (see
        // `get`); its item `len` is past those initialised
        unsafe {
            let at = self.ptr.as_ptr().add(Self::offset(&self.cap, s));
            at.cast::<T>().add(len).write(value);
        }
        self.len[s] = (len + 1) as u32;
    }

    /// Remove the first `n` items of section `s` (its room stays).
    fn remove_front(&mut self, s: usize, n: usize) {
        let len = self.len(s);
        assert!(n <= len, "a cut inside the list");
        // SAFETY: the items after the first `n` move to the section's start, inside it
        unsafe {
            let base = self.ptr.as_ptr().add(Self::offset(&self.cap, s));
            std::ptr::copy(base.add(n * ITEM[s]), base, (len - n) * ITEM[s]);
        }
        self.len[s] = (len - n) as u32;
    }
}

impl Drop for Lists {
    fn drop(&mut self) {
        let layout = Self::layout(&self.cap);
        if layout.size() > 0 {
            // SAFETY: `ptr` is the allocation of this layout
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

/// What an event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Upload,
    Share,
    Takedown,
}

/// One routed event of an unbanked cluster (borrowed from the caller).
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub event_id: &'a [u8],
    pub kind: Kind,
    pub ts_ms: i64,
    pub post: &'a [u8],
    pub user: &'a [u8],
    /// the reshared post (a share's)
    pub parent: Option<&'a [u8]>,
}

/// A velocity rule: `shares` in `window_ms` meets it (`severity`: the caller's index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub severity: u8,
    pub window_ms: i64,
    pub shares: u32,
}

/// A cluster that met a rule for the first time: what the review queue shows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    pub cluster_id: String,
    /// shares in the 5 minutes up to `last_ms`
    pub shares_5m: usize,
    pub size: usize,
    pub live: usize,
    pub first_seen_ms: i64,
    pub last_ms: i64,
}

/// A cluster evicted (idle): its id and posts, in the order they were added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    /// the index (in the caller's batch) of the event before which it was evicted
    pub at: usize,
    pub cluster_id: String,
    pub posts: Vec<Vec<u8>>,
}

/// What applying events did, for the caller's counters and records.
#[derive(Debug)]
pub struct Outcome<H> {
    /// events added a post some other event had added (`duplicate_post`), in order
    pub rejected: Vec<H>,
    pub crossings: Vec<Crossing>,
    pub evicted: Vec<Evicted>,
    pub duplicates: u64,
    pub late: u64,
    pub created: u64,
    /// applied (not duplicate) events: uploads, shares, takedowns
    pub kinds: [u64; 3],
}

impl<H> Default for Outcome<H> {
    fn default() -> Self {
        Self {
            rejected: Vec::new(),
            crossings: Vec::new(),
            evicted: Vec::new(),
            duplicates: 0,
            late: 0,
            created: 0,
            kinds: [0; 3],
        }
    }
}

/// A post in 12 bytes: the lengths of its id's text and its user's (one after the other in
/// the cluster's text, where the posts before it end: see [`Cluster::starts`]), its parent
/// (see [`Post::parent`]) and whether it is still up, in one word; its event time as an
/// offset from the cluster's first seen (no event of a cluster is older: see
/// [`Cluster::post_ts`]). Where its text starts is not kept (8 bytes a post): a scan of
/// the posts sums the lengths, and a cluster past [`INDEX_FROM`] posts keeps each start in
/// its post index.
#[derive(Clone, Copy)]
struct Post {
    /// [`LONG`]: the length is the 4 bytes (little-endian) before the text
    id_len: u16,
    user_len: u16,
    /// the parent's index + 1 (0: none) in the low 31 bits; the top bit: taken down
    parent_down: u32,
    /// its event time less the cluster's `first_seen_ms`; [`WIDE`]: past 49 days after it,
    /// the time is in the cluster's rare part
    ts_off: u32,
}

/// [`Cluster::sig_len`]'s top bit: the cluster met a rule.
const EMERGING: u32 = 1 << 31;

/// A post's time offset that does not fit: its time is kept aside ([`Rare::wide`]).
const WIDE: u32 = u32::MAX;

const DOWN: u32 = 1 << 31;
/// A post's id or user of this length or more: its length is written before its text.
const LONG: u16 = u16::MAX;

impl Post {
    /// The parent's index, or `NONE` (an upload).
    fn parent(&self) -> u32 {
        (self.parent_down & !DOWN).wrapping_sub(1)
    }

    fn live(&self) -> bool {
        self.parent_down & DOWN == 0
    }

    /// Where its id and its user are in `text`, its text starting at `at`; and where the
    /// next post's starts.
    fn spans(&self, text: &[u8], at: usize) -> (Range<usize>, Range<usize>, usize) {
        let (id, at) = span(text, at, self.id_len);
        let (user, end) = span(text, at, self.user_len);
        (id, user, end)
    }
}

fn span(text: &[u8], at: usize, len: u16) -> (Range<usize>, usize) {
    if len == LONG {
        let n = u32::from_le_bytes(text[at..at + 4].try_into().expect("4 bytes")) as usize;
        (at + 4..at + 4 + n, at + 4 + n)
    } else {
        (at..at + len as usize, at + len as usize)
    }
}

/// A reshare (or takedown) waiting for the post `target`.
struct Pending<H> {
    target: Box<[u8]>,
    kind: Kind,
    post: Box<[u8]>,
    user: Box<[u8]>,
    ts_ms: i64,
    handle: H,
}

/// Sorted event times within the horizon (`graphs.velocity.Velocity`'s rules): the
/// [`TIMES`] section of a cluster's [`Lists`], less its first `start` (gone from the
/// horizon, cut once they are at least 8 and more than half). Each is an offset from the
/// cluster's [`Cluster::times_base`] (the caller's): the times, the horizon and `now` here
/// are all on that scale, in `i64` so that nothing wraps.
impl Lists {
    fn add_time(&mut self, start: &mut u32, t: u32, horizon: i64) -> bool {
        if let Some(&latest) = self.get::<u32>(TIMES).last() {
            if i64::from(t) <= i64::from(latest) - horizon {
                return false;
            }
            if t < latest {
                let i = self.kept_times(*start).partition_point(|&x| x <= t) + *start as usize;
                self.insert(TIMES, i, &[bytes_of(&t)], false);
                return true;
            }
        }
        self.push(TIMES, t); // the latest: always the last one kept
        let cut = i64::from(t) - horizon;
        *start += self
            .kept_times(*start)
            .partition_point(|&x| i64::from(x) <= cut) as u32;
        let at = *start as usize;
        if at >= 8 && at * 2 > self.len(TIMES) {
            self.remove_front(TIMES, at);
            *start = 0;
        }
        true
    }

    fn count_times(&self, start: u32, window: i64, now: i64) -> usize {
        let kept = self.kept_times(start);
        // `now` is most often the latest kept time (`Store::evaluate`'s): all are at or
        // before it, one compare where a binary search asked again
        let hi = match kept.last() {
            Some(&latest) if i64::from(latest) <= now => kept.len(),
            _ => kept.partition_point(|&x| i64::from(x) <= now),
        };
        let lo = kept[..hi].partition_point(|&x| i64::from(x) <= now.saturating_sub(window));
        hi - lo
    }

    fn kept_times(&self, start: u32) -> &[u32] {
        &self.get::<u32>(TIMES)[start as usize..]
    }
}

/// One unbanked cluster.
struct Cluster<H> {
    id: ClusterId,
    seq: u64,
    prev: u32,
    next: u32,
    first_seen_ms: i64,
    last_ms: i64,
    /// the digests of the event ids applied while few (a scan is cheapest, and most
    /// clusters apply an event or three; past [`ID_SET_FROM`], a set in its rare part),
    /// its event times within the horizon, its posts, their text and its signals
    lists: Lists,
    /// the event times before it are gone from the horizon
    times_start: u32,
    /// the bytes at the end of its text that are its content's signals, not its posts'
    /// text (a store that keeps signals: see [`Store::with_signals`]); the top bit
    /// ([`EMERGING`]): it met a rule (a bool of its own took 8 bytes a record, padded)
    sig_len: u32,
    /// what few clusters have: boxed, so that the others pay 8 bytes for it
    rare: Option<Box<Rare<H>>>,
}

/// A cluster's waiting events, rules met and allow-list signals.
struct Rare<H> {
    pending: Vec<Pending<H>>,
    /// (severity, when its rule was first met)
    met: Vec<(u8, i64)>,
    /// the allow-list signals (kind, signal) its content matches
    allowed_by: Vec<(String, String)>,
    /// past [`INDEX_FROM`] posts (few clusters grow so large: here, not in the record)
    index: Option<Box<Index>>,
    /// (post, event time) of the posts whose time is [`WIDE`] of the first seen (a cluster
    /// kept alive for over 49 days), by post
    wide: Vec<(u32, i64)>,
    /// the digests of its event ids, past [`ID_SET_FROM`] (its list given up: not both)
    ids: Option<DigestSet>,
    /// what its event times are offsets from, when not its first seen (a cluster kept
    /// alive for over 49 days: see [`Cluster::times_base`])
    times_base: Option<i64>,
}

/// A large cluster's post index: its posts (their indexes, 4 bytes each) found by their
/// ids' keyed hash (a post id is in a cluster once); `starts[i]`: where post `i`'s text
/// starts. A table of (hash, post) pairs and a chain of posts sharing a hash took about
/// 30 bytes a post; this, about 12.
struct Index {
    by_id: hashbrown::HashTable<u32>,
    starts: Vec<u32>,
}

/// Up to this many items, a cluster's lists grow one at a time: most clusters hold a
/// post or three, and a doubling list would be half empty.
const SMALL: usize = 8;

/// A post id's hash in a large cluster's [`Index`]: foldhash under the process's one key
/// ([`crate::keyed::process_hasher`], drawn at random: a post id is chosen by users, so no
/// id may be made to collide; the post map hashes the same ids so). It was the event ids'
/// 128-bit SipHash (`id_digest`), which a table's place needs none of: about 185
/// instructions an id, at each look-up, each post indexed and each post again at every
/// doubling (343,000 a platform replay, 1% of its instructions, callgrind).
fn text_hash(bytes: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    crate::keyed::process_hasher().hash_one(bytes)
}

impl<H> Cluster<H> {
    fn new(id: ClusterId, ts_ms: i64) -> Self {
        Self {
            id,
            seq: 0,
            prev: NONE,
            next: NONE,
            first_seen_ms: ts_ms,
            last_ms: 0,
            lists: Lists::default(),
            times_start: 0,
            sig_len: 0,
            rare: None,
        }
    }

    /// Where the posts' text ends (its signals follow).
    fn posts_end(&self) -> usize {
        self.text().len() - (self.sig_len & !EMERGING) as usize
    }

    fn emerging(&self) -> bool {
        self.sig_len & EMERGING != 0
    }

    /// Its signals, packed ([`Sig`]), in the order it took them.
    fn sigs(&self) -> &[u8] {
        &self.text()[self.posts_end()..]
    }

    /// Append a packed signal (or a mark of one kept in the store's [`Firsts`]).
    fn push_sig(&mut self, packed: &[u8]) {
        let small = self.posts().len() < SMALL;
        let end = self.lists.len(TEXT);
        self.lists.insert(TEXT, end, &[packed], small);
        let sig_len = (self.sig_len & !EMERGING) as usize + packed.len();
        assert!(sig_len < EMERGING as usize, "a cluster's signals past 2 GB");
        self.sig_len = sig_len as u32 | (self.sig_len & EMERGING);
    }

    /// Where each post's text starts.
    fn starts(&self) -> Vec<u32> {
        if let Some(index) = self.index() {
            return index.starts.clone();
        }
        let mut at = 0;
        self.posts()
            .iter()
            .map(|p| {
                let start = at;
                at = p.spans(self.text(), at).2;
                start as u32
            })
            .collect()
    }

    fn index(&self) -> Option<&Index> {
        self.rare.as_deref().and_then(|r| r.index.as_deref())
    }

    /// Post `i`'s id and user, its text starting at `start`.
    fn texts(&self, i: usize, start: u32) -> (&[u8], &[u8]) {
        let (id, user, _) = self.posts()[i].spans(self.text(), start as usize);
        (&self.text()[id], &self.text()[user])
    }

    fn find(&self, post: &[u8]) -> Option<u32> {
        match self.index() {
            None => self
                .post_ids()
                .position(|id| same_id(id, post))
                .map(|i| i as u32),
            Some(index) => index
                .by_id
                .find(text_hash(post), |&i| {
                    self.texts(i as usize, index.starts[i as usize]).0 == post
                })
                .copied(),
        }
    }

    /// [`Cluster::find`] of `post`, then (unless found) of `parent`: a small cluster's
    /// posts scanned once for both, where a share's two finds scanned them twice (its
    /// post not there, each post's span read again for its parent: 193 instructions an
    /// event for the finds, callgrind, a platform replay).
    fn find_both(&self, post: &[u8], parent: &[u8]) -> (Option<u32>, Option<u32>) {
        if self.index().is_some() {
            return match self.find(post) {
                Some(i) => (Some(i), None),
                None => (None, self.find(parent)),
            };
        }
        let mut found = None;
        for (i, id) in self.post_ids().enumerate() {
            if same_id(id, post) {
                return (Some(i as u32), None);
            }
            if found.is_none() && same_id(id, parent) {
                found = Some(i as u32);
            }
        }
        (None, found)
    }

    /// Append a post's id and user to the text, each with its length first if it is
    /// [`LONG`] or more, in one insertion (the signals after them moved once); their
    /// length fields.
    fn push_texts(&mut self, post: &[u8], user: &[u8]) -> (u16, u16) {
        let small = self.posts().len() < SMALL;
        let lens = [post, user].map(|t| u16::try_from(t.len()).unwrap_or(LONG));
        let prefixes = [post, user].map(|t| (t.len() as u32).to_le_bytes());
        let prefix = |i: usize| -> &[u8] {
            if lens[i] == LONG {
                &prefixes[i]
            } else {
                &[]
            }
        };
        // before the signals, if any (a few dozen bytes moved); the length fields only
        // where one is written (most often none: two parts, not four, to copy)
        let end = self.posts_end();
        let (short, long) = ([post, user], [prefix(0), post, prefix(1), user]);
        let parts: &[&[u8]] = if lens.contains(&LONG) { &long } else { &short };
        self.lists.insert(TEXT, end, parts, small);
        (lens[0], lens[1])
    }

    /// Post `i`'s event time.
    fn post_ts(&self, i: usize) -> i64 {
        match self.posts()[i].ts_off {
            WIDE => {
                let wide = &self.rare.as_deref().expect("a wide time's cluster").wide;
                let at = wide.partition_point(|&(p, _)| (p as usize) < i);
                wide[at].1
            }
            off => self.first_seen_ms + i64::from(off),
        }
    }

    /// Post `i`'s time as an offset from the first seen: [`WIDE`] (and kept aside) if it
    /// does not fit.
    fn set_ts(&mut self, i: u32, ts_ms: i64) {
        let off = ts_ms.saturating_sub(self.first_seen_ms);
        match u32::try_from(off) {
            Ok(off) if off != WIDE => self.lists.get_mut::<Post>(POSTS)[i as usize].ts_off = off,
            _ => {
                self.lists.get_mut::<Post>(POSTS)[i as usize].ts_off = WIDE;
                let wide = &mut self.rare().wide;
                let at = wide.partition_point(|&(p, _)| p < i);
                wide.insert(at, (i, ts_ms));
            }
        }
    }

    /// The first seen is now `first_ms` (earlier, a late event): the offsets follow.
    fn set_first_seen(&mut self, first_ms: i64) {
        if first_ms >= self.first_seen_ms {
            return;
        }
        let times: Vec<i64> = (0..self.posts().len()).map(|i| self.post_ts(i)).collect();
        let follows = self.rare.as_deref().and_then(|r| r.times_base).is_none();
        let old = std::mem::replace(&mut self.first_seen_ms, first_ms);
        if follows && self.lists.len(TIMES) > 0 {
            // the event times are offsets from the first seen: each moves up by as much,
            // unless one would not fit (then the old first seen stays their base)
            let up = old.checked_sub(first_ms).unwrap_or(i64::MAX);
            let times = self.lists.get_mut::<u32>(TIMES);
            if times
                .iter()
                .all(|&x| i64::from(x).saturating_add(up) <= i64::from(u32::MAX))
            {
                for x in times {
                    *x += up as u32;
                }
            } else {
                self.rare().times_base = Some(old);
            }
        }
        if let Some(r) = self.rare.as_deref_mut() {
            r.wide.clear();
        }
        for (i, t) in times.into_iter().enumerate() {
            self.set_ts(i as u32, t);
        }
    }

    /// The room [`Cluster::add`] makes for a post of these texts: a time, the post and its
    /// texts (their lengths first if [`LONG`]).
    fn post_room(post: &[u8], user: &[u8]) -> [usize; 4] {
        let texts = [post, user].map(|t| t.len() + if t.len() >= LONG as usize { 4 } else { 0 });
        [0, 1, 1, texts[0] + texts[1]]
    }

    fn add(&mut self, post: &[u8], user: &[u8], parent: u32, ts_ms: i64) {
        // one allocation made anew for the post, its texts and its time (most often the
        // next to be added), not one for each (none if the event's id made room for it)
        let small = self.posts().len() < SMALL;
        self.lists.reserve(Self::post_room(post, user), small);
        let start = self.posts_end() as u32;
        let (id_len, user_len) = self.push_texts(post, user);
        let i = self.posts().len() as u32;
        self.lists.push(
            POSTS,
            Post {
                id_len,
                user_len,
                parent_down: parent.wrapping_add(1) & !DOWN,
                ts_off: 0,
            },
        );
        self.set_ts(i, ts_ms);
        if self.index().is_none() && self.posts().len() > INDEX_FROM {
            let starts = self.starts();
            self.rare().index = Some(Box::new(Index {
                by_id: hashbrown::HashTable::with_capacity(starts.len()),
                starts,
            }));
            for j in 0..i {
                self.index_post(j);
            }
        } else if let Some(index) = self
            .rare
            .as_deref_mut()
            .and_then(|r| r.index.as_deref_mut())
        {
            index.starts.push(start);
        }
        if self.index().is_some() {
            self.index_post(i);
        }
    }

    /// Put post `i` (its start known) in the post index.
    fn index_post(&mut self, i: u32) {
        let (posts, text) = (self.lists.get::<Post>(POSTS), self.lists.get::<u8>(TEXT));
        let index = self
            .rare
            .as_deref_mut()
            .and_then(|r| r.index.as_deref_mut())
            .expect("an indexed cluster");
        let starts = &index.starts;
        let hash_of = |j: u32| {
            let (id, _, _) = posts[j as usize].spans(text, starts[j as usize] as usize);
            text_hash(&text[id])
        };
        index.by_id.insert_unique(hash_of(i), i, |&j| hash_of(j));
    }

    /// Every post's id, in order.
    /// The posts' ids, in order (their texts are laid out in that order).
    fn post_ids(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut at = 0;
        self.posts().iter().map(move |p| {
            let (id, _, next) = p.spans(self.text(), at);
            at = next;
            &self.text()[id]
        })
    }

    /// Every post as the views read it, parents first.
    fn made(&self) -> Vec<Made<'_>> {
        let starts = self.starts();
        let texts: Vec<(&[u8], &[u8])> = (0..self.posts().len())
            .map(|i| self.texts(i, starts[i]))
            .collect();
        self.posts()
            .iter()
            .zip(&texts)
            .enumerate()
            .map(|(i, (p, &(post, user)))| Made {
                post,
                parent: (p.parent() != NONE).then(|| texts[p.parent() as usize].0),
                user,
                ts_ms: self.post_ts(i),
                live: p.live(),
            })
            .collect()
    }

    fn take_down(&mut self, post: &[u8]) -> bool {
        match self.find(post) {
            Some(i) if self.posts()[i as usize].live() => {
                self.lists.get_mut::<Post>(POSTS)[i as usize].parent_down |= DOWN;
                true
            }
            _ => false,
        }
    }

    fn allowed(&self) -> bool {
        !self.allowed_by().is_empty() || self.id.kind_is(b'a')
    }

    fn rare(&mut self) -> &mut Rare<H> {
        self.rare.get_or_insert_with(|| {
            Box::new(Rare {
                pending: Vec::new(),
                met: Vec::new(),
                allowed_by: Vec::new(),
                index: None,
                wide: Vec::new(),
                ids: None,
                times_base: None,
            })
        })
    }

    fn posts(&self) -> &[Post] {
        self.lists.get(POSTS)
    }

    /// Posts still up: counted when asked (a crossing, a view), not kept (the record's
    /// size decides its allocation's: 104 bytes and glibc's header take 112, 112 took 128).
    fn live(&self) -> usize {
        self.posts().iter().filter(|p| p.live()).count()
    }

    fn text(&self) -> &[u8] {
        self.lists.get(TEXT)
    }

    /// Add an event id's digest; `false` if it was here already. `room`: what the event
    /// will add besides (an upload's or share's post: [`Cluster::post_room`]), made in the
    /// same allocation if the digest needs one, as [`Cluster::add`] would make it (each
    /// section by its own rule): an applied post reallocated the lists twice, once for its
    /// id and once for itself, about 300 instructions each (callgrind, a platform replay).
    fn insert_id(&mut self, digest: u128, room: [usize; 4]) -> bool {
        if let Some(set) = self.rare.as_deref_mut().and_then(|r| r.ids.as_mut()) {
            return set.insert(digest);
        }
        let few: &[Stored] = self.lists.get(IDS);
        if few.contains(&stored(digest)) {
            return false;
        }
        if few.len() >= ID_SET_FROM {
            let mut set: DigestSet = few.iter().map(|&s| digest_of(s)).collect();
            set.insert(digest);
            self.lists.len[IDS] = 0;
            self.lists.set_cap(IDS, 0);
            self.rare().ids = Some(set);
        } else {
            let ids = self.lists.len(IDS);
            if ids == self.lists.cap[IDS] as usize {
                let small = self.posts().len() < SMALL;
                let mut more = room;
                more[IDS] = 1;
                // the digest's room as `push` makes it, the post's as `add` does
                self.lists
                    .reserve_each(more, [ids < SMALL, small, small, small]);
            }
            self.lists.push(IDS, stored(digest));
        }
        true
    }

    fn has_id(&self, digest: u128) -> bool {
        match self.rare.as_deref().and_then(|r| r.ids.as_ref()) {
            Some(set) => set.contains(&digest),
            None => self.lists.get::<Stored>(IDS).contains(&stored(digest)),
        }
    }

    fn ids_len(&self) -> usize {
        match self.rare.as_deref().and_then(|r| r.ids.as_ref()) {
            Some(set) => set.len(),
            None => self.lists.len(IDS),
        }
    }

    /// Every event id's digest (a set's in no particular order: they are a set).
    fn digests(&self) -> Vec<u128> {
        match self.rare.as_deref().and_then(|r| r.ids.as_ref()) {
            Some(set) => set.iter().copied().collect(),
            None => self.lists.get(IDS).iter().map(|&s| digest_of(s)).collect(),
        }
    }

    /// What its event times are offsets from: its first seen, or (a cluster alive for
    /// over 49 days, whose times are no longer within 2^32 ms of it) a time kept aside.
    fn times_base(&self) -> i64 {
        self.rare
            .as_deref()
            .and_then(|r| r.times_base)
            .unwrap_or(self.first_seen_ms)
    }

    /// Its event times within the horizon, sorted.
    fn kept_times(&self) -> Vec<i64> {
        let base = self.times_base();
        self.lists
            .kept_times(self.times_start)
            .iter()
            .map(|&x| base + i64::from(x))
            .collect()
    }

    fn kept_count(&self) -> usize {
        self.lists.kept_times(self.times_start).len()
    }

    /// Event times in `(now - window, now]`.
    fn count(&self, window: i64, now: i64) -> usize {
        let now = now.saturating_sub(self.times_base());
        self.lists.count_times(self.times_start, window, now)
    }

    /// Count event time `t` (`false`: at or before the latest less the horizon, not kept).
    /// Kept as an offset from [`Self::times_base`]; one that does not fit in 32 bits (a
    /// time 49 days from the base, or before it) moves the base first.
    fn add_time(&mut self, t: i64, horizon: i64) -> bool {
        if let Some(off) = t
            .checked_sub(self.times_base())
            .and_then(|d| u32::try_from(d).ok())
        {
            return self.lists.add_time(&mut self.times_start, off, horizon);
        }
        let mut kept = self.kept_times();
        if let Some(&latest) = kept.last() {
            if t <= latest.saturating_sub(horizon) {
                return false;
            }
        }
        // what the list keeps after `t` (the times left the horizon dropped), exactly
        let latest = kept.last().map_or(t, |&l| l.max(t));
        kept.retain(|&x| x > latest.saturating_sub(horizon));
        let at = kept.partition_point(|&x| x <= t);
        kept.insert(at, t);
        self.set_times(&kept);
        true
    }

    /// Its event times are `times` (sorted, within the horizon: less than 2^32 ms apart),
    /// as offsets from its first seen if they all fit, else from the earliest (kept aside).
    fn set_times(&mut self, times: &[i64]) {
        let fits = |base: i64| {
            times.iter().all(|&x| {
                x.checked_sub(base)
                    .is_some_and(|d| u32::try_from(d).is_ok())
            })
        };
        let base = if fits(self.first_seen_ms) {
            if let Some(r) = self.rare.as_deref_mut() {
                r.times_base = None;
            }
            self.first_seen_ms
        } else {
            let base = times[0];
            assert!(fits(base), "event times within 2^32 ms of one another");
            self.rare().times_base = Some(base);
            base
        };
        self.lists.remove_front(TIMES, self.lists.len(TIMES));
        self.times_start = 0;
        for &x in times {
            self.lists.push(TIMES, (x - base) as u32);
        }
    }

    fn pending(&self) -> &[Pending<H>] {
        self.rare.as_deref().map_or(&[], |r| &r.pending)
    }

    fn met(&self) -> &[(u8, i64)] {
        self.rare.as_deref().map_or(&[], |r| &r.met)
    }

    fn allowed_by(&self) -> &[(String, String)] {
        self.rare.as_deref().map_or(&[], |r| &r.allowed_by)
    }

    fn bytes(&self) -> usize {
        use std::mem::size_of;
        size_of::<Self>()
            + self.lists.bytes()
            + self
                .index()
                .map_or(0, |i| i.by_id.capacity() * 5 + i.starts.capacity() * 4)
            + self.rare.as_deref().map_or(0, |r| {
                size_of::<Rare<H>>()
                    + r.pending.capacity() * size_of::<Pending<H>>()
                    + r.wide.capacity() * 16
                    + r.ids.as_ref().map_or(0, |set| set.capacity() * 17)
            })
    }
}

/// A signal packed in a cluster's text (after its posts'): a kind byte, then an MD5's 16
/// bytes, a PDQ hash's 32 (its words little-endian), or any other text's 4-byte length and
/// the text. The content index's keys ([`crate::content`]): a text of 32 hex digits is an
/// MD5 whatever its kind says, any other text but a PDQ's is kept as it is.
const SIG_MD5: u8 = 0;
const SIG_PDQ: u8 = 1;
const SIG_TEXT: u8 = 2;
/// In a cluster's text, alone: its first PDQ hash, kept in the store's [`Firsts`].
const SIG_FIRST_PDQ: u8 = 3;
/// In a cluster's text, alone: its first MD5, kept in the store's [`Firsts`].
const SIG_FIRST_MD5: u8 = 4;

/// Slots a page of [`Firsts`] holds.
const PAGE: usize = 1024;
/// [`Firsts`]' flags: the slot's cluster has a first PDQ hash, a first MD5, signals in its
/// own text besides the marks (a second PDQ hash, a second MD5, another text).
const HAS_PDQ: u8 = 1;
const HAS_MD5: u8 = 2;
const MORE: u8 = 4;

/// Each cluster's first PDQ hash and first MD5, by its slot, in pages of [`PAGE`] slots:
/// what a bank change's search scans, 32 bytes (or 16) after one another and a flag byte a
/// cluster, no pointer followed. A scan of each cluster's own text (a box, then its text)
/// took 8.5 ms at 330,000 clusters. The cluster's text keeps a one-byte mark in their
/// place, in the order it took them, so a signal costs what it did (33 bytes a PDQ hash,
/// 17 an MD5); a cluster's other signals (rare: a second hash, a text) stay in its text,
/// [`MORE`] set. Pages, not a vector growing by doubling: little room unused, and a page
/// whose clusters are all gone goes back (a flood evicted, whatever slots stay in use).
#[derive(Default)]
struct Firsts {
    pages: Vec<Option<Box<Page>>>,
}

struct Page {
    pdq: [Hash; PAGE],
    md5: [[u8; 16]; PAGE],
    flags: [u8; PAGE],
    /// slots whose flags are not 0
    live: u32,
}

impl Page {
    pdq::popcnt_twin!(scan_popcnt calls scan_any:
        /// The slots from `first` whose first PDQ hash is within `threshold` of `q`, with
        /// the distance, into `found`; those with signals in their own text into `more`
        /// (the caller reads them). With `popcnt` where the CPU has it.
        fn scan(
            &self,
            q: &Hash,
            threshold: u32,
            first: u32,
            found: &mut Vec<(u32, u32)>,
            more: &mut Vec<u32>,
        ) {
            for (i, (&fl, h)) in self.flags.iter().zip(&self.pdq).enumerate() {
                if fl & MORE != 0 {
                    more.push(first + i as u32);
                } else if fl & HAS_PDQ != 0 {
                    let d = pdq::distance(q, h);
                    if d <= threshold {
                        found.push((first + i as u32, d));
                    }
                }
            }
        }
    );

    fn new() -> Box<Self> {
        Box::new(Self {
            pdq: [[0; 4]; PAGE],
            md5: [[0; 16]; PAGE],
            flags: [0; PAGE],
            live: 0,
        })
    }
}

impl Firsts {
    fn page(&self, slot: u32) -> Option<&Page> {
        self.pages.get(slot as usize / PAGE)?.as_deref()
    }

    fn flags(&self, slot: u32) -> u8 {
        self.page(slot).map_or(0, |p| p.flags[slot as usize % PAGE])
    }

    fn pdq(&self, slot: u32) -> &Hash {
        &self.page(slot).expect("a first hash's page").pdq[slot as usize % PAGE]
    }

    fn md5(&self, slot: u32) -> &[u8; 16] {
        &self.page(slot).expect("a first MD5's page").md5[slot as usize % PAGE]
    }

    /// Set `flag` for `slot`; its page (made if it has none) and index in it.
    fn mark(&mut self, slot: u32, flag: u8) -> (&mut Page, usize) {
        let (p, i) = (slot as usize / PAGE, slot as usize % PAGE);
        if self.pages.len() <= p {
            self.pages.resize_with(p + 1, || None);
        }
        let page = self.pages[p].get_or_insert_with(Page::new);
        if page.flags[i] == 0 {
            page.live += 1;
        }
        page.flags[i] |= flag;
        (page, i)
    }

    fn set_pdq(&mut self, slot: u32, h: Hash) {
        let (page, i) = self.mark(slot, HAS_PDQ);
        page.pdq[i] = h;
    }

    fn set_md5(&mut self, slot: u32, m: [u8; 16]) {
        let (page, i) = self.mark(slot, HAS_MD5);
        page.md5[i] = m;
    }

    /// `slot`'s cluster is gone: its page too if it was the last of it.
    fn forget(&mut self, slot: u32) {
        let (p, i) = (slot as usize / PAGE, slot as usize % PAGE);
        let Some(Some(page)) = self.pages.get_mut(p) else {
            return;
        };
        if page.flags[i] != 0 {
            page.flags[i] = 0;
            page.live -= 1;
            if page.live == 0 {
                self.pages[p] = None;
                while self.pages.last().is_some_and(Option::is_none) {
                    self.pages.pop();
                }
            }
        }
    }

    fn bytes(&self) -> usize {
        self.pages.iter().flatten().count() * size_of::<Page>() + self.pages.capacity() * 8
    }
}

/// A PDQ hash's signal packed (as [`sig_key`] packs its text).
fn pdq_key(h: &pdq::Hash) -> Vec<u8> {
    let mut out = Vec::with_capacity(33);
    out.push(SIG_PDQ);
    for w in h {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
}

/// `text` (a signal of `kind`) packed; a PDQ text that is not 64 hex digits is refused.
fn sig_key(kind: SignalKind, text: &str) -> Result<Vec<u8>, BadSignal> {
    let mut out = Vec::new();
    if kind == SignalKind::Pdq {
        let h = pdq::parse_hex(text.as_bytes())
            .ok_or_else(|| BadSignal(format!("not a PDQ hash: {text:?}")))?;
        return Ok(pdq_key(&h));
    } else if let Some(b) = hex::bytes::<16>(text.as_bytes()) {
        out.push(SIG_MD5);
        out.extend_from_slice(&b);
    } else {
        out.push(SIG_TEXT);
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    Ok(out)
}

/// The signals packed in `bytes`, each whole (kind byte included), in order.
fn sig_iter(mut bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let n = match *bytes.first()? {
            SIG_MD5 => 17,
            SIG_PDQ => 33,
            SIG_FIRST_PDQ | SIG_FIRST_MD5 => 1,
            _ => 5 + u32::from_le_bytes(bytes[1..5].try_into().expect("4 bytes")) as usize,
        };
        let (sig, rest) = bytes.split_at(n);
        bytes = rest;
        Some(sig)
    })
}

/// A packed PDQ signal's hash.
fn sig_hash(sig: &[u8]) -> Hash {
    let mut h = [0_u64; 4];
    for (w, c) in h.iter_mut().zip(sig[1..33].chunks_exact(8)) {
        *w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
    }
    h
}

/// A packed signal as `(kind, text)`: hashes in lowercase hex, the kind under which the
/// content index keeps the same key.
fn sig_text(sig: &[u8]) -> (&'static str, String) {
    match sig[0] {
        SIG_MD5 => {
            let mut s = String::with_capacity(32);
            pdq::push_hex(&mut s, &sig[1..17]);
            ("md5", s)
        }
        SIG_PDQ => ("pdq", pdq::format_hex(&sig_hash(sig))),
        _ => (
            "md5",
            std::str::from_utf8(&sig[5..])
                .expect("packed from a str")
                .to_owned(),
        ),
    }
}

/// A post as the views and retroaction read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made<'a> {
    pub post: &'a [u8],
    pub parent: Option<&'a [u8]>,
    pub user: &'a [u8],
    pub ts_ms: i64,
    pub live: bool,
}

/// A post taken out: `(post, parent, user, ts, live)`.
pub type OwnedPost = (Vec<u8>, Option<Vec<u8>>, Vec<u8>, i64, bool);

/// Everything a cluster holds, taken out of the store (it turned out to be banked).
pub struct Taken<H> {
    pub cluster_id: String,
    pub seq: u64,
    pub first_seen_ms: i64,
    pub last_ms: i64,
    /// `(post, parent, user, ts, live)`, parents first
    pub posts: Vec<OwnedPost>,
    /// the event times within the horizon, sorted, and the latest ever counted
    pub times: Vec<i64>,
    pub latest_ms: Option<i64>,
    pub digests: Vec<u128>,
    /// `(post waited for, event)`, in the order they came
    pub pending: Vec<(Vec<u8>, H)>,
    pub emerging: bool,
    pub met: Vec<(u8, i64)>,
    pub allowed_by: Vec<(String, String)>,
}

/// A cluster's headline figures and review state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub seq: u64,
    pub first_seen_ms: i64,
    pub last_ms: i64,
    pub size: usize,
    pub live: usize,
    pub roots: usize,
    pub events: usize,
    pub pending: usize,
    pub emerging: bool,
    pub allowed: bool,
    pub met: Vec<(u8, i64)>,
}

/// The unbanked clusters of one detector (see the module's docs); `H` is what
/// the caller keeps of an event that waits or may be rejected.
pub struct Store<H> {
    rules: Vec<Rule>,
    fewest: usize,
    horizon_ms: i64,
    idle_ms: i64,
    slots: Slab<Box<Cluster<H>>>,
    /// cluster id -> slot
    by_id: IdSlots,
    head: u32,
    tail: u32,
    seq: u64,
    live_events: usize,
    /// whether its clusters keep their content's signals ([`Self::with_signals`])
    signals: bool,
    /// its clusters' first PDQ hash and MD5, by slot (a store that keeps signals)
    firsts: Firsts,
}

impl<H> Store<H> {
    /// `rules`: the velocity rules in the policy's order; `horizon_ms`: how long
    /// event times are kept (at least the longest window; from 1 ms to [`MAX_HORIZON_MS`],
    /// about 49 days: a cluster's event times are 32-bit offsets); `idle_ms`: how long
    /// after its last event a cluster is evicted.
    ///
    /// # Panics
    /// If `horizon_ms` is out of that range (the bindings refuse it first).
    pub fn new(rules: Vec<Rule>, horizon_ms: i64, idle_ms: i64) -> Self {
        assert!(
            (1..=MAX_HORIZON_MS).contains(&horizon_ms),
            "a horizon from 1 ms to 2^32 - 1"
        );
        let fewest = rules.iter().map(|r| r.shares as usize).min().unwrap_or(0);
        Self {
            rules,
            fewest,
            horizon_ms,
            idle_ms,
            slots: Slab::new(),
            by_id: IdSlots::default(),
            head: NONE,
            tail: NONE,
            seq: 0,
            live_events: 0,
            signals: false,
            firsts: Firsts::default(),
        }
    }

    /// A store whose clusters keep their content's signals ([`Self::hold`]) and are found
    /// by them ([`Self::near`]): a worker's clusters partition, which must find the live
    /// clusters a bank change concerns. A content index of its own took a record, an id
    /// entry and a table entry per cluster and signal (about 56 bytes a live post); here
    /// a signal is its bytes in the cluster's text (17 an MD5, 33 a PDQ hash), and a search
    /// scans the clusters (a bank change is rare).
    pub fn with_signals(rules: Vec<Rule>, horizon_ms: i64, idle_ms: i64) -> Self {
        Self {
            signals: true,
            ..Self::new(rules, horizon_ms, idle_ms)
        }
    }

    /// Whether its clusters keep their signals ([`Self::with_signals`]).
    pub fn keeps_signals(&self) -> bool {
        self.signals
    }

    /// `cluster_id` (held) holds these signals, those it did not hold yet appended in order;
    /// how many were new. A PDQ text that is not 64 hex digits is refused before anything
    /// changes. Nothing is kept by a store that keeps no signals, or for a cluster not held.
    pub fn hold(
        &mut self,
        cluster_id: &(impl AsCid + ?Sized),
        signals: &[impl AsSignal],
    ) -> Result<usize, BadSignal> {
        // a PDQ's words as the parser read them, if it did (its text not read again)
        let keys = signals
            .iter()
            .map(|s| match (s.kind(), s.pdq_hash(), s.md5_bytes()) {
                (SignalKind::Pdq, Some(h), _) => Ok(pdq_key(&h)),
                (SignalKind::Md5, _, Some(b)) => Ok([&[SIG_MD5][..], &b].concat()),
                _ => sig_key(s.kind(), s.text()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !self.signals {
            return Ok(0);
        }
        let Some(slot) = self.slot_of(cluster_id) else {
            return Ok(0);
        };
        let mut took = 0;
        for key in &keys {
            if self.holds(slot, key) {
                continue;
            }
            let flags = self.firsts.flags(slot);
            let packed: &[u8] = match key[0] {
                SIG_PDQ if flags & HAS_PDQ == 0 => {
                    self.firsts.set_pdq(slot, sig_hash(key));
                    &[SIG_FIRST_PDQ]
                }
                SIG_MD5 if flags & HAS_MD5 == 0 => {
                    let m = key[1..17].try_into().expect("16 bytes");
                    self.firsts.set_md5(slot, m);
                    &[SIG_FIRST_MD5]
                }
                _ => {
                    self.firsts.mark(slot, MORE);
                    key
                }
            };
            self.at(slot).push_sig(packed);
            took += 1;
        }
        Ok(took)
    }

    /// Whether the cluster in `slot` holds the packed signal `key`.
    fn holds(&self, slot: u32, key: &[u8]) -> bool {
        let flags = self.firsts.flags(slot);
        let first = match key[0] {
            SIG_PDQ => flags & HAS_PDQ != 0 && *self.firsts.pdq(slot) == sig_hash(key),
            SIG_MD5 => flags & HAS_MD5 != 0 && self.firsts.md5(slot)[..] == key[1..],
            _ => false,
        };
        first || flags & MORE != 0 && self.sigs_of(slot).any(|k| k == key)
    }

    /// The signals the cluster in `slot` keeps in its own text, packed (its marks left out).
    fn sigs_of(&self, slot: u32) -> impl Iterator<Item = &[u8]> {
        let c = self.slots.get(slot).expect("a live slot");
        sig_iter(c.sigs()).filter(|k| k.len() > 1)
    }

    /// A packed signal of the cluster in `slot` as `(kind, text)`, its marks read.
    fn sig_text_of(&self, slot: u32, sig: &[u8]) -> (&'static str, String) {
        match sig[0] {
            SIG_FIRST_PDQ => ("pdq", pdq::format_hex(self.firsts.pdq(slot))),
            SIG_FIRST_MD5 => {
                let mut s = String::with_capacity(32);
                pdq::push_hex(&mut s, self.firsts.md5(slot));
                ("md5", s)
            }
            _ => sig_text(sig),
        }
    }

    /// The signals `cluster_id` holds, `(kind, text)` in the order it took them.
    pub fn held(&self, cluster_id: &str) -> Vec<(&'static str, String)> {
        let Some(slot) = self.slot_of(cluster_id) else {
            return Vec::new();
        };
        let c = self.slots.get(slot).expect("a live slot");
        sig_iter(c.sigs())
            .map(|sig| self.sig_text_of(slot, sig))
            .collect()
    }

    /// The clusters holding `text` (MD5: equal, at 0; PDQ: within `threshold`), nearest
    /// first, ties by cluster id, each once at its nearest: what the content index's
    /// `near` answers for the same clusters (an MD5's text that is a held PDQ hash's finds
    /// its holders, as the index's look-up does). Other kinds: none. A scan of every
    /// cluster's signals.
    pub fn near(&self, kind: SignalKind, text: &str, threshold: u32) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = Vec::new();
        match kind {
            SignalKind::Other => {}
            SignalKind::Pdq => {
                let Some(q) = pdq::parse_hex(text.as_bytes()) else {
                    return out;
                };
                let mut more = Vec::new();
                let mut found = Vec::new();
                for (page, p) in self.firsts.pages.iter().enumerate() {
                    if let Some(p) = p {
                        p.scan(&q, threshold, (page * PAGE) as u32, &mut found, &mut more);
                    }
                }
                for slot in more {
                    // rare: a cluster with signals in its own text besides its first ones
                    let first = self.firsts.flags(slot) & HAS_PDQ != 0;
                    let d = self
                        .sigs_of(slot)
                        .filter(|s| s[0] == SIG_PDQ)
                        .map(|s| pdq::distance(&q, &sig_hash(s)))
                        .chain(first.then(|| pdq::distance(&q, self.firsts.pdq(slot))))
                        .min();
                    if let Some(d) = d.filter(|&d| d <= threshold) {
                        found.push((slot, d));
                    }
                }
                out = found
                    .into_iter()
                    .map(|(slot, d)| (self.id_at(slot), d))
                    .collect();
            }
            SignalKind::Md5 => {
                let as_pdq = pdq::parse_hex(text.as_bytes())
                    .map(|h| sig_key(SignalKind::Pdq, &pdq::format_hex(&h)).expect("a hash"));
                let key = sig_key(SignalKind::Other, text).expect("not a PDQ's");
                if let Some(k) = &as_pdq {
                    self.holding(k, &mut out);
                }
                if out.is_empty() {
                    self.holding(&key, &mut out);
                }
            }
        }
        out.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        out
    }

    /// The clusters holding the packed signal `key`, at distance 0, in slot order.
    fn holding(&self, key: &[u8], out: &mut Vec<(String, u32)>) {
        let (has, hash) = match key[0] {
            SIG_PDQ => (HAS_PDQ, sig_hash(key)),
            SIG_MD5 => (HAS_MD5, [0; 4]),
            _ => (0, [0; 4]),
        };
        for (page, p) in self.firsts.pages.iter().enumerate() {
            let Some(p) = p else { continue };
            for (i, &fl) in p.flags.iter().enumerate() {
                if fl & (has | MORE) == 0 {
                    continue;
                }
                let first = fl & has != 0
                    && match key[0] {
                        SIG_PDQ => p.pdq[i] == hash,
                        _ => p.md5[i][..] == key[1..],
                    };
                let slot = (page * PAGE + i) as u32;
                if first || fl & MORE != 0 && self.sigs_of(slot).any(|s| s == key) {
                    out.push((self.id_at(slot), 0));
                }
            }
        }
    }

    /// The id of the cluster in `slot`, as a string.
    fn id_at(&self, slot: u32) -> String {
        self.slots.get(slot).expect("a live slot").id.to_string()
    }

    pub fn idle_ms(&self) -> i64 {
        self.idle_ms
    }

    /// A number for a touch of one of the caller's clusters: the detector's one order.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Clusters held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Posts of the clusters held.
    pub fn posts(&self) -> usize {
        self.slots.iter().map(|c| c.posts().len()).sum()
    }

    /// Events applied to the clusters held.
    pub fn live_events(&self) -> usize {
        self.live_events
    }

    pub fn contains(&self, cluster_id: &(impl AsCid + ?Sized)) -> bool {
        self.slot_of(cluster_id).is_some()
    }

    fn get(&self, cluster_id: &str) -> Option<&Cluster<H>> {
        let slot = self.slot_of(cluster_id)?;
        self.slots.get(slot).map(|c| &**c)
    }

    fn slot_of(&self, cluster_id: &(impl AsCid + ?Sized)) -> Option<u32> {
        self.by_id
            .find(&cluster_id.as_cid(), id_in(self.slots.slots()))
    }

    fn at(&mut self, slot: u32) -> &mut Cluster<H> {
        self.slots
            .get_mut(slot)
            .expect("a linked slot holds a cluster")
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = {
            let c = self.at(slot);
            (c.prev, c.next)
        };
        if prev == NONE {
            self.head = next;
        } else {
            self.at(prev).next = next;
        }
        if next == NONE {
            self.tail = prev;
        } else {
            self.at(next).prev = prev;
        }
    }

    fn push_back(&mut self, slot: u32) {
        self.seq += 1;
        let (seq, tail) = (self.seq, self.tail);
        let c = self.at(slot);
        c.seq = seq;
        c.prev = tail;
        c.next = NONE;
        if tail == NONE {
            self.head = slot;
        } else {
            self.at(tail).next = slot;
        }
        self.tail = slot;
    }

    /// The seq of the least recently touched cluster (`None`: none held).
    pub fn oldest_seq(&self) -> Option<u64> {
        self.front().map(|(seq, _)| seq)
    }

    /// The seq and last event time of the least recently touched cluster (`None`: none
    /// held): what [`Store::evict`] looks at first. Why: a caller that evicts as event time
    /// passes (the detector, on each event of a banked cluster) can tell from it that a
    /// call would evict nothing (the front touched at or after `barrier`, or not idle at
    /// `cut_ms`) and what the call would answer, without making it.
    pub fn front(&self) -> Option<(u64, i64)> {
        (self.head != NONE).then(|| {
            self.slots
                .get(self.head)
                .map_or((0, i64::MIN), |c| (c.seq, c.last_ms))
        })
    }

    /// Evict, oldest first, the clusters touched before `barrier` whose last event is at
    /// or before `cut_ms`; `true` when one touched before `barrier` is not idle (nothing
    /// after it is evicted: the detector's order stops there). `at` marks them in `out`.
    pub fn evict(&mut self, cut_ms: i64, barrier: u64, at: usize, out: &mut Outcome<H>) -> bool {
        self.evict_each(cut_ms, barrier, |id, posts| {
            out.evicted.push(Evicted {
                at,
                posts: posts.map(<[u8]>::to_vec).collect(),
                cluster_id: id.to_string(),
            });
        })
    }

    /// [`Store::evict`], each cluster read in place by `gone(id, its post ids)` as it goes:
    /// a caller that forgets the posts and drops the content itself (replay: 220,000 posts
    /// in a platform stream's final evictions) copies no id and no post, where each was an
    /// allocation (a fifth of the evictions' time, perf).
    pub fn evict_each(
        &mut self,
        cut_ms: i64,
        barrier: u64,
        mut gone: impl FnMut(&ClusterId, &mut dyn Iterator<Item = &[u8]>),
    ) -> bool {
        while self.head != NONE {
            let slot = self.head;
            let (seq, last) = {
                let c = self.at(slot);
                (c.seq, c.last_ms)
            };
            if seq >= barrier {
                return false;
            }
            if last > cut_ms {
                return true;
            }
            let c = self.remove_slot(slot);
            gone(&c.id, &mut c.post_ids());
        }
        false
    }

    fn remove_slot(&mut self, slot: u32) -> Cluster<H> {
        self.unlink(slot);
        let c = self
            .slots
            .remove(slot)
            .expect("a linked slot holds a cluster");
        self.by_id.remove(&c.id, slot);
        self.firsts.forget(slot);
        self.live_events -= c.ids_len();
        if self.by_id.len() * 4 < self.by_id.capacity() && self.by_id.capacity() > 1024 {
            // a flood gone: give its tables back (the slots are boxes: 8 bytes each)
            self.by_id.shrink(id_in(self.slots.slots()));
            self.slots.shrink();
        }
        *c
    }

    /// Apply one event to `cluster_id` (created if new), as the detector does to an
    /// unbanked cluster; `handle` is kept if the event waits, or given back if rejected.
    /// Returns whether it was applied (`false`: its id was applied here before).
    pub fn apply(
        &mut self,
        cluster_id: &(impl AsCid + ?Sized),
        ev: &Event<'_>,
        handle: H,
        out: &mut Outcome<H>,
    ) -> bool {
        let cluster_id = cluster_id.as_cid();
        let slot = match self.slot_of(&*cluster_id) {
            Some(slot) => {
                self.unlink(slot);
                slot
            }
            None => {
                let c = Box::new(Cluster::new(cluster_id.to_id(), ev.ts_ms));
                let slot = self.slots.insert(c);
                self.by_id
                    .insert(&cluster_id, slot, id_in(self.slots.slots()));
                out.created += 1;
                slot
            }
        };
        self.push_back(slot);
        let horizon = self.horizon_ms;
        let c = self.at(slot);
        let room = match ev.kind {
            Kind::Takedown => [0; 4],
            Kind::Upload | Kind::Share => Cluster::<H>::post_room(ev.post, ev.user),
        };
        if !c.insert_id(id_digest(ev.event_id), room) {
            out.duplicates += 1;
            return false;
        }
        out.kinds[ev.kind as usize] += 1;
        c.set_first_seen(ev.ts_ms);
        if ev.ts_ms < c.last_ms {
            out.late += 1;
        }
        c.last_ms = c.last_ms.max(ev.ts_ms);
        self.live_events += 1;
        let c = self.at(slot);
        if ev.kind == Kind::Takedown {
            if !c.take_down(ev.post) && c.find(ev.post).is_none() {
                c.rare().pending.push(Pending {
                    target: ev.post.into(),
                    kind: Kind::Takedown,
                    post: ev.post.into(),
                    user: ev.user.into(),
                    ts_ms: ev.ts_ms,
                    handle,
                });
            }
            return true;
        }
        add_posts(c, ev, handle, horizon, out);
        let now = c.last_ms;
        self.evaluate(slot, now, out);
        true
    }

    fn evaluate(&mut self, slot: u32, now: i64, out: &mut Outcome<H>) {
        let fewest = self.fewest;
        let rules = std::mem::take(&mut self.rules);
        let c = self.at(slot);
        if c.kept_count() >= fewest && !c.allowed() {
            let mut any = false;
            // one count a window: the rules of one window (the policy's two of 5 minutes,
            // one after the other) counted it each, two binary searches a rule
            let mut last: Option<(i64, usize)> = None;
            for r in &rules {
                let n = match last {
                    Some((w, n)) if w == r.window_ms => n,
                    _ => c.count(r.window_ms, now),
                };
                last = Some((r.window_ms, n));
                if n >= r.shares as usize {
                    any = true;
                    if !c.met().iter().any(|&(s, _)| s == r.severity) {
                        c.rare().met.push((r.severity, now));
                    }
                }
            }
            if any && !c.emerging() {
                c.sig_len |= EMERGING;
                out.crossings.push(Crossing {
                    cluster_id: c.id.to_string(),
                    shares_5m: c.count(300_000, now),
                    size: c.posts().len(),
                    live: c.live(),
                    first_seen_ms: c.first_seen_ms,
                    last_ms: c.last_ms,
                });
            }
        }
        self.rules = rules;
    }

    /// Whether the event `event_id` was applied to `cluster_id` (held).
    pub fn applied(&self, cluster_id: &str, event_id: &[u8]) -> bool {
        self.get(cluster_id)
            .is_some_and(|c| c.has_id(id_digest(event_id)))
    }

    pub fn size(&self, cluster_id: &str) -> Option<usize> {
        self.get(cluster_id).map(|c| c.posts().len())
    }

    pub fn summary(&self, cluster_id: &str) -> Option<Summary> {
        self.get(cluster_id).map(|c| Summary {
            seq: c.seq,
            first_seen_ms: c.first_seen_ms,
            last_ms: c.last_ms,
            size: c.posts().len(),
            live: c.live(),
            roots: c.posts().iter().filter(|p| p.parent() == NONE).count(),
            events: c.ids_len(),
            pending: c.pending().len(),
            emerging: c.emerging(),
            allowed: c.allowed(),
            met: c.met().to_vec(),
        })
    }

    /// Shares counted in `(now - window, now]`.
    pub fn count(&self, cluster_id: &str, window_ms: i64, now_ms: i64) -> usize {
        self.get(cluster_id)
            .map_or(0, |c| c.count(window_ms, now_ms))
    }

    /// The event times kept (within the horizon), sorted.
    pub fn times(&self, cluster_id: &str) -> Vec<i64> {
        self.get(cluster_id)
            .map_or_else(Vec::new, |c| c.kept_times())
    }

    /// Every post, parents first (the order they were added).
    pub fn made(&self, cluster_id: &str) -> Vec<Made<'_>> {
        self.get(cluster_id).map_or_else(Vec::new, Cluster::made)
    }

    /// The allow-list signal `(kind, signal)` matches (`add`) or no longer matches the
    /// cluster's content; `false` if the cluster is not here.
    pub fn allow(&mut self, cluster_id: &str, kind: &str, signal: &str, add: bool) -> bool {
        let Some(slot) = self.slot_of(cluster_id) else {
            return false;
        };
        let c = self.at(slot);
        let i = c
            .allowed_by()
            .iter()
            .position(|(k, s)| k == kind && s == signal);
        match (add, i) {
            (true, None) => c
                .rare()
                .allowed_by
                .push((kind.to_owned(), signal.to_owned())),
            (false, Some(i)) => {
                c.rare().allowed_by.remove(i);
            }
            _ => {}
        }
        true
    }

    pub fn allowed_by(&self, cluster_id: &str) -> Vec<(String, String)> {
        self.get(cluster_id)
            .map_or_else(Vec::new, |c| c.allowed_by().to_vec())
    }

    /// Take a cluster out (it turned out to be banked: the caller keeps it from now on).
    pub fn take(&mut self, cluster_id: &str) -> Option<Taken<H>> {
        let slot = self.slot_of(cluster_id)?;
        let c = self.remove_slot(slot);
        let posts = c
            .made()
            .into_iter()
            .map(|m| {
                (
                    m.post.to_vec(),
                    m.parent.map(<[u8]>::to_vec),
                    m.user.to_vec(),
                    m.ts_ms,
                    m.live,
                )
            })
            .collect();
        let (times, digests, emerging) = (c.kept_times(), c.digests(), c.emerging());
        let (pending, met, allowed_by) = match c.rare {
            Some(r) => (r.pending, r.met, r.allowed_by),
            None => (Vec::new(), Vec::new(), Vec::new()),
        };
        Some(Taken {
            cluster_id: c.id.to_string(),
            seq: c.seq,
            first_seen_ms: c.first_seen_ms,
            last_ms: c.last_ms,
            posts,
            latest_ms: times.last().copied(),
            times,
            digests,
            pending: pending
                .into_iter()
                .map(|p| (p.target.into_vec(), p.handle))
                .collect(),
            emerging,
            met,
            allowed_by,
        })
    }

    /// The pending events' handles of a cluster (in the order they came), by the post
    /// each waits for.
    pub fn pending(&self, cluster_id: &str) -> Vec<(&[u8], &H)> {
        self.get(cluster_id).map_or_else(Vec::new, |c| {
            c.pending()
                .iter()
                .map(|p| (&*p.target, &p.handle))
                .collect()
        })
    }

    /// Every pending event's handle, in no particular order (a garbage collector visiting
    /// what the store references).
    pub fn handles(&self) -> impl Iterator<Item = &H> {
        self.slots
            .iter()
            .flat_map(|c| c.pending().iter().map(|p| &p.handle))
    }

    /// Drop every cluster (a garbage collector breaking a cycle through the handles); the
    /// rules and limits stay.
    pub fn clear(&mut self) {
        self.slots = Slab::new();
        self.by_id = IdSlots::default();
        self.firsts = Firsts::default();
        (self.head, self.tail) = (NONE, NONE);
        self.live_events = 0;
    }

    /// Bytes held (an estimate from the capacities; the extension's allocator counts the
    /// real figure).
    pub fn nbytes(&self) -> usize {
        self.slots.iter().map(|c| c.bytes()).sum::<usize>()
            + self.slots.capacity() * 8
            + self.by_id.capacity() * 5
            + self.firsts.bytes()
    }
}

/// The id a live slot of `slots` holds.
fn id_in<'a, H>(slots: &'a [Option<Box<Cluster<H>>>]) -> impl Fn(u32) -> &'a ClusterId + 'a {
    |s| &slots[s as usize].as_ref().expect("a live slot").id
}

/// What [`add_post`] did with an event.
enum Step {
    TakenDown,
    /// its post is in the cluster already
    Duplicate,
    /// its parent is not (yet): it waits
    Waits,
    Added,
}

/// Add one event's post to `c` if its parent is there (a takedown takes its post down).
#[allow(clippy::too_many_arguments)]
fn add_post<H>(
    c: &mut Cluster<H>,
    kind: Kind,
    target: &[u8],
    post: &[u8],
    user: &[u8],
    ts_ms: i64,
    horizon: i64,
    out: &mut Outcome<H>,
) -> Step {
    if kind == Kind::Takedown {
        c.take_down(post);
        return Step::TakenDown;
    }
    let (known, parent) = match kind {
        Kind::Share => c.find_both(post, target),
        _ => (c.find(post), Some(NONE)),
    };
    if known.is_some() {
        return Step::Duplicate;
    }
    let Some(parent) = parent else {
        return Step::Waits; // its parent is later in event time
    };
    c.add(post, user, parent, ts_ms);
    if !c.add_time(ts_ms, horizon) {
        out.late += 1;
    }
    Step::Added
}

/// What waited for `post` (just added), onto `stack`, the first that waited on top.
fn release_waiting<H>(c: &mut Cluster<H>, post: &[u8], stack: &mut Vec<Pending<H>>) {
    if c.pending().iter().any(|p| *p.target == *post) {
        let rare = c.rare();
        let (kids, stay): (Vec<_>, Vec<_>) = std::mem::take(&mut rare.pending)
            .into_iter()
            .partition(|p| *p.target == *post);
        rare.pending = stay;
        stack.extend(kids.into_iter().rev());
    }
}

/// `ev`'s post (an upload's or a share's), then what waited for it, depth first in the
/// order they came: the recursion of `Detector._add_post`, on a stack. The event's own
/// texts are read in place: only one that waits is copied (its three texts and the stack
/// were four allocations an event, most of the unbanked store's).
fn add_posts<H>(c: &mut Cluster<H>, ev: &Event<'_>, handle: H, horizon: i64, out: &mut Outcome<H>) {
    let target = ev.parent.unwrap_or_default();
    match add_post(c, ev.kind, target, ev.post, ev.user, ev.ts_ms, horizon, out) {
        Step::Added => {}
        Step::TakenDown => return,
        Step::Duplicate => return out.rejected.push(handle),
        Step::Waits => {
            return c.rare().pending.push(Pending {
                target: target.into(),
                kind: ev.kind,
                post: ev.post.into(),
                user: ev.user.into(),
                ts_ms: ev.ts_ms,
                handle,
            })
        }
    }
    let mut stack = Vec::new();
    release_waiting(c, ev.post, &mut stack);
    while let Some(p) = stack.pop() {
        match add_post(
            c, p.kind, &p.target, &p.post, &p.user, p.ts_ms, horizon, out,
        ) {
            Step::Added => release_waiting(c, &p.post, &mut stack),
            Step::TakenDown => {}
            Step::Duplicate => out.rejected.push(p.handle),
            Step::Waits => c.rare().pending.push(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev<'a>(
        id: &'a str,
        kind: Kind,
        ts: i64,
        post: &'a str,
        parent: Option<&'a str>,
    ) -> Event<'a> {
        Event {
            event_id: id.as_bytes(),
            kind,
            ts_ms: ts,
            post: post.as_bytes(),
            user: b"u",
            parent: parent.map(str::as_bytes),
        }
    }

    fn store() -> Store<u32> {
        Store::new(
            vec![
                Rule {
                    severity: 0,
                    window_ms: 60_000,
                    shares: 3,
                },
                Rule {
                    severity: 1,
                    window_ms: 60_000,
                    shares: 5,
                },
            ],
            1_200_000,
            3_600_000,
        )
    }

    #[test]
    fn reshares_before_their_parent_wait_and_come_in_order() {
        let mut s = store();
        let mut out = Outcome::default();
        s.apply(
            "u-1",
            &ev("e2", Kind::Share, 10, "p2", Some("p1")),
            2,
            &mut out,
        );
        s.apply(
            "u-1",
            &ev("e3", Kind::Takedown, 11, "p2", None),
            3,
            &mut out,
        );
        s.apply(
            "u-1",
            &ev("e4", Kind::Share, 12, "p3", Some("p2")),
            4,
            &mut out,
        );
        assert_eq!(s.size("u-1"), Some(0));
        assert_eq!(s.pending("u-1").len(), 3);
        s.apply("u-1", &ev("e1", Kind::Upload, 5, "p1", None), 1, &mut out);
        let made: Vec<_> = s
            .made("u-1")
            .iter()
            .map(|m| (m.post.to_vec(), m.live))
            .collect();
        assert_eq!(
            made,
            [
                (b"p1".to_vec(), true),
                (b"p2".to_vec(), false),
                (b"p3".to_vec(), true)
            ]
        );
        assert!(s.pending("u-1").is_empty());
        assert_eq!(out.late, 1); // the upload: older than the last event seen
    }

    #[test]
    fn handles_are_the_pending_events_and_clear_empties_the_store() {
        let mut s = store();
        let mut out = Outcome::default();
        for (cid, e, handle) in [
            ("u-1", ev("e2", Kind::Share, 10, "p2", Some("p1")), 2),
            ("u-2", ev("e3", Kind::Share, 11, "p4", Some("p3")), 3),
            ("u-2", ev("e5", Kind::Upload, 9, "p5", None), 5),
        ] {
            s.apply(cid, &e, handle, &mut out);
        }
        let mut handles: Vec<u32> = s.handles().copied().collect();
        handles.sort_unstable();
        assert_eq!(handles, [2, 3]);
        s.clear();
        assert!(s.is_empty() && s.handles().next().is_none());
        assert_eq!((s.posts(), s.live_events(), s.oldest_seq()), (0, 0, None));
        // a store cleared works as a new one
        s.apply("u-2", &ev("e3", Kind::Upload, 12, "p3", None), 6, &mut out);
        assert_eq!((s.len(), s.size("u-2")), (1, Some(1)));
        assert!(!s.evict(i64::MAX, u64::MAX, 0, &mut out));
        assert!(s.is_empty());
    }

    #[test]
    fn a_second_post_is_rejected_and_a_copy_counted() {
        let mut s = store();
        let mut out = Outcome::default();
        assert!(s.apply("u-1", &ev("e1", Kind::Upload, 5, "p1", None), 1, &mut out));
        assert!(s.apply("u-1", &ev("e2", Kind::Upload, 6, "p1", None), 2, &mut out));
        assert!(!s.apply("u-1", &ev("e2", Kind::Upload, 6, "p1", None), 3, &mut out));
        assert_eq!((out.rejected.as_slice(), out.duplicates), (&[2][..], 1));
        assert!(s.applied("u-1", b"e2") && !s.applied("u-1", b"e9"));
        assert_eq!(s.live_events(), 2);
    }

    #[test]
    fn crossing_once_and_rules_met_remembered() {
        let mut s = store();
        let mut out = Outcome::default();
        s.apply("u-1", &ev("e0", Kind::Upload, 0, "p0", None), 0, &mut out);
        for i in 1..8 {
            let (id, post) = (format!("e{i}"), format!("p{i}"));
            s.apply(
                "u-1",
                &ev(&id, Kind::Share, i * 1000, &post, Some("p0")),
                0,
                &mut out,
            );
        }
        assert_eq!(out.crossings.len(), 1);
        assert_eq!(out.crossings[0].size, 3);
        assert_eq!(s.summary("u-1").unwrap().met, [(0, 2000), (1, 4000)]);
        // on the allow-list: never queued
        s.apply("a-1", &ev("x0", Kind::Upload, 0, "q0", None), 0, &mut out);
        for i in 1..8 {
            let (id, post) = (format!("x{i}"), format!("q{i}"));
            s.apply(
                "a-1",
                &ev(&id, Kind::Share, i, &post, Some("q0")),
                0,
                &mut out,
            );
        }
        assert_eq!(out.crossings.len(), 1);
    }

    #[test]
    fn eviction_follows_the_touch_order_and_stops_at_the_barrier() {
        let mut s = store();
        let mut out = Outcome::default();
        s.apply("u-1", &ev("a", Kind::Upload, 0, "p", None), 0, &mut out);
        let barrier = s.next_seq(); // the caller's cluster, touched between
        s.apply("u-2", &ev("b", Kind::Upload, 0, "q", None), 0, &mut out);
        s.apply(
            "u-3",
            &ev("c", Kind::Upload, 10_000_000, "r", None),
            0,
            &mut out,
        );
        assert_eq!(s.front(), Some((barrier - 1, 0)));
        assert!(!s.evict(5_000_000, barrier, 7, &mut out));
        assert_eq!(out.evicted.len(), 1);
        // u-2 is the front now: touched after the barrier, so nothing more goes before it
        let (seq, last) = s.front().unwrap();
        assert!(seq > barrier && last == 0);
        assert!(!s.evict(5_000_000, barrier, 7, &mut out));
        assert_eq!(out.evicted.len(), 1);
        assert_eq!(
            (out.evicted[0].at, out.evicted[0].posts.clone()),
            (7, vec![b"p".to_vec()])
        );
        assert!(s.evict(5_000_000, u64::MAX, 8, &mut out)); // u-3 is not idle: stops there
        assert_eq!(out.evicted.len(), 2);
        assert_eq!(s.front().map(|(_, last)| last), Some(10_000_000));
        assert_eq!((s.len(), s.live_events()), (1, 1));
        // a slot reused
        s.apply("u-4", &ev("d", Kind::Upload, 0, "s", None), 0, &mut out);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn many_posts_are_found_through_the_index() {
        let mut s = store();
        let mut out = Outcome::default();
        s.apply("u-1", &ev("e0", Kind::Upload, 0, "p0", None), 0, &mut out);
        for i in 1..500 {
            let (id, post, parent) = (format!("e{i}"), format!("p{i}"), format!("p{}", i / 2));
            s.apply(
                "u-1",
                &ev(&id, Kind::Share, i, &post, Some(&parent)),
                0,
                &mut out,
            );
        }
        assert_eq!(s.size("u-1"), Some(500));
        s.apply(
            "u-1",
            &ev("t", Kind::Takedown, 600, "p321", None),
            0,
            &mut out,
        );
        s.apply(
            "u-1",
            &ev("d", Kind::Share, 601, "p400", Some("p1")),
            9,
            &mut out,
        );
        assert_eq!(out.rejected, [9]);
        let m = s.made("u-1");
        assert_eq!((m[321].live, m[400].parent), (false, Some(&b"p200"[..])));
        let taken = s.take("u-1").unwrap();
        assert_eq!(
            (taken.posts.len(), taken.digests.len(), s.len()),
            (500, 502, 0)
        );
    }

    #[test]
    fn a_post_is_12_bytes_and_keeps_its_parent_and_whether_it_is_up() {
        assert_eq!(std::mem::size_of::<Post>(), 12);
        assert_eq!(std::mem::size_of::<Cluster<()>>(), 104);
        let mut c: Cluster<()> = Cluster::new(ClusterId::of("u-0000000000000001"), 0);
        c.add(b"p0", b"u0", NONE, 1);
        c.add(b"p1", b"user-1", 0, 2);
        assert!(c.take_down(b"p1") && !c.take_down(b"p1"));
        let (p0, p1) = (c.posts()[0], c.posts()[1]);
        assert_eq!(
            (p0.parent(), p0.live(), p1.parent(), p1.live()),
            (NONE, true, 0, false)
        );
        assert_eq!(c.texts(1, 4), (&b"p1"[..], &b"user-1"[..]));
        assert!(c.id.is("u-0000000000000001") && !c.id.is("u-1") && !c.allowed());
        assert!(Cluster::<()>::new(ClusterId::of("a-x"), 0).allowed());
    }

    #[test]
    fn ids_and_users_of_any_length_come_back_with_and_without_the_index() {
        let long = vec![b'x'; 70_000];
        let mut c: Cluster<()> = Cluster::new(ClusterId::of("u-0000000000000001"), 0);
        let mut model: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for i in 0..30usize {
            let mut post = format!("p{i}").into_bytes();
            if i % 7 == 3 {
                post.extend_from_slice(&long[..65_535 + i]); // at or past the 16-bit length
            }
            let user = if i % 5 == 1 { long.clone() } else { Vec::new() };
            let parent = if i == 0 { NONE } else { (i / 2) as u32 };
            c.add(&post, &user, parent, i as i64);
            model.push((post, user));
            for (j, (p, u)) in model.iter().enumerate() {
                assert_eq!(c.find(p), Some(j as u32));
                assert_eq!(c.made()[j].user, &u[..]);
            }
            assert_eq!(c.find(b"absent"), None);
        }
        assert!(c.index().is_some());
        let made = c.made();
        assert_eq!(made[9].parent, Some(&model[4].0[..]));
    }

    #[test]
    fn velocity_keeps_the_horizon_and_counts_late_ones() {
        let (mut t, mut start) = (Lists::default(), 0);
        for x in [0, 10, 20, 5] {
            assert!(t.add_time(&mut start, x, 100));
        }
        assert_eq!(t.count_times(start, 100, 20), 4);
        assert!(t.add_time(&mut start, 200, 100));
        assert!(!t.add_time(&mut start, 100, 100)); // at or before latest - horizon
        let kept = t.kept_times(start).len();
        assert_eq!((kept, t.count_times(start, 1000, 200)), (1, 1));
    }

    #[test]
    fn times_drop_what_left_the_horizon_as_a_plain_list_would() {
        // past 8 times gone, the list is cut: what is kept and counted stays the same
        let (mut t, mut start, mut all) = (Lists::default(), 0, Vec::new());
        for i in 0..200u32 {
            let x = i * 10 + 7 - (i % 3) * 7; // a few late ones
            let latest = all.last().copied().unwrap_or(0);
            let kept = all.is_empty() || i64::from(x) > i64::from(latest) - 100;
            assert_eq!(t.add_time(&mut start, x, 100), kept);
            if kept {
                all.push(x);
                all.sort_unstable();
            }
            let now = i64::from(*all.last().unwrap());
            let model: Vec<u32> = all
                .iter()
                .copied()
                .filter(|&y| i64::from(y) > now - 100)
                .collect();
            assert_eq!(t.kept_times(start), &model[..]);
            assert_eq!(
                t.count_times(start, 50, now),
                model.iter().filter(|&&y| i64::from(y) > now - 50).count()
            );
        }
        assert!(
            t.cap[TIMES] < 64,
            "the cut list gives its front back to reuse"
        );
    }

    #[test]
    fn a_clusters_lists_share_one_allocation_and_each_keeps_what_a_vec_would() {
        // each section changed as a Vec beside it, in a random order: pushes (room made
        // one at a time while small, then doubled), inserts, cuts of the front, a section
        // given up
        let (mut l, mut rng) = (Lists::default(), 7u64);
        let (mut ids, mut times, mut posts, mut text) = (vec![], vec![], vec![], vec![]);
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) as usize
        };
        for step in 0..3000 {
            let r = next();
            match r % 7 {
                0 => {
                    let d = r as u128 * 0x1_0000_0001;
                    l.push(IDS, stored(d));
                    ids.push(d);
                }
                1 => {
                    l.push(TIMES, r as u32);
                    times.push(r as u32);
                }
                2 if !times.is_empty() => {
                    let at = next() % (times.len() + 1);
                    l.insert(TIMES, at, &[bytes_of(&!(r as u32))], false);
                    times.insert(at, !(r as u32));
                }
                3 if times.len() > 4 => {
                    let n = next() % times.len();
                    l.remove_front(TIMES, n);
                    times.drain(..n);
                }
                4 => {
                    let p = Post {
                        id_len: r as u16,
                        user_len: 3,
                        parent_down: r as u32,
                        ts_off: step,
                    };
                    l.push(POSTS, p);
                    posts.push(p);
                }
                5 => {
                    let at = next() % (text.len() + 1);
                    let bytes = format!("t{r}");
                    l.insert(TEXT, at, &[b"<", bytes.as_bytes()], text.len() < 40);
                    text.splice(at..at, b"<".iter().chain(bytes.as_bytes()).copied());
                }
                _ if ids.len() > 30 => {
                    l.len[IDS] = 0;
                    l.set_cap(IDS, 0);
                    ids.clear();
                }
                _ => {}
            }
            let got: Vec<u128> = l.get(IDS).iter().map(|&s| digest_of(s)).collect();
            assert_eq!(got, ids);
            assert_eq!(l.get::<u32>(TIMES), &times[..]);
            let got: Vec<(u16, u32, u32)> = l
                .get::<Post>(POSTS)
                .iter()
                .map(|p| (p.id_len, p.parent_down, p.ts_off))
                .collect();
            let want: Vec<(u16, u32, u32)> = posts
                .iter()
                .map(|p| (p.id_len, p.parent_down, p.ts_off))
                .collect();
            assert_eq!(got, want);
            assert_eq!(l.get::<u8>(TEXT), &text[..]);
            assert!((0..4).all(|s| l.cap[s] >= l.len[s]));
        }
        l.get_mut::<Post>(POSTS)[0].ts_off = 9;
        assert_eq!(l.get::<Post>(POSTS)[0].ts_off, 9);
        assert!(l.bytes() >= ids.len() * 16 + times.len() * 4 + posts.len() * 12 + text.len());
        // small lists: room for exactly what they hold
        let mut small = Lists::default();
        small.push(IDS, stored(1));
        small.push(POSTS, posts[0]);
        small.insert(TEXT, 0, &[b"p0", b"u0"], true);
        assert_eq!(small.bytes(), 16 + 12 + 4);
        // the cluster record: was 192 bytes with four Vecs, a 24-byte id and its post index;
        // 144 with four 16-byte lists, and its live posts and roots counted
        assert_eq!(std::mem::size_of::<ClusterId>(), 16);
        assert_eq!(std::mem::size_of::<Lists>(), 40);
        assert!(std::mem::size_of::<Cluster<()>>() <= 104);
    }

    /// A store that keeps signals answers as a content index of the same clusters would
    /// (the one a clusters partition kept beside it): every near and held list, through
    /// signals held, posts added after them (the text before the signals), evictions,
    /// takes and clusters of an evicted id made afresh.
    /// Not a test: what a bank change's search costs (`cargo test --release -p
    /// viralwatch-core scan_timing -- --ignored --nocapture`): 330,000 clusters of three
    /// posts, each holding a PDQ hash and an MD5, half of them taken out and made again
    /// (their records and texts where freed ones were, as a long-running worker's), CPU
    /// time of `near`, medians of 21.
    #[test]
    #[ignore]
    fn scan_timing() {
        use crate::content::Kind as K;
        use crate::testing::Rng;
        let mut rng = Rng(0x5eed_0000_1111_2222);
        let n = 330_000_u64;
        let mut s: Store<u32> = Store::with_signals(Vec::new(), 1_200_000, 3_600_000);
        let mut hashes = Vec::new();
        let make = |s: &mut Store<u32>, i: u64, rng: &mut Rng| {
            let cid = format!("u-{i:016x}");
            let mut out = Outcome::default();
            for k in 0..3 {
                let (eid, post) = (format!("e{i}-{k}"), format!("p{i}-{k}"));
                let parent = format!("p{i}-0");
                let kind = if k == 0 { Kind::Upload } else { Kind::Share };
                let e = ev(
                    &eid,
                    kind,
                    (i + k) as i64,
                    &post,
                    (k > 0).then_some(&parent[..]),
                );
                s.apply(&cid, &e, 0, &mut out);
            }
            let h = pdq::format_hex(&rng.hash());
            let m = format!("{:032x}", rng.next());
            s.hold(&cid, &[(K::Pdq, &h), (K::Md5, &m)]).unwrap();
            (h, m)
        };
        for i in 0..n {
            hashes.push(make(&mut s, i, &mut rng));
        }
        for i in 0..n {
            if rng.next() % 2 == 0 {
                assert!(s.take(&format!("u-{i:016x}")).is_some());
                hashes[i as usize] = make(&mut s, n + i, &mut rng);
            }
        }
        let time = |f: &mut dyn FnMut() -> usize| {
            let mut t: Vec<f64> = (0..21)
                .map(|_| {
                    let start = std::time::Instant::now();
                    assert!(f() <= 1);
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            t.sort_by(f64::total_cmp);
            t[10]
        };
        let (h, m) = hashes[12_345].clone();
        let absent = pdq::format_hex(&rng.hash());
        println!(
            "clusters {}: pdq held {:.3} ms, pdq absent {:.3} ms, md5 held {:.3} ms",
            s.len(),
            time(&mut || s.near(K::Pdq, &h, 31).len()),
            time(&mut || s.near(K::Pdq, &absent, 31).len()),
            time(&mut || s.near(K::Md5, &m, 0).len()),
        );
    }

    /// A flood of clusters with signals, evicted: the first hashes' pages go back with the
    /// slots, and what comes after (slots reused, pages made again) answers as it should.
    #[test]
    fn a_flood_of_signals_evicted_gives_its_pages_back() {
        use crate::content::Kind as K;
        let mut s: Store<u32> = Store::with_signals(Vec::new(), 1_200_000, 3_600_000);
        let hash = |i: u64| pdq::format_hex(&[i, i.rotate_left(17), !i, i ^ 0x5555]);
        let md5 = |i: u64| format!("{i:032x}");
        let mut out = Outcome::default();
        for i in 0..5_000_u64 {
            let (cid, post, eid) = (format!("u-{i}"), format!("p{i}"), format!("e{i}"));
            let e = ev(&eid, Kind::Upload, i as i64, &post, None);
            s.apply(&cid, &e, 0, &mut out);
            let (h, m) = (hash(i), md5(i));
            assert_eq!(s.hold(&cid, &[(K::Pdq, &h), (K::Md5, &m)]).unwrap(), 2);
        }
        let full = s.nbytes();
        assert_eq!(s.near(K::Pdq, &hash(4_321), 0), [("u-4321".to_owned(), 0)]);
        let mut out = Outcome::default();
        s.evict(i64::MAX, u64::MAX, 0, &mut out); // all, oldest (lowest slots) first
        assert!(s.is_empty());
        assert!(s.nbytes() * 10 < full, "{} of {full}", s.nbytes());
        for i in 0..3_u64 {
            let (cid, post, eid) = (format!("v-{i}"), format!("q{i}"), format!("f{i}"));
            let e = ev(&eid, Kind::Upload, 10_000_000, &post, None);
            s.apply(&cid, &e, 0, &mut out);
            let m = md5(i);
            s.hold(&cid, &[(K::Md5, &m)]).unwrap();
        }
        // a slot whose cluster had a hash answers no more for it
        assert!(s.near(K::Pdq, &hash(1), 0).is_empty());
        assert!(s.near(K::Pdq, &hash(4_321), 31).is_empty());
        assert_eq!(s.near(K::Md5, &md5(2), 0), [("v-2".to_owned(), 0)]);
        assert_eq!(s.held("v-1"), [("md5", md5(1))]);
    }

    #[test]
    fn signals_kept_in_the_store_answer_as_a_content_index() {
        use crate::content::{ContentIndex, Kind as K};
        use crate::testing::Rng;
        let mut rng = Rng(0x5eed_1234_9876_abcd);
        fn near_one(rng: &mut Rng, base: &[[u64; 4]]) -> String {
            let (i, d) = ((rng.next() % 6) as usize, (rng.next() % 40) as u32);
            pdq::format_hex(&rng.flip(&base[i], d))
        }
        let base: Vec<[u64; 4]> = (0..6).map(|_| rng.hash()).collect();
        let md5s: Vec<String> = (0..5).map(|i| format!("{:032x}", i * 7919 + 1)).collect();
        let mut s: Store<u32> = Store::with_signals(Vec::new(), 1_200_000, 3_600_000);
        let mut idx = ContentIndex::scan_only();
        let mut t = 0_i64;
        let mut n = 0_u32;
        let (mut hits, mut taken) = (0, 0);
        for step in 0..3_000 {
            let cid = format!("u-{}", rng.next() % 40);
            match rng.next() % 10 {
                0..=4 => {
                    // an event (a post), then maybe its content
                    n += 1;
                    t += (rng.next() % 5_000) as i64;
                    let (eid, post) = (format!("e{n}"), format!("p{n}"));
                    let e = Event {
                        event_id: eid.as_bytes(),
                        kind: Kind::Upload,
                        ts_ms: t,
                        post: post.as_bytes(),
                        user: b"someone",
                        parent: None,
                    };
                    let mut out = Outcome::default();
                    s.apply(&cid, &e, n, &mut out);
                    for gone in &out.evicted {
                        idx.drop_cluster(&gone.cluster_id);
                    }
                    if rng.next() % 3 > 0 {
                        let h = near_one(&mut rng, &base);
                        let m = md5s[(rng.next() % 5) as usize].clone();
                        let odd = format!("odd{}", rng.next() % 3);
                        let mut sig: Vec<(K, &str)> = vec![(K::Md5, &m), (K::Pdq, &h)];
                        if rng.next() % 4 == 0 {
                            sig.push((K::Md5, &odd));
                        }
                        if rng.next() % 2 == 0 {
                            sig.reverse();
                        }
                        let new = s.hold(&cid, &sig).unwrap();
                        let (taken, _) = idx.add(&cid, &sig).unwrap();
                        assert_eq!(new, taken.len(), "step {step}");
                    }
                }
                5 => {
                    // taken out (banked), its signals with it
                    let held = s.held(&cid);
                    let want: Vec<String> = idx.held(&cid).iter().map(|t| t.to_string()).collect();
                    assert_eq!(
                        held.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>(),
                        want
                    );
                    let live = s.contains(&cid);
                    taken += usize::from(live && !want.is_empty());
                    assert_eq!(s.take(&cid).is_some(), live);
                    assert!(s.held(&cid).is_empty());
                    idx.drop_cluster(&cid);
                }
                6 => {
                    let mut out = Outcome::default();
                    t += 1_000_000;
                    s.evict(t - 3_600_000, u64::MAX, 0, &mut out);
                    for gone in &out.evicted {
                        idx.drop_cluster(&gone.cluster_id);
                    }
                }
                _ => {
                    let h = near_one(&mut rng, &base);
                    let m = &md5s[(rng.next() % 5) as usize];
                    let odd = format!("odd{}", rng.next() % 3);
                    let up = m.to_uppercase();
                    for (k, q, th) in [
                        (K::Pdq, &h, (rng.next() % 40) as u32),
                        (K::Md5, m, 31),
                        (K::Md5, &up.to_lowercase(), 31),
                        (K::Md5, &odd, 0),
                        (K::Md5, &h, 31),
                        (K::Pdq, &odd, 31),
                        (K::Other, m, 31),
                    ] {
                        let want: Vec<(String, u32)> = idx
                            .near(k, q, th)
                            .into_iter()
                            .map(|(c, d)| (c.to_string(), d))
                            .collect();
                        hits += usize::from(want.len() > 1);
                        assert_eq!(s.near(k, q, th), want, "step {step}: {k:?} {q}");
                    }
                }
            }
            let held: Vec<String> = s.held(&cid).into_iter().map(|(_, t)| t).collect();
            let want: Vec<String> = idx.held(&cid).iter().map(|t| t.to_string()).collect();
            assert_eq!(held, want, "step {step}");
            // the posts' text is whole before the signals
            if let Some(c) = s.get(&cid) {
                assert_eq!(c.post_ids().count(), c.posts().len());
                assert!(c.post_ids().all(|p| p.starts_with(b"p")));
            }
        }
        assert!(
            hits > 100 && taken > 20,
            "{hits} answers of two or more, {taken} taken"
        );
        // a held PDQ hash's text asked as an MD5 finds its holders (the index's look-up)
        let h = pdq::format_hex(&base[0]);
        let want: Vec<(String, u32)> = idx
            .near(K::Md5, &h, 0)
            .into_iter()
            .map(|(c, d)| (c.to_string(), d))
            .collect();
        assert_eq!(s.near(K::Md5, &h, 0), want);
        // a bad PDQ text is refused, nothing held
        assert!(s
            .hold("u-1", &[(K::Md5, md5s[0].as_str()), (K::Pdq, "zz")])
            .is_err());
        // a store that keeps none holds none
        let mut plain: Store<u32> = store();
        let mut out = Outcome::default();
        plain.apply("u-1", &ev("e", Kind::Upload, 0, "p", None), 0, &mut out);
        assert_eq!(plain.hold("u-1", &[(K::Md5, &md5s[0])]).unwrap(), 0);
        assert!(plain.held("u-1").is_empty() && plain.near(K::Md5, &md5s[0], 0).is_empty());
    }

    /// A post's time is an offset from the cluster's first seen: a late event older than
    /// every other moves them all, and a time past 49 days of the first seen is kept aside;
    /// each post's time is the one it came with, whatever happened since.
    #[test]
    fn velocity_times_are_exact_across_long_lives_and_late_firsts() {
        // event times kept as 32-bit offsets: a cluster alive for months (its times no
        // longer within 49 days of its first seen) and late events before its first seen
        // (the offsets move) count what a plain list of i64 would
        let mut s = store();
        let mut out = Outcome::default();
        let (day, horizon) = (86_400_000_i64, 1_200_000_i64);
        let t0 = 1_767_225_600_000_i64;
        let mut rng = 11u64;
        let mut next = |n: u64| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) % n
        };
        let (mut model, mut latest, mut t) = (Vec::<i64>::new(), None::<i64>, t0);
        for n in 0..400 {
            t = match next(10) {
                0 => t + 40 * day + next(1000) as i64,    // a long quiet spell
                1 => t - next(2 * horizon as u64) as i64, // late: within the horizon or not
                2 => t0 - (n as i64) * day,               // before the first seen
                _ => t + next(90_000) as i64,
            };
            let (eid, post) = (format!("e{n}"), format!("p{n}"));
            let parent = (n > 0).then_some("p0");
            let kind = if n == 0 { Kind::Upload } else { Kind::Share };
            s.apply("u-1", &ev(&eid, kind, t, &post, parent), 0, &mut out);
            if latest.map_or(true, |l| t > l - horizon) {
                let at = model.partition_point(|&x| x <= t);
                model.insert(at, t);
                let l = latest.map_or(t, |l| l.max(t));
                latest = Some(l);
                model.retain(|&x| x > l - horizon);
            }
            assert_eq!(s.times("u-1"), model, "after {n}");
            let now = latest.unwrap();
            for w in [1, 60_000, horizon] {
                let want = model.iter().filter(|&&x| x > now - w && x <= now).count();
                assert_eq!(s.count("u-1", w, now), want, "after {n}, window {w}");
            }
        }
        assert!(
            s.get("u-1")
                .unwrap()
                .rare
                .as_deref()
                .is_some_and(|r| r.times_base.is_some()),
            "the walk took the base aside"
        );
    }

    #[test]
    fn post_times_survive_late_firsts_and_long_lives() {
        let mut s = store();
        let mut out = Outcome::default();
        let day = 86_400_000_i64;
        let t0 = 1_767_225_600_000_i64;
        let mut want = Vec::new();
        let times = [
            t0,
            t0 + 5,
            t0 - 7,        // late: the first seen moves back
            t0 + 30 * day, // within 49 days of it
            t0 + 60 * day, // not: aside
            t0 - 20 * day, // a late first: the 30 days' one goes aside too
            t0 + 60 * day + 1,
            i64::MIN / 2, // absurd, but a time
        ];
        for (n, &t) in times.iter().enumerate() {
            let (eid, post) = (format!("e{n}"), format!("p{n}"));
            let parent = (n > 0).then_some("p0");
            let kind = if n == 0 { Kind::Upload } else { Kind::Share };
            s.apply("u-1", &ev(&eid, kind, t, &post, parent), 0, &mut out);
            want.push((post, t));
            let got: Vec<(String, i64)> = s
                .made("u-1")
                .iter()
                .map(|m| (String::from_utf8(m.post.to_vec()).unwrap(), m.ts_ms))
                .collect();
            assert_eq!(got, want, "after {n}");
        }
        assert_eq!(s.summary("u-1").unwrap().first_seen_ms, i64::MIN / 2);
        let taken = s.take("u-1").unwrap();
        let got: Vec<i64> = taken.posts.iter().map(|p| p.3).collect();
        assert_eq!(got, times);
    }
}
