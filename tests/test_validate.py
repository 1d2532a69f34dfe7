"""validation end to end on the smallest grid: runs, predictions, CSV and report."""

from __future__ import annotations

import csv
import json
import math
import shutil
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
    assert [(r["nproc"], r["strategy"], r["patches"]) for r in rows] == [
        ("1", "serial", "1"), ("2", "pipefusion", "2"), ("2", "ring", "1")]
    for r in rows:
        meas, pred = float(r["measured_s"]), float(r["predicted_s"])
        assert meas > 0 and pred > 0
        assert float(r["rel_err"]) == pytest.approx(pred / meas - 1)
        # Short configurations get several measured runs per launch, sized by the prediction
        # (one launch here), and every one of them is kept.
        assert int(r["measured_runs"]) == max(1, min(10, math.ceil(0.5 / pred)))
        assert float(r["measured_iqr"]) >= 0
        # How much of the loop the ranks computed: measured (CPU seconds of the compute
        # threads over the loop) and predicted.
        assert 0 < float(r["cpu_share"]) <= 1.05
        assert 0 < float(r["predicted_busy_share"]) <= 1 + 1e-9
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
    assert len(list((out / "traces").glob("*.csv"))) == 3
    # What the machine's own scatter leaves a perfect model: with one launch each, nothing;
    # and the launches are kept, one file per configuration, for benchmarks/noise_floor.py.
    assert "a perfect model on these launches (unpaced; " in res.stdout
    assert "median |error| 0.0%, worst 0.0%" in res.stdout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import noise_floor

    kept, _ = noise_floor.read_run(out)
    # With one launch there is no scatter to draw from: every row's 90th percentile is 0.
    assert [float(r["noise_p90"]) for r in rows] == [0.0, 0.0, 0.0]
    assert "rows beyond their own launches' scatter" in res.stdout
    assert [len(c.runs) for c in kept] == [1, 1, 1]
    assert [len(c.runs[0]) for c in kept] == [int(r["measured_runs"]) for r in rows]
    # The error of each strategy family, one line each after the summary.
    for family in ("serial", "pipefusion", "ring"):
        assert f"  {family} " in res.stdout
    assert "Error per strategy family" in html
    # The ring run's K,V rotations were measured and predicted op by op, the prediction
    # costing them from the link profile's busy timing of the rotation.
    ring = json.loads(rows[2]["op_errors"])
    assert {"ring_kv_async", "wait", "blocks"} <= set(ring)
    # Profiles were measured for this validation, next to its results: compute profiles for
    # one and two processes, and messages with the host time they cost on CPU.
    from sim.cost.profile_format import LinkProfile

    compute = sorted((out / "profiles").glob("*pixart-tiny_fp32*.csv"))
    assert len(compute) == 2 and compute[1].name.endswith("_co1.csv")
    # The one-process profile on the compute thread's CPU clock, the co-run one on the wall
    # clock the two-process runs are charged on.
    from sim.cost.profile_format import ComputeProfile

    assert [ComputeProfile.read(p).meta["clock"] for p in compute] == ["thread", "wall"]
    link = LinkProfile.read(next(p for p in (out / "profiles").glob("links_*.csv")))
    assert link.host_table()
    assert link.collective_table("ring_kv_async") and link.collective_table("all_gather")


def test_grid_cases_and_runs_per_launch() -> None:
    from validation.grid import grid_cases
    from validation.measure import MAX_RUNS, runs_per_launch

    cases = grid_cases("quick", 2, only=("pixart-tiny",))
    assert {c.model for c in cases} == {"pixart-tiny"}
    # Per resolution: one single-process case, then the grid's six two-process pairs.
    assert [(c.nproc, c.patches, c.warmup) for c in cases[:7]] == [
        (1, 1, 0), (2, 1, 1), (2, 2, 1), (2, 4, 1), (2, 8, 1), (2, 4, 0), (2, 4, 2)]
    # then every other pure strategy on two processes
    assert [(c.strategy, c.nproc) for c in cases[7:12]] == [
        ("ulysses", 2), ("ring", 2), ("tensor", 2), ("cfg", 2), ("distrifusion", 2)]
    assert {c.family for c in cases} == {"serial", "pipefusion", "ulysses", "ring", "tensor",
                                         "cfg", "distrifusion"}
    assert "--ulysses 2" in cases[7].executor_args(Path("o"), "cpu", 0, 1)
    assert cases[11].name == "pixart-tiny 256px distrifusion2 W=1"
    assert len(grid_cases("quick", 1)) == 4  # two models x two resolutions, one process
    assert {c.strategy for c in grid_cases("quick", 4)} == {"pipefusion"}  # CFG is 2 only
    assert runs_per_launch(2.0) == 1 and runs_per_launch(0.2) == 3
    assert runs_per_launch(1e-4) == MAX_RUNS


def test_mmdit_grid_runs_pipefusion_and_ulysses_predicted_from_shipped_profiles() -> None:
    from validation.grid import grid_cases
    from validation.predict import predict_case

    cases = grid_cases("mmdit", 2, only=("flux-tiny",))
    per_res = [(c.nproc, c.strategy, c.patches, c.warmup) for c in cases[:6]]
    assert per_res == [(1, "pipefusion", 1, 0), (2, "pipefusion", 1, 1), (2, "pipefusion", 2, 1),
                       (2, "pipefusion", 4, 1), (2, "pipefusion", 4, 0), (2, "ulysses", 1, 1)]
    ulysses = cases[5]
    assert "--ulysses 2" in ulysses.executor_args(Path("out"), "cpu", 0, 1)
    assert ulysses.slug == "flux-tiny-256-ulysses2-w1" and "ulysses2" in ulysses.name
    data = Path(__file__).resolve().parents[1] / "profiles" / "data"
    profile = next(data.glob("cpu-*-t1_flux-tiny_fp32_co1.csv"))
    pred = predict_case(ulysses, {("flux-tiny", 2): profile}, None, "cpu")
    ops = {r.op for r in pred.trace.rows}
    assert "all_to_all" in ops and pred.latency_s > 0
    # The double- and single-stream blocks both come from the profile.
    assert pred.cost_sources["blocks"].get("roofline", 0) == 0


def test_mmdit_grid_has_the_small_configurations_at_their_own_shapes(monkeypatch, tmp_path):
    from validation import profiling
    from validation.grid import grid_cases, grid_models

    assert grid_models("mmdit") == ("sd3-tiny", "flux-tiny", "sd3-small", "flux-small")
    for name in ("sd3-small", "flux-small"):
        cases = grid_cases("mmdit", 2, only=(name,))
        # One process, PipeFusion at two processes and one sequence-parallel degree, 256 px.
        assert [(c.nproc, c.strategy, c.patches, c.warmup) for c in cases] == [
            (1, "pipefusion", 1, 0), (2, "pipefusion", 2, 1), (2, "pipefusion", 4, 1),
            (2, "ulysses", 1, 1)]
        assert {c.resolution for c in cases} == {256}
        assert {c.family for c in cases} == {"serial", "pipefusion", "ulysses"}
    # Each model is profiled at its own resolutions and patch counts only: a 512 px profile
    # of the small models would cost minutes that no run of the grid uses.
    asked = {}

    def fake_collect(argv: list[str]) -> int:
        flag = {a: b for a, b in zip(argv, argv[1:])}
        asked[(flag["--model"], flag["--co-run"])] = (flag["--resolutions"], flag["--patches"])
        return 0

    monkeypatch.setattr(profiling.collect, "main", fake_collect)
    shipped = (Path(__file__).resolve().parents[1] / "profiles" / "data"
               / "links_gloo_loopback_w2_busy_cpu-amd-epyc-t1.csv")
    # Each link launch writes a profile where it is told to (validation pools them).
    monkeypatch.setattr(profiling, "torchrun", lambda n, argv: shutil.copy(
        shipped, argv[argv.index("--out") + 1]))
    cases = [c for c in grid_cases("mmdit", 2) if c.model in ("sd3-tiny", "sd3-small")]
    compute, _ = profiling.ensure_profiles(cases, "cpu", tmp_path, fresh=True, progress=False)
    assert asked == {("sd3-tiny", "0"): ("256,512", "1,2,4"),
                     ("sd3-tiny", "1"): ("256,512", "1,2,4"),
                     ("sd3-small", "0"): ("256", "1,2,4"), ("sd3-small", "1"): ("256", "1,2,4")}
    assert set(compute) == {(m, n) for m in ("sd3-tiny", "sd3-small") for n in (1, 2)}


def test_predictions_go_at_the_pace_of_the_slowest_process(tmp_path: Path) -> None:
    from sim.cost.profile_format import ComputeProfile
    from validation.grid import Case
    from validation.predict import predict_case

    data = Path(__file__).resolve().parents[1] / "profiles" / "data"
    prof = ComputeProfile.read(next(data.glob("cpu-*-t1_pixart-tiny_fp32_co1.csv")))
    prof.meta["process_factors"] = [0.9, 1.0, 1.2]
    path = prof.write(tmp_path / "pooled.csv")
    one = Case("pixart-tiny", 256, 4, 1, 1, 0)
    two = Case("pixart-tiny", 256, 4, 2, 2, 1)

    def latency(c: Case, pace: str) -> float:
        return predict_case(c, {(c.model, c.nproc): path}, None, "cpu", pace).latency_s

    # One process: every op is compute from the profile, scaled by the mean pace.
    assert latency(one, "slowest") / latency(one, "median") == pytest.approx(31 / 30, rel=1e-9)
    # Two: the expected slower of two, (1.0 + 1.2 + 1.2) / 3, on the compute only.
    ratio = latency(two, "slowest") / latency(two, "median")
    assert 1.0 < ratio <= 3.4 / 3 + 1e-9


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


def test_error_per_strategy_family() -> None:
    from validation.results import family_summary, row_name

    def row(strategy: str, err: float, nproc: int = 2) -> dict:
        return {"model": "pixart-tiny", "resolution": 256, "nproc": nproc, "patches": 1,
                "warmup": 1, "strategy": strategy, "rel_err": err}

    rows = [row("ring", -0.10), row("serial", 0.02, 1), row("ring", 0.04), row("ring", 0.01),
            row("pipefusion", -0.03), row("zigzag", 0.30), row("pipefusion", 0.05),
            row("zigzag", -0.30), row("alpha", 0.5)]
    got = family_summary(rows)
    # FAMILIES order, then the unknown families alphabetically
    assert list(got.index) == ["serial", "pipefusion", "ring", "alpha", "zigzag"]
    assert list(got.configs) == [1, 2, 3, 1, 2]
    # by hand: ring |errors| 0.10, 0.04, 0.01 -> median 0.04; pipefusion 0.03, 0.05 -> 0.04
    assert got.loc["ring", "median"] == pytest.approx(0.04)
    assert got.loc["pipefusion", "median"] == pytest.approx(0.04)
    assert got.loc["zigzag", "median"] == pytest.approx(0.30)
    assert list(got.worst) == pytest.approx([0.02, 0.05, 0.10, 0.5, 0.30])
    # the row of the worst, the first one on a tie (zigzag: +30 % and -30 %)
    assert list(got.worst_row) == [1, 6, 0, 8, 5]
    assert row_name(rows[0]) == "pixart-tiny 256px ring2"
    assert row_name(rows[4]) == "pixart-tiny 256px n=2 M=1 W=1"


def test_run_spread_names_the_widest_row() -> None:
    from validation.results import row_name, run_spread

    def row(strategy: str, iqr: float) -> dict:
        return {"model": "pixart-tiny", "resolution": 256, "nproc": 2, "patches": 1,
                "warmup": 1, "strategy": strategy, "measured_iqr": iqr}

    rows = [row("ring", 0.10), row("tensor", 1.15), row("ulysses", 0.20), row("cfg", 1.15),
            row("pipefusion", 0.05)]
    mid, widest, at = run_spread(rows)
    # by hand: spreads 0.05, 0.10, 0.20, 1.15, 1.15 -> median 0.20; the first of the two widest
    assert mid == pytest.approx(0.20)
    assert widest == pytest.approx(1.15)
    assert at == 1 and row_name(rows[at]) == "pixart-tiny 256px tensor2"
