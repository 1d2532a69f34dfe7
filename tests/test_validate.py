"""validation end to end on the smallest grid: runs, predictions, CSV and report."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")


def test_validate_smoke_grid(tmp_path: Path) -> None:
    out = tmp_path / "val"
    res = subprocess.run([sys.executable, "-m", "validation", "--grid", "smoke",
                          "--repeats", "1", "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "validation.csv")))
    assert [(r["nproc"], r["patches"]) for r in rows] == [("1", "1"), ("2", "2")]
    for r in rows:
        meas, pred = float(r["measured_s"]), float(r["predicted_s"])
        assert meas > 0 and pred > 0
        assert float(r["rel_err"]) == pytest.approx(pred / meas - 1)
        # Short configurations get several measured runs per launch, sized by the prediction
        # (one launch here), and every one of them is kept.
        assert int(r["measured_runs"]) == max(1, min(10, math.ceil(0.5 / pred)))
        assert float(r["measured_iqr"]) >= 0
        ops = json.loads(r["op_errors"])
        assert {"blocks", "embed", "final", "scheduler_step"} <= set(ops)
        # Every compute time of the prediction came from the measured profile.
        sources = json.loads(r["cost_sources"])
        assert set(sources["blocks"]) <= {"measured", "interpolated"}
    html = (out / "validation.html").read_text()
    assert html.count('class="plotly-graph-div"') == 4
    from tests.test_reports import CHROMIUM, render

    if CHROMIUM is not None:  # Plotly drew every figure of the validation report
        dom, errors = render(out / "validation.html")
        assert errors == [] and dom.count('class="main-svg"') >= 4
    assert "median |error|" in res.stdout
    assert len(list((out / "traces").glob("*.csv"))) == 2
    # Profiles were measured for this validation, next to its results: compute profiles for
    # one and two processes, and messages with the host time they cost on CPU.
    from sim.cost.profile_format import LinkProfile

    compute = sorted(p.name for p in (out / "profiles").glob("*pixart-tiny_fp32*.csv"))
    assert len(compute) == 2 and compute[1].endswith("_co1.csv")
    link = next(p for p in (out / "profiles").glob("links_*.csv"))
    assert LinkProfile.read(link).host_table()


def test_grid_cases_and_runs_per_launch() -> None:
    from validation.grid import grid_cases
    from validation.measure import MAX_RUNS, runs_per_launch

    cases = grid_cases("quick", 2, only=("pixart-tiny",))
    assert {c.model for c in cases} == {"pixart-tiny"}
    # Per resolution: one single-process case, then the grid's six two-process pairs.
    assert [(c.nproc, c.patches, c.warmup) for c in cases[:7]] == [
        (1, 1, 0), (2, 1, 1), (2, 2, 1), (2, 4, 1), (2, 8, 1), (2, 4, 0), (2, 4, 2)]
    assert len(grid_cases("quick", 1)) == 4  # two models x two resolutions, one process
    assert runs_per_launch(2.0) == 1 and runs_per_launch(0.2) == 3
    assert runs_per_launch(1e-4) == MAX_RUNS


def test_mmdit_grid_runs_pipefusion_and_ulysses_predicted_from_shipped_profiles() -> None:
    from validation.grid import grid_cases
    from validation.predict import predict_case

    cases = grid_cases("mmdit", 2, only=("flux-tiny",))
    per_res = [(c.nproc, c.ulysses, c.patches, c.warmup) for c in cases[:6]]
    assert per_res == [(1, 1, 1, 0), (2, 1, 1, 1), (2, 1, 2, 1), (2, 1, 4, 1), (2, 1, 4, 0),
                       (2, 2, 1, 1)]
    ulysses = cases[5]
    assert "--ulysses 2" in ulysses.executor_args(Path("out"), "cpu", 0, 1)
    assert ulysses.slug == "flux-tiny-256-n2-u2-m1-w1" and "U=2" in ulysses.name
    data = Path(__file__).resolve().parents[1] / "profiles" / "data"
    profile = next(data.glob("cpu-*-t1_flux-tiny_fp32_co1.csv"))
    pred = predict_case(ulysses, {("flux-tiny", 2): profile}, None, "cpu")
    ops = {r.op for r in pred.trace.rows}
    assert "all_to_all" in ops and pred.latency_s > 0
    # The double- and single-stream blocks both come from the profile.
    assert pred.cost_sources["blocks"].get("roofline", 0) == 0


def test_validate_range_checks() -> None:
    from sim.errors import UserError
    from validation.cli import main

    for argv, message in ((["--nproc", "0"], "--nproc must be at least 1, got 0"),
                          (["--repeats", "0"], "--repeats must be at least 1, got 0"),
                          (["--warmup-runs", "-1"], "--warmup-runs must be at least 0, got -1")):
        with pytest.raises(UserError, match=message):
            main(argv)


def test_validate_bad_input() -> None:
    res = subprocess.run([sys.executable, "-m", "validation", "--grid", "huge"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "invalid choice" in res.stderr
    assert "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "validation", "--grid", "smoke",
                          "--profile-each-launch", "--profile-dir", "somewhere"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "does not go with --profile-dir" in res.stderr
    res = subprocess.run([sys.executable, "-m", "validation", "--models", "flux-dev"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "not in the quick grid" in res.stderr
