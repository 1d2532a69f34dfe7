"""Cluster graphs: GPUs, PCIe switches, CPU sockets, NVSwitch, NICs (networkx).

Every directed edge is a link with an achieved bandwidth (bytes/s) and a latency (s). A
point-to-point transfer follows the graph's route; the engine shares each directed edge fairly
among the transfers crossing it, so traffic over the socket link or a NIC slows down when shared.

Layouts:

- ``pcie``: GPUs in pairs under PCIe switches, four GPUs per CPU socket, sockets joined by the
  socket link (UPI). GPUs without peer-to-peer (RTX 4090) hang straight off the socket, so every
  transfer goes through host memory.
- ``nvlink``: every GPU of a node on one NVSwitch.
- ``nodes > 1``: nodes joined by one network switch; PCIe nodes have one NIC per socket, NVLink
  nodes one NIC per GPU (as DGX-class machines).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from sim.errors import UserError
from sim.hardware import GPU, LINKS

if TYPE_CHECKING:  # networkx takes a tenth of a second to import: loaded when first used
    import networkx as nx

GPUS_PER_SOCKET = 4
GPUS_PER_SWITCH = 2
INTER_NODE = ("ib-ndr", "ib-hdr", "eth-100g", "eth-200g")


@dataclass
class Topology:
    """A cluster graph and the rank -> GPU-node mapping; routes are cached edge-id tuples."""

    graph: nx.DiGraph
    gpu_nodes: list[str]
    link: str
    nodes: int
    edge_ids: dict[tuple[str, str], int] = field(default_factory=dict)
    _routes: dict[tuple[int, int], tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i, (u, v) in enumerate(sorted(self.graph.edges)):
            self.edge_ids[(u, v)] = i

    def _per_edge(self, attr: str) -> list:
        values: list = [None] * len(self.edge_ids)
        for (u, v), i in self.edge_ids.items():
            values[i] = self.graph.edges[u, v][attr]
        return values

    @cached_property
    def capacity(self) -> list[float]:
        """Bandwidth of each edge id, bytes/s."""
        return self._per_edge("bandwidth")

    @cached_property
    def latency(self) -> list[float]:
        """Latency of each edge id, seconds."""
        return self._per_edge("latency")

    @property
    def num_gpus(self) -> int:
        """GPUs (ranks) of the cluster."""
        return len(self.gpu_nodes)

    def route(self, src: int, dst: int) -> tuple[int, ...]:
        """Edge ids from rank ``src``'s GPU to rank ``dst``'s GPU (fewest hops)."""
        key = (src, dst)
        if key not in self._routes:
            import networkx as nx

            path = nx.shortest_path(self.graph, self.gpu_nodes[src], self.gpu_nodes[dst])
            self._routes[key] = tuple(self.edge_ids[(u, v)] for u, v in zip(path, path[1:]))
        return self._routes[key]

    def route_latency(self, src: int, dst: int) -> float:
        """Fixed cost of one message, seconds: the slowest protocol on the route dominates,
        so the largest edge latency counts once (not a sum over hops)."""
        return max((self.latency[e] for e in self.route(src, dst)), default=0.0)

    @cached_property
    def host(self) -> list[tuple[tuple[int, float], ...]]:
        """Per edge id, the (message bytes, seconds) table of host time a message costs the
        sending and the receiving rank each (CPU transports; empty elsewhere)."""
        return [self.graph.edges[u, v].get("host", ()) for (u, v), _ in
                sorted(self.edge_ids.items(), key=lambda kv: kv[1])]

    def route_host(self, src: int, dst: int, nbytes: float) -> float:
        """Seconds of its own time a rank spends on one message of ``nbytes`` it sends to or
        receives from ``dst``/``src`` (issuing, completing, the transport threads taking its
        core): interpolated in log size between measured sizes, clamped at the ends."""
        return max((host_seconds(self.host[e], nbytes) for e in self.route(src, dst)),
                   default=0.0)

    def route_bandwidth(self, src: int, dst: int) -> float:
        """Bandwidth of an uncontended transfer, bytes/s: the narrowest edge on the route."""
        return min(self.capacity[e] for e in self.route(src, dst))


def host_seconds(table: tuple[tuple[int, float], ...], nbytes: float) -> float:
    """Host seconds of a message of ``nbytes`` from a sorted (bytes, seconds) table: linear
    in log size between points, the end values beyond them, 0 for an empty table."""
    if not table:
        return 0.0
    if nbytes <= table[0][0]:
        return table[0][1]
    for (b0, s0), (b1, s1) in zip(table, table[1:]):
        if nbytes <= b1:
            w = math.log(nbytes / b0) / math.log(b1 / b0)
            return s0 + w * (s1 - s0)
    return table[-1][1]


def _connect(g: nx.DiGraph, a: str, b: str, kind: str) -> None:
    lk = LINKS[kind]
    for u, v in ((a, b), (b, a)):
        g.add_edge(u, v, bandwidth=lk.bandwidth, latency=lk.latency_s, kind=kind)


def build_topology(gpu: GPU, gpus: int, link: str = "pcie", nodes: int = 1,
                   inter_node: str = "ib-ndr") -> Topology:
    """Graph of ``nodes`` machines with ``gpus`` GPUs in all, linked by ``link``."""
    if link not in ("pcie", "nvlink"):
        raise UserError(f"unknown --link '{link}'; choose pcie or nvlink")
    if link == "nvlink" and gpu.nvlink is None:
        raise UserError(f"{gpu.name} has no NVLink; use --link pcie or an SXM GPU "
                        f"(a100-sxm-80g, h100-sxm, h200, h20, v100-sxm2-32g)")
    if nodes < 1:
        raise UserError(f"--nodes must be at least 1, got {nodes}")
    if gpus % nodes:
        raise UserError(f"--gpus {gpus} does not split evenly over --nodes {nodes}")
    if inter_node not in INTER_NODE:
        raise UserError(f"unknown --inter-node '{inter_node}'; choose one of: "
                        f"{', '.join(INTER_NODE)}")
    import networkx as nx

    per_node = gpus // nodes
    g = nx.DiGraph()
    gpu_nodes: list[str] = []
    for n in range(nodes):
        sockets = max(1, -(-per_node // GPUS_PER_SOCKET))
        for s in range(1, sockets):
            _connect(g, f"n{n}.cpu0", f"n{n}.cpu{s}", "upi")
        if link == "nvlink":
            assert gpu.nvlink is not None
            g.add_node(f"n{n}.nvswitch")
        for i in range(per_node):
            name = f"n{n}.gpu{i}"
            gpu_nodes.append(name)
            socket = f"n{n}.cpu{i // GPUS_PER_SOCKET}"
            if link == "nvlink":
                _connect(g, name, f"n{n}.nvswitch", gpu.nvlink)
                _connect(g, name, socket, gpu.pcie)
                if nodes > 1:
                    _connect(g, name, f"n{n}.nic{i}", gpu.pcie)
                    _connect(g, f"n{n}.nic{i}", "net", inter_node)
            elif gpu.p2p and gpu.pcie != "loopback":
                switch = f"n{n}.sw{i // GPUS_PER_SWITCH}"
                _connect(g, name, switch, gpu.pcie)
                _connect(g, switch, socket, gpu.pcie)
            else:
                _connect(g, name, socket, gpu.pcie)
        if nodes > 1 and link == "pcie":
            for s in range(sockets):
                _connect(g, f"n{n}.cpu{s}", f"n{n}.nic{s}", gpu.pcie)
                _connect(g, f"n{n}.nic{s}", "net", inter_node)
    g.add_nodes_from(gpu_nodes)
    return Topology(g, gpu_nodes, link, nodes)
