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
        assert_eq!(v, [1, 2, 3]);
    }
}
