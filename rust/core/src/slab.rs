//! Values kept in numbered slots, a freed slot reused before a new one is
//! pushed: the reorder buffer's held records and the unbanked store's clusters
//! are found by a 4-byte slot (a heap's place, a linked list's neighbours, an id
//! table's entry) that stays the same while the value lives, and a store that
//! evicts as much as it adds keeps its room rather than growing.
//!
//! A slot is an index into one `Vec<Option<T>>`: a `Box<T>` value costs 8 bytes
//! a slot (the null pointer is `None`), anything else its size plus the tag.

/// Values in numbered slots (see the module's docs).
pub struct Slab<T> {
    slots: Vec<Option<T>>,
    /// free slots, the last freed on top (reused first)
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Slab<T> {
    /// An empty slab; nothing allocated.
    pub const fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Keep `value` in the slot freed last, or in a new one; its slot.
    #[inline]
    pub fn insert(&mut self, value: T) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                let place = &mut self.slots[slot as usize];
                debug_assert!(place.is_none(), "a free slot is empty");
                *place = Some(value);
                slot
            }
            None => {
                let slot = u32::try_from(self.slots.len()).expect("fewer than 2^32 slots");
                self.slots.push(Some(value));
                slot
            }
        }
    }

    /// Take the value out of `slot` (`None`: the slot is free or was never given), the
    /// slot freed.
    #[inline]
    pub fn remove(&mut self, slot: u32) -> Option<T> {
        let value = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        Some(value)
    }

    /// The value in `slot`, if it holds one.
    #[inline]
    pub fn get(&self, slot: u32) -> Option<&T> {
        self.slots.get(slot as usize)?.as_ref()
    }

    /// The value in `slot`, if it holds one, to change.
    #[inline]
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// Every slot, free ones as `None`: what a look-up by slot borrows (an id table
    /// reading each live slot's key).
    #[inline]
    pub fn slots(&self) -> &[Option<T>] {
        &self.slots
    }

    /// The values held, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }

    /// How many values are held.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots the slab has room for without growing.
    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    /// Drop every value; the room is kept (see [`Self::shrink`]).
    pub fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
    }

    /// Give back the room a flood left: free slots after the last held value are dropped
    /// (a value's slot never changes) and both vectors shrink to what they hold.
    pub fn shrink(&mut self) {
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        let n = self.slots.len();
        self.free.retain(|&f| (f as usize) < n);
        self.slots.shrink_to_fit();
        self.free.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::Slab;

    #[test]
    fn a_freed_slot_is_reused_last_freed_first() {
        let mut s = Slab::new();
        let (a, b, c) = (s.insert("a"), s.insert("b"), s.insert("c"));
        assert_eq!((a, b, c), (0, 1, 2));
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(c), Some("c"));
        assert_eq!(s.len(), 1);
        assert_eq!(s.insert("d"), c);
        assert_eq!(s.insert("e"), a);
        assert_eq!(s.insert("f"), 3);
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), ["e", "b", "d", "f"]);
    }

    #[test]
    fn a_free_or_unknown_slot_holds_nothing() {
        let mut s = Slab::new();
        let a = s.insert(1_u64);
        assert_eq!(s.remove(a), Some(1));
        assert_eq!(s.remove(a), None, "removed twice");
        assert_eq!(s.remove(7), None, "never given");
        assert_eq!(s.get(a), None);
        assert_eq!(s.get_mut(9), None);
        assert!(s.is_empty());
        assert_eq!(s.insert(2), a, "the slot freed once is reused once");
        assert_eq!(s.insert(3), 1);
    }

    #[test]
    fn values_change_in_place_and_keep_their_slot() {
        let mut s = Slab::new();
        let slots: Vec<u32> = (0..10).map(|i| s.insert(Box::new(i))).collect();
        for &slot in &slots {
            **s.get_mut(slot).unwrap() *= 10;
        }
        for (i, &slot) in slots.iter().enumerate() {
            assert_eq!(**s.get(slot).unwrap(), i * 10);
            assert!(s.slots()[slot as usize].is_some());
        }
    }

    #[test]
    fn shrink_drops_the_free_tail_and_keeps_held_slots() {
        let mut s = Slab::new();
        let slots: Vec<u32> = (0..5000).map(|i| s.insert(i)).collect();
        for &slot in &slots[1..] {
            if slot != 10 {
                s.remove(slot);
            }
        }
        s.shrink();
        assert_eq!(
            s.slots().len(),
            11,
            "the free tail after the last held value is gone"
        );
        assert!(s.capacity() < 64, "the room went back: {}", s.capacity());
        assert_eq!(s.len(), 2);
        assert_eq!((s.get(0), s.get(10)), (Some(&0), Some(&10)));
        // the free slots left are those before the last held value, each given once
        let mut again: Vec<u32> = (0..9).map(|i| s.insert(100 + i)).collect();
        again.sort_unstable();
        assert_eq!(again, (1..10).collect::<Vec<_>>());
        assert_eq!(s.insert(200), 11);
    }

    #[test]
    fn clear_drops_every_value() {
        let mut s = Slab::new();
        for i in 0..100 {
            s.insert(i);
        }
        s.remove(3);
        s.clear();
        assert!(s.is_empty());
        assert_eq!(s.iter().count(), 0);
        assert_eq!(s.insert(1), 0);
    }

    #[test]
    fn a_random_life_matches_a_model() {
        // inserts and removes in a fixed pseudo-random order against a plain map
        let mut s = Slab::new();
        let mut model = std::collections::BTreeMap::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..20_000_u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 3 == 0 && !model.is_empty() {
                let k = *model.keys().nth((x as usize / 3) % model.len()).unwrap();
                assert_eq!(s.remove(k), model.remove(&k));
            } else {
                let slot = s.insert(i);
                assert!(model.insert(slot, i).is_none(), "slot {slot} given twice");
            }
            if i % 4096 == 0 {
                s.shrink();
            }
            assert_eq!(s.len(), model.len());
        }
        let held: Vec<(u32, u64)> = (0..s.slots().len() as u32)
            .filter_map(|k| s.get(k).map(|&v| (k, v)))
            .collect();
        assert_eq!(held, model.into_iter().collect::<Vec<_>>());
    }
}
