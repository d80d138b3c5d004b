//! One search at a time, as an upload's clustering asks (not a batch): CPU
//! nanoseconds a search of an index of random hashes built by adds (its tail
//! as adds leave it), queries random but for one in a hundred planted within
//! 0..31 bits of an indexed hash, threshold 31; and a scan of up to 50,000 of
//! them without tables (the banks' index, the tail). CPU time is the thread's, so
//! a loaded machine's waits are not counted (its caches' sharing is); each
//! figure is the median of 5 passes. Linux (64-bit) only.
//!
//!     cargo run --release --example pdq_search [-- 55000,100000,1000000 [queries]]

use std::hint::black_box;

use viralwatch_core::pdq::{Hash, PdqIndex};

// the tests' generator (not the library's API: the file is included here)
#[allow(dead_code)]
#[path = "../src/testing.rs"]
mod testing;
use testing::Rng;

extern "C" {
    // the C library's (linked anyway): no crate for one call
    fn clock_gettime(clock: i32, now: *mut [i64; 2]) -> i32;
}

/// This thread's CPU time in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`: exact, where
/// `/proc/thread-self/schedstat` is brought up to date only at the scheduler's ticks).
fn cpu_ns() -> u64 {
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut now = [0_i64; 2];
    // SAFETY: `now` is a `struct timespec` (two 64-bit fields on 64-bit Linux), written once.
    let ok = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut now) } == 0;
    assert!(ok, "clock_gettime");
    (now[0] * 1_000_000_000 + now[1]) as u64
}

/// CPU ns a search of `queries` one at a time (median of 5 passes), and the hits.
fn time(index: &PdqIndex, queries: &[Hash]) -> (f64, usize) {
    let mut times = Vec::new();
    let mut hits = 0;
    for _ in 0..5 {
        hits = 0;
        let t = cpu_ns();
        for q in queries {
            index.search_with(std::slice::from_ref(q), 31, |_, _, _, _| hits += 1);
        }
        times.push((cpu_ns() - t) as f64 / queries.len() as f64);
    }
    times.sort_by(f64::total_cmp);
    (times[2], black_box(hits))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let sizes: Vec<usize> = args
        .next()
        .unwrap_or_else(|| "55000,100000,1000000".to_owned())
        .split(',')
        .map(|s| s.parse().expect("sizes: comma-separated integers"))
        .collect();
    let nq: usize = args.next().map_or(20_000, |s| s.parse().expect("queries"));
    println!("entries  search ns (CPU, median of 5)  hits  scan-only index: ns a row");
    for n in sizes {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ n as u64);
        let hashes: Vec<Hash> = (0..n).map(|_| rng.hash()).collect();
        let mut index = PdqIndex::new(1024);
        for (i, h) in hashes.iter().enumerate() {
            index.insert(*h, i as i64);
        }
        let queries: Vec<Hash> = (0..nq)
            .map(|i| {
                if i % 100 == 0 {
                    let h = hashes[(rng.next() as usize) % n];
                    rng.flip(&h, (i / 100 % 32) as u32)
                } else {
                    rng.hash()
                }
            })
            .collect();
        let (search, hits) = time(&index, &queries);
        // the scan a search of the banks' index or a scan-only one makes (the tail's too)
        let mut scans = PdqIndex::scan_only();
        scans.insert_many(
            hashes
                .iter()
                .take(50_000)
                .enumerate()
                .map(|(i, h)| (*h, i as i64)),
        );
        let (scan, _) = time(
            &scans,
            &queries[..(nq * 1000 / scans.len().max(1)).clamp(1, nq)],
        );
        println!(
            "{n:>7}  {search:>28.0}  {hits:>4}  {:>27.3}",
            scan / scans.len() as f64
        );
    }
}
