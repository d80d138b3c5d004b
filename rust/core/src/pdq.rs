//! An exact index of 256-bit PDQ hashes by Hamming distance: every hash
//! within a threshold of a query, the very answer of a brute-force scan.
//!
//! Multi-index hashing (Norouzi, Punjani and Fleet, CVPR 2012). The 256 bits
//! are cut into `256 / bits` disjoint chunks (16 of 16 bits by default), and
//! each chunk value has a bucket of the rows holding it. Why it is exact: let
//! `t = threshold / chunks`. A hash within `threshold` of the query has some
//! chunk within `t` bits of the query's same chunk, for were every chunk
//! `t + 1` or more bits apart the hashes would be `chunks * (t + 1) >
//! threshold` bits apart (pigeonhole). So probing, in each chunk's table,
//! every value within `t` bits of the query's chunk finds every hash within
//! the threshold (and some that are not), and the full distance of each
//! candidate keeps exactly those within it. At the banks' threshold of 31
//! and 16-bit chunks, `t = 1`: 17 probes in each of 16 tables. Above
//! [`MAX_FLIPS`] flips per chunk the probes would cost what a scan does, so
//! the index scans every row there (just as exact).
//!
//! The tables are one compressed sparse row array (the rows of each chunk
//! value, in order), and the bucket starts are kept only for the values that
//! hold a row: a bit per chunk value says whether it does, and a count per 64
//! of them finds its start ([`Buckets`]). A probe of an empty bucket then
//! reads the bits alone (128 KB for the 16 tables, which stay in cache) where
//! a start per value was 4 MB read at random: at 17,000 rows most of the 272
//! probes found nothing, and their reads were most of a search's time. Added hashes go to a *tail*
//! that is searched apart until it outgrows about `5 * sqrt(rows)` (at least
//! `tail_min`), then merged into the tables in one pass: an O(rows) merge
//! every O(sqrt(rows)) adds keeps both the merge and the tail's search a few
//! microseconds per hash at a million rows. The tail is searched through a chain of
//! its rows for each value of each of a hash's 32 bytes (a hash within 31 bits shares
//! a byte with the query: [`TailBytes`]), which reads about one tail row in 8, not all. A removed hash is marked dead at
//! once and never reported again; the rows are compacted when the dead
//! pass a quarter of the live (an index of live clusters' content removes as
//! many hashes as it adds: its dead rows were up to half of it).
//!
//! Each row in a bucket carries its hash's chunk paired with the bucket's
//! (chunks `2i` and `2i + 1` make a pair), folded to a byte, which tells most
//! candidates apart without reading their hash, and is still exact
//! ([`Entry`]): most searches find nothing, and each candidate's hash was a
//! cache miss.
//!
//! An index searched only now and then (a worker's clusters partition finds
//! by it the live clusters a bank change concerns) can go without the tables
//! ([`PdqIndex::scan_only`]): its hashes are all tail, a search scans them
//! (about a millisecond at 330,000 hashes), and each costs 32 bytes, its tag
//! and about 8 bytes of look-up table, where the tables take 80 bytes of rows
//! a hash (16 of 5 bytes), up to 64 of bucket starts and 192 KB of bits and
//! counts.
//!
//! Results are deterministic: per query, nearest first, ties in the hashes'
//! hex order (hashes are distinct in an index), whatever the order of adds,
//! merges and compactions. Each hash carries an integer tag given when it
//! is added (a caller's id for it: rows move, tags do not).

use std::hash::BuildHasher;

use crate::keyed::Keyed;
use crate::prefetch::{prefetch, prefetch_at, prefetch_span};

/// A PDQ hash as four 64-bit words, most significant first: the words'
/// order is the hex text's order.
pub type Hash = [u64; 4];

/// The widest probe per chunk: `1 + 16 + 120 + 560 = 697` values of a 16-bit chunk.
pub const MAX_FLIPS: u32 = 3;
/// The largest threshold the default index (16-bit chunks) answers through its
/// tables; above it, a scan.
pub const MAX_INDEXED_THRESHOLD: u32 = 16 * (MAX_FLIPS + 1) - 1;
/// The fewest tail rows before a merge (a caller may ask for fewer).
pub const TAIL_MIN_DEFAULT: usize = 1024;

/// The hash of 64 hex digits (either case), or `None`.
///
/// ```
/// use viralwatch_core::pdq::{format_hex, parse_hex};
/// let h = parse_hex(b"0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef").unwrap();
/// assert_eq!(format_hex(&h), "0123456789abcdef".repeat(4));
/// assert!(parse_hex(b"12").is_none());
/// ```
pub fn parse_hex(text: &[u8]) -> Option<Hash> {
    // the digits by `crate::hex`'s table (an upload's PDQ text is read by the parser once,
    // but a Python record's or a signal's text here)
    let b = crate::hex::bytes::<32>(text)?;
    Some(std::array::from_fn(|i| {
        u64::from_be_bytes([
            b[8 * i],
            b[8 * i + 1],
            b[8 * i + 2],
            b[8 * i + 3],
            b[8 * i + 4],
            b[8 * i + 5],
            b[8 * i + 6],
            b[8 * i + 7],
        ])
    }))
}

/// A search's buffers, kept between searches (per thread).
#[derive(Default)]
struct Scratch {
    hits: Vec<(u32, usize)>,
    keys: Vec<Probe>,
    cand: Vec<u32>,
}

thread_local! {
    static SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Scratch::default());
}

/// Candidates a kept buffer may hold (a scan of a huge index does not keep its buffers).
const SCRATCH_KEEP: usize = 1 << 16;

/// Candidates between a row's prefetch and its check.
const PREFETCH_AHEAD: usize = 16;

/// The lowercase hex text of a hash.
pub fn format_hex(h: &Hash) -> String {
    let mut out = String::with_capacity(64);
    for w in h {
        push_hex(&mut out, &w.to_be_bytes());
    }
    out
}

/// Append `bytes` in lowercase hex, two digits a byte: by table, not by `format!` (the
/// index's owner writes every signal it clusters to its state log this way).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(2 * bytes.len());
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
}

/// The Hamming distance of two hashes.
#[inline(always)]
pub fn distance(a: &Hash, b: &Hash) -> u32 {
    (a[0] ^ b[0]).count_ones()
        + (a[1] ^ b[1]).count_ones()
        + (a[2] ^ b[2]).count_ones()
        + (a[3] ^ b[3]).count_ones()
}

/// A method, `$name`, whose body is compiled with the `popcnt` instruction where the CPU
/// has it: the body goes, `#[inline(always)]`, into `$body`, which `$name` calls through a
/// twin, `$twin`, compiled with the instruction when the CPU has it (the x86-64 baseline
/// lacks it, and a bit count in plain instructions costs about 4x more: most of a scan),
/// and directly otherwise. The signature is written once; every argument is bound `mut`
/// in the body. Used in an `impl` block: the PDQ index's search, the unbanked store's page
/// scan ([`crate::unbanked`]).
///
/// A macro, not a function given a closure: what is compiled with the instruction is what is
/// inlined into the twin, and a closure is inlined only where the compiler chooses (given
/// the index's search, 4 of its 5 copies kept the plain bit count). The receiver is matched
/// as `$self` so that the body's `self` is the one of the methods made here (macro hygiene).
/// Bounds go in the generics (a `where` clause would be ambiguous with the body).
macro_rules! popcnt_twin {
    (
        $twin:ident calls $body:ident:
        $(#[$attr:meta])*
        $vis:vis fn $name:ident $(<$($gen:ident: $bound:path),+>)?
            (&$self:ident $(, $arg:ident: $ty:ty)* $(,)?)
        $block:block
    ) => {
        $(#[$attr])*
        $vis fn $name $(<$($gen: $bound),+>)? (&$self $(, $arg: $ty)*) {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("popcnt") {
                // SAFETY: the CPU has the instruction the twin is compiled to use.
                return unsafe { $self.$twin($($arg),*) };
            }
            $self.$body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "popcnt")]
        unsafe fn $twin $(<$($gen: $bound),+>)? (&$self $(, $arg: $ty)*) {
            $self.$body($($arg),*)
        }

        #[inline(always)]
        #[allow(unused_mut)]
        fn $body $(<$($gen: $bound),+>)? (&$self $(, mut $arg: $ty)*) $block
    };
}
pub(crate) use popcnt_twin;

/// How the 256 bits are cut: `bits` per chunk (8 or 16).
#[derive(Debug, Clone, Copy)]
struct Layout {
    bits: u32,
}

impl Layout {
    fn chunks(self) -> usize {
        (256 / self.bits) as usize
    }
    fn values(self) -> usize {
        1 << self.bits
    }
    /// Chunk `c`'s value in `h`.
    #[inline]
    fn chunk(self, h: &Hash, c: usize) -> usize {
        let bit = c * self.bits as usize;
        ((h[bit / 64] >> (bit % 64)) & ((1u64 << self.bits) - 1)) as usize
    }
    /// The table key of value `v` in chunk `c`.
    #[inline]
    fn key(self, c: usize, v: usize) -> usize {
        (c << self.bits) | v
    }
    /// The chunk paired with chunk `c` (its mate: chunks `2i` and `2i + 1` make a pair).
    #[inline]
    fn mate(c: usize) -> usize {
        c ^ 1
    }
    /// The largest threshold answered through the tables.
    fn max_indexed(self) -> u32 {
        self.chunks() as u32 * (MAX_FLIPS + 1) - 1
    }
}

/// The words of bits a probe of a chunk value reads, for each flip count: the values within
/// `t` bits of a chunk value `v` differ from it in their high bits (above the low 6, which
/// pick a bit in a word of [`Buckets::occupied`]) by some `h` of at most `t` bits, and in
/// their low 6 by at most `t - popcount(h)`. So a probe reads each such word once and
/// tests all the bits it wants in it at once ([`LOWS`]): at 16-bit chunks and one flip, 11
/// words a chunk (the 7 values differing in the low 6 bits share a word), not 17 bits
/// read one by one. Most of the 272 probes find an empty bucket (all but 11 in the banks'
/// index at 2,689 hashes, 155 of 272 in the unbanked index at 80,000): each was a word
/// read, a bit tested and a branch, about 17 instructions, a fifth of a search's.
#[derive(Debug, Clone)]
struct Probes {
    /// `groups[t]`: for every high part `h` of at most `t` bits, `h`, its bits and the bits
    /// of a word the probes read ([`LOWS`]`[t - popcount(h)]`, by the query's low 6 bits).
    groups: Vec<Vec<(usize, u32, &'static [u64; 64])>>,
    /// `values[t]`: the values within `t` bits of a chunk value (17 at 16 bits and one flip).
    values: Vec<usize>,
}

impl Probes {
    fn new(layout: Layout) -> Self {
        let highs = 1u32 << (layout.bits - 6);
        let groups = (0..=MAX_FLIPS)
            .map(|t| {
                (0..highs)
                    .filter(|h| h.count_ones() <= t)
                    .map(|h| {
                        let lows = &LOWS[(t - h.count_ones()) as usize];
                        (h as usize, h.count_ones(), lows)
                    })
                    .collect()
            })
            .collect::<Vec<Vec<_>>>();
        let values = groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|&(_, _, lows)| lows[0].count_ones() as usize)
                    .sum()
            })
            .collect();
        Probes { groups, values }
    }
}

/// `LOWS[k][b]`: the bits `b ^ l` of a word for every `l` under 64 of at most `k` bits (the
/// low 6 bits of the values within `k` bits of a value whose low 6 bits are `b`).
static LOWS: [[u64; 64]; MAX_FLIPS as usize + 1] = {
    let mut out = [[0u64; 64]; MAX_FLIPS as usize + 1];
    let mut k = 0;
    while k <= MAX_FLIPS as usize {
        let mut b = 0;
        while b < 64 {
            let mut l = 0;
            while l < 64 {
                if (l as u64).count_ones() as usize <= k {
                    out[k][b] |= 1 << (b ^ l);
                }
                l += 1;
            }
            b += 1;
        }
        k += 1;
    }
    out
};

/// Which table keys hold rows, and where their rows start in `ids`: a start per key
/// that holds any (4 MB of starts for every key of 16 tables was read at random by
/// each probe, empty or not; the bits and counts here are 192 KB).
#[derive(Debug, Clone, Default)]
struct Buckets {
    /// Bit `k % 64` of word `k / 64`: whether key `k` holds a row.
    occupied: Vec<u64>,
    /// How many keys hold rows in the words before each word.
    before: Vec<u32>,
    /// `starts[i]..starts[i + 1]`: the rows in `ids` of the `i`-th key holding any.
    starts: Vec<u32>,
}

impl Buckets {
    /// The place in `starts` of `key`'s bucket, if it holds rows.
    #[inline(always)]
    fn slot(&self, key: usize) -> Option<usize> {
        let word = *self.occupied.get(key >> 6)?;
        let bit = key & 63;
        if (word >> bit) & 1 == 0 {
            return None;
        }
        let below = (word & ((1u64 << bit) - 1)).count_ones() as usize;
        Some(self.before[key >> 6] as usize + below)
    }

    /// The rows of `key`'s bucket in `ids`: `lo..hi` (empty if none).
    #[inline(always)]
    fn span(&self, key: usize) -> (usize, usize) {
        match self.slot(key) {
            Some(i) => (self.starts[i] as usize, self.starts[i + 1] as usize),
            None => (0, 0),
        }
    }

    fn nbytes(&self) -> usize {
        self.occupied.capacity() * 8 + self.before.capacity() * 4 + self.starts.capacity() * 4
    }
}

/// A bit a row: whether it is live (a `bool` a row was a byte a hash).
#[derive(Debug, Clone, Default)]
struct Bits {
    words: Vec<u64>,
    len: usize,
}

impl Bits {
    /// `n` bits, all set.
    fn ones(n: usize) -> Self {
        let mut words = vec![u64::MAX; n.div_ceil(64)];
        if n % 64 != 0 {
            *words.last_mut().expect("n > 0") = (1 << (n % 64)) - 1;
        }
        Bits { words, len: n }
    }

    #[inline(always)]
    fn get(&self, i: usize) -> bool {
        (self.words[i >> 6] >> (i & 63)) & 1 == 1
    }

    fn clear(&mut self, i: usize) {
        self.words[i >> 6] &= !(1 << (i & 63));
    }

    fn push(&mut self, bit: bool) {
        if self.len % 64 == 0 {
            self.words.push(0);
        }
        self.words[self.len >> 6] |= u64::from(bit) << (self.len & 63);
        self.len += 1;
    }

    /// Room for `more` bits beyond the length, exactly.
    fn reserve_exact(&mut self, more: usize) {
        let want = (self.len + more).div_ceil(64);
        self.words
            .reserve_exact(want.saturating_sub(self.words.len()));
    }

    fn iter(&self) -> impl Iterator<Item = bool> + '_ {
        (0..self.len).map(|i| self.get(i))
    }

    fn nbytes(&self) -> usize {
        self.words.capacity() * 8
    }
}

/// The tail's rows by their bytes: for each of a hash's 32 bytes (chunks of 8 bits) and each
/// of its 256 values, the tail rows holding it, newest first, in a chain through `next`. Why
/// it is exact: a hash within 31 bits of the query has one byte equal to the query's (were
/// all 32 a bit or more apart, the hashes would be 32 or more apart), so following the
/// query's 32 chains finds it. A random row shares a given byte 1 time in 256, so a search
/// reads about one tail row in 8 this way, where the scan read every one at about 10
/// instructions a row (a tail of 500-1,000 rows a search, up to `5 * sqrt(rows)`: about
/// 5,500 instructions of a search's 24,000 at a worker's 40,000 unbanked hashes, the largest
/// part after the probes). An add costs 32 links; a merge empties it. Not kept by a
/// scan-only index (searched now and then, all tail), nor past [`TailBytes::MOST`] rows
/// (those are scanned); a threshold of 32 or more scans the tail as before.
#[derive(Debug, Clone, Default)]
struct TailBytes {
    /// The newest tail row holding each byte's value (its place in the tail plus one; 0:
    /// none): `heads[c][value]`, 16 KB once the tail holds a row (an array, so that its
    /// reads need no bounds checks: a byte is under 256, `c` under 32).
    heads: Option<Box<[[u16; 256]; TailBytes::BYTES]>>,
    /// `next[32 * j + c]`: the tail row after tail row `j` in the chain of its byte `c`
    /// (plus one; 0: the chain's end).
    next: Vec<u16>,
}

impl TailBytes {
    /// Bytes a hash has (the chains a search follows).
    const BYTES: usize = 32;
    /// Tail rows the chains can name (`u16` places plus one).
    const MOST: usize = u16::MAX as usize - 1;

    /// Tail rows in the chains (the first of the tail).
    fn len(&self) -> usize {
        self.next.len() / Self::BYTES
    }

    /// Byte `c` of `h`.
    #[inline(always)]
    fn byte(h: &Hash, c: usize) -> usize {
        ((h[c / 8] >> (8 * (c % 8))) & 0xff) as usize
    }

    /// The next tail row, holding `h`, joins the chains.
    fn push(&mut self, h: &Hash) {
        let j = self.len();
        debug_assert!(j < Self::MOST);
        let heads = self
            .heads
            .get_or_insert_with(|| Box::new([[0; 256]; Self::BYTES]));
        let mut links = [0u16; Self::BYTES];
        // (byte by byte of each word: [`TailBytes::byte`]'s order, with no bounds checks)
        for (w, word) in h.iter().enumerate() {
            for (k, byte) in word.to_le_bytes().into_iter().enumerate() {
                let c = 8 * w + k;
                links[c] = std::mem::replace(&mut heads[c][usize::from(byte)], (j + 1) as u16);
            }
        }
        self.next.extend_from_slice(&links);
    }

    /// No tail rows (their room kept, up to `rows` rows' worth).
    fn clear(&mut self, rows: usize) {
        if let Some(heads) = self.heads.as_mut().filter(|_| !self.next.is_empty()) {
            **heads = [[0; 256]; Self::BYTES];
            self.next.clear();
        }
        self.next.shrink_to(Self::BYTES * rows.min(Self::MOST));
    }

    fn nbytes(&self) -> usize {
        self.heads
            .as_ref()
            .map_or(0, |h| std::mem::size_of_val(&**h))
            + self.next.capacity() * 2
    }
}

/// A row in a table's bucket: the row's number (28 bits: [`MAX_TABLE_ROWS`]) and its hash's
/// chunk paired with the bucket's (the *mate*: chunks `2i` and `2i + 1` make a pair), folded
/// to 12 bits ([`fold`]), in 5 bytes.
///
/// Why the mate is there: it tells most candidates apart without reading their hash. With
/// `C` chunks, a hash within `T` of the query has a pair within `floor(2T / C)` bits of the
/// query's (the `C / 2` pairs' distances add up to at most `T`), and in that pair a chunk
/// within `floor(T / C)` bits (were both more, the pair would be more), which the probes
/// visit. So a candidate found through chunk `c` with `f` bits flipped is kept only if its
/// mate is within `floor(2T / C) - f` bits of the query's mate, and the folded mates' distance
/// is at most the mates' own: a hash within `T` is still found, through the chunk of that
/// pair. At the banks' 31 and 16-bit chunks a random row in a probed bucket passes about 1
/// time in 45 (1 in 6 with a mate folded to a byte, 1 in 400 with all 16 bits, a byte more
/// a row: 10 B a live post, a worker's resident state past 300 B), where each candidate's
/// hash was a read at random (a cache miss): a quarter of a search's time in a platform replay.
#[derive(Debug, Clone, Copy, Default)]
struct Entry([u8; 5]);

/// Rows the tables can name ([`Entry`]'s 28 bits: 8 GB of hashes); past it, the newest rows
/// stay in the tail (scanned, still exact).
const MAX_TABLE_ROWS: usize = 1 << 28;

impl Entry {
    #[cfg(test)]
    fn new(row: u32, mate: usize) -> Self {
        Self::from_bits(Self::bits_of(row, mate))
    }

    /// The entry of `row` with mate chunk `mate` as 40 bits (the row's 28, the folded mate's
    /// 12 above them), as [`Entry::from_bits`] reads them.
    #[inline(always)]
    fn bits_of(row: u32, mate: usize) -> u64 {
        debug_assert!((row as usize) < MAX_TABLE_ROWS);
        u64::from(row) | u64::from(fold(mate)) << 28
    }

    /// The entry as the low 40 bits of a tail's pair (see [`PdqIndex::tail_keys`]).
    #[cfg(test)]
    fn bits(self) -> u64 {
        let [a, b, c, d, e] = self.0;
        u64::from_le_bytes([a, b, c, d, e, 0, 0, 0])
    }

    /// The entry in a tail's pair's low 40 bits.
    #[inline(always)]
    fn from_bits(x: u64) -> Self {
        let [a, b, c, d, e, ..] = x.to_le_bytes();
        Entry([a, b, c, d, e])
    }

    #[inline(always)]
    fn row(&self) -> usize {
        let [first @ .., _] = &self.0;
        (u32::from_le_bytes(*first) & 0x0fff_ffff) as usize
    }

    /// The folded mate: the top 12 bits of the last two bytes, read as one (a 2-byte load
    /// and a shift, where the two bytes read apart, shifted and joined were five
    /// instructions of a probed bucket's 13 a row)
    #[inline(always)]
    fn mate(&self) -> u32 {
        let [_, _, _, last @ ..] = &self.0;
        u32::from(u16::from_le_bytes(*last) >> 4)
    }
}

/// A chunk's value folded to 12 bits (its top 4 XORed into its bottom 4): the distance of two
/// folded values is at most theirs (a bit differing after the fold differs in one of the
/// bits folded onto it).
#[inline(always)]
fn fold(v: usize) -> u16 {
    ((v ^ (v >> 12)) & 0xfff) as u16
}

/// A probe of a bucket holding rows: its span in `ids` (`lo << 32 | hi`; first its place in
/// the starts), the query's mate chunk and the mate's budget of bits (see [`Entry`]).
#[derive(Debug, Clone, Copy)]
struct Probe {
    span: usize,
    mate: u32,
    budget: u32,
}

/// Distinct PDQ hashes with a tag each (`T`: the banks' 64-bit ids; the content index's
/// 4-byte holders, 4 bytes a hash less), searchable by Hamming distance (see the module doc).
#[derive(Debug, Clone)]
pub struct PdqIndex<T: Copy = i64> {
    layout: Layout,
    /// The words of bits a probe reads, by flip count.
    probes: Probes,
    words: Vec<Hash>,
    tags: Vec<T>,
    alive: Bits,
    live: usize,
    /// Rows `[0, indexed)` are in the tables; the rest are the tail.
    indexed: usize,
    tail_min: usize,
    /// Where each table key's rows are in `ids` (empty until the first merge).
    buckets: Buckets,
    ids: Vec<Entry>,
    /// The tail's live rows, found by a keyed hash of their hash (the tables' rows through
    /// chunk 0's buckets): 4 bytes a bucket, where a map of (hash, row) took 36.
    tail: hashbrown::HashTable<u32>,
    /// The first of the tail's rows by their bytes (all of it, up to [`TailBytes::MOST`]).
    tail_bytes: TailBytes,
    hasher: Keyed,
}

impl<T: Copy> Default for PdqIndex<T> {
    fn default() -> Self {
        Self::new(TAIL_MIN_DEFAULT)
    }
}

impl<T: Copy> PdqIndex<T> {
    /// An empty index of 16 tables of 16-bit chunks.
    pub fn new(tail_min: usize) -> Self {
        Self::with_chunk_bits(16, tail_min)
    }

    /// An empty index cutting hashes into chunks of `bits` bits (8 or 16).
    ///
    /// # Panics
    /// If `bits` is neither 8 nor 16 (a programming error, not input).
    pub fn with_chunk_bits(bits: u32, tail_min: usize) -> Self {
        assert!(bits == 8 || bits == 16, "chunks of 8 or 16 bits");
        let layout = Layout { bits };
        PdqIndex {
            layout,
            probes: Probes::new(layout),
            words: Vec::new(),
            tags: Vec::new(),
            alive: Bits::default(),
            live: 0,
            indexed: 0,
            tail_min,
            buckets: Buckets::default(),
            ids: Vec::new(),
            tail: hashbrown::HashTable::new(),
            tail_bytes: TailBytes::default(),
            hasher: Keyed::default(),
        }
    }

    /// An empty index without tables: every search scans (see the module doc).
    pub fn scan_only() -> Self {
        Self::new(usize::MAX)
    }

    /// Whether this index keeps no tables ([`PdqIndex::scan_only`]).
    pub fn scans(&self) -> bool {
        self.tail_min == usize::MAX
    }

    /// Live hashes.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Rows, live and dead (the dead until a compaction).
    pub fn rows(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Bytes the index holds in its arrays (capacity, not just length).
    pub fn nbytes(&self) -> usize {
        self.words.capacity() * 32
            + self.tags.capacity() * std::mem::size_of::<T>()
            + self.alive.nbytes()
            + self.buckets.nbytes()
            + self.ids.capacity() * std::mem::size_of::<Entry>()
            + self.tail.capacity() * (4 + 1)
            + self.tail_bytes.nbytes()
    }

    /// The live tail row holding `h`.
    fn tail_row(&self, h: &Hash) -> Option<usize> {
        let words = &self.words;
        self.tail
            .find(self.hasher.hash_one(h), |&r| words[r as usize] == *h)
            .map(|&r| r as usize)
    }

    /// `row` (holding `h`) joins the tail's table.
    fn tail_insert(&mut self, h: &Hash, row: u32) {
        let (words, hasher) = (&self.words, &self.hasher);
        self.tail.insert_unique(hasher.hash_one(h), row, |&r| {
            hasher.hash_one(words[r as usize])
        });
    }

    /// The live row holding `h`.
    fn row_of(&self, h: &Hash) -> Option<usize> {
        if let Some(r) = self.tail_row(h) {
            return Some(r);
        }
        if self.indexed == 0 {
            return None;
        }
        let key = self.layout.key(0, self.layout.chunk(h, 0));
        let (lo, hi) = self.buckets.span(key);
        self.ids[lo..hi]
            .iter()
            .map(|e| e.row())
            .find(|&r| self.alive.get(r) && self.words[r] == *h)
    }

    /// Whether `h` is in the index.
    pub fn contains(&self, h: &Hash) -> bool {
        self.row_of(h).is_some()
    }

    /// The tag of `h`, if it is in the index.
    pub fn tag_of(&self, h: &Hash) -> Option<T> {
        self.row_of(h).map(|r| self.tags[r])
    }

    /// Give `h` a new tag; `false` when it is not there.
    pub fn retag(&mut self, h: &Hash, tag: T) -> bool {
        match self.row_of(h) {
            Some(r) => {
                self.tags[r] = tag;
                true
            }
            None => false,
        }
    }

    /// Add `h` with `tag`; `false` (its tag unchanged) when it is there already.
    pub fn insert(&mut self, h: Hash, tag: T) -> bool {
        let added = self.push(h, tag);
        self.settle_tail();
        added
    }

    /// [`PdqIndex::insert`] of a hash the caller has just seen is not here (its look-up
    /// answered `None`, nothing added since): no second look-up (a keyed hash of the
    /// tail's table and a bucket's rows, each upload the index's owner clusters).
    pub fn insert_absent(&mut self, h: Hash, tag: T) {
        debug_assert!(!self.contains(&h), "insert_absent of a hash held");
        self.push_row(h, tag);
        self.settle_tail();
    }

    /// Add many hashes with their tags (one merge at the end: a bank load); the number
    /// added (a hash there already keeps its tag).
    pub fn insert_many(&mut self, items: impl IntoIterator<Item = (Hash, T)>) -> usize {
        let added = items
            .into_iter()
            .filter(|&(h, tag)| self.push(h, tag))
            .count();
        self.settle_tail();
        added
    }

    /// After adds: the tail merged into the tables if it is past its cap, or else its new
    /// rows put in its chains (after, not as each is added: a bank load's rows go straight
    /// into the tables).
    fn settle_tail(&mut self) {
        if self.words.len() - self.indexed > self.tail_cap() {
            self.merge_tail();
        }
        self.chain_tail();
    }

    /// The tail's rows not in its chains put there (up to [`TailBytes::MOST`]; none in a
    /// scan-only index).
    fn chain_tail(&mut self) {
        if self.scans() {
            return;
        }
        let end = self.words.len().min(self.indexed + TailBytes::MOST);
        for r in self.indexed + self.tail_bytes.len()..end {
            self.tail_bytes.push(&self.words[r]);
        }
    }

    /// Add a row to the tail unless `h` is live already.
    fn push(&mut self, h: Hash, tag: T) -> bool {
        if self.contains(&h) {
            return false;
        }
        self.push_row(h, tag);
        true
    }

    /// Add a row holding `h` (not live here) to the tail.
    fn push_row(&mut self, h: Hash, tag: T) {
        let row = self.words.len();
        if row == self.words.capacity() {
            // grow by a quarter, not double: a live index's rows are most of its bytes
            let more = row / 4 + 64;
            self.words.reserve_exact(more);
            self.tags.reserve_exact(more);
            self.alive.reserve_exact(more);
        }
        self.words.push(h);
        self.tags.push(tag);
        self.alive.push(true);
        self.tail_insert(&h, row as u32);
        self.live += 1;
    }

    /// Remove `h` at once; `false` when it is not there.
    pub fn remove(&mut self, h: &Hash) -> bool {
        let Some(row) = self.row_of(h) else {
            return false;
        };
        self.alive.clear(row);
        if let Ok(entry) = self
            .tail
            .find_entry(self.hasher.hash_one(h), |&r| r as usize == row)
        {
            entry.remove();
        }
        self.live -= 1;
        // a rebuild is O(rows), once per live / 4 removals (see the module doc); a
        // scan-only index's rows stay where they are until its owner compacts it
        if !self.scans() && self.dead_past_a_quarter() {
            self.rebuild();
        }
        true
    }

    fn dead_past_a_quarter(&self) -> bool {
        self.words.len() - self.live > (self.live / 4).max(1024)
    }

    /// The row holding `h` (live), which in a scan-only index stays its row until
    /// [`PdqIndex::compact`] moves it: a caller may keep it in place of the hash.
    pub fn row(&self, h: &Hash) -> Option<u32> {
        self.row_of(h).map(|r| r as u32)
    }

    /// The hash in `row` (see [`PdqIndex::row`]).
    pub fn hash_at(&self, row: u32) -> &Hash {
        &self.words[row as usize]
    }

    /// A scan-only index drops its dead rows once they pass a quarter of the live (as
    /// any index does at once), when its owner says so: then each old row's new one
    /// (`u32::MAX` for a dead row), for the rows the owner kept; `None` if nothing moved.
    pub fn compact(&mut self) -> Option<Vec<u32>> {
        if !self.scans() || !self.dead_past_a_quarter() {
            return None;
        }
        let mut next = 0;
        let moved = self
            .alive
            .iter()
            .map(|alive| {
                if alive {
                    next += 1;
                    next - 1
                } else {
                    u32::MAX
                }
            })
            .collect();
        self.rebuild();
        Some(moved)
    }

    /// Tail rows allowed before a merge: about `5 * sqrt(rows)` (see the module doc).
    fn tail_cap(&self) -> usize {
        let root = (self.indexed as f64).sqrt() as usize;
        self.tail_min.max(5 * root)
    }

    popcnt_twin!(search_popcnt calls search_any:
        /// Every live hash within `threshold` of each query: `found(query, distance, hash,
        /// tag)` for each, per query nearest first, ties in hex order (the queries in order).
        ///
        /// A threshold over 256 is read as 256 (every hash).
        pub fn search_with<F: FnMut(usize, u32, &Hash, T)>(
            &self,
            queries: &[Hash],
            threshold: u32,
            found: F,
        ) {
            let threshold = threshold.min(256);
            // the buffers of the last search, reused: most searches are of one query (an upload
            // clustered), and growing three vectors each time was 1.5% of a platform replay
            let Scratch {
                mut hits,
                mut keys,
                mut cand,
            } = SCRATCH.with(|s| s.take());
            for (i, q) in queries.iter().enumerate() {
                hits.clear();
                if threshold > self.layout.max_indexed() {
                    self.scan(q, 0, threshold, &mut hits);
                } else {
                    self.probe(q, threshold, &mut hits, (&mut keys, &mut cand));
                    self.near_in_tail(q, threshold, &mut hits);
                }
                // a hash near the query in several chunks is found several times
                hits.sort_unstable_by(|a, b| (a.0, &self.words[a.1]).cmp(&(b.0, &self.words[b.1])));
                hits.dedup_by_key(|hit| hit.1);
                for &(d, r) in &hits {
                    found(i, d, &self.words[r], self.tags[r]);
                }
            }
            if cand.capacity().max(hits.capacity()) <= SCRATCH_KEEP {
                // (a search `found` makes meanwhile finds it empty and allocates its own)
                SCRATCH.with(|s| s.set(Scratch { hits, keys, cand }));
            }
        }
    );

    /// [`PdqIndex::search_with`] collected: `(query, distance, hash, tag)`.
    pub fn search(&self, queries: &[Hash], threshold: u32) -> Vec<(usize, u32, Hash, T)> {
        let mut out = Vec::new();
        self.search_with(queries, threshold, |i, d, h, t| out.push((i, d, *h, t)));
        out
    }

    /// Candidates from the tables, verified (a row may come more than once).
    ///
    /// Memory-bound: each probe of a bucket holding rows reads a random start, each
    /// candidate a random row (the bits that say which buckets hold rows stay in
    /// cache). So every such probe's start is prefetched first, then every line of its
    /// bucket's rows, then the candidates are gathered and each row is prefetched a few
    /// candidates ahead of its check (1.7x faster at a million rows, 2x at 30,000; the
    /// buckets' every line, not their first alone, 2x again at a million, 1.4x at 300,000).
    #[inline(always)]
    fn probe(
        &self,
        q: &Hash,
        threshold: u32,
        hits: &mut Vec<(u32, usize)>,
        (keys, cand): (&mut Vec<Probe>, &mut Vec<u32>),
    ) {
        if self.indexed == 0 {
            return;
        }
        cand.clear();
        keys.clear();
        let (layout, b) = (self.layout, &self.buckets);
        let chunks = layout.chunks();
        let t = threshold as usize / chunks;
        let groups = &self.probes.groups[t];
        // a pair's budget of bits (see `Entry`)
        let pair = 2 * threshold / chunks as u32;
        // every probe's room, so that a probe is written with no test of the capacity
        let most = chunks * self.probes.values[t];
        keys.reserve(most);
        let room = &mut keys.spare_capacity_mut()[..most];
        let mut n = 0;
        let (occupied, before, starts) =
            (&b.occupied[..], &b.before[..b.occupied.len()], &b.starts);
        // the last bucket's place (tables hold one at least: `indexed > 0`)
        assert!(starts.len() >= 2);
        let last = starts.len() - 2;
        // every search a worker makes (the banks' threshold of 31) is of one flip in 16-bit
        // chunks: that first pass apart
        let one_flip = t == 1 && layout.bits == 16;
        if one_flip {
            n = one_flip_probes(q, pair, (occupied, before, starts), room);
        }
        if !one_flip {
            for c in 0..chunks {
                let v = layout.chunk(q, c);
                let mate = u32::from(fold(layout.chunk(q, Layout::mate(c))));
                let (base, high, low) = (layout.key(c, 0) >> 6, v >> 6, v & 63);
                for &(h, flips, lows) in groups {
                    // only buckets holding rows: the bits are in cache, the starts mostly not
                    let w = base | (high ^ h);
                    let word = occupied[w];
                    let mut wanted = word & lows[low];
                    if wanted == 0 {
                        continue;
                    }
                    let first = before[w] as usize;
                    while wanted != 0 {
                        let bit = wanted.trailing_zeros();
                        wanted &= wanted - 1;
                        let i = first + (word & ((1u64 << bit) - 1)).count_ones() as usize;
                        prefetch_at(starts, i);
                        // the bits this probe flips: `h`'s above the low 6, `bit ^ low` in them
                        let flipped = flips + (bit ^ low as u32).count_ones();
                        room[n].write(Probe {
                            span: i,
                            mate,
                            budget: pair - flipped,
                        });
                        n += 1;
                    }
                }
            }
        }
        // SAFETY: the first `n` of the spare room (within `most`, checked by the writes'
        // indexing) were written just above
        unsafe { keys.set_len(n) };
        // each bucket's start read (prefetched above) and its rows prefetched in turn, so
        // that the rows' cache misses overlap too, not one bucket's after another's: every
        // line of them (a bucket holds 15 rows of 5 bytes at a million hashes, two or three
        // lines, and the hint of the first alone left the next missed in turn: a search there
        // took twice as long)
        for probe in keys.iter_mut() {
            // a bucket's place is at most `last` by the tables' making; `min` makes it so for
            // the reads, which then need no bounds checks (four instructions of about 30 a
            // bucket here)
            debug_assert!(probe.span <= last);
            let i = probe.span.min(last);
            // SAFETY: `i <= last`, so `i + 1 < starts.len()`
            let (lo, hi) = unsafe {
                (
                    *starts.get_unchecked(i) as usize,
                    *starts.get_unchecked(i + 1) as usize,
                )
            };
            prefetch_span(&self.ids, lo, hi);
            probe.span = lo << 32 | hi;
        }
        for probe in keys.iter() {
            let (lo, hi) = (probe.span >> 32, probe.span & 0xffff_ffff);
            // most buckets hold a row or two: no call to copy them; a row whose mate chunk
            // is too far is no candidate (its hash is not read)
            for e in &self.ids[lo..hi] {
                if (e.mate() ^ probe.mate).count_ones() <= probe.budget {
                    cand.push(e.row() as u32);
                }
            }
        }
        for (j, &r) in cand.iter().enumerate() {
            if let Some(&ahead) = cand.get(j + PREFETCH_AHEAD) {
                prefetch(&self.words, ahead as usize);
            }
            let r = r as usize;
            let d = distance(&self.words[r], q);
            if d <= threshold && self.alive.get(r) {
                hits.push((d, r));
            }
        }
    }

    /// The tail's rows within `threshold` of `q`: those in its chains through the query's
    /// bytes' chains when the threshold is under 32 ([`TailBytes`]: a row may come more than
    /// once), the others by a scan.
    #[inline(always)]
    fn near_in_tail(&self, q: &Hash, threshold: u32, hits: &mut Vec<(u32, usize)>) {
        let chained = self.tail_bytes.len();
        let Some(heads) = self.tail_bytes.heads.as_ref().filter(|_| chained > 0) else {
            self.scan(q, self.indexed, threshold, hits);
            return;
        };
        if threshold >= TailBytes::BYTES as u32 {
            self.scan(q, self.indexed, threshold, hits);
            return;
        }
        let next = &self.tail_bytes.next;
        let rows = &self.words[self.indexed..self.indexed + chained];
        // the 32 chains a step each in turn, not one after another: each step's reads (a
        // row's link, then its hash) wait on the last step's, and a chain's alone waited on
        // them in a row (at 5,000 tail rows, chains of 20, that was slower than the scan);
        // 32 chains' steps at once overlap their misses
        let mut at = [0u16; TailBytes::BYTES];
        for (c, head) in heads.iter().enumerate() {
            at[c] = head[TailBytes::byte(q, c)];
        }
        // the chains still going found once a round, all 32 links tested at once (each
        // step's own test of its link was 8 of its 37 instructions, the trace replay); the
        // query's first half held in registers (it was read again at each step)
        let mut going = chains_going(&at);
        let (q0, q1) = (q[0], q[1]);
        while going != 0 {
            let mut left = going;
            while left != 0 {
                let c = left.trailing_zeros() as usize;
                left &= left - 1;
                let j = at[c] as usize - 1;
                let w = &rows[j];
                // the first half's bits first (a random row is about 64 off there)
                let half = (w[0] ^ q0).count_ones() + (w[1] ^ q1).count_ones();
                if half <= threshold {
                    let d = distance(w, q);
                    if d <= threshold && self.alive.get(self.indexed + j) {
                        hits.push((d, self.indexed + j));
                    }
                }
                at[c] = next[TailBytes::BYTES * j + c];
            }
            going = chains_going(&at);
        }
        self.scan(q, self.indexed + chained, threshold, hits);
    }

    /// Rows `[from, end)` compared with the query, four at a time first (see
    /// [`near_in_blocks`]).
    #[inline(always)]
    fn scan(&self, q: &Hash, from: usize, threshold: u32, hits: &mut Vec<(u32, usize)>) {
        let rows = &self.words[from.min(self.words.len())..];
        let mut keep = |r: usize| {
            let d = distance(&self.words[r], q);
            if d <= threshold && self.alive.get(r) {
                hits.push((d, r));
            }
        };
        near_in_blocks(rows, q, threshold, |j| keep(from + j));
    }

    /// Put the tail's live rows into the tables, in place: from the last new key down,
    /// each stretch of rows between two new keys moves once, up by the new rows of the
    /// keys below it, which go at the end of their key's bucket; the stretch's starts
    /// move the same way, up by the keys new to the tables below it (a new key takes a
    /// start); then the bits and counts are set (dead rows stay until a rebuild). Tables
    /// made from nothing (the first merge, a rebuild) are written in order instead.
    fn merge_tail(&mut self) {
        let n = self.words.len();
        if n == self.indexed || n > MAX_TABLE_ROWS {
            return;
        }
        let keys = self.layout.chunks() * self.layout.values();
        let fresh = self.tail_keys();
        let b = &mut self.buckets;
        if b.occupied.is_empty() {
            b.occupied = vec![0; keys.div_ceil(64)];
            b.before = vec![0; keys.div_ceil(64)];
            b.starts = vec![0];
        }
        let first_of_key = |j: usize| j == 0 || pair_key(fresh[j - 1]) != pair_key(fresh[j]);
        let held = |k: usize| (b.occupied[k >> 6] >> (k & 63)) & 1 == 1;
        let new_keys = (0..fresh.len())
            .filter(|&j| first_of_key(j) && !held(pair_key(fresh[j])))
            .count();
        let (old_ids, old_slots) = (self.ids.len(), b.starts.len() - 1);
        // exactly what the merge adds: it moves the whole array anyway, and 16 ids a row
        // are the index's largest part (doubling would leave a third of it unused)
        self.ids.reserve_exact(fresh.len());
        b.starts.reserve_exact(new_keys);
        if old_ids == 0 && old_slots == 0 {
            // nothing to move: the rows and starts in order
            self.ids
                .extend(fresh.iter().map(|&pair| Entry::from_bits(pair)));
            b.starts.clear();
            b.starts.extend(
                (0..fresh.len())
                    .filter(|&j| first_of_key(j))
                    .map(|j| j as u32),
            );
            b.starts.push(fresh.len() as u32);
        } else {
            self.ids.resize(old_ids + fresh.len(), Entry::default());
            b.starts.resize(old_slots + new_keys + 1, 0);
            merge_keys(&fresh, (&mut self.ids, b), (old_ids, old_slots, new_keys));
        }
        for &pair in &fresh {
            let k = pair_key(pair);
            b.occupied[k >> 6] |= 1 << (k & 63);
        }
        count_before(&b.occupied, &mut b.before);
        self.indexed = n;
        self.tail.clear();
        self.tail_bytes.clear(self.tail_cap());
        let (cap, words, hasher) = (self.tail_cap(), &self.words, &self.hasher);
        // a bank load's table, not kept
        self.tail
            .shrink_to(cap, |&r| hasher.hash_one(words[r as usize]));
    }

    /// Every live tail row's pairs (`key << 40 |` its [`Entry`] in that key's bucket: the
    /// row and its mate chunk), by key then row: made here, where the row's chunks are read
    /// anyway, the merge need not read the row's hash again for its mate (38 of its 227
    /// instructions a fresh key, the trace replay). A radix sort for a short tail
    /// (two passes over the pairs, rows ascending as they come: it keeps them so within a
    /// key), a counting sort over the keys for a long one (a bank load: 16 million pairs at
    /// a million hashes). The pairs are written into a vector sized first: collected from
    /// an iterator of iterators they grew by doubling, and that and the iterators' steps
    /// were two thirds of a merge's instructions a pair (callgrind, a platform replay).
    fn tail_keys(&self) -> Vec<u64> {
        let layout = self.layout;
        let chunks = layout.chunks();
        let pairs = |r: u32, out: &mut [u64]| {
            let h = &self.words[r as usize];
            if layout.bits == 16 {
                row_pairs::<16>(r, h, out);
            } else {
                row_pairs::<8>(r, h, out);
            }
        };
        let rows: Vec<u32> = (self.indexed..self.words.len())
            .filter(|&r| self.alive.get(r))
            .map(|r| r as u32)
            .collect();
        let total = rows.len() * chunks;
        let keys = chunks * layout.values();
        if total < keys / 4 {
            let mut fresh = vec![0u64; total];
            for (&r, out) in rows.iter().zip(fresh.chunks_exact_mut(chunks)) {
                pairs(r, out);
            }
            return sort_by_key(fresh, keys);
        }
        let mut next = vec![0u32; keys + 1];
        for &r in &rows {
            let h = &self.words[r as usize];
            for c in 0..chunks {
                next[layout.key(c, layout.chunk(h, c)) + 1] += 1;
            }
        }
        for k in 0..keys {
            next[k + 1] += next[k];
        }
        let mut fresh = vec![0u64; total];
        let mut row = vec![0u64; chunks];
        for &r in &rows {
            pairs(r, &mut row);
            for &pair in &row {
                let k = pair_key(pair);
                fresh[next[k] as usize] = pair;
                next[k] += 1;
            }
        }
        fresh
    }

    /// Drop the dead rows and build the tables afresh.
    fn rebuild(&mut self) {
        let mut words = Vec::with_capacity(self.live);
        let mut tags = Vec::with_capacity(self.live);
        for r in 0..self.words.len() {
            if self.alive.get(r) {
                words.push(self.words[r]);
                tags.push(self.tags[r]);
            }
        }
        self.alive = Bits::ones(words.len());
        self.words = words;
        self.tags = tags;
        self.indexed = 0;
        self.ids = Vec::new();
        self.buckets = Buckets::default();
        self.tail.clear();
        self.tail_bytes.clear(0);
        if self.words.len() > self.tail_min && self.words.len() <= MAX_TABLE_ROWS {
            self.merge_tail();
        } else {
            self.tail.shrink_to(0, |_| 0);
            for r in 0..self.words.len() {
                let h = self.words[r];
                self.tail_insert(&h, r as u32);
            }
            self.chain_tail();
        }
    }
}

/// The chains not yet at their end: bit `c` set where `at[c]` is not 0.
#[inline(always)]
fn chains_going(at: &[u16; TailBytes::BYTES]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi16, _mm_loadu_si128, _mm_movemask_epi8, _mm_packs_epi16,
            _mm_setzero_si128,
        };
        let p = at.as_ptr().cast::<__m128i>();
        // SAFETY: SSE2 is the x86-64 baseline; the four loads are `at`'s 64 bytes
        unsafe {
            let zero = _mm_setzero_si128();
            let ended = |i: usize| _mm_cmpeq_epi16(_mm_loadu_si128(p.add(i)), zero);
            let low = _mm_movemask_epi8(_mm_packs_epi16(ended(0), ended(1))) as u32;
            let high = _mm_movemask_epi8(_mm_packs_epi16(ended(2), ended(3))) as u32;
            !(low | high << 16)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    at.iter()
        .enumerate()
        .fold(0, |going, (c, &link)| going | u32::from(link != 0) << c)
}

/// [`PdqIndex::probe`]'s first pass at one flip in 16 chunks of 16 bits (every search a
/// worker makes: the banks' threshold of 31): a [`Probe`] of each bucket holding rows within
/// a bit of the query's chunk, written into `room`, its start prefetched; the number
/// written. Each chunk's values a bit away above the low 6 are a bit each of 10 words of
/// [`Buckets::occupied`] (the chunk's 1,024), read and tested with no branch, the query's
/// own word tested for its value and the 6 a bit away in the low 6 at once; the chunks'
/// geometry is constant. The loop over [`Probes`]' groups spent about 14 instructions a
/// word read (the group's fields, a bounds test, a branch), 175 words a search whatever the
/// index's density, and the chunk's value and mate at any geometry: a banks' screen was
/// 4,275 instructions, now 3,330 (a worker's stream's index operations replayed).
#[inline(always)]
fn one_flip_probes(
    q: &Hash,
    pair: u32,
    (occupied, before, starts): (&[u64], &[u32], &[u32]),
    room: &mut [std::mem::MaybeUninit<Probe>],
) -> usize {
    const WORDS: usize = 1024;
    let occupied: &[u64; 16 * WORDS] = occupied.try_into().expect("16 tables of 16 bits");
    let before: &[u32; 16 * WORDS] = before.try_into().expect("16 tables of 16 bits");
    let mut n = 0;
    for c in 0..16 {
        // `Layout::chunk` and `Layout::mate` at 16 bits
        let v = ((q[c / 4] >> (16 * (c % 4))) & 0xffff) as usize;
        let mate = u32::from(fold(
            ((q[(c ^ 1) / 4] >> (16 * ((c ^ 1) % 4))) & 0xffff) as usize,
        ));
        let (high, low) = (v >> 6, v & 63);
        let table: &[u64; WORDS] = occupied[c * WORDS..(c + 1) * WORDS]
            .try_into()
            .expect("a chunk's words");
        let counts: &[u32; WORDS] = before[c * WORDS..(c + 1) * WORDS]
            .try_into()
            .expect("a chunk's counts");
        let lowbit = 1u64 << low;
        let mut near = 0u32;
        for b in 0..10 {
            near |= u32::from(table[(high ^ 1 << b) & (WORDS - 1)] & lowbit != 0) << b;
        }
        // the query's word: its value and the 6 within a bit in the low 6
        let word = table[high & (WORDS - 1)];
        let mut wanted = word & LOWS[1][low];
        let first = counts[high & (WORDS - 1)] as usize;
        while wanted != 0 {
            let bit = wanted.trailing_zeros();
            wanted &= wanted - 1;
            let i = first + (word & ((1u64 << bit) - 1)).count_ones() as usize;
            prefetch_at(starts, i);
            room[n].write(Probe {
                span: i,
                mate,
                budget: pair - (bit ^ low as u32).count_ones(),
            });
            n += 1;
        }
        // the 10 values a bit away above the low 6, each its own word's bit `low`
        while near != 0 {
            let b = near.trailing_zeros();
            near &= near - 1;
            let w = (high ^ 1 << b) & (WORDS - 1);
            let i = counts[w] as usize + (table[w] & (lowbit - 1)).count_ones() as usize;
            prefetch_at(starts, i);
            room[n].write(Probe {
                span: i,
                mate,
                budget: pair - 1,
            });
            n += 1;
        }
    }
    n
}

/// Calls `maybe(j)` for every `rows[j]` that may be within `threshold` of `q`: each row
/// within it, and a few that are not (the caller counts the distance). What is scanned: a
/// scan-only index's rows, a tail past its chains' [`TailBytes::MOST`] rows, the tail at a
/// threshold of 32 or more, and every row past what the tables answer (the tail of about
/// `5 * sqrt(rows)` was scanned by every search, at 15 instructions a row, a third of a
/// search's instructions, before it had chains). Four rows' first halves are counted and
/// the four skipped at one branch when the least is past the threshold (a row at random
/// differs from the query in about 64 of those 128 bits, past any threshold the tables
/// answer); the rows past the last block of four one by one.
#[inline(always)]
fn near_in_blocks(rows: &[Hash], q: &Hash, threshold: u32, mut maybe: impl FnMut(usize)) {
    let blocks = rows.chunks_exact(4);
    let rest = blocks.len() * 4;
    let half = |w: &Hash| (w[0] ^ q[0]).count_ones() + (w[1] ^ q[1]).count_ones();
    for (b, block) in blocks.enumerate() {
        let least = half(&block[0])
            .min(half(&block[1]))
            .min(half(&block[2]).min(half(&block[3])));
        if least <= threshold {
            (4 * b..4 * b + 4).for_each(&mut maybe);
        }
    }
    for (j, w) in rows.iter().enumerate().skip(rest) {
        if half(w) <= threshold {
            maybe(j);
        }
    }
}

/// `before[w]`: the bits set in `occupied`'s words before word `w` (16,384 words at 16-bit
/// chunks, counted at each merge: with `popcnt` where the CPU has it, as the search).
fn count_before(occupied: &[u64], before: &mut [u32]) {
    #[inline(always)]
    fn body(occupied: &[u64], before: &mut [u32]) {
        let mut count = 0;
        for (slot, word) in before.iter_mut().zip(occupied) {
            *slot = count;
            count += word.count_ones();
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    unsafe fn twin(occupied: &[u64], before: &mut [u32]) {
        body(occupied, before);
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("popcnt") {
        // SAFETY: the CPU has the instruction the twin is compiled to use.
        return unsafe { twin(occupied, before) };
    }
    body(occupied, before);
}

/// [`PdqIndex::merge_tail`]'s moves: `fresh` (key, row), by key then row, into tables of
/// `old_ids` rows and `old_slots` starts (`ids` and `b.starts` already sized for the
/// fresh rows and `new_keys` starts more; `b`'s bits still the old ones). From the last
/// fresh key down, what lies above it moves up by what goes below it: the rows by a
/// copy, the starts shifted and raised in one pass; its own rows go at the end of its
/// bucket. A merge spent about 400 instructions a fresh key (16 a tail row), most of
/// them the loop's bookkeeping: the index's fields read again after each copy, a bounds
/// check on every access and a bit count in plain instructions (the x86-64 baseline has
/// no `popcnt`: compiled with it where the CPU has it, as the search is; with AVX2 too
/// where the CPU has that, for the moves, [`move_up`] and [`raise_up`]).
fn merge_keys(
    fresh: &[u64],
    (ids, b): (&mut [Entry], &mut Buckets),
    (old_ids, old_slots, new_keys): (usize, usize, usize),
) {
    // what the loop reads and writes unchecked, checked once
    let keys = b.occupied.len() * 64;
    // (each pair against the first with a key past them: the keys themselves tested, the
    // loop reloaded the pairs' address from the stack at every pair)
    assert!(keys < 1 << 24, "a pair's key is its top 24 bits");
    let limit = (keys as u64) << 40;
    assert!(fresh.iter().all(|&pair| pair < limit));
    assert!(b.before.len() == b.occupied.len());
    assert!(ids.len() == old_ids + fresh.len() && b.starts.len() == old_slots + new_keys + 1);
    // (the tables' own invariant: a check of every start would cost what the merge saves)
    debug_assert!(b.starts[..=old_slots]
        .iter()
        .all(|&x| x as usize <= old_ids));
    let moves = Moves {
        fresh,
        ids,
        b,
        old_ids,
        old_slots,
        new_keys,
    };
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("popcnt")
    {
        // SAFETY: the CPU has the instructions the twin is compiled to use; the bounds
        // the body relies on are asserted above.
        return unsafe { merge_keys_avx2(moves) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("popcnt") {
        // SAFETY: as above
        return unsafe { merge_keys_popcnt(moves) };
    }
    // SAFETY: as above
    unsafe { merge_keys_body(moves) }
}

/// [`merge_keys`]' arguments, for its two compilations.
struct Moves<'a> {
    fresh: &'a [u64],
    ids: &'a mut [Entry],
    b: &'a mut Buckets,
    old_ids: usize,
    old_slots: usize,
    new_keys: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
unsafe fn merge_keys_popcnt(moves: Moves<'_>) {
    // SAFETY: the caller's
    unsafe { merge_keys_body(moves) }
}

/// [`merge_keys`] with 32-byte registers: its moves of rows and starts ([`move_up`],
/// [`raise_up`]) a register a 32 bytes, eight starts raised in one instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt,avx2")]
unsafe fn merge_keys_avx2(moves: Moves<'_>) {
    // SAFETY: the caller's
    unsafe { merge_keys_body(moves) }
}

/// # Safety
/// Of `moves`: every fresh key is under `b.occupied.len() * 64`; `b.before` is as long as
/// `b.occupied`; `ids` holds `old_ids + fresh.len()` rows and `b.starts` `old_slots +
/// new_keys + 1` starts, the first `old_slots + 1` at most `old_ids`; `new_keys` is the
/// number of fresh keys whose bit is clear (as [`PdqIndex::merge_tail`] counts them).
#[inline(always)]
unsafe fn merge_keys_body(moves: Moves<'_>) {
    let Moves {
        fresh,
        ids,
        b,
        old_ids,
        old_slots,
        new_keys,
    } = moves;
    let (occupied, before) = (b.occupied.as_ptr(), b.before.as_ptr());
    let (starts, ids, fresh_at) = (b.starts.as_mut_ptr(), ids.as_mut_ptr(), fresh.as_ptr());
    // what is above key k (rows and starts, the last start included) moves up by
    // `shift_ids` rows and `shift_slots` starts
    let (mut shift_ids, mut shift_slots) = (fresh.len(), new_keys);
    let (mut end_ids, mut end_slot) = (old_ids, old_slots + 1);
    let mut i = fresh.len();
    // SAFETY (each access): the bounds the caller promises. Rows and starts move up, to
    // at most their arrays' new ends: `shift_ids` is the fresh rows of the keys at or
    // below this one, `shift_slots` the new keys among them (starts at or below
    // `end_slot` lie in the old starts, rows below `end_ids` in the old rows).
    unsafe {
        while i > 0 {
            let k = pair_key(*fresh_at.add(i - 1));
            let mut j = i - 1;
            while j > 0 && pair_key(*fresh_at.add(j - 1)) == k {
                j -= 1;
            }
            let (w, bit) = (k >> 6, k & 63);
            let word = *occupied.add(w);
            // the keys holding rows up to k (the bits are still the old ones)
            let upto =
                *before.add(w) as usize + (word & (u64::MAX >> (63 - bit))).count_ones() as usize;
            // (a start at `end_slot` may be a new key's already: nothing moves then)
            let lo_ids = if upto == end_slot {
                end_ids
            } else {
                *starts.add(upto) as usize
            };
            move_up(
                ids.add(lo_ids).cast::<u8>(),
                ids.add(lo_ids + shift_ids).cast::<u8>(),
                (end_ids - lo_ids) * std::mem::size_of::<Entry>(),
            );
            // the starts from `upto` to `end_slot`, up by `shift_slots` places and
            // `shift_ids` rows
            raise_up(
                starts.add(upto),
                starts.add(upto + shift_slots),
                end_slot - upto,
                shift_ids as u32,
            );
            let count = i - j;
            let at = lo_ids + shift_ids - count;
            for t in 0..count {
                // the entry's 5 bytes (the pair's low 40, little-endian) as a store of 4 and
                // one of 1: written as an `Entry` they were 5 stores of a byte, each with its
                // shift (merge_keys' own 216.2 -> 204.5 M instructions, the trace replay)
                let pair = *fresh_at.add(j + t);
                let to = ids.add(at + t).cast::<u8>();
                std::ptr::write_unaligned(to.cast::<u32>(), (pair as u32).to_le());
                *to.add(4) = (pair >> 32) as u8;
            }
            shift_ids -= count;
            if (word >> bit) & 1 == 0 {
                // a key new to the tables: its start, just below what moved
                shift_slots -= 1;
                *starts.add(upto + shift_slots) = at as u32;
            }
            (end_ids, end_slot) = (lo_ids, upto);
            i = j;
        }
    }
    debug_assert!(shift_ids == 0 && shift_slots == 0);
}

/// [`merge_keys`]' move of a stretch of rows: `len` bytes from `src` to `dst`, at or
/// above it (they may overlap), inline. From the top down, 64 bytes at a time, each block
/// read before it is written and written at or above where it was read, down to the lowest
/// 256 bytes at most, which are read whole (from both ends, as two blocks that may overlap)
/// before any is written; so no byte loop but under 4 bytes. A `memmove` call a stretch
/// (one a fresh key: 1,290,224 in the trace replay's merges, 190 bytes on average) was its
/// own 32 instructions and the merge's values kept across the call; inline, with the merge
/// compiled for 32-byte registers, a block is two loads and two stores.
///
/// # Safety
/// `src..src + len` and `dst..dst + len` are valid, `dst >= src`.
#[inline(always)]
unsafe fn move_up(src: *const u8, dst: *mut u8, len: usize) {
    use std::ptr::{read_unaligned as read, write_unaligned as write};
    // SAFETY (each access): within the two ranges, as the caller promises
    unsafe {
        let mut hi = len;
        while hi > 256 {
            hi -= 64;
            let block = read(src.add(hi).cast::<[u128; 4]>());
            write(dst.add(hi).cast::<[u128; 4]>(), block);
        }
        // the lowest `hi` (at most 256) bytes: all read before any is written
        if hi > 128 {
            both_ends::<[u128; 8]>(src, dst, hi);
        } else if hi > 64 {
            both_ends::<[u128; 4]>(src, dst, hi);
        } else if hi > 32 {
            both_ends::<[u128; 2]>(src, dst, hi);
        } else if hi > 16 {
            both_ends::<u128>(src, dst, hi);
        } else if hi >= 8 {
            both_ends::<u64>(src, dst, hi);
        } else if hi >= 4 {
            both_ends::<u32>(src, dst, hi);
        } else {
            while hi > 0 {
                hi -= 1;
                *dst.add(hi) = *src.add(hi);
            }
        }
    }
}

/// [`move_up`]'s last `len` bytes (from one `T` to two): a `T` read at each end (they may
/// overlap), then both written.
///
/// # Safety
/// As [`move_up`]'s, and `size_of::<T>() <= len`.
#[inline(always)]
unsafe fn both_ends<T>(src: *const u8, dst: *mut u8, len: usize) {
    use std::ptr::{read_unaligned as read, write_unaligned as write};
    let top = len - std::mem::size_of::<T>();
    // SAFETY: within the two ranges, as the caller promises
    unsafe {
        let (low, high) = (read(src.cast::<T>()), read(src.add(top).cast::<T>()));
        write(dst.add(top).cast::<T>(), high);
        write(dst.cast::<T>(), low);
    }
}

/// [`merge_keys`]' move of a stretch of starts: `len` of them from `src` to `dst`, at or
/// above it (they may overlap), each raised by `add`: as [`move_up`], eight at a time from
/// the top down, the lowest eight read first and written last (the starts below a multiple
/// of eight were moved one by one, 6 instructions each, about 3.5 a fresh key).
///
/// # Safety
/// `src..src + len` and `dst..dst + len` are valid, `dst >= src`.
#[inline(always)]
unsafe fn raise_up(src: *const u32, dst: *mut u32, len: usize, add: u32) {
    use std::ptr::{read_unaligned as read, write_unaligned as write};
    let raised = |mut group: [u32; 8]| {
        for x in &mut group {
            *x = x.wrapping_add(add);
        }
        group
    };
    // SAFETY (each access): within the two ranges, as the caller promises
    unsafe {
        if len >= 8 {
            let head = raised(read(src.cast::<[u32; 8]>()));
            let mut hi = len;
            while hi > 8 {
                hi -= 8;
                write(
                    dst.add(hi).cast::<[u32; 8]>(),
                    raised(read(src.add(hi).cast::<[u32; 8]>())),
                );
            }
            write(dst.cast::<[u32; 8]>(), head);
        } else {
            let mut hi = len;
            while hi > 0 {
                hi -= 1;
                *dst.add(hi) = (*src.add(hi)).wrapping_add(add);
            }
        }
    }
}

/// Row `r`'s pairs (its hash `h`), one a chunk of `BITS` bits, into `out` (a chunk each):
/// the chunks of a pair read once, each the other's mate, the geometry constant (a chunk's
/// value and mate read through [`Layout::chunk`], a shift by a variable count and a bounds
/// test each, were about 30 instructions a pair, the trace replay).
#[inline(always)]
fn row_pairs<const BITS: usize>(r: u32, h: &Hash, out: &mut [u64]) {
    let per = 64 / BITS;
    let mask = (1usize << BITS) - 1;
    assert!(out.len() == 4 * per, "a pair a chunk");
    for (w, &word) in h.iter().enumerate() {
        for i in (0..per).step_by(2) {
            let c = w * per + i;
            let v = (word >> (i * BITS)) as usize & mask;
            let m = (word >> ((i + 1) * BITS)) as usize & mask;
            out[c] = ((c << BITS | v) as u64) << 40 | Entry::bits_of(r, m);
            out[c + 1] = (((c + 1) << BITS | m) as u64) << 40 | Entry::bits_of(r, v);
        }
    }
}

/// A tail's pair's key (see [`PdqIndex::tail_keys`]).
#[inline(always)]
fn pair_key(pair: u64) -> usize {
    (pair >> 40) as usize
}

/// `pairs` (`key << 40 | entry`) with keys under `keys` sorted by key, stably: a least significant
/// digit radix sort (two passes of half the key's bits each: 10 for the 2^20 keys of
/// 16-bit chunks), both digits counted in one read of the pairs. A merge sorts its tail's
/// 16 keys a row this way; a comparison sort of them was a third of a merge's
/// instructions (callgrind, a platform replay).
fn sort_by_key(pairs: Vec<u64>, keys: usize) -> Vec<u64> {
    const MAX_DIGIT: u32 = 11;
    if pairs.len() < 256 {
        // (the passes' counts would cost more): by key, stably, what they give
        let mut pairs = pairs;
        pairs.sort_by_key(|&pair| pair_key(pair));
        return pairs;
    }
    let bits = usize::BITS - keys.saturating_sub(1).leading_zeros();
    assert!(
        bits <= 2 * MAX_DIGIT,
        "keys of at most {} bits",
        2 * MAX_DIGIT
    );
    let low = bits.div_ceil(2);
    let mask = (1usize << low) - 1;
    let mut at = [[0u32; 1 << MAX_DIGIT]; 2];
    for &pair in &pairs {
        let k = pair_key(pair);
        at[0][k & mask] += 1;
        at[1][k >> low] += 1;
    }
    for (counts, width) in at.iter_mut().zip([low, bits - low]) {
        let mut sum = 0;
        for slot in &mut counts[..1 << width] {
            (*slot, sum) = (sum, sum + *slot);
        }
    }
    let mut dst = vec![0; pairs.len()];
    for &pair in &pairs {
        let d = pair_key(pair) & mask;
        dst[at[0][d] as usize] = pair;
        at[0][d] += 1;
    }
    let mut out = pairs;
    for &pair in &dst {
        let d = pair_key(pair) >> low;
        out[at[1][d] as usize] = pair;
        at[1][d] += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::Rng;

    /// A step's hash in the tests that add and remove at random: a new one every third
    /// step (or while none is live), else one within 40 bits of a live one, so that the
    /// searches find neighbours and the tables' chains grow.
    fn new_or_near(rng: &mut Rng, live: &[(Hash, i64)], step: i64) -> Hash {
        if live.is_empty() || step % 3 == 0 {
            rng.hash()
        } else {
            let base = live[(rng.next() as usize) % live.len()].0;
            let d = (rng.next() % 40) as u32;
            rng.flip(&base, d)
        }
    }

    fn brute(live: &[(Hash, i64)], q: &Hash, threshold: u32) -> Vec<(u32, Hash, i64)> {
        let mut out: Vec<_> = live
            .iter()
            .map(|(h, t)| (distance(h, q), *h, *t))
            .filter(|&(d, _, _)| d <= threshold)
            .collect();
        out.sort();
        out
    }

    fn answer(index: &PdqIndex, q: &Hash, threshold: u32) -> Vec<(u32, Hash, i64)> {
        index
            .search(&[*q], threshold)
            .into_iter()
            .map(|(_, d, h, t)| (d, h, t))
            .collect()
    }

    /// The merge's moves against `copy_within`: every length up to past the 256 bytes read
    /// whole and a block more, moved up by every shift from none to past a block (the
    /// stretches overlap at every shift under their length), the starts raised too.
    #[test]
    fn moves_up_as_copy_within() {
        for len in 0..330 {
            for shift in 0..70 {
                let mut bytes: Vec<u8> = (0..len + shift).map(|x| (x * 7 + 3) as u8).collect();
                let mut want = bytes.clone();
                want.copy_within(0..len, shift);
                // SAFETY: both ranges lie in `bytes`, the second at or above the first
                unsafe { move_up(bytes.as_ptr(), bytes.as_mut_ptr().add(shift), len) };
                assert_eq!(bytes, want, "{len} bytes up by {shift}");
                if len > 80 || shift > 20 {
                    continue;
                }
                let mut starts: Vec<u32> = (0..(len + shift) as u32).map(|x| x * 3).collect();
                let mut want = starts.clone();
                for i in (0..len).rev() {
                    want[i + shift] = starts[i] + 1_000;
                }
                // SAFETY: as above
                unsafe { raise_up(starts.as_ptr(), starts.as_mut_ptr().add(shift), len, 1_000) };
                assert_eq!(starts, want, "{len} starts up by {shift}");
            }
        }
    }
    #[test]
    fn the_probes_are_every_value_within_the_flips_once_with_their_bits() {
        // what `probe` visits for a chunk value `v`: for each group, the values whose high
        // part is `v`'s XOR `h` and whose low 6 bits are a bit of `LOWS[..][v & 63]`, each
        // with the bits it flips; it must be every value within `flips` bits of `v`, once
        for bits in [8, 16] {
            let layout = Layout { bits };
            let probes = Probes::new(layout);
            let mut rng = Rng(bits as u64);
            let values: Vec<usize> = (0..layout.values().min(256))
                .chain((0..200).map(|_| (rng.next() as usize) % layout.values()))
                .chain([layout.values() - 1])
                .collect();
            for flips in 0..=MAX_FLIPS {
                for &v in &values {
                    let (high, low) = (v >> 6, v & 63);
                    let mut got: Vec<(usize, u32)> = Vec::new();
                    for &(h, hbits, lows) in &probes.groups[flips as usize] {
                        let mut wanted = lows[low];
                        while wanted != 0 {
                            let bit = wanted.trailing_zeros();
                            wanted &= wanted - 1;
                            let flipped = hbits + (bit ^ low as u32).count_ones();
                            got.push(((high ^ h) << 6 | bit as usize, flipped));
                        }
                    }
                    got.sort_unstable();
                    let mut want: Vec<(usize, u32)> = (0..layout.values())
                        .filter(|m| m.count_ones() <= flips)
                        .map(|m| (v ^ m, m.count_ones()))
                        .collect();
                    want.sort_unstable();
                    assert_eq!(got, want, "{bits} bits, {flips} flips, value {v}");
                    assert_eq!(got.len(), probes.values[flips as usize]);
                }
            }
        }
    }

    #[test]
    fn a_hash_found_through_one_probe_alone_is_found_for_every_probe() {
        // for each chunk and each value within `t` bits of the query's there, a hash at that
        // value and `t + 1` bits off in every other chunk (so within the threshold, and found
        // only through that one probe of the tables): every one is found, whatever the probe
        for (bits, threshold) in [(16, 31), (16, 47), (16, 63), (8, 31), (8, 63)] {
            let layout = Layout { bits };
            let chunks = layout.chunks();
            let t = threshold / chunks as u32;
            let mut rng = Rng(u64::from(threshold) << 8 | u64::from(bits));
            let q = rng.hash();
            for c in 0..chunks {
                let mut index = PdqIndex::with_chunk_bits(bits, 0);
                let mut live = Vec::new();
                for (i, m) in (0..layout.values())
                    .filter(|m| m.count_ones() <= t)
                    .enumerate()
                {
                    let mut h = q;
                    for j in 0..chunks {
                        let flips = if j == c {
                            m as u64
                        } else {
                            // t + 1 distinct bits of the chunk, at random
                            let mut f = 0u64;
                            while f.count_ones() <= t {
                                f |= 1 << (rng.next() % u64::from(bits));
                            }
                            f
                        };
                        let at = j * bits as usize;
                        h[at / 64] ^= flips << (at % 64);
                    }
                    assert!(distance(&h, &q) <= threshold);
                    index.insert(h, i as i64);
                    live.push((h, i as i64));
                }
                index.merge_tail();
                assert_eq!(index.indexed, index.rows(), "all in the tables");
                assert_eq!(
                    answer(&index, &q, threshold),
                    brute(&live, &q, threshold),
                    "{bits} bits, threshold {threshold}, chunk {c}"
                );
            }
        }
    }

    #[test]
    fn a_tail_row_sharing_one_byte_with_the_query_is_found_through_its_chain() {
        // a row 31 bits off with one byte equal to the query's (each other byte a bit off) is
        // found through that byte's chain alone, wherever the byte is; 32 bits off (no byte
        // equal) it is not, and at 32 the tail's scan finds it; a row equal to the query,
        // in all 32 chains, is found once
        let mut rng = Rng(0x51);
        let base = rng.hash();
        let off = |equal: Option<usize>| {
            let mut h = base;
            for c in (0..32).filter(|&c| Some(c) != equal) {
                // one bit of byte `c`, a different one each time
                let bit = 8 * c + (c * 3) % 8;
                h[bit / 64] ^= 1 << (bit % 64);
            }
            h
        };
        for equal in 0..32 {
            let near = off(Some(equal));
            assert_eq!(distance(&near, &base), 31);
            assert_eq!(TailBytes::byte(&near, equal), TailBytes::byte(&base, equal));
            let mut index: PdqIndex = PdqIndex::new(1024);
            for _ in 0..50 {
                index.insert(rng.hash(), 1);
            }
            index.insert(near, 7);
            index.insert(base, 9);
            assert_eq!(
                (index.indexed, index.tail_bytes.len()),
                (0, 52),
                "all in the chains"
            );
            assert_eq!(answer(&index, &base, 31), vec![(0, base, 9), (31, near, 7)]);
            assert_eq!(answer(&index, &base, 30), vec![(0, base, 9)]);
        }
        let far = off(None);
        assert_eq!(distance(&far, &base), 32);
        let mut index: PdqIndex = PdqIndex::new(1024);
        index.insert(far, 5);
        assert_eq!(answer(&index, &base, 31), vec![]);
        assert_eq!(answer(&index, &base, 32), vec![(32, far, 5)]);
    }

    #[test]
    fn a_tail_past_its_chains_is_scanned_and_its_removed_rows_are_not_found() {
        // past `TailBytes::MOST` rows the tail is scanned; a removed row stays in its chains
        // until a merge but is never found
        let mut rng = Rng(0x77);
        let mut index: PdqIndex = PdqIndex::new(TailBytes::MOST + 100);
        let mut live: Vec<(Hash, i64)> = Vec::new();
        for i in 0..TailBytes::MOST as i64 + 20 {
            let h = rng.hash();
            index.insert(h, i);
            live.push((h, i));
        }
        assert_eq!(index.indexed, 0);
        assert_eq!(index.tail_bytes.len(), TailBytes::MOST);
        for k in [0, 1, TailBytes::MOST - 1, TailBytes::MOST, live.len() - 1] {
            let q = rng.flip(&live[k].0, 31);
            assert_eq!(answer(&index, &q, 31), brute(&live, &q, 31), "row {k}");
        }
        let (gone, _) = live.remove(7);
        assert!(index.remove(&gone));
        assert_eq!(answer(&index, &gone, 31), brute(&live, &gone, 31));
        assert_eq!(answer(&index, &gone, 0), vec![]);
    }

    #[test]
    fn the_radix_sort_of_a_tail_sorts_by_key_then_row() {
        let mut rng = Rng(7);
        for (n, keys) in [
            (0, 16 << 16),
            (100, 16 << 16),
            (5_000, 16 << 16),
            (3_000, 32 << 8),
        ] {
            // rows ascending as a tail gives them (an entry's low 28 bits; mates at random
            // above them), keys at random (repeats among them)
            let pairs: Vec<u64> = (0..n)
                .map(|i| {
                    let entry = Entry::new(i / 16, (rng.next() % 65_536) as usize);
                    (rng.next() % keys as u64) << 40 | entry.bits()
                })
                .collect();
            let mut want = pairs.clone();
            // (stably: a row's pairs in one key, which a tail never makes, keep their order)
            want.sort_by_key(|&pair| (pair_key(pair), Entry::from_bits(pair).row()));
            assert_eq!(sort_by_key(pairs, keys), want, "{n} pairs, {keys} keys");
        }
    }

    #[test]
    fn an_insert_of_a_hash_seen_absent_answers_as_an_insert() {
        // the same adds and removals through `insert` and, where the hash is not held,
        // `insert_absent`: the same answers, tags and sizes through merges and rebuilds
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let (mut by_insert, mut by_absent) = (PdqIndex::new(7), PdqIndex::new(7));
        let mut live: Vec<(Hash, i64)> = Vec::new();
        for step in 0..2000i64 {
            let h = new_or_near(&mut rng, &live, step);
            let fresh = by_insert.insert(h, step);
            if by_absent.contains(&h) {
                assert!(!fresh);
                assert!(!by_absent.insert(h, step));
            } else {
                assert!(fresh);
                by_absent.insert_absent(h, step);
                live.push((h, step));
            }
            if step % 5 == 4 {
                let (gone, _) = live.swap_remove((rng.next() as usize) % live.len());
                assert!(by_insert.remove(&gone) && by_absent.remove(&gone));
            }
            if step % 50 == 0 {
                let base = live[(rng.next() as usize) % live.len()].0;
                let q = rng.flip(&base, 20);
                for threshold in [0, 31, 63] {
                    assert_eq!(
                        answer(&by_absent, &q, threshold),
                        answer(&by_insert, &q, threshold)
                    );
                }
            }
        }
        // the tail merged and chained as often: the same tables, at the same sizes
        assert_eq!(
            (
                by_absent.len(),
                by_absent.rows(),
                by_absent.indexed,
                by_absent.nbytes()
            ),
            (
                by_insert.len(),
                by_insert.rows(),
                by_insert.indexed,
                by_insert.nbytes()
            )
        );
        for (h, t) in &live {
            assert_eq!(by_absent.tag_of(h), Some(*t));
        }
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "insert_absent of a hash held")]
    fn an_insert_absent_of_a_held_hash_is_caught_in_a_debug_build() {
        let h = parse_hex("0f".repeat(32).as_bytes()).unwrap();
        let mut index = PdqIndex::new(0);
        index.insert(h, 1);
        index.insert_absent(h, 2);
    }

    #[test]
    fn equals_a_scan_through_adds_removals_merges_and_compactions() {
        // both chunk widths, and no tables at all (every search a scan)
        for (bits, tail_min) in [(8, 7), (16, 7), (16, usize::MAX)] {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let mut index = PdqIndex::with_chunk_bits(bits, tail_min);
            let mut live: Vec<(Hash, i64)> = Vec::new();
            for step in 0..3000i64 {
                let h = new_or_near(&mut rng, &live, step);
                let fresh = !live.iter().any(|(x, _)| *x == h);
                assert_eq!(index.insert(h, step), fresh);
                if fresh {
                    live.push((h, step));
                }
                if step % 5 == 4 {
                    let (gone, _) = live.swap_remove((rng.next() as usize) % live.len());
                    assert!(index.remove(&gone));
                    assert!(!index.remove(&gone));
                }
                if step % 97 == 0 {
                    let base = live[(rng.next() as usize) % live.len()].0;
                    for d in [0, 1, 15, 16, 30, 31, 32, 33, 47, 63, 64, 100] {
                        let q = rng.flip(&base, d);
                        for threshold in [0, 31, 32, 47, 63, 64, 80, 256] {
                            assert_eq!(
                                answer(&index, &q, threshold),
                                brute(&live, &q, threshold),
                                "bits {bits}, step {step}, d {d}, threshold {threshold}"
                            );
                        }
                    }
                }
            }
            assert_eq!(index.len(), live.len());
            assert_eq!(index.scans(), tail_min == usize::MAX);
            for (h, t) in &live {
                assert_eq!(index.tag_of(h), Some(*t));
            }
        }
    }

    #[test]
    fn a_scan_only_index_keeps_no_tables_and_compacts() {
        let mut rng = Rng(17);
        let mut index = PdqIndex::scan_only();
        let hashes: Vec<Hash> = (0..6000).map(|_| rng.hash()).collect();
        for (t, h) in hashes.iter().enumerate() {
            assert!(index.insert(*h, t as i64));
        }
        // the rows and their look-up table only (no 16 row ids a hash, no bucket starts)
        assert!(
            index.nbytes() < 6000 * (32 + 8 + 1 + 16),
            "{}",
            index.nbytes()
        );
        let full = index.nbytes();
        let rows: Vec<u32> = hashes.iter().map(|h| index.row(h).unwrap()).collect();
        for h in &hashes[..5000] {
            assert!(index.remove(h));
        }
        // rows stay put until the owner compacts: then each live row's new place
        assert_eq!(index.rows(), 6000);
        assert_eq!(index.row(&hashes[5500]), Some(rows[5500]));
        let moved = index.compact().expect("past a quarter dead");
        assert!(index.compact().is_none() && index.nbytes() < full / 2);
        for t in 0..6000 {
            let now = index.row(&hashes[t]);
            assert_eq!(now, (t >= 5000).then(|| moved[rows[t] as usize]));
            assert_eq!(moved[rows[t] as usize] == u32::MAX, t < 5000);
        }
        let live: Vec<(Hash, i64)> = (5000..6000).map(|t| (hashes[t], t as i64)).collect();
        for t in (0..6000).step_by(50) {
            let q = rng.flip(&hashes[t], (t % 40) as u32);
            assert_eq!(answer(&index, &q, 31), brute(&live, &q, 31));
        }
        assert!(index.retag(&hashes[5000], -3) && !index.retag(&hashes[0], 1));
        assert_eq!(index.tag_of(&hashes[5000]), Some(-3));
    }

    #[test]
    fn a_bulk_load_answers_as_adds_one_by_one() {
        let mut rng = Rng(13);
        let hashes: Vec<Hash> = (0..70_000).map(|_| rng.hash()).collect();
        let mut bulk = PdqIndex::new(1024);
        assert_eq!(bulk.insert_many(hashes.iter().map(|&h| (h, 1))), 70_000);
        assert_eq!(bulk.insert_many([(hashes[0], 2)]), 0);
        let mut one = PdqIndex::new(1024);
        for &h in &hashes {
            one.insert(h, 1);
        }
        for t in (0..70_000).step_by(701) {
            let q = rng.flip(&hashes[t], (t % 40) as u32);
            assert_eq!(answer(&bulk, &q, 31), answer(&one, &q, 31));
            assert!(!answer(&bulk, &q, 40).is_empty());
        }
    }

    #[test]
    fn tables_merged_tail_by_tail_equal_tables_built_at_once() {
        // the moves of each merge (rows and starts shifted up under each fresh key, eight
        // starts at a time) against tables written in order from every row at once; near
        // hashes, so that a tail holds several rows of a key and a key new to the tables
        for (bits, n) in [(8, 3_000), (16, 6_000)] {
            let mut rng = Rng(29 + u64::from(bits));
            let mut hashes: Vec<Hash> = Vec::new();
            while hashes.len() < n {
                let h = match hashes.len() {
                    0 => rng.hash(),
                    len if len % 3 == 0 => rng.hash(),
                    len => {
                        let (base, d) = ((rng.next() as usize) % len, (rng.next() % 12) as u32);
                        rng.flip(&hashes[base], d)
                    }
                };
                if !hashes.contains(&h) {
                    hashes.push(h);
                }
            }
            let mut merged = PdqIndex::with_chunk_bits(bits, 5);
            for (t, &h) in hashes.iter().enumerate() {
                merged.insert(h, t as i64);
            }
            merged.merge_tail();
            let mut once = PdqIndex::with_chunk_bits(bits, usize::MAX - 1);
            once.insert_many(hashes.iter().enumerate().map(|(t, &h)| (h, t as i64)));
            once.merge_tail();
            assert_eq!((merged.indexed, once.indexed), (n, n));
            let rows = |x: &PdqIndex| x.ids.iter().map(|e| e.0).collect::<Vec<_>>();
            assert_eq!(rows(&merged), rows(&once), "{bits}-bit rows");
            let (a, b) = (&merged.buckets, &once.buckets);
            assert_eq!(a.occupied, b.occupied, "{bits}-bit bits");
            assert_eq!(a.before, b.before, "{bits}-bit counts");
            assert_eq!(a.starts, b.starts, "{bits}-bit starts");
        }
    }

    #[test]
    fn only_buckets_holding_rows_keep_a_start() {
        // 5,000 hashes in the tables: 80,000 rows (5 bytes each) in at most as many
        // buckets, where a start for each of the 16 tables' 65,536 values took 4 MB alone
        let mut rng = Rng(5);
        let mut index = PdqIndex::new(64);
        let hashes: Vec<Hash> = (0..5000).map(|_| rng.hash()).collect();
        for (t, h) in hashes.iter().enumerate() {
            index.insert(*h, t as i64);
        }
        assert!(index.indexed > 4000);
        assert!(index.nbytes() < 3 << 19, "{}", index.nbytes());
        let live: Vec<(Hash, i64)> = hashes
            .iter()
            .enumerate()
            .map(|(t, h)| (*h, t as i64))
            .collect();
        for t in (0..5000).step_by(97) {
            let q = rng.flip(&hashes[t], (t % 40) as u32);
            assert_eq!(answer(&index, &q, 31), brute(&live, &q, 31));
        }
    }

    #[test]
    fn folded_values_are_no_farther_apart_than_the_values() {
        let mut rng = Rng(29);
        for _ in 0..10_000 {
            let (a, b) = (
                (rng.next() & 0xffff) as usize,
                (rng.next() & 0xffff) as usize,
            );
            let folded = (fold(a) ^ fold(b)).count_ones();
            assert!(folded <= (a ^ b).count_ones(), "{a:x} {b:x}");
            assert_eq!(fold(a & 0xff), (a & 0xff) as u16); // an 8-bit chunk's mate is itself
        }
    }

    #[test]
    fn an_entry_reads_back_its_row_and_its_folded_mate_from_its_words() {
        // `row` and `mate` read the 5 bytes as a 4-byte and a 2-byte word: every folded mate,
        // the rows' every bit and their edges
        let rows = (0..28).map(|b| 1u32 << b).chain([
            0,
            1,
            0x0fff_fffe,
            MAX_TABLE_ROWS as u32 - 1,
            0x0555_5555,
            0x0aaa_aaaa,
        ]);
        for row in rows {
            for mate in 0..0x1000 {
                let e = Entry::new(row, mate);
                assert_eq!(
                    (e.row(), e.mate()),
                    (row as usize, mate as u32),
                    "{row:x} {mate:x}"
                );
                assert_eq!(Entry::from_bits(e.bits()).0, e.0);
            }
        }
    }

    #[test]
    fn a_scan_in_blocks_names_every_row_within_the_threshold_wherever_it_is() {
        // the scan's blocks of four rows and the rows past them: a row at exactly the
        // threshold is named at every place in and past a block, its differing bits in
        // either half or spread, one bit further it may be named but is not within; a row
        // is named once, in order (the caller counts each named row's distance)
        let mut rng = Rng(8);
        let q = rng.hash();
        let mut named = Vec::new();
        near_in_blocks(&[], &q, 256, |j| named.push(j));
        assert!(named.is_empty());
        for len in 1..=13 {
            for place in 0..len {
                for threshold in [0_u32, 31, 64, 200, 256] {
                    for words in [&[0, 1][..], &[2, 3], &[0, 1, 2, 3]] {
                        let mut rows: Vec<Hash> = (0..len).map(|_| rng.hash()).collect();
                        let off =
                            (threshold + (rng.next() % 2) as u32).min(64 * words.len() as u32);
                        rows[place] = if words.len() == 4 {
                            rng.flip(&q, off)
                        } else {
                            let mut h = q;
                            for bit in 0..off as usize {
                                h[words[bit % 2]] ^= 1 << (bit / 2);
                            }
                            h
                        };
                        assert_eq!(distance(&rows[place], &q), off);
                        let within: Vec<usize> = (0..len)
                            .filter(|&j| distance(&rows[j], &q) <= threshold)
                            .collect();
                        assert_eq!(within.contains(&place), off <= threshold);
                        let mut named = Vec::new();
                        near_in_blocks(&rows, &q, threshold, |j| named.push(j));
                        assert!(named.windows(2).all(|w| w[0] < w[1]), "{named:?}");
                        assert!(named.last().map_or(true, |&j| j < len));
                        named.retain(|&j| distance(&rows[j], &q) <= threshold);
                        assert_eq!(named, within, "{len} {place} {threshold} {words:?} {off}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_tail_row_off_in_its_first_half_alone_is_found_at_the_threshold() {
        // the tail's scan counts the first two words first and drops a row past the
        // threshold there: a row whose every differing bit is in them, at exactly the
        // threshold, is still found, and one bit further it is not (at 64, above what the
        // tables answer, the scan of every row)
        let mut rng = Rng(31);
        let base = rng.hash();
        for (threshold, off) in [
            (31_u32, 31_u32),
            (31, 32),
            (0, 0),
            (0, 1),
            (64, 64),
            (64, 65),
        ] {
            let mut near = base;
            for bit in 0..off as usize {
                // alternately in words 0 and 1
                near[bit % 2] ^= 1 << (bit / 2);
            }
            let mut index: PdqIndex = PdqIndex::new(1024);
            index.insert(near, 3);
            index.insert(rng.hash(), 4);
            assert_eq!(index.indexed, 0, "both rows in the tail");
            let want = if off <= threshold {
                vec![(off, near, 3)]
            } else {
                vec![]
            };
            assert_eq!(answer(&index, &base, threshold), want, "{threshold} {off}");
        }
    }

    #[test]
    fn a_hash_found_only_through_the_pair_at_its_budget_is_found() {
        // 31 bits off, spread so that the mate filter is tight: seven pairs of chunks 2 + 2
        // bits off (no chunk of theirs is probed within a bit), one pair 1 + 2 (3 bits, the
        // budget of a pair at 31) and the rest equal; then at 30 it is out of reach
        let mut rng = Rng(23);
        for bits in [16, 8] {
            let chunks = 256 / bits;
            let base = rng.hash();
            let mut far = base;
            let mut flip = |chunk: usize, n: usize| {
                for b in 0..n {
                    let bit = chunk * bits + b;
                    far[bit / 64] ^= 1 << (bit % 64);
                }
            };
            let mut spent = 0;
            // (8-bit chunks: t = 0, a pair's budget 1: fifteen pairs 1 + 1, one pair 0 + 1)
            let (both, one) = if bits == 16 { (2, (1, 2)) } else { (1, (0, 1)) };
            for pair in 0..chunks / 2 {
                if spent + 2 * both + one.0 + one.1 > 31 {
                    flip(2 * pair, one.0);
                    flip(2 * pair + 1, one.1);
                    break;
                }
                flip(2 * pair, both);
                flip(2 * pair + 1, both);
                spent += 2 * both;
            }
            assert_eq!(distance(&base, &far), 31, "{bits}-bit chunks");
            let mut index = PdqIndex::with_chunk_bits(bits as u32, 0);
            index.insert(far, 7);
            for _ in 0..200 {
                index.insert(rng.hash(), 0);
            }
            assert_eq!(
                answer(&index, &base, 31),
                vec![(31, far, 7)],
                "{bits}-bit chunks"
            );
            assert!(answer(&index, &base, 30).is_empty(), "{bits}-bit chunks");
        }
    }

    #[test]
    fn a_mass_removal_compacts_and_keeps_the_answers() {
        let mut rng = Rng(11);
        let mut index = PdqIndex::new(64);
        let hashes: Vec<Hash> = (0..5000).map(|_| rng.hash()).collect();
        for (t, h) in hashes.iter().enumerate() {
            assert!(index.insert(*h, t as i64));
        }
        let full = index.nbytes();
        for h in &hashes[..4000] {
            assert!(index.remove(h));
        }
        assert!(index.nbytes() < full);
        let live: Vec<(Hash, i64)> = (4000..5000).map(|t| (hashes[t], t as i64)).collect();
        for t in (0..5000).step_by(50) {
            let q = rng.flip(&hashes[t], (t % 40) as u32);
            assert_eq!(answer(&index, &q, 31), brute(&live, &q, 31));
        }
        assert!(!index.contains(&hashes[0]) && index.contains(&hashes[4000]));
    }

    #[test]
    fn the_complement_is_256_away_and_a_duplicate_keeps_its_tag() {
        let h = parse_hex("0f".repeat(32).as_bytes()).unwrap();
        let c = parse_hex("f0".repeat(32).as_bytes()).unwrap();
        let mut index = PdqIndex::new(0);
        assert!(index.insert(h, 1));
        assert!(!index.insert(h, 2));
        assert_eq!(index.tag_of(&h), Some(1));
        assert!(answer(&index, &c, 255).is_empty());
        assert_eq!(answer(&index, &c, 256), vec![(256, h, 1)]);
        assert_eq!(answer(&index, &c, 1000), vec![(256, h, 1)]);
    }

    #[test]
    fn hex_round_trips_and_rejects_what_is_not_64_hex_digits() {
        let mut rng = Rng(7);
        for _ in 0..100 {
            let h = rng.hash();
            assert_eq!(parse_hex(format_hex(&h).as_bytes()), Some(h));
        }
        for bad in [
            "",
            "0",
            &"g".repeat(64),
            &format!("{} ", "f".repeat(63)),
            &"f".repeat(65),
        ] {
            assert_eq!(parse_hex(bad.as_bytes()), None, "{bad:?}");
        }
        // every byte, in one place of the text: a digit's value, or no hash
        for b in 0..=255u8 {
            let mut text = [b'0'; 64];
            text[37] = b;
            let want = (b as char).to_digit(16).map(|v| {
                let mut h = [0u64; 4];
                h[2] = u64::from(v) << (4 * (15 - 5));
                h
            });
            assert_eq!(parse_hex(&text), want, "{b}");
        }
        // word order is hex order
        let a = parse_hex(format!("{}1", "0".repeat(63)).as_bytes()).unwrap();
        let b = parse_hex(format!("1{}", "0".repeat(63)).as_bytes()).unwrap();
        assert!(a < b);
    }
}
