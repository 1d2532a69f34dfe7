"""Cluster graphs: GPUs, PCIe switches, CPU sockets, NVSwitch, NICs.

Every directed edge is a link with an achieved bandwidth (bytes/s) and a latency (s). A
point-to-point transfer follows the graph's route; the engine shares each directed edge fairly
among the transfers crossing it, so traffic over the socket link or a NIC slows down when shared.

Layouts:

- ``pcie``: GPUs in pairs under PCIe switches, four GPUs per CPU socket, sockets joined by the
  socket link. Each pair of GPUs uses the transport NCCL (2.23.4 and later) picks for it:
  peer-to-peer (P2P) through their switch for switch-mates, SHM through host memory for every
  other pair, and always SHM for GPUs without peer access (RTX 4090). An SHM transfer loads the
  sender's PCIe link, the socket link when it crosses sockets (``sim.hardware.HOST_BUSES``)
  and the receiver's PCIe link. A GPU's PCIe link carries its host traffic in both directions
  out of one budget (copies to and from the host at once get 11-13 GB/s each way on Gen4,
  nvbandwidth #11): it is one edge that routes in either direction cross.
- ``nvlink``: every GPU of a node on one NVSwitch.
- ``nodes > 1``: nodes joined by one network switch; PCIe nodes have one NIC per socket, NVLink
  nodes one NIC per GPU (as DGX-class machines).

Where NCCL uses P2P across the CPU's root complex instead of SHM (``--nccl 2.22`` on an AMD
host, or an AMD host with at most 2 GPUs: ``sim.hardware.nccl_p2p_through_cpu``), such a pair
moves its bytes over the same PCIe links and socket link, and an all-to-all over such pairs
collapses (``sim.hardware.P2P_CPU_MANY_TO_MANY``).

Not modelled: ACS/IOMMU settings that force P2P through the root complex.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import TYPE_CHECKING

from sim.errors import UserError
from sim.hardware import (
    GPU,
    LINKS,
    OVERLAP_SLOWDOWN,
    P2P_CPU_MANY_TO_MANY,
    RING_EXCHANGE_OVERLAPS,
    RING_OVERLAP_CHOICES,
    host_bus,
    nccl_p2p_through_cpu,
)

if TYPE_CHECKING:
    from sim.hardware import HostBus

GPUS_PER_SOCKET = 4
GPUS_PER_SWITCH = 2
INTER_NODE = ("ib-ndr", "ib-hdr", "eth-100g", "eth-200g")


class Graph:
    """A directed graph with attributes on its edges and on itself: the part of networkx's
    ``DiGraph`` the topologies use, with the same semantics and iteration orders (networkx
    takes a fifth of a second to import, more than building a 1,024-GPU cluster)."""

    def __init__(self) -> None:
        self.graph: dict = {}  # attributes of the whole graph
        self.succ: dict[str, dict[str, dict]] = {}  # node -> successor -> edge attributes
        self.pred: dict[str, dict[str, dict]] = {}  # node -> predecessor -> the same dict

    def __contains__(self, node: object) -> bool:
        return node in self.succ

    def add_node(self, node: str) -> None:
        if node not in self.succ:
            self.succ[node] = {}
            self.pred[node] = {}

    def add_nodes_from(self, nodes: Iterable[str]) -> None:
        for node in nodes:
            self.add_node(node)

    def add_edge(self, u: str, v: str, **attrs: object) -> None:
        """Add the edge ``u -> v`` (and its nodes), or update its attributes."""
        self.add_node(u)
        self.add_node(v)
        data = self.succ[u].get(v)
        if data is None:
            data = self.succ[u][v] = self.pred[v][u] = {}
        data.update(attrs)

    @property
    def edges(self) -> _Edges:
        """``(u, v)`` pairs; ``edges[u, v]`` is the edge's attributes, ``edges(data=True)``
        yields ``(u, v, attributes)``."""
        return _Edges(self.succ)

    def copy(self) -> Graph:
        """A copy with its own attribute dicts (changing one leaves this graph as it is)."""
        g = Graph()
        g.graph.update(self.graph)
        g.add_nodes_from(self.succ)
        for u, nbrs in self.succ.items():
            for v, data in nbrs.items():
                g.add_edge(u, v, **data)
        return g

    def shortest_path(self, source: str, target: str) -> list[str]:
        """A path with the fewest edges, nodes from ``source`` to ``target``: breadth-first
        from both ends, exactly as ``networkx.shortest_path`` (3.x) picks among equal ones."""
        if source == target:
            return [source]
        pred: dict[str, str | None] = {source: None}
        succ: dict[str, str | None] = {target: None}
        forward, reverse = [source], [target]
        meet = None
        while forward and reverse and meet is None:
            if len(forward) <= len(reverse):
                level, forward = forward, []
                for v in level:
                    for w in self.succ[v]:
                        if w not in pred:
                            forward.append(w)
                            pred[w] = v
                        if w in succ:
                            meet = w
                            break
                    if meet is not None:
                        break
            else:
                level, reverse = reverse, []
                for v in level:
                    for w in self.pred[v]:
                        if w not in succ:
                            succ[w] = v
                            reverse.append(w)
                        if w in pred:
                            meet = w
                            break
                    if meet is not None:
                        break
        if meet is None:
            raise ValueError(f"no path from {source} to {target}")
        path: list[str] = []
        node: str | None = meet
        while node is not None:
            path.append(node)
            node = pred[node]
        path.reverse()
        node = succ[path[-1]]
        while node is not None:
            path.append(node)
            node = succ[node]
        return path


class _Edges:
    """``Graph.edges``: iterable, indexable by ``(u, v)``, callable with ``data=True``."""

    def __init__(self, succ: dict[str, dict[str, dict]]) -> None:
        self._succ = succ

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((u, v) for u, nbrs in self._succ.items() for v in nbrs)

    def __len__(self) -> int:
        return sum(map(len, self._succ.values()))

    def __getitem__(self, edge: tuple[str, str]) -> dict:
        u, v = edge
        return self._succ[u][v]

    def __call__(self, data: bool = False) -> Iterator[tuple]:
        if not data:
            return iter(self)
        return ((u, v, d) for u, nbrs in self._succ.items() for v, d in nbrs.items())


# ``Topology._per_edge`` without a value for edges lacking the attribute.
_REQUIRED = object()


@dataclass
class Topology:
    """A cluster graph and the rank -> GPU-node mapping; routes are cached edge-id tuples."""

    graph: Graph
    gpu_nodes: list[str]
    link: str
    nodes: int
    edge_ids: dict[tuple[str, str], int] = field(default_factory=dict)
    _routes: dict[tuple[int, int], tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i, (u, v) in enumerate(sorted(self.graph.edges)):
            self.edge_ids[(u, v)] = i

    def _per_edge(self, attr: str, empty: object = _REQUIRED) -> list:
        """Per edge id, the edge attribute ``attr``; ``empty`` where an edge has none (without
        it, every edge must have the attribute)."""
        values: list = [None] * len(self.edge_ids)
        for (u, v), i in self.edge_ids.items():
            d = self.graph.edges[u, v]
            values[i] = d[attr] if empty is _REQUIRED else d.get(attr, empty)
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
    def nccl(self) -> bool:
        """Whether the GPUs talk through NCCL (every GPU cluster; not CPU processes)."""
        return bool(self.graph.graph.get("nccl"))

    @property
    def overlap_slowdown(self) -> float:
        """Factor on compute that runs while the GPU's own communication is in flight."""
        return self.graph.graph.get("overlap_slowdown", 1.0)

    @property
    def memory_bandwidth(self) -> float:
        """The GPUs' memory bandwidth, bytes/s (0 between CPU processes: not modelled)."""
        return self.graph.graph.get("memory_bandwidth", 0.0)

    @property
    def ring_overlaps(self) -> bool:
        """Whether ring attention's K,V exchange runs under its partial attention (True) or
        before it (``sim.hardware.RING_EXCHANGE_OVERLAPS``; CPU processes overlap)."""
        return self.graph.graph.get("ring_overlaps", True)

    def net_hop_latency(self, group: tuple[int, ...] | list[int]) -> float:
        """The network's latency per hop when ``group`` spans nodes, else 0, seconds."""
        if self.nodes == 1 or len({self.gpu_nodes[r].split(".")[0] for r in group}) == 1:
            return 0.0
        return self.graph.graph.get("net_latency", 0.0)

    @property
    def num_gpus(self) -> int:
        """GPUs (ranks) of the cluster."""
        return len(self.gpu_nodes)

    def route(self, src: int, dst: int) -> tuple[int, ...]:
        """Edge ids from rank ``src``'s GPU to rank ``dst``'s GPU: the transport's explicit
        route where the layout has one (PCIe hosts), else the fewest hops."""
        key = (src, dst)
        if key not in self._routes:
            edges = self._route_edges(self.gpu_nodes[src], self.gpu_nodes[dst])
            self._routes[key] = tuple(self.edge_ids[e] for e in edges)
        return self._routes[key]

    def _route_edges(self, a: str, b: str) -> list[tuple[str, str]]:
        """Graph edges (node pairs) from GPU node ``a`` to ``b``: the layout's explicit
        transport route where it has one, else the fewest hops."""
        router = self.graph.graph.get("router")
        if router is not None:
            return router(a, b)
        path = self.graph.shortest_path(a, b)
        return list(zip(path, path[1:]))

    def all_to_all_efficiency(self, group: tuple[int, ...] | list[int]) -> float:
        """Fraction of the link rates an all-to-all among ``group`` achieves: on a PCIe host
        many simultaneous peer flows through host memory that leave their CPU socket (across
        the socket link, or out through a NIC) collapse well below the sum of their links
        (``HostBus.many_to_many``, measured on 8-GPU two-socket boxes). Inside one socket
        they do not (4x RTX 4090 through host memory: all-to-all and all-reduce both at
        18 GB/s, nccl #1603), nor over NVLink. Flows that go peer-to-peer through the CPU's
        root complex collapse further, inside a socket too (``P2P_CPU_MANY_TO_MANY``)."""
        eff = self.graph.graph.get("many_to_many")
        if eff is None or len(group) < 3:
            return 1.0
        a = group[0]
        if self.graph.graph.get("p2p_through_cpu") and any(
                self.transport(a, b) == "p2p" and self.crosses_root_complex(a, b)
                for b in group[1:]):
            return P2P_CPU_MANY_TO_MANY
        # Leaving the socket: over the socket link, or out through a NIC to another node.
        spans = any(self.crosses_sockets(a, b) or self.transport(a, b) == "net"
                    for b in group[1:])
        return eff if spans else 1.0

    def crosses_root_complex(self, src: int, dst: int) -> bool:
        """Whether the route between the two ranks' GPUs goes through a CPU (host memory or
        the root complex) rather than only through a PCIe switch or NVLink."""
        return any(v.endswith(".host") for _, v in
                   self._route_edges(self.gpu_nodes[src], self.gpu_nodes[dst]))

    def crosses_sockets(self, src: int, dst: int) -> bool:
        """Whether the route between the two ranks' GPUs crosses a CPU socket link."""
        return any(self.graph.edges[e]["kind"] == "upi"
                   for e in self._route_edges(self.gpu_nodes[src], self.gpu_nodes[dst]))

    def transport_summary(self, ranks: int) -> str | None:
        """One clause on how the first ``ranks`` GPUs reach each other, when some pairs go
        through host memory, P2P through the CPU or the network (None when every pair is
        NVLink or P2P behind a switch)."""
        pairs = [(a, b) for a in range(ranks) for b in range(ranks) if a != b]
        kinds = [self.transport(a, b) for a, b in pairs]
        parts = []
        shm = [p for p, k in zip(pairs, kinds) if k == "shm"]
        if shm:
            cross = sum(self.crosses_sockets(a, b) for a, b in shm)
            parts.append(f"{len(shm)} of {len(pairs)} GPU pairs go through host memory "
                         f"(NCCL's SHM transport, no P2P outside a PCIe switch)"
                         + (f", {cross} of them across the CPU socket link" if cross else ""))
        cpu_p2p = [p for p, k in zip(pairs, kinds) if k == "p2p" and self.crosses_root_complex(*p)]
        if cpu_p2p:
            parts.append(f"{len(cpu_p2p)} of {len(pairs)} GPU pairs go peer-to-peer through the "
                         f"CPU root complex (NCCL on an AMD host), where all-to-all collapses")
        net = kinds.count("net")
        if net:
            parts.append(f"{net} of {len(pairs)} GPU pairs cross the network between nodes")
        return "; ".join(parts) or None

    def transport(self, src: int, dst: int) -> str:
        """How data moves between the two ranks' GPUs: ``nvlink``, ``p2p`` (PCIe peer to
        peer), ``shm`` (through host memory), ``net`` (between nodes) or ``loopback``."""
        a, b = self.gpu_nodes[src], self.gpu_nodes[dst]
        if a.split(".")[0] != b.split(".")[0]:
            return "net"
        if self.link == "nvlink":
            return "nvlink"
        router = self.graph.graph.get("router")
        if router is None:
            return "loopback"
        first_hop = router(a, b)[0][1]
        if first_hop.rsplit(".", 1)[-1].startswith("sw"):
            return "p2p"
        return "p2p" if self.graph.graph.get("p2p_through_cpu") else "shm"

    def route_latency(self, src: int, dst: int) -> float:
        """Fixed cost of one message, seconds: the slowest protocol on the route dominates,
        so the largest edge latency counts once (not a sum over hops)."""
        return max((self.latency[e] for e in self.route(src, dst)), default=0.0)

    @cached_property
    def host(self) -> list[tuple[tuple[int, float], ...]]:
        """Per edge id, the (message bytes, seconds) table of host time a message costs the
        sending and the receiving rank each (CPU transports; empty elsewhere)."""
        return self._per_edge("host", ())

    @cached_property
    def host_coll(self) -> list[tuple[tuple[int, float], ...]]:
        """Per edge id, the same table for a message of an asynchronous collective, whose two
        directions share one process group (``host_coll`` rows of a link profile)."""
        return self._per_edge("host_coll", ())

    @cached_property
    def collectives(self) -> list[dict[str, Callable[[float], float]]]:
        """Per edge id, the measured seconds of one collective call against the bytes per
        rank, by op name (``all_gather``, ``ring_kv_async``, ...), from a link profile
        (``sim.cost.link_profile.CollectiveCurve``, whose ``world`` is the group size it
        was measured at); empty where none was applied."""
        return self._per_edge("collectives", {})

    def measured_collective(self, names: tuple[str, ...], group: tuple[int, ...] | list[int],
                            pairs: list[tuple[int, int]], nbytes: float) -> float | None:
        """Seconds of one collective call over ``group`` (flows ``pairs``) of ``nbytes`` per
        rank from the link profile's measurement, the first of ``names`` measured, or
        ``None`` unless every edge the flows cross has a curve of that name measured at the
        group's size (the slowest such curve counts)."""
        if not any(self.collectives):
            return None
        edges = {e for a, b in pairs for e in self.route(a, b)}
        for name in names:
            curves = [self.collectives[e].get(name) for e in edges]
            if curves and all(c is not None and getattr(c, "world", None) == len(group)
                              for c in curves):
                return max(c(nbytes) for c in curves)
        return None

    def route_host(self, src: int, dst: int, nbytes: float) -> float:
        """Seconds of its own time a rank spends on one message of ``nbytes`` it sends to or
        receives from ``dst``/``src`` (issuing, completing, the transport threads taking its
        core): interpolated in log size between measured sizes, clamped at the ends."""
        return self._route_host(self.host, src, dst, nbytes)

    def route_host_coll(self, src: int, dst: int, nbytes: float) -> float:
        """As ``route_host``, for one message of an asynchronous collective."""
        return self._route_host(self.host_coll, src, dst, nbytes)

    def _route_host(self, tables: list[tuple[tuple[int, float], ...]], src: int, dst: int,
                    nbytes: float) -> float:
        return max((host_seconds(tables[e], nbytes) for e in self.route(src, dst)),
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


def _connect(g: Graph, a: str, b: str, kind: str) -> None:
    lk = LINKS[kind]
    for u, v in ((a, b), (b, a)):
        g.add_edge(u, v, bandwidth=lk.bandwidth, latency=lk.latency_s, kind=kind)


def _pcie_route(place: dict[str, tuple[str, str, str | None]], a: str, b: str
                ) -> list[tuple[str, str]]:
    """Edges of the transport NCCL uses from GPU ``a`` to GPU ``b`` of a PCIe cluster (see
    the module docstring); ``place`` maps a GPU to its (node, socket, switch)."""
    na, sa, wa = place[a]
    nb, sb, wb = place[b]
    if na == nb and wa is not None and wa == wb:
        return [(a, wa), (wa, b)]  # P2P behind the shared switch
    up, down = [(a, f"{a}.host")], [(b, f"{b}.host")]
    if na != nb:  # NET: out through the sender's socket and NIC, in through the receiver's
        return up + [(sa, f"{sa}.nic"), (f"{sa}.nic", "net"), ("net", f"{sb}.nic"),
                     (f"{sb}.nic", sb)] + down
    return up + ([(sa, sb)] if sa != sb else []) + down


def _pcie_node(g: Graph, gpu: GPU, bus: HostBus, n: int, per_node: int, nodes: int,
               inter_node: str, place: dict[str, tuple[str, str, str | None]]) -> list[str]:
    """One PCIe machine's GPUs, switches, sockets and SHM budgets (edges and their rates)."""
    lk = LINKS[gpu.pcie]
    sockets = max(1, -(-per_node // GPUS_PER_SOCKET))
    names = [f"n{n}.gpu{i}" for i in range(per_node)]

    def edge(u: str, v: str, kind: str, bandwidth: float, latency: float, src: str) -> None:
        g.add_edge(u, v, bandwidth=bandwidth, latency=latency, kind=kind, source=src)

    for s in range(sockets):
        cpu = f"n{n}.cpu{s}"
        for t in range(sockets):
            if t != s:
                edge(cpu, f"n{n}.cpu{t}", "upi", bus.socket_link, LINKS["upi"].latency_s,
                     bus.source)
        if nodes > 1:
            _connect(g, cpu, f"{cpu}.nic", gpu.pcie)
            _connect(g, f"{cpu}.nic", "net", inter_node)
    for i, a in enumerate(names):
        socket = f"n{n}.cpu{i // GPUS_PER_SOCKET}"
        switch = f"n{n}.sw{i // GPUS_PER_SWITCH}" if gpu.p2p else None
        place[a] = (f"n{n}", socket, switch)
        if switch:
            _connect(g, a, switch, gpu.pcie)
        edge(a, f"{a}.host", gpu.pcie, lk.bandwidth, lk.latency_s, lk.source)
    return names


def build_topology(gpu: GPU, gpus: int, link: str = "pcie", nodes: int = 1,
                   inter_node: str = "ib-ndr", nccl: str = "2.23",
                   host_cpu: str | None = None, ring_overlap: str = "auto") -> Topology:
    """Graph of ``nodes`` machines with ``gpus`` GPUs in all, linked by ``link``; on PCIe
    hosts the transports follow NCCL ``nccl`` ("2.23": 2.23.4 and later, or "2.22") on a
    ``host_cpu`` ("intel" or "amd"; default: the PCIe generation's usual vendor); ring
    attention's exchange overlaps its attention as ``ring_overlap`` says ("auto": as the link
    does, ``sim.hardware.RING_EXCHANGE_OVERLAPS``; "yes"; "no")."""
    if ring_overlap not in RING_OVERLAP_CHOICES:
        raise UserError(f"unknown --ring-overlap '{ring_overlap}'; choose one of: "
                        f"{', '.join(RING_OVERLAP_CHOICES)}")
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
    per_node = gpus // nodes
    bus = host_bus(gpu.pcie, host_cpu) if gpu.pcie != "loopback" else None
    # Checked even where it has nothing to act on (NVLink), so that a typo is still caught.
    p2p_cpu = nccl_p2p_through_cpu(nccl, bus.cpu if bus else "intel", per_node)
    g = Graph()
    gpu_nodes: list[str] = []
    if gpu.pcie != "loopback":
        g.graph.update(nccl=True, net_latency=LINKS[inter_node].latency_s,
                       overlap_slowdown=OVERLAP_SLOWDOWN[link],
                       memory_bandwidth=gpu.mem_bandwidth,
                       ring_overlaps=RING_EXCHANGE_OVERLAPS[link]
                       if RING_OVERLAP_CHOICES[ring_overlap] is None
                       else RING_OVERLAP_CHOICES[ring_overlap])
    if link == "pcie" and gpu.pcie != "loopback":
        place: dict[str, tuple[str, str, str | None]] = {}
        assert bus is not None
        for n in range(nodes):
            gpu_nodes += _pcie_node(g, gpu, bus, n, per_node, nodes, inter_node, place)
        g.graph["router"] = partial(_pcie_route, place)
        g.graph["many_to_many"] = bus.many_to_many
        g.graph["p2p_through_cpu"] = p2p_cpu and gpu.p2p
        g.add_nodes_from(gpu_nodes)
        return Topology(g, gpu_nodes, link, nodes)
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
