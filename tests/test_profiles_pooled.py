"""Profiles pooled over processes (``profiles.collect --processes K``): the median process per
shape, the spread recorded, shapes checked, and a real two-process collection."""

from __future__ import annotations

from pathlib import Path

import pytest

from profiles.collect import main
from profiles.pooled import pool, strip_flags
from sim.cost.profile_format import ComputeProfile, Sample
from sim.errors import UserError


def part(times: dict[int, float], ref: float, collect_s: float = 10.0) -> ComputeProfile:
    """One process's profile: a block per q (kv 256) taking ``times[q]`` seconds, with a
    spread of +-10 % around it."""
    rows = [Sample("block", "cross", 2, q, 256, 6, 3, t, 0.9 * t, 0.95 * t, 1.05 * t, 1.1 * t)
            for q, t in times.items()]
    meta = {"model": "pixart-tiny", "dtype": "fp32", "device": "cpu", "repeats": 3,
            "collect_s": collect_s, "reference_op_s": ref}
    return ComputeProfile(meta, rows)


def test_the_median_process_is_kept_per_shape() -> None:
    # Process 3 was fast on q=256 only, process 1 slow on q=128 only: neither decides.
    parts = [part({256: 1.0, 128: 0.9}, 3e-4), part({256: 1.1, 128: 0.6}, 2e-4),
             part({256: 0.7, 128: 0.5}, 4e-4)]
    p = pool(parts)
    got = {s.q_tokens: s for s in p.samples}
    assert got[256].median_s == 1.0 and got[128].median_s == 0.6
    assert got[256].min_s == pytest.approx(0.63) and got[256].max_s == pytest.approx(1.21)
    assert got[256].p25_s == pytest.approx(0.95) and got[256].repeats == 9
    assert p.meta["processes"] == 3 and p.meta["repeats"] == 9
    assert p.meta["collect_s"] == 30.0 and p.meta["reference_op_s"] == 3e-4
    # (1.1 - 0.7) / 1.0 and (0.9 - 0.5) / 0.6: the median of the two.
    assert p.meta["process_spread"] == pytest.approx((0.4 + 0.4 / 0.6) / 2, abs=1e-4)


def test_processes_that_measured_other_shapes_are_refused() -> None:
    with pytest.raises(UserError, match="other shapes"):
        pool([part({256: 1.0}, 1e-4), part({256: 1.0, 128: 0.5}, 1e-4)])


def test_strip_flags_removes_flags_and_their_values() -> None:
    argv = ["--model", "m", "--out", "x.csv", "--processes=3", "--repeats", "7", "--quick"]
    assert strip_flags(argv, ("--out", "--processes", "--repeats")) == [
        "--model", "m", "--quick"]


def test_collection_in_two_processes(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    out = tmp_path / "pooled.csv"
    rc = main(["--model", "pixart-tiny", "--device", "cpu", "--quick", "--resolutions",
               "256", "--patches", "1,2", "--ops", "block", "--no-curve", "--repeats", "4",
               "--processes", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    prof = ComputeProfile.read(out)
    assert prof.meta["processes"] == 2 and "--processes 2" in prof.meta["command"]
    assert prof.meta["process_spread"] >= 0
    assert {(s.q_tokens, s.kv_tokens) for s in prof.select("block")} == {(256, 256),
                                                                          (128, 256)}
    for s in prof.samples:  # the 4 repeats split as 2 per process
        assert s.repeats == 4 and 0 < s.min_s <= s.median_s <= s.max_s


def test_process_factors_and_the_expected_slowest_process() -> None:
    from profiles.pooled import expected_slowest

    parts = [part({256: 1.0, 128: 0.6}, 3e-4), part({256: 1.1, 128: 0.66}, 2e-4),
             part({256: 0.9, 128: 0.54}, 4e-4)]
    assert pool(parts).meta["process_factors"] == [0.9, 1.0, 1.1]
    f = [0.9, 1.0, 1.1]
    # Pairs (0.9, 1.0), (0.9, 1.1), (1.0, 1.1): their maxima 1.0, 1.1, 1.1.
    assert expected_slowest(f, 2) == pytest.approx((1.0 + 1.1 + 1.1) / 3)
    assert expected_slowest(f, 1) == pytest.approx(1.0)  # the mean process
    assert expected_slowest(f, 3) == expected_slowest(f, 8) == 1.1
    assert expected_slowest([], 2) == 1.0
