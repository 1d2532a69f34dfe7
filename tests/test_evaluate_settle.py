"""Runs whose first steady steps settle late, or whose step before the last differs, are still
extended (``sim.evaluate``: a second, longer short run; the step pair before the one the last
step changes) and give what the full simulation gives."""

from __future__ import annotations

import pytest

from sim.config import ParallelConfig, Workload
from sim.evaluate import evaluate
from sim.hardware import get_gpu
from sim.models import get_model
from sim.topology import build_topology
from sim.trace import ExtendedTrace
from tests.test_fast_path import assert_same_run


def tail(trace: ExtendedTrace) -> int:
    """Steps the short run of ``trace`` keeps after its repeated step."""
    return max(r.step for r in trace.short.rows) - trace.step


# (model, GPU, link, nodes, configuration, steps, the steps kept after the repeated one,
# whether the second short run is needed)
CASES = [
    # DistriFusion's last step gathers no K,V: the step before it differs from the others,
    # so the pair before that one is compared and the last two steps kept as simulated.
    ("pixart", "l40", "pcie", 1, ParallelConfig(8, cfg=2, distrifusion=4, warmup=0), 12,
     2, True),
    # PipeFusion on 16 stages repeats from its fourth step: the first short run (W + 4
    # steps) does not, the second does.
    ("flux", "h100-sxm", "nvlink", 2, ParallelConfig(16, 16, 8, 0), 16, 1, True),
]


@pytest.mark.parametrize("model,gpu_name,link,nodes,cfg,steps,kept,retried", CASES,
                         ids=lambda v: v.label() if isinstance(v, ParallelConfig) else None)
@pytest.mark.parametrize("fast", [False, True], ids=["per-op", "planner"])
def test_late_settling_runs_are_extended_and_equal_the_full_run(model, gpu_name, link, nodes,
                                                                cfg, steps, kept, retried,
                                                                fast) -> None:
    gpu = get_gpu(gpu_name)
    topo = build_topology(gpu, cfg.gpus, link, nodes)
    wl = Workload(get_model(model), 1024, 1024, steps)
    short = evaluate(wl, cfg, gpu, topo, fast=fast)
    assert isinstance(short.trace, ExtendedTrace) and tail(short.trace) == kept
    # The first short run (W + 4 steps) repeats step W + 2, or W + 1 with the pair before.
    assert (short.trace.step > cfg.warmup + 2) == retried
    assert_same_run(short, evaluate(wl, cfg, gpu, topo, fast=fast, exact=True))


@pytest.mark.parametrize("short_steps", [4, 6])
def test_the_planners_longer_first_run_equals_the_full_run(short_steps) -> None:
    # The planner starts from W + 6 steps (sim.search.PLANNER_SHORT_STEPS).
    gpu = get_gpu("h100-sxm")
    topo = build_topology(gpu, 16, "nvlink", 2)
    wl = Workload(get_model("flux"), 1024, 1024, 16)
    for cfg in (ParallelConfig(16, 4, 2, 0, tensor=4), ParallelConfig(16, 4, 4, 1, ring=2,
                                                                      tensor=2)):
        short = evaluate(wl, cfg, gpu, topo, fast=True, short_steps=short_steps)
        assert isinstance(short.trace, ExtendedTrace)
        assert_same_run(short, evaluate(wl, cfg, gpu, topo, fast=True, exact=True))


def test_a_trace_with_a_longer_tail_survives_pickling() -> None:
    # Planner workers send predictions back pickled; a trace keeps its kind and rows.
    import pickle

    gpu = get_gpu("l40")
    cfg = ParallelConfig(8, cfg=2, distrifusion=4, warmup=0)
    wl = Workload(get_model("pixart"), 1024, 1024, 12)
    pred = evaluate(wl, cfg, gpu, build_topology(gpu, 8, "pcie"), fast=True)
    back = pickle.loads(pickle.dumps(pred.trace))
    assert type(back) is ExtendedTrace and tail(back) == 2
    assert back.rows == pred.trace.rows
