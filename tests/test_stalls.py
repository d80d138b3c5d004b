"""A worker says which partitions stand still while work waits behind them (and what holds
them back), in its log, its ``stats`` record and a gauge (``streams.runtime.stalls``)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from streams.banks import HashBanks
from streams.policy import AlertPolicy
from streams.runtime.stalls import STALL_S, StallWatch
from streams.settings import Settings
from streams.watermarks import Watermark


def test_a_stall_is_said_once_again_while_it_lasts_and_when_it_ends() -> None:
    watch = StallWatch(after_s=10.0, repeat_s=30.0)
    marks = {"clusters/0": (5, 3)}
    said = [watch.check(marks, now=float(t))[0] for t in range(0, 60, 5)]
    assert [t for t, s in zip(range(0, 60, 5), said, strict=True) if s] == [10, 40]
    assert watch.stalled == ["clusters/0"]
    say, ended = watch.check({"clusters/0": (5, 0)}, now=61.0)  # nothing waits any more
    assert say == [] and [s.key for s in ended] == ["clusters/0"] and watch.stalled == []
    watch.check({"clusters/0": (5, 3)}, now=62.0)
    assert watch.check({}, now=200.0) == ([], [])  # revoked: forgotten, nothing said
    assert watch.stalled == []


def test_a_moving_mark_or_an_empty_queue_is_no_stall() -> None:
    watch = StallWatch(after_s=10.0)
    for t in range(100):
        say, _ = watch.check({"a/0": (t, 7), "a/1": (0, 0)}, now=float(t))
        assert say == []


def test_the_worker_says_what_holds_a_stalled_partition_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from streams.runtime.worker import Worker

    s = Settings(broker="kafka://127.0.0.1:9", data_dir=tmp_path)
    w = Worker(s, banks=HashBanks(), policy=AlertPolicy.default())
    wm = Watermark(sources=4, lateness_ms=0)
    wm.update({0: (9_000, False), 1: (4_000, False), 2: (9_000, False)})  # 3 never heard
    detector = SimpleNamespace(
        watermark=wm, pending=12, applied=0, detector=SimpleNamespace(cluster_count=0)
    )
    w.topology.detectors[2] = detector  # type: ignore[assignment]
    w.hand_over.clusters.assign([2])
    consumer: Any = w.app.consumer
    consumer.highwater = lambda tp: 50  # the broker holds 50 records of clusters/2
    with caplog.at_level(logging.WARNING, logger="viralwatch.worker"):
        w._watch_stalls(0.0)
        assert not caplog.records
        w._watch_stalls(STALL_S + 1)
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "clusters/2: watermark -1 has not moved for 31 s while 12 events wait" in said
    assert "resolve/3 not heard from" in said and "resolve/1" not in said
    assert "clusters/2: 50 records wait on the broker past offset 0" in said
    assert w.stats.partitions_stalled == 2
    summary = orjson.loads(w.summary_json())  # as published on the stats topic
    assert summary["stalled"] == ["clusters/2", "unread clusters/2"]
    assert summary["waits"]["clusters"] == {"2": {"0": 9_000, "1": 4_000, "2": 9_000}}
    wm.update({3: (2_000, False)})  # heard from at last: 2000 now the slowest
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="viralwatch.worker"):
        w._watch_stalls(STALL_S + 2)
    assert "clusters/2: watermark moved on to 2000" in caplog.text
    assert w.summary()["stalled"] == ["unread clusters/2"]
