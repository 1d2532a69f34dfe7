"""validation.profiling: which collections a grid asks for (the collector itself is mocked)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pandas")

from validation import profiling  # noqa: E402
from validation.grid import Case  # noqa: E402


def test_tensor_cases_get_their_shards_profiled(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(profiling.collect, "main", lambda argv: calls.append(argv) or 0)
    monkeypatch.setattr(profiling, "torchrun", lambda n, argv: None)
    cases = [Case("pixart-tiny", 256, 4, 1, 1, 0),
             Case("pixart-tiny", 256, 4, 2, 1, 0, "tensor"),
             Case("pixart-small", 256, 4, 2, 2, 1, "pipefusion")]
    compute, _ = profiling.ensure_profiles(cases, "cpu", tmp_path, fresh=True, progress=False)
    assert set(compute) == {("pixart-tiny", 1), ("pixart-tiny", 2), ("pixart-small", 2)}

    def shards(model: str, co: str) -> str | None:
        argv = next(a for a in calls if a[a.index("--model") + 1] == model
                    and a[a.index("--co-run") + 1] == co)
        return argv[argv.index("--tensor-shards") + 1] if "--tensor-shards" in argv else None

    # Only the profile the tensor run is predicted from (two processes) times the shards.
    assert shards("pixart-tiny", "1") == "2"
    assert shards("pixart-tiny", "0") is None
    assert shards("pixart-small", "1") is None
