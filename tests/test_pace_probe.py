"""The pace probe: a run's processes time the profile's own op, and a validation prediction
takes that launch's pace (executor.pace, validation.predict, validation --pace probe)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.cost.probe import reference_block
from sim.cost.profile_format import ComputeProfile
from sim.models import get_model

DATA = Path(__file__).resolve().parents[1] / "profiles" / "data"


@pytest.mark.parametrize("model", ["pixart-tiny", "pixart-small", "sd3-tiny", "flux-tiny"])
def test_every_shipped_profile_has_the_probed_op(model: str) -> None:
    from validation.grid import Case
    from validation.predict import probe_sample

    for path in DATA.glob(f"cpu-*_{model}_fp32*.csv"):
        prof = ComputeProfile.read(path)
        for res in prof.meta["resolutions"]:
            kind, q, kv, heads = reference_block(get_model(model), res)
            s = probe_sample(Case(model, res, 4, 1, 1, 0), prof)
            # The whole image (q = kv = every image token) of the first block kind, all heads.
            assert (s.op, s.variant, s.q_tokens, s.kv_tokens, s.heads) == \
                ("block", kind, q, kv, heads)
            assert q == get_model(model).image_tokens(res)
    # Flux has joint and single blocks: the probe takes the first in sorted order, as the
    # profiler lists them.
    assert reference_block(get_model("flux-tiny"), 256)[0] == "joint"


def test_a_profile_without_the_op_is_one_clear_error() -> None:
    from sim.errors import UserError
    from validation.grid import Case
    from validation.predict import probe_sample

    prof = ComputeProfile.read(next(DATA.glob("cpu-*_pixart-tiny_fp32.csv")))
    with pytest.raises(UserError, match="no whole-image cross block at 1024 px"):
        probe_sample(Case("pixart-tiny", 1024, 4, 1, 1, 0), prof)


def _probe(wall: float, thread: float) -> dict:
    return {"op": "block", "wall_s": wall, "thread_s": thread}


def test_launch_pace_is_the_slowest_rank_on_the_profile_clock() -> None:
    from validation.grid import Case
    from validation.predict import probe_calls, probe_pace, probe_sample

    c = Case("pixart-tiny", 256, 4, 2, 2, 1)
    wall = ComputeProfile.read(next(DATA.glob("cpu-*_pixart-tiny_fp32_co1.csv")))
    wall.meta["clock"] = "wall"  # as validation collects co-run profiles
    ref = probe_sample(c, wall).median_s
    # Rank 0 went at 2x and then 4x the profile's time (mean 3x), rank 1 at the profile's.
    probes = [[_probe(2 * ref, 9.0), _probe(4 * ref, 9.0)], [_probe(ref, 9.0), _probe(ref, 9.0)]]
    assert probe_pace(c, probes, wall) == pytest.approx(3.0, rel=1e-12)
    # A profile on the thread's CPU clock is compared with the probe's CPU time.
    thread = ComputeProfile.read(next(DATA.glob("cpu-*_pixart-tiny_fp32.csv")))
    thread.meta["clock"] = "thread"
    one = Case("pixart-tiny", 256, 4, 1, 1, 0)
    ref1 = probe_sample(one, thread).median_s
    assert probe_pace(one, [[_probe(9.0, 0.5 * ref1), _probe(9.0, 1.5 * ref1)]], thread) == \
        pytest.approx(1.0, rel=1e-12)
    # Calls fill about a quarter of a second at the profile's speed, 3 to 20 of them.
    calls = probe_calls(c, wall)
    assert 3 <= calls <= 20
    assert calls == min(20, max(3, -(-0.25 // ref)))


def test_paced_predictions_scale_compute_and_keep_the_unpaced_one(tmp_path: Path) -> None:
    from validation.grid import Case
    from validation.predict import pace_by_probe, predict_case, probe_sample

    prof = ComputeProfile.read(next(DATA.glob("cpu-*_pixart-tiny_fp32_co1.csv")))
    prof.meta["clock"] = "wall"  # as validation collects co-run profiles: probes' wall_s
    path = prof.write(tmp_path / "co1.csv")
    one = Case("pixart-tiny", 256, 4, 1, 1, 0)
    compute = {(one.model, 1): path, (one.model, 2): path}
    base = predict_case(one, compute, None, "cpu", scale=1.0).latency_s
    # One process: every op is compute, so the latency scales exactly with the pace.
    assert predict_case(one, compute, None, "cpu", scale=1.3).latency_s == \
        pytest.approx(1.3 * base, rel=1e-9)
    two = Case("pixart-tiny", 256, 4, 2, 2, 1)
    ref = probe_sample(two, prof).median_s
    two.predicted = [0.123]
    two.sources = [(compute, None)]
    two.probes = [[[_probe(1.5 * ref, 0), _probe(1.5 * ref, 0)], [_probe(ref, 0)] * 2],
                  [[_probe(0.8 * ref, 0)] * 2, [_probe(0.9 * ref, 0)] * 2]]
    pace_by_probe(two, "cpu")
    assert two.unpaced == [0.123]
    assert two.paces == pytest.approx([1.5, 0.9], rel=1e-12)
    assert two.predicted == pytest.approx(
        [predict_case(two, compute, None, "cpu", scale=p).latency_s for p in (1.5, 0.9)])
    # Two processes: messages are not compute, so a 1.5x pace lengthens the run by less.
    unit = predict_case(two, compute, None, "cpu", scale=1.0).latency_s
    assert unit < two.predicted[0] < 1.5 * unit


def test_a_run_reports_its_probes_before_and_after(capsys, monkeypatch) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from executor.run import main
    from validation.grid import Case
    from validation.predict import probe_sample

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert main(["--model", "pixart-tiny", "--resolution", "256", "--steps", "2",
                 "--pace-probe", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (rank,) = out["pace_probe"]  # one rank: its probe before the runs and after them
    assert len(rank) == 2
    prof = ComputeProfile.read(next(DATA.glob("cpu-*_pixart-tiny_fp32.csv")))
    s = probe_sample(Case("pixart-tiny", 256, 2, 1, 1, 0), prof)
    for p in rank:
        assert (p["op"], p["variant"], p["batch"], p["q_tokens"], p["kv_tokens"],
                p["heads"]) == (s.op, s.variant, s.batch, s.q_tokens, s.kv_tokens, s.heads)
        assert p["calls"] == 3 and p["wall_s"] > 0 and p["thread_s"] > 0
    # Without the flag the summary has no probe.
    assert main(["--model", "pixart-tiny", "--resolution", "256", "--steps", "2",
                 "--json"]) == 0
    assert "pace_probe" not in json.loads(capsys.readouterr().out)
