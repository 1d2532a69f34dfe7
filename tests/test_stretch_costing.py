"""Blocking collectives costed at the compute a run does between its calls: the link
profile's ``<op>_short`` rows and ``stretch_s``, the interpolation between the two rows
(``sim.cost.link_profile``), the stretch a run has (``sim.stretch``), and predictions taking it
wherever a link profile is applied (validation and ``sim.predict --link-profile``)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from sim.cost.link_profile import blend_tables, collective_curves
from sim.cost.profile_format import SHORT_OPS, LinkProfile, ProfileError

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "docs" / "validation-2026-12-01-quick-epyc-0320" / "profiles"
LINK = RUN / "links_gloo_loopback_w2_busy_cpu-amd-epyc-t1.csv"
COMPUTE = RUN / "cpu-amd-epyc-t1_pixart-tiny_fp32_co1.csv"
SHORT, REFERENCE = 0.7e-3, 6e-3


def with_short_rows(factor: float = 0.25) -> LinkProfile:
    """The 03:20 run's link profile with ``<op>_short`` rows ``factor`` times its blocking
    rows, and the two stretches they followed."""
    prof = LinkProfile.read(LINK)
    assert not any(s.op in SHORT_OPS for s in prof.samples)
    short = [dataclasses.replace(s, op=s.op + "_short", median_s=s.median_s * factor,
                                 mean_s=None if s.mean_s is None else s.mean_s * factor)
             for s in prof.samples if s.op in ("all_reduce", "all_gather", "all_to_all")]
    meta = dict(prof.meta, stretch_s={"short": SHORT, "reference": REFERENCE})
    return LinkProfile(meta, prof.samples + short)


def test_blend_is_geometric_in_the_stretch_and_clamped() -> None:
    short = ((1024, 1e-3), (4096, 2e-3))
    long = ((1024, 4e-3), (4096, 8e-3), (16384, 9e-3))
    st = (1e-3, 16e-3)
    at_short = blend_tables(short, long, st, 1e-3)
    assert [n for n, _ in at_short] == [1024, 4096, 16384]  # the long table's sizes
    assert [t for _, t in at_short] == pytest.approx([1e-3, 2e-3, 9e-3])
    assert blend_tables(short, long, st, 1e-4) == at_short
    assert blend_tables(short, long, st, 1.0) == long
    mid = blend_tables(short, long, st, 4e-3)  # halfway in log scale
    assert [t for _, t in mid] == pytest.approx([2e-3, 4e-3, 9e-3])


def test_stretches_come_from_the_metadata_and_are_checked() -> None:
    assert LinkProfile.read(LINK).stretches() is None  # no short rows: nothing to blend
    prof = with_short_rows()
    assert prof.stretches() == (SHORT, REFERENCE)
    for bad in ({}, {"short": 1e-3}, {"short": 7e-3, "reference": 6e-3}, "x"):
        broken = LinkProfile(dict(prof.meta, stretch_s=bad), prof.samples)
        with pytest.raises(ProfileError, match="stretch_s"):
            broken.stretches()


def test_curves_at_a_stretch() -> None:
    prof = with_short_rows(0.25)
    plain = collective_curves(prof)
    at_short = collective_curves(prof, SHORT)
    at_ref = collective_curves(prof, REFERENCE)
    between = collective_curves(prof, math.sqrt(SHORT * REFERENCE))
    n = 256 * 1024
    for op in ("all_reduce", "all_to_all", "all_gather"):
        assert at_short[op](n) == pytest.approx(0.25 * plain[op](n), rel=1e-6)
        assert at_ref[op](n) == pytest.approx(plain[op](n), rel=1e-6)
        assert between[op](n) == pytest.approx(0.5 * plain[op](n), rel=1e-6)
        # The asynchronous rows are timed as before: no stretch applies to them.
        assert at_short[op + "_async"](n) == plain[op + "_async"](n)
    # A profile without short rows gives its plain curves whatever the stretch.
    old = LinkProfile.read(LINK)
    assert collective_curves(old, SHORT)["all_to_all"](n) == plain["all_to_all"](n)


def test_blocking_stretch_of_a_case() -> None:
    """The compute before each blocking call: a tensor-parallel block's shard split among
    its three all-reduces; none in a PipeFusion run; CFG's whole step per gather."""
    pytest.importorskip("pandas")
    from sim.config import ParallelConfig, Workload
    from sim.cost.profile import ProfileCost
    from sim.cost.profile_format import ComputeProfile
    from sim.hardware import get_gpu
    from sim.models import get_model
    from sim.schedule import Compute, OpKind
    from sim.strategies import build_schedule
    from sim.stretch import blocking_stretch as of_schedule

    gpu = get_gpu("cpu")
    wl = Workload(get_model("pixart-tiny"), 256, 256, 6, dtype="fp32", text_encoder=False,
                  vae=False)
    cost = ProfileCost(wl, gpu, ComputeProfile.read(COMPUTE))

    def blocking_stretch(w: Workload, cfg: ParallelConfig, c: ProfileCost) -> float | None:
        return of_schedule(build_schedule(w, cfg), c)

    tensor = blocking_stretch(wl, ParallelConfig(2, tensor=2), cost)
    shard = cost.compute_time(Compute(OpKind.BLOCKS, 1, -1, (1, 1), wl.tokens, wl.tokens,
                                      wl.model.batch, shard=2))
    assert tensor == pytest.approx(shard / 3, rel=1e-6)
    assert blocking_stretch(wl, ParallelConfig(2, pipefusion=2, patches=2), cost) is None
    cfg = blocking_stretch(wl, ParallelConfig(2, cfg=2), cost)
    assert cfg > 10 * tensor  # a whole step (its blocks) before each gather


def test_predictions_take_the_stretch_where_the_profile_has_short_rows(tmp_path: Path
                                                                       ) -> None:
    pytest.importorskip("pandas")
    from validation.grid import Case
    from validation.predict import predict_case

    link = tmp_path / LINK.name
    with_short_rows(0.25).write(link)
    compute = {("pixart-tiny", 2): COMPUTE}

    def latency(case: Case, stretch: bool) -> float:
        return predict_case(case, compute, link, "cpu", stretch=stretch).latency_s

    tensor = Case("pixart-tiny", 256, 6, 2, 1, 1, "tensor")
    assert latency(tensor, True) < latency(tensor, False)
    assert latency(tensor, False) == pytest.approx(
        predict_case(tensor, compute, LINK, "cpu").latency_s)  # as before the short rows
    pipe = Case("pixart-tiny", 256, 6, 2, 2, 1, "pipefusion")
    assert latency(pipe, True) == latency(pipe, False)


def test_sim_predict_takes_the_stretch_from_a_link_profile(tmp_path: Path) -> None:
    """``sim.predict --link-profile`` costs blocking calls at the run's own stretch, as
    validation does: with short rows a quarter of the plain ones, a tensor-parallel run on
    the profile's machine comes out faster than from the same profile without them, and
    ``--link-profile`` of the plain profile predicts exactly as before."""
    pytest.importorskip("pandas")
    import sim

    link = tmp_path / LINK.name
    with_short_rows(0.25).write(link)

    def latency(profile: Path, **degrees: int) -> float:
        return sim.predict(model="pixart-tiny", gpus=2, gpu="cpu", link="pcie",
                           resolution=256, steps=6, dtype="fp32", text_encoder=False,
                           vae=False, profile=str(COMPUTE), link_profile=str(profile),
                           **degrees).latency_s

    assert latency(link, tensor=2) < 0.99 * latency(LINK, tensor=2)
    # No blocking collective in PipeFusion: the short rows change nothing there.
    assert latency(link, pipefusion=2, patches=2) == latency(LINK, pipefusion=2, patches=2)
