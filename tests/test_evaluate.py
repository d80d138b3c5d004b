"""Readers, the evaluation loop and `viralwatch evaluate` as a user runs it."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from programs import viralwatch
from shared_data import SHARED, needs

from streams.evaluate import (
    CascadeData,
    Post,
    evaluate,
    parse_seconds,
    parse_times,
    read_casflow,
    read_path,
    read_seismic,
    read_twitter,
    summarize,
)
from streams.policy import PredictionRule

CASCADES = SHARED / "data" / "cascades"
needs_shared = needs(
    CASCADES / "seismic-tweet-reference.csv", "the real cascades and the R reference"
)

CASFLOW_LINE = "c1\tu0\t1464739201\t4\tu0:0 u0/u1:60 u0/u1/u2:300 u0/u3:900"


# -- seismic format ----------------------------------------------------------------


def test_seismic_with_and_without_header() -> None:
    body = "0,500\n30,20\n12,NA\n80,10\n"
    for text in (body, '"relative_time_second","number_of_followers"\n' + body):
        res = read_seismic(text, "x")
        assert not res.rejected
        (c,) = res.cascades
        assert c.final == 3 and c.posts[0].original and c.posts[0].followers == 500
        assert [p.t_s for p in c.posts] == [0.0, 12.0, 30.0, 80.0]  # sorted after the original
        assert c.posts[1].followers is None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("40", "expected 2 comma-separated fields"),
        ("40,1,2", "expected 2 comma-separated fields"),
        ("-5,1", "time must be a number of seconds >= 0"),
        ("nan,1", "time must be a number"),
        ("40,-1", "followers must be a whole number"),
        ("40,2.5", "followers must be a whole number"),
        ("40,many", "followers must be a whole number"),
    ],
)
def test_seismic_bad_rows_are_reported_and_skipped(line: str, reason: str) -> None:
    res = read_seismic(f"t,f\n0,100\n{line}\n60,5\n", "x")
    assert [c.final for c in res.cascades] == [1]
    (bad,) = res.rejected
    assert bad.line == 3 and reason in bad.reason and str(bad).startswith("x:3: ")


def test_seismic_row_before_the_original_is_refused() -> None:
    res = read_seismic("100,5\n50,1\n200,1\n", "x")
    assert res.cascades[0].final == 1
    assert "before the original post" in res.rejected[0].reason


def test_seismic_unreadable_original_refuses_the_cascade() -> None:
    res = read_seismic("t,f\nzero,100\n60,5\n", "x")
    assert res.cascades == ()
    assert res.rejected[-1].line == 0 and "original post" in res.rejected[-1].reason
    empty = read_seismic("\n\n", "y")
    assert empty.cascades == () and "no data rows" in empty.rejected[0].reason


# -- casflow format ----------------------------------------------------------------


def test_casflow_line_makes_a_tree() -> None:
    res = read_casflow(CASFLOW_LINE + "\n", "w.txt")
    assert not res.rejected
    (c,) = res.cascades
    assert (c.name, c.final, c.horizon_s) == ("c1", 3, 86_400.0)
    assert [(p.post_id, p.parent_id) for p in c.posts] == [
        ("u0", None),
        ("u0/u1", "u0"),
        ("u0/u1/u2", "u0/u1"),
        ("u0/u3", "u0"),
    ]
    assert all(p.followers is None for p in c.posts)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("c2\tu0\t1464739201\t2", "expected 5 tab-separated fields"),
        ("c2\tu0\tyesterday\t2\tu0:0 u0/u1:5", "publish_epoch"),
        ("c2\tu0\t1464739201\ttwo\tu0:0 u0/u1:5", "count must be a whole number"),
        ("c2\tu0\t1464739201\t3\tu0:0 u0/u1:5", "count says 3 posts but there are 2"),
        ("c2\tu0\t1464739201\t2\tu0:0 u0/u1", "is not 'u1/.../uk:seconds'"),
        ("c2\tu0\t1464739201\t2\tu0:0 u0/u1:-5", "is not 'u1/.../uk:seconds'"),
        ("c2\tu0\t1464739201\t2\tu0:0 u0//u1:5", "empty user"),
        ("c2\tu0\t1464739201\t2\tu0/u1:5 u0/u2:9", "no root path"),
        ("c2\tu0\t1464739201\t2\tu0:0 u9:4", "second root"),
        ("c2\tu0\t1464739201\t2\tu0:7 u0/u1:9", "not 0"),
        ("\tu0\t1464739201\t1\tu0:0", "empty cascade id"),
    ],
)
def test_casflow_bad_lines_are_refused_whole_and_the_rest_read(line: str, reason: str) -> None:
    res = read_casflow(f"{CASFLOW_LINE}\n{line}\n", "w.txt")
    assert [c.name for c in res.cascades] == ["c1"]
    (bad,) = res.rejected
    assert bad.line == 2 and reason in bad.reason, bad


def test_casflow_duplicate_id_is_refused() -> None:
    res = read_casflow(f"{CASFLOW_LINE}\n{CASFLOW_LINE}\n", "w.txt")
    assert len(res.cascades) == 1 and "appears twice" in res.rejected[0].reason


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_readers_never_crash_on_garbage(text: str) -> None:
    for res in (read_seismic(text, "g"), read_casflow(text, "g"), read_twitter(text, "g")):
        for c in res.cascades:
            assert c.posts and c.posts[0].original
        for bad in res.rejected:
            assert bad.reason


# -- twitter format (the SEISMIC paper's RT<n>.txt) -----------------------------------

TWEETS = "3 2.81946759259\n0 3094580\n12 40\n5 18\n300.5 7\n"


def test_twitter_file_reads_in_time_order() -> None:
    res = read_twitter(TWEETS, "RT1", source="dir/RT1.txt")
    assert not res.rejected
    c = res.cascades[0]
    assert (c.name, c.final, c.horizon_s, c.source) == ("RT1", 3, 7 * 86_400.0, "dir/RT1.txt")
    assert [p.t_s for p in c.posts] == [0.0, 5.0, 12.0, 300.5]
    assert c.posts[0].original and c.posts[0].followers == 3094580
    assert [p.followers for p in c.posts[1:]] == [18, 40, 7]


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("3 x\n0 10\n", 1, "first line must be '<number of retweets> <start day>'"),
        ("two 0.5\n0 10\n", 1, "first line must be"),
        ("2 0.5\n0 10\n4 -3\n9 1\n", 3, "followers must be a whole number >= 0, got '-3'"),
        ("2 0.5\n0 10\n4 3 1\n9 1\n", 3, "expected '<seconds> <followers>', got 3 fields"),
        ("2 0.5\n0 10\n\nsoon 3\n9 1\n", 4, "time must be a number of seconds >= 0"),
        ("2 0.5\n0 10\n4 3\n-9 1\n", 4, "time must be a number of seconds >= 0"),
    ],
)
def test_twitter_malformed_line_names_file_and_line_and_refuses_the_cascade(
    text: str, line: int, reason: str
) -> None:
    res = read_twitter(text, "RT9", source="data/RT9.txt")
    assert res.cascades == ()
    first = res.rejected[0]
    assert (first.source, first.line) == ("data/RT9.txt", line) and reason in first.reason
    assert str(first).startswith(f"data/RT9.txt:{line}: ")
    assert str(res.rejected[-1]).startswith("data/RT9.txt: cascade refused")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "no first line"),
        ("3 0.5\n0 10\n4 3\n", "the first line says 3 retweets, the file has 1 readable"),
        ("1 0.5\n5 10\n6 3\n", "the original tweet (the first post, at 0 s) is missing"),
    ],
)
def test_twitter_file_that_disagrees_with_itself_is_refused(text: str, why: str) -> None:
    res = read_twitter(text, "RT9", source="data/RT9.txt")
    assert res.cascades == () and why in res.rejected[-1].reason


def test_twitter_directory_and_auto_format(tmp_path: Path) -> None:
    d = tmp_path / "cascades"
    d.mkdir()
    (d / "RT2.txt").write_text(TWEETS)
    (d / "RT1.txt").write_text("1 0.5\n0 10\n7 3\n")
    (d / "RT3.txt").write_text("2 0.5\n0 10\n7 3\n")  # says 2, holds 1
    res = read_path(d)
    assert [c.name for c in res.cascades] == ["RT1", "RT2"]
    assert [str(r) for r in res.rejected] == [
        f"{d / 'RT3.txt'}: cascade refused: the first line says 2 retweets, the file has 1 readable"
    ]
    assert read_path(d / "RT2.txt", "twitter").cascades[0].final == 3
    # the same file forced as another format is not silently misread
    assert read_path(d / "RT2.txt", "seismic").cascades == ()


@needs_shared
def test_the_twitter_data_set_reads_whole() -> None:
    res = read_path(CASCADES / "twitter-seismic")
    assert len(res.cascades) == 638 and not res.rejected
    assert min(c.final for c in res.cascades) >= 2002


def test_unreadable_file_is_a_rejection(tmp_path: Path) -> None:
    res = read_path(tmp_path / "missing.csv")
    assert res.cascades == () and res.rejected[0].line == 0
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert read_path(binary).rejected


def test_format_is_detected_from_content(tmp_path: Path) -> None:
    cas = tmp_path / "w.txt"
    cas.write_text(CASFLOW_LINE + "\n")
    sei = tmp_path / "t.data"
    sei.write_text("0,10\n5,3\n")
    assert read_path(cas).cascades[0].name == "c1"
    assert read_path(sei).cascades[0].name == "t"


def test_durations() -> None:
    assert parse_times("2h,30m,2h") == (1800.0, 7200.0)
    for bad in ("", "0", "-1h", "soon", "1y", "infh"):
        with pytest.raises(ValueError):
            parse_times(bad) if bad == "" else parse_seconds(bad)


# -- evaluation loop ---------------------------------------------------------------


def toy(name: str, n: int, spacing: float) -> CascadeData:
    posts = [Post(0.0, 1000, original=True)]
    posts += [Post(i * spacing, 100) for i in range(1, n + 1)]
    return CascadeData(name, tuple(posts), 86_400.0, "toy")


def test_evaluation_rows_and_summary() -> None:
    cascades = [toy("a", 40, 60.0), toy("b", 200, 30.0), toy("c", 10, 900.0)]
    cascades += [toy(f"d{i}", 20 + 9 * i, 45.0 + 5 * i) for i in range(8)]
    ev = evaluate(cascades, (3600.0, 7200.0), split="loo", step_s=1800.0, boosted=False)
    # every model but the boosted ones (left out: they would take most of the time)
    assert len(ev.rows) == len(cascades) * 2 * 11
    for r in ev.rows:
        d = r.to_dict()
        assert set(d) == {
            "cascade", "obs_seconds", "observed", "infectiousness",
            "predicted", "low", "high", "final", "model",
        }  # fmt: skip
        assert d["observed"] <= d["final"]
        orjson.dumps(d)  # JSON-able, infinities included
    a1h = next(
        r for r in ev.rows if r.cascade == "a" and r.obs_seconds == 3600 and r.model == "best"
    )
    assert (a1h.observed, a1h.final) == (40, 40)
    # leave-one-out: each cascade has its own parameters, fitted without it
    assert len(ev.fitted) == len(cascades) and ev.fold_of["a"] != ev.fold_of["b"]
    assert ev.fitted[ev.fold_of["a"]].calibration.cascades == len(cascades) - 1
    assert "a" not in ev.fitted[ev.fold_of["a"]].trained_on
    s = summarize(ev, PredictionRule("critical", size=150, low=100, min_observed=1))
    assert set(s["mdape"]) == {
        "seismic", "tideh", "best", "rich", "best|sel", "rich|sel", "sized|sel",
        "amplified", "log-linear", "floor", "observed",
    }  # fmt: skip
    assert set(s["coverage"]) == {
        "seismic", "best", "rich", "best|sel", "rich|sel", "sized|sel", "amplified",
        "log-linear",
    }  # fmt: skip
    # the sized law is fitted at the observation times, on the same training cascades
    assert ev.fitted[ev.fold_of["a"]].sized is not None
    assert ev.fitted[ev.fold_of["a"]].sized.ages_s == (3600.0, 7200.0)
    assert s["alert"]["best"]["large"] == 1
    orjson.dumps(s)


def test_evaluation_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        evaluate([], (3600.0,))
    with pytest.raises(ValueError):
        evaluate([toy("a", 5, 10.0)], (3600.0,), split="magic")


# -- the command ---------------------------------------------------------------------


def test_cli_json_lines_summary_and_plot(tmp_path: Path) -> None:
    cas = tmp_path / "weibo.txt"
    lines = [CASFLOW_LINE]
    for k in range(9):
        paths = " ".join(["r:0"] + [f"r/u{i}:{i * (40 + 20 * k)}" for i in range(1, 60)])
        lines.append(f"k{k}\tr\t1464739201\t60\t{paths}")
    lines.append("broken line")
    cas.write_text("\n".join(lines) + "\n")
    png = tmp_path / "out.png"
    r = viralwatch(
        "evaluate", "--format", "casflow", str(cas), "--at", "1h,2h",
        "--json", "--split", "loo", "--plot", str(png),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = [orjson.loads(line) for line in r.stdout.splitlines()]
    rows, summary = out[:-1], out[-1]["summary"]
    assert len(rows) == 10 * 2 and {row["model"] for row in rows} == {"best"}
    assert {row["obs_seconds"] for row in rows} == {3600, 7200}
    assert summary["cascades"] == 10 and summary["rejected"] == 1
    assert b"weibo.txt:11: expected 5 tab-separated fields" in r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_text_output_and_errors(tmp_path: Path) -> None:
    sei = tmp_path / "one.csv"
    sei.write_text("relative_time_second,number_of_followers\n0,300\n" + "".join(
        f"{i * 45},{50 + i}\n" for i in range(1, 80)
    ))  # fmt: skip
    r = viralwatch("evaluate", str(sei), "--model", "seismic")
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    assert "median absolute percentage error" in text and "one" in text
    assert viralwatch("evaluate", str(sei), "--at", "soon").returncode == 2
    assert viralwatch("evaluate", str(sei), "--split", "all").returncode == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("t,f\nx,1\n")
    refused = viralwatch("evaluate", str(sei), str(bad))
    assert refused.returncode == 1 and b"bad.csv: cascade refused" in refused.stderr
    assert viralwatch("evaluate", str(bad)).returncode == 2


@needs_shared
def test_cli_seismic_rows_are_the_r_reference() -> None:
    import csv

    r = viralwatch(
        "evaluate", "--format", "seismic", str(CASCADES / "seismic-tweet.csv"),
        "--at", "1h,2h,6h", "--model", "seismic", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = [orjson.loads(line) for line in r.stdout.splitlines()][:-1]
    with (CASCADES / "seismic-tweet-reference.csv").open() as fh:
        ref = list(csv.DictReader(fh))
    for row, want in zip(rows, ref, strict=True):
        assert row["cascade"] == want["cascade"] == "seismic-tweet"
        assert row["obs_seconds"] == int(want["obs_seconds"])
        assert row["observed"] == int(want["observed"]) and row["final"] == int(want["final"])
        assert math.isclose(row["infectiousness"], float(want["infectiousness"]), rel_tol=1e-6)
        assert math.isclose(row["predicted"], float(want["seismic_pred"]), rel_tol=1e-6)
