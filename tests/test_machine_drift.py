"""benchmarks/machine_drift.py: the spreads it reports, its input checks, and one tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import machine_drift  # noqa: E402


def test_spreads_are_worked_out_per_process_across_and_overall() -> None:
    per_process = [[0.10, 0.12, 0.11], [0.20, 0.20, 0.20]]
    res = machine_drift.summarise(per_process)
    # within: the first process, (0.12 - 0.10) / 0.11; the second has none
    assert res["within_process"] == pytest.approx(0.02 / 0.11)
    # across: medians 0.11 and 0.20, their median 0.155
    assert res["across_processes"] == pytest.approx(0.09 / 0.155)
    # all: 0.10 .. 0.20 over the median of the six windows, (0.12 + 0.20) / 2
    assert res["all_windows"] == pytest.approx(0.10 / 0.16)
    assert res["median_s"] == pytest.approx(0.16)


@pytest.mark.parametrize("argv, says", [
    (["--processes", "0"], "--processes must be at least 1"),
    (["--model", "no-such-model"], "no-such-model"),
    (["--model", "pixart-tiny", "--resolution", "256", "--tokens", "100000"],
     "more than the"),
])
def test_bad_input_gets_one_line_and_exit_2(argv: list[str], says: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "machine_drift.py"),
                           *argv], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    assert says in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_a_tiny_run_reports_every_window(tmp_path: Path) -> None:
    out = tmp_path / "drift.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "machine_drift.py"),
                           "--model", "pixart-tiny", "--resolution", "256", "--tokens", "64",
                           "--processes", "2", "--windows", "3", "--calls", "2",
                           "--json", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    res = json.loads(out.read_text())
    assert [len(p) for p in res["window_medians_s"]] == [3, 3]
    assert all(w > 0 for p in res["window_medians_s"] for w in p)
    again = machine_drift.summarise(res["window_medians_s"])
    assert res["all_windows"] == pytest.approx(again["all_windows"])
    assert "spread within a process" in done.stdout
