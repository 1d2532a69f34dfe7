"""The shortcuts that make the simulator fast change no prediction: steady steps simulated
once and extended, the engine's memoised rates and plans, and the planner's lower bounds
(template schedules, chain bound) against the full per-op simulation on a grid."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import search
from sim.bounds import latency_lower_bound, lower_bounds
from sim.config import ParallelConfig, Workload, validate
from sim.cost import CostSpec
from sim.engine import Network, _Flow
from sim.errors import UserError
from sim.evaluate import Prediction, evaluate
from sim.hardware import get_gpu
from sim.models import get_model
from sim.topology import build_topology
from sim.trace import ExtendedTrace

TOL = 1e-6  # far inside the 0.1 %: the extension is exact up to rounding

CLUSTERS = {"pcie": ("l40", "pcie", 1), "nvlink": ("a100-sxm-80g", "nvlink", 1),
            "two-nodes": ("h100-sxm", "nvlink", 2)}


def _grid() -> list[tuple[str, str, ParallelConfig]]:
    out = []
    for model, cluster, n in itertools.product(("pixart", "sd3", "hunyuan-dit", "flux"),
                                               ("pcie", "nvlink", "two-nodes"), (2, 4, 8)):
        if cluster == "two-nodes" and n < 4:
            continue
        cfgs = [ParallelConfig(n, n, n, 1), ParallelConfig(n, n, 2 * n, 0),
                ParallelConfig(n, ulysses=n), ParallelConfig(n, ring=n),
                ParallelConfig(n, tensor=n), ParallelConfig(n, distrifusion=n, warmup=1),
                ParallelConfig(n, n // 2, 4, 1, ulysses=2)]
        if n >= 4:
            cfgs += [ParallelConfig(n, n // 4, 4, 1, ring=2, tensor=2),
                     ParallelConfig(n, n // 2, 2, 1, cfg=2)]
        out += [(model, cluster, c) for c in cfgs]
    return out


def _valid(model: str, cfg: ParallelConfig, steps: int) -> Workload | None:
    wl = Workload(get_model(model), 512, 512, steps)
    try:
        validate(wl, cfg)
    except UserError:
        return None  # e.g. Ulysses not dividing the heads, or flux with cfg
    return wl


GRID = _grid()


@pytest.mark.parametrize("model,cluster,cfg", GRID[::4] + GRID[2::11],
                         ids=lambda v: v.label() if isinstance(v, ParallelConfig) else str(v))
@pytest.mark.parametrize("fast", [False, True], ids=["per-op", "planner"])
def test_periodic_extension_equals_the_full_simulation(model, cluster, cfg, fast) -> None:
    wl = _valid(model, cfg, steps=9)
    if wl is None:
        pytest.skip("not a valid configuration")
    gpu_name, link, nodes = CLUSTERS[cluster]
    gpu = get_gpu(gpu_name)
    topo = build_topology(gpu, cfg.gpus, link, nodes)
    short = evaluate(wl, cfg, gpu, topo, fast=fast)
    full = evaluate(wl, cfg, gpu, topo, fast=fast, exact=True)
    assert_same_run(short, full, rows=isinstance(short.trace, ExtendedTrace))


def assert_same_run(short: Prediction, full: Prediction, rows: bool = True) -> None:
    """``short`` (an extended run) predicts what ``full`` (every step simulated) does: the
    metrics to ``TOL`` and, with ``rows``, every row's times."""
    a, b = short.as_dict(), full.as_dict()
    for key in ("latency_s", "loop_s", "text_encode_s", "vae_decode_s", "exposed_comm_s"):
        assert a[key] == pytest.approx(b[key], rel=TOL, abs=1e-12), key
    assert a["bubble_fraction"] == pytest.approx(b["bubble_fraction"], abs=TOL)
    assert a["busy_fraction"] == pytest.approx(b["busy_fraction"], rel=TOL)
    assert a["comm_bytes_per_step"] == b["comm_bytes_per_step"]
    assert a["cost_source"] == b["cost_source"]
    assert len(short.trace) == len(full.trace.rows)
    if rows:
        key = lambda r: (r.rank, r.step, r.op, r.patch, r.layer_first, r.tag, r.start_s)  # noqa: E731
        rows_a, rows_b = sorted(short.trace.rows, key=key), sorted(full.trace.rows, key=key)
        for ra, rb in zip(rows_a, rows_b, strict=True):
            assert ra[:6] == rb[:6] and ra[8:] == rb[8:]
            assert ra.start_s == pytest.approx(rb.start_s, rel=TOL, abs=1e-12)
            assert ra.end_s == pytest.approx(rb.end_s, rel=TOL, abs=1e-12)


def test_the_extension_is_used_where_steps_repeat() -> None:
    # Not a test of nothing: on this grid most configurations are periodic and extended. At
    # 1024 px the GPU work per step outweighs the host clock; at 512 px many runs are
    # host-bound, and the CPU's lead left by the warmup takes steps to settle.
    gpu = get_gpu("l40")
    extended = 0
    cfgs = [c for m, cl, c in GRID if m == "pixart" and cl == "pcie"
            and _valid("pixart", c, 12) is not None]
    for cfg in cfgs:
        pred = evaluate(Workload(get_model("pixart"), 1024, 1024, 12), cfg, gpu,
                        build_topology(gpu, cfg.gpus, "pcie"))
        extended += isinstance(pred.trace, ExtendedTrace)
    assert extended >= len(cfgs) // 2


def _reference_rates(flows: list[_Flow], capacity: list[float]) -> list[float]:
    """Progressive filling written plainly (the engine's rule before it was optimised)."""
    cap, users = {}, {}
    for f in flows:
        for e in f.edges:
            cap.setdefault(e, capacity[e])
            users.setdefault(e, []).append(f)
    rate: dict[int, float] = {}
    active = {e: list(fl) for e, fl in users.items()}
    while active:
        edge, share = min(((e, cap[e] / len(fl)) for e, fl in active.items()),
                          key=lambda x: x[1])
        for f in active[edge]:
            rate[id(f)] = share
            for e in f.edges:
                if e in active and e != edge:
                    cap[e] -= share
                    active[e].remove(f)
                    if not active[e]:
                        del active[e]
        del active[edge]
    return [rate[id(f)] for f in flows]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=4, unique=True),
                min_size=1, max_size=12),
       st.lists(st.floats(1.0, 100.0), min_size=10, max_size=10))
def test_max_min_rates_equal_plain_progressive_filling(routes, capacity) -> None:
    topo = build_topology(get_gpu("l40"), 2, "pcie")
    net = Network.__new__(Network)
    net.capacity = capacity
    net.flows = [_Flow(tuple(r), 1.0, lambda: None) for r in routes]
    net._rates()
    assert [f.rate for f in net.flows] == pytest.approx(_reference_rates(net.flows, capacity),
                                                        rel=1e-12)
    del topo


@pytest.mark.parametrize("model,gpus,link,nodes,steps", [
    ("pixart", 8, "pcie", 1, 8), ("sd3", 4, "nvlink", 1, 5), ("hunyuan-dit", 4, "pcie", 1, 3),
    ("flux", 4, "nvlink", 2, 4)])
def test_lower_bounds_hold_and_templates_match_per_configuration(model, gpus, link, nodes,
                                                                  steps) -> None:
    """A warmup count's bound from the template shared by every count equals the one from its
    own short schedule, but for pipelines, whose replay (``sim.bounds._pipeline_bound``) sees
    one warm step wait for the latent of the one before only in the latter; the quick bound
    of the first and last stages is never above the full one."""
    gpu = get_gpu("l40" if link == "pcie" else "h100-sxm")
    topo = build_topology(gpu, gpus, link, nodes)
    wl = Workload(get_model(model), 512, 512, steps)
    cost = CostSpec().build(wl, gpu)
    warmups = [w for w in (0, 1, 2, 3) if w <= steps]
    cands = search.candidates(wl, gpus, warmups)
    grouped = lower_bounds(wl, cands, gpu, topo, cost)
    quick = lower_bounds(wl, cands, gpu, topo, cost, ends=True)
    for cfg, (lb, mem), (rough, _) in zip(cands[::5], grouped[::5], quick[::5]):
        alone, alone_mem = latency_lower_bound(wl, cfg, gpu, topo, cost)
        if cfg.pipefusion == 1:
            assert lb == pytest.approx(alone, rel=1e-12)
        else:
            assert lb <= alone * (1 + 1e-12)
        assert rough <= lb * (1 + 1e-12)
        assert [m.total for m in mem] == [m.total for m in alone_mem]
    full = search.search(wl, gpu, topo, warmups, exhaustive=True, workers=1)
    for c in full.considered:
        lat = next(p.latency_s for p in full.ranked if p.config == c.config)
        assert c.lower_bound_s <= lat * (1 + 1e-9), c.config.label()


def test_pruned_search_shows_what_an_exhaustive_one_shows_on_a_hybrid_cluster() -> None:
    gpu = get_gpu("h100-sxm")
    topo = build_topology(gpu, 8, "nvlink", 2)
    wl = Workload(get_model("sd3"), 1024, 1024, 6)
    kw = dict(top=6, per_family=2, workers=1)
    pruned = search.search(wl, gpu, topo, [0, 1], **kw)
    full = search.search(wl, gpu, topo, [0, 1], exhaustive=True, **kw)
    assert pruned.pruned > 0
    rows = lambda r: [(p.config, p.latency_s) for p in r.ranked[:6]]  # noqa: E731
    assert rows(pruned) == rows(full)
    fam = lambda r: [(p.config, p.latency_s) for p in search.best_per_family(r.ranked, 2)]  # noqa: E731
    assert fam(pruned) == fam(full)
    best = lambda r: {n: min(p.latency_s for p in r.ranked if p.config.gpus == n and not p.oom)  # noqa: E731
                      for n in {p.config.gpus for p in r.ranked if not p.oom}}
    assert best(pruned) == best(full)
