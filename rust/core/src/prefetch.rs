//! Cache hints: a read of an address soon, said early so that its miss overlaps other work
//! (the search's rows, a batch's look-ups ahead of their events). A hint never changes a
//! result: it only moves a cache line nearer the core, and is a no-op off x86-64.

/// A hint that `items[i]` is read soon (nothing if `i` is out of bounds).
#[inline(always)]
pub fn prefetch<T>(items: &[T], i: usize) {
    if let Some(item) = items.get(i) {
        prefetch_ref(item);
    }
}

/// A hint that `item` is read soon.
#[inline(always)]
pub fn prefetch_ref<T>(item: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is a hint that never faults; the address is a live reference anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(item).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = item;
}

/// The bytes of a cache line (x86-64's).
const LINE: usize = 64;

/// A hint that the whole of `items` is read soon: one hint a cache line it touches (a PDQ
/// bucket's rows span two or three lines at a million hashes, and the hint of its first line
/// alone left the others to be missed one after another).
#[inline(always)]
pub fn prefetch_all<T>(items: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = std::mem::size_of_val(items);
        let first = items.as_ptr().cast::<i8>();
        // from the start of the line holding the first byte (a hint may name any address)
        let skew = first as usize % LINE;
        let mut at = 0;
        while at < bytes + skew {
            // SAFETY: a prefetch is a hint that never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(first.wrapping_sub(skew).wrapping_add(at)) };
            at += LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = items;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_in_and_out_of_bounds_change_nothing() {
        let v = vec![1_u64, 2, 3];
        prefetch(&v, 0);
        prefetch(&v, 3);
        prefetch(&v, usize::MAX);
        prefetch::<u8>(&[], 0);
        prefetch_ref(&v[2]);
        prefetch_all(&v);
        prefetch_all(&v[1..]);
        prefetch_all::<u64>(&[]);
        assert_eq!(v, [1, 2, 3]);
    }
}
