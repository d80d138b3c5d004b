"""Type stubs of the compiled core (``rust/python``), built by maturin into ``streams._core``."""

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")

MAX_EVENT_BYTES: int
MAX_ID_LEN: int
TS_MIN_MS: int
TS_MAX_MS: int

def version() -> str:
    """The compiled core's version (its crate's)."""

def parse_events(
    lines: Sequence[bytes],
    parse_ts: Callable[[str], int],
    share_event: type[Any],
    content: type[Any],
    rejection: type[Any],
) -> tuple[list[Any], list[int]]:
    """Parse and validate a batch of lines: per line a ``share_event`` or a ``rejection``, or
    a video upload's event tuple (its frames for Python to read); and where those tuples are."""

def bank_updates(lines: Iterable[bytes]) -> list[int]:
    """Which lines are bank updates (``"op"``, no ``"event_id"``), by index, in order."""

def set_event_types(
    share_event: type[Any],
    content: type[Any],
    rejection: type[Any],
    parse_ts: Callable[[str], int],
    video: Callable[[tuple[Any, ...], bytes], Any],
) -> None:
    """What the compiled loops make Python records of their events with (given once, by
    ``streams.events`` at import)."""

PDQ_MAX_INDEXED_THRESHOLD: int

class PdqIndex:
    """Distinct PDQ hashes (64 hex digits), searchable by Hamming distance exactly; each may
    carry an integer tag (-1 when none is given)."""

    def __init__(self, hashes: Iterable[str] | None = None, *, tail_min: int = 1024) -> None: ...
    def __len__(self) -> int: ...
    def __contains__(self, pdq: object) -> bool: ...
    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays."""
    def add(self, pdq: str) -> bool:
        """Add one hash; ``False`` when it is there already."""
    def add_many(self, hashes: Iterable[str], tags: Sequence[int] | None = None) -> int:
        """Add hashes with their tags (present ones keep theirs); the number added."""
    def remove(self, pdq: object) -> bool:
        """Remove a hash; ``False`` when it is not there (or not a hash)."""
    def search(self, pdq: str, threshold: int = 31) -> list[tuple[str, int]]:
        """Every hash within ``threshold``: ``(hex, distance)``, nearest first, ties by hex."""
    def search_many(
        self, queries: Iterable[str], threshold: int = 31
    ) -> list[list[tuple[str, int]]]:
        """:meth:`search` for each query."""
    def search_tags(
        self, queries: Iterable[str], threshold: int
    ) -> tuple[list[int], list[int], list[int]]:
        """``(query index, tag, distance)`` of every hash found, by query, nearest first."""
    def tags_of(self, hashes: Iterable[str]) -> list[int]:
        """The tag of each hash, -2 for one not in the index."""

class TextSet:
    """A set of texts, compiled (the banks' MD5 keys, which the screen asks of each upload)."""

    def __init__(self) -> None: ...
    def __len__(self) -> int: ...
    def __contains__(self, text: str) -> bool: ...
    def add(self, text: str) -> bool:
        """Add ``text``; ``False`` when it is there already."""
    def discard(self, text: str) -> bool:
        """Drop ``text``; ``False`` when it was not there."""

def allocated_bytes() -> int:
    """Bytes the compiled core holds on its heap now (``tracemalloc`` does not see them)."""

class EventIds:
    """The event ids a cluster has applied, as 128-bit keyed hashes (16 bytes an id).

    Sets of the same ids are equal within one process; the hashes never leave it.
    """

    def add(self, event_id: str) -> bool:
        """Add ``event_id``; ``False`` if it was here already."""
    def add_many(self, event_ids: Iterable[str]) -> list[bool]:
        """Add a batch of ids in order: for each, whether it was new."""
    def contains_many(self, event_ids: Iterable[str]) -> list[bool]:
        """Whether each id of a batch was applied here."""
    def __contains__(self, event_id: object) -> bool: ...
    def __len__(self) -> int: ...

class ReorderBuffer(Generic[_T]):
    """Records held until the watermark passes them, released in ``(ts, key)`` order (equal
    pairs in arrival order; the records are never compared)."""

    def push(self, ts_ms: int, key: str, item: _T) -> None:
        """Hold ``item`` until the watermark reaches ``ts_ms``."""
    def release(self, watermark_ms: int) -> list[_T]:
        """Every record at or before the watermark, in event-time order."""
    def drain(self) -> list[_T]:
        """Everything, in order (the end of the input)."""
    def keys(self) -> set[str]:
        """The keys of the records held."""
    @property
    def released_ms(self) -> int:
        """The event time of the latest record released (``-1`` before any)."""
    @property
    def next_ms(self) -> int:
        """The event time of the earliest record held (``2**63 - 1`` when none is): a
        watermark before it releases nothing."""
    def __len__(self) -> int: ...

class ContentSignals:
    """Live clusters' signals (an MD5's or a PDQ's hex, a video's text): which clusters hold
    each, each cluster's in order; searchable by MD5 and by PDQ distance. ``view``: whose
    clusters (0, the owner's; 1, the detector's when it shares the router's index): each
    view's answers are those of an index of its own. ``scan``: no PDQ tables, a search
    scans (an index searched only for bank changes)."""

    def __init__(self, scan: bool = False) -> None: ...
    @property
    def clusters(self) -> int:
        """Live clusters in the owner's view."""
    def clusters_in(self, view: int) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def __len__(self) -> int:
        """Distinct signals held, in any view."""
    def __contains__(self, cluster: object) -> bool: ...
    def contains(self, cluster: str, view: int = 0) -> bool: ...
    def held(self, cluster: str, view: int = 0) -> list[str]: ...
    def holders(self, text: str, view: int = 0) -> list[str]:
        """The clusters holding ``text``, by id."""
    def add(
        self, cluster: str, signals: Sequence[tuple[str, str]], view: int = 0
    ) -> tuple[list[str], list[str]]:
        """The texts new to ``cluster``, and of those the ones new to all (in ``view``)."""
    def drop(self, cluster: str, view: int = 0) -> list[str] | None:
        """The signals no cluster holds now (in ``view``); ``None`` if ``cluster`` held
        nothing there."""
    def near(self, kind: str, text: str, threshold: int, view: int = 0) -> list[tuple[str, int]]:
        """Clusters holding the signal, nearest first, ties by id (MD5, PDQ; else none)."""

class PostRoutes:
    """Which cluster each live post belongs to (post ids kept as bytes, each cluster id
    once, compact: its string made when asked for), and the events waiting for their parent
    post. With ``partition``, a streaming resolve partition's: only its own posts
    (``zlib.crc32`` of the id) are kept and recorded (:meth:`take_new_log`), the others' queued
    (:meth:`take_foreign`)."""

    def __init__(self, partition: int | None = None, partitions: int = 1) -> None: ...
    def __len__(self) -> int: ...
    def __contains__(self, post: object) -> bool: ...
    def __getitem__(self, post: str) -> str: ...
    def __setitem__(self, post: str, cluster: str) -> None: ...
    def __iter__(self) -> Iterator[str]: ...
    @property
    def clusters(self) -> int: ...
    @property
    def held(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def get(self, post: str, default: str | None = None) -> str | None: ...
    def keys(self) -> list[str]: ...
    def values(self) -> list[str]: ...
    def items(self) -> list[tuple[str, str]]:
        """Every ``(post, cluster)``, by post id (bytes order)."""
    def fold(self, posts: dict[str, str], forgot: Iterable[str]) -> None:
        """A state log's entries: ``posts`` mapped unless mapped, then ``forgot`` forgotten."""
    def forget_many(self, posts: Iterable[str]) -> int:
        """Forget posts; how many were mapped."""
    def route(
        self, target: str, post: str, share: bool, ts_ms: int, event: Any, max_held: int
    ) -> tuple[str | None, list[Any], tuple[str, int] | None]:
        """A reshare or takedown: ``(cluster, released, None)``, ``(None, [], None)`` held,
        or ``(None, [], (reason, held))`` refused."""
    def register(self, post: str, cluster: str) -> list[Any]:
        """``post`` routed to ``cluster``: mapped (or queued), and the events it released."""
    def expire(self, cut_ms: int) -> list[Any]:
        """Give up on the held events at or before ``cut_ms``."""
    def take_new_log(self, dropped: list[str]) -> tuple[bytes, int] | dict[str, str]:
        """The posts mapped since the last call, less ``dropped``, as the state log's ``"p"``:
        ``(JSON text, count)``; ``{post: cluster}`` if a post id is not UTF-8."""
    def take_foreign(self) -> list[tuple[int, RegBatch]]:
        """Posts of other partitions routed here since the last call, by partition, each in
        the order routed: a batch a run of them released or not (:attr:`RegBatch.released`)."""
    @property
    def released(self) -> bool:
        """Whether the posts registered now are released events' (held events routed): their
        registrations for other partitions are marked so (:attr:`RegBatch.released`)."""
    @released.setter
    def released(self, released: bool) -> None: ...

class WireWriter:
    """Batches of ``streams.wire`` records as JSON arrays cut into parts under a size limit,
    byte for byte what ``streams.wire.encode`` writes (it writes what the core does not)."""

    def __init__(
        self,
        routed: type,
        to_route: type,
        registration: type,
        forget: type,
        unbanked: type,
        touch: type,
        share_event: type,
        content: type,
        fallback: Callable[[Any], bytes],
    ) -> None: ...
    def held(
        self, events: Iterable[Any] | EvBatch, limit: int, held_json: Callable[[Any], bytes]
    ) -> list[bytes]:
        """Held events (``ShareEvent``s, or compiled in an ``EvBatch``) as the log's ``h+``."""
    def parts(self, items: Iterable[Any], limit: int, held: bool = True) -> list[bytes]:
        """``items`` as JSON arrays of at most ``limit`` bytes each (one larger item alone);
        ``held=False``: events to route and unbanked uploads in wire version 1's form."""
    def log_parts(self, items: Iterable[Any], limit: int) -> list[bytes]:
        """Routed events as a cluster log keeps them (``["c", cluster, held event]``)."""

class WireReader:
    """Envelopes and cluster-log entries read into ``streams.wire``'s records, each event by
    the event parser (``rust/core/src/wire_read.rs``); an item it does not read goes to
    ``fallback`` as its JSON text, and a record it does not read gives ``None``."""

    def __init__(
        self,
        to_route: type,
        routed: type,
        registration: type,
        forget: type,
        unbanked: type,
        touch: type,
        share_event: type,
        content: type,
        rejection: type,
        parse_ts: Callable[[str], int],
        fallback: Callable[[str], Any],
    ) -> None: ...
    def envelope(
        self, raw: bytes
    ) -> (
        tuple[list[Any], list[Any], dict[int, tuple[int, bool]], dict[int, int], dict[int, int]]
        | None
    ):
        """``(items, rejected, marks, progress, inputs)``, or ``None``: left to Python."""
    def items(self, raw: bytes) -> tuple[list[Any], list[Any]] | None:
        """A JSON array's ``(items, rejected)``, or ``None``: left to Python."""

class UnbankedClusters:
    """Unbanked clusters' posts, velocity, applied ids, waiting events, review-queue crossing
    and idle order (``rust/core/src/unbanked.rs``); ``rules``: ``(severity index, window_ms,
    shares)`` in the policy's order."""

    def __init__(
        self,
        rules: Sequence[tuple[int, int, int]],
        horizon_ms: int,
        idle_ms: int,
        signals: bool = False,
    ) -> None: ...
    @property
    def keeps_signals(self) -> bool: ...
    def hold(self, cluster_id: str, signals: Sequence[tuple[str, str]]) -> int: ...
    def held(self, cluster_id: str) -> list[tuple[str, str]]: ...
    def near(self, signal_type: str, signal: str, threshold: int) -> list[tuple[str, int]]: ...
    def next_seq(self) -> int:
        """A number for a touch of a banked cluster: the detector's one order of clusters."""
    def oldest_seq(self) -> int | None: ...
    def front(self) -> tuple[int, int] | None: ...
    def __len__(self) -> int: ...
    def __contains__(self, cluster_id: object) -> bool: ...
    @property
    def posts(self) -> int: ...
    @property
    def live_events(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def apply_many(
        self,
        items: list[Any],
        start: int,
        stop_ms: int,
        barrier: int,
        banked: dict[str, Any],
        count_unmatched: bool = False,
    ) -> tuple[
        int,
        list[Any] | None,
        list[tuple[str, int, int, int, int, int]] | None,
        list[tuple[int, str, list[str]]] | None,
        list[int] | None,
        tuple[int, int, int, int, int, int, int, int, int | None],
    ]:
        """Apply routed events from ``items[start]`` on, in order (each after evicting what
        was idle at its time, up to ``barrier``), stopping at the first at or after
        ``stop_ms`` or of a banked cluster (``b-``, or in ``banked``): how many, the events
        rejected as ``duplicate_post``, the crossings ``(cluster, shares in 5 minutes, size,
        live, first seen, last)``, the evictions ``(before item, cluster, posts)``, the items
        applied with content (each list ``None`` when empty), then the counters: duplicates,
        late, created, uploads, shares, takedowns, of the uploads those of low quality and
        those the allow-list took (``count_unmatched``: counted, by the compiled loops'
        rule; else 0), and the latest event time applied (``None``: none)."""
    def evict(self, cut_ms: int, barrier: int) -> tuple[bool, list[tuple[int, str, list[str]]]]:
        """Evict what is idle at ``cut_ms`` and touched before ``barrier``: whether one
        touched before it is not idle, and the evictions."""
    def applied(self, cluster_id: str, event_id: str) -> bool: ...
    def summary(
        self, cluster_id: str
    ) -> tuple[int, int, int, int, int, int, int, int, bool, bool, list[tuple[int, int]]] | None:
        """``(seq, first seen, last, size, live, roots, events, waiting, emerging, allowed,
        [(severity index, first met)])``."""
    def count(self, cluster_id: str, window_ms: int, now_ms: int) -> int: ...
    def times(self, cluster_id: str) -> list[int]: ...
    def made(self, cluster_id: str) -> list[tuple[str, str | None, str, int, bool]]: ...
    def pending(self, cluster_id: str) -> list[tuple[str, Any]]: ...
    def allow(self, cluster_id: str, kind: str, signal: str, add: bool) -> bool: ...
    def allowed_by(self, cluster_id: str) -> list[tuple[str, str]]: ...
    def take(
        self, cluster_id: str
    ) -> (
        tuple[
            int,
            int,
            int,
            list[tuple[str, str | None, str, int, bool]],
            list[int],
            int | None,
            EventIds,
            list[tuple[str, Any]],
            bool,
            list[tuple[int, int]],
            list[tuple[str, str]],
        ]
        | None
    ):
        """Take a cluster out (banked from now on)."""

def takedown_request(
    cls: type[_R], cluster_id: str, post_id: str, ts_ms: int, severity: str, alert_id: str
) -> _R:
    """A ``streams.alerts.TakedownRequest`` (``cls``) for ``post_id`` of ``cluster_id``: its
    ``action_id`` ``"td-"`` and the hex of the 10-byte BLAKE2b of
    ``f"{cluster_id}\x00{post_id}"``'s UTF-8, every field set without ``__init__``."""

def unbanked_id(key: str) -> str:
    """``"u-"`` and the 8-byte BLAKE2b of ``key``'s UTF-8, in hex (an unbanked cluster's id)."""

class IdleClusters:
    """Unbanked uploads' clusters at the index's owner, over ``signals``: which one an upload
    joins, the idle order, and what changed for the state log (``rust/core/src/emerging.rs``)."""

    joined: int
    def __init__(
        self, signals: ContentSignals, idle_ms: int, threshold: int, log: bool = True
    ) -> None: ...
    def __len__(self) -> int: ...
    def assign(self, signals: Sequence[tuple[str, str]], own: str, ts_ms: int) -> str:
        """The cluster an upload with these signals (MD5 first) joins, ``own`` if none is near."""
    def touch(self, cluster: str, ts_ms: int) -> None: ...
    def record(self, cluster: str, new: Sequence[str]) -> None: ...
    def expire(self, watermark_ms: int) -> list[str]: ...
    def take_changes(self) -> tuple[list[tuple[str, int, list[str]]], list[str]]: ...
    def log_changes(self, limit: int) -> tuple[list[bytes], int, list[str]]: ...
    def snapshot_log(self, limit: int) -> tuple[list[bytes], int]: ...
    def fold(self, cluster: str, last: int) -> None: ...
    def forget(self, cluster: str) -> bool: ...
    def snapshot(self) -> list[tuple[str, int]]: ...

class ReplayLoop:
    """Replay's per-event loop over a parsed batch (``rust/python/src/replay.rs``): route,
    defer unbanked uploads to the watermark, reorder, the watermark's steps, unbanked
    clusters' events applied in ``unbanked``; ``host`` (the ``Pipeline``) is called for the
    rest."""

    def __init__(
        self,
        routes: PostRoutes,
        idle: IdleClusters,
        unbanked: UnbankedClusters,
        content: ContentSignals,
        banked: Mapping[str, Any],
        routed_cls: type,
        rejection_cls: type,
        lateness_ms: int,
        max_held: int,
        min_pdq_quality: int,
    ) -> None: ...
    def feed(
        self, host: Any, lines: list[bytes], banks: tuple[TextSet, PdqIndex, int, bool]
    ) -> None:
        """A batch of input lines (share events), parsed here in input order, no Python record
        made of an event but where Python acts on it; its uploads screened against ``banks``
        (``HashBanks.screen()``), and those an entry may match matched by
        ``host._classify``."""
    def push_bank(self, host: Any, update: Any, ts_ms: int, key: str) -> None:
        """A timed bank change, held until the watermark passes ``ts_ms``."""
    def finish(self, host: Any) -> None:
        """The end of the input: everything waiting clustered, everything held applied."""
    @property
    def max_ts_ms(self) -> int: ...
    @property
    def released_ms(self) -> int: ...
    @property
    def waiting(self) -> int: ...
    def __len__(self) -> int: ...

def ingest_lines(
    lines: list[bytes], sources: list[int], partitions: int
) -> tuple[list[EvBatch | None], list[tuple[int, Any]], list[tuple[int, int | None]]]:
    """Ingest's step over a batch of input lines: an ``EvBatch`` of events to route per
    resolve partition (``None``: none), ``(position, Rejection)`` of the lines refused,
    each input partition's newest event time (first-read order)."""

def ingest_records(
    runs: Sequence[tuple[int, Sequence[Any]]], partitions: int
) -> tuple[list[EvBatch | None], list[tuple[int, int, Any]], list[tuple[int, int | None]]]:
    """:func:`ingest_lines` over ``(input partition, records)`` runs as the ``shares`` reader
    read them (a ``RecordRun``, parsed where its values lie, or records with ``offset`` and
    ``value``): each refused record as ``(partition, offset, Rejection)``."""

class RegBatch:
    """Registrations crossing Python as one item of an envelope (``rust/python/src/ev.rs``):
    a resolve partition's posts of another partition, ``(post, cluster)`` each, in order;
    written as ``Registration`` records."""

    def __len__(self) -> int: ...
    def pairs(self) -> list[tuple[str, str]]:
        """``(post, cluster)`` of each registration, in order."""
    @property
    def released(self) -> bool:
        """Whether the posts are of released events a replacement would not route again:
        held before a checkpoint began (:meth:`ResolveLoop.seal`: a reshare whose parent
        came, an upload the index's owner clustered), a held event of a log read back."""

class EvBatch:
    """Compiled events crossing Python as one item of an envelope (``rust/python/src/ev.rs``):
    events to route (``ToRoute``'s), unbanked uploads for the index's owner (``Unbanked``'s)
    or routed events (``Routed``'s, no match), in order."""

    def __len__(self) -> int: ...
    @property
    def routed_events(self) -> bool:
        """Whether its events are routed rather than to route."""
    @property
    def for_index(self) -> bool:
        """Whether its events are unbanked uploads for the index's owner."""
    def parts(self) -> tuple[list[Any], list[str] | None]:
        """The events as ``ShareEvent``s (made now), and each one's cluster (routed)."""

class ResolveLoop:
    """A streaming resolve partition's per-event loop (``rust/python/src/resolve.rs``):
    route a batch's items, hold orphans and (the index's owner) unbanked uploads (kept
    compiled, in the order held), cluster those every input has passed, each routed event
    to its clusters partition; ``host`` (the ``ResolvePartition``) is called for the rest."""

    def __init__(
        self,
        routes: PostRoutes,
        idle: IdleClusters | None,
        partitions: int,
        max_held: int,
        min_pdq_quality: int,
        classes: tuple[type, type, type, type, type, type],
    ) -> None: ...
    def route(self, host: Any, envelopes: list[list[Any]], banks: Any) -> None:
        """A batch's items, a list per envelope in offset order; its uploads screened
        against ``banks`` (``HashBanks.screen()``) first."""
    def cluster_due(self, host: Any, until_ms: int) -> None:
        """At the index's owner: cluster the unbanked uploads held at or before ``until_ms``."""
    def take(
        self,
    ) -> tuple[
        list[list[Any]],
        list[Any],
        EvBatch,
        list[str],
        int | None,
        list[str],
        list[Any],
        int,
        int,
        int,
        bool,
    ]:
        """``(routed per clusters partition, items for the index's owner, events held,
        ids released (each once, as the batch left it), the time every upload held at or
        before was clustered, posts forgotten, rejections and misplaced items, routed,
        duplicates, reshares held, whether the held orphans changed)``, forgotten here."""
    def waiting_front(self, settled: int) -> int | None:
        """The time of the oldest held reshare still waiting past ``settled``."""
    def seal(self) -> EvBatch:
        """A checkpoint begins: the events held now, released later, mark their posts'
        registrations for other partitions and their touches (``RegBatch.released``,
        ``Touch.released``). Returns the unbanked uploads held at the index's owner since
        the last seal and still held, for the log's ``h+`` (a batch's delta leaves them
        out)."""
    @property
    def held_count(self) -> int:
        """How many events are held."""
    def held_events(self) -> EvBatch:
        """The events held, in the order held."""
    def unhold_ids(self, ids: list[str]) -> None:
        """These events (expired orphans) are no longer held; released in the delta."""
    @property
    def unclustered(self) -> int | None: ...

def unmatched_kinds(cluster_id: str, event: Any) -> tuple[int, int]:
    """Of an upload of ``cluster_id`` counted unmatched where Python applies it, ``(low
    quality, allowed)``: the compiled loops' rule (``Unmatched``), in one place."""

def evict_unbanked(
    store: UnbankedClusters,
    forget: PostRoutes | ForgetSink,
    content: ContentSignals,
    cut_ms: int,
    barrier: int,
    view: int = 0,
) -> tuple[bool, ClusterIds]:
    """Evict idle unbanked clusters, forgetting their posts in ``forget`` (replay's map, a
    clusters partition's sink) and their content in ``content`` (in its ``view``): ``(stopped
    at one not idle, [cluster])``."""

class ClusterIds:
    """Evicted clusters' ids, kept compact: each id's text is made when it is read
    (``rust/python/src/detect.rs``)."""

    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> str: ...
    def __iter__(self) -> Iterator[str]: ...

class ForgetSink:
    """The posts of evicted clusters a clusters partition has its resolve partitions forget,
    kept as bytes by partition (``rust/python/src/detect.rs``)."""

    def __init__(self, partitions: int) -> None: ...
    def extend(self, posts: Iterable[str]) -> None:
        """Posts forgotten elsewhere (a banked cluster's), after those held."""
    def take(self) -> dict[int, bytes]:
        """One ``Forget`` envelope per resolve partition, as ``Envelope.pack`` writes it."""
    def __len__(self) -> int: ...

class ClusterLoop:
    """A clusters partition's reorder buffer and the detector's compiled side, shared with
    ``ReplayLoop`` (``rust/python/src/detect.rs``); ``host`` (the ``ClusterPartition``) is
    called for banked clusters' events, bank changes and what the unbanked store did."""

    def __init__(
        self,
        unbanked: UnbankedClusters,
        content: ContentSignals,
        banked: Mapping[str, Any],
        routed_cls: type,
        forget: ForgetSink,
        min_pdq_quality: int,
        view: int,
        reader: WireReader,
        log_limit: int,
    ) -> None: ...
    def push(self, items: list[Any]) -> list[Any]:
        """Hold routed events for the watermark; those of banked clusters, in order."""
    def read(
        self, raw: bytes
    ) -> tuple[dict[int, int], list[Any], list[Any], list[Any], int] | None:
        """A record of the clusters topic read and its routed events held, no ``Routed`` made
        but for banked clusters': ``(progress, banked events, rejected items, records of
        other kinds, events held)``, or ``None``: left to Python."""
    def take_log(self) -> list[bytes]:
        """The log entries of the events :meth:`read` held since the last call, as they came."""
    def take_received(self) -> tuple[int, list[str], int, int]:
        """The uploads received since the last call new here (neither held nor applied to
        their cluster): ``(unmatched, [the bank of each matched], low_quality, allowed)``,
        the last two among the unmatched."""
    def push_bank(self, update: Any, ts_ms: int, key: str) -> None:
        """A timed bank change, held until the watermark passes ``ts_ms``."""
    def release(self, host: Any, watermark_ms: int) -> int:
        """Apply what is held up to ``watermark_ms``; how many items."""
    def held(self) -> list[Any]:
        """The items held, in no order."""
    def keys(self) -> set[str]:
        """The keys of the items held."""
    @property
    def released_ms(self) -> int: ...
    def __len__(self) -> int: ...

class RecordAppended:
    """What a batch answers to a record appended (as aiokafka's builder answers)."""

    @property
    def offset(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def crc(self) -> None: ...

class FetchedRecord:
    """A record of a :class:`RecordRun`, as aiokafka's record batch gives it."""

    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int | None: ...
    @property
    def timestamp_type(self) -> int | None: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> list[tuple[str, bytes | None]]: ...
    @property
    def checksum(self) -> None: ...

class RecordRun:
    """Records taken from a fetched partition, where they lie in its bytes; a record is made
    when one is read (an index, negative from the end, or iteration)."""

    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> FetchedRecord: ...
    def __iter__(self) -> Iterator[FetchedRecord]: ...

class FetchedRecords:
    """A fetched partition's records as the core read them, taken in runs."""

    def __len__(self) -> int: ...
    def run(self, lo: int, hi: int) -> RecordRun:
        """Records ``lo`` to ``hi``."""
    def next_after(self, taken: int) -> int:
        """The next fetch offset once the first ``taken`` records are taken."""

def read_fetched(
    raw: bytes, fetch_offset: int, check_crcs: bool
) -> FetchedRecords | tuple[str, str]:
    """A partition's fetched bytes read as a consumer reading uncommitted records reads them,
    or ``(reason, detail)`` where they are left to aiokafka's own loop."""

def record_batch_at(raw: bytes, start: int) -> tuple[int, bool] | None:
    """``(end, holds)`` of the record batch at ``start``: where it ends, and whether it is a
    magic-2 batch whose CRC-32C holds (``False`` also where not known); ``None`` where
    ``raw`` holds no batch length there."""

class RecordBatchBuilder:
    """A Kafka record batch (magic 2, uncompressed) being written for one partition, with
    aiokafka's ``BatchBuilder``'s methods; built with its CRC-32C in hardware."""

    def __init__(self, batch_size: int, is_transactional: bool = False) -> None: ...
    def append(
        self,
        *,
        timestamp: int | None,
        key: bytes | bytearray | None,
        value: bytes | bytearray | None,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
    ) -> RecordAppended | None:
        """Add a record: its metadata, or ``None`` when the batch is full or closed."""
    def write(
        self, timestamp: int | None, key: bytes | bytearray, value: bytes | bytearray | None
    ) -> bool:
        """Add a record with no headers: whether it went in (``False``: full or closed)."""
    def close(self) -> None: ...
    def closed(self) -> bool: ...
    def size(self) -> int:
        """The batch's size in bytes, header included."""
    def record_count(self) -> int: ...
    def _set_producer_state(
        self, producer_id: int, producer_epoch: int, base_sequence: int
    ) -> None: ...
    def _build(self) -> bytes:
        """The batch's bytes, header and CRC written (closed; built once)."""
