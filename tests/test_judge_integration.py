"""Judge and act on Apache Kafka, through the views: emerging near-duplicates, retroaction, a
false positive.

One worker (``python -m streams.runtime``) with an allowed lateness of 5 s,
takedowns requested from ``warning`` on, and its HTTP port with a viewer's
and a reviewer's token; events stamped with the wall clock. Two
near-duplicate uploads (20 bits apart) of content no bank knows, and their
reshares, form one cluster, which ``GET /emerging`` shows. The reviewer
banks it (``POST /cascade/<id>/bank``, as the page's button does): the
cluster alerts at once (retroaction), within the latency target, leaves the
queue, and its live posts get takedown requests. A false-positive verdict
(``POST /cascade/<id>/false-positive``) then resolves its alert, and the
reshares after it get no takedown request; a re-upload of the content
matches nothing (``allowed``). Replay of the same events with the same bank
updates in its input gives the same alert ids and statuses.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from eventgen import Traffic, flip, pdq_hex
from kafka_helpers import (
    TopicReader,
    WorkerProcess,
    latest_stats,
    produce_lines,
    worker_env,
    workers,
)
from programs import free_port
from test_streaming_integration import setup
from test_views_integration import fetch

from streams.alerts import Pseudonymizer
from streams.banks import HashBanks
from streams.pipeline import Pipeline
from streams.policy import DEFAULT_POLICY, AlertPolicy
from streams.review import ReviewAction
from streams.runtime.broker import RunningBroker
from streams.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Event to alert: the target the README states for velocity alerts is 1 s; the machine
#: running the tests is shared, so this allows for its load (the measured time is printed).
LATENCY_LIMIT_S = 3.0
SEC = 1000
VIEWER, REVIEWER = "viewer-token-0011", "reviewer-token-0012"


def worker_stats(broker: RunningBroker, s: Settings, done: Any, what: str) -> dict[str, Any]:
    reader = TopicReader(broker, s.topic("stats"))
    try:
        records = reader.until(lambda r: any(done(d) for d in latest_stats(r).values()), 90, what)
    finally:
        reader.close()
    return next(d for d in latest_stats(records).values() if done(d))


def test_a_banked_leak_alerts_at_once_and_a_false_positive_silences_it(
    broker: RunningBroker, tmp_path: Path
) -> None:
    rng = random.Random(11)
    original = pdq_hex(rng)
    edit = flip(original, 20, rng)
    bank_csv = tmp_path / "bank.csv"
    bank_csv.write_text(f"signal_type,signal,bank\npdq,{pdq_hex(rng)},other\n")
    policy = tmp_path / "policy.toml"
    policy.write_text(
        DEFAULT_POLICY.read_text().replace('takedown = "high"', 'takedown = "warning"')
    )
    s = setup(broker, tmp_path, bank_csv, lateness_ms=5_000, policy_file=policy)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = worker_env(
        s,
        VIRALWATCH_HTTP_HOST="127.0.0.1",
        VIRALWATCH_HTTP_PORT=str(port),
        VIRALWATCH_WEB_TOKENS=f"viewer:{VIEWER},reviewer@alice:{REVIEWER}",
    )
    proc = WorkerProcess(env, tmp_path / "worker.log")
    as_json = {"Accept": "application/json", "Content-Type": "application/json"}

    def queue() -> list[dict[str, Any]]:
        status, _, body = fetch(base, "/emerging", VIEWER, headers={"Accept": "application/json"})
        assert status == 200, body
        items: list[dict[str, Any]] = orjson.loads(body)["items"]
        return items

    def act(cluster: str, kind: str, **fields: str) -> ReviewAction:
        path = f"/cascade/{cluster}/{kind}"
        status, _, body = fetch(base, path, REVIEWER, "POST", orjson.dumps(fields), as_json)
        assert status == 202, body
        return ReviewAction.from_dict(orjson.loads(body)["action"])

    now = int(time.time() * 1000)
    t0 = now - 200 * SEC
    t = Traffic(rng)  # one builder: event and post ids never repeat
    a = t.upload(t0, pdq=original, md5="a" * 32, post="leak-a")
    t.burst(a, t0 + 2 * SEC, 20, 4 * SEC)
    first = t.lines()
    b = t.upload(t0 + 90 * SEC, pdq=edit, md5="b" * 32, post="leak-b")
    t.burst(b, t0 + 92 * SEC, 20, 4 * SEC)  # the last share ~10 s ago
    second = t.lines()[len(first) :]
    inputs: list[bytes] = []  # everything, in the order the worker got it: replay's input

    with workers(proc):
        worker_stats(broker, s, lambda d: d["time"] > time.time() - 2, "the worker reporting")
        produce_lines(broker, s.topic("shares"), first, keying="post")
        inputs += first
        # the second upload is routed after the first (streams.emerging: what is guaranteed)
        worker_stats(broker, s, lambda d: d["stats"]["unmatched_uploads"] >= 1, "upload 1")
        produce_lines(broker, s.topic("shares"), second, keying="post")
        inputs += second
        last = max(orjson.loads(x)["ts"] for x in inputs)
        st = worker_stats(
            broker,
            s,
            lambda d: (
                d["stats"]["unmatched_uploads"] >= 2
                and d["watermarks"]
                and min(d["watermarks"].values()) >= last - 6 * SEC
            ),
            "both uploads routed, the reshares applied",
        )
        assert st["stats"]["emerging"] == 1 and st["clusters"] == 1, orjson.dumps(st)
        # the review queue shows the one cluster, both uploads its roots, with their hashes
        [item] = queue()
        assert item["roots"] == 2 and sorted(item["root_posts"]) == ["leak-a", "leak-b"]
        assert {"signal_type": "pdq", "signal": original} in item["hashes"]
        assert {"signal_type": "pdq", "signal": edit} in item["hashes"]

        # the reviewer banks it through the view: the cluster alerts at once (retroaction)
        alerts = TopicReader(broker, s.topic("alerts"))
        clicked = time.time()
        bank = act(item["cluster_id"], "bank", bank="internal", reason="confirmed NCII")
        inputs += [u.record()[1] for u in bank.bank_changes()]
        alerts.until(lambda r: len(r) >= 1, 30, "the retroactive alert", on_timeout=proc.log_tail)
        latency = time.time() - clicked
        fired = orjson.loads(alerts.records[0].value)
        print(f"POST bank -> alert read: {latency:.3f} s")
        assert fired["cluster_id"] == item["cluster_id"] and bank.reviewer == "alice"
        assert (fired["status"], fired["severity"], fired["match"]["bank"]) == (
            "firing",
            "warning",
            "internal",
        )
        assert latency < LATENCY_LIMIT_S
        assert queue() == []  # banked: it left the review queue

        # a false positive, then more reshares and a re-upload of the same content
        verdict = act(fired["cluster_id"], "false-positive", reason="a landscape photo")
        inputs += [u.record()[1] for u in verdict.bank_changes()]
        fp_at = int(time.time() * 1000)
        before = len(t.events)
        for i in range(10):
            t.share(fp_at + (i + 1) * SEC, a)
        t.upload(fp_at + 12 * SEC, pdq=flip(original, 3, rng), post="again")
        t.share(fp_at + 30 * SEC, "again")  # moves the watermark past the re-upload
        after = t.lines()[before:]
        time.sleep(1.0)  # the bank follower reads the verdict before these are routed
        produce_lines(broker, s.topic("shares"), after, keying="post")
        inputs += after
        alerts.until(
            lambda r: any(orjson.loads(x.value)["status"] == "resolved" for x in r),
            60,
            "the alert resolved",
            on_timeout=proc.log_tail,
        )
        st = worker_stats(broker, s, lambda d: d["stats"]["allowed"] >= 1, "the re-upload")
        assert st["stats"]["matched"].get("internal", 0) == 0
        time.sleep(2.0)  # anything extra would show now
        alerts.poll(1.0)
        got = [orjson.loads(x.value) for x in alerts.records]
        alerts.close()
        actions = TopicReader(broker, s.topic("actions"))
        requests = [orjson.loads(x.value) for x in actions.until(lambda r: len(r) >= 1, 30)]
        actions.close()

    resolved = [d for d in got if d["status"] == "resolved"]
    assert [(d["alert_id"], d["reason"]) for d in resolved] == [
        (fired["alert_id"], "false_positive")
    ]
    # takedowns: every live post of the cluster when it was banked, none after the verdict
    assert len(requests) == 42 and {d["cluster_id"] for d in requests} == {fired["cluster_id"]}
    assert {d["post_id"] for d in requests}.isdisjoint({orjson.loads(x)["post_id"] for x in after})
    # replay of the same input, bank updates included: the same alert ids and statuses
    pipe = Pipeline(
        HashBanks(),
        AlertPolicy.from_toml(policy),
        pseudonymizer=Pseudonymizer(s.pseudonym_key),
        lateness_ms=5_000,
    )
    for line in inputs:
        pipe.feed(line)
    replayed = pipe.finish()
    assert {(a.alert_id, a.status) for a in replayed.alerts} == {
        (d["alert_id"], d["status"]) for d in got
    }
    assert {a.post_id for a in replayed.actions} == {d["post_id"] for d in requests}
