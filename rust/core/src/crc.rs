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
