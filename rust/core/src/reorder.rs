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

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// One held record: its place in the order, and the record.
struct Held<T> {
    ts: i64,
    key: Box<[u8]>,
    seq: u64,
    item: T,
}

impl<T> Held<T> {
    fn place(&self) -> (i64, &[u8], u64) {
        (self.ts, &self.key, self.seq)
    }
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        self.place() == other.place()
    }
}

impl<T> Eq for Held<T> {}

impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Held<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.place().cmp(&other.place())
    }
}

/// A min-heap of records by `(ts, key, arrival)`, released up to a watermark.
pub struct ReorderBuffer<T> {
    heap: BinaryHeap<Reverse<Held<T>>>,
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
            heap: BinaryHeap::new(),
            seq: 0,
            released_ms: -1,
        }
    }

    /// Hold `item` until the watermark reaches `ts`.
    pub fn push(&mut self, ts: i64, key: &[u8], item: T) {
        self.seq += 1;
        self.heap.push(Reverse(Held {
            ts,
            key: key.into(),
            seq: self.seq,
            item,
        }));
    }

    /// Every record at or before `watermark_ms`, in order.
    pub fn release(&mut self, watermark_ms: i64) -> Vec<T> {
        let mut out = Vec::new();
        while self.heap.peek().is_some_and(|top| top.0.ts <= watermark_ms) {
            if let Some(Reverse(held)) = self.heap.pop() {
                self.released_ms = self.released_ms.max(held.ts);
                out.push(held.item);
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
        self.heap.peek().map_or(i64::MAX, |top| top.0.ts)
    }

    /// The keys of the records held, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.heap.iter().map(|held| &*held.0.key)
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The held records themselves, in no particular order (a garbage
    /// collector visiting what the buffer references).
    pub fn items(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|held| &held.0.item)
    }

    /// Drop every record (a garbage collector breaking a cycle through them).
    pub fn clear(&mut self) {
        self.heap.clear();
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
