//! Share events: parsing and validating one input line, in the order of the
//! checks that name its rejection.
//!
//! Bad input never fails the caller: it is a [`Reject`] with a reason (one of
//! `streams.events.REJECT_REASONS`) and a detail. Two judgements belong to
//! Python and are asked of a [`Judge`]: whether a non-ASCII id is printable
//! (`str.isprintable`, on Python's Unicode tables) and what a timestamp
//! written otherwise than plain RFC 3339 means (`streams.events.parse_ts`, on
//! the standard library's ISO 8601 reader). Both are rare; the common forms
//! are decided here.

use std::borrow::Cow;

use crate::hex::{self, is_hex, Case, UPPER};
use crate::json::{self, ContentFields, ContentVal, Doc, Fields, Val};
use crate::pdq::{parse_hex, Hash};
use crate::wire::{ContentView, EventView};

/// Largest input line accepted, in bytes (a video upload's vPDQ runs to 280 KB).
pub const MAX_EVENT_BYTES: usize = 320 * 1024;
/// Longest id accepted, in characters.
pub const MAX_ID_LEN: usize = 256;
/// Event times outside 2000-01-01 .. 2100-01-01 (epoch ms) are a unit mistake.
pub const TS_MIN_MS: i64 = 946_684_800_000;
pub const TS_MAX_MS: i64 = 4_102_444_800_000;

/// Whether an input line is a bank update, not a share event: it holds `"op"` and no
/// `"event_id"` (`streams.pipeline.is_bank_update`'s rule: replay takes timed bank changes
/// in its input beside the events). Asked of every line of a batch, so it is two SIMD
/// substring searches, not a parse.
pub fn is_bank_update(line: &[u8]) -> bool {
    memchr::memmem::find(line, b"\"op\"").is_some()
        && memchr::memmem::find(line, b"\"event_id\"").is_none()
}

/// What Python decides for the core (see the module's docs).
pub trait Judge {
    /// Python's `str.isprintable()` of `text`.
    fn is_printable(&mut self, text: &str) -> bool;
    /// `streams.events.parse_ts(text)`: epoch ms, or the `ValueError`'s message.
    fn parse_ts_text(&mut self, text: &str) -> Result<i64, String>;
}

/// An event's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Upload,
    Share,
    Takedown,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Upload => "upload",
            Kind::Share => "share",
            Kind::Takedown => "takedown",
        }
    }
}

/// An upload's hashes: `pdq` 64 and `md5` 32 lowercase hex; `vpdq` a video's
/// frames as the JSON text of their list (Python reads it). `pdq_hash` and `md5_bytes`:
/// the hashes' values, read in the pass that checks their digits, and carried from there
/// to the banks' screen, the index's search and its insertion (each read the text again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content<'a> {
    pub pdq: Option<Cow<'a, str>>,
    pub pdq_hash: Option<Hash>,
    pub pdq_quality: Option<i64>,
    pub md5: Option<Cow<'a, str>>,
    pub md5_bytes: Option<[u8; 16]>,
    pub vpdq: Option<&'a str>,
}

/// One valid share event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    pub event_id: Cow<'a, str>,
    pub kind: Kind,
    pub ts_ms: i64,
    pub post_id: Cow<'a, str>,
    pub user_id: Cow<'a, str>,
    pub parent_post_id: Option<Cow<'a, str>>,
    pub followers: Option<i64>,
    pub content: Option<Content<'a>>,
    /// Whether the line's `event_id` was JSON text (not a number): a rejection
    /// found later (a video's frames, read in Python) names it only then.
    pub event_id_was_text: bool,
}

impl Event<'_> {
    /// Whether none of its texts is its own (each borrows the line, as the flat reader
    /// gives them): its drop would free nothing. Why: a caller done with it once it is
    /// compact forgets it, where its drop was an out-of-line call asking each text again
    /// (27 instructions a record, a worker's ingest).
    #[inline(always)]
    pub fn owns_nothing(&self) -> bool {
        let lent = |t: &Cow<'_, str>| matches!(t, Cow::Borrowed(_));
        let lent_if = |t: &Option<Cow<'_, str>>| t.as_ref().map_or(true, lent);
        // every field named (no `..`): a field added that may own memory must be asked
        // here, or the caller's `mem::forget` would leak it
        let Event {
            event_id,
            kind: _,
            ts_ms: _,
            post_id,
            user_id,
            parent_post_id,
            followers: _,
            content,
            event_id_was_text: _,
        } = self;
        lent(event_id)
            && lent(post_id)
            && lent(user_id)
            && lent_if(parent_post_id)
            && content.as_ref().map_or(true, |c| {
                let Content {
                    pdq,
                    pdq_hash: _,
                    pdq_quality: _,
                    md5,
                    md5_bytes: _,
                    vpdq: _,
                } = c;
                lent_if(pdq) && lent_if(md5)
            })
    }
}

/// A parsed event (not a video's: Python reads its frames) in two allocations: its texts
/// (event id, post, user, parent, PDQ, MD5) one after the other in one string, the rest
/// inline. An `Event` made owned would hold each text apart (up to six allocations an
/// event, and as many frees: most of the cost of a loop keeping it past its line).
pub struct Compact {
    text: Box<str>,
    /// where each text ends in `text`, in the order above
    ends: [u32; 6],
    ts_ms: i64,
    followers: Option<i64>,
    pdq_quality: Option<i64>,
    /// the PDQ's words and the MD5's bytes (zero without: `flags` says)
    pdq_hash: Hash,
    md5_bytes: [u8; 16],
    kind: Kind,
    /// which of the optional texts are there, content or not, and how the id was written
    flags: u8,
}

const PARENT: u8 = 1;
const PDQ: u8 = 2;
const MD5: u8 = 4;
const CONTENT: u8 = 8;
const ID_WAS_TEXT: u8 = 16;

impl Compact {
    /// `ev` kept compact; `None` for a video's upload (its frames are Python's to read).
    pub fn of(ev: &Event<'_>) -> Option<Self> {
        let content = ev.content.as_ref();
        if content.is_some_and(|c| c.vpdq.is_some()) {
            return None;
        }
        let pdq = content.and_then(|c| c.pdq.as_deref());
        let md5 = content.and_then(|c| c.md5.as_deref());
        let parts = [
            ev.event_id.as_ref(),
            ev.post_id.as_ref(),
            ev.user_id.as_ref(),
            ev.parent_post_id.as_deref().unwrap_or_default(),
            pdq.unwrap_or_default(),
            md5.unwrap_or_default(),
        ];
        // each part's end a sum of lengths, the whole asked once to fit 32 bits (a line is
        // at most MAX_EVENT_BYTES): each end was converted and checked, and the lengths
        // summed through the options, about 50 instructions an event (callgrind)
        let mut ends = [0u32; 6];
        let mut len = 0;
        for (end, part) in ends.iter_mut().zip(parts) {
            len += part.len();
            *end = len as u32;
        }
        u32::try_from(len).ok()?;
        // the parts copied as words (`put_words`), not pushed: a push is a `memcpy` call a
        // part, six a line whether or not the part is empty (88 instructions a line)
        // and into a box of exactly `len` bytes allocated as one (a `Box<[u8]>`'s layout),
        // not a vector's turned into a box: `into_boxed_str` was a call a line that asked
        // whether to shrink (14 instructions a record of a worker's ingest, callgrind)
        let layout = std::alloc::Layout::array::<u8>(len).ok()?;
        let start = if len == 0 {
            std::ptr::NonNull::<u8>::dangling().as_ptr() // an empty box allocates nothing
        } else {
            // SAFETY: the layout's size is not zero
            let p = unsafe { std::alloc::alloc(layout) };
            if p.is_null() {
                std::alloc::handle_alloc_error(layout)
            }
            p
        };
        let mut at = start;
        for part in parts {
            // SAFETY: the room is `len` bytes, the parts' lengths' sum
            unsafe {
                put_words(at, part.as_bytes());
                at = at.add(part.len());
            }
        }
        // SAFETY: `put_words` wrote each of the `len` bytes, the parts (each a `str`) one
        // after the other: UTF-8 as they are; `start` is the global allocator's, with the
        // layout a `Box<[u8]>` of `len` bytes frees (or dangling where `len` is 0, as an
        // empty box's)
        let text: Box<str> =
            unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(start, len) as *mut str) };
        let flag = |on: bool, f: u8| if on { f } else { 0 };
        Some(Self {
            text,
            ends,
            ts_ms: ev.ts_ms,
            followers: ev.followers,
            pdq_quality: content.and_then(|c| c.pdq_quality),
            pdq_hash: content
                .and_then(|c| {
                    c.pdq_hash
                        .or_else(|| pdq.and_then(|t| parse_hex(t.as_bytes())))
                })
                .unwrap_or_default(),
            md5_bytes: content
                .and_then(|c| {
                    c.md5_bytes
                        .or_else(|| md5.and_then(|t| hex::bytes::<16>(t.as_bytes())))
                })
                .unwrap_or_default(),
            kind: ev.kind,
            flags: flag(ev.parent_post_id.is_some(), PARENT)
                | flag(pdq.is_some(), PDQ)
                | flag(md5.is_some(), MD5)
                | flag(content.is_some(), CONTENT)
                | flag(ev.event_id_was_text, ID_WAS_TEXT),
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn ts_ms(&self) -> i64 {
        self.ts_ms
    }

    pub fn pdq_quality(&self) -> Option<i64> {
        self.pdq_quality
    }

    /// Whether it carries content (an upload's).
    pub fn has_content(&self) -> bool {
        self.flags & CONTENT != 0
    }

    /// Its `i`th text. Unchecked: `Compact::of`, its one maker, wrote `ends` as the running
    /// sums of its texts' lengths, so each is in `text` and on a character's boundary;
    /// sliced with the checks, each part asked both ends' bounds and boundaries again
    /// (`Ev::with_posts`, the resolve partition's CRC of a post id, asks two parts an
    /// event read, and the stages after it more).
    fn part(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let end = self.ends[i] as usize;
        debug_assert!(self.text.is_char_boundary(start) && self.text.is_char_boundary(end));
        debug_assert!(start <= end && end <= self.text.len());
        // SAFETY: as above: `start <= end <= text.len()`, both character boundaries
        unsafe { self.text.get_unchecked(start..end) }
    }

    fn optional(&self, i: usize, flag: u8) -> Option<&str> {
        (self.flags & flag != 0).then(|| self.part(i))
    }

    pub fn event_id(&self) -> &str {
        self.part(0)
    }

    pub fn post_id(&self) -> &str {
        self.part(1)
    }

    pub fn user_id(&self) -> &str {
        self.part(2)
    }

    pub fn parent_post_id(&self) -> Option<&str> {
        self.optional(3, PARENT)
    }

    /// The post the event is routed by: a share's parent, else its own post (an upload's,
    /// a takedown's), as `streams.router` picks it. Its resolve partition is this post's
    /// (the ingest's `route`), and a reshare or takedown is routed to its cluster
    /// (`Ev::with_posts`): one owner of the rule both read. The kind is asked, not the
    /// parent's presence alone: an upload read back from an internal topic may name one.
    #[inline]
    pub fn target_post_id(&self) -> &str {
        match (self.kind, self.parent_post_id()) {
            (Kind::Share, Some(parent)) => parent,
            _ => self.post_id(),
        }
    }

    pub fn pdq(&self) -> Option<&str> {
        self.optional(4, PDQ)
    }

    pub fn md5(&self) -> Option<&str> {
        self.optional(5, MD5)
    }

    /// The PDQ's words, read when the line was (`None`: no PDQ).
    pub fn pdq_hash(&self) -> Option<&Hash> {
        (self.flags & PDQ != 0).then_some(&self.pdq_hash)
    }

    /// The MD5's bytes, read when the line was (`None`: no MD5).
    pub fn md5_bytes(&self) -> Option<&[u8; 16]> {
        (self.flags & MD5 != 0).then_some(&self.md5_bytes)
    }

    /// Its fields as the wire writer writes them (``ShareEvent.to_dict``'s): what a compiled
    /// event crossing a hop or written to a log is written from, no Python record made.
    pub fn view(&self) -> EventView<'_> {
        EventView {
            event_id: self.event_id(),
            kind: self.kind.as_str(),
            ts_ms: self.ts_ms,
            post_id: self.post_id(),
            user_id: self.user_id(),
            parent_post_id: self.parent_post_id(),
            followers: self.followers,
            content: self.has_content().then(|| ContentView {
                pdq: self.pdq(),
                pdq_quality: self.pdq_quality,
                md5: self.md5(),
            }),
        }
    }

    /// The parser's record of it again (what Python's record is made of).
    pub fn event(&self) -> Event<'_> {
        Event {
            event_id: Cow::Borrowed(self.event_id()),
            kind: self.kind,
            ts_ms: self.ts_ms,
            post_id: Cow::Borrowed(self.post_id()),
            user_id: Cow::Borrowed(self.user_id()),
            parent_post_id: self.parent_post_id().map(Cow::Borrowed),
            followers: self.followers,
            content: (self.flags & CONTENT != 0).then(|| Content {
                pdq: self.pdq().map(Cow::Borrowed),
                pdq_hash: self.pdq_hash().copied(),
                pdq_quality: self.pdq_quality,
                md5: self.md5().map(Cow::Borrowed),
                md5_bytes: self.md5_bytes().copied(),
                vpdq: None,
            }),
            event_id_was_text: self.flags & ID_WAS_TEXT != 0,
        }
    }
}

/// `src` written into `dst` (of its length) as eight-byte words, the last one overlapping
/// the one before where the length is not a multiple of eight; under eight bytes one by
/// one. A line's parts are ids of 8-16 bytes and hashes of 32 and 64: two words, or
/// four and eight, each a load and a store, where a `memcpy` call was a call a part.
/// # Safety
/// `dst` has room for `src.len()` bytes.
#[inline]
unsafe fn put_words(dst: *mut u8, src: &[u8]) {
    use std::ptr::{read_unaligned as get, write_unaligned as set};
    let (n, s) = (src.len(), src.as_ptr());
    if n >= 16 {
        let mut i = 0;
        while i + 16 < n {
            set(
                dst.add(i).cast::<[u8; 16]>(),
                get(s.add(i).cast::<[u8; 16]>()),
            );
            i += 16;
        }
        set(
            dst.add(n - 16).cast::<[u8; 16]>(),
            get(s.add(n - 16).cast::<[u8; 16]>()),
        );
    } else if n >= 8 {
        set(dst.cast::<u64>(), get(s.cast::<u64>()));
        set(
            dst.add(n - 8).cast::<u64>(),
            get(s.add(n - 8).cast::<u64>()),
        );
    } else {
        for i in 0..n {
            *dst.add(i) = *s.add(i);
        }
    }
}

/// A refused line: why (`reason`), in words (`detail`), and its `event_id` if it had a text one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject<'a> {
    pub reason: &'static str,
    pub detail: String,
    pub event_id: Option<Cow<'a, str>>,
}

/// What one line gives.
pub type Parsed<'a> = Result<Event<'a>, Reject<'a>>;

pub(crate) struct Why(&'static str, String);

/// A refusal: a check's `Why`, or in [`validate`] the line's `Reject` (its event id named
/// by [`parse_line`]).
fn why<E: From<Why>>(reason: &'static str, detail: impl Into<String>) -> E {
    Why(reason, detail.into()).into()
}

impl From<Why> for Reject<'_> {
    fn from(Why(reason, detail): Why) -> Self {
        Reject {
            reason,
            detail,
            event_id: None,
        }
    }
}

/// Parse and validate one input line.
pub fn parse_line<'a>(data: &'a [u8], judge: &mut dyn Judge) -> Parsed<'a> {
    let reject = |reason, detail| Reject {
        reason,
        detail,
        event_id: None,
    };
    if data.len() > MAX_EVENT_BYTES {
        let detail = format!("event is {} bytes, over {MAX_EVENT_BYTES}", data.len());
        return Err(reject("too_large", detail));
    }
    let (text, printable) = match ascii(data) {
        // SAFETY: ASCII is UTF-8
        Bytes::Printable => (unsafe { std::str::from_utf8_unchecked(data) }, true),
        // SAFETY: as above
        Bytes::Ascii => (unsafe { std::str::from_utf8_unchecked(data) }, false),
        Bytes::Other => match std::str::from_utf8(data) {
            Ok(text) => (text, false),
            Err(_) => return Err(reject("not_utf8", "event is not valid UTF-8".into())),
        },
    };
    // the common flat line in one pass, read into `fast` in place; anything else (and
    // whatever is not JSON) by serde. A text the flat reader gives is the line's own bytes
    // between quotes, none under 0x20 (nor a quote or backslash): of a line with no byte
    // from 0x7f, printable ASCII, which `validate` then need not ask of each id. The flat
    // reader's fields own nothing (its texts borrow the line, it reads no video's frames):
    // not dropped, where their drop asked each field whether it owned text (42
    // instructions a line, callgrind)
    let mut fast = std::mem::ManuallyDrop::new(Fields::default());
    let mut slow;
    let mut texts_printable = false;
    let fields = if json::parse_fast_into(text, &mut fast).is_some() {
        texts_printable = printable;
        &mut fast
    } else {
        if !json::depth_ok(data) {
            return Err(reject("not_json", "not JSON: depth limit exceeded".into()));
        }
        slow = match json::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                let mut detail = format!("not JSON: {e}");
                truncate_chars(&mut detail, "not JSON: ".len() + 120);
                return Err(reject("not_json", detail));
            }
        };
        match &mut slow {
            Doc::Object(f) => f,
            Doc::Other(_) => {
                return Err(reject(
                    "not_object",
                    "an event must be a JSON object".into(),
                ))
            }
        }
    };
    let event_id = match &fields.event_id {
        Some(Val::Str(s)) => Some(s.clone()),
        _ => None,
    };
    // the validator's result returned as it is (mapped to another type, its event was
    // copied whole: 272 bytes a line)
    let mut parsed = validate(fields, texts_printable, judge);
    if let Err(r) = &mut parsed {
        r.event_id = event_id;
    }
    parsed
}

/// What a line's bytes are: all printable ASCII or tabs, newlines and the like (none
/// from 0x7f), all ASCII, or other (UTF-8 or not: `from_utf8` asks).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Bytes {
    Printable,
    Ascii,
    Other,
}

/// What `b`'s bytes are ([`Bytes`]). Most lines are ASCII: asked first, where the UTF-8
/// check went through its state machine on every line (180 instructions a platform line,
/// callgrind); with SSE2 (every x86-64 has it) sixteen bytes a step ORed together, and
/// each byte plus one ORed apart (a byte from 0x7f, and only such a byte, has its top bit
/// set in itself or in itself plus one), one test each at the end (the standard library's
/// `is_ascii` was 160 instructions a platform line). Why the second: a line with no byte
/// from 0x7f spares `validate` the printable test of each of its ids (four a line, 111
/// instructions a line of the worker stream, callgrind). Elsewhere `is_ascii` and a search.
#[inline(always)]
fn ascii(b: &[u8]) -> Bytes {
    #[cfg(target_arch = "x86_64")]
    if b.len() >= 16 {
        use std::arch::x86_64::{
            _mm_add_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        };
        let load = |c: &[u8]| {
            // SAFETY: SSE2 is part of x86-64; the load reads `c`'s first 16 bytes (it has 16)
            unsafe { _mm_loadu_si128(c.as_ptr().cast()) }
        };
        // the last 16 bytes (overlapping the steps before) for the rest
        let mut any = load(&b[b.len() - 16..]);
        // SAFETY: SSE2 is part of x86-64 (here and below)
        let one = unsafe { _mm_set1_epi8(1) };
        let mut next = unsafe { _mm_add_epi8(any, one) };
        for c in b.chunks_exact(16) {
            let v = load(c);
            // SAFETY: as above
            unsafe {
                any = _mm_or_si128(any, v);
                next = _mm_or_si128(next, _mm_add_epi8(v, one));
            }
        }
        // SAFETY: as above
        let (high, from_7f) = unsafe {
            (
                _mm_movemask_epi8(any),
                _mm_movemask_epi8(_mm_or_si128(any, next)),
            )
        };
        return match (high, from_7f) {
            (0, 0) => Bytes::Printable,
            (0, _) => Bytes::Ascii,
            _ => Bytes::Other,
        };
    }
    if !b.is_ascii() {
        Bytes::Other
    } else if b.contains(&0x7f) {
        Bytes::Ascii
    } else {
        Bytes::Printable
    }
}

/// Whether two ids are the same text: their lengths, then their last bytes, compared
/// inline before the whole. Ids of one length most often differ there (a share's parent
/// and its post, a cluster's posts), and the whole compare is a `memcmp` call (a share's
/// self-reshare test: 14.5 instructions a record, a worker's ingest; a small unbanked
/// cluster's scan: 2.8 calls an event, a platform replay).
#[inline(always)]
pub(crate) fn same_id(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.last() == b.last() && a == b
}

fn truncate_chars(s: &mut String, n: usize) {
    if let Some((at, _)) = s.char_indices().nth(n) {
        s.truncate(at);
    }
}

/// An event's fields, judged: the event, or why it is refused (the parser's, and a held
/// event's reader's, `crate::wire_read`). The fields are taken out of `f` (by reference:
/// moved in whole, they were copied).
#[inline(always)]
pub(crate) fn validate<'a>(
    f: &mut Fields<'a>,
    texts_printable: bool,
    judge: &mut dyn Judge,
) -> Result<Event<'a>, Reject<'a>> {
    let event_id_was_text = matches!(f.event_id, Some(Val::Str(_)));
    let event_id = id(f.event_id.take(), "event_id", texts_printable, judge)?;
    let kind = match f.kind.take() {
        None | Some(Val::Null) => return Err(why("missing_field", "type is missing")),
        Some(Val::Str(s)) if s == "upload" => Kind::Upload,
        Some(Val::Str(s)) if s == "share" => Kind::Share,
        Some(Val::Str(s)) if s == "takedown" => Kind::Takedown,
        Some(_) => {
            return Err(why(
                "unknown_type",
                "type must be one of upload, share, takedown",
            ))
        }
    };
    let ts_ms = match f.ts.take() {
        Some(Val::Int(ms)) if (TS_MIN_MS as i128..TS_MAX_MS as i128).contains(&ms) => ms as i64,
        None | Some(Val::Null) => return Err(why("missing_field", "ts is missing")),
        Some(v) => parse_ts(v, judge).map_err(|d| why::<Why>("bad_ts", d))?,
    };
    let post_id = id(f.post_id.take(), "post_id", texts_printable, judge)?;
    let user_id = id(f.user_id.take(), "user_id", texts_printable, judge)?;
    let parent = optional_id(
        f.parent_post_id.take(),
        "parent_post_id",
        texts_printable,
        judge,
    )?;
    let followers = match f.followers.take() {
        None | Some(Val::Null) => None,
        Some(Val::Int(n)) if (0..1i128 << 53).contains(&n) => Some(n as i64),
        Some(_) => {
            return Err(why(
                "bad_followers",
                "followers must be a non-negative integer",
            ))
        }
    };
    let mut content = None;
    let mut parent_post_id = None;
    match kind {
        Kind::Upload => match &mut f.content {
            None | Some(ContentVal::Other(Val::Null)) => {
                return Err(why("missing_content", "an upload must carry content"))
            }
            Some(ContentVal::Other(_)) => {
                return Err(why("bad_content", "content must be an object"))
            }
            Some(ContentVal::Object(c)) => content = Some(validate_content(c)?),
        },
        Kind::Share => {
            let Some(parent) = parent else {
                return Err(why(
                    "missing_parent",
                    "a share must name its parent_post_id",
                ));
            };
            if same_id(parent.as_bytes(), post_id.as_bytes()) {
                return Err(why("self_reshare", "a post cannot reshare itself"));
            }
            parent_post_id = Some(parent);
        }
        Kind::Takedown => {}
    }
    Ok(Event {
        event_id,
        kind,
        ts_ms,
        post_id,
        user_id,
        parent_post_id,
        followers,
        content,
        event_id_was_text,
    })
}

fn validate_content<'a>(c: &mut ContentFields<'a>) -> Result<Content<'a>, Why> {
    let (pdq, pdq_hash) = match c.pdq.take() {
        Some(v) if v != Val::Null => {
            let mut bytes = [0u8; 32];
            let text = hex(v, "pdq", &mut bytes)?;
            let mut words = [0u64; 4];
            for (w, b) in words.iter_mut().zip(bytes.chunks_exact(8)) {
                *w = u64::from_be_bytes(b.try_into().expect("8 bytes"));
            }
            (Some(text), Some(words))
        }
        _ => (None, None),
    };
    let (md5, md5_bytes) = match c.md5.take() {
        Some(v) if v != Val::Null => {
            let mut bytes = [0u8; 16];
            (Some(hex(v, "md5", &mut bytes)?), Some(bytes))
        }
        _ => (None, None),
    };
    let pdq_quality = match c.pdq_quality.take() {
        None | Some(Val::Null) => None,
        Some(Val::Int(q)) if (0..=100).contains(&q) => Some(q as i64),
        Some(_) => {
            return Err(why(
                "bad_quality",
                "content.pdq_quality must be an integer 0..100",
            ))
        }
    };
    let vpdq = match c.vpdq.take() {
        None | Some(Err(Val::Null)) => None,
        Some(Ok(raw)) => Some(raw.get()),
        Some(Err(_)) => {
            return Err(why(
                "bad_vpdq",
                "content.vpdq must be a list of 'pdqhex,quality,timestamp'",
            ))
        }
    };
    if pdq.is_none() && md5.is_none() && vpdq.is_none() {
        return Err(why("bad_content", "content carries none of pdq, md5, vpdq"));
    }
    Ok(Content {
        pdq,
        pdq_hash,
        pdq_quality,
        md5,
        md5_bytes,
        vpdq,
    })
}

/// Python's `str.isspace()`: Unicode's White_Space, and the ASCII separators 0x1c..0x1f.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// `v` as hex digits, two for each byte of `bytes`, lowercase; their value in `bytes`, read
/// in the pass that checks them (the index and the banks search by a hash's value). The
/// line's own text where it is lowercase already (the usual: no copy), else lowercased.
fn hex<'a>(v: Val<'a>, key: &str, bytes: &mut [u8]) -> Result<Cow<'a, str>, Why> {
    let length = 2 * bytes.len();
    let Val::Str(s) = v else {
        return Err(why(
            "bad_content",
            format!("content.{key} must be a hex string"),
        ));
    };
    let mut upper = true;
    // nothing to trim where both ends are printable ASCII (the usual hash): Python's
    // whitespace is ASCII's, 0x1c..0x1f and characters from U+0085
    let text = match s.as_bytes() {
        [first, .., last] if (0x21..0x80).contains(first) && (0x21..0x80).contains(last) => {
            s.as_ref()
        }
        _ => s.trim_matches(py_isspace),
    };
    let ok = if text.len() == length {
        let bits = hex::digits(text.as_bytes(), bytes);
        upper = bits & UPPER != 0;
        bits & Case::Either.refused() == 0
    } else {
        is_hex(text.as_bytes())
    };
    if !ok {
        return Err(why("bad_hex", format!("content.{key} is not hexadecimal")));
    }
    if text.len() != length {
        return Err(why(
            "bad_hash_length",
            format!(
                "content.{key} must be {length} hex digits, not {}",
                text.len()
            ),
        ));
    }
    Ok(match s {
        // the text read is the line's own: borrowed if nothing is to be lowercased
        Cow::Borrowed(line) if !upper => {
            // `text` is `line` trimmed: the same bytes, with the line's lifetime
            let start = text.as_ptr() as usize - line.as_ptr() as usize;
            Cow::Borrowed(&line[start..start + text.len()])
        }
        _ => Cow::Owned(text.to_ascii_lowercase()),
    })
}

#[inline(always)]
fn id<'a>(
    v: Option<Val<'a>>,
    key: &str,
    printable: bool,
    judge: &mut dyn Judge,
) -> Result<Cow<'a, str>, Why> {
    match optional_id(v, key, printable, judge)? {
        Some(text) => Ok(text),
        None => Err(why("missing_field", format!("{key} is missing"))),
    }
}

/// An id's value checked: the usual one (the line's own text, printable ASCII, 1..256
/// bytes) decided inline, anything else by [`any_id`] (the same answer: it judges the
/// usual one alike). Why: the call's saved registers and the moves of its value and result
/// were about 36 of an id's 65 instructions (callgrind), four ids a line. `printable`:
/// the caller knows a borrowed text to be printable ASCII (the flat reader's, of a line
/// with no byte outside it: [`parse_line`]), not asked again.
#[inline(always)]
fn optional_id<'a>(
    v: Option<Val<'a>>,
    key: &str,
    printable: bool,
    judge: &mut dyn Judge,
) -> Result<Option<Cow<'a, str>>, Why> {
    if let Some(Val::Str(Cow::Borrowed(s))) = v {
        if !s.is_empty() && s.len() <= MAX_ID_LEN && (printable || !outside_printable(s.as_bytes()))
        {
            // `v` owns nothing (a borrowed text): not dropped, where its drop was a call
            // that asked (four a line, 27 instructions a record of a worker's ingest)
            std::mem::forget(v);
            return Ok(Some(Cow::Borrowed(s)));
        }
    }
    match v {
        None | Some(Val::Null) => Ok(None),
        v => any_id(v, key, judge),
    }
}

/// [`optional_id`] of any value.
#[cold]
#[inline(never)]
fn any_id<'a>(
    v: Option<Val<'a>>,
    key: &str,
    judge: &mut dyn Judge,
) -> Result<Option<Cow<'a, str>>, Why> {
    let text: Cow<'a, str> = match v {
        None | Some(Val::Null) => return Ok(None),
        Some(Val::Str(s)) => s,
        Some(Val::Int(n)) => Cow::Owned(n.to_string()),
        Some(_) => return Err(why("bad_id", format!("{key} must be a string"))),
    };
    // one pass for the usual id, printable ASCII, eight bytes at a time; only an id with a
    // byte outside 0x20..0x7f is asked whether it is ASCII (it was two passes, each id)
    let printable = if !outside_printable(text.as_bytes()) {
        !text.is_empty() && text.len() <= MAX_ID_LEN
    } else if text.is_ascii() {
        false
    } else {
        let n = text.chars().count();
        n <= MAX_ID_LEN && judge.is_printable(&text)
    };
    if !printable {
        return Err(why(
            "bad_id",
            format!("{key} must be 1..{MAX_ID_LEN} printable characters"),
        ));
    }
    Ok(Some(text))
}

/// Whether a byte of `text` is outside printable ASCII (0x20..0x7f), eight bytes at a time:
/// a byte under 0x20 (Mycroft's test: a borrow out of a byte sets its top bit only if the
/// byte is under the subtrahend, and the byte's own top bit is clear), a byte from 0x80,
/// or 0x7f itself (a zero byte of `x ^ 0x7f..`, the same test under 1). Exact for each
/// byte: a byte over the bound borrows nothing from the next, and the answer is the OR of
/// the bytes' own tests (the last word the text's last eight bytes, or padded with spaces
/// if it is shorter).
fn outside_printable(text: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let test = |x: u64| {
        let del = x ^ (0x7f * ONES);
        (x.wrapping_sub(0x20 * ONES) & !x & HIGH)
            | (x & HIGH)
            | (del.wrapping_sub(ONES) & !del & HIGH)
    };
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("8 bytes"));
    let n = text.len();
    if n < 8 {
        let mut last = [b' '; 8];
        last[..n].copy_from_slice(text);
        return test(u64::from_le_bytes(last)) != 0;
    }
    // the last eight bytes, then whole words before them (overlapping it: the answer is
    // an OR of the bytes' tests); no copy into a padded word (it was a `memcpy` call an
    // id), and an id of 8..16 bytes is two words
    let mut bad = test(word(&text[n - 8..]));
    for i in (0..n - 8).step_by(8) {
        bad |= test(word(&text[i..i + 8]));
    }
    bad != 0
}

fn out_of_range(ms: impl std::fmt::Display) -> String {
    format!("ts {ms} is outside 2000..2100 in epoch milliseconds")
}

/// `streams.events.parse_ts` of a value that is not an in-range integer.
fn parse_ts(v: Val<'_>, judge: &mut dyn Judge) -> Result<i64, String> {
    let ms: i64 = match v {
        Val::Bool(_) => {
            return Err("ts must be RFC 3339 text or epoch milliseconds, not a boolean".into())
        }
        Val::Int(ms) => return Err(out_of_range(ms)),
        Val::Float(x) => {
            let t = x.trunc(); // Python's int(x); orjson gives no NaN or infinity
            if !(-9.2e18..9.2e18).contains(&t) {
                return Err(out_of_range(format!("{t:.0}")));
            }
            t as i64
        }
        Val::Str(s) => match rfc3339_ms(&s).or_else(|| epoch_text_ms(&s)) {
            Some(ms) => ms,
            None => return judge.parse_ts_text(&s),
        },
        other => {
            return Err(format!(
                "ts must be RFC 3339 text or epoch milliseconds, not {}",
                other.py_type()
            ))
        }
    };
    if (TS_MIN_MS..TS_MAX_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(out_of_range(ms))
    }
}

fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
}

/// [`digits`] of a count known when compiled (an RFC 3339 time's fields): each digit's
/// test and value without a loop over a length, the tests joined into one branch (the
/// generic loops were most of a text time's 370 instructions, callgrind).
#[inline(always)]
fn fixed_digits<const N: usize>(b: &[u8; N]) -> Option<i64> {
    let mut n = 0i64;
    let mut bad = false;
    for &c in b {
        let d = c.wrapping_sub(b'0');
        bad |= d > 9;
        n = n * 10 + i64::from(d);
    }
    (!bad).then_some(n)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    // Howard Hinnant's days_from_civil: days since 1970-01-01 of a proleptic Gregorian date
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn month_days(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Epoch ms written as plain ASCII digits, in range; `None` for anything else.
fn epoch_text_ms(s: &str) -> Option<i64> {
    let ms = if s.len() <= 18 {
        digits(s.as_bytes())?
    } else {
        return None;
    };
    (TS_MIN_MS..TS_MAX_MS).contains(&ms).then_some(ms)
}

/// Epoch ms of plain RFC 3339 in range (`YYYY-MM-DDTHH:MM:SS[.f{1,3}](Z|±HH:MM)`), as
/// Python reads it; `None` for anything else (Python decides those).
pub fn rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    let field = |i: usize| [b[i], b[i + 1]];
    let (y, mo, d) = (
        fixed_digits(&[b[0], b[1], b[2], b[3]])?,
        fixed_digits(&field(5))?,
        fixed_digits(&field(8))?,
    );
    let (h, mi, sec) = (
        fixed_digits(&field(11))?,
        fixed_digits(&field(14))?,
        fixed_digits(&field(17))?,
    );
    if !(1..=12).contains(&mo) || d < 1 || d > month_days(y, mo) || y < 1 {
        return None;
    }
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let mut rest = &b[19..];
    let mut frac_ms = 0;
    if rest.first() == Some(&b'.') {
        // one to three digits (a fourth is Python's to read), the usual three first
        let digit = |i: usize| rest.get(i).is_some_and(u8::is_ascii_digit);
        let value = |i: usize| i64::from(rest[i] - b'0');
        let n = match (digit(1), digit(2), digit(3), digit(4)) {
            (true, true, true, false) => 3,
            (true, true, false, _) => 2,
            (true, false, _, _) => 1,
            _ => return None,
        };
        frac_ms = match n {
            3 => value(1) * 100 + value(2) * 10 + value(3),
            2 => value(1) * 100 + value(2) * 10,
            _ => value(1) * 100,
        };
        rest = &rest[1 + n..];
    }
    let offset_min = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), oh1, oh2, b':', om1, om2] => {
            let oh = fixed_digits(&[*oh1, *oh2])?;
            let om = fixed_digits(&[*om1, *om2])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let m = oh * 60 + om;
            if *sign == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    let ms = secs * 1000 + frac_ms;
    (TS_MIN_MS..TS_MAX_MS).contains(&ms).then_some(ms)
}

/// A [`Judge`] in plain Rust, for tests without Python: printable is "not a
/// control character", and no other timestamp form is read.
pub struct PlainJudge;

impl Judge for PlainJudge {
    fn is_printable(&mut self, text: &str) -> bool {
        !text.is_empty()
            && !text
                .chars()
                .any(|c| c.is_control() || py_isspace(c) && c != ' ')
    }
    fn parse_ts_text(&mut self, text: &str) -> Result<i64, String> {
        Err(format!("ts is not RFC 3339: {text:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hex_check_by_table_is_the_test_of_digit_or_letter() {
        let old = |t: &[u8]| {
            t.iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b.to_ascii_lowercase()))
        };
        // every byte alone, and between digits
        for b in 0..=255u8 {
            for t in [
                vec![b],
                vec![b'0', b, b'f'],
                vec![b'A'; 3].into_iter().chain([b]).collect(),
            ] {
                assert_eq!(is_hex(&t), old(&t), "{t:?}");
            }
        }
        assert!(is_hex(b""));
        assert!(is_hex(b"0123456789abcdefABCDEF"));
        assert!(!is_hex("0123456789abcdef\u{e9}".as_bytes()));
        assert!(!is_hex(b"0123456789abcdeg"));
    }

    fn parse(line: &str) -> Parsed<'_> {
        parse_line(line.as_bytes(), &mut PlainJudge)
    }

    fn reason(line: &str) -> &'static str {
        parse(line).err().map_or("ok", |r| r.reason)
    }

    const SHARE: &str = r#"{"event_id":"e2","type":"share","ts":1767225600000,"post_id":"p2","parent_post_id":"p1","user_id":"u1"}"#;

    #[test]
    fn a_share_parses() {
        let ev = parse(SHARE).unwrap();
        assert_eq!(ev.kind, Kind::Share);
        assert_eq!(ev.parent_post_id.as_deref(), Some("p1"));
        assert_eq!(ev.ts_ms, 1_767_225_600_000);
    }

    #[test]
    fn an_upload_keeps_lowercase_hashes() {
        let line = format!(
            r#"{{"event_id":"e1","type":"upload","ts":"2026-01-01T00:00:00Z","post_id":"p1","user_id":"u1","parent_post_id":"x","content":{{"pdq":" {} ","md5":null}}}}"#,
            "AB".repeat(32)
        );
        let ev = parse(&line).unwrap();
        assert_eq!(ev.content.unwrap().pdq.unwrap(), "ab".repeat(32));
        assert_eq!(ev.parent_post_id, None, "an upload is a root");
        assert_eq!(ev.ts_ms, 1_767_225_600_000);
    }

    #[test]
    fn an_uploads_pdq_words_are_those_of_its_lowercase_text() {
        // digits of every kind, either case, spaces trimmed; and the rejections unchanged
        let texts = [
            "0123456789ABCDEFabcdef".repeat(3)[..64].to_owned(),
            "f".repeat(64),
            format!(" {} ", "0".repeat(64)),
        ];
        for text in &texts {
            let line = format!(
                r#"{{"event_id":"e1","type":"upload","ts":1767225600000,"post_id":"p1","user_id":"u1","content":{{"pdq":"{text}"}}}}"#
            );
            let content = parse(&line).unwrap().content.unwrap();
            let pdq = content.pdq.as_deref().unwrap();
            assert_eq!(content.pdq_hash, parse_hex(pdq.as_bytes()), "{text}");
            assert_eq!(pdq, text.trim().to_ascii_lowercase());
            let compact = Compact::of(&parse(&line).unwrap()).unwrap();
            assert_eq!(compact.pdq_hash(), content.pdq_hash.as_ref());
        }
        for (bad, want) in [
            (format!("{}g", "0".repeat(63)), "bad_hex"),
            ("0".repeat(63), "bad_hash_length"),
            (format!("{}\u{e9}", "0".repeat(62)), "bad_hex"),
        ] {
            let line = format!(
                r#"{{"event_id":"e1","type":"upload","ts":1767225600000,"post_id":"p1","user_id":"u1","content":{{"pdq":"{bad}"}}}}"#
            );
            assert_eq!(reason(&line), want, "{bad}");
        }
        let md5_only = r#"{"event_id":"e1","type":"upload","ts":1767225600000,"post_id":"p1","user_id":"u1","content":{"md5":"0123456789abcdef0123456789abcdef"}}"#;
        assert_eq!(parse(md5_only).unwrap().content.unwrap().pdq_hash, None);
        let compact = Compact::of(&parse(md5_only).unwrap()).unwrap();
        assert_eq!(compact.pdq_hash(), None);
    }

    #[test]
    fn the_word_test_of_printable_ascii_is_each_bytes_test() {
        // every byte at every place of texts of 1..=20 bytes (a word, a word and a tail,
        // the tail alone), among printable neighbours of both ends of the range
        let each = |t: &[u8]| t.iter().any(|b| !(0x20..0x7f).contains(b));
        for len in 1..=20usize {
            for at in 0..len {
                for fill in [b' ', b'~', b'a'] {
                    for b in 0..=255u8 {
                        let mut t = vec![fill; len];
                        t[at] = b;
                        assert_eq!(outside_printable(&t), each(&t), "{b} at {at} of {len}");
                    }
                }
            }
        }
        assert!(!outside_printable(b""));
        // two bad bytes side by side, whatever borrows between them
        for (a, b) in [
            (0x00, 0x00),
            (0x1f, 0x7f),
            (0x7f, 0x20),
            (0xff, 0x00),
            (0x20, 0x7e),
        ] {
            let t = [b'a', a, b, b'a', b'a', b'a', b'a', b'a', b'a'];
            assert_eq!(outside_printable(&t), each(&t), "{a} {b}");
        }
    }

    #[test]
    fn an_id_is_printable_ascii_in_one_pass_as_in_two() {
        // each byte alone and inside an id: printable exactly for 0x20..0x7f, as the
        // two-pass check (ASCII, then each byte in range) said
        let judged = |text: &str| {
            optional_id(
                Some(Val::Str(Cow::Owned(text.to_owned()))),
                "k",
                false,
                &mut PlainJudge,
            )
            .is_ok()
        };
        for b in 0..=0x7fu8 {
            for text in [
                String::from(char::from(b)),
                format!("ab{}cd", char::from(b)),
            ] {
                let want = text.bytes().all(|c| (0x20..0x7f).contains(&c));
                assert_eq!(judged(&text), want, "{text:?}");
            }
        }
        assert!(!judged(&"x".repeat(MAX_ID_LEN + 1)));
        assert!(judged(&"x".repeat(MAX_ID_LEN)));
        assert!(!judged(""));
        // not ASCII: the judge's (its count in characters, not bytes)
        assert!(judged("é"));
        assert!(judged(&"é".repeat(MAX_ID_LEN)));
        assert!(!judged("é\u{7f}"));
    }

    #[test]
    fn each_check_names_its_reason_in_order() {
        assert_eq!(reason("nope"), "not_json");
        assert_eq!(reason("[1]"), "not_object");
        assert_eq!(reason(r#"{"type":"share"}"#), "missing_field");
        assert_eq!(reason(r#"{"event_id":true}"#), "bad_id");
        assert_eq!(reason(r#"{"event_id":"e","type":"x"}"#), "unknown_type");
        assert_eq!(
            reason(&SHARE.replace("1767225600000", "1767225600")),
            "bad_ts"
        );
        assert_eq!(reason(&SHARE.replace(r#""p1""#, r#""p2""#)), "self_reshare");
        assert_eq!(
            reason(&SHARE.replace(r#""user_id""#, r#""followers":-1,"user_id""#)),
            "bad_followers"
        );
        let r = parse(r#"{"event_id":"e9","type":"upload","ts":1767225600000,"post_id":"p","user_id":"u","content":{"md5":"zz"}}"#).unwrap_err();
        assert_eq!((r.reason, r.event_id.as_deref()), ("bad_hex", Some("e9")));
        assert_eq!(
            parse_line(b"\xff", &mut PlainJudge).unwrap_err().reason,
            "not_utf8"
        );
        let big = vec![b' '; MAX_EVENT_BYTES + 1];
        assert_eq!(
            parse_line(&big, &mut PlainJudge).unwrap_err().reason,
            "too_large"
        );
    }

    #[test]
    fn a_lines_ids_are_judged_as_each_ids_own_test_would() {
        // `parse_line` does not ask whether the ids of a line with no byte from 0x7f are
        // printable (the flat reader's texts are its bytes between quotes): the same
        // verdict and event as the serde reader's fields judged with the test asked of
        // each id, over lines edited with bytes from 0x7f, controls and quotes anywhere
        let seeds = [
            r#"{"event_id":"e2","type":"share","ts":1767225600000,"post_id":"p2","user_id":"u2","parent_post_id":"p1","followers":3}"#,
            r#"{"event_id":"e1","type":"upload","ts":"2026-01-01T00:01:22.603Z","post_id":"p1","user_id":"u1","content":{"pdq":"05dd","pdq_quality":52,"md5":"d0ca"}}"#,
        ];
        let alphabet: Vec<char> = "\u{7f}\u{80}\u{1}\u{1f}é\"\\ ~\tx".chars().collect();
        let mut rng = crate::testing::Rng(0x2545_f491_4f6c_dd1d);
        let mut next = |n: usize| (rng.next() % n as u64) as usize;
        let (mut events, mut bad_ids, mut total) = (0usize, 0usize, 0usize);
        for seed in seeds {
            for _ in 0..50_000 {
                let mut chars: Vec<char> = seed.chars().collect();
                for _ in 0..1 + next(2) {
                    let at = next(chars.len() + 1);
                    chars.insert(at, alphabet[next(alphabet.len())]);
                }
                let text: String = chars.into_iter().collect();
                let Ok(json::ObjectOr::Object(mut f)) = json::parse(&text) else {
                    continue;
                };
                total += 1;
                let want = validate(&mut f, false, &mut PlainJudge).map_err(|r| r.reason);
                let got = parse_line(text.as_bytes(), &mut PlainJudge).map_err(|r| r.reason);
                assert_eq!(got, want, "{text:?}");
                events += usize::from(got.is_ok());
                bad_ids += usize::from(got == Err("bad_id"));
            }
        }
        // 3,759 events and 1,141 bad ids of 31,047 lines that are JSON objects
        assert!(
            events > total / 10 && bad_ids > total / 50,
            "{events} {bad_ids} {total}"
        );
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(
            rfc3339_ms("2026-01-01T00:00:01.5+00:00"),
            Some(1_767_225_601_500)
        );
        assert_eq!(
            rfc3339_ms("2026-01-01T05:30:00+05:30"),
            Some(1_767_225_600_000)
        );
        assert_eq!(rfc3339_ms("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        assert_eq!(rfc3339_ms("2026-02-29T00:00:00Z"), None);
        assert_eq!(
            rfc3339_ms("2026-01-01T00:00:00"),
            None,
            "no offset: Python's to judge"
        );
        assert_eq!(rfc3339_ms("1999-12-31T23:59:59Z"), None, "out of range");
    }

    #[test]
    fn ints_become_ids_and_floats_do_not() {
        let line = SHARE.replace(r#""u1""#, "42");
        let ev = parse(&line).unwrap();
        assert_eq!(ev.user_id, "42");
        assert_eq!(reason(&SHARE.replace(r#""u1""#, "4.2")), "bad_id");
    }

    #[test]
    fn a_compact_events_parts_of_every_length_are_copied_whole() {
        // `put_words` copies a part by its length's case (bytes, two words, 16-byte
        // steps with an overlapping last): every length from 2 to 40 in each id's place,
        // non-ASCII bytes among them, next to parts of other lengths (a takedown's absent
        // parts empty)
        let id = |n: usize| -> String {
            let wide = (n % 3).min(n / 2);
            "é".repeat(wide) + &"abcdefghij".repeat(4)[..n - 2 * wide]
        };
        for n in 2..=40 {
            let (a, b, c) = (id(n), id(42 - n), id(n / 2 + 2));
            let line = format!(
                r#"{{"event_id":"{a}","type":"upload","ts":1767225600000,"post_id":"{b}","parent_post_id":"{c}","user_id":"{a}{c}","content":{{"pdq":"{}","md5":"{}"}}}}"#,
                "0f".repeat(32),
                "a5".repeat(16)
            );
            let ev = parse_line(line.as_bytes(), &mut PlainJudge).expect("valid");
            let compact = Compact::of(&ev).expect("not a video");
            assert_eq!(compact.event(), ev, "{line}");
            let share = format!(
                r#"{{"event_id":"{c}","type":"takedown","ts":1767225600000,"post_id":"{b}","user_id":"{a}"}}"#
            );
            let ev = parse_line(share.as_bytes(), &mut PlainJudge).expect("valid");
            assert_eq!(Compact::of(&ev).expect("a takedown").event(), ev, "{share}");
        }
    }

    #[test]
    fn an_event_owns_nothing_only_where_each_text_borrows_the_line() {
        let (pdq, md5) = ("ab".repeat(32), "cd".repeat(16));
        let upload = format!(
            r#"{{"event_id":"e1","type":"upload","ts":1767225600000,"post_id":"p1","user_id":"u","content":{{"pdq":"{pdq}","md5":"{md5}"}}}}"#
        );
        let share = r#"{"event_id":"e2","type":"share","ts":1767225600000,"post_id":"p2","parent_post_id":"p1","user_id":"u"}"#;
        for line in [upload.as_str(), share] {
            let ev = parse_line(line.as_bytes(), &mut PlainJudge).expect("valid");
            assert!(ev.owns_nothing(), "{line}");
        }
        // each text made the event's own in turn: an escape, a number, an uppercase hash
        let owned = [
            upload.replace(r#""e1""#, r#""e\u0031""#),
            upload.replace(r#""e1""#, "7"),
            upload.replace(r#""p1""#, r#""p\u0031""#),
            upload.replace(r#""u""#, r#""\u0075""#),
            upload.replace(&pdq, &pdq.to_uppercase()),
            upload.replace(&md5, &md5.to_uppercase()),
            share.replace(r#""p1""#, r#""p\u0031""#),
        ];
        for text in owned {
            let ev = parse_line(text.as_bytes(), &mut PlainJudge).expect("valid");
            assert!(!ev.owns_nothing(), "{text}");
        }
    }

    #[test]
    fn same_id_is_equality() {
        for (a, b) in [
            ("p12", "p12"),
            ("p12", "p13"),
            ("p12", "q12"),
            ("p1", "p12"),
            ("", ""),
        ] {
            assert_eq!(same_id(a.as_bytes(), b.as_bytes()), a == b, "{a} {b}");
        }
    }

    #[test]
    fn a_compact_event_is_routed_by_a_shares_parent_else_its_post() {
        // as `streams.router` picks it: the kind decides, not whether a parent is named
        // (an event read back from an internal topic may name one for any kind)
        let share = r#"{"event_id":"e1","type":"share","ts":1767225600000,"post_id":"p2","parent_post_id":"p1","user_id":"u"}"#;
        let ev = parse_line(share.as_bytes(), &mut PlainJudge).expect("valid");
        assert_eq!(Compact::of(&ev).expect("a share").target_post_id(), "p1");
        let takedown = r#"{"event_id":"e2","type":"takedown","ts":1767225600000,"post_id":"p2","user_id":"u"}"#;
        let mut ev = parse_line(takedown.as_bytes(), &mut PlainJudge).expect("valid");
        assert_eq!(Compact::of(&ev).expect("a takedown").target_post_id(), "p2");
        for kind in [Kind::Takedown, Kind::Upload] {
            ev.kind = kind;
            ev.parent_post_id = Some("p1".into());
            let compact = Compact::of(&ev).expect("not a video");
            assert_eq!(compact.parent_post_id(), Some("p1"), "{kind:?} keeps it");
            assert_eq!(compact.target_post_id(), "p2", "{kind:?}");
        }
    }

    #[test]
    fn a_compact_event_is_the_parsers_record_again() {
        let pdq = "ab".repeat(32);
        let lines = [
            r#"{"event_id":"e1","type":"share","ts":1767225600000,"post_id":"p2","parent_post_id":"p1","user_id":"ü","followers":3}"#.to_owned(),
            r#"{"event_id":7,"type":"takedown","ts":1767225600001,"post_id":"p2","user_id":"u"}"#.to_owned(),
            format!(r#"{{"event_id":"e3","type":"upload","ts":1767225600002,"post_id":"p3","user_id":"u","content":{{"pdq":"{pdq}","pdq_quality":90}}}}"#),
            r#"{"event_id":"e4","type":"upload","ts":1767225600003,"post_id":"p4","user_id":"u","content":{"md5":"0123456789abcdef0123456789ABCDEF"}}"#.to_owned(),
        ];
        for line in &lines {
            let ev = parse_line(line.as_bytes(), &mut PlainJudge).expect("valid");
            let compact = Compact::of(&ev).expect("not a video");
            assert_eq!(compact.event(), ev, "{line}");
            let v = compact.view();
            let fields = (v.event_id, v.kind, v.ts_ms, v.post_id, v.user_id);
            let want = (
                ev.event_id.as_ref(),
                ev.kind.as_str(),
                ev.ts_ms,
                ev.post_id.as_ref(),
            );
            assert_eq!(
                fields,
                (want.0, want.1, want.2, want.3, ev.user_id.as_ref())
            );
            assert_eq!(
                (v.parent_post_id, v.followers),
                (ev.parent_post_id.as_deref(), ev.followers)
            );
            let content = ev.content.as_ref();
            let want = content.map(|c| (c.pdq.as_deref(), c.pdq_quality, c.md5.as_deref()));
            assert_eq!(
                v.content.map(|c| (c.pdq, c.pdq_quality, c.md5)),
                want,
                "{line}"
            );
        }
        let video = r#"{"event_id":"e5","type":"upload","ts":1767225600000,"post_id":"p","user_id":"u","content":{"vpdq":["x"]}}"#;
        let ev = parse_line(video.as_bytes(), &mut PlainJudge).expect("parsed");
        assert!(Compact::of(&ev).is_none(), "a video's frames are Python's");
    }
}
