//! The extension's heap, counted: Python's `tracemalloc` sees only what
//! Python allocates, so the state the compiled core holds (its tables) would
//! be invisible to a memory benchmark. Every allocation of this module goes
//! through [`Counting`], with a running total beside it
//! (`_core.allocated_bytes()`), at the cost of one relaxed atomic add.
//!
//! Small blocks (up to [`SMALL`] bytes: an event's compact record, a cluster's
//! box, a key's bytes; most of the 7 allocations an event) come from mimalloc,
//! whose thread-local free lists cost a fraction of glibc's `malloc`/`free`
//! (a tenth of a platform replay's time was there). Larger ones (the tables,
//! which grow by doubling to megabytes) stay with the system allocator: glibc
//! maps them on their own and grows them with `mremap`, where mimalloc kept
//! freed table pages resident (a million live posts: 297 B resident a post
//! against 270, `bench/bench_core.py --skip-throughput --memory`). Which
//! allocator holds a block follows from its size, which every call is given.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use libmimalloc_sys::{mi_malloc, mi_realloc, mi_zalloc};
use mimalloc::MiMalloc;

pub struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

/// The largest block mimalloc holds (its "small" size classes end at 1 KiB).
const SMALL: usize = 1024;

fn small(size: usize) -> bool {
    size <= SMALL
}

/// The alignment every mimalloc block has: its blocks are whole words from an aligned start.
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc asked as `malloc` is where the layout needs no more than a word's alignment
/// (nearly every block: the core's records, boxes and lists), not as `MiMalloc` asks
/// (`mi_malloc_aligned` for every block). Why: when the size class's page has no free block
/// at hand, mimalloc's aligned path takes a block of `size + align - 1` bytes from the next
/// size class unless the size is a power of two (`mi_malloc_is_naturally_aligned`):
/// about 180 instructions where `malloc`'s own slow path is shorter, and the larger
/// block kept; a fifth of a platform replay's small allocations took it (callgrind:
/// 259,000 of 1.31 million).
struct Mi;

impl Mi {
    unsafe fn alloc(layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            unsafe { mi_malloc(layout.size()).cast() }
        } else {
            unsafe { MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            unsafe { mi_zalloc(layout.size()).cast() }
        } else {
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn realloc(ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            unsafe { mi_realloc(ptr.cast(), new_size).cast() }
        } else {
            unsafe { MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

// SAFETY: a block of `size` bytes is always allocated, reallocated and freed by the same
// allocator (mimalloc when `small(size)`, `System` otherwise), with the caller's layout; a
// reallocation across the bound is a fresh allocation in the other, a copy and a free. The
// counter never affects what memory is returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe {
            if small(layout.size()) {
                Mi::alloc(layout)
            } else {
                System.alloc(layout)
            }
        };
        if !p.is_null() {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe {
            if small(layout.size()) {
                Mi::alloc_zeroed(layout)
            } else {
                System.alloc_zeroed(layout)
            }
        };
        if !p.is_null() {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { self.dealloc_uncounted(ptr, layout) };
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe {
            match (small(layout.size()), small(new_size)) {
                (true, true) => Mi::realloc(ptr, layout, new_size),
                (false, false) => System.realloc(ptr, layout, new_size),
                (_, to_small) => {
                    // across the bound: the other allocator's block, the bytes both hold
                    let new = Layout::from_size_align_unchecked(new_size, layout.align());
                    let q = if to_small {
                        Mi::alloc(new)
                    } else {
                        System.alloc(new)
                    };
                    if !q.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, q, layout.size().min(new_size));
                        self.dealloc_uncounted(ptr, layout);
                    }
                    q
                }
            }
        };
        if !p.is_null() {
            ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
            ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

impl Counting {
    /// Free `ptr` in the allocator its size says, the count left to the caller.
    unsafe fn dealloc_uncounted(&self, ptr: *mut u8, layout: Layout) {
        unsafe {
            if small(layout.size()) {
                MiMalloc.dealloc(ptr, layout);
            } else {
                System.dealloc(ptr, layout);
            }
        }
    }
}

/// Bytes this extension holds on its heap now.
pub fn allocated() -> usize {
    ALLOCATED.load(Ordering::Relaxed)
}
