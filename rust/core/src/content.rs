//! The content (signals) of live clusters, searchable by exact signal and by
//! PDQ distance: the core of `streams.emerging.ContentIndex`.
//!
//! A signal is known by its text: 32 hex digits an MD5, 64 a PDQ hash, anything
//! else (a video's frames) held as it is, for Python to search. An MD5 is kept
//! as its 16 bytes, a PDQ hash as its 32, and their text is written again,
//! lowercase, where a caller asks for it: no copy of the text is kept. Each
//! signal is held by one cluster or more, each cluster holds its signals in the
//! order it took them; a PDQ search answers with the clusters holding what it
//! found.
//!
//! Sized for a million live posts (two of these live in a replay: the router's
//! index of unbanked content and the detector's, for bank changes), so nothing
//! is kept twice and nothing is allocated per signal:
//!
//! - a signal is a key in one table, with its first holder's slot as its value:
//!   an MD5 in a map of 16-byte keys, a PDQ hash in the [`PdqIndex`] (tagged with
//!   the slot), any other text in a map of its own. A signal more than one
//!   cluster holds (rare: content near two live clusters joins one) lists the
//!   others in a side map;
//! - a cluster is its id (`x-` and 16 hex digits, the ids `streams` makes, as a
//!   letter and 64 bits; any other id as its text) and its signals' keys, packed
//!   in one byte string in the order it took them.
//!
//! Answers are deterministic: clusters nearest first, ties by cluster id, each
//! cluster once at its nearest, whatever the order of adds and drops.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use crate::hex;
use crate::keyed::Keyed;
use crate::pdq::{self, Hash, PdqIndex};
use crate::prefetch::{prefetch, prefetch_ref};

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

/// A signal as the index takes it: its kind and text, and its hash's value where the
/// caller read it already (an upload's, read with its line: `event::Content::pdq_hash`,
/// `md5_bytes`; a text alone is read here). Why: an upload's hash text was read into its
/// value again by the nearest cluster's search, by its insertion, and by the detector's
/// index.
pub trait AsSignal {
    fn kind(&self) -> Kind;
    fn text(&self) -> &str;
    /// its PDQ hash, if read already (`None`: read from [`Self::text`] when needed)
    fn pdq_hash(&self) -> Option<Hash> {
        None
    }
    /// an MD5's bytes (those of its text), if read already
    fn md5_bytes(&self) -> Option<[u8; 16]> {
        None
    }
}

impl<T: AsRef<str>> AsSignal for (Kind, T) {
    fn kind(&self) -> Kind {
        self.0
    }

    fn text(&self) -> &str {
        self.1.as_ref()
    }
}

/// A signal and its hash's value read (see [`AsSignal`]).
#[derive(Debug, Clone, Copy)]
pub struct ReadSignal<'a> {
    pub kind: Kind,
    pub text: &'a str,
    /// a `Kind::Pdq` signal's words (those of `text`), if read
    pub pdq: Option<Hash>,
    /// an MD5's bytes (those of `text`, 32 hex digits), if read
    pub md5: Option<[u8; 16]>,
}

impl AsSignal for ReadSignal<'_> {
    fn kind(&self) -> Kind {
        self.kind
    }

    fn text(&self) -> &str {
        self.text
    }

    fn pdq_hash(&self) -> Option<Hash> {
        self.pdq
    }

    fn md5_bytes(&self) -> Option<[u8; 16]> {
        self.md5
    }
}

/// A signal as it is kept: binary for the hashes (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Md5([u8; 16]),
    /// a PDQ hash in the index (a `Kind::Pdq` signal)
    Pdq(Hash),
    Text(Box<str>),
}

/// A packed key's kind: a PDQ hash as its row of a scan-only index ([`Key::pack`]).
const PDQ_ROW: u8 = 3;

/// A signal a cluster holds, as the index's owner's state log takes it
/// ([`ContentIndex::held_signals_from_at`]): the hash itself, not its hex text (the log
/// writes a hash's bytes in base64: its text, made for each signal and read back into
/// bytes, was two allocations a signal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldSignal(Key);

/// What a [`HeldSignal`] is: an MD5's or a PDQ's bytes (the bytes its lowercase hex text
/// reads as), or a text (a video's frames).
pub enum SignalForm<'a> {
    Hash(&'a [u8]),
    Text(&'a str),
}

impl HeldSignal {
    /// Its text (hashes in lowercase hex), as [`ContentIndex::held`] gives it.
    pub fn text(&self) -> Arc<str> {
        self.0.text()
    }

    /// `f` of what it is (a hash's bytes made on the stack).
    pub fn with_form<R>(&self, f: impl FnOnce(SignalForm<'_>) -> R) -> R {
        match &self.0 {
            Key::Md5(b) => f(SignalForm::Hash(b)),
            Key::Pdq(h) => {
                let mut b = [0_u8; 32];
                for (chunk, w) in b.chunks_exact_mut(8).zip(h) {
                    chunk.copy_from_slice(&w.to_be_bytes());
                }
                f(SignalForm::Hash(&b))
            }
            Key::Text(t) => f(SignalForm::Text(t)),
        }
    }
}

impl Key {
    /// The text a caller gets back (hashes in lowercase hex).
    fn text(&self) -> Arc<str> {
        match self {
            Key::Md5(b) => {
                let mut s = String::with_capacity(32);
                pdq::push_hex(&mut s, b);
                Arc::from(s)
            }
            Key::Pdq(h) => Arc::from(pdq::format_hex(h)),
            Key::Text(t) => Arc::from(&**t),
        }
    }

    /// The bytes [`Key::pack`] appends for it.
    fn packed_len(&self, pdq: &PdqIndex<Holder>) -> usize {
        1 + match self {
            Key::Md5(_) => 16,
            Key::Pdq(_) if pdq.scans() => 4,
            Key::Pdq(_) => 32,
            Key::Text(t) => 4 + t.len(),
        }
    }

    /// Appended to a cluster's packed keys: a kind byte, then 16 bytes (MD5), 32 (PDQ,
    /// its words little-endian; in a scan-only index, whose rows stay put until it is
    /// compacted, the hash's 4-byte row: [`PDQ_ROW`]) or a 4-byte length and the text.
    fn pack(&self, pdq: &PdqIndex<Holder>, out: &mut Vec<u8>) {
        match self {
            Key::Md5(b) => {
                out.push(0);
                out.extend_from_slice(b);
            }
            Key::Pdq(h) if pdq.scans() => {
                out.push(PDQ_ROW);
                let row = pdq.row(h).expect("a held hash's row");
                out.extend_from_slice(&row.to_le_bytes());
            }
            Key::Pdq(h) => {
                out.push(1);
                for w in h {
                    out.extend_from_slice(&w.to_le_bytes());
                }
            }
            Key::Text(t) => {
                out.push(2);
                out.extend_from_slice(&(t.len() as u32).to_le_bytes());
                out.extend_from_slice(t.as_bytes());
            }
        }
    }

    /// The keys packed in `bytes` ([`Key::pack`], into `pdq`'s rows), in order.
    fn unpack<'a>(
        mut bytes: &'a [u8],
        pdq: &'a PdqIndex<Holder>,
    ) -> impl Iterator<Item = Key> + 'a {
        std::iter::from_fn(move || {
            let (key, rest) = Self::unpack_one(bytes, pdq)?;
            bytes = rest;
            Some(key)
        })
    }

    /// The first key packed in `bytes`, and the bytes after it.
    fn unpack_one<'a>(bytes: &'a [u8], pdq: &PdqIndex<Holder>) -> Option<(Key, &'a [u8])> {
        let (&kind, rest) = bytes.split_first()?;
        Some(match kind {
            0 => {
                let (b, rest) = rest.split_at(16);
                (Key::Md5(b.try_into().expect("16 bytes")), rest)
            }
            1 => {
                let (b, rest) = rest.split_at(32);
                let mut h = [0_u64; 4];
                for (w, c) in h.iter_mut().zip(b.chunks_exact(8)) {
                    *w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
                }
                (Key::Pdq(h), rest)
            }
            PDQ_ROW => {
                let (r, rest) = rest.split_at(4);
                let row = u32::from_le_bytes(r.try_into().expect("4 bytes"));
                (Key::Pdq(*pdq.hash_at(row)), rest)
            }
            _ => {
                let (n, rest) = rest.split_at(4);
                let n = u32::from_le_bytes(n.try_into().expect("4 bytes")) as usize;
                let (t, rest) = rest.split_at(n);
                let t = std::str::from_utf8(t).expect("packed from a str");
                (Key::Text(t.into()), rest)
            }
        })
    }

    /// Each PDQ row packed in `bytes` becomes `moved[row]` (a scan-only index compacted).
    fn move_rows(bytes: &mut [u8], moved: &[u32]) {
        let mut i = 0;
        while i < bytes.len() {
            let at = i + 1;
            let word = |b: &[u8]| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
            i = match bytes[i] {
                0 => at + 16,
                1 => at + 32,
                PDQ_ROW => {
                    let to = moved[word(bytes) as usize];
                    debug_assert_ne!(to, u32::MAX, "a held hash's row is live");
                    bytes[at..at + 4].copy_from_slice(&to.to_le_bytes());
                    at + 4
                }
                _ => at + 4 + word(bytes) as usize,
            };
        }
    }
}

/// A cluster's id as kept: `x-` and 16 lowercase hex digits (the ids `streams` makes) as
/// the letter and the 64 bits, no allocation; any other id as its text, boxed twice so that
/// the id is 16 bytes (a `Box<str>` is 16 alone: the usual id would pay 24 for the rare one).
/// Its text is made where a caller asks for it ([`ClusterId::with_str`]: on the stack).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClusterId {
    Hex(u8, u64),
    Text(Box<Box<str>>),
}

impl std::fmt::Display for ClusterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.with_str(|s| f.write_str(s))
    }
}

impl ClusterId {
    /// Whether this is the id `id`.
    pub fn is(&self, id: &str) -> bool {
        self.is_read(id, Self::hex(id))
    }

    /// Whether this is the id `id`, whose compact form is `compact` (`ClusterId::hex`,
    /// read once by a caller comparing `id` with many).
    fn is_read(&self, id: &str, compact: Option<(u8, u64)>) -> bool {
        match (self, compact) {
            (ClusterId::Hex(p, v), Some((q, w))) => (*p, *v) == (q, w),
            (ClusterId::Text(t), None) => &***t == id,
            _ => false,
        }
    }

    /// Whether the id starts with `letter` and a dash (`a-`: on the allow-list).
    pub fn kind_is(&self, letter: u8) -> bool {
        match self {
            ClusterId::Hex(p, _) => *p == letter,
            ClusterId::Text(t) => t.as_bytes().starts_with(&[letter, b'-']),
        }
    }

    /// The compact form of `id`, if it has one: a lowercase letter, a dash and 16
    /// lowercase hex digits. Read digit by digit: every look-up of a cluster by its id
    /// reads it, and through `str::from_utf8` and `u64::from_str_radix` it was 6% of a
    /// platform replay's instructions (callgrind).
    fn hex(id: &str) -> Option<(u8, u64)> {
        let b = id.as_bytes();
        if b.len() != 18 || b[1] != b'-' || !b[0].is_ascii_lowercase() {
            return None;
        }
        let mut v = 0_u64;
        for &c in &b[2..] {
            let digit = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => return None,
            };
            v = (v << 4) | u64::from(digit);
        }
        Some((b[0], v))
    }

    pub fn of(id: &str) -> Self {
        match Self::hex(id) {
            Some((p, v)) => ClusterId::Hex(p, v),
            None => ClusterId::Text(Box::new(id.into())),
        }
    }

    /// `f` of the id's text, written on the stack for the compact form (no allocation).
    pub fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            ClusterId::Text(t) => f(t),
            ClusterId::Hex(p, v) => {
                let mut buf = [0_u8; 18];
                buf[0] = *p;
                buf[1] = b'-';
                buf[2..].copy_from_slice(&crate::hex::lower16(*v));
                if !p.is_ascii() {
                    // (`hex` makes none such: checked as before, not assumed)
                    return f(std::str::from_utf8(&buf).expect("ASCII"));
                }
                // SAFETY: an ASCII letter, a dash and hex digits: ASCII, so UTF-8 (checking
                // the whole was a third of the call)
                f(unsafe { std::str::from_utf8_unchecked(&buf) })
            }
        }
    }

    /// The id's text, shared.
    pub fn text(&self) -> Arc<str> {
        self.with_str(|s| Arc::from(s))
    }
}

/// The one key of [`IdSlots`]' hash, drawn at random once per process ([`Keyed`]),
/// because cluster ids can be chosen (an unbanked cluster's id is an unkeyed BLAKE2b of an
/// upload's hash: it can be ground), so no id may be made to collide. One key for every
/// table, so that an id's hash is computed once where an event is routed ([`Cid`]) and
/// serves each table it is looked up in.
fn id_hasher() -> &'static Keyed {
    crate::keyed::process_hasher()
}

/// The keyed hash of a cluster id as the tables use it (see [`id_hasher`]): 32 bits,
/// repeated in both halves, so that a [`Cid`] carrying it is 16 bytes (hashbrown reads
/// a bucket from the low bits and a tag from the top seven: both come from the 32).
/// The keyed hash `id`'s tables find it by (a [`Cid`]'s), for read-ahead hints.
pub fn hash_of(id: &ClusterId) -> u64 {
    keyed(id)
}

fn keyed(id: &ClusterId) -> u64 {
    spread(keyed32(id))
}

fn keyed32(id: &ClusterId) -> u32 {
    use std::hash::BuildHasher;
    let h = match id {
        ClusterId::Hex(letter, x) => id_hasher().hash_one((0_u8, *letter, *x)),
        ClusterId::Text(t) => id_hasher().hash_one((1_u8, &***t)),
    };
    (h ^ (h >> 32)) as u32
}

fn spread(h: u32) -> u64 {
    u64::from(h) | (u64::from(h) << 32)
}

/// A cluster id read once, where an event is routed: its compact form and its keyed hash,
/// carried with the event through the post map, the idle order, the unbanked store and the
/// content index, so that none of them reads the id's text or hashes it again (a platform
/// replay looked each event's cluster up by its text four or five times: a quarter of the
/// core's SipHashes, and the text read digit by digit each time). 16 bytes, as a
/// [`ClusterId`]: the reorder buffer holds one with each event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cid {
    Hex { letter: u8, hash: u32, value: u64 },
    Text { hash: u32, text: Box<Box<str>> },
}

impl Cid {
    /// `id`'s text read (once).
    pub fn of(id: &str) -> Self {
        Self::from_id(ClusterId::of(id))
    }

    pub fn from_id(id: ClusterId) -> Self {
        let hash = keyed32(&id);
        match id {
            ClusterId::Hex(letter, value) => Cid::Hex {
                letter,
                hash,
                value,
            },
            ClusterId::Text(text) => Cid::Text { hash, text },
        }
    }

    fn hash(&self) -> u64 {
        spread(self.keyed())
    }

    /// The id's 32-bit keyed hash (the process's key: equal ids, equal hashes).
    pub fn keyed(&self) -> u32 {
        match self {
            Cid::Hex { hash, .. } | Cid::Text { hash, .. } => *hash,
        }
    }

    /// The id as the tables keep it.
    pub fn to_id(&self) -> ClusterId {
        match self {
            Cid::Hex { letter, value, .. } => ClusterId::Hex(*letter, *value),
            Cid::Text { text, .. } => ClusterId::Text(text.clone()),
        }
    }

    /// Whether this is `id`.
    pub fn is(&self, id: &ClusterId) -> bool {
        match (self, id) {
            (Cid::Hex { letter, value, .. }, ClusterId::Hex(p, v)) => (*letter, *value) == (*p, *v),
            (Cid::Text { text, .. }, ClusterId::Text(t)) => text == t,
            _ => false,
        }
    }

    /// Whether the id starts with `letter` and a dash.
    pub fn kind_is(&self, letter: u8) -> bool {
        match self {
            Cid::Hex { letter: p, .. } => *p == letter,
            Cid::Text { text, .. } => text.as_bytes().starts_with(&[letter, b'-']),
        }
    }

    /// `f` of the id's text, written on the stack for the compact form (no allocation).
    pub fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            Cid::Hex { letter, value, .. } => ClusterId::Hex(*letter, *value).with_str(f),
            Cid::Text { text, .. } => f(text),
        }
    }
}

impl std::fmt::Display for Cid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.with_str(|s| f.write_str(s))
    }
}

/// A cluster id as the tables take it: a [`Cid`] carried from where its event was routed,
/// or a text (a call from Python, a test) read here.
pub trait AsCid {
    fn as_cid(&self) -> std::borrow::Cow<'_, Cid>;
}

impl AsCid for Cid {
    fn as_cid(&self) -> std::borrow::Cow<'_, Cid> {
        std::borrow::Cow::Borrowed(self)
    }
}

impl AsCid for str {
    fn as_cid(&self) -> std::borrow::Cow<'_, Cid> {
        std::borrow::Cow::Owned(Cid::of(self))
    }
}

impl AsCid for String {
    fn as_cid(&self) -> std::borrow::Cow<'_, Cid> {
        self.as_str().as_cid()
    }
}

impl AsCid for Arc<str> {
    fn as_cid(&self) -> std::borrow::Cow<'_, Cid> {
        (**self).as_cid()
    }
}

impl<T: AsCid + ?Sized> AsCid for &T {
    fn as_cid(&self) -> std::borrow::Cow<'_, Cid> {
        (**self).as_cid()
    }
}

/// Cluster id -> slot, for a store that keeps each cluster's [`ClusterId`] in its slot: a
/// table of the 4-byte slots, found by the id's keyed hash ([`id_hasher`]: SipHash keyed at
/// random per process, no id can be chosen to collide) and told apart by the id the slot
/// holds. A table of (id or its hash, slot) pairs took 17 to 25 bytes a bucket, 5 here: at
/// a million live posts (about 330,000 clusters, just past a doubling) that was 9 to 13 B a
/// post in each of the content index, the post map and the unbanked clusters.
#[derive(Debug, Default)]
pub struct IdSlots {
    table: hashbrown::HashTable<u32>,
}

impl IdSlots {
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.table.capacity()
    }

    /// The slot of `id`; `id_of` gives the id a live slot holds. No hash computed here: the
    /// id's was, once ([`Cid`]).
    pub fn find<'a>(&self, id: &Cid, id_of: impl Fn(u32) -> &'a ClusterId) -> Option<u32> {
        self.table.find(id.hash(), |&s| id.is(id_of(s))).copied()
    }

    /// A hint for the bucket an id of keyed hash `hash` ([`hash_of`]) is most likely in: its
    /// control bytes read, the slot it names hinted (a read-ahead's first pass: see
    /// [`crate::prefetch`]).
    pub fn prefetch_bucket(&self, hash: u64) {
        if let Some(s) = self.table.iter_hash(hash).next() {
            prefetch_ref(s);
        }
    }

    /// The slot an id of keyed hash `hash` most likely has (the first whose tag matches; not
    /// checked: for a read-ahead's hints, which a wrong one, 1 in 128, makes useless).
    pub fn likely(&self, hash: u64) -> Option<u32> {
        self.table.iter_hash(hash).next().copied()
    }

    /// Add `slot`, which holds `id` (not here yet).
    pub fn insert<'a>(&mut self, id: &Cid, slot: u32, id_of: impl Fn(u32) -> &'a ClusterId) {
        self.table
            .insert_unique(id.hash(), slot, |&s| keyed(id_of(s)));
    }

    /// Take `slot` (which holds `id`) out.
    pub fn remove(&mut self, id: &ClusterId, slot: u32) -> bool {
        match self.table.find_entry(keyed(id), |&s| s == slot) {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// Give room back down to `2 * len` buckets' worth.
    pub fn shrink<'a>(&mut self, id_of: impl Fn(u32) -> &'a ClusterId) {
        let n = 2 * self.table.len();
        self.table.shrink_to(n, |&s| keyed(id_of(s)));
    }
}

/// The id a live slot of `clusters` holds.
fn id_in<'a>(clusters: &'a [Option<Cluster>]) -> impl Fn(u32) -> &'a ClusterId + 'a {
    |s| {
        &clusters[s as usize]
            .as_ref()
            .expect("a live cluster's slot")
            .id
    }
}

/// Which user of an index a cluster and its signals are held for. In replay one index
/// serves both the router, which clusters unbanked uploads by it (the owner, [`OWNER`]),
/// and the detector, which finds by it the live clusters a bank change concerns
/// ([`DETECTOR`]): the same content, most of it held for both, kept once. The two differ
/// a little (the detector also holds banked clusters' content, and each evicts idle
/// clusters on its own schedule), so each (cluster, signal) says which views hold it and
/// every answer is a view's alone, exactly what an index of its own would say.
pub type View = u8;
/// The index's owner (the router's view; the only one of an index used alone).
pub const OWNER: View = 0;
/// The detector's view of an index it shares with the router (replay).
pub const DETECTOR: View = 1;

/// A signal's holder: its cluster's slot in the low 30 bits, the views holding the signal
/// in that cluster in the top two (a PDQ row's tag, an MD5's value: no bigger than a slot).
type Holder = u32;
const SLOT_BITS: u32 = 30;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;

/// The bit of view `v` in a [`Holder`] (and in a cluster's `held`).
const fn bit(v: View) -> u32 {
    1 << (SLOT_BITS + v as u32)
}

#[derive(Debug)]
struct Cluster {
    id: ClusterId,
    /// its signals' keys, packed ([`Key::pack`]), in the order it took them (in any view)
    keys: Box<[u8]>,
    /// how many signals it holds (in any view) in the low 30 bits; the views holding the
    /// cluster in the top two
    held: u32,
    /// which cluster this is of those its slot held in the owner's view (a caller keeping
    /// things by slot tells a later one from it)
    born: u32,
}

impl Cluster {
    fn count(&self) -> usize {
        (self.held & SLOT_MASK) as usize
    }

    fn in_view(&self, v: View) -> bool {
        self.held & bit(v) != 0
    }

    /// Held in `v` alone (so each of its signals is held in `v`).
    fn only_in(&self, v: View) -> bool {
        self.held & !SLOT_MASK == bit(v)
    }
}

/// What [`ContentIndex::add`] gives: the texts new to the cluster, then those new to all.
pub type Added = (Vec<Arc<str>>, Vec<Arc<str>>);

/// What a signal text was refused for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSignal(pub String);

/// Live clusters' signals (see the module doc).
#[derive(Debug, Default)]
pub struct ContentIndex {
    /// the PDQ signals' hashes, tagged with their first holder
    pdq: PdqIndex<Holder>,
    /// MD5 -> its first holder
    md5: HashMap<[u8; 16], Holder, Keyed>,
    /// signals of any other text (a video's frames) -> the first holder
    text: HashMap<Box<str>, Holder>,
    /// the other holders of a signal more than one cluster holds
    more: HashMap<Key, Vec<Holder>>,
    ids: IdSlots,
    clusters: Vec<Option<Cluster>>,
    /// free slots, the lowest taken first: the slots stay dense, and the end of
    /// `clusters` empties when a flood goes (see `trim`)
    free: BinaryHeap<Reverse<u32>>,
    born: u32,
    /// live clusters in each view
    live: [usize; 2],
}

impl ContentIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// An index whose PDQ search scans its hashes, without the index's tables
    /// ([`PdqIndex::scan_only`]): for one searched only now and then (a worker's clusters
    /// partition, which finds by it the live clusters a bank change concerns), where the
    /// tables cost about 70 bytes a hash.
    pub fn scan_only() -> Self {
        ContentIndex {
            pdq: PdqIndex::scan_only(),
            ..Self::default()
        }
    }

    /// Live clusters (the owner's view).
    pub fn clusters(&self) -> usize {
        self.clusters_in(OWNER)
    }

    /// Live clusters in view `v`.
    pub fn clusters_in(&self, v: View) -> usize {
        self.live[v as usize]
    }

    /// Distinct signals held (in any view).
    pub fn len(&self) -> usize {
        self.pdq.len() + self.md5.len() + self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key `text` is kept under, for a signal of `kind` (`None`: a PDQ text that is
    /// not 64 hex digits). A text of 32 hex digits is an MD5 whatever its kind says.
    fn key_of(kind: Kind, text: &str) -> Option<Key> {
        Self::key_of_signal(&(kind, text))
    }

    /// [`Self::key_of`] a signal, its PDQ hash taken as read if it was.
    fn key_of_signal(s: &impl AsSignal) -> Option<Key> {
        let text = s.text();
        if s.kind() == Kind::Pdq {
            return s
                .pdq_hash()
                .or_else(|| pdq::parse_hex(text.as_bytes()))
                .map(Key::Pdq);
        }
        Some(
            match s.md5_bytes().or_else(|| hex::bytes::<16>(text.as_bytes())) {
                Some(b) => Key::Md5(b),
                None => Key::Text(text.into()),
            },
        )
    }

    /// The first holder of the signal kept under `key`.
    fn first_holder(&self, key: &Key) -> Option<Holder> {
        match key {
            Key::Md5(b) => self.md5.get(b).copied(),
            Key::Pdq(h) => self.pdq.tag_of(h),
            Key::Text(t) => self.text.get(t).copied(),
        }
    }

    /// The signal kept under `key` has no holder left: gone.
    fn remove_signal(&mut self, key: &Key) {
        match key {
            Key::Md5(b) => {
                self.md5.remove(b);
            }
            Key::Pdq(p) => {
                self.pdq.remove(p);
            }
            Key::Text(t) => {
                self.text.remove(t);
            }
        }
    }

    /// The key of the signal of `text` held here (of any kind, as its shape says).
    fn held_key(&self, text: &str) -> Option<Key> {
        if let Some(h) = pdq::parse_hex(text.as_bytes()) {
            if self.pdq.contains(&h) {
                return Some(Key::Pdq(h));
            }
        }
        let key = Self::key_of(Kind::Other, text)?;
        self.first_holder(&key).map(|_| key)
    }

    /// Every holder of the signal kept under `key` (none if it is not held).
    fn holders_of(&self, key: &Key) -> Vec<Holder> {
        let Some(first) = self.first_holder(key) else {
            return Vec::new();
        };
        let mut out = vec![first];
        if let Some(more) = self.more.get(key) {
            out.extend_from_slice(more);
        }
        out
    }

    /// The holder of `key` in the cluster of slot `c`, if it holds it (in any view).
    fn holder_in(&self, key: &Key, c: u32) -> Option<Holder> {
        let first = self.first_holder(key)?;
        if first & SLOT_MASK == c {
            return Some(first);
        }
        self.more
            .get(key)?
            .iter()
            .copied()
            .find(|h| h & SLOT_MASK == c)
    }

    /// The first holder of the signal kept under `key` becomes `to` (it is held).
    fn set_first(&mut self, key: &Key, to: Holder) {
        match key {
            Key::Md5(b) => {
                self.md5.insert(*b, to);
            }
            Key::Pdq(p) => {
                self.pdq.retag(p, to);
            }
            Key::Text(t) => {
                self.text.insert(t.clone(), to);
            }
        }
    }

    /// A signal new to the index (its [`Self::first_holder`] just `None`), held by `h`.
    fn insert_signal(&mut self, key: &Key, h: Holder) {
        match key {
            Key::Md5(b) => {
                self.md5.insert(*b, h);
            }
            Key::Pdq(p) => {
                self.pdq.insert_absent(*p, h);
            }
            Key::Text(t) => {
                self.text.insert(t.clone(), h);
            }
        }
    }

    /// Whether any of the other holders of `key` holds it in view `v`, leaving out the
    /// cluster of slot `c`.
    fn more_hold(&self, key: &Key, c: u32, v: View) -> bool {
        self.more
            .get(key)
            .is_some_and(|m| m.iter().any(|&h| h & SLOT_MASK != c && h & bit(v) != 0))
    }

    /// The cluster of slot `c`'s holder of `key` becomes `to` (`f`: the first holder).
    fn set_holder(&mut self, key: &Key, c: u32, f: Holder, to: Holder) {
        if f & SLOT_MASK == c {
            self.set_first(key, to);
        } else if let Some(h) = self
            .more
            .get_mut(key)
            .and_then(|m| m.iter_mut().find(|h| **h & SLOT_MASK == c))
        {
            *h = to;
        }
    }

    /// The cluster of slot `c` holds `key` no more (`f`: the first holder); the signal
    /// goes with its last holder.
    fn unhold(&mut self, key: &Key, c: u32, f: Holder) {
        if f & SLOT_MASK == c {
            let next = self.more.get_mut(key).and_then(|m| m.pop());
            if self.more.get(key).is_some_and(|m| m.is_empty()) {
                self.more.remove(key);
            }
            match next {
                Some(n) => self.set_first(key, n),
                None => self.remove_signal(key),
            }
            return;
        }
        if let Some(m) = self.more.get_mut(key) {
            m.retain(|h| h & SLOT_MASK != c);
            if m.is_empty() {
                self.more.remove(key);
            }
        }
    }

    /// The slot `cluster` is kept in (in any view).
    /// Hints for the clusters of keyed hashes `clusters` ([`hash_of`]), a pass over them all:
    /// their buckets (see [`IdSlots::prefetch_bucket`]).
    pub fn prefetch_ids(&self, clusters: &[u64]) {
        for &h in clusters {
            self.ids.prefetch_bucket(h);
        }
    }

    /// The slot the cluster of keyed hash `hash` most likely has ([`IdSlots::likely`]), its
    /// record hinted: a read-ahead's second pass, after [`Self::prefetch_ids`].
    pub fn likely_slot(&self, hash: u64) -> Option<u32> {
        let s = self.ids.likely(hash)?;
        prefetch(&self.clusters, s as usize);
        Some(s)
    }

    fn any_slot(&self, cluster: &(impl AsCid + ?Sized)) -> Option<u32> {
        self.ids.find(&cluster.as_cid(), id_in(&self.clusters))
    }

    /// The slot `cluster` is kept in while it lives in the owner's view (a later cluster
    /// may take it).
    pub fn slot(&self, cluster: &(impl AsCid + ?Sized)) -> Option<u32> {
        self.slot_in(cluster, OWNER)
    }

    /// The slot `cluster` is kept in while it lives in view `v`.
    pub fn slot_in(&self, cluster: &(impl AsCid + ?Sized), v: View) -> Option<u32> {
        self.any_slot(cluster)
            .filter(|&c| self.cluster(c).in_view(v))
    }

    pub fn contains(&self, cluster: &(impl AsCid + ?Sized)) -> bool {
        self.slot(cluster).is_some()
    }

    pub fn contains_in(&self, cluster: &(impl AsCid + ?Sized), v: View) -> bool {
        self.slot_in(cluster, v).is_some()
    }

    fn at(&self, slot: u32) -> Option<&Cluster> {
        self.clusters.get(slot as usize)?.as_ref()
    }

    /// Which cluster of those `slot` held in the owner's view is there now (`None`: none
    /// is, in that view).
    pub fn born_at(&self, slot: u32) -> Option<u32> {
        self.at(slot).filter(|c| c.in_view(OWNER)).map(|c| c.born)
    }

    /// The id of the cluster in `slot`.
    pub fn id_at(&self, slot: u32) -> Option<Arc<str>> {
        self.at(slot).map(|c| c.id.text())
    }

    /// The id of the live cluster in `slot`, compact (no text made).
    pub fn cluster_id_at(&self, slot: u32) -> Option<ClusterId> {
        self.at(slot).map(|c| c.id.clone())
    }

    fn cluster(&self, slot: u32) -> &Cluster {
        self.clusters[slot as usize]
            .as_ref()
            .expect("a live cluster's slot")
    }

    /// The signals `cluster` holds (the owner's view), in the order it took them.
    pub fn held(&self, cluster: &(impl AsCid + ?Sized)) -> Vec<Arc<str>> {
        self.held_in(cluster, OWNER)
    }

    /// The signals `cluster` holds in view `v`, in the order it took them.
    pub fn held_in(&self, cluster: &(impl AsCid + ?Sized), v: View) -> Vec<Arc<str>> {
        self.slot_in(cluster, v)
            .map_or_else(Vec::new, |c| self.keys_in(c, v).map(|k| k.text()).collect())
    }

    /// The keys the cluster of slot `c` holds in view `v`, in order.
    fn keys_in(&self, c: u32, v: View) -> impl Iterator<Item = Key> + '_ {
        let item = self.cluster(c);
        let all = item.only_in(v);
        Key::unpack(&item.keys, &self.pdq)
            .filter(move |k| all || self.holder_in(k, c).is_some_and(|h| h & bit(v) != 0))
    }

    /// How many signals the cluster in `slot` holds in the owner's view (0 if none is there).
    pub fn held_count_at(&self, slot: u32) -> usize {
        match self.at(slot) {
            Some(c) if c.only_in(OWNER) => c.count(),
            Some(c) if c.in_view(OWNER) => self.keys_in(slot, OWNER).count(),
            _ => 0,
        }
    }

    /// The signals `cluster` took after its first `from`, in the order it took them (the
    /// owner's view).
    pub fn held_from(&self, cluster: &(impl AsCid + ?Sized), from: usize) -> Vec<Arc<str>> {
        self.slot(cluster)
            .map_or_else(Vec::new, |c| self.held_from_at(c, from))
    }

    /// [`Self::held_from`] of the cluster in `slot`.
    pub fn held_from_at(&self, slot: u32, from: usize) -> Vec<Arc<str>> {
        self.held_signals_from_at(slot, from)
            .iter()
            .map(HeldSignal::text)
            .collect()
    }

    /// [`Self::held_from_at`]'s signals as they are kept (no text made).
    ///
    /// A cluster held in the owner's view alone counts its signals: none past `from` is
    /// answered without walking its keys to `from` (the index's log asks it of each
    /// cluster a batch touched, most of them with no new signal: 126,659 walks, 274
    /// instructions each, at the one-worker benchmark's 300,000 events).
    pub fn held_signals_from_at(&self, slot: u32, from: usize) -> Vec<HeldSignal> {
        match self.at(slot) {
            Some(c) if c.only_in(OWNER) && c.count() <= from => Vec::new(),
            Some(c) if c.in_view(OWNER) => self
                .keys_in(slot, OWNER)
                .skip(from)
                .map(HeldSignal)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The clusters holding `text` (the owner's view), by id.
    pub fn holders(&self, text: &str) -> Vec<Arc<str>> {
        self.holders_in(text, OWNER)
    }

    /// The clusters holding `text` in view `v`, by id.
    pub fn holders_in(&self, text: &str, v: View) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = self.held_key(text).map_or_else(Vec::new, |key| {
            self.holders_of(&key)
                .into_iter()
                .filter(|h| h & bit(v) != 0)
                .map(|h| self.cluster(h & SLOT_MASK).id.text())
                .collect()
        });
        out.sort();
        out
    }

    /// The slot of `cluster`, made now if it is new, and held in view `v` from now on.
    fn slot_or_new(&mut self, cluster: &(impl AsCid + ?Sized), v: View) -> Result<u32, BadSignal> {
        let cluster = cluster.as_cid();
        let c = match self.any_slot(&*cluster) {
            Some(c) => c,
            None => {
                let item = Cluster {
                    id: cluster.to_id(),
                    keys: Box::default(),
                    held: 0,
                    born: 0,
                };
                // the lowest free slot, unless the slots were trimmed below it (then every
                // free slot is past the end: see `trim`)
                let c = match self.free.pop() {
                    Some(Reverse(slot)) if (slot as usize) < self.clusters.len() => {
                        self.clusters[slot as usize] = Some(item);
                        slot
                    }
                    stale => {
                        if stale.is_some() {
                            self.free.clear();
                        }
                        if self.clusters.len() > SLOT_MASK as usize {
                            return Err(BadSignal(format!("over {SLOT_MASK} live clusters")));
                        }
                        self.clusters.push(Some(item));
                        (self.clusters.len() - 1) as u32
                    }
                };
                self.ids.insert(&cluster, c, id_in(&self.clusters));
                c
            }
        };
        let item = self.clusters[c as usize]
            .as_mut()
            .expect("a live cluster's slot");
        if !item.in_view(v) {
            item.held |= bit(v);
            self.live[v as usize] += 1;
            if v == OWNER {
                self.born = self.born.wrapping_add(1);
                item.born = self.born;
            }
        }
        Ok(c)
    }

    /// `cluster` holds these signals (the owner's view); see [`Self::add_in`].
    pub fn add(
        &mut self,
        cluster: &(impl AsCid + ?Sized),
        signals: &[impl AsSignal],
    ) -> Result<Added, BadSignal> {
        self.add_in(cluster, signals, OWNER)
    }

    /// [`Self::add`] when no one reads which signals were new (the idle order's assign):
    /// how many, and no text is made of them.
    pub fn add_counted(
        &mut self,
        cluster: &(impl AsCid + ?Sized),
        signals: &[impl AsSignal],
    ) -> Result<usize, BadSignal> {
        self.add_counted_in(cluster, signals, OWNER)
    }

    /// [`Self::add_in`] when no one reads which signals were new (replay's detector): how
    /// many, and no text is made of them (their hex was a tenth of a replay's time).
    pub fn add_counted_in(
        &mut self,
        cluster: &(impl AsCid + ?Sized),
        signals: &[impl AsSignal],
        v: View,
    ) -> Result<usize, BadSignal> {
        let mut n = 0;
        self.add_with(cluster, signals, v, |_, _| n += 1)?;
        Ok(n)
    }

    /// `cluster` holds these signals in view `v`; returns those it did not hold yet (in
    /// `v`), and of those the ones no cluster held (in `v`). A PDQ text that is not 64 hex
    /// digits is refused before anything changes. The owner's view keeps each cluster's
    /// signals in the order it took them (its state log's order); another view reads them
    /// as a set (its order is the order either took them).
    pub fn add_in(
        &mut self,
        cluster: &(impl AsCid + ?Sized),
        signals: &[impl AsSignal],
        v: View,
    ) -> Result<Added, BadSignal> {
        let (mut new, mut first) = (Vec::new(), Vec::new());
        self.add_with(cluster, signals, v, |key, no_one_held_it| {
            if no_one_held_it {
                first.push(key.text());
            }
            new.push(key.text());
        })?;
        Ok((new, first))
    }

    /// `new(key, no cluster held it in v)` for each signal new to `cluster` in `v`, in order.
    fn add_with(
        &mut self,
        cluster: &(impl AsCid + ?Sized),
        signals: &[impl AsSignal],
        v: View,
        mut new: impl FnMut(&Key, bool),
    ) -> Result<(), BadSignal> {
        let mut keys = Vec::with_capacity(signals.len());
        for s in signals {
            keys.push(
                Self::key_of_signal(s)
                    .ok_or_else(|| BadSignal(format!("not a PDQ hash: {:?}", s.text())))?,
            );
        }
        let c = self.slot_or_new(cluster, v)?;
        let mine = c | bit(v);
        // room for every key made at the first key packed (none where none is): grown key
        // by key it was four allocations for an upload's MD5 and PDQ, then a fifth for the
        // cluster's keys and a copy
        let room: usize = keys.iter().map(|k| k.packed_len(&self.pdq)).sum();
        let mut packed = Vec::new();
        let mut took = 0;
        for key in keys {
            // one look-up of the signal (a PDQ hash's row is a bucket scan)
            let Some(f) = self.first_holder(&key) else {
                self.insert_signal(&key, mine);
                packed.reserve_exact(room.saturating_sub(packed.len()));
                key.pack(&self.pdq, &mut packed);
                took += 1;
                new(&key, true);
                continue;
            };
            let elsewhere = (f & SLOT_MASK != c && f & bit(v) != 0) || self.more_hold(&key, c, v);
            if f & SLOT_MASK == c {
                if f & bit(v) != 0 {
                    continue; // held already
                }
                self.set_first(&key, f | bit(v)); // held for another view: now for this one
                self.repack_for(c, v, &key, &mut packed);
            } else {
                let more = self.more.entry(key.clone()).or_default();
                match more.iter().position(|h| h & SLOT_MASK == c) {
                    Some(i) if more[i] & bit(v) != 0 => continue, // held already
                    Some(i) => {
                        more[i] |= bit(v);
                        self.repack_for(c, v, &key, &mut packed);
                    }
                    None => {
                        more.push(mine);
                        packed.reserve_exact(room.saturating_sub(packed.len()));
                        key.pack(&self.pdq, &mut packed);
                        took += 1;
                    }
                }
            }
            new(&key, !elsewhere);
        }
        if !packed.is_empty() {
            let item = self.clusters[c as usize]
                .as_mut()
                .expect("a live cluster's slot");
            item.held += took;
            if item.keys.is_empty() && packed.len() == packed.capacity() {
                // a new cluster's keys, all of them packed: the vector is the box
                item.keys = packed.into_boxed_slice();
                return Ok(());
            }
            let mut keys = std::mem::take(&mut item.keys).into_vec();
            keys.reserve_exact(packed.len());
            keys.extend_from_slice(&packed);
            item.keys = keys.into_boxed_slice();
        }
        Ok(())
    }

    /// The cluster of slot `c` held `key` for another view and now holds it for `v`: the
    /// owner's signals are kept in the order it took them (its state log's), so the key
    /// moves to the end (into `packed`); another view reads them as a set.
    fn repack_for(&mut self, c: u32, v: View, key: &Key, packed: &mut Vec<u8>) {
        if v != OWNER {
            return;
        }
        let item = self.clusters[c as usize]
            .as_mut()
            .expect("a live cluster's slot");
        let mut kept = Vec::with_capacity(item.keys.len());
        for k in Key::unpack(&item.keys, &self.pdq).filter(|k| k != key) {
            k.pack(&self.pdq, &mut kept);
        }
        item.keys = kept.into_boxed_slice();
        key.pack(&self.pdq, packed);
    }

    /// Forget a cluster's content (evicted) in the owner's view; see [`Self::drop_cluster_in`].
    pub fn drop_cluster(&mut self, cluster: &(impl AsCid + ?Sized)) -> Option<Vec<Arc<str>>> {
        self.drop_cluster_in(cluster, OWNER)
    }

    /// Forget a cluster's content (evicted) in view `v`: the signals no cluster holds any
    /// more in `v`, or `None` if it held nothing there. What another view holds stays.
    pub fn drop_cluster_in(
        &mut self,
        cluster: &(impl AsCid + ?Sized),
        v: View,
    ) -> Option<Vec<Arc<str>>> {
        let mut freed = Vec::new();
        self.remove_cluster(cluster, v, |key| freed.push(key.text()))
            .then_some(freed)
    }

    /// [`Self::drop_cluster_in`] when no one reads which signals went (replay's evictions):
    /// no text is made for them. `false` if it held nothing.
    pub fn forget_cluster_in(&mut self, cluster: &(impl AsCid + ?Sized), v: View) -> bool {
        self.remove_cluster(cluster, v, |_| ())
    }

    /// [`Self::forget_cluster_in`] in the owner's view.
    pub fn forget_cluster(&mut self, cluster: &(impl AsCid + ?Sized)) -> bool {
        self.forget_cluster_in(cluster, OWNER)
    }

    fn remove_cluster(
        &mut self,
        cluster: &(impl AsCid + ?Sized),
        v: View,
        mut freed: impl FnMut(&Key),
    ) -> bool {
        let Some(c) = self.slot_in(cluster, v) else {
            return false;
        };
        let item = self.clusters[c as usize]
            .as_mut()
            .expect("a live cluster's slot");
        let keys = std::mem::take(&mut item.keys);
        item.held &= !bit(v);
        let others = item.held & !SLOT_MASK != 0;
        self.live[v as usize] -= 1;
        // the keys held for another view, packed as they are here (a kept hash's row does
        // not move before the compaction below); while every key so far is kept (a cluster
        // both views hold, forgotten by one: replay's final evictions) they are `keys`
        // itself, kept whole, where packing them afresh was a reallocation a key
        let (mut kept, mut count, mut whole) = (Vec::new(), 0, true);
        // (a scan-only index's rows stay put until it is compacted, below)
        let mut left: &[u8] = &keys;
        while let Some((key, after)) = Key::unpack_one(left, &self.pdq) {
            let (at, raw) = (keys.len() - left.len(), &left[..left.len() - after.len()]);
            left = after;
            // one look-up of the signal, a second to change its first holder
            let f = self.first_holder(&key).expect("a signal the cluster holds");
            let (h, elsewhere) = if f & SLOT_MASK == c {
                (f, self.more_hold(&key, c, v))
            } else {
                let more = self.more.get(&key).expect("a holder that is not the first");
                let h = *more
                    .iter()
                    .find(|h| *h & SLOT_MASK == c)
                    .expect("the cluster's holder");
                (h, f & bit(v) != 0 || self.more_hold(&key, c, v))
            };
            let rest = h & !bit(v);
            if rest & !SLOT_MASK != 0 {
                if !whole {
                    kept.extend_from_slice(raw); // held for another view
                }
                count += 1;
            } else if whole {
                whole = false;
                kept.extend_from_slice(&keys[..at]);
            }
            if h & bit(v) == 0 {
                continue;
            }
            if rest & !SLOT_MASK != 0 {
                self.set_holder(&key, c, f, rest);
            } else {
                self.unhold(&key, c, f);
            }
            if !elsewhere {
                freed(&key);
            }
        }
        if others {
            let item = self.clusters[c as usize]
                .as_mut()
                .expect("a live cluster's slot");
            item.keys = if whole { keys } else { kept.into_boxed_slice() };
            item.held = (item.held & !SLOT_MASK) | count;
        } else {
            let gone = self.clusters[c as usize]
                .take()
                .expect("a live cluster's slot");
            self.ids.remove(&gone.id, c);
            self.free.push(Reverse(c));
        }
        if let Some(moved) = self.pdq.compact() {
            for item in self.clusters.iter_mut().flatten() {
                Key::move_rows(&mut item.keys, &moved);
            }
        }
        self.trim();
        true
    }

    /// After a flood of clusters is gone, give their tables' room back.
    ///
    /// Each part is trimmed only when trimming frees something, so a flood dropped one
    /// cluster at a time costs amortized O(1) a cluster: the tables once their capacity is
    /// 4x what they hold (then halved), the slots once the last is free, and the free list
    /// once most of it is past the end. (Trimming at every drop while the last slot
    /// stayed live walked the whole free list each time: about a tenth of a platform replay's
    /// time, in its final evictions.)
    fn trim(&mut self) {
        let live = self.ids.len();
        if self.ids.capacity() > 4 * live.max(1024) {
            self.ids.shrink(id_in(&self.clusters));
            self.md5.shrink_to(2 * self.md5.len());
            self.text.shrink_to(2 * self.text.len());
            self.more.shrink_to(2 * self.more.len());
        }
        if self.clusters.len() > 4 * live.max(1024) && matches!(self.clusters.last(), Some(None)) {
            while matches!(self.clusters.last(), Some(None)) {
                self.clusters.pop();
            }
            self.clusters.shrink_to(2 * self.clusters.len());
        }
        // free slots past the end are skipped when taken (`slot_or_new`); dropped here once
        // they are most of the list
        let in_use = self.clusters.len() - live;
        if self.free.len() > 2 * in_use.max(1024) {
            let n = self.clusters.len() as u32;
            self.free.retain(|&Reverse(f)| f < n);
            self.free.shrink_to(2 * self.free.len());
        }
    }

    /// Clusters holding `text` in the owner's view; see [`Self::near_in`].
    pub fn near(&self, kind: Kind, text: &str, threshold: u32) -> Vec<(Arc<str>, u32)> {
        self.near_in(kind, text, threshold, OWNER)
    }

    /// Clusters holding `text` in view `v` (MD5: equal, at 0; PDQ: within `threshold`),
    /// nearest first, ties by cluster id, each cluster once at its nearest. Other kinds:
    /// none.
    pub fn near_in(&self, kind: Kind, text: &str, threshold: u32, v: View) -> Vec<(Arc<str>, u32)> {
        match kind {
            Kind::Md5 => self
                .holders_in(text, v)
                .into_iter()
                .map(|c| (c, 0))
                .collect(),
            Kind::Other => Vec::new(),
            Kind::Pdq => {
                let Some(q) = pdq::parse_hex(text.as_bytes()) else {
                    return Vec::new();
                };
                let mut out: Vec<(Arc<str>, u32)> = self
                    .pdq_near(&q, threshold, v)
                    .into_iter()
                    .map(|(c, d)| (self.cluster(c).id.text(), d))
                    .collect();
                out.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
                out
            }
        }
    }

    /// The first of [`Self::near`]'s answer (the owner's view), as its id: no text made
    /// (the cluster an unbanked upload joins, once an upload).
    pub fn nearest(&self, kind: Kind, text: &str, threshold: u32) -> Option<ClusterId> {
        self.nearest_signal(&(kind, text), threshold)
    }

    /// [`Self::nearest`] of a signal, its PDQ hash taken as read if it was.
    pub fn nearest_signal(&self, s: &impl AsSignal, threshold: u32) -> Option<ClusterId> {
        let (kind, text) = (s.kind(), s.text());
        let v = OWNER;
        let by_text = |a: &ClusterId, b: &ClusterId| a.with_str(|a| b.with_str(|b| a.cmp(b)));
        match kind {
            Kind::Md5 => {
                // an MD5 read already is 32 digits: no PDQ's text (see `held_key`)
                let key = match s.md5_bytes() {
                    Some(b) => Some(Key::Md5(b)).filter(|k| self.first_holder(k).is_some()),
                    None => self.held_key(text),
                }?;
                self.holders_of(&key)
                    .into_iter()
                    .filter(|h| h & bit(v) != 0)
                    .map(|h| &self.cluster(h & SLOT_MASK).id)
                    .min_by(|a, b| by_text(a, b))
                    .cloned()
            }
            Kind::Other => None,
            Kind::Pdq => {
                let q = s.pdq_hash().or_else(|| pdq::parse_hex(text.as_bytes()))?;
                self.pdq_nearest(&q, threshold, v)
                    .map(|c| self.cluster(c).id.clone())
            }
        }
    }

    /// The slot of [`Self::pdq_near`]'s nearest (ties by cluster id), kept as the hits come
    /// rather than each slot's nearest kept in a map first: the least `(distance, id)` of
    /// every hit is the least of each slot's least (the map, made, filled and dropped for
    /// each upload clustered, was 311 instructions of each at a worker's density).
    fn pdq_nearest(&self, q: &Hash, threshold: u32, v: View) -> Option<u32> {
        let mut best: Option<(u32, u32)> = None;
        let before = |c: u32, b: u32| {
            let (a, b) = (&self.cluster(c).id, &self.cluster(b).id);
            a.with_str(|a| b.with_str(|b| a < b))
        };
        self.pdq
            .search_with(std::slice::from_ref(q), threshold, |_, d, h, tag| {
                let mut note = |holder: Holder| {
                    if holder & bit(v) != 0 {
                        let c = holder & SLOT_MASK;
                        best = match best {
                            Some((bd, b)) if bd < d || (bd == d && (b == c || !before(c, b))) => {
                                Some((bd, b))
                            }
                            _ => Some((d, c)),
                        };
                    }
                };
                note(tag);
                if !self.more.is_empty() {
                    for &c in self.more.get(&Key::Pdq(*h)).into_iter().flatten() {
                        note(c);
                    }
                }
            });
        best.map(|(_, c)| c)
    }

    /// The slots holding a PDQ hash within `threshold` of `q` in view `v`, each at its
    /// nearest, in no order.
    fn pdq_near(&self, q: &Hash, threshold: u32, v: View) -> HashMap<u32, u32, Keyed> {
        let mut best: HashMap<u32, u32, Keyed> = HashMap::default();
        self.pdq
            .search_with(std::slice::from_ref(q), threshold, |_, d, h, tag| {
                let mut note = |holder: Holder| {
                    if holder & bit(v) != 0 {
                        let e = best.entry(holder & SLOT_MASK).or_insert(d);
                        *e = (*e).min(d);
                    }
                };
                note(tag);
                if !self.more.is_empty() {
                    for &c in self.more.get(&Key::Pdq(*h)).into_iter().flatten() {
                        note(c);
                    }
                }
            });
        best
    }

    /// Bytes of the PDQ index's arrays (the maps' share is estimated by the caller's bench).
    pub fn nbytes(&self) -> usize {
        self.pdq.nbytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_md5_read_by_table_is_read_as_digit_by_digit() {
        // the old reading (`char::to_digit`), over every byte at each place of a pair
        let old = |text: &[u8]| -> Option<[u8; 16]> {
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
        };
        let base = b"0123456789abcdefABCDEF0123456789".to_vec();
        assert_eq!(hex::bytes::<16>(&base), old(&base));
        assert!(hex::bytes::<16>(&base).is_some());
        for b in 0..=255u8 {
            for at in [0, 1, 17, 31] {
                let mut t = base.clone();
                t[at] = b;
                assert_eq!(hex::bytes::<16>(&t), old(&t), "{b} at {at}");
            }
        }
        assert_eq!(hex::bytes::<16>(&base[..31]), None);
        assert_eq!(hex::bytes::<16>(b""), None);
    }

    #[test]
    fn a_pdq_hash_read_already_is_the_one_its_text_gives() {
        // the same clusters whether the index reads the words from the text or is given them
        let (f, near) = ("f".repeat(64), format!("{}e", "f".repeat(63)));
        let words = |t: &str| pdq::parse_hex(t.as_bytes());
        let mut by_text = ContentIndex::new();
        let mut read = ContentIndex::new();
        by_text.add("u-1", &[(Kind::Pdq, f.as_str())]).unwrap();
        let given = ReadSignal {
            kind: Kind::Pdq,
            text: &f,
            pdq: words(&f),
            md5: None,
        };
        read.add("u-1", &[given]).unwrap();
        assert_eq!(by_text.held("u-1"), read.held("u-1"));
        let q = ReadSignal {
            kind: Kind::Pdq,
            text: &near,
            pdq: words(&near),
            md5: None,
        };
        let id = |c: Option<ClusterId>| c.map(|c| c.text().to_string());
        assert_eq!(id(read.nearest_signal(&q, 31)), Some("u-1".into()));
        assert_eq!(
            id(by_text.nearest(Kind::Pdq, &near, 31)),
            Some("u-1".into())
        );
        assert_eq!(id(read.nearest_signal(&q, 0)), None);
        // an MD5 given its bytes: held as its text gives it, found by them
        let md5 = "0123456789ABCDEF".repeat(2);
        let m = ReadSignal {
            kind: Kind::Md5,
            text: &md5,
            pdq: None,
            md5: hex::bytes::<16>(md5.as_bytes()),
        };
        read.add("u-2", &[m]).unwrap();
        by_text.add("u-2", &[(Kind::Md5, md5.as_str())]).unwrap();
        assert_eq!(by_text.held("u-2"), read.held("u-2"));
        assert_eq!(id(read.nearest_signal(&m, 0)), Some("u-2".into()));
        assert_eq!(id(by_text.nearest(Kind::Md5, &md5, 0)), Some("u-2".into()));
        let other = ReadSignal {
            md5: hex::bytes::<16>("0".repeat(32).as_bytes()),
            ..m
        };
        assert_eq!(id(read.nearest_signal(&other, 0)), None);
    }

    #[test]
    fn a_compact_id_is_a_lowercase_letter_a_dash_and_16_lowercase_hex_digits() {
        // as `u64::from_str_radix` read the digits once checked: the same ids, the same bits
        let old = |id: &str| -> Option<(u8, u64)> {
            let b = id.as_bytes();
            if b.len() != 18 || b[1] != b'-' || !b[0].is_ascii_lowercase() {
                return None;
            }
            let d = &b[2..];
            if !d
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
            {
                return None;
            }
            Some((
                b[0],
                u64::from_str_radix(std::str::from_utf8(d).ok()?, 16).ok()?,
            ))
        };
        let mut ids: Vec<String> = vec![
            "x-0123456789abcdef".into(),
            "x-ffffffffffffffff".into(),
            "x-0000000000000000".into(),
            "b-0123456789ABCDEF".into(),
            "X-0123456789abcdef".into(),
            "x_0123456789abcdef".into(),
            "x-0123456789abcdeg".into(),
            "x-0123456789abcde".into(),
            "x-0123456789abcdef0".into(),
            "x-0123456789abcd\u{e9}".into(),
            "\u{e9}-0123456789abcde".into(),
            "x-+123456789abcdef".into(),
            "".into(),
        ];
        let mut rng = crate::testing::Rng(3);
        for _ in 0..2000 {
            let alphabet = b"0123456789abcdefABCDEFgx-+ ";
            let mut id = String::from("x-");
            for _ in 0..16 {
                id.push(alphabet[(rng.next() % alphabet.len() as u64) as usize] as char);
            }
            ids.push(id);
        }
        for id in &ids {
            assert_eq!(ClusterId::hex(id), old(id), "{id:?}");
            let kept = ClusterId::of(id);
            assert!(kept.is(id) && kept.with_str(|s| s == id), "{id:?}");
            assert_eq!(matches!(kept, ClusterId::Hex(..)), old(id).is_some());
        }
    }

    #[test]
    fn id_slots_agree_with_a_map_over_adds_and_removes() {
        // compact and text ids, slots reused: every id finds its own slot, no other
        let mut slots: Vec<Option<ClusterId>> = Vec::new();
        let mut t = IdSlots::default();
        let mut model: HashMap<String, u32> = HashMap::new();
        let mut x = 99_u64;
        for _ in 0..40_000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let n = (x >> 40) % 3_000;
            let id = match x >> 62 {
                0 => format!("b-{n}"),
                _ => format!("x-{:016x}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            };
            let found = t.find(&Cid::of(&id), |s| slots[s as usize].as_ref().unwrap());
            assert_eq!(found, model.get(&id).copied(), "{id}");
            match found {
                Some(s) if (x >> 20) % 2 == 0 => {
                    let gone = slots[s as usize].take().unwrap();
                    assert!(t.remove(&gone, s));
                    model.remove(&id);
                }
                None => {
                    let s = match slots.iter().position(Option::is_none) {
                        Some(s) => s,
                        None => {
                            slots.push(None);
                            slots.len() - 1
                        }
                    } as u32;
                    slots[s as usize] = Some(ClusterId::of(&id));
                    t.insert(&Cid::of(&id), s, |s| slots[s as usize].as_ref().unwrap());
                    model.insert(id, s);
                }
                _ => {}
            }
            assert_eq!(t.len(), model.len());
        }
        for (id, &s) in &model {
            assert_eq!(
                t.find(&Cid::of(id), |s| slots[s as usize].as_ref().unwrap()),
                Some(s)
            );
        }
        t.shrink(|s| slots[s as usize].as_ref().unwrap());
        for (id, &s) in &model {
            assert_eq!(
                t.find(&Cid::of(id), |s| slots[s as usize].as_ref().unwrap()),
                Some(s)
            );
        }
    }

    fn ids(v: &[(Arc<str>, u32)]) -> Vec<(String, u32)> {
        v.iter().map(|(c, d)| (c.to_string(), *d)).collect()
    }

    #[test]
    fn texts_are_the_lowercase_hex_that_format_writes() {
        for (i, v) in [0u64, 1, 0xdead_beef, u64::MAX, 0x0123_4567_89ab_cdef]
            .into_iter()
            .enumerate()
        {
            let id = ClusterId::Hex(b"uab"[i % 3], v);
            assert_eq!(&*id.text(), id.to_string());
            let md5: [u8; 16] = std::array::from_fn(|j| (v >> (j % 8 * 8)) as u8 ^ j as u8);
            let want: String = md5.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(&*Key::Md5(md5).text(), want);
            let h = [v, !v, v.rotate_left(7), 3];
            let want = format!("{:016x}{:016x}{:016x}{:016x}", h[0], h[1], h[2], h[3]);
            assert_eq!(&*Key::Pdq(h).text(), want);
        }
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
                &[
                    (Kind::Pdq, pdq.as_str()),
                    (Kind::Md5, &md5),
                    (Kind::Other, video),
                ],
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
    fn a_signal_two_clusters_hold_is_found_for_both_and_outlives_its_first_holder() {
        let mut idx = ContentIndex::new();
        let (f, md5) = ("f".repeat(64), "b".repeat(32));
        let video = "[\"frames\"]";
        let all = [(Kind::Pdq, &*f), (Kind::Md5, &*md5), (Kind::Other, video)];
        // ids of the compact form and of any other text alike
        let ids = [
            "u-00000000000000ff",
            "weird id",
            "U-00000000000000FF",
            "b-0123456789abcdef",
        ];
        for (i, c) in ids.iter().enumerate() {
            let (new, first) = idx.add(c, &all).unwrap();
            assert_eq!((new.len(), first.len()), (3, if i == 0 { 3 } else { 0 }));
        }
        assert_eq!((idx.len(), idx.clusters()), (3, 4));
        let mut sorted: Vec<Arc<str>> = ids.iter().map(|&c| Arc::from(c)).collect();
        sorted.sort();
        for t in [&*f, &*md5, video] {
            assert_eq!(idx.holders(t), sorted, "{t}");
        }
        let q = format!("{}0", "f".repeat(63));
        let near: Vec<Arc<str>> = idx
            .near(Kind::Pdq, &q, 31)
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        assert_eq!(near, sorted);
        // the first holder goes: another holds each signal now
        assert_eq!(idx.drop_cluster(ids[0]), Some(vec![]));
        assert_eq!(idx.drop_cluster(ids[2]), Some(vec![]));
        assert_eq!(idx.holders(&md5), [Arc::from(ids[3]), Arc::from(ids[1])]);
        assert_eq!(idx.near(Kind::Pdq, &q, 31).len(), 2);
        assert_eq!(idx.held_count_at(idx.slot(ids[1]).unwrap()), 3);
        assert_eq!(idx.held_from(ids[1], 2), [Arc::from(video)]);
        assert!(idx.held_from(ids[1], 3).is_empty() && idx.held_from(ids[1], 9).is_empty());
        assert_eq!(idx.drop_cluster(ids[1]), Some(vec![]));
        let freed = idx.drop_cluster(ids[3]).unwrap();
        assert_eq!(freed.len(), 3);
        assert!(idx.is_empty() && idx.clusters() == 0 && idx.more.is_empty());
        assert!(idx.near(Kind::Pdq, &q, 31).is_empty());
    }

    #[test]
    fn the_signals_held_from_a_place_are_the_whole_lists_tail_in_either_view() {
        let mut idx = ContentIndex::default();
        let mut rng = crate::testing::Rng(3);
        let pdqs: Vec<String> = (0..6)
            .map(|_| (0..4).map(|_| format!("{:016x}", rng.next())).collect())
            .collect();
        let md5s: Vec<String> = (0..6).map(|i| format!("{i:032x}")).collect();
        // "u-a" in the owner's view alone; "u-b" in both (the detector's view too)
        for (i, (p, m)) in pdqs.iter().zip(&md5s).enumerate() {
            idx.add("u-a", &[(Kind::Pdq, p), (Kind::Md5, m)]).unwrap();
            idx.add("u-b", &[(Kind::Md5, m)]).unwrap();
            if i % 2 == 0 {
                idx.add_in("u-b", &[(Kind::Pdq, p)], DETECTOR).unwrap();
            }
        }
        for id in ["u-a", "u-b"] {
            let all = idx.held(id);
            let slot = idx.slot(id).unwrap();
            for from in 0..all.len() + 3 {
                let got: Vec<Arc<str>> = idx
                    .held_signals_from_at(slot, from)
                    .iter()
                    .map(HeldSignal::text)
                    .collect();
                assert_eq!(got, all[from.min(all.len())..], "{id} {from}");
            }
        }
    }

    #[test]
    fn the_nearest_is_the_first_of_near_with_ties_and_shared_hashes() {
        // hashes a few bits apart, each held by up to four clusters (the `more` map), ids
        // of either form whose order is not the slots': many equal distances, so the
        // nearest's tie by id decides most answers; clusters dropped and slots reused
        let mut rng = crate::testing::Rng(29);
        let base = rng.hash();
        let pool: Vec<String> = (0..40)
            .map(|_| {
                let d = (rng.next() % 6) as u32;
                pdq::format_hex(&rng.flip(&base, d))
            })
            .collect();
        let mut idx = ContentIndex::new();
        let mut live: Vec<String> = Vec::new();
        let mut ties = 0;
        for step in 0..3000 {
            let n = rng.next() % 500;
            let id = match rng.next() % 3 {
                0 => format!("x-{:016x}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                1 => format!("b-{n}"),
                _ => format!("u-{n:x}"),
            };
            if live.contains(&id) && rng.next() % 2 == 0 {
                idx.drop_cluster(id.as_str()).unwrap();
                live.retain(|c| *c != id);
            } else {
                let take = 1 + rng.next() % 3;
                let signals: Vec<(Kind, &str)> = (0..take)
                    .map(|_| (Kind::Pdq, pool[(rng.next() % 40) as usize].as_str()))
                    .collect();
                idx.add(id.as_str(), &signals).unwrap();
                if !live.contains(&id) {
                    live.push(id);
                }
            }
            if step % 3 == 0 {
                let d = (rng.next() % 12) as u32;
                let q = pdq::format_hex(&rng.flip(&base, d));
                let threshold = (rng.next() % 16) as u32;
                let near = idx.near(Kind::Pdq, &q, threshold);
                if near.len() > 1 && near[0].1 == near[1].1 {
                    ties += 1;
                }
                let want = near.first().map(|(c, _)| c.to_string());
                let got = idx.nearest(Kind::Pdq, &q, threshold);
                assert_eq!(got.map(|c| c.text().to_string()), want, "step {step}");
            }
        }
        assert!(ties > 100, "{ties} ties");
    }

    #[test]
    fn a_scan_only_index_answers_as_one_with_tables_through_compactions() {
        // near-duplicate hashes and shared MD5s, both views, clusters dropped and taken
        // again: a scan-only index (its clusters' PDQ keys kept as rows, moved when it is
        // compacted) answers everything as an index with tables
        use crate::testing::Rng;
        let mut rng = Rng(0x5eed_cafe);
        let bases: Vec<Hash> = (0..60).map(|_| rng.hash()).collect();
        let (mut tables, mut scan) = (ContentIndex::new(), ContentIndex::scan_only());
        let id = |n: u64| match n % 7 {
            0 => format!("weird id {n}"),
            _ => format!("u-{n:016x}"),
        };
        let sorted = |mut v: Vec<Arc<str>>| {
            v.sort();
            v
        };
        let mut compactions = 0;
        for step in 0..14_000_u64 {
            let c = id(rng.next() % 2_000);
            let v = (rng.next() % 2) as View;
            if rng.next() % 3 == 0 {
                let rows = scan.pdq.rows();
                assert_eq!(
                    tables.drop_cluster_in(&c, v).map(sorted),
                    scan.drop_cluster_in(&c, v).map(sorted),
                    "step {step}"
                );
                compactions += usize::from(scan.pdq.rows() < rows);
            } else {
                let base = bases[(rng.next() % 60) as usize];
                let d = (rng.next() % 40) as u32;
                let h = pdq::format_hex(&rng.flip(&base, d));
                let md5 = format!("{:032x}", rng.next() % 700);
                let signals = [(Kind::Pdq, &*h), (Kind::Md5, &*md5)];
                let n = 1 + (rng.next() % 2) as usize;
                assert_eq!(
                    tables.add_in(&c, &signals[..n], v).unwrap(),
                    scan.add_in(&c, &signals[..n], v).unwrap(),
                    "step {step}"
                );
            }
            if step % 1_000 == 999 {
                for n in 0..2_000 {
                    for v in [OWNER, DETECTOR] {
                        let c = id(n);
                        assert_eq!(tables.held_in(&c, v), scan.held_in(&c, v), "{c}");
                    }
                }
                for b in &bases {
                    let d = (rng.next() % 40) as u32;
                    let q = pdq::format_hex(&rng.flip(b, d));
                    for v in [OWNER, DETECTOR] {
                        assert_eq!(
                            tables.near_in(Kind::Pdq, &q, 31, v),
                            scan.near_in(Kind::Pdq, &q, 31, v)
                        );
                        let md5 = format!("{:032x}", rng.next() % 700);
                        assert_eq!(tables.holders_in(&md5, v), scan.holders_in(&md5, v));
                    }
                }
                assert_eq!((tables.len(), tables.live), (scan.len(), scan.live));
            }
        }
        assert!(compactions > 0, "the scan-only index was never compacted");
        assert!(scan.pdq.nbytes() < tables.pdq.nbytes());
    }

    #[test]
    fn adding_counted_holds_what_adding_holds() {
        let (mut a, mut b) = (ContentIndex::new(), ContentIndex::new());
        let (f, e) = ("f".repeat(64), "e".repeat(64));
        let md5 = "a".repeat(32);
        type Step<'a> = (&'a str, Vec<(Kind, &'a str)>, View);
        let steps: [Step<'_>; 5] = [
            ("u-1", vec![(Kind::Pdq, &f), (Kind::Md5, &md5)], OWNER),
            ("u-2", vec![(Kind::Pdq, &f), (Kind::Pdq, &e)], DETECTOR),
            (
                "u-1",
                vec![(Kind::Md5, &md5), (Kind::Other, "[1]")],
                DETECTOR,
            ),
            ("u-2", vec![(Kind::Pdq, &e)], OWNER),
            ("u-2", vec![], OWNER),
        ];
        for (cluster, signals, v) in &steps {
            let (new, _) = a.add_in(cluster, signals, *v).unwrap();
            assert_eq!(b.add_counted_in(cluster, signals, *v).unwrap(), new.len());
            assert_eq!(a.held(cluster), b.held(cluster));
        }
        assert!(b.add_counted("u-3", &[(Kind::Pdq, "not hex")]).is_err());
        assert_eq!((a.len(), a.clusters()), (b.len(), b.clusters()));
    }

    #[test]
    fn a_flood_dropped_one_by_one_gives_its_slots_back_and_reuses_none_live() {
        let mut idx = ContentIndex::new();
        let md5 = |i: usize| format!("{i:032x}");
        let id = |i: usize| format!("u-{i:016x}");
        let n = 20_000;
        for i in 0..n {
            idx.add(&id(i), &[(Kind::Md5, &md5(i))]).unwrap();
        }
        // all but the last slot's cluster go, the oldest first: the slots cannot shrink
        for i in 0..n - 1 {
            assert!(idx.forget_cluster(&id(i)));
        }
        assert_eq!((idx.clusters(), idx.clusters.len()), (1, n));
        // the last goes: the slots shrink, the free list keeps slots past the end
        assert_eq!(idx.drop_cluster(&id(n - 1)).unwrap().len(), 1);
        assert!(idx.clusters.len() < n && idx.is_empty());
        // a new flood takes slots from the start again, never one of a live cluster
        for i in n..2 * n {
            idx.add(&id(i), &[(Kind::Md5, &md5(i))]).unwrap();
            if i % 3 == 0 {
                assert!(idx.forget_cluster(&id(i)));
            }
        }
        for i in n..2 * n {
            let want: Vec<Arc<str>> = if i % 3 == 0 {
                vec![]
            } else {
                vec![Arc::from(id(i))]
            };
            assert_eq!(idx.holders(&md5(i)), want);
        }
        let live: Vec<u32> = (n..2 * n)
            .filter(|i| i % 3 != 0)
            .map(|i| idx.slot(&id(i)).unwrap())
            .collect();
        let mut distinct = live.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), live.len());
        assert!(!idx.forget_cluster(&id(0)));
    }

    #[test]
    fn cluster_ids_come_back_as_they_were_given() {
        for id in [
            "u-0123456789abcdef",
            "a-0000000000000000",
            "u-0123456789ABCDEF",
            "u-123",
            "",
            "x-0123456789abcdeg",
        ] {
            let mut idx = ContentIndex::new();
            idx.add(id, &[(Kind::Md5, &"c".repeat(32))]).unwrap();
            assert_eq!(idx.holders(&"c".repeat(32)), [Arc::from(id)]);
            assert!(idx.contains(id));
        }
        assert_eq!(
            ClusterId::hex("u-0123456789abcdef"),
            Some((b'u', 0x0123_4567_89ab_cdef))
        );
        assert_eq!(ClusterId::hex("u-0123456789ABCDEF"), None); // kept as text: comes back so
    }

    #[test]
    fn a_bad_pdq_text_changes_nothing() {
        let mut idx = ContentIndex::new();
        let md5 = "a".repeat(32);
        assert!(idx
            .add("u-1", &[(Kind::Md5, md5.as_str()), (Kind::Pdq, "zz")])
            .is_err());
        assert!(idx.is_empty() && !idx.contains("u-1"));
    }
}
