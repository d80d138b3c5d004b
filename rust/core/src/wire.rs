//! Writing what the stages send each other and log (`streams.wire`'s records), as
//! orjson writes them, byte for byte, and cut into parts under a size limit.
//!
//! Every event a worker routes is written at least once (its clusters
//! partition logs it), and once more for each hop through Kafka. In Python
//! each record cost a callback, a dict per event and a second pass to cut a
//! large batch into records Kafka accepts (decoding the whole batch back to
//! find where to cut). Here a batch is written in one pass, and cut while it
//! is written. The wire form does not change, so nothing written before needs
//! reading differently: a record's bytes are exactly what `orjson.dumps`
//! wrote for it.
//!
//! What this module does not know how to write (a match's figures, a video's
//! frames, anything unexpected) the caller writes for it ([`Item::Raw`]).

/// An upload's hashes, as `streams.events.Content` holds them (a video's frames are
/// written by the caller: the whole item is [`Item::Raw`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentView<'a> {
    pub pdq: Option<&'a str>,
    pub pdq_quality: Option<i64>,
    pub md5: Option<&'a str>,
}

/// A share event's fields, as `ShareEvent.to_dict` writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventView<'a> {
    pub event_id: &'a str,
    pub kind: &'a str,
    pub ts_ms: i64,
    pub post_id: &'a str,
    pub user_id: &'a str,
    pub parent_post_id: Option<&'a str>,
    pub followers: Option<i64>,
    pub content: Option<ContentView<'a>>,
}

/// One record of an envelope or a log (the tags are `streams.wire`'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// `["e", event, cluster_id, match]`; `match_json` is the match's JSON (`None`: null).
    Routed {
        event: EventView<'a>,
        cluster_id: &'a str,
        match_json: Option<&'a [u8]>,
    },
    /// `["c", cluster_id, held event]`: a routed event without a match as a cluster log
    /// keeps it, the event in [`write_held`]'s form (an event it does not write: as
    /// [`Item::Routed`])
    Logged {
        event: EventView<'a>,
        cluster_id: &'a str,
    },
    /// `["s2", held event]`: an event to route in [`write_held`]'s form (an event it does
    /// not write, or one with a text to escape: `["s", event]`, the form earlier versions
    /// wrote)
    ToRoute(EventView<'a>),
    /// `["u2", held event]`: an unbanked upload in [`write_held`]'s form (one it does not
    /// write, or one with a text to escape: `["u", event]`, the form earlier versions wrote)
    Unbanked(EventView<'a>),
    /// `["r", post_id, cluster_id]`
    Registration {
        post_id: &'a str,
        cluster_id: &'a str,
    },
    /// `["f", post_id]`
    Forget(&'a str),
    /// `["t", cluster_id, ts]`
    Touch { cluster_id: &'a str, ts_ms: i64 },
    /// An item's JSON, written by the caller.
    Raw(&'a [u8]),
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A JSON string as orjson writes it: `"` and `\` escaped, the control characters below
/// U+0020 as `\b \t \n \f \r` or `\u00XX`, everything else (DEL, non-ASCII) as is.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    write_utf8(out, s.as_bytes());
}

/// [`write_str`] of a text's bytes, known to be UTF-8 (checked once by the caller: a
/// post's id in the posts' log, which is bytes in the core's tables).
pub fn write_utf8(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    // nearly every text (ids, hashes, names) has nothing to escape: said sixteen bytes a
    // step (`to_escape`), and it is copied whole
    if !to_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\t' => b"\\t",
            b'\r' => b"\\r",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether a byte of `bytes` is one [`write_str`] escapes (below U+0020, `"` or `\`): the
/// parser's scan for where a string with no escape ends ([`crate::json::plain_run`],
/// sixteen bytes a step), run to the end. An event's ids and a cluster's are 10-20 bytes,
/// about 2,000,000 texts a one-worker benchmark's 300,000 events.
#[inline]
pub(crate) fn to_escape(bytes: &[u8]) -> bool {
    crate::json::plain_run(bytes) < bytes.len()
}

/// `n` in decimal, as `n.to_string()` writes it, from a buffer on the stack (that made a
/// `String` an integer: an event's time and followers, in every event a log writes), two
/// digits a step from a table (an event's time is 13 digits: a division a digit was
/// about 120 instructions a time).
pub(crate) fn write_int(out: &mut Vec<u8>, n: i64) {
    let mut buf = [0_u8; 20];
    let mut i = buf.len();
    let mut v = n.unsigned_abs();
    while v >= 100 {
        let d = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[d..d + 2]);
    }
    if v >= 10 {
        let d = v as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[d..d + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + v as u8;
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[i..]);
}

/// `00` to `99`, two digits each.
static PAIRS: [u8; 200] = {
    let mut t = [0_u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

fn key(out: &mut Vec<u8>, name: &str, first: bool) {
    if !first {
        out.push(b',');
    }
    write_str(out, name);
    out.push(b':');
}

/// An event as `orjson.dumps(event.to_dict())` writes it.
pub fn write_event(out: &mut Vec<u8>, ev: &EventView<'_>) {
    out.push(b'{');
    key(out, "event_id", true);
    write_str(out, ev.event_id);
    key(out, "type", false);
    write_str(out, ev.kind);
    key(out, "ts", false);
    write_int(out, ev.ts_ms);
    key(out, "post_id", false);
    write_str(out, ev.post_id);
    key(out, "user_id", false);
    write_str(out, ev.user_id);
    if let Some(parent) = ev.parent_post_id {
        key(out, "parent_post_id", false);
        write_str(out, parent);
    }
    if let Some(n) = ev.followers {
        key(out, "followers", false);
        write_int(out, n);
    }
    if let Some(c) = &ev.content {
        key(out, "content", false);
        out.push(b'{');
        let mut first = true;
        if let Some(pdq) = c.pdq {
            key(out, "pdq", first);
            write_str(out, pdq);
            first = false;
        }
        if let Some(q) = c.pdq_quality {
            key(out, "pdq_quality", first);
            write_int(out, q);
            first = false;
        }
        if let Some(md5) = c.md5 {
            key(out, "md5", first);
            write_str(out, md5);
        }
        out.push(b'}');
    }
    out.push(b'}');
}

/// Which wire version an event to route and an unbanked upload are written at (the resolve
/// topic's records, `streams.wire.WireVersion`): a worker pinned to the earlier one writes
/// what workers of that version read, through a rolling update from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Held {
    /// version 2's `["s2", held event]` and `["u2", held event]` (see [`held_or_dict`])
    #[default]
    Compact,
    /// version 1's `["s", event]` and `["u", event]`, the canonical dicts
    Dict,
}

/// An item as `streams.wire.encode` writes it.
pub fn write_item(out: &mut Vec<u8>, item: &Item<'_>) {
    write_item_at(out, item, Held::Compact);
}

/// An item as [`write_item`] writes it, an event to route or an unbanked upload in `held`'s
/// form.
pub fn write_item_at(out: &mut Vec<u8>, item: &Item<'_>, held: Held) {
    match item {
        Item::Raw(raw) => return out.extend_from_slice(raw),
        Item::Routed {
            event,
            cluster_id,
            match_json,
        } => {
            out.extend_from_slice(b"[\"e\",");
            write_event(out, event);
            out.push(b',');
            write_str(out, cluster_id);
            out.push(b',');
            out.extend_from_slice(match_json.unwrap_or(b"null"));
        }
        Item::Logged { event, cluster_id } => {
            let start = out.len();
            out.extend_from_slice(b"[\"c\",");
            write_str(out, cluster_id);
            out.push(b',');
            if !write_held(out, event) {
                out.truncate(start);
                return write_item(
                    out,
                    &Item::Routed {
                        event: *event,
                        cluster_id,
                        match_json: None,
                    },
                );
            }
        }
        // every event a backlog's second worker routes crosses the resolve topic, and an
        // unbanked upload often twice (to its post's partition, then to the index's owner):
        // the held form is about 55% of the canonical dict's bytes (no names, a type letter,
        // hashes in base64), and a byte less costs less on both sides and in the broker
        Item::ToRoute(event) => return held_or_dict(out, "s", event, held),
        Item::Unbanked(event) => return held_or_dict(out, "u", event, held),
        Item::Registration {
            post_id,
            cluster_id,
        } => {
            out.extend_from_slice(b"[\"r\",");
            write_str(out, post_id);
            out.push(b',');
            write_str(out, cluster_id);
        }
        Item::Forget(post_id) => {
            out.extend_from_slice(b"[\"f\",");
            write_str(out, post_id);
        }
        Item::Touch { cluster_id, ts_ms } => {
            out.extend_from_slice(b"[\"t\",");
            write_str(out, cluster_id);
            out.push(b',');
            write_int(out, *ts_ms);
        }
    }
    out.push(b']');
}

/// `[tag + "2", held event]` (a record of the resolve topic's wire version 2), or, for an
/// event [`write_held`] does not write or with a text to escape, version 1's `[tag, event]`
/// (the compact form's reader takes only plain texts: what the core does not read costs a
/// decode in Python); version 1's alone if `held` says so.
fn held_or_dict(out: &mut Vec<u8>, tag: &str, event: &EventView<'_>, held: Held) {
    let start = out.len();
    out.extend_from_slice(b"[\"");
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(b"2\",");
    if held == Held::Compact && write_held(out, event) && !out[start..].contains(&b'\\') {
        out.push(b']');
    } else {
        out.truncate(start);
        write_dict_record(out, tag, |out| write_event(out, event));
    }
}

/// Version 1's record of an event to route (`tag` `"s"`) or of an unbanked upload (`"u"`):
/// `[tag, event]`, the event's JSON written by `event` into `out` (the canonical dict by
/// [`write_event`] here; in the bindings' writer pinned to version 1, the bytes of the Python
/// fallback's JSON for an event the core does not view). The one place this form is written.
pub fn write_dict_record(out: &mut Vec<u8>, tag: &str, event: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(b"[\"");
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(b"\",");
    event(out);
    out.push(b']');
}

/// A held event as the resolve log writes it (`streams.wire.held_form`): `[event_id, type
/// letter, ts, post_id, user_id, parent_post_id, followers, [pdq, pdq_quality, md5]]`, the
/// trailing empty fields left out, an MD5 and a PDQ as the base64 of their bytes (22 and 43
/// characters for 32 and 64 of hex: the index's owner holds and logs every unbanked
/// upload). `false` (nothing written) for a type no event is held as.
pub fn write_held(out: &mut Vec<u8>, ev: &EventView<'_>) -> bool {
    let letter: &[u8] = match ev.kind {
        "upload" => b",\"u\",",
        "share" => b",\"s\",",
        "takedown" => b",\"t\",",
        _ => return false,
    };
    out.push(b'[');
    write_str(out, ev.event_id);
    out.extend_from_slice(letter);
    write_int(out, ev.ts_ms);
    out.push(b',');
    write_str(out, ev.post_id);
    out.push(b',');
    write_str(out, ev.user_id);
    let rest = [
        ev.parent_post_id.is_some(),
        ev.followers.is_some(),
        ev.content.is_some(),
    ];
    let last = rest.iter().rposition(|&x| x).map_or(0, |i| i + 1);
    for i in 0..last {
        out.push(b',');
        match i {
            0 => match ev.parent_post_id {
                Some(p) => write_str(out, p),
                None => out.extend_from_slice(b"null"),
            },
            1 => match ev.followers {
                Some(n) => write_int(out, n),
                None => out.extend_from_slice(b"null"),
            },
            _ => {
                let c = ev.content.expect("content, the last field written");
                let fields = [c.pdq.is_some(), c.pdq_quality.is_some(), c.md5.is_some()];
                let n = fields.iter().rposition(|&x| x).map_or(0, |i| i + 1);
                out.push(b'[');
                for j in 0..n {
                    if j > 0 {
                        out.push(b',');
                    }
                    match (j, c.pdq, c.pdq_quality, c.md5) {
                        (0, Some(t), _, _) | (2, _, _, Some(t)) => {
                            crate::wire_index::write_hash(out, t);
                        }
                        (1, _, Some(q), _) => write_int(out, q),
                        _ => out.extend_from_slice(b"null"),
                    }
                }
                out.push(b']');
            }
        }
    }
    out.push(b']');
    true
}

/// A JSON array of items, written item by item and cut into arrays of at most `limit`
/// bytes each (an item larger than that alone), in order.
#[derive(Debug)]
pub struct Parts {
    limit: usize,
    held: Held,
    done: Vec<Vec<u8>>,
    current: Vec<u8>,
    item: Vec<u8>,
}

impl Parts {
    pub fn new(limit: usize) -> Self {
        Self::at(limit, Held::Compact)
    }

    /// Parts whose events to route and unbanked uploads are written in `held`'s form.
    pub fn at(limit: usize, held: Held) -> Self {
        Self {
            limit,
            held,
            done: Vec::new(),
            current: vec![b'['],
            item: Vec::new(),
        }
    }

    /// Add an item (at the end of the current part, or first of a new one): written
    /// straight into the current part, and moved to a new one in the rare case it passes
    /// the limit there (it was written aside and copied in, each event a log keeps).
    pub fn push(&mut self, item: &Item<'_>) {
        let mark = self.current.len();
        if mark == 1 {
            return write_item_at(&mut self.current, item, self.held);
        }
        self.current.push(b',');
        write_item_at(&mut self.current, item, self.held);
        // the part with this item and its closing bracket, as `push_json` judges it
        if self.current.len() + 1 > self.limit {
            let mut moved = std::mem::take(&mut self.item);
            moved.clear();
            moved.extend_from_slice(&self.current[mark + 1..]);
            self.current.truncate(mark);
            self.close_part();
            self.current.extend_from_slice(&moved);
            self.item = moved;
        }
    }

    /// Add an item written already (its JSON text, as a record held it).
    pub fn push_json(&mut self, json: &[u8]) {
        let empty = self.current.len() == 1;
        // the part as it would be with this item and its closing bracket
        if !empty && self.current.len() + 1 + json.len() + 1 > self.limit {
            self.close_part();
        } else if !empty {
            self.current.push(b',');
        }
        self.current.extend_from_slice(json);
    }

    /// Room for about `bytes` more in the current part (at most the limit): a caller that
    /// knows about how much it will add saves the part's doublings, each past mimalloc's
    /// bound a copy by glibc's realloc.
    pub fn reserve(&mut self, bytes: usize) {
        self.current.reserve(bytes.min(self.limit));
    }

    /// The current part closed (its bracket) and kept, a new one begun: where an item
    /// would pass the limit ([`Parts::push`], [`Parts::push_json`]).
    fn close_part(&mut self) {
        self.current.push(b']');
        self.done
            .push(std::mem::replace(&mut self.current, vec![b'[']));
    }

    /// The form its events to route and unbanked uploads are written in.
    pub fn held(&self) -> Held {
        self.held
    }

    /// Whether no item was pushed.
    pub fn is_empty(&self) -> bool {
        self.done.is_empty() && self.current.len() == 1
    }

    /// The parts, in order (one, `[]`, if nothing was pushed).
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.current.push(b']');
        self.done.push(self.current);
        self.done
    }
}

/// A whole batch of items as parts of at most `limit` bytes (see [`Parts`]).
pub fn write_parts(items: &[Item<'_>], limit: usize) -> Vec<Vec<u8>> {
    let mut parts = Parts::new(limit);
    for item in items {
        parts.push(item);
    }
    parts.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_texts_as_the_standard_library_and_serde_write_them() {
        for n in [
            0,
            1,
            -1,
            9,
            10,
            -10,
            1_767_225_600_000,
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
        ] {
            let mut out = Vec::new();
            write_int(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
        for t in [
            "",
            "p1",
            "a\"b",
            "back\\slash",
            "tab\there",
            "\u{1}\u{1f}x",
            "é\n",
        ] {
            let mut out = Vec::new();
            write_str(&mut out, t);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(t).unwrap()
            );
        }
    }

    fn ev<'a>(id: &'a str) -> EventView<'a> {
        EventView {
            event_id: id,
            kind: "share",
            ts_ms: 1_767_225_600_000,
            post_id: "p2",
            user_id: "u1",
            parent_post_id: Some("p1"),
            followers: None,
            content: None,
        }
    }

    fn text(parts: &[Vec<u8>]) -> Vec<String> {
        parts
            .iter()
            .map(|p| String::from_utf8(p.clone()).unwrap())
            .collect()
    }

    #[test]
    fn strings_are_escaped_as_orjson_escapes_them() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\n\t\r\u{8}\u{c}\u{1}\u{1f}\u{7f}é/");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\\"b\\\\c\\n\\t\\r\\b\\f\\u0001\\u001f\u{7f}é/\""
        );
    }

    #[test]
    fn items_are_written_in_their_wire_forms() {
        let upload = EventView {
            event_id: "e1",
            kind: "upload",
            ts_ms: 5,
            post_id: "p1",
            user_id: "u1",
            parent_post_id: None,
            followers: Some(-3),
            content: Some(ContentView {
                pdq: None,
                pdq_quality: Some(90),
                md5: Some("ab"),
            }),
        };
        let items = [
            Item::ToRoute(ev("e2")),
            Item::Registration {
                post_id: "p1",
                cluster_id: "b-1",
            },
            Item::Forget("p0"),
            Item::Routed {
                event: upload,
                cluster_id: "b-1",
                match_json: None,
            },
            Item::Touch {
                cluster_id: "u-1",
                ts_ms: 7,
            },
            Item::Unbanked(upload),
            Item::Raw(b"[\"x\",1]"),
        ];
        let got = text(&write_parts(&items, usize::MAX));
        let upload_json = "{\"event_id\":\"e1\",\"type\":\"upload\",\"ts\":5,\"post_id\":\"p1\",\
             \"user_id\":\"u1\",\"followers\":-3,\"content\":{\"pdq_quality\":90,\"md5\":\"ab\"}}";
        let want = format!(
            "[[\"s2\",[\"e2\",\"s\",1767225600000,\"p2\",\"u1\",\"p1\"]],\
             [\"r\",\"p1\",\"b-1\"],[\"f\",\"p0\"],[\"e\",{upload_json},\"b-1\",null],\
             [\"t\",\"u-1\",7],[\"u2\",[\"e1\",\"u\",5,\"p1\",\"u1\",null,-3,\
             [null,90,\"ab\"]]],[\"x\",1]]"
        );
        assert_eq!(got, vec![want]);
    }

    #[test]
    fn pinned_to_version_1_an_event_to_route_and_an_upload_go_as_their_dicts() {
        let upload = EventView {
            content: Some(ContentView {
                pdq: None,
                pdq_quality: Some(90),
                md5: Some("ab"),
            }),
            ..ev("e1")
        };
        let items = [
            Item::ToRoute(ev("e2")),
            Item::Unbanked(upload),
            Item::Forget("p0"),
        ];
        let mut pinned = Parts::at(usize::MAX, Held::Dict);
        for item in &items {
            pinned.push(item);
        }
        let mut want = Vec::new();
        want.extend_from_slice(b"[[\"s\",");
        write_event(&mut want, &ev("e2"));
        want.extend_from_slice(b"],[\"u\",");
        write_event(&mut want, &upload);
        want.extend_from_slice(b"],[\"f\",\"p0\"]]");
        assert_eq!(pinned.finish(), vec![want]);
        // the default writes version 2's
        assert!(text(&write_parts(&items, usize::MAX))[0].starts_with("[[\"s2\",[\"e2\""));
    }

    #[test]
    fn version_1s_record_of_given_bytes_is_the_pinned_writers_of_a_viewed_event() {
        let mut given = Vec::new();
        write_dict_record(&mut given, "u", |out| {
            out.extend_from_slice(br#"{"event_id":"e1"}"#)
        });
        assert_eq!(
            text(&[given]),
            vec![r#"["u",{"event_id":"e1"}]"#.to_owned()]
        );
        for (tag, item) in [
            ("s", Item::ToRoute(ev("e2"))),
            ("u", Item::Unbanked(ev("e3"))),
        ] {
            let (Item::ToRoute(event) | Item::Unbanked(event)) = item else {
                unreachable!()
            };
            let mut json = Vec::new();
            write_event(&mut json, &event);
            let mut by_bytes = Vec::new();
            write_dict_record(&mut by_bytes, tag, |out| out.extend_from_slice(&json));
            let mut pinned = Vec::new();
            write_item_at(&mut pinned, &item, Held::Dict);
            assert_eq!(by_bytes, pinned);
        }
    }

    #[test]
    fn an_event_to_route_the_held_form_does_not_write_goes_in_the_earlier_form() {
        let like = EventView {
            kind: "like",
            parent_post_id: None,
            ..ev("e3")
        };
        let quoted = EventView {
            parent_post_id: Some("p\"1"),
            ..ev("e4")
        };
        assert!(text(&write_parts(&[Item::ToRoute(quoted)], usize::MAX))[0]
            .starts_with("[[\"s\",{\"event_id\":\"e4\""));
        assert_eq!(
            text(&write_parts(&[Item::ToRoute(like)], usize::MAX)),
            vec![
                "[[\"s\",{\"event_id\":\"e3\",\"type\":\"like\",\"ts\":1767225600000,\
                  \"post_id\":\"p2\",\"user_id\":\"u1\"}]]"
                    .to_owned()
            ]
        );
    }

    #[test]
    fn held_events_are_written_compact_with_their_hashes_in_base64() {
        let held = |ev: &EventView<'_>| {
            let mut out = Vec::new();
            write_held(&mut out, ev).then(|| String::from_utf8(out).unwrap())
        };
        assert_eq!(
            held(&ev("e2")).unwrap(),
            "[\"e2\",\"s\",1767225600000,\"p2\",\"u1\",\"p1\"]"
        );
        let md5 = "0".repeat(30) + "ff";
        let upload = EventView {
            kind: "upload",
            parent_post_id: None,
            content: Some(ContentView {
                pdq: None,
                pdq_quality: Some(90),
                md5: Some(&md5),
            }),
            ..ev("e1")
        };
        assert_eq!(
            held(&upload).unwrap(),
            "[\"e1\",\"u\",1767225600000,\"p2\",\"u1\",null,null,\
             [null,90,\"AAAAAAAAAAAAAAAAAAAA/w\"]]"
        );
        let upper = "0".repeat(30) + "FF";
        let odd = EventView {
            followers: Some(3),
            content: Some(ContentView {
                pdq: None,
                pdq_quality: None,
                md5: Some(&upper),
            }),
            ..upload
        };
        let want =
            format!("[\"e1\",\"u\",1767225600000,\"p2\",\"u1\",null,3,[null,null,\"{upper}\"]]");
        assert_eq!(held(&odd).unwrap(), want);
        assert_eq!(
            held(&EventView {
                kind: "like",
                ..upload
            }),
            None
        );
    }

    #[test]
    fn the_escape_test_by_words_is_the_byte_by_bytes() {
        let slow = |b: &[u8]| b.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        for len in 0..=40 {
            for at in 0..len.max(1) {
                for b in 0..=255_u8 {
                    let mut t = vec![b'a'; len];
                    if len > 0 {
                        t[at] = b;
                    }
                    assert_eq!(to_escape(&t), slow(&t), "{t:?}");
                    // and beside bytes above 0x80 (a borrow must not reach it)
                    t.iter_mut().filter(|x| **x == b'a').for_each(|x| *x = 0xc3);
                    assert_eq!(to_escape(&t), slow(&t), "{t:?}");
                }
            }
        }
    }

    #[test]
    fn integers_two_digits_a_step_as_the_standard_library_writes_them() {
        let mut rng = crate::testing::Rng(11);
        let mut ns: Vec<i64> = (0..2_000).map(|_| rng.next() as i64).collect();
        ns.extend((0..2_000).map(|_| (rng.next() % 10_000_000_000_000) as i64));
        for p in 0..19 {
            let t = 10_i64.pow(p);
            ns.extend([t - 1, t, t + 1, -t, 1 - t, -t - 1]);
        }
        for n in ns {
            let mut out = b"x".to_vec();
            write_int(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn items_written_into_the_part_are_cut_as_items_written_aside() {
        let ids: Vec<String> = (0..300)
            .map(|i| format!("p{}", "x".repeat(i % 37)))
            .collect();
        let items: Vec<Item<'_>> = ids.iter().map(|p| Item::Forget(p)).collect();
        for limit in [1, 10, 40, 41, 60, 100, 333, 5_000] {
            let mut aside = Parts::new(limit);
            let mut one = Vec::new();
            for item in &items {
                one.clear();
                write_item(&mut one, item);
                aside.push_json(&one);
            }
            assert_eq!(write_parts(&items, limit), aside.finish(), "{limit}");
        }
    }

    #[test]
    fn parts_stay_under_the_limit_and_keep_the_order() {
        let ids: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
        let items: Vec<Item<'_>> = ids.iter().map(|p| Item::Forget(p)).collect();
        let parts = write_parts(&items, 60);
        assert!(parts.len() > 5);
        assert!(parts.iter().all(|p| p.len() <= 60));
        let joined: Vec<String> = text(&parts)
            .iter()
            .flat_map(|p| {
                p.trim_start_matches('[')
                    .trim_end_matches(']')
                    .split("],[")
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        let want: Vec<String> = ids.iter().map(|p| format!("\"f\",\"{p}\"")).collect();
        assert_eq!(joined, want);
    }

    #[test]
    fn an_item_over_the_limit_goes_alone_and_nothing_gives_one_empty_part() {
        let big = "x".repeat(100);
        let items = [Item::Forget("a"), Item::Forget(&big), Item::Forget("b")];
        let parts = text(&write_parts(&items, 40));
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "[[\"f\",\"a\"]]");
        assert!(parts[1].contains(&big));
        assert_eq!(text(&write_parts(&[], 40)), vec!["[]".to_owned()]);
    }
}
