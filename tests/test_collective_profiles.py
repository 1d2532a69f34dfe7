"""Collectives costed from a link profile (issue 11): the rows load and are checked, the engine
takes a profiled collective's time from them (exactly the interpolated measurement when it
runs alone), the lower bounds follow, and collectives the profile did not time keep the
model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sim.bounds import collective_alone_s, latency_lower_bound
from sim.config import ParallelConfig, Workload
from sim.cost.interp import fit_regimes
from sim.cost.link_profile import CollectiveCurve, apply_link_profile
from sim.cost.profile_format import LinkProfile, LinkSample, ProfileError
from sim.engine import collective_call
from sim.evaluate import evaluate
from sim.hardware import GPUS
from sim.models import get_model
from sim.schedule import Collective, OpKind, Tag
from sim.strategies import build_schedule
from sim.topology import build_topology

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "profiles" / "data"
CPU = GPUS["cpu"]
SIZES = [1500 * 4**k for k in range(8)]  # 1.5 kB .. 25 MB, off the powers of two


def power(a: float, b: float):
    """A known answer: t = a * nbytes**b, a straight line in log-log, which the profile's
    monotone log-log interpolation reproduces exactly between the measured sizes."""
    return lambda n: a * n ** b


def row(op: str, n: int, t: float, world: int = 2) -> LinkSample:
    return LinkSample(op, world, n, 9, t, t, t, t, t, n / t, n / t)


def profile(**ops) -> LinkProfile:
    """A gloo loopback profile with p2p at 40 us + 3 GB/s and the given collectives (name ->
    time function of the bytes per rank), measured at every size of ``SIZES``."""
    p2p = [40e-6 + n / 3e9 for n in SIZES]
    samples = [row("p2p", n, t) for n, t in zip(SIZES, p2p)]
    for name, fn in ops.items():
        samples += [row(name, n, fn(n)) for n in SIZES]
    meta = {"backend": "gloo", "link_kind": "loopback", "world_size": 2,
            "fits": {"p2p": fit_regimes(SIZES, p2p)}}
    return LinkProfile(meta, samples, "links.csv")


def workload(model: str = "pixart-tiny", res: int = 256, steps: int = 3) -> Workload:
    return Workload(get_model(model), res, res, steps, "fp32", text_encoder=False, vae=False)


def rows_of(pred, op: str) -> list:
    return [r for r in pred.trace.rows if r.op == op]


# ---- loading and checking ---------------------------------------------------------------------

@pytest.mark.parametrize("edit,match", [
    (lambda t: t.replace("\nall_to_all,", "\nall_too_all,", 1), "unknown op 'all_too_all'"),
    (lambda t: t.replace("\nall_to_all,2,6000,", "\nall_to_all,2,1500,", 1),
     "all_to_all at 1500 bytes is measured twice"),
    (lambda t: t.replace("\nall_to_all,2,6000,", "\nall_to_all,4,4096,", 1),
     "all_to_all over 4 ranks beside rows over 2"),
    (lambda t: t.replace("\nall_to_all,2,", "\nall_to_all,1,"), "a collective over 1 rank"),
    (lambda t: t.replace("\nring_kv_async,2,1500,9,", "\nring_kv_async,2,1500,9,nan"),
     "column 'median_s'"),
])
def test_bad_collective_rows_refuse_the_profile(tmp_path: Path, edit, match: str) -> None:
    path = profile(all_to_all=power(1e-6, 0.5), ring_kv_async=power(2e-6, 0.5)).write(
        tmp_path / "links.csv")
    LinkProfile.read(path)  # as written, it loads
    path.write_text(edit(path.read_text()))
    with pytest.raises(ProfileError, match=match) as exc:
        LinkProfile.read(path)
    assert f"{path} line " in str(exc.value)  # the line is named


def test_bad_collective_row_is_one_error_line_on_the_command_line(tmp_path: Path,
                                                                  capsys) -> None:
    from sim import predict
    from sim.cli import run_main

    path = profile(all_to_all=power(1e-6, 0.5)).write(tmp_path / "links.csv")
    path.write_text(path.read_text().replace("\nall_to_all,2,6000,", "\nall_to_all,2,1500,"))
    with pytest.raises(SystemExit) as exc:
        run_main(predict.main, ["--model", "pixart-tiny", "--gpu", "cpu", "--gpus", "2",
                                "--resolution", "256", "--steps", "3", "--ulysses", "2",
                                "--link-profile", str(path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "measured twice" in err


def test_collective_table_and_curve() -> None:
    fn = power(3e-6, 0.4)
    prof = profile(all_gather=fn)
    world, table = prof.collective_table("all_gather")
    assert world == 2 and [n for n, _ in table] == SIZES
    assert prof.collective_table("all_reduce") is None
    assert prof.collective_table("p2p") is None  # not a collective
    curve = CollectiveCurve(world, table, "test")
    assert curve(12345) == pytest.approx(fn(12345), rel=1e-9)  # interpolated
    assert curve(10) == pytest.approx(fn(SIZES[0]), rel=1e-9)  # below: the smallest size's
    big = 4 * SIZES[-1]  # beyond: bandwidth-bound, in proportion to the bytes
    assert curve(big) == pytest.approx(fn(SIZES[-1]) * 4, rel=1e-9)


def test_collectives_are_costed_from_the_mean_where_the_profile_has_one(tmp_path: Path
                                                                        ) -> None:
    """A call made many times costs the sum of its calls, whose expectation is the mean: the
    table (and so the engine) takes ``mean_s`` when every row of the op has one, the median
    otherwise (profiles older than the column); the column survives a write and a read."""
    med, mean = power(1e-6, 0.5), power(3e-6, 0.5)  # a long tail: the mean far above
    prof = profile(all_to_all=med, all_reduce=med)
    prof.samples = [dataclasses.replace(s, mean_s=mean(s.nbytes))
                    if s.op == "all_to_all" else s for s in prof.samples]
    back = LinkProfile.read(prof.write(tmp_path / "links.csv"))
    for p in (prof, back):
        assert [t for _, t in p.collective_table("all_to_all")[1]] == pytest.approx(
            [mean(n) for n in SIZES], rel=1e-5)
        assert [t for _, t in p.collective_table("all_reduce")[1]] == pytest.approx(
            [med(n) for n in SIZES], rel=1e-5)
    n = 3 * SIZES[2]
    topo = apply_link_profile(build_topology(CPU, 2, "pcie"), back)
    assert collective_call(topo, OpKind.ALL_TO_ALL, [0, 1], n)[2] > 2 * med(n)
    # One row without a mean: the op falls back to the median everywhere (no mixed curve).
    text = (tmp_path / "links.csv").read_text().splitlines()
    i = next(i for i, ln in enumerate(text) if ln.startswith("all_to_all,"))
    text[i] = text[i].rsplit(",", 1)[0] + ","
    (tmp_path / "blank.csv").write_text("\n".join(text) + "\n")
    assert [t for _, t in LinkProfile.read(tmp_path / "blank.csv").collective_table(
        "all_to_all")[1]] == pytest.approx([med(n) for n in SIZES], rel=1e-5)


def test_profiles_without_the_mean_column_load_and_a_bad_mean_is_refused(tmp_path: Path
                                                                         ) -> None:
    path = profile(all_gather=power(1e-6, 0.5)).write(tmp_path / "links.csv")
    lines = path.read_text().splitlines()
    assert lines[1].endswith(",mean_s")
    old = [lines[0]] + [ln.rsplit(",", 1)[0] for ln in lines[1:]]  # as written before
    path.write_text("\n".join(old) + "\n")
    prof = LinkProfile.read(path)
    assert all(s.mean_s is None for s in prof.samples)
    assert prof.collective_table("all_gather") is not None
    for bad, why in (("nan", "not a finite number"), ("-0.001", "non-positive"),
                     ("soon", "not a number")):
        path.write_text("\n".join(lines[:2] + [lines[2].rsplit(",", 1)[0] + "," + bad]
                                  + lines[3:]) + "\n")
        with pytest.raises(ProfileError, match=f"line 3[,:] column 'mean_s'.*{why}"):
            LinkProfile.read(path)


# ---- the engine ------------------------------------------------------------------------------

def test_profiled_all_to_all_takes_the_interpolated_measurement() -> None:
    """Ulysses' all-to-alls last, in the simulated trace, exactly count x the profile's
    interpolated time at their size; the prediction moves accordingly."""
    fn = power(2e-6, 0.5)  # far slower than the p2p fit would make them
    wl = workload()
    cfg = ParallelConfig(gpus=2, ulysses=2)
    topo = build_topology(CPU, 2, "pcie")
    plain = evaluate(wl, cfg, CPU, apply_link_profile(topo, profile()), exact=True)
    measured = evaluate(wl, cfg, CPU, apply_link_profile(topo, profile(all_to_all=fn)),
                        exact=True)
    ops = {(r, o.tag): o for r, ops in enumerate(build_schedule(wl, cfg).ranks) for o in ops
           if isinstance(o, Collective)}
    rows = rows_of(measured, OpKind.ALL_TO_ALL)
    assert rows
    sizes = set()
    for r in rows:
        op = ops[(r.rank, Tag(r.tag, r.step, r.patch, r.layer_first))]
        sizes.add(op.nbytes)
        assert SIZES[0] < op.nbytes < SIZES[-1] and op.nbytes not in SIZES
        assert r.duration_s == pytest.approx(op.count * fn(op.nbytes), rel=1e-9)
    assert sizes
    before = sum(r.duration_s for r in rows_of(plain, OpKind.ALL_TO_ALL))
    after = sum(r.duration_s for r in rows)
    assert after > 2 * before
    assert measured.latency_s - plain.latency_s == pytest.approx(
        (after - before) / 2, rel=0.05)  # each rank waits its own copy of every call


def test_asynchronous_collectives_take_the_busy_timing_when_there_is_one() -> None:
    idle, busy = power(1e-6, 0.5), power(5e-6, 0.5)
    topo = build_topology(CPU, 2, "pcie")
    op = Collective(OpKind.RING_KV, (0, 1), 300_000, Tag("ring", 0, 0, 0), asynchronous=True)
    both = apply_link_profile(topo, profile(ring_kv=idle, ring_kv_async=busy))
    assert collective_alone_s(op, both) == pytest.approx(busy(300_000), rel=1e-9)
    only_idle = apply_link_profile(topo, profile(ring_kv=idle))
    assert collective_alone_s(op, only_idle) == pytest.approx(idle(300_000), rel=1e-9)
    blocking = Collective(OpKind.RING_KV, (0, 1), 300_000, Tag("ring", 0, 0, 0))
    assert collective_alone_s(blocking, both) == pytest.approx(idle(300_000), rel=1e-9)


def test_unprofiled_collectives_and_other_group_sizes_keep_the_model() -> None:
    topo = build_topology(CPU, 4, "pcie")
    base = apply_link_profile(topo, profile())
    prof = apply_link_profile(topo, profile(all_reduce=power(1e-6, 0.5)))
    for kind, group in ((OpKind.ALL_GATHER, (0, 1)),  # not timed
                        (OpKind.ALL_REDUCE, (0, 1, 2, 3))):  # timed at 2 ranks, not 4
        assert collective_call(prof, kind, group, 1e5) == collective_call(base, kind, group,
                                                                          1e5)
    pairs, per_flow, latency = collective_call(prof, OpKind.ALL_REDUCE, (0, 1), 1e5)
    assert per_flow / prof.route_bandwidth(0, 1) + latency == pytest.approx(
        power(1e-6, 0.5)(1e5), rel=1e-9)


def test_measured_time_below_the_wire_time_is_kept() -> None:
    """A measurement faster than the p2p fit's wire time still costs the measured time alone
    (the flows carry fewer bytes), not the wire time."""
    def fast(n: float) -> float:  # ten times the p2p fit's rate
        return 1e-6 + n / 30e9

    prof = profile(all_gather=fast)
    topo = apply_link_profile(build_topology(CPU, 2, "pcie"), prof)
    n = 4 << 20
    op = Collective(OpKind.ALL_GATHER, (0, 1), n, Tag("cfg", 0, 0, -1))
    expected = CollectiveCurve(*prof.collective_table("all_gather"), "test")(n)
    assert expected == pytest.approx(fast(n), rel=0.01)
    assert expected < n / topo.route_bandwidth(0, 1)  # faster than the wire would allow
    assert collective_alone_s(op, topo) == pytest.approx(expected, rel=1e-9)


def test_lower_bound_stays_below_the_profiled_prediction() -> None:
    wl = workload(steps=4)
    topo = apply_link_profile(build_topology(CPU, 2, "pcie"),
                              profile(all_reduce=power(3e-6, 0.5), all_to_all=power(2e-6, 0.5),
                                      all_gather=power(2e-6, 0.5)))
    for cfg in (ParallelConfig(gpus=2, tensor=2), ParallelConfig(gpus=2, ulysses=2),
                ParallelConfig(gpus=2, cfg=2)):
        bound, _ = latency_lower_bound(wl, cfg, CPU, topo)
        pred = evaluate(wl, cfg, CPU, topo)
        assert 0 < bound <= pred.latency_s * (1 + 1e-9)


def test_shipped_collective_profile_prices_every_strategy() -> None:
    """The CPU link profile shipped with collectives holds all four, idle and busy, and a
    prediction of each collective strategy from it uses them."""
    path = next(DATA.glob("links_gloo_loopback_w2_busy_cpu-intel-*.csv"))
    prof = LinkProfile.read(path)
    names = {s.op for s in prof.samples}
    for kind in ("all_reduce", "all_gather", "all_to_all", "ring_kv"):
        assert {kind, kind + "_async"} <= names
    topo = apply_link_profile(build_topology(CPU, 2, "pcie"), prof)
    plain = apply_link_profile(build_topology(CPU, 2, "pcie"),
                               LinkProfile(prof.meta, prof.select("p2p"), "p2p only"))
    wl = workload()
    for degrees in (dict(ulysses=2), dict(ring=2), dict(tensor=2), dict(cfg=2),
                    dict(distrifusion=2, warmup=1)):
        cfg = ParallelConfig(gpus=2, **degrees)
        assert evaluate(wl, cfg, CPU, topo).latency_s != evaluate(wl, cfg, CPU,
                                                                  plain).latency_s
