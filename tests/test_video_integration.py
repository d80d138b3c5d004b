"""Re-encoded video uploads and their reshares on Apache Kafka: one cluster, replay's alerts.

A synthetic clip is banked by its vPDQ; the traffic uploads three re-encodes
of it (MPEG-4 at a low bitrate, 3GP/H.263 at 176x144, half size; hashed here
from files PyAV made) and an unrelated video, each reshared in bursts. The
worker must put every re-encode and its reshares in the banked video's
cluster and send exactly the alerts ``replay`` gives for the same lines.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import test_streaming_integration as streaming
import videos
from eventgen import T0, Traffic
from kafka_helpers import WorkerProcess, produce_lines, worker_env, workers

from streams.banks import BankEntry
from streams.hashing import hash_file
from streams.runtime.broker import RunningBroker
from streams.simulate import write_bank
from streams.videohash import VideoHashes
from streams.vpdq import format_vpdq

pytestmark = pytest.mark.integration


def vpdq_of(path: Path) -> VideoHashes:
    rec = hash_file(path)
    assert isinstance(rec, VideoHashes), rec
    return rec


def video_traffic(tmp_path: Path) -> tuple[list[bytes], BankEntry]:
    original = videos.synthetic(tmp_path / "original.mp4", seed=1)
    entry = BankEntry("ncii", "vpdq", format_vpdq(vpdq_of(original).frames), "case-v1")
    reencodes = [
        videos.variant(original, tmp_path / "low.avi", codec="mpeg4", bit_rate=250_000),
        videos.variant(
            original, tmp_path / "mms.3gp", codec="h263", size=(176, 144), bit_rate=64_000
        ),
        videos.variant(original, tmp_path / "half.mp4", size=(160, 120)),
    ]
    other = videos.synthetic(tmp_path / "other.mp4", seed=2)
    t = Traffic()
    for i, path in enumerate([*reencodes, other]):
        rec = vpdq_of(path)
        start = T0 + i * 20_000
        root = t.upload(start, md5=rec.md5, vpdq=[str(f) for f in rec.frames], user=f"up{i}")
        t.burst(root, start + 1_000, 45, 2_500)
    t.events.sort(key=lambda e: int(e["ts"]))  # type: ignore[call-overload]
    return t.lines(), entry


def test_re_encoded_video_uploads_alert_as_one_cluster_on_kafka(
    broker: RunningBroker, tmp_path: Path
) -> None:
    lines, entry = video_traffic(tmp_path)
    expected = streaming.Expected(lines, [entry])
    assert expected.alerts, "replay must alert on the banked video's cascade"
    alerts = [orjson.loads(a) for a in expected.alerts]
    assert {a["cluster_id"] for a in alerts} == {entry.cluster_id}
    assert {a["match"]["kind"] for a in alerts} == {"vpdq"}
    # the three re-encodes are three roots of the one cascade (135 reshares in 3 minutes)
    assert max(a["cascade"]["roots"] for a in alerts) == 3
    assert "high" in {a["severity"] for a in alerts}
    bank_path = tmp_path / "bank.csv"
    write_bank([entry], bank_path)
    s = streaming.setup(broker, tmp_path, bank_path)
    w = WorkerProcess(worker_env(s), tmp_path / "worker.log")
    with workers(w):
        produce_lines(broker, s.topic("shares"), lines, keying="none")
        got, _ = streaming.wait_done(broker, s, expected, (w,))
    streaming.assert_exactly_once(got, expected.alerts, "alerts")
