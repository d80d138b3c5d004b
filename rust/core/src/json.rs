//! Reading a share event's JSON: the fields the validator needs, as the JSON
//! gave them, and nothing else kept.
//!
//! The rules are orjson's, which read these lines before: UTF-8 checked first,
//! no byte order mark, integers up to 64 bits (a larger one is a float),
//! nesting up to 1,024 deep, the last of a repeated key wins, and nothing but
//! whitespace after the value. Validation is ordered (the first failing check
//! names the rejection), so every field is read first and judged after.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Deepest nesting accepted (orjson's limit): a document nested deeper is not JSON here.
pub const MAX_DEPTH: usize = 1024;

/// A JSON value as far as validation looks at it: scalars kept, containers only named.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    Null,
    Bool(bool),
    /// An integer that fits 64 bits (signed or not), as orjson gives an `int`.
    Int(i128),
    /// Any other number (a fraction, an exponent, an integer over 64 bits).
    Float(f64),
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl Val<'_> {
    /// Python's name of the type orjson gives for this value.
    pub fn py_type(&self) -> &'static str {
        match self {
            Val::Null => "NoneType",
            Val::Bool(_) => "bool",
            Val::Int(_) => "int",
            Val::Float(_) => "float",
            Val::Str(_) => "str",
            Val::Array => "list",
            Val::Object => "dict",
        }
    }
}

/// A content object's fields.
#[derive(Debug, Default)]
pub struct ContentFields<'a> {
    pub pdq: Option<Val<'a>>,
    pub md5: Option<Val<'a>>,
    pub pdq_quality: Option<Val<'a>>,
    /// `Ok(raw JSON text)` for a list, `Err(value)` for anything else.
    pub vpdq: Option<Result<&'a RawValue, Val<'a>>>,
}

/// An object read field by field (`T`), or any other value.
// One per line, on the stack, consumed at once: boxing the fields would cost an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ObjectOr<'a, T> {
    Object(T),
    Other(Val<'a>),
}

/// The `content` field: an object's fields, or another value.
pub type ContentVal<'a> = ObjectOr<'a, ContentFields<'a>>;

/// An event object's fields (`None`: absent).
#[derive(Debug, Default)]
pub struct Fields<'a> {
    pub event_id: Option<Val<'a>>,
    pub kind: Option<Val<'a>>,
    pub ts: Option<Val<'a>>,
    pub post_id: Option<Val<'a>>,
    pub user_id: Option<Val<'a>>,
    pub parent_post_id: Option<Val<'a>>,
    pub followers: Option<Val<'a>>,
    pub content: Option<ContentVal<'a>>,
}

/// A whole line: an object's fields, or the type of whatever else it was.
pub type Doc<'a> = ObjectOr<'a, Fields<'a>>;

/// Where a JSON text's strings are, fed its bytes in order: what a scan for brackets and
/// commas skips (an escaped quote does not close a string).
#[derive(Debug, Default)]
pub struct InText {
    open: bool,
    escaped: bool,
}

impl InText {
    /// Feeds the next byte: whether it belongs to a string, its quotes included.
    pub fn feed(&mut self, b: u8) -> bool {
        if self.open {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.open = false;
            }
            true
        } else {
            self.open = b == b'"';
            self.open
        }
    }

    /// Whether the last byte fed left a string open.
    pub fn is_open(&self) -> bool {
        self.open
    }
}

/// Whether `data`'s nesting stays within [`MAX_DEPTH`]. Exact for valid JSON
/// (brackets inside strings skipped); on invalid JSON the parser fails anyway.
pub fn depth_ok(data: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut text = InText::default();
    for &b in data {
        if text.feed(b) {
            continue;
        }
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Parse one line's JSON (already known to be UTF-8).
pub fn parse(text: &str) -> Result<Doc<'_>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    // the depth was checked by depth_ok: serde_json's own limit (128) is lower than orjson's
    de.disable_recursion_limit();
    let doc = ObjectSeed::<Fields<'_>>::default().deserialize(&mut de)?;
    de.end()?;
    Ok(doc)
}

/// The common line read in one pass, no serde: a flat object of the known fields whose
/// strings hold no escape, whose numbers are plain non-negative integers (at most 18
/// digits) and whose `content` is a flat object (or `null`). `None` for anything else,
/// which [`parse`] then reads (and, where it is not JSON, says why): what this accepts it
/// reads as `parse` does, field for field (`tests::the_fast_reader_agrees_with_serde`),
/// so every rejection and its detail are `parse`'s.
///
/// Why: a share event is a small flat object, and serde's reader (with the depth check
/// before it, a second pass) was 7,000 of a platform replay's 43,000 instructions an
/// event (callgrind); this is 3,000.
pub fn parse_fast(text: &str) -> Option<Doc<'_>> {
    let mut f = Fields::default();
    parse_fast_into(text, &mut f)?;
    Some(ObjectOr::Object(f))
}

/// [`parse_fast`] into `f` (a default `Fields`: a value this reader replaces is its own, which
/// owns nothing, and is not dropped; on `None` partly filled, to be dropped):
/// the object's fields written where the caller keeps them. Why: `Fields` is 352 bytes
/// (its content's 112), and returned by value they were copied at each step out (the
/// content's fields into the event's, the event's out of the reader, out of `Doc`, into
/// the validator): seven `memcpy` calls a line, about 60 instructions each (callgrind).
pub fn parse_fast_into<'a>(text: &'a str, f: &mut Fields<'a>) -> Option<()> {
    let mut r = Scan {
        text,
        b: text.as_bytes(),
        at: 0,
    };
    r.ws();
    r.eat(b'{')?;
    r.members(
        (&EVENT_KEYS, &EVENT_WORDS),
        f,
        |r, key, f: &mut Fields<'a>| {
            // one place reads a member's scalar (inlined there), then it is stored by key:
            // `scalar` called from each arm was a call a member, its value moved out and in
            let slot = match key {
                Some(0) => &mut f.event_id,
                Some(1) => &mut f.kind,
                Some(2) => &mut f.ts,
                Some(3) => &mut f.post_id,
                Some(4) => &mut f.parent_post_id,
                Some(5) => &mut f.user_id,
                Some(6) => &mut f.followers,
                Some(7) => {
                    if r.eat_if(b'{') {
                        // a repeated key's last value wins: its fields afresh
                        let c = match f.content.insert(ObjectOr::Object(ContentFields::default())) {
                            ObjectOr::Object(c) => c,
                            ObjectOr::Other(_) => unreachable!("an object was just put there"),
                        };
                        r.members((&CONTENT_KEYS, &CONTENT_WORDS), c, Scan::content)?;
                    } else {
                        f.content = Some(match r.scalar()? {
                            Val::Null => ObjectOr::Other(Val::Null),
                            _ => return None,
                        })
                    }
                    return Some(());
                }
                _ => {
                    r.scalar()?;
                    return Some(());
                }
            };
            // a repeated key's value before owns nothing (this reader's texts borrow the
            // line): not dropped, where its drop asked whether it held text
            std::mem::forget(slot.replace(r.scalar_inline()?));
            Some(())
        },
    )?;
    r.ws();
    (r.at == r.b.len()).then_some(())
}

/// An event's keys in the order its producers write them (`streams.simulate`, the
/// platform's writer: `event_id`, `type`, `ts`, `post_id`, `parent_post_id` if a reshare,
/// `user_id`, `followers`, `content`), each quoted, with its colon: [`Scan::members`] tries
/// the next ones at a member's start, one compare of their bytes, before reading a key as
/// text. Their index is what the member's reader is given.
const EVENT_KEYS: [&[u8]; 8] = [
    b"\"event_id\":",
    b"\"type\":",
    b"\"ts\":",
    b"\"post_id\":",
    b"\"parent_post_id\":",
    b"\"user_id\":",
    b"\"followers\":",
    b"\"content\":",
];
/// A content object's keys, the same way (`pdq`, `pdq_quality`, `md5`; `vpdq` a video's).
const CONTENT_KEYS: [&[u8]; 4] = [b"\"pdq\":", b"\"pdq_quality\":", b"\"md5\":", b"\"vpdq\":"];
const EVENT_WORDS: [KeyWords; 8] = KeyWords::all(EVENT_KEYS);
const CONTENT_WORDS: [KeyWords; 4] = KeyWords::all(CONTENT_KEYS);

/// A key (quoted, with its colon: at most 17 bytes) as [`Scan::next_key`] compares it: its
/// first 16 bytes as two little-endian words, zero past its end, and a mask of its bytes;
/// a 17th byte (`"parent_post_id":`'s colon) compared alone. Two masked words, where three
/// were (every key but one is 16 bytes or fewer), and 16 bytes read where 24 were.
#[derive(Clone, Copy)]
struct KeyWords {
    words: [u64; 2],
    masks: [u64; 2],
    /// its 17th byte, if it has one
    last: u8,
    len: usize,
}

impl KeyWords {
    const fn all<const N: usize>(keys: [&[u8]; N]) -> [KeyWords; N] {
        let mut out = [KeyWords {
            words: [0; 2],
            masks: [0; 2],
            last: 0,
            len: 0,
        }; N];
        let mut k = 0;
        while k < N {
            let key = keys[k];
            assert!(key.len() <= 17, "a key is compared as two words and a byte");
            let mut i = 0;
            while i < key.len() && i < 16 {
                out[k].words[i / 8] |= (key[i] as u64) << (8 * (i % 8));
                out[k].masks[i / 8] |= 0xff << (8 * (i % 8));
                i += 1;
            }
            if key.len() == 17 {
                out[k].last = key[16];
            }
            out[k].len = key.len();
            k += 1;
        }
        out
    }

    /// Whether `rest`, whose first 16 bytes are `w`, starts with this key.
    #[inline(always)]
    fn at(&self, w: &[u64; 2], rest: &[u8]) -> bool {
        ((w[0] ^ self.words[0]) & self.masks[0] | (w[1] ^ self.words[1]) & self.masks[1]) == 0
            && (self.len <= 16 || rest.get(16) == Some(&self.last))
    }
}

/// 16 bytes as two little-endian words.
#[inline(always)]
fn words_of(b: &[u8]) -> [u64; 2] {
    let word = |i: usize| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes"));
    [word(0), word(1)]
}

/// A line's last bytes (fewer than 16) as [`words_of`] reads them, zeros after.
#[cold]
#[inline(never)]
fn padded_words(rest: &[u8]) -> [u64; 2] {
    let mut b = [0u8; 16];
    b[..rest.len()].copy_from_slice(rest);
    words_of(&b)
}

/// [`parse_fast`]'s cursor.
struct Scan<'a> {
    text: &'a str,
    b: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    /// Whitespace skipped. Asked four times a member, and a producer writes none: one
    /// compare for a byte that cannot be whitespace (above a space), the loop apart.
    #[inline(always)]
    fn ws(&mut self) {
        if self.b.get(self.at).is_some_and(|&b| b <= b' ') {
            self.more_ws();
        }
    }

    #[inline(never)]
    fn more_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.at) {
            self.at += 1;
        }
    }

    fn eat_if(&mut self, c: u8) -> bool {
        let hit = self.b.get(self.at) == Some(&c);
        self.at += usize::from(hit);
        hit
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.eat_if(c).then_some(())
    }

    /// A string with no escape and no control character (the text is UTF-8 already).
    /// Inlined into [`Scan::scalar`], its one caller of weight (a call's saved registers
    /// were 15 of its instructions).
    #[inline(always)]
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let end = start + plain_run(&self.b[start..]);
        if *self.b.get(end)? != b'"' {
            return None; // an escape or a control character: serde's reader's
        }
        self.at = end + 1;
        // SAFETY: `start` follows a quote and `end` is one, in bounds (read above): both are
        // char boundaries of the UTF-8 text (an ASCII byte is never inside a character)
        Some(unsafe { self.text.get_unchecked(start..end) })
    }

    /// [`Scan::scalar`], out of line: its callers but the event's members' one.
    #[inline(never)]
    fn scalar(&mut self) -> Option<Val<'a>> {
        self.scalar_inline()
    }

    /// A string, a plain non-negative integer or a literal; `None` for anything else.
    #[inline(always)]
    fn scalar_inline(&mut self) -> Option<Val<'a>> {
        match *self.b.get(self.at)? {
            b'"' => self.string().map(|s| Val::Str(Cow::Borrowed(s))),
            b'0'..=b'9' => {
                let start = self.at;
                #[cfg(target_arch = "x86_64")]
                if let Some((n, len)) = self.b.get(start..start + 16).and_then(number16) {
                    self.at += len;
                    return self.integer(start, n);
                }
                let mut n: u64 = 0;
                while let Some(&d @ b'0'..=b'9') = self.b.get(self.at) {
                    n = n * 10 + u64::from(d - b'0');
                    self.at += 1;
                    if self.at - start > 18 {
                        return None; // serde's reader decides about long ones
                    }
                }
                self.integer(start, n)
            }
            _ => {
                for (word, val) in [
                    (&b"null"[..], Val::Null),
                    (b"true", Val::Bool(true)),
                    (b"false", Val::Bool(false)),
                ] {
                    if self.b[self.at..].starts_with(word) {
                        self.at += word.len();
                        return Some(val);
                    }
                }
                None
            }
        }
    }

    /// The integer `n` whose digits run from `start` to the cursor, if JSON's integer and
    /// this reader's: not one with a leading zero (not JSON), not one a `.` or an exponent
    /// follows (a float: serde's reader decides). Both readers of a number's digits (by
    /// words, [`number16`], and a byte at a time) end here: what a number may not be is
    /// said once. Inlined: a call a number would cost a line more than the checks.
    #[inline(always)]
    fn integer(&self, start: usize, n: u64) -> Option<Val<'a>> {
        if self.b[start] == b'0' && self.at - start > 1 {
            return None; // a leading zero is not JSON
        }
        if let Some(b'.' | b'e' | b'E') = self.b.get(self.at) {
            return None;
        }
        Some(Val::Int(n.into()))
    }

    /// An object's members after its `{` up to its `}`, each read by `member` into `out`
    /// (default, filled in place), given its key's index in `keys` (`None`: another key). A key is looked for first
    /// among those after the last one found, in their order (a producer's order: one
    /// compare, where reading it as text cost a scan for its closing quote and a compare);
    /// any other key, or one not in that order, is read as text and looked up (the same
    /// answer: a key's bytes, quoted, with its colon).
    fn members<T>(
        &mut self,
        (keys, words): (&[&[u8]], &[KeyWords]),
        out: &mut T,
        mut member: impl FnMut(&mut Self, Option<usize>, &mut T) -> Option<()>,
    ) -> Option<()> {
        let mut next = 0;
        self.ws();
        if self.eat_if(b'}') {
            return Some(());
        }
        // a producer writes no whitespace: the key looked for where the member starts, and
        // whitespace skipped only if none is there; after a value, its comma or the brace
        // read at once, whitespace skipped only if neither is there (it was asked four
        // times a member, the comma and the brace each a read of their own)
        loop {
            let key = match self.next_key(words, next) {
                Some(i) => {
                    next = i + 1;
                    Some(i)
                }
                None => self.other_key(keys, words, &mut next)?,
            };
            self.ws();
            member(self, key, out)?;
            match self.b.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Some(());
                }
                _ => {
                    self.ws();
                    if self.eat_if(b'}') {
                        return Some(());
                    }
                    self.eat(b',')?;
                }
            }
        }
    }

    /// A member's key where [`Scan::next_key`] found none at the cursor: after whitespace,
    /// the next of `words` again, else the key read as text and looked up (`next` as
    /// [`Scan::members`] keeps it).
    #[cold]
    #[inline(never)]
    fn other_key(
        &mut self,
        keys: &[&[u8]],
        words: &[KeyWords],
        next: &mut usize,
    ) -> Option<Option<usize>> {
        self.ws();
        if let Some(i) = self.next_key(words, *next) {
            *next = i + 1;
            return Some(Some(i));
        }
        let key = self.string()?.as_bytes();
        self.ws();
        self.eat(b':')?;
        Some(keys.iter().position(|k| k[1..k.len() - 2] == *key))
    }

    /// The first of `keys` from `from` on that is at the cursor (quoted, with its colon):
    /// its index, the cursor past its colon. Each key is compared as its [`KeyWords`]: the
    /// next 16 bytes read once as two words (zeros past the line's end: no key holds a
    /// zero byte), a key two masked compares (and a byte for a 17th), where `starts_with` of a key of run-time
    /// length called `memcmp` (about 60 instructions a member, callgrind).
    #[inline(always)]
    fn next_key(&mut self, keys: &[KeyWords], from: usize) -> Option<usize> {
        let rest = &self.b[self.at..];
        let w = match rest.get(..16) {
            Some(head) => words_of(head),
            None => padded_words(rest),
        };
        // the next key in the producers' order first: the usual hit
        let i = match keys.get(from) {
            Some(k) if k.at(&w, rest) => from,
            _ => from + 1 + keys.get(from + 1..)?.iter().position(|k| k.at(&w, rest))?,
        };
        self.at += keys[i].len;
        Some(i)
    }

    /// A member of a flat `content` object (its key's index in [`CONTENT_KEYS`]).
    fn content(&mut self, key: Option<usize>, c: &mut ContentFields<'a>) -> Option<()> {
        // as an event's members: one place reads the scalar, inlined
        let slot = match key {
            Some(0) => &mut c.pdq,
            Some(1) => &mut c.pdq_quality,
            Some(2) => &mut c.md5,
            Some(_) => return None, // a video's frames: serde's reader keeps their text
            _ => {
                self.scalar()?;
                return Some(());
            }
        };
        std::mem::forget(slot.replace(self.scalar_inline()?)); // as an event's member
        Some(())
    }
}

/// The number that `b` starts with (a digit) and its count of digits, if a digit not
/// among the sixteen ends it: the run's length found by one SSE2 compare (the digits are
/// the bytes whose `b - '0'`, moved by 0x80, is under `-128 + 10`), its value by words
/// ([`eight_digits`]: the first eight and the rest, each shifted up so that the bytes
/// under it are zeros, read as leading zeros). Why: a digit a step was about seven
/// instructions a digit, an epoch time's thirteen digits about a hundred (callgrind,
/// `parse_lines`, 40% of a line's numbers are such times). `None` where all sixteen are
/// digits: the byte loop reads it (it refuses a run past 18).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn number16(b: &[u8]) -> Option<(u64, usize)> {
    use std::arch::x86_64::{
        _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8, _mm_sub_epi8,
        _mm_xor_si128,
    };
    let b: &[u8; 16] = b.try_into().ok()?;
    // SAFETY: SSE2 is part of x86-64; the load reads `b`'s 16 bytes
    let digits = unsafe {
        let v = _mm_loadu_si128(b.as_ptr().cast());
        let moved = _mm_xor_si128(
            _mm_sub_epi8(v, _mm_set1_epi8(b'0' as i8)),
            _mm_set1_epi8(i8::MIN),
        );
        _mm_movemask_epi8(_mm_cmplt_epi8(moved, _mm_set1_epi8(i8::MIN + 10))) as u32
    };
    let len = (!digits).trailing_zeros() as usize; // 16 where all are digits
    let word = |i: usize| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes"));
    // the digits of a word moved to its top (its first digit the lowest byte still), the
    // bytes after them shifted out; `len` is at least 1 (`b` starts with a digit)
    let top = |w: u64, count: usize| w << (8 * (8 - count));
    match len {
        1..=8 => Some((eight_digits(top(word(0), len)), len)),
        9..=15 => Some((
            eight_digits(word(0)) * TENS[len - 8] + eight_digits(top(word(1), len - 8)),
            len,
        )),
        _ => None,
    }
}

/// 10 to the power of its index, up to 10^7.
#[cfg(target_arch = "x86_64")]
const TENS: [u64; 8] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000];

/// The value of eight bytes read as decimal digits, the first in the lowest byte (each
/// byte's low four bits a digit: a zero byte reads as a leading zero): pairs, then fours,
/// then the eight, each step one multiply (as simdjson reads eight digits).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn eight_digits(w: u64) -> u64 {
    let w = ((w & 0x0f0f_0f0f_0f0f_0f0f).wrapping_mul(2561)) >> 8;
    let w = ((w & 0x00ff_00ff_00ff_00ff).wrapping_mul(6_553_601)) >> 16;
    ((w & 0x0000_ffff_0000_ffff).wrapping_mul(42_949_672_960_001)) >> 32
}

/// How many bytes `b` starts with that are neither a quote, a backslash nor a control
/// character (under 0x20): where a string with no escape ends (the parser), and whether a
/// text has a byte to escape at all (`wire::to_escape`, the state logs' writers). Sixteen
/// bytes a step with SSE2 (every x86-64 has it): three compares, a mask, about ten
/// instructions a step, where eight bytes a step by word tricks were about 22 (callgrind:
/// most of a line is its hashes' and ids' text); elsewhere, eight bytes a step by word
/// tricks. Past the whole steps, the last sixteen (or eight) bytes are read again as one
/// more step, where they went a byte at a time: the bytes read twice were clear, so the
/// step's first mark is the first byte asked for. A text under eight bytes, a byte at a
/// time. An event's ids and a cluster's are 10-20 bytes, some 2,000,000 texts a
/// one-worker benchmark's 300,000 events.
#[inline(always)]
pub(crate) fn plain_run(b: &[u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        #[inline(always)]
        fn marks(chunk: &[u8]) -> u64 {
            use std::arch::x86_64::{
                _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
                _mm_set1_epi8,
            };
            debug_assert_eq!(chunk.len(), 16);
            // SAFETY: SSE2 is part of x86-64; the load reads the 16 bytes of `chunk`.
            unsafe {
                let v = _mm_loadu_si128(chunk.as_ptr().cast());
                let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
                let slash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
                // under 0x20: max(v, 0x1f) is 0x1f
                let low = _mm_set1_epi8(0x1f);
                let control = _mm_cmpeq_epi8(_mm_max_epu8(v, low), low);
                _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, slash), control)) as u64
            }
        }
        if let Some(end) = first_marked::<16>(b, marks, 1) {
            return end;
        }
    }
    // a borrow in these tests only marks bytes after a true one, so the lowest mark is
    // the first such byte (and a byte read again, clear, marks nothing)
    #[inline(always)]
    fn word_marks(chunk: &[u8]) -> u64 {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let (q, s) = (w ^ (ONES * 0x22), w ^ (ONES * 0x5c));
        (q.wrapping_sub(ONES) & !q | s.wrapping_sub(ONES) & !s | w.wrapping_sub(ONES * 0x20) & !w)
            & HIGH
    }
    if let Some(end) = first_marked::<8>(b, word_marks, 8) {
        return end;
    }
    let mut at = 0;
    while let Some(&c) = b.get(at) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            break;
        }
        at += 1;
    }
    at
}

/// [`plain_run`]'s steps of `W` bytes, each step's `marks` (`bits` of them a byte, the
/// lowest for the first byte): where the first marked byte is, or the end; past the whole
/// steps, the last `W` bytes read again as one more step (the bytes read twice were clear,
/// so the step's first mark is the first byte asked for). `None`: `b` is shorter than a
/// step. One piece for the sixteen-byte steps (SSE2) and the eight-byte words, which had
/// each its own loop and tail (the duplicates tool's pair; 3 fewer instructions a line of
/// the worker stream, callgrind: the same code).
#[inline(always)]
fn first_marked<const W: usize>(
    b: &[u8],
    marks: impl Fn(&[u8]) -> u64,
    bits: u32,
) -> Option<usize> {
    let n = b.len();
    let mut at = 0;
    while let Some(chunk) = b.get(at..at + W) {
        let m = marks(chunk);
        if m != 0 {
            return Some(at + (m.trailing_zeros() / bits) as usize);
        }
        at += W;
    }
    if at == 0 {
        return None;
    }
    if at == n {
        return Some(n);
    }
    // the last W, some of them again
    let m = marks(&b[n - W..]);
    Some(if m == 0 {
        n
    } else {
        n - W + (m.trailing_zeros() / bits) as usize
    })
}

/// A key, compared after its escapes are decoded (`"\u0074ype"` is `type`).
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Any value, kept as a [`Val`] (containers skipped over).
struct ValSeed;

struct ValVisitor;

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Val::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Val::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Val::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Val::Int(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Val::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Val::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Val::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Val::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Val::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Val::Object)
    }
}

impl<'de> DeserializeSeed<'de> for ValSeed {
    type Value = Val<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(ValVisitor)
    }
}

/// An object whose fields are read one by one (an event, its content).
trait ReadFields<'de>: Sized + Default {
    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
}

impl<'de> ReadFields<'de> for ContentFields<'de> {
    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "pdq" => self.pdq = Some(map.next_value_seed(ValSeed)?),
            "md5" => self.md5 = Some(map.next_value_seed(ValSeed)?),
            "pdq_quality" => self.pdq_quality = Some(map.next_value_seed(ValSeed)?),
            "vpdq" => self.vpdq = Some(map.next_value_seed(VpdqSeed)?),
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

impl<'de> ReadFields<'de> for Fields<'de> {
    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "event_id" => self.event_id = Some(map.next_value_seed(ValSeed)?),
            "type" => self.kind = Some(map.next_value_seed(ValSeed)?),
            "ts" => self.ts = Some(map.next_value_seed(ValSeed)?),
            "post_id" => self.post_id = Some(map.next_value_seed(ValSeed)?),
            "user_id" => self.user_id = Some(map.next_value_seed(ValSeed)?),
            "parent_post_id" => self.parent_post_id = Some(map.next_value_seed(ValSeed)?),
            "followers" => self.followers = Some(map.next_value_seed(ValSeed)?),
            "content" => self.content = Some(map.next_value_seed(ObjectSeed::default())?),
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// An object read by its [`ReadFields`], or any other value as a [`Val`].
struct ObjectSeed<T>(std::marker::PhantomData<T>);

impl<T> Default for ObjectSeed<T> {
    fn default() -> Self {
        ObjectSeed(std::marker::PhantomData)
    }
}

impl<'de, T: ReadFields<'de>> Visitor<'de> for ObjectSeed<T> {
    type Value = ObjectOr<'de, T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = T::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            fields.read(key.0.as_ref(), &mut map)?;
        }
        Ok(ObjectOr::Object(fields))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        ValVisitor.visit_seq(seq).map(ObjectOr::Other)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(ObjectOr::Other(Val::Null))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(ObjectOr::Other(Val::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(ObjectOr::Other(Val::Int(v.into())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(ObjectOr::Other(Val::Int(v.into())))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(ObjectOr::Other(Val::Float(v)))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(ObjectOr::Other(Val::Str(Cow::Borrowed(""))))
    }
}

impl<'de, T: ReadFields<'de>> DeserializeSeed<'de> for ObjectSeed<T> {
    type Value = ObjectOr<'de, T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// A vPDQ list, kept as its JSON text for Python's vPDQ parser; any other value as a [`Val`].
struct VpdqSeed;

impl<'de> DeserializeSeed<'de> for VpdqSeed {
    type Value = Result<&'de RawValue, Val<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let raw: &'de RawValue = de::Deserialize::deserialize(d)?;
        let text = raw.get();
        if text.starts_with('[') {
            return Ok(Ok(raw));
        }
        // a scalar or an object: read it again for its type (it is small or skipped)
        let mut inner = serde_json::Deserializer::from_str(text);
        inner.disable_recursion_limit();
        let v = ValSeed.deserialize(&mut inner).map_err(de::Error::custom)?;
        Ok(Err(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sixteen_bytes_read_by_words_are_the_byte_loops_number_whatever_byte_ends_it() {
        // every byte value at every place after the first digit of sixteen (the bytes with
        // the high bit set include 0xb0-0xb9, a digit's bits but for the top one: the signed
        // compare's edge), the others random digits: the run's length and value are a digit
        // at a time's, and a run of all sixteen is left to the byte loop
        let mut rng = crate::testing::Rng(0x0b16_d161);
        for at in 1..16 {
            for x in 0..=255_u8 {
                for _ in 0..4 {
                    let mut b: [u8; 16] = std::array::from_fn(|_| b'0' + (rng.next() % 10) as u8);
                    b[at] = x;
                    let run = b.iter().take_while(|c| c.is_ascii_digit()).count();
                    let value = b[..run]
                        .iter()
                        .fold(0_u64, |n, &d| n * 10 + u64::from(d - b'0'));
                    let want = (run < 16).then_some((value, run));
                    assert_eq!(number16(&b), want, "{x:#x} at {at}: {b:?}");
                }
            }
        }
        let mut b = [b'9'; 16];
        assert_eq!(number16(&b), None);
        b[15] = b'}';
        assert_eq!(number16(&b), Some((999_999_999_999_999, 15)));
        assert_eq!(number16(&b[..15]), None, "not sixteen bytes at hand");
    }

    #[test]
    fn a_numbers_digits_read_by_words_are_serdes_number() {
        // 1 to 20 digits (a leading zero now and then) before each byte that may follow
        // one, as a member's value with the line's end near (under sixteen bytes: the
        // byte loop's) or far (the words')
        let mut rng = crate::testing::Rng(0x6e75_6d62);
        let (mut fast, mut total) = (0, 0);
        for count in 1..=20 {
            for after in [",", "}", ".5", "e3", "E3", "x", " ", "-", "/", ":"] {
                for far in [false, true] {
                    for _ in 0..200 {
                        let mut digits: String = (0..count)
                            .map(|_| char::from(b'0' + (rng.next() % 10) as u8))
                            .collect();
                        if rng.next() % 8 == 0 {
                            digits.replace_range(..1, "0");
                        }
                        let tail = if far {
                            r#","user_id":"u1234567"}"#
                        } else {
                            "}"
                        };
                        let sep = if after == "}" { "" } else { tail };
                        let text = format!(r#"{{"ts":{digits}{after}{sep}"#);
                        total += 1;
                        if let Some(doc) = parse_fast(&text) {
                            fast += 1;
                            let slow = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
                            assert_eq!(format!("{doc:?}"), format!("{slow:?}"), "{text}");
                        }
                    }
                }
            }
        }
        assert!(fast > total / 8, "{fast} of {total}");
    }

    #[test]
    fn the_plain_run_is_the_byte_by_bytes() {
        // every byte value at every place of texts of 0 to 40 bytes (whole steps of
        // sixteen and eight, and the last ones read again), with a second mark after it
        // and beside bytes above 0x80 (a borrow must not reach the first)
        let slow = |b: &[u8]| {
            b.iter()
                .position(|&c| c < 0x20 || c == b'"' || c == b'\\')
                .unwrap_or(b.len())
        };
        for len in 0..=40 {
            for at in 0..len.max(1) {
                for c in 0..=255_u8 {
                    for fill in [b'a', 0xc3] {
                        let mut t = vec![fill; len];
                        if len > 0 {
                            t[at] = c;
                        }
                        assert_eq!(plain_run(&t), slow(&t), "{t:?}");
                        if at + 1 < len {
                            t[len - 1] = b'"';
                            assert_eq!(plain_run(&t), slow(&t), "{t:?}");
                        }
                    }
                }
            }
        }
    }

    fn fields(text: &str) -> Fields<'_> {
        match parse(text).unwrap() {
            Doc::Object(f) => f,
            Doc::Other(v) => panic!("not an object: {v:?}"),
        }
    }

    /// `parse_fast` reads what it accepts as `parse` does, over lines and a million-odd
    /// random edits of them (bytes deleted, inserted, replaced: JSON's own characters,
    /// escapes, controls, non-ASCII, digits), and declines the rest.
    #[test]
    fn the_fast_reader_agrees_with_serde() {
        let seeds = [
            r#"{"event_id":"e1","type":"upload","ts":1767225600059,"post_id":"p1","user_id":"u1","followers":60,"content":{"pdq":"05dd","pdq_quality":52,"md5":"d0ca"}}"#,
            r#"{"event_id":"e2","type":"share","ts":"2026-01-01T00:01:22.603Z","post_id":"p2","user_id":"u2","parent_post_id":"p1","followers":null}"#,
            // the producers' order of keys (read by one compare each), a key out of it
            r#"{"event_id":"e6","type":"share","ts":1767225600100,"post_id":"p6","parent_post_id":"p1","user_id":"u6","followers":3,"content":{"pdq":"0f","md5":"ab","pdq_quality":9}}"#,
            r#" { "event_id" : 12 , "type" : "takedown" , "ts" : 0, "post_id":"p1","x":true,"y":false,"user_id":"ué"} "#,
            r#"{"event_id":"e\"5","type":"share"}"#,
            r#"{"event_id":"e3","type":"upload","content":null,"content":{},"ts":1,"event_id":"e4"}"#,
            r#"{"content":{"vpdq":["a,1,0"],"md5":null},"z":"é"}"#,
            "{}",
        ];
        let alphabet: Vec<char> = "\"{}[],:\\ \t\n0123456789.eE+-nultrfasé\u{1}\u{7f}x"
            .chars()
            .collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let (mut fast, mut total) = (0usize, 0usize);
        for seed in seeds {
            // a video's frames and an escape are serde's to read
            let plain = !seed.contains("vpdq") && !seed.contains('\\');
            assert_eq!(parse_fast(seed).is_some(), plain, "{seed}");
            for _ in 0..100_000 {
                let mut chars: Vec<char> = seed.chars().collect();
                for _ in 0..1 + next(3) {
                    let at = next(chars.len() + 1);
                    match next(3) {
                        0 if at < chars.len() => {
                            chars.remove(at);
                        }
                        1 if at < chars.len() => chars[at] = alphabet[next(alphabet.len())],
                        _ => chars.insert(at, alphabet[next(alphabet.len())]),
                    }
                }
                let text: String = chars.into_iter().collect();
                total += 1;
                if let Some(doc) = parse_fast(&text) {
                    fast += 1;
                    assert!(depth_ok(text.as_bytes()), "{text}");
                    let slow = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
                    assert_eq!(format!("{doc:?}"), format!("{slow:?}"), "{text}");
                }
            }
        }
        // most edits break the line; enough do not that the comparison means something
        assert!(fast > total / 20, "{fast} of {total}");
    }

    #[test]
    fn the_last_of_a_repeated_key_wins_and_escaped_keys_count() {
        let f = fields(r#"{"type":"share","\u0074ype":"upload","x":[1,{"y":2}]}"#);
        assert_eq!(f.kind, Some(Val::Str(Cow::Borrowed("upload"))));
    }

    #[test]
    fn integers_over_64_bits_are_floats_as_in_orjson() {
        let f = fields(r#"{"ts":18446744073709551615,"followers":18446744073709551616}"#);
        assert_eq!(f.ts, Some(Val::Int(18446744073709551615)));
        assert!(matches!(f.followers, Some(Val::Float(_))));
    }

    #[test]
    fn depth_is_orjsons() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(depth_ok(ok.as_bytes()) && parse(&ok).is_ok());
        assert!(!depth_ok(deep.as_bytes()));
        assert!(depth_ok(br#"{"a":"[[[[\"[[["}"#));
    }

    #[test]
    fn trailing_bytes_and_a_bom_are_not_json() {
        assert!(parse("{} x").is_err());
        assert!(parse("\u{feff}{}").is_err());
        assert!(parse(" {} \n").is_ok());
        assert!(parse("1e400").is_err());
        assert!(parse(r#""\ud800""#).is_err());
    }

    #[test]
    fn a_vpdq_list_is_kept_as_text() {
        let f = fields(r#"{"content":{"vpdq":["a,1,0.0"],"md5":null}}"#);
        let Some(ContentVal::Object(c)) = f.content else {
            panic!("content")
        };
        assert_eq!(c.vpdq.unwrap().unwrap().get(), r#"["a,1,0.0"]"#);
        assert_eq!(c.md5, Some(Val::Null));
    }
}
