//! Unbanked uploads' clusters, as the index's owner assigns them: the per-upload
//! part of `streams.emerging.EmergingClusters`.
//!
//! An unbanked upload joins the live cluster holding its MD5, else the one
//! holding the nearest PDQ hash within the threshold (ties by cluster id), else
//! starts its own (an id the caller gives: a digest of its exact hash). Beside
//! the clusters' content ([`ContentIndex`], which the caller owns and passes in,
//! as the Python side also searches it for videos), [`IdleClusters`] keeps:
//!
//! - the idle order: each cluster's latest event time, least recently touched
//!   first; a cluster whose latest event is `idle_ms` before the watermark is
//!   evicted, from the front, stopping at the first that is not (the order of
//!   touches, not of times: the Python `OrderedDict`'s);
//! - what changed since the state log last took it: the clusters touched, in
//!   the order last touched, with the signals each took; the clusters evicted.
//!   Not the signals' texts: a cluster's signals only grow while it lives, in
//!   the order it took them, so a change keeps how many it held before, and the
//!   texts are read from the index when the log takes them. Replay logs nothing
//!   ([`IdleClusters::unlogged`]): kept there, the changes would grow with every
//!   cluster ever touched (60 B a live post at a million, `bench/bench_core.py`).
//!
//! ```
//! use viralwatch_core::content::{ContentIndex, Kind};
//! use viralwatch_core::emerging::IdleClusters;
//! let (mut index, mut idle) = (ContentIndex::new(), IdleClusters::new(60_000));
//! let f = "f".repeat(64);
//! let near = format!("{}0", "f".repeat(63));
//! let a = idle.assign(&mut index, &[(Kind::Pdq, &f)], "u-a", 0, 31).unwrap();
//! let b = idle.assign(&mut index, &[(Kind::Pdq, &near)], "u-b", 1_000, 31).unwrap();
//! assert_eq!((a.to_string(), b.to_string(), idle.joined), ("u-a".into(), "u-a".into(), 1));
//! assert_eq!(idle.expire(&index, 61_000), ["u-a".into()]);
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use crate::blake2b::{blake2b, blake2b_u64, hex};
#[cfg(doc)]
use crate::content::hash_of;
use crate::content::{AsCid, AsSignal, BadSignal, Cid, ClusterId, ContentIndex, HeldSignal};
use crate::keyed::Keyed;
use crate::prefetch::prefetch;

/// The id of the cluster content no bank knows starts: `u-` and the 8-byte BLAKE2b of
/// `key` (`md5:<hex>`, `pdq:<hex>` or `vpdq:<frames>`, as `streams.emerging` makes it).
///
/// ```
/// assert_eq!(viralwatch_core::emerging::unbanked_id(b"abc"), "u-d8bb14d833d59559");
/// ```
pub fn unbanked_id(key: &[u8]) -> String {
    format!("u-{}", hex(&blake2b(key, 8)))
}

/// [`unbanked_id`] as a [`Cid`] (no text made).
///
/// ```
/// use viralwatch_core::emerging::{unbanked_cid, unbanked_id};
/// for key in [&b"abc"[..], b"", &[b'x'; 200]] {
///     assert_eq!(unbanked_cid(key).to_string(), unbanked_id(key));
/// }
/// ```
pub fn unbanked_cid(key: &[u8]) -> Cid {
    Cid::from_id(ClusterId::Hex(b'u', blake2b_u64(key)))
}

/// A cluster touched since the last [`IdleClusters::take_changes`]: its latest
/// event time and the signals it took (compact: the state log writes them, no text made).
pub type Change = (ClusterId, i64, Vec<HeldSignal>);

/// A cluster changed since the last [`IdleClusters::take_changes`]: its place in the
/// changes' order, and how many signals it held before (those after are the ones it took).
#[derive(Debug, Clone, Copy)]
struct Changed {
    seq: u64,
    held_before: usize,
    born: u32,
}

/// A cluster's place in the idle order, by its slot in the index; `born` tells the
/// cluster it is for from a later one in the same slot.
#[derive(Debug, Clone, Copy, Default)]
struct Idle {
    last: i64,
    prev: u32,
    next: u32,
    born: u32,
    linked: bool,
}

/// A slot meaning "none" (the ends of the idle order).
const NONE: u32 = u32::MAX;

/// The idle order and the changes of unbanked clusters (see the module doc), kept by the
/// clusters' slots in the index (24 bytes a cluster: no copy of its id, no table of its own).
#[derive(Debug)]
pub struct IdleClusters {
    idle_ms: i64,
    /// by the index's slot
    slots: Vec<Idle>,
    head: u32,
    tail: u32,
    live: usize,
    /// whether changes are kept for a state log (not in replay)
    log: bool,
    /// by the index's slot (`Keyed`: with SipHash, `touch` was 44.7 M instructions of
    /// 100,000 events of a worker's, 25.7 M now; the changes are sorted, not read in its order)
    changed: HashMap<u32, Changed, Keyed>,
    next: u64,
    evicted: Vec<Arc<str>>,
    /// evictions to wait for before the idle order is walked again to trim the slots (a
    /// walk that freed nothing is paid for by as many evictions as it walked clusters)
    trim_after: usize,
    /// walks of the idle order made to trim (tests)
    #[cfg(test)]
    trim_walks: u64,
    /// uploads that joined a live cluster of other content
    pub joined: u64,
}

impl IdleClusters {
    /// The idle order and the changes a state log takes ([`Self::take_changes`]).
    pub fn new(idle_ms: i64) -> Self {
        Self {
            idle_ms,
            slots: Vec::new(),
            head: NONE,
            tail: NONE,
            live: 0,
            log: true,
            changed: HashMap::default(),
            next: 0,
            evicted: Vec::new(),
            trim_after: 0,
            #[cfg(test)]
            trim_walks: 0,
            joined: 0,
        }
    }

    /// The idle order alone, for a caller that logs nothing (replay): no change is kept.
    pub fn unlogged(idle_ms: i64) -> Self {
        Self {
            log: false,
            ..Self::new(idle_ms)
        }
    }

    /// Live clusters (in the idle order).
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn tick(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Whether slot `s` is in the idle order for the cluster the index holds there now.
    fn linked(&self, index: &ContentIndex, s: u32) -> bool {
        self.slots
            .get(s as usize)
            .is_some_and(|i| i.linked && index.born_at(s) == Some(i.born))
    }

    fn unlink(&mut self, s: u32) {
        let Idle { prev, next, .. } = self.slots[s as usize];
        if prev == NONE {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NONE {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
        self.slots[s as usize].linked = false;
        self.live -= 1;
    }

    fn push_back(&mut self, s: u32, last: i64, born: u32) {
        self.slots[s as usize] = Idle {
            last,
            prev: self.tail,
            next: NONE,
            born,
            linked: true,
        };
        if self.tail == NONE {
            self.head = s;
        } else {
            self.slots[self.tail as usize].next = s;
        }
        self.tail = s;
        self.live += 1;
    }

    /// `cluster`'s latest event is at least `ts_ms`; it moves to the end of the idle order.
    /// Its slot, if the index holds it (a cluster it does not hold is not kept).
    fn note(
        &mut self,
        index: &ContentIndex,
        cluster: &(impl AsCid + ?Sized),
        ts_ms: i64,
    ) -> Option<(u32, u32)> {
        let s = index.slot(cluster)?;
        let born = index.born_at(s)?;
        if self.slots.len() <= s as usize {
            let want = s as usize + 1;
            if want > self.slots.capacity() {
                // a quarter more, once full (asking for a quarter past the length at every
                // new slot reallocated at every new slot: 36,000 reallocations a replay)
                self.slots
                    .reserve_exact((want - self.slots.len()).max(self.slots.len() / 4));
            }
            self.slots.resize(want, Idle::default());
        }
        let last = if self.linked(index, s) {
            let last = self.slots[s as usize].last;
            self.unlink(s);
            last.max(ts_ms)
        } else {
            if self.slots[s as usize].linked {
                self.unlink(s); // a cluster the index dropped without expire: gone
            }
            ts_ms
        };
        self.push_back(s, last, born);
        Some((s, born))
    }

    /// Read ahead what touching the clusters of keyed hashes `clusters` ([`hash_of`]) reads
    /// first, a pass over them all at a time so that their cache misses overlap: their
    /// buckets in `index`, their slots there and here, then their neighbours in the idle
    /// order (a touch unlinks the cluster). A wrong guess only makes a hint useless;
    /// nothing changes.
    pub fn warm_many(&self, index: &ContentIndex, clusters: &[u64]) {
        index.prefetch_ids(clusters);
        for &h in clusters {
            if let Some(s) = index.likely_slot(h) {
                prefetch(&self.slots, s as usize);
            }
        }
        for &h in clusters {
            if let Some(i) = index
                .likely_slot(h)
                .and_then(|s| self.slots.get(s as usize))
            {
                prefetch(&self.slots, i.prev as usize);
                prefetch(&self.slots, i.next as usize);
            }
        }
    }

    /// An event of `cluster` at `ts_ms` (only clusters `index` holds are kept): not idle,
    /// and changed (last in the changes' order).
    pub fn touch(&mut self, index: &ContentIndex, cluster: &(impl AsCid + ?Sized), ts_ms: i64) {
        let Some((s, born)) = self.note(index, cluster, ts_ms) else {
            return;
        };
        let seq = self.tick();
        if !self.log {
            return;
        }
        let held_before = match self.changed.get(&s) {
            Some(c) if c.born == born => c.held_before,
            _ => index.held_count_at(s),
        };
        self.changed.insert(
            s,
            Changed {
                seq,
                held_before,
                born,
            },
        );
    }

    /// `cluster` took `added` signals (new to it) just before it was touched, for the state
    /// log: they are among those it took, even if that touch made it a change.
    pub fn record(&mut self, index: &ContentIndex, cluster: &(impl AsCid + ?Sized), added: usize) {
        let Some(s) = index.slot(cluster) else {
            return;
        };
        if let Some(c) = self.changed.get_mut(&s) {
            let before = index.held_count_at(s).saturating_sub(added);
            c.held_before = c.held_before.min(before);
        }
    }

    /// The cluster an unbanked upload with these signals (MD5 first) joins: the live one
    /// holding its MD5, else its nearest PDQ within `threshold` (ties by id), else its own
    /// (`own`); it holds the signals from now on, and is touched at `ts_ms`. A PDQ text
    /// that is not 64 hex digits changes nothing.
    pub fn assign(
        &mut self,
        index: &mut ContentIndex,
        signals: &[impl AsSignal],
        own: &(impl AsCid + ?Sized),
        ts_ms: i64,
        threshold: u32,
    ) -> Result<Cid, BadSignal> {
        let near = signals
            .iter()
            .find_map(|s| index.nearest_signal(s, threshold));
        let own = own.as_cid();
        if near.as_ref().is_some_and(|c| !own.is(c)) {
            self.joined += 1;
        }
        // the id read (and hashed) once, here: the index, the idle order and the caller's
        // tables (the post map, the unbanked store) look it up by this
        let cluster = near.map_or_else(|| own.into_owned(), Cid::from_id);
        let new = index.add_counted(&cluster, signals)?;
        self.touch(index, &cluster, ts_ms);
        self.record(index, &cluster, new);
        Ok(cluster)
    }

    /// Evict the clusters idle since `idle_ms` before `watermark_ms` (from the front of the
    /// idle order): their ids, for the caller to drop from the index.
    pub fn expire(&mut self, index: &ContentIndex, watermark_ms: i64) -> Vec<Arc<str>> {
        let cut = watermark_ms.saturating_sub(self.idle_ms);
        let mut out = Vec::new();
        while self.head != NONE {
            let s = self.head;
            let stale = !self.linked(index, s);
            if !stale && self.slots[s as usize].last > cut {
                break;
            }
            self.unlink(s);
            self.changed.remove(&s);
            self.trim_after = self.trim_after.saturating_sub(1);
            if stale {
                continue; // the index dropped it without expire: gone already
            }
            let id = index.id_at(s).expect("a linked slot's cluster");
            if self.log {
                self.evicted.push(id.clone()); // replay's would grow with every eviction
            }
            out.push(id);
        }
        if self.changed.capacity() > 4 * self.changed.len().max(1024) {
            self.changed.shrink_to(2 * self.changed.len());
        }
        self.trim();
        out
    }

    /// After a flood of clusters is gone, give its records' room back: the slots past the
    /// last one in the order (the index reuses its low slots first, see `ContentIndex`).
    ///
    /// The walk costs the live clusters; while a high slot stays live it frees nothing, and
    /// is not tried again until as many clusters have been evicted (each expiry walked the
    /// whole order until then: the pattern fixed in the content index, 6a20168).
    fn trim(&mut self) {
        if self.slots.len() <= 4 * self.live.max(1024) || self.trim_after > 0 {
            return;
        }
        #[cfg(test)]
        {
            self.trim_walks += 1;
        }
        let mut end = 0;
        let mut s = self.head;
        while s != NONE {
            end = end.max(s as usize + 1);
            s = self.slots[s as usize].next;
        }
        if end == self.slots.len() {
            self.trim_after = self.live;
            return;
        }
        self.slots.truncate(end);
        self.slots.shrink_to(2 * end);
    }

    /// What changed since the last call: the clusters touched (least recently first)
    /// with their latest event time and the signals they took, then those evicted.
    /// (Nothing when the changes are not kept: [`Self::unlogged`].)
    pub fn take_changes(&mut self, index: &ContentIndex) -> (Vec<Change>, Vec<Arc<str>>) {
        let mut changed: Vec<(u32, Changed)> = self
            .changed
            .drain()
            .filter(|&(s, c)| index.born_at(s) == Some(c.born))
            .collect();
        changed.sort_unstable_by_key(|c| c.1.seq);
        let out = changed
            .into_iter()
            .map(|(s, c)| {
                let last = if self.linked(index, s) {
                    self.slots[s as usize].last
                } else {
                    i64::MIN
                };
                let id = index.cluster_id_at(s).expect("a live slot's cluster");
                (id, last, index.held_signals_from_at(s, c.held_before))
            })
            .collect();
        if self.changed.capacity() > 1024 {
            self.changed.shrink_to(1024); // a burst of changes gone: its table too
        }
        (out, std::mem::take(&mut self.evicted))
    }

    /// A state log read back: `cluster`'s latest event is at least `last` (moved to the
    /// end of the idle order; not a change to log again). The index holds it already (the
    /// log's signals were added first).
    pub fn fold(&mut self, index: &ContentIndex, cluster: &(impl AsCid + ?Sized), last: i64) {
        self.note(index, cluster, last);
    }

    /// A state log read back: `cluster` was evicted; `false` if it was not live.
    pub fn forget(&mut self, index: &ContentIndex, cluster: &(impl AsCid + ?Sized)) -> bool {
        match index.slot(cluster) {
            Some(s) if self.linked(index, s) => {
                self.unlink(s);
                // what it took is the caller's to drop with it: not a change any more
                self.changed.remove(&s);
                true
            }
            _ => false,
        }
    }

    /// Every live cluster with its latest event time, least recently touched first.
    pub fn snapshot(&self, index: &ContentIndex) -> Vec<(Arc<str>, i64)> {
        let mut out = Vec::with_capacity(self.live);
        let mut s = self.head;
        while s != NONE {
            let i = self.slots[s as usize];
            if self.linked(index, s) {
                out.push((index.id_at(s).expect("a linked slot's cluster"), i.last));
            }
            s = i.next;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::Kind;

    #[test]
    fn md5_first_then_the_nearest_pdq_and_changes_in_touch_order() {
        let (mut index, mut idle) = (ContentIndex::new(), IdleClusters::new(100));
        let md5 = "a".repeat(32);
        let (f, g) = ("f".repeat(64), "0".repeat(64));
        let near_f = format!("{}0", "f".repeat(63));
        let a = idle
            .assign(&mut index, &[(Kind::Md5, &md5)], "u-a", 0, 31)
            .unwrap();
        let b = idle
            .assign(&mut index, &[(Kind::Pdq, &f)], "u-b", 1, 31)
            .unwrap();
        let c = idle
            .assign(&mut index, &[(Kind::Pdq, &g)], "u-c", 2, 31)
            .unwrap();
        // its MD5 is a's, its PDQ near b's: a's
        let d = idle
            .assign(
                &mut index,
                &[(Kind::Md5, &md5), (Kind::Pdq, &near_f)],
                "u-d",
                3,
                31,
            )
            .unwrap();
        assert_eq!(
            [a, b, c, d].map(|x| x.to_string()),
            ["u-a", "u-b", "u-c", "u-a"]
        );
        assert_eq!(idle.joined, 1);
        idle.touch(&index, "u-b", 0); // older: the time stays, the order moves
        idle.touch(&index, "u-x", 9); // not held: nothing
        let (changed, evicted) = idle.take_changes(&index);
        let got: Vec<(String, i64, usize)> = changed
            .iter()
            .map(|(c, t, took)| (c.to_string(), *t, took.len()))
            .collect();
        assert_eq!(
            got,
            [
                ("u-c".into(), 2, 1),
                ("u-a".into(), 3, 2),
                ("u-b".into(), 1, 1)
            ]
        );
        assert!(evicted.is_empty());
        // the front is c (touched at 2): evicted at 102; a (3) stops it
        let gone: Vec<String> = idle
            .expire(&index, 102)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(gone, ["u-c"]);
        index.drop_cluster("u-c");
        // b (latest 1) waits behind a in the idle order
        let gone: Vec<String> = idle
            .expire(&index, 103)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(gone, ["u-a", "u-b"]);
        assert!(idle.is_empty() && idle.take_changes(&index).0.is_empty());
    }

    #[test]
    fn changes_name_the_signals_taken_since_the_last_take_and_replay_keeps_none() {
        let (mut index, mut idle) = (ContentIndex::new(), IdleClusters::new(100));
        let (m1, m2, p1) = ("1".repeat(32), "2".repeat(32), "f".repeat(64));
        idle.assign(&mut index, &[(Kind::Md5, &m1)], "u-1", 0, 31)
            .unwrap();
        idle.take_changes(&index);
        idle.touch(&index, "u-1", 1); // a reshare: a change that took nothing yet
        idle.assign(
            &mut index,
            &[(Kind::Md5, &m2), (Kind::Pdq, &p1)],
            "u-1",
            2,
            31,
        )
        .unwrap();
        idle.assign(&mut index, &[(Kind::Md5, &m1)], "u-1", 3, 31) // held already
            .unwrap();
        let (changed, _) = idle.take_changes(&index);
        let took: Vec<String> = changed[0].2.iter().map(|t| t.text().to_string()).collect();
        assert_eq!((changed.len(), took), (1, vec![m2.clone(), p1.clone()]));
        let (mut index, mut quiet) = (ContentIndex::new(), IdleClusters::unlogged(100));
        quiet
            .assign(&mut index, &[(Kind::Md5, &m1)], "u-1", 0, 31)
            .unwrap();
        assert!(quiet.changed.is_empty() && quiet.take_changes(&index).0.is_empty());
        assert_eq!(quiet.expire(&index, 101), ["u-1".into()]); // the idle order is kept
    }

    #[test]
    fn a_flood_expired_one_at_a_time_behind_a_live_slot_walks_the_order_a_few_times() {
        let (mut index, mut idle) = (ContentIndex::new(), IdleClusters::unlogged(100));
        let n = 10_000;
        for i in 0..n {
            let md5 = format!("{i:032x}");
            idle.assign(&mut index, &[(Kind::Md5, &md5)], &format!("u-{i}"), i, 31)
                .unwrap();
        }
        // the last slot stays live: trimming frees nothing while it does
        idle.assign(&mut index, &[(Kind::Md5, &"f".repeat(32))], "u-keep", n, 31)
            .unwrap();
        let mut gone = 0;
        for w in 0..n {
            idle.touch(&index, "u-keep", n + w);
            for id in idle.expire(&index, w + 100) {
                index.drop_cluster(&id);
                gone += 1;
            }
        }
        assert_eq!((gone, idle.len()), (n as usize, 1));
        // an expiry evicting a cluster or two used to walk every live cluster each time
        // the slots were 4x the live ones (2,500 walks here)
        assert!(idle.trim_walks <= 4, "{} walks", idle.trim_walks);
        // the last one gone, the slots are given back
        for id in idle.expire(&index, 3 * n) {
            index.drop_cluster(&id);
        }
        idle.assign(
            &mut index,
            &[(Kind::Md5, &"e".repeat(32))],
            "u-new",
            3 * n,
            31,
        )
        .unwrap();
        idle.expire(&index, 3 * n);
        assert!(idle.slots.len() < 1024, "{} slots", idle.slots.len());
    }

    #[test]
    fn a_log_folded_back_gives_the_same_order() {
        let (mut index, mut idle) = (ContentIndex::new(), IdleClusters::new(100));
        for (i, c) in ["u-1", "u-2", "u-3"].iter().enumerate() {
            let md5 = format!("{i}").repeat(32);
            idle.assign(&mut index, &[(Kind::Md5, &md5)], c, i as i64, 31)
                .unwrap();
        }
        idle.touch(&index, "u-1", 5);
        // read back into an index that holds them in other slots (as a log is folded)
        let (mut index2, mut again) = (ContentIndex::new(), IdleClusters::new(100));
        let snapshot = idle.snapshot(&index);
        for (c, t) in snapshot.iter().rev() {
            index2.add(c, &[] as &[(Kind, &str)]).unwrap();
            let _ = t;
        }
        for (c, t) in &snapshot {
            again.fold(&index2, c, *t);
        }
        assert_eq!(again.snapshot(&index2), snapshot);
        assert!(again.forget(&index2, "u-2") && !again.forget(&index2, "u-2"));
        assert_eq!(again.len(), 2);
        assert!(again.take_changes(&index2).0.is_empty()); // a fold is not a change
    }

    #[test]
    fn a_cluster_the_index_dropped_unexpired_leaves_the_order_and_its_slot_starts_afresh() {
        let (mut index, mut idle) = (ContentIndex::new(), IdleClusters::new(100));
        idle.assign(&mut index, &[(Kind::Md5, &"1".repeat(32))], "u-1", 0, 31)
            .unwrap();
        idle.assign(&mut index, &[(Kind::Md5, &"2".repeat(32))], "u-2", 50, 31)
            .unwrap();
        index.drop_cluster("u-1"); // not through expire
                                   // u-3 takes u-1's slot: a cluster of its own, at its own time
        idle.assign(&mut index, &[(Kind::Md5, &"3".repeat(32))], "u-3", 60, 31)
            .unwrap();
        let (changed, _) = idle.take_changes(&index);
        let ids: Vec<String> = changed.iter().map(|c| c.0.to_string()).collect();
        assert_eq!(ids, ["u-2", "u-3"]);
        assert_eq!(
            idle.snapshot(&index),
            [("u-2".into(), 50), ("u-3".into(), 60)]
        );
        assert_eq!(idle.len(), 2);
        assert_eq!(idle.expire(&index, 155), ["u-2".into()]);
        assert!(!idle.forget(&index, "u-1"));
    }
}
