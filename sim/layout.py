"""Where each global rank sits: its coordinates on the parallel axes and the groups it joins.

Axes, outermost first: ``cfg`` (classifier-free guidance half), ``stage`` (PipeFusion stage),
``patch`` (DistriFusion patch rank), ``ring``, ``ulysses`` and ``tensor``. A rank is the
mixed-radix number of its coordinates, with degrees ``C, P, D, R, U, T``::

    rank = ((((c*P + p)*D + d)*R + r)*U + u)*T + t

The sequence-parallel axes are innermost so that their groups, which talk every block, sit on
neighbouring GPUs (the fastest links: one NVLink island, one PCIe switch, one node); then the
pipeline stages, which exchange one patch per stage boundary; then the CFG halves, which
exchange one latent per step. Tensor parallelism, with the most traffic of all, is innermost.
DistriFusion combines only with CFG, so there ``rank = c*D + d``; the hybrids have ``D = 1``, so
there ``rank = ((c*P + p)*R*U + r*U + u)*T + t``.

Every strategy, the memory model and the executor read ranks from here (``Schedule.layout``);
nothing else computes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

from sim.config import ParallelConfig

AXES = ("cfg", "stage", "patch", "ring", "ulysses", "tensor")


class Coords(NamedTuple):
    """A rank's position on each axis (0-based), in ``AXES`` order."""

    cfg: int = 0
    stage: int = 0
    patch: int = 0
    ring: int = 0
    ulysses: int = 0
    tensor: int = 0


@dataclass(frozen=True)
class RankLayout:
    """The degree of each parallel axis, and from it the rank <-> coordinates mapping."""

    cfg: int = 1  # CFG halves
    stages: int = 1  # PipeFusion stages
    patches: int = 1  # DistriFusion patch ranks (one band of latent rows each)
    ring: int = 1
    ulysses: int = 1
    tensor: int = 1
    # Derived once, since strategies look ranks up per op: positions along each axis, and the
    # rank distance between neighbours on each axis.
    degrees: Coords = field(init=False, repr=False, compare=False)
    strides: Coords = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        degrees = Coords(self.cfg, self.stages, self.patches, self.ring, self.ulysses,
                         self.tensor)
        if min(degrees) < 1:
            raise ValueError(f"every degree must be at least 1, got {degrees}")
        strides = [1] * len(AXES)
        for i in range(len(AXES) - 2, -1, -1):
            strides[i] = strides[i + 1] * degrees[i + 1]
        object.__setattr__(self, "degrees", degrees)  # frozen: set through object
        object.__setattr__(self, "strides", Coords(*strides))

    @classmethod
    def of(cls, cfg: ParallelConfig) -> RankLayout:
        """The layout of ``cfg``'s degrees."""
        return cls(cfg=cfg.cfg, stages=cfg.pipefusion, patches=cfg.distrifusion, ring=cfg.ring,
                   ulysses=cfg.ulysses, tensor=cfg.tensor)

    @property
    def world(self) -> int:
        """Number of ranks."""
        return math.prod(self.degrees)

    def rank(self, cfg: int = 0, stage: int = 0, patch: int = 0, ring: int = 0,
             ulysses: int = 0, tensor: int = 0) -> int:
        """Global rank at these coordinates (the formula in the module docstring)."""
        at = Coords(cfg, stage, patch, ring, ulysses, tensor)
        for axis, x, n in zip(AXES, at, self.degrees):
            if not 0 <= x < n:
                raise ValueError(f"{axis} coordinate {x} is outside 0..{n - 1}")
        return sum(x * s for x, s in zip(at, self.strides))

    def coords(self, rank: int) -> Coords:
        """Coordinates of ``rank`` (the inverse of ``rank``)."""
        if not 0 <= rank < self.world:
            raise ValueError(f"rank {rank} is outside 0..{self.world - 1}")
        return Coords(*((rank // s) % n for s, n in zip(self.strides, self.degrees)))

    def stage(self, rank: int) -> int:
        """PipeFusion stage of ``rank`` (0 without PipeFusion): its index in
        ``Schedule.stage_layers``."""
        return self.coords(rank).stage

    def peer(self, rank: int, **moved: int) -> int:
        """The rank at ``rank``'s coordinates with the ``moved`` ones replaced, e.g. the same
        sequence position one stage on: ``peer(rank, stage=p + 1)``."""
        return self.rank(*self.coords(rank)._replace(**moved))

    def group(self, rank: int, *axes: str) -> tuple[int, ...]:
        """Ranks that share all of ``rank``'s coordinates but those on ``axes``, ascending (the
        collective group of those axes ``rank`` belongs to)."""
        at = self.coords(rank)
        for axis in axes:
            if axis not in AXES:
                raise ValueError(f"unknown axis {axis!r}; axes are {', '.join(AXES)}")
        # In rank numbers: ``rank`` with its coordinates on ``axes`` set to zero, plus every
        # combination of theirs (the builders ask for five groups of every rank).
        base, offsets = rank, [0]
        for i, axis in enumerate(AXES):
            if axis in axes:
                stride = self.strides[i]
                base -= at[i] * stride
                offsets = [o + k * stride for o in offsets for k in range(self.degrees[i])]
        return tuple(sorted([base + o for o in offsets]))

    def groups(self, *axes: str) -> list[tuple[int, ...]]:
        """Every group of ``axes``, ordered by their lowest rank; together they partition the
        ranks."""
        seen: dict[tuple[int, ...], None] = {}
        for rank in range(self.world):
            seen.setdefault(self.group(rank, *axes))
        return list(seen)
