"""sim.topology.Graph, the small directed graph that replaced networkx in the topologies: every
topology built on it routes exactly as the same topology built on networkx (equal-length paths
are common, and a route's choice sets which links it loads)."""

from __future__ import annotations

import pytest

nx = pytest.importorskip("networkx")

import sim.topology as topology  # noqa: E402
from sim.hardware import GPUS  # noqa: E402


class NxGraph(nx.DiGraph):
    """networkx's DiGraph with the one method the topologies call that it lacks."""

    def shortest_path(self, a: str, b: str) -> list[str]:
        return nx.shortest_path(self, a, b)


@pytest.mark.parametrize("gpu, gpus, link, nodes", [
    ("l40", 8, "pcie", 1), ("rtx4090", 4, "pcie", 1), ("l20", 16, "pcie", 2),
    ("a100-sxm-80g", 8, "nvlink", 1), ("h100-sxm", 16, "nvlink", 2),
    ("h100-sxm", 64, "nvlink", 8), ("cpu", 2, "pcie", 1)])
def test_routes_are_those_of_networkx(monkeypatch: pytest.MonkeyPatch, gpu: str, gpus: int,
                                      link: str, nodes: int) -> None:
    ours = topology.build_topology(GPUS[gpu], gpus, link, nodes)
    with monkeypatch.context() as m:
        m.setattr(topology, "Graph", NxGraph)
        ref = topology.build_topology(GPUS[gpu], gpus, link, nodes)
    assert isinstance(ref.graph, nx.DiGraph) and not isinstance(ours.graph, nx.DiGraph)
    assert list(ours.graph.edges(data=True)) == list(ref.graph.edges(data=True))
    assert ours.capacity == ref.capacity
    for a in range(gpus):
        for b in range(gpus):
            if a != b:
                assert ours.route(a, b) == ref.route(a, b), (a, b)
                assert ours.route_latency(a, b) == ref.route_latency(a, b)
