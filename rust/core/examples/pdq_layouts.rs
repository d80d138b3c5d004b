//! Which chunk width answers fastest at the index's real sizes: 32 tables of
//! 8-bit chunks (a hash within 31 shares a whole chunk with the query) or 16
//! tables of 16-bit chunks (one within a bit). Random hashes; queries half
//! planted 0..31 bits from an indexed hash, half random; threshold 31.
//!
//!     cargo run --release --example pdq_layouts [-- 10000,100000,1000000 [8,16]]

use std::time::Instant;

use viralwatch_core::pdq::{Hash, PdqIndex};

// the tests' generator (not the library's API: the file is included here)
#[allow(dead_code)]
#[path = "../src/testing.rs"]
mod testing;
use testing::Rng;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "10000,100000,1000000".to_owned())
        .split(',')
        .map(|s| s.parse().expect("sizes: comma-separated integers"))
        .collect();
    println!("entries    bits  insert us/hash  query us (median of 5)  hits  bytes/entry");
    for n in sizes {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ n as u64);
        let hashes: Vec<Hash> = (0..n).map(|_| rng.hash()).collect();
        let mut queries: Vec<Hash> = Vec::new();
        for i in 0..2000 {
            let mut q = if i % 2 == 0 {
                hashes[(rng.next() as usize) % n]
            } else {
                rng.hash()
            };
            for _ in 0..(i % 32) {
                let bit = (rng.next() % 256) as usize;
                q[bit / 64] ^= 1 << (bit % 64);
            }
            queries.push(q);
        }
        let widths: Vec<u32> = std::env::args()
            .nth(2)
            .unwrap_or_else(|| "8,16".to_owned())
            .split(',')
            .map(|s| s.parse().expect("bits: 8 or 16"))
            .collect();
        for &bits in &widths {
            let mut index = PdqIndex::with_chunk_bits(bits, 1024);
            let t = Instant::now();
            for (i, h) in hashes.iter().enumerate() {
                index.insert(*h, i as i64);
            }
            let insert = t.elapsed().as_secs_f64() * 1e6 / n as f64;
            let mut times = Vec::new();
            let mut hits = 0;
            for _ in 0..5 {
                hits = 0;
                let t = Instant::now();
                index.search_with(&queries, 31, |_, _, _, _| hits += 1);
                times.push(t.elapsed().as_secs_f64() * 1e6 / queries.len() as f64);
            }
            println!(
                "{n:>9}  {bits:>4}  {insert:>14.2}  {:>22.2}  {hits:>4}  {:>11.0}",
                median(times),
                index.nbytes() as f64 / n as f64
            );
        }
    }
}
