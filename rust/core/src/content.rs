//! The content (signals) of live clusters, searchable by exact signal and by
//! PDQ distance: the core of `streams.emerging.ContentIndex`.
//!
//! A signal is known by its text: 32 hex digits an MD5, 64 a PDQ hash, anything
//! else (a video's frames) held as it is, for Python to search. An MD5 is kept
//! as its 16 bytes, a PDQ hash as its 32 (in the [`PdqIndex`] alone, tagged
//! with its slot: the index is also the map from a hash to its signal), and
//! their text is written again, lowercase, where a caller asks for it: no copy
//! of the text is kept. Each signal is held by one cluster or more, each
//! cluster holds its signals in the order it took them; a PDQ search answers
//! with the clusters holding what it found.
//!
//! Answers are deterministic: clusters nearest first, ties by cluster id, each
//! cluster once at its nearest, whatever the order of adds and drops.

use std::collections::HashMap;
use std::sync::Arc;

use crate::pdq::{self, Hash, PdqIndex};

/// A signal's kind, as `streams.emerging` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Md5,
    Pdq,
    /// A video's frames (or any other text): held, not searched here.
    Other,
}

impl Kind {
    pub fn of(name: &str) -> Kind {
        match name {
            "md5" => Kind::Md5,
            "pdq" => Kind::Pdq,
            _ => Kind::Other,
        }
    }
}

/// A signal as it is kept: binary for the hashes (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Md5([u8; 16]),
    /// a PDQ hash in the index (a `Kind::Pdq` signal)
    Pdq(Hash),
    Text(Box<str>),
}

/// The 16 bytes of an MD5's 32 hex digits (either case).
fn parse_md5(text: &[u8]) -> Option<[u8; 16]> {
    if text.len() != 32 {
        return None;
    }
    let mut out = [0_u8; 16];
    for (b, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *b = (hi * 16 + lo) as u8;
    }
    Some(out)
}

impl Key {
    /// The text a caller gets back (hashes in lowercase hex).
    fn text(&self) -> Arc<str> {
        match self {
            Key::Md5(b) => {
                let mut s = String::with_capacity(32);
                for x in b {
                    s.push_str(&format!("{x:02x}"));
                }
                Arc::from(s)
            }
            Key::Pdq(h) => Arc::from(pdq::format_hex(h)),
            Key::Text(t) => Arc::from(&**t),
        }
    }
}

#[derive(Debug)]
struct Signal {
    key: Key,
    holders: Vec<u32>,
}

#[derive(Debug)]
struct Cluster {
    id: Arc<str>,
    signals: Vec<u32>,
}

/// What [`ContentIndex::add`] gives: the texts new to the cluster, then those new to all.
pub type Added = (Vec<Arc<str>>, Vec<Arc<str>>);

/// What a signal text was refused for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSignal(pub String);

/// Live clusters' signals (see the module doc).
#[derive(Debug, Default)]
pub struct ContentIndex {
    /// the PDQ signals' hashes, tagged with their slot
    pdq: PdqIndex,
    md5_slot: HashMap<[u8; 16], u32>,
    /// signals of any other text (a video's frames)
    text_slot: HashMap<Box<str>, u32>,
    signals: Vec<Option<Signal>>,
    free_signals: Vec<u32>,
    cluster_slot: HashMap<Arc<str>, u32>,
    clusters: Vec<Option<Cluster>>,
    free_clusters: Vec<u32>,
}

/// Put `item` in a free slot, or a new one.
fn place<T>(items: &mut Vec<Option<T>>, free: &mut Vec<u32>, item: T) -> u32 {
    match free.pop() {
        Some(slot) => {
            items[slot as usize] = Some(item);
            slot
        }
        None => {
            items.push(Some(item));
            (items.len() - 1) as u32
        }
    }
}

impl ContentIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Live clusters.
    pub fn clusters(&self) -> usize {
        self.cluster_slot.len()
    }

    /// Distinct signals held.
    pub fn len(&self) -> usize {
        self.pdq.len() + self.md5_slot.len() + self.text_slot.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key `text` is kept under, for a signal of `kind` (`None`: a PDQ text that is
    /// not 64 hex digits). A text of 32 hex digits is an MD5 whatever its kind says.
    fn key_of(kind: Kind, text: &str) -> Option<Key> {
        if kind == Kind::Pdq {
            return pdq::parse_hex(text.as_bytes()).map(Key::Pdq);
        }
        Some(match parse_md5(text.as_bytes()) {
            Some(b) => Key::Md5(b),
            None => Key::Text(text.into()),
        })
    }

    /// The slot of the signal kept under `key`.
    fn slot_of(&self, key: &Key) -> Option<u32> {
        match key {
            Key::Md5(b) => self.md5_slot.get(b).copied(),
            Key::Pdq(h) => self.pdq.tag_of(h).map(|t| t as u32),
            Key::Text(t) => self.text_slot.get(t).copied(),
        }
    }

    /// The slot of the signal of `text` (of any kind, as its shape says).
    fn slot_of_text(&self, text: &str) -> Option<u32> {
        if let Some(h) = pdq::parse_hex(text.as_bytes()) {
            if let Some(s) = self.slot_of(&Key::Pdq(h)) {
                return Some(s);
            }
        }
        self.slot_of(&Self::key_of(Kind::Other, text)?)
    }

    pub fn contains(&self, cluster: &str) -> bool {
        self.cluster_slot.contains_key(cluster)
    }

    fn cluster(&self, slot: u32) -> &Cluster {
        self.clusters[slot as usize]
            .as_ref()
            .expect("a live cluster's slot")
    }

    fn signal(&self, slot: u32) -> &Signal {
        self.signals[slot as usize]
            .as_ref()
            .expect("a live signal's slot")
    }

    /// The signals `cluster` holds, in the order it took them.
    pub fn held(&self, cluster: &str) -> Vec<Arc<str>> {
        self.cluster_slot.get(cluster).map_or_else(Vec::new, |&c| {
            self.cluster(c)
                .signals
                .iter()
                .map(|&s| self.signal(s).key.text())
                .collect()
        })
    }

    /// The clusters holding `text`, by id.
    pub fn holders(&self, text: &str) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = self.slot_of_text(text).map_or_else(Vec::new, |s| {
            self.signal(s)
                .holders
                .iter()
                .map(|&c| self.cluster(c).id.clone())
                .collect()
        });
        out.sort();
        out
    }

    /// `cluster` holds these signals; returns those it did not hold yet, and of those
    /// the ones no cluster held before. A PDQ text that is not 64 hex digits is refused
    /// before anything changes.
    pub fn add(&mut self, cluster: &str, signals: &[(Kind, &str)]) -> Result<Added, BadSignal> {
        let mut keys = Vec::with_capacity(signals.len());
        for &(kind, text) in signals {
            keys.push(
                Self::key_of(kind, text)
                    .ok_or_else(|| BadSignal(format!("not a PDQ hash: {text:?}")))?,
            );
        }
        let c = match self.cluster_slot.get(cluster) {
            Some(&c) => c,
            None => {
                let id: Arc<str> = Arc::from(cluster);
                let c = place(
                    &mut self.clusters,
                    &mut self.free_clusters,
                    Cluster {
                        id: id.clone(),
                        signals: Vec::new(),
                    },
                );
                self.cluster_slot.insert(id, c);
                c
            }
        };
        let (mut new, mut first) = (Vec::new(), Vec::new());
        for key in keys {
            let s = match self.slot_of(&key) {
                Some(s) => {
                    let holders = &mut self.signals[s as usize]
                        .as_mut()
                        .expect("a live signal's slot")
                        .holders;
                    if holders.contains(&c) {
                        continue; // held already
                    }
                    holders.push(c);
                    s
                }
                None => {
                    let s = place(
                        &mut self.signals,
                        &mut self.free_signals,
                        Signal {
                            key: key.clone(),
                            holders: vec![c],
                        },
                    );
                    match key {
                        Key::Md5(b) => {
                            self.md5_slot.insert(b, s);
                        }
                        Key::Pdq(h) => {
                            self.pdq.insert(h, i64::from(s));
                        }
                        Key::Text(t) => {
                            self.text_slot.insert(t, s);
                        }
                    }
                    first.push(self.signal(s).key.text());
                    s
                }
            };
            self.clusters[c as usize]
                .as_mut()
                .expect("a live cluster's slot")
                .signals
                .push(s);
            new.push(self.signal(s).key.text());
        }
        Ok((new, first))
    }

    /// Forget a cluster's content (evicted): the signals no cluster holds any more, or
    /// `None` if it held nothing.
    pub fn drop_cluster(&mut self, cluster: &str) -> Option<Vec<Arc<str>>> {
        let c = self.cluster_slot.remove(cluster)?;
        let gone = self.clusters[c as usize]
            .take()
            .expect("a live cluster's slot");
        self.free_clusters.push(c);
        let mut freed = Vec::new();
        for s in gone.signals {
            let signal = self.signals[s as usize]
                .as_mut()
                .expect("a live signal's slot");
            signal.holders.retain(|&h| h != c);
            if !signal.holders.is_empty() {
                continue;
            }
            let signal = self.signals[s as usize].take().expect("just seen");
            self.free_signals.push(s);
            freed.push(signal.key.text());
            match signal.key {
                Key::Md5(b) => {
                    self.md5_slot.remove(&b);
                }
                Key::Pdq(h) => {
                    self.pdq.remove(&h);
                }
                Key::Text(t) => {
                    self.text_slot.remove(&t);
                }
            }
        }
        Some(freed)
    }

    /// Clusters holding `text` (MD5: equal, at 0; PDQ: within `threshold`), nearest first,
    /// ties by cluster id, each cluster once at its nearest. Other kinds: none.
    pub fn near(&self, kind: Kind, text: &str, threshold: u32) -> Vec<(Arc<str>, u32)> {
        match kind {
            Kind::Md5 => self.holders(text).into_iter().map(|c| (c, 0)).collect(),
            Kind::Other => Vec::new(),
            Kind::Pdq => {
                let Some(q) = pdq::parse_hex(text.as_bytes()) else {
                    return Vec::new();
                };
                let mut best: HashMap<u32, u32> = HashMap::new();
                self.pdq.search_with(&[q], threshold, |_, d, _, tag| {
                    for &c in &self.signal(tag as u32).holders {
                        let e = best.entry(c).or_insert(d);
                        *e = (*e).min(d);
                    }
                });
                let mut out: Vec<(Arc<str>, u32)> = best
                    .into_iter()
                    .map(|(c, d)| (self.cluster(c).id.clone(), d))
                    .collect();
                out.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
                out
            }
        }
    }

    /// Bytes of the PDQ index's arrays (the maps' share is estimated by the caller's bench).
    pub fn nbytes(&self) -> usize {
        self.pdq.nbytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[(Arc<str>, u32)]) -> Vec<(String, u32)> {
        v.iter().map(|(c, d)| (c.to_string(), *d)).collect()
    }

    #[test]
    fn clusters_are_found_by_md5_and_by_the_nearest_pdq_and_forgotten_when_dropped() {
        let mut idx = ContentIndex::new();
        let f = "f".repeat(64);
        let near = format!("{}00", "f".repeat(62));
        let md5 = "a".repeat(32);
        let (new, first) = idx
            .add("u-1", &[(Kind::Pdq, &f), (Kind::Md5, &md5)])
            .unwrap();
        assert_eq!((new.len(), first.len()), (2, 2));
        let (new, first) = idx
            .add("u-2", &[(Kind::Pdq, &near), (Kind::Pdq, &f)])
            .unwrap();
        assert_eq!((new.len(), first.len()), (2, 1));
        assert!(idx.add("u-2", &[(Kind::Pdq, &f)]).unwrap().0.is_empty());
        let q = format!("{}0", "f".repeat(63));
        assert_eq!(
            ids(&idx.near(Kind::Pdq, &q, 31)),
            [("u-1".into(), 4), ("u-2".into(), 4)]
        );
        assert_eq!(ids(&idx.near(Kind::Md5, &md5, 31)), [("u-1".into(), 0)]);
        assert_eq!(idx.drop_cluster("u-1").unwrap().len(), 1); // the MD5; u-2 holds f
        assert!(idx.drop_cluster("u-1").is_none());
        assert_eq!(ids(&idx.near(Kind::Pdq, &q, 31)), [("u-2".into(), 4)]);
        assert_eq!(idx.held("u-2").len(), 2);
        assert_eq!(idx.drop_cluster("u-2").unwrap().len(), 2);
        assert!(idx.is_empty() && idx.clusters() == 0);
        assert!(idx.near(Kind::Pdq, &q, 256).is_empty());
    }

    #[test]
    fn hashes_are_kept_binary_and_their_text_comes_back_lowercase() {
        let mut idx = ContentIndex::new();
        let (pdq, md5, video) = ("AB".repeat(32), "Cd".repeat(16), "[\"frames\"]");
        let (new, _) = idx
            .add(
                "u-1",
                &[(Kind::Pdq, &pdq), (Kind::Md5, &md5), (Kind::Other, video)],
            )
            .unwrap();
        let want = ["ab".repeat(32), "cd".repeat(16), video.to_owned()];
        let texts = |v: Vec<Arc<str>>| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        assert_eq!(texts(new), want);
        assert_eq!(texts(idx.held("u-1")), want);
        for t in [&pdq, &want[0], &md5, &want[1], &want[2]] {
            assert_eq!(texts(idx.holders(t)), ["u-1"], "{t}");
        }
        assert_eq!(idx.len(), 3);
        // an MD5 that is not hex is kept as its text
        idx.add("u-2", &[(Kind::Md5, "not hex")]).unwrap();
        assert_eq!(
            texts(
                idx.near(Kind::Md5, "not hex", 0)
                    .into_iter()
                    .map(|(c, _)| c)
                    .collect()
            ),
            ["u-2"]
        );
        assert_eq!(texts(idx.drop_cluster("u-1").unwrap()), want);
        assert_eq!(idx.len(), 1);
    }

    #[test]
    fn a_bad_pdq_text_changes_nothing() {
        let mut idx = ContentIndex::new();
        let md5 = "a".repeat(32);
        assert!(idx
            .add("u-1", &[(Kind::Md5, &md5), (Kind::Pdq, "zz")])
            .is_err());
        assert!(idx.is_empty() && !idx.contains("u-1"));
    }
}
