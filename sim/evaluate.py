"""One configuration, end to end: schedule -> engine -> trace -> metrics, plus memory.

This is what ``sim.predict`` prints and what ``sim.plan`` ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from operator import itemgetter

from sim.config import ParallelConfig, Workload
from sim.cost import CostModel, CostSpec
from sim.des import paused_gc
from sim.engine import simulate
from sim.errors import UserError
from sim.hardware import GPU
from sim.host import HostModel
from sim.memory import MemoryBreakdown, memory_per_rank
from sim.metrics import Metrics, compute_metrics, source_summary
from sim.strategies import build_schedule_and_orbits
from sim.stretch import costed_topology
from sim.topology import Topology, build_topology
from sim.trace import ExtendedTrace, Trace, TraceRow, simulated_rows

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
             spec: CostSpec | None = None, exact: bool = False,
             short_steps: int = 4) -> Prediction:
    """Simulate ``cfg`` for ``wl`` on ``topo`` (ranks on its first GPUs).

    Steady steps repeat: unless ``exact``, only ``W + short_steps`` steps are simulated (at
    least 4: the two steps compared need a steady step before them and the last after; one
    more for DistriFusion) and, once the two steps before the last are identical up to a
    time shift with no CPU lead shrinking over them (``periodic_extension``), or else the two
    steps before those (the last step can change the one before it: DistriFusion's last
    step gathers no K,V, so the step before has the links to itself), the rest are shifted
    copies of them (``ExtendedTrace``: metrics come from the short run, the full rows are
    built only when read). If neither pair matches, the short run is simulated once more,
    longer (``_retry_length``: as long as a shrinking CPU lead needs to settle, or
    ``W + SETTLE_STEPS``), and checked the same way. Otherwise, and with ``exact``, every
    step is simulated. ``fast`` (the planner's mode) also merges a stage's per-block
    communication into one op per stage.

    ``cost`` (already scaled) wins over ``spec``, which builds one scaled by ``scale``
    (default: the roofline).
    """
    # The cycle collector waits for the whole prediction, not only the schedule and the run
    # (sim.des.paused_gc): what they leave (ops, events, rows) is freed or kept by then.
    with paused_gc():
        return _evaluate(wl, cfg, gpu, topo, cost, scale, fast, spec, exact, short_steps)


def _evaluate(wl: Workload, cfg: ParallelConfig, gpu: GPU, topo: Topology,
              cost: CostModel | None, scale: float, fast: bool, spec: CostSpec | None,
              exact: bool, short_steps: int) -> Prediction:
    spec = spec or CostSpec()
    cost = cost or spec.build(wl, gpu, scale)
    host = HostModel(wl.model, gpu)
    trace: Trace | None = None
    # DistriFusion's step before the last mostly differs (see above): its pair then sits one
    # step further from the end, so its short run is one step longer for as many settled
    # steps before the pair.
    length = cfg.warmup + max(short_steps, 4) + (cfg.distrifusion > 1)
    lengthened = False
    costed: Topology | None = None  # ``topo`` at the run's compute between blocking calls
    while not exact and trace is None and wl.steps > length:
        sched, orbits = build_schedule_and_orbits(replace(wl, steps=length), cfg, coarse=fast)
        costed = costed or costed_topology(topo, sched, cost)
        short = simulate(sched, costed, cost, host=host, orbits=orbits)
        trace = periodic_extension(short, length - 3, wl.steps)
        if trace is None and length - 4 > cfg.warmup:
            # The pair before: the last step may change the one before it, not those before.
            trace = periodic_extension(short, length - 4, wl.steps, tail=2)
        if trace is None:
            if lengthened:
                break
            length, lengthened = _retry_length(short, cfg.warmup, length), True
    if trace is None:
        sched, orbits = build_schedule_and_orbits(wl, cfg, coarse=fast)
        costed = costed or costed_topology(topo, sched, cost)
        trace = simulate(sched, costed, cost, host=host, orbits=orbits)
    metrics = compute_metrics(trace, sched.world_size, wl.steps, cfg.warmup)
    memory = memory_per_rank(wl, cfg, sched, gpu)
    return Prediction(wl, cfg, gpu, costed or topo, metrics, memory, trace, scale,
                      stage_layers=list(sched.stage_layers),
                      cost_sources=source_summary(trace), cost_model=spec.describe(cost))


# Steps after the warmup that a short run gets on its second try when no CPU lead is
# shrinking: pipelines fill and the first steady steps settle within a few steps (PipeFusion
# on 16 stages repeats from its fourth step, DistriFusion from its fourth).
SETTLE_STEPS = 9


def _retry_length(short: Trace, warmup: int, length: int) -> int:
    """Steps of the second short run after ``short`` (``length`` steps, ``warmup`` of them
    synchronous) matched no pair: as many more as a shrinking CPU lead needs to be used up
    (``lead_settles_in``), else ``warmup + SETTLE_STEPS``."""
    more = lead_settles_in(short, length - 2)
    return length + more if more is not None else max(length + 1, warmup + SETTLE_STEPS)


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
_STEP_ORDER = itemgetter(*map(TraceRow._fields.index,
                              ("rank", "start_s", "op", "patch", "layer_first")))
_SAME_OP = itemgetter(*map(TraceRow._fields.index,
                           ("rank", "op", "patch", "layer_first", "nbytes")))
_END_S = itemgetter(TraceRow._fields.index("end_s"))
# ``periodic_extension`` reads these by index: the checks below keep them where it expects.
assert TraceRow._fields[2] == "step" and TraceRow._fields[6:8] == ("start_s", "end_s")


def periodic_extension(trace: Trace, first_middle: int, steps: int,
                       tail: int = 1) -> ExtendedTrace | None:
    """Extend a trace of ``first_middle + 2 + tail`` steps (steps ``first_middle`` and
    ``first_middle + 1`` are middle steps, followed by ``tail`` steps that end the run) to
    ``steps`` steps by repeating the second middle step, shifted by one step period each
    time, before the tail. Returns ``None`` when the two middle steps are not identical up
    to a shift (then the run is not periodic and must be simulated in full)."""
    a, b = first_middle, first_middle + 1
    # A copied rank's rows have its representative's times: the simulated rows decide.
    # (Rows are tuples: fields read by index, ``TraceRow`` order, which is cheaper than
    # by name on every row.)
    rows = simulated_rows(trace)
    rows_a = [r for r in rows if r[2] == a]
    rows_b = [r for r in rows if r[2] == b]
    if not rows_a or len(rows_a) != len(rows_b):
        return None
    rows_a.sort(key=_STEP_ORDER)
    rows_b.sort(key=_STEP_ORDER)
    period = max(map(_END_S, rows_b)) - max(map(_END_S, rows_a))
    tol = 1e-9 * max(1.0, trace.end_s)
    # With a host clock, repeating step b is exact only if no rank's CPU lead shrinks over
    # it: a shrinking lead (a GPU-bound warmup followed by host-bound steps) runs out in some
    # later copy, which would then wait for the CPU.
    lead = trace.cpu_ahead
    for (rank, s), ahead in lead.items():
        if s == b and ahead - lead.get((rank, b + 1), ahead) > tol:
            return None
    for ra, rb in zip(rows_a, rows_b, strict=True):
        if _SAME_OP(ra) != _SAME_OP(rb) or abs(ra[6] + period - rb[6]) > tol or \
                abs(ra[7] + period - rb[7]) > tol:
            return None
    return ExtendedTrace(trace, b, steps - (first_middle + 2 + tail), period)


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
