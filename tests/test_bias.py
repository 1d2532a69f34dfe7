"""benchmarks/bias.py: the per-family signed summary, one shipped run, and its input checks."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bias  # noqa: E402

RUN = ROOT / "docs" / "validation-2026-12-02-quick-epyc-0541-idlep2p"


def test_summary_counts_the_short_rows_and_keeps_the_sign() -> None:
    rows = bias.summarise({("ring", "b"): [-0.1, -0.2, 0.3], ("cfg", "a"): [0.05]})
    assert [(r["family"], r["model"], r["rows"], r["short"]) for r in rows] == \
        [("cfg", "a", 1, 0), ("ring", "b", 3, 2)]
    assert rows[1]["median"] == pytest.approx(-0.1)
    assert rows[1]["mean"] == pytest.approx(0.0)


def test_one_shipped_run_predicted_again_row_by_row() -> None:
    pytest.importorskip("pandas")
    errors = bias.signed_errors([RUN])
    with open(RUN / "validation.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert sum(len(v) for v in errors.values()) == len(table) == 48
    assert {k for k in errors} == {(r["strategy"], r["model"]) for r in table}
    # Each error is the prediction against that row's measurement: finite, and not all alike.
    flat = [x for v in errors.values() for x in v]
    assert all(-1 < x < 10 for x in flat) and len(set(flat)) > 40


def test_a_folder_that_is_not_a_run_is_one_line_and_status_2(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bias.py"), str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "validation.csv" in lines[0] and "Traceback" not in r.stderr
