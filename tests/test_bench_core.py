"""``bench/bench_core.py`` refuses a bad ``--stages`` or ``--memory`` while it reads its
arguments: exit 2 and one line saying what is wrong, before the simulation and the runs
(it used to find out after a simulation and, with ``--skip-throughput``, never)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# runs the bench as ``python bench/bench_core.py ARGS`` would, with the simulator replaced by
# one that ends the process with exit 3: an error found after the simulation exits 3, not 2
RUN_WITHOUT_SIMULATION = """
import runpy, sys
import streams.simulate

def simulated(*args, **kwargs):
    print("simulated", file=sys.stderr)
    raise SystemExit(3)

streams.simulate.simulate = simulated
sys.argv = ["bench/bench_core.py", *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_SIMULATION, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,  # a hang's bound, not a speed's
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--stages", "pipeline"],
            "argument --stages: json must be among them (the others' ratios are to it): "
            "json,pipeline",
        ),
        (
            ["--stages", "json,pipelin"],
            "argument --stages: unknown 'pipelin': choose among "
            "json, parse, parse_batch, core, pipeline",
        ),
        # refused even when nothing is run (the old check let this pass, exit 0)
        (
            ["--skip-throughput", "--skip-memory", "--stages", "json,,core"],
            "argument --stages: unknown '': choose among json, parse, parse_batch, core, pipeline",
        ),
        (
            ["--skip-throughput", "--memory", "worker,unbankd", "--unbanked", "100"],
            "argument --memory: unknown 'unbankd': choose among cascade, unbanked, worker",
        ),
    ],
)
def test_a_bad_list_of_names_exits_2_before_the_simulation(args: list[str], message: str) -> None:
    run = bench(*args)
    assert run.returncode == 2, run.stderr
    assert "simulated" not in run.stderr
    assert run.stdout == ""
    # argparse's usage, then one line saying what is wrong
    assert run.stderr.splitlines()[-1] == f"bench_core.py: error: {message}"


def test_the_harness_tells_a_check_after_the_simulation() -> None:
    """Good arguments reach the simulation (exit 3 here): the test above would see an error
    found there, as the old check was."""
    run = bench("--stages", "json,pipeline", "--skip-memory")
    assert run.returncode == 3, run.stderr
    assert run.stderr.splitlines()[-1] == "simulated"
