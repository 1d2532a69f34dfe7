"""benchmarks/bench_serve_executor.py: how one prediction is judged against issue 13's targets."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_serve_executor as bse  # noqa: E402

MEASURED = {"p50": 1.0, "p90": 2.0, "attainment": 0.90}


def test_targets_hold_at_their_bounds_and_fail_just_past_them() -> None:
    # P50 and P90 10 % off, attainment 5 points off: met, at the bounds.
    assert bse._met({"p50": 1.0999, "p90": 1.8001, "attainment": 0.9499}, MEASURED)
    assert bse._met({"p50": 0.9001, "p90": 2.1999, "attainment": 0.8501}, MEASURED)
    # Each figure alone just past its bound misses.
    assert not bse._met({"p50": 1.11, "p90": 2.0, "attainment": 0.90}, MEASURED)
    assert not bse._met({"p50": 1.0, "p90": 1.79, "attainment": 0.90}, MEASURED)
    assert not bse._met({"p50": 1.0, "p90": 2.0, "attainment": 0.8499}, MEASURED)
    assert not bse._met({"p50": 1.0, "p90": 2.0, "attainment": 0.9501}, MEASURED)


def test_a_bound_met_exactly_counts_despite_float_rounding() -> None:
    # 180 of 240 within the SLO simulated against 168 measured: 5 points, which the floats
    # make 5.000000000000004.
    assert 100 * (180 / 240 - 168 / 240) > 5.0
    assert bse._met({"p50": 1.0, "p90": 2.0, "attainment": 180 / 240},
                    {"p50": 1.0, "p90": 2.0, "attainment": 168 / 240})
