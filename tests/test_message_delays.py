"""benchmarks/message_delays.py: which messages it times, how, and its input checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pd = pytest.importorskip("pandas")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import message_delays  # noqa: E402

COLS = ["rank", "op", "step", "patch", "layer_first", "layer_last", "start_s", "end_s",
        "nbytes", "peer", "source", "tag"]


def _trace() -> pd.DataFrame:
    rows = [
        # waited for: rank 1 posted its receive at 0.0, rank 0 sent at 1.0, it ended at 1.25
        (1, "recv", 0, -1, 2, 2, 0.0, 1.25, 4096, 0, "measured", "hidden"),
        (0, "send", 0, -1, 2, 2, 1.0, 1.01, 4096, 1, "measured", "hidden"),
        # arrived while its receiver computed (receive posted after the send): left out
        (0, "send", 1, 0, 2, 2, 2.0, 2.01, 4096, 1, "measured", "hidden"),
        (1, "recv", 1, 0, 2, 2, 3.0, 3.05, 4096, 0, "measured", "hidden"),
        # waited for, another size and direction
        (0, "recv", 0, -1, -1, -1, 0.5, 2.5, 16384, 1, "measured", "latent"),
        (1, "send", 0, -1, -1, -1, 2.0, 2.01, 16384, 0, "measured", "latent"),
        (0, "blocks", 0, -1, 0, 1, 1.1, 1.9, 0, -1, "measured", ""),
    ]
    return pd.DataFrame(rows, columns=COLS)


def test_only_messages_waited_for_count_from_send_start_to_receive_end() -> None:
    got = message_delays.waited_delays(_trace())
    assert got.keys() == {4096, 16384}
    assert got[4096] == pytest.approx([0.25])
    assert got[16384] == pytest.approx([0.5])


def test_summary_over_a_folder_of_traces(tmp_path: Path) -> None:
    (tmp_path / "traces").mkdir()
    for i in range(3):
        _trace().to_csv(tmp_path / "traces" / f"case-r{i}.csv", index=False)
    rows = message_delays.summary([tmp_path])
    assert [(r["nbytes"], r["count"]) for r in rows] == [(4096, 3), (16384, 3)]
    assert rows[0]["median_ms"] == pytest.approx(250.0)
    assert rows[1]["p25_ms"] == pytest.approx(500.0) == rows[1]["p75_ms"]


def test_a_path_without_traces_is_one_line_and_status_2(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "message_delays.py"),
                        str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no traces" in lines[0] and "Traceback" not in r.stderr
