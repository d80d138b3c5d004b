//! The index of unbanked content in its owner's resolve log, compact (`"U"`).
//!
//! The index's owner (resolve partition 0) logs every unbanked cluster a batch touched,
//! with its latest event time and the signals it took: more than a third of the whole
//! resolve log, and 4.5 times any other partition's log. The earlier form, `"u":
//! {cluster: [ts, [signal hex]]}`, cost 40 bytes a touch and about 136 a new upload's
//! cluster, built as Python dicts and tuples of hex text at every batch. This one is
//! written here, from the core's changes, with no Python object per cluster:
//!
//! ```text
//! "U": [[t0, [cluster, dt], [cluster, dt, [signal, ...]], ...], ...]
//! ```
//!
//! one array per part (each under the caller's size limit, so a large snapshot is cut
//! into log records), a part's event times as differences from its first (`t0`; `null`
//! for a cluster no longer in the idle order, `i64::MIN` in the core), and each MD5 or
//! PDQ as the standard base64 of its bytes, unpadded (22 or 43 characters, where hex
//! took 32 or 64); a video's frames (text starting with `[`) as they are. Clusters keep
//! the order they were given (the idle order: least recently touched first). What
//! restore needs is all there, and nothing else: `streams.wire.decode_delta` reads it
//! back into the same clusters, times and signals the earlier form gave.

use crate::content::{Cid, ClusterId, HeldSignal, SignalForm};
use crate::hex::{self, Case};
use crate::wire::write_str;

/// A cluster id as [`write_index`] takes it: what [`encoded_len`] counts for it (its
/// text's [`text_len`]), and its text written as a JSON string.
pub trait LogId {
    fn text_len(&self) -> usize;
    fn write(&self, out: &mut Vec<u8>);
}

impl LogId for str {
    fn text_len(&self) -> usize {
        text_len(self)
    }

    fn write(&self, out: &mut Vec<u8>) {
        write_str(out, self);
    }
}

impl LogId for ClusterId {
    fn text_len(&self) -> usize {
        match self {
            ClusterId::Hex(letter, _) if plain_letter(*letter) => 2 + HEX_ID_LEN,
            _ => self.with_str(text_len),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            ClusterId::Hex(letter, value) => write_hex_id(out, *letter, *value),
            ClusterId::Text(_) => self.with_str(|s| write_str(out, s)),
        }
    }
}

/// The length of a compact cluster id's text: a letter, a dash, 16 hex digits.
const HEX_ID_LEN: usize = 18;

/// Whether a compact id's letter is written as it is (ASCII, nothing to escape): then
/// the whole id is (a dash and hex digits), and its text need not be made and scanned.
fn plain_letter(letter: u8) -> bool {
    letter.is_ascii() && letter >= 0x20 && letter != b'"' && letter != b'\\'
}

/// A compact cluster id (`letter`, a dash and `value`'s 16 lowercase hex digits) as the
/// JSON string [`write_str`] writes of its text, from a buffer on the stack: every
/// cluster the index's owner logs and every post the posts' log maps (about 510,000 of
/// the one-worker benchmark's 300,000 events) made the text, then scanned it for what
/// to escape, where none of its bytes is.
fn write_hex_id(out: &mut Vec<u8>, letter: u8, value: u64) {
    if !plain_letter(letter) {
        return ClusterId::Hex(letter, value).with_str(|s| write_str(out, s));
    }
    let mut buf = [0_u8; HEX_ID_LEN + 2];
    buf[0] = b'"';
    buf[1] = letter;
    buf[2] = b'-';
    buf[3..=HEX_ID_LEN].copy_from_slice(&hex::lower16(value));
    buf[HEX_ID_LEN + 1] = b'"';
    out.extend_from_slice(&buf);
}

/// A cluster id the tables keep ([`Cid`]) as [`write_str`] writes its text (see
/// [`write_hex_id`]): the posts' log's clusters.
pub fn write_cid(out: &mut Vec<u8>, id: &Cid) {
    match id {
        Cid::Hex { letter, value, .. } => write_hex_id(out, *letter, *value),
        Cid::Text { text, .. } => write_str(out, text),
    }
}

/// A signal as [`write_index`] takes it: a text (a hash's hex, or a video's frames), or
/// a signal the index holds ([`HeldSignal`], written from its bytes: the same output).
pub trait LogSignal {
    /// What [`encoded_len`] counts for it: its text's length, quoted and escaped (a
    /// hash's hex text: 34 or 66).
    fn text_len(&self) -> usize;
    fn write(&self, out: &mut Vec<u8>);
}

/// A text is written as [`write_signal`] writes it: base64 if it is a hash's hex.
macro_rules! text_signal {
    ($($t:ty),*) => {$(
        impl LogSignal for $t {
            fn text_len(&self) -> usize {
                text_len(self)
            }

            fn write(&self, out: &mut Vec<u8>) {
                write_signal(out, self);
            }
        }
    )*};
}

text_signal!(str, &str, String, std::sync::Arc<str>);

impl LogSignal for HeldSignal {
    fn text_len(&self) -> usize {
        self.with_form(|f| match f {
            SignalForm::Hash(b) => 2 + 2 * b.len(),
            SignalForm::Text(t) => text_len(t),
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        // a hash's text is the lowercase hex of these bytes: what `write_signal` reads back
        self.with_form(|f| match f {
            SignalForm::Hash(b) => {
                out.push(b'"');
                push_b64(out, b);
                out.push(b'"');
            }
            SignalForm::Text(t) => write_signal(out, t),
        });
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `bytes` as standard base64, unpadded.
///
/// A block of up to 33 bytes (44 characters: a PDQ's 32 bytes are one block) at a time,
/// written into a buffer on the stack and added to `out` in one copy: every hash a held
/// event, a cluster log's event and the owner's index log write goes through here (about
/// 480,000 a one-worker benchmark's 300,000 events), and a `push` a character with a
/// fold a chunk was about 1,000 instructions a PDQ.
pub(crate) fn push_b64(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut buf = [0_u8; 44];
    for block in bytes.chunks(33) {
        let whole = block.chunks_exact(3);
        let rest = whole.remainder();
        let mut n = 0;
        for (c, o) in whole.zip(buf.chunks_exact_mut(4)) {
            let v = u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2]);
            o[0] = B64[(v >> 18) as usize];
            o[1] = B64[(v >> 12 & 63) as usize];
            o[2] = B64[(v >> 6 & 63) as usize];
            o[3] = B64[(v & 63) as usize];
            n += 4;
        }
        if !rest.is_empty() {
            let v = u32::from(rest[0]) << 16 | rest.get(1).map_or(0, |&b| u32::from(b) << 8);
            buf[n] = B64[(v >> 18) as usize];
            buf[n + 1] = B64[(v >> 12 & 63) as usize];
            n += 2;
            if rest.len() == 2 {
                buf[n] = B64[(v >> 6 & 63) as usize];
                n += 1;
            }
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// The bytes of `text` if it is an MD5's or a PDQ's hex (32 or 64 digits; either case,
/// or lowercase only if `lower`), and how many (16 or 32), on the stack: every hash a
/// held event or a cluster log entry writes goes through here (a `Vec` each before).
fn hex_bytes(text: &str, lower: bool) -> Option<([u8; 32], usize)> {
    let t = text.as_bytes();
    if t.len() != 32 && t.len() != 64 {
        return None;
    }
    let case = if lower { Case::Lower } else { Case::Either };
    let mut out = [0_u8; 32];
    let n = t.len() / 2;
    hex::read(t, &mut out[..n], case).then_some((out, n))
}

/// An MD5's or a PDQ's text as written in a held event (`crate::wire::write_held`): base64
/// of its bytes if it is lowercase hex (what the event parser makes of any hash, so that it
/// reads back the same text), else as it is.
pub(crate) fn write_hash(out: &mut Vec<u8>, text: &str) {
    write_b64_or_text(out, text, true);
}

/// A signal's text in the compact form: base64 of an MD5's or PDQ's bytes, else as it is
/// (a video's frames; anything else is written as it is and refused on reading, as the
/// earlier form's reader refused it).
fn write_signal(out: &mut Vec<u8>, text: &str) {
    write_b64_or_text(out, text, false);
}

/// [`write_hash`] and [`write_signal`]: base64 of the bytes if `text` is a hash's hex
/// (lowercase only, when `lower`), else the text as it is.
#[inline(always)]
fn write_b64_or_text(out: &mut Vec<u8>, text: &str, lower: bool) {
    match hex_bytes(text, lower) {
        Some((bytes, n)) => {
            out.push(b'"');
            push_b64(out, &bytes[..n]);
            out.push(b'"');
        }
        None => write_str(out, text),
    }
}

/// Clusters, as `(id, latest event time, signals)`, written as the parts of a `"U"`
/// (see the module doc), each at most `limit` bytes but for a cluster larger than that
/// alone; with the entries they hold as a state log's ledger counts them (a cluster
/// and each signal one). Nothing given: no part.
pub fn write_index<'a, I: LogId + ?Sized + 'a, S: LogSignal + 'a>(
    clusters: impl IntoIterator<Item = (&'a I, i64, &'a [S])>,
    limit: usize,
) -> (Vec<Vec<u8>>, usize) {
    let clusters = clusters.into_iter();
    let mut parts = Vec::new();
    let mut items = 0;
    // the first part made with room for every cluster given at about what one takes, up
    // to the limit: grown by doubling, each growth past mimalloc's bound was glibc's
    // realloc, a copy (15.5 M instructions of the owner's log at the benchmark's 300,000
    // events)
    let mut current: Vec<u8> = Vec::with_capacity(limit.min(clusters.size_hint().0 * ENTRY_BYTES));
    let mut t0 = 0_i64;
    for (id, last, signals) in clusters {
        items += 1 + signals.len();
        // a new part past the limit, or for a time too far from this part's first
        let far = last != i64::MIN && last.checked_sub(t0).is_none();
        if !current.is_empty() && (far || current.len() + 2 + encoded_len(id, signals) > limit) {
            finish(&mut parts, &mut current);
        }
        if current.is_empty() {
            t0 = if last == i64::MIN { 0 } else { last };
            current.push(b'[');
            crate::wire::write_int(&mut current, t0);
        }
        // written straight into the part (the cut is judged above, by the estimate)
        current.extend_from_slice(b",[");
        id.write(&mut current);
        current.push(b',');
        match last {
            i64::MIN => current.extend_from_slice(b"null"),
            _ => crate::wire::write_int(&mut current, last - t0),
        }
        if !signals.is_empty() {
            current.extend_from_slice(b",[");
            for (i, s) in signals.iter().enumerate() {
                if i > 0 {
                    current.push(b',');
                }
                s.write(&mut current);
            }
            current.push(b']');
        }
        current.push(b']');
    }
    finish(&mut parts, &mut current);
    (parts, items)
}

/// About what a cluster's entry takes in the owner's log, on average (58 bytes over the
/// one-worker benchmark's 216,963, signals and all): the room a part is made with.
const ENTRY_BYTES: usize = 64;

/// About what a cluster's entry takes (enough to cut parts before they pass the limit:
/// a time's difference is at most 20 characters).
fn encoded_len<I: LogId + ?Sized, S: LogSignal>(id: &I, signals: &[S]) -> usize {
    2 + id.text_len() + 21 + 2 + signals.iter().map(|s| s.text_len() + 1).sum::<usize>()
}

/// About what `s` takes written as a JSON string (quoted; each byte to escape counted as
/// its longest escape).
fn text_len(s: &str) -> usize {
    2 + s.len()
        + s.bytes()
            .filter(|&b| b < 0x20 || b == b'"' || b == b'\\')
            .count()
            * 5
}

fn finish(parts: &mut Vec<Vec<u8>>, current: &mut Vec<u8>) {
    if !current.is_empty() {
        current.push(b']');
        parts.push(std::mem::take(current));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_read_by_table_as_to_digit_reads_it() {
        let slow = |t: &str, lower: bool| -> Option<Vec<u8>> {
            if t.len() != 32 && t.len() != 64 {
                return None;
            }
            if lower
                && !t
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return None;
            }
            t.as_bytes()
                .chunks_exact(2)
                .map(|p| {
                    Some(((p[0] as char).to_digit(16)? * 16 + (p[1] as char).to_digit(16)?) as u8)
                })
                .collect()
        };
        let mut texts = vec![
            "0".repeat(32),
            "f".repeat(64),
            "F".repeat(64),
            "ab".repeat(15),
        ];
        for b in 0..=255_u8 {
            for at in [0, 1, 31] {
                let mut t = b"0123456789abcdefABCDEF0123456789".to_vec();
                t[at] = b;
                if let Ok(t) = String::from_utf8(t) {
                    texts.push(t);
                }
            }
        }
        for t in &texts {
            for lower in [false, true] {
                let fast = hex_bytes(t, lower).map(|(b, n)| b[..n].to_vec());
                assert_eq!(fast, slow(t, lower), "{t:?} {lower}");
            }
        }
    }

    /// The per-chunk writer [`push_b64`] replaced (a `push` a character).
    fn b64_by_chunk(out: &mut Vec<u8>, bytes: &[u8]) {
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0_u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize]);
            }
        }
    }

    #[test]
    fn base64_by_blocks_is_the_per_chunk_writers_at_every_length() {
        let mut rng = crate::testing::Rng(7);
        for len in 0..=100 {
            for _ in 0..20 {
                let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                let (mut fast, mut slow) = (b"x".to_vec(), b"x".to_vec());
                push_b64(&mut fast, &bytes);
                b64_by_chunk(&mut slow, &bytes);
                assert_eq!(fast, slow, "{bytes:?}");
            }
        }
    }

    #[test]
    fn base64_as_the_standard_writes_it_unpadded() {
        for (bytes, want) in [
            (&b""[..], ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg"),
            (b"\xff\xfe\xfd\x00", "//79AA"),
        ] {
            let mut out = Vec::new();
            push_b64(&mut out, bytes);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    #[test]
    fn clusters_in_order_times_from_the_first_signals_in_base64() {
        let md5 = "0".repeat(30) + "Ff";
        let pdq = "a".repeat(64);
        let took = [md5.as_str(), pdq.as_str(), "[\"v\"]"];
        let none: [&str; 0] = [];
        let (parts, items) = write_index(
            [
                ("u-1", 1_000, &took[..]),
                ("u-0", 400, &none[..]),
                ("u-2", i64::MIN, &none[..]),
            ],
            usize::MAX,
        );
        assert_eq!(items, 6);
        let b64_pdq = "qqqq".repeat(10) + "qqo";
        assert_eq!(
            parts,
            vec![format!(
                "[1000,[\"u-1\",0,[\"AAAAAAAAAAAAAAAAAAAA/w\",\"{b64_pdq}\",\"[\\\"v\\\"]\"]],\
                 [\"u-0\",-600],[\"u-2\",null]]"
            )
            .into_bytes()]
        );
        assert!(write_index(std::iter::empty::<(&str, i64, &[&str])>(), 10)
            .0
            .is_empty());
    }

    #[test]
    fn a_compact_id_is_written_and_counted_as_its_text() {
        let mut rng = crate::testing::Rng(5);
        let mut values: Vec<u64> = (0..200).map(|_| rng.next()).collect();
        values.extend([0, u64::MAX, 0x0123_4567_89ab_cdef]);
        for letter in (0..=255_u8).filter(u8::is_ascii) {
            for &v in &values {
                let id = ClusterId::Hex(letter, v);
                let mut want = Vec::new();
                id.with_str(|s| write_str(&mut want, s));
                let (mut got, mut cid) = (b"x".to_vec(), b"x".to_vec());
                LogId::write(&id, &mut got);
                write_cid(&mut cid, &Cid::from_id(id.clone()));
                assert_eq!(&got[1..], &want[..], "{letter} {v:x}");
                assert_eq!(cid, got);
                assert_eq!(LogId::text_len(&id), id.with_str(text_len), "{letter}");
            }
        }
        let text = ClusterId::of("b-not \"hex\"");
        let mut got = Vec::new();
        LogId::write(&text, &mut got);
        assert_eq!(got, br#""b-not \"hex\"""#.to_vec());
        let mut cid = Vec::new();
        write_cid(&mut cid, &Cid::from_id(text.clone()));
        assert_eq!(cid, got);
        assert_eq!(LogId::text_len(&text), text_len("b-not \"hex\""));
    }

    /// The writer the in-place one replaced: each cluster's entry written aside, then
    /// copied into the part, its id's text made twice (counted, then written).
    fn write_index_aside(
        clusters: &[(ClusterId, i64, Vec<&str>)],
        limit: usize,
    ) -> (Vec<Vec<u8>>, usize) {
        let mut parts = Vec::new();
        let mut items = 0;
        let mut current: Vec<u8> = Vec::new();
        let mut t0 = 0_i64;
        let mut entry: Vec<u8> = Vec::new();
        for (id, last, signals) in clusters {
            let last = *last;
            items += 1 + signals.len();
            let far = last != i64::MIN && last.checked_sub(t0).is_none();
            let len = 2
                + id.with_str(text_len)
                + 21
                + 2
                + signals.iter().map(|s| text_len(s) + 1).sum::<usize>();
            if !current.is_empty() && (far || current.len() + 2 + len > limit) {
                finish(&mut parts, &mut current);
            }
            if current.is_empty() {
                t0 = if last == i64::MIN { 0 } else { last };
                current.push(b'[');
                crate::wire::write_int(&mut current, t0);
            }
            let dt = (last != i64::MIN).then(|| last - t0);
            entry.clear();
            entry.push(b'[');
            id.with_str(|id| write_str(&mut entry, id));
            entry.push(b',');
            match dt {
                Some(d) => crate::wire::write_int(&mut entry, d),
                None => entry.extend_from_slice(b"null"),
            }
            if !signals.is_empty() {
                entry.extend_from_slice(b",[");
                for (i, s) in signals.iter().enumerate() {
                    if i > 0 {
                        entry.push(b',');
                    }
                    write_signal(&mut entry, s);
                }
                entry.push(b']');
            }
            entry.push(b']');
            current.push(b',');
            current.extend_from_slice(&entry);
        }
        finish(&mut parts, &mut current);
        (parts, items)
    }

    #[test]
    fn written_in_place_the_parts_are_the_aside_writers_at_every_limit() {
        let mut rng = crate::testing::Rng(9);
        let md5 = "0123456789abcdef".repeat(2);
        let pdq = "fedcba9876543210".repeat(4);
        let signals = [md5.as_str(), pdq.as_str(), "[\"frame\"]"];
        let clusters: Vec<(ClusterId, i64, Vec<&str>)> = (0..400)
            .map(|i| {
                let id = match i % 5 {
                    0 => ClusterId::of(&format!("u-text-{i}")),
                    _ => ClusterId::Hex(b"ub"[i % 2], rng.next()),
                };
                let last = match i % 7 {
                    0 => i64::MIN,
                    1 => i64::MAX - i as i64,
                    _ => 1_767_225_600_000 + (rng.next() % 100_000) as i64,
                };
                let took = signals[..(rng.next() % 4) as usize].to_vec();
                (id, last, took)
            })
            .collect();
        for limit in [1, 50, 64, 100, 250, 1_000, 4_096, usize::MAX] {
            let got = write_index(clusters.iter().map(|(c, t, s)| (c, *t, &s[..])), limit);
            assert_eq!(got, write_index_aside(&clusters, limit), "{limit}");
        }
    }

    #[test]
    fn parts_stay_under_the_limit_and_a_far_time_starts_a_part() {
        let none: [&str; 0] = [];
        let ids: Vec<String> = (0..50).map(|i| format!("u-{i:016x}")).collect();
        let (parts, items) = write_index(
            ids.iter()
                .enumerate()
                .map(|(i, c)| (c.as_str(), 5 + i as i64, &none[..])),
            200,
        );
        assert_eq!(items, 50);
        assert!(parts.len() > 5 && parts.iter().all(|p| p.len() <= 200));
        let (parts, _) = write_index([("a", i64::MAX, &none[..]), ("b", -5, &none[..])], 1000);
        assert_eq!(
            parts,
            vec![
                format!("[{},[\"a\",0]]", i64::MAX).into_bytes(),
                b"[-5,[\"b\",0]]".to_vec()
            ]
        );
    }
}
