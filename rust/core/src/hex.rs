//! Hex digits, read by table: the one reader of a hash's text. An event's PDQ and MD5
//! (`event`), the PDQ words of the indexes (`pdq::parse_hex`), the signals the content
//! index and the store are given as text, and the held forms' hashes (`wire_index`) all
//! read their digits here (there were three readers of the same loop, and a fourth in
//! `wire_index`).
//!
//! By table, with no branch a digit: a hash's digits and letters come at random, and a
//! `match` on each mispredicted often (1.3-1.5% of a platform replay's samples were a
//! digit test, before the table).

/// Each byte's value as a hex digit, either case (`NOT_HEX`: not one), and whether it is
/// an uppercase letter (`UPPER`).
pub(crate) const NOT_HEX: u8 = 0xff;
pub(crate) const UPPER: u8 = 0x10;
pub(crate) static HEX_DIGITS: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = UPPER | (10 + i as u8);
        i += 1;
    }
    t
};

/// Which digits a reader takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Case {
    /// `0-9`, `a-f` and `A-F`
    Either,
    /// `0-9` and `a-f` only (the text the event parser writes: see `wire_index`)
    Lower,
}

impl Case {
    /// The table's bits that refuse a byte.
    pub(crate) const fn refused(self) -> u8 {
        match self {
            Case::Either => NOT_HEX & !0x1f,
            Case::Lower => NOT_HEX & !0x0f,
        }
    }
}

/// The value of `2 * out.len()` hex digits, read into `out` (two digits a byte, the first
/// the high half): whether `text` is exactly that many digits of `case`. `out` is written
/// whatever the answer (a caller reads it only on `true`).
#[inline]
pub(crate) fn read(text: &[u8], out: &mut [u8], case: Case) -> bool {
    digits(text, out) & case.refused() == 0
}

/// [`read`]'s pass: the OR of the digits' table entries (`NOT_HEX` if `text` is not
/// `2 * out.len()` bytes), whose [`UPPER`] bit says whether a digit was uppercase (the
/// parser keeps a lowercase hash's text as it is, and lowercases only the others).
///
/// Sixteen digits a step with SSE2 (every x86-64 has it) while both have room, the rest by
/// the table: a hash is 32 or 64 digits, and the table's two reads, OR and shifts a byte
/// were about 12 instructions a byte out, 36,000 hashes a platform replay (callgrind).
/// A step's bits are [`NOT_HEX`] if a byte is no digit, [`UPPER`] if one is uppercase:
/// the bits a caller reads (not the table's low bits, a digit's value).
///
/// First, where the text is whole steps of sixteen (a hash's 32 or 64 digits), a lighter
/// pass that takes lowercase digits only ([`sixteen_lower`]): its steps' refusals ANDed,
/// one branch at the end. A hash the parser reads is lowercase (the simulator's and the
/// platform's writers): read so, an upload's two hashes were 391 instructions a line of
/// the worker stream (callgrind, `parse_lines`), each step's three classes and its own
/// branch. Any other text (an uppercase digit, a byte that is none) is read again below,
/// as before: the same bits and bytes.
#[inline]
pub(crate) fn digits(text: &[u8], out: &mut [u8]) -> u8 {
    #[cfg(target_arch = "x86_64")]
    if text.len() == 2 * out.len() && out.len() % 8 == 0 {
        let mut ok = 0xffff;
        for (chunk, bytes) in text.chunks_exact(16).zip(out.chunks_exact_mut(8)) {
            ok &= sixteen_lower(
                chunk.try_into().expect("16 digits"),
                bytes.try_into().expect("8 bytes"),
            );
        }
        if ok == 0xffff {
            return 0;
        }
    }
    // (written by the SSE2 steps alone: constants where they are not built)
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut bits = 0;
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    while let (Some(chunk), Some(bytes)) = (
        text.get(2 * done..2 * done + 16),
        out.get_mut(done..done + 8),
    ) {
        bits |= sixteen(
            chunk.try_into().expect("16 digits"),
            bytes.try_into().expect("8 bytes"),
        );
        done += 8;
    }
    let (text, out) = (&text[(2 * done).min(text.len())..], &mut out[done..]);
    let bits = bits | by_table(text, out);
    if text.len() == 2 * out.len() {
        bits
    } else {
        NOT_HEX
    }
}

/// Sixteen digits' eight bytes, with SSE2: a digit is a byte `b` with `b - '0'` at most 9,
/// a letter one with `(b | 0x20) - 'a'` at most 5 (an uppercase one has no 0x20 bit); the
/// digits' values paired in each 16-bit lane (`hi | lo << 8`) as `hi << 4 | lo`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn sixteen(text: &[u8; 16], out: &mut [u8; 8]) -> u8 {
    use std::arch::x86_64::{
        _mm_add_epi8, _mm_and_si128, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8, _mm_setzero_si128, _mm_sub_epi8,
    };
    // SAFETY: SSE2 is part of x86-64; the load reads `text`'s 16 bytes, the store writes
    // `out`'s 8
    unsafe {
        let v = _mm_loadu_si128(text.as_ptr().cast());
        let at_most =
            |x, n: i8| _mm_cmpeq_epi8(_mm_max_epu8(x, _mm_set1_epi8(n)), _mm_set1_epi8(n));
        let digit = _mm_sub_epi8(v, _mm_set1_epi8(b'0' as i8));
        let is_digit = at_most(digit, 9);
        let lower = _mm_or_si128(v, _mm_set1_epi8(0x20));
        let letter = _mm_sub_epi8(lower, _mm_set1_epi8(b'a' as i8));
        let is_letter = at_most(letter, 5);
        let zero = _mm_setzero_si128();
        let bad = _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_or_si128(is_digit, is_letter), zero));
        let no_case_bit = _mm_cmpeq_epi8(_mm_and_si128(v, _mm_set1_epi8(0x20)), zero);
        let upper = _mm_movemask_epi8(_mm_and_si128(is_letter, no_case_bit));
        let value = _mm_or_si128(
            _mm_and_si128(is_digit, digit),
            _mm_and_si128(is_letter, _mm_add_epi8(letter, _mm_set1_epi8(10))),
        );
        store_pairs(value, out);
        if bad != 0 {
            NOT_HEX
        } else if upper != 0 {
            UPPER
        } else {
            0
        }
    }
}

/// Sixteen lowercase digits' eight bytes, with SSE2: a mask of the bytes that are `0-9` or
/// `a-f` (bit `i` set: byte `i` is one). Each class by one signed compare: `b - '0'` moved
/// by 0x80 is under `-128 + 10` for a digit alone, `b - 'a'` moved so under `-128 + 6`
/// for a letter alone; a letter's value its `b - '0'` less `'a' - '0' - 10` (39). The
/// digits' values paired as [`sixteen`] pairs them. Bytes that are not such digits write
/// values no caller reads (it reads `out` only on an answer of every bit).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn sixteen_lower(text: &[u8; 16], out: &mut [u8; 8]) -> i32 {
    use std::arch::x86_64::{
        _mm_add_epi8, _mm_and_si128, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8,
        _mm_or_si128, _mm_set1_epi8, _mm_sub_epi8, _mm_xor_si128,
    };
    // SAFETY: SSE2 is part of x86-64; the load reads `text`'s 16 bytes, the store writes
    // `out`'s 8
    unsafe {
        let v = _mm_loadu_si128(text.as_ptr().cast());
        let digit = _mm_sub_epi8(v, _mm_set1_epi8(b'0' as i8));
        let is_digit = _mm_cmplt_epi8(
            _mm_xor_si128(digit, _mm_set1_epi8(i8::MIN)),
            _mm_set1_epi8(i8::MIN + 10),
        );
        let letter = _mm_add_epi8(v, _mm_set1_epi8((0x80 - i32::from(b'a')) as i8));
        let is_letter = _mm_cmplt_epi8(letter, _mm_set1_epi8(i8::MIN + 6));
        let ok = _mm_movemask_epi8(_mm_or_si128(is_digit, is_letter));
        let value = _mm_sub_epi8(
            digit,
            _mm_and_si128(is_letter, _mm_set1_epi8((b'a' - b'0' - 10) as i8)),
        );
        store_pairs(value, out);
        ok
    }
}

/// A step's sixteen digits' values (one a byte) paired in each 16-bit lane (`hi | lo << 8`)
/// as `hi << 4 | lo`, the eight bytes stored in `out`: [`sixteen`]'s and
/// [`sixteen_lower`]'s last steps.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn store_pairs(value: std::arch::x86_64::__m128i, out: &mut [u8; 8]) {
    use std::arch::x86_64::{
        _mm_andnot_si128, _mm_or_si128, _mm_packus_epi16, _mm_set1_epi16, _mm_setzero_si128,
        _mm_slli_epi16, _mm_srli_epi16, _mm_storel_epi64,
    };
    // SAFETY: SSE2 is part of x86-64; the store writes `out`'s 8 bytes
    unsafe {
        let pairs = _mm_or_si128(_mm_slli_epi16::<4>(value), _mm_srli_epi16::<8>(value));
        let low = _mm_andnot_si128(_mm_set1_epi16(-256), pairs);
        _mm_storel_epi64(
            out.as_mut_ptr().cast(),
            _mm_packus_epi16(low, _mm_setzero_si128()),
        );
    }
}

/// [`digits`]'s pairs by the table, as many as both hold.
#[inline(always)]
fn by_table(text: &[u8], out: &mut [u8]) -> u8 {
    let mut bits = 0;
    for (b, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (hi, lo) = (
            HEX_DIGITS[usize::from(pair[0])],
            HEX_DIGITS[usize::from(pair[1])],
        );
        bits |= hi | lo;
        *b = ((hi & 15) << 4) | (lo & 15);
    }
    bits
}

/// The `N` bytes of `2 * N` hex digits (either case), or `None`: an MD5's 16.
#[inline]
pub(crate) fn bytes<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    let mut out = [0_u8; N];
    read(text, &mut out, Case::Either).then_some(out)
}

/// Whether every byte is a hex digit, either case, whatever their number (the parser's
/// test of a hash's text of the wrong length: `bad_hex` is named before its length).
pub(crate) fn is_hex(text: &[u8]) -> bool {
    let bad = text
        .iter()
        .fold(0, |bad, &b| bad | HEX_DIGITS[usize::from(b)]);
    bad & Case::Either.refused() == 0
}

/// `v`'s sixteen lowercase hex digits, the most significant first (as `{:016x}` writes
/// them), in a few word operations with no table or branch: each nibble spread to a byte
/// (three shift-and-mask steps a half), then `'0'` added, and `'a' - '0' - 10` more where
/// the nibble is past 9 (its `+ 6` carries into bit 4). A cluster's id is written this way
/// each time it becomes text (a worker's resolve stage and its logs: 130,000 times in 30,000
/// events), where a digit at a time by table and the check of the result as UTF-8 were
/// about 170 instructions an id (callgrind, `bench_stages.py`).
#[inline]
pub(crate) fn lower16(v: u64) -> [u8; 16] {
    const LOW: u64 = 0x0f0f_0f0f_0f0f_0f0f;
    /// A half's eight nibbles, one a byte, the least significant in the lowest byte.
    #[inline(always)]
    fn spread(half: u64) -> u64 {
        let x = (half | (half << 16)) & 0x0000_ffff_0000_ffff;
        let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
        (x | (x << 4)) & LOW
    }
    #[inline(always)]
    fn ascii(n: u64) -> u64 {
        let past_nine = ((n + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
        n + 0x3030_3030_3030_3030 + past_nine * 0x27
    }
    let hi = ascii(spread(v >> 32)).to_be_bytes();
    let lo = ascii(spread(v & 0xffff_ffff)).to_be_bytes();
    let mut out = [0; 16];
    out[..8].copy_from_slice(&hi);
    out[8..].copy_from_slice(&lo);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn sixteen_digits_are_the_formatters() {
        let mut rng = Rng(23);
        let edges = [
            0,
            1,
            9,
            10,
            15,
            16,
            u64::MAX,
            u64::MAX - 1,
            0x0123_4567_89ab_cdef,
        ];
        let nibbles = (0..16).flat_map(|i| (0..16_u64).map(move |d| d << (4 * i)));
        for v in edges
            .into_iter()
            .chain(nibbles)
            .chain((0..200_000).map(|_| rng.next()))
        {
            assert_eq!(lower16(v), *format!("{v:016x}").as_bytes(), "{v:#x}");
        }
    }

    use super::*;
    use crate::testing::Rng;

    /// Digit by digit (`char::to_digit`): the value of `2 * n` digits of `case`, or `None`.
    /// The readers this one replaced (`content::parse_md5`, `event::hex_bytes`,
    /// `pdq::parse_hex`, `wire_index::hex_bytes`) were held to it beside this one, over the
    /// texts below, before they were dropped.
    fn slow(text: &[u8], n: usize, case: Case) -> Option<Vec<u8>> {
        if text.len() != 2 * n {
            return None;
        }
        let digit = |c: u8| match case {
            Case::Lower if c.is_ascii_uppercase() => None,
            _ => (c as char).to_digit(16),
        };
        text.chunks_exact(2)
            .map(|p| Some((digit(p[0])? * 16 + digit(p[1])?) as u8))
            .collect()
    }

    /// A text to read: mostly digits of either case (so that many are hashes), of a
    /// length near a hash's, now and then any byte at any place.
    fn text(rng: &mut Rng) -> Vec<u8> {
        const DIGITS: &[u8] = b"0123456789abcdefABCDEF";
        let len = match rng.next() % 4 {
            0 => 32,
            1 => 64,
            _ => (rng.next() % 70) as usize,
        };
        let mut t: Vec<u8> = (0..len)
            .map(|_| DIGITS[(rng.next() % DIGITS.len() as u64) as usize])
            .collect();
        if rng.next() % 2 == 0 {
            t.make_ascii_lowercase();
        }
        if !t.is_empty() && rng.next() % 3 == 0 {
            for _ in 0..=rng.next() % 3 {
                let at = (rng.next() % t.len() as u64) as usize;
                t[at] = (rng.next() % 256) as u8;
            }
        }
        t
    }

    #[test]
    fn it_reads_as_digit_by_digit_over_any_text() {
        let mut rng = Rng(0x5eed_4e11);
        let (mut hashes, mut texts) = (0, 0);
        for _ in 0..200_000 {
            let t = text(&mut rng);
            texts += 1;
            assert_eq!(
                bytes::<16>(&t).map(Vec::from),
                slow(&t, 16, Case::Either),
                "{t:?}"
            );
            let pdq = bytes::<32>(&t);
            assert_eq!(pdq.map(Vec::from), slow(&t, 32, Case::Either), "{t:?}");
            hashes += usize::from(pdq.is_some());
            // the PDQ words, most significant first
            let words = pdq.map(|b| {
                std::array::from_fn(|i| {
                    b[8 * i..8 * i + 8]
                        .iter()
                        .fold(0_u64, |w, &x| w << 8 | u64::from(x))
                })
            });
            assert_eq!(crate::pdq::parse_hex(&t), words, "{t:?}");
            for n in [16, 32, t.len() / 2, 0] {
                for case in [Case::Either, Case::Lower] {
                    let mut out = vec![0xaa; n];
                    let ok = read(&t, &mut out, case);
                    assert_eq!(ok.then_some(out), slow(&t, n, case), "{t:?} {n} {case:?}");
                }
            }
            assert_eq!(is_hex(&t), t.iter().all(u8::is_ascii_hexdigit), "{t:?}");
            // the bits a caller reads (refused, uppercase) are the table's, whichever pass
            // answers (the parser keeps a text with no uppercase digit as it is)
            let read_bits = Case::Either.refused() | UPPER;
            for n in [16, 32, t.len() / 2] {
                let table = if t.len() == 2 * n {
                    t.iter().fold(0, |b, &x| b | HEX_DIGITS[usize::from(x)])
                } else {
                    NOT_HEX
                };
                let mut out = vec![0xaa; n];
                let bits = digits(&t, &mut out);
                assert_eq!(bits & read_bits, table & read_bits, "{t:?} {n}");
            }
        }
        // the texts reached both answers, often
        assert!(
            hashes > texts / 10 && hashes < texts / 2,
            "{hashes} of {texts}"
        );
    }

    #[test]
    fn every_byte_at_every_place_of_an_md5() {
        let either = *b"0123456789abcdefABCDEF0123456789";
        let lower = *b"0123456789abcdef0123456789abcdef";
        for b in 0..=255_u8 {
            for at in 0..32 {
                let mut t = either;
                t[at] = b;
                assert_eq!(
                    bytes::<16>(&t).map(Vec::from),
                    slow(&t, 16, Case::Either),
                    "{b} at {at}"
                );
                assert_eq!(bytes::<16>(&t).is_some(), b.is_ascii_hexdigit());
                let mut t = lower;
                t[at] = b;
                let mut out = [0_u8; 16];
                let want = b.is_ascii_hexdigit() && !b.is_ascii_uppercase();
                assert_eq!(read(&t, &mut out, Case::Lower), want, "{b} at {at}");
            }
        }
        assert_eq!(
            bytes::<16>(b"00112233445566778899aabbccddeeff"),
            Some(std::array::from_fn(|i| 0x11 * i as u8))
        );
        assert_eq!(bytes::<16>(&either[..31]), None);
        assert_eq!(bytes::<16>(b""), None);
    }
}
