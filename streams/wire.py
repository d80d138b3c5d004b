"""The records stages send each other and write to their logs: typed, one codec each.

Between the stages, every item of an envelope is a frozen record, and so is
every entry of a state log; nothing past :func:`decode_item` and
:func:`decode_delta` is a positional list or a raw dict:

=================  ===  ==============================  ===================================
record             tag  from → to                       wire form
=================  ===  ==============================  ===================================
:class:`ToRoute`   s2   ingest → resolve                ``["s2", held_form]``
:class:`Registration`
                   r    resolve → its peers             ``["r", post_id, cluster_id]``
:class:`Forget`    f    clusters → resolve              ``["f", post_id]``
:class:`Unbanked`  u2   resolve → the index's owner     ``["u2", held_form]``
:class:`Touch`     t    resolve → the index's owner     ``["t", cluster_id, ts]``
``Routed``         e    resolve → clusters, cluster log ``["e", event, cluster_id, match]``
                   c    (without a match: compact)      ``["c", cluster_id, held_form]``
:class:`ResolveDelta`
                   -    the resolve log                 ``{"p": {post: cluster}, "f": [post],
                                                        "h+": [held_form], "h-": [event_id],
                                                        "h<": ts,
                                                        "U": [[t0, [cluster, dt, [signal]]]],
                                                        "u-": [cluster], "g": {partition: ts}}``
=================  ===  ==============================  ===================================

(``Routed`` is the router's record, :class:`streams.router.Routed`.) A tag
names one record everywhere. Events travel as their canonical dicts
(:meth:`ShareEvent.to_dict`) and are read back by the event parser itself
(:func:`streams.events.event_from_dict`): one decoder for a share event,
whether it came from a producer or from another stage. Decoding never
raises: a malformed item is a :class:`~streams.events.Rejection` (reason
``bad_record``) that the stage counts and dead-letters, and the items around
it go on.

Records written by earlier versions. The wire forms of the state logs are
the ones earlier versions wrote (the cluster log a list of ``["e", event,
cluster_id, match]``, the resolve log the delta object above), so a worker
of this version restores from a changelog an older one wrote; no version
check is needed. Only ingest's record has a new tag: earlier versions sent
``["e", event, partition, offset]`` to the resolve topic (that topic is not
a changelog, but a rolling update can leave such records unread); an ``e``
whose third field is not a cluster id (an integer or null) is read as the
:class:`ToRoute` it was. The resolve log's held events are written in a
compact form (:func:`held_form`); the canonical dicts older workers wrote
are read as before. The index owner's clusters are written compact too
(``"U"``, ``rust/core/src/wire_index.rs``: times as differences, MD5 and PDQ
as base64); the earlier ``"u": {cluster: [ts, [signal hex]]}`` is read as
before. An older worker refuses an entry holding a compact held event (a
counted ``bad_record``, its held events lost) and ignores a ``"U"`` (the
clusters it holds are lost to its index): a rollback is not a rolling
downgrade. The ``clusters`` topic carries a routed event without a match in
the cluster log's compact form (``"c"``, :func:`encode_items`), as the log
keeps it: every worker whose cluster log is written so reads it on the topic
with the same reader; an older one dead-letters it (``bad_record``).

The resolve topic's wire, version 2. Ingest sends an event to route as
``["s2", held_form]`` and a resolve partition an unbanked upload to the
index's owner as ``["u2", held_form]`` (:func:`to_route_form`: the held form,
hashes in base64, about 55% of the canonical dict's bytes; every event a
second worker routes crosses that topic), not version 1's ``["s", event]``
and ``["u", event]``, which this version still reads (and writes for an
event the held form has no letter for, or with a text JSON escapes: the core
reads the compact form's plain texts). A worker older than this refuses an
``s2`` or a ``u2`` as an unknown record tag: a counted ``bad_record`` in its
dead letter, never dropped silently; a later version's tag (``s3``...) is
refused here the same way, saying so. So a rolling
update from an older version is made in two steps, below.

Rolling updates: a worker writes the wire version its settings say
(:class:`WireVersion`, ``VIRALWATCH_WIRE_VERSION``), and reads every version
up to its own. Pinned to 1, a worker of this version writes only what a worker
of version 1 reads (``["s", event]``, ``["u", event]``, and ``["e", event,
cluster_id, null]`` on the ``clusters`` topic): an update deploys the new
release pinned (old and new workers read each other's records while both
run), then unpins it (every worker running reads version 2 by then).

>>> from streams.events import ShareEvent
>>> ev = ShareEvent("e1", "share", 1767225600000, "p2", "u1", parent_post_id="p1")
>>> encode([ToRoute(ev), Registration("p1", "b-1"), Forget("p0")])
b'[["s2",["e1","s",1767225600000,"p2","u1","p1"]],["r","p1","b-1"],["f","p0"]]'
>>> decode_item(["s", ev.to_dict()]) == ToRoute(ev)   # version 1's
True
>>> decode_item(["s3", "e1"]).detail
"record 's3' is a later wire version than this worker reads (s2): upgrade it"
>>> decode_item(["e", ev.to_dict(), 3, 17]) == ToRoute(ev)   # an earlier version's
True
>>> decode_item(["r", "p1"]).detail
'r: expected 2 fields, not 1'
"""

from __future__ import annotations

import binascii
import enum
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from streams import _core
from streams._core import EvBatch, RegBatch
from streams.alerts import MatchInfo
from streams.events import Content, Rejection, ShareEvent, event_from_dict, parse_ts
from streams.router import Routed
from streams.vpdq import canonical_vpdq

#: Why a record between stages was refused (an item, a log entry).
BAD_RECORD: Final = "bad_record"


class WireVersion(enum.IntEnum):
    """The wire version of what a worker writes on the internal topics (``resolve`` and
    ``clusters``): the one owner of which form each record is written in there. A worker
    reads every version up to the latest whatever it writes, so a rolling update from a
    release that wrote version 1 deploys the new release pinned to 1
    (``VIRALWATCH_WIRE_VERSION=1``: what the old workers still running read), then unpins
    it once no old worker runs (as Kafka's ``inter.broker.protocol.version``). The state
    logs are not topics between workers and are not pinned.

    >>> WireVersion.parse("1"), WireVersion.parse(" 2 ").writes
    (<WireVersion.V1: 1>, 'resolve s2/u2, clusters c')
    >>> WireVersion.parse("3")
    Traceback (most recent call last):
    ValueError: not a wire version this worker writes (1, 2): '3'
    """

    #: ``["s", event]`` and ``["u", event]`` on ``resolve``; ``["e", event, cluster_id,
    #: match]`` on ``clusters``: what every earlier release reads
    V1 = 1
    #: ``["s2", held form]`` and ``["u2", held form]`` on ``resolve``, ``["c", cluster_id,
    #: held form]`` on ``clusters`` (a routed event without a match; one with, as 1's)
    V2 = 2

    @classmethod
    def parse(cls, text: str) -> WireVersion:
        """A version from its number (``ValueError`` saying which this worker writes)."""
        try:
            return cls(int(text.strip()))
        except ValueError:
            known = ", ".join(str(v.value) for v in cls)
            raise ValueError(f"not a wire version this worker writes ({known}): {text!r}") from None

    @property
    def writes(self) -> str:
        """What a worker writing this version sends, for its start log line."""
        if self is WireVersion.V1:
            return "resolve s/u, clusters e"
        return "resolve s2/u2, clusters c"


#: The version a worker writes unless pinned to an earlier one.
LATEST_WIRE: Final = WireVersion.V2


@dataclass(frozen=True, slots=True)
class ToRoute:
    """An input event on its way to the resolve partition of the post it needs."""

    event: ShareEvent


@dataclass(frozen=True, slots=True)
class Registration:
    """``post_id`` was routed to ``cluster_id`` elsewhere: for the partition its reshares go to."""

    post_id: str
    cluster_id: str


@dataclass(frozen=True, slots=True)
class Forget:
    """``post_id``'s cluster was evicted: its resolve partition forgets the post."""

    post_id: str


@dataclass(frozen=True, slots=True)
class Unbanked:
    """An upload no bank knows, for the resolve partition that holds the index of unbanked
    content (:data:`streams.stages.INDEX_PARTITION`): it says which cluster the upload joins."""

    event: ShareEvent


@dataclass(frozen=True, slots=True)
class Touch:
    """The latest event a resolve partition routed to an unbanked cluster, for the index's
    owner: a cluster leaves the index when idle, as the detector evicts it.

    ``released``: an event that had been held touched it (a reshare whose parent came);
    not on the wire: the worker copies only those touches to the owner's topic
    (:meth:`streams.runtime.topology.Topology._copy_handed`)."""

    cluster_id: str
    ts_ms: int
    released: bool = field(default=False, compare=False)


#: An item of an envelope.
#: ``EvBatch``: compiled events, to route, unbanked or routed, as one item (ingest's, and a
#: resolve partition's for the index's owner or a clusters partition); ``RegBatch``: a
#: resolve partition's registrations for a peer. Each written as the records it holds
#: (:func:`records`).
Item = ToRoute | Registration | Forget | Routed | Unbanked | Touch | EvBatch | RegBatch


def records(items: Iterable[Item]) -> list[Item]:
    """``items`` with each ``EvBatch`` opened into the records it stands for (``ToRoute``,
    ``Unbanked``, or ``Routed`` with no match), and each ``RegBatch`` into its
    ``Registration`` records, in order: for what reads items one by one as records (a test,
    an item with no place where it came, a record cut to Kafka's size).

    >>> records([Forget("p1")])
    [Forget(post_id='p1')]
    """
    out: list[Item] = []
    for item in items:
        if type(item) is EvBatch:
            events, clusters = item.parts()
            if clusters is None:
                out += [Unbanked(ev) if item.for_index else ToRoute(ev) for ev in events]
            else:
                out += [Routed(ev, c) for ev, c in zip(events, clusters, strict=True)]
        elif type(item) is RegBatch:
            out += [Registration(post, cluster) for post, cluster in item.pairs()]
        else:
            out.append(item)
    return out


#: An unbanked cluster in the index owner's log: its latest event time, the signals it took.
IndexEntry = tuple[int, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class PostsLog:
    """The posts a resolve partition mapped in a batch, as its log's ``"p"`` holds them: the
    JSON object ``{post: cluster, ...}`` written by the core (``PostRoutes.take_new_log``),
    with no Python string made per post, and how many it names.

    >>> log = PostsLog(b'{"p1":"b-1"}', 1)
    >>> len(log), dict(log.items())
    (1, {'p1': 'b-1'})
    """

    text: bytes
    count: int

    def __len__(self) -> int:
        return self.count

    def items(self) -> Iterable[tuple[str, str]]:
        """The posts and their clusters, in order (read back: a large delta cut in parts)."""
        posts: dict[str, str] = orjson.loads(self.text)
        return posts.items()


def posts_log(taken: tuple[bytes, int] | dict[str, str]) -> PostsLog | dict[str, str]:
    """What ``PostRoutes.take_new_log`` gave, as a delta's ``posts``: the core's text, or
    (a post id that is not UTF-8, which orjson refuses as it did) the dict."""
    return taken if isinstance(taken, dict) else PostsLog(*taken)


@dataclass(frozen=True, slots=True)
class ResolveDelta:
    """What one batch changed in a resolve partition (or, folded, all it holds).

    Each post and held event is named once, as the batch left it: a post in
    ``posts`` (mapped last, replacing the cluster it had, if any) or in
    ``forgot`` (forgotten last), an event in ``held`` or in ``released`` (an
    unbanked upload the index's owner clustered: by ``clustered_to``, a bound
    no upload it still holds is at or before); so folding its parts in any
    order, or cut in parts, reads back the partition (a post forgotten then
    mapped again in one batch, an evicted cluster's upload redelivered, or an
    event released then held again). Folded in this order: posts registered,
    posts forgotten, events held, events released, uploads clustered; then
    (the index's owner only) unbanked clusters touched or grown, unbanked
    clusters evicted, and the progress heard from the peers.
    Entries an older worker wrote may name a post in both ``posts`` and
    ``forgot`` (or an event in both ``held`` and ``released``): they are read
    as before, in that order (the order that writer meant, wrong for the two
    cases above, which it could not tell apart).
    """

    #: (a resolve partition's batch: the core's text of them, ``PostsLog``)
    posts: Mapping[str, str] | PostsLog = field(default_factory=dict)
    forgot: tuple[str, ...] = ()
    #: events held (a resolve partition's loop gives them compiled: an ``EvBatch``)
    held: tuple[ShareEvent, ...] | EvBatch = ()
    released: tuple[str, ...] = ()
    index: Mapping[str, IndexEntry] = field(default_factory=dict)
    evicted: tuple[str, ...] = ()
    heard: Mapping[int, int] = field(default_factory=dict)
    #: the index's clusters as the core wrote them for the log (the parts of ``"U"``, see
    #: :func:`_compact_index`), with the entries they hold; read back, they are ``index``
    index_log: tuple[bytes, ...] = ()
    index_items: int = 0
    #: the index's owner: every unbanked upload held at or before this time was clustered
    #: (released), folded after ``released``; one bound a batch where each upload's id was
    clustered_to: int | None = None

    def __bool__(self) -> bool:
        return bool(
            self.posts
            or self.forgot
            or self.held
            or self.released
            or self.index
            or self.index_log
            or self.clustered_to is not None
            or self.evicted
            or self.heard
        )

    @property
    def items(self) -> int:
        """The entries it records (what a state log's ledger counts)."""
        return (
            len(self.posts)
            + len(self.forgot)
            + len(self.held)
            + len(self.released)
            + (sum(1 + len(signals) for _, signals in self.index.values()) if self.index else 0)
            + self.index_items
            + len(self.evicted)
        )

    def to_wire(self) -> dict[str, Any]:
        """The log entry's JSON form; empty parts are left out.

        >>> ResolveDelta(posts={"p1": "b-1"}, released=("e9",)).to_wire()
        {'p': {'p1': 'b-1'}, 'h-': ['e9']}
        """
        out: dict[str, Any] = {}
        if self.posts:
            posts = self.posts
            out["p"] = orjson.Fragment(posts.text) if type(posts) is PostsLog else posts
        if self.forgot:
            out["f"] = list(self.forgot)
        if self.held:
            out["h+"] = orjson.Fragment(held_parts(self.held, sys.maxsize)[0])
        if self.released:
            out["h-"] = list(self.released)
        if self.clustered_to is not None:
            out["h<"] = self.clustered_to
        if self.index:
            out["u"] = self.index
        if self.index_log:
            out["U"] = orjson.Fragment(b"[" + b",".join(self.index_log) + b"]")
        if self.evicted:
            out["u-"] = list(self.evicted)
        if self.heard:
            out["g"] = {str(p): t for p, t in self.heard.items()}
        return out


#: An event type's letter in :func:`held_form`.
_TYPE_LETTER: Final = {"upload": "u", "share": "s", "takedown": "t"}
_LETTER_TYPE: Final = {v: k for k, v in _TYPE_LETTER.items()}


def held_parts(events: Sequence[ShareEvent] | EvBatch, limit: int) -> list[bytes]:
    """Held events as the resolve log's ``h+`` writes them: JSON arrays of at most ``limit``
    bytes each (an event larger than that alone), each event :func:`held_form`'s with its
    MD5 and PDQ as the base64 of their bytes, written by the core
    (``viralwatch_core::wire::write_held``); an event the core does not write (a video's
    frames) as :func:`held_form` gives it, hashes in hex. The index's owner holds every
    unbanked upload until every input has passed it and logs each one: base64 saves 31 B
    an upload (180 -> 149 B for the pipeline benchmark's), written in Python it cost about
    1 us an event.

    >>> from streams.events import Content
    >>> held_parts([ShareEvent("e1", "upload", 1767225600000, "p1", "u1",
    ...                        content=Content(md5="0" * 30 + "ff", pdq_quality=90))], 1_000)
    [b'[["e1","u",1767225600000,"p1","u1",null,null,[null,90,"AAAAAAAAAAAAAAAAAAAA/w"]]]']
    """
    return list(_WRITER.held(events, limit, _held_json))


def _held_json(ev: ShareEvent) -> bytes:
    return encode(held_form(ev))


def held_form(ev: ShareEvent) -> list[Any]:
    """A held event as the resolve log writes it (``h+``): its fields in order, no names,
    the type as a letter, the trailing empty fields left out: ``[event_id, type, ts,
    post_id, user_id, parent_post_id, followers, [pdq, pdq_quality, md5, vpdq]]``, about
    70% of the event's canonical JSON (:meth:`ShareEvent.to_dict`, which older workers
    wrote and which is read too). The log holds it so (:func:`held_parts`), but for its
    MD5 and PDQ, which the core writes as base64.

    >>> from streams.events import Content
    >>> held_form(ShareEvent("e1", "upload", 1767225600000, "p1", "u1",
    ...                      content=Content(md5="0f" * 16, pdq_quality=90)))[-1]
    [None, 90, '0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f']
    >>> held_form(ShareEvent("e2", "share", 1767225600000, "p2", "u1", parent_post_id="p1"))
    ['e2', 's', 1767225600000, 'p2', 'u1', 'p1']
    """
    out: list[Any] = [
        ev.event_id,
        _TYPE_LETTER[ev.type],
        ev.ts_ms,
        ev.post_id,
        ev.user_id,
        ev.parent_post_id,
        ev.followers,
    ]
    c = ev.content
    if c is not None:
        vpdq = None if c.vpdq is None else [str(f) for f in c.vpdq]
        signals = [c.pdq, c.pdq_quality, c.md5, vpdq]
        while signals and signals[-1] is None:
            signals.pop()
        out.append(signals)
    while out[-1] is None:
        out.pop()
    return out


def to_route_form(ev: ShareEvent) -> list[Any]:
    """An event to route as the resolve topic carries it (version 2, ``["s2", form]``'s
    form): :func:`held_form`, an MD5's and a PDQ's lowercase hex as the base64 of their
    bytes, as the core writes a held event (``viralwatch_core::wire::write_held``); this is
    the writer of what the core leaves to Python (a video's frames), byte for byte the same.

    >>> from streams.events import Content
    >>> to_route_form(ShareEvent("e1", "upload", 1767225600000, "p1", "u1",
    ...                          content=Content(md5="0" * 30 + "ff", pdq_quality=90)))[-1]
    [None, 90, 'AAAAAAAAAAAAAAAAAAAA/w']
    """
    out = held_form(ev)
    if ev.content is not None:
        signals = out[-1]
        for i in (0, 2):
            if i < len(signals) and type(signals[i]) is str:
                signals[i] = _base64(signals[i])
    return out


def _base64(text: str) -> str:
    """An MD5's or a PDQ's lowercase hex as the unpadded base64 of its bytes; anything else
    as it is (the event parser makes any hash lowercase hex, so that reads back the same)."""
    if len(text) not in (32, 64) or not set(text) <= _HEX:
        return text
    return binascii.b2a_base64(bytes.fromhex(text), newline=False).decode().rstrip("=")


def _held(value: object) -> ShareEvent:
    """A held event of the resolve log: :func:`held_form`'s, or (an older worker's) the
    canonical dict; read by the event parser either way."""
    if not isinstance(value, list):
        return _event(value)
    if not 5 <= len(value) <= 8:
        raise _Bad("a held event has 5 to 8 fields")
    letter = value[1]
    d: dict[str, object] = {
        "event_id": value[0],
        "type": _LETTER_TYPE.get(letter, letter) if isinstance(letter, str) else letter,
        "ts": value[2],
        "post_id": value[3],
        "user_id": value[4],
    }
    rest = value[5:]
    if rest and rest[0] is not None:
        d["parent_post_id"] = rest[0]
    if len(rest) > 1 and rest[1] is not None:
        d["followers"] = rest[1]
    if len(rest) > 2:
        signals = rest[2]
        if not isinstance(signals, list) or len(signals) > 4:
            raise _Bad("a held event's content has up to 4 fields")
        names = ("pdq", "pdq_quality", "md5", "vpdq")
        content = dict(zip(names, signals, strict=False))
        for name, size in (("pdq", 43), ("md5", 22)):
            value = content.get(name)
            if type(value) is str and len(value) == size:
                content[name] = _unbase64(value) or value
        d["content"] = {k: v for k, v in content.items() if v is not None}
    return _event(d)


def _unbase64(value: str) -> str | None:
    """A PDQ (43 characters) or an MD5 (22) in base64, as hex again (``None``: not base64;
    a held event's is then read as it is, and the event parser judges it)."""
    try:
        return binascii.a2b_base64(value + "=" * (-len(value) % 4), strict_mode=True).hex()
    except binascii.Error:
        return None


class _Bad(Exception):
    """A field that is not what its record needs (becomes a ``bad_record`` rejection)."""


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise _Bad(f"{name} must be non-empty text")
    return value


def _event(value: object) -> ShareEvent:
    parsed = event_from_dict(value)
    if isinstance(parsed, Rejection):
        raise _Bad(f"event: {parsed.reason}: {parsed.detail}")
    return parsed


def _match(value: object) -> MatchInfo | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Bad("match must be an object or null")
    distance = value.get("distance")
    if isinstance(distance, bool) or not isinstance(distance, int) or distance < 0:
        raise _Bad("match.distance must be a non-negative integer")
    label, kind = value.get("label"), value.get("kind")
    if label is not None and not isinstance(label, str):
        raise _Bad("match.label must be text")
    if kind is not None and not isinstance(kind, str):
        raise _Bad("match.kind must be text")
    return MatchInfo(
        _text(value.get("bank"), "match.bank"),
        _text(value.get("signal_type"), "match.signal_type"),
        _text(value.get("signal"), "match.signal"),
        distance,
        label,
        kind,
        _percent(value.get("query_match_pct"), "match.query_match_pct"),
        _percent(value.get("compared_match_pct"), "match.compared_match_pct"),
    )


def _percent(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise _Bad(f"{name} must be a number 0..100")
    return value  # as written: an alert carries it byte for byte


def _int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"{name} must be an integer")
    return value


def _fields(item: list[Any], tag: str, n: int) -> list[Any]:
    if len(item) != n + 1:
        raise _Bad(f"{tag}: expected {n} fields, not {len(item) - 1}")
    return item


def _decode_e(item: list[Any]) -> Item:
    if len(item) == 4:
        cluster, match = item[2], item[3]
        if type(cluster) is str and cluster:  # the hot path: every event, every hop
            return Routed(_event(item[1]), cluster, None if match is None else _match(match))
        if cluster is None or isinstance(cluster, int):
            return ToRoute(_event(item[1]))  # an earlier version's ingest record
    _, event, cluster, match = _fields(item, "e", 3)
    return Routed(_event(event), _text(cluster, "cluster_id"), _match(match))


def _decode_c(item: list[Any]) -> Item:
    _, cluster, held = _fields(item, "c", 2)
    return Routed(_held(held), _text(cluster, "cluster_id"), None)


def _held_item(tag: str, ev: ShareEvent) -> list[Any]:
    """A ``ToRoute``'s (``tag`` ``s``) or an ``Unbanked``'s (``u``) wire form as the core
    writes it: version 2's, or version 1's for an event the held form has no letter for or
    with a text JSON escapes (the core's reader of the compact form takes plain texts)."""
    if ev.type in _TYPE_LETTER:
        form = to_route_form(ev)
        if b"\\" not in orjson.dumps(form):
            return [tag + "2", form]
    return [tag, ev]


def _one_event(item: list[Any], tag: str) -> ShareEvent:
    """The event of a record whose one field is an event (``s``, ``u``: its canonical dict;
    version 2's ``s2``, ``u2``: its held form, an array), read by the event parser;
    ``u``'s and ``u2``'s an upload with content (an unbanked upload, for the index).

    >>> decode_item(["u2", ["e1", "s", 1767225600000, "p2", "u1", "p1"]]).detail
    'u2: an unbanked record carries an upload'
    >>> decode_item(["s2", {"event_id": "e1"}]).detail
    's2: the event is an array of its fields'
    """
    value = _fields(item, tag, 1)[1]
    if len(tag) == 1:
        event = _event(value)
    elif isinstance(value, list):
        event = _held(value)
    else:
        raise _Bad(f"{tag}: the event is an array of its fields")
    if tag[0] == "u" and (event.type != "upload" or event.content is None):
        raise _Bad(f"{tag}: an unbanked record carries an upload")
    return event


def _decode_s(item: list[Any]) -> Item:
    return ToRoute(_one_event(item, "s"))


def _decode_s2(item: list[Any]) -> Item:
    return ToRoute(_one_event(item, "s2"))


def _decode_r(item: list[Any]) -> Item:
    _, post, cluster = _fields(item, "r", 2)
    return Registration(_text(post, "post_id"), _text(cluster, "cluster_id"))


def _decode_f(item: list[Any]) -> Item:
    return Forget(_text(_fields(item, "f", 1)[1], "post_id"))


def _decode_u(item: list[Any]) -> Item:
    return Unbanked(_one_event(item, "u"))


def _decode_u2(item: list[Any]) -> Item:
    return Unbanked(_one_event(item, "u2"))


def _decode_t(item: list[Any]) -> Item:
    _, cluster, ts = _fields(item, "t", 2)
    return Touch(_text(cluster, "cluster_id"), _int(ts, "ts"))


#: One codec per record: its tag, how it is written, how it is read.
_ENCODE: Final[dict[type, Callable[[Any], list[Any]]]] = {
    ToRoute: lambda r: _held_item("s", r.event),
    Registration: lambda r: ["r", r.post_id, r.cluster_id],
    Forget: lambda r: ["f", r.post_id],
    Routed: lambda r: ["e", r.event, r.cluster_id, r.match],
    Unbanked: lambda r: _held_item("u", r.event),
    Touch: lambda r: ["t", r.cluster_id, r.ts_ms],
}
_DECODE: Final[dict[str, Callable[[list[Any]], Item]]] = {
    "s": _decode_s,
    "s2": _decode_s2,
    "r": _decode_r,
    "f": _decode_f,
    "e": _decode_e,
    "c": _decode_c,
    "u": _decode_u,
    "u2": _decode_u2,
    "t": _decode_t,
}


def _default(obj: Any) -> Any:
    codec = _ENCODE.get(type(obj))
    if codec is not None:
        return codec(obj)
    if isinstance(obj, ShareEvent | MatchInfo):
        return obj.to_dict()
    if isinstance(obj, ResolveDelta):
        return obj.to_wire()
    if type(obj) is EvBatch or type(obj) is RegBatch:  # (a batch where no batch goes: its
        return records([obj])  # records, for a dead letter)
    raise TypeError(f"{type(obj).__name__} has no wire form")


def encode(body: Any) -> bytes:
    """JSON of what stages write (envelopes, log entries), records in their wire forms."""
    return orjson.dumps(body, default=_default, option=orjson.OPT_PASSTHROUGH_DATACLASS)


#: The compiled writer of a batch of items (``rust/core/src/wire.rs``): what it does not
#: write as orjson would (a match, a video's frames, anything unexpected), :func:`encode` does.
_WRITER: Final = _core.WireWriter(
    Routed, ToRoute, Registration, Forget, Unbanked, Touch, ShareEvent, Content, encode
)


def topic_parts(items: Sequence[Item], limit: int, wire: WireVersion) -> list[bytes]:
    """``items`` as a worker writing ``wire`` sends them on an internal topic, cut as
    :func:`encode_parts` cuts them: at version 2 a routed event without a match as the
    cluster log keeps it (``["c", ...]``, :func:`routed_log_parts`) and an event to route
    or an unbanked upload as ``s2``/``u2``; at version 1 every record as version 1 wrote
    it (``["e", ...]``, ``["s", event]``, ``["u", event]``).

    >>> ev = ShareEvent("e1", "share", 1767225600000, "p2", "u1", parent_post_id="p1")
    >>> topic_parts([ToRoute(ev), Routed(ev, "b-1", None)], 1_000, WireVersion.V2)
    [b'[["s2",["e1","s",1767225600000,"p2","u1","p1"]],["c","b-1",["e1","s",1767225600000,"p2","u1","p1"]]]']
    >>> [i[0] for i in orjson.loads(topic_parts([ToRoute(ev), Routed(ev, "b-1", None)],
    ...                                         1_000, WireVersion.V1)[0])]
    ['s', 'e']
    """
    if wire >= WireVersion.V2:
        return _WRITER.log_parts(items, limit)
    return _WRITER.parts(items, limit, held=False)


def encode_parts(items: Sequence[Item], limit: int, wire: WireVersion | None = None) -> list[bytes]:
    """``items`` as JSON arrays of at most ``limit`` bytes each, in order (an item larger
    than that alone): the bytes :func:`encode` gives each run, written in one pass;
    ``wire``: as a worker writing that version sends them on a topic (:func:`topic_parts`).

    Every routed event is written at least once (its clusters partition logs it) and
    once more per hop through Kafka; a batch too large for one Kafka record is cut as
    it is written, not encoded whole, decoded and encoded again.

    >>> items = [Registration(f"p{i}", "b-1") for i in range(100)]
    >>> parts = encode_parts(items, 300)
    >>> max(map(len, parts)) <= 300, [i for p in parts for i in orjson.loads(p)][:2]
    (True, [['r', 'p0', 'b-1'], ['r', 'p1', 'b-1']])
    >>> encode_parts(items, 10**9) == [encode(items)], encode_parts([], 300)
    (True, [b'[]'])
    """
    if wire is None:
        return _WRITER.parts(items, limit)
    return topic_parts(items, limit, wire)


def routed_log_parts(items: Sequence[Routed | EvBatch], limit: int) -> list[bytes]:
    """Routed events as a clusters partition's log keeps them, cut as :func:`encode_parts`
    cuts them: each without a match as ``["c", cluster_id, held event]``, the event in
    :func:`held_form` (hashes in base64, as the resolve log holds an event), not
    ``["e", event, cluster_id, null]``: the cluster log is what a worker writes most
    (each event it routes), and the event's names and hex took about 40% of it (224 ->
    about 135 B an event for the pipeline benchmark's traffic). Restore needs every field
    (an unbanked cluster's events become a banked one's graph when a bank takes it).
    An event with a match, or one the core does not write (a video's frames), is written
    as :func:`encode_parts` writes it. Both forms are read (:func:`decode_routed_log`),
    so a log an earlier version wrote restores as before.

    >>> from streams.events import Content
    >>> ev = ShareEvent("e1", "upload", 1767225600000, "p1", "u1",
    ...                 content=Content(md5="0" * 30 + "ff", pdq_quality=90))
    >>> (part,) = routed_log_parts([Routed(ev, "u-1", None)], 1_000)
    >>> part
    b'[["c","u-1",["e1","u",1767225600000,"p1","u1",null,null,[null,90,"AAAAAAAAAAAAAAAAAAAA/w"]]]]'
    >>> decode_routed_log(part) == ([Routed(ev, "u-1", None)], [])
    True
    """
    return _WRITER.log_parts(items, limit)


def encode_items(items: Sequence[Item], wire: WireVersion | None = None) -> bytes:
    """``items`` as one JSON array: :func:`encode`'s bytes (see :func:`encode_parts`);
    ``wire``: as a worker writing that version sends them on a topic (:func:`topic_parts`)."""
    return encode_parts(items, sys.maxsize, wire)[0]


def _rejection(detail: str, raw: object) -> Rejection:
    try:
        kept = orjson.dumps(raw)
    except TypeError:
        kept = b""
    return Rejection(BAD_RECORD, detail, kept)


def decode_item(item: object) -> Item | Rejection:
    """An envelope's item from its JSON form; a ``bad_record`` rejection if it is not one."""
    if not isinstance(item, list) or not item:
        return _rejection("an item must be a non-empty array", item)
    decode = _DECODE.get(item[0]) if isinstance(item[0], str) else None
    if decode is None:
        return _rejection(_unknown_tag(item[0]), item)
    try:
        return decode(item)
    except _Bad as exc:
        return _rejection(str(exc), item)


#: The resolve topic's records by wire version (a later one's tag is refused, saying so).
_VERSIONED: Final = {"s": 2, "u": 2}


def _unknown_tag(tag: object) -> str:
    """Why a record's tag is refused: a later version of a record this worker reads (a tag's
    letter then its version, ``s3``), or a tag it does not know at all."""
    text = str(tag)[:20]
    name, version = text[:1], text[1:]
    latest = _VERSIONED.get(name)
    if latest is not None and version.isdigit() and int(version) > latest:
        later = f"a later wire version than this worker reads ({name}{latest})"
        return f"record {text!r} is {later}: upgrade it"
    return f"unknown record tag {text!r}"


def decode_items(items: Iterable[object]) -> tuple[list[Item], list[Rejection]]:
    """Every item that decodes, and a rejection for each one that does not, in order."""
    good: list[Item] = []
    bad: list[Rejection] = []
    for raw in items:
        record = decode_item(raw)
        if isinstance(record, Rejection):
            bad.append(record)
        else:
            good.append(record)
    return good, bad


def _read_text(text: str) -> Item | Rejection:
    """An item the compiled reader leaves to Python, from its JSON text; raises
    ``orjson.JSONDecodeError`` if orjson does not read it (the whole record is then read
    by :func:`decode_items`' callers, as before)."""
    return decode_item(orjson.loads(text))


#: The compiled reader of envelopes and log entries (``rust/core/src/wire_read.rs``): the
#: records the stages write, each event by the event parser; every other item it hands to
#: :func:`decode_item` (a match, a video's frames, an earlier version's form, a bad item),
#: and a record whose frame it does not read (``None``) is read in Python whole, so what a
#: record becomes does not depend on which of the two read it.
READER: Final = _core.WireReader(
    ToRoute,
    Routed,
    Registration,
    Forget,
    Unbanked,
    Touch,
    ShareEvent,
    Content,
    Rejection,
    parse_ts,
    _read_text,
)

#: An envelope as the compiled reader gives it: items, rejected items, marks, progress, inputs.
EnvelopeParts = tuple[
    list[Item], list[Rejection], dict[int, tuple[int, bool]], dict[int, int], dict[int, int]
]


def read_envelope(raw: bytes) -> EnvelopeParts | None:
    """An envelope's parts, read by the core; ``None``: one it leaves to Python (not an
    envelope, or a frame the stages do not write), which says what is wrong with it.

    >>> items, bad, marks, progress, inputs = read_envelope(b'{"i":[["f","p1"]],"m":{"2":[5,1]}}')
    >>> items, bad, marks, progress
    ([Forget(post_id='p1')], [], {2: (5, True)}, {})
    >>> read_envelope(b"{oops") is None
    True
    """
    return READER.envelope(raw) if type(raw) is bytes else None


def decode_routed_log(raw: bytes) -> tuple[list[Routed], list[Rejection]]:
    """A cluster-log entry: the routed events a clusters partition received.

    >>> decode_routed_log(b"{oops")[1][0].reason
    'bad_record'
    """
    read = READER.items(raw) if type(raw) is bytes else None
    return _routed(*read) if read is not None else routed_log_in_python(raw)


def routed_log_in_python(raw: bytes) -> tuple[list[Routed], list[Rejection]]:
    """:func:`decode_routed_log` in Python: for an entry the compiled reader leaves to it
    (not an array, or not JSON orjson reads), read as every entry was read before."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return [], [Rejection(BAD_RECORD, f"cluster log entry: {exc}", raw[:1024])]
    if not isinstance(body, list):
        return [], [Rejection(BAD_RECORD, "a cluster log entry must be an array", raw[:1024])]
    return _routed(*decode_items(body))


def _routed(items: list[Item], bad: list[Rejection]) -> tuple[list[Routed], list[Rejection]]:
    """The routed events of a cluster-log entry; any other record is a rejection."""
    routed = [r for r in items if isinstance(r, Routed)]
    bad += [_rejection("not a routed event", r) for r in items if not isinstance(r, Routed)]
    return routed, bad


_HEX: Final = frozenset("0123456789abcdef")


def _signal_text(text: str) -> bool:
    """An MD5 or PDQ in hex, or a video's frames in their canonical text."""
    if not text.startswith("["):
        return len(text) in (32, 64) and set(text) <= _HEX
    try:
        return canonical_vpdq(text) == text
    except ValueError:
        return False


def _index(value: object) -> dict[str, IndexEntry]:
    if not isinstance(value, dict):
        raise _Bad("u must map clusters to [ts, [signal]]")
    out: dict[str, IndexEntry] = {}
    for cluster, entry in value.items():
        if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[1], list):
            raise _Bad("u must map clusters to [ts, [signal]]")
        signals = tuple(entry[1])
        if not all(isinstance(x, str) and _signal_text(x) for x in signals):
            raise _Bad("u: a signal is 32 or 64 hex digits, or a video's frames")
        out[_text(cluster, "u")] = (_int(entry[0], "u: ts"), signals)
    return out


#: A cluster no longer in the idle order (``null`` in ``"U"``): the core's ``i64::MIN``.
_NOT_IDLE: Final = -(2**63)


def _compact_signal(text: object) -> str:
    """A signal of ``"U"``: base64 of an MD5's (22 characters) or a PDQ's (43) bytes, as
    hex again; a video's frames as they are."""
    if isinstance(text, str) and not text.startswith("["):
        signal = _unbase64(text) if len(text) in (22, 43) else None
        if signal is None:
            raise _Bad("U: a signal is base64 of 16 or 32 bytes, or a video's frames")
        return signal
    if isinstance(text, str) and _signal_text(text):
        return text
    raise _Bad("U: a signal is base64 of 16 or 32 bytes, or a video's frames")


def _compact_index(value: object, out: dict[str, IndexEntry]) -> None:
    """``"U"`` (written by ``rust/core/src/wire_index.rs``) into ``out``, as ``"u"`` reads:
    parts ``[t0, [cluster, dt], [cluster, dt, [signal, ...]], ...]``, a cluster's time
    ``t0 + dt`` (``null``: no longer in the idle order)."""
    bad = "U must be arrays of [t0, [cluster, dt, [signal]]]"
    if not isinstance(value, list):
        raise _Bad(bad)
    for part in value:
        if not isinstance(part, list) or not part:
            raise _Bad(bad)
        t0 = _int(part[0], "U: t0")
        for entry in part[1:]:
            if not isinstance(entry, list) or len(entry) not in (2, 3):
                raise _Bad(bad)
            cluster, dt, *took = entry
            if took and not isinstance(took[0], list):
                raise _Bad(bad)
            ts = _NOT_IDLE if dt is None else t0 + _int(dt, "U: dt")
            if not _NOT_IDLE <= ts < 2**63:
                raise _Bad("U: a time out of range")
            signals = tuple(map(_compact_signal, took[0])) if took else ()
            out[_text(cluster, "U")] = (ts, signals)


def _heard(value: object) -> dict[int, int]:
    if not isinstance(value, dict):
        raise _Bad("g must map partitions to event times")
    try:
        return {int(p): _int(t, "g") for p, t in value.items()}
    except ValueError:
        raise _Bad("g must map partitions to event times") from None


def decode_delta(raw: bytes) -> ResolveDelta | Rejection:
    """A resolve-log entry.

    >>> decode_delta(b'{"p": {"p1": "b-1"}, "h-": ["e9"]}')  # doctest: +ELLIPSIS
    ResolveDelta(posts={'p1': 'b-1'}, forgot=(), held=(), released=('e9',), index={}, ...)
    >>> md5 = b"a" * 32
    >>> d = decode_delta(b'{"u": {"u-1": [5, ["' + md5 + b'"]]}, "u-": ["u-0"], "g": {"1": 7}}')
    >>> d.index["u-1"][0], d.evicted, d.heard
    (5, ('u-0',), {1: 7})
    >>> decode_delta(b'{"p": ["p1"]}').detail
    'resolve log entry: p must map posts to clusters'
    >>> decode_delta(b'{"u": {"u-1": [5, ["xyz"]]}}').detail
    "resolve log entry: u: a signal is 32 or 64 hex digits, or a video's frames"
    """
    try:
        body = orjson.loads(raw)
        if not isinstance(body, dict):
            raise _Bad("not an object")
        posts = body.get("p", {})
        if not isinstance(posts, dict) or not all(isinstance(v, str) and v for v in posts.values()):
            raise _Bad("p must map posts to clusters")
        forgot = body.get("f", [])
        released = body.get("h-", [])
        held = body.get("h+", [])
        if not all(isinstance(x, list) for x in (forgot, released, held)):
            raise _Bad("f, h+ and h- must be arrays")
        evicted = body.get("u-", [])
        if not isinstance(evicted, list):
            raise _Bad("u- must be an array")
        clustered_to = body.get("h<")
        if clustered_to is not None:
            _int(clustered_to, "h<")
        index = _index(body.get("u", {}))
        if "U" in body:
            _compact_index(body["U"], index)
        return ResolveDelta(
            posts,
            tuple(_text(p, "f") for p in forgot),
            tuple(_held(ev) for ev in held),
            tuple(_text(e, "h-") for e in released),
            index,
            tuple(_text(c, "u-") for c in evicted),
            _heard(body.get("g", {})),
            clustered_to=clustered_to,
        )
    except (orjson.JSONDecodeError, _Bad) as exc:
        return Rejection(BAD_RECORD, f"resolve log entry: {exc}", raw[:1024])
