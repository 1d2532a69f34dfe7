"""A serving pool's replicas: the split of the GPUs, where each replica sits, which parallel
configuration it runs, and each request class's isolated latency on it (cached).

A replica of ``k`` GPUs serves one request at a time (or, with batching, one batch of
same-class requests) with one ``ParallelConfig`` on ``k`` GPUs. Its isolated latency for a
class is the per-request simulation of ``sim.evaluate`` (planner mode), run once per
(configuration, class, batch) and cached; a batch of ``b`` is the same simulation with
``Workload.images = b`` (every op's batch ``b`` times one image's). Replicas are packed into the
nodes in order of size, each inside one node unless it spans whole nodes, so a replica's
topology is that of ``k`` GPUs of one node (or of ``k / per_node`` whole nodes).

Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from sim.arrivals import RequestClass, class_names
from sim.bounds import latency_lower_bound
from sim.config import ParallelConfig, Workload, validate
from sim.cost import CostSpec
from sim.cost.link_profile import apply_link_profile
from sim.errors import UserError
from sim.evaluate import evaluate
from sim.hardware import GPU
from sim.models import DiTModel
from sim.search import search
from sim.topology import Topology, build_topology

# Configurations per class kept from each replica width's planner search: the replica's
# configuration is chosen among their union for the whole mix (see ServiceTable.best_config).
KEEP_PER_CLASS = 3
_DEGREES = ("pipefusion", "ulysses", "ring", "tensor", "cfg", "distrifusion", "patches",
            "warmup")


@dataclass(frozen=True)
class ReplicaGroup:
    """``count`` replicas of ``gpus`` GPUs each, running ``config`` (``None``: chosen by the
    planner for the mix)."""

    count: int
    gpus: int
    config: ParallelConfig | None = None

    def label(self) -> str:
        """``4x1`` or ``1x4:pipefusion4(M=4,W=1)``."""
        return f"{self.count}x{self.gpus}" + (f":{self.config.label()}" if self.config else "")


def _parse_config(text: str, gpus: int, where: str) -> ParallelConfig:
    """``pipefusion=4/patches=4/warmup=1`` -> ParallelConfig on ``gpus`` GPUs; degrees not
    named are 1 except PipeFusion, which takes the GPUs the others leave."""
    values: dict[str, int] = {}
    for item in text.split("/"):
        name, eq, value = item.partition("=")
        if not eq or name not in _DEGREES:
            raise UserError(f"{where}: configuration entries are NAME=VALUE joined by '/', "
                            f"NAME one of {', '.join(_DEGREES)}; got '{item}'")
        try:
            values[name] = int(value)
        except ValueError:
            raise UserError(f"{where}: {name} must be a whole number, got '{value}'") from None
    others = math.prod(values.get(n, 1) for n in ("ulysses", "ring", "tensor", "cfg",
                                                  "distrifusion"))
    if "pipefusion" not in values:
        values["pipefusion"] = gpus // others if others > 0 and gpus % others == 0 else 1
    try:
        return ParallelConfig(gpus, **values)
    except UserError as e:  # a degree below 1: name the entry it came from
        raise UserError(f"{where}: {e}") from None


def parse_replicas(text: str, total_gpus: int | None) -> list[ReplicaGroup]:
    """Groups of ``--replicas COUNTxGPUS[:CONFIG],...`` (e.g. ``4x1,1x4`` or
    ``1x4:pipefusion=4/patches=4/warmup=1,4x1``); their GPUs must add up to ``total_gpus``
    (``None``: any total, as for the executor's replicas, which are processes)."""
    groups = []
    for item in text.split(","):
        item = item.strip()
        shape, colon, conf = item.partition(":")
        count_text, x, gpus_text = shape.partition("x")
        try:
            count, gpus = int(count_text), int(gpus_text)
        except ValueError:
            raise UserError(f"--replicas entries are COUNTxGPUS[:CONFIG], e.g. 4x1,1x4; got "
                            f"'{item}'") from None
        if not x or count < 1 or gpus < 1:
            raise UserError(f"--replicas: count and GPUs per replica must be at least 1, got "
                            f"'{item}'")
        cfg = _parse_config(conf, gpus, f"--replicas {item}") if colon else None
        groups.append(ReplicaGroup(count, gpus, cfg))
    used = sum(g.count * g.gpus for g in groups)
    if total_gpus is not None and used != total_gpus:
        raise UserError(f"--replicas {text} uses {used} GPUs but --gpus is {total_gpus}; "
                        f"the replicas must use the whole pool")
    return groups


@dataclass
class Cluster:
    """The pool's hardware: GPU kind, total GPUs, intra-node link, nodes and network, and an
    optional measured link profile."""

    gpu: GPU
    gpus: int
    link: str
    nodes: int = 1
    inter_node: str = "ib-ndr"
    link_profile: str | None = None
    nccl: str = "2.23"
    host_cpu: str | None = None
    ring_overlap: str = "auto"

    def __post_init__(self) -> None:
        self._topos: dict[int, Topology] = {}
        build_topology(self.gpu, self.gpus, self.link, self.nodes, self.inter_node,  # checks
                       self.nccl, self.host_cpu, self.ring_overlap)

    @property
    def per_node(self) -> int:
        """GPUs in one node."""
        return self.gpus // self.nodes

    def fits(self, k: int) -> bool:
        """Whether a replica of ``k`` GPUs packs into the nodes: it divides a node, or spans
        whole nodes."""
        return k <= self.gpus and (self.per_node % k == 0 or k % self.per_node == 0)

    def topology(self, k: int) -> Topology:
        """The graph a replica of ``k`` GPUs runs on (cached)."""
        if k not in self._topos:
            if not self.fits(k):
                raise UserError(f"a replica of {k} GPUs does not pack into nodes of "
                                f"{self.per_node} GPUs: use replica sizes that divide a node "
                                f"or span whole nodes")
            nodes = max(1, k // self.per_node)
            topo = build_topology(self.gpu, k, self.link, nodes, self.inter_node, self.nccl,
                                  self.host_cpu, self.ring_overlap)
            if self.link_profile:
                topo = apply_link_profile(topo, Path(self.link_profile))
            self._topos[k] = topo
        return self._topos[k]


class ServiceTable:
    """Isolated latencies (seconds) of each request class on each replica configuration,
    simulated once and cached; also picks a replica width's configuration for the mix."""

    def __init__(self, model: DiTModel, classes: list[RequestClass], cluster: Cluster,
                 dtype: str = "bf16", text_encoder: bool = True, vae: bool = True,
                 spec: CostSpec | None = None, scale: float = 1.0,
                 warmups: tuple[int, ...] = (1,)) -> None:
        self.model = model
        self.classes = classes
        self.names = class_names(classes)
        self.cluster = cluster
        self.spec = spec or CostSpec()
        self.scale = scale
        self.warmups = warmups
        self.workloads = [Workload(model, c.height, c.width, c.steps, dtype, text_encoder, vae)
                          for c in classes]
        for wl in self.workloads:
            validate(wl, ParallelConfig(1))  # resolution on the patch grid, steps >= 1
        self._costs = [self.spec.build(wl, cluster.gpu, scale) for wl in self.workloads]
        self._latency: dict[tuple[ParallelConfig, int], float] = {}
        self._batched: dict[tuple[ParallelConfig, int, int], float] = {}
        self._best: dict[int, ParallelConfig | None] = {}
        self.simulated = 0  # per-request simulations run (cache misses)

    def _warmup_for(self, cfg: ParallelConfig, c: int) -> ParallelConfig:
        # A warmup count above a class's steps cannot apply to it: its whole run is warmup.
        return replace(cfg, warmup=min(cfg.warmup, self.workloads[c].steps))

    def latency(self, cfg: ParallelConfig, c: int) -> float:
        """Isolated latency of class ``c`` on a replica running ``cfg``, seconds; ``inf``
        when the configuration does not apply to the class (invalid for its size) or does not
        fit in memory."""
        key = (cfg, c)
        if key not in self._latency:
            wl = self.workloads[c]
            run = self._warmup_for(cfg, c)
            try:
                validate(wl, run)
            except UserError:
                self._latency[key] = math.inf
                return math.inf
            pred = evaluate(wl, run, self.cluster.gpu, self.cluster.topology(cfg.gpus),
                            self._costs[c], self.scale, fast=True, spec=self.spec)
            self.simulated += 1
            self._latency[key] = math.inf if pred.oom else pred.latency_s
        return self._latency[key]

    def batch_latency(self, cfg: ParallelConfig, c: int, b: int) -> float:
        """Seconds a batch of ``b`` requests of class ``c`` takes on a replica running
        ``cfg`` (every request of it finishes then); ``inf`` when it does not apply or does
        not fit in memory. ``b`` = 1 is ``latency``."""
        if b == 1:
            return self.latency(cfg, c)
        key = (cfg, c, b)
        if key not in self._batched:
            if not math.isfinite(self.latency(cfg, c)):
                self._batched[key] = math.inf
                return math.inf
            wl = replace(self.workloads[c], images=b)
            pred = evaluate(wl, self._warmup_for(cfg, c), self.cluster.gpu,
                            self.cluster.topology(cfg.gpus), self._costs[c], self.scale,
                            fast=True, spec=self.spec)
            self.simulated += 1
            self._batched[key] = math.inf if pred.oom else pred.latency_s
        return self._batched[key]

    def batch_limit(self, cfg: ParallelConfig, c: int, max_batch: int) -> int:
        """The largest batch of class ``c`` up to ``max_batch`` that a replica running
        ``cfg`` forms: every batch up to it fits in memory (``sim.memory``, through the
        simulation's out-of-memory verdict). 0 when the class cannot run on it at all."""
        k = 0
        while k < max_batch and math.isfinite(self.batch_latency(cfg, c, k + 1)):
            k += 1
        return k

    def mean_latency(self, cfg: ParallelConfig) -> float:
        """Mix-weighted mean isolated latency on ``cfg``, seconds (``inf`` if a class cannot
        run on it): the mean service time that bounds the replica's throughput."""
        return sum(cl.weight * self.latency(cfg, c) for c, cl in enumerate(self.classes))

    def best_config(self, k: int) -> ParallelConfig | None:
        """The configuration of a ``k``-GPU replica with the lowest mix-weighted mean
        latency, among the best ``KEEP_PER_CLASS`` of each class's planner search on ``k``
        GPUs (``sim.search``, with its pruning); ``None`` when no configuration serves every
        class. Cached per ``k``."""
        if k not in self._best:
            if k == 1:
                options = [ParallelConfig(1)]
            else:
                options = []
                for c, wl in enumerate(self.workloads):
                    warmups = sorted({min(w, wl.steps) for w in self.warmups})
                    # Only the best KEEP_PER_CLASS are read: no family rows to simulate.
                    res = search(wl, self.cluster.gpu, self.cluster.topology(k), warmups,
                                 self.scale, top=KEEP_PER_CLASS, per_family=0, only=k,
                                 spec=self.spec)
                    self.simulated += len(res.ranked)
                    # The search simulated these for its class with this table's cost model
                    # (same call as ``latency``): the mix's mean latency reuses them.
                    for p in res.ranked:
                        self._latency.setdefault((p.config, c),
                                                 math.inf if p.oom else p.latency_s)
                    kept = [p.config for p in res.ranked if p.config.gpus == k and not p.oom]
                    for cfg in kept[:KEEP_PER_CLASS]:
                        if cfg not in options:
                            options.append(cfg)
            # The options in order of a lower bound on their mean latency: once the bound
            # passes the best mean found, no later option can win (ties go to the earlier
            # option, as min over (mean, index) would), so it is never simulated.
            bounds = sorted((sum(cl.weight * self._lower_bound(cfg, c)
                                 for c, cl in enumerate(self.classes)), i, cfg)
                            for i, cfg in enumerate(options))
            best: tuple[float, int, ParallelConfig] | None = None
            for lb, i, cfg in bounds:
                if best is not None and (lb, i) > best[:2]:
                    break
                mean = self.mean_latency(cfg)
                if math.isfinite(mean) and (best is None or (mean, i) < best[:2]):
                    best = (mean, i, cfg)
            self._best[k] = best[2] if best else None
        return self._best[k]

    def _lower_bound(self, cfg: ParallelConfig, c: int) -> float:
        """A latency of class ``c`` on ``cfg`` that its simulation cannot beat, seconds: the
        simulated one when cached, else ``sim.bounds.latency_lower_bound`` (``inf`` when the
        configuration does not apply to the class)."""
        if (cfg, c) in self._latency:
            return self._latency[(cfg, c)]
        wl = self.workloads[c]
        run = self._warmup_for(cfg, c)
        try:
            validate(wl, run)
        except UserError:
            return math.inf
        lb, _ = latency_lower_bound(wl, run, self.cluster.gpu, self.cluster.topology(cfg.gpus),
                                    self._costs[c], self.scale, self.spec)
        return lb

    def reference(self, c: int) -> tuple[float, int]:
        """The latency a ``Kx`` SLO multiplies for class ``c``, seconds, and the replica width
        it is taken on: the isolated latency on the narrowest replica of this cluster that runs
        the class (one GPU, serial, whenever the model fits on one). One reference for every
        split, so that splits are compared under the same SLO."""
        for k in range(1, self.cluster.gpus + 1):
            if not self.cluster.fits(k):
                continue
            cfg = self.best_config(k)
            if cfg is not None and math.isfinite(self.latency(cfg, c)):
                return self.latency(cfg, c), k
        raise UserError(f"class {self.names[c]} runs on no replica of this pool: it is out of "
                        f"memory on every width up to {self.cluster.gpus} GPUs")
