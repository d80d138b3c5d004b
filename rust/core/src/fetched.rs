//! A fetched partition's records (Kafka's record batches, magic 2, uncompressed), read as a
//! consumer reading uncommitted records reads them: where each record's value is in the
//! fetched bytes, its offset and timestamp, and where the partition's next fetch stands.
//!
//! Why: the ``shares`` reader's consumer listed each record batch with aiokafka's Cython
//! (a record object, its value copied into a ``bytes``, its headers' list), then made a
//! list of the values and one of their partitions: about 0.3 us an event of a worker's
//! main thread (the twenty-third session's count) for values the parse then reads once.
//! Here the records are spans of the fetched bytes, handed to the parse as they are.
//!
//! What is read is exactly what aiokafka's loop gives a consumer reading uncommitted
//! records (`aiokafka.consumer.fetcher.PartitionRecords._unpack_records` and its Cython
//! record batch): control batches skipped, records below the fetch offset skipped, the
//! CRC-32C checked, a partial batch at the end left for the next fetch, the next fetch
//! offset each batch's next offset once it is all taken. Anything else (a batch of another
//! magic, a compressed one, a CRC that does not hold, bytes that are not a well-formed
//! batch, a field past what the checks here can vouch for) is not read here at all:
//! [`read`] says why ([`Unread`]), and the caller leaves the whole fetch to aiokafka's own
//! loop, which decompresses, or refuses with its own error, as before.
//!
//! Layout: Kafka's `DefaultRecordBatch`, as `crate::record_batch` writes it (its header's
//! fields are placed there, for the writer and this reader alike).

use crate::record_batch::{
    crc32c, ATTRIBUTES_AT, CODEC_MASK, CONTROL, COUNT_AT, CRC_AT, FIRST_TS_AT, HEADER_BYTES,
    LAST_DELTA_AT, LENGTH_AT, LOG_APPEND_TIME, LOG_OVERHEAD, MAGIC_AT, MAX_TS_AT,
};

/// One record read: its offset and timestamp (the batch's max timestamp where the batch
/// says log append time), the next fetch offset once it is taken (its offset + 1, or its
/// batch's next offset when it is the last record of its batch), where it starts in the
/// fetched bytes (its length varint) and where its value is (`value_len` -1: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub timestamp: i64,
    pub next: i64,
    pub at: u32,
    pub value_at: u32,
    pub value_len: i32,
    pub log_append_time: bool,
}

impl Record {
    /// The record's value in the fetched bytes `raw` (``None``: a null value).
    pub fn value<'a>(&self, raw: &'a [u8]) -> Option<&'a [u8]> {
        let at = self.value_at as usize;
        (self.value_len >= 0).then(|| &raw[at..at + self.value_len as usize])
    }
}

/// A fetched partition read: its records from the fetch offset on, and the next fetch
/// offset once all are taken (past the control batches and emptied batches after them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fetched {
    pub records: Vec<Record>,
    pub end: i64,
}

impl Fetched {
    /// The next fetch offset once the first `taken` records are taken (aiokafka's
    /// ``next_fetch_offset``): the fetch offset before any, the last one's next after.
    pub fn next_after(&self, taken: usize, fetch_offset: i64) -> i64 {
        if taken >= self.records.len() {
            self.end
        } else if taken == 0 {
            fetch_offset
        } else {
            self.records[taken - 1].next
        }
    }
}

/// Why a fetch is not read here (aiokafka's loop reads it, or refuses it, instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unread {
    /// a batch of magic 0 or 1 (a legacy message set)
    OldMagic,
    /// a compressed batch
    Compressed,
    /// a batch whose bytes do not hold its CRC-32C
    Crc,
    /// bytes that are not a well-formed record batch (what is wrong)
    Malformed(&'static str),
}

impl Unread {
    /// A short name, for a count and a log line.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::OldMagic => "old_magic",
            Self::Compressed => "compressed",
            Self::Crc => "crc",
            Self::Malformed(_) => "malformed",
        }
    }

    /// What was found, said in words.
    pub fn detail(&self) -> &'static str {
        match self {
            Self::OldMagic => "a record batch of magic 0 or 1",
            Self::Compressed => "a compressed record batch",
            Self::Crc => "a record batch whose CRC-32C does not hold",
            Self::Malformed(what) => what,
        }
    }
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// A zigzag varint at `*pos` of `b`, `*pos` moved past it; at most ten bytes, the tenth
/// holding the 64th bit alone (a longer or wider one is not read here: readers differ).
#[inline(always)]
fn varint(b: &[u8], pos: &mut usize) -> Result<i64, Unread> {
    // most of a record's varints are one byte (its attributes, its first deltas, a null
    // key, no headers)
    if let Some(&byte) = b.get(*pos) {
        if byte < 0x80 {
            *pos += 1;
            return Ok(i64::from(byte >> 1) ^ -i64::from(byte & 1));
        }
    }
    varint_long(b, pos)
}

/// [`varint`] of two bytes or more.
#[inline(never)]
fn varint_long(b: &[u8], pos: &mut usize) -> Result<i64, Unread> {
    let mut z: u64 = 0;
    for i in 0..10 {
        let Some(&byte) = b.get(*pos) else {
            return Err(Unread::Malformed("a record's varint runs past its batch"));
        };
        *pos += 1;
        if i == 9 && byte > 1 {
            break;
        }
        z |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    Err(Unread::Malformed(
        "a record's varint is longer than 64 bits",
    ))
}

/// A length-prefixed field at `*pos` (-1: null), `*pos` moved past it; its start and length.
#[inline]
fn field(b: &[u8], pos: &mut usize) -> Result<(usize, i64), Unread> {
    let len = varint(b, pos)?;
    let at = *pos;
    if len > 0 {
        let end = usize::try_from(len)
            .ok()
            .and_then(|n| at.checked_add(n))
            .filter(|&end| end <= b.len())
            .ok_or(Unread::Malformed("a record's field runs past its batch"))?;
        *pos = end;
    }
    Ok((at, len))
}

/// A record's fields as its bytes hold them: the deltas, and where its key and value are
/// (their start and length, -1 null).
struct Parts {
    ts_delta: i64,
    offset_delta: i64,
    key: (usize, i64),
    value: (usize, i64),
}

/// The record at `*pos` of `raw` (its batch's end), `*pos` moved past it; each header handed
/// to `header` (its key, UTF-8 as aiokafka decodes it, and its value). Every length checked
/// against what it holds, as aiokafka's Cython checks them.
fn record<'a>(
    raw: &'a [u8],
    pos: &mut usize,
    mut header: impl FnMut(&'a str, Option<&'a [u8]>),
) -> Result<Parts, Unread> {
    let length = varint(raw, pos)?;
    let body = *pos;
    let _attributes = varint(raw, pos)?;
    let ts_delta = varint(raw, pos)?;
    let offset_delta = varint(raw, pos)?;
    let key = field(raw, pos)?;
    let value = field(raw, pos)?;
    let headers = varint(raw, pos)?;
    if headers < 0 {
        return Err(Unread::Malformed(
            "a record with a negative number of headers",
        ));
    }
    for _ in 0..headers {
        let (key_at, key_len) = field(raw, pos)?;
        let Some(name) = usize::try_from(key_len)
            .ok()
            .and_then(|n| std::str::from_utf8(&raw[key_at..key_at + n]).ok())
        else {
            return Err(Unread::Malformed(
                "a record header's key is null or not UTF-8",
            ));
        };
        let (value_at, value_len) = field(raw, pos)?;
        header(name, span(raw, value_at, value_len));
    }
    if i64::try_from(*pos - body).ok() != Some(length) {
        return Err(Unread::Malformed("a record's length is not what it holds"));
    }
    Ok(Parts {
        ts_delta,
        offset_delta,
        key,
        value,
    })
}

/// A field's bytes from its start and length (``None``: a negative length, null).
fn span(raw: &[u8], at: usize, len: i64) -> Option<&[u8]> {
    usize::try_from(len)
        .ok()
        .and_then(|n| raw.get(at..at.checked_add(n)?))
}

/// A record's key, value and headers (as aiokafka's record holds them).
pub type Fields<'a> = (
    Option<&'a [u8]>,
    Option<&'a [u8]>,
    Vec<(&'a str, Option<&'a [u8]>)>,
);

/// The key, value and headers of the record at `at` of `raw` (a record [`read`] gave).
pub fn fields(raw: &[u8], at: usize) -> Result<Fields<'_>, Unread> {
    let mut headers = Vec::new();
    let mut pos = at;
    let r = record(raw, &mut pos, |k, v| headers.push((k, v)))?;
    Ok((
        span(raw, r.key.0, r.key.1),
        span(raw, r.value.0, r.value.1),
        headers,
    ))
}

/// Read the fetched bytes `raw` of a partition fetched from `fetch_offset` (see the module
/// doc); `check_crcs`: whether each batch's CRC-32C is checked (the consumer's setting).
pub fn read(raw: &[u8], fetch_offset: i64, check_crcs: bool) -> Result<Fetched, Unread> {
    if u32::try_from(raw.len()).is_err() {
        return Err(Unread::Malformed("a fetch of 4 GiB or more"));
    }
    let mut out = Fetched {
        records: Vec::with_capacity(room(raw)),
        end: fetch_offset,
    };
    let mut pos = 0;
    // complete batches only: a partial one at the end is the next fetch's (aiokafka's
    // MemoryRecords stops there too)
    while raw.len() - pos >= LOG_OVERHEAD {
        let length = be_i32(raw, pos + LENGTH_AT);
        let Ok(length) = usize::try_from(length) else {
            return Err(Unread::Malformed("a record batch of a negative length"));
        };
        if length < HEADER_BYTES - LOG_OVERHEAD {
            return Err(Unread::Malformed("a record batch shorter than its header"));
        }
        let Some(end) = (pos + LOG_OVERHEAD)
            .checked_add(length)
            .filter(|&e| e <= raw.len())
        else {
            break;
        };
        read_batch(&raw[..end], pos, check_crcs, &mut out)?;
        pos = end;
    }
    Ok(out)
}

/// The least bytes a record takes: its length, attributes, timestamp and offset deltas,
/// key and value lengths and headers' count, a varint byte each.
const RECORD_BYTES: usize = 7;

/// Room for the records of `raw`'s whole batches, read from their headers before any
/// record: each batch's count (at most what its bytes could hold), summed. Why: the
/// records' vector was made for a record in 256 bytes, and a worker's (about 200 bytes
/// each) outgrew it in each fetch: a reallocation of some 130 KB, copied (82 instructions
/// a record counted, a worker's ingest; valgrind counts a `rep movsb` byte by byte). A
/// batch read no further than its header here (a bad one, a partial one at the end) adds
/// what its header says, or nothing: the room is a size, never what is read.
fn room(raw: &[u8]) -> usize {
    let (mut pos, mut n) = (0, 0);
    while raw.len() - pos >= HEADER_BYTES {
        let length = usize::try_from(be_i32(raw, pos + LENGTH_AT)).unwrap_or(0);
        let count = usize::try_from(be_i32(raw, pos + COUNT_AT)).unwrap_or(0);
        n += count.min(length.min(raw.len() - pos) / RECORD_BYTES);
        pos = match (pos + LOG_OVERHEAD).checked_add(length) {
            Some(end) if end > pos + LOG_OVERHEAD && end <= raw.len() => end,
            _ => break,
        };
    }
    n
}

/// The record batch at `start` of `raw`, for a reader that lists a fetch's batches itself
/// (where `read` leaves a fetch to aiokafka: `streams.runtime.faust_adapter`'s bare
/// records): where it ends (after its offset and length fields, `length` bytes: where the
/// next batch starts), and whether it is a magic-2 batch lying whole in `raw` whose
/// CRC-32C holds (`false` also where that is not known here: the caller's own check then
/// decides). `None` where `raw` has no batch length at `start`.
pub fn batch_at(raw: &[u8], start: usize) -> Option<(usize, bool)> {
    let after_length = start
        .checked_add(LOG_OVERHEAD)
        .filter(|&e| e <= raw.len())?;
    let length = u32::from_be_bytes(raw[start + LENGTH_AT..after_length].try_into().ok()?);
    let end = after_length + length as usize;
    let holds = end <= raw.len()
        && end >= start + ATTRIBUTES_AT
        && raw[start + MAGIC_AT] == 2
        && crc_holds(&raw[start..end]);
    Some((end, holds))
}

/// Whether the batch `b` (its bytes, from its base offset to its end, at least to its
/// attributes) holds the CRC-32C its header says: [`batch_at`]'s test and [`read_batch`]'s.
fn crc_holds(b: &[u8]) -> bool {
    let stored = u32::from_be_bytes(b[CRC_AT..ATTRIBUTES_AT].try_into().expect("4 bytes"));
    crc32c(&b[ATTRIBUTES_AT..]) == stored
}

/// The batch at `start` of `raw` (which ends where the batch does) into `out`.
fn read_batch(raw: &[u8], start: usize, check_crcs: bool, out: &mut Fetched) -> Result<(), Unread> {
    let b = &raw[start..];
    if b[MAGIC_AT] != 2 {
        return Err(Unread::OldMagic);
    }
    if check_crcs && !crc_holds(b) {
        return Err(Unread::Crc);
    }
    let attributes = i16::from_be_bytes(b[ATTRIBUTES_AT..LAST_DELTA_AT].try_into().expect("2"));
    let base = be_i64(b, 0);
    let next_offset = base
        .checked_add(i64::from(be_i32(b, LAST_DELTA_AT)))
        .and_then(|o| o.checked_add(1))
        .ok_or(Unread::Malformed("a record batch's offsets overflow"))?;
    if next_offset < out.end {
        // (a broker answers a fetch with the batches whose last offset is at or past it)
        return Err(Unread::Malformed(
            "a record batch ending before the fetch offset",
        ));
    }
    if attributes & CONTROL != 0 {
        out.end = next_offset;
        return Ok(());
    }
    if attributes & CODEC_MASK != 0 {
        return Err(Unread::Compressed);
    }
    let log_append_time = attributes & LOG_APPEND_TIME != 0;
    let first_ts = be_i64(b, FIRST_TS_AT);
    let max_ts = be_i64(b, MAX_TS_AT);
    let count = be_i32(b, COUNT_AT);
    let kept_from = out.records.len();
    let floor = out.end;
    let mut last: Option<i64> = None;
    let mut pos = start + HEADER_BYTES;
    for _ in 0..count.max(0) {
        let at = pos;
        let r = record(raw, &mut pos, |_, _| {})?;
        let timestamp = if log_append_time {
            max_ts
        } else {
            first_ts
                .checked_add(r.ts_delta)
                .ok_or(Unread::Malformed("a record's timestamp overflows"))?
        };
        let offset = base
            .checked_add(r.offset_delta)
            .ok_or(Unread::Malformed("a record's offset overflows"))?;
        let (value_at, value_len) = r.value;
        let value_len = i32::try_from(value_len)
            .map_err(|_| Unread::Malformed("a record's value of 2 GiB or more"))?;
        // aiokafka skips a record below the next fetch offset as it stands at that record,
        // the bare records below it as it stood at the batch: the same while a batch's
        // offsets increase, as a broker writes them
        if last.is_some_and(|l| offset <= l) {
            return Err(Unread::Malformed(
                "a record batch's offsets do not increase",
            ));
        }
        if offset >= next_offset {
            return Err(Unread::Malformed("a record past its batch's last offset"));
        }
        last = Some(offset);
        if offset < floor {
            continue; // below the fetch offset (the batch holding it begins before)
        }
        out.records.push(Record {
            offset,
            timestamp,
            next: offset
                .checked_add(1)
                .ok_or(Unread::Malformed("a record's offset overflows"))?,
            at: at as u32,
            value_at: value_at as u32,
            value_len: value_len.max(-1),
            log_append_time,
        });
    }
    if pos != raw.len() {
        return Err(Unread::Malformed(
            "bytes left in a record batch after its records",
        ));
    }
    if let Some(last) = out.records[kept_from..].last_mut() {
        last.next = next_offset;
    }
    out.end = next_offset;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_batch::RecordBatch;
    use crate::testing::Rng;

    const T0: i64 = 1_767_225_600_000;

    /// A batch of `values` from offset `base` (the broker's base offset written in).
    fn batch(base: i64, values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = RecordBatch::new(1 << 20, false);
        for (i, v) in values.iter().enumerate() {
            b.append(i as i32, T0 + base + i as i64, None, *v, &[])
                .expect("fits");
        }
        let mut out = b.to_vec();
        out[..8].copy_from_slice(&base.to_be_bytes());
        out
    }

    /// Batches of `sizes` records from `base`, record `n`'s value ``v<n>``.
    fn batches(sizes: &[usize], base: i64) -> Vec<u8> {
        let (mut raw, mut at) = (Vec::new(), base);
        for &n in sizes {
            let values: Vec<Vec<u8>> = (at..at + n as i64)
                .map(|o| format!("v{o}").into_bytes())
                .collect();
            let refs: Vec<Option<&[u8]>> = values.iter().map(|v| Some(v.as_slice())).collect();
            raw.extend(batch(at, &refs));
            at += n as i64;
        }
        raw
    }

    /// `b` with its attributes set to `attributes` and its CRC written again.
    fn with_attributes(mut b: Vec<u8>, attributes: i16) -> Vec<u8> {
        b[ATTRIBUTES_AT..LAST_DELTA_AT].copy_from_slice(&attributes.to_be_bytes());
        let crc = crc32c(&b[ATTRIBUTES_AT..]);
        b[CRC_AT..ATTRIBUTES_AT].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn values(raw: &[u8], f: &Fetched) -> Vec<Option<Vec<u8>>> {
        f.records
            .iter()
            .map(|r| r.value(raw).map(<[u8]>::to_vec))
            .collect()
    }

    #[test]
    fn batches_read_as_a_consumer_reads_them() {
        let raw = batches(&[3, 1, 4], 40);
        let f = read(&raw, 40, true).expect("read");
        let offsets: Vec<i64> = f.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (40..48).collect::<Vec<_>>());
        assert_eq!(values(&raw, &f)[4], Some(b"v44".to_vec()));
        assert!(f.records.iter().all(|r| r.timestamp == T0 + r.offset));
        // the next fetch offset: a record's + 1, a batch's next offset after its last
        let next: Vec<i64> = f.records.iter().map(|r| r.next).collect();
        assert_eq!(next, [41, 42, 43, 44, 45, 46, 47, 48]);
        assert_eq!(
            (f.end, f.next_after(0, 40), f.next_after(2, 40)),
            (48, 40, 42)
        );
        assert_eq!(f.next_after(8, 40), 48);
        // each record's start: its length varint
        // (length 9: attributes, the two deltas, a null key, the value's length and 3
        // bytes, no headers; zigzag 18)
        let r = f.records[1];
        assert_eq!((raw[r.at as usize], r.value_at - r.at), (18, 6));
    }

    #[test]
    fn the_records_room_is_what_the_whole_batches_hold() {
        // records of 3 to 300 bytes: the room their batches' counts say, never grown
        for len in [3, 40, 300] {
            let value = vec![b'x'; len];
            let mut raw = Vec::new();
            for (base, n) in [(0, 5), (5, 40), (45, 1)] {
                raw.extend(batch(base, &vec![Some(&value[..]); n]));
            }
            let whole = raw.len();
            let f = read(&raw, 0, true).expect("read");
            assert_eq!((f.records.len(), f.records.capacity()), (46, 46), "{len}");
            // a partial last batch adds what its header says, its records left unread
            raw.extend(&batch(46, &[Some(&value[..]); 9])[..HEADER_BYTES + 4]);
            let f = read(&raw, 0, true).expect("read");
            assert_eq!((f.records.len(), f.records.capacity()), (46, 55), "{len}");
            // and a header whose count is past what its bytes hold, no more than those
            raw.truncate(whole);
            let mut b = batch(46, &[Some(&value[..])]);
            b[COUNT_AT..COUNT_AT + 4].copy_from_slice(&i32::MAX.to_be_bytes());
            let bytes = b.len() - LOG_OVERHEAD;
            raw.extend(b);
            assert_eq!(room(&raw), 46 + bytes / RECORD_BYTES, "{len}");
        }
    }

    #[test]
    fn records_below_the_fetch_offset_are_skipped_and_a_partial_batch_left() {
        let raw = batches(&[4, 3], 10);
        let f = read(&raw, 12, true).expect("read");
        assert_eq!(f.records.first().map(|r| r.offset), Some(12));
        assert_eq!((f.records.len(), f.end), (5, 17));
        let cut = &raw[..raw.len() - 5]; // the second batch not all fetched
        let f = read(cut, 10, true).expect("read");
        assert_eq!((f.records.len(), f.end), (4, 14));
        let f = read(&raw[..11], 10, true).expect("read"); // not even a batch's length
        assert_eq!((f.records.len(), f.end), (0, 10));
    }

    #[test]
    fn control_batches_are_skipped_null_values_kept_and_log_append_time_read() {
        let mut raw = with_attributes(batch(5, &[Some(b"commit marker")]), CONTROL);
        raw.extend(batch(6, &[None, Some(b"")]));
        raw.extend(with_attributes(batch(8, &[Some(b"x")]), LOG_APPEND_TIME));
        let f = read(&raw, 5, true).expect("read");
        assert_eq!(
            values(&raw, &f),
            [None, Some(Vec::new()), Some(b"x".to_vec())]
        );
        assert_eq!(f.records[0].offset, 6);
        assert!(f.records[2].log_append_time);
        assert_eq!(f.records[2].timestamp, T0 + 8); // the batch's max timestamp
        let only = with_attributes(batch(5, &[Some(b"m")]), CONTROL);
        let f = read(&only, 5, true).expect("read");
        assert_eq!((f.records.len(), f.end), (0, 6));
    }

    #[test]
    fn a_record_s_key_value_and_headers_read_again_where_it_starts() {
        let mut b = RecordBatch::new(1 << 20, false);
        b.append(
            0,
            T0,
            Some(b"k"),
            Some(b"v"),
            &[(b"h", Some(b"x")), (b"n", None)],
        )
        .expect("fits");
        b.append(1, T0, None, None, &[]).expect("fits");
        let raw = b.to_vec();
        let f = read(&raw, 0, true).expect("read");
        let got = fields(&raw, f.records[0].at as usize).expect("fields");
        let want: Fields<'_> = (Some(b"k"), Some(b"v"), vec![("h", Some(b"x")), ("n", None)]);
        assert_eq!(got, want);
        assert_eq!(
            fields(&raw, f.records[1].at as usize),
            Ok((None, None, vec![]))
        );
        assert!(fields(&raw, raw.len()).is_err());
        let mut bad = RecordBatch::new(1 << 20, false);
        bad.append(0, T0, None, Some(b"v"), &[(b"\xff", None)])
            .expect("fits");
        assert!(matches!(
            read(&bad.to_vec(), 0, true),
            Err(Unread::Malformed(_))
        ));
    }

    #[test]
    fn what_is_not_read_here_says_why() {
        let raw = batches(&[2, 2], 0);
        let gzip = with_attributes(batch(0, &[Some(b"a")]), 1);
        assert_eq!(read(&gzip, 0, true), Err(Unread::Compressed));
        let mut old = raw.clone();
        old[MAGIC_AT] = 1;
        assert_eq!(read(&old, 0, true), Err(Unread::OldMagic));
        let mut bad = raw.clone();
        let n = bad.len();
        bad[n - 2] ^= 1; // the last value's last byte
        assert_eq!(read(&bad, 0, true), Err(Unread::Crc));
        assert_eq!(read(&bad, 0, false).map(|f| f.records.len()), Ok(4));
        let mut short = raw.clone();
        short[LENGTH_AT..LOG_OVERHEAD].copy_from_slice(&20_i32.to_be_bytes());
        assert!(matches!(read(&short, 0, true), Err(Unread::Malformed(_))));
        for u in [Unread::OldMagic, Unread::Compressed, Unread::Crc] {
            assert!(!u.reason().is_empty() && !u.detail().is_empty());
        }
    }

    #[test]
    fn a_batch_s_end_and_crc_told_where_it_lies() {
        let raw = batches(&[3, 4], 7);
        let first = batch_at(&raw, 0).expect("a batch");
        assert!(first.1);
        assert_eq!(batch_at(&raw, first.0), Some((raw.len(), true)));
        assert_eq!(batch_at(&raw, raw.len()), None);
        assert_eq!(batch_at(&raw, raw.len() - 5), None);
        let mut bad = raw.clone();
        let last = bad.len() - 2;
        bad[last] ^= 1; // a value's byte: the CRC no longer holds
        assert_eq!(batch_at(&bad, first.0), Some((raw.len(), false)));
        assert_eq!(batch_at(&bad, 0), Some((first.0, true)));
        // cut short: its end told, its CRC not known here
        assert_eq!(
            batch_at(&raw[..raw.len() - 1], first.0),
            Some((raw.len(), false))
        );
        let mut old = raw.clone();
        old[MAGIC_AT] = 1;
        assert_eq!(batch_at(&old, 0), Some((first.0, false)));
    }

    #[test]
    fn any_bytes_read_or_refused_never_a_panic() {
        let raw = batches(&[3, 5, 2], 100);
        let mut rng = Rng(0x5EED_F00D);
        for _ in 0..20_000 {
            let mut b = raw.clone();
            let flips = 1 + rng.next() % 4;
            for _ in 0..flips {
                let at = (rng.next() % b.len() as u64) as usize;
                b[at] = rng.next() as u8;
            }
            let cut = (rng.next() % (b.len() as u64 + 1)) as usize;
            let _ = batch_at(&b[..cut], (rng.next() % (cut as u64 + 1)) as usize);
            for check in [true, false] {
                if let Ok(f) = read(&b[..cut], 100, check) {
                    for r in &f.records {
                        let _ = r.value(&b[..cut]);
                        assert!(r.offset >= 100 && r.next > r.offset);
                    }
                }
            }
        }
    }
}
