"""benchmarks/collective_context.py: its command line (the measurement needs torchrun and is
run by hand; its numbers are in the README)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sim.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import collective_context  # noqa: E402


def test_defaults_and_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")
    a = collective_context.parse([])
    assert a.reps == [1, 2, 4, 8] and a.ops == ["all_reduce", "all_to_all"]
    assert a.sizes == [128 * 1024, 384 * 1024]
    a = collective_context.parse(["--sizes", "1KiB", "--ops", "all_gather", "--reps", "3"])
    assert (a.sizes, a.ops, a.reps) == ([1024], ["all_gather"], [3])


@pytest.mark.parametrize("args, match", [
    (["--ops", "broadcast"], "--ops"),
    (["--reps", "0"], "--reps"),
    (["--reps", "a"], "--reps"),
    (["--sizes", "lots"], "cannot read size"),
    (["--rounds", "0"], "--rounds"),
])
def test_bad_input(monkeypatch: pytest.MonkeyPatch, args: list[str], match: str) -> None:
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match=match):
        collective_context.parse(args)


def test_outside_torchrun_is_one_line() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "collective_context.py")],
                         capture_output=True, text=True, cwd=ROOT,
                         env={k: v for k, v in os.environ.items() if k != "RANK"})
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "torchrun" in out.stderr
