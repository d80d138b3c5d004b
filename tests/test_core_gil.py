"""The compiled core's long calls let the worker's other threads run: the parse of a batch
of input lines and of an envelope run with the GIL released (``Python::detach`` in
``rust/python``), so Faust's consumer thread can take a fetch's answer meanwhile.

How it is seen: a thread stamps the clock as fast as it can while the main thread is in one
long core call. Holding the GIL for the whole call, the core would leave it no turn in the
call's middle half (the thread runs only before the call and after it, the collector kept
off); with the parse released it runs there. The rare lines the parser asks Python about
(an id outside printable ASCII, a timestamp in no form the core reads) are answered in the
released parse (it attaches for them) exactly as before.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from collections.abc import Callable

from streams import events  # noqa: F401  (gives the core its record classes)
from streams._core import (
    FetchedRecords,
    RecordBatchBuilder,
    ingest_lines,
    ingest_records,
    read_fetched,
)
from streams.events import Rejection
from streams.wire import READER

N = 200_000


def _line(i: int) -> bytes:
    return json.dumps(
        {
            "event_id": f"e{i}",
            "type": "share" if i % 3 else "upload",
            "ts": 1_700_000_000_000 + i,
            "post_id": f"p{i}",
            "user_id": f"u{i % 977}",
            "parent_post_id": f"p{i - 1}" if i % 3 else None,
        }
    ).encode()


def _turns_inside(call: Callable[[], object]) -> tuple[float, float]:
    """The share of the 10-ms stretches of ``call``'s middle half in which another thread,
    stamping the clock as fast as it can, ran; and the call's length."""
    stamps: list[float] = []
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            stamps.append(time.perf_counter())

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    # no collection during the call: one runs Python's finalizers and callbacks in the
    # middle of a core call that makes many objects, where the other thread gets a turn
    gc.disable()
    try:
        while not stamps:
            time.sleep(0.001)
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
    finally:
        gc.enable()
        stop.set()
        thread.join()
    span = t1 - t0
    lo, hi = t0 + span / 4, t1 - span / 4
    bins = max(1, int((hi - lo) / 0.01))
    ran = {int((s - lo) / 0.01) for s in stamps if lo < s < hi}
    return len(ran) / bins, span


def test_ingest_lines_lets_another_thread_run_during_the_parse() -> None:
    lines = [_line(i) for i in range(N)]
    share, span = _turns_inside(lambda: ingest_lines(lines, [0] * len(lines), 4))
    assert span > 0.1, span  # long enough to tell turns apart
    # held throughout, none: the share is 0 exactly; released, how much of it the other
    # thread gets depends on the machine's load (a CPU to run on), so any turn counts
    assert share > 0, (share, span)


def test_ingest_records_lets_another_thread_run_during_the_parse() -> None:
    """The ``shares`` reader's runs (values parsed where they lie in the fetched bytes, which
    a ``bytes`` holds unchanged) are parsed with the GIL released too."""
    builder = RecordBatchBuilder(1 << 28)
    for i in range(N):
        assert builder.write(1_700_000_000_000 + i, b"", _line(i))
    fetched = read_fetched(builder._build(), 0, True)
    assert isinstance(fetched, FetchedRecords) and len(fetched) == N
    run = fetched.run(0, N)
    share, span = _turns_inside(lambda: ingest_records([(0, run)], 4))
    assert span > 0.1, span
    assert share > 0, (share, span)


def test_an_envelope_read_lets_another_thread_run_during_the_parse() -> None:
    items = ",".join(
        f'["s2",["e{i}","s",{1_700_000_000_000 + i},"p{i}","u{i % 977}","p{i - 1}"]]'
        for i in range(N)
    )
    raw = f'{{"i":[{items}]}}'.encode()
    read = READER.envelope(raw)
    assert read is not None and sum(map(len, read[0])) == N  # the core reads it whole
    share, span = _turns_inside(lambda: READER.envelope(raw))
    assert span > 0.1, span
    assert share > 0, (share, span)


def test_the_lines_the_parser_asks_python_about_are_answered_in_the_released_parse() -> None:
    odd_id = json.loads(_line(1)) | {"event_id": "é1"}
    unprintable = json.loads(_line(2)) | {"event_id": "é\u2028"}
    bad_ts = json.loads(_line(3)) | {"ts": "yesterday"}
    lines = [json.dumps(d).encode() for d in (odd_id, unprintable, bad_ts)]
    batches, rejected, _ = ingest_lines(lines, [0, 0, 0], 1)
    assert [i for i, _ in rejected] == [1, 2]
    reasons = [r.reason for _, r in rejected]
    assert all(isinstance(r, Rejection) for _, r in rejected)
    assert reasons == ["bad_id", "bad_ts"]
    ((events_, _),) = [b.parts() for b in batches if b is not None]
    assert [e.event_id for e in events_] == ["é1"]
