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

/// A hint that `items[i]` is read soon, with no test of `i` (a hint never faults: an index
/// out of bounds names some address nothing reads).
#[inline(always)]
pub fn prefetch_at<T>(items: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is a hint that never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(items.as_ptr().wrapping_add(i).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (items, i);
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

/// A hint that `items[lo..hi]` is read soon: one hint a cache line it touches, from the line
/// holding its first byte (a PDQ bucket's rows span two or three lines at a million hashes,
/// and the hint of its first line alone left the others to be missed one after another).
/// `lo <= hi <= items.len()` is the caller's to keep, and is not tested (a hint never faults,
/// but a span past `items` is one hint a line all the same): a search prefetches about 120
/// buckets' rows this way, and the slice's tests and the lines' count were 35 instructions a
/// bucket.
#[inline(always)]
pub fn prefetch_span<T>(items: &[T], lo: usize, hi: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let first = items.as_ptr().wrapping_add(lo) as usize;
        let end = items.as_ptr().wrapping_add(hi) as usize;
        let mut at = first & !(LINE - 1);
        while at < end {
            // SAFETY: a prefetch is a hint that never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(at as *const i8) };
            at += LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (items, lo, hi);
}

/// The bytes of a cache line (x86-64's: the only target that prefetches).
#[cfg(target_arch = "x86_64")]
const LINE: usize = 64;

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
        prefetch_at(&v, 1);
        prefetch_at(&v, usize::MAX);
        prefetch_span(&v, 0, 3);
        prefetch_span(&v, 1, 1);
        prefetch_span(&v, 3, 3);
        prefetch_span::<u64>(&[], 0, 0);
        assert_eq!(v, [1, 2, 3]);
    }
}
