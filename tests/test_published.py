"""benchmarks/published.py's tables (pandas) on a hand-made CSV, the simulator replaced by a
table of answers: calibration, errors, out-of-memory agreement, contests and regret, each
figure worked out by hand below."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("pandas")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import published  # noqa: E402

from sim.errors import UserError  # noqa: E402

CSV = ("set,model,gpu,link,gpus,strategy,pipefusion,ulysses,patches,warmup,resolution,steps,"
       "latency_s\n") + """\
a,pixart-alpha,l40,pcie,1,serial,1,1,1,0,1024,20,4.0
a,pixart-alpha,l40,pcie,2,pipefusion,2,1,auto,1,1024,20,2.0
a,pixart-alpha,l40,pcie,2,ulysses,1,2,,,1024,20,2.5
a,pixart-alpha,l40,pcie,4,pipefusion,4,1,auto,1,1024,20,1.2
a,pixart-alpha,l40,pcie,4,ulysses,1,4,,,1024,20, oom
a,pixart-alpha,l40,pcie,4,ulysses,2,2,,,1024,20,1.1
,pixart-alpha,l40,pcie,2,pipefusion,2,1,auto,1,1024,20,3.0
,pixart-alpha,l40,pcie,2,ulysses,1,2,,,1024,20,OOM
"""
# (set, GPUs, PipeFusion, Ulysses) -> predicted seconds and out of memory; None: refused
ANSWERS = {("a", 2, 2, 1): (2.2, False), ("a", 2, 1, 2): (2.0, False),
           ("a", 4, 4, 1): (1.5, False), ("a", 4, 1, 4): (0.9, True), ("a", 4, 2, 2): None,
           ("b", 2, 2, 1): (1.0, True), ("b", 2, 1, 2): (1.0, False)}


def _fake_predict(calls: list):
    def predict(args):
        calls.append(args)
        group = "a" if args.single_gpu_latency is not None else "b"
        answer = ANSWERS.get((group, args.gpus, args.pipefusion, args.ulysses), "single")
        if answer is None:
            raise UserError("refused")
        latency, oom = (4.0, False) if answer == "single" else answer
        return SimpleNamespace(latency_s=latency, oom=oom,
                               config=SimpleNamespace(label=lambda: "cfg"),
                               metrics=SimpleNamespace(exposed_comm_s=0.0, bubble_fraction=0.0))
    return predict


@pytest.fixture
def rows(tmp_path: Path, monkeypatch):
    path = tmp_path / "b.csv"  # the set of the rows that leave it empty
    path.write_text(CSV)
    calls: list = []
    monkeypatch.setattr(published, "predict", _fake_predict(calls))
    got = published.predict_rows(published.read_rows(path))
    return got, calls


def test_rows_read_with_defaults_and_calibrated_by_their_group(rows) -> None:
    got, calls = rows
    assert list(got["set"]) == ["a"] * 6 + ["b"] * 2
    assert list(got.patches) == ["1", "auto", "auto", "auto", "auto", "auto", "auto", "auto"]
    assert list(got.warmup) == [0, 1, 0, 1, 0, 0, 1, 0] and set(got.ring) == {1}
    assert got.measured_s.isna().tolist() == [False] * 4 + [True] + [False] * 2 + [True]
    # group a by its single-GPU row's 4.0 s; group b has none
    assert [c.single_gpu_latency for c in calls] == [4.0] * 6 + [None] * 2
    assert list(got.error) == [""] * 5 + ["refused"] + [""] * 2


def test_summary_and_contests_by_hand(rows) -> None:
    got, _ = rows
    s = published.summary(got)
    # multi-GPU rows: 7; errors: +10 %, -20 %, +25 % (the others OOM on one side or refused)
    assert (s["rows"], s["scored"], s["refused"]) == (7, 3, 1)
    assert s["median_abs_err"] == pytest.approx(0.2)
    assert s["worst_abs_err"] == pytest.approx(0.25)
    assert s["within_20pct"] == pytest.approx(2 / 3)
    # predicted (not refused): 6; out of memory told apart right in 4 (b's two are misses)
    assert s["oom_agreement"] == pytest.approx(4 / 6)
    # a, 2 GPUs: best pipefusion2 (2.0 s), pick ulysses2 (2.0 s predicted) -> regret 1.25
    # a, 4 GPUs: best ulysses2 x pipefusion2 (1.1 s) but refused; pick pipefusion4 (the
    #   only one predicted to fit) -> regret 1.2 / 1.1
    # b, 2 GPUs: best pipefusion2; pick ulysses2, which ran out of memory -> no regret
    cs = published.contests(got)
    assert list(cs.gpus) == [2, 4, 2] and list(cs.won) == [False, False, False]
    assert cs.regret[:2].tolist() == pytest.approx([1.25, 1.2 / 1.1])
    assert math.isnan(cs.regret[2])
    assert (s["contests"], s["contests_won"], s["picks_oom"]) == (3, 0, 1)
    assert s["geomean_regret"] == pytest.approx(statistics.geometric_mean([1.25, 1.2 / 1.1]))
    assert "contests won 0 of 3" in published.summary_line("x", s)
