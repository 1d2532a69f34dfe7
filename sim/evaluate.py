"""One configuration, end to end: schedule -> engine -> trace -> metrics, plus memory.

This is what ``sim.predict`` prints and what ``sim.plan`` ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sim.config import ParallelConfig, Workload
from sim.cost import CostModel, RooflineCost
from sim.engine import simulate
from sim.hardware import GPU
from sim.memory import MemoryBreakdown, pipefusion_memory
from sim.metrics import Metrics, compute_metrics
from sim.strategies import build_schedule
from sim.topology import Topology, build_topology
from sim.trace import Trace


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
                   stage_layers=[list(s) for s in self._stage_layers()])
        d = {"latency_s": self.latency_s, "memory_gb": self.memory_gb, "oom": self.oom,
             "gpu_memory_gb": self.gpu.memory_bytes / 1e9}
        d.update(self.metrics.as_dict())
        d["memory_per_rank_gb"] = [m.as_dict() for m in self.memory]
        d["calibration_scale"] = self.calibration_scale
        d["cost_source"] = "roofline"
        d["config"] = cfg
        return d

    def _stage_layers(self) -> list[tuple[int, int]]:
        return [(r[4], r[5]) for r in self.trace.rows if r[1] == "blocks" and r[2] == 0
                and r[3] in (-1, 0)] if self.trace.rows else []


def evaluate(wl: Workload, cfg: ParallelConfig, gpu: GPU, topo: Topology,
             cost: CostModel | None = None, scale: float = 1.0) -> Prediction:
    """Simulate ``cfg`` for ``wl`` on ``topo`` (ranks on its first GPUs)."""
    sched = build_schedule(wl, cfg)
    cost = cost or RooflineCost(wl, gpu, scale)
    trace = simulate(sched, topo, cost)
    metrics = compute_metrics(trace, sched.world_size, wl.steps, sched.warmup)
    memory = pipefusion_memory(wl, cfg, sched, gpu)
    return Prediction(wl, cfg, gpu, topo, metrics, memory, trace, scale)


def calibration_scale(wl: Workload, gpu: GPU, single_gpu_latency_s: float) -> float:
    """Factor on every compute cost that makes the simulated single-GPU run of ``wl`` last
    ``single_gpu_latency_s`` seconds (a serial run has no communication, so it is exact)."""
    topo = build_topology(gpu, 1, "pcie")
    base = evaluate(wl, ParallelConfig(gpus=1), gpu, topo).latency_s
    return single_gpu_latency_s / base


def with_gpus(cfg: ParallelConfig, n: int) -> ParallelConfig:
    """``cfg`` on ``n`` GPUs of PipeFusion."""
    return replace(cfg, gpus=n, pipefusion=n)
