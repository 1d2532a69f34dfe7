"""The planner's search on several worker processes: what it simulates and shows does not depend
on which worker finishes first, and its rows are those of a search in one process."""

from __future__ import annotations

import os
import random
import time

import pytest

from sim import search as search_module
from sim.config import Workload
from sim.hardware import get_gpu
from sim.models import get_model
from sim.topology import build_topology

_REAL_EVALUATE_CHUNK = search_module._evaluate_chunk


def _jittered_evaluate(job):
    # Each worker finishes its simulations at random moments (seeded per process and call),
    # so results arrive in a different order from run to run.
    random.seed(os.getpid() * 1_000_003 + time.perf_counter_ns())
    time.sleep(random.uniform(0.0, 0.03))
    return _REAL_EVALUATE_CHUNK(job)


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(),
                    reason="the jitter is monkeypatched into forked workers")
def test_two_workers_give_the_same_search_whatever_the_timing(monkeypatch) -> None:
    monkeypatch.setattr(search_module, "_evaluate_chunk", _jittered_evaluate)
    gpu = get_gpu("l40")
    wl = Workload(get_model("pixart"), 512, 512, 6)
    topo = build_topology(gpu, 8, "pcie")
    runs = [search_module.search(wl, gpu, topo, [0, 1, 2], workers=2) for _ in range(3)]

    def outcome(r):
        return ([(c.config, c.simulated, c.lower_bound_s) for c in r.considered],
                [(p.config, p.latency_s) for p in r.ranked], r.pruned)

    assert outcome(runs[1]) == outcome(runs[0]) and outcome(runs[2]) == outcome(runs[0])
    # One process (the order tests/test_bounds.py checks against an exhaustive search).
    alone = search_module.search(wl, gpu, topo, [0, 1, 2], workers=1)

    def fitting(r, top=10):
        return [(p.config, p.latency_s) for p in r.ranked if not p.oom][:top]

    assert fitting(runs[0]) == fitting(alone)
    assert runs[0].pruned > 0
