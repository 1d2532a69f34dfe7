"""validation.compare: measured and simulated traces joined op by op (pandas), checked against
a plain-Python join on real executor traces and on hand-made ones."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pd = pytest.importorskip("pandas")

from sim.config import ParallelConfig, Workload  # noqa: E402
from sim.evaluate import evaluate  # noqa: E402
from sim.hardware import get_gpu  # noqa: E402
from sim.models import get_model  # noqa: E402
from sim.topology import build_topology  # noqa: E402
from sim.trace import Trace, TraceRow  # noqa: E402
from validation.compare import KEY, join_traces, op_error_summary  # noqa: E402

DATA = Path(__file__).parent / "data"
# Executor traces of two processes on this repository's CPU machine, written by
# ``python -m validation --grid smoke --repeats 1`` (pixart-tiny, 256 px, 4 steps, W = 1).
TRACES = {"executor-trace-pixart-tiny-256-ring2.csv": dict(ring=2, patches=1, warmup=1),
          "executor-trace-pixart-tiny-256-pipefusion2-m2.csv":
              dict(pipefusion=2, patches=2, warmup=1)}


def reference_join(measured: Trace, predicted: Trace) -> list[dict]:
    """The join written out by hand: each measured row with the first predicted row of its key."""
    first: dict[tuple, TraceRow] = {}
    for r in predicted.rows:
        first.setdefault(tuple(getattr(r, k) for k in KEY), r)
    out = []
    for r in measured.rows:
        p = first.get(tuple(getattr(r, k) for k in KEY))
        if p is not None:
            m_d, p_d = r.duration_s, p.duration_s
            out.append({**{k: getattr(r, k) for k in KEY}, "measured_s": m_d,
                        "predicted_s": p_d, "rel_err": p_d / m_d - 1 if m_d > 0 else math.nan})
    return out


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k]))
        for k in a)


def _prediction(degrees: dict) -> Trace:
    wl = Workload(get_model("pixart-tiny"), 256, 256, 4, dtype="fp32", text_encoder=False,
                  vae=False)
    gpu = get_gpu("cpu")
    return evaluate(wl, ParallelConfig(2, **degrees), gpu, build_topology(gpu, 2, "pcie")).trace


@pytest.mark.parametrize("name", sorted(TRACES))
def test_join_of_a_real_executor_trace_matches_the_hand_written_join(name: str) -> None:
    measured = Trace.read_csv(DATA / name)
    predicted = _prediction(TRACES[name])
    pairs = join_traces(measured, predicted)
    want = reference_join(measured, predicted)
    assert len(pairs) == len(want) == len(measured.rows)  # every executed op was predicted
    got = pairs.astype(object).to_dict("records")
    assert all(same(g, w) for g, w in zip(got, want))  # row by row, in the measured order
    summary = op_error_summary(pairs)
    assert list(summary.index) == list(dict.fromkeys(w["op"] for w in want))
    for op, s in summary.iterrows():
        mine = [w for w in want if w["op"] == op]
        assert s["count"] == len(mine)
        m = math.fsum(w["measured_s"] for w in mine)
        p = math.fsum(w["predicted_s"] for w in mine)
        assert s["measured_s"] == pytest.approx(m, rel=1e-12)
        assert s["predicted_s"] == pytest.approx(p, rel=1e-12)
        assert s["rel_err"] == pytest.approx(p / m - 1, rel=1e-9, abs=1e-12)


def _row(op: str, step: int, start: float, end: float, rank: int = 0) -> TraceRow:
    return TraceRow(rank, op, step, -1, 0, 27, start, end, 0, -1, "measured", "")


def test_join_keeps_the_first_prediction_drops_the_unpredicted_and_the_instant() -> None:
    measured = Trace([_row("blocks", 1, 0.0, 1.0), _row("blocks", 0, 0.0, 2.0),
                      _row("final", 1, 1.0, 1.0), _row("blocks", 2, 0.0, 1.0),
                      _row("blocks", 0, 0.0, 2.0, rank=1)])
    predicted = Trace([_row("blocks", 0, 0.0, 3.0), _row("blocks", 1, 0.0, 0.5),
                       _row("blocks", 1, 5.0, 9.0), _row("final", 1, 0.5, 0.75),
                       _row("blocks", 0, 0.0, 1.0, rank=1)])
    pairs = join_traces(measured, predicted)
    # the measured order; step 2 has no prediction; the second step-1 prediction is ignored
    assert list(zip(pairs["rank"], pairs.op, pairs.step)) == [
        (0, "blocks", 1), (0, "blocks", 0), (0, "final", 1), (1, "blocks", 0)]
    assert list(pairs.predicted_s) == [0.5, 3.0, 0.25, 1.0]
    assert list(pairs.rel_err[[0, 1, 3]]) == [-0.5, 0.5, -0.5]
    assert math.isnan(pairs.rel_err[2])  # the measured op took no time
    summary = op_error_summary(pairs)
    assert list(summary.index) == ["blocks", "final"]
    assert list(summary["count"]) == [3, 1]
    assert summary.loc["blocks", "rel_err"] == pytest.approx(4.5 / 5 - 1)
    assert summary.loc["final", "rel_err"] == 0.0  # nothing measured: no error to give


def test_docstring_example_runs() -> None:
    import doctest

    import validation.compare

    result = doctest.testmod(validation.compare)
    assert result.attempted > 0 and result.failed == 0
