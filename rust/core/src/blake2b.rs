//! BLAKE2b (RFC 7693), unkeyed, of any digest size up to 64 bytes: the digest an
//! unbanked cluster's id is made of (`streams.emerging.unbanked_cluster_id`,
//! which took it from Python's `hashlib` before), so the core can name a
//! cluster itself.
//!
//! ```
//! use viralwatch_core::blake2b::{blake2b, hex};
//! assert_eq!(hex(&blake2b(b"abc", 8)), "d8bb14d833d59559");
//! ```

const IV: [u64; 8] = [
    0x6a09_e667_f3bc_c908,
    0xbb67_ae85_84ca_a73b,
    0x3c6e_f372_fe94_f82b,
    0xa54f_f53a_5f1d_36f1,
    0x510e_527f_ade6_82d1,
    0x9b05_688c_2b3e_6c1f,
    0x1f83_d9ab_fb41_bd6b,
    0x5be0_cd19_137e_2179,
];

const SIGMA: [[usize; 16]; 12] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
];

#[inline(always)]
fn g(v: &mut [u64; 16], (a, b, c, d): (usize, usize, usize, usize), x: u64, y: u64) {
    v[a] = v[a].wrapping_add(v[b]).wrapping_add(x);
    v[d] = (v[d] ^ v[a]).rotate_right(32);
    v[c] = v[c].wrapping_add(v[d]);
    v[b] = (v[b] ^ v[c]).rotate_right(24);
    v[a] = v[a].wrapping_add(v[b]).wrapping_add(y);
    v[d] = (v[d] ^ v[a]).rotate_right(16);
    v[c] = v[c].wrapping_add(v[d]);
    v[b] = (v[b] ^ v[c]).rotate_right(63);
}

/// One round: the eight mixes of `v` with the message words in `s`'s order. Inlined into
/// each of the twelve rounds written out in [`compress`], where `s` is a constant row of
/// [`SIGMA`]: the words are picked at compile time (no table read, no bounds check). A loop
/// over the rows read both at run time, about 2,800 instructions a block (an unbanked
/// cluster's id is one block: once an upload in a platform replay, callgrind).
#[inline(always)]
fn round(v: &mut [u64; 16], m: &[u64; 16], s: &[usize; 16]) {
    g(v, (0, 4, 8, 12), m[s[0]], m[s[1]]);
    g(v, (1, 5, 9, 13), m[s[2]], m[s[3]]);
    g(v, (2, 6, 10, 14), m[s[4]], m[s[5]]);
    g(v, (3, 7, 11, 15), m[s[6]], m[s[7]]);
    g(v, (0, 5, 10, 15), m[s[8]], m[s[9]]);
    g(v, (1, 6, 11, 12), m[s[10]], m[s[11]]);
    g(v, (2, 7, 8, 13), m[s[12]], m[s[13]]);
    g(v, (3, 4, 9, 14), m[s[14]], m[s[15]]);
}

/// One block into `h`: with AVX2 where the machine has it ([`avx2::compress`]), else the
/// scalar rounds ([`scalar_compress`]); the same words either way
/// (`tests::avx2_and_scalar_rounds_agree`).
#[inline]
fn compress(h: &mut [u64; 8], block: &[u8; 128], t: u128, last: bool) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the machine has AVX2 (asked just above)
        return unsafe { avx2::compress(h, block, t, last) };
    }
    scalar_compress(h, block, t, last)
}

/// [`compress`] word by word, the twelve rounds written out.
fn scalar_compress(h: &mut [u64; 8], block: &[u8; 128], t: u128, last: bool) {
    let mut m = [0_u64; 16];
    for (w, bytes) in m.iter_mut().zip(block.chunks_exact(8)) {
        *w = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
    }
    let mut v = [0_u64; 16];
    v[..8].copy_from_slice(h);
    v[8..].copy_from_slice(&IV);
    v[12] ^= t as u64;
    v[13] ^= (t >> 64) as u64;
    if last {
        v[14] = !v[14];
    }
    macro_rules! rounds {
        ($($r:literal)*) => { $(round(&mut v, &m, &SIGMA[$r]);)* };
    }
    rounds!(0 1 2 3 4 5 6 7 8 9 10 11);
    for i in 0..8 {
        h[i] ^= v[i] ^ v[i + 8];
    }
}

/// [`compress`] four words a step: the state's rows `v[0..4]`, `v[4..8]`, `v[8..12]`,
/// `v[12..16]` each one AVX2 register, a round's four column mixes at once, then its four
/// diagonal ones (the rows turned so that each diagonal is a column, and back), the
/// message words of each step gathered by [`GATHER`], the rounds a loop.
///
/// Why: an unbanked cluster's id is one block, once an upload; the scalar rounds written
/// out were 1,570 instructions and about 7 KB of code, out of the instruction cache at
/// every call (78 first-level misses a call, 5.5% of a platform replay's, callgrind
/// `--cache-sim=yes`). This is about 600 instructions in a loop of under 1 KB.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm256_add_epi64, _mm256_cvtepu8_epi64, _mm256_i64gather_epi64,
        _mm256_loadu_si256, _mm256_or_si256, _mm256_permute4x64_epi64, _mm256_set_epi64x,
        _mm256_setr_epi8, _mm256_shuffle_epi32, _mm256_shuffle_epi8, _mm256_srli_epi64,
        _mm256_storeu_si256, _mm256_xor_si256, _mm_cvtsi32_si128,
    };

    use super::{IV, SIGMA};

    /// Each round's message words as four gathers' indices, a byte each (the table is
    /// three cache lines; as 64-bit indices it was 24, each a first-level data miss at
    /// nearly every call): the columns' first and second words (`s[0], s[2], s[4], s[6]`
    /// and `s[1], s[3], s[5], s[7]`), then the diagonals' the same from `s[8]`.
    #[repr(align(64))]
    struct Gather([[u8; 16]; 12]);
    static GATHER: Gather = {
        let mut out = [[0; 16]; 12];
        let mut r = 0;
        while r < 12 {
            let mut i = 0;
            while i < 16 {
                // vector i / 4 (0, 1: the columns' x and y; 2, 3: the diagonals'), lane i % 4
                let (k, lane) = (i / 4, i % 4);
                out[r][i] = SIGMA[r][8 * (k / 2) + 2 * lane + k % 2] as u8;
                i += 1;
            }
            r += 1;
        }
        Gather(out)
    };

    /// The four mixes of one step, a lane each (`g` of the scalar rounds).
    #[inline(always)]
    unsafe fn g(
        (a, b, c, d): (&mut __m256i, &mut __m256i, &mut __m256i, &mut __m256i),
        x: __m256i,
        y: __m256i,
    ) {
        // rotations by 24 and 16 bits are byte shuffles; by 32 a swap of halves; by 63
        // the top bit moved down and the rest doubled
        let rot24 = _mm256_setr_epi8(
            3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10, 3, 4, 5, 6, 7, 0, 1, 2, 11, 12,
            13, 14, 15, 8, 9, 10,
        );
        let rot16 = _mm256_setr_epi8(
            2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9, 2, 3, 4, 5, 6, 7, 0, 1, 10, 11,
            12, 13, 14, 15, 8, 9,
        );
        *a = _mm256_add_epi64(_mm256_add_epi64(*a, *b), x);
        *d = _mm256_shuffle_epi32::<0b10_11_00_01>(_mm256_xor_si256(*d, *a));
        *c = _mm256_add_epi64(*c, *d);
        *b = _mm256_shuffle_epi8(_mm256_xor_si256(*b, *c), rot24);
        *a = _mm256_add_epi64(_mm256_add_epi64(*a, *b), y);
        *d = _mm256_shuffle_epi8(_mm256_xor_si256(*d, *a), rot16);
        *c = _mm256_add_epi64(*c, *d);
        let bc = _mm256_xor_si256(*b, *c);
        *b = _mm256_or_si256(_mm256_srli_epi64::<63>(bc), _mm256_add_epi64(bc, bc));
    }

    /// # Safety
    /// The machine must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn compress(h: &mut [u64; 8], block: &[u8; 128], t: u128, last: bool) {
        let load = |p: *const u64| _mm256_loadu_si256(p.cast());
        let (mut a, mut b) = (load(h.as_ptr()), load(h[4..].as_ptr()));
        let mut c = load(IV.as_ptr());
        let f = if last { -1 } else { 0 };
        let counter = _mm256_set_epi64x(0, f, (t >> 64) as i64, t as i64);
        let mut d = _mm256_xor_si256(load(IV[4..].as_ptr()), counter);
        // the block's words are its little-endian bytes: x86-64's own order
        let m: *const i64 = block.as_ptr().cast();
        for s in &GATHER.0 {
            let word = |k: usize| {
                let four = u32::from_le_bytes([s[4 * k], s[4 * k + 1], s[4 * k + 2], s[4 * k + 3]]);
                _mm256_i64gather_epi64::<8>(m, _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(four as i32)))
            };
            g((&mut a, &mut b, &mut c, &mut d), word(0), word(1));
            // each diagonal a column: row b turned by one lane, c by two, d by three
            b = _mm256_permute4x64_epi64::<0b00_11_10_01>(b);
            c = _mm256_permute4x64_epi64::<0b01_00_11_10>(c);
            d = _mm256_permute4x64_epi64::<0b10_01_00_11>(d);
            g((&mut a, &mut b, &mut c, &mut d), word(2), word(3));
            b = _mm256_permute4x64_epi64::<0b10_01_00_11>(b);
            c = _mm256_permute4x64_epi64::<0b01_00_11_10>(c);
            d = _mm256_permute4x64_epi64::<0b00_11_10_01>(d);
        }
        let (h0, h1) = h.split_at_mut(4);
        let out0 = _mm256_xor_si256(load(h0.as_ptr()), _mm256_xor_si256(a, c));
        let out1 = _mm256_xor_si256(load(h1.as_ptr()), _mm256_xor_si256(b, d));
        _mm256_storeu_si256(h0.as_mut_ptr().cast(), out0);
        _mm256_storeu_si256(h1.as_mut_ptr().cast(), out1);
    }
}

/// The BLAKE2b digest of `data`, `size` bytes long (1..=64; clamped to it).
pub fn blake2b(data: &[u8], size: usize) -> Vec<u8> {
    let size = size.clamp(1, 64);
    state(data, size)
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .take(size)
        .collect()
}

/// The 8-byte BLAKE2b digest of `data`, read as a big-endian number (an unbanked cluster's
/// id: no allocation, once an upload).
pub fn blake2b_u64(data: &[u8]) -> u64 {
    state(data, 8)[0].swap_bytes()
}

/// The chain words after hashing `data` for a `size`-byte digest (1..=64): the digest is
/// their little-endian bytes, cut to `size`.
fn state(data: &[u8], size: usize) -> [u64; 8] {
    let mut h = IV;
    h[0] ^= 0x0101_0000 ^ size as u64;
    let mut t: u128 = 0;
    let mut rest = data;
    while rest.len() > 128 {
        let (block, tail) = rest.split_at(128);
        t += 128;
        compress(&mut h, block.try_into().expect("128 bytes"), t, false);
        rest = tail;
    }
    let mut last = [0_u8; 128];
    last[..rest.len()].copy_from_slice(rest);
    t += rest.len() as u128;
    compress(&mut h, &last, t, true);
    h
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_7693_and_hashlib_vectors() {
        // RFC 7693, appendix A: BLAKE2b-512("abc")
        assert_eq!(
            hex(&blake2b(b"abc", 64)),
            "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d1\
             7d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923"
        );
        // hashlib.blake2b(data, digest_size=8): empty, one block exactly, one byte over
        assert_eq!(hex(&blake2b(b"", 8)), "e4a6a0577479b2b4");
        assert_eq!(hex(&blake2b(&[b'x'; 128], 8)), "901ce374e8e12402");
        assert_eq!(hex(&blake2b(&[b'x'; 129], 8)), "18de14b9d8eea5a3");
        assert_eq!(blake2b_u64(&[b'x'; 129]), 0x18de_14b9_d8ee_a5a3);
    }

    /// The AVX2 rounds give the scalar ones' words, block by block: random chain words,
    /// blocks, counters (either half) and last-block flags.
    #[test]
    fn avx2_and_scalar_rounds_agree() {
        #[cfg(target_arch = "x86_64")]
        {
            if !std::arch::is_x86_feature_detected!("avx2") {
                eprintln!("no AVX2 here: the scalar rounds alone are used");
                return;
            }
            let mut state = 0x2545_f491_4f6c_dd1du64;
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            for i in 0..20_000 {
                let mut h = [0u64; 8];
                h.iter_mut().for_each(|w| *w = next());
                let mut block = [0u8; 128];
                block.iter_mut().for_each(|b| *b = next() as u8);
                let t = u128::from(next())
                    | if i % 3 == 0 {
                        u128::from(next()) << 64
                    } else {
                        0
                    };
                let last = i % 2 == 0;
                let (mut scalar, mut wide) = (h, h);
                scalar_compress(&mut scalar, &block, t, last);
                // SAFETY: the machine has AVX2 (asked above)
                unsafe { avx2::compress(&mut wide, &block, t, last) };
                assert_eq!(scalar, wide, "block {i}");
            }
        }
    }
}
