"""Serial execution on one GPU: the whole image through all blocks, step after step. It is
PipeFusion's schedule with one stage and one patch, so the two can never disagree."""

from __future__ import annotations

from dataclasses import replace

from sim.config import ParallelConfig, Workload
from sim.schedule import Schedule
from sim.strategies import pipefusion


def build(wl: Workload, cfg: ParallelConfig) -> Schedule:
    """The one-rank schedule (``cfg`` must ask for one GPU)."""
    return pipefusion.build(wl, replace(cfg, pipefusion=1, patches=1, warmup=0))
