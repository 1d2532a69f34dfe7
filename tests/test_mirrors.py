"""Ranks with equal op lists simulated once (``sim.engine.mirror_classes``): the trace equals
the one of every rank simulated, row for row, for the strategies whose groups mirror."""

from __future__ import annotations

import pytest

from sim.config import ParallelConfig, Workload
from sim.cost.roofline import RooflineCost
from sim.engine import mirror_classes, simulate
from sim.hardware import get_gpu
from sim.host import HostModel
from sim.models import get_model
from sim.strategies import build_schedule
from sim.topology import build_topology

CASES = [
    ("pixart", "l20", "pcie", 8, dict(ulysses=8)),
    ("pixart", "l20", "pcie", 8, dict(ring=4, cfg=2)),
    ("pixart", "l20", "pcie", 8, dict(distrifusion=8)),  # asynchronous gathers, no slowdown
    ("pixart", "a100-sxm-80g", "nvlink", 8, dict(ring=8)),  # asynchronous with slowdown
    ("pixart", "a100-sxm-80g", "nvlink", 4, dict(distrifusion=4)),
    ("pixart", "a100-sxm-80g", "nvlink", 8, dict(cfg=2, ulysses=4)),
    ("sd3", "h100-sxm", "nvlink", 8, dict(tensor=2, ulysses=4)),
    ("pixart", "l20", "pcie", 4, dict(pipefusion=4)),  # point-to-point: nothing mirrors
    ("pixart", "l20", "pcie", 8, dict(pipefusion=2, ulysses=4)),
]


@pytest.mark.parametrize("model,gpu,link,n,degrees", CASES)
def test_mirrored_trace_equals_the_full_one(model, gpu, link, n, degrees) -> None:
    wl = Workload(get_model(model), 1024, 1024, 6)
    g = get_gpu(gpu)
    degrees = dict(degrees)
    pf = degrees.pop("pipefusion", 1)
    stale = pf > 1 or degrees.get("distrifusion", 1) > 1
    cfg = ParallelConfig(n, pf, 4 if pf > 1 else 1, 1 if stale else 0, **degrees)
    sched = build_schedule(wl, cfg)
    topo = build_topology(g, n, link)
    host = HostModel(wl.model, g)
    full = simulate(sched, topo, RooflineCost(wl, g), host=host, mirrors=False)
    fast = simulate(sched, topo, RooflineCost(wl, g), host=host)
    # Equal but for the last bit of a sum: events at one instant may run in another order.
    a, b = sorted(fast.rows), sorted(full.rows)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x._replace(start_s=0.0, end_s=0.0) == y._replace(start_s=0.0, end_s=0.0)
        assert (x.start_s, x.end_s) == pytest.approx((y.start_s, y.end_s), rel=1e-12, abs=1e-15)
    assert fast.cpu_ahead == pytest.approx(full.cpu_ahead, rel=1e-12, abs=1e-15)


def test_mirror_classes_leave_out_point_to_point_and_the_decoding_rank() -> None:
    wl = Workload(get_model("pixart"), 512, 512, 4)
    uly = build_schedule(wl, ParallelConfig(8, 1, 1, 0, ulysses=8))
    # Rank 0 decodes the image: its list is longer; ranks 1-7 mirror each other.
    assert mirror_classes(uly.ranks) == {1: [2, 3, 4, 5, 6, 7]}
    pipe = build_schedule(wl, ParallelConfig(4, 4, 4, 1))
    assert mirror_classes(pipe.ranks) == {}
    ring = build_schedule(wl, ParallelConfig(4, 1, 1, 0, ring=4))
    assert mirror_classes(ring.ranks) == {1: [2, 3]}
