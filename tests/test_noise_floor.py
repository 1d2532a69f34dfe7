"""validation.noise and benchmarks/noise_floor.py: a perfect model's errors on a grid's own
launches (the bootstrap), paced and unpaced, and reading past runs' launches."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from validation.noise import Launches, beyond_line, floors, grid_floors, summary_line

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import noise_floor  # noqa: E402

PACED_RUN = ROOT / "docs" / "validation-2026-12-02-quick-epyc-0611-probe-idlep2p"


def test_launches_that_agree_leave_no_error() -> None:
    cases = [Launches("a", "ring", [[1.0, 1.1], [1.0, 1.1], [1.1, 1.0]]),
             Launches("b", "cfg", [[2.0], [2.0], [2.0]])]
    r = floors(cases, paced=False, draws=200)
    assert r["families"]["all"]["worst"] == pytest.approx(0.0, abs=0.05)
    assert r["families"]["cfg"]["worst"] == 0.0
    assert r["families"]["all"]["meets_both"] == 1.0


def test_one_slow_launch_sets_the_share_of_draws_that_miss() -> None:
    # Single runs 1, 1, 2 s: the centre is 1 s, and a draw measures 2 s (error -50 %) when
    # it takes the slow launch at least twice: 7 of 27 equally likely draws.
    r = floors([Launches("x", "tensor", [[1.0], [1.0], [2.0]])], paced=False, draws=6000)
    fam = r["families"]["tensor"]
    assert fam["meets_worst"] == pytest.approx(20 / 27, abs=0.02)
    assert r["rows_p90"] == [{"row": "x", "p90": pytest.approx(0.5)}]


def test_paces_that_explain_the_launches_leave_the_paced_model_no_error() -> None:
    c = Launches("y", "ulysses", [[1.0], [2.0], [1.5]], paces=[1.0, 2.0, 1.5])
    paced = floors([c], paced=True, draws=500)
    unpaced = floors([c], paced=False, draws=500)
    assert paced["paced"] and not unpaced["paced"]
    assert paced["families"]["all"]["worst"] == pytest.approx(0.0, abs=1e-12)
    assert unpaced["families"]["all"]["worst"] > 0.2
    # Asked for paced without every launch's pace, the model is unpaced.
    assert not floors([Launches("z", "cfg", [[1.0]])], paced=True, draws=5)["paced"]


def test_the_same_seed_gives_the_same_floors_and_a_line_for_the_run() -> None:
    cases = [Launches(f"c{i}", "pipefusion", [[1.0 + 0.1 * i], [1.2], [0.9 + 0.05 * i]])
             for i in range(5)]
    assert floors(cases, False, 300, seed=3) == floors(cases, False, 300, seed=3)
    line = summary_line(floors(cases, False, 300))
    assert line.startswith("a perfect model on these launches (unpaced;")
    assert "worst <= 15% in" in line
    with pytest.raises(ValueError):
        floors([Launches("e", "cfg", [])], False)


def test_grid_floors_reads_the_cases_of_a_run() -> None:
    class Case:  # what validation.grid.Case holds of it
        name, family = "pixart-tiny 256px ring2", "ring"
        launches = [[0.1, 0.11], [0.12], [0.1]]
        paces = [1.0, 1.2, 1.0]

    r = grid_floors([Case()], paced=True, draws=50)
    assert r["paced"] and r["families"]["ring"]["rows"] == 1
    # Launches and paces are kept in pairs: a launch with no pace is left out, and an
    # empty list of paces is an unpaced configuration.
    c = Launches.of("x", "cfg", [[1.0], [2.0], [3.0]], [1.0, 2.0])
    assert (c.runs, c.paces) == ([[1.0], [2.0]], [1.0, 2.0])
    assert Launches.of("x", "cfg", [[1.0]], []).paces is None


def test_rows_beyond_their_scatter_are_counted_and_named_largest_excess_first() -> None:
    line = beyond_line(["a", "b", "c", "d"], [0.10, -0.30, 0.02, 0.05], [0.05, 0.1, 0.05, 0.05])
    assert "2 of 4 (about 0 by chance): b -30.0%; a +10.0%" in line
    assert beyond_line(["a"], [0.01], [0.05]).endswith("0 of 1 (about 0 by chance)")
    # Per row in the order given, beside the names.
    r = floors([Launches("x", "cfg", [[1.0], [1.0], [2.0]]),
                Launches("y", "cfg", [[1.0], [1.0], [1.0]])], paced=False, draws=500)
    assert r["names"] == ["x", "y"] and r["p90"] == [pytest.approx(0.5), 0.0]


def test_the_script_sets_each_table_beside_the_errors_of_its_kind() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "noise_floor.py"),
                        str(PACED_RUN), "--draws", "200"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    with open(PACED_RUN / "validation.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    beyond = [ln for ln in r.stdout.splitlines() if "beyond their own" in ln]
    assert len(beyond) == 2  # the unpaced table, then the paced one
    # The paced model's worst row (pixart-tiny 256 px ulysses2, +20.7 %) is named with the
    # paced error; the unpaced table names rows with their unpaced errors.
    worst = max(table, key=lambda t: abs(float(t["rel_err"])))
    assert f"{float(worst['rel_err']):+.1%}" in beyond[1]
    assert f"{float(worst['rel_err_unpaced']):+.1%}" in beyond[0]


def _fake_run(out: Path, latencies: list[list[float]]) -> None:
    out.mkdir()
    cols = ["model", "resolution", "steps", "nproc", "strategy", "patches", "warmup", "pace"]
    with open(out / "validation.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerow(dict(zip(cols, ["pixart-tiny", "256", "6", "2", "ring", "1", "1", "[]"])))
    for r, lat in enumerate(latencies):
        (out / "runs" / f"n2-r{r}").mkdir(parents=True)
        config = {"model": "pixart-tiny", "resolution": [256, 256], "strategy": "ring",
                  "warmup": 1, "patches": 1}
        (out / "runs" / f"n2-r{r}" / "run-0.json").write_text(
            json.dumps({"config": config, "latencies_s": lat}))


def test_a_past_run_is_read_launch_by_launch(tmp_path: Path) -> None:
    _fake_run(tmp_path / "run", [[0.1, 0.12], [0.2], [0.11]])
    cases, rows = noise_floor.read_run(tmp_path / "run")
    assert [r["strategy"] for r in rows] == ["ring"]
    assert [(c.name, c.family, c.runs, c.paces) for c in cases] == [
        ("pixart-tiny 256px ring2", "ring", [[0.1, 0.12], [0.2], [0.11]], None)]


def test_a_shipped_paced_run_scored_both_ways() -> None:
    cases, _ = noise_floor.read_run(PACED_RUN)
    assert len(cases) == 48 and all(len(c.runs) == 3 and len(c.paces) == 3 for c in cases)
    r = floors(cases, paced=True, draws=100)
    assert r["paced"] and r["families"]["all"]["rows"] == 48
    assert set(r["families"]) == {"all", "serial", "pipefusion", "ulysses", "ring", "tensor",
                                  "cfg", "distrifusion"}
    assert 0 < r["families"]["all"]["median"] < r["families"]["all"]["worst"] < 1


@pytest.mark.parametrize("what", ["no_table", "no_runs", "changed"])
def test_bad_folders_are_one_line_and_status_2(tmp_path: Path, what: str) -> None:
    out = tmp_path / "run"
    if what == "no_table":
        out.mkdir()
    else:
        _fake_run(out, [[0.1]])
        if what == "no_runs":
            import shutil

            shutil.rmtree(out / "runs")
        else:
            f = out / "runs" / "n2-r0" / "run-0.json"
            f.write_text(f.read_text().replace('"ring"', '"tensor"'))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "noise_floor.py"), str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert {"no_table": "validation.csv", "no_runs": "runs/",
            "changed": "does not hold"}[what] in lines[0]
