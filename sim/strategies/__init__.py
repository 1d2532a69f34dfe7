"""Strategies turn (workload, parallel config) into a schedule."""

from __future__ import annotations

from sim.config import ParallelConfig, Workload, validate
from sim.schedule import Schedule


def build_schedule(wl: Workload, cfg: ParallelConfig) -> Schedule:
    """Validate the request and build its schedule (raises ``UserError`` on a broken rule)."""
    from sim.strategies import pipefusion, serial

    validate(wl, cfg)
    if cfg.strategy == "serial":
        return serial.build(wl, cfg)
    return pipefusion.build(wl, cfg)
