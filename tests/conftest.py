"""Shared fixtures: small workloads and a link-free topology for closed-form checks."""

from __future__ import annotations

import pytest

from sim.config import Workload
from sim.hardware import get_gpu
from sim.models import get_model
from sim.topology import Topology, build_topology


def free_links(topo: Topology) -> Topology:
    """``topo`` with (practically) infinite bandwidth and no latency on every edge."""
    topo.capacity = [1e30] * len(topo.capacity)
    topo.latency = [0.0] * len(topo.latency)
    return topo


@pytest.fixture
def pixart_1024() -> Workload:
    return Workload(get_model("pixart"), 1024, 1024, 20)


@pytest.fixture
def l40_pcie8() -> Topology:
    return build_topology(get_gpu("l40"), 8, "pcie")
