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

fn compress(h: &mut [u64; 8], block: &[u8; 128], t: u128, last: bool) {
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
}
