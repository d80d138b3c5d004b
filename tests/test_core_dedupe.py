"""The compiled core's duplicate event ids (``_core.EventIds``) against a Python ``set``.

The detector applies an event id once per cluster; the core keeps the ids as
128-bit keyed hashes. Whatever the ids (any text, lone surrogates included)
and however the calls are cut into batches, it answers as a ``set`` of the
ids would, and nothing but a non-``str`` id raises.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from streams import _core
from streams.alerts import Pseudonymizer
from streams.detector import Detector
from streams.events import ShareEvent
from streams.policy import AlertPolicy
from streams.router import Routed
from streams.stats import Stats

EXAMPLES = int(os.environ.get("VIRALWATCH_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None)

# few distinct ids, so that repeats are common; any text, surrogates included
_ids = st.lists(
    st.sampled_from(["e1", "e2", "", "é", "e1\x00", "\ud800", "x" * 256]) | st.text(max_size=12),
    max_size=60,
)


def _cuts(n: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, n), max_size=6).map(sorted)


@FUZZ
@given(st.data())
def test_any_batch_cutting_answers_as_a_set_does(data: st.DataObject) -> None:
    ids = data.draw(_ids)
    cuts = data.draw(_cuts(len(ids)))
    oracle: set[str] = set()
    expected = []
    for i in ids:
        expected.append(i not in oracle)
        oracle.add(i)
    core = _core.EventIds()
    got: list[bool] = []
    for lo, hi in zip([0, *cuts], [*cuts, len(ids)], strict=True):
        if data.draw(st.booleans()):
            got += core.add_many(ids[lo:hi])
        else:
            got += [core.add(i) for i in ids[lo:hi]]
    assert got == expected
    assert len(core) == len(oracle)
    probes = data.draw(st.lists(st.text(max_size=4) | st.sampled_from(ids or ["e1"])))
    assert core.contains_many(probes) == [p in oracle for p in probes]
    assert [p in core for p in probes] == [p in oracle for p in probes]
    again = _core.EventIds()
    again.add_many(sorted(oracle))
    assert again == core  # the same ids, in another order
    again.add("not among them" if "not among them" not in oracle else "nor this")
    assert again != core


def test_only_a_non_str_id_is_refused() -> None:
    ids = _core.EventIds()
    for bad in (3, b"e1", None):
        try:
            ids.add(bad)  # type: ignore[arg-type]
        except TypeError:
            pass
        else:
            raise AssertionError(f"{bad!r} was taken as an event id")
        assert bad not in ids  # membership of anything else is False, as for a set of str
    assert len(ids) == 0 and ids != {"e1"}


def test_the_detector_applies_a_redelivered_event_once_and_counts_it() -> None:
    det = Detector(AlertPolicy.default(), Stats(), pseudonymizer=Pseudonymizer(b"k"))
    t0 = 1_767_225_600_000
    up = Routed(ShareEvent("e0", "upload", t0, "p0", "u0"), "u-1")
    share = Routed(ShareEvent("e1", "share", t0 + 1, "p1", "u1", "p0"), "u-1")
    for item in (up, share, up, share, share):
        det.apply(item)
    st_ = det.cluster("u-1")
    assert st_ is not None and det.live_events == 2 and st_.size == 2
    assert det.applied("u-1", "e1") and not det.applied("u-1", "e9")
    assert det.stats.duplicates == 3
    # an evicted cluster forgets its ids: the same id later starts afresh
    det.advance(t0 + det.idle_ms + 2)
    assert det.live_events == 0 and det.cluster("u-1") is None
    det.apply(up)
    assert det.live_events == 1 and det.stats.duplicates == 3
