"""validation.profiling: which collections a grid asks for (the collector itself is mocked)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("pandas")

from validation import profiling  # noqa: E402
from validation.grid import Case  # noqa: E402

SHIPPED = (Path(__file__).resolve().parents[1] / "profiles" / "data"
           / "links_gloo_loopback_w2_busy_cpu-amd-epyc-t1.csv")


def fake_torchrun(launches: list[list[str]]):
    """A ``torchrun`` stand-in that records each launch and writes the shipped link profile
    where the launch was told to."""
    def run(n: int, argv: list[str]) -> None:
        launches.append(argv)
        shutil.copy(SHIPPED, argv[argv.index("--out") + 1])
    return run


def test_tensor_cases_get_their_shards_profiled(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(profiling.collect, "main", lambda argv: calls.append(argv) or 0)
    monkeypatch.setattr(profiling, "torchrun", fake_torchrun([]))
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


def test_the_link_profile_is_pooled_over_fresh_launches(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    """Each launch times its share of the calls; the written profile pools them all."""
    from sim.cost.profile_format import LinkProfile

    launches: list[list[str]] = []
    monkeypatch.setattr(profiling.collect, "main", lambda argv: 0)
    monkeypatch.setattr(profiling, "torchrun", fake_torchrun(launches))
    _, link = profiling.ensure_profiles([Case("pixart-tiny", 256, 4, 2, 2, 1)], "cpu",
                                        tmp_path, fresh=True, progress=False)
    assert len(launches) == profiling.LINK_LAUNCHES == 3
    outs = {a[a.index("--out") + 1] for a in launches}
    assert len(outs) == 3 and not any(Path(o).exists() for o in outs)  # temporary parts
    for a in launches:
        share = float(a[a.index("--min-time") + 1])
        assert share == pytest.approx(profiling.LINK_MIN_TIME_S / 3, rel=1e-3)
        assert int(a[a.index("--host-rounds") + 1]) * 3 >= 10  # one launch's rounds, at least
    pooled, one = LinkProfile.read(link), LinkProfile.read(SHIPPED)
    assert pooled.meta["launches"] == 3
    assert [s.repeats for s in pooled.samples] == [3 * s.repeats for s in one.samples]
    assert "pooled" in pooled.meta["command"]
