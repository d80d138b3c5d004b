//! What the tests and the examples share, and nothing else uses: a small
//! deterministic generator, so neither needs a crate. Not public API: the
//! library declares it under `#[cfg(test)]`, an example includes the file
//! with `#[path]`.

/// A PDQ hash's four words (as `crate::pdq::Hash`, spelt out for the examples).
pub type Words = [u64; 4];

/// xorshift64: deterministic, fast, good enough to spread test hashes.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A random hash.
    pub fn hash(&mut self) -> Words {
        [self.next(), self.next(), self.next(), self.next()]
    }

    /// `h` with `d` distinct bits flipped.
    pub fn flip(&mut self, h: &Words, d: u32) -> Words {
        let mut out = *h;
        let mut flipped = 0;
        while flipped < d {
            let bit = (self.next() % 256) as usize;
            let mask = 1 << (bit % 64);
            if (out[bit / 64] ^ h[bit / 64]) & mask == 0 {
                out[bit / 64] ^= mask;
                flipped += 1;
            }
        }
        out
    }
}
