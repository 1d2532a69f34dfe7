"""One configuration, end to end: schedule -> engine -> trace -> metrics, plus memory.

This is what ``sim.predict`` prints and what ``sim.plan`` ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from operator import attrgetter

from sim.config import ParallelConfig, Workload
from sim.cost import CostModel, CostSpec
from sim.engine import collective_call, simulate
from sim.errors import UserError
from sim.hardware import GPU
from sim.host import HostModel
from sim.layout import RankLayout
from sim.memory import MemoryBreakdown, memory_per_rank
from sim.metrics import Metrics, compute_metrics, source_summary
from sim.schedule import Collective, Compute, OpKind, Schedule, Send
from sim.strategies import build_schedule
from sim.topology import Topology, build_topology
from sim.trace import ExtendedTrace, Trace

# Factors on compute costs that --single-gpu-latency may ask for: a real run differs from the
# roofline (or a measured profile) by a small factor; a thousandfold gap is a wrong input.
CALIBRATION_RANGE = (1e-3, 1e3)


@dataclass
class Prediction:
    """Predicted latency, metrics and memory of one configuration."""

    workload: Workload
    config: ParallelConfig
    gpu: GPU
    topology: Topology
    metrics: Metrics
    memory: list[MemoryBreakdown]
    trace: Trace
    calibration_scale: float = 1.0
    stage_layers: list[tuple[int, int]] | None = None
    cost_sources: dict | None = None  # per compute kind: ops per source (measured, ...)
    cost_model: dict | None = None  # what the cost model rests on

    @property
    def latency_s(self) -> float:
        return self.metrics.latency_s

    @property
    def memory_gb(self) -> float:
        """Peak memory of the fullest rank, GB."""
        return max(m.total for m in self.memory) / 1e9

    @property
    def oom(self) -> bool:
        return max(m.total for m in self.memory) > self.gpu.memory_bytes

    def as_dict(self) -> dict:
        """The JSON object of ``sim.predict --json`` (one entry of ``sim.plan --json``)."""
        wl = self.workload
        cfg = self.config.as_dict()
        cfg.update(model=wl.model.name, gpu=self.gpu.name, link=self.topology.link,
                   nodes=self.topology.nodes, resolution=[wl.height, wl.width],
                   steps=wl.steps, dtype=wl.dtype, text_encoder=wl.text_encoder, vae=wl.vae,
                   label=self.config.label(),
                   stage_layers=[list(s) for s in self.stage_layers or []])
        d = {"latency_s": self.latency_s, "memory_gb": self.memory_gb, "oom": self.oom,
             "gpu_memory_gb": self.gpu.memory_bytes / 1e9}
        d.update(self.metrics.as_dict())
        d["memory_per_rank_gb"] = [m.as_dict() for m in self.memory]
        d["calibration_scale"] = self.calibration_scale
        d["cost_source"] = self.cost_sources or {}
        d["cost_model"] = self.cost_model or {"kind": "roofline"}
        d["config"] = cfg
        return d

    def without_trace(self) -> Prediction:
        """A copy without the trace (cheap to keep or send between processes)."""
        return replace(self, trace=Trace([]))


def evaluate(wl: Workload, cfg: ParallelConfig, gpu: GPU, topo: Topology,
             cost: CostModel | None = None, scale: float = 1.0, fast: bool = False,
             spec: CostSpec | None = None, exact: bool = False) -> Prediction:
    """Simulate ``cfg`` for ``wl`` on ``topo`` (ranks on its first GPUs).

    Steady steps repeat: unless ``exact``, only ``W + 4`` steps are simulated (then
    ``W + 8``, ``W + 16``, ... while shorter than the run) and, once the two steps before
    the last are identical up to a time shift with no CPU lead shrinking over them
    (``periodic_extension``), the rest are shifted copies of them
    (``ExtendedTrace``: metrics come from the short run, the full rows are built only when
    read). Otherwise, and with ``exact``, every step is simulated. ``fast`` (the planner's
    mode) also merges a stage's per-block communication into one op per stage.

    ``cost`` (already scaled) wins over ``spec``, which builds one scaled by ``scale``
    (default: the roofline).
    """
    spec = spec or CostSpec()
    cost = cost or spec.build(wl, gpu, scale)
    host = HostModel(wl.model, gpu)
    trace: Trace | None = None
    # A warmup that leaves the CPU ahead of the GPU takes some steady steps to use that lead
    # up (see periodic_extension): the short run is lengthened by as many steps as the lead
    # needs at its rate of shrinking, once; any other mismatch means a full simulation.
    length, lengthened = cfg.warmup + 4, False
    while not exact and trace is None and wl.steps > length:
        sched = build_schedule(replace(wl, steps=length), cfg, coarse=fast)
        short = simulate(sched, topo, cost, host=host)
        trace = periodic_extension(short, length - 3, wl.steps)
        if trace is None:
            more = None if lengthened else lead_settles_in(short, length - 2)
            if more is None:
                break
            length, lengthened = length + more, True
    if trace is None:
        sched = build_schedule(wl, cfg, coarse=fast)
        trace = simulate(sched, topo, cost, host=host)
    metrics = compute_metrics(trace, sched.world_size, wl.steps, cfg.warmup)
    memory = memory_per_rank(wl, cfg, sched, gpu)
    return Prediction(wl, cfg, gpu, topo, metrics, memory, trace, scale,
                      stage_layers=list(sched.stage_layers),
                      cost_sources=source_summary(trace), cost_model=spec.describe(cost))


def lead_settles_in(trace: Trace, step: int) -> int | None:
    """Steps after ``step`` until no rank's CPU lead shrinks any more, at the rate it shrank
    over ``step`` (the lead stops shrinking once it is used up); None when none shrank."""
    lead = trace.cpu_ahead
    need = 0
    for (rank, s), ahead in lead.items():
        if s != step:
            continue
        rate = ahead - lead.get((rank, step + 1), ahead)
        if rate > 1e-12:
            need = max(need, math.ceil(max(lead[(rank, step + 1)], 0.0) / rate) + 2)
    return need or None


# Field getters built in C: they run on every row of every planner candidate.
_STEP_ORDER = attrgetter("rank", "start_s", "op", "patch", "layer_first")
_SAME_OP = attrgetter("rank", "op", "patch", "layer_first", "nbytes")


def periodic_extension(trace: Trace, first_middle: int, steps: int) -> ExtendedTrace | None:
    """Extend a trace of ``first_middle + 3`` steps (steps ``first_middle`` and
    ``first_middle + 1`` are middle steps, the last is the final step) to ``steps`` steps by
    repeating the second middle step, shifted by one step period each time. Returns ``None``
    when the two middle steps are not identical up to a shift (then the run is not periodic
    and must be simulated in full)."""
    a, b = first_middle, first_middle + 1
    rows_a = [r for r in trace.rows if r.step == a]
    rows_b = [r for r in trace.rows if r.step == b]
    if not rows_a or len(rows_a) != len(rows_b):
        return None
    rows_a.sort(key=_STEP_ORDER)
    rows_b.sort(key=_STEP_ORDER)
    period = max(r.end_s for r in rows_b) - max(r.end_s for r in rows_a)
    tol = 1e-9 * max(1.0, trace.end_s)
    # With a host clock, repeating step b is exact only if no rank's CPU lead shrinks over
    # it: a shrinking lead (a GPU-bound warmup followed by host-bound steps) runs out in some
    # later copy, which would then wait for the CPU.
    lead = trace.cpu_ahead
    for (rank, s), ahead in lead.items():
        if s == b and ahead - lead.get((rank, b + 1), ahead) > tol:
            return None
    for ra, rb in zip(rows_a, rows_b, strict=True):
        if _SAME_OP(ra) != _SAME_OP(rb) or abs(ra.start_s + period - rb.start_s) > tol or \
                abs(ra.end_s + period - rb.end_s) > tol:
            return None
    return ExtendedTrace(trace, b, steps - (first_middle + 3), period)


# Compute kinds on the path of one patch through the stages (the step's conditioning, the
# text encode and the VAE decode are not tied to a patch).
_CHAIN_KINDS = frozenset((OpKind.EMBED, OpKind.BLOCKS, OpKind.FINAL, OpKind.SCHEDULER_STEP))


@dataclass
class RankSeconds:
    """What one rank cannot overlap with anything else of its own, seconds: ``by_step`` sums
    its compute and the uncontended time of its blocking collectives per step (-1: outside
    the loop); ``by_slot`` the part of it on one patch's path per (step, patch), plus the
    uncontended transfer of the hidden states or latent that carry the patch on."""

    by_step: dict[int, float]
    by_slot: dict[tuple[int, int], float]
    text_s: float
    vae_s: float


def step_seconds(sched: Schedule, topo: Topology, cost: CostModel) -> list[RankSeconds]:
    """``RankSeconds`` of every rank of ``sched``."""
    out = []
    alone: dict[tuple, float] = {}  # the same collectives recur on every step and rank
    for rank, ops in enumerate(sched.ranks):
        by_step: dict[int, float] = {}
        by_slot: dict[tuple[int, int], float] = {}
        text = vae = 0.0
        for op in ops:
            kind = type(op)
            if kind is Compute:
                t, step = cost.compute_time(op), op.step
                if op.kind in _CHAIN_KINDS:
                    by_slot[(step, op.patch)] = by_slot.get((step, op.patch), 0.0) + t
                elif op.kind == OpKind.TEXT_ENCODE:
                    text += t
                elif op.kind == OpKind.VAE_DECODE:
                    vae += t
            elif kind is Collective and not op.asynchronous and len(op.group) > 1:
                key = (op.kind, op.group, op.nbytes, op.count)
                t = alone.get(key)
                if t is None:
                    t = alone[key] = collective_alone_s(op, topo)
                step = op.tag.step
                if op.tag.patch >= -1 and op.tag.what != "latent":
                    key = (step, op.tag.patch)
                    by_slot[key] = by_slot.get(key, 0.0) + t
            elif kind is Send and op.tag.what in ("hidden", "latent"):
                key = (op.tag.step, op.tag.patch)
                by_slot[key] = by_slot.get(key, 0.0) + (
                    topo.route_latency(rank, op.dst) + op.nbytes / topo.route_bandwidth(
                        rank, op.dst))
                continue
            else:
                continue
            by_step[step] = by_step.get(step, 0.0) + t
        out.append(RankSeconds(by_step, by_slot, text, vae))
    return out


def _chain_bound(sched: Schedule, per_rank: list[RankSeconds],
                 steps: list[tuple[int, int, bool]], patches: int) -> float:
    """The longest path of one patch through the pipeline, seconds: on each chain of stage
    peers, stage 0's text encode, then for every step (``steps``: (step, copies, warm)) the
    patch's work on every stage and the transfers between them, then the VAE decode. Each
    part waits for the one before (hidden states from the stage before, the latent from the
    step before), so no run is shorter."""
    layout = sched.layout
    if layout is None:
        return 0.0
    best = 0.0
    for chain in layout.groups("stage"):
        for j in range(patches):
            total = per_rank[chain[0]].text_s + per_rank[chain[-1]].vae_s
            for step, copies, warm in steps:
                slot = (step, -1 if warm else j)
                total += copies * sum(per_rank[r].by_slot.get(slot, 0.0) for r in chain)
            best = max(best, total)
    return best


def collective_alone_s(op: Collective, topo: Topology) -> float:
    """Seconds of ``op`` with the links to itself: its bytes over the narrowest route of the
    group plus the call's latency (``sim.engine.collective_call``, as the engine charges)."""
    pairs, per_flow, latency = collective_call(topo, op.kind, op.group, op.nbytes,
                                               op.asynchronous)
    return op.count * (per_flow / min(topo.route_bandwidth(a, b) for a, b in pairs) + latency)


def latency_lower_bound(wl: Workload, cfg: ParallelConfig, gpu: GPU, topo: Topology,
                        cost: CostModel | None = None, scale: float = 1.0,
                        spec: CostSpec | None = None) -> tuple[float, list[MemoryBreakdown]]:
    """A latency no simulation of ``cfg`` (planner mode) can beat, seconds, without running
    the engine: the larger of the busiest rank's compute plus the uncontended time of its
    blocking collectives (a rank can overlap neither with its own compute) and the longest
    path of one patch through the pipeline stages, step after step (``_chain_bound``).
    Steps after the warmup are identical but for the last, so a short schedule is summed
    and its middle step repeated. Also returns the memory per rank (which needs no
    simulation)."""
    return lower_bounds(wl, [cfg], gpu, topo, cost or (spec or CostSpec()).build(wl, gpu, scale),
                        template=False)[0]


def _bound_ranks(cfg: ParallelConfig) -> frozenset[int]:
    """The ranks whose ops the bounds sum: one chain of stage peers, the one that holds the
    VAE decode (first CFG half, first sequence position). Any subset of ranks gives a valid
    bound (a maximum over fewer ranks and chains); the ranks of a stage run the same shapes,
    so little is lost, and at 64 GPUs building every rank's ops cost more than the rest of
    the search."""
    layout = RankLayout.of(cfg)
    return frozenset(layout.group(layout.rank(stage=layout.stages - 1), "stage"))


def lower_bounds(wl: Workload, cfgs: list[ParallelConfig], gpu: GPU, topo: Topology,
                 cost: CostModel, template: bool = True
                 ) -> list[tuple[float, list[MemoryBreakdown]]]:
    """``latency_lower_bound`` of each of ``cfgs``, seconds, with the memory per rank.

    Configurations that differ only in their warmup count share one ``template``: a
    three-step schedule with one warmup step holds a warm step, a steady step and the last
    step, and a run with ``W < S`` warmup steps of ``S`` is ``W`` warm steps, ``S - W - 1``
    steady ones and the last. Without ``template`` (and for runs with every step warm) each
    gets its own short schedule (``W + 2`` steps, middle step repeated)."""
    out: list[tuple[float, list[MemoryBreakdown]] | None] = [None] * len(cfgs)
    groups: dict[ParallelConfig, list[int]] = {}
    for i, c in enumerate(cfgs):
        # A run with every step warm has no steady step: it gets its own short schedule.
        shared = template and wl.steps >= 3 and c.warmup < wl.steps
        groups.setdefault(replace(c, warmup=0) if shared else c, []).append(i)
    for base, members in groups.items():
        if base.warmup == 0 and template and wl.steps >= 3 and \
                all(cfgs[i].warmup < wl.steps for i in members):
            sched = build_schedule(replace(wl, steps=3), replace(base, warmup=1), coarse=True,
                                   only=_bound_ranks(base))
            per_rank = step_seconds(sched, topo, cost)
            for i in members:
                w = cfgs[i].warmup
                best = max(t.by_step.get(-1, 0.0) + w * t.by_step.get(0, 0.0)
                           + (wl.steps - w - 1) * t.by_step.get(1, 0.0) + t.by_step.get(2, 0.0)
                           for t in per_rank)
                best = max(best, _chain_bound(sched, per_rank, [
                    (0, w, True), (1, wl.steps - w - 1, False), (2, 1, False)], sched.patches))
                shape = replace(sched, warmup=w, steps=wl.steps)
                out[i] = (best, memory_per_rank(wl, cfgs[i], shape, gpu))
            continue
        for i in members:
            cfg = cfgs[i]
            short_steps = min(wl.steps, cfg.warmup + 2)
            sched = build_schedule(replace(wl, steps=short_steps), cfg, coarse=True,
                                   only=_bound_ranks(cfg))
            repeat = wl.steps - short_steps  # extra copies of the middle step (cfg.warmup)
            middle = cfg.warmup if short_steps - 1 > cfg.warmup else None
            per_rank = step_seconds(sched, topo, cost)
            best = max(sum(v * (1 + repeat if s == middle else 1) for s, v in t.by_step.items())
                       for t in per_rank)
            best = max(best, _chain_bound(sched, per_rank, [
                (t, 1 + repeat if t == middle else 1, t < cfg.warmup)
                for t in range(short_steps)], sched.patches))
            out[i] = (best, memory_per_rank(wl, cfg, sched, gpu))
    return out  # type: ignore[return-value]


def _bisect_scale(latency, target: float, lo: float, hi: float) -> float:
    """The factor in [lo, hi] whose serial latency is ``target`` (``latency`` increases with
    the factor). Where even ``lo`` is too slow, the host time alone exceeds the measurement:
    ``lo`` is returned, and the prediction stays above it."""
    if latency(lo) >= target:
        return lo
    a, b = math.log(lo), math.log(hi)
    while b - a > 1e-10:
        mid = 0.5 * (a + b)
        if latency(math.exp(mid)) < target:
            a = mid
        else:
            b = mid
    return math.exp(0.5 * (a + b))


def calibration_scale(wl: Workload, gpu: GPU, single_gpu_latency_s: float,
                      spec: CostSpec | None = None, name: str = "single_gpu_latency_s") -> float:
    """Factor on every compute cost that makes the simulated single-GPU run of ``wl`` last
    ``single_gpu_latency_s`` seconds (a serial run has no communication, so it is exact).

    Raises ``UserError`` (naming the input as ``name``) unless the latency is finite and
    positive and the factor within ``CALIBRATION_RANGE``: a factor outside it is a wrong
    number (milliseconds for seconds, another model or resolution), not a calibration, and
    extreme ones overflow or underflow every time downstream (1e300 is a finite float)."""
    if not (math.isfinite(single_gpu_latency_s) and single_gpu_latency_s > 0):
        raise UserError(f"{name} must be positive and finite, got {single_gpu_latency_s:g}")
    key = (wl, gpu, single_gpu_latency_s, spec)
    if key not in _CALIBRATED:
        _CALIBRATED[key] = _calibrate(wl, gpu, single_gpu_latency_s, spec, name)
    return _CALIBRATED[key]


# Factors already found, per (workload, GPU, latency, cost spec): a bisection simulates the
# serial run some forty times, and planners and benchmarks ask again for the same one.
_CALIBRATED: dict[tuple, float] = {}


def _calibrate(wl: Workload, gpu: GPU, single_gpu_latency_s: float, spec: CostSpec | None,
               name: str) -> float:
    topo = build_topology(gpu, 1, "pcie")
    spec = spec or CostSpec()
    serial = ParallelConfig(gpus=1)

    def latency(s: float) -> float:
        return evaluate(wl, serial, gpu, topo, spec=spec, scale=s).latency_s

    base = latency(1.0)
    scale = single_gpu_latency_s / base
    lo, hi = CALIBRATION_RANGE
    if HostModel(wl.model, gpu).active and lo <= scale <= hi:
        # The host clock does not scale with the GPU: the latency is max-plus in the factor,
        # monotone but not linear, so the factor is found by bisection (in log space).
        scale = _bisect_scale(latency, single_gpu_latency_s, lo, hi)
    if not lo <= scale <= hi:
        raise UserError(f"{name} {single_gpu_latency_s:g} s is {scale:.3g} times the simulated "
                        f"single-GPU latency ({base:.3g} s for {wl.model.name} at "
                        f"{wl.width}x{wl.height}, {wl.steps} steps); calibration accepts "
                        f"factors from {lo:g} to {hi:g}: give the measured latency in seconds, "
                        f"for this model, resolution and step count")
    return scale
