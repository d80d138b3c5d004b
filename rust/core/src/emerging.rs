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
//! assert_eq!((&*a, &*b, idle.joined), ("u-a", "u-a", 1));
//! assert_eq!(idle.expire(61_000), ["u-a".into()]);
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::blake2b::{blake2b, hex};
use crate::content::{Added, BadSignal, ContentIndex, Kind};

/// The id of the cluster content no bank knows starts: `u-` and the 8-byte BLAKE2b of
/// `key` (`md5:<hex>`, `pdq:<hex>` or `vpdq:<frames>`, as `streams.emerging` makes it).
///
/// ```
/// assert_eq!(viralwatch_core::emerging::unbanked_id(b"abc"), "u-d8bb14d833d59559");
/// ```
pub fn unbanked_id(key: &[u8]) -> String {
    format!("u-{}", hex(&blake2b(key, 8)))
}

/// A cluster touched since the last [`IdleClusters::take_changes`]: its latest
/// event time and the signals it took.
pub type Change = (Arc<str>, i64, Vec<Arc<str>>);

/// A cluster changed since the last [`IdleClusters::take_changes`]: its place in the
/// changes' order, and how many signals it held before (those after are the ones it took).
#[derive(Debug, Clone, Copy)]
struct Changed {
    seq: u64,
    held_before: usize,
}

/// The idle order and the changes of unbanked clusters (see the module doc).
#[derive(Debug, Default)]
pub struct IdleClusters {
    idle_ms: i64,
    /// cluster -> (latest event time, its place in `order`)
    last: HashMap<Arc<str>, (i64, u64)>,
    order: BTreeMap<u64, Arc<str>>,
    /// whether changes are kept for a state log (not in replay)
    log: bool,
    changed: HashMap<Arc<str>, Changed>,
    next: u64,
    evicted: Vec<Arc<str>>,
    /// uploads that joined a live cluster of other content
    pub joined: u64,
}

impl IdleClusters {
    /// The idle order and the changes a state log takes ([`Self::take_changes`]).
    pub fn new(idle_ms: i64) -> Self {
        Self {
            idle_ms,
            log: true,
            ..Self::default()
        }
    }

    /// The idle order alone, for a caller that logs nothing (replay): no change is kept.
    pub fn unlogged(idle_ms: i64) -> Self {
        Self {
            idle_ms,
            ..Self::default()
        }
    }

    /// Live clusters (in the idle order).
    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    fn tick(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// `cluster`'s latest event is at least `ts_ms`; it moves to the end of the idle order.
    fn note(&mut self, cluster: &str, ts_ms: i64) -> Arc<str> {
        let seq = self.tick();
        match self.last.get_key_value(cluster) {
            Some((id, &(last, place))) => {
                let id = id.clone();
                self.order.remove(&place);
                self.order.insert(seq, id.clone());
                self.last.insert(id.clone(), (last.max(ts_ms), seq));
                id
            }
            None => {
                let id: Arc<str> = Arc::from(cluster);
                self.order.insert(seq, id.clone());
                self.last.insert(id.clone(), (ts_ms, seq));
                id
            }
        }
    }

    /// An event of `cluster` at `ts_ms` (only clusters `index` holds are kept): not idle,
    /// and changed (last in the changes' order).
    pub fn touch(&mut self, index: &ContentIndex, cluster: &str, ts_ms: i64) {
        if !index.contains(cluster) {
            return;
        }
        let id = self.note(cluster, ts_ms);
        let seq = self.tick();
        if !self.log {
            return;
        }
        let held_before = self
            .changed
            .get(&id)
            .map_or_else(|| index.held_count(&id), |c| c.held_before);
        self.changed.insert(id, Changed { seq, held_before });
    }

    /// `cluster` took `added` signals (new to it) just before it was touched, for the state
    /// log: they are among those it took, even if that touch made it a change.
    pub fn record(&mut self, index: &ContentIndex, cluster: &str, added: usize) {
        if let Some(c) = self.changed.get_mut(cluster) {
            let before = index.held_count(cluster).saturating_sub(added);
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
        signals: &[(Kind, &str)],
        own: &str,
        ts_ms: i64,
        threshold: u32,
    ) -> Result<Arc<str>, BadSignal> {
        let near = signals
            .iter()
            .find_map(|&(kind, text)| index.near(kind, text, threshold).into_iter().next())
            .map(|(c, _)| c);
        if near.as_deref().is_some_and(|c| c != own) {
            self.joined += 1;
        }
        let cluster: Arc<str> = near.unwrap_or_else(|| Arc::from(own));
        let (new, _): Added = index.add(&cluster, signals)?;
        self.touch(index, &cluster, ts_ms);
        self.record(index, &cluster, new.len());
        Ok(cluster)
    }

    /// Evict the clusters idle since `idle_ms` before `watermark_ms` (from the front of the
    /// idle order): their ids, for the caller to drop from the index.
    pub fn expire(&mut self, watermark_ms: i64) -> Vec<Arc<str>> {
        let cut = watermark_ms.saturating_sub(self.idle_ms);
        let mut out = Vec::new();
        while let Some(entry) = self.order.first_entry() {
            let (last, _) = self.last[entry.get()];
            if last > cut {
                break;
            }
            let id = entry.remove();
            self.last.remove(&id);
            self.changed.remove(&id);
            self.evicted.push(id.clone());
            out.push(id);
        }
        if self.last.capacity() > 4 * self.last.len().max(1024) {
            self.last.shrink_to(2 * self.last.len());
            self.changed.shrink_to(2 * self.changed.len());
        }
        out
    }

    /// What changed since the last call: the clusters touched (least recently first)
    /// with their latest event time and the signals they took, then those evicted.
    /// (Nothing when the changes are not kept: [`Self::unlogged`].)
    pub fn take_changes(&mut self, index: &ContentIndex) -> (Vec<Change>, Vec<Arc<str>>) {
        let mut changed: Vec<(Arc<str>, Changed)> = self.changed.drain().collect();
        changed.sort_unstable_by_key(|c| c.1.seq);
        let out = changed
            .into_iter()
            .map(|(id, c)| {
                let last = self.last.get(&id).map_or(i64::MIN, |&(t, _)| t);
                let took = index.held_from(&id, c.held_before);
                (id, last, took)
            })
            .collect();
        if self.changed.capacity() > 1024 {
            self.changed.shrink_to(1024); // a burst of changes gone: its table too
        }
        (out, std::mem::take(&mut self.evicted))
    }

    /// A state log read back: `cluster`'s latest event is at least `last` (moved to the
    /// end of the idle order; not a change to log again).
    pub fn fold(&mut self, cluster: &str, last: i64) {
        self.note(cluster, last);
    }

    /// A state log read back: `cluster` was evicted; `false` if it was not live.
    pub fn forget(&mut self, cluster: &str) -> bool {
        match self.last.remove(cluster) {
            Some((_, place)) => {
                self.order.remove(&place);
                // what it took is the caller's to drop with it: not a change any more
                self.changed.remove(cluster);
                true
            }
            None => false,
        }
    }

    /// Every live cluster with its latest event time, least recently touched first.
    pub fn snapshot(&self) -> Vec<(Arc<str>, i64)> {
        self.order
            .values()
            .map(|id| (id.clone(), self.last[id].0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!([&*a, &*b, &*c, &*d], ["u-a", "u-b", "u-c", "u-a"]);
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
        let gone: Vec<String> = idle.expire(102).iter().map(|c| c.to_string()).collect();
        assert_eq!(gone, ["u-c"]);
        // b (latest 1) waits behind a in the idle order
        let gone: Vec<String> = idle.expire(103).iter().map(|c| c.to_string()).collect();
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
        let took: Vec<String> = changed[0].2.iter().map(|t| t.to_string()).collect();
        assert_eq!((changed.len(), took), (1, vec![m2.clone(), p1.clone()]));
        let (mut index, mut quiet) = (ContentIndex::new(), IdleClusters::unlogged(100));
        quiet
            .assign(&mut index, &[(Kind::Md5, &m1)], "u-1", 0, 31)
            .unwrap();
        assert!(quiet.changed.is_empty() && quiet.take_changes(&index).0.is_empty());
        assert_eq!(quiet.expire(101), ["u-1".into()]); // the idle order is kept
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
        let mut again = IdleClusters::new(100);
        for (c, t) in idle.snapshot() {
            again.fold(&c, t);
        }
        assert_eq!(again.snapshot(), idle.snapshot());
        assert!(again.forget("u-2") && !again.forget("u-2"));
        assert_eq!(again.len(), 2);
    }
}
