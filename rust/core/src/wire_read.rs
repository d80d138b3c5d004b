//! Reading what the stages send each other and log (`streams.wire`'s records):
//! an envelope, or a cluster-log entry, into the records the next stage needs.
//!
//! A record read from a topic was decoded in Python item by item: the whole
//! envelope into dicts and lists, then each event written back as JSON for the
//! event parser and parsed again (about 7 us an event, each hop through Kafka,
//! and again for every event a replacement restores from a cluster log). Here
//! the envelope is scanned once, and each event's own JSON text goes to the
//! event parser ([`crate::event::parse_line`]), the one reader of a share event,
//! whether a producer or a stage wrote it.
//!
//! The core reads the forms the stages write; anything else is left to Python,
//! which says why it is not a record: an item it does not read ([`Read::Other`]:
//! a banked upload's match, a video's frames, an earlier version's form, a
//! malformed item) is handed over as its JSON text, and an envelope whose frame
//! it does not read (not an object, no item array, a mark that is not an
//! integer, two keys naming one partition) gives `None`, for Python to read
//! whole. So what a record becomes never depends on which of the two read it.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::event::{self, Event, Judge};
use crate::json;

/// One item of an envelope or a log entry (the tags are `streams.wire`'s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read<'a> {
    /// `["s2", held event]` (`crate::wire::write_held`'s form), or `["s", event]` (the form
    /// earlier versions wrote, and this one for an event the held form does not write)
    ToRoute(Event<'a>),
    /// `["u2", held event]` or `["u", event]` (as [`Read::ToRoute`]): an upload with content
    Unbanked(Event<'a>),
    /// `["e", event, cluster_id, null]`
    Routed {
        event: Event<'a>,
        cluster_id: Cow<'a, str>,
    },
    /// `["r", post_id, cluster_id]`
    Registration {
        post_id: Cow<'a, str>,
        cluster_id: Cow<'a, str>,
    },
    /// `["f", post_id]`
    Forget(Cow<'a, str>),
    /// `["t", cluster_id, ts]`
    Touch {
        cluster_id: Cow<'a, str>,
        ts_ms: i64,
    },
    /// Any other item, as its JSON text: Python reads it (see the module doc).
    Other(&'a str),
}

/// An envelope's frame and items: marks `(partition, newest event time, idle)`,
/// progress and input watermarks `(partition, event time)`, each in partition order;
/// `spans`, each item's own JSON text as the record holds it (beside `items`, in the same
/// order): what Python reads is handed over as its text, and a clusters partition logs
/// such an item as it came.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope<'a> {
    pub items: Vec<Read<'a>>,
    pub spans: Vec<&'a str>,
    pub marks: Vec<(i64, i64, bool)>,
    pub progress: Vec<(i64, i64)>,
    pub inputs: Vec<(i64, i64)>,
}

/// A JSON string's text (`None`: not a string, or one the core does not decode).
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    if let Ok(s) = serde_json::from_str::<&str>(text) {
        return Some(Cow::Borrowed(s));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

/// A non-empty JSON string (what `streams.wire` requires of an id).
fn id(raw: &RawValue) -> Option<Cow<'_, str>> {
    string(raw).filter(|s| !s.is_empty())
}

/// A JSON integer within 64 bits (not a float, not a boolean).
fn integer(raw: &RawValue) -> Option<i64> {
    integer_text(raw.get())
}

/// [`integer`] of a value's text.
fn integer_text(text: &str) -> Option<i64> {
    if text.contains(['.', 'e', 'E']) {
        return None;
    }
    serde_json::from_str::<i64>(text).ok()
}

/// A valid event, without a video's frames (Python reads those).
fn event<'a>(raw: &'a RawValue, judge: &mut dyn Judge) -> Option<Event<'a>> {
    let ev = event::parse_line(raw.get().as_bytes(), judge).ok()?;
    match &ev.content {
        Some(c) if c.vpdq.is_some() => None,
        _ => Some(ev),
    }
}

/// A JSON string's text as the record holds it, quotes included, if it has no escape: then
/// it is what orjson writes for that string.
fn plain_text(text: &str) -> Option<&str> {
    (text.len() >= 2 && text.starts_with('"') && !text.contains('\\')).then_some(text)
}

/// The values of a JSON array's text, each as serde's `RawValue` gives it (its text, no
/// white space around), in one pass and no allocation; `None` if the text is not an
/// array, or holds more than `N` values. The text is valid JSON (a `RawValue`'s, read
/// already): only where each value ends is looked for.
fn array_values<const N: usize>(text: &str) -> Option<([&str; N], usize)> {
    let b = text.as_bytes();
    let space = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r');
    let skip = |mut i: usize| {
        while i < b.len() && space(b[i]) {
            i += 1;
        }
        i
    };
    let mut i = skip(0);
    if b.get(i) != Some(&b'[') {
        return None;
    }
    let mut out = [""; N];
    let mut n = 0;
    i = skip(i + 1);
    if b.get(i) == Some(&b']') {
        return Some((out, 0));
    }
    loop {
        let start = i;
        let (mut depth, mut strings) = (0_usize, json::InText::default());
        while i < b.len() {
            let c = b[i];
            if strings.feed(c) {
                i += 1;
                if depth == 0 && !strings.is_open() {
                    break; // a string's closing quote ends a value of its own
                }
                continue;
            }
            match c {
                b'[' | b'{' => depth += 1,
                b']' | b'}' if depth == 0 => break,
                b']' | b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        i += 1;
                        break;
                    }
                }
                b',' if depth == 0 => break,
                c if depth == 0 && space(c) => break,
                _ => {}
            }
            i += 1;
        }
        if n == N || start == i {
            return None;
        }
        out[n] = &text[start..i];
        n += 1;
        i = skip(i);
        match b.get(i) {
            Some(b',') => i = skip(i + 1),
            Some(b']') => return Some((out, n)),
            _ => return None,
        }
    }
}

/// An MD5's or a PDQ's base64 in a held event (22 or 43 characters, unpadded, as
/// `crate::wire_index::write_hash` writes it) as lowercase hex; `None` if it is not the
/// canonical base64 of its bytes (Python reads such an item).
fn unbase64_hex(text: &str) -> Option<String> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(text.len() * 3 / 2);
    for chunk in text.as_bytes().chunks(4) {
        let mut n = 0_u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= b64_value(c)? << (18 - 6 * i);
        }
        let whole = chunk.len() * 6 / 8;
        // canonical: a last chunk of 2 or 3 characters leaves its spare bits zero (the
        // writer's, `crate::wire_index::push_b64`); one character is no byte's
        let spare = (1_u32 << (24 - 8 * whole)) - (1_u32 << (24 - 6 * chunk.len()));
        if whole == 0 || n & spare != 0 {
            return None;
        }
        for i in 0..whole {
            let b = (n >> (16 - 8 * i)) as u8;
            hex.push(HEX[usize::from(b >> 4)] as char);
            hex.push(HEX[usize::from(b & 15)] as char);
        }
    }
    Some(hex)
}

/// A base64 character's value (the standard alphabet).
fn b64_value(c: u8) -> Option<u32> {
    Some(u32::from(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    }))
}

/// A held event's fields (5 to 8) and its type's name, from its letter.
fn held_fields(raw: &RawValue) -> Option<([&str; 8], usize, &'static str)> {
    let (f, n) = array_values::<8>(raw.get())?;
    if n < 5 {
        return None;
    }
    Some((f, n, kind_of(f[1])?))
}

/// A held event's type, from its letter.
fn kind_of(letter: &str) -> Option<&'static str> {
    Some(match letter {
        r#""u""# => "upload",
        r#""s""# => "share",
        r#""t""# => "takedown",
        _ => return None,
    })
}

/// A held event (`crate::wire::write_held`'s form: a cluster log's `"c"` item, and the
/// `clusters` topic's) read as `streams.wire._held` reads it: its fields, as the event
/// parser reads those of the canonical JSON object Python makes of them, through the
/// event parser's own validation ([`event::validate`]), the one judge of a share event.
/// Only the plain form the writer writes (texts without escapes, integers, a type letter,
/// hashes in canonical base64, no video's frames); anything else is `None`, and Python
/// reads the item, so what it becomes does not depend on the reader.
///
/// The fields go to the validation as they are: the canonical object was written and
/// parsed again before (about 0.7 us an event more, read from the topic or restored).
/// That object's length limit ([`event::MAX_EVENT_BYTES`]) cannot bind: the ids are
/// [`event::MAX_ID_LEN`] characters at most, or the event is refused either way.
fn held_event<'a>(raw: &'a RawValue, judge: &mut dyn Judge) -> Option<Event<'a>> {
    let (held, n, kind) = held_fields(raw)?;
    let f = &held[..n];
    // a string the writer wrote: its text between the quotes (no escape to undo)
    let text = |v: &'a str| -> Option<json::Val<'a>> {
        let quoted = plain_text(v)?;
        Some(json::Val::Str(Cow::Borrowed(&quoted[1..quoted.len() - 1])))
    };
    let int = |v: &str| Some(json::Val::Int(i128::from(integer_text(v)?)));
    let mut fields = json::Fields {
        event_id: Some(text(f[0])?),
        kind: Some(json::Val::Str(Cow::Borrowed(kind))),
        ts: Some(int(f[2])?),
        post_id: Some(text(f[3])?),
        user_id: Some(text(f[4])?),
        ..json::Fields::default()
    };
    if let Some(&parent) = f.get(5).filter(|&&v| v != "null") {
        fields.parent_post_id = Some(text(parent)?);
    }
    if let Some(&n) = f.get(6).filter(|&&v| v != "null") {
        fields.followers = Some(int(n)?);
    }
    if let Some(&signals) = f.get(7) {
        // more than three: a video's frames, Python's to read
        let (signals, n) = array_values::<3>(signals)?;
        let mut content = json::ContentFields::default();
        for (i, &v) in signals[..n].iter().enumerate() {
            if v == "null" {
                continue;
            }
            if i == 1 {
                content.pdq_quality = Some(int(v)?);
                continue;
            }
            let json::Val::Str(inner) = text(v)? else {
                return None;
            };
            let size = if i == 0 { 43 } else { 22 };
            let value = if inner.len() == size {
                json::Val::Str(Cow::Owned(unbase64_hex(&inner)?))
            } else {
                json::Val::Str(inner) // as it is: the parser judges it
            };
            if i == 0 {
                content.pdq = Some(value);
            } else {
                content.md5 = Some(value);
            }
        }
        fields.content = Some(json::ObjectOr::Object(content));
    }
    let ev = event::validate(&mut fields, false, judge).ok()?;
    match &ev.content {
        Some(c) if c.vpdq.is_some() => None,
        _ => Some(ev),
    }
}

/// One item, or [`Read::Other`] when the core does not read it.
pub fn read_item<'a>(raw: &'a RawValue, judge: &mut dyn Judge) -> Read<'a> {
    read_known(raw, judge).unwrap_or(Read::Other(raw.get()))
}

fn read_known<'a>(raw: &'a RawValue, judge: &mut dyn Judge) -> Option<Read<'a>> {
    let fields: Vec<&'a RawValue> = serde_json::from_str(raw.get()).ok()?;
    let (tag, rest) = fields.split_first()?;
    let tag = string(tag)?;
    Some(match (tag.as_ref(), rest) {
        ("s2", [held]) => Read::ToRoute(held_event(held, judge)?),
        ("s", [ev]) => Read::ToRoute(event(ev, judge)?),
        ("u" | "u2", [ev]) => {
            let ev = if tag == "u" {
                event(ev, judge)?
            } else {
                held_event(ev, judge)?
            };
            if ev.kind != event::Kind::Upload || ev.content.is_none() {
                return None;
            }
            Read::Unbanked(ev)
        }
        ("e", [ev, cluster, matched]) if matched.get() == "null" => Read::Routed {
            cluster_id: id(cluster)?,
            event: event(ev, judge)?,
        },
        ("c", [cluster, held]) => Read::Routed {
            cluster_id: id(cluster)?,
            event: held_event(held, judge)?,
        },
        ("r", [post, cluster]) => Read::Registration {
            post_id: id(post)?,
            cluster_id: id(cluster)?,
        },
        ("f", [post]) => Read::Forget(id(post)?),
        ("t", [cluster, ts]) => Read::Touch {
            cluster_id: id(cluster)?,
            ts_ms: integer(ts)?,
        },
        _ => return None,
    })
}

/// The items of a JSON array (a cluster-log entry); `None` if it is not one.
pub fn read_items<'a>(data: &'a [u8], judge: &mut dyn Judge) -> Option<Vec<Read<'a>>> {
    let text = std::str::from_utf8(data).ok()?;
    let items: Vec<&'a RawValue> = serde_json::from_str(text).ok()?;
    Some(items.into_iter().map(|raw| read_item(raw, judge)).collect())
}

/// A partition number as Python's `int()` reads a key the stages wrote (plain digits).
fn partition(key: &str) -> Option<i64> {
    let digits = key.strip_prefix('-').unwrap_or(key);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse().ok()
}

/// `{"<partition>": value}` in partition order; `None` if a key is not a partition, a
/// value does not read, or two keys name one partition.
fn by_partition<'a, T>(
    raw: Option<&'a RawValue>,
    value: impl Fn(&'a RawValue) -> Option<T>,
) -> Option<Vec<(i64, T)>> {
    let Some(raw) = raw else {
        return Some(Vec::new());
    };
    let map: BTreeMap<Cow<'a, str>, &'a RawValue> = serde_json::from_str(raw.get()).ok()?;
    let mut out = Vec::with_capacity(map.len());
    for (key, v) in map {
        out.push((partition(&key)?, value(v)?));
    }
    out.sort_by_key(|(p, _)| *p);
    if out.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    Some(out)
}

/// A mark `[newest event time, idle]`, idle written `0`/`1` (or a boolean).
fn mark(raw: &RawValue) -> Option<(i64, bool)> {
    let fields: Vec<&RawValue> = serde_json::from_str(raw.get()).ok()?;
    let [ts, idle] = fields.as_slice() else {
        return None;
    };
    let idle = match idle.get() {
        "true" => true,
        "false" => false,
        _ => integer(idle)? != 0,
    };
    Some((integer(ts)?, idle))
}

/// An envelope `{"i": [item], "m": {...}, "p": {...}, "w": {...}}`; `None` when the core
/// does not read its frame (Python reads it, and says what is wrong with it).
pub fn read_envelope<'a>(data: &'a [u8], judge: &mut dyn Judge) -> Option<Envelope<'a>> {
    let text = std::str::from_utf8(data).ok()?;
    // a key given twice counts once, its last value (as orjson's dict has it)
    let body: BTreeMap<Cow<'a, str>, &'a RawValue> = serde_json::from_str(text).ok()?;
    let items: Vec<&'a RawValue> = serde_json::from_str(body.get("i")?.get()).ok()?;
    let marks = by_partition(body.get("m").copied(), mark)?;
    let progress = by_partition(body.get("p").copied(), integer)?;
    let inputs = by_partition(body.get("w").copied(), integer)?;
    Some(Envelope {
        spans: items.iter().map(|raw| raw.get()).collect(),
        items: items.into_iter().map(|raw| read_item(raw, judge)).collect(),
        marks: marks
            .into_iter()
            .map(|(p, (t, idle))| (p, t, idle))
            .collect(),
        progress,
        inputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Kind, PlainJudge};
    use crate::wire::{write_parts, EventView, Item};

    const SHARE: &str = r#"{"event_id":"e2","type":"share","ts":1767225600000,"post_id":"p2","user_id":"u1","parent_post_id":"p1"}"#;
    const UPLOAD: &str = r#"{"event_id":"e1","type":"upload","ts":1767225600000,"post_id":"p1","user_id":"u1","content":{"md5":"0123456789abcdef0123456789abcdef"}}"#;

    fn envelope(text: &str) -> Option<Envelope<'_>> {
        read_envelope(text.as_bytes(), &mut PlainJudge)
    }

    fn items(text: &str) -> Vec<Read<'_>> {
        read_items(text.as_bytes(), &mut PlainJudge).expect("an array")
    }

    /// An upload with every field the held form writes (a non-ASCII id, a PDQ, its
    /// quality and an MD5), reshared from `parent_post_id`.
    fn upload(parent_post_id: Option<&'static str>) -> EventView<'static> {
        EventView {
            event_id: "e1é",
            kind: "upload",
            ts_ms: 1_767_225_600_000,
            post_id: "p1",
            user_id: "u1",
            parent_post_id,
            followers: Some(14),
            content: Some(crate::wire::ContentView {
                pdq: Some("34da973d34da973d34da973d34da973d34da973d34da973d34da973d34da973d"),
                pdq_quality: Some(91),
                md5: Some("47dfaa6247dfaa6247dfaa6247dfaa62"),
            }),
        }
    }

    #[test]
    fn every_record_the_stages_write_is_read() {
        let text = format!(
            r#"[["s",{SHARE}],["u",{UPLOAD}],["e",{SHARE},"b-1",null],["r","p1","b-1"],["f","p0"],["t","u-9",-5]]"#
        );
        let read = items(&text);
        assert!(
            matches!(&read[0], Read::ToRoute(ev) if ev.event_id == "e2" && ev.kind == Kind::Share
            && ev.parent_post_id.as_deref() == Some("p1"))
        );
        assert!(
            matches!(&read[1], Read::Unbanked(ev) if ev.content.as_ref().unwrap().md5.as_deref()
            == Some("0123456789abcdef0123456789abcdef"))
        );
        assert!(
            matches!(&read[2], Read::Routed { event, cluster_id } if event.post_id == "p2" && cluster_id == "b-1")
        );
        assert_eq!(
            read[3..],
            [
                Read::Registration {
                    post_id: "p1".into(),
                    cluster_id: "b-1".into()
                },
                Read::Forget("p0".into()),
                Read::Touch {
                    cluster_id: "u-9".into(),
                    ts_ms: -5
                },
            ]
        );
    }

    #[test]
    fn what_the_writer_writes_reads_back() {
        let ev = EventView {
            event_id: "e\"1é",
            kind: "share",
            ts_ms: 1_767_225_600_000,
            post_id: "p\\2",
            user_id: "u/1",
            parent_post_id: Some("p1"),
            followers: Some(7),
            content: None,
        };
        let written = write_parts(
            &[
                Item::Routed {
                    event: ev,
                    cluster_id: "b-\u{7f}",
                    match_json: None,
                },
                Item::Registration {
                    post_id: "p\t",
                    cluster_id: "c",
                },
            ],
            usize::MAX,
        );
        let read = items(std::str::from_utf8(&written[0]).unwrap());
        let Read::Routed { event, cluster_id } = &read[0] else {
            panic!("{read:?}")
        };
        assert_eq!(
            (
                event.event_id.as_ref(),
                event.post_id.as_ref(),
                event.user_id.as_ref()
            ),
            ("e\"1é", "p\\2", "u/1")
        );
        assert_eq!(
            (cluster_id.as_ref(), event.followers),
            ("b-\u{7f}", Some(7))
        );
        assert_eq!(
            read[1],
            Read::Registration {
                post_id: "p\t".into(),
                cluster_id: "c".into()
            }
        );
    }

    #[test]
    fn an_event_to_route_reads_back_in_either_form() {
        let ev = upload(Some("p0"));
        let written = write_parts(&[Item::ToRoute(ev)], usize::MAX);
        let text = std::str::from_utf8(&written[0]).unwrap();
        assert!(text.starts_with(r#"[["s2",["e1é","u","#), "{text}");
        let earlier = format!(
            r#"[["s",{{"event_id":"e1é","type":"upload","ts":1767225600000,"post_id":"p1","user_id":"u1","parent_post_id":"p0","followers":14,"content":{{"pdq":"{}","pdq_quality":91,"md5":"{}"}}}}]]"#,
            ev.content.unwrap().pdq.unwrap(),
            ev.content.unwrap().md5.unwrap()
        );
        let (now, before) = (items(text), items(&earlier));
        assert!(matches!(&now[..], [Read::ToRoute(_)]), "{now:?}");
        assert_eq!(now, before);
        // an unbanked upload for the index's owner likewise
        let written = write_parts(&[Item::Unbanked(ev)], usize::MAX);
        let text = std::str::from_utf8(&written[0]).unwrap();
        assert!(text.starts_with(r#"[["u2",["e1é","u","#), "{text}");
        let earlier = earlier.replacen(r#"[["s","#, r#"[["u","#, 1);
        let (now, before) = (items(text), items(&earlier));
        assert!(matches!(&now[..], [Read::Unbanked(_)]), "{now:?}");
        assert_eq!(now, before);
        let share = r#"["u2",["e1","s",1767225600000,"p1","u1","p0"]]"#; // not an upload
        assert_eq!(items(&format!("[{share}]")), [Read::Other(share)]);
        // what the core does not read in the compact form is Python's, as its text
        let odd = r#"["s2",["e1","s",1767225600000,"p1","u1","p\u0030"]]"#;
        assert_eq!(items(&format!("[{odd}]")), [Read::Other(odd)]);
    }

    #[test]
    fn a_cluster_log_s_compact_item_reads_back_as_the_event_written() {
        let ev = upload(None);
        let written = write_parts(
            &[Item::Logged {
                event: ev,
                cluster_id: "u-66274f729a52a47e",
            }],
            usize::MAX,
        );
        let text = std::str::from_utf8(&written[0]).unwrap();
        assert!(
            text.starts_with(r#"[["c","u-66274f729a52a47e",["e1é","u","#),
            "{text}"
        );
        let read = items(text);
        let [Read::Routed { event, cluster_id }] = read.as_slice() else {
            panic!("{read:?}")
        };
        assert_eq!(cluster_id, "u-66274f729a52a47e");
        let c = event.content.as_ref().unwrap();
        assert_eq!(
            (
                event.event_id.as_ref(),
                event.kind,
                event.followers,
                c.pdq_quality
            ),
            ("e1é", Kind::Upload, Some(14), Some(91))
        );
        assert_eq!(
            (c.pdq.as_deref(), c.md5.as_deref()),
            (ev.content.unwrap().pdq, ev.content.unwrap().md5)
        );
        // a type no event is held as: the earlier form
        let odd = EventView {
            kind: "other",
            ..ev
        };
        let written = write_parts(
            &[Item::Logged {
                event: odd,
                cluster_id: "u-1",
            }],
            usize::MAX,
        );
        assert!(written[0].starts_with(br#"[["e",{"event_id""#));
    }

    #[test]
    fn what_the_core_does_not_read_is_left_to_python_as_its_text() {
        let cases = [
            format!(r#"["e",{SHARE},"b-1",{{"bank":"x"}}]"#), // a match
            format!(r#"["e",{SHARE},3,17]"#),                 // an earlier version's ingest record
            format!(r#"["e",{SHARE},"",null]"#),              // an empty cluster id
            format!(r#"["u",{SHARE}]"#),                      // not an upload
            r#"["s",{"event_id":"e"}]"#.to_owned(),           // not a valid event
            r#"["r","p1"]"#.to_owned(),                       // a field short
            r#"["t","u-1",1.5]"#.to_owned(),                  // not an integer
            r#"["t","u-1",true]"#.to_owned(),
            r#"["t","u-1",99999999999999999999]"#.to_owned(), // over 64 bits
            r#"["x",1]"#.to_owned(),
            // a cluster log's held event other than as written: Python reads it
            r#"["c","u-1",["e1","u",5,"p1","u1",null,null,[null,9,"AAAAAAAAAAAAAAAAAAAA/x"]]]"#
                .to_owned(), // base64 of other trailing bits
            r#"["c","u-1",["e1","s",5,"p1","u1","p0"]]"#.to_owned(), // an escape
            r#"["c","u-1",["e1","share",5,"p1","u1","p0"]]"#.to_owned(), // no type letter
            r#"["c","u-1",["e1","s",5.0,"p1","u1","p0"]]"#.to_owned(), // not an integer
            r#"["c","u-1",["e1","s",5,"p1"]]"#.to_owned(),           // a field short
            r#"["c","u-1",["e1","u",5,"p1","u1",null,null,[null,9,null,["x"]]]]"#.to_owned(),
            r#"[]"#.to_owned(),
            r#"{"s":1}"#.to_owned(),
            r#"7"#.to_owned(),
        ];
        for case in &cases {
            let text = format!("[{case}]");
            assert_eq!(items(&text), [Read::Other(case.as_str())], "{case}");
        }
        let video = r#"["u",{"event_id":"e1","type":"upload","ts":1767225600000,"post_id":"p1","user_id":"u1","content":{"vpdq":["x"]}}]"#;
        assert!(matches!(items(&format!("[{video}]"))[0], Read::Other(_)));
    }

    #[test]
    fn an_envelope_gives_its_marks_progress_and_inputs_by_partition() {
        let text = format!(
            r#"{{"i":[["s",{SHARE}]],"m":{{"10":[5,0],"2":[7,1],"3":[8,true]}},"p":{{"0":4}},"w":{{"1":9}},"x":[]}}"#
        );
        let env = envelope(&text).expect("an envelope");
        assert_eq!(env.items.len(), 1);
        assert_eq!(env.marks, [(2, 7, true), (3, 8, true), (10, 5, false)]);
        assert_eq!((env.progress, env.inputs), (vec![(0, 4)], vec![(1, 9)]));
        let bare = envelope(r#"{"i":[]}"#).expect("an envelope");
        assert_eq!(bare, Envelope::default());
        // a key twice: its last value, as orjson's dict
        assert_eq!(envelope(r#"{"i":[1],"i":[]}"#).expect("read").items, []);
    }

    #[test]
    fn each_item_comes_with_its_own_text_as_the_record_holds_it() {
        let text = format!(r#"{{"i": [ ["f","p1"] ,["s",{SHARE}], 7],"p":{{"0":4}}}}"#);
        let env = envelope(&text).expect("an envelope");
        let share = format!(r#"["s",{SHARE}]"#);
        assert_eq!(env.spans, [r#"["f","p1"]"#, share.as_str(), "7"]);
        assert_eq!(env.items.len(), env.spans.len());
    }

    #[test]
    fn a_frame_the_core_does_not_read_is_left_to_python() {
        for text in [
            "",
            "{oops",
            "[]",
            r#"{"m":{}}"#,
            r#"{"i":{}}"#,
            r#"{"i":[],"m":{"a":[1,0]}}"#,
            r#"{"i":[],"m":{"1":[1]}}"#,
            r#"{"i":[],"m":{"1":[1,0,0]}}"#,
            r#"{"i":[],"p":{"1":1.0}}"#,
            r#"{"i":[],"p":{"1":4,"01":5}}"#,
            r#"{"i":[],"w":[]}"#,
        ] {
            assert_eq!(envelope(text), None, "{text}");
        }
        assert_eq!(read_envelope(b"{\"i\":[\xff]}", &mut PlainJudge), None);
    }

    /// The base64 reader before this one: decoded, then canonical if encoding the bytes
    /// again gives the same text.
    fn unbase64_hex_again(text: &str) -> Option<String> {
        let mut bytes = Vec::new();
        for chunk in text.as_bytes().chunks(4) {
            let mut n = 0_u32;
            for (i, &c) in chunk.iter().enumerate() {
                n |= b64_value(c)? << (18 - 6 * i);
            }
            for i in 0..chunk.len() * 6 / 8 {
                bytes.push((n >> (16 - 8 * i)) as u8);
            }
        }
        let mut again = Vec::new();
        crate::wire_index::push_b64(&mut again, &bytes);
        (again == text.as_bytes()).then(|| bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    #[test]
    fn a_hash_s_base64_is_read_as_it_was_when_encoded_again() {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ ";
        let mut rng = crate::testing::Rng(29);
        let mut read = 0;
        for _ in 0..20_000 {
            let n = [22, 43, 1, 2, 3, 4, 21, 44][(rng.next() % 8) as usize];
            // mostly the alphabet's characters, the last one often with its spare bits clear
            let mut text: Vec<u8> = (0..n)
                .map(|_| {
                    alphabet[(rng.next() % if rng.next() % 20 == 0 { 68 } else { 64 }) as usize]
                })
                .collect();
            if rng.next() % 2 == 0 {
                let last = text.len() - 1;
                text[last] = b"AQgw"[(rng.next() % 4) as usize];
            }
            let text = String::from_utf8(text).expect("ASCII");
            let hex = unbase64_hex(&text);
            assert_eq!(hex, unbase64_hex_again(&text), "{text}");
            read += usize::from(hex.is_some());
        }
        assert!(read > 2_000, "{read}");
    }

    /// The reader before this one: the canonical object's text, made of the fields, through
    /// the event parser. Kept here as the reference the direct reader must equal.
    fn held_event_by_text(raw: &RawValue, judge: &mut dyn Judge) -> Option<Event<'static>> {
        let f: Vec<&RawValue> = serde_json::from_str(raw.get()).ok()?;
        if !(5..=8).contains(&f.len()) {
            return None;
        }
        let kind = kind_of(f[1].get())?;
        let mut text = String::new();
        let mut put = |key: &str, value: &str| {
            if !text.is_empty() {
                text.push(',');
            }
            text.push_str(&format!("\"{key}\":{value}"));
        };
        put("event_id", plain_text(f[0].get())?);
        put("type", &format!("\"{kind}\""));
        put("ts", &integer(f[2])?.to_string());
        put("post_id", plain_text(f[3].get())?);
        put("user_id", plain_text(f[4].get())?);
        if let Some(parent) = f.get(5).filter(|v| v.get() != "null") {
            put("parent_post_id", plain_text(parent.get())?);
        }
        if let Some(n) = f.get(6).filter(|v| v.get() != "null") {
            put("followers", &integer(n)?.to_string());
        }
        if let Some(signals) = f.get(7) {
            let signals: Vec<&RawValue> = serde_json::from_str(signals.get()).ok()?;
            if signals.len() > 3 {
                return None;
            }
            let mut content = String::from("{");
            for (i, v) in signals.iter().enumerate() {
                if v.get() == "null" {
                    continue;
                }
                let (name, value) = match i {
                    1 => ("pdq_quality", integer(v)?.to_string()),
                    _ => {
                        let quoted = plain_text(v.get())?;
                        let inner = &quoted[1..quoted.len() - 1];
                        let (name, size) = if i == 0 { ("pdq", 43) } else { ("md5", 22) };
                        if inner.len() == size {
                            (name, format!("\"{}\"", unbase64_hex_again(inner)?))
                        } else {
                            (name, quoted.to_owned())
                        }
                    }
                };
                if content.len() > 1 {
                    content.push(',');
                }
                content.push_str(&format!("\"{name}\":{value}"));
            }
            content.push('}');
            put("content", &content);
        }
        let text = format!("{{{text}}}");
        let ev = event::parse_line(text.as_bytes(), judge).ok()?;
        if ev.content.as_ref().is_some_and(|c| c.vpdq.is_some()) {
            return None;
        }
        Some(Event {
            event_id: Cow::Owned(ev.event_id.into_owned()),
            kind: ev.kind,
            ts_ms: ev.ts_ms,
            post_id: Cow::Owned(ev.post_id.into_owned()),
            user_id: Cow::Owned(ev.user_id.into_owned()),
            parent_post_id: ev.parent_post_id.map(|p| Cow::Owned(p.into_owned())),
            followers: ev.followers,
            content: ev.content.map(|c| event::Content {
                pdq: c.pdq.map(|t| Cow::Owned(t.into_owned())),
                pdq_hash: c.pdq_hash,
                pdq_quality: c.pdq_quality,
                md5: c.md5.map(|t| Cow::Owned(t.into_owned())),
                md5_bytes: c.md5_bytes,
                vpdq: None,
            }),
            event_id_was_text: ev.event_id_was_text,
        })
    }

    #[test]
    fn a_held_event_read_from_its_fields_is_what_its_canonical_text_gave() {
        // each field drawn from values the writer writes and values it never does
        let long = format!("\"{}\"", "x".repeat(257));
        // the first values of each list are the writer's (drawn most often)
        let ids: &[&str] = &[
            r#""e1""#,
            r#""é""#,
            r#""a b""#,
            r#""p1""#,
            r#""""#,
            "\"\u{7f}\"",
            r#""x\ty""#,
            r#""\u00e9""#,
            "5",
            "null",
            "1.5",
            &long,
            "\"\u{2028}\"",
        ];
        let kinds: &[&str] = &[r#""u""#, r#""s""#, r#""t""#, r#""x""#, r#""share""#, "5"];
        let ts: &[&str] = &[
            "1767225600000",
            "5",
            "-1",
            "1.5",
            r#""2026-01-01T00:00:00Z""#,
            "1e3",
            "99999999999999999999",
            "null",
        ];
        let parents: &[&str] = &["null", r#""p0""#, r#""é""#, r#""p1""#, "5"];
        let followers: &[&str] = &["null", "3", "-1", "1.0", "9007199254740993", r#""3""#];
        let pdq = r#""AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA""#;
        let md5 = r#""AAAAAAAAAAAAAAAAAAAA/w""#;
        let hex32 = format!("\"{}\"", "0f".repeat(16));
        let hex64 = format!("\"{}\"", "A".repeat(64));
        let signals: Vec<String> = [
            "null".to_owned(),
            format!("[null,90,{md5}]"),
            format!("[{pdq},90]"),
            format!("[{hex64},50,{hex32}]"),
            format!("[null,null,{hex32}]"),
            "[]".to_owned(),
            "[null,null,null]".to_owned(),
            format!("[{pdq},101,{md5}]"),
            r#"[null,90,"AAAAAAAAAAAAAAAAAAAA/x"]"#.to_owned(), // not canonical base64
            format!("[{pdq},90,{md5},[]]"),
            r#"[null,90,"\u0041"]"#.to_owned(),
            r#"["x",1,"y"]"#.to_owned(),
            "\"x\"".to_owned(),
        ]
        .into();
        let mut rng = crate::testing::Rng(17);
        // one of the first `good` of `n` values, nine times in ten; else any
        let mut pick = |good: usize, n: usize| {
            let r = rng.next();
            (r >> 8) as usize % if r % 10 == 0 { n } else { good }
        };
        let (mut read, mut tried) = (0, 0);
        for _ in 0..40_000 {
            let mut f = vec![
                ids[pick(4, ids.len())].to_owned(),
                kinds[pick(3, kinds.len())].to_owned(),
                ts[pick(1, ts.len())].to_owned(),
                ids[pick(4, ids.len())].to_owned(),
                ids[pick(4, ids.len())].to_owned(),
                parents[pick(3, parents.len())].to_owned(),
                followers[pick(2, followers.len())].to_owned(),
                signals[pick(5, signals.len())].clone(),
            ];
            f.truncate(4 + pick(4, 6)); // 4 to 9 fields, mostly 4 to 7
            if f.len() == 9 {
                f.push("null".to_owned());
            }
            let text = format!("[{}]", f.join(","));
            let Ok(raw) = serde_json::from_str::<&RawValue>(&text) else {
                continue;
            };
            tried += 1;
            let direct = held_event(raw, &mut PlainJudge);
            assert_eq!(direct, held_event_by_text(raw, &mut PlainJudge), "{text}");
            read += usize::from(direct.is_some());
        }
        // both kinds of answer were drawn, many times
        assert!(read > 5_000 && tried - read > 5_000, "{read} of {tried}");
    }

    /// A random JSON value's text, white space anywhere between tokens.
    fn json_text(rng: &mut crate::testing::Rng, depth: usize, out: &mut String) {
        let pick = |rng: &mut crate::testing::Rng, n: u64| rng.next() % n;
        let space = |rng: &mut crate::testing::Rng, out: &mut String| {
            for _ in 0..pick(rng, 3) {
                out.push([' ', '\n', '\t', '\r'][pick(rng, 4) as usize]);
            }
        };
        space(rng, out);
        match pick(rng, if depth > 2 { 5 } else { 7 }) {
            0 => out.push_str("null"),
            1 => out.push_str(["true", "false", "-0", "1.5e3", "-12"][pick(rng, 5) as usize]),
            2 => out.push_str(&(rng.next() as i64).to_string()),
            3 | 4 => {
                out.push('"');
                for _ in 0..pick(rng, 6) {
                    out.push_str(
                        [
                            "a", ",", "[", "]", "{", "}", "\\\"", "\\\\", "é", " ", "\\u0041", ":",
                        ][pick(rng, 12) as usize],
                    );
                }
                out.push('"');
            }
            5 => {
                out.push('[');
                for i in 0..pick(rng, 4) {
                    if i > 0 {
                        out.push(',');
                    }
                    json_text(rng, depth + 1, out);
                }
                space(rng, out);
                out.push(']');
            }
            _ => {
                out.push('{');
                for i in 0..pick(rng, 3) {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&format!("\"k{i}\":"));
                    json_text(rng, depth + 1, out);
                }
                out.push('}');
            }
        }
        space(rng, out);
    }

    #[test]
    fn an_array_s_values_are_serde_s_raw_values() {
        let mut rng = crate::testing::Rng(41);
        let (mut arrays, mut read) = (0, 0);
        for _ in 0..30_000 {
            let mut text = String::new();
            json_text(&mut rng, 0, &mut text);
            let Ok(raw) = serde_json::from_str::<&RawValue>(&text) else {
                continue;
            };
            let by_serde: Option<Vec<&str>> = serde_json::from_str::<Vec<&RawValue>>(raw.get())
                .ok()
                .map(|v| v.iter().map(|x| x.get()).collect());
            arrays += usize::from(by_serde.is_some());
            let ours = array_values::<3>(raw.get()).map(|(v, n)| v[..n].to_vec());
            match &by_serde {
                Some(values) if values.len() <= 3 => assert_eq!(ours.as_ref(), Some(values)),
                _ => assert_eq!(ours, None, "{text}"),
            }
            read += usize::from(ours.is_some());
        }
        assert!(arrays > 2_000 && read > 1_000, "{arrays} {read}");
    }
}
