//! Event-time ordering: records held until the watermark passes them, then
//! given back in `(ts, key)` order.
//!
//! Kafka orders records within a partition only, so the reshares of one
//! cascade arrive out of order. Every consumer applies them in one order,
//! whatever the partitioning and the batch boundaries: event time first, the
//! key (an event id) breaking ties, and the arrival order breaking ties of
//! equal pairs (a redelivered event), so the items themselves are never
//! compared. The buffer is generic over what it holds: Python records through
//! the bindings, compiled events for a core that keeps them in Rust.
//!
//! Keys compare as bytes. For UTF-8 that is the order of code points, which
//! is how Python compares `str`, so both sides of the boundary agree.
//!
//! ```
//! use viralwatch_core::reorder::ReorderBuffer;
//! let mut buf = ReorderBuffer::new();
//! for (ts, key) in [(30, "c"), (10, "a"), (20, "b")] {
//!     buf.push(ts, key.as_bytes(), key.to_uppercase());
//! }
//! assert_eq!(buf.release(20), ["A", "B"]);
//! assert_eq!(buf.released_ms(), 20);
//! assert_eq!((buf.len(), buf.drain()), (1, vec!["C".to_owned()]));
//! ```

use crate::slab::Slab;
use std::cmp::Ordering;
use std::collections::VecDeque;

/// A held record's place in the heap: 24 bytes, where the records themselves (with their
/// keys) stay put in `slots`. The heap's sifts move these, not 80-byte records, and most
/// comparisons end at the time or at the key's first 8 bytes (`prefix`) without reading the
/// key (a cache miss each): a platform replay spent 5% of its time in the heap of records.
#[derive(Clone, Copy)]
struct Place {
    ts: i64,
    /// the key's first 8 bytes, big-endian, zero-padded: if two prefixes differ, the keys
    /// compare as they do (a shorter key is a prefix of its padding's order)
    prefix: u64,
    slot: u32,
}

struct Held<T> {
    key: Key,
    seq: u64,
    item: T,
}

/// A record's key (an event id) kept where it is held: inline up to [`Key::INLINE`] bytes
/// (an event id of the platform's is 10 to 12), boxed past it. Boxed, every key was an
/// allocation and a free a record (224,000 of each in a platform replay, a seventh of the
/// core's): 24 bytes either way. Compared as its bytes.
///
/// ```
/// use viralwatch_core::reorder::Key;
/// let (short, long) = (Key::from(&b"e0"[..]), Key::from(&[b'f'; 40][..]));
/// assert_eq!((&*short, long.len()), (&b"e0"[..], 40));
/// assert!(short < long && short == Key::from(&b"e0"[..]));
/// ```
pub enum Key {
    Inline { len: u8, bytes: [u8; Key::INLINE] },
    Boxed(Box<[u8]>),
}

impl Key {
    /// The longest key kept inline.
    pub const INLINE: usize = 22;
}

impl From<&[u8]> for Key {
    fn from(key: &[u8]) -> Self {
        if key.len() <= Self::INLINE {
            let mut bytes = [0_u8; Self::INLINE];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            Key::Boxed(key.into())
        }
    }
}

impl std::ops::Deref for Key {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Boxed(b) => b,
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        (**self).cmp(&**other)
    }
}

fn prefix_of(key: &[u8]) -> u64 {
    let mut b = [0_u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}

/// A min-heap of records by `(ts, key, arrival)`, released up to a watermark, beside a run:
/// the records that came after every one in the run go at its end, in order, with no sift
/// (most of a stream comes nearly in order: a sift up and a sift down of the heap a record,
/// each comparison a key read at random once the times tie, were 2-3% of a platform replay);
/// a record is released from whichever of the two holds the earliest.
pub struct ReorderBuffer<T> {
    heap: Vec<Place>,
    run: VecDeque<Place>,
    slots: Slab<Held<T>>,
    seq: u64,
    released_ms: i64,
}

impl<T> Default for ReorderBuffer<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> ReorderBuffer<T> {
    /// An empty buffer; nothing released yet (`released_ms` is -1).
    pub fn new() -> Self {
        Self {
            heap: Vec::new(),
            run: VecDeque::new(),
            slots: Slab::new(),
            seq: 0,
            released_ms: -1,
        }
    }

    fn held(&self, slot: u32) -> &Held<T> {
        self.slots.get(slot).expect("a placed record's slot")
    }

    /// `(ts, key, arrival)` of `a` against `b`.
    #[inline]
    fn cmp(&self, a: &Place, b: &Place) -> Ordering {
        a.ts.cmp(&b.ts).then(a.prefix.cmp(&b.prefix)).then_with(|| {
            let (x, y) = (self.held(a.slot), self.held(b.slot));
            x.key.cmp(&y.key).then(x.seq.cmp(&y.seq))
        })
    }

    fn sift_up(&mut self, mut i: usize) {
        let place = self.heap[i];
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.cmp(&place, &self.heap[parent]) != Ordering::Less {
                break;
            }
            self.heap[i] = self.heap[parent];
            i = parent;
        }
        self.heap[i] = place;
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        let place = self.heap[i];
        loop {
            let mut child = 2 * i + 1;
            if child >= n {
                break;
            }
            if child + 1 < n && self.cmp(&self.heap[child + 1], &self.heap[child]) == Ordering::Less
            {
                child += 1;
            }
            if self.cmp(&self.heap[child], &place) != Ordering::Less {
                break;
            }
            self.heap[i] = self.heap[child];
            i = child;
        }
        self.heap[i] = place;
    }

    /// Hold `item` until the watermark reaches `ts`.
    pub fn push(&mut self, ts: i64, key: &[u8], item: T) {
        self.seq += 1;
        let held = Held {
            key: key.into(),
            seq: self.seq,
            item,
        };
        let slot = self.slots.insert(held);
        let place = Place {
            ts,
            prefix: prefix_of(key),
            slot,
        };
        // (no two places are equal: the arrival breaks a tie)
        if self
            .run
            .back()
            .map_or(true, |last| self.cmp(last, &place) == Ordering::Less)
        {
            self.run.push_back(place);
        } else {
            self.heap.push(place);
            self.sift_up(self.heap.len() - 1);
        }
    }

    /// The earliest record, taken out.
    fn pop(&mut self) -> Option<(i64, T)> {
        let from_run = match (self.heap.first(), self.run.front()) {
            (None, None) => return None,
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (Some(h), Some(r)) => self.cmp(r, h) == Ordering::Less,
        };
        let top = if from_run {
            self.run.pop_front().expect("not empty")
        } else {
            let top = self.heap[0];
            let last = self.heap.pop().expect("not empty");
            if !self.heap.is_empty() {
                self.heap[0] = last;
                self.sift_down(0);
            }
            top
        };
        let held = self.slots.remove(top.slot).expect("a placed record's slot");
        Some((top.ts, held.item))
    }

    /// Every record at or before `watermark_ms`, in order.
    pub fn release(&mut self, watermark_ms: i64) -> Vec<T> {
        let mut out = Vec::new();
        while self.next_ms() <= watermark_ms {
            let Some((ts, item)) = self.pop() else { break };
            self.released_ms = self.released_ms.max(ts);
            out.push(item);
        }
        if self.is_empty() {
            // nothing held: the slots' room goes back (a flood released)
            self.slots.clear();
            if self.slots.capacity() > 1024 {
                self.slots.shrink();
                self.heap.shrink_to_fit();
                self.run.shrink_to_fit();
            }
        }
        out
    }

    /// Everything, in order (the end of the input).
    pub fn drain(&mut self) -> Vec<T> {
        self.release(i64::MAX)
    }

    /// The event time of the latest record released (-1 before any).
    pub fn released_ms(&self) -> i64 {
        self.released_ms
    }

    /// The event time of the earliest record held (`i64::MAX` when none is): a
    /// watermark before it releases nothing, so a caller can skip the call.
    pub fn next_ms(&self) -> i64 {
        let run = self.run.front().map_or(i64::MAX, |first| first.ts);
        self.heap.first().map_or(run, |top| top.ts.min(run))
    }

    /// The keys of the records held, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.slots.iter().map(|held| &*held.key)
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.heap.len() + self.run.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty() && self.run.is_empty()
    }

    /// The held records themselves, in no particular order (a garbage
    /// collector visiting what the buffer references).
    pub fn items(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|held| &held.item)
    }

    /// Drop every record (a garbage collector breaking a cycle through them).
    pub fn clear(&mut self) {
        self.heap.clear();
        self.run.clear();
        self.slots.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::ReorderBuffer;

    /// A small deterministic generator: the pushes, keys and watermarks below.
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *state >> 33
    }

    #[test]
    fn any_release_schedule_gives_each_release_in_order() {
        for seed in 0..200_u64 {
            let mut rng = seed;
            let n = (lcg(&mut rng) % 60) as usize;
            let items: Vec<(i64, &str)> = (0..n)
                .map(|_| {
                    let ts = (lcg(&mut rng) % 50) as i64;
                    (ts, ["a", "b", "é", "c", ""][(lcg(&mut rng) % 5) as usize])
                })
                .collect();
            let place = |i: usize| (items[i].0, items[i].1.as_bytes(), i);
            let mut buf = ReorderBuffer::new();
            for (i, (ts, key)) in items.iter().enumerate() {
                buf.push(*ts, key.as_bytes(), i);
            }
            let mut out = Vec::new();
            let mut passed = i64::MIN;
            let mut last = -1;
            for _ in 0..(lcg(&mut rng) % 6) {
                let wm = (lcg(&mut rng) % 70) as i64 - 5;
                let got = buf.release(wm);
                // exactly the held records at or before the watermark, in order
                let mut want: Vec<usize> = (0..n)
                    .filter(|&i| items[i].0 <= wm && items[i].0 > passed)
                    .collect();
                want.sort_by_key(|&i| place(i));
                assert_eq!(got, want);
                passed = passed.max(wm);
                last = got.iter().map(|&i| items[i].0).fold(last, i64::max);
                assert_eq!(buf.released_ms(), last);
                out.extend(got);
            }
            let rest = buf.drain();
            assert!(rest.windows(2).all(|w| place(w[0]) < place(w[1])));
            assert!(buf.is_empty());
            out.extend(rest);
            out.sort_unstable();
            assert_eq!(out, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_nearly_ordered_stream_with_releases_between_pushes_comes_out_in_order() {
        // times rising with jitter (most pushes join the run, the late ones the heap), ties
        // and repeated keys, a release after every few pushes: each release is exactly
        // the held records at or before its watermark, sorted (a model: a sorted vector)
        for seed in 0..100_u64 {
            let mut rng = seed;
            let mut buf = ReorderBuffer::new();
            let mut model: Vec<(i64, Vec<u8>, u64)> = Vec::new();
            let mut arrival = 0_u64;
            for step in 0..400_i64 {
                let ts = step + (lcg(&mut rng) % 12) as i64 - 6;
                let key = vec![b'a' + (lcg(&mut rng) % 3) as u8];
                arrival += 1;
                buf.push(ts, &key, (ts, key.clone(), arrival));
                model.push((ts, key, arrival));
                if lcg(&mut rng) % 4 == 0 {
                    let wm = step - (lcg(&mut rng) % 10) as i64;
                    model.sort();
                    let cut = model.partition_point(|r| r.0 <= wm);
                    let want: Vec<_> = model.drain(..cut).collect();
                    assert_eq!(buf.release(wm), want, "seed {seed}, step {step}");
                    assert_eq!(buf.len(), model.len());
                }
            }
            model.sort();
            assert_eq!(buf.drain(), model);
            assert!(buf.is_empty() && buf.next_ms() == i64::MAX);
        }
    }

    #[test]
    fn keys_sharing_their_first_bytes_or_padded_with_zeros_keep_byte_order() {
        // the heap compares an 8-byte prefix first: keys of 0 to 11 bytes from {0, 1, 'a'}
        // (shorter keys, zero bytes, long shared prefixes), and of 18 to 26 (kept inline up
        // to `Key::INLINE`, boxed past it: the two compared), released against a sort
        let mut state = 7_u64;
        for _ in 0..200 {
            let mut buf = ReorderBuffer::new();
            let mut model = Vec::new();
            for seq in 0..64_u32 {
                let ts = (lcg(&mut state) % 3) as i64;
                let len = match lcg(&mut state) % 4 {
                    0 => 18 + (lcg(&mut state) % 9) as usize,
                    _ => (lcg(&mut state) % 12) as usize,
                };
                let key: Vec<u8> = (0..len)
                    .map(|_| [0_u8, 1, b'a'][(lcg(&mut state) % 3) as usize])
                    .collect();
                buf.push(ts, &key, seq);
                model.push((ts, key, seq));
                if lcg(&mut state) % 8 == 0 {
                    // a release part way: the slots are reused after it
                    let w = (lcg(&mut state) % 3) as i64;
                    model.sort();
                    let cut = model.iter().take_while(|m| m.0 <= w).count();
                    let want: Vec<u32> = model.drain(..cut).map(|m| m.2).collect();
                    assert_eq!(buf.release(w), want);
                    // what is later than a released time is still held, in order
                }
            }
            model.sort();
            assert_eq!(buf.drain(), model.iter().map(|m| m.2).collect::<Vec<_>>());
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn equal_places_keep_their_arrival_order() {
        let mut buf = ReorderBuffer::new();
        for i in 0..5 {
            buf.push(7, b"same", i);
        }
        assert_eq!(buf.next_ms(), 7);
        assert_eq!(buf.drain(), [0, 1, 2, 3, 4]);
        assert_eq!((buf.released_ms(), buf.next_ms()), (7, i64::MAX));
    }

    #[test]
    fn keys_compare_as_code_points() {
        let mut buf = ReorderBuffer::new();
        for key in ["\u{10000}", "\u{ffff}", "z", "é"] {
            buf.push(1, key.as_bytes(), key);
        }
        let mut by_char: Vec<&str> = vec!["\u{10000}", "\u{ffff}", "z", "é"];
        by_char.sort_by(|a, b| a.chars().cmp(b.chars()));
        assert_eq!(buf.drain(), by_char);
    }
}
