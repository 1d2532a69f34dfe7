"""The planner's latency lower bounds (``sim.bounds``): never above the simulated latency, on a
grid of models, clusters, transports, host models and every candidate's strategy; and the
pruned search shows exactly what an exhaustive one shows."""

from __future__ import annotations

import pytest

from sim import search
from sim.bounds import (
    IDENTITY,
    collective_alone_s,
    collective_min_s,
    latency_lower_bound,
    lower_bounds,
    repeat,
    then,
)
from sim.config import ParallelConfig, Workload
from sim.cost import CostSpec
from sim.evaluate import evaluate
from sim.hardware import get_gpu
from sim.models import get_model
from sim.schedule import Collective, OpKind, Tag
from sim.topology import build_topology

TOL = 1e-9  # the bound's sums and the engine's event times round differently

# (model, resolution, steps, gpu, GPUs, link, nodes, topology options, warmups, stride): every
# ``stride``-th candidate of the search is simulated and compared with its bound.
GRID = [
    ("pixart", 1024, 6, "l40", 8, "pcie", 1, {}, [0, 1, 2], 2),
    ("pixart", 512, 5, "rtx4090", 4, "pcie", 1, {}, [0, 2], 1),  # no P2P: all SHM
    ("sd3", 1024, 5, "l40", 8, "pcie", 1, {"host_cpu": "amd", "nccl": "2.22"}, [0, 1], 2),
    ("hunyuan-dit", 1024, 4, "a100-sxm-80g", 8, "nvlink", 1, {}, [0, 1], 3),  # long skips
    ("flux", 1024, 5, "h100-sxm", 16, "nvlink", 2, {}, [0, 1, 2], 4),
    ("flux", 512, 4, "l40", 8, "pcie", 2, {"inter_node": "eth-100g"}, [1], 2),
    ("pixart", 256, 4, "cpu", 2, "pcie", 1, {}, [0, 1, 4], 1),  # no host clock (gloo)
]


def _setting(model: str, res: int, steps: int, gpu_name: str, n: int, link: str, nodes: int,
             opts: dict):
    gpu = get_gpu(gpu_name)
    wl = Workload(get_model(model), res, res, steps)
    return wl, gpu, build_topology(gpu, n, link, nodes, **opts)


@pytest.mark.parametrize("model,res,steps,gpu_name,n,link,nodes,opts,warmups,stride", GRID)
def test_bound_never_exceeds_the_simulated_latency(model, res, steps, gpu_name, n, link, nodes,
                                                   opts, warmups, stride) -> None:
    wl, gpu, topo = _setting(model, res, steps, gpu_name, n, link, nodes, opts)
    cost = CostSpec().build(wl, gpu)
    cands = search.candidates(wl, n, warmups)
    bounds = lower_bounds(wl, cands, gpu, topo, cost)
    checked = 0
    for cfg, (lb, _) in list(zip(cands, bounds))[::stride]:
        lat = evaluate(wl, cfg, gpu, topo, cost, fast=True).latency_s
        assert 0 < lb <= lat * (1 + TOL), (cfg.label(), lb, lat)
        checked += 1
    assert checked >= len(cands) // stride


def test_bound_holds_for_batched_images_and_calibrated_costs() -> None:
    gpu = get_gpu("l40")
    topo = build_topology(gpu, 4, "pcie")
    wl = Workload(get_model("sd3"), 1024, 1024, 5, images=3)
    for cfg in (ParallelConfig(4, 4, 8, 1), ParallelConfig(4, ulysses=2, ring=2),
                ParallelConfig(4, distrifusion=4, warmup=1), ParallelConfig(4, 2, 4, 0, tensor=2)):
        lb, _ = latency_lower_bound(wl, cfg, gpu, topo, scale=0.37)
        assert lb <= evaluate(wl, cfg, gpu, topo, scale=0.37, fast=True).latency_s * (1 + TOL)


def test_bound_is_tight_where_nothing_overlaps() -> None:
    """A serial run and pure sequence or tensor parallelism have no pipeline and no other
    traffic: the bound is their latency (what makes pruning effective), not a fraction."""
    gpu = get_gpu("l40")
    topo = build_topology(gpu, 4, "pcie")
    wl = Workload(get_model("pixart"), 1024, 1024, 6)
    for cfg in (ParallelConfig(1), ParallelConfig(4, ulysses=4), ParallelConfig(4, ring=4),
                ParallelConfig(2, tensor=2)):
        lb, _ = latency_lower_bound(wl, cfg, gpu, topo)
        lat = evaluate(wl, cfg, gpu, topo, fast=True).latency_s
        assert lb == pytest.approx(lat, rel=1e-6), cfg.label()


def test_a_collective_is_bounded_by_its_busiest_edge() -> None:
    """Eight GPUs through host memory: each GPU's PCIe link carries its seven flows out and
    seven in, so the all-to-all lasts at least fourteen flows over that link, far above one
    flow over the narrowest route."""
    gpu = get_gpu("l40")
    topo = build_topology(gpu, 8, "pcie")
    op = Collective(OpKind.ALL_TO_ALL, tuple(range(8)), 8 << 20, Tag("ulysses", 0, 0, 0))
    assert collective_min_s(op, topo) > 5 * collective_alone_s(op, topo)
    pair = Collective(OpKind.ALL_REDUCE, (0, 1), 8 << 20, Tag("tensor", 0, 0, 0))  # one switch
    assert collective_min_s(pair, topo) == pytest.approx(collective_alone_s(pair, topo))


def test_clock_products_repeat_by_squaring_and_in_closed_form() -> None:
    a = (0.3, 0.5, 0.1, 0.4)
    path = (0.2, 0.05, float("-inf"), float("-inf"))
    for m in (a, path):
        step = IDENTITY
        for n in range(7):
            assert repeat(m, n) == pytest.approx(step)
            step = then(step, m)


# (model, steps, gpu, GPUs, link, nodes, warmups, top, per family)
PRUNED = [
    ("pixart", 5, "l40", 8, "pcie", 1, [0, 1, 2], 10, 2),
    ("flux", 4, "h100-sxm", 8, "nvlink", 2, [0, 1], 6, 2),
    ("sd3", 5, "rtx4090", 4, "pcie", 1, [1, 2], 3, 1),
]


@pytest.mark.parametrize("model,steps,gpu_name,n,link,nodes,warmups,top,per", PRUNED)
def test_pruned_search_shows_the_rows_of_an_exhaustive_one(model, steps, gpu_name, n, link,
                                                           nodes, warmups, top, per) -> None:
    wl, gpu, topo = _setting(model, 1024, steps, gpu_name, n, link, nodes, {})
    kw = dict(top=top, per_family=per, workers=1)
    pruned = search.search(wl, gpu, topo, warmups, **kw)
    full = search.search(wl, gpu, topo, warmups, exhaustive=True, **kw)
    assert pruned.pruned > 0 and len(pruned.ranked) < len(full.ranked)

    def fitting(r):
        return [(p.config, p.latency_s) for p in r.ranked if not p.oom]

    assert fitting(pruned)[:top] == fitting(full)[:top]
    assert [(p.config, p.latency_s) for p in search.best_per_family(pruned.ranked, per)] == \
        [(p.config, p.latency_s) for p in search.best_per_family(full.ranked, per)]
    for warm_only in (False, True):
        def best(r, warm_only=warm_only):
            out: dict[int, tuple] = {}
            for p in r.ranked:
                if not p.oom and not (warm_only and p.config.cold_start):
                    out.setdefault(p.config.gpus, (p.config, p.latency_s))
            return out

        assert best(pruned) == best(full)
    # Every candidate is listed, with its bound; the unsimulated ones were provably slower.
    assert len(pruned.considered) == len(full.considered)
    lat = {p.config: p.latency_s for p in full.ranked}
    for c in pruned.considered:
        assert c.lower_bound_s <= lat[c.config] * (1 + TOL)
