//! Apache Kafka's record batch (magic 2, uncompressed), as a producer writes it: the records a
//! worker writes (state logs, alerts, takedown requests) appended here and the batch's header
//! and CRC-32C written once, when the batch is sent.
//!
//! Why here and not in aiokafka's batch builder (Cython): it computes the batch's CRC-32C in
//! software, a byte at a time (about a third of a microsecond an event from a backlog, for the
//! 270 bytes of state log an event writes), where x86-64's SSE 4.2 computes it eight bytes
//! an instruction (elsewhere, and on a CPU without it, a table a byte a step, as aiokafka's);
//! and its record is a bytearray grown by reallocation. The bytes are aiokafka's reference
//! builder's (in Python), byte for byte (`tests/test_record_batch.py` compares them for
//! random records, and reads them back with aiokafka and with Apache Kafka's Java consumer);
//! its compiled builder refuses a record that would fill a batch to the byte, and loses a
//! first timestamp of -1 (the test pins both).
//!
//! Layout (Kafka's `DefaultRecordBatch`): a 61-byte header (base offset, length, partition
//! leader epoch, magic, CRC-32C of everything after it, attributes, last offset delta, first
//! and max timestamps, producer id and epoch, base sequence, record count), then each record:
//! its length, attributes, timestamp and offset deltas, key, value and headers, the integers
//! zigzag varints.

/// The header's size; the records follow.
pub const HEADER_BYTES: usize = 61;
/// Where the header's fields are: the batch's length (of what follows it: the bytes before
/// it, base offset and length, are [`LOG_OVERHEAD`]), the partition leader epoch, the magic,
/// the CRC and where what it covers begins (the attributes), the last offset delta, the
/// first and max timestamps, the producer id and epoch, the base sequence and the record
/// count. The writer here and the reader of fetched batches (`crate::fetched`) share them.
pub(crate) const LENGTH_AT: usize = 8;
pub(crate) const LOG_OVERHEAD: usize = 12;
pub(crate) const MAGIC_AT: usize = 16;
pub(crate) const CRC_AT: usize = 17;
pub(crate) const ATTRIBUTES_AT: usize = 21;
pub(crate) const LAST_DELTA_AT: usize = 23;
pub(crate) const FIRST_TS_AT: usize = 27;
pub(crate) const MAX_TS_AT: usize = 35;
pub(crate) const PRODUCER_ID_AT: usize = 43;
pub(crate) const PRODUCER_EPOCH_AT: usize = 51;
pub(crate) const BASE_SEQUENCE_AT: usize = 53;
pub(crate) const COUNT_AT: usize = 57;
/// The attributes' bits: the compression codec, the timestamp type (log append time),
/// transactional, control.
pub(crate) const CODEC_MASK: i16 = 0x07;
pub(crate) const LOG_APPEND_TIME: i16 = 0x08;
const TRANSACTIONAL: i16 = 0x10;
pub(crate) const CONTROL: i16 = 0x20;

/// A record batch being written: its records, and what the header says of them.
#[derive(Debug, Clone)]
pub struct RecordBatch {
    buf: Vec<u8>,
    batch_size: usize,
    first_ts: Option<i64>,
    max_ts: i64,
    last_offset: i32,
    count: i32,
    transactional: bool,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

/// A record appended: its offset delta, its size in the batch, its timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub offset: i32,
    pub size: usize,
    pub timestamp: i64,
}

impl RecordBatch {
    /// An empty batch of up to ``batch_size`` bytes (its first record is taken whatever its
    /// size), with aiokafka's producer state until the sender sets it (no producer id).
    pub fn new(batch_size: usize, transactional: bool) -> Self {
        let mut buf = Vec::with_capacity(HEADER_BYTES + 1024);
        buf.resize(HEADER_BYTES, 0);
        Self {
            buf,
            batch_size,
            first_ts: None,
            max_ts: 0,
            last_offset: 0,
            count: 0,
            transactional,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: 0,
        }
    }

    /// Append a record (offset delta ``offset``); ``None`` if it does not fit (the batch
    /// has one already and would pass its size): nothing is written then.
    pub fn append(
        &mut self,
        offset: i32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> Option<Appended> {
        let first = self.first_ts.is_none();
        let delta = timestamp.wrapping_sub(self.first_ts.unwrap_or(timestamp));
        let field = |b: Option<&[u8]>| b.map_or(1, |b| varint_len(b.len() as i64) + b.len());
        let mut body = 1 + varint_len(delta) + varint_len(i64::from(offset));
        body += field(key) + field(value) + varint_len(headers.len() as i64);
        for (k, v) in headers {
            body += field(Some(k)) + field(*v);
        }
        let size = body + varint_len(body as i64);
        if !first && size + self.buf.len() > self.batch_size {
            return None;
        }
        let start = self.buf.len();
        self.buf.reserve(size);
        put_varint(&mut self.buf, body as i64);
        self.buf.push(0); // attributes
        put_varint(&mut self.buf, delta);
        put_varint(&mut self.buf, i64::from(offset));
        put_bytes(&mut self.buf, key);
        put_bytes(&mut self.buf, value);
        put_varint(&mut self.buf, headers.len() as i64);
        for (k, v) in headers {
            put_bytes(&mut self.buf, Some(k));
            put_bytes(&mut self.buf, *v);
        }
        debug_assert_eq!(self.buf.len() - start, size);
        if first {
            self.first_ts = Some(timestamp);
            self.max_ts = timestamp;
        } else {
            self.max_ts = self.max_ts.max(timestamp);
        }
        self.count += 1;
        self.last_offset = offset;
        Some(Appended {
            offset,
            size,
            timestamp,
        })
    }

    /// The producer's id, epoch and the batch's first sequence (an idempotent producer's,
    /// set by the sender before the batch is built).
    pub fn set_producer_state(&mut self, id: i64, epoch: i16, base_sequence: i32) {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
    }

    /// The batch's size in bytes, header included.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// Records appended.
    pub fn count(&self) -> i32 {
        self.count
    }

    /// Write the batch, header and CRC, into ``out`` (exactly :meth:`size` bytes).
    pub fn write_into(&self, out: &mut [u8]) {
        let n = self.buf.len();
        assert_eq!(out.len(), n, "a record batch is written whole");
        let mut h = [0u8; HEADER_BYTES];
        // base offset 0 (the broker's), then the length of what follows it
        h[LENGTH_AT..LOG_OVERHEAD].copy_from_slice(&((n - LOG_OVERHEAD) as i32).to_be_bytes());
        // no partition leader epoch
        h[LOG_OVERHEAD..MAGIC_AT].copy_from_slice(&(-1_i32).to_be_bytes());
        h[MAGIC_AT] = 2;
        let attributes = if self.transactional { TRANSACTIONAL } else { 0 };
        h[ATTRIBUTES_AT..LAST_DELTA_AT].copy_from_slice(&attributes.to_be_bytes());
        h[LAST_DELTA_AT..FIRST_TS_AT].copy_from_slice(&self.last_offset.to_be_bytes());
        h[FIRST_TS_AT..MAX_TS_AT].copy_from_slice(&self.first_ts.unwrap_or(0).to_be_bytes());
        h[MAX_TS_AT..PRODUCER_ID_AT].copy_from_slice(&self.max_ts.to_be_bytes());
        h[PRODUCER_ID_AT..PRODUCER_EPOCH_AT].copy_from_slice(&self.producer_id.to_be_bytes());
        h[PRODUCER_EPOCH_AT..BASE_SEQUENCE_AT].copy_from_slice(&self.producer_epoch.to_be_bytes());
        h[BASE_SEQUENCE_AT..COUNT_AT].copy_from_slice(&self.base_sequence.to_be_bytes());
        h[COUNT_AT..HEADER_BYTES].copy_from_slice(&self.count.to_be_bytes());
        out[..HEADER_BYTES].copy_from_slice(&h);
        out[HEADER_BYTES..].copy_from_slice(&self.buf[HEADER_BYTES..]);
        let crc = crc32c(&out[ATTRIBUTES_AT..]);
        out[CRC_AT..ATTRIBUTES_AT].copy_from_slice(&crc.to_be_bytes());
    }

    /// The batch's bytes (:meth:`write_into` a new vector).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.buf.len()];
        self.write_into(&mut out);
        out
    }
}

/// A zigzag varint's length.
fn varint_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    // 7 bits a byte; at least one
    (64 - (z | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(buf: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

/// A key's, value's or header's bytes after their length (-1: none).
fn put_bytes(buf: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_varint(buf, -1),
        Some(b) => {
            put_varint(buf, b.len() as i64);
            buf.extend_from_slice(b);
        }
    }
}

/// CRC-32C (Castagnoli, reflected, as Kafka's record batches check it).
pub fn crc32c(data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU has SSE 4.2 (checked just above)
            return !unsafe { crc32c_sse42(!0, data) };
        }
    }
    !crc32c_table(!0, data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn crc32c_sse42(mut crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut words = data.chunks_exact(8);
    let mut c = u64::from(crc);
    for w in &mut words {
        c = _mm_crc32_u64(c, u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    crc = c as u32;
    for &b in words.remainder() {
        crc = _mm_crc32_u8(crc, b);
    }
    crc
}

/// The table's CRC (a byte a step): where the CPU has no CRC-32C instruction.
fn crc32c_table(crc: u32, data: &[u8]) -> u32 {
    static CASTAGNOLI: [u32; 256] = crate::crc::table(0x82F6_3B78);
    crate::crc::update(&CASTAGNOLI, crc, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnoli_s_in_hardware_and_by_the_table() {
        // RFC 3720's check value, and a length that is not a multiple of 8
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        let data: Vec<u8> = (0..1003_u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in [0, 1, 7, 8, 9, 63, 64, 65, 1003] {
            assert_eq!(crc32c(&data[..n]), !crc32c_table(!0, &data[..n]), "{n}");
        }
        assert_eq!(crc32c(&[]), 0);
    }

    #[test]
    fn a_varint_s_length_is_what_it_writes() {
        for v in [
            0,
            1,
            -1,
            63,
            64,
            -64,
            -65,
            8191,
            8192,
            i64::MAX,
            i64::MIN,
            300,
            -300,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
        let mut b = Vec::new();
        put_varint(&mut b, -1);
        put_varint(&mut b, 150);
        assert_eq!(b, [0x01, 0xAC, 0x02]);
    }

    #[test]
    fn a_full_batch_refuses_a_record_but_always_takes_its_first() {
        let mut batch = RecordBatch::new(100, false);
        let big = [7u8; 200];
        let first = batch
            .append(0, 1000, Some(b"k"), Some(&big), &[])
            .expect("first");
        assert_eq!(batch.size(), HEADER_BYTES + first.size);
        assert!(batch.append(1, 1001, Some(b"k"), Some(b"v"), &[]).is_none());
        assert_eq!(
            (batch.count(), batch.size()),
            (1, HEADER_BYTES + first.size)
        );
        let out = batch.to_vec();
        assert_eq!(out.len(), batch.size());
        assert_eq!(&out[8..12], &((out.len() - 12) as i32).to_be_bytes());
        assert_eq!(
            u32::from_be_bytes(out[17..21].try_into().unwrap()),
            crc32c(&out[21..])
        );
    }
}
