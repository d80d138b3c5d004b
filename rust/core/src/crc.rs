//! Reflected CRC-32s by table, a byte a step: one table builder and one loop for both
//! polynomials the core needs, zlib's (`posts::crc32`, the internal topics' partitions) and
//! Castagnoli's (`record_batch::crc32c`, where the CPU has no CRC-32C instruction). They
//! were two copies differing in the polynomial only.

/// The table of a reflected CRC-32 of polynomial `poly` (bit-reversed), built at compile time.
pub(crate) const fn table(poly: u32) -> [u32; 256] {
    let mut table = [0_u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { poly ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// `crc` carried on over `data` by `table` (the caller inverts before and after).
#[inline]
pub(crate) fn update(table: &[u32; 256], mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = table[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

/// The eight tables of [`update8`]: the first `table(poly)`, each next one a zero byte more
/// (`t[k][i]` is the CRC of byte `i` followed by `k` zero bytes).
pub(crate) const fn tables8(poly: u32) -> [[u32; 256]; 8] {
    let mut t = [table(poly); 8];
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let c = t[k - 1][i];
            t[k][i] = (c >> 8) ^ t[0][(c & 0xFF) as usize];
            i += 1;
        }
        k += 1;
    }
    t
}

/// [`update`] eight bytes a step (slicing by eight: the step's word XORed with the CRC, each
/// of its bytes looked up in the table of the bytes after it), the rest a byte at a time;
/// the same CRC. Why: an internal topic's partition is the zlib CRC of a post id of 10-20
/// bytes, asked of every event a worker reads (`ingest_records`): a byte a step was about
/// 6.5 instructions a byte.
#[inline]
pub(crate) fn update8(t: &[[u32; 256]; 8], mut crc: u32, data: &[u8]) -> u32 {
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let x = u64::from_le_bytes(w.try_into().expect("8 bytes")) ^ u64::from(crc);
        let b = |i: u32| ((x >> (8 * i)) & 0xFF) as usize;
        crc = t[7][b(0)]
            ^ t[6][b(1)]
            ^ t[5][b(2)]
            ^ t[4][b(3)]
            ^ t[3][b(4)]
            ^ t[2][b(5)]
            ^ t[1][b(6)]
            ^ t[0][b(7)];
    }
    update(&t[0], crc, words.remainder())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Rng;

    #[test]
    fn eight_bytes_a_step_is_a_byte_a_steps_crc() {
        // both polynomials, every length to 40 and every starting CRC kind
        let mut rng = Rng(0x0c2c_3208);
        for poly in [0xEDB8_8320, 0x82F6_3B78] {
            let (one, eight) = (table(poly), tables8(poly));
            for len in 0..=40 {
                for _ in 0..200 {
                    let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    let crc = rng.next() as u32;
                    assert_eq!(update8(&eight, crc, &data), update(&one, crc, &data));
                }
            }
        }
    }
}
