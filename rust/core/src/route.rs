//! Held orphans: reshares (and takedowns) whose parent post has not been
//! routed yet, waiting for it.
//!
//! Kafka orders records within a partition only, so a reshare often overtakes
//! its parent; the router holds it until the parent is routed
//! ([`Orphans::release`]), or until event time has passed it by the hold time
//! ([`Orphans::expire`]). Memory stays bounded under a flood of orphans: past
//! `max_held` held items a newcomer is refused ([`Refusal::Overflow`]), and a
//! reshare whose chain of held parents loops back to itself is refused
//! ([`Refusal::Cycle`]), as it could never be released.
//!
//! The order of what comes out is fixed by the input alone: released items in
//! the order they were held, expired ones by target (in the order each target
//! first got an item since it last had none), then in the order held. That is
//! the order of the Python dicts this replaces, so replay's dead letters are
//! byte for byte the same.
//!
//! ```
//! use viralwatch_core::route::{Orphans, Refusal};
//! let mut held: Orphans<&str> = Orphans::new();
//! assert_eq!(held.hold(b"p1", b"p2", true, 10, "e2", 100), Ok(()));
//! assert_eq!(held.hold(b"p2", b"p1", true, 11, "e1", 100), Err(Refusal::Cycle));
//! assert_eq!(held.release(b"p1"), ["e2"]);
//! assert_eq!(held.len(), 0);
//! ```

use std::collections::{BTreeMap, HashMap};

use crate::keyed::Keyed;

/// Why an item was not held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its chain of held parents leads back to its own post.
    Cycle,
    /// `held` items wait already: the limit.
    Overflow { held: usize },
}

struct Entry<T> {
    ts_ms: i64,
    /// the held reshare's own post (`None` for a takedown, which adds no post)
    post: Option<Box<[u8]>>,
    item: T,
    /// the holds before it (see [`Orphans::seal`])
    at: u64,
}

struct Waiting<T> {
    /// when this target first got an item (since it last had none): the order of expiry
    order: u64,
    entries: Vec<Entry<T>>,
}

/// Items waiting for their parent (or target) post, `T` being what the caller
/// keeps of each (see the module's docs).
pub struct Orphans<T> {
    waiting: HashMap<Box<[u8]>, Waiting<T>, Keyed>,
    /// the targets in `order`
    targets: BTreeMap<u64, Box<[u8]>>,
    /// held reshare's post -> the post it waits for: loops among held reshares
    parent_of: HashMap<Box<[u8]>, Box<[u8]>, Keyed>,
    held: usize,
    next_order: u64,
    /// items held so far, and how many of them were held before the last [`Orphans::seal`]
    holds: u64,
    sealed: u64,
}

impl<T> Default for Orphans<T> {
    fn default() -> Self {
        Self {
            waiting: HashMap::default(),
            targets: BTreeMap::new(),
            parent_of: HashMap::default(),
            held: 0,
            next_order: 0,
            holds: 0,
            sealed: 0,
        }
    }
}

impl<T> Orphans<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Items held now.
    pub fn len(&self) -> usize {
        self.held
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// The items held, in no particular order (a garbage collector visiting what they
    /// reference).
    pub fn items(&self) -> impl Iterator<Item = &T> {
        self.waiting
            .values()
            .flat_map(|w| w.entries.iter().map(|e| &e.item))
    }

    /// Drop every item held (a garbage collector breaking a cycle through them).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The items held now were held before a checkpoint began: released from now on, each
    /// says so ([`Self::release_with_posts`]). A streaming resolve partition calls it as each
    /// checkpoint begins: the input that brought such an item may be committed, so no
    /// replacement routes it again, and what its release made must be durable by itself.
    pub fn seal(&mut self) {
        self.sealed = self.holds;
    }

    /// Hold `item` (a reshare of `post` if `share`, else a takedown) until
    /// `target` is routed; refused if it would loop or if `max_held` wait.
    pub fn hold(
        &mut self,
        target: &[u8],
        post: &[u8],
        share: bool,
        ts_ms: i64,
        item: T,
        max_held: usize,
    ) -> Result<(), Refusal> {
        if share {
            let (mut walk, mut seen) = (target, 0_usize);
            while let Some(parent) = self.parent_of.get(walk) {
                if seen > self.held {
                    break;
                }
                walk = parent;
                seen += 1;
                if *walk == *post {
                    return Err(Refusal::Cycle);
                }
            }
        }
        if self.held >= max_held {
            return Err(Refusal::Overflow { held: self.held });
        }
        let waiting = match self.waiting.get_mut(target) {
            Some(w) => w,
            None => {
                let order = self.next_order;
                self.next_order += 1;
                self.targets.insert(order, target.into());
                self.waiting.entry(target.into()).or_insert(Waiting {
                    order,
                    entries: Vec::new(),
                })
            }
        };
        let own: Option<Box<[u8]>> = share.then(|| post.into());
        waiting.entries.push(Entry {
            ts_ms,
            post: own.clone(),
            item,
            at: self.holds,
        });
        self.holds += 1;
        if let Some(own) = own {
            self.parent_of.insert(own, target.into());
        }
        self.held += 1;
        Ok(())
    }

    /// `post` was routed: what waited for it, in the order held.
    pub fn release(&mut self, post: &[u8]) -> Vec<T> {
        self.release_with_posts(post)
            .into_iter()
            .map(|(item, _, _)| item)
            .collect()
    }

    /// `post` was routed: what waited for it, in the order held, each with its own post
    /// (a reshare's; `None` for a takedown) and whether it was held before the last
    /// [`Self::seal`].
    #[allow(clippy::type_complexity)]
    pub fn release_with_posts(&mut self, post: &[u8]) -> Vec<(T, Option<Box<[u8]>>, bool)> {
        if self.waiting.is_empty() && self.parent_of.is_empty() {
            return Vec::new(); // nothing held: no look-up (each post routed asks)
        }
        self.parent_of.remove(post);
        match self.waiting.remove(post) {
            None => Vec::new(),
            Some(w) => {
                self.targets.remove(&w.order);
                self.held -= w.entries.len();
                let sealed = self.sealed;
                (w.entries.into_iter())
                    .map(|e| (e.item, e.post, e.at < sealed))
                    .collect()
            }
        }
    }

    /// Give up on the items at or before `cut_ms`: each with its target, by
    /// target (see the module's docs), then in the order held.
    pub fn expire(&mut self, cut_ms: i64) -> Vec<(Box<[u8]>, T)> {
        let mut out = Vec::new();
        let mut emptied = Vec::new();
        for (&order, target) in &self.targets {
            let Some(w) = self.waiting.get_mut(target) else {
                continue;
            };
            if w.entries.iter().all(|e| e.ts_ms > cut_ms) {
                continue;
            }
            let (gone, keep): (Vec<_>, Vec<_>) =
                w.entries.drain(..).partition(|e| e.ts_ms <= cut_ms);
            w.entries = keep;
            for e in gone {
                if let Some(p) = &e.post {
                    self.parent_of.remove(p);
                }
                self.held -= 1;
                out.push((target.clone(), e.item));
            }
            if w.entries.is_empty() {
                emptied.push(order);
            }
        }
        for order in emptied {
            if let Some(target) = self.targets.remove(&order) {
                self.waiting.remove(&target);
            }
        }
        // a flood gone leaves its tables' room behind: give most of it back
        if self.waiting.capacity() > 4 * self.waiting.len().max(16) {
            self.waiting.shrink_to(2 * self.waiting.len());
        }
        if self.parent_of.capacity() > 4 * self.parent_of.len().max(16) {
            self.parent_of.shrink_to(2 * self.parent_of.len());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_in_the_order_held_and_counted() {
        let mut o = Orphans::new();
        for (i, post) in ["a", "b", "c"].iter().enumerate() {
            o.hold(b"p", post.as_bytes(), true, i as i64, i, 10)
                .unwrap();
        }
        o.hold(b"p", b"p", false, 5, 9, 10).unwrap(); // a takedown of p itself
        assert_eq!(o.len(), 4);
        assert_eq!(o.release(b"p"), [0, 1, 2, 9]);
        assert!(o.is_empty() && o.release(b"p").is_empty());
    }

    #[test]
    fn a_release_says_which_items_were_held_before_the_seal() {
        let mut o = Orphans::new();
        o.hold(b"p", b"a", true, 1, "a", 10).unwrap();
        o.seal();
        o.hold(b"p", b"b", true, 2, "b", 10).unwrap();
        o.hold(b"q", b"c", false, 3, "c", 10).unwrap();
        let out: Vec<_> = (o.release_with_posts(b"p").into_iter())
            .map(|(item, post, before)| (item, post.map(|p| p.to_vec()), before))
            .collect();
        assert_eq!(
            out,
            [
                ("a", Some(b"a".to_vec()), true),
                ("b", Some(b"b".to_vec()), false)
            ]
        );
        o.seal();
        assert_eq!(o.release_with_posts(b"q"), [("c", None, true)]);
    }

    #[test]
    fn items_are_every_one_held_and_clear_drops_them() {
        let mut o = Orphans::new();
        for (i, (target, post)) in [("p", "a"), ("p", "b"), ("q", "c"), ("a", "d")]
            .iter()
            .enumerate()
        {
            o.hold(target.as_bytes(), post.as_bytes(), true, i as i64, i, 10)
                .unwrap();
        }
        let mut items: Vec<usize> = o.items().copied().collect();
        items.sort_unstable();
        assert_eq!(items, [0, 1, 2, 3]);
        o.clear();
        assert!(o.is_empty() && o.items().next().is_none());
        assert!(o.release(b"p").is_empty());
        // the loop guard forgot its held posts: d's post may wait on a again
        assert!(o.hold(b"d", b"a", true, 9, 9, 10).is_ok());
    }

    #[test]
    fn a_flood_stops_at_the_limit_and_expiry_frees_it() {
        let mut o = Orphans::new();
        for i in 0..1000_i64 {
            let r = o.hold(
                format!("t{i}").as_bytes(),
                format!("p{i}").as_bytes(),
                true,
                i,
                i,
                100,
            );
            assert_eq!(r.is_ok(), i < 100);
            if i >= 100 {
                assert_eq!(r, Err(Refusal::Overflow { held: 100 }));
            }
        }
        assert_eq!(o.len(), 100);
        let gone: Vec<i64> = o.expire(49).into_iter().map(|(_, i)| i).collect();
        assert_eq!(gone, (0..50).collect::<Vec<_>>());
        assert_eq!(o.len(), 50);
        assert!(o.hold(b"t", b"p", true, 1, 1, 100).is_ok());
        assert_eq!(o.expire(i64::MAX).len(), 51);
        assert!(o.is_empty() && o.waiting.is_empty() && o.parent_of.is_empty());
        assert!(o.targets.is_empty());
    }

    #[test]
    fn loops_among_held_reshares_are_refused() {
        let mut o = Orphans::new();
        o.hold(b"p1", b"p2", true, 0, 2, 10).unwrap(); // p2 waits for p1
        o.hold(b"p2", b"p3", true, 0, 3, 10).unwrap(); // p3 waits for p2
        assert_eq!(o.hold(b"p3", b"p1", true, 0, 1, 10), Err(Refusal::Cycle));
        // a takedown adds no post: never a loop
        assert_eq!(o.hold(b"p3", b"p1", false, 0, 1, 10), Ok(()));
        o.release(b"p2");
        assert_eq!(o.hold(b"p3", b"p1", true, 0, 1, 10), Ok(())); // p2 routed: no loop left
    }

    #[test]
    fn expiry_goes_by_target_in_first_held_order() {
        let mut o = Orphans::new();
        o.hold(b"b", b"x1", true, 1, "b1", 10).unwrap();
        o.hold(b"a", b"x2", true, 1, "a1", 10).unwrap();
        o.hold(b"b", b"x3", true, 9, "b2", 10).unwrap();
        o.hold(b"b", b"x4", true, 2, "b3", 10).unwrap();
        let gone: Vec<_> = o
            .expire(5)
            .into_iter()
            .map(|(t, i)| (t.to_vec(), i))
            .collect();
        let want = vec![
            (b"b".to_vec(), "b1"),
            (b"b".to_vec(), "b3"),
            (b"a".to_vec(), "a1"),
        ];
        assert_eq!(gone, want);
        // "a" emptied and comes back after "b"; "b" kept its place
        o.hold(b"a", b"x5", true, 3, "a2", 10).unwrap();
        let order: Vec<_> = o.expire(100).into_iter().map(|(_, i)| i).collect();
        assert_eq!(order, ["b2", "a2"]);
    }
}
