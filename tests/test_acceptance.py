"""The detection core's "done when": simulated traffic in, the right alerts out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from streams.alerts import Pseudonymizer
from streams.banks import HashBanks
from streams.emerging import unbanked_cluster_id
from streams.events import Content
from streams.pipeline import Pipeline
from streams.policy import AlertPolicy
from streams.simulate import Scenario, simulate, three_cascades


def replay(sim):  # type: ignore[no-untyped-def]
    banks = HashBanks()
    for entry in sim.bank:
        banks.add(entry)
    pipe = Pipeline(banks, AlertPolicy.default(), pseudonymizer=Pseudonymizer(b"k"))
    for line in sim.lines:
        pipe.feed(line)
    return pipe, pipe.finish()


def by_name(sim):  # type: ignore[no-untyped-def]
    return {c["name"]: c for c in sim.truth["cascades"]}


def test_one_fast_banked_one_fast_unbanked_one_slow_banked_alerts_on_the_first_only() -> None:
    sim = three_cascades(seed=7)
    cascades = by_name(sim)
    [fast] = sim.truth["fast_banked"]
    [unbanked] = sim.truth["fast_unbanked"]
    [slow] = sim.truth["slow_banked"]
    pipe, d = replay(sim)
    alerted = {a.cluster_id for a in d.alerts}
    assert alerted == {cascades[fast]["cluster_id"]}
    assert cascades[slow]["cluster_id"] not in alerted
    # the unbanked one was seen spreading fast: queued for review, not alerted
    content = cascades[unbanked]
    unbanked_id = unbanked_cluster_id(Content(pdq=content["pdq"], md5=content["md5"]))
    assert unbanked_id in {c.cluster_id for c in pipe.detector.emerging}
    assert unbanked_id not in alerted
    assert {a.severity for a in d.alerts if a.status == "firing"} == {
        cascades[fast]["expected_severity"]
    } | {"warning"}


def test_default_simulation_alerts_on_every_planted_fast_banked_cascade_at_its_severity() -> None:
    sim = simulate(Scenario(seed=7))
    cascades = by_name(sim)
    _, d = replay(sim)
    top: dict[str, str] = {}
    order = ["warning", "high", "critical"]
    for a in d.alerts:
        if a.status == "firing" and order.index(a.severity) >= order.index(
            top.get(a.cluster_id, "warning")
        ):
            top[a.cluster_id] = a.severity
    expected = {
        cascades[n]["cluster_id"]: cascades[n]["expected_severity"]
        for n in sim.truth["fast_banked"]
    }
    assert top == expected
    resolved = {a.cluster_id for a in d.alerts if a.status == "resolved"}
    assert resolved == set(expected)


def test_simulate_then_replay_from_the_command_line(tmp_path: Path) -> None:
    events, bank = tmp_path / "e.jsonl", tmp_path / "b.csv"
    run = [sys.executable, "-m", "streams.cli"]
    r = subprocess.run(
        [*run, "simulate", "--out", str(events), "--bank-out", str(bank), "--minutes", "10"],
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [*run, "replay", str(events), "--bank", str(bank)], capture_output=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    alerts = [orjson.loads(x) for x in r.stdout.splitlines()]
    assert alerts and all(a["match"]["bank"] for a in alerts)
