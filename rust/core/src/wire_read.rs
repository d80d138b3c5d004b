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

/// One item of an envelope or a log entry (the tags are `streams.wire`'s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read<'a> {
    /// `["s", event]`
    ToRoute(Event<'a>),
    /// `["u", event]`: an upload with content
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
/// order): a clusters partition logs the routed events it received as they came, not
/// written again.
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
    let text = raw.get();
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

/// One item, or [`Read::Other`] when the core does not read it.
pub fn read_item<'a>(raw: &'a RawValue, judge: &mut dyn Judge) -> Read<'a> {
    read_known(raw, judge).unwrap_or(Read::Other(raw.get()))
}

fn read_known<'a>(raw: &'a RawValue, judge: &mut dyn Judge) -> Option<Read<'a>> {
    let fields: Vec<&'a RawValue> = serde_json::from_str(raw.get()).ok()?;
    let (tag, rest) = fields.split_first()?;
    let tag = string(tag)?;
    Some(match (tag.as_ref(), rest) {
        ("s", [ev]) => Read::ToRoute(event(ev, judge)?),
        ("u", [ev]) => {
            let ev = event(ev, judge)?;
            if ev.kind != event::Kind::Upload || ev.content.is_none() {
                return None;
            }
            Read::Unbanked(ev)
        }
        ("e", [ev, cluster, matched]) if matched.get() == "null" => Read::Routed {
            cluster_id: id(cluster)?,
            event: event(ev, judge)?,
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
}
