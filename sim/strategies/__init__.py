"""Strategies turn (workload, parallel config) into a schedule.

- ``serial``: one GPU (``serial.py``);
- ``pipefusion``, ``ulysses``, ``ring``, ``tensor``, ``cfg`` and their hybrids: one generator
  (``hybrid.py``; ``pipefusion.py`` is its pure-PipeFusion entry);
- ``distrifusion`` (optionally with ``cfg``): ``distrifusion.py``.
"""

from __future__ import annotations

from sim.config import ParallelConfig, Workload, validate
from sim.des import paused_gc
from sim.schedule import Schedule
from sim.symmetry import Orbit, shift_classes

FAMILIES = ("serial", "pipefusion", "ulysses", "ring", "tensor", "distrifusion", "cfg", "hybrid")


def build_schedule_and_orbits(wl: Workload, cfg: ParallelConfig, coarse: bool = False
                              ) -> tuple[Schedule, dict[int, Orbit]]:
    """``build_schedule``, and the schedule's shift classes (``sim.symmetry.shift_classes``,
    which the engine takes as ``simulate(..., orbits=...)``): found first, they let
    ``Schedule.validate`` check an orbit's images through their representative."""
    validate(wl, cfg)
    with paused_gc():
        sched = _build(wl, cfg, coarse, None, check=False)
        orbits = shift_classes(sched.ranks, sched.layout)
        sched.validate(orbits)
    return sched, orbits


def build_schedule(wl: Workload, cfg: ParallelConfig, coarse: bool = False,
                   only: frozenset[int] | None = None) -> Schedule:
    """Validate the request and build its schedule (raises ``UserError`` on a broken rule).
    ``coarse`` merges per-block communication into one op per stage (planner speed). The
    schedule is checked against the contract (``Schedule.validate``) before it is returned:
    a strategy bug raises ``ScheduleError`` here instead of giving a fast, wrong prediction.

    ``only`` asks for the ops of those ranks alone where the strategy can build them apart
    (the hybrids; the others build every rank): a partial schedule, not validated (its
    messages have no other end), for the planner's lower bounds, never for simulation."""
    validate(wl, cfg)
    with paused_gc():  # thousands of ops, all kept (sim.des.paused_gc)
        return _build(wl, cfg, coarse, only)


def _build(wl: Workload, cfg: ParallelConfig, coarse: bool,
           only: frozenset[int] | None, check: bool = True) -> Schedule:
    from sim.strategies import distrifusion, hybrid, serial

    if cfg.strategy == "serial":
        sched = serial.build(wl, cfg)
    elif cfg.distrifusion > 1:
        # Never coarse: each layer's asynchronous all-gather overlaps with the following layers
        # and the next step's earlier ones, which one merged gather per step would not.
        sched = distrifusion.build(wl, cfg)
    else:
        sched = hybrid.build(wl, cfg, coarse, only)
        if only is not None:
            return sched
    if check:
        sched.validate()
    return sched
