"""What every cost model provides: an op's duration and where that duration came from."""

from __future__ import annotations

from typing import Protocol

from sim.schedule import Compute

# Where an op's time came from, best to worst: a measured shape, one interpolated between
# measured shapes, or the analytic roofline.
SOURCES = ("measured", "interpolated", "roofline")


class CostModel(Protocol):
    """Anything that gives a compute op's duration in seconds and says where it came from.
    Both may depend on the op's shape alone (``kind``, ``layers``, ``q_tokens``,
    ``kv_tokens``, ``batch``, ``part``, ``shard``), not on its step, patch or warmup flag:
    the engine asks once per shape (``sim.engine``)."""

    def compute_time(self, op: Compute) -> float:
        """Seconds of ``op``."""
        ...

    def source(self, op: Compute) -> str:
        """One of ``SOURCES``: where ``op``'s time came from."""
        ...
